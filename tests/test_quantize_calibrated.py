"""Calibrated int4: llama.cpp's importance matrix from one torch pass (GGUF), activation-aware scales
from the same statistics (ONNX). Measured on the shipped trained tiny-nope, scored on 8 windows of 256
positions spread over the held-out persuasion.txt (2,048 positions: its first 256 alone, the title page
and a paragraph, gave verdicts the whole novel reversed); the calibration text is the training novels."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGMLQuantizationType, GGUFReader, GGUFValueType

from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import LoadOptions, open_artifact
from edgelm.models import open_checkpoint
from edgelm.parity import compare, pooled, spread_windows
from edgelm.quantize.calibration import DEFAULT_TEXTS, calibration_chunks, collect
from edgelm.quantize.imatrix import write_gguf
from edgelm.tokenizer import load_tokenizer

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "models" / "tiny-nope"
HELD_OUT = ROOT / "examples" / "data" / "persuasion.txt"
POSITIONS, WINDOWS = 256, 8


def mean_kld(artifact: Path) -> float:
    ref = open_artifact(MODEL, LoadOptions())
    # llama.cpp's KV cache in f32, as an int4 ONNX graph's already is (an ONNX folder refuses the option)
    f32_kv_cache = artifact.suffix == ".gguf"
    art = open_artifact(artifact, LoadOptions(context_length=POSITIONS + 1, f32_kv_cache=f32_kv_cache, all_logits=True))
    windows = spread_windows(ref.tokenizer.encode(HELD_OUT.read_text(encoding="utf-8")), POSITIONS + 1, WINDOWS)
    report = pooled([compare(ref.backend, art.backend, window) for window in windows])
    assert report.positions == WINDOWS * POSITIONS
    return report.mean_kld


def test_default_calibration_is_the_training_novels_not_the_held_out_one():
    assert DEFAULT_TEXTS and all(p.is_file() for p in DEFAULT_TEXTS)
    assert HELD_OUT.name not in {p.name for p in DEFAULT_TEXTS}


def test_imatrix_gguf_has_llama_cpps_layout(tmp_path):
    """What tools/imatrix/imatrix.cpp (save_imatrix) writes and common/imatrix-loader.cpp and
    llama-quant.cpp require: general.type "imatrix"; imatrix.datasets a string array, chunk_count and
    chunk_size u32; per weight `<name>.in_sum2` F32 ne [n_per_row, 1] and `<name>.counts` F32 ne
    [1, 1]; names are the model's GGUF tensor names, and in_sum2's length is that tensor's row length
    (llama-quant refuses "imatrix size … is different from tensor size")."""
    checkpoint = open_checkpoint(MODEL)
    chunks = calibration_chunks(load_tokenizer(MODEL), DEFAULT_TEXTS, chunks=5, size=64)
    imatrix = collect(checkpoint.load_model(), chunks, [p.name for p in DEFAULT_TEXTS])
    f16 = export_gguf(checkpoint, tmp_path / "f16.gguf", "f16")
    from edgelm.export.gguf import _tensor_plan

    write_gguf(imatrix, {source: name for name, source in _tensor_plan(checkpoint).items()}, tmp_path / "imatrix.gguf")

    reader = GGUFReader(tmp_path / "imatrix.gguf")
    fields = reader.fields
    assert fields["general.type"].contents() == "imatrix"
    assert "general.architecture" not in fields  # llama-imatrix writes none
    assert fields["imatrix.datasets"].types == [GGUFValueType.ARRAY, GGUFValueType.STRING]
    assert fields["imatrix.datasets"].contents() == [p.name for p in DEFAULT_TEXTS]
    assert fields["imatrix.chunk_count"].types == [GGUFValueType.UINT32] and fields["imatrix.chunk_count"].contents() == 5
    assert fields["imatrix.chunk_size"].types == [GGUFValueType.UINT32] and fields["imatrix.chunk_size"].contents() == 64

    model_rows = {t.name: int(t.shape[0]) for t in GGUFReader(f16.path).tensors}
    tensors = {t.name: t for t in reader.tensors}
    sums = {n.removesuffix(".in_sum2") for n in tensors if n.endswith(".in_sum2")}
    counts = {n.removesuffix(".counts") for n in tensors if n.endswith(".counts")}
    assert sums == counts and len(tensors) == 2 * len(sums)
    # every matmul weight of the llama arch: 7 per layer and the output head; not the embedding (a lookup)
    assert sums == {n for n in model_rows if n.startswith("blk.") and n.endswith(".weight") and "norm" not in n} | {"output.weight"}
    for name in sums:
        s, c = tensors[name + ".in_sum2"], tensors[name + ".counts"]
        assert s.tensor_type == c.tensor_type == GGMLQuantizationType.F32
        assert [int(x) for x in s.shape] == [model_rows[name], 1] and [int(x) for x in c.shape] == [1, 1]
        assert float(c.data.reshape(-1)[0]) == 5 * 64
        assert np.all(np.asarray(s.data) > 0) and np.all(np.isfinite(s.data))


@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("gguf")
    checkpoint = open_checkpoint(MODEL)
    stock = export_gguf(checkpoint, folder / "stock.gguf", "int4")
    calibrated = export_gguf(checkpoint, folder / "calibrated.gguf", "int4", calibration=DEFAULT_TEXTS)
    return stock, calibrated


def test_imatrix_reaches_llama_cpps_quantizer(gguf_pair):
    """Same types, same size, different bytes: the importance matrix went through params.imatrix."""
    stock, calibrated = gguf_pair
    assert stock.tensor_types == calibrated.tensor_types
    assert len({sum(int(t.n_bytes) for t in GGUFReader(r.path).tensors) for r in gguf_pair}) == 1  # the keys below differ
    assert stock.path.read_bytes() != calibrated.path.read_bytes()
    assert any("importance matrix" in note for note in calibrated.notes)
    a, b = ({t.name: np.asarray(t.data) for t in GGUFReader(r.path).tensors} for r in gguf_pair)
    changed = {n for n in a if a[n].tobytes() != b[n].tobytes()}
    assert "blk.0.attn_q.weight" in changed and "token_embd.weight" not in changed  # no imatrix entry for a lookup
    # what llama-quantize records of its --imatrix (stranger 20: nothing showed the file was calibrated)
    fields = [GGUFReader(r.path).fields for r in gguf_pair]
    assert not any(key.startswith("quantize.imatrix.") for key in fields[0])
    recorded = {key: (field.contents(), field.types) for key, field in fields[1].items() if key.startswith("quantize.imatrix.")}
    assert recorded == {"quantize.imatrix.dataset": (DEFAULT_TEXTS[0].name, [GGUFValueType.STRING]),
                        "quantize.imatrix.entries_count": (29, [GGUFValueType.UINT32]),  # 7 per layer × 4 and the output
                        "quantize.imatrix.chunks_count": (16, [GGUFValueType.UINT32])}


def test_calibrated_gguf_int4_is_closer_to_the_reference(gguf_pair):
    """Measured over 2,048 held-out positions: Q4_K_M mean KLD 0.00185 stock → 0.00171 with the importance matrix (−8 %;
    −15 % on the first 256 positions alone)."""
    stock, calibrated = gguf_pair
    before, after = mean_kld(stock.path), mean_kld(calibrated.path)
    assert after < 0.95 * before, (before, after)


def test_calibrated_onnx_int4_moves_fidelity_as_documented(tmp_path):
    """The AWQ fold does not help tiny-nope: over 2,048 held-out positions, MatMulNBits RTN mean KLD 0.00338 → 0.00356
    with the scales folded into the norms (+5 %; docs/fidelity.md). On the first 256 positions alone it measured −4 %,
    which this test asserted as "closer" until stranger 36 scored 8× the text. The ratio is pinned, so that a change to
    the fold shows here, whichever way it moves."""
    checkpoint = open_checkpoint(MODEL)
    # no certificate: its JSON in the graph's metadata_props differs in length between the two
    stock = export_onnx(checkpoint, tmp_path / "stock", "int4", certificate=False)
    calibrated = export_onnx(checkpoint, tmp_path / "calibrated", "int4", calibration=DEFAULT_TEXTS, certificate=False)
    assert any("activation-aware" in note for note in calibrated.notes)
    assert (stock.path / "model.onnx").stat().st_size == (calibrated.path / "model.onnx").stat().st_size
    before, after = mean_kld(stock.path), mean_kld(calibrated.path)
    assert 1.02 < after / before < 1.09, (before, after)


@pytest.mark.parametrize("name", ["tiny-rope", "tiny-gemma"])
def test_activation_folds_leave_the_function_unchanged(preset_dir, name):
    """AWQ's scales fold into the norms before the weights they scale, so the model computes the same
    logits; a norm whose gain is 1 + weight (Gemma) cannot take 1/s in its weight and is left unscaled
    (folding it anyway moved tiny-gemma's logits by 0.066)."""
    import torch

    from edgelm.export.onnx import activation_folds
    from edgelm.export.temperatures import bake_tensor

    checkpoint = open_checkpoint(preset_dir(name))
    folds, _ = activation_folds(checkpoint, DEFAULT_TEXTS[:1])
    model = checkpoint.load_model()
    ids = torch.randint(0, checkpoint.spec.vocab_size, (1, 64), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(ids)[0]
        state = model.state_dict()
        for tensor, (axis, scale) in folds.items():
            state[tensor].copy_(bake_tensor(state[tensor], axis, scale))
        assert (model(ids)[0] - reference).abs().max().item() <= 1e-5
    assert bool(folds) == (name == "tiny-rope")


def test_spread_windows_and_pooled_reports():
    """The windows start at the text's start, evenly apart and apart from each other (overlapping ones would count
    positions twice: refused); pooled numbers weigh each window by its positions, its perplexity is that of the pooled
    log-likelihood, and a NaN in any window carries (reviewer 38: Python's max dropped it, by window order)."""
    from edgelm.parity import ParityReport

    assert spread_windows(list(range(100)), 10, 4) == [list(range(s, s + 10)) for s in (0, 30, 60, 90)]
    assert spread_windows(list(range(103)), 10, 4)[-1] == list(range(93, 103))
    with pytest.raises(ValueError):
        spread_windows(list(range(300)), 257, 8)
    a = ParityReport(10, 1.0, 0.1, 0.002, 0.01, 0.9, 100.0, 110.0)
    b = ParityReport(30, 2.0, 0.2, 0.004, 0.03, 0.8, 200.0, 200.0)
    both = pooled([a, b])
    assert (both.positions, both.max_abs_logit_diff, both.max_kld) == (40, 2.0, 0.03)
    assert np.isclose(both.mean_kld, 0.0035) and np.isclose(both.top1_agreement, 0.825)
    assert np.isclose(both.reference_perplexity, np.exp((10 * np.log(100) + 30 * np.log(200)) / 40))
    broken = ParityReport(10, float("nan"), 0.1, 0.002, float("nan"), 0.9, 100.0, 110.0)
    for order in ([a, broken], [broken, a]):
        assert np.isnan(pooled(order).max_abs_logit_diff) and np.isnan(pooled(order).max_kld)
