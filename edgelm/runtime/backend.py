"""What every generation backend provides: run tokens through the model, appending them to a KV cache
kept inside the backend, and return fp32 logits for each of them.

The base class keeps the token ids the cache holds (`cached_ids`), so a prompt that shares a prefix
with them evaluates only the rest (`prefill`), as llama.cpp's server and llama-cpp-python's
`create_chat_completion` do: a chat turn costs its new tokens, not the whole conversation. Each backend
provides only `_evaluate` (append tokens, return logits) and `_truncate` (drop cache positions).

A backend that keeps its cache as arrays with a position axis (`kv_layout`, `_kv_arrays`,
`_set_kv_arrays`) can also save and load it (`save_state`/`load_state`: a prompt cache file,
runtime/prompt_cache.py) and, where its keys and values carry no position (NoPE: `position_free`),
shift it: drop a span of positions and move the rest down without evaluating them again (`context_shift`,
llama.cpp's context shift)."""

from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import UserError


class StateMismatch(ValueError):
    """A saved cache state that is not this backend's: another layout, dtype or engine."""


class Backend(ABC):
    context_length: int
    all_logits: bool = True  # forward() gives every position's logits; llama.cpp opened for generation gives the last only
    lookup_draft: int = 0  # tokens prompt-lookup decoding drafts by default (generate.py); 0: off, where it did not measure faster
    kv_axis = 2  # the position axis of each array `_kv_arrays` gives
    position_free = False  # keys and values carry no position (NoPE): cache entries can move without re-evaluation
    learned_positions: int | None = None  # where a learned position table ends (GPT-2's wpe): no position past it
    SHIFT_ANCHOR = 8  # tokens after a dropped span that must match before the cache is shifted past it

    def __init__(self) -> None:
        self.cached_ids: list[int] = []  # the token at each cache position, in order
        self.evaluated = 0  # tokens run through the model since this backend opened
        self.drafted = self.accepted = 0  # prompt-lookup tokens verified, and taken, since this backend opened
        # the next prefill may drop a span of the cache and move what follows it down instead of evaluating
        # it again; only where position_free, and not exact: the kept keys and values were computed with the
        # dropped text before them (docs/formats.md, "Context shift"). Chat sets it for a turn that dropped
        # old exchanges only.
        self.context_shift = False

    @abstractmethod
    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        """Run `ids` at positions position.. (writing their K and V there); logits [len(ids), vocab]
        (fp32), row i predicting the token after ids[i], or only the last row where `last_only`."""

    @abstractmethod
    def _truncate(self, length: int) -> int:
        """Forget cache positions `length` and later; returns how many it kept: `length`, or 0 where the
        cache cannot be cut there (a recurrent model's state in llama.cpp)."""

    @property
    def position(self) -> int:
        """Tokens in the cache."""
        return len(self.cached_ids)

    def forward(self, ids: list[int]) -> np.ndarray:
        """Append `ids` to the cache; logits [len(ids), vocab] (fp32), row i predicting the token after ids[i]."""
        return self._append(ids, last_only=False)

    def prefill(self, ids: list[int]) -> np.ndarray:
        """Logits [vocab] for the token after the last of `ids`; the cache then holds exactly `ids`. Only
        what `ids` do not share with the cache is evaluated, and at least the last token (its logits
        are not kept)."""
        if not ids:
            raise ValueError("prefill needs at least one token")
        shared = 0
        for cached, new in zip(self.cached_ids, ids[:-1]):
            if cached != new:
                break
            shared += 1
        if self.context_shift and self.position_free and shared < len(self.cached_ids):
            shared = self._shift_to(ids, shared)
        self.rewind(shared)
        return self._append(ids[self.position:], last_only=True)[-1]

    def decode(self, token: int) -> np.ndarray:
        return self._append([token], last_only=True)[-1]

    def rewind(self, length: int) -> None:
        """Keep the first `length` positions of the cache."""
        if length < len(self.cached_ids):
            del self.cached_ids[self._truncate(length):]

    def reset(self) -> None:
        """Forget the cache: the next call starts at position 0."""
        self._truncate(0)
        self.cached_ids.clear()

    def _append(self, ids: list[int], last_only: bool) -> np.ndarray:
        try:
            logits = self._evaluate(ids, last_only)
        except BaseException:  # an error or Ctrl-C part way: positions past the kept ones cannot be trusted
            del self.cached_ids[self._truncate(len(self.cached_ids)):]
            raise
        self.cached_ids += ids
        self.evaluated += len(ids)
        return logits

    def close(self) -> None:
        """Free native resources (sessions, model memory); the backend is not used afterwards."""

    # --- the cache as arrays: saved, loaded, shifted ---

    def kv_layout(self) -> list[tuple[tuple[int, ...], np.dtype]] | None:
        """Each cache array's shape (with -1 on `kv_axis`, the positions) and dtype; None where the cache
        is not kept as arrays edgelm can read and write."""
        return None

    def kv_cache_type(self) -> str:
        """The KV cache's number type as numpy names it ("float32", "float16", "int8"): what a parity
        measurement ran with, recorded so two measurements are compared like with like."""
        layout = self.kv_layout()
        return np.dtype(layout[0][1]).name if layout else "unknown"

    def _kv_arrays(self) -> list[np.ndarray]:
        """The cache's arrays for positions 0..position, in kv_layout's order."""
        raise NotImplementedError

    def _set_kv_arrays(self, arrays: list[np.ndarray]) -> None:
        """Make `arrays` (kv_layout's shapes and dtypes, equal lengths on kv_axis) the cache."""
        raise NotImplementedError

    def state_signature(self) -> str:
        """What a saved state must have been made by besides the model file: the engine and its cache's form."""
        layout = self.kv_layout()
        if layout is None:
            raise StateMismatch(f"{type(self).__name__} cannot save its cache")
        return f"{type(self).__name__} axis {self.kv_axis} " + " ".join(f"{shape}:{np.dtype(dtype).str}" for shape, dtype in layout)

    def state_bytes_per_position(self) -> int:
        """An upper bound on the bytes a saved state takes per cached token (a prompt cache file larger than
        this allows is refused before it is read)."""
        return 8 + sum(int(np.prod([d for d in shape if d != -1])) * np.dtype(dtype).itemsize for shape, dtype in self.kv_layout() or [])

    def save_state(self) -> dict[str, np.ndarray]:
        """The cache and the ids it holds, as named arrays (safetensors' names)."""
        return {"ids": np.array(self.cached_ids, dtype=np.int64)} | {f"kv.{i}": np.ascontiguousarray(a) for i, a in enumerate(self._kv_arrays())}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        """Make a state save_state gave the cache; StateMismatch (the cache then empty) where it is not one
        this backend made: checked against kv_layout before any array is used."""
        ids = arrays.get("ids")
        layout = self.kv_layout() or []
        if ids is None or ids.dtype != np.int64 or ids.ndim != 1 or not 0 < len(ids) < self.context_length:
            raise StateMismatch("its token ids are missing or do not fit the context")
        kv = [arrays.get(f"kv.{i}") for i in range(len(layout))]
        if set(arrays) != {"ids", *(f"kv.{i}" for i in range(len(layout)))}:
            raise StateMismatch(f"it holds {len(arrays) - 1} cache arrays, this model's cache has {len(layout)}")
        for array, (shape, dtype) in zip(kv, layout):
            wanted = tuple(len(ids) if d == -1 else d for d in shape)
            if array.shape != wanted or array.dtype != dtype:
                raise StateMismatch(f"a cache array is {array.dtype}{list(array.shape)}, this model's is {np.dtype(dtype)}{list(wanted)}")
        self.reset()
        self._set_kv_arrays(kv)
        self.cached_ids = [int(i) for i in ids]

    def _shift_to(self, ids: list[int], shared: int) -> int:
        """Where the cache holds ids[shared:] after a span it dropped (the oldest exchanges of a chat),
        remove that span and move what follows down to `shared`; returns how many of `ids` the cache
        then holds. The span is the one after which the longest run of ids[shared:] follows (at least
        SHIFT_ANCHOR tokens), found from the positions where its first SHIFT_ANCHOR tokens occur."""
        cached, anchor = self.cached_ids, ids[shared: shared + self.SHIFT_ANCHOR]
        if len(ids) - 1 - shared < self.SHIFT_ANCHOR or self.kv_layout() is None:  # the last token is always evaluated
            return shared
        best, start = 0, None
        for p in range(shared + 1, len(cached) - self.SHIFT_ANCHOR + 1):
            if cached[p: p + self.SHIFT_ANCHOR] == anchor:
                run = self.SHIFT_ANCHOR
                while p + run < len(cached) and shared + run < len(ids) - 1 and cached[p + run] == ids[shared + run]:
                    run += 1
                if run > best:
                    best, start = run, p
        if start is None:
            return shared
        self.rewind(start + best)
        kept = [np.concatenate((a.take(range(shared), self.kv_axis), a.take(range(start, start + best), self.kv_axis)), self.kv_axis)
                for a in self._kv_arrays()]
        self._set_kv_arrays(kept)
        self.cached_ids = cached[:shared] + cached[start: start + best]
        return shared + best


def default_threads() -> int:
    """The CPU threads every engine gets when none are asked for: the physical cores (physical_cores), less the
    cores other work keeps busy — the 1-minute load average's whole processes, this process's own share left out
    (a long one, serve or a test run, counts itself). llama.cpp's, ggml's and onnxruntime's threads wait for each
    other at every step by spinning, so one thread the OS gives to another process stalls them all. Measured on 2
    CPUs, tiny-rope Q4_K_M, `bench --new-tokens 200 -r 3`: quiet, 2 threads 2,185 tok/s and 1 thread 2,019; with
    one CPU kept busy (`yes`), 2 threads 646–1,482 and 1 thread 2,032–2,072. A stranger's chat at load 3 on 2
    CPUs: 19 tok/s at 2 threads, 3,264 at 1. The probe re-runs bit-identically at either count (docs/certificate.md)."""
    cores = physical_cores()
    try:
        load = os.getloadavg()[0]
    except (AttributeError, OSError):  # no load average (Windows)
        return cores
    own = min(1.0, time.process_time() / 60)  # what this process has run, at most one CPU, of the last minute's average
    return max(cores - int(max(load - own, 0.0)), 1)


def physical_cores() -> int:
    """The physical cores this process may run on, as llama.cpp (cpu_get_num_physical_cores) and onnxruntime
    (its default intra-op pool) count them. A core's second hyperthread shares its vector units and cache, so
    in decode's matrix-vector products it only contends. Where the topology cannot be read, half the logical
    CPUs, as llama-cpp-python's `Llama` takes."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:  # the CPUs sharing this one's core, e.g. "0,4" or "0-1"; one entry per physical core
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return max(len(allowed) // 2, 1)
    return max(len(cores), 1)


def proc_bytes(file: str, key: str) -> int | None:
    """A `key:  N kB` line of a /proc file (/proc/meminfo, /proc/self/status) in bytes; None where there is
    no /proc (not Linux) or no such line."""
    try:
        with open(file) as lines:
            return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(key + ":"))
    except (OSError, StopIteration, ValueError, IndexError):
        return None


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else all physical memory."""
    found = proc_bytes("/proc/meminfo", "MemAvailable")
    return found if found is not None else os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


# what sets the context in each command (a stranger's finding: parity and bench were told to use --ctx-size, which they lack)
CONTEXT_OPTIONS = "--ctx-size in generate and chat, --ctx in perplexity, --tokens in parity, --prompt-tokens and --new-tokens in bench; context_length in Python"


def refuse_cache_past_memory(needed: int, positions: int, path: Path, key: str) -> None:
    """A KV cache sized from a context length a stranger wrote is refused before it is allocated, not by
    a MemoryError traceback or the OOM killer."""
    available = available_memory()
    if needed > available:
        raise UserError(f"a context of {positions} tokens needs {needed / 1e9:.1f} GB of KV cache, more than the "
                        f"{available / 1e9:.1f} GB available", path,
                        f"ask for a shorter context ({CONTEXT_OPTIONS}); if {key} is what asks for it, export the model again with a "
                        "shorter context")
