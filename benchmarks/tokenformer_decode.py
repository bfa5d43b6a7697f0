"""Decode tok/s of artifacts of one model, interleaved round by round in one process on the same threads
(a loaded machine moves every engine alike within a round), and, for GGUFs edgelm's ggml executor runs,
the ops of one decode step's graph (compute ops, and the views/reshapes/permutes that cost no kernel).

    python benchmarks/tokenformer_decode.py MODEL.onnx-folder MODEL.gguf [...] --rounds 5 --threads 2

`edgelm init tokenformer-150m tf150` makes the TokenFormer-150M-shaped random model; export it with
`--quant int4` to both formats. Ratios are each artifact's decode tok/s over the first's, per round.
"""

from __future__ import annotations

import argparse
import statistics
from collections import Counter
from pathlib import Path

from edgelm.benchmark import time_generation
from edgelm.formats import LoadOptions, open_artifact
from edgelm.ggml_python import ggml

NO_KERNEL = {"NONE", "VIEW", "RESHAPE", "PERMUTE", "TRANSPOSE"}


def graph_ops(backend) -> Counter | None:
    """Op name → count over the decode graph edgelm's ggml executor built (None for other engines)."""
    graphs = getattr(backend, "decode_graphs", None)
    if not graphs:
        return None
    graph = next(iter(graphs.values())).graph
    return Counter(ggml.ggml_op_name(ggml.ggml_graph_node(graph, i).contents.op).decode()
                   for i in range(ggml.ggml_graph_n_nodes(graph)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("artifacts", nargs="+", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=32)
    args = parser.parse_args()
    artifacts = [open_artifact(p, LoadOptions(threads=args.threads, context_length=512)) for p in args.artifacts]
    prompt = list(range(100, 100 + args.prompt_tokens))
    rates = {p: [] for p in args.artifacts}
    for _ in range(args.rounds):
        for path, artifact in zip(args.artifacts, artifacts):
            rates[path].append(time_generation(artifact.backend, prompt, args.new_tokens)[1])
    first = args.artifacts[0]
    print(f"{'artifact':<40} {'engine':<28} {'decode tok/s (median)':>22} {'ratio to first (median of rounds)':>34}")
    for path, artifact in zip(args.artifacts, artifacts):
        ratios = [a / b for a, b in zip(rates[path], rates[first])]
        print(f"{path!s:<40} {artifact.engine[:28]:<28} {statistics.median(rates[path]):>22.1f} {statistics.median(ratios):>34.3f}"
              f"   rounds: {' '.join(f'{r:.2f}' for r in ratios)}")
    for path, artifact in zip(args.artifacts, artifacts):
        ops = graph_ops(artifact.backend)
        if ops:
            kernels = sum(n for op, n in ops.items() if op not in NO_KERNEL)
            print(f"{path}: decode graph {sum(ops.values())} nodes, {kernels} with a kernel: "
                  + ", ".join(f"{op} {n}" for op, n in ops.most_common()))


if __name__ == "__main__":
    main()
