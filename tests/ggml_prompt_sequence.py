"""One ggml-executor backend over prompts of changing length, each after a reset and followed by a few
greedy decode steps, as chat turns and repeated `generate` calls use it; every logit row is saved.

Run as a separate process: tests/test_ggml_memory.py runs it under glibc's heap checker (a corrupted heap
kills this process, not pytest) and compares the rows with a freshly opened backend's; `make memcheck`
runs it under valgrind.

    python tests/ggml_prompt_sequence.py MODEL.gguf OUT.npz CONTEXT DECODE_STEPS LENGTH [LENGTH …]

Prompts alternate between forward() (every row: the graph of a prefill returning all logits) and
prefill() (the last row only: the graph `generate` runs); the token ids are random, seeded."""

import sys

import numpy as np

from edgelm.formats import LoadOptions, open_artifact


def main(path: str, out: str, context: int, decode_steps: int, lengths: list[int]) -> None:
    backend = open_artifact(path, LoadOptions(context_length=context, threads=2)).backend
    rng, saved = np.random.default_rng(0), {}
    for turn, length in enumerate(lengths):
        ids = rng.integers(0, backend.arch.vocab_size, length).tolist()
        backend.reset()
        rows = [backend.forward(ids) if turn % 2 == 0 else backend.prefill(ids)[None]]
        for _ in range(decode_steps):
            rows.append(backend.forward([int(rows[-1][-1].argmax())]))
        assert backend.position == length + decode_steps
        saved[f"ids{turn}"], saved[f"logits{turn}"] = np.asarray(ids), np.concatenate(rows)
    backend.close()
    np.savez(out, **saved)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), [int(n) for n in sys.argv[5:]])
