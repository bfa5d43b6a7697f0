"""The torch reference behind the runtime interface (fp32, CPU or CUDA)."""

from __future__ import annotations

import numpy as np
import torch

from ..models import CausalLM, KVCache
from .backend import Backend


class TorchBackend(Backend):
    lookup_draft = 4  # prompt lookup measured faster (docs/benchmarks.md): a forward of 5 tokens costs little more than 1
    def __init__(self, model: CausalLM, threads: int | None = None):
        super().__init__()
        self.model = model
        self.threads = threads  # torch's intra-op threads while this model computes (None: torch's default)
        self.device = next(model.parameters()).device
        self.context_length = model.spec.max_positions
        self.cache: KVCache | None = None
        self.position_free = model.spec.positions.position_free
        self.learned_positions = getattr(model.spec.positions, "max_positions", None)

    def _truncate(self, length: int) -> int:
        # K and V are [batch, kv_heads, positions, head_dim] per layer
        self.cache = [(k[:, :, :length], v[:, :, :length]) for k, v in self.cache] if self.cache and length else None
        return length

    @torch.no_grad()
    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        previous = torch.get_num_threads()
        if self.threads:  # set per call and restored: a process-wide setting, and the caller may run other torch work
            torch.set_num_threads(self.threads)
        try:
            logits, self.cache = self.model(torch.tensor([ids], device=self.device), self.cache)
        finally:
            torch.set_num_threads(previous)
        return logits[0, -1:].float().cpu().numpy() if last_only else logits[0].float().cpu().numpy()

    def kv_layout(self):
        spec = self.model.spec
        dtype = np.dtype(str(next(self.model.parameters()).dtype).removeprefix("torch."))
        return [((1, spec.num_kv_heads, -1, spec.head_dim), dtype)] * (2 * spec.num_layers)

    def _kv_arrays(self):
        return [side.cpu().numpy() for layer in self.cache or () for side in layer]

    def _set_kv_arrays(self, arrays):
        tensors = [torch.from_numpy(np.array(a)).to(self.device) for a in arrays]
        self.cache = list(zip(tensors[0::2], tensors[1::2])) if tensors and tensors[0].shape[2] else None
