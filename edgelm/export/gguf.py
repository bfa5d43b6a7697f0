"""torch checkpoint → one .gguf file.

Tensors stream one at a time from the memory-mapped safetensors (export/weights.py: tied-alias
resolution, temperature fold in fp32, finiteness check; then the family's layout transform), and a
tensor that goes out unchanged (the embedding, the output head, the MLP's) streams a block of rows at
a time, so memory stays at about one attention projection. Architectures stock llama.cpp knows are
quantized by llama.cpp's own quantizer (quantize/llama_cpp.py, in a process of its own) from an f32
file written beside the target. llama.cpp's quantizer refuses an edgelm-defined architecture
(tokenformer): its K-quant file types (Q4_K_M, …) are made by ggml's own quantizer, tensor by tensor,
with llama.cpp's recipe over the roles its layout declares and the importance matrix when calibrated
(quantize/ggml_quants.py); its legacy types (Q8_0/Q4_0/Q5_0, bit-identical to llama.cpp) by gguf-py's
`gguf.quants`.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from gguf import (GGML_QUANT_SIZES, GGML_QUANT_VERSION, MODEL_TENSOR, TENSOR_NAMES, GGMLQuantizationType, GGUFType, GGUFValueType, GGUFWriter,
                  LlamaFileType, quants, size_label)

from .. import __version__
from ..constants import (GGUF_CONFIG, GGUF_CONTEXT_LIMIT, GGUF_FAMILY, GGUF_HEAD_TEMPERATURES, GGUF_HEAD_TEMPERATURES_BAKED,
                         GGUF_POSITION_ENCODING, GGUF_SAMPLING_KEYS, GGUF_VERSION, llama_cpp_archs)
from ..errors import UserError, WriteFailed
from ..fileio import atomic_output_file, hidden_prefix
from ..gguf_keys import declared
from ..gguf_layout import expand_names
from ..models import Checkpoint
from ..quantize import ggml_quants, mixed
from ..quantize.imatrix import quantize_keys as imatrix_quantize_keys
from ..quantize.imatrix import write_gguf as write_imatrix
from ..quantize.llama_cpp import quantize_gguf
from .gguf_mapping import gguf_mapping
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
# what an edgelm-defined arch gets for a file type neither gguf-py nor ggml_quants' recipes make
NEAREST_NATIVE = {"Q2": "Q4_K_S", "Q3": "Q4_K_S", "Q4": "Q4_K_M", "Q5": "Q5_K_M", "Q6": "Q6_K", "Q8": "Q8_0"}


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
    """The GGML file type name for --quant / --gguf-type; --quant also takes llama.cpp's type names
    (llama-quantize's Q4_K_M, Q8_0, …, any case), as --gguf-type does."""
    def llama_name(text: str) -> str:  # gguf-py's LlamaFileType spells them MOSTLY_Q4_K_M, ALL_F32: with or without the prefix
        return text.upper().removeprefix("MOSTLY_").removeprefix("ALL_")

    if quant.lower() in QUANTS or llama_name(quant).lower() in FLOAT_TYPES:
        quant = llama_name(quant).lower()
    elif llama_name(quant) in LLAMA_FILE_TYPES or llama_name(quant) in NEEDS_IMATRIX:
        if gguf_type is not None and llama_name(gguf_type) != llama_name(quant):
            raise UserError(f"--quant {quant} and --gguf-type {gguf_type} name two types", None, "give one of them")
        quant, gguf_type = "f16", quant
    elif f"MOSTLY_{llama_name(quant)}" in LlamaFileType.__members__:  # IQ2_XS, TQ1_0, …: llama.cpp's, not made here (stranger 23)
        raise UserError(f"edgelm does not make --quant {quant!r}, a llama.cpp type llama-quantize makes", None,
                        f"choose one of {', '.join(QUANTS)} or {', '.join(LLAMA_FILE_TYPES)}; or export f16 and quantize that "
                        "with llama.cpp's llama-quantize (the IQ types with --imatrix)")
    else:
        raise UserError(f"unknown --quant {quant!r}", None, f"choose one of {', '.join(QUANTS)}, or a llama.cpp type "
                        f"({', '.join(LLAMA_FILE_TYPES)})")
    if gguf_type is None:
        return QUANT_DEFAULTS.get(quant, quant.upper())
    name = llama_name(gguf_type)
    if name in NEEDS_IMATRIX:
        raise UserError(f"--gguf-type {name} needs an importance matrix, which edgelm does not compute", None,
                        "choose Q2_K or Q3_K_S, or quantize the f16 export with llama.cpp's llama-quantize --imatrix")
    if name not in LLAMA_FILE_TYPES and name.lower() not in FLOAT_TYPES:
        made_elsewhere = f"MOSTLY_{name}" in LlamaFileType.__members__  # IQ4_XS, TQ1_0, …: llama.cpp's, not made here
        raise UserError(f"{'edgelm does not make' if made_elsewhere else 'unknown'} --gguf-type {gguf_type!r}", None,
                        f"choose one of {', '.join(['F32', 'F16', 'BF16', *LLAMA_FILE_TYPES])}"
                        + ("; or quantize the f16 export with llama.cpp's llama-quantize" if made_elsewhere else ""))
    if quant in QUANT_DEFAULTS and not name.startswith(QUANT_DEFAULTS[quant][:2]):  # int8 → Q8_*, int4 → Q4_*
        raise UserError(f"--quant {quant} and --gguf-type {gguf_type} name two precisions", None,
                        f"give --gguf-type alone, or one of --quant {quant}'s types (Q{QUANT_DEFAULTS[quant][1]}_…)")
    return name


@dataclass
class _Source:
    """One source of GGUF tensors, in writing order: a checkpoint tensor by module name (its GGUF name
    declared in its GGUF mapping's tensor_names), several (`stacked`, `name` the first) that declare one GGUF name,
    stacked in declaration order along a new outermost axis, or, with `name` None, the mapping's extra tensors."""

    name: str | None
    gguf_name: str | None
    outputs: dict[str, torch.Tensor]  # GGUF name → tensor: meta (shape only) for a checkpoint tensor
    streamed: bool = False  # one output, left as stored: written a block of rows at a time
    stacked: tuple[str, ...] = ()


def _sources(checkpoint: Checkpoint, weights: ExportedWeights) -> list[_Source]:
    """Every GGUF tensor, by the source it comes from; an unmapped checkpoint tensor, or a stack with a
    part missing, is an error."""
    family, spec = checkpoint.family, checkpoint.spec
    mapping = gguf_mapping(family)
    names = expand_names(mapping.tensor_names, spec.num_layers)
    module_names = checkpoint.weight_names() + list(family.tied_tensors(spec))
    unmapped = [n for n in module_names if n not in names]
    if unmapped:
        raise ValueError(f"{family.name} declares no GGUF name for {unmapped}")
    parts: dict[str, list[str]] = {}  # GGUF name → the checkpoint names that declare it, in declaration order
    for name, gguf_name in names.items():
        parts.setdefault(gguf_name, []).append(name)
    plan = [_Source(None, None, dict(mapping.extra_tensors(spec)))]
    for gguf_name, stack in parts.items():
        present = [n for n in stack if n in module_names]
        if len(stack) > 1:
            if len(present) < len(stack):
                raise ValueError(f"{family.name} stacks {stack} into {gguf_name}, but the checkpoint lacks "
                                 f"{[n for n in stack if n not in present]}")
            slices = [_stack_part(mapping, spec, n, gguf_name, torch.empty(weights.shapes[n], device="meta")) for n in stack]
            plan.append(_Source(stack[0], gguf_name, {gguf_name: torch.stack(slices)}, stacked=tuple(stack)))
            continue
        for name in present:
            source = torch.empty(weights.shapes[name], device="meta")
            outputs = dict(mapping.tensors(spec, name, gguf_name, source))
            # the mapping's transform left it as stored
            streamed = len(outputs) == 1 and next(iter(outputs.values())) is source and weights.unchanged(name)
            plan.append(_Source(name, gguf_name, outputs, streamed))
    return [source for source in plan if source.outputs]


def _stack_part(mapping, spec, name: str, gguf_name: str, tensor: torch.Tensor) -> torch.Tensor:
    """One slice of a stacked GGUF tensor: the mapping's transform of one checkpoint tensor, which must
    give exactly that tensor."""
    outputs = dict(mapping.tensors(spec, name, gguf_name, tensor))
    assert list(outputs) == [gguf_name], (name, list(outputs))
    return outputs[gguf_name]


def _tensor_plan(checkpoint: Checkpoint) -> dict[str, str]:
    """GGUF name → the checkpoint tensor it is made from (the extra tensors, made from the spec, are not
    in it; a stacked tensor names its first part)."""
    return {gguf_name: source.name for source in _sources(checkpoint, ExportedWeights(checkpoint)) if source.name
            for gguf_name in source.outputs}


def gguf_tensor_data(weights: ExportedWeights, source: _Source) -> dict[str, torch.Tensor]:
    """The source's GGUF tensors with data: the checkpoint tensor as export/weights.py gives it
    (aliases resolved, temperatures folded, checked), through the GGUF mapping's `tensors`."""
    if source.name is None:
        return source.outputs
    checkpoint = weights.checkpoint
    mapping, spec = gguf_mapping(checkpoint.family), checkpoint.spec
    if source.stacked:
        return {source.gguf_name: torch.stack([_stack_part(mapping, spec, n, source.gguf_name, weights.get(n)) for n in source.stacked])}
    outputs = dict(mapping.tensors(spec, source.name, source.gguf_name, weights.get(source.name)))
    assert outputs.keys() == source.outputs.keys(), (source.name, list(outputs))
    return outputs


class _RowStream:
    """A tensor gguf-py's writer writes a block of rows at a time. `GGUFWriter.write_tensor_data`
    asks only for `nbytes` and `tofile(file)` — what gguf-py's own lazy tensors (gguf/lazy.py,
    `LazyNumpyTensor.tofile`) offer it — so the 1.1B embedding (262 MB in f32) is never whole."""

    def __init__(self, nbytes: int, blocks: Callable[[], Iterator[np.ndarray]]):
        self.nbytes = nbytes
        self._blocks = blocks

    def tofile(self, file) -> None:
        written = 0
        for block in self._blocks():
            block.tofile(file)
            written += block.nbytes
        # the writer checked the declared size against the tensor info; hold the blocks to it too
        assert written == self.nbytes, f"wrote {written} bytes of a {self.nbytes}-byte tensor"


def _tensor_data(weights: ExportedWeights, source: _Source, types: dict[str, GGMLQuantizationType],
                 sizes: dict[str, int], importance: dict[str, np.ndarray]) -> Iterator[np.ndarray | _RowStream]:
    """The source's GGUF tensors encoded as `types`: whole, or (`streamed`) a block of rows at a time."""
    if source.streamed:  # blocks of whole rows: float conversion and block quantization work row by row
        [gguf_name] = source.outputs
        qtype, columns = types[gguf_name], importance.get(gguf_name)
        yield _RowStream(sizes[gguf_name], lambda: (_encode(gguf_name, block.numpy(), qtype, columns)
                                                    for block in weights.row_blocks(source.name)))
        return
    for gguf_name, tensor in gguf_tensor_data(weights, source).items():
        yield _encode(gguf_name, tensor.contiguous().numpy(), types[gguf_name], importance.get(gguf_name))


# matrices llama.cpp's converter and quantizer keep in f32 whatever the file type (learned positions: GPT-2's wpe)
F32_MATRICES = frozenset({TENSOR_NAMES[MODEL_TENSOR.POS_EMBD] + ".weight"})


def _tensor_type(name: str, shape: tuple[int, ...], wanted: GGMLQuantizationType) -> GGMLQuantizationType:
    """1-D tensors (norms, biases) and F32_MATRICES stay f32, as in llama.cpp; rows that don't fill a block fall back to f16."""
    if len(shape) < 2 or name in F32_MATRICES:
        return Q.F32
    block = GGML_QUANT_SIZES[wanted][0]  # 1 for float types
    return Q.F16 if shape[-1] % block else wanted


def _encode(name: str, array: np.ndarray, qtype: GGMLQuantizationType, importance: np.ndarray | None = None) -> np.ndarray:
    """`importance`: per-column weights (one row per stacked matrix) for ggml's quantizer."""
    if qtype == Q.F32:
        return array.astype(np.float32, copy=False)  # already f32: a copy would double the largest tensor's memory
    if qtype != Q.BF16:  # f16 would turn it into inf, and block quants scale in f16 too; bf16 has f32's range
        refuse_beyond_f16(name, float(np.abs(array).max(initial=0.0)), qtype.name)
    if qtype == Q.F16:
        return array.astype(np.float16)
    if qtype in GGUF_PY_QUANTS.values() and importance is None:
        return quants.quantize(array.astype(np.float32), qtype)
    return ggml_quants.quantize(array, qtype.name, importance)  # ggml's quantizer takes the importance of its 32-wide types too


def _write(checkpoint: Checkpoint, path: Path, wanted: GGMLQuantizationType, file_type: LlamaFileType,
           on_tensor: Callable[[str], None] | None, chosen: dict[str, str] | None = None,
           importance: dict[str, np.ndarray] | None = None, metadata: dict[str, str | int] | None = None) -> dict[str, str]:
    """Write the GGUF, each matrix as `wanted` or its `chosen` type ({GGUF name: GGML type name}),
    weighing ggml's rounding errors by `importance` ({GGUF name: per-column weights}), `metadata`
    ({key: string or integer}) added as they are; returns each tensor's GGML type name."""
    family, spec = checkpoint.family, checkpoint.spec
    mapping = gguf_mapping(family)
    arch = mapping.arch(spec)
    writer = GGUFWriter(str(path), arch)
    # the general keys llama.cpp's converter writes for every file (stranger 46: f32 and f16 lacked
    # quantization_version, and type and size_label were missing at every type)
    writer.add_type(GGUFType.MODEL)
    writer.add_name(checkpoint.path.resolve().name)
    writer.add_size_label(size_label(checkpoint.parameter_count(), 0, 0, 0))
    writer.add_file_type(file_type)
    writer.add_quantization_version(GGML_QUANT_VERSION)
    for key, value in mapping.hparams(spec).items():
        writer.add_key_value(f"{arch}.{declared(key).name}", value, GGUFValueType[key.value_type])
    table = checkpoint.head_temperatures()
    writer.add_string(GGUF_VERSION, __version__)
    writer.add_string(GGUF_FAMILY, family.name)
    writer.add_string(GGUF_POSITION_ENCODING, spec.position_encoding)
    writer.add_string(GGUF_CONFIG, json.dumps(checkpoint.config, sort_keys=True))
    # provenance only: the temperatures are already folded into the query weights
    writer.add_array(GGUF_HEAD_TEMPERATURES, [float(x) for x in table.flatten()])
    writer.add_bool(GGUF_HEAD_TEMPERATURES_BAKED, True)
    add_vocab(writer, checkpoint.tokenizer(), spec.vocab_size, mapping.stores_tokenizer_files)
    for name, value in checkpoint.recommended_sampling().items():  # as llama.cpp's converter writes generation_config.json's
        (writer.add_int32 if name == "top_k" else writer.add_float32)(GGUF_SAMPLING_KEYS[name], value)
    for key, value in (metadata or {}).items():
        writer.add_string(key, value) if isinstance(value, str) else writer.add_uint32(key, value)

    weights = ExportedWeights(checkpoint)
    plan = _sources(checkpoint, weights)
    types, sizes = {}, {}
    for source in plan:
        for gguf_name, tensor in source.outputs.items():
            shape = tuple(tensor.shape)
            qtype = types[gguf_name] = Q[chosen[gguf_name]] if chosen and gguf_name in chosen else _tensor_type(gguf_name, shape, wanted)
            block, type_size = GGML_QUANT_SIZES[qtype]
            sizes[gguf_name] = int(np.prod(shape)) // block * type_size
            writer.add_tensor_info(gguf_name, shape, np.float32, sizes[gguf_name], raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    for source in plan:
        for gguf_name, data in zip(source.outputs, _tensor_data(weights, source, types, sizes, importance or {})):
            writer.write_tensor_data(data)
            if on_tensor:
                on_tensor(gguf_name)
    writer.close()
    return {name: qtype.name for name, qtype in types.items()}


def _calibrate(checkpoint: Checkpoint, texts: Sequence[Path]):
    """One pass of the torch reference over `texts`: its importance matrix (by module tensor name)."""
    from ..quantize.calibration import calibration_chunks, collect

    chunks = calibration_chunks(checkpoint.tokenizer(), texts)
    model = checkpoint.load_model()
    imatrix = collect(model, chunks, [p.name for p in texts])
    del model  # before a quantizer starts
    return imatrix


def _imatrix_note(weights: int, imatrix, texts: Sequence[Path]) -> str:
    return (f"importance matrix: {weights} weights, {imatrix.chunk_count} chunks × {imatrix.chunk_size} tokens of "
            + ", ".join(p.name for p in texts))


def _write_imatrix(checkpoint: Checkpoint, texts: Sequence[Path], path: Path):
    """The importance matrix of `texts`, written at `path` under the GGUF tensor names. Returns a note
    for the user, the matrix and the keys llama-quantize records of it."""
    imatrix = _calibrate(checkpoint, texts)
    names = write_imatrix(imatrix, {source: gguf for gguf, source in _tensor_plan(checkpoint).items()}, path)
    return _imatrix_note(len(names), imatrix, texts), imatrix, imatrix_quantize_keys(imatrix, len(names))


def _importance(checkpoint: Checkpoint, imatrix) -> dict[str, np.ndarray]:
    """{GGUF name: the per-column mean squares ggml's quantizer weighs its errors by}: a stacked
    tensor one row per part, in stacking order (each of its matrices quantized with its own)."""
    out = {}
    for source in _sources(checkpoint, ExportedWeights(checkpoint)):
        parts = source.stacked or (source.name,)
        if source.name is None or len(source.outputs) != 1 or not all(p in imatrix.sums for p in parts):
            continue
        [(gguf_name, tensor)] = source.outputs.items()
        columns = np.stack([imatrix.mean_squares(p) for p in parts])
        # the layout stores each matrix with the dimension its product contracts along its rows
        assert columns.shape[-1] == tensor.shape[-1], (gguf_name, columns.shape, tuple(tensor.shape))
        out[gguf_name] = columns if source.stacked else columns[0]
    return out


def _recipe_types(checkpoint: Checkpoint, type_name: str, input_blocks: bool = True) -> dict[str, str]:
    """{GGUF name: GGML type} of every matrix: llama.cpp's `type_name` recipe over the roles the
    family declares (quantize/ggml_quants.py), a 32-wide type where the layout bounds a tensor's input
    block; `input_blocks=False`: the recipe as llama.cpp writes it, the baseline benchmarks/fidelity.py
    and the tests measure that against."""
    mapping, spec = gguf_mapping(checkpoint.family), checkpoint.spec
    roles = mapping.tensor_roles(spec)
    blocks = mapping.input_blocks(spec) if input_blocks else {}
    return {gguf_name: ggml_quants.recipe_type(type_name, *roles.get(gguf_name, (None, 0)), spec.num_layers, tensor.shape[-1],
                                               blocks.get(gguf_name))
            for source in _sources(checkpoint, ExportedWeights(checkpoint)) for gguf_name, tensor in source.outputs.items()
            if tensor.dim() >= 2 and gguf_name not in F32_MATRICES}


def _mixed_types(checkpoint: Checkpoint, f32: Path, texts: Sequence[Path], imatrix, budget: int, type_name: str, trip):
    """Per-tensor GGML types within `budget` bytes (quantize/mixed.py): each weight (or stack of
    weights) its KLD measured on `texts` (the built-in calibration text when none) after `trip` through
    the file's quantizer, the greedy allocation over the bytes the f32 file's other contents leave.
    Returns {GGUF name: type}, the note for the file, and notes for the user."""
    from ..quantize.calibration import DEFAULT_TEXTS

    texts = texts or DEFAULT_TEXTS
    plan = {gguf_name: source.stacked or source.name for source in _sources(checkpoint, ExportedWeights(checkpoint))
            if source.name for gguf_name in source.outputs}
    model = checkpoint.load_model()
    mapping = gguf_mapping(checkpoint.family)
    blocks = mapping.input_blocks(checkpoint.spec)
    found = mixed.units(model, plan, lambda name, rows, per_row: mixed.gguf_sizes(rows, per_row, blocks.get(name)),
                        mapping.transposed(checkpoint.spec))
    parameters = model.state_dict()
    floats = sum(4 * parameters[p].numel() * len(u.names) for u in found for p in u.params)
    fixed = f32.stat().st_size - floats + mixed.ALIGNMENT * len(plan) + mixed.CERTIFICATE_RESERVE
    importance = None if imatrix is None else {p: imatrix.mean_squares(p) for u in found for p in u.params if p in imatrix.sums}
    choice, how = mixed.choose(model, found, budget, fixed, type_name, checkpoint.tokenizer(), texts, trip, mixed.MEASURED_TYPE, importance)
    del model
    counts = Counter(choice.values())
    predicted = mixed.predicted_kld(found, choice)
    measured = "/".join(dict.fromkeys(u.measured or mixed.MEASURED_TYPE for u in found))
    notes = [f"mixed precision within {budget} bytes: " + ", ".join(f"{n} × {t}" for t, n in sorted(counts.items())) + f" ({how})"]
    key = {mixed.NOTE_KEY: f"max_size={budget} predicted_kld={predicted:.6f} measured={measured}"}
    return mixed.overrides(found, choice), key, notes


def _write_ggml_quants(checkpoint: Checkpoint, path: Path, type_name: str, on_tensor, calibration: Sequence[Path],
                       max_size: int | None, notes: list[str]) -> dict[str, str]:
    """An arch llama.cpp's quantizer does not know, as a K-quant file type: ggml's quantizer with
    llama.cpp's recipe for `type_name` (or, with `max_size`, the mixed-precision choice, measured
    through the same quantizer), weighing errors by the calibration's importance matrix when given."""
    imatrix = importance = None
    metadata = {}
    if calibration:
        imatrix = _calibrate(checkpoint, calibration)
        importance = _importance(checkpoint, imatrix)
        notes.append(_imatrix_note(len(importance), imatrix, calibration) + " (ggml's quantizer)")
        metadata |= imatrix_quantize_keys(imatrix, len(importance))
    types = _recipe_types(checkpoint, type_name)
    if max_size is not None:  # the f32 file, as llama.cpp's path has it: the allocation's measure of the other bytes
        fd, name = tempfile.mkstemp(prefix=f".{path.name}.f32-", suffix=".gguf", dir=path.parent)
        os.close(fd)
        try:
            _write(checkpoint, Path(name), Q.F32, LlamaFileType.ALL_F32, None)
            chosen, key, chosen_notes = _mixed_types(checkpoint, Path(name), calibration, imatrix, max_size, type_name,
                                                     ggml_quants.round_trip)
            metadata |= key
        finally:
            Path(name).unlink(missing_ok=True)
        types |= chosen
        notes += chosen_notes
    return _write(checkpoint, path, Q[ggml_quants.RECIPES[type_name][0]], LLAMA_FILE_TYPES[type_name], on_tensor, types,
                  importance, metadata)


def _refuse_no_room_for_f32(checkpoint, out: Path) -> None:
    """llama.cpp's quantizer reads an f32 GGUF, written beside the output first: a folder without room for it and the
    output failed after minutes with the full-disk line, no size said (stranger 54: a 3.4 MB int4 export on 4 MB)."""
    f32 = 4 * sum(math.prod(shape) for shape in checkpoint.tensors.shapes.values())
    needed = f32 + f32 // 3  # the intermediate, and the output beside it (Q8_0 is ~0.27 of f32)
    free = shutil.disk_usage(out.parent).free
    if needed > free:
        raise WriteFailed(f"a quantized GGUF is made from an f32 copy written beside it first: about {needed / 1e6:,.1f} MB, and "
                          f"{out.parent} has {free / 1e6:,.1f} MB free", out, "free some space there, or give --out on a larger disk")


def export_gguf(
    checkpoint: Checkpoint,
    out: Path,
    quant: str = "f16",
    gguf_type: str | None = None,
    force: bool = False,
    on_tensor: Callable[[str], None] | None = None,
    calibration: Sequence[Path] = (),
    certificate: bool = True,
    max_size: int | None = None,
    on_step: Callable[[str], None] | None = None,
    on_quantized: Callable[[int, int], None] | None = None,
) -> GGUFReport:
    """`on_tensor(name)` as each tensor is written (the f32 intermediate's, where llama.cpp quantizes);
    `on_step(text)` as a step without a count begins, `on_quantized(n, total)` as llama.cpp's quantizer
    starts its n-th tensor (the f32 write is a fifth of a 1.1B Q4_K_M export; the quantizer most of the rest).
    `calibration`: texts for an importance matrix (quantize/calibration.py) that llama.cpp's
    quantizer weighs its rounding errors by; used for the types llama.cpp's quantizer makes.
    `certificate`: compute the parity certificate on the finished file, by the runtime that runs it,
    and add its `edgelm.parity.*` keys (certificate.py) — after llama.cpp's quantizer, which copies
    the source file's keys: a certificate of the f32 intermediate would certify another file.
    `max_size`: bytes the file may take; each weight's type is then chosen by its measured sensitivity
    (quantize/mixed.py) instead of llama.cpp's recipe for `quant`."""
    family, spec = checkpoint.family, checkpoint.spec
    type_name = resolve_type(quant, gguf_type)
    try:
        mapping = gguf_mapping(family)
        arch = mapping.arch(spec)
        for key in mapping.hparams(spec):
            declared(key)
    except ValueError as exc:
        raise UserError(f"cannot export this {family.name} model to GGUF: {exc}", checkpoint.path / "config.json") from None
    if spec.max_positions > GGUF_CONTEXT_LIMIT:  # refused before minutes of writing a file no reader of edgelm's opens
        raise UserError(f"the model declares {spec.max_positions:,} positions; a GGUF holds at most {GGUF_CONTEXT_LIMIT:,}",
                        checkpoint.path / "config.json", "set max_position_embeddings to the context the model was trained for")
    notes: list[str] = []
    step = on_step or (lambda _: None)
    with atomic_output_file(out, force) as tmp:
        if type_name.lower() in FLOAT_TYPES:
            if max_size is not None:
                raise UserError(f"--max-size chooses among quantized types, and {type_name} is not one", None,
                                "add --quant int4 (or another quantized type), or leave out --max-size")
            qtype = FLOAT_TYPES[type_name.lower()]
            file_type = {Q.F32: LlamaFileType.ALL_F32, Q.F16: LlamaFileType.MOSTLY_F16, Q.BF16: LlamaFileType.MOSTLY_BF16}[qtype]
            written = _write(checkpoint, tmp, qtype, file_type, on_tensor)
        elif arch in llama_cpp_archs():
            _refuse_no_room_for_f32(checkpoint, out)
            fd, name = tempfile.mkstemp(prefix=hidden_prefix(out, "f32"), suffix=".gguf", dir=out.parent)
            os.close(fd)
            imatrix = Path(name).with_suffix(".imatrix.gguf") if calibration else None
            try:
                matrix, metadata = None, {}
                if imatrix:
                    step("importance matrix")
                    note, matrix, metadata = _write_imatrix(checkpoint, calibration, imatrix)
                    notes.append(note)
                step("")
                _write(checkpoint, Path(name), Q.F32, LlamaFileType.ALL_F32, on_tensor)
                types = None
                if max_size is not None:
                    step("measuring each tensor's types for --max-size")
                    types, key, chosen = _mixed_types(checkpoint, Path(name), calibration, matrix, max_size, type_name,
                                                      mixed.ggml_trip())
                    metadata |= key
                    notes += chosen
                step("llama.cpp's quantizer")
                written = quantize_gguf(Path(name), tmp, int(LLAMA_FILE_TYPES[type_name]), type_name, imatrix, types, metadata,
                                        on_tensor=on_quantized)
            finally:
                Path(name).unlink(missing_ok=True)
                if imatrix:
                    imatrix.unlink(missing_ok=True)
        else:
            native = type_name if type_name in GGUF_PY_QUANTS or type_name in ggml_quants.RECIPES else NEAREST_NATIVE[type_name[:2]]
            if native != type_name:
                notes.append(f"{type_name} needs llama.cpp's quantizer, which does not know arch {arch!r}; "
                             f"quantized to {native}, the nearest type edgelm makes for it")
            if native in ggml_quants.RECIPES:  # ggml's quantizer, llama.cpp's recipe, the importance matrix when calibrated
                written = _write_ggml_quants(checkpoint, tmp, native, on_tensor, calibration, max_size, notes)
            else:
                if max_size is not None:
                    raise UserError(f"--max-size chooses among K-quants, which {native} is not", None,
                                    "give --quant int4 (Q4_K_M), or leave out --max-size")
                if calibration:
                    notes.append(f"no importance matrix: gguf-py's quantizer, which makes {native}, takes none")
                written = _write(checkpoint, tmp, GGUF_PY_QUANTS[native], LLAMA_FILE_TYPES[native], on_tensor)
            type_name = native
        if certificate:
            from ..certificate import certify_gguf

            step("parity certificate")
            notes.append(certify_gguf(checkpoint, tmp))
        if max_size is not None and tmp.stat().st_size > max_size:  # the allocation's estimate of the other bytes fell short
            raise UserError(f"the mixed-precision file came out at {tmp.stat().st_size} bytes, over --max-size {max_size}", out,
                            f"give --max-size {tmp.stat().st_size} or more")
        checkpoint.check_unchanged()
    return GGUFReport(out, arch, type_name, written, notes)
