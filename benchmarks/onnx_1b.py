"""ONNX int4 export and decode on the real-size 1.1B presets (random weights, same shapes).

For tinyllama-nope-1.1b and tinyllama-1.1b: `edgelm export --format onnx --quant int4` wall time, peak RSS
and folder size, then time to first token (128-token prompt) and decode tok/s at 64 and ~2048 tokens of
context through edgelm's runtime and through onnxruntime-genai on the same folder. For the RoPE model
also onnxruntime-genai's own model builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`)
on the same checkpoint, run by onnxruntime-genai. Each edgelm export is made with a float and with an
int8 KV cache (`--kv-cache int8`).

    python benchmarks/onnx_1b.py [--work DIR] [--tokens 32] [--threads 2] [--models nope rope] [--kv-caches float int8]
                                 [--builder-python PYTHON]

onnxruntime-genai 0.18's builder imports model classes from transformers 5, while Optimum (edgelm's test
extra) holds transformers below 4.58: `--builder-python` names an interpreter whose transformers is newer,
e.g. a venv with `pip install "transformers>=5"` and a .pth file pointing at edgelm's site-packages.

Targets (issue #4): decode at 2048 ≥ 0.85 × decode at 64 (RoPE, edgelm); edgelm's int4 decode ≥ the builder's.
"""

from __future__ import annotations

import argparse
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from common import EDGELM, folder_bytes, prompt_ids, run_measured

PRESETS = {"nope": "tinyllama-nope-1.1b", "rope": "tinyllama-1.1b"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (needs ~12 GB)")
    parser.add_argument("--tokens", type=int, default=32, help="decode steps timed per context")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--models", nargs="+", choices=sorted(PRESETS), default=sorted(PRESETS))
    parser.add_argument("--kv-caches", nargs="+", choices=["float", "int8"], default=["float", "int8"])
    parser.add_argument("--builder-python", default=sys.executable, help="interpreter that runs onnxruntime-genai's builder")
    args = parser.parse_args()
    from edgelm.benchmark import WARMUP_STEPS, genai_generation, time_generation
    from edgelm.formats import LoadOptions, open_artifact

    long = 2048 - WARMUP_STEPS - args.tokens - 2  # the presets' context is 2048; onnxruntime-genai stops there
    exports, rows = {}, []
    with tempfile.TemporaryDirectory(dir=args.work) as tmp:
        work = Path(tmp)
        for key in args.models:
            preset = PRESETS[key]
            model = work / key
            run_measured([*EDGELM, "init", preset, model])
            made = {}
            for kv_cache in args.kv_caches:
                exporter = "edgelm" + (", int8 KV" if kv_cache == "int8" else "")
                made[exporter] = work / f"{key}-int4-{kv_cache}"
                exports[f"{key} {exporter}"] = run_measured([*EDGELM, "export", model, "--format", "onnx", "--quant", "int4",
                                                             "--kv-cache", kv_cache, "--out", made[exporter]])
            if key == "rope":
                made["builder"] = work / f"{key}-builder"
                exports[f"{key} builder"] = run_measured([args.builder_python, "-m", "onnxruntime_genai.models.builder", "-i", model,
                                                          "-o", made["builder"], "-p", "int4", "-e", "cpu", "-c", work / "cache"])
            for exporter, folder in made.items():
                exports[f"{key} {exporter}"]["bytes"] = folder_bytes(folder)
                runners = {"onnxruntime-genai": lambda context, f=folder: genai_generation(f, prompt_ids(context), args.tokens, args.threads)}
                if exporter.startswith("edgelm"):
                    backend = open_artifact(folder, LoadOptions(threads=args.threads)).backend
                    runners["edgelm"] = lambda context, b=backend: time_generation(b, prompt_ids(context), args.tokens)
                for runtime, run in runners.items():
                    (_, short), (first, _), (_, far) = run(64), run(128), run(long)
                    rows.append((key, exporter, runtime, first, short, far))
                    print(rows[-1], flush=True)
    print(f"\nmachine: {platform.processor() or platform.machine()}, {args.threads} threads, {time.strftime('%Y-%m-%d')}")
    print("| export | wall s | peak RSS GB | folder GB |\n|---|---:|---:|---:|")
    for name, row in exports.items():
        print(f"| {name} | {row['seconds']:.0f} | {row['peak_rss'] / 1e9:.2f} | {row['bytes'] / 1e9:.2f} |")
    print(f"\n| model | exported by | run by | TTFT 128 tok s | decode tok/s @64 | decode tok/s @{long} | ratio |")
    print("|---|---|---|---:|---:|---:|---:|")
    for key, exporter, runtime, ttft, short, far in rows:
        print(f"| {key} | {exporter} | {runtime} | {ttft:.2f} | {short:.2f} | {far:.2f} | {far / short:.2f} |")


if __name__ == "__main__":
    main()
