"""GGUF export and decode on the real-size tinyllama-nope-1.1b preset (random weights, same shapes):
export wall time and peak RSS for f16 and Q4_K_M, then decode tok/s of the Q4_K_M file through edgelm's
runtime and through raw llama-cpp-python on the same file.

    python benchmarks/gguf_1b.py [--work DIR] [--tokens 64] [--threads 2]

Prints a table; numbers are for the machine it runs on (targets: peak RSS ≤ 2.5 GB, ratio ≥ 0.97).
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EDGELM, prompt_ids, run_measured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (needs ~9 GB)")
    parser.add_argument("--tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        model = work / "model"
        run_measured([*EDGELM, "init", "tinyllama-nope-1.1b", model])
        rows = {}
        for quant in ("f16", "int4"):
            out = work / f"{quant}.gguf"
            rows[quant] = run_measured([*EDGELM, "export", model, "--format", "gguf", "--quant", quant, "--out", out])
            rows[quant]["bytes"] = out.stat().st_size
            print(quant, rows[quant], flush=True)
        from edgelm.benchmark import llama_cpp_generation, time_generation
        from edgelm.runtime.llama_cpp_backend import LlamaCppBackend

        prompt = prompt_ids(32)
        _, ours = time_generation(LlamaCppBackend(work / "int4.gguf", 512, args.threads), prompt, args.tokens)
        _, raw = llama_cpp_generation(work / "int4.gguf", prompt, args.tokens, args.threads)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}")
    print("| export | wall s | peak RSS GB | file GB |\n|---|---:|---:|---:|")
    for quant, row in rows.items():
        print(f"| {quant} | {row['seconds']:.0f} | {row['peak_rss'] / 1e9:.2f} | {row['bytes'] / 1e9:.2f} |")
    print(f"\ndecode Q4_K_M, {args.tokens} tokens: edgelm {ours:.2f} tok/s, raw llama-cpp-python {raw:.2f} tok/s, ratio {ours / raw:.3f}")


if __name__ == "__main__":
    main()
