"""What every generation backend provides: run tokens through the model, appending them to a KV cache
kept inside the backend, and return fp32 logits for each of them."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    context_length: int

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
