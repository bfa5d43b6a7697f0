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
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import UserError

# GGML types the allocation chooses among, cheapest first (bits per weight: 3.44, 4.5, 5.5, 6.56, 8.5)
CANDIDATES = ("Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q8_0")
MEASURED_TYPE = "Q4_K"
SIZE_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}
CHUNKS, CHUNK_TOKENS = 4, 256  # the calibration text each weight's KLD is measured on: one forward per weight
NOTE_KEY = "edgelm.quantize.mixed"  # the file's record of the budget and the predicted KLD (the types are the tensors')
# room kept for the certificate's edgelm.parity.* keys, added after the quantizer (2.7 KB measured on tiny-nope:
# a fixed-size probe, 8 greedy tokens and top-8 logits)
CERTIFICATE_RESERVE = 8 * 1024
# GGUF aligns each tensor's data to 32 bytes (general.alignment): room left per tensor for the padding
ALIGNMENT = 32


def parse_size(text: str) -> int:
    """'3.5MB', '3500000', '3.3MiB', '900 KB' → bytes (KB/MB/GB decimal, KiB/MiB/GiB binary)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([A-Za-z]*)\s*", text)
    if not found or found.group(2).upper() not in SIZE_UNITS:
        raise UserError(f"--max-size {text!r} is not a size", None, "give bytes or a size such as 3.5MB or 3.3MiB")
    return int(float(found.group(1)) * SIZE_UNITS[found.group(2).upper()])


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
    """One weight of the reference and the GGUF tensors made from it (two when an LM head is tied to
    the embedding: both take one type, since the reference cannot quantize them apart)."""

    param: str
    gguf_names: list[str]
    rows: int  # of one GGUF tensor
    per_row: int
    candidates: tuple[str, ...] = ()
    kld: dict[str, float] = field(default_factory=dict)  # type → measured (MEASURED_TYPE) or predicted KLD

    def bytes(self, type_name: str) -> int:
        return len(self.gguf_names) * type_bytes(type_name, self.rows, self.per_row)


def units(model: torch.nn.Module, plan: dict[str, str]) -> list[Unit]:
    """The 2-D weights of `model` that GGUF tensors are made from (`plan`: GGUF name → source name),
    grouped by the parameter they share. A weight whose rows fill no candidate's block is left out
    (llama.cpp's own fallback types it)."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    tensors = model.state_dict(keep_vars=True)
    found: dict[int, Unit] = {}
    for gguf_name, source in plan.items():
        tensor = tensors.get(source)
        if tensor is None or tensor.dim() != 2:
            continue
        rows, per_row = tensor.shape
        key = tensor.untyped_storage().data_ptr()
        if key in found:
            found[key].gguf_names.append(gguf_name)
            continue
        fits = tuple(t for t in CANDIDATES if per_row % GGML_QUANT_SIZES[GGMLQuantizationType[t]][0] == 0)
        if MEASURED_TYPE in fits:
            found[key] = Unit(source, [gguf_name], rows, per_row, fits)
    return list(found.values())


def _kld(reference_logp: torch.Tensor, logits: torch.Tensor) -> float:
    logp = F.log_softmax(logits.double(), dim=-1)
    return float((reference_logp.exp() * (reference_logp - logp)).sum(-1).mean())


@torch.no_grad()
def measure(model, chunks: list[list[int]], found: list[Unit], importance: dict[str, np.ndarray] | None = None,
            on_unit=None) -> None:
    """Fill each unit's `kld`: measured at MEASURED_TYPE over `chunks`, predicted for its other candidates
    (`importance`: source name → per-column mean squares, weighing both the quantizer and the errors)."""
    lib = _ggml_base()
    ids = torch.tensor(chunks)
    reference = F.log_softmax(model(ids)[0].double(), dim=-1)
    tensors = model.state_dict(keep_vars=True)
    for unit in found:
        param = tensors[unit.param]
        original = param.data.clone()
        weight = original.numpy()
        columns = None if importance is None else importance.get(unit.param)
        trips = {t: round_trip(weight, t, columns, lib) for t in unit.candidates}
        param.data.copy_(torch.from_numpy(trips[MEASURED_TYPE]))
        measured = _kld(reference, model(ids)[0])
        param.data.copy_(original)
        weigh = np.ones(unit.per_row) if columns is None else columns.astype(np.float64)
        errors = {t: float((np.square(trip.astype(np.float64) - weight) * weigh).sum()) for t, trip in trips.items()}
        unit.kld = {t: measured * errors[t] / max(errors[MEASURED_TYPE], 1e-30) for t in unit.candidates}
        if on_unit:
            on_unit(unit)


def allocate(found: list[Unit], budget: int, fixed: int, what: str) -> dict[str, str]:
    """{source name: type}: every unit at its cheapest candidate, then the greedy upgrades (most
    predicted KLD removed per byte) while `fixed` + the units' bytes stays within `budget`."""
    choice = {u.param: u.candidates[0] for u in found}
    spent = fixed + sum(u.bytes(choice[u.param]) for u in found)
    if spent > budget:
        raise UserError(f"--max-size {budget} bytes is below the smallest {what} mixed-precision file ({spent} bytes, every "
                        f"weight {CANDIDATES[0]})", None, f"give --max-size {spent} or more")
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


def overrides(found: list[Unit], choice: dict[str, str]) -> dict[str, str]:
    """{GGUF tensor name: GGML type name} for llama.cpp's tt_overrides."""
    return {name: choice[u.param] for u in found for name in u.gguf_names}


def predicted_kld(found: list[Unit], choice: dict[str, str]) -> float:
    return sum(u.kld[choice[u.param]] for u in found)
