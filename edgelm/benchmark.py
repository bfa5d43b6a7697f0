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

from .artifact_files import read_json
from .constants import GENAI_CONFIG
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
    repetitions: int = 1
    time_to_first_token_s_runs: list[float] | None = None  # each run's, in the order run; the fields above are medians
    decode_tok_s_runs: list[float] | None = None
    raw_decode_tok_s_runs: list[float] | None = None

    @property
    def roofline_tok_s(self) -> float:
        """Decode cannot beat reading every weight once per token at copy bandwidth."""
        return self.copy_bandwidth_bytes_s / self.weight_bytes

    def as_dict(self) -> dict:
        extra = {"roofline_tok_s": self.roofline_tok_s, "roofline_fraction": self.decode_tok_s / self.roofline_tok_s}
        if self.raw_decode_tok_s:
            extra["edgelm_over_raw"] = self.decode_tok_s / self.raw_decode_tok_s
        return asdict(self) | extra


def prompt_ids(tokenizer, text: str, count: int) -> list[int]:
    """`count` token ids of `text`, repeated as often as it takes: a bench's prompt of any length."""
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text encodes to no tokens")
    return (ids * -(-count // len(ids)))[:count]


def copy_bandwidth(threads: int | None = None, megabytes: int | None = None, repeats: int = 5) -> float:
    """Memory bandwidth in bytes per second, STREAM-style: a copy on `threads` threads (as many as the engine uses),
    counting the bytes read and the bytes written, of arrays four times the last-level cache (STREAM's rule), at least
    128 MB each. 512 MB arrays put a tiny model's bench at 1.3 GB peak (stranger 45); on this machine's 32 MB L3,
    64 MB to 512 MB arrays measured the same within 10 % (32.3, 32.5, 31.4, 29.0 GB/s)."""
    import torch

    megabytes = megabytes or max(128, 4 * _last_level_cache_mb())
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


def _last_level_cache_mb() -> int:
    """The largest CPU cache's size in MB, from Linux's sysfs; 0 where it cannot be read."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = index.read_text().strip()
        except OSError:
            continue
        number, unit = text[:-1], text[-1:].upper()
        if number.isdigit() and unit in "KMG":
            sizes.append(int(number) * {"K": 1, "M": 1024, "G": 1 << 20}[unit] // 1024)
    return max(sizes, default=0)


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


def _timed(first_token: Callable[[list[int]], None], next_token: Callable[[], None], prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds for `first_token(prompt)`, which starts a generation from an empty cache, and tok/s of `new_tokens`
    calls of `next_token` after it): one timing loop for every engine, so their numbers compare. An untimed warm-up
    generation comes first, one prompt token and up to WARMUP_STEPS steps, within the positions the timed one takes
    (prompt + new tokens): a bench that fills the model's context exactly was refused when the warm-up came on top."""
    first_token(prompt[:1])
    for _ in range(min(WARMUP_STEPS, len(prompt) + new_tokens - 1)):
        next_token()
    start = time.perf_counter()
    first_token(prompt)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        next_token()
    return first, new_tokens / (time.perf_counter() - start)


def time_generation(backend: Backend, prompt: list[int], new_tokens: int) -> tuple[float, float]:
    """(seconds to the first token, decode tok/s) for greedy generation through edgelm's backend."""
    sampler = Sampler(SamplingOptions())
    token = None

    def first_token(ids: list[int]):
        nonlocal token
        backend.reset()
        token = sampler(backend.prefill(ids))

    def next_token():
        nonlocal token
        token = sampler(backend.decode(token))

    return _timed(first_token, next_token, prompt, new_tokens)


Run = Callable[[], tuple[float, float]]  # one timed generation: (seconds to the first token, decode tok/s)


def llama_cpp_runner(path: Path, prompt: list[int], new_tokens: int, threads: int) -> Run:
    """llama-cpp-python's own eval/sample loop on `threads` for prefill and decode, the model opened once:
    each generation starts from an empty cache (eval drops what lies past n_tokens)."""
    from llama_cpp import Llama

    llm = Llama(model_path=str(path), n_ctx=len(prompt) + new_tokens, n_threads=threads, n_threads_batch=threads, verbose=False)

    def first_token(ids: list[int]):
        llm.reset()
        llm.eval(ids)

    def next_token():
        llm.eval([llm.sample(top_k=1)])

    return lambda: _timed(first_token, next_token, prompt, new_tokens)


def genai_runner(folder: Path, prompt: list[int], new_tokens: int, threads: int) -> Run:
    """onnxruntime-genai's generator on an ONNX folder, its session on `threads`, the model opened once and
    a new generator for each generation."""
    import json

    import onnxruntime_genai as og

    config = og.Config(str(folder))
    config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
    model = og.Model(config)
    # genai counts the token a step makes in the sequence, edgelm the one it feeds: at a full context genai has
    # one step fewer to time
    context = read_json(folder / GENAI_CONFIG)["model"]["context_length"]
    steps = min(new_tokens, context - len(prompt) - 1)
    total = len(prompt) + 1 + steps
    generator = None

    def first_token(ids: list[int]):
        nonlocal generator
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=total, min_length=total, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([ids], dtype=np.int32))
        generator.generate_next_token()

    return lambda: _timed(first_token, lambda: generator.generate_next_token(), prompt, steps)


def llama_cpp_generation(path: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """One run of llama_cpp_runner."""
    return llama_cpp_runner(path, prompt, new_tokens, threads)()


def genai_generation(folder: Path, prompt: list[int], new_tokens: int, threads: int) -> tuple[float, float]:
    """One run of genai_runner."""
    return genai_runner(folder, prompt, new_tokens, threads)()


RAW_ENGINES = {"llama-cpp-python": llama_cpp_runner, "onnxruntime-genai": genai_runner}


def bench(artifact: Artifact, prompt: list[int], new_tokens: int, compare: bool = False, threads: int | None = None,
          repetitions: int = 5) -> BenchResult:
    """`threads`: what `artifact` was opened with (None: the engines' default, default_threads()); the raw
    engine and the bandwidth copy get the same count, so the ratio compares engines, not thread counts.
    `repetitions` runs of each engine, interleaved (as llama-bench's -r, default 5): the rates reported are
    the medians, each run's kept beside them, because one run on a shared machine can be many times slower."""
    threads = threads or default_threads()
    edgelm_runs = [time_generation(artifact.backend, prompt, new_tokens)]
    edgelm_peak = peak_rss(resource.RUSAGE_SELF)  # before the raw engine opens in this process and the copy allocates
    engine = artifact.format.raw_engine if compare else None
    raw = RAW_ENGINES[engine](artifact.path, prompt, new_tokens, threads) if engine else None
    raw_runs = [raw()] if raw else []
    for _ in range(repetitions - 1):
        edgelm_runs.append(time_generation(artifact.backend, prompt, new_tokens))
        if raw:
            raw_runs.append(raw())
    bandwidth = copy_bandwidth(threads)
    first = float(np.median([run[0] for run in edgelm_runs]))
    return BenchResult(
        prompt_tokens=len(prompt), new_tokens=new_tokens, time_to_first_token_s=first, prefill_tok_s=len(prompt) / first,
        decode_tok_s=float(np.median([run[1] for run in edgelm_runs])), peak_rss_bytes=edgelm_peak,
        command_peak_rss_bytes=max(peak_rss(resource.RUSAGE_SELF), peak_rss(resource.RUSAGE_CHILDREN)),
        weight_bytes=artifact.format.weight_bytes(), copy_bandwidth_bytes_s=bandwidth, threads=threads,
        raw_engine=engine, raw_decode_tok_s=float(np.median([run[1] for run in raw_runs])) if raw_runs else None,
        repetitions=repetitions, time_to_first_token_s_runs=[run[0] for run in edgelm_runs],
        decode_tok_s_runs=[run[1] for run in edgelm_runs], raw_decode_tok_s_runs=[run[1] for run in raw_runs] or None,
    )
