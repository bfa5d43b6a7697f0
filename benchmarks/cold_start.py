"""Cold start as a person feels it: `edgelm generate ARTIFACT` from a fresh process to its last token,
against the raw engine's own few-line script doing the same (the same prompt and new tokens, greedy, the
same context and threads) — llama-cpp-python's `Llama(...)(...)` for a GGUF, onnxruntime-genai's
generator for an ONNX folder. Wall time and peak RSS of each whole process, the median of --runs runs
after one untimed run (so the file is in the page cache for both).

    python benchmarks/cold_start.py ARTIFACT [ARTIFACT …] [--tokens 32] [--threads 2] [--runs 3]

Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EDGELM, run_measured  # noqa: E402

PROMPT = "It is a truth universally acknowledged, that a single man in possession of a good fortune"

LLAMA_CPP = """
import sys
from llama_cpp import Llama
path, prompt, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
llm = Llama(model_path=path, n_ctx=0, n_threads=threads, verbose=False)  # n_ctx 0: the file's context, as edgelm opens it
print(llm(prompt, max_tokens=tokens, temperature=0.0)["choices"][0]["text"])
"""

GENAI = """
import json, sys
import onnxruntime_genai as og
path, prompt, tokens, threads = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
config = og.Config(path)
config.overlay(json.dumps({"model": {"decoder": {"session_options": {"intra_op_num_threads": threads}}}}))
model = og.Model(config)
tokenizer = og.Tokenizer(model)
ids = tokenizer.encode(prompt)
params = og.GeneratorParams(model)
params.set_search_options(max_length=len(ids) + tokens, do_sample=False)
generator = og.Generator(model, params)
generator.append_tokens(ids)
while not generator.is_done():
    generator.generate_next_token()
print(tokenizer.decode(generator.get_sequence(0)[len(ids):]))
"""


def measured(command: list, runs: int) -> tuple[float, float]:
    run_measured(command)  # untimed: the file into the page cache
    samples = [run_measured(command) for _ in range(runs)]
    return statistics.median(s["seconds"] for s in samples), statistics.median(s["peak_rss"] for s in samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    print("| artifact | edgelm generate s | raw engine's script s | wall ratio | edgelm peak RSS MB | raw peak RSS MB | RSS ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for artifact in args.artifacts:
        raw_script = LLAMA_CPP if artifact.is_file() else GENAI
        ours = measured([*EDGELM, "generate", artifact, "--prompt", PROMPT, "--max-new-tokens", args.tokens, "--threads", args.threads],
                        args.runs)
        theirs = measured([sys.executable, "-c", raw_script, artifact, PROMPT, args.tokens, args.threads], args.runs)
        print(f"| {artifact.name} | {ours[0]:.2f} | {theirs[0]:.2f} | {ours[0] / theirs[0]:.2f} | {ours[1] / 1e6:.0f} | "
              f"{theirs[1] / 1e6:.0f} | {ours[1] / theirs[1]:.2f} |", flush=True)


if __name__ == "__main__":
    main()
