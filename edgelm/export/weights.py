"""The one place weights change on the way out, shared by the GGUF and ONNX writers.

A tied alias resolves to its source, head temperatures fold into the query weights in fp32
(export/temperatures.py), and every tensor is checked finite, one tensor at a time from the
memory-mapped checkpoint: a writer that asks for them in turn holds about one tensor, whatever the
model's size (llama.cpp's converter streams its lazy tensors the same way).
"""

from __future__ import annotations

import math

import torch

from ..models import Checkpoint
from .temperatures import bake_tensor, refuse_non_finite, temperature_scales


class ExportedWeights:
    """The model's tensors as an export writes them, by module name (the family module's state dict)."""

    def __init__(self, checkpoint: Checkpoint, temperatures: torch.Tensor | None = None):
        """`temperatures`: the [num_layers, num_heads] table to fold (default: the checkpoint's)."""
        self.checkpoint = checkpoint
        self.shapes = checkpoint.module_shapes  # tied aliases included
        table = checkpoint.head_temperatures() if temperatures is None else temperatures
        self._scales = temperature_scales(checkpoint.family, checkpoint.spec, table)
        self._aliases = checkpoint.family.tied_tensors(checkpoint.spec)

    def get(self, name: str) -> torch.Tensor:
        """fp32, temperatures folded, refused when not finite."""
        tensor = self.checkpoint.tensors.get(self._aliases.get(name, name), torch.float32)
        if name in self._scales:
            tensor = bake_tensor(tensor, *self._scales[name])
        low, high = (float(x) for x in tensor.aminmax())  # one pass, no mask allocated; NaN propagates to both
        refuse_non_finite(name, math.isfinite(low) and math.isfinite(high), name in self._scales, self.checkpoint.path)
        return tensor
