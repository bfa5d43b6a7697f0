"""HeadScale on a NoPE model trained three times longer than the shipped tiny-nope: does a model that
degrades more past its training length leave more for per-head temperatures to repair?

    python examples/train.py tiny-nope --steps 1500 --out build/tiny-nope-1500   # 34 min on 2 cores
    python benchmarks/length_longer_training.py build/tiny-nope-1500

Perplexity on held-out persuasion.txt over the same target tokens at every length (its first 7,168
tokens), as benchmarks/length_generalization.py. Temperatures are calibrated (init 1.0, 100 steps) on
the training novels, which this model has seen about five times, and on persuasion.txt from token 8,192
on, which it has never seen and which shares no token with the scored ones. Prints the table only.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

import torch

from edgelm.calibrate import CalibrationSettings, calibrate, heldout_loss, split_ids
from edgelm.models import open_checkpoint
from edgelm.runtime.torch_backend import TorchBackend
from edgelm.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark
from length_generalization import DATA, TRAIN_TEXT, curve, length_table

UNSEEN_FROM = 8192  # persuasion.txt tokens after the 7,168 the length curves score


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", type=Path)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(args.model)
    held_out = tokenizer.encode((DATA / "persuasion.txt").read_text(encoding="utf-8"))
    texts = {
        "training novels": tokenizer.encode("\n".join((DATA / f"{n}.txt").read_text(encoding="utf-8") for n in TRAIN_TEXT)),
        "unseen persuasion.txt": held_out[UNSEEN_FROM:],
    }
    model = open_checkpoint(args.model).load_model()
    for name, ids in texts.items():  # what memorisation does: the same model on seen and unseen text
        loss = heldout_loss(model, split_ids(ids, 2048, 4)[1])
        print(f"perplexity at 2048 on the last 4 windows of {name}: {math.exp(loss):.2f}", flush=True)
    rows = {"no scaling": curve(TorchBackend(model), held_out)}
    runs = [
        ("uniform λ (grid, λ ≥ 0.7), training novels, 2048", "training novels", CalibrationSettings(2048, uniform=True, min=0.7)),
        ("HeadScale λ ≥ 1.0, training novels, 2048", "training novels", CalibrationSettings(2048, steps=100, init=1.0)),
        ("HeadScale λ ≥ 0.5, training novels, 2048", "training novels", CalibrationSettings(2048, steps=100, init=1.0, min=0.5)),
        ("HeadScale λ ≥ 1.0, unseen text, 2048", "unseen persuasion.txt", CalibrationSettings(2048, steps=100, init=1.0)),
        ("HeadScale λ ≥ 0.5, unseen text, 2048", "unseen persuasion.txt", CalibrationSettings(2048, steps=100, init=1.0, min=0.5)),
        ("HeadScale λ ≥ 0.5, unseen text, 4096", "unseen persuasion.txt", CalibrationSettings(4096, steps=100, init=1.0, min=0.5)),
    ]
    for label, text, settings in runs:
        start = time.time()
        result = calibrate(model, texts[text], settings)
        rows[label] = curve(TorchBackend(model), held_out)
        print(f"{label}: {(time.time() - start) / 60:.1f} min, λ ∈ [{result.table.min():.2f}, {result.table.max():.2f}]", flush=True)
    print(length_table(rows, "temperatures"))


if __name__ == "__main__":
    main()
