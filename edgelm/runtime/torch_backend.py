"""The torch reference behind the runtime interface (fp32, CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..models import CausalLM, KVCache
from .backend import Backend


class TorchBackend(Backend):
    lookup_draft = 4  # prompt lookup measured faster (docs/benchmarks.md): a forward of 5 tokens costs little more than 1
    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model
        self.device = next(model.parameters()).device
        self.context_length = model.spec.max_positions
        self.cache: KVCache | None = None

    def _truncate(self, length: int) -> int:
        # K and V are [batch, kv_heads, positions, head_dim] per layer
        self.cache = [(k[:, :, :length], v[:, :, :length]) for k, v in self.cache] if self.cache and length else None
        return length

    @torch.no_grad()
    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        logits, self.cache = self.model(torch.tensor([ids], device=self.device), self.cache)
        return logits[0, -1:].float().cpu().numpy() if last_only else logits[0].float().cpu().numpy()
