"""Artifacts other tools made, opened by edgelm: a GGUF written by llama.cpp's own converter
(convert_hf_to_gguf.py from the llama-cpp-python source distribution, fetched by `make test`) runs in
every command with llama.cpp's own vocabulary; an ONNX folder written by Optimum's exporter runs and
passes parity; a format nobody on a phone runs is not bundled."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .genai import genai_greedy
from .gguf_edit import rewrite_gguf
from .test_bad_input import assert_user_error, assert_verify_failed

CONVERTER = Path(__file__).resolve().parent.parent / "build" / "llama.cpp-converter" / "convert_hf_to_gguf.py"


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """(model folder, the GGUF llama.cpp's converter wrote from it at f16). The preset tiny-rope has a
    SentencePiece tokenizer.model, as TinyLlama does; the converter does not know the shipped tiny-rope's
    BPE pre-tokenizer (it refuses unknown ones by hash)."""
    from edgelm.models.presets import write_preset

    if not CONVERTER.is_file():
        pytest.fail(f"{CONVERTER} is missing: `make test` fetches it")
    root = tmp_path_factory.mktemp("converted")
    folder = write_preset("tiny-rope", root / "tiny-rope", seed=1)
    gguf = root / "tiny-rope-f16.gguf"
    subprocess.run([sys.executable, str(CONVERTER), str(folder), "--outfile", str(gguf), "--outtype", "f16"],
                   check=True, capture_output=True, text=True)
    return folder, gguf


def test_converter_gguf_generates_as_its_source(run_cli, converted):
    folder, gguf = converted
    code, out, err = run_cli("inspect", gguf, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["arch"], info["engine"], info["written_by"], info["family"]) == ("llama", "llama.cpp", "another tool", None)
    assert info["chat_template"] is True
    results = [run_cli("generate", path, "--prompt", "It is a truth universally acknowledged", "--max-new-tokens", 16, "--json")
               for path in (folder, gguf)]
    assert all(code == 0 for code, _, _ in results), results
    reference, artifact = (json.loads(out) for _, out, _ in results)
    assert artifact["engine"] == "llama.cpp" and reference["tokens"] == artifact["tokens"]


def test_converter_gguf_passes_parity(run_cli, converted):
    folder, gguf = converted
    code, out, err = run_cli("parity", gguf, "--reference", folder, "--tokens", 128, "--device", "cpu", "--max-kld", "1e-3", "--json")
    assert code == 0, err
    report = json.loads(out)
    print(f"\nconvert_hf_to_gguf f16 vs torch over {report['positions']} positions: mean KL {report['mean_kld']:.3g}, "
          f"max |Δlogit| {report['max_abs_logit_diff']:.3g}")
    assert report["positions"] == 128 and report["mean_kld"] <= 1e-3 and report["top1_agreement"] >= 0.99


def test_converter_gguf_bundles_and_runs_from_the_zip(run_cli, converted, tmp_path):
    _, gguf = converted
    assert run_cli("bundle", gguf, "--out", tmp_path / "b", "--zip")[0] == 0
    code, out, err = run_cli("generate", tmp_path / "b.zip", "--prompt", "It is", "--max-new-tokens", 4, "--json")
    assert code == 0, err
    assert json.loads(out)["engine"] == "llama.cpp"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.zip"]  # the unpacked copy is gone


def test_gguf_of_an_arch_nobody_runs(run_cli, converted, tmp_path):
    _, gguf = converted
    alien = rewrite_gguf(gguf, tmp_path / "alien.gguf", arch="mamba9")
    for command in (["inspect"], ["generate", "--prompt", "x"]):
        assert_user_error(run_cli(command[0], alien, *command[1:]), "neither llama.cpp nor edgelm's ggml executor knows arch 'mamba9'")


def test_tokenformer_gguf_bundles_only_for_desktops(run_cli, preset_dir, tmp_path):
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    gguf = export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), tmp_path / "tf.gguf", "f16").path
    assert_user_error(run_cli("bundle", gguf, "--out", tmp_path / "b"), "no mobile runtime can load this", "tokenformer",
                      "--allow-desktop-only")
    assert not (tmp_path / "b").exists()
    code, _, err = run_cli("bundle", gguf, "--out", tmp_path / "b", "--allow-desktop-only")
    assert code == 0, err
    code, out, err = run_cli("generate", tmp_path / "b", "--prompt", "It is", "--max-new-tokens", 3, "--json")
    assert code == 0 and json.loads(out)["engine"].startswith("edgelm ggml executor"), err


SHIPPED_ROPE = Path(__file__).resolve().parent.parent / "examples" / "models" / "tiny-rope"


@pytest.fixture(scope="module")
def optimum_folder(tmp_path_factory):
    """The ONNX folder Optimum's own exporter writes for the shipped tiny-rope (`optimum-cli export onnx
    --task text-generation-with-past`, offline): no genai_config.json, a growing KV cache, position_ids."""
    out = tmp_path_factory.mktemp("optimum") / "tiny-rope-onnx"
    subprocess.run([sys.executable, "-m", "optimum.commands.optimum_cli", "export", "onnx", "--model", str(SHIPPED_ROPE),
                    "--task", "text-generation-with-past", str(out)], check=True, capture_output=True, text=True)
    assert not (out / "genai_config.json").exists() and (out / "model.onnx").is_file()
    return out


def test_optimum_folder_generates_as_its_source(run_cli, optimum_folder):
    code, out, err = run_cli("inspect", optimum_folder, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["written_by"].startswith("another tool, Optimum") and (info["layers"], info["kv_heads"], info["head_dim"]) == (4, 2, 32)
    results = [run_cli("generate", path, "--prompt", "It is a truth universally acknowledged", "--max-new-tokens", 24, "--json")
               for path in (SHIPPED_ROPE, optimum_folder)]
    assert all(code == 0 for code, _, _ in results), results
    reference, artifact = (json.loads(out) for _, out, _ in results)
    assert artifact["engine"].startswith("onnxruntime") and reference["tokens"] == artifact["tokens"]


def test_optimum_folder_passes_parity(run_cli, optimum_folder):
    code, out, err = run_cli("parity", optimum_folder, "--reference", SHIPPED_ROPE, "--tokens", 128, "--max-kld", "1e-6", "--json")
    assert code == 0, err
    report = json.loads(out)  # measured: max |Δlogit| 1.3e-5, mean KL 1.2e-12
    assert report["positions"] == 128 and report["max_abs_logit_diff"] <= 1e-4 and report["top1_agreement"] == 1.0


def test_onnx_folder_without_a_kv_cache_is_one_line(run_cli, optimum_folder, tmp_path):
    import onnx

    folder = tmp_path / "no-cache"
    folder.mkdir()
    (folder / "config.json").write_bytes((optimum_folder / "config.json").read_bytes())
    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["input_ids"], ["logits"])], "g",
                                   [onnx.helper.make_tensor_value_info("input_ids", onnx.TensorProto.INT64, [1, None])],
                                   [onnx.helper.make_tensor_value_info("logits", onnx.TensorProto.INT64, [1, None])])
    onnx.save(onnx.helper.make_model(graph), folder / "model.onnx")
    assert_user_error(run_cli("generate", folder, "--prompt", "x"), "no KV cache edgelm recognises", "text-generation-with-past")


BUILDER_FOLDER = Path(__file__).resolve().parent / "fixtures" / "genai-builder-tiny-rope-int4"  # see its PROVENANCE.md


def test_genai_builder_folder_runs_and_passes_parity(run_cli):
    """The folder onnxruntime-genai's own model builder wrote (int4, from the shipped tiny-rope) runs in
    every command that reads an artifact, and `parity` compares it with its source."""
    code, out, err = run_cli("inspect", BUILDER_FOLDER, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert info["written_by"] == "another tool (no edgelm.json)" and "MatMulNBits" in info["operators"]
    code, out, err = run_cli("parity", BUILDER_FOLDER, "--reference", SHIPPED_ROPE, "--tokens", 128, "--max-kld", "0.02", "--json")
    assert code == 0, err
    report = json.loads(out)  # measured: mean KL 0.0055, top-1 0.95 (edgelm's own int4 export of tiny-nope: 0.0043)
    assert report["positions"] == 128 and report["top1_agreement"] >= 0.9
    code, out, err = run_cli("generate", BUILDER_FOLDER, "--prompt", "It is a truth", "--max-new-tokens", "8")
    assert code == 0 and out.startswith("It is a truth"), err


def test_genai_builder_folder_bundled_for_the_web_says_int4_is_slow_on_wasm(run_cli, tmp_path):
    """No edgelm.json records the builder folder's quantization: the web bundle's manifest reads it from the graph's
    MatMulNBits, so the page and `bundle` warn that int4 is slow on WASM (stranger 42: neither did)."""
    runtime = Path(__file__).resolve().parents[1] / "web" / "node_modules"
    if not (runtime / "onnxruntime-web" / "package.json").is_file():
        pytest.skip("web/node_modules is missing (`make web-runtime`)")
    code, out, err = run_cli("bundle", BUILDER_FOLDER, "--target", "web", "--out", tmp_path / "w")
    assert code == 0, err
    assert json.loads((tmp_path / "w" / "edgelm.json").read_text())["quantization"] == "int4"
    assert "no int4 kernel" in err and "bundle an int8 export" in err


def test_chat_template_from_chat_template_jinja():
    """transformers 5, Optimum and the genai builder put the template in chat_template.jinja."""
    from edgelm.tokenizer import load_tokenizer

    tokenizer = load_tokenizer(BUILDER_FOLDER)
    assert tokenizer.chat_template == (BUILDER_FOLDER / "chat_template.jinja").read_text()


def test_optimum_folder_bundled_for_a_phone_runs_in_onnxruntime_genai(run_cli, optimum_folder, tmp_path):
    """The genai_config edgelm writes for a folder that had none (Optimum's) is one onnxruntime-genai runs:
    vocab size, head count, hidden size and bos/eos/pad ids from config.json and the graph; its greedy tokens
    are edgelm's; `verify` runs it there too, and says why when genai cannot."""
    import onnxruntime_genai as og

    assert run_cli("bundle", optimum_folder, "--out", tmp_path / "b")[0] == 0
    genai = json.loads((tmp_path / "b" / "genai_config.json").read_text())["model"]
    assert {k: genai[k] for k in ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")} == \
        {"vocab_size": 4096, "bos_token_id": 0, "eos_token_id": 0, "pad_token_id": 0}
    assert (genai["decoder"]["num_attention_heads"], genai["decoder"]["hidden_size"]) == (8, 256)
    code, out, err = run_cli("verify", tmp_path / "b")  # it runs in genai; Optimum writes no parity certificate, so verify fails
    assert code == 1 and out.startswith("bundle: ") and "loads and runs" in out and "carries no parity certificate" in err, (out, err)
    assert f"; onnxruntime-genai {og.__version__} runs it too (one token)" in out.splitlines()[0]  # what verify ran, itemised
    code, out, err = run_cli("generate", SHIPPED_ROPE, "--prompt", "It is a truth universally acknowledged", "--max-new-tokens", 24, "--json")
    assert code == 0, err
    expected = json.loads(out)["tokens"]
    prompt = [int(i) for i in og.Tokenizer(og.Model(str(tmp_path / "b"))).encode("It is a truth universally acknowledged")]
    assert genai_greedy(tmp_path / "b", prompt, len(expected)) == expected

    # a bundle whose genai_config lost vocab_size afterwards, its manifest made to match: the graph's record of the file refuses it
    config = tmp_path / "b" / "genai_config.json"
    broken = json.loads(config.read_text())
    del broken["model"]["vocab_size"]
    config.write_text(json.dumps(broken))
    manifest = json.loads((tmp_path / "b" / "edgelm.json").read_text())
    from edgelm.bundle import sha256

    manifest["files"]["genai_config.json"] = {"sha256": sha256(config), "bytes": config.stat().st_size}
    (tmp_path / "b" / "edgelm.json").write_text(json.dumps(manifest))
    assert_verify_failed(run_cli("verify", tmp_path / "b"), "genai_config.json is not the one bundled with model.ort", "edgelm bundle")


def test_optimum_folder_without_the_dims_genai_needs_is_refused_for_a_phone(run_cli, optimum_folder, tmp_path):
    folder = tmp_path / "opt"
    folder.mkdir()
    for path in optimum_folder.iterdir():
        if path.name != "config.json":  # hard links: a symbolic link out of the folder is refused before the check here
            os.link(path, folder / path.name)
    config = json.loads((optimum_folder / "config.json").read_text())
    del config["num_attention_heads"], config["eos_token_id"], config["bos_token_id"]
    (folder / "config.json").write_text(json.dumps(config))
    assert_user_error(run_cli("bundle", folder, "--out", tmp_path / "b"), "onnxruntime-genai on a phone needs",
                      "model.bos_token_id", "model.decoder.num_attention_heads", "config.json")
    assert not (tmp_path / "b").exists()
