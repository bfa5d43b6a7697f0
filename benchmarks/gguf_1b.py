"""GGUF export and decode on the real-size tinyllama-nope-1.1b preset (random weights, same shapes):
export wall time and peak RSS for f16 and Q4_K_M, then decode tok/s of the Q4_K_M file through edgelm's
runtime and through raw llama-cpp-python on the same file.

    python benchmarks/gguf_1b.py [--work DIR] [--tokens 64] [--threads 2]

Prints a table; numbers are for the machine it runs on (targets: peak RSS ≤ 2.5 GB, ratio ≥ 0.97).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child_export(model: str, out: str, quant: str) -> None:
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    start = time.time()
    export_gguf(open_checkpoint(model), Path(out), quant)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    print(json.dumps({"seconds": time.time() - start, "peak_rss": max(peak, children), "bytes": Path(out).stat().st_size}))


def measure_export(model: Path, out: Path, quant: str) -> dict:
    line = subprocess.run([sys.executable, __file__, "--child-export", str(model), str(out), quant],
                          check=True, capture_output=True, text=True).stdout.strip().splitlines()[-1]
    return json.loads(line)


def decode_rates(path: Path, tokens: int, threads: int) -> tuple[float, float]:
    """tok/s decoding `tokens` greedy tokens after a 32-token prompt: edgelm's loop, then llama.cpp's own."""
    from llama_cpp import Llama

    from edgelm.runtime.llama_cpp_backend import LlamaCppBackend
    from edgelm.runtime.sampling import Sampler, SamplingOptions

    prompt = list(range(100, 132))
    backend = LlamaCppBackend(path, 512, threads)
    sampler = Sampler(SamplingOptions())
    logits = backend.prefill(prompt)
    start = time.time()
    for _ in range(tokens):
        logits = backend.decode(sampler(logits))
    ours = tokens / (time.time() - start)
    del backend

    llm = Llama(model_path=str(path), n_ctx=512, n_threads=threads, verbose=False)
    llm.eval(prompt)
    start = time.time()
    for _ in range(tokens):
        token = llm.sample(top_k=1)
        llm.eval([token])
    raw = tokens / (time.time() - start)
    return ours, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (needs ~9 GB)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from edgelm.models.presets import write_preset

    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        start = time.time()
        model = write_preset("tinyllama-nope-1.1b", work / "model")
        print(f"preset written in {time.time() - start:.0f} s", flush=True)
        rows = {}
        for quant in ("f16", "int4"):
            rows[quant] = measure_export(model, work / f"{quant}.gguf", quant)
            print(quant, rows[quant], flush=True)
        ours, raw = decode_rates(work / "int4.gguf", args.tokens, args.threads)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {args.threads} threads")
    print("| export | wall s | peak RSS GB | file GB |\n|---|---:|---:|---:|")
    for quant, row in rows.items():
        print(f"| {quant} | {row['seconds']:.0f} | {row['peak_rss'] / 1e9:.2f} | {row['bytes'] / 1e9:.2f} |")
    print(f"\ndecode Q4_K_M, {args.tokens} tokens: edgelm {ours:.2f} tok/s, raw llama-cpp-python {raw:.2f} tok/s, ratio {ours / raw:.3f}")


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child-export":
        child_export(*sys.argv[2:])
    else:
        main()
