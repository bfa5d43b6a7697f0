"""Perplexity against context length for the shipped tiny-nope (trained at 256 tokens): no scaling,
a uniform λ, HeadScale at the paper's clamp (λ ≥ 1) and relaxed (λ ≥ 0.5), tiny-rope for contrast;
then the HeadScale model exported to GGUF and ONNX and run by stock llama.cpp and onnxruntime at every
length.

    python benchmarks/length_generalization.py [--target-length 2048] [--steps 200]

Calibration reads the training novels only; every perplexity is on held-out persuasion.txt, over the
same target tokens at every length (edgelm.evaluate.fixed_target_perplexity). Writes the table
for that target length into docs/length-generalization.md and the plot to
docs/length-generalization-{target length}.png.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from edgelm.calibrate import CalibrationSettings, calibrate
from edgelm.evaluate import fixed_target_perplexity
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.models import open_checkpoint
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.torch_backend import TorchBackend
from edgelm.tokenizer import load_tokenizer

sys.path.insert(0, str(Path(__file__).parent))  # the sibling module common.py
from common import replace_marked_block

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "examples" / "models"
DATA = REPO / "examples" / "data"
DOCS = REPO / "docs"
LENGTHS = (256, 512, 1024, 2048, 4096)
TRAIN_TEXT = ["emma", "mansfield_park", "northanger_abbey", "pride_and_prejudice", "sense_and_sensibility"]


def curve(backend, ids) -> dict[int, float]:
    return {length: round(fixed_target_perplexity(backend, ids, length).perplexity, 2) for length in LENGTHS}


def length_table(rows: dict[str, dict[int, float]], first_column: str) -> str:
    """Markdown: one row of perplexities per curve, one column per length."""
    header = f"| {first_column} | " + " | ".join(str(n) for n in LENGTHS) + " |\n|---|" + "---:|" * len(LENGTHS) + "\n"
    return header + "".join(f"| {name} | " + " | ".join(f"{v[n]:.2f}" for n in LENGTHS) + " |\n" for name, v in rows.items())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target-length", type=int, default=2048)
    parser.add_argument("--steps", type=int, default=200)
    args = parser.parse_args()
    torch.set_num_threads(2)
    tokenizer = load_tokenizer(MODELS / "tiny-nope")
    held_out = tokenizer.encode((DATA / "persuasion.txt").read_text(encoding="utf-8"))
    training = tokenizer.encode("\n".join((DATA / f"{n}.txt").read_text(encoding="utf-8") for n in TRAIN_TEXT))

    rows, tables, timings = {}, {}, {}
    nope = open_checkpoint(MODELS / "tiny-nope")
    model = nope.load_model()
    rows["tiny-nope, no scaling"] = curve(TorchBackend(model), held_out)
    for label, settings in [
        ("uniform λ (grid, λ ≥ 0.7)", CalibrationSettings(args.target_length, uniform=True, min=0.7)),
        ("HeadScale, λ ≥ 1.0 (paper)", CalibrationSettings(args.target_length, steps=args.steps, min=1.0)),
        ("HeadScale, λ ≥ 0.5 (relaxed)", CalibrationSettings(args.target_length, steps=args.steps, min=0.5, init=1.0)),
    ]:
        start = time.time()
        result = calibrate(model, training, settings)
        timings[label] = round((time.time() - start) / 60, 1)
        tables[label] = result.table.clone()
        rows[f"tiny-nope, {label}"] = curve(TorchBackend(model), held_out)
        print(label, json.dumps(rows[f"tiny-nope, {label}"]), f"λ ∈ [{result.table.min():.3f}, {result.table.max():.3f}]", flush=True)
    rows["tiny-rope, no scaling"] = curve(TorchBackend(open_checkpoint(MODELS / "tiny-rope").load_model()), held_out)

    # the best HeadScale table, baked into a GGUF and run by stock llama.cpp (granite arch)
    best = min((k for k in tables if k.startswith("HeadScale")), key=lambda k: rows[f"tiny-nope, {k}"][4096])
    with tempfile.TemporaryDirectory() as tmp:
        temps = Path(tmp) / "temps.json"
        temps.write_text(json.dumps({"layers": tables[best].tolist()}))
        report = export_gguf(open_checkpoint(MODELS / "tiny-nope", head_temperatures=temps), Path(tmp) / "nope.gguf", "f32")
        artifact = open_artifact(report.path, LoadOptions(context_length=max(LENGTHS), f32_kv_cache=True, all_logits=True))
        rows[f"tiny-nope, {best}: GGUF f32 in llama.cpp"] = curve(artifact.backend, held_out)
        del artifact
        onnx = export_onnx(open_checkpoint(MODELS / "tiny-nope", head_temperatures=temps), Path(tmp) / "onnx", "f32")
        rows[f"tiny-nope, {best}: ONNX f32 in onnxruntime"] = curve(open_artifact(onnx.path).backend, held_out)

    write_report(rows, timings, args)


def write_report(rows: dict[str, dict[int, float]], timings: dict[str, float], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    table = length_table(rows, "model, temperatures")
    marker = f"table-{args.target_length}"
    block = (f"<!-- {marker}: written by benchmarks/length_generalization.py --target-length {args.target_length} --steps {args.steps} -->\n"
             + table + "\nCalibration minutes (2 CPU threads): " + ", ".join(f"{k}: {v}" for k, v in timings.items())
             + f"\n\n![perplexity against context length, calibrated at {args.target_length}](length-generalization-{args.target_length}.png)\n"
             + f"<!-- /{marker} -->")
    replace_marked_block(DOCS / "length-generalization.md", block, marker)
    figure, axis = plt.subplots(figsize=(7, 4.5))
    for name, values in rows.items():
        axis.plot(LENGTHS, [values[n] for n in LENGTHS], marker="o", label=name, linestyle=":" if "ONNX" in name else "--" if "GGUF" in name else "-")
    axis.set_xscale("log", base=2)
    axis.set_xticks(LENGTHS, [str(n) for n in LENGTHS])
    axis.set_xlabel("context length (tokens); training length 256")
    axis.set_ylabel("perplexity, held-out persuasion.txt")
    axis.legend(fontsize=7)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(DOCS / f"length-generalization-{args.target_length}.png", dpi=120)
    print(table)


if __name__ == "__main__":
    main()
