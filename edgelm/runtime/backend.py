"""What every generation backend provides: prefill a prompt, then decode one token at a time, each
call returning the next-token logits, with the KV cache kept inside the backend."""

from __future__ import annotations

from abc import ABC, abstractmethod

import numpy as np


class Backend(ABC):
    context_length: int

    @abstractmethod
    def reset(self) -> None:
        """Forget the cache: the next call is a prefill from position 0."""

    @abstractmethod
    def prefill(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the cache; logits [vocab] (fp32) for the token after the last one."""

    def decode(self, token: int) -> np.ndarray:
        """Append one token; logits [vocab] for the next."""
        return self.prefill([token])

    @property
    @abstractmethod
    def position(self) -> int:
        """Tokens in the cache."""
