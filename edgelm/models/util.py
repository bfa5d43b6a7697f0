"""Small helpers the family files share."""

from __future__ import annotations

from typing import Any


class MissingConfigKey(KeyError):
    """config.json lacks a key the family needs; the loader turns it into a user error."""


def config_value(config: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in config and config[key] is not None:
        return config[key]
    if default is ...:
        raise MissingConfigKey(key)
    return default
