"""torch checkpoint → one .gguf file.

Tensors stream one at a time from the memory-mapped safetensors (export/weights.py: tied-alias
resolution, temperature fold in fp32, finiteness check; then the family's layout transform), so
memory stays at about one tensor. Architectures stock llama.cpp knows are quantized by llama.cpp's
own quantizer (`llama_model_quantize`, through llama-cpp-python) from an f32 file written beside the
target; for an edgelm-defined architecture (tokenformer) gguf-py's `gguf.quants` quantizes each tensor
(Q8_0/Q4_0/Q5_0, bit-identical to llama.cpp), since llama.cpp's quantizer refuses unknown archs.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import GGML_QUANT_SIZES, GGML_QUANT_VERSION, GGMLQuantizationType, GGUFReader, GGUFValueType, GGUFWriter, LlamaFileType, quants

from .. import __version__
from ..constants import (GGUF_CONFIG, GGUF_FAMILY, GGUF_HEAD_TEMPERATURES, GGUF_HEAD_TEMPERATURES_BAKED,
                         GGUF_POSITION_ENCODING, GGUF_VERSION, llama_cpp_archs)
from ..errors import UserError
from ..fileio import atomic_output_file
from ..models import Checkpoint
from ..models.registry import expand_names
from ..tokenizer import load_tokenizer
from .gguf_vocab import add_vocab
from .temperatures import refuse_beyond_f16
from .weights import ExportedWeights

Q = GGMLQuantizationType
FLOAT_TYPES = {"f32": Q.F32, "f16": Q.F16, "bf16": Q.BF16}
QUANT_DEFAULTS = {"int8": "Q8_0", "int4": "Q4_K_M"}
QUANTS = tuple(FLOAT_TYPES) + tuple(QUANT_DEFAULTS)
# llama.cpp's quantized file types by name (Q4_0, Q5_K_M, …), read off gguf-py's enum
# (less Q2_K_S, which llama.cpp's quantizer makes only with an importance matrix edgelm does not compute)
NEEDS_IMATRIX = {"Q2_K_S"}
LLAMA_FILE_TYPES = {
    t.name.removeprefix("MOSTLY_"): t
    for t in LlamaFileType
    if t.name.startswith("MOSTLY_Q") and not t.name.endswith("_MOE") and t.name.removeprefix("MOSTLY_") not in NEEDS_IMATRIX
}
GGUF_PY_QUANTS = {"Q4_0": Q.Q4_0, "Q4_1": Q.Q4_1, "Q5_0": Q.Q5_0, "Q5_1": Q.Q5_1, "Q8_0": Q.Q8_0}
NEAREST_GGUF_PY = {"Q2": "Q4_0", "Q3": "Q4_0", "Q4": "Q4_0", "Q5": "Q5_0", "Q6": "Q8_0", "Q8": "Q8_0"}


@dataclass
class GGUFReport:
    path: Path
    arch: str
    file_type: str
    tensor_types: dict[str, str]  # GGUF tensor name → GGML type name, as written
    notes: list[str] = field(default_factory=list)

    def type_counts(self) -> dict[str, int]:
        return dict(Counter(self.tensor_types.values()))


def resolve_type(quant: str, gguf_type: str | None) -> str:
    """The GGML file type name for --quant / --gguf-type."""
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}", None, f"choose one of {', '.join(QUANTS)}")
    if gguf_type is None:
        return QUANT_DEFAULTS.get(quant, quant.upper())
    name = gguf_type.upper()
    if name in NEEDS_IMATRIX:
        raise UserError(f"--gguf-type {name} needs an importance matrix, which edgelm does not compute", None,
                        "choose Q2_K or Q3_K_S, or quantize the f16 export with llama.cpp's llama-quantize --imatrix")
    if name not in LLAMA_FILE_TYPES and name.lower() not in FLOAT_TYPES:
        raise UserError(f"unknown --gguf-type {gguf_type!r}", None, f"choose one of {', '.join(['F32', 'F16', 'BF16', *LLAMA_FILE_TYPES])}")
    return name


def _tensor_plan(checkpoint: Checkpoint) -> dict[str, str]:
    """GGUF name → checkpoint name, for every tensor of the model; an unmapped tensor is an error."""
    family, spec = checkpoint.family, checkpoint.spec
    names = expand_names(family.gguf_tensor_names, spec.num_layers)
    module_names = checkpoint.weight_names() + list(family.tied_tensors(spec))
    unmapped = [n for n in module_names if n not in names]
    if unmapped:
        raise ValueError(f"{family.name} declares no GGUF name for {unmapped}")
    return {names[n]: n for n in names if n in module_names}


def _tensors(checkpoint: Checkpoint, plan: dict[str, str]) -> Iterator[tuple[str, np.ndarray]]:
    """Each tensor as export/weights.py gives it (aliases resolved, temperatures folded, checked),
    in the family's GGUF layout."""
    weights = ExportedWeights(checkpoint)
    for gguf_name, name in plan.items():
        yield gguf_name, checkpoint.family.gguf_transform(checkpoint.spec, name, weights.get(name)).contiguous().numpy()


def _tensor_type(shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """1-D tensors (norms, biases) stay f32, as in llama.cpp; rows that don't fill a block fall back to f16."""
    if len(shape) < 2:
        return Q.F32
    block = GGML_QUANT_SIZES[wanted][0]  # 1 for float types
    return Q.F16 if shape[-1] % block else wanted


def _encode(name: str, array: np.ndarray, qtype: GGMLQuantizationType) -> np.ndarray:
    if qtype == Q.F32:
        return array.astype(np.float32, copy=False)  # already f32: a copy would double the largest tensor's memory
    if qtype != Q.BF16:  # f16 would turn it into inf, and block quants scale in f16 too; bf16 has f32's range
        refuse_beyond_f16(name, float(np.abs(array).max(initial=0.0)), qtype.name)
    if qtype == Q.F16:
        return array.astype(np.float16)
    return quants.quantize(array.astype(np.float32), qtype)


def _write(checkpoint: Checkpoint, path: Path, wanted: GGMLQuantizationType, file_type: LlamaFileType,
           on_tensor: Callable[[str], None] | None) -> dict[str, GGMLQuantizationType]:
    family, spec = checkpoint.family, checkpoint.spec
    arch = family.gguf_arch(spec)
    writer = GGUFWriter(str(path), arch)
    writer.add_name(checkpoint.path.resolve().name)
    writer.add_file_type(file_type)
    if wanted not in FLOAT_TYPES.values():
        writer.add_quantization_version(GGML_QUANT_VERSION)
    for key, value in family.gguf_hparams(spec).items():
        vtype = {bool: GGUFValueType.BOOL, int: GGUFValueType.UINT32, float: GGUFValueType.FLOAT32}[type(value)]
        writer.add_key_value(f"{arch}.{key}", value, vtype)
    table = checkpoint.head_temperatures()
    writer.add_string(GGUF_VERSION, __version__)
    writer.add_string(GGUF_FAMILY, family.name)
    writer.add_string(GGUF_POSITION_ENCODING, spec.position_encoding)
    writer.add_string(GGUF_CONFIG, json.dumps(checkpoint.config, sort_keys=True))
    # provenance only: the temperatures are already folded into the query weights
    writer.add_array(GGUF_HEAD_TEMPERATURES, [float(x) for x in table.flatten()])
    writer.add_bool(GGUF_HEAD_TEMPERATURES_BAKED, True)
    add_vocab(writer, load_tokenizer(checkpoint.path), spec.vocab_size)

    plan = _tensor_plan(checkpoint)
    types = {}
    for gguf_name, name in plan.items():
        source_shape = checkpoint.tensors.shapes[family.tied_tensors(spec).get(name, name)]
        shape = tuple(family.gguf_transform(spec, name, torch.empty(source_shape, device="meta")).shape)
        qtype = types[gguf_name] = _tensor_type(shape, wanted)
        block, type_size = GGML_QUANT_SIZES[qtype]
        writer.add_tensor_info(gguf_name, shape, np.float32, int(np.prod(shape)) // block * type_size, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for gguf_name, array in _tensors(checkpoint, plan):
        writer.write_tensor_data(_encode(gguf_name, array, types[gguf_name]))
        if on_tensor:
            on_tensor(gguf_name)
    writer.close()
    return types


def _quantize_with_llama_cpp(source: Path, target: Path, file_type: LlamaFileType) -> None:
    import llama_cpp

    # llama.cpp logs a line per tensor through llama-cpp-python's logger; edgelm prints its own summary
    # (Llama(verbose=False) sets the same level)
    logging.getLogger("llama-cpp-python").setLevel(logging.ERROR)
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = os.cpu_count() or 1
    if llama_cpp.llama_model_quantize(str(source).encode(), str(target).encode(), params) != 0:
        raise UserError(f"llama.cpp's quantizer refused to make {file_type.name.removeprefix('MOSTLY_')}", None,
                        "choose another --gguf-type (Q4_K_M is the usual int4), or check the disk has room")


def _types_in(path: Path) -> dict[str, str]:
    return {t.name: t.tensor_type.name for t in GGUFReader(str(path)).tensors}


def export_gguf(
    checkpoint: Checkpoint,
    out: Path,
    quant: str = "f16",
    gguf_type: str | None = None,
    force: bool = False,
    on_tensor: Callable[[str], None] | None = None,
) -> GGUFReport:
    family, spec = checkpoint.family, checkpoint.spec
    type_name = resolve_type(quant, gguf_type)
    try:
        arch = family.gguf_arch(spec)
        family.gguf_hparams(spec)
    except ValueError as exc:
        raise UserError(f"cannot export this {family.name} model to GGUF: {exc}", checkpoint.path / "config.json") from None
    notes: list[str] = []
    with atomic_output_file(out, force) as tmp:
        if type_name.lower() in FLOAT_TYPES:
            qtype = FLOAT_TYPES[type_name.lower()]
            file_type = {Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.BF16: LlamaFileType.MOSTLY_BF16}[qtype]
            _write(checkpoint, tmp, qtype, file_type, on_tensor)
        elif arch in llama_cpp_archs():
            fd, name = tempfile.mkstemp(prefix=f".{out.name}.f32-", suffix=".gguf", dir=out.parent)
            os.close(fd)
            try:
                _write(checkpoint, Path(name), Q.F32, LlamaFileType.ALL_F32, on_tensor)
                _quantize_with_llama_cpp(Path(name), tmp, LLAMA_FILE_TYPES[type_name])
            finally:
                Path(name).unlink(missing_ok=True)
        else:
            native = type_name if type_name in GGUF_PY_QUANTS else NEAREST_GGUF_PY[type_name[:2]]
            if native != type_name:
                notes.append(f"{type_name} needs llama.cpp's quantizer, which does not know arch {arch!r}; "
                             f"gguf-py quantized to {native}, the nearest type it can produce")
            _write(checkpoint, tmp, GGUF_PY_QUANTS[native], LLAMA_FILE_TYPES[native], on_tensor)
            type_name = native
        written = _types_in(tmp)
    return GGUFReport(out, arch, type_name, written, notes)
