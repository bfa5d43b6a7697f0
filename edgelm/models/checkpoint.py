"""Loading local Hugging Face-style folders: config.json + safetensors (single file or sharded).

Two stages, so that `inspect` and validation never read weight data:
`open_checkpoint` reads config.json and the safetensors headers, picks the family, decides the
position encoding, and checks every tensor name and shape against the family's module (built on the
meta device); `Checkpoint.load_model` then copies tensors one at a time into an fp32 module.
Pickle checkpoints (`*.bin`) are refused unless the caller allows them, and then loaded with
`torch.load(weights_only=True)`. No code shipped with a checkpoint is ever run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.overrides import TorchFunctionMode

from ..artifact_files import MAX_JSON_BYTES, find_member, member, on_disk, read_json, read_json_object, user_file
from ..errors import UserError
from ..hub import known_facts, resolve_model
from ..numbers import is_number_table, stated_sampling
from .layers import CausalLM
from .registry import Family, family_for_config, refuse_unfoldable_temperatures
from .spec import ModelSpec
from .util import ConfigReader, MissingConfigKey

log = logging.getLogger("edgelm")
CONFIG = "config.json"
GENERATION_CONFIG = "generation_config.json"
SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"
PICKLE_NAMES = ("pytorch_model.bin", "model.bin")
CONVERT_BLOCK_BYTES = 16 << 20  # TensorSource converts (and streams) this much of a tensor at a time
PICKLE_INDEX = "pytorch_model.bin.index.json"
MAX_TEMPERATURES_BYTES = 16 << 20  # a λ per head and layer: kilobytes
# config.json: published causal LMs' are 1–10 kB. Every export carries it (a GGUF's edgelm.config key, an ONNX folder's
# edgelm.json), which edgelm reads back under 1 MB: a 1.1 MB config exported with exit 0 into a folder no command opened
MAX_CONFIG_BYTES = 128 << 10


def read_config(folder: Path) -> dict[str, Any]:
    if not folder.exists():
        raise UserError("no such folder", folder, "give the path of a model folder (config.json + model.safetensors)")
    if not folder.is_dir():
        raise UserError("not a model folder", folder, "give the folder that holds config.json, not a file in it")
    path = find_member(folder, CONFIG, MAX_JSON_BYTES)
    if path is None:
        raise UserError("config.json is missing", folder / CONFIG, "a model folder needs config.json beside its weights")
    config = read_json(path, what=CONFIG)
    if not isinstance(config, dict):
        raise UserError("config.json must hold a JSON object", folder / CONFIG, "fix or re-download the file")
    if (size := path.stat().st_size) > MAX_CONFIG_BYTES:
        raise UserError(f"config.json is {size:,} bytes; edgelm carries at most {MAX_CONFIG_BYTES:,} of it into an export (published "
                        "models' are a few kB)", path, "leave out what no model reads (task_specific_params, large tables)")
    return config


class TensorSource:
    """Name → shape from file headers, and one tensor at a time on request."""

    def __init__(self, files: dict[str, Path], shapes: dict[str, tuple[int, ...]], pickled: dict[str, torch.Tensor] | None = None,
                 non_float: dict[str, str] | None = None):
        self.files = files  # tensor name → file holding it
        self.shapes = shapes
        self._pickled = pickled
        # name → dtype of the tensors that are not floats: refused once the family says which tensors it reads
        # (a GPT-2 checkpoint's uint8 attn.bias mask is no weight; a quantized model's packed integers are)
        self.non_float = non_float or {}
        self._stored: dict[str, str] = {}  # name → the name its file stores it under, where they differ

    def with_base_prefix(self, prefix: str) -> None:
        """A checkpoint of the body alone (transformers' `GPT2Model`, as openai-community/gpt2 is published) names
        its tensors without the `prefix.` the model with a head puts before them: name them as that model does,
        as transformers' from_pretrained and llama.cpp's converter accept both. Nothing changes when any tensor
        already carries the prefix."""
        if not prefix or any(name.startswith(prefix + ".") for name in self.shapes):
            return
        renamed = {name: f"{prefix}.{name}" for name in self.shapes}
        self.files = {renamed[n]: file for n, file in self.files.items()}
        self.shapes = {renamed[n]: shape for n, shape in self.shapes.items()}
        self.non_float = {renamed[n]: dtype for n, dtype in self.non_float.items()}
        self._stored = {new: self._stored.get(old, old) for old, new in renamed.items()}

    def names(self) -> list[str]:
        return list(self.shapes)

    def get(self, name: str, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The tensor as stored, or converted to `dtype` a block of rows at a time, so the stored copy
        and the converted one are never both whole in memory (1.1B's bf16 embedding to fp32: 262 MB
        at the peak instead of 393)."""
        if dtype is None or self._pickled is not None or not self.shapes[name]:
            return self._whole(name, dtype)
        converted = torch.empty(self.shapes[name], dtype=dtype)
        start = 0
        for block in self.row_blocks(name, dtype):
            converted[start:start + len(block)] = block
            start += len(block)
        return converted

    def row_blocks(self, name: str, dtype: torch.dtype) -> Iterator[torch.Tensor]:
        """The tensor converted to `dtype`, CONVERT_BLOCK_BYTES of converted rows at a time (a 0-d
        tensor, or one from a pickle, comes whole)."""
        shape = self.shapes[name]
        if self._pickled is not None or not shape:
            yield self._whole(name, dtype)
            return
        row_bytes = math.prod(shape[1:]) * dtype.itemsize
        rows = max(1, CONVERT_BLOCK_BYTES // max(1, row_bytes))
        file = self.files[name]
        for start in range(0, shape[0], rows):
            try:
                # a mapping per block: the pages it touched leave the process with it (mapped file
                # pages count as resident), so streaming a checkpoint keeps memory at about one block
                with safe_open(str(file), framework="pt") as handle:
                    block = handle.get_slice(self._stored.get(name, name))[start:start + rows]
            except Exception as exc:  # safetensors raises its own error types for truncated data
                raise _damaged(name, exc, file) from None
            yield block.to(dtype)

    def _whole(self, name: str, dtype: torch.dtype | None) -> torch.Tensor:
        stored = self._stored.get(name, name)
        if self._pickled is not None:
            tensor = self._pickled[stored]
        else:
            file = self.files[name]
            try:
                with safe_open(str(file), framework="pt") as handle:
                    tensor = handle.get_tensor(stored)
            except Exception as exc:  # safetensors raises its own error types for truncated data
                raise _damaged(name, exc, file) from None
        return tensor if dtype is None else tensor.to(dtype)


def _out_of_memory(exc: Exception) -> bool:
    """safetensors' error for a mapping the system refused (ENOMEM: memory or `ulimit -v`), which is no damaged file
    (stranger 54 was told to re-download one): cli says it as memory."""
    return isinstance(exc, MemoryError) or "Cannot allocate memory" in str(exc)  # strerror(ENOMEM), in both its wordings


def _damaged(name: str, exc: Exception, file: Path) -> UserError | MemoryError:
    if _out_of_memory(exc):
        return MemoryError()
    return UserError(f"cannot read tensor {name} ({exc})", file, "the file is damaged: re-download or re-export it")


def _safetensors_shapes(file: Path) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """Each tensor's shape, and the dtypes of those that are not floats."""
    try:
        with safe_open(str(file), framework="pt") as handle:
            slices = {name: handle.get_slice(name) for name in handle.keys()}
            shapes = {name: tuple(piece.get_shape()) for name, piece in slices.items()}
            dtypes = {name: piece.get_dtype() for name, piece in slices.items()}
    except Exception as exc:
        if _out_of_memory(exc):
            raise MemoryError() from None
        raise UserError(f"not a readable safetensors file ({exc})", file, "the file is truncated or damaged: re-download or re-export it") from None
    return shapes, {name: dtype for name, dtype in dtypes.items() if dtype not in FLOAT_DTYPES}


# safetensors' float dtype names: weights are read as floats; an integer or bool tensor (a quantized
# checkpoint's packed weights, a mask) would be cast into nonsense
FLOAT_DTYPES = {"F16", "BF16", "F32", "F64"}


def _refuse_non_float(wrong: dict[str, str], file: Path) -> None:
    if wrong:
        shown = ", ".join(f"{name} ({dtype})" for name, dtype in list(wrong.items())[:3])
        raise UserError(f"{len(wrong)} tensors are not floating point: {shown}", file,
                        "edgelm reads floating-point checkpoints (float16, bfloat16, float32, float64); dequantize this one first")


def _shards(index: Path, folder: Path) -> tuple[dict[str, str], list[Path]]:
    """The index's weight_map (tensor name → shard file name) and the shard files it names, each a plain name of a
    file in the folder."""
    document = read_json(index)
    weight_map = document.get("weight_map") if isinstance(document, dict) else None
    if not isinstance(weight_map, dict) or not weight_map or not all(isinstance(v, str) for v in weight_map.values()):
        raise UserError("invalid safetensors index: it needs a \"weight_map\" of tensor name → shard file name", index,
                        "fix or re-download it")
    return weight_map, [member(folder, shard, what="the index's shard", fix="the index names it: download every shard")
                        for shard in sorted(set(weight_map.values()))]


def _sharded_tensors(index: Path, folder: Path) -> TensorSource:
    """Each tensor from the one shard the index names for it. A tensor two shards hold, or one a shard holds that the
    index puts elsewhere or leaves out, or one the index names that its shard lacks, is refused: a second copy of the
    embedding in another shard was loaded silently in place of the indexed one (stranger 44); llama.cpp's converter
    refuses a repeated tensor too."""
    weight_map, shards = _shards(index, folder)
    files, shapes, non_float = {}, {}, {}
    for shard in shards:
        shard_shapes, shard_non_float = _safetensors_shapes(shard)
        for name, shape in shard_shapes.items():
            if name in files:
                raise UserError(f"tensor {name} is in two shards, {files[name].name} and {shard.name}", index,
                                "the checkpoint is damaged: re-download it")
            if weight_map.get(name) != shard.name:
                where = f"puts in {weight_map[name]}" if name in weight_map else "does not list"
                raise UserError(f"shard {shard.name} holds tensor {name}, which the index {where}", index,
                                "the index and its shards disagree: re-download the checkpoint")
            files[name], shapes[name] = shard, shape
        non_float |= shard_non_float
    if missing := sorted(set(weight_map) - set(files)):
        raise UserError(f"{len(missing)} tensors the index lists are in no shard: {_listed(missing)}", index,
                        "a shard is incomplete: re-download the checkpoint")
    return TensorSource(files, shapes, non_float=non_float)


# what a model folder's files edgelm reads are named: configs, weights (single, sharded, pickled), tokenizer, chat template
READ_SUFFIXES = (".json", ".safetensors", ".bin", ".pt", ".pth", ".model", ".jinja")


def _read_files(folder: Path) -> tuple[str, ...]:
    """The names of the folder's files an export may read (check_unchanged), hidden ones aside: an export's own working
    files are hidden, and its output (a .gguf, a folder) is none of these even where --out puts it inside the folder."""
    try:
        return tuple(sorted(e.name for e in folder.iterdir() if e.suffix in READ_SUFFIXES and not e.name.startswith(".")))
    except OSError:
        return ()


def _open_tensors(folder: Path, allow_pickle: bool) -> TensorSource:
    single, index = find_member(folder, SAFETENSORS), find_member(folder, SAFETENSORS_INDEX)
    if single is not None:
        shapes, non_float = _safetensors_shapes(single)
        return TensorSource({name: single for name in shapes}, shapes, non_float=non_float)
    if index is not None:
        return _sharded_tensors(index, folder)
    pickles = [p for p in (find_member(folder, n) for n in PICKLE_NAMES) if p is not None]
    if pickles or os.path.lexists(folder / PICKLE_INDEX):
        path = pickles[0] if pickles else folder / PICKLE_INDEX
        if not allow_pickle:
            raise UserError(
                "pickle checkpoint refused: loading a pickle can run arbitrary code",
                path,
                "convert it to safetensors, or pass --allow-pickle to load it with torch.load(weights_only=True)",
            )
        if not pickles:
            raise UserError("sharded pickle checkpoints are not supported", path, "convert it to safetensors")
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except Exception as exc:  # torch's refusal is many lines and suggests weights_only=False: its reason only
            lines = [line.strip().removeprefix("WeightsUnpickler error:").strip() for line in str(exc).splitlines()]
            reason = next((line for line in lines if line and "weights_only" not in line
                           and not line.startswith(("Weights only load failed", "Check the documentation"))), type(exc).__name__)
            raise UserError(f"cannot load pickle checkpoint ({reason[:200]})", path,
                            "edgelm loads only tensors from a pickle: convert it to safetensors, or re-download it") from None
        if not isinstance(tensors, dict) or not all(isinstance(t, torch.Tensor) for t in tensors.values()):
            raise UserError("the pickle does not hold a flat state dict of tensors", path, "convert it to safetensors")
        return TensorSource({n: path for n in tensors}, {n: tuple(t.shape) for n, t in tensors.items()}, tensors,
                            {n: str(t.dtype).removeprefix("torch.") for n, t in tensors.items() if not t.dtype.is_floating_point})
    raise UserError("no weights found", folder, f"expected {SAFETENSORS} or {SAFETENSORS_INDEX} beside config.json")


def _name_pattern(template: str) -> re.Pattern[str]:
    return re.compile(re.escape(template).replace(re.escape("{bid}"), r"(\d+)") + "$")


def _listed(names: list[str], most: int = 8) -> str:
    shown = ", ".join(names[:most])
    return shown + (f" and {len(names) - most} more" if len(names) > most else "")


@dataclass
class Checkpoint:
    """A validated model folder whose weights have not been read yet."""

    path: Path
    config: dict[str, Any]
    family: Family
    spec: ModelSpec
    tensors: TensorSource
    position_encoding_rule: str
    temperature_source: str
    temperature_table: torch.Tensor | None  # given (--head-temperatures, or recorded by an export), else None
    module_shapes: dict[str, tuple[int, ...]]  # the family module's state dict, tied aliases included
    position_encoding_perplexities: dict[str, float] | None = None  # when measured: encoding → probe perplexity
    on_disk: tuple = ()  # the files it reads as open_checkpoint first found them (check_unchanged)

    def head_temperatures(self) -> torch.Tensor:
        """[num_layers, num_heads] λ table the model runs with."""
        spec = self.spec
        if self.temperature_table is not None:
            return self.temperature_table.clone()
        template = self.family.head_temperature_tensor
        if template and template.format(bid=0) in self.tensors.shapes:
            return torch.stack([self.tensors.get(template.format(bid=i)).float() for i in range(spec.num_layers)])
        return torch.ones(spec.num_layers, spec.num_heads)

    def recommended_sampling(self) -> dict[str, Any]:
        return recommended_sampling(self.path)

    def check_unchanged(self) -> None:
        """Refuse what was made from this checkpoint where a file it reads changed since it was opened: a stranger copied
        another model's weights and config over the folder 2 s into an export, and the GGUF held one model's config with
        the other's weights, certified against the second (exit 0, verify passed). Exports call it before their output
        is renamed into place."""
        if on_disk(self.path, _read_files(self.path)) != self.on_disk:
            raise UserError("the model's files changed while it was exported (replaced or written to): the output could mix "
                            "two models, and nothing was written", self.path, "export it again once its files are in place")

    def tokenizer(self):
        """The folder's tokenizer, checked against the model's embedding (Tokenizer.check_fits)."""
        from ..tokenizer import load_tokenizer

        tokenizer = load_tokenizer(self.path)
        tokenizer.check_fits(self.spec.vocab_size)
        return tokenizer

    def load_model(self, device: str | torch.device = "cpu") -> CausalLM:
        """The fp32 torch reference, weights copied one tensor at a time."""
        return self._load(self.spec, device)

    def measure_position_encoding(self) -> None:
        """Nothing declares the position encoding: decide it by running the model both ways on a
        built-in text (position_probe.py), or refuse when neither is clearly better."""
        from ..tokenizer import load_tokenizer
        from .position_probe import probe_position_encoding

        # the flag is per command (parity and verify read what the artifact records); config.json's block serves them all
        fix = 'pass --position-encoding rope or none, or write {"edgelm": {"position_encoding": "rope"}} (or "none") into config.json'
        try:
            tokenizer = load_tokenizer(self.path)
        except UserError:
            raise UserError(f"nothing declares whether this {self.family.name} checkpoint uses rotary position encoding, "
                            "and without a tokenizer edgelm cannot measure it", self.path / CONFIG, fix) from None
        result = probe_position_encoding(lambda spec: self._load(spec, "cpu"), self.spec, tokenizer)
        if result.choice is None:
            raise UserError(
                f"cannot tell whether this {self.family.name} checkpoint uses rotary position encoding: "
                f"{result.summary()}: neither clearly better, or neither better than a uniform guess over its "
                f"{self.spec.vocab_size:,} tokens (untrained weights?)", self.path / CONFIG, fix)
        self.spec = self.spec.with_position_encoding(result.choice)
        self.position_encoding_rule = f"measured ({result.summary()})"
        self.position_encoding_perplexities = result.perplexities
        log.info(f"position encoding {result.choice!r}, measured: {result.summary()} "
                 "(nothing in the checkpoint declares it; --position-encoding skips the measurement)")

    def _load(self, spec: ModelSpec, device: str | torch.device) -> CausalLM:
        model = empty_model(self.family, spec, device)
        targets = model.state_dict(keep_vars=True)
        with torch.no_grad():
            for name in self.weight_names():
                targets[name].copy_(self.tensors.get(name, torch.float32))
            model.set_head_temperatures(self.head_temperatures().to(device))
        return model.eval()

    def weight_names(self) -> list[str]:
        """Module tensors the checkpoint supplies (tied aliases come with their source)."""
        aliases = self.family.tied_tensors(self.spec)
        return [n for n in self.module_shapes if n not in aliases]

    def parameter_count(self) -> int:
        return sum(math.prod(self.module_shapes[n]) for n in self.weight_names())  # a tied tensor counts once


class _SkipInit(TorchFunctionMode):
    """Skips `torch.nn.init`'s functions while a module is built on the meta device. Meta tensors have
    no values to initialise, yet torch computes meta `normal_`/`uniform_` through its Python reference
    kernels, whose first use imports torch._dynamo and sympy: 1.2 s and 75 MB on every checkpoint open."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "__module__", None) == "torch.nn.init":
            # each fills its tensor in place and returns it; torch passes it by keyword
            return args[0] if args else kwargs["tensor"]
        return func(*args, **kwargs)


def meta_model(family: Family, spec: ModelSpec) -> CausalLM:
    """The family's module on the meta device: shapes and structure, no storage, no init."""
    with torch.device("meta"), _SkipInit():
        return family.build(spec)


def empty_model(family: Family, spec: ModelSpec, device: str | torch.device) -> CausalLM:
    """The family's module with uninitialised fp32 storage (no time spent on random init), ties kept."""
    model = meta_model(family, spec)
    model.to_empty(device=device)
    for alias, source in family.tied_tensors(spec).items():  # to_empty unties shared tensors
        owner, _, attribute = alias.rpartition(".")
        setattr(model.get_submodule(owner), attribute, model.get_parameter(source))
    return model


def _spec_from_config(family: Family, config: ConfigReader, config_path: Path) -> ModelSpec:
    try:
        return family.spec_from_config(config)
    except MissingConfigKey as exc:
        key, *detail = exc.args
        raise UserError(
            ", ".join([f"config.json lacks {key!r}, which a {family.name} model needs", *detail]),
            config_path, "add the key or re-download the file",
        ) from None
    except (ValueError, TypeError) as exc:
        raise UserError(f"config.json describes an unsupported {family.name} model: {exc}", config_path, "check the config values") from None


def _declared_position_encoding(
    family: Family, spec: ModelSpec, config: dict[str, Any], tensor_names: list[str], option: str | None, folder: Path
) -> tuple[str, str] | None:
    """(encoding, rule) by the first rule that declares it — the order is the contract `inspect`
    reports — or None when nothing does and the weights must tell."""
    block = config.get("edgelm") or {}
    template = family.head_temperature_tensor
    known = known_facts(folder)
    if option is not None:
        return option, "--position-encoding option"
    if isinstance(block, dict) and "position_encoding" in block:
        return block["position_encoding"], "edgelm block in config.json"
    if template and any(_name_pattern(template).match(n) for n in tensor_names):
        return "none", f"HeadScale tensors ({template.rsplit('.', 1)[-1]}) in the checkpoint"
    if known and "position_encoding" in known[1]:
        return known[1]["position_encoding"], f"known published checkpoint {known[0]}"
    if len(spec.position_encodings) == 1 or family.position_encoding_key in config:
        return spec.position_encoding, "config.json"
    if "rope" in spec.position_encodings and (scaling := _declared_rotary_scaling(config)):
        # a Llama 3.x config (rope_type llama3) scales rotary frequencies: only a rotary model has any
        return "rope", f"rotary scaling in config.json (rope_type {scaling})"
    return None


def _declared_rotary_scaling(config: dict[str, Any]) -> str | None:
    """The kind of rotary scaling config.json declares (rope_scaling / rope_parameters), None for none."""
    from .positions import rope_scaling

    try:
        scaling = rope_scaling(ConfigReader(config))
    except ValueError:  # refused where the spec was read; nothing declared here
        return None
    return scaling.rope_type if scaling is not None else None


def recommended_sampling(folder: Path) -> dict[str, Any]:
    """The sampling generation_config.json recommends where it asks for sampling (do_sample: true; transformers'
    generate is greedy otherwise): what llama.cpp's converter writes as general.sampling.* and onnxruntime-genai's
    builder into genai_config's search, under SamplingOptions' names (Qwen3: temperature 0.6, top_k 20, top_p 0.95)."""
    path = find_member(folder, GENERATION_CONFIG, MAX_JSON_BYTES)
    config = read_json_object(path, what=GENERATION_CONFIG) if path else {}
    if not isinstance(config.get("do_sample", False), bool):
        raise UserError(f"{GENERATION_CONFIG}'s do_sample is {str(config['do_sample'])[:40]}, not true or false", path,
                        "fix the file or re-download it")
    if config.get("do_sample") is not True:
        return {}
    found, problem = stated_sampling(config)
    if problem:
        raise UserError(f"{GENERATION_CONFIG}'s {problem}", path, "fix the file or re-download it")
    return found


def open_checkpoint(
    folder: str | Path,
    *,
    position_encoding: str | None = None,
    head_temperatures: str | Path | list | None = None,
    allow_pickle: bool = False,
) -> Checkpoint:
    """`head_temperatures`: a temperatures file, or a [layers][heads] table (what an export records)."""
    folder = resolve_model(folder, allow_pickle)
    files = on_disk(folder, _read_files(folder))  # before any is read: check_unchanged compares
    config = read_config(folder)
    config_path = folder / CONFIG
    family = family_for_config(config, config_path)
    tensors = _open_tensors(folder, allow_pickle)
    tensors.with_base_prefix(family.base_model_prefix)
    reader = ConfigReader(config, tensors.shapes)
    spec = _spec_from_config(family, reader, config_path)
    config = reader.resolved()
    declared = _declared_position_encoding(family, spec, config, tensors.names(), position_encoding, folder)
    encoding, rule = declared or (spec.position_encoding, "measured")  # tensor shapes do not depend on it
    if encoding not in spec.position_encodings:
        raise UserError(
            f"position encoding {encoding!r} (from the {rule}) is not available for {family.name}",
            config_path,
            f"{family.name} supports {', '.join(spec.position_encodings)}",
        )
    spec = spec.with_position_encoding(encoding)
    shapes = _check_tensors(family, spec, tensors, folder)
    checkpoint = Checkpoint(folder, config, family, spec, tensors, rule, "default (all 1.0)", None, shapes, on_disk=files)
    if isinstance(head_temperatures, (str, Path)):
        checkpoint.temperature_table = read_head_temperatures(head_temperatures, spec)
        checkpoint.temperature_source = f"file {head_temperatures}"
    elif head_temperatures is not None:
        checkpoint.temperature_table = checked_temperatures(head_temperatures, spec, folder / CONFIG,
                                                            "they were recorded for another model: give the folder it was exported from")
        checkpoint.temperature_source = "the table recorded in an export"
    elif family.head_temperature_tensor and family.head_temperature_tensor.format(bid=0) in tensors.shapes:
        checkpoint.temperature_source = "checkpoint tensors " + family.head_temperature_tensor.format(bid="*")  # not a raw {bid}
    if checkpoint.temperature_table is not None and not bool((checkpoint.temperature_table == 1).all()):
        refuse_unfoldable_temperatures(family, spec, head_temperatures if isinstance(head_temperatures, (str, Path)) else folder,
                                       "run it without --head-temperatures (all λ = 1)")
    if declared is None:
        checkpoint.measure_position_encoding()
    return checkpoint


def _check_tensors(family: Family, spec: ModelSpec, tensors: TensorSource, folder: Path) -> dict[str, tuple[int, ...]]:
    """The module's tensor shapes, after checking the checkpoint supplies exactly those."""
    if spec.num_layers > len(tensors.shapes):  # every layer holds a tensor; a billion-layer module would take hours to build
        raise UserError(f"config.json describes {spec.num_layers} layers, more than the weights' {len(tensors.shapes)} tensors", folder,
                        "the weights do not match config.json: re-download or re-export them")
    expected = {n: tuple(t.shape) for n, t in meta_model(family, spec).state_dict().items()}
    aliases = family.tied_tensors(spec)
    template = family.head_temperature_tensor
    temperature_names = {template.format(bid=i) for i in range(spec.num_layers)} if template else set()
    present = set(tensors.names())
    missing = [n for n in expected if n not in present and n not in aliases]
    unused = family.unused_tensors(spec)
    if refused := {name: dtype for name, dtype in tensors.non_float.items() if name not in unused}:
        _refuse_non_float(refused, tensors.files[next(iter(refused))])
    unexpected = [n for n in tensors.names() if n not in expected and n not in temperature_names and n not in unused]
    prefix = family.base_model_prefix + "."
    if bare := [n for n in missing if n.startswith(prefix) and n.removeprefix(prefix) in present]:
        # transformers' from_pretrained would initialise these at random (it adds the prefix to all or to none)
        raise UserError(f"{len(bare)} tensors are named without the {prefix[:-1]!r} prefix the others carry: {_listed(bare)}",
                        folder, f"name every tensor with {prefix!r} or none (a body-only checkpoint names none)")
    if headed := [n for n in missing if not n.startswith(prefix) and prefix + n in present]:
        # the body named as the body alone, beside the head's own tensors: transformers refuses it ("The state dictionary of
        # the model you are trying to load is corrupted"); a stranger's file was told lm_head.weight is missing, which it holds
        raise UserError(f"the body's tensors are named without the {prefix[:-1]!r} prefix (a body-only checkpoint) beside the head's "
                        f"{_listed(headed)}", folder, f"name the body's tensors with {prefix!r}, as the model with its head saves them, "
                        "or leave the head out")
    if missing:
        raise UserError(f"{len(missing)} tensors missing: {_listed(missing)}", folder, "the weights do not match config.json: re-download or re-export them")
    if unexpected:
        raise UserError(f"{len(unexpected)} unexpected tensors: {_listed(unexpected)}", folder, f"these are not part of a {family.name} model as config.json describes it")
    found_temperatures = temperature_names & present
    if found_temperatures and found_temperatures != temperature_names:
        lacking = sorted(temperature_names - present)
        raise UserError(f"HeadScale tensors missing for some layers: {_listed(lacking)}", folder, "a checkpoint has them for every layer or for none")
    wrong = [
        f"{n} is {list(tensors.shapes[n])}, config says {list(shape)}"
        for n, shape in list(expected.items()) + [(n, (spec.num_heads,)) for n in sorted(found_temperatures)]
        if n in present and tensors.shapes[n] != shape
    ]
    if wrong:
        raise UserError(f"tensor shapes do not match config.json: {_listed(wrong, 3)}", folder, "config.json and the weights belong to different models")
    return expected


def read_head_temperatures(path: str | Path, spec: ModelSpec) -> torch.Tensor:
    """A temperatures file: JSON `{"layers": [[λ per head], …]}`, one list per layer."""
    path = user_file(Path(path), "--head-temperatures", MAX_TEMPERATURES_BYTES, "temperatures file")
    document = read_json(path, MAX_TEMPERATURES_BYTES, "the temperatures file")
    try:
        layers = document["layers"]
    except (KeyError, TypeError) as exc:
        raise UserError(f"not a temperatures file ({exc.__class__.__name__}: {str(exc)[:120]})", path,
                        "expected JSON {\"layers\": [[λ per head], …]}, one list per layer") from None
    return checked_temperatures(layers, spec, path)


def checked_temperatures(layers: Any, spec: ModelSpec, path: Path, fix: str = "calibrate this model or give its own temperatures file") -> torch.Tensor:
    """A [num_layers, num_heads] table of finite, positive λ from nested lists; `path` and `fix` for a refusal."""
    try:
        if not is_number_table(layers):  # torch.tensor reads a JSON true as 1.0
            raise TypeError("the table holds something other than numbers (true, false, null or text)")
        table = torch.tensor(layers, dtype=torch.float32)
    except (TypeError, ValueError, IndexError, RuntimeError) as exc:
        raise UserError(f"not a temperatures table ({exc.__class__.__name__}: {str(exc)[:120]})", path,
                        "expected {\"layers\": [[λ per head], …]}, one list per layer") from None
    if tuple(table.shape) != (spec.num_layers, spec.num_heads):
        raise UserError(
            f"temperatures have shape {list(table.shape)}, the model has {spec.num_layers} layers × {spec.num_heads} heads",
            path,
            fix,
        )
    if not torch.isfinite(table).all() or (table <= 0).any():
        raise UserError("temperatures must be finite and positive", path, "fix the values")
    return table


def written_config(family: Family, spec: ModelSpec, config: dict[str, Any], folder: Path) -> dict[str, Any]:
    """The config.json edgelm writes for a model: the position encoding declared in the edgelm block,
    bos/eos_token_id those of the tokenizer in `folder` (transformers and Optimum stop at
    eos_token_id), and whatever the family marks so other tools do not misread it."""
    from ..tokenizer import load_tokenizer

    config = {**config, "edgelm": {**(config.get("edgelm") or {}), "position_encoding": spec.position_encoding}}
    if any((folder / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        config = with_token_ids(config, load_tokenizer(folder))
    return family.mark_written_config(spec, config)


def with_token_ids(config: dict[str, Any], tokenizer) -> dict[str, Any]:
    """`config` with bos/eos_token_id those of `tokenizer` (eos_token_id a list where more than eos ends a
    reply: Tokenizer.end_id_list), which edgelm itself runs by: the source's
    own values (an id past the vocabulary, a stale one) never reach the config.json a written model carries."""
    config = dict(config)
    ends = tokenizer.end_id_list()  # several, as Llama 3.x Instruct states them, where the reply can end at more than eos
    for key, value in (("bos_token_id", tokenizer.declared_bos_id), ("eos_token_id", ends if len(ends) > 1 else tokenizer.eos_id)):
        if value is None:
            config.pop(key, None)
        else:
            config[key] = value
    return config


def save_checkpoint(
    model: CausalLM, family: Family, config: dict[str, Any], folder: Path, dtype: torch.dtype, with_temperatures: bool
) -> None:
    """Write config.json (see written_config: copy the tokenizer in first) and model.safetensors in
    the family's native layout, into an existing folder.

    `with_temperatures` also writes the family's HeadScale tensors (fp32), as the NoPE paper's
    HeadScale models carry them.
    """
    aliases = family.tied_tensors(model.spec)
    tensors = {n: t.detach().to(dtype).contiguous().clone() for n, t in model.state_dict().items() if n not in aliases}
    if with_temperatures:
        for i, row in enumerate(model.head_temperatures()):
            tensors[family.head_temperature_tensor.format(bid=i)] = row.detach().float().clone()
    save_file(tensors, str(folder / SAFETENSORS), metadata={"format": "pt"})
    (folder / CONFIG).write_text(json.dumps(written_config(family, model.spec, config, folder), indent=2) + "\n")


def write_head_temperatures(checkpoint: Checkpoint, table: torch.Tensor) -> None:
    """Store λ in the checkpoint as the family's HeadScale tensors (the NoPE paper's layout), and pin
    the position encoding in config.json (written_config), since for llama those tensors otherwise
    mean "no position encoding"."""
    from ..fileio import atomic_output_file

    template = checkpoint.family.head_temperature_tensor
    if template is None or set(checkpoint.tensors.files.values()) != {checkpoint.path / SAFETENSORS}:
        raise UserError(
            "--write-checkpoint needs a single model.safetensors of a family with HeadScale tensors",
            checkpoint.path, "use the temperatures file with --head-temperatures instead",
        )
    tensors = {name: checkpoint.tensors.get(name) for name in checkpoint.tensors.names()}
    tensors.update({template.format(bid=i): row.detach().float().clone() for i, row in enumerate(table)})
    with atomic_output_file(checkpoint.path / SAFETENSORS, force=True) as tmp:
        save_file(tensors, str(tmp), metadata={"format": "pt"})
    config = written_config(checkpoint.family, checkpoint.spec, checkpoint.config, checkpoint.path)
    with atomic_output_file(checkpoint.path / CONFIG, force=True) as tmp:
        tmp.write_text(json.dumps(config, indent=2) + "\n")
