"""The torch reference behind the runtime interface (fp32, CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..models import CausalLM, KVCache
from .backend import Backend


class TorchBackend(Backend):
    def __init__(self, model: CausalLM):
        self.model = model
        self.device = next(model.parameters()).device
        self.context_length = model.spec.max_positions
        self.cache: KVCache | None = None

    def reset(self) -> None:
        self.cache = None

    @property
    def position(self) -> int:
        return self.cache[0][0].shape[2] if self.cache else 0

    @torch.no_grad()
    def forward(self, ids: list[int]) -> np.ndarray:
        logits, self.cache = self.model(torch.tensor([ids], device=self.device), self.cache)
        return logits[0].float().cpu().numpy()
