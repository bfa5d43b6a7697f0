"""Decode speed of edgelm's runtime against the raw engine on the same artifact, and of edgelm's ONNX
graph against another exporter's (onnxruntime-genai's builder) with both run by onnxruntime-genai.

Single runs on a shared VM differ by up to ±10 %, so the pairs are interleaved (A B A B …, --rounds
rounds) at each context, and the median of the per-round ratios is reported with its range. Each
timing is `--tokens` greedy decode steps after 4 untimed ones (edgelm.benchmark's loop, the same for
every engine), at the same context length for both sides.

    python benchmarks/decode_parity.py ARTIFACT [ARTIFACT …] [--builder ONNX_FOLDER] [--contexts 128 1984]
                                       [--tokens 32] [--rounds 5] [--threads 2]

For a GGUF the raw engine is llama-cpp-python's eval/sample loop; for an ONNX folder, onnxruntime-genai's
generator. With --builder, the first ONNX artifact's graph is also compared with the builder's folder.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import prompt_ids  # noqa: E402


def interleaved(first, second, rounds: int) -> tuple[float, float, list[float]]:
    """Median tok/s of `first` and `second` (callables returning tok/s), and the per-round ratios."""
    a, b = [], []
    for _ in range(rounds):
        a.append(first())
        b.append(second())
    return statistics.median(a), statistics.median(b), [x / y for x, y in zip(a, b)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--builder", type=Path, default=None, help="an ONNX folder made by onnxruntime-genai's builder")
    parser.add_argument("--contexts", nargs="+", type=int, default=[128, 1984])
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    from edgelm.benchmark import WARMUP_STEPS, genai_generation, llama_cpp_generation, time_generation
    from edgelm.formats import LoadOptions, open_artifact

    rows, compared = [], None  # compared: the ONNX artifact whose graph is set against the builder's
    for path in args.artifacts:
        for context in args.contexts:
            prompt = prompt_ids(context)
            n_ctx = context + 1 + WARMUP_STEPS + args.tokens
            artifact = open_artifact(path, LoadOptions(threads=args.threads, context_length=n_ctx))
            engine = artifact.format.raw_engine
            raw = {"llama-cpp-python": llama_cpp_generation, "onnxruntime-genai": genai_generation}[engine]
            ours, theirs, ratios = interleaved(lambda: time_generation(artifact.backend, prompt, args.tokens)[1],
                                               lambda: raw(path, prompt, args.tokens, args.threads)[1], args.rounds)
            rows.append((path.name, context, "edgelm runtime", engine, ours, theirs, ratios))
            print(rows[-1], flush=True)
            artifact.backend.close()
            compared = compared or (path if engine == "onnxruntime-genai" else None)
            if args.builder and path == compared:
                ours, theirs, ratios = interleaved(lambda: genai_generation(path, prompt, args.tokens, args.threads)[1],
                                                   lambda: genai_generation(args.builder, prompt, args.tokens, args.threads)[1],
                                                   args.rounds)
                rows.append((path.name, context, "edgelm's graph (genai)", "builder's graph (genai)", ours, theirs, ratios))
                print(rows[-1], flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}, "
          f"{args.tokens} tokens × {args.rounds} interleaved rounds")
    print("| artifact | context | A | B | A tok/s | B tok/s | A ÷ B median (range) |\n|---|---:|---|---|---:|---:|---|")
    for name, context, a, b, ours, theirs, ratios in rows:
        print(f"| {name} | {context} | {a} | {b} | {ours:.1f} | {theirs:.1f} | "
              f"{statistics.median(ratios):.3f} ({min(ratios):.2f}–{max(ratios):.2f}) |")


if __name__ == "__main__":
    main()
