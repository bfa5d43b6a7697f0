"""The web bundle's decode speed in headless Chromium — onnxruntime-web on WASM, and on WebGPU where the
browser gets an adapter — beside onnxruntime on this machine's CPU for the same ONNX file, and the
screenshot docs/web.png (the page after a WebGPU run, WASM where the browser has no adapter).

    python benchmarks/web_bench.py [--tokens 48]

Needs `make web-runtime` and Debian's chromium (what tests/test_web.py needs). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
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


def cpu_decode(folder: Path, tokens: int, threads: int) -> float:
    command = [*EDGELM, "bench", folder, "--prompt-tokens", 8, "--new-tokens", tokens, "--threads", threads, "--json"]
    return json.loads(subprocess.run([str(c) for c in command], check=True, capture_output=True, text=True).stdout)["decode_tok_s"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tokens", type=int, default=48)
    args = parser.parse_args()
    rows = [f"<!-- web table: benchmarks/web_bench.py --tokens {args.tokens}; {platform.machine()}, Chromium headless -->",
            "| model (ONNX int4) | browser backend | adapter | decode tok/s in the page | onnxruntime CPU, 1 thread | onnxruntime CPU, 2 threads |",
            "|---|---|---|---:|---:|---:|"]
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("tiny-rope", "tiny-nope"):
            onnx, web = Path(tmp) / f"{name}-onnx", Path(tmp) / f"{name}-web"
            subprocess.run([str(c) for c in [*EDGELM, "export", ROOT / "examples" / "models" / name, "--format", "onnx",
                                             "--quant", "int4", "--out", onnx]], check=True, capture_output=True)
            subprocess.run([str(c) for c in [*EDGELM, "bundle", onnx, "--target", "web", "--out", web]], check=True, capture_output=True)
            cpu = cpu_decode(onnx, args.tokens, 1), cpu_decode(onnx, args.tokens, 2)
            for backend in ("wasm", "webgpu"):
                shot = ROOT / "docs" / "web.png" if name == "tiny-rope" and backend == "webgpu" else None
                result = run_page(web, backend, PROMPT, args.tokens, screenshot=shot)
                ran = result.get("backend", "error")
                speed = f"{result['tok_s']:.1f}" if "tok_s" in result else result.get("error", "?")
                rows.append(f"| {name} | {ran}{'' if ran == backend else f' (asked {backend})'} | {result.get('reason', '')} | {speed} | "
                            f"{cpu[0]:.1f} | {cpu[1]:.1f} |")
                print(rows[-1], flush=True)
    print("\n".join(rows + ["<!-- /web table -->"]))


if __name__ == "__main__":
    main()
