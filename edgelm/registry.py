"""The decorator the registries of instances share (exporters.EXPORTERS, bundle.BUNDLE_TARGETS): a class registers one
instance of itself under its `name`, as llama.cpp's converter registers its model classes."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def registrar(table: dict[str, object]) -> Callable[[type[T]], type[T]]:
    def register(cls: type[T]) -> type[T]:
        table[cls.name] = cls()
        return cls

    return register
