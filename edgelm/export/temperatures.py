"""Baking head temperatures into the query weights, shared by the GGUF and ONNX exports.

softmax(λ_h · q·kᵀ/√d) = softmax((λ_h q)·kᵀ/√d), and q is linear in the query projection's output
rows (columns of V_p for a tokenformer Pattention; rotary is linear too, so it commutes). Multiplying
head h's query outputs by λ_h in fp32 therefore gives a model that any runtime runs without knowing
about temperatures. Symmetric block quantizers (Q8_0, Q4_0) scale with the block, so the fold stays
exact through them.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from ..errors import UserError
from ..models import Family, ModelSpec
from ..models.registry import refuse_unfoldable_temperatures


def temperature_scales(family: Family, spec: ModelSpec, table: torch.Tensor) -> dict[str, tuple[int, torch.Tensor]]:
    """tensor name → (axis, per-entry scale of the first num_heads·head_dim entries along that axis)."""
    scales = {}
    if (table == 1).all():
        return scales
    refuse_unfoldable_temperatures(family, spec, None, "export it without --head-temperatures (all λ = 1)")
    for layer, row in enumerate(table.float()):
        per_entry = row.repeat_interleave(spec.head_dim)  # [num_heads·head_dim], head-major
        for name, axis in family.query_tensors(spec, layer):
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


def refuse_attention_beyond_f16(family: Family, spec: ModelSpec, get: Callable[[str], torch.Tensor], checkpoint_path) -> None:
    """Refuses weights whose queries, keys or values can pass float16's range at run time, whatever
    the file's dtype: llama.cpp stores K and V in its default f16 KV cache and converts Q to f16 for
    the attention product, ONNX Runtime's fp16 attention holds all three in f16, so one out-of-range
    value there is infinite and the reply NaN (an f32 export with a λ = 1e30 temperature did that).

    A sufficient bound, from the weights alone: an output is w·(g ⊙ u + b) + c with ‖u‖₂ ≤ √n
    (models/registry.py AttentionInput), so |output| ≤ √n·‖w ⊙ g‖₂ + |w·b + c| (Cauchy–Schwarz;
    tighter than Σ|w|·max|x| by up to √n, and still never below the true maximum); rotary mixes
    outputs in pairs, which can grow one by √2. `get` returns a tensor as exported (fp32, folded)."""
    for layer in range(spec.num_layers):
        inputs = family.attention_inputs(spec, layer)
        if inputs is None:
            # no description of how this family makes q, k and v: bound what the temperatures fold
            # touches, the query weights themselves
            for name, _ in family.query_tensors(spec, layer) or []:
                largest = float(get(name).abs().max())
                if largest > F16_MAX:
                    _refuse_attention(layer, f"query tensor {name}", largest, checkpoint_path)
            continue
        for entry in inputs:
            bound = attention_bound(entry, get)
            if bound > F16_MAX:
                _refuse_attention(layer, f"{entry.what} ({entry.weight})", bound, checkpoint_path)


def attention_bound(entry, get: Callable[[str], torch.Tensor]) -> float:
    """The largest |output| `entry` (an AttentionInput) can produce, by the bound above."""
    weight = get(entry.weight).double().narrow(entry.axis, entry.start, entry.stop - entry.start)
    weight = weight.movedim(entry.axis, 0).reshape(entry.stop - entry.start, -1)  # [outputs, inputs]
    gain = get(entry.norm_weight).double() + entry.norm_offset if entry.norm_weight else torch.ones(weight.shape[1], dtype=torch.float64)
    shift = get(entry.norm_bias).double() if entry.norm_bias else torch.zeros(weight.shape[1], dtype=torch.float64)
    offset = get(entry.bias).double()[entry.start:entry.stop] if entry.bias else 0.0
    bounds = math.sqrt(weight.shape[1]) * (weight * gain).norm(dim=1) + (weight @ shift + offset).abs()
    return float(bounds.max()) * (math.sqrt(2) if entry.rotates else 1.0)


def _refuse_attention(layer: int, what: str, bound: float, checkpoint_path) -> None:
    raise UserError(f"the weights (with any head temperatures folded in) can scale layer {layer}'s {what} to {bound:.3g}, "
                    f"past float16's {F16_MAX:.0f}, which llama.cpp's f16 KV cache and ONNX Runtime's fp16 attention compute in",
                    checkpoint_path, "give smaller head temperatures (or fix the checkpoint's weights)")
