"""Baking head temperatures into the query weights, shared by the GGUF and ONNX exports.

softmax(λ_h · q·kᵀ/√d) = softmax((λ_h q)·kᵀ/√d), and q is linear in the query projection's output
rows (columns of V_p for a tokenformer Pattention; rotary is linear too, so it commutes). Multiplying
head h's query outputs by λ_h in fp32 therefore gives a model that any runtime runs without knowing
about temperatures. Symmetric block quantizers (Q8_0, Q4_0) scale with the block, so the fold stays
exact through them.
"""

from __future__ import annotations

import torch

from ..errors import UserError
from ..models import Family, ModelSpec


def temperature_scales(family: Family, spec: ModelSpec, table: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
    """tensor name → (axis, per-entry scale of the first num_heads·head_dim entries along that axis)."""
    scales = {}
    if (table == 1).all():
        return scales
    for layer, row in enumerate(table.float()):
        per_entry = row.repeat_interleave(spec.head_dim)  # [num_heads·head_dim], head-major
        tensors = family.query_tensors(spec, layer)
        if tensors is None:
            raise UserError(f"head temperatures cannot be folded into a {family.name} model's weights", None,
                            "export it without --head-temperatures (all λ = 1)")
        for name, axis in tensors:
            scales[name] = (axis, per_entry)
    return scales


def bake_tensor(tensor: torch.Tensor, axis: int, scale: torch.Tensor) -> torch.Tensor:
    """A copy of `tensor` (in fp32) with its first len(scale) entries along `axis` scaled."""
    baked = tensor.float().clone()
    shape = [1] * baked.dim()
    shape[axis] = scale.numel()
    baked.narrow(axis, 0, scale.numel()).mul_(scale.view(shape))
    return baked


def refuse_non_finite(name: str, all_finite: bool, folded: bool, checkpoint_path) -> None:
    """Both exporters check every tensor they write: a NaN or infinite weight (or one a 1e30
    temperature made infinite) is refused, not passed on to a runtime that would print nothing."""
    if not all_finite:
        raise UserError(f"tensor {name} holds NaN or infinite values" + (" after folding the head temperatures" if folded else ""),
                        checkpoint_path, "the checkpoint (or its temperatures) is damaged: fix it before exporting")


F16_MAX = 65504.0  # float16's largest finite value


def refuse_beyond_f16(name: str, largest: float, type_name: str) -> None:
    """A weight past float16's range (a large head temperature folded in) would become infinite when
    stored at f16 or block-quantized with f16 scales."""
    if largest > F16_MAX:
        raise UserError(f"tensor {name} reaches {largest:.3g}, beyond float16's {F16_MAX:.0f}, so {type_name} would make it infinite",
                        None, "export with --quant f32 (or bf16 for GGUF), or use smaller head temperatures")
