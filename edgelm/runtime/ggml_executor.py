"""edgelm's ggml executor, for the GGUF archs stock llama.cpp cannot run (tokenformer): ggml's own CPU
kernels, through ggml-python, compute the arch's graph on the file's tensors where they lie — the GGUF
is memory-mapped and its quantized matrices (Q4_0, Q8_0, F16, …) are multiplied in place, as llama.cpp
does. No torch: the tensors are never dequantized.

Layers, as in llama.cpp: the arch's graph (ggml_archs.py: hyperparameters read from the file, the
tensors it expects, the forward pass as ggml ops) over this module's resource owner (weights, KV cache,
compute buffers) behind the runtime's Backend interface.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import numpy as np

from ..errors import UserError
from ..ggml_python import ggml
from .backend import Backend, default_threads, refuse_cache_past_memory

if TYPE_CHECKING:  # the reader lives with the formats; the executor only runs what it opened
    from ..formats.gguf_file import GGUFFile

TENSOR_ALIGNMENT = 32  # ggml's CPU buffers need tensor data on 32-byte boundaries
MAX_NODES = 8192
KV_PAD = 256  # attention reads the cache in multiples of this many positions, so one decode graph serves 256 steps
UBATCH = 512  # tokens in one graph at most (llama.cpp's n_ubatch): a prompt's compute buffer grows with its tokens
STEP_TOKENS = 17  # a forward of at most this many tokens with every row's logits is a decode step (prompt lookup's verify: a token and its drafts), its graph kept
# what ggml's CPU mul_mat and get_rows take as weights (an integer type would abort the process); vectors stay F32
MATRIX_TYPES = {getattr(ggml, f"GGML_TYPE_{name}") for name in
                ("F32", "F16", "BF16", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0", "Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K")}


@dataclass(frozen=True)
class Inputs:
    """What one graph reads: token ids, their positions, the cache rows they are written to, and the
    additive attention mask [queries, cache positions] (0 = see, -inf = not)."""

    tokens: ggml.ggml_tensor_p  # I32 [n]
    positions: ggml.ggml_tensor_p  # I32 [n]
    cache_rows: ggml.ggml_tensor_p  # I64 [n]
    mask: ggml.ggml_tensor_p  # F16 [n_kv, n]


class ArchGraph:
    """One GGUF architecture as ggml ops. Subclasses declare `arch`, read and check their hyperparameters
    in __init__ (a stranger wrote them), list the tensors they expect, and build the forward pass."""

    arch: ClassVar[str]
    vocab_size: int
    layers: int
    kv_width: int  # floats per position per layer in each of K and V

    def __init__(self, gguf: GGUFFile):
        self.gguf = gguf

    def expected_tensors(self) -> dict[str, tuple[int, ...]]:
        """GGUF tensor name → ggml shape (ne0 first)."""
        raise NotImplementedError

    def build(self, ctx, graph, weights: dict[str, ggml.ggml_tensor_p], cache: list[tuple], inputs: Inputs,
              n_tokens: int, n_kv: int, last_only: bool) -> ggml.ggml_tensor_p:
        """Logits F32 [vocab, n_tokens] (or [vocab, 1] for the last token): K and V of the new tokens are
        written into `cache` at inputs.cache_rows, attention reads its first n_kv positions."""
        raise NotImplementedError

    # hyperparameter readers: one line naming the key for anything but a sane value
    def size(self, key: str, limit: int = 1 << 24) -> int:
        value = self.gguf.hparam(key)
        if type(value) is not int or not 0 < value <= limit:
            self.refuse(f"{self.arch}.{key} is {value!r}, not a whole number from 1 to {limit}")
        return value

    def number(self, key: str) -> float:
        value = self.gguf.hparam(key)
        if type(value) not in (int, float) or not np.isfinite(value) or value <= 0:
            self.refuse(f"{self.arch}.{key} is {value!r}, not a positive number")
        return float(value)

    def refuse(self, what: str) -> None:
        raise UserError(what, self.gguf.path, "the file is damaged: export it again")


ARCH_GRAPHS: dict[str, type[ArchGraph]] = {}


def register_arch(cls: type[ArchGraph]) -> type[ArchGraph]:
    ARCH_GRAPHS[cls.arch] = cls
    return cls


class _Graph:
    """A ggml compute graph, the inputs it reads and the compute buffer its tensors point into, made and freed
    together: the context holds the tensors' metadata, an allocator of the graph's own their data.

    Why its own: ggml's graph allocator (ggml-alloc.c) gives a graph's tensors their addresses once (at the
    next ggml_gallocr_alloc_graph a tensor whose data is set is skipped) and, when a later graph needs more
    than its buffer holds, frees that buffer for a bigger one (ggml_gallocr_reserve → ggml_vbuffer_free). A
    graph kept for reuse on an allocator shared with other graphs is left pointing into freed memory as
    soon as a longer prompt comes: issue 29's heap corruption (the decode graph wrote into, and read its
    ggml_backend_buffer from, the buffer a 25-token prefill had freed). A graph alone on its allocator keeps
    its addresses for its whole life; a decode graph allocated once serves every step it is reused for."""

    def __init__(self, backend, build: Callable, n_tokens: int, n_kv: int):
        size = ggml.ggml_tensor_overhead() * MAX_NODES + ggml.ggml_graph_overhead_custom(MAX_NODES, False)
        self.ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=size, mem_buffer=None, no_alloc=True))
        self.allocator = ggml.ggml_gallocr_new(ggml.ggml_backend_get_default_buffer_type(backend))
        self.graph = ggml.ggml_new_graph_custom(self.ctx, MAX_NODES, False)
        self.inputs = Inputs(*(_input(self.ctx, t, ne) for t, ne in (
            (ggml.GGML_TYPE_I32, (n_tokens,)), (ggml.GGML_TYPE_I32, (n_tokens,)), (ggml.GGML_TYPE_I64, (n_tokens,)),
            (ggml.GGML_TYPE_F16, (n_kv, n_tokens)))))
        self.logits = build(self.ctx, self.graph, self.inputs, n_tokens, n_kv)
        ggml.ggml_set_output(self.logits)
        ggml.ggml_build_forward_expand(self.graph, self.logits)
        if not ggml.ggml_gallocr_alloc_graph(self.allocator, self.graph):
            self.free()
            # a stranger's GGUF declaring 2^18 FFN slots: its compute buffer for a prompt was a MemoryError traceback
            raise UserError(f"ggml could not allocate the compute buffer for {n_tokens} tokens: the model's layers, as its "
                            "GGUF declares them, need more memory than this machine has", None,
                            "use a shorter context or prompt, or a machine with more memory; a model of this size should not need it")

    def free(self) -> None:
        ggml.ggml_gallocr_free(self.allocator)
        ggml.ggml_free(self.ctx)


def _buffer_from_pointer():
    """ggml_backend_cpu_buffer_from_ptr, bound again. ggml-backend.h:
        ggml_backend_buffer_t ggml_backend_cpu_buffer_from_ptr(void * ptr, size_t size);
    ggml-python 0.0.45 declares its result as ggml_backend_buffer_t, a NewType of int: a Python callable,
    whose argument ctypes reads as a 32-bit C int, cutting the 64-bit pointer (a crash at first use). Of
    the functions edgelm calls it is the only one declared wrong (each checked against the headers of the
    ggml ggml-python vendors; tests/test_ggml_memory.py checks that the rest stay declared in ctypes types)."""
    function = ctypes.CDLL(ggml.lib._name).ggml_backend_cpu_buffer_from_ptr  # a handle of our own: ggml's stays as it is
    function.argtypes, function.restype = [ctypes.c_void_p, ctypes.c_size_t], ctypes.c_void_p
    return function


def _tensor(ctx, gtype: int, ne: tuple[int, ...]):
    return ggml.ggml_new_tensor(ctx, gtype, len(ne), (ctypes.c_int64 * len(ne))(*ne))


def _input(ctx, gtype: int, ne: tuple[int, ...]):
    tensor = _tensor(ctx, gtype, ne)
    ggml.ggml_set_input(tensor)
    return tensor


def _set(tensor, array: np.ndarray) -> None:
    if not tensor.contents.buffer:  # an input this arch's graph does not read (positions, where no rotary reads them): unallocated
        return
    array = np.ascontiguousarray(array)
    ggml.ggml_backend_tensor_set(tensor, array.ctypes.data, 0, array.nbytes)


class GGMLBackend(Backend):
    """Owns ggml's resources for one GGUF: the backend, the weights (on the CPU, views of the memory-mapped
    file), the KV cache and the decode graphs with their compute buffers. close() frees them.

    gpu: the whole graph on the first GPU backend the ggml-python build has (CUDA, Vulkan, Metal), weights
    copied there once; refused in one line where it has none. Not tested here: no machine here has a GPU."""

    def __init__(self, gguf: GGUFFile, context_length: int, threads: int | None, f32_kv_cache: bool = False, gpu: bool = False):
        super().__init__()
        self.gguf, self.context_length = gguf, context_length
        self.arch = ARCH_GRAPHS[gguf.arch](gguf)
        self._check_tensors()
        if gpu:
            self.backend = ggml.ggml_backend_init_by_type(ggml.GGML_BACKEND_DEVICE_TYPE_GPU, None)
            if not self.backend:
                raise UserError("--gpu-layers asks for a GPU, but the installed ggml-python has no GPU backend", gguf.path,
                                "drop --gpu-layers, or install ggml-python built for one (cmake.args=-DGGML_CUDA=ON or -DGGML_VULKAN=ON)")
        else:
            self.backend = ggml.ggml_backend_cpu_init()
            ggml.ggml_backend_cpu_set_n_threads(self.backend, threads or default_threads())  # ggml's own default: 4
        self.device = ggml.ggml_backend_name(self.backend).decode()
        self._load_weights(on_cpu=not gpu)
        self._make_cache(ggml.GGML_TYPE_F32 if f32_kv_cache else ggml.GGML_TYPE_F16)
        self.decode_graphs: dict[int, _Graph] = {}
        self.step_graphs: dict[tuple[int, int], _Graph] = {}  # (tokens, n_kv) → a verify step's graph, for the latest n_kv only

    def _check_tensors(self) -> None:
        """Every expected tensor present with its shape, nothing else, data aligned for ggml's kernels:
        ggml asserts (aborts the process) where edgelm can say what is wrong."""
        expected, present = self.arch.expected_tensors(), {t.name: t for t in self.gguf.reader.tensors}
        problems = {
            "missing": [n for n in expected if n not in present],
            "not part of the model": [n for n in present if n not in expected],
            "of the wrong shape": [n for n, t in present.items() if n in expected and tuple(int(d) for d in t.shape) != expected[n]],
            "not aligned to 32 bytes": [n for n, t in present.items() if t.data_offset % TENSOR_ALIGNMENT],
            "of a type edgelm's executor does not run": [n for n, t in present.items() if n in expected and t.tensor_type not in (
                {ggml.GGML_TYPE_F32} if len(expected[n]) == 1 else MATRIX_TYPES) or int(t.shape[0]) % ggml.ggml_blck_size(t.tensor_type)],
        }
        for problem, names in problems.items():
            if names:
                raise UserError(f"{len(names)} tensors {problem}: {', '.join(sorted(names)[:5])}{' …' if len(names) > 5 else ''}",
                                self.gguf.path, "the file is damaged: export it again")

    def _load_weights(self, on_cpu: bool) -> None:
        """On the CPU, ggml tensors over the file's memory map (one buffer from the first tensor's data to
        the end of the file): nothing is copied, pages are read as the kernels touch them. Elsewhere, one
        copy into the device's memory."""
        tensors, data = self.gguf.reader.tensors, self.gguf.reader.data
        self.weight_ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=ggml.ggml_tensor_overhead() * (len(tensors) + 1),
                                                                mem_buffer=None, no_alloc=True))
        self.weights = {}
        for t in tensors:
            self.weights[t.name] = _tensor(self.weight_ctx, int(t.tensor_type), tuple(int(d) for d in t.shape))
            ggml.ggml_set_name(self.weights[t.name], t.name.encode())
        if on_cpu:
            start = min(int(t.data_offset) for t in tensors)
            self.weight_buffer = _buffer_from_pointer()(data.ctypes.data + start, len(data) - start)
            for t in tensors:
                ggml.ggml_backend_tensor_alloc(self.weight_buffer, self.weights[t.name], data.ctypes.data + int(t.data_offset))
        else:
            self.weight_buffer = ggml.ggml_backend_alloc_ctx_tensors(self.weight_ctx, self.backend)
            for t in tensors:
                ggml.ggml_backend_tensor_set(self.weights[t.name], data.ctypes.data + int(t.data_offset), 0, int(t.n_bytes))

    def _make_cache(self, gtype: int) -> None:
        arch = self.arch
        refuse_cache_past_memory(2 * arch.layers * arch.kv_width * self.context_length * (4 if gtype == ggml.GGML_TYPE_F32 else 2),
                                 self.context_length, self.gguf.path, f"{arch.arch}.context_length")
        self.cache_ctx = ggml.ggml_init(ggml.ggml_init_params(mem_size=ggml.ggml_tensor_overhead() * (2 * arch.layers + 1),
                                                               mem_buffer=None, no_alloc=True))
        self.cache = [(_tensor(self.cache_ctx, gtype, (arch.kv_width, self.context_length)),
                       _tensor(self.cache_ctx, gtype, (arch.kv_width, self.context_length))) for _ in range(arch.layers)]
        self.cache_buffer = ggml.ggml_backend_alloc_ctx_tensors(self.cache_ctx, self.backend)
        ggml.ggml_backend_buffer_clear(self.cache_buffer, 0)  # masked positions are read: zeros, never NaN

    def _truncate(self, length: int) -> int:
        return length  # the mask hides cache rows past the position; the next tokens overwrite them

    kv_axis = 0  # each layer's K and V: one row of kv_width values per position

    @property
    def position_free(self) -> bool:
        return not getattr(self.arch, "rotary_dims", True)  # an arch without rotary has no position in its keys

    def kv_layout(self):
        dtype = np.float32 if self.cache[0][0].contents.type == ggml.GGML_TYPE_F32 else np.float16
        return [((-1, self.arch.kv_width), np.dtype(dtype))] * (2 * len(self.cache))

    def _kv_arrays(self):
        arrays = []
        for (_, dtype), tensor in zip(self.kv_layout(), (side for layer in self.cache for side in layer)):
            array = np.empty((self.position, self.arch.kv_width), dtype)
            ggml.ggml_backend_tensor_get(tensor, array.ctypes.data, 0, array.nbytes)
            arrays.append(array)
        return arrays

    def _set_kv_arrays(self, arrays):
        for array, tensor in zip(arrays, (side for layer in self.cache for side in layer)):
            _set(tensor, array)  # rows past these stay as they were: the mask hides them

    def _graph(self, n_tokens: int, n_kv: int, last_only: bool) -> _Graph:
        def build(ctx, graph, inputs, n, kv):
            return self.arch.build(ctx, graph, self.weights, self.cache, inputs, n, kv, last_only)

        if n_tokens > 1 and (last_only or n_tokens > STEP_TOKENS):  # a prompt's: used once
            return _Graph(self.backend, build, n_tokens, n_kv)
        if n_tokens > 1:  # built once per size while the cache's length stays within the same 256 positions
            if any(kv != n_kv for _, kv in self.step_graphs):
                self._free_step_graphs()
            if (n_tokens, n_kv) not in self.step_graphs:
                self.step_graphs[n_tokens, n_kv] = _Graph(self.backend, build, n_tokens, n_kv)
            return self.step_graphs[n_tokens, n_kv]
        if n_kv not in self.decode_graphs:  # (a single token's logits are its last row either way)  # one per 256 positions of context, built once
            self.decode_graphs[n_kv] = _Graph(self.backend, build, n_tokens, n_kv)
        return self.decode_graphs[n_kv]

    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        past = self.position
        if past + len(ids) > self.context_length:
            raise ValueError(f"{past + len(ids)} tokens exceed the context of {self.context_length}")
        bad = [i for i in ids if not 0 <= i < self.arch.vocab_size]
        if bad:  # ggml's get_rows does not check: an id past the table would read outside it
            raise UserError(f"token id {bad[0]} is past the {self.arch.vocab_size} rows of token_embd.weight", self.gguf.path,
                            "the tokenizer stored in the file does not match its model: export it again")
        rows = []
        for start in range(0, len(ids), UBATCH):  # a long prompt in pieces, as llama.cpp's n_ubatch: each piece's own buffer
            final = start + UBATCH >= len(ids)
            logits = self._evaluate_at(ids[start:start + UBATCH], past + start, last_only)
            if final or not last_only:
                rows.append(logits)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def _evaluate_at(self, ids: list[int], past: int, last_only: bool) -> np.ndarray:
        n = len(ids)
        n_kv = min(self.context_length, -(-(past + n) // KV_PAD) * KV_PAD)
        graph = self._graph(n, n_kv, last_only)
        try:
            positions = np.arange(past, past + n, dtype=np.int32)
            _set(graph.inputs.tokens, np.asarray(ids, dtype=np.int32))
            _set(graph.inputs.positions, positions)
            _set(graph.inputs.cache_rows, positions.astype(np.int64))
            visible = np.arange(n_kv)[None, :] <= positions[:, None]  # query i sees cache positions 0..past+i
            _set(graph.inputs.mask, np.where(visible, 0.0, -np.inf).astype(np.float16))
            if ggml.ggml_backend_graph_compute(self.backend, graph.graph) != ggml.GGML_STATUS_SUCCESS:
                raise RuntimeError("ggml could not compute the graph")
            logits = np.empty((1 if last_only else n, self.arch.vocab_size), dtype=np.float32)
            ggml.ggml_backend_tensor_get(graph.logits, logits.ctypes.data, 0, logits.nbytes)
        finally:
            if graph is not self.decode_graphs.get(n_kv) and graph is not self.step_graphs.get((n, n_kv)):
                graph.free()  # a prefill's graph is used once: its compute buffer goes with it
        return logits

    def _free_step_graphs(self) -> None:
        for graph in self.step_graphs.values():
            graph.free()
        self.step_graphs.clear()

    def close(self) -> None:
        for graph in self.decode_graphs.values():
            graph.free()
        self.decode_graphs.clear()
        self._free_step_graphs()
        for free, handle in ((ggml.ggml_backend_buffer_free, "cache_buffer"),
                             (ggml.ggml_free, "cache_ctx"), (ggml.ggml_backend_buffer_free, "weight_buffer"),
                             (ggml.ggml_free, "weight_ctx"), (ggml.ggml_backend_free, "backend")):
            if getattr(self, handle, None) is not None:
                free(getattr(self, handle))
                setattr(self, handle, None)
