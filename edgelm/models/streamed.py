"""The fp32 reference run with its weights streamed from the checkpoint: the model is built on the meta
device, and every torch call given one of its weights gets that tensor read from the checkpoint for the
call alone. One forward holds about one weight at a time (1.1B: the 262 MB embedding) instead of the
whole fp32 model (4.4 GB), as the streaming exports do; the outputs are the loaded model's, bit for bit
(the four shipped families). For a pass without a KV cache (the parity certificate's reference)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from .checkpoint import Checkpoint, meta_model


class _StreamedWeights(TorchFunctionMode):
    """Swaps each meta weight in a torch call's arguments (a Linear's F.linear, an embedding lookup, a
    tied head's `weight.t()`, a norm's `weight * x`) for the checkpoint's tensor, read now (safetensors
    memory-maps the file) and released when the call returns."""

    def __init__(self, names: dict[int, str], checkpoint: Checkpoint, device: str):
        super().__init__()
        self.names, self.checkpoint, self.device = names, checkpoint, device

    def _real(self, value):
        if isinstance(value, torch.Tensor) and id(value) in self.names:
            return self.checkpoint.tensors.get(self.names[id(value)], torch.float32).to(self.device)
        return value

    def __torch_function__(self, func, types, args=(), kwargs=None):
        return func(*tree_map(self._real, args), **tree_map(self._real, kwargs or {}))


@torch.no_grad()
def streamed_logits(checkpoint: Checkpoint, ids: Sequence[int], device: str = "cpu") -> np.ndarray:
    """The reference's fp32 logits [len(ids), vocab] over `ids` in one pass."""
    model = meta_model(checkpoint.family, checkpoint.spec).eval()
    for owner in model.modules():  # buffers (head temperatures) are small: made real, then set
        for name, buffer in owner.named_buffers(recurse=False):
            owner.register_buffer(name, torch.empty_like(buffer, device=device), persistent=name not in owner._non_persistent_buffers_set)
    model.set_head_temperatures(checkpoint.head_temperatures().to(device))
    tied = checkpoint.family.tied_tensors(checkpoint.spec)  # alias → the checkpoint tensor it shares
    names = {id(p): tied.get(name, name) for name, p in model.named_parameters(remove_duplicate=False)}
    with _StreamedWeights(names, checkpoint, device):
        logits, _ = model(torch.tensor([list(ids)], device=device), None)
    return logits[0].float().cpu().numpy()
