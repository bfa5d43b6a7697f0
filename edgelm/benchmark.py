"""Speed of an artifact on this machine: time to first token, prefill and decode tok/s, peak RSS, the
same through the raw engine (llama-cpp-python's own loop, onnxruntime-genai's generator) so the ratio
shows edgelm's overhead, and the memory-bandwidth roofline for decode."""

from __future__ import annotations

import resource
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .runtime.artifact import Artifact
from .runtime.sampling import Sampler, SamplingOptions


@dataclass
class BenchResult:
    prompt_tokens: int
    new_tokens: int
    time_to_first_token_s: float
    prefill_tok_s: float
    decode_tok_s: float
    peak_rss_bytes: int
    weight_bytes: int
    copy_bandwidth_bytes_s: float
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


def copy_bandwidth(megabytes: int = 256, repeats: int = 5) -> float:
    """Bytes per second moved by a large memory copy (read + write counted once, as a weight read)."""
    source = np.ones(megabytes * 1024 * 1024 // 8)
    target = np.empty_like(source)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        np.copyto(target, source)
        best = min(best, time.perf_counter() - start)
    return source.nbytes / best


def weight_bytes(path: Path) -> int:
    if path.suffix == ".gguf":
        from .runtime.gguf_file import open_gguf

        return int(sum(t.n_bytes for t in open_gguf(path).reader.tensors))
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.suffix in (".onnx", ".data", ".safetensors", ".ort"))
    return path.stat().st_size


def _raw_decode_rate(artifact: Artifact, prompt: list[int], new_tokens: int, threads: int | None) -> tuple[str, float] | None:
    if artifact.engine == "llama.cpp":
        from llama_cpp import Llama

        llm = Llama(model_path=str(artifact.path), n_ctx=len(prompt) + new_tokens + 1, n_threads=threads, verbose=False)
        llm.eval(prompt)
        start = time.perf_counter()
        for _ in range(new_tokens):
            llm.eval([llm.sample(top_k=1)])
        return "llama-cpp-python", new_tokens / (time.perf_counter() - start)
    if artifact.kind == "onnx folder":
        import onnxruntime_genai as og

        model = og.Model(str(artifact.path))
        params = og.GeneratorParams(model)
        params.set_search_options(max_length=len(prompt) + new_tokens, min_length=len(prompt) + new_tokens, do_sample=False)
        generator = og.Generator(model, params)
        generator.append_tokens(np.array([prompt], dtype=np.int32))
        generator.generate_next_token()
        start, count = time.perf_counter(), 0
        while not generator.is_done():
            generator.generate_next_token()
            count += 1
        return "onnxruntime-genai", count / (time.perf_counter() - start)
    return None


def bench(artifact: Artifact, prompt: list[int], new_tokens: int, compare: bool = False, threads: int | None = None) -> BenchResult:
    backend, sampler = artifact.backend, Sampler(SamplingOptions())
    backend.reset()
    start = time.perf_counter()
    logits = backend.prefill(prompt)
    token = sampler(logits)
    first = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = sampler(backend.decode(token))
    decode = new_tokens / (time.perf_counter() - start)
    raw = _raw_decode_rate(artifact, prompt, new_tokens, threads) if compare else None
    return BenchResult(
        prompt_tokens=len(prompt), new_tokens=new_tokens, time_to_first_token_s=first, prefill_tok_s=len(prompt) / first,
        decode_tok_s=decode, peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        weight_bytes=weight_bytes(artifact.path), copy_bandwidth_bytes_s=copy_bandwidth(),
        raw_engine=raw[0] if raw else None, raw_decode_tok_s=raw[1] if raw else None,
    )
