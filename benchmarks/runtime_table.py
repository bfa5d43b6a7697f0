"""The runtime table of docs/benchmarks.md: every export format and quantization edgelm offers, on the
real-size presets (random weights, same shapes and therefore the same speed), timed on this machine.

For tinyllama-nope-1.1b, tinyllama-1.1b and tokenformer-150m: GGUF Q4_K_M and Q8_0 (tokenformer: the
nearest gguf-py type, Q4_0, and Q8_0, run by edgelm's ggml executor), ONNX int4 and int8. Each
artifact goes through `edgelm bench --json` in its own process: time to first token and peak RSS with a
128-token prompt, decode tok/s after 128…1984 tokens of context, and the raw engine's decode
(llama-cpp-python / onnxruntime-genai) on the same file for the edgelm/raw ratio.

    python benchmarks/runtime_table.py [--work DIR] [--threads 2] [--tokens 32] [--models "TokenFormer 150M" …]

Writes the table into docs/benchmarks.md and the plot of decode tok/s against context to
docs/benchmarks.png. With --models, only those models' rows are measured again; the table's other rows
stay as they were (its header line then names both runs' dates).
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EDGELM, folder_bytes, replace_marked_block, run_measured

DOCS = Path(__file__).resolve().parents[1] / "docs"
PRESETS = {"NoPE 1.1B": "tinyllama-nope-1.1b", "RoPE 1.1B": "tinyllama-1.1b", "TokenFormer 150M": "tokenformer-150m"}
FORMATS = [("gguf", "int4", ".gguf"), ("gguf", "int8", ".gguf"), ("onnx", "int4", ""), ("onnx", "int8", "")]
CONTEXTS = (128, 512, 1024, 1984)  # + warm-up and 32 timed steps stays inside the presets' 2048 positions


def bench(artifact: Path, prompt_tokens: int, new_tokens: int, threads: int, compare: bool = False) -> dict:
    command = [*EDGELM, "bench", artifact, "--prompt-tokens", prompt_tokens, "--new-tokens", new_tokens,
               "--threads", threads, "--json", *(["--compare"] if compare else [])]
    return json.loads(subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True).stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (needs ~15 GB)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per context")
    parser.add_argument("--models", nargs="+", choices=list(PRESETS), default=list(PRESETS), help="the rows to measure again")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        for name, preset in ((n, PRESETS[n]) for n in args.models):
            model = Path(tmp) / preset
            run_measured([*EDGELM, "init", preset, model])
            for fmt, quant, suffix in FORMATS:
                artifact = Path(tmp) / f"{preset}-{quant}{suffix}"
                run_measured([*EDGELM, "export", model, "--format", fmt, "--quant", quant, "--out", artifact])  # cost: export_cost.py
                first = bench(artifact, CONTEXTS[0], args.tokens, args.threads)
                # the raw engine in a run of its own: loading it too would count in the first run's peak RSS
                raw = bench(artifact, CONTEXTS[0], args.tokens, args.threads, compare=True)
                decode = {CONTEXTS[0]: first["decode_tok_s"]}
                decode.update({c: bench(artifact, c, args.tokens, args.threads)["decode_tok_s"] for c in CONTEXTS[1:]})
                rows.append({"model": name, "format": fmt.upper(), "quant": quant, "engine": first["engine"],
                             "bytes": folder_bytes(artifact),
                             "ttft": first["time_to_first_token_s"], "rss": first["peak_rss_bytes"], "decode": decode,
                             "roofline": first["roofline_fraction"], "raw": raw.get("edgelm_over_raw"), "raw_engine": raw.get("raw_engine")})
                print(rows[-1], flush=True)
                shutil.rmtree(artifact) if artifact.is_dir() else artifact.unlink()  # keep the scratch folder small
    write_report(rows, args)


def write_report(rows: list[dict], args) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    machine = f"{platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}"
    measured = {}
    for r in rows:
        raw = f"{r['raw']:.2f} ({r['raw_engine']})" if r["raw"] else "— (no raw engine)"
        measured[(r["model"], r["format"], r["quant"])] = (
            f"| {r['model']} | {r['format']} | {r['quant']} | {r['engine']} | {r['bytes'] / 1e9:.2f} | "
            f"{r['ttft']:.2f} | {r['rss'] / 1e9:.2f} | "
            + " | ".join(f"{r['decode'][c]:.1f}" for c in CONTEXTS) + f" | {r['roofline']:.0%} | {raw} |")
    kept = [] if set(args.models) == set(PRESETS) else _table_rows(DOCS / "benchmarks.md")
    table = {_row_key(line): line for line in kept} | measured  # a measured row replaces its old one in place
    runs = f"{', '.join(args.models)}: {machine}" if kept else machine
    lines = [
        f"<!-- table: written by benchmarks/runtime_table.py --threads {args.threads} --tokens {args.tokens}; {runs} -->",
        "| model | format | quant | engine | size GB | TTFT 128 tok s | peak RSS GB | "
        + " | ".join(f"decode @{c}" for c in CONTEXTS) + " | roofline | edgelm / raw engine |",
        "|---|---|---|---|---:|---:|---:|" + "---:|" * len(CONTEXTS) + "---:|---|",
        *table.values(),
    ]
    replace_marked_block(DOCS / "benchmarks.md", "\n".join(lines) + "\n<!-- /table -->")
    figure, axis = plt.subplots(figsize=(8, 5))
    for line in table.values():
        cells = [c.strip() for c in line.strip("|").split("|")]
        style = "-" if cells[1] == "GGUF" else "--"
        axis.plot(CONTEXTS, [float(c) for c in cells[7:7 + len(CONTEXTS)]], style, marker="o", label=" ".join(cells[:3]))
    axis.set_xscale("log", base=2)
    axis.set_xlabel("context (tokens already in the KV cache)")
    axis.set_ylabel("decode tok/s")
    axis.set_title(f"edgelm decode speed ({machine})")
    axis.legend(fontsize=7, ncol=2)
    axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(DOCS / "benchmarks.png", dpi=120)


def _table_rows(doc: Path) -> list[str]:
    """The data rows of the table now in the document."""
    text = doc.read_text()
    block = text[text.index("<!-- table:"):text.index("<!-- /table -->")]
    return [line for line in block.splitlines()[3:] if line.startswith("| ")]


def _row_key(line: str) -> tuple[str, str, str]:
    model, fmt, quant = (c.strip() for c in line.strip("|").split("|")[:3])
    return model, fmt, quant


if __name__ == "__main__":
    main()
