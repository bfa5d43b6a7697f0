"""What every generation backend provides: run tokens through the model, appending them to a KV cache
kept inside the backend, and return fp32 logits for each of them.

The base class keeps the token ids the cache holds (`cached_ids`), so a prompt that shares a prefix
with them evaluates only the rest (`prefill`), as llama.cpp's server and llama-cpp-python's
`create_chat_completion` do: a chat turn costs its new tokens, not the whole conversation. Each backend
provides only `_evaluate` (append tokens, return logits) and `_truncate` (drop cache positions)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np

from ..errors import UserError


class Backend(ABC):
    context_length: int
    all_logits: bool = True  # forward() gives every position's logits; llama.cpp opened for generation gives the last only
    lookup_draft: int = 0  # tokens prompt-lookup decoding drafts by default (generate.py); 0: off, where it did not measure faster

    def __init__(self) -> None:
        self.cached_ids: list[int] = []  # the token at each cache position, in order
        self.evaluated = 0  # tokens run through the model since this backend opened
        self.drafted = self.accepted = 0  # prompt-lookup tokens verified, and taken, since this backend opened

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


def default_threads() -> int:
    """The CPU threads every engine gets when none are asked for: the physical cores this process may run
    on, as llama.cpp (cpu_get_num_physical_cores) and onnxruntime (its default intra-op pool) choose them.
    A core's second hyperthread shares its vector units and cache, so in decode's matrix-vector products it
    only contends; on a busy machine every logical CPU also means waiting for the slowest thread at each
    barrier. Where the topology cannot be read, half the logical CPUs, as llama-cpp-python's `Llama` takes."""
    allowed = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else list(range(os.cpu_count() or 1))
    cores = set()
    for cpu in allowed:
        try:  # the CPUs sharing this one's core, e.g. "0,4" or "0-1"; one entry per physical core
            cores.add(Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            return max(len(allowed) // 2, 1)
    return max(len(cores), 1)


def available_memory() -> int:
    """Bytes the kernel says can be allocated without swapping (MemAvailable), else all physical memory."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def refuse_cache_past_memory(needed: int, positions: int, path: Path, key: str) -> None:
    """A KV cache sized from a context length a stranger wrote is refused before it is allocated, not by
    a MemoryError traceback or the OOM killer."""
    available = available_memory()
    if needed > available:
        raise UserError(f"a context of {positions} tokens needs {needed / 1e9:.1f} GB of KV cache, more than the "
                        f"{available / 1e9:.1f} GB available", path,
                        f"give a smaller --ctx-size (context_length in Python); if {key} is what asks for it, export the model "
                        "again with a shorter context")
