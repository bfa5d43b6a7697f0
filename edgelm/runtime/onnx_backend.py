"""ONNX Runtime behind the runtime interface: edgelm's ONNX folders, the onnxruntime-genai builder's and
Optimum's.

Two KV cache layouts, as genai_config's `past_present_share_buffer` says:
- shared (edgelm, the genai builder): one preallocated OrtValue per layer and side, bound once with IO
  binding as both `past_key_values.{i}.*` and `present.{i}.*` (GroupQueryAttention writes the new
  positions into it in place), so a decode step copies no cache and its cost does not grow with the
  buffer. The buffers start at the model's context length and double when a longer sequence needs room.
- growing (Optimum's `text-generation-with-past` graphs): `present` is `past` with this call's
  positions appended; it is fed back as the next call's `past`, staying in onnxruntime's memory.
A `position_ids` input, where the graph has one, gets the positions counted from the cache's length.
Rewinding the cache (a prompt sharing only part of what it holds): the shared buffer needs nothing, the
attention mask's width says how many positions GroupQueryAttention reads and the next call overwrites
the rest; a growing past is sliced.
"""

from __future__ import annotations

import contextlib
import functools
import re
from pathlib import Path

import numpy as np

from ..artifact_files import find_member, member, read_json
from ..constants import GENAI_CONFIG, HF_CONFIG, LLAMA_MAX_LAYERS, ONNX_MANIFEST, ONNX_MODEL_FILE
from ..errors import UserError
from ..fileio import is_plain_name
from ..genai_config import LAYER_NAME_PATTERNS, decoder_names
from ..numbers import FRACTION, NON_NEGATIVE, POSITIVE, NumberRange, is_count
from ..stops import ends_early, take_pending_stop
from .backend import Backend, available_memory, default_threads, proc_bytes, refuse_cache_past_memory

PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider", "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider", "dml": "DmlExecutionProvider", "openvino": "OpenVINOExecutionProvider",
}

CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def session_for(model: Path, threads: int | None, provider: str):
    import onnxruntime as ort

    name = PROVIDERS.get(provider.lower(), provider)  # cpu, CPU or CPUExecutionProvider
    available = ort.get_available_providers()
    if name not in available:
        short = [k for k, v in PROVIDERS.items() if v in available]
        if name not in PROVIDERS.values() and name not in ort.get_all_providers():
            raise UserError(f"unknown provider {provider!r}", model, f"choose one of {', '.join(PROVIDERS)} (or onnxruntime's "
                            f"name, e.g. CPUExecutionProvider); this build has {', '.join(short)}")
        raise UserError(f"provider {provider!r} is not in this onnxruntime build", model,
                        f"this build has {', '.join(short)}; install the onnxruntime package built for {provider}")
    options = ort.SessionOptions()
    if name == "CPUExecutionProvider":
        _bound_cpu_arena(ort)
        options.add_session_config_entry("session.use_env_allocators", "1")
    options.intra_op_num_threads = threads or default_threads()
    # fatal only: an error while loading or running is raised as an exception, which edgelm says in its one line;
    # at 3 (error) onnxruntime also printed its own coloured [E:onnxruntime …] line to stderr first
    options.log_severity_level = 4
    try:
        return ort.InferenceSession(str(model), options, providers=[name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"])
    except unloadable_errors() as exc:
        raise UserError(f"onnxruntime cannot load {model.name} ({str(exc).splitlines()[0][:200]})", model.parent,
                        "export the model again") from None


ARENA_SHARE = 0.9  # of the memory available when the first session opens: what onnxruntime's CPU arena may take in all


@functools.cache
def _bound_cpu_arena(ort) -> None:
    """onnxruntime's CPU arena, bounded (OrtArenaCfg max_mem) and shared by the sessions of this process: a graph edgelm did
    not write may allocate what it likes (a stranger's ConstantOfShape grew 330 MB a token, 6 GB in another), and past the
    machine's memory the kernel's OOM killer ended the process with no word; bounded, onnxruntime's run fails, one line.
    Requests are taken as they come (arena_extend_strategy 1, kSameAsRequested): doubling would reach the bound early."""
    memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
    ort.create_and_register_allocator(memory, ort.OrtArenaCfg(int(available_memory() * ARENA_SHARE), 1, -1, -1))


def address_limit() -> int | None:
    """The address space the process may reach while onnxruntime runs a graph on the CPU: what it holds now and
    ARENA_SHARE of the memory available (None without /proc)."""
    used = proc_bytes("/proc/self/status", "VmSize")
    return None if used is None else used + int(available_memory() * ARENA_SHARE)


@contextlib.contextmanager
def _address_space_bounded(limit: int | None):
    """RLIMIT_AS at `limit` (address_limit, taken as the session opened) while onnxruntime runs, restored after: what a
    graph allocates outside the arena — a string tensor's elements are heap copies, 1 MB each in a stranger's Expand
    (5.6 GB at 4,000 a token) — fails as std::bad_alloc, one line, instead of meeting the OOM killer. Two system
    calls a run; a GPU provider's sessions are not bounded (their drivers reserve address space of their own)."""
    import resource

    before = resource.getrlimit(resource.RLIMIT_AS)
    bounded = limit is not None and (before[0] == resource.RLIM_INFINITY or limit < before[0])
    if bounded:
        resource.setrlimit(resource.RLIMIT_AS, (limit, before[1]))
    try:
        yield
    finally:
        if bounded:
            resource.setrlimit(resource.RLIMIT_AS, before)


def unloadable_errors() -> tuple[type[Exception], ...]:
    """onnxruntime's own exception types that mean it cannot load the file: a damaged protobuf, an invalid
    graph, an operator no kernel of this build runs, external data it cannot read or refuses. Only these:
    any other exception while opening is a bug in edgelm (or an execution provider failing), and was
    reported as a damaged file when the folder's opening caught every exception."""
    from onnxruntime.capi import onnxruntime_pybind11_state as ort_errors

    return (ort_errors.InvalidProtobuf, ort_errors.InvalidGraph, ort_errors.NotImplemented, ort_errors.NoSuchFile,
            ort_errors.NoModel, ort_errors.Fail, ort_errors.InvalidArgument)


class OnnxBackend(Backend):
    lookup_draft = 4  # prompt lookup measured faster (docs/benchmarks.md): a run of 5 tokens costs little more than 1
    def __init__(self, model: Path, genai: dict, manifest: dict, threads: int | None = None, provider: str = "cpu"):
        import onnxruntime as ort

        super().__init__()
        decoder = genai["model"]["decoder"]
        self.folder, self.model_name = model.parent, model.name
        self.session = session_for(model, threads, provider)
        self.run_options = ort.RunOptions()  # its terminate flag ends a run from the stop watcher (stops.ends_early)
        self.address_limit = address_limit() if self.session.get_providers()[0] == "CPUExecutionProvider" else None
        self.layers = decoder["num_hidden_layers"]
        self.kv_heads, self.head_size = decoder["num_key_value_heads"], decoder["head_size"]
        self.context_length = genai["model"]["context_length"]
        self.rotary_positions = manifest.get("rotary_table_positions", 0)  # 0: no rotary, no limit
        # (past input, present output) names per buffer, from the patterns genai_config.json declares
        names = decoder_names(decoder)
        self.buffer_names = [(names[f"past_{side}_names"] % i, names[f"present_{side}_names"] % i)
                             for i in range(self.layers) for side in ("key", "value")]
        self.input_names, self.logits_name = (names["input_ids"], names["attention_mask"]), names["logits"]
        self._check_against_graph(model, names.get("position_ids"))
        graph_inputs = {i.name: i.type for i in self.session.get_inputs()}
        self.position_ids_name = names.get("position_ids") if names.get("position_ids") in graph_inputs else None
        self.shared_buffer = genai.get("search", {}).get("past_present_share_buffer", True)
        cache_type = graph_inputs[self.buffer_names[0][0]]
        if cache_type not in CACHE_DTYPES:  # was a KeyError, reported as "onnxruntime cannot load model.onnx"
            raise UserError(f"the graph's KV cache is {cache_type}; edgelm runs {', '.join(CACHE_DTYPES)}", model.parent,
                            "export the model again with `edgelm export --format onnx`")
        self.cache_dtype = CACHE_DTYPES[cache_type]
        # an export that says it has no position encoding and feeds none: keys and values carry no position
        self.position_free = manifest.get("position_encoding") == "none" and not self.rotary_positions and not self.position_ids_name
        self._ort = ort
        self.buffers: list = []
        self.binding = self.session.io_binding()
        self._truncate(0)

    def _check_against_graph(self, model: Path, position_ids: str | None) -> None:
        """genai_config's decoder description must be the graph's: every past/present name it implies
        present, no past input it leaves unfed, and the KV shape it states where the graph fixes one."""
        inputs = {i.name: i for i in self.session.get_inputs()}
        output_shapes = {o.name: o.shape for o in self.session.get_outputs()}
        outputs = set(output_shapes)
        # one graph name per role: logits named "present.0.key", or position_ids named "attention_mask", ran with exit 0
        roles = [*self.input_names, *(p for p, _ in self.buffer_names), self.logits_name, *(q for _, q in self.buffer_names)]
        if position_ids in inputs:
            roles.append(position_ids)
        if twice := next((name for i, name in enumerate(roles) if name in roles[:i]), None):
            raise UserError(f"{GENAI_CONFIG} does not describe this graph: it names {str(twice)[:80]!r} for two roles", model.parent,
                            "export the model again (or fix the decoder section)")
        if self.logits_name in output_shapes and len(output_shapes[self.logits_name]) != 3:
            raise UserError(f"{GENAI_CONFIG} does not describe this graph: its logits {self.logits_name[:80]!r} are an output of "
                            f"shape {output_shapes[self.logits_name]}, not [batch, positions, vocabulary]", model.parent,
                            "export the model again (or fix the decoder section)")
        wanted = [n for n in self.input_names if n not in inputs] + [n for n in (self.logits_name,) if n not in outputs]
        wanted += [p for p, _ in self.buffer_names if p not in inputs] + [q for _, q in self.buffer_names if q not in outputs]
        fed = set(self.input_names) | {p for p, _ in self.buffer_names} | {"position_ids"}
        unfed = [n for n in inputs if n not in fed]
        shape = inputs[self.buffer_names[0][0]].shape if not wanted else []
        stated = [None, self.kv_heads, None, self.head_size]
        mismatch = len(shape) != 4 or any(isinstance(d, int) and s is not None and d != s for d, s in zip(shape, stated))
        if wanted or unfed or mismatch:
            problem = (f"names the graph lacks: {', '.join(wanted[:4])}" if wanted else f"leaves graph inputs unfed: {', '.join(unfed[:4])}"
                       if unfed else f"states KV [batch, {self.kv_heads}, past, {self.head_size}], the graph has {shape}")
            raise UserError(f"{GENAI_CONFIG} does not describe this graph: it {problem}", model.parent,
                            "export the model again (or fix the decoder section)")

    def close(self) -> None:
        self.binding = self.buffers = self.session = None

    def _truncate(self, length: int) -> int:
        if self.shared_buffer:
            return length  # the attention mask's width bounds what is read; the next call overwrites the rest
        kept = ([value.numpy()[:, :, :length] for value in self.buffers] if length else  # [1, kv_heads, past, head_size]
                [np.zeros((1, self.kv_heads, 0, self.head_size), self.cache_dtype)] * len(self.buffer_names))
        self.buffers = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array)) for array in kept]
        return length

    def refuse_cache_past_memory(self) -> None:
        """The whole context's cache, refused when the machine cannot hold it as the artifact opens (as the
        GGUF path does), not at the first prefill: `chat -c 100000000` printed its banner and took a
        message first."""
        refuse_cache_past_memory(len(self.buffer_names) * self.kv_heads * self.context_length * self.head_size
                                 * np.dtype(self.cache_dtype).itemsize, self.context_length, self.folder / GENAI_CONFIG,
                                 "model.context_length")

    def _reserve(self, length: int) -> None:
        """Buffers of at least `length` positions, keeping the first `position` ones, each bound once as
        both past input and present output."""
        capacity = self.buffers[0].shape()[2] if self.buffers else 0
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity, self.context_length)
        refuse_cache_past_memory(len(self.buffer_names) * self.kv_heads * capacity * self.head_size * np.dtype(self.cache_dtype).itemsize,
                                 capacity, self.folder / GENAI_CONFIG, "model.context_length")
        grown = []
        for i in range(len(self.buffer_names)):
            array = np.zeros((1, self.kv_heads, capacity, self.head_size), self.cache_dtype)
            if self.buffers and self.position:
                array[:, :, : self.position] = self.buffers[i].numpy()[:, :, : self.position]
            grown.append(array)
        self._bind_shared(grown)

    def _bind_shared(self, arrays: list[np.ndarray]) -> None:
        """`arrays` as the shared buffers, each bound once as both past input and present output."""
        self.binding.clear_binding_outputs()
        self.binding.bind_output(self.logits_name)  # output 0; forward rebinds it in place
        self.buffers = [self._ort.OrtValue.ortvalue_from_numpy(array) for array in arrays]
        for (past, present), value in zip(self.buffer_names, self.buffers):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_ortvalue_output(present, value)

    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        start, n = self.position, len(ids)
        if self.rotary_positions and start + n > self.rotary_positions:
            raise UserError(f"position {start + n} is past the {self.rotary_positions} positions of this model's rotary "
                            "tables", self.folder, "use a shorter text or context")
        if self.shared_buffer:
            self._reserve(start + n)
        else:
            self._bind_growing_cache()
        ids_name, mask_name = self.input_names
        self.binding.bind_cpu_input(ids_name, np.array([ids], dtype=np.int64))
        self.binding.bind_cpu_input(mask_name, np.ones((1, start + n), dtype=np.int64))
        if self.position_ids_name:
            self.binding.bind_cpu_input(self.position_ids_name, np.arange(start, start + n, dtype=np.int64)[None])
        self.binding.bind_output(self.logits_name)  # unallocated again: its shape follows the ids
        self.run_options.terminate = False  # a stop that came as the last run returned set it after its end: that stop is taken
        try:
            with _address_space_bounded(self.address_limit), ends_early(self._end_run):
                self.session.run_with_iobinding(self.binding, self.run_options)
        except (RuntimeError, *unloadable_errors()) as exc:  # a graph that loads and fails on these ids (a Gather past the
            # embedding's rows: onnxruntime's run raises a plain RuntimeError, "Error in execution: …")
            if self.run_options.terminate:  # a stop ended the run: its handler, pending, raises it here
                take_pending_stop()
            if any(sign in str(exc) for sign in ("BFCArena", "Failed to allocate memory", "bad_alloc")):  # past the bounds below
                raise UserError(f"onnxruntime could not allocate the memory {self.model_name} asks for on these tokens (at most "
                                f"{ARENA_SHARE:.0%} of the memory available is given to it)", self.folder,
                                "use a shorter prompt or context; a graph edgelm exported needs far less") from None
            raise UserError(f"onnxruntime could not run {self.model_name} on these tokens ({str(exc).splitlines()[0][:200]})",
                            self.folder, "the folder's files do not fit together: export it again") from None
        outputs = self.binding.get_outputs()
        if not self.shared_buffer:
            self.buffers = outputs[1:]  # present, in binding order: the next call's past
        logits = outputs[0].numpy()[0]
        return (logits[-1:] if last_only else logits).astype(np.float32, copy=False)

    def _end_run(self) -> None:
        self.run_options.terminate = True  # onnxruntime checks it between nodes, a Loop's body included

    def _bind_growing_cache(self) -> None:
        self.binding.clear_binding_outputs()
        self.binding.bind_output(self.logits_name)  # output 0
        for (past, present), value in zip(self.buffer_names, self.buffers):
            self.binding.bind_ortvalue_input(past, value)
            self.binding.bind_output(present)  # allocated by onnxruntime: past + this call's positions


    def kv_layout(self):
        return [((1, self.kv_heads, -1, self.head_size), np.dtype(self.cache_dtype))] * len(self.buffer_names)

    def _kv_arrays(self):
        return [value.numpy()[:, :, : self.position] for value in self.buffers]

    def _set_kv_arrays(self, arrays):
        length = arrays[0].shape[2]
        if not self.shared_buffer:
            self.buffers = [self._ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(array)) for array in arrays]
            return
        capacity = max(length, self.context_length)
        full = [np.zeros((1, self.kv_heads, capacity, self.head_size), self.cache_dtype) for _ in arrays]
        for target, array in zip(full, arrays):
            target[:, :, :length] = array
        self._bind_shared(full)


PAST_NAME = re.compile(r"^past_key_values\.(\d+)\.(key|value)$")


def describe_optimum_folder(folder: Path) -> dict:
    """A genai_config-shaped description of an Optimum ONNX folder (`optimum-cli export onnx --task
    text-generation-with-past`), which has none: IO names and the past layout from the graph
    (exporters/onnx/config.py: `past_key_values.{i}.key/value` [batch, kv_heads, past, head_dim] in,
    `present.{i}.key/value` out, `position_ids` for most decoders), the context length from config.json."""
    import onnx

    model, config_path = member(folder, ONNX_MODEL_FILE), find_member(folder, HF_CONFIG)
    if config_path is None:
        raise UserError(f"{GENAI_CONFIG} and {HF_CONFIG} are both missing", folder,
                        "give an ONNX folder from `edgelm export --format onnx`, onnxruntime-genai's builder or Optimum")
    config = read_json(config_path, what=HF_CONFIG)
    try:
        graph = onnx.load(str(model), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends for a damaged file
        raise UserError(f"{ONNX_MODEL_FILE} is not a readable ONNX graph ({exc.__class__.__name__})", folder, "export it again") from None
    inputs = {i.name: i for i in graph.input}
    past = sorted({int(m[1]) for name in inputs if (m := PAST_NAME.match(name))})
    outputs = {o.name for o in graph.output}
    if not past or past != list(range(len(past))) or "input_ids" not in inputs or "logits" not in outputs \
            or not all(f"present.{i}.{side}" in outputs for i in past for side in ("key", "value")):
        raise UserError("this ONNX graph has no KV cache edgelm recognises (past_key_values.{i}.key/value → present.{i}.key/value)",
                        model, "export it with a KV cache (Optimum: --task text-generation-with-past)")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inputs["past_key_values.0.key"].type.tensor_type.shape.dim]
    if len(dims) != 4 or not dims[1] or not dims[3]:
        raise UserError(f"past_key_values.0.key has shape {dims}, not [batch, kv_heads, past, head_dim]", model, "export it again")
    config = config if isinstance(config, dict) else {}
    context = config.get("max_position_embeddings")
    decoder = {
        "filename": ONNX_MODEL_FILE, "num_hidden_layers": len(past), "num_key_value_heads": dims[1], "head_size": dims[3],
        "inputs": {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                   "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"},
        "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
    }
    logits = [d.dim_value if d.HasField("dim_value") else None for d in next(o for o in graph.output if o.name == "logits").type.tensor_type.shape.dim]
    vocab = logits[-1] if logits and logits[-1] else config.get("vocab_size")
    model = {"decoder": decoder, "context_length": context if is_count(context, 1) else 2048, "type": config.get("model_type"),
             "vocab_size": vocab if is_count(vocab, 1) else None}
    # what onnxruntime-genai reads beyond the IO, where its model builder takes it (config.json): a bundle
    # for a phone carries them (formats/onnx.py: bundle_into); edgelm's own runtime needs none of them
    decoder |= {key: config[key] for key in ("num_attention_heads", "hidden_size") if is_count(config.get(key), 1)}
    eos = config.get("eos_token_id")
    eos = eos[0] if isinstance(eos, list) and eos else eos  # the first of several, as the builder takes for pad
    tokens = {"eos_token_id": eos, "bos_token_id": config.get("bos_token_id", eos),
              "pad_token_id": config.get("pad_token_id") if config.get("pad_token_id") is not None else eos}
    model |= {key: value for key, value in tokens.items() if is_count(value)}
    return {"model": {k: v for k, v in model.items() if v is not None}, "search": {"past_present_share_buffer": False}}


# onnxruntime-genai loads, as native code, a shared library its config names: session_options'
# custom_ops_library (RegisterCustomOps), and execution providers' library options (QNN's backend_path, …)
LIBRARY_SUFFIX = re.compile(r"\.(so|dll|dylib)(\.[0-9]+)*$", re.IGNORECASE)


def refuse_loaded_code(node, where: str, path: Path) -> None:
    """Anywhere in genai_config.json (the decoder's session_options, a pipeline stage's, a provider's options):
    a `custom_ops_library`, or an option naming a path or a library, is refused. Whoever wrote the folder
    would choose the code that onnxruntime-genai runs inside edgelm (`verify` of a bundle, onnxruntime-genai's
    check) and inside the app a bundle ships to; edgelm runs no checkpoint's code."""
    items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
    for key, value in items:
        here = f"{where}.{key}" if where else str(key)
        names_code = key == "custom_ops_library" or (
            "session_options" in here and isinstance(value, str) and isinstance(key, str)
            and (key.lower().endswith(("path", "library", "lib")) or LIBRARY_SUFFIX.search(value) or "/" in value or "\\" in value))
        if names_code:
            raise UserError(f"{GENAI_CONFIG} names a file for onnxruntime-genai to load ({here} = {str(value)[:80]!r}); edgelm runs no "
                            "library or file a model folder names", path, f"remove {here}, or set it in your own app's code")
        refuse_loaded_code(value, here, path)


# genai_config.json's numbers as onnxruntime-genai reads them: (section, key, required, lowest, highest or None). A count's bound is
# what it allocates by (one name and one cache buffer per layer: 10^9 layers ran the machine out of memory)
GENAI_COUNTS = [("model.decoder", "num_hidden_layers", True, 1, LLAMA_MAX_LAYERS), ("model.decoder", "num_key_value_heads", True, 1, None),
                ("model.decoder", "head_size", True, 1, None), ("model.decoder", "num_attention_heads", False, 1, None),
                ("model.decoder", "hidden_size", False, 1, None), ("model", "context_length", True, 1, None),
                ("model", "vocab_size", False, 1, None), ("model", "bos_token_id", False, 0, None), ("model", "pad_token_id", False, 0, None),
                ("search", "max_length", False, 1, None), ("search", "min_length", False, 0, None), ("search", "top_k", False, 0, None),
                ("search", "num_beams", False, 1, None), ("search", "num_return_sequences", False, 1, None)]
GENAI_RANGES = {"temperature": NON_NEGATIVE, "top_p": FRACTION, "repetition_penalty": POSITIVE,
                "length_penalty": NumberRange(float("-inf"))}  # a finite number: NumberRange admits no inf nor NaN


def _check_genai_numbers(genai: dict) -> None:
    """Every number genai_config.json states, as a count in its bounds or a finite number in its range
    (TypeError naming the first that is not): `num_attention_heads: -8` and `search.temperature: NaN`
    passed, and reached onnxruntime-genai in a bundle."""
    sections = {"model": genai["model"], "model.decoder": genai["model"]["decoder"], "search": genai.get("search", {})}
    for name, section in sections.items():
        if not isinstance(section, dict):
            raise TypeError(f"{name} is a {type(section).__name__}, not an object" + (" of options" if name == "search" else ""))
    for section, key, required, low, high in GENAI_COUNTS:
        if key not in sections[section] and not required:
            continue
        value = sections[section][key]
        if not is_count(value, low) or (high is not None and value > high):
            raise TypeError(f"{section}.{key} is {value!r}, not an integer " + (f"from {low} to {high}" if high else f"of at least {low}"))
    eos = genai["model"].get("eos_token_id", 0)
    if not all(is_count(i) for i in (eos if isinstance(eos, list) else [eos])):
        raise TypeError(f"model.eos_token_id is {eos!r}, not a token id or a list of them")
    for key, allowed in GENAI_RANGES.items():
        if key in sections["search"] and (problem := allowed.why_not(sections["search"][key])):
            raise TypeError(f"search.{key} {problem}")
    for key in ("do_sample", "past_present_share_buffer"):
        if not isinstance(sections["search"].get(key, False), bool):
            raise TypeError(f"search.{key} is {sections['search'][key]!r}, not true or false")


def read_onnx_folder(folder: Path) -> tuple[dict, dict, Path]:
    """genai_config.json (validated; described from the graph for an Optimum folder, which has none),
    edgelm.json ({} where another tool made the folder) and the graph's path, which never leaves the
    folder."""
    genai_path, manifest_path = folder / GENAI_CONFIG, find_member(folder, ONNX_MANIFEST)
    genai_file = find_member(folder, GENAI_CONFIG)
    genai = read_json(genai_file, what=GENAI_CONFIG) if genai_file else describe_optimum_folder(folder)
    manifest = read_json(manifest_path, what=ONNX_MANIFEST) if manifest_path else {}
    refuse_loaded_code(genai, "", genai_path)
    try:
        decoder = genai["model"]["decoder"]
        _check_genai_numbers(genai)
        filename = decoder.get("filename", ONNX_MODEL_FILE)
        if not is_plain_name(filename):
            raise UserError(f"model.decoder.filename {filename!r} is not a plain file name inside the folder", genai_path,
                            "refused: a model file must lie in the folder itself; export it again")
        for section in ("inputs", "outputs"):
            if not isinstance(decoder.get(section, {}), dict):
                raise TypeError(f"model.decoder.{section} is a {type(decoder[section]).__name__}, not an object of names")
        names = decoder_names(decoder)
        if not all(isinstance(v, str) for v in names.values()):
            raise TypeError("model.decoder.inputs/outputs hold names that are not strings")
        for key in LAYER_NAME_PATTERNS:  # onnxruntime-genai formats each with the layer's index
            if not re.fullmatch(r"[^%]*%d[^%]*", names[key].replace("%%", "")):
                raise TypeError(f"model.decoder's {key} {names[key][:80]!r} is not a name with one %d for the layer")
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{GENAI_CONFIG} is not a decoder description edgelm can run ({exc.__class__.__name__}: {exc})", genai_path,
                        "export the model again") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{ONNX_MANIFEST} is not a JSON object", folder / ONNX_MANIFEST, "export the model again")
    if not is_count(manifest.get("rotary_table_positions", 0)):
        raise UserError(f"{ONNX_MANIFEST}'s rotary_table_positions is {manifest['rotary_table_positions']!r}, not a count of positions",
                        folder / ONNX_MANIFEST, "export the model again")
    model = member(folder, filename, fix="export the model again with `edgelm export --format onnx`")
    return genai, manifest, model
