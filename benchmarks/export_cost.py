"""What `edgelm export` costs on a real-size preset (random weights, same shapes): wall time, peak RSS
and output size for every format and quantization, each export in its own process.

    python benchmarks/export_cost.py [--preset tinyllama-1.1b] [--work DIR]

Peak RSS is given twice: the largest single process (the kernel's ru_maxrss over the export and the
helper it waits for — a GGUF export of an arch llama.cpp knows runs llama.cpp's quantizer in a process
of its own) and the largest sum of the live processes, sampled every 0.1 s. Writes the table into
docs/benchmarks.md between `<!-- export -->` markers and prints it.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EDGELM, folder_bytes, replace_marked_block, run_measured  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"
EXPORTS = [("gguf", "f16", ".gguf"), ("gguf", "int8", ".gguf"), ("gguf", "int4", ".gguf"),
           ("onnx", "f16", ""), ("onnx", "int8", ""), ("onnx", "int4", "")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tinyllama-1.1b")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (1.1B: needs ~9 GB)")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        model = Path(tmp) / args.preset
        run_measured([*EDGELM, "init", args.preset, model])
        source = folder_bytes(model)
        for fmt, quant, suffix in EXPORTS:
            artifact = Path(tmp) / f"{quant}{suffix}"
            measured = run_measured([*EDGELM, "export", model, "--format", fmt, "--quant", quant, "--out", artifact])
            rows.append(f"| {fmt.upper()} | {quant} | {measured['seconds']:.0f} | {measured['peak_rss'] / 1e9:.2f} | "
                        f"{measured['peak_rss_tree'] / 1e9:.2f} | {folder_bytes(artifact) / 1e9:.2f} |")
            print(rows[-1], flush=True)
            shutil.rmtree(artifact) if artifact.is_dir() else artifact.unlink()
    machine = f"{platform.processor() or platform.machine()}, {time.strftime('%Y-%m-%d')}"
    block = "\n".join([
        f"<!-- export: written by benchmarks/export_cost.py --preset {args.preset}; {machine}; "
        f"checkpoint {source / 1e9:.2f} GB -->",
        "| format | quant | wall s | peak RSS GB, largest process | peak RSS GB, processes together | output GB |",
        "|---|---|---:|---:|---:|---:|",
        *rows,
        "<!-- /export -->",
    ])
    replace_marked_block(DOCS / "benchmarks.md", block, "export")
    print(block)


if __name__ == "__main__":
    main()
