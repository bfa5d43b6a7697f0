"""What a saved system prompt and the NoPE context shift cost and give.

    python benchmarks/prompt_cache.py ttft ARTIFACT [--system-words 300] [--rounds 3] [--threads 2]
    python benchmarks/prompt_cache.py shift ARTIFACT [--context 512] [--turns 24] [--threads 2]

ttft: time to the first token of the first turn, with a long system prompt, without a prompt cache (the
whole prompt prefilled) and with one (`chat --prompt-cache`: the file's fingerprint checked, the state
loaded, the turn's own tokens prefilled); the two interleaved round by round on one opened backend.

shift: a greedy chat that fills the context, run twice in lockstep: one backend shifts its cache at
each drop (a NoPE model: `--context-shift`), one evaluates what moved again (prefix reuse only, exact).
At the drop turns: the time of that turn's prefill in each. At every turn from the first drop on: the
shifted backend's next-token distributions (the prompt's last position and each reply token, the
reply teacher-forced from the exact run) against a fresh prefill's: KL(fresh || shifted) and top-1
agreement.
Prints markdown tables; timings are for the machine and its load at the time.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from edgelm.chat import Conversation
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.prompt_cache import PromptCache

TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "persuasion.txt"
USER = "Good morning. What do you make of Anne Elliot?"


def words(start: int, count: int) -> str:
    return " ".join(TEXT.read_text(encoding="utf-8").split()[start:start + count])


def ttft(args) -> None:
    artifact = open_artifact(args.artifact, LoadOptions(context_length=args.context, threads=args.threads))
    backend = artifact.backend
    system = f"You are a literary assistant. Keep this passage in mind: {words(1000, args.system_words)}"
    conversation = Conversation(artifact.tokenizer, args.context, 16, system)
    preamble = conversation.preamble_ids()
    ids, _ = conversation.prompt_ids(USER)
    with tempfile.TemporaryDirectory() as tmp:
        file = Path(tmp) / "system.cache"
        backend.prefill(preamble)
        PromptCache(file, artifact.path, backend).save()
        size = file.stat().st_size
        times = {"prefill": [], "cache": [], "load": []}
        for _ in range(args.rounds):
            backend.reset()
            start = time.perf_counter()
            backend.prefill(ids)
            times["prefill"].append(time.perf_counter() - start)
            backend.reset()
            start = time.perf_counter()
            note = PromptCache(file, artifact.path, backend).load(preamble)  # a new object: the fingerprint is read again
            assert note.startswith("prompt cache: loaded"), note
            times["load"].append(time.perf_counter() - start)
            backend.prefill(ids)
            times["cache"].append(time.perf_counter() - start)
    plain, cached = statistics.median(times["prefill"]), statistics.median(times["cache"])
    print(f"\n{args.artifact.name} ({artifact.engine}), {args.threads} threads, system prompt {len(preamble)} tokens, "
          f"first turn {len(ids)} tokens, cache file {size / 1e6:.1f} MB, median of {args.rounds} interleaved rounds")
    print("| first turn | time to first token | ratio |\n|---|---:|---:|")
    print(f"| prefilled | {plain:.3f} s | 1 |\n| --prompt-cache | {cached:.3f} s | {cached / plain:.2f} |")
    print(f"\nof which loading the file (fingerprint, read, checks, state into the engine): {statistics.median(times['load']):.3f} s")
    artifact.close()


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def shift(args) -> None:
    options = LoadOptions(context_length=args.context, threads=args.threads)
    shifting, exact, fresh = (open_artifact(args.artifact, options) for _ in range(3))
    if not shifting.backend.position_free:
        raise SystemExit(f"{args.artifact} has position encoding: its cache is never shifted")
    tokenizer = exact.tokenizer
    conversation = Conversation(tokenizer, args.context, args.new_tokens, "You are Miss Austen, and you answer in her manner.")
    timings, kl, agree, drops = {"shift": [], "re-evaluate": []}, [], [], 0
    for turn in range(args.turns):
        ids, dropped = conversation.prompt_ids(f"{words(3000 + 37 * turn, 30)}?")
        drops += dropped
        shifting.backend.context_shift = bool(dropped)  # as chat sets it: past what this turn dropped only
        results = {}
        for name, artifact in (("shift", shifting), ("re-evaluate", exact)):
            start = time.perf_counter()
            results[name] = artifact.backend.prefill(ids)
            if dropped:
                timings[name].append((time.perf_counter() - start, artifact.backend.evaluated))
        reply = []
        logits = results["re-evaluate"]
        for _ in range(args.new_tokens):  # the exact run's greedy reply, fed to both
            reply.append(int(np.argmax(logits)))
            logits = exact.backend.decode(reply[-1])
        if drops:  # from the first drop on, the shifted cache against a fresh prefill of prompt + reply
            fresh.backend.reset()
            reference = fresh.backend.forward(ids + reply[:-1])[len(ids) - 1:] if fresh.backend.all_logits else None
            shifted = np.stack([results["shift"]] + [shifting.backend.decode(t) for t in reply[:-1]])
            if reference is not None:
                p, q = log_softmax(reference), log_softmax(shifted)
                kl += list((np.exp(p) * (p - q)).sum(-1))
                agree += list(reference.argmax(-1) == shifted.argmax(-1))
            shifting.backend.decode(reply[-1])
        else:
            for t in reply:
                shifting.backend.decode(t)
        conversation.add_reply(tokenizer.decode(reply).strip())
    print(f"\n{args.artifact} ({shifting.engine}), context {args.context}, {args.turns} turns of {args.new_tokens} tokens, "
          f"{drops} exchanges dropped, {args.threads} threads")
    print("| at a drop | prefill time (median) | ratio |\n|---|---:|---:|")
    base = statistics.median(t for t, _ in timings["re-evaluate"]) if timings["re-evaluate"] else float("nan")
    for name, rows in timings.items():
        median = statistics.median(t for t, _ in rows) if rows else float("nan")
        print(f"| {name} | {median * 1000:.1f} ms | {median / base:.2f} |")
    if kl:
        print(f"\nshifted vs fresh prefill over {len(kl)} next-token distributions (turns from the first drop on): "
              f"KL mean {np.mean(kl):.4f} nats, median {np.median(kl):.4f}, max {np.max(kl):.3f}; top-1 agreement {np.mean(agree):.1%}")
    for artifact in (shifting, exact, fresh):
        artifact.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("what", choices=["ttft", "shift"])
    parser.add_argument("artifact", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--context", type=int, default=None)
    parser.add_argument("--system-words", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--turns", type=int, default=24)
    parser.add_argument("--new-tokens", type=int, default=24)
    args = parser.parse_args()
    if args.what == "ttft":
        args.context = args.context or 2048
        ttft(args)
    else:
        args.context = args.context or 512
        shift(args)


if __name__ == "__main__":
    main()
