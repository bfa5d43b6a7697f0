"""Size-budgeted mixed precision (`--quant int4 --max-size`, quantize/mixed.py): each weight's GGML type
chosen by its measured sensitivity, made by llama.cpp's quantizer through tt_overrides."""

from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFReader, quants

from edgelm.errors import UserError
from edgelm.models import open_checkpoint
from edgelm.quantize import mixed

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "examples" / "models" / "tiny-nope"
STOCK_Q4_K_M = 3_670_000  # the shipped tiny-nope's stock Q4_K_M is 3.67 MB (docs/fidelity.md)


def unit(name: str, kld: dict[str, float], rows: int = 256) -> mixed.Unit:
    return mixed.Unit(name, [name], mixed.gguf_sizes(rows, 256), kld)


def test_allocation_stays_within_the_budget_and_spends_it_where_kld_falls_most():
    """Two weights of one size: the one whose KLD falls more per byte gets the upgrade first; every
    budget's choice fits it, and a larger budget never predicts a larger KLD."""
    steep = unit("steep", {"Q3_K": 1.0, "Q4_K": 0.3, "Q5_K": 0.1, "Q6_K": 0.03, "Q8_0": 0.001})
    flat = unit("flat", {"Q3_K": 0.1, "Q4_K": 0.03, "Q5_K": 0.01, "Q6_K": 0.003, "Q8_0": 0.0001})
    found, fixed = [steep, flat], 1000
    smallest = fixed + steep.bytes("Q3_K") + flat.bytes("Q3_K")
    one_step = smallest + steep.bytes("Q4_K") - steep.bytes("Q3_K")
    assert mixed.allocate(found, one_step, fixed, "Q4_K_M") == {"steep": "Q4_K", "flat": "Q3_K"}
    last = None
    for budget in range(smallest, fixed + 2 * steep.bytes("Q8_0") + 1, 3000):
        choice = mixed.allocate(found, budget, fixed, "Q4_K_M")
        assert fixed + sum(u.bytes(choice[u.param]) for u in found) <= budget
        predicted = mixed.predicted_kld(found, choice)
        assert last is None or predicted <= last
        last = predicted
    assert mixed.allocate(found, 10**9, fixed, "Q4_K_M") == {"steep": "Q8_0", "flat": "Q8_0"}
    with pytest.raises(UserError, match="--max-size"):
        mixed.allocate(found, smallest - 1, fixed, "Q4_K_M")


@pytest.mark.parametrize("text, size", [("3500000", 3_500_000), ("3.5MB", 3_500_000), ("3.5 mib", int(3.5 * 2**20)), ("900KB", 900_000),
                                        ("1" + "0" * 29, 10**29), ("0.5KB", 500)])
def test_sizes_read_as_llama_cpp_and_disk_tools_write_them(text, size):
    assert mixed.parse_size(text) == size


@pytest.mark.parametrize("text", ["", "big", "-3MB", "3 parsecs", "1e6", "1.5", "2.5B"])
def test_a_size_that_is_not_one_is_refused(text):
    with pytest.raises(UserError, match="--max-size"):
        mixed.parse_size(text)


def test_impossible_budget_refused_in_one_line(run_cli, tmp_path):
    code, out, err = run_cli("export", MODEL, "--quant", "int4", "--max-size", "1MB", "--out", tmp_path / "m.gguf")
    assert code == 2, (code, out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "--max-size" in lines[0] and "Traceback" not in err, err
    assert not (tmp_path / "m.gguf").exists()


def test_max_size_refused_for_a_float_type_and_for_onnx(run_cli, tmp_path):
    code, _, err = run_cli("export", MODEL, "--quant", "f16", "--max-size", "3MB", "--out", tmp_path / "f.gguf")
    assert code == 2 and "--max-size" in err
    code, _, err = run_cli("export", MODEL, "--format", "onnx", "--quant", "int4", "--max-size", "3MB", "--out", tmp_path / "o")
    assert code == 2 and "--max-size" in err


def test_budgeted_export_fits_records_its_types_and_verifies(run_cli, tmp_path):
    """Below stock Q4_K_M's size: the file fits, its tensors carry several types (the choice), the
    budget is recorded, the round trip the sensitivities were measured with is llama.cpp's quantizer's
    own output in the file, and `edgelm verify` passes on the certificate it carries."""
    budget = 3_400_000
    path = tmp_path / "mixed.gguf"
    code, out, err = run_cli("export", MODEL, "--quant", "int4", "--max-size", str(budget), "--out", path)
    assert code == 0, (code, out, err)
    assert path.stat().st_size <= budget < STOCK_Q4_K_M
    assert "types chosen within --max-size" in out and "Q4_K_M)" not in out, out  # not the quantizer's file type
    reader = GGUFReader(path)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    quantized = {t for t in types.values() if t != "F32"}
    assert len(quantized) >= 3 and quantized <= set(mixed.CANDIDATES), types
    assert f"max_size={budget}" in reader.fields[mixed.NOTE_KEY].contents()

    # the file's ffn_up of layer 1, dequantized by gguf-py, against ggml's round trip of the reference weight
    tensor = next(t for t in reader.tensors if t.name == "blk.1.ffn_up.weight")
    weight = open_checkpoint(MODEL).load_model().state_dict()["model.layers.1.mlp.up_proj.weight"].numpy()
    in_file = quants.dequantize(tensor.data, tensor.tensor_type).reshape(weight.shape)
    np.testing.assert_array_equal(in_file, mixed.round_trip(weight, tensor.tensor_type.name))

    code, out, err = run_cli("verify", path)
    assert code == 0 and "probe matches" in out, (code, out, err)


@pytest.mark.parametrize("model,budget", [("tiny-nope", 4_600_000),
                                          # RoPE's fp32 cos/sin tables (0.5 MB; 4.2 MB at 32,768 rows) are 2-D like
                                          # the embedding: counted at int4 they left no room and the folder came out
                                          # over the budget; here: tiny-nope's budget plus the tables
                                          ("tiny-rope", 5_100_000)])
def test_onnx_budgeted_export_fits_keeps_chosen_matmuls_at_8_bits_and_verifies(run_cli, tmp_path, model, budget):
    """ONNX int4 with the int4 embedding under a budget: the folder fits, MatMulNBits carries both 4
    and 8 bits (the choice, recorded in the graph, and the budget in edgelm.json), verify passes."""
    import json

    import onnx

    folder = tmp_path / "mixed-onnx"
    code, out, err = run_cli("export", MODEL.parent / model, "--format", "onnx", "--quant", "int4", "--int4-embedding", "--max-size", str(budget),
                             "--out", folder)
    assert code == 0, (code, out, err)
    assert sum(p.stat().st_size for p in folder.iterdir()) <= budget
    assert "4/8-bit MatMuls chosen within --max-size" in out, out
    graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
    bits = [next(a.i for a in node.attribute if a.name == "bits") for node in graph.node if node.op_type == "MatMulNBits"]
    assert set(bits) == {4, 8}, bits
    assert json.loads((folder / "edgelm.json").read_text())["int4_options"]["max_size"] == budget
    code, out, err = run_cli("verify", folder)
    assert code == 0 and "probe matches" in out, (code, out, err)


def test_onnx_max_size_with_int8_lm_head_refused(run_cli, tmp_path):
    code, _, err = run_cli("export", MODEL, "--format", "onnx", "--quant", "int4", "--int8-lm-head", "--max-size", "9MB",
                           "--out", tmp_path / "o")
    assert code == 2 and "--max-size" in err and "Traceback" not in err
