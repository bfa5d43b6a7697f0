"""What every generation backend provides: run tokens through the model, appending them to a KV cache
kept inside the backend, and return fp32 logits for each of them."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import UserError


class Backend(ABC):
    context_length: int
    all_logits: bool = True  # forward() gives every position's logits; llama.cpp opened for generation gives the last only

    @abstractmethod
    def reset(self) -> None:
        """Forget the cache: the next call starts at position 0."""

    @abstractmethod
    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the cache; logits [len(ids), vocab] (fp32), row i predicting the token after ids[i]."""

    @property
    @abstractmethod
    def position(self) -> int:
        """Tokens in the cache."""

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits [vocab] for the token after the last of `ids`."""
        return self.forward(ids)[-1]

    def decode(self, token: int) -> np.ndarray:
        return self.forward([token])[-1]

    def close(self) -> None:
        """Free native resources (sessions, model memory); the backend is not used afterwards."""


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else all physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refuse_cache_past_memory(needed: int, positions: int, path: Path, key: str) -> None:
    """A KV cache sized from a context length a stranger wrote is refused before it is allocated, not by
    a MemoryError traceback or the OOM killer."""
    available = available_memory()
    if needed > available:
        raise UserError(f"a context of {positions} tokens needs {needed / 1e9:.1f} GB of KV cache, more than the "
                        f"{available / 1e9:.1f} GB available", path,
                        f"{key} is past what this machine holds: export the model again with a shorter context")
