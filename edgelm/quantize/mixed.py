"""Size-budgeted mixed precision for GGUF: each weight's GGML type chosen from its measured sensitivity.

For every quantizable weight (a 2-D parameter of the torch reference, with the GGUF tensors made from
it), the reference runs once over the calibration chunks with that weight alone replaced by its
round trip through ggml's own quantizer (`ggml_quantize_chunk`, the function llama.cpp's quantizer
calls, with the importance matrix when one is used) at MEASURED_TYPE, everything else fp32: the mean
KL(reference ‖ that model) over the chunk positions is the weight's measured sensitivity. Its other
types are predicted from it by the ratio of their importance-weighted squared rounding errors (KLD is
quadratic in a small weight perturbation to first order), which costs no further forward passes.
Then a greedy knapsack: every weight starts at the cheapest candidate type, and the upgrade with the
most KLD removed per byte that still fits the budget is taken until none fits. llama.cpp's quantizer
makes the file with those types through `llama_model_quantize_params.tt_overrides`.
"""

from __future__ import annotations

import ctypes
import re
import sys
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

# GGML types the allocation chooses among, cheapest first (bits per weight: 3.44, 4.5, 5.5, 6.56, 8.5), and
# the one each weight is measured at; a weight whose input must be quantized in blocks of 32
# (gguf_layout.Tensor.max_input_block) chooses among the 32-wide types (4.5, 5, 5.5, 6, 8.5), measured at Q4_0
CANDIDATES = ("Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
MEASURED_TYPE = "Q4_K"
NARROW_CANDIDATES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")
NARROW_MEASURED_TYPE = "Q4_0"
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
CHUNKS, CHUNK_TOKENS = 4, 256  # the calibration text each weight's KLD is measured on: one forward per weight
NOTE_KEY = "edgelm.quantize.mixed"  # the file's record of the budget and the predicted KLD (the types are the tensors')
# room kept for the certificate's edgelm.parity.* keys, added after the quantizer (2.7 KB measured on tiny-nope:
# a fixed-size probe, 8 greedy tokens and top-8 logits), and for the mixed and quantize.imatrix.* notes (~0.3 KB)
CERTIFICATE_RESERVE = 8 * 1024
# ONNX: room kept per MatMul for the MatMulNBits node that replaces it and its initializers' names and shapes
# (~300 bytes measured), and for edgelm.json (6.1 KB on tiny-nope, its certificate included)
ONNX_PER_MATMUL = 512
ONNX_MANIFEST_RESERVE = 12 * 1024
# GGUF aligns each tensor's data to 32 bytes (general.alignment): room left per tensor for the padding
ALIGNMENT = 32


def parse_size(text: str) -> int:
    """'3.5MB', '3500000', '3.3MiB', '900 KB' → bytes (KB/MB/GB decimal, KiB/MiB/GiB binary), computed in
    decimal (a float turned 10^29 into 99999999999999991433150857216); bytes themselves are whole."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not found or found.group(2).upper() not in SIZE_UNITS:
        raise UserError(f"--max-size {text!r} is not a size", None, "give bytes or a size such as 3.5MB or 3.3MiB")
    size = Decimal(found.group(1)) * SIZE_UNITS[found.group(2).upper()]
    if size != size.to_integral_value() and SIZE_UNITS[found.group(2).upper()] == 1:
        raise UserError(f"--max-size {text!r} is not a whole number of bytes", None, "give bytes or a size such as 3.5MB or 3.3MiB")
    return int(size)


def _ggml_base():
    """ggml's quantizer, in the libggml-base that llama-cpp-python ships (the library its
    llama_model_quantize calls)."""
    import llama_cpp

    name = {"win32": "ggml-base.dll", "darwin": "libggml-base.dylib"}.get(sys.platform, "libggml-base.so")
    lib = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / name))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_void_p]
    return lib


def type_bytes(type_name: str, rows: int, per_row: int) -> int:
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    block, size = GGML_QUANT_SIZES[GGMLQuantizationType[type_name]]
    return rows * (per_row // block) * size


def round_trip(weight: np.ndarray, type_name: str, importance: np.ndarray | None = None, lib=None) -> np.ndarray:
    """`weight` [rows, per_row] quantized by ggml to `type_name` (weighing columns by `importance`)
    and dequantized by gguf-py."""
    from gguf import GGMLQuantizationType, quants

    qtype = GGMLQuantizationType[type_name]
    lib = lib or _ggml_base()
    src = np.ascontiguousarray(weight, dtype=np.float32)
    rows, per_row = src.shape
    out = np.empty(type_bytes(type_name, rows, per_row), dtype=np.uint8)
    weights = None if importance is None else np.ascontiguousarray(importance, dtype=np.float32)
    lib.ggml_quantize_chunk(int(qtype), src.ctypes.data, out.ctypes.data, 0, rows, per_row,
                            None if weights is None else weights.ctypes.data)
    return quants.dequantize(out.reshape(rows, -1), qtype).reshape(rows, per_row)


@dataclass
class Unit:
    """One weight of the reference and the artifact tensors made from it (two when an LM head is tied
    to the embedding: both take one type, since the reference cannot quantize them apart); or several
    weights of the same shape stacked into one artifact tensor (`parts`, `param` the first), which
    takes one type, so they are measured together."""

    param: str
    names: list[str]  # the artifact's tensors made from it
    sizes: dict[str, int]  # type → bytes of one of them, cheapest first: the candidates
    kld: dict[str, float] = field(default_factory=dict)  # type → measured (the measured type) or predicted KLD
    parts: tuple[str, ...] = ()  # the stacked weights, `param` first; () for one weight
    transposed: bool = False  # the artifact stores the weight transposed: its rows are the reference's columns
    measured: str | None = None  # the type its KLD is measured at, where not the one `measure` is given

    @property
    def params(self) -> tuple[str, ...]:
        return self.parts or (self.param,)

    @property
    def candidates(self) -> tuple[str, ...]:
        return tuple(self.sizes)

    def bytes(self, type_name: str) -> int:
        return len(self.names) * self.sizes[type_name]


def units(model: torch.nn.Module, plan: dict[str, str | tuple[str, ...]], sizes, transposed: frozenset[str] = frozenset()) -> list[Unit]:
    """The 2-D weights of `model` that artifact tensors are made from (`plan`: artifact name → source
    name, or the source names stacked into it), grouped by the parameter they share; `sizes(name, rows,
    per_row)`: {type: bytes} of the types the artifact tensor `name` (a stack: all its rows) can take,
    cheapest first (a weight with none is left to the quantizer's own choice); `transposed`: the sources
    the artifact stores transposed."""
    tensors = model.state_dict(keep_vars=True)
    found: dict[int, Unit] = {}
    for name, source in plan.items():
        parts = (source,) if isinstance(source, str) else tuple(source)
        stack = [tensors.get(p) for p in parts]
        tensor = stack[0]
        if any(t is None or t.dim() != 2 or t.shape != tensor.shape for t in stack):
            continue
        key = tensor.untyped_storage().data_ptr()
        if key in found:
            found[key].names.append(name)
        else:
            flip = parts[0] in transposed
            rows, per_row = tensor.shape[::-1] if flip else tensor.shape
            if fits := sizes(name, len(parts) * rows, per_row):
                measured = NARROW_MEASURED_TYPE if NARROW_MEASURED_TYPE in fits and MEASURED_TYPE not in fits else None
                found[key] = Unit(parts[0], [name], fits, parts=parts if len(parts) > 1 else (), transposed=flip, measured=measured)
    return list(found.values())


def gguf_sizes(rows: int, per_row: int, max_input_block: int | None = None) -> dict[str, int]:
    """The GGML candidates whose block divides the row, when the type they are measured at is among them;
    with `max_input_block` below a K-quant's (gguf_layout.Tensor), the 32-wide types."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    from .ggml_quants import QK_K

    narrow = (max_input_block or QK_K) < QK_K
    candidates, measured = (NARROW_CANDIDATES, NARROW_MEASURED_TYPE) if narrow else (CANDIDATES, MEASURED_TYPE)
    fits = {t: type_bytes(t, rows, per_row) for t in candidates if per_row % GGML_QUANT_SIZES[GGMLQuantizationType[t]][0] == 0}
    return fits if measured in fits else {}


def _kld(reference_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = F.log_softmax(logits.double(), dim=-1)
    return float((reference_logp.exp() * (reference_logp - logp)).sum(-1).mean())


@torch.no_grad()
def measure(model, chunks: list[list[int]], found: list[Unit], trip, measured_type: str,
            importance: dict[str, np.ndarray] | None = None, on_unit=None) -> None:
    """Fill each unit's `kld`: measured at `measured_type` over `chunks`, predicted for its other
    candidates; `trip(weight, type, column importance or None)` → the weight quantized and back as the
    artifact's quantizer makes it; `importance`: source name → per-column mean squares, weighing the
    errors (and the quantizer, where it takes them)."""
    ids = torch.tensor(chunks)
    reference = F.log_softmax(model(ids)[0].double(), dim=-1)
    tensors = model.state_dict(keep_vars=True)
    for unit in found:
        at = unit.measured or measured_type
        errors = dict.fromkeys(unit.candidates, 0.0)
        originals = {}
        for name in unit.params:  # a stack's weights quantized together, as the one tensor holds them
            param = tensors[name]
            original = originals[name] = param.data.clone()
            weight = original.numpy().T if unit.transposed else original.numpy()  # as the artifact's rows hold it
            columns = None if importance is None else importance.get(name)
            trips = {t: trip(weight, t, columns) for t in unit.candidates}
            measured_weight = torch.from_numpy(trips[at])
            param.data.copy_(measured_weight.T if unit.transposed else measured_weight)
            weigh = np.ones(weight.shape[1]) if columns is None else columns.astype(np.float64)
            for t, values in trips.items():
                errors[t] += float((np.square(values.astype(np.float64) - weight) * weigh).sum())
        measured = _kld(reference, model(ids)[0])
        for name, original in originals.items():
            tensors[name].data.copy_(original)
        unit.kld = {t: measured * errors[t] / max(errors[at], 1e-30) for t in unit.candidates}
        if on_unit:
            on_unit(unit)


def ggml_trip():
    lib = _ggml_base()
    return lambda weight, type_name, columns: round_trip(weight, type_name, columns, lib)


def allocate(found: list[Unit], budget: int, fixed: int, what: str) -> dict[str, str]:
    """{source name: type}: every unit at its cheapest candidate, then the greedy upgrades (most
    predicted KLD removed per byte) while `fixed` + the units' bytes stays within `budget`."""
    choice = {u.param: u.candidates[0] for u in found}
    spent = fixed + sum(u.bytes(choice[u.param]) for u in found)
    if spent > budget:
        raise UserError(f"--max-size {budget} byte{'s' * (budget != 1)} is below the smallest {what} mixed-precision export ({spent} bytes, every "
                        "weight at its cheapest type)", None, f"give --max-size {spent} or more")
    while True:
        best = None
        for u in found:
            current = choice[u.param]
            for t in u.candidates:
                cost = u.bytes(t) - u.bytes(current)
                gain = u.kld[current] - u.kld[t]
                if cost > 0 and gain > 0 and spent + cost <= budget and (best is None or gain / cost > best[0]):
                    best = (gain / cost, u, t, cost)
        if best is None:
            return choice
        _, u, t, cost = best
        choice[u.param] = t
        spent += cost


def choose(model, found: list[Unit], budget: int, fixed: int, what: str, tokenizer, texts, trip, measured_type: str,
           importance: dict[str, np.ndarray] | None = None) -> tuple[dict[str, str], str]:
    """Both formats' sequence: `budget` refused before minutes of measuring where even every unit's cheapest type
    exceeds it, each unit's KLD measured on CHUNKS × CHUNK_TOKENS tokens of `texts`, the greedy allocation. Returns the
    choice and the note's account of it ("measured alone at … on … tokens of …; predicted sum …")."""
    from .calibration import calibration_chunks

    allocate([Unit(u.param, u.names, u.sizes, dict.fromkeys(u.sizes, 0.0)) for u in found], budget, fixed, what)
    chunks = calibration_chunks(tokenizer, texts, CHUNKS, CHUNK_TOKENS)
    measure(model, chunks, found, trip, measured_type, importance)
    choice = allocate(found, budget, fixed, what)
    at = "/".join(dict.fromkeys(u.measured or measured_type for u in found))
    return choice, (f"each weight's KLD measured alone at {at} on {len(chunks)} × {CHUNK_TOKENS} tokens of "
                    + ", ".join(p.name for p in texts) + f"; predicted sum {predicted_kld(found, choice):.5f}")


def overrides(found: list[Unit], choice: dict[str, str]) -> dict[str, str]:
    """{artifact tensor name: type name} (GGUF: for llama.cpp's tt_overrides)."""
    return {name: choice[u.param] for u in found for name in u.names}


def predicted_kld(found: list[Unit], choice: dict[str, str]) -> float:
    return sum(u.kld[choice[u.param]] for u in found)


# --- ONNX: MatMulNBits at 4 or 8 bits per weight ----------------------------------------------------------

def matmul_nbits_sizes(block: int):
    """{"int4", "int8"} → bytes of a symmetric MatMulNBits weight of a Linear [out, in]: the packed
    blocks and one fp32 scale per block (symmetric: no zero points)."""
    def sizes(out: int, inputs: int) -> dict[str, int]:
        blocks = out * -(-inputs // block)
        return {"int4": blocks * (block // 2 + 4), "int8": blocks * (block + 4)}
    return sizes


def matmul_nbits_trip(block: int):
    """A Linear weight [out, in] through onnxruntime's own MatMulNBits quantizer (the C++ kernel its
    MatMulNBitsQuantizer calls, symmetric, `block` rows of the transposed weight per scale) and back."""
    from onnxruntime.capi._pybind_state import (
        quantize_matmul_4bits,
        quantize_matmul_8bits,
    )

    def trip(weight: np.ndarray, type_name: str, columns) -> np.ndarray:
        bits = {"int4": 4, "int8": 8}[type_name]
        out, inputs = weight.shape
        blocks = -(-inputs // block)
        transposed = np.zeros((blocks * block, out), dtype=np.float32)  # MatMul's [K, N], K padded to whole blocks
        transposed[:inputs] = weight.T
        packed = np.zeros((out, blocks, block * bits // 8), dtype=np.uint8)
        per_byte = 8 // bits
        zero_points = np.zeros((out, -(-blocks // per_byte)), dtype=np.uint8)
        scales = np.zeros((out, blocks), dtype=np.float32)
        (quantize_matmul_4bits if bits == 4 else quantize_matmul_8bits)(packed, transposed, scales, zero_points, block, out,
                                                                         blocks * block, True)
        if bits == 4:  # two per byte, the first in the low nibble
            levels = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(out, blocks, block)
        else:
            levels = packed
        values = (levels.astype(np.float32) - 2 ** (bits - 1)) * scales[..., None]
        return values.reshape(out, blocks * block)[:, :inputs]
    return trip
