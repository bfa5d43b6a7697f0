"""Each user mistake gives one clear line on stderr and exit code 2, never a traceback."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file


@pytest.fixture
def model(preset_dir, tmp_path):
    """A private copy of tiny-rope that a test may damage."""
    folder = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    return folder


SHIPPED = Path(__file__).resolve().parent.parent / "examples" / "models"


def assert_user_error(result, *needles):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def rewrite_tensors(folder, change):
    tensors = load_file(folder / "model.safetensors")
    change(tensors)
    save_file(tensors, folder / "model.safetensors")


def test_missing_folder(run_cli, tmp_path):
    assert_user_error(run_cli("inspect", tmp_path / "nowhere"), "no such file or folder", "nowhere")


def test_missing_config(run_cli, model):
    (model / "config.json").unlink()
    assert_user_error(run_cli("inspect", model), "config.json is missing")


def test_invalid_config(run_cli, model):
    (model / "config.json").write_text("{not json")
    assert_user_error(run_cli("inspect", model), "config.json is not valid JSON", "config.json")


def test_config_lacks_a_key(run_cli, model):
    config = json.loads((model / "config.json").read_text())
    del config["hidden_size"]
    (model / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("inspect", model), "lacks 'hidden_size'")


def test_unknown_architecture_lists_supported(run_cli, model):
    config = json.loads((model / "config.json").read_text())
    config.update(architectures=["MambaForCausalLM"], model_type="mamba")
    (model / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("inspect", model), "unknown architecture MambaForCausalLM", "LlamaForCausalLM", "NGen4ForCausalLM", "TokenFormerForCausalLM")


def test_missing_weights(run_cli, model):
    (model / "model.safetensors").unlink()
    assert_user_error(run_cli("inspect", model), "no weights found")


def test_truncated_safetensors(run_cli, model):
    data = (model / "model.safetensors").read_bytes()
    (model / "model.safetensors").write_bytes(data[: len(data) // 2])
    assert_user_error(run_cli("inspect", model), "model.safetensors", "truncated or damaged")


def test_missing_tensors_listed_by_name(run_cli, model):
    rewrite_tensors(model, lambda t: t.pop("model.layers.1.mlp.up_proj.weight"))
    assert_user_error(run_cli("inspect", model), "1 tensors missing", "model.layers.1.mlp.up_proj.weight")


def test_unexpected_tensors_listed_by_name(run_cli, model):
    rewrite_tensors(model, lambda t: t.update({"model.layers.0.self_attn.rotary_emb.extra": torch.zeros(3)}))
    assert_user_error(run_cli("inspect", model), "unexpected tensors", "model.layers.0.self_attn.rotary_emb.extra")


def test_shapes_inconsistent_with_config(run_cli, model):
    config = json.loads((model / "config.json").read_text())
    config["intermediate_size"] = 1024
    (model / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("inspect", model), "shapes do not match", "mlp.gate_proj.weight")


def test_pickle_refused_unless_allowed(run_cli, model):
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(tensors, model / "pytorch_model.bin")
    assert_user_error(run_cli("inspect", model), "pickle checkpoint refused", "--allow-pickle")
    code, out, err = run_cli("inspect", model, "--allow-pickle", "--json")
    assert code == 0, err
    assert json.loads(out)["family"] == "llama"


def test_temperatures_file_of_wrong_shape(run_cli, model, tmp_path):
    temps = tmp_path / "temps.json"
    temps.write_text(json.dumps({"layers": [[1.0] * 8] * 3}))
    assert_user_error(run_cli("inspect", model, "--head-temperatures", temps), "shape [3, 8]", "4 layers × 8 heads")


def test_position_encoding_the_family_lacks(run_cli, preset_dir):
    assert_user_error(run_cli("inspect", preset_dir("tiny-tokenformer"), "--position-encoding", "none"), "not available for tokenformer")


def test_unknown_preset_and_existing_output(run_cli, tmp_path, model):
    assert_user_error(run_cli("init", "tiny-mamba", tmp_path / "x"), "unknown preset", "tiny-rope")
    assert_user_error(run_cli("init", "tiny-rope", model), "output already exists", "--force")


def test_threads_past_the_cpu_count_are_clamped(run_cli, tmp_path):
    """--threads 10000 hung onnxruntime; it now runs with one thread per CPU, and says so."""
    import json
    import os

    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    folder = export_onnx(open_checkpoint(SHIPPED / "tiny-rope"), tmp_path / "onnx", "int4").path
    code, out, err = run_cli("generate", folder, "--prompt", "It is", "--max-new-tokens", 3, "--threads", 10000, "--json")
    assert code == 0 and len(json.loads(out)["tokens"]) == 3
    assert f"--threads 10000 is more than the {os.cpu_count()} CPUs here; using {os.cpu_count()}" in err


def test_unknown_device_is_one_line(run_cli):
    assert_user_error(run_cli("generate", SHIPPED / "tiny-rope", "--prompt", "x", "--device", "tpu"), "unknown --device 'tpu'", "auto, cpu or cuda")


@pytest.mark.parametrize("args,needle", [
    (["--repetition-penalty", "0"], "--repetition-penalty must be above 0"),
    (["--stop", ""], "--stop \"\" would stop before the first token"),
])
def test_sampling_options_that_would_do_nothing_useful(run_cli, args, needle):
    assert_user_error(run_cli("generate", SHIPPED / "tiny-rope", "--prompt", "x", *args), needle)


@pytest.mark.parametrize("args", [["--init", "-1"], ["--min", "-5"], ["--min", "0"], ["--init", "nan"]])
def test_calibrate_refuses_temperatures_it_would_reject(run_cli, tmp_path, args):
    text = tmp_path / "t.txt"
    text.write_text("Some text. " * 100)
    assert_user_error(run_cli("calibrate", SHIPPED / "tiny-nope", "--text", text, "--target-length", 512, "--out", tmp_path / "t.json",
                              *args), "must be a positive number")
    assert not (tmp_path / "t.json").exists()


def test_integer_tensors_are_refused_not_cast(model, run_cli):
    tensors = load_file(model / "model.safetensors")
    tensors["model.norm.weight"] = tensors["model.norm.weight"].to(torch.int8)
    save_file(tensors, model / "model.safetensors")
    assert_user_error(run_cli("inspect", model), "1 tensors are not floating point: model.norm.weight (I8)", "dequantize")


def test_gguf_type_that_needs_an_importance_matrix(run_cli, tmp_path):
    assert_user_error(run_cli("export", SHIPPED / "tiny-rope", "--gguf-type", "Q2_K_S", "--out", tmp_path / "m.gguf"),
                      "Q2_K_S needs an importance matrix")
    assert list(tmp_path.iterdir()) == []


def test_output_under_a_file_is_one_line(run_cli, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for command in (["export", SHIPPED / "tiny-rope", "--out", blocker / "m.gguf"],
                    ["export", SHIPPED / "tiny-rope", "--format", "onnx", "--out", blocker / "m-onnx"],
                    ["init", "tiny-rope", blocker / "sub" / "x"]):
        assert_user_error(run_cli(*command), f"{blocker} is a file, not a folder")


def test_a_full_disk_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from edgelm import fileio
    from edgelm.errors import UserError

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fsync_tree", full)
    with pytest.raises(UserError, match="No space left on device"):
        with fileio.atomic_output_file(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"data")
    assert list(tmp_path.iterdir()) == []
