"""Reading config.json for a family: plain lookups, sizes checked, values a family does not implement
refused, and sizes a published layout leaves out read off the weights."""

from __future__ import annotations

from typing import Any

from ..numbers import is_number

FLOAT32_MAX = 3.4028234663852886e38  # numpy.finfo(numpy.float32).max
MAX_SIZE = 1 << 31  # larger than any dimension of a model that fits in memory


class MissingConfigKey(KeyError):
    """config.json lacks a key the family needs; the loader turns it into a user error."""


class UnsupportedConfigValue(ValueError):
    """config.json asks for a variant the family does not implement (a norm, an activation, …)."""

    def __init__(self, key: str, value: Any, implemented: tuple[Any, ...]):
        shown = ", ".join(repr(v) for v in implemented)
        super().__init__(f"{key} = {value!r} is not implemented (edgelm implements {shown})")


def config_value(config: dict[str, Any], key: str, default: Any = ...) -> Any:
    if key in config and config[key] is not None:
        return config[key]
    if default is ...:
        raise MissingConfigKey(key)
    return default


class ConfigReader:
    """One checkpoint's config.json as a family's config mapping reads it.

    `tensor_shapes` (name → shape, from the weight files' headers) lets a mapping take a size the
    config omits from the tensor that has it, as TokenFormer's GPT-NeoX config omits vocab_size;
    what was taken that way is kept in `inferred`, so a writer can store the complete config.
    """

    def __init__(self, config: dict[str, Any], tensor_shapes: dict[str, tuple[int, ...]] | None = None):
        if not isinstance(config, dict):
            raise ValueError(f"the config must be a JSON object, not {type(config).__name__}")
        self.config = config
        self.shapes = tensor_shapes or {}
        self.inferred: dict[str, Any] = {}

    def __call__(self, key: str, default: Any = ...) -> Any:
        return config_value(self.config, key, default)

    def section(self, key: str) -> "ConfigReader":
        """A nested object (rope_parameters, rope_scaling), empty when absent."""
        value = self(key, {})
        if not isinstance(value, dict):
            raise ValueError(f"{key} must be a JSON object, not {value!r}")
        return ConfigReader(value)

    def first(self, keys: tuple[str, ...], default: Any = ...) -> Any:
        """The value of the first of `keys` the config has (layouts name one fact differently)."""
        for key in keys:
            if self.config.get(key) is not None:
                return self.config[key]
        if default is ...:
            raise MissingConfigKey(keys[0])
        return default

    def size(self, key: str | tuple[str, ...], default: Any = ..., *, minimum: int = 1) -> int:
        """A dimension: an integer (JSON may write 256.0) from `minimum` up to 2³¹."""
        keys = (key,) if isinstance(key, str) else key
        value = self.first(keys, default)
        if not is_number(value) or value != value or abs(value) == float("inf") or value != int(value):
            raise ValueError(f"{keys[0]} must be an integer, not {value!r}")
        if not minimum <= value < MAX_SIZE:
            raise ValueError(f"{keys[0]} = {int(value):,} is out of range: a dimension is from {minimum} to {MAX_SIZE - 1:,}")
        return int(value)

    def head_width(self, width_key: str, heads_key: str, explicit_key: str | None = None) -> int:
        """Each head's width: `explicit_key` where the config gives it, else the width split evenly among the heads."""
        if explicit_key and self(explicit_key, None) is not None:
            return self.size(explicit_key)
        width, heads = self.size(width_key), self.size(heads_key)
        if width % heads:
            raise ValueError(f"{width_key} {width} is not a multiple of {heads_key} {heads}")
        return width // heads

    def number(self, key: str | tuple[str, ...], default: Any = ..., *, positive: bool = True) -> float:
        """A finite real (norm epsilon, rotary base, fraction)."""
        keys = (key,) if isinstance(key, str) else key
        value = self.first(keys, default)
        if not is_number(value) or value != value or abs(value) == float("inf"):
            raise ValueError(f"{keys[0]} must be a finite number, not {value!r}")
        if abs(value) > FLOAT32_MAX:  # a GGUF key, an ONNX initializer and the torch model hold it in float32
            raise ValueError(f"{keys[0]} = {value!r} is past float32's range (±{FLOAT32_MAX:.3g}), in which every engine holds it")
        if positive and value <= 0:
            raise ValueError(f"{keys[0]} must be positive, not {value!r}")
        return float(value)

    def flag(self, key: str, default: bool) -> bool:
        """A switch: JSON true or false. A string is truthy whatever it says: a stranger's "tie_word_embeddings":
        "false" ran the model tied, its own lm_head.weight unread (transformers' PretrainedConfig keeps the string)."""
        value = self(key, default)
        if type(value) is not bool:
            raise ValueError(f"{key} must be true or false, not {value!r}")
        return value

    def implemented(self, key: str, values: tuple[Any, ...], default: Any = ...) -> Any:
        """The config's choice for `key`, which must be one of the `values` the family implements."""
        value = self(key, default)
        if value not in values or isinstance(value, bool) != isinstance(values[0], bool):
            raise UnsupportedConfigValue(key, value, values)
        return value

    def size_or_rows(self, key: str, tensor: str) -> int:
        """`key` from the config, or else the number of rows of `tensor` in the weights."""
        if self.config.get(key) is not None:
            return self.size(key)
        if tensor not in self.shapes:
            raise MissingConfigKey(key, f"and the weights have no {tensor} to read it from")
        self.inferred[key] = self.shapes[tensor][0]
        return self.inferred[key]

    def resolved(self) -> dict[str, Any]:
        """The config with the sizes read off the weights filled in."""
        return {**self.config, **self.inferred}
