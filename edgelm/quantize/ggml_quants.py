"""K-quants for the GGUF archs edgelm defines (tokenformer), which llama.cpp's quantizer refuses (it
knows no such arch): ggml's own `ggml_quantize_chunk` — the function llama.cpp's quantizer calls per
tensor, importance array included — through ggml-python, the binding edgelm's ggml executor runs the
file with; and llama.cpp's per-tensor recipe for the K-quant file types (src/llama-quant.cpp,
llama_tensor_get_type), applied to the role each tensor's layout declares (gguf_layout: `Tensor.role`).
"""

from __future__ import annotations

import ctypes

import numpy as np

# llama.cpp's tensor categories a layout can declare a tensor as (gguf_layout.Tensor.role)
OUTPUT, ATTN_QKV, FFN_DOWN = "output", "attn_qkv", "ffn_down"
ROLES = (OUTPUT, ATTN_QKV, FFN_DOWN)

# file type → (its base type, {role: llama.cpp's rule, (layer, layers) → type or None for the base})
#   output (or token_embd where no output.weight is written: a tied LM head): Q6_K
#   attn_qkv (q, k and v fused): Q4_K_M → Q5_K, Q5_K_M → Q6_K
#   ffn_down: Q4_K_M and Q5_K_M → Q6_K on use_more_bits layers; Q4_K_S → Q5_K on the first eighth


def _use_more_bits(layer: int, layers: int) -> bool:
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


RECIPES = {
    "Q4_K_M": ("Q4_K", {OUTPUT: lambda i, n: "Q6_K", ATTN_QKV: lambda i, n: "Q5_K",
                        FFN_DOWN: lambda i, n: "Q6_K" if _use_more_bits(i, n) else None}),
    "Q4_K_S": ("Q4_K", {OUTPUT: lambda i, n: "Q6_K", FFN_DOWN: lambda i, n: "Q5_K" if i < n // 8 else None}),
    "Q5_K_M": ("Q5_K", {OUTPUT: lambda i, n: "Q6_K", ATTN_QKV: lambda i, n: "Q6_K",
                        FFN_DOWN: lambda i, n: "Q6_K" if _use_more_bits(i, n) else None}),
    "Q5_K_S": ("Q5_K", {OUTPUT: lambda i, n: "Q6_K"}),
    "Q6_K": ("Q6_K", {}),
}
# llama.cpp's fallback for a row that does not fill a 256-wide K-quant block (llama-quant.cpp), whose
# 32-wide blocks a row may not fill either: then F16, as edgelm's writer keeps such rows
FALLBACK = {"Q4_K": "Q5_0", "Q5_K": "Q5_1", "Q6_K": "Q8_0"}
QK_K, QK_FALLBACK = 256, 32


def input_block(type_name: str) -> int:
    """The block in which ggml's CPU dot product of a `type_name` matrix quantizes the other operand: its
    vec_dot_type (ggml-cpu.c's type traits), Q8_K for the K-quants (256 values a scale), Q8_0/Q8_1 (32)
    for the 32-wide types, none (1) for floats."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]][0]
    return QK_K if block == QK_K else (QK_FALLBACK if block > 1 else 1)


def recipe_type(file_type: str, role: str | None, layer: int, layers: int, per_row: int, max_input_block: int | None = None) -> str:
    """The GGML type llama.cpp's quantizer gives a tensor of `role` (in block `layer` of `layers`)
    in a `file_type` file, its rows `per_row` wide; with `max_input_block` (gguf_layout.Tensor), a
    K-quant whose dot product would quantize the input in wider blocks takes its 32-wide fallback, as a
    row too narrow for a K-quant block does."""
    base, rules = RECIPES[file_type]
    rule = rules.get(role)
    chosen = (rule(layer, layers) if rule else None) or base
    if per_row % QK_K == 0 and input_block(chosen) <= (max_input_block or QK_K):
        return chosen
    return FALLBACK[chosen] if per_row % QK_FALLBACK == 0 else "F16"


def quantize(array: np.ndarray, type_name: str, importance: np.ndarray | None = None) -> np.ndarray:
    """`array` [..., rows, per_row] (f32) as ggml's `type_name` blocks (uint8 [..., rows, bytes per
    row]); `importance`: per-column weights of the rounding error, [per_row] or one per leading slice
    [..., per_row] (a stack of matrices, each with its own statistics), as llama.cpp's quantizer
    hands each expert of a 3-D tensor its own slice of the importance matrix."""
    from ..ggml_python import ggml
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    qtype = GGMLQuantizationType[type_name]
    block, size = GGML_QUANT_SIZES[qtype]
    src = np.ascontiguousarray(array, dtype=np.float32)
    rows, per_row = src.shape[-2], src.shape[-1]
    matrices = src.reshape(-1, rows, per_row)
    out = np.empty((len(matrices), rows, per_row // block * size), dtype=np.uint8)
    weights = None
    if importance is not None:
        weights = np.ascontiguousarray(np.broadcast_to(importance, (*src.shape[:-2], per_row)), dtype=np.float32).reshape(-1, per_row)
    floats = ctypes.POINTER(ctypes.c_float)
    for i, matrix in enumerate(matrices):
        column = None if weights is None else weights[i].ctypes.data_as(floats)
        written = ggml.ggml_quantize_chunk(int(qtype), matrix.ctypes.data_as(floats), out[i].ctypes.data, 0, rows, per_row, column)
        assert written == out[i].nbytes, (type_name, written, out[i].nbytes)
    if not ggml.ggml_validate_row_data(int(qtype), out.ctypes.data, out.nbytes):  # NaN/inf scales: refuse to write them
        raise ValueError(f"ggml's {type_name} blocks of a {tuple(array.shape)} tensor do not validate")
    return out.reshape(*src.shape[:-1], -1)


def round_trip(weight: np.ndarray, type_name: str, importance: np.ndarray | None = None) -> np.ndarray:
    """`weight` [rows, per_row] through `quantize` and back (gguf-py dequantizes): what the file's
    matrix computes with, for quantize/mixed.py's measurements."""
    from gguf import GGMLQuantizationType, dequantize

    return dequantize(quantize(weight, type_name, importance), GGMLQuantizationType[type_name]).reshape(weight.shape)
