"""Fidelity of int4 (and the Q8_0 anchor) against the fp32 torch reference, per shipped model.

    python benchmarks/fidelity.py [--models tiny-nope,...] [--tokens 256] [--windows 8] [--json out.json]

For each model and method: export, then `edgelm.parity.compare` (the numbers `edgelm parity` prints)
on WINDOWS windows of TOKENS+1 tokens spread evenly over the held-out persuasion.txt, pooled (2,048
positions by default; `--windows 1`: its first 256 alone, which the tables before 2026-12-07 used): file
size, mean KL(reference ‖ artifact), ΔPPL, top-1 agreement. Calibrated methods take their statistics from the built-in calibration text
(16 chunks × 256 tokens of the five training novels), never from persuasion.txt.

llama.cpp's own imatrix workflow, where its tools are built (`--llama-tools DIR` holding llama-imatrix
and llama-quantize; default $LLAMA_CPP_TOOLS; rows skipped with a note when absent): edgelm's f16 GGUF →
`llama-imatrix` over the same 16 × 256-token windows (decoded to text, `-c 256`) → `llama-quantize
--imatrix … Q4_K_M`; and `llama-quantize --imatrix` fed edgelm's own imatrix.gguf, which shows that
llama.cpp's tool reads the file edgelm writes.

onnxruntime-genai's model builder (`python -m onnxruntime_genai.models.builder -p int4 -e cpu`, block 32,
symmetric, accuracy_level 4 — the same MatMulNBits settings as edgelm's int4), where it runs (`--genai-python
PY`, default $EDGELM_GENAI_PYTHON, else this interpreter; rows skipped with a note when it cannot import):
its default RTN, `algo_config=k_quant` and `algo_config=k_quant_mixed` (k_quant with the LM head and
llama.cpp's "mixed" layers at int8), on a Hugging Face folder written from the shipped checkpoint (the head
temperatures λ folded into q_proj; a NoPE model as SmolLM3ForCausalLM with every layer's `no_rope_layers`
0, the builder's one llama with RoPE switched off per layer); edgelm opens the builder's folder as it opens
any ONNX folder. The builder keeps the embedding table at fp32.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import folder_bytes  # noqa: E402
from edgelm.errors import UserError  # noqa: E402
from edgelm.formats import LoadOptions, open_artifact  # noqa: E402
from edgelm.models import open_checkpoint  # noqa: E402
from edgelm.parity import compare, pooled, spread_windows  # noqa: E402

MODELS = ("tiny-nope", "tiny-rope", "tiny-ngen4", "tiny-tokenformer")
HELD_OUT = ROOT / "examples" / "data" / "persuasion.txt"

# method name → (format, export keyword arguments); the anchors first
METHODS = {
    "Q8_0": ("gguf", {"quant": "int8"}),
    # TokenFormer's int4 before K-quants (gguf-py's Q4_0); llama.cpp's Q4_0 for the llama-family models
    "Q4_0": ("gguf", {"quant": "Q4_0", "calibrated": False}),
    # llama.cpp's recipe as written: for TokenFormer (ggml's quantizer) K-quant value tokens too, where
    # edgelm's int4 gives them 32-wide types (gguf_layout.Tensor.max_input_block)
    "Q4_K_M stock": ("gguf", {"quant": "int4", "calibrated": False, "as_written": True}),
    "Q4_K_M (edgelm's int4)": ("gguf", {"quant": "int4", "calibrated": False}),
    "Q4_K_M imatrix": ("gguf", {"quant": "int4", "calibrated": True}),
    # size-budgeted mixed precision (quantize/mixed.py), the budget the stock Q4_K_M file's size in this run
    "Q4_K_M-size mixed": ("gguf", {"quant": "int4", "calibrated": False, "max_size_of": "Q4_K_M stock"}),
    "Q4_K_M-size mixed imatrix": ("gguf", {"quant": "int4", "calibrated": True, "max_size_of": "Q4_K_M stock"}),
    # within Q4_0's size (TokenFormer's int4 before K-quants)
    "Q4_0-size mixed imatrix": ("gguf", {"quant": "int4", "calibrated": True, "max_size_of": "Q4_0"}),
    # llama.cpp's tools (--llama-tools): its imatrix and quantizer; then edgelm's imatrix in llama-quantize;
    # then edgelm's mixed precision within the llama.cpp file's size
    "llama.cpp imatrix Q4_K_M": ("llama.cpp", {"imatrix_by": "llama-imatrix"}),
    "llama-quantize with edgelm's imatrix": ("llama.cpp", {"imatrix_by": "edgelm"}),
    "llama.cpp-size mixed imatrix": ("gguf", {"quant": "int4", "calibrated": True, "max_size_of": "llama.cpp imatrix Q4_K_M"}),
    "ONNX int4 RTN (stock)": ("onnx", {"quant": "int4", "calibrated": False}),
    # onnxruntime-genai's model builder (--genai-python): its RTN, k_quant, k_quant_mixed
    "genai builder int4 RTN": ("genai", {"extra_options": ()}),
    "genai builder int4 k_quant": ("genai", {"extra_options": ("algo_config=k_quant",)}),
    "genai builder int4 k_quant_mixed": ("genai", {"extra_options": ("algo_config=k_quant_mixed",)}),
    # edgelm's calibrated size-budgeted int4 within each builder file's size in this run
    "ONNX k_quant-size mixed calibrated": ("onnx", {"quant": "int4", "calibrated": True, "max_size_of": "genai builder int4 k_quant"}),
    "ONNX k_quant_mixed-size mixed calibrated": ("onnx", {"quant": "int4", "calibrated": True,
                                                         "max_size_of": "genai builder int4 k_quant_mixed"}),
    # the same budgets with the embedding Gather at int4 too (the builder keeps it fp32), which frees bytes
    "ONNX k_quant-size mixed calibrated + int4 embedding": ("onnx", {"quant": "int4", "calibrated": True, "int4_embedding": True,
                                                                    "max_size_of": "genai builder int4 k_quant"}),
    "ONNX k_quant_mixed-size mixed calibrated + int4 embedding": ("onnx", {"quant": "int4", "calibrated": True, "int4_embedding": True,
                                                                          "max_size_of": "genai builder int4 k_quant_mixed"}),
    "ONNX int4 calibrated": ("onnx", {"quant": "int4", "calibrated": True}),
    # size-budgeted: MatMuls at 8 bits by measured sensitivity within the RTN folder's size in this run
    "ONNX RTN-size mixed + int4 embedding": ("onnx", {"quant": "int4", "calibrated": False, "int4_embedding": True,
                                                      "max_size_of": "ONNX int4 RTN (stock)"}),
    # the cheap wins: the LM head at 8 bits; and the fp32 embedding table at int4, which pays for it
    "ONNX int4 + 8-bit LM head": ("onnx", {"quant": "int4", "calibrated": False, "int8_lm_head": True}),
    "ONNX int4 + int4 embedding + 8-bit LM head": ("onnx", {"quant": "int4", "calibrated": False, "int8_lm_head": True,
                                                          "int4_embedding": True}),
}


def export(model_dir: Path, out: Path, fmt: str, quant: str = "int4", calibrated: bool | None = None, max_size: int | None = None,
           tools: Path | None = None, imatrix_by: str = "", genai_python: str = sys.executable, extra_options: tuple = (),
           as_written: bool = False, **onnx_options) -> Path:
    from edgelm.quantize.calibration import DEFAULT_TEXTS

    if fmt == "llama.cpp":
        return llama_cpp_export(model_dir, out, tools, imatrix_by)
    if fmt == "genai":
        return genai_builder_export(model_dir, out, genai_python, extra_options)
    checkpoint = open_checkpoint(model_dir)
    texts = DEFAULT_TEXTS if calibrated else ()
    if fmt == "gguf":
        from edgelm.export.gguf import LLAMA_FILE_TYPES, Q, _recipe_types, _write, export_gguf, gguf_mapping, llama_cpp_archs

        if as_written and gguf_mapping(checkpoint.family).arch(checkpoint.spec) not in llama_cpp_archs():
            _write(checkpoint, out, Q.Q4_K, LLAMA_FILE_TYPES["Q4_K_M"], None, _recipe_types(checkpoint, "Q4_K_M", input_blocks=False))
            return out
        return export_gguf(checkpoint, out, quant, calibration=texts, max_size=max_size).path
    from edgelm.export.onnx import export_onnx

    return export_onnx(checkpoint, out, quant, calibration=texts, max_size=max_size, **onnx_options).path


class NotMade(Exception):
    """A llama.cpp row that cannot be made here (its tools not built, or an arch llama.cpp does not know)."""


def llama_cpp_export(model_dir: Path, out: Path, tools: Path | None, imatrix_by: str) -> Path:
    """llama.cpp's workflow on edgelm's f16 GGUF: an importance matrix by `llama-imatrix` on the
    calibration windows edgelm uses (or edgelm's own imatrix.gguf), then `llama-quantize --imatrix`."""
    from edgelm.constants import llama_cpp_archs
    from edgelm.export.gguf_mapping import gguf_mapping
    from edgelm.export.gguf import _write_imatrix, export_gguf
    from edgelm.quantize.calibration import DEFAULT_TEXTS, calibration_chunks
    from edgelm.tokenizer import load_tokenizer

    missing = [n for n in ("llama-imatrix", "llama-quantize") if tools is None or not (tools / n).is_file()]
    if missing:
        raise NotMade(f"llama.cpp's {', '.join(missing)} not built (give --llama-tools DIR or $LLAMA_CPP_TOOLS)")
    checkpoint = open_checkpoint(model_dir)
    arch = gguf_mapping(checkpoint.family).arch(checkpoint.spec)
    if arch not in llama_cpp_archs():
        raise NotMade(f"llama.cpp does not know arch {arch!r}")
    f16 = export_gguf(checkpoint, out.with_suffix(".f16.gguf"), "f16", certificate=False).path
    imatrix = out.with_suffix(".imatrix.gguf")
    if imatrix_by == "edgelm":
        _write_imatrix(checkpoint, DEFAULT_TEXTS, imatrix)
    else:
        tokenizer = load_tokenizer(model_dir)
        text = out.with_suffix(".calibration.txt")
        text.write_text("".join(tokenizer.decode(chunk) for chunk in calibration_chunks(tokenizer, DEFAULT_TEXTS)), encoding="utf-8")
        subprocess.run([str(tools / "llama-imatrix"), "-m", str(f16), "-f", str(text), "-o", str(imatrix), "-c", "256", "-b", "256",
                        "--chunks", "16", "-t", str(os.cpu_count() or 1), "--no-ppl"], check=True, capture_output=True)
    subprocess.run([str(tools / "llama-quantize"), "--imatrix", str(imatrix), str(f16), str(out), "Q4_K_M"], check=True,
                   capture_output=True)
    f16.unlink()
    return out


def hf_llama_folder(model_dir: Path, out: Path) -> Path:
    """The shipped llama checkpoint as a folder transformers (and so the genai builder) loads as its own:
    λ folded into q_proj (the reference computes q·λ_h), edgelm's keys dropped; NoPE as SmolLM3 with no
    layer rotated (transformers' llama always rotates)."""
    import shutil

    from safetensors.torch import save_file

    from edgelm.constants import TOKENIZER_FILES

    checkpoint = open_checkpoint(model_dir)
    spec = checkpoint.spec
    if checkpoint.config.get("architectures") != ["LlamaForCausalLM"]:
        raise NotMade(f"the genai builder takes this comparison's Hugging Face llama; {model_dir.name} is "
                      f"{checkpoint.config.get('architectures')}")
    if spec.rotated_dims not in (0, spec.head_dim):
        raise NotMade(f"partial rotary ({spec.rotated_dims} of {spec.head_dim} dims) has no Hugging Face llama form")
    temperatures = checkpoint.head_temperatures()
    template = checkpoint.family.head_temperature_tensor
    tensors = {}
    for name in checkpoint.tensors.names():
        if template and any(name == template.format(bid=i) for i in range(spec.num_layers)):
            continue
        tensors[name] = checkpoint.tensors.get(name).float().contiguous()
    for layer in range(spec.num_layers):
        q = f"model.layers.{layer}.self_attn.q_proj.weight"
        tensors[q] = (tensors[q].view(spec.num_heads, spec.head_dim, -1) * temperatures[layer].view(-1, 1, 1)).reshape(tensors[q].shape)
    config = {k: v for k, v in checkpoint.config.items() if k != "edgelm"} | {"model_type": "llama", "torch_dtype": "float32"}
    if spec.rotated_dims == 0:
        config |= {"architectures": ["SmolLM3ForCausalLM"], "model_type": "smollm3", "no_rope_layers": [0] * spec.num_layers,
                   "layer_types": ["full_attention"] * spec.num_layers, "use_sliding_window": False,
                   "pad_token_id": checkpoint.config.get("pad_token_id")}  # SmolLM3's default is 128004
    out.mkdir(parents=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    save_file(tensors, str(out / "model.safetensors"), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (model_dir / name).is_file():
            shutil.copy(model_dir / name, out / name)
    return out


# The builder (0.18.0) turns a SmolLM3 NoPE layer's fused rotary off but leaves `rope` on, so it asks for a
# separate RotaryEmbedding on a position_ids input the CPU graph does not have (KeyError 'position_ids'):
# the layer is built with no rotary at all, as SmolLM3 defines it; the weights and quantizer are untouched.
GENAI_BUILDER = """
import runpy
import onnxruntime_genai.models.builder  # puts its folder on sys.path: the builder imports `builders` top-level
from builders.smollm import SmolLM3Model

def make_attention(self, layer_id, attention, root_input, make=SmolLM3Model.make_attention, **kwargs):
    rope = self.attention_attrs["rope"]
    self.attention_attrs["rope"] = bool(self.no_rope_layers[layer_id])
    make(self, layer_id, attention, root_input, **kwargs)
    self.attention_attrs["rope"] = rope

SmolLM3Model.make_attention = make_attention
runpy.run_module("onnxruntime_genai.models.builder", run_name="__main__")
"""


def genai_builder_export(model_dir: Path, out: Path, python: str, extra_options: tuple) -> Path:
    """onnxruntime-genai's model builder, int4 for the CPU, on `hf_llama_folder`; its own defaults otherwise."""
    probe = subprocess.run([python, "-c", "import onnxruntime_genai.models.builder"], capture_output=True, text=True, check=False)
    if probe.returncode:
        raise NotMade(f"onnxruntime-genai's builder does not import under {python} "
                      f"({(probe.stderr.strip().splitlines() or ['?'])[-1]}); give --genai-python")
    source = hf_llama_folder(model_dir, out.with_name(out.name + "-hf"))
    command = [python, "-c", GENAI_BUILDER, "-i", str(source), "-o", str(out), "-p", "int4", "-e", "cpu",
               "-c", str(out.with_name(out.name + "-cache"))]
    if extra_options:
        command += ["--extra_options", *extra_options]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise NotMade(f"the genai builder failed: {(done.stderr.strip().splitlines() or ['?'])[-1]}")
    return out


def held_out_windows(ref, tokens: int, windows: int) -> list[list[int]]:
    """`windows` windows of `tokens` + 1 ids spread over the held-out novel, encoded once per model."""
    return spread_windows(ref.tokenizer.encode(HELD_OUT.read_text(encoding="utf-8")), tokens + 1, windows)


def measure(ref, artifact: Path, windows: list[list[int]]) -> dict:
    # llama.cpp's f16 KV cache alone costs ~1e-3 in logits; an ONNX graph's cache type is fixed at export
    # (and its folder refuses the option)
    art = open_artifact(artifact, LoadOptions(context_length=len(windows[0]), f32_kv_cache=artifact.suffix == ".gguf", all_logits=True))
    with art:
        report = pooled([compare(ref.backend, art.backend, window) for window in windows])
    return {"bytes": folder_bytes(artifact), "mean_kld": report.mean_kld, "ppl_change": report.perplexity_change,
            "top1": report.top1_agreement, "positions": report.positions}


def svg_plot(rows: list[dict], path: Path) -> None:
    """Mean KLD (log scale) against size, one panel per model, one colour per method: an SVG written
    by hand (matplotlib is not among edgelm's dependencies)."""
    import math

    models = list(dict.fromkeys(r["model"] for r in rows))
    methods = list(dict.fromkeys(r["method"] for r in rows))
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#7f7f7f", "#bcbd22",
               "#000000", "#aec7e8", "#ff9896", "#98df8a"]
    width, height, left, top, bottom = 300, 240, 60, 30, 40
    low = math.floor(math.log10(min(r["mean_kld"] for r in rows)))
    high = math.ceil(math.log10(max(r["mean_kld"] for r in rows)))
    legend_height = 18 * len(methods) + 10
    total_w, total_h = left + width * len(models) + 20, top + height + bottom + legend_height
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{total_w}" height="{total_h}" font-family="sans-serif" font-size="11">',
           f'<rect width="{total_w}" height="{total_h}" fill="white"/>']
    for i, model in enumerate(models):
        mine = [r for r in rows if r["model"] == model]
        x0, x_lo, x_hi = left + i * width, min(r["bytes"] for r in mine) / 1e6, max(r["bytes"] for r in mine) / 1e6
        x_lo, x_hi = math.floor(x_lo) - 0.5, math.ceil(x_hi) + 0.5
        inner = width - 30

        def x(mb: float, x0=x0, x_lo=x_lo, x_hi=x_hi, inner=inner) -> float:
            return x0 + (mb - x_lo) / (x_hi - x_lo) * inner

        def y(kld: float) -> float:
            return top + (high - math.log10(kld)) / (high - low) * height

        out.append(f'<rect x="{x0}" y="{top}" width="{inner}" height="{height}" fill="none" stroke="#888"/>')
        out.append(f'<text x="{x0 + inner / 2}" y="{top - 10}" text-anchor="middle" font-weight="bold">{model}</text>')
        for mb in range(int(x_lo) + 1, int(x_hi) + 1):
            out.append(f'<text x="{x(mb):.1f}" y="{top + height + 14}" text-anchor="middle">{mb}</text>')
        out.append(f'<text x="{x0 + inner / 2}" y="{top + height + 30}" text-anchor="middle">size (MB)</text>')
        for exp in range(low, high + 1):
            out.append(f'<line x1="{x0}" x2="{x0 + inner}" y1="{y(10 ** exp):.1f}" y2="{y(10 ** exp):.1f}" stroke="#ddd"/>')
            if i == 0:
                out.append(f'<text x="{x0 - 5}" y="{y(10 ** exp) + 4:.1f}" text-anchor="end">1e{exp}</text>')
        for r in mine:
            colour = colours[methods.index(r["method"]) % len(colours)]
            out.append(f'<circle cx="{x(r["bytes"] / 1e6):.1f}" cy="{y(r["mean_kld"]):.1f}" r="4" fill="{colour}">'
                       f'<title>{r["method"]}: {r["bytes"] / 1e6:.2f} MB, KLD {r["mean_kld"]:.5f}</title></circle>')
    out.append(f'<text x="14" y="{top + height / 2}" transform="rotate(-90 14 {top + height / 2})" text-anchor="middle">mean KLD</text>')
    for j, method in enumerate(methods):
        ly = top + height + bottom + 12 + 18 * j
        out.append(f'<circle cx="{left + 6}" cy="{ly - 4}" r="4" fill="{colours[j % len(colours)]}"/>')
        out.append(f'<text x="{left + 16}" y="{ly}">{method}</text>')
    out.append("</svg>")
    path.write_text("\n".join(out) + "\n")


def window_count(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: give 1 or more")
    return int(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--tokens", type=int, default=256, help="positions of each window")
    parser.add_argument("--windows", type=window_count, default=8, help="windows of --tokens positions spread over the held-out novel "
                        "(1: its opening alone, as before 2026-12-07)")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--llama-tools", type=Path, default=os.environ.get("LLAMA_CPP_TOOLS"),
                        help="folder of llama.cpp's llama-imatrix and llama-quantize (for the llama.cpp rows)")
    parser.add_argument("--genai-python", default=os.environ.get("EDGELM_GENAI_PYTHON", sys.executable),
                        help="a Python whose onnxruntime-genai model builder imports (for the genai builder rows)")
    parser.add_argument("--plot", nargs="+", type=Path, metavar=("SVG", "JSON"),
                        help="write the KLD-against-size plot of these JSON results (of --json) to SVG, and stop")
    args = parser.parse_args()
    if args.plot:
        svg_plot([row for saved in args.plot[1:] for row in json.loads(saved.read_text())], args.plot[0])
        return
    rows = []
    with tempfile.TemporaryDirectory(prefix="edgelm-fidelity-") as folder:
        for model in args.models.split(","):
            model_dir = ROOT / "examples" / "models" / model
            ref = open_artifact(model_dir, LoadOptions())  # the torch reference, loaded and the novel encoded once per model
            windows = held_out_windows(ref, args.tokens, args.windows)
            sizes: dict[str, int] = {}
            for method in args.methods.split(","):
                fmt, options = METHODS[method]
                options = dict(options)
                if "max_size_of" in options:
                    anchor = options.pop("max_size_of")
                    if anchor not in sizes:
                        anchor_fmt = METHODS[anchor][0]
                        try:
                            sizes[anchor] = folder_bytes(export(model_dir, Path(folder) / f"{model}-anchor-{anchor.replace(' ', '_').replace(chr(39), '')}{'-onnx' if anchor_fmt in ('onnx', 'genai') else '.gguf'}",
                                                                anchor_fmt, tools=args.llama_tools, genai_python=args.genai_python,
                                                                **METHODS[anchor][1]))
                        except (UserError, NotMade) as exc:
                            print(f"{model:17} {method:24} not made: its budget's {anchor} not made: {exc}", flush=True)
                            continue
                    options["max_size"] = sizes[anchor]
                out = Path(folder) / f"{model}-{method.replace(' ', '_').replace(chr(39), '')}{'-onnx' if fmt in ('onnx', 'genai') else '.gguf'}"
                try:
                    path = export(model_dir, out, fmt, tools=args.llama_tools, genai_python=args.genai_python, **options)
                except (UserError, NotMade) as exc:  # e.g. llama.cpp's tools not built; llama.cpp's on TokenFormer
                    print(f"{model:17} {method:24} not made: {exc}", flush=True)
                    continue
                sizes[method] = folder_bytes(path)
                row = {"model": model, "method": method, "format": fmt} | measure(ref, path, windows)
                rows.append(row)
                print(f"{model:17} {method:30} {row['bytes'] / 1e6:6.2f} MB  KLD {row['mean_kld']:.5f}  "
                      f"ΔPPL {100 * row['ppl_change']:+6.2f} %  top-1 {100 * row['top1']:5.1f} %  ({row['positions']} positions)", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")


if __name__ == "__main__":
    main()
