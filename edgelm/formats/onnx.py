"""An ONNX folder: edgelm's exports (genai_config.json and their edgelm.json manifest), the
onnxruntime-genai model builder's (genai_config.json) and Optimum's (config.json only: the decoder's IO
is read from the graph). onnxruntime runs the graph; the tokenizer files lie beside it."""

from __future__ import annotations

import copy
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

from ..constants import (GENAI_CONFIG, HF_CONFIG, ONNX_METADATA_GENAI, ONNX_MODEL_FILE, ORT_MODEL_FILE, PARITY_CERTIFICATE, SAMPLING_DEFAULTS,
                         REQUIRED_OPERATORS, TOKENIZER_FILES)
from ..errors import ArtifactMismatch, UserError
from ..genai_config import decoder_names, genai_search, missing_genai_fields
from ..numbers import is_count
from ..artifact_files import contained, find_member, member, parse_json, parse_json_object, read_prefix, read_text
from .base import Artifact, Format, LoadOptions, recorded_training_length, register


# onnxruntime's quantized operators (MatMulNBits: 4 bits unless told otherwise) → what edgelm calls the quantization
HASH_BLOCK = 1 << 24  # bytes of external weights read at once while hashing them
EXTERNAL_SLACK = 1 << 16  # bytes an external-data file may hold past its last tensor (onnx aligns tensors to 64 KiB at most)
QUANTIZED_OPS = {"MatMulNBits": "int4", "GatherBlockQuantized": "int4", "MatMulInteger": "int8", "DynamicQuantizeLinear": "int8"}


TENSOR_VALUE_FIELDS = ("raw_data", "float_data", "int32_data", "string_data", "int64_data", "double_data", "uint64_data")


def _inline_fields(tensor) -> bool:
    """Whether a TensorProto holds values in itself (onnx.proto: one of these fields, unless data_location is EXTERNAL)."""
    return any(len(getattr(tensor, field)) for field in TENSOR_VALUE_FIELDS)


def _link_or_copy(source: Path, target: Path) -> None:
    """`target` holding `source`'s bytes: a hard link where both lie on one file system, else a copy."""
    try:
        os.link(source, target)
    except OSError:
        shutil.copyfile(source, target)


def _tensors_beyond_initializers(model):
    """Every TensorProto of `model` onnxruntime loads but its graph's initializers: sparse initializers' values and
    indices, each node attribute's tensors (a Constant's value), and, in each subgraph an attribute holds (If, Loop, Scan
    bodies), its initializers and the same again — as onnx's external-data helper walks them —, and the nodes of the
    model's local functions."""
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        yield from _node_tensors(function.node)


def _graph_tensors(graph):
    for sparse in graph.sparse_initializer:
        yield sparse.values
        yield sparse.indices
    yield from _node_tensors(graph.node)


def _node_tensors(nodes):
    for node in nodes:
        for attribute in node.attribute:
            yield from ([attribute.t] if attribute.HasField("t") else [])
            yield from attribute.tensors
            for sparse in ([attribute.sparse_tensor] if attribute.HasField("sparse_tensor") else []) + list(attribute.sparse_tensors):
                yield sparse.values
                yield sparse.indices
            for subgraph in ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs):
                yield from subgraph.initializer
                yield from _graph_tensors(subgraph)


def recorded_facts(manifest: dict) -> dict[str, Any]:
    """What an export's edgelm.json records that runs it (a mobile bundle's manifest carries it for edgelm's runtime, and
    parity's reference reads it): also stored in a certified graph's metadata_props (`edgelm.facts`), where a
    bundle's manifest is checked against it."""
    return {"family": manifest.get("family"), "quantization": manifest.get("quantization"),
            "position_encoding": manifest.get("position_encoding"), "kv_cache": manifest.get("kv_cache", "float"),
            "rotary_table_positions": manifest.get("rotary_table_positions", 0), "head_temperatures": manifest.get("head_temperatures")}


@register
class OnnxFolder(Format):
    kind = "onnx folder"
    noun = "an ONNX folder"
    honoured = frozenset({"provider"})
    option_fixes = {"f32_kv_cache": "drop --f32-kv-cache: an ONNX graph's KV cache type is fixed at export (float32 at --quant f32, "
                                    "int8 and int4; float16 at f16)",
                    "gpu_layers": "drop --gpu-layers; --provider cuda (or another GPU provider) runs an ONNX folder on a GPU",
                    "device": "drop --device; --provider cuda (onnxruntime's CUDA execution provider) runs an ONNX folder on a GPU"}

    @property
    def raw_engine(self) -> str | None:
        return "onnxruntime-genai"

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_dir() and ((path / GENAI_CONFIG).exists() or (path / ONNX_MODEL_FILE).exists())

    def __init__(self, path: Path):
        from ..runtime.onnx_backend import read_onnx_folder

        super().__init__(path)
        self.genai, self.manifest, self.model_file = read_onnx_folder(path)
        self._keeping_parse, self._parsed = False, None  # parsed_once

    def open(self, options: LoadOptions) -> Artifact:
        from onnxruntime import __version__ as onnxruntime_version

        from ..runtime.backend import CONTEXT_OPTIONS
        from ..runtime.onnx_backend import OnnxBackend
        from ..tokenizer import load_tokenizer

        self.check_options(options)
        backend = OnnxBackend(self.model_file, self.genai, self.manifest, options.threads, options.provider)
        wanted = options.context_length or 0
        if backend.rotary_positions and wanted > backend.rotary_positions:  # refused before any token, and before context_for's
            # note that a context past the trained one runs: past the tables it cannot
            raise UserError(f"a context of {wanted:,} tokens is past the {backend.rotary_positions:,} positions of this "
                            "model's rotary tables", self.path, f"use a context of {backend.rotary_positions:,} tokens or less ({CONTEXT_OPTIONS})")
        if self.manifest.get("position_encoding") == "learned":
            options.refuse_past_learned_positions(backend.context_length, self.path)
        backend.context_length = options.context_for(backend.context_length)
        backend.refuse_cache_past_memory()
        details = {k: self.manifest.get(k) for k in ("family", "position_encoding", "quantization")}
        details["engine_version"] = f"onnxruntime {onnxruntime_version}"
        tokenizer = load_tokenizer(self.path)
        if is_count(rows := self.genai["model"].get("vocab_size"), 1):
            tokenizer.check_fits(rows)
        return Artifact(self.path, self, f"onnxruntime ({options.provider})", tokenizer, backend, details)

    def recorded_temperatures(self) -> Any:
        """The [layers][heads] λ folded into the weights at export (edgelm.json), None for another tool's folder."""
        recorded = self.manifest.get("head_temperatures")
        return recorded.get("layers") if isinstance(recorded, dict) else None

    def stated_context(self) -> int | None:
        context = self.genai["model"].get("context_length")
        return context if is_count(context, 1) else None

    def training_length(self) -> int | None:
        from ..artifact_files import read_json

        config = find_member(self.path, HF_CONFIG)
        return None if config is None else recorded_training_length(read_json(config, what=HF_CONFIG))

    def recorded_position_encoding(self) -> str | None:
        recorded = self.manifest.get("position_encoding")
        return recorded if isinstance(recorded, str) else None

    @cached_property
    def ort_format(self) -> bool:
        """The graph is in ONNX Runtime's flatbuffer format (a mobile bundle's model.ort), which onnx cannot read."""
        return read_prefix(self.model_file, 8)[4:8] == b"ORTM"

    @contextmanager
    def parsed_once(self):
        # onnx.load of a 0.8 GB inline graph takes 0.8 s, and verify's extent check, weights, graph and settings hashes
        # each parsed it; the first parse inside is kept until the outermost block ends
        if self._keeping_parse:
            yield
            return
        self._keeping_parse = True
        try:
            yield
        finally:
            self._keeping_parse, self._parsed = False, None

    def _model(self):
        if self._parsed is not None:
            return self._parsed
        import onnx

        try:
            model = onnx.load(str(self.model_file), load_external_data=False)
        except Exception as exc:  # protobuf's DecodeError and friends for a damaged file
            raise UserError(f"{self.model_file.name} is not a readable ONNX graph ({exc.__class__.__name__})", self.path,
                            "export the model again") from None
        if not model.graph.node:  # protobuf reads an empty file as an empty model: a bundle's was "another certificate"
            raise UserError(f"{self.model_file.name} holds no graph ({self.model_file.stat().st_size:,} bytes)", self.path,
                            "export the model again")
        if self._keeping_parse:
            self._parsed = model
        return model

    def _graph(self):
        return self._model().graph

    def describe(self, options: LoadOptions) -> dict[str, Any]:
        """The manifest, genai_config's dims, and the graph's operators and KV cache type (read without its
        external weights)."""
        import onnx


        self.check_options(options)
        decoder = self.genai["model"]["decoder"]
        past = decoder_names(decoder)["past_key_names"].split("%d")[0]
        if self.ort_format:  # onnxruntime reads its own format: the inputs from a session, the quantized operators from the file's strings
            import onnxruntime

            inputs = onnxruntime.InferenceSession(str(self.model_file), providers=["CPUExecutionProvider"]).get_inputs()
            caches = {i.type.removeprefix("tensor(").removesuffix(")") for i in inputs if i.name.startswith(past)}
            operators = {op: "present" for op in sorted(contained(self.model_file, QUANTIZED_OPS))}
        else:
            graph = self._graph()
            caches = {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower() for i in graph.input if i.name.startswith(past)}
            operators = dict(Counter(node.op_type for node in graph.node).most_common())
        # the λ table as parity reads it (a malformed one refused in one line: stranger 37's {"layers": 5} was a traceback)
        temperatures = [t for layer in self.checked_temperatures() or [] for t in layer]
        recorded = self.manifest.get("head_temperatures")
        return {
            "format": self.kind,
            "written_by": f"edgelm {self.manifest.get('edgelm_version')}" if self.manifest
            else "another tool (no edgelm.json)" if (self.path / GENAI_CONFIG).is_file()
            else "another tool, Optimum's layout (no genai_config.json: IO read from the graph)",
            "family": self.manifest.get("family"),
            "quantization": self.manifest.get("quantization"),
            "kv_cache": ", ".join(sorted(caches)),
            "operators": operators,
            "bytes": sum(f.stat().st_size for f in self.path.iterdir() if f.is_file()),
            "vocab_size": self.genai["model"].get("vocab_size"),
            "hidden_size": decoder.get("hidden_size"),
            "layers": decoder["num_hidden_layers"],
            "heads": decoder.get("num_attention_heads"),
            "kv_heads": decoder["num_key_value_heads"],
            "head_dim": decoder["head_size"],
            "context_length": self.genai["model"]["context_length"],
            "position_encoding": self.manifest.get("position_encoding"),
            "rotary_table_positions": self.manifest.get("rotary_table_positions"),
            "head_temperatures": {"baked_into_weights": isinstance(recorded, dict) and recorded.get("baked_into_weights") is True,
                                  "min": min(temperatures, default=None), "max": max(temperatures, default=None)},
        }

    def web_bundle_into(self, folder: Path) -> dict[str, Any]:
        """The graph as it is (onnxruntime-web runs the same GroupQueryAttention and MatMulNBits on WebGPU
        and WASM), its external weights, genai_config.json (the page reads the IO names from it) and the
        tokenizer files tokenizers.js reads."""
        import onnx

        if not (self.path / GENAI_CONFIG).is_file():
            raise UserError(f"the web page reads the graph's IO from {GENAI_CONFIG}, which this folder lacks", self.path,
                            "export the model with `edgelm export --format onnx` (or onnxruntime-genai's builder)")
        graph = self._graph()
        past = self.genai["model"]["decoder"].get("inputs", {}).get("past_key_names", "past_key_values.%d.key").split("%d")[0]
        caches = {i.type.tensor_type.elem_type for i in graph.input if i.name.startswith(past)}
        if caches != {onnx.TensorProto.FLOAT}:
            names = ", ".join(sorted(onnx.TensorProto.DataType.Name(c).lower() for c in caches))
            raise UserError(f"this graph keeps its KV cache in {names}; the web page feeds a float32 cache", self.path,
                            "export again without --kv-cache int8 (and at --quant int4, int8 or f32)")
        if find_member(self.path, "tokenizer.json") is None:
            raise UserError("the web page tokenizes with tokenizer.json, which this folder lacks", self.path,
                            "export the model again with this edgelm (it converts a tokenizer.model)")
        external = sorted(file.name for file in self._external_files())
        files = [member(self.path, name, what="the graph's external weights") for name in [self.model_file.name, *external, GENAI_CONFIG]]
        files += [path for name in TOKENIZER_FILES if (path := find_member(self.path, name)) is not None]
        for path in files:
            shutil.copyfile(path, folder / path.name)
        return {"format": "onnx (web)", "context_length": self.genai["model"]["context_length"], "model": self.model_file.name,
                "external_data": external, **self._bundled_manifest_facts(), PARITY_CERTIFICATE: self.certificate()}

    def _bundled_manifest_facts(self) -> dict[str, Any]:
        """recorded_facts for a bundle's manifest, the quantization read from the graph's operators where no edgelm.json
        records it: an onnxruntime-genai builder's int4 folder, bundled for the web, got no int4-on-WASM note (stranger 42)."""
        facts = recorded_facts(self.manifest)
        return facts | {"quantization": facts["quantization"] or self.identity()["quantization"]}

    def identity(self) -> dict[str, Any]:
        """The quantization from the operators the graph holds (an ORT-format graph's op names are
        plain strings in its flatbuffer), the family from genai_config's model type, which
        onnxruntime-genai runs it as."""
        ort_format = self.ort_format
        if ort_format:
            ops = contained(self.model_file, QUANTIZED_OPS)
            floats = "float"
        else:
            import onnx

            graph = self._graph()
            ops = {node.op_type for node in graph.node}
            floats = "f16" if any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer) else "f32"
        quantized = sorted({QUANTIZED_OPS[op] for op in ops if op in QUANTIZED_OPS})
        return {"format": "onnx (ORT format)" if ort_format else "onnx", "family": self.genai["model"].get("type"),
                "quantization": "+".join(quantized) or floats}

    def bundled_facts(self) -> dict[str, Any]:
        """The context genai_config states, and the parity certificate the graph itself carries in its metadata_props (a
        forged manifest certificate, mean KLD 0, passed verify). A bundled ORT graph's family, position encoding and head
        temperatures are the manifest's alone: edgelm.json is not bundled."""

        from ..constants import ONNX_METADATA_FACTS, ONNX_METADATA_PARITY

        metadata = self._ort_metadata() if self.ort_format else {p.key: p.value for p in self._model().metadata_props}
        carried = metadata.get(ONNX_METADATA_PARITY)
        facts = {"context_length": self.genai["model"]["context_length"],
                 PARITY_CERTIFICATE: None if carried is None else parse_json(carried, self.model_file, "the graph's parity certificate")}
        if (recorded := metadata.get(ONNX_METADATA_FACTS)) is not None:  # a certified export's graph records them too
            facts |= parse_json_object(recorded, self.model_file, "the graph's recorded facts")
        return facts

    def _ort_metadata(self) -> dict[str, str]:
        """An ORT-format graph's metadata_props, read from its flatbuffer with onnxruntime's own schema, no session."""
        import mmap

        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs.InferenceSession import InferenceSession

        with open(self.model_file, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as buffer:
            try:
                model = InferenceSession.GetRootAsInferenceSession(buffer, 0).Model()
                entries = [model.MetadataProps(i) for i in range(model.MetadataPropsLength())] if model is not None else []
                return {entry.Key().decode(errors="replace"): entry.Value().decode(errors="replace") for entry in entries}
            except Exception:  # flatbuffers reads offsets the file gives: a damaged one raises anything
                raise UserError(f"{self.model_file.name} is not a readable ORT-format graph", self.model_file,
                                "make the bundle again") from None

    def stated_sampling(self) -> dict[str, Any]:
        """genai_config's search where it samples (do_sample: true), as onnxruntime-genai's generator does."""
        from ..numbers import stated_sampling

        search = self.genai.get("search")
        if not isinstance(search, dict) or search.get("do_sample") is not True:
            return {}
        found, problem = stated_sampling(search)
        if problem:
            raise UserError(f"genai_config.json's search: {problem}", self.path / GENAI_CONFIG, "fix the file or export it again")
        if found.get("repetition_penalty") == 1.0:  # the search section always states one; 1.0 is none
            del found["repetition_penalty"]
        return found

    def certificate(self) -> dict[str, Any] | None:
        """From edgelm.json: an export's, or a bundle's manifest, which copies it."""
        return self.manifest.get(PARITY_CERTIFICATE)

    def settings_sha256(self) -> str | None:
        """Over the folder's files but the graph and its external weights — tokenizer files, chat template,
        genai_config.json, config.json, each name and bytes — and what edgelm.json says besides the
        certificate it holds (its recorded head temperatures and rotary table length steer parity and the
        context refusal: forged, they passed verify), as canonical JSON."""
        import json

        from ..artifact_files import MAX_TOKENIZER_BYTES, sha256
        from ..constants import ONNX_MANIFEST

        if self.ort_format:
            return None
        graph = {self.model_file.name, ONNX_MANIFEST} | {file.name for file in self._external_files()}
        digest = hashlib.sha256()
        for entry in sorted(self.path.iterdir()):
            if entry.name in graph or entry.name.startswith(".") or (entry.is_dir() and not entry.is_symlink()):
                continue
            # as every reader takes an artifact's file: a link out of the folder, a FIFO or a device is refused (hashing
            # followed a link to a file outside, and `bundle`, which hashes first, named the certificate, not the link)
            # bounded as the largest settings file edgelm reads (a tokenizer): a stray 20 GB sparse file was hashed for a minute
            if (file := find_member(self.path, entry.name, MAX_TOKENIZER_BYTES, "a file beside the graph")) is not None:
                digest.update(os.fsencode(file.name) + f"\0{sha256(file)}\0".encode())  # a name's bytes: any a folder holds
        said = {key: value for key, value in self.manifest.items() if key != PARITY_CERTIFICATE}
        digest.update(ONNX_MANIFEST.encode() + b"\0" + json.dumps(said, sort_keys=True).encode() + b"\0")
        return digest.hexdigest()

    def tokenizer_sha256(self) -> str:
        """Over the tokenizer files and chat template (TOKENIZER_FILES: each present one's name and bytes), which
        `bundle` copies unchanged: in a mobile bundle, where genai_config is the bundle's own, they are checked
        against the certificate still (a stranger's template edit with the manifest's sha256 updated passed verify)."""

        from ..artifact_files import MAX_TOKENIZER_BYTES, sha256

        digest = hashlib.sha256()
        for name in TOKENIZER_FILES:
            if (file := find_member(self.path, name, MAX_TOKENIZER_BYTES)) is not None:
                digest.update(name.encode() + f"\0{sha256(file)}\0".encode())
        return digest.hexdigest()

    def _initializers(self) -> list[tuple[Any, Path | None, int, int]]:
        """Each initializer with the external file, offset and length onnxruntime reads it from (None, 0, 0 inline), then
        every other tensor it reads from a file: a Constant's value, a subgraph's initializer (an If or Loop body), a
        sparse initializer's parts, a local function's constants (a stranger's external Constant and If-branch initializer
        added to the logits bytes no hash read). Those inline are part of the graph (graph_sha256). An external file holding more than its tensors is
        refused (past EXTERNAL_SLACK bytes): a stranger's graph named a sparse 1 TiB file, which ran in 2 s and which
        `verify`'s sha256 of the folder read to its end."""
        model = self._model()
        ends: dict[Path, int] = {}
        initializers = [(tensor, *self._placement(tensor, ends)) for tensor in model.graph.initializer]
        initializers += [(tensor, *placed) for tensor in _tensors_beyond_initializers(model)
                         if (placed := self._placement(tensor, ends))[0] is not None]
        for file, end in ends.items():
            if (size := file.stat().st_size) > end + EXTERNAL_SLACK:
                raise UserError(f"{file.name} holds {size:,} bytes, {size - end:,} past the last tensor the graph reads from it",
                                self.model_file, "export the model again (onnx.save writes no bytes after the last tensor)")
        return initializers

    def _placement(self, tensor, ends: dict[Path, int]) -> tuple[Path | None, int, int]:
        """Where onnxruntime reads `tensor`'s values: (file, offset, length), or (None, 0, 0) inline; `ends` grows by the
        bytes it reads of each file."""
        import math

        import onnx

        external = {entry.key: entry.value for entry in tensor.external_data}
        # onnxruntime reads external data where data_location says EXTERNAL, and the inline fields otherwise: a
        # stranger kept a tensor's external entries (which this hashed) over other bytes inline (which ran)
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            if external:
                raise UserError(f"{tensor.name} names external data but holds its values inline, which onnxruntime runs",
                                self.model_file, "export the model again")
            return None, 0, 0
        if "location" not in external or _inline_fields(tensor):
            raise UserError(f"{tensor.name} is marked external but " + ("names no file" if "location" not in external else
                            "holds values inline as well"), self.model_file, "export the model again")
        tensor_bytes = math.prod(tensor.dims) * onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type).itemsize
        try:
            offset, length = int(external.get("offset", 0)), int(external.get("length", tensor_bytes))
        except ValueError:
            raise UserError(f"{tensor.name}'s external data offset or length is not a number", self.model_file,
                            "export the model again") from None
        if length != tensor_bytes or offset < 0:  # the bytes onnxruntime reads: the tensor's, from its offset
            raise UserError(f"{tensor.name}'s external data takes {length:,} bytes from offset {offset:,}; its shape and type "
                            f"take {tensor_bytes:,}", self.model_file, "export the model again")
        file = member(self.path, external["location"], what="the graph's external weights")
        ends[file] = max(ends.get(file, 0), offset + length)
        return file, offset, length

    def _external_files(self) -> list[Path]:
        """The files onnxruntime reads external initializers from, each once, in the graph's order."""
        return list(dict.fromkeys(file for _, file, _, _ in self._initializers() if file is not None))

    def check_extent(self) -> None:
        if not self.ort_format:  # the bundle's manifest states each file's bytes
            self._initializers()

    def weights_sha256(self) -> str | None:
        """Over the graph's initializers, inline ones as serialized, external ones as the bytes their location, offset
        and length name, then every other tensor onnxruntime reads from a file (_initializers). None for an ORT-format
        graph (a mobile bundle's model.ort: the bundle manifest's sha256 covers it)."""
        if self.ort_format:
            return None
        digest = hashlib.sha256()
        for tensor, file, offset, length in self._initializers():
            if file is None:
                digest.update(tensor.SerializeToString())
                continue
            digest.update(f"{tensor.name}\0{tensor.data_type}\0{list(tensor.dims)}\0".encode())
            with open(file, "rb") as handle:
                handle.seek(offset)
                left = length
                while left and (block := handle.read(int(min(left, HASH_BLOCK)))):  # bounded memory for a GB of weights
                    digest.update(block)
                    left -= len(block)
        return digest.hexdigest()

    def graph_sha256(self) -> str | None:
        """Over what the graph computes besides its weights: each node as serialized (operator, domain, inputs, outputs,
        attributes, a Constant's value, a subgraph), the graph's inputs and outputs, its opsets; not its initializers
        (weights_sha256) nor the model's metadata, where the certificate is written. A stranger's logits mask added as a
        Constant and an attention window set on GroupQueryAttention, both past the probe's reach, passed verify. None for
        an ORT-format graph."""

        if self.ort_format:
            return None
        model = self._model()
        digest = hashlib.sha256()
        # sparse initializers and local functions (whose nodes run as the graph's) last: a graph without them (every
        # export's) keeps the digest its certificate recorded
        for part in (*model.graph.node, *model.graph.input, *model.graph.output, *model.opset_import, *model.graph.sparse_initializer,
                     *model.functions):
            serialized = part.SerializeToString(deterministic=True)
            digest.update(len(serialized).to_bytes(8, "little") + serialized)
        return digest.hexdigest()

    def weight_bytes(self) -> int:
        if self.ort_format:  # its initializers are not readable here: the whole file, the embedding table included
            return self.model_file.stat().st_size
        consumers: dict[str, set[str]] = {}
        graph = self._graph()
        for node in graph.node:
            for name in node.input:
                consumers.setdefault(name, set()).add(node.op_type)
        total = 0
        for tensor, file, _, length in self._initializers():
            uses = consumers.get(tensor.name)
            if uses and uses <= {"Gather", "GatherBlockQuantized"}:  # an embedding table: one row per token
                continue
            total += length if file is not None else len(tensor.raw_data)
        return total

    def check_bundled(self) -> str:
        """The folder in onnxruntime-genai, which an app runs it with (edgelm's runtime reads only the IO
        from genai_config.json): the model and tokenizer load and one token is generated."""
        import numpy as np
        import onnxruntime_genai as og

        from ..artifact_files import MAX_TOKENIZER_BYTES, sha256

        if self.ort_format and (bundled := self._ort_metadata().get(ONNX_METADATA_GENAI)) is not None:
            if sha256(member(self.path, GENAI_CONFIG, MAX_TOKENIZER_BYTES)) != bundled:
                raise ArtifactMismatch(f"{GENAI_CONFIG} is not the one bundled with {self.model_file.name} (the graph records its sha256)",
                                self.path / GENAI_CONFIG, "the bundle was changed after bundling: make it again with `edgelm bundle`")
        try:
            model = og.Model(str(self.path))
            og.Tokenizer(model)
            params = og.GeneratorParams(model)
            params.set_search_options(max_length=2, do_sample=False)
            generator = og.Generator(model, params)
            generator.append_tokens(np.array([[self.genai["model"].get("bos_token_id", 0)]], dtype=np.int32))
            generator.generate_next_token()
        except Exception as exc:  # onnxruntime-genai raises RuntimeError with its reason
            raise UserError(f"onnxruntime-genai cannot run this bundle ({str(exc).splitlines()[0][:200]})", self.path,
                            "make the bundle again with this edgelm") from None
        return f"onnxruntime-genai {og.__version__}"

    def bundle_into(self, folder: Path) -> dict[str, Any]:
        """The graph in ONNX Runtime's mobile format (onnxruntime's own converter) with the
        required-operators config it writes for a reduced-size build; genai_config.json pointing at it."""

        missing = missing_genai_fields(self.genai)
        if missing:  # a folder without genai_config.json (Optimum's) describes itself from its config.json
            raise UserError(f"onnxruntime-genai on a phone needs {', '.join(missing)}, which neither {GENAI_CONFIG} nor "
                            f"{HF_CONFIG} states", self.path, f"add them to {HF_CONFIG} (vocab_size, num_attention_heads, "
                            "hidden_size, bos/eos/pad_token_id) or export with `edgelm export --format onnx`")

        genai = copy.deepcopy(self.genai)
        genai["model"]["decoder"]["filename"] = ORT_MODEL_FILE
        # onnxruntime-genai samples with what its search section says: the model's recommendation, else the bundle's defaults
        genai.setdefault("search", {}).update({"do_sample": True, **genai_search(self.stated_sampling() or SAMPLING_DEFAULTS)})
        genai_bytes = (json.dumps(genai, indent=2) + "\n").encode()
        # the bundle rewrites genai_config, so the certificate's settings hash cannot cover it: the graph carries the sha256 of
        # the one bundled with it, as it carries the certificate (an eos id edited there, the manifest's sha256 made again,
        # passed verify and stopped onnxruntime-genai at the forged token)
        with self.parsed_once():  # one parse for the graph rewritten here and the external files it names (two before)
            graph = self._model()  # read_onnx_folder checked the file (artifact_files.member); its external data stays named
            external = self._external_files()
        kept = [p for p in graph.metadata_props if p.key != ONNX_METADATA_GENAI]
        del graph.metadata_props[:]
        graph.metadata_props.extend(kept)
        graph.metadata_props.add(key=ONNX_METADATA_GENAI, value=hashlib.sha256(genai_bytes).hexdigest())
        (folder / ONNX_MODEL_FILE).write_bytes(graph.SerializeToString())
        # its external weights beside it, where its locations point (every export past 256 MB keeps them in model.onnx.data:
        # the converter refused each with "External data path validation failed"); model.ort holds them, so they go after
        beside = [folder / file.name for file in external]
        for file, placed in zip(external, beside):
            _link_or_copy(file, placed)
        converted = subprocess.run(
            [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(folder / ONNX_MODEL_FILE),
             "--output_dir", str(folder), "--optimization_style", "Fixed"],
            capture_output=True, text=True,
        )
        if converted.returncode:  # a graph onnxruntime cannot load (its external weights truncated, a FIFO, …)
            reason = next((line for line in reversed(converted.stderr.splitlines()) if line.strip()), "no message")
            raise UserError(f"onnxruntime's ORT-format converter could not convert the graph ({reason.strip()[:200]})", self.model_file,
                            "check that the folder runs (`edgelm generate FOLDER`), or export it again")
        for file in [folder / ONNX_MODEL_FILE, *beside]:
            file.unlink()
        for config in list(folder.glob(f"*.{REQUIRED_OPERATORS}")) + list(folder.glob(REQUIRED_OPERATORS)):
            config.rename(folder / REQUIRED_OPERATORS)
        # the converter names the graph it read by its absolute path, here the bundle's temporary folder
        # ("# - /home/me/.b.partial-x1y2/model.ort"): a build path in a shipped file, different every run
        config = folder / REQUIRED_OPERATORS
        config.write_text("".join(f"# - {ORT_MODEL_FILE}\n" if line.startswith("# - ") else line
                                  for line in read_text(config, what="onnxruntime's required-operators config").splitlines(keepends=True)))
        (folder / GENAI_CONFIG).write_bytes(genai_bytes)
        for name in TOKENIZER_FILES:
            if (source := find_member(self.path, name)) is not None:
                shutil.copyfile(source, folder / name)
        # the graph's facts an app (and edgelm's runtime, which reads the bundle's manifest) needs: without
        # rotary_table_positions a mobile bundle ran a context past its rotary tables, which the export refuses
        return {"format": "onnx (ORT mobile format)", "context_length": genai["model"]["context_length"], "model": ORT_MODEL_FILE,
                **self._bundled_manifest_facts(), PARITY_CERTIFICATE: self.certificate()}

