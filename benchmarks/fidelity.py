"""Fidelity of int4 (and the Q8_0 anchor) against the fp32 torch reference, per shipped model.

    python benchmarks/fidelity.py [--models tiny-nope,...] [--tokens 256] [--json out.json]

For each model and method: export, then `edgelm.parity.compare` (the numbers `edgelm parity` prints)
on the first TOKENS+1 tokens of the held-out persuasion.txt: file size, mean KL(reference ‖ artifact),
ΔPPL, top-1 agreement. Calibrated methods take their statistics from the built-in calibration text
(16 chunks × 256 tokens of the five training novels), never from persuasion.txt.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import folder_bytes  # noqa: E402
from edgelm.errors import UserError  # noqa: E402
from edgelm.formats import LoadOptions, open_artifact  # noqa: E402
from edgelm.models import open_checkpoint  # noqa: E402
from edgelm.parity import compare  # noqa: E402

MODELS = ("tiny-nope", "tiny-rope", "tiny-ngen4", "tiny-tokenformer")
HELD_OUT = ROOT / "examples" / "data" / "persuasion.txt"

# method name → (format, export keyword arguments); the anchors first
METHODS = {
    "Q8_0": ("gguf", {"quant": "int8"}),
    "Q4_K_M stock": ("gguf", {"quant": "int4", "calibrated": False}),
    "Q4_K_M imatrix": ("gguf", {"quant": "int4", "calibrated": True}),
    # size-budgeted mixed precision (quantize/mixed.py), the budget the stock Q4_K_M file's size in this run
    "Q4_K_M-size mixed": ("gguf", {"quant": "int4", "calibrated": False, "max_size_of": "Q4_K_M stock"}),
    "Q4_K_M-size mixed imatrix": ("gguf", {"quant": "int4", "calibrated": True, "max_size_of": "Q4_K_M stock"}),
    "ONNX int4 RTN (stock)": ("onnx", {"quant": "int4", "calibrated": False}),
    "ONNX int4 calibrated": ("onnx", {"quant": "int4", "calibrated": True}),
    # the cheap wins: the LM head at 8 bits; and the fp32 embedding table at int4, which pays for it
    "ONNX int4 + 8-bit LM head": ("onnx", {"quant": "int4", "calibrated": False, "int8_lm_head": True}),
    "ONNX int4 + int4 embedding + 8-bit LM head": ("onnx", {"quant": "int4", "calibrated": False, "int8_lm_head": True,
                                                          "int4_embedding": True}),
}


def export(model_dir: Path, out: Path, fmt: str, quant: str, calibrated: bool | None = None, max_size: int | None = None,
           **onnx_options) -> Path:
    from edgelm.quantize.calibration import DEFAULT_TEXTS

    checkpoint = open_checkpoint(model_dir)
    texts = DEFAULT_TEXTS if calibrated else ()
    if fmt == "gguf":
        from edgelm.export.gguf import export_gguf

        return export_gguf(checkpoint, out, quant, calibration=texts, max_size=max_size).path
    from edgelm.export.onnx import export_onnx

    return export_onnx(checkpoint, out, quant, calibration=texts, **onnx_options).path


def measure(model_dir: Path, artifact: Path, tokens: int) -> dict:
    ref = open_artifact(model_dir, LoadOptions())
    art = open_artifact(artifact, LoadOptions(context_length=tokens + 1, f32_kv_cache=True, all_logits=True))
    ids = ref.tokenizer.encode(HELD_OUT.read_text(encoding="utf-8")[: 20 * tokens])[: tokens + 1]
    report = compare(ref.backend, art.backend, ids)
    return {"bytes": folder_bytes(artifact), "mean_kld": report.mean_kld, "ppl_change": report.perplexity_change,
            "top1": report.top1_agreement, "positions": report.positions}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgelm-fidelity-") as folder:
        for model in args.models.split(","):
            model_dir = ROOT / "examples" / "models" / model
            sizes: dict[str, int] = {}
            for method in args.methods.split(","):
                fmt, options = METHODS[method]
                options = dict(options)
                if "max_size_of" in options:
                    anchor = options.pop("max_size_of")
                    if anchor not in sizes:
                        sizes[anchor] = folder_bytes(export(model_dir, Path(folder) / f"{model}-anchor.gguf", *METHODS[anchor][0:1],
                                                            **METHODS[anchor][1]))
                    options["max_size"] = sizes[anchor]
                out = Path(folder) / f"{model}-{method.replace(' ', '_')}{'.gguf' if fmt == 'gguf' else '-onnx'}"
                try:
                    path = export(model_dir, out, fmt, **options)
                except UserError as exc:  # e.g. --max-size on an arch llama.cpp's quantizer does not know
                    print(f"{model:17} {method:24} not made: {exc}", flush=True)
                    continue
                sizes[method] = folder_bytes(path)
                row = {"model": model, "method": method, "format": fmt} | measure(model_dir, path, args.tokens)
                rows.append(row)
                print(f"{model:17} {method:30} {row['bytes'] / 1e6:6.2f} MB  KLD {row['mean_kld']:.5f}  "
                      f"ΔPPL {100 * row['ppl_change']:+6.2f} %  top-1 {100 * row['top1']:5.1f} %  ({row['positions']} positions)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
