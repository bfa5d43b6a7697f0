"""The web bundle's speed in headless Chromium beside onnxruntime on this machine's CPU for the same ONNX
file: time to first token and decode tok/s on the page (onnxruntime-web WASM, served cross-origin
isolated by `edgelm serve`'s server so it runs on every core, and WebGPU where the browser gets an
adapter) against `edgelm bench` (native onnxruntime) with as many threads as the page has cores. Native
runs before and after each page run (interleaved: on a shared machine the load moves between runs), and
the table shows both. Also the screenshot docs/web.png (the page after a WebGPU run on tiny-rope).

    python benchmarks/web_bench.py [--tokens 48]                       # the shipped tiny-rope and tiny-nope
    python benchmarks/web_bench.py --onnx DIR [--onnx DIR …] --tokens 8 --backends wasm   # given ONNX exports

Needs `make web-runtime` and Debian's chromium (what tests/test_web.py needs). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(Path(__file__).parent))
from browser import run_page  # noqa: E402  (the test's driver: one way to run the page)
from common import EDGELM  # noqa: E402

PROMPT = "It is a truth universally acknowledged"


def native(folder: Path, prompt_tokens: int, tokens: int, threads: int) -> dict:
    command = [*EDGELM, "bench", folder, "--prompt-tokens", prompt_tokens, "--new-tokens", tokens, "--threads", threads, "--json"]
    return json.loads(subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True).stdout)


def run(command: list) -> None:
    subprocess.run([str(c) for c in command], check=True, capture_output=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--onnx", type=Path, action="append", help="an ONNX export to bundle and time (default: export the shipped tiny models)")
    parser.add_argument("--prompt-tokens", type=int, default=10, help="native runs' prompt length (the page's prompt is 10 TinyLlama tokens)")
    parser.add_argument("--backends", nargs="+", default=["wasm", "webgpu"], choices=["wasm", "webgpu"])
    parser.add_argument("--timeout", type=float, default=1800, help="seconds a page run may take")
    args = parser.parse_args()
    cores = os.cpu_count() or 1  # what navigator.hardwareConcurrency reports to the page
    rows = [f"<!-- web table: benchmarks/web_bench.py --tokens {args.tokens}; {platform.machine()}, {cores} cores, Chromium headless -->",
            ("| model (ONNX) | page backend | threads | page: load s | page: prompt tokens, first token s | page: decode tok/s "
             f"| native ({cores} threads): first token s | native decode tok/s (before / after) | page / native decode |"),
            "|---|---|---|---:|---:|---:|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        folders = args.onnx or []
        if not folders:
            for name in ("tiny-rope", "tiny-nope"):
                folders.append(Path(tmp) / f"{name}-onnx")
                run([*EDGELM, "export", ROOT / "examples" / "models" / name, "--format", "onnx", "--quant", "int4", "--out", folders[-1]])
        for index, onnx in enumerate(folders):
            web = Path(tmp) / f"web{index}"
            run([*EDGELM, "bundle", onnx, "--target", "web", "--out", web])
            quantization = json.loads((web / "edgelm.json").read_text()).get("quantization", "?")
            label = f"{onnx.name} ({quantization})"
            for backend in args.backends:
                before = native(onnx, args.prompt_tokens, args.tokens, cores)
                shot = ROOT / "docs" / "web.png" if onnx.name == "tiny-rope-onnx" and backend == "webgpu" else None
                page = run_page(web, backend, PROMPT, args.tokens, screenshot=shot, timeout_s=args.timeout)
                after = native(onnx, args.prompt_tokens, args.tokens, cores)
                if "error" in page:
                    rows.append(f"| {label} | {backend} | | error: {page['error']} | | | | | |")
                    continue
                ran = page["backend"] + ("" if page["backend"] == backend else f" (asked {backend})")
                threads = page["threads"].split(":")[0] if page["threads"] else page["reason"]
                decode = (before["decode_tok_s"] + after["decode_tok_s"]) / 2
                rows.append(f"| {label} | {ran} | {threads} | {page['load_ms'] / 1000:.1f} | {len(page['prompt_ids'])}, {page['first_token_ms'] / 1000:.1f} | "
                            f"{page['tok_s']:.3g} | {after['time_to_first_token_s']:.2f} | {before['decode_tok_s']:.3g} / "
                            f"{after['decode_tok_s']:.3g} | {page['tok_s'] / decode:.3g} |")
                print(rows[-1], flush=True)
    print("\n".join(rows + ["<!-- /web table -->"]))


if __name__ == "__main__":
    main()
