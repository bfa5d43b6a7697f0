"""Speed of an artifact on this machine: time to first token, prefill and decode tok/s, peak RSS, the
same through the raw engine (llama-cpp-python's own loop, onnxruntime-genai's generator) so the ratio
shows edgelm's overhead, and the memory-bandwidth roofline for decode."""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .formats import Artifact
from .runtime.backend import Backend, default_threads
from .runtime.sampling import Sampler, SamplingOptions


@dataclass
class BenchResult:
    prompt_tokens: int
    new_tokens: int
    time_to_first_token_s: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_bytes: int  # the process's peak once edgelm has opened and run the model (before the raw engine and the copy)
    command_peak_rss_bytes: int  # the whole bench: the raw engine and the roofline's bandwidth copy included, children too
    weight_bytes: int
    copy_bandwidth_bytes_s: float
    threads: int
    raw_engine: str | None = None
    raw_decode_tok_s: float | None = None

    @property
    def roofline_tok_s(self) -> float:
        """Decode cannot beat reading every weight once per token at copy bandwidth."""
        return self.copy_bandwidth_bytes_s / self.weight_bytes

    def as_dict(self) -> dict:
        extra = {"roofline_tok_s": self.roofline_tok_s, "roofline_fraction": self.decode_tok_s / self.roofline_tok_s}
        if self.raw_decode_tok_s:
            extra["edgelm_over_raw"] = self.decode_tok_s / self.raw_decode_tok_s
        return asdict(self) | extra


def copy_bandwidth(threads: int | None = None, megabytes: int = 512, repeats: int = 5) -> float:
    """Memory bandwidth in bytes per second, STREAM-style: a large copy on `threads` threads (as many as
    the engine uses), counting the bytes read and the bytes written."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads or previous)
    source = torch.ones(megabytes * 1024 * 1024 // 4)
    target = torch.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        target.copy_(source)
        best = min(best, time.perf_counter() - start)
    torch.set_num_threads(previous)
    return 2 * source.numel() * source.element_size() / best


def peak_rss(who: int) -> int:
    """The largest resident set so far, in bytes, of this process (RUSAGE_SELF) or of the largest child it
    waited for (RUSAGE_CHILDREN). This process's from /proc's VmHWM where there is one: Linux's ru_maxrss
    keeps the peak of the process it was forked from (`edgelm bench` started by a 1.6 GB pytest reported
    1.6 GB), VmHWM is this program's own; else ru_maxrss (KiB on Linux, bytes on macOS)."""
    import sys

    from .runtime.backend import proc_bytes

    own = proc_bytes("/proc/self/status", "VmHWM") if who == resource.RUSAGE_SELF else None
    return own if own is not None else resource.getrusage(who).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


WARMUP_STEPS = 4  # untimed decode steps first: a fresh session's first steps fault pages and grow arenas


def _timed(first_token: Callable[[], None], next_token: Callable[[], None], new_tokens: int) -> tuple[float, float]:
    """(seconds for `first_token`, tok/s of `new_tokens` calls of `next_token` after WARMUP_STEPS untimed ones):
    one timing loop for every engine, so their numbers compare."""
    start = time.perf_counter()
    first_token()
    first = time.perf_counter() - start
    for _ in range(WARMUP_STEPS):
        next_token()
    start = time.perf_counter()
    for _ in range(new_tokens):
        next_token()
    return first, new_tokens / (time.perf_counter() - start)


def time_generation(backend: Backend, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tok/s) for greedy generation through edgelm's backend."""
    sampler = Sampler(SamplingOptions())
    backend.reset()
    token = None

    def first_token():
        nonlocal token
        token = sampler(backend.prefill(prompt))

    def next_token():
        nonlocal token
        token = sampler(backend.decode(token))

    return _timed(first_token, next_token, new_tokens)


def llama_cpp_generation(path: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """The same through llama-cpp-python's own eval/sample loop, on `threads` for prefill and decode."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(prompt) + WARMUP_STEPS + new_tokens + 1, n_threads=threads, n_threads_batch=threads,
                verbose=False)

    def next_token():
        llm.eval([llm.sample(top_k=1)])

    return _timed(lambda: llm.eval(prompt), next_token, new_tokens)


def genai_generation(folder: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """The same through onnxruntime-genai's generator on an ONNX folder, its session on `threads`."""
    import json

    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    params = og.GeneratorParams(model)
    total = len(prompt) + 1 + WARMUP_STEPS + new_tokens
    params.set_search_options(max_length=total, min_length=total, do_sample=False)
    generator = og.Generator(model, params)

    def first_token():
        generator.append_tokens(np.array([prompt], dtype=np.int32))
        generator.generate_next_token()

    return _timed(first_token, generator.generate_next_token, new_tokens)


RAW_ENGINES = {"llama-cpp-python": llama_cpp_generation, "onnxruntime-genai": genai_generation}


def raw_generation(artifact: Artifact, prompt: list[int], new_tokens: int, threads: int) -> tuple[str, float, float] | None:
    """(engine, seconds to the first token, decode tok/s) through the artifact's raw engine, if it has one."""
    engine = artifact.format.raw_engine
    return (engine, *RAW_ENGINES[engine](artifact.path, prompt, new_tokens, threads)) if engine else None


def bench(artifact: Artifact, prompt: list[int], new_tokens: int, compare: bool = False, threads: int | None = None) -> BenchResult:
    """`threads`: what `artifact` was opened with (None: the engines' default, default_threads()); the raw
    engine and the bandwidth copy get the same count, so the ratio compares engines, not thread counts."""
    threads = threads or default_threads()
    first, decode = time_generation(artifact.backend, prompt, new_tokens)
    edgelm_peak = peak_rss(resource.RUSAGE_SELF)  # before the raw engine runs in this process and the copy allocates
    raw = raw_generation(artifact, prompt, new_tokens, threads) if compare else None
    bandwidth = copy_bandwidth(threads)
    return BenchResult(
        prompt_tokens=len(prompt), new_tokens=new_tokens, time_to_first_token_s=first, prefill_tok_s=len(prompt) / first,
        decode_tok_s=decode, peak_rss_bytes=edgelm_peak,
        command_peak_rss_bytes=max(peak_rss(resource.RUSAGE_SELF), peak_rss(resource.RUSAGE_CHILDREN)),
        weight_bytes=artifact.format.weight_bytes(), copy_bandwidth_bytes_s=bandwidth, threads=threads,
        raw_engine=raw[0] if raw else None, raw_decode_tok_s=raw[2] if raw else None,
    )
