"""Prompt-lookup decoding against plain decoding, per artifact: decode tok/s of a chat turn with and without
drafting, on an input-grounded turn (the user gives a passage and asks for it back: the reply can quote
it) and an ordinary one (a question), through edgelm's chat loop (Conversation + generate_from_ids, as
`edgelm chat` runs it), greedy, the two ways interleaved in one process, `--rounds` times. Decode tok/s
counts from the first token to the last (the prompt's prefill is not in it); the ratio is the median of
the rounds' ratios. Also: drafted tokens taken (acceptance), tokens per model call, and whether the
tokens were the same both ways (they must be).

    python benchmarks/lookup.py ARTIFACT [ARTIFACT ...] [--draft 8] [--lookup-ngram 3] [--new-tokens 64]
        [--threads 1] [--rounds 3]

ARTIFACT: a model folder (the torch reference), a .gguf file (llama.cpp, or edgelm's ggml executor for an
arch llama.cpp lacks) or an ONNX folder. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

from edgelm.chat import Conversation
from edgelm.formats import LoadOptions, open_artifact
from edgelm.numbers import LOOKUP_NGRAM
from edgelm.runtime.generate import generate_from_ids
from edgelm.runtime.sampling import SamplingOptions

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "persuasion.txt"  # held out from the shipped models' training
SYSTEM = "You are a helpful assistant."


def turns() -> dict[str, str]:
    words = TEXT.read_text(encoding="utf-8").split()
    return {"input-grounded": f"Repeat this passage word for word:\n\n{' '.join(words[3000:3090])}",
            "ordinary": "What do you make of Sir Walter Elliot, and why does Anne never marry Mr Elliot?"}


def decode(artifact, ids: list[int], new_tokens: int, draft: int, ngram: int) -> dict:
    """One turn from a cache holding nothing of it (a fresh prefill each time, as each way sees it)."""
    backend = artifact.backend
    backend.reset()
    drafted, accepted, evaluated = backend.drafted, backend.accepted, backend.evaluated
    tokens, times = [], []
    start = time.perf_counter()
    for piece in generate_from_ids(backend, artifact.tokenizer, ids, new_tokens, SamplingOptions(), (), draft, ngram):
        if piece.token is not None:
            tokens.append(piece.token)
            times.append(time.perf_counter())
    rate = (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 else 0.0
    steps = backend.evaluated - evaluated - len(ids)  # decode calls' tokens: one a step, plus the drafts
    calls = steps - (backend.drafted - drafted)
    return {"tokens": tokens, "rate": rate, "drafted": backend.drafted - drafted, "accepted": backend.accepted - accepted,
            "calls": calls, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("artifacts", type=Path, nargs="+")
    parser.add_argument("--draft", type=int, default=8, help="tokens drafted a step (llama.cpp's --draft)")
    parser.add_argument("--lookup-ngram", type=int, default=LOOKUP_NGRAM)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)  # the torch reference's threads, as the engines get theirs
    print(f"greedy, {args.new_tokens} new tokens, --draft {args.draft} --lookup-ngram {args.lookup_ngram}, {args.threads} threads, "
          f"median of {args.rounds} interleaved rounds")
    print("| artifact | engine | turn | plain tok/s | lookup tok/s | ratio | drafts taken | tokens per call | same tokens |")
    print("|---|---|---|---:|---:|---:|---:|---:|---|")
    for path in args.artifacts:
        artifact = open_artifact(path, LoadOptions(context_length=1024, threads=args.threads))
        for turn, user in turns().items():
            conversation = Conversation(artifact.tokenizer, 1024, args.new_tokens, SYSTEM)
            ids, _ = conversation.prompt_ids(user)
            decode(artifact, ids, 4, 0, args.lookup_ngram)  # warm-up: first calls fault pages and build graphs
            runs = [[decode(artifact, ids, args.new_tokens, draft, args.lookup_ngram) for draft in (0, args.draft)]
                    for _ in range(args.rounds)]
            plain, lookup = [r[0] for r in runs], [r[1] for r in runs]
            drafted, accepted = sum(r["drafted"] for r in lookup), sum(r["accepted"] for r in lookup)
            produced, calls = sum(len(r["tokens"]) for r in lookup), sum(r["calls"] for r in lookup)
            same = all(p["tokens"] == q["tokens"] for p, q in zip(plain, lookup))
            print(f"| {path.name} | {artifact.engine} | {turn} ({len(ids)} prompt tokens) | {statistics.median(r['rate'] for r in plain):.1f} | "
                  f"{statistics.median(r['rate'] for r in lookup):.1f} | {statistics.median(q['rate'] / p['rate'] for p, q in zip(plain, lookup)):.2f} | "
                  f"{accepted}/{drafted} ({accepted / max(drafted, 1):.0%}) | {(produced - len(lookup)) / max(calls, 1):.2f} | {'yes' if same else 'NO'} |", flush=True)
        artifact.close()


if __name__ == "__main__":
    main()
