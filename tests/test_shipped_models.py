"""The trained example models in examples/models: they load, they are what their cards say, and their
held-out perplexity stays below a bound set from the measured value (a broken loader or export fails)."""

import json
from pathlib import Path

import pytest

from edgelm.evaluate import perplexity
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.models import open_checkpoint
from edgelm.models.presets import PRESETS
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.torch_backend import TorchBackend
from edgelm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "examples" / "models"
HELD_OUT = REPO / "examples" / "data" / "persuasion.txt"
SLICE = 3000  # held-out tokens scored (the first of persuasion.txt), ctx 256
# measured fp32 perplexity on that slice, per model; the bound is 5 % above it
MEASURED = {"tiny-nope": 141.320, "tiny-rope": 91.995, "tiny-ngen4": 93.720, "tiny-tokenformer": 131.456}


def held_out_ids(folder):
    return load_tokenizer(folder).encode(HELD_OUT.read_text(encoding="utf-8"))[:SLICE]


@pytest.mark.parametrize("name", sorted(MEASURED))
def test_shipped_model_loads_with_its_card_and_perplexity(name):
    folder = MODELS / name
    checkpoint = open_checkpoint(folder)
    _, spec, _ = PRESETS[name].build()
    assert checkpoint.spec == spec
    assert (folder / "model.safetensors").stat().st_size <= 12 * 1024**2
    card = json.loads((folder / "training.json").read_text())
    assert card["ratio"] <= 0.2  # at most a fifth of the unigram perplexity
    result = perplexity(TorchBackend(checkpoint.load_model()), held_out_ids(folder), ctx=256)
    assert result.tokens == SLICE - 1
    assert result.perplexity <= MEASURED[name] * 1.05


# Quantized artifacts of the trained models against the fp32 reference over 255 held-out positions
# (128 prefilled, the rest decoded one at a time). Each bound is about 3× the mean KLD measured here (in the comment;
# the test prints it) and the ΔPPL measured plus 1–2.5 points, so that a conversion 10× worse fails: the bounds were
# 20–140× the measured values, which a wrong block scale on a few layers would have passed (stranger 36).
QUANTIZED = [
    ("tiny-nope", "gguf", "int8", 2.5e-4, 0.01, 0.97),  # KLD 7e-5, ΔPPL +0.05 %, top-1 99.6 %
    ("tiny-nope", "gguf", "int4", 0.008, 0.035, 0.92),  # 0.00265, +1.43 %, 96.5 %
    ("tiny-rope", "gguf", "int8", 2.5e-4, 0.01, 0.96),  # 7e-5, −0.10 %, 98.4 %
    ("tiny-rope", "gguf", "int4", 0.008, 0.03, 0.92),  # 0.00266, +0.64 %, 94.9 %
    ("tiny-tokenformer", "gguf", "int4", 0.002, 0.02, 0.92),  # 0.00058, +0.27 %, 95.3 %
    ("tiny-nope", "onnx", "int8", 0.002, 0.01, 0.94),  # 0.00066, −0.21 %, 96.5 %
    ("tiny-nope", "onnx", "int4", 0.013, 0.025, 0.91),  # 0.00428, +0.25 %, 93.7 %
    ("tiny-ngen4", "onnx", "int4", 0.017, 0.03, 0.91),  # 0.00568, +0.73 %, 94.1 %
]


@pytest.mark.parametrize("name,fmt,quant,max_mean_kld,max_ppl_increase,min_top1", QUANTIZED)
def test_quantized_export_stays_close(tmp_path, name, fmt, quant, max_mean_kld, max_ppl_increase, min_top1):
    from edgelm.parity import compare

    checkpoint = open_checkpoint(MODELS / name)
    if fmt == "gguf":
        path = export_gguf(checkpoint, tmp_path / "m.gguf", quant).path
    else:
        path = export_onnx(checkpoint, tmp_path / "onnx", quant).path
    artifact = open_artifact(path, LoadOptions(context_length=256, threads=2, all_logits=True))
    ids = held_out_ids(MODELS / name)[:256]
    report = compare(TorchBackend(checkpoint.load_model()), artifact.backend, ids, prefill=128)
    print(f"\n{name} {fmt} {quant} ({artifact.engine}): " + json.dumps({k: round(v, 5) for k, v in report.as_dict().items()}))
    assert report.positions == 255
    assert report.mean_kld <= max_mean_kld
    assert report.perplexity_change <= max_ppl_increase
    assert report.top1_agreement >= min_top1
