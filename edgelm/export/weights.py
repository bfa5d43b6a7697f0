"""The one place weights change on the way out, shared by the GGUF and ONNX writers.

A tied alias resolves to its source, head temperatures fold into the query weights in fp32
(export/temperatures.py), and every tensor is checked finite, one tensor at a time from the
memory-mapped checkpoint: a writer that asks for them in turn holds about one tensor, whatever the
model's size (llama.cpp's converter streams its lazy tensors the same way).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch

from ..models import Checkpoint
from .temperatures import bake_tensor, refuse_attention_beyond_f16, refuse_non_finite, temperature_scales


class ExportedWeights:
    """The model's tensors as an export writes them, by module name (the family module's state dict)."""

    def __init__(self, checkpoint: Checkpoint, temperatures: torch.Tensor | None = None,
                 folds: dict[str, tuple[int, torch.Tensor]] | None = None):
        """`temperatures`: the [num_layers, num_heads] table to fold (default: the checkpoint's).
        `folds`: more exact per-channel scales, {name: (axis, scale)} (quantize/awq.py)."""
        self.checkpoint = checkpoint
        self.shapes = checkpoint.module_shapes  # tied aliases included
        table = checkpoint.head_temperatures() if temperatures is None else temperatures
        self._scales = temperature_scales(checkpoint.family, checkpoint.spec, table)
        self._aliases = checkpoint.family.tied_tensors(checkpoint.spec)
        self._folds = folds or {}
        # before any tensor goes out (an ONNX graph pass may read one lazily): q, k and v must fit the
        # f16 the runtime holds them in, whatever the file's dtype
        refuse_attention_beyond_f16(checkpoint.family, checkpoint.spec, self.get, checkpoint.path)

    def get(self, name: str) -> torch.Tensor:
        """fp32, temperatures folded, refused when not finite."""
        tensor = self.checkpoint.tensors.get(self._source(name), torch.float32)
        if name in self._scales:
            tensor = bake_tensor(tensor, *self._scales[name])
        if name in self._folds:
            tensor = bake_tensor(tensor, *self._folds[name])
        self._check_finite(name, tensor)
        return tensor

    def unchanged(self, name: str) -> bool:
        """Whether the tensor goes out as stored (no temperature folds into it), so a writer may
        stream it a block of rows at a time with `row_blocks`."""
        return name not in self._scales and name not in self._folds

    def row_blocks(self, name: str) -> Iterator[torch.Tensor]:
        """An unchanged tensor in fp32, a block of rows at a time, each refused when not finite."""
        assert self.unchanged(name), name
        for block in self.checkpoint.tensors.row_blocks(self._source(name), torch.float32):
            self._check_finite(name, block)
            yield block

    def _source(self, name: str) -> str:
        return self._aliases.get(name, name)

    def _check_finite(self, name: str, tensor: torch.Tensor) -> None:
        low, high = (float(x) for x in tensor.aminmax())  # one pass, no mask allocated; NaN propagates to both
        refuse_non_finite(name, math.isfinite(low) and math.isfinite(high), name in self._scales, self.checkpoint.path)
