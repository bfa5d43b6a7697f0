"""Files from the internet that were made to hurt: nothing is written outside the output, and each is
refused with one line and exit 2."""

import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
from gguf import GGUFValueType

from edgelm.export.gguf import export_gguf
from edgelm.models import open_checkpoint

from .gguf_edit import rewrite_gguf
from .test_bad_input import assert_user_error, assert_verify_failed


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from edgelm.models.presets import write_preset

    root = tmp_path_factory.mktemp("hostile")
    folder = write_preset("tiny-tokenformer", root / "tiny-tokenformer", seed=1)  # runs on edgelm's own executor
    return export_gguf(open_checkpoint(folder), root / "model.gguf", "f32").path


ESCAPES = ["../escaped.txt", "{victim}", "sub/tokenizer.json", "tokenizer.json/../../escaped.txt"]
# every name against generate; the commands that open a GGUF the same way against one of them
CASES = [(name, "generate") for name in ESCAPES] + [(ESCAPES[0], "perplexity"), (ESCAPES[1], "bench")]


@pytest.mark.parametrize("name,command", CASES)
def test_gguf_tokenizer_file_names_cannot_escape(run_cli, gguf_file, tmp_path, name, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    name = name.format(victim=victim)
    evil = rewrite_gguf(gguf_file, tmp_path / "evil.gguf",
                        add={f"edgelm.tokenizer_file.{name}": (list(b"overwritten"), GGUFValueType.ARRAY, GGUFValueType.UINT8)})
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged. " * 4)
    args = {"generate": ["--prompt", "x"], "perplexity": ["--text", text], "bench": ["--new-tokens", 1, "--prompt-tokens", 2]}[command]
    assert_user_error(run_cli(command, evil, *args), "names a tokenizer file edgelm does not know", "evil.gguf")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.gguf", "text.txt", "victim.txt"]
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_gguf_tokenizer_file_of_wrong_type(run_cli, gguf_file, tmp_path):
    evil = rewrite_gguf(gguf_file, tmp_path / "evil.gguf", drop_keys={"edgelm.tokenizer_file.tokenizer.json"},
                        add={"edgelm.tokenizer_file.tokenizer.json": (7, GGUFValueType.INT32)})
    assert_user_error(run_cli("generate", evil, "--prompt", "x"), "is not a text, base64 text or byte array file")
    evil = rewrite_gguf(gguf_file, tmp_path / "evil64.gguf",
                        add={"edgelm.tokenizer_file_base64.tokenizer.model": ("not base64!", GGUFValueType.STRING)})
    assert_user_error(run_cli("generate", evil, "--prompt", "x"), "is not a text, base64 text or byte array file")


def test_rewritten_gguf_still_runs(run_cli, gguf_file, tmp_path):
    """The editing helper itself: a copy with nothing changed generates as the original does."""
    copy = rewrite_gguf(gguf_file, tmp_path / "copy.gguf")
    original = run_cli("generate", gguf_file, "--prompt", "It is", "--max-new-tokens", 5, "--json")
    copied = run_cli("generate", copy, "--prompt", "It is", "--max-new-tokens", 5, "--json")
    assert original[0] == copied[0] == 0, (original, copied)
    assert original[1] == copied[1]


def test_native_gguf_with_missing_tensors_is_refused(run_cli, gguf_file, tmp_path):
    from gguf import GGUFReader

    names = [t.name for t in GGUFReader(str(gguf_file)).tensors]
    for dropped, expected in ((names[:1], f"1 tensors missing: {names[0]}"), (names, f"{len(names)} tensors missing")):
        broken = rewrite_gguf(gguf_file, tmp_path / "broken.gguf", drop_tensors=set(dropped))
        assert_user_error(run_cli("generate", broken, "--prompt", "x"), expected, "export it again")


def test_parity_fails_on_nan_with_valid_json(run_cli, preset_dir, tmp_path):
    import json
    import shutil

    import torch
    from safetensors.torch import load_file, save_file

    good = preset_dir("tiny-rope")
    bad = tmp_path / "nan-model"
    shutil.copytree(good, bad)
    tensors = load_file(bad / "model.safetensors")
    tensors["lm_head.weight"] = torch.full_like(tensors["lm_head.weight"], float("nan"))
    save_file(tensors, bad / "model.safetensors")
    code, out, err = run_cli("parity", bad, "--reference", good, "--tokens", 16, "--device", "cpu", "--max-kld", "0.01", "--json")
    assert code == 1, (out, err)
    report = json.loads(out)  # strict JSON: no bare NaN
    assert report["mean_kld"] is None and "finite logits" in report["failed"] and "mean KL divergence" in report["failed"]
    code, _, err = run_cli("parity", bad, "--reference", good, "--tokens", 16, "--device", "cpu")
    assert code == 1 and "NaN or infinite logits" in err


@pytest.fixture
def bundle_folder(run_cli, gguf_file, tmp_path):
    assert run_cli("bundle", gguf_file, "--out", tmp_path / "b", "--allow-desktop-only")[0] == 0
    return tmp_path / "b"


def _edit_manifest(folder, change):
    import json

    manifest = json.loads((folder / "edgelm.json").read_text())
    change(manifest)
    (folder / "edgelm.json").write_text(json.dumps(manifest))


def test_verify_requires_the_model_among_the_files(run_cli, bundle_folder, tmp_path):
    outside = tmp_path / "outside.gguf"
    outside.write_bytes(b"GGUF")
    _edit_manifest(bundle_folder, lambda m: m.update(model="../outside.gguf"))
    assert_user_error(run_cli("verify", bundle_folder), "is not one of the files it lists")


def test_verify_fails_files_the_manifest_does_not_list(run_cli, bundle_folder):
    (bundle_folder / "payload.sh").write_text("echo hi")
    assert_verify_failed(run_cli("verify", bundle_folder), "payload.sh is in the bundle but not in its manifest")
    assert_user_error(run_cli("generate", bundle_folder, "--prompt", "x", "-n", 1), "payload.sh is in the bundle but not in its manifest")


def test_a_manifest_listing_a_file_twice_fails_verify(run_cli, bundle_folder, tmp_path):
    """Stranger 51: a second entry for the model, first in the manifest, with a forged sha256, passed verify: Python's
    json keeps the last of two equal keys, and an app reading the manifest with a parser that keeps the first would
    check another hash. A key repeated in one object is refused by the one JSON reader (artifact_files.parse_json); in
    a bundle's manifest it is a bundle that is not what its manifest says: verify fails, the commands refuse it."""
    import json
    import zipfile

    manifest = json.loads((bundle_folder / "edgelm.json").read_text())
    name = manifest["model"]
    forged = json.dumps({"sha256": "0" * 64, "bytes": 1})
    text = json.dumps(manifest).replace('"files": {', f'"files": {{{json.dumps(name)}: {forged}, ', 1)
    (bundle_folder / "edgelm.json").write_text(text)
    assert_verify_failed(run_cli("verify", bundle_folder), f'the manifest holds the key "{name}" twice in one object')
    assert_user_error(run_cli("generate", bundle_folder, "--prompt", "x", "-n", 1), f'the manifest holds the key "{name}" twice')
    zipped = tmp_path / "twice-listed.zip"
    with zipfile.ZipFile(zipped, "w") as archive:
        for member in ("edgelm.json", name):
            archive.write(bundle_folder / member, member)
    assert_verify_failed(run_cli("verify", zipped), f'the manifest holds the key "{name}" twice in one object')


def test_a_key_repeated_in_any_json_an_artifact_holds_is_refused(run_cli, tmp_path):
    """The same parser difference in every JSON file edgelm reads (config.json here: transformers' reader takes the
    last hidden_size, a reader keeping the first another): one line naming the file and the key, exit 2."""
    folder = tmp_path / "model"
    shutil.copytree(SHIPPED_ROPE, folder)
    text = (folder / "config.json").read_text()
    (folder / "config.json").write_text(text.replace("{", '{"hidden_size": 8, ', 1))
    assert_user_error(run_cli("inspect", folder), "config.json", 'holds the key "hidden_size" twice in one object')


def test_a_bundle_zipped_twice_is_the_same_bytes(run_cli, gguf_file, tmp_path):
    """Stranger 42: two zips of one GGUF's bundle differed (their entries' times), so a publisher's --sha256 could not
    be made again. (A mobile bundle of an ONNX folder differs in model.ort still: onnxruntime's converter writes its
    kernel type table in hash-map order; docs/mobile.md.)"""
    import hashlib
    import time

    digests = []
    for name in ("one.zip", "two.zip"):
        assert run_cli("bundle", gguf_file, "--out", tmp_path / name, "--allow-desktop-only")[0] == 0
        digests.append(hashlib.sha256((tmp_path / name).read_bytes()).hexdigest())
        time.sleep(2.1)  # a zip's times have 2-second steps
    assert digests[0] == digests[1]
    code, out, err = run_cli("verify", tmp_path / "one.zip")
    assert code == 0 and "bundle: 1 file matches its sha256" in out, (code, out, err)  # the zip verifies as before


def test_verify_fails_a_bundle_short_of_a_file_its_manifest_lists(run_cli, bundle_folder):
    """Stranger 42: a changed or an added file failed verify (exit 1) and a removed one was refused as bad input
    (exit 2, "is missing"): each is a bundle that is not what its manifest says."""
    import json

    name = json.loads((bundle_folder / "edgelm.json").read_text())["model"]
    (bundle_folder / name).unlink()
    assert_verify_failed(run_cli("verify", bundle_folder), f"{name} is in the manifest but not in the bundle")


def test_verify_refuses_a_manifest_of_another_version(run_cli, bundle_folder):
    _edit_manifest(bundle_folder, lambda m: m.update(manifest_version=99))
    assert_user_error(run_cli("verify", bundle_folder), "manifest_version 99")


def test_zip_is_checked_before_anything_is_unpacked(run_cli, bundle_folder, tmp_path, monkeypatch):
    """An entry larger than its manifest says (a zip bomb's way in) is refused from the zip's directory."""
    import zipfile

    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in bundle_folder.iterdir():
            out.write(path, path.name)
        out.writestr("zeros.bin", b"\0" * (8 << 20))  # 8 MB of zeros, a few KB packed
    monkeypatch.setenv("TMPDIR", str(tmp_path / "scratch"))
    (tmp_path / "scratch").mkdir()
    assert_verify_failed(run_cli("verify", archive), "zeros.bin is in the archive but not in its manifest")
    assert list((tmp_path / "scratch").iterdir()) == []


def test_a_zip_holding_a_name_twice_says_so(run_cli, bundle_folder, tmp_path):
    """Stranger finding: refused, but as "the archive holds 7 entries (6 names); a bundle has at most 64"."""
    import warnings
    import zipfile

    archive = tmp_path / "twice.zip"
    with zipfile.ZipFile(archive, "w") as out, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns of the duplicate name it is asked to write
        for path in bundle_folder.iterdir():
            out.write(path, path.name)
        out.write(bundle_folder / "edgelm.json", "edgelm.json")
    assert_verify_failed(run_cli("verify", archive), "the archive holds 'edgelm.json' more than once")



@pytest.mark.parametrize("where", ["before", "after"])
def test_a_zip_with_bytes_around_it_fails_verify(run_cli, bundle_folder, tmp_path, where):
    """Stranger 24: a bundle zip with 1,000 bytes prepended or appended passed verify (zipfile reads past them): one file
    that is a bundle and something else. The genuine zip passes; with bytes around it, verify fails and generate refuses."""
    import zipfile

    archive = tmp_path / "b.zip"
    with zipfile.ZipFile(archive, "w") as out:
        for path in sorted(bundle_folder.iterdir()):
            out.write(path, path.name)
    assert run_cli("verify", archive)[0] == 0
    junk = b"#!/bin/sh\necho hi\n" + b"x" * 1000
    archive.write_bytes(junk + archive.read_bytes() if where == "before" else archive.read_bytes() + junk)
    assert_verify_failed(run_cli("verify", archive), "the file holds bytes before or after its zip archive")
    assert_user_error(run_cli("generate", archive, "--prompt", "x", "-n", 1), "the file holds bytes before or after its zip archive")

@pytest.mark.parametrize("target", ["{model}", "{model}/model.safetensors", "{model}/sub"])
def test_export_never_replaces_its_input(run_cli, preset_dir, tmp_path, target):
    import shutil

    model = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), model)
    before = sorted(p.name for p in model.iterdir())
    assert_user_error(run_cli("export", model, "--out", target.format(model=model), "--force"), "overlaps the input")
    assert sorted(p.name for p in model.iterdir()) == before


def test_bundle_never_replaces_its_input(run_cli, bundle_folder):
    assert_user_error(run_cli("bundle", bundle_folder, "--out", bundle_folder, "--force"), "overlaps the input")


@pytest.mark.parametrize("filename", ["../outside.onnx", "/etc/hostname", "sub/model.onnx", ".."])
def test_onnx_model_path_stays_in_its_folder(run_cli, tmp_path, filename):
    import json

    folder = tmp_path / "onnx"
    folder.mkdir()
    (tmp_path / "outside.onnx").write_bytes(b"")
    decoder = {"filename": filename, "num_hidden_layers": 1, "num_key_value_heads": 1, "head_size": 8}
    (folder / "genai_config.json").write_text(json.dumps({"model": {"context_length": 16, "decoder": decoder}}))
    for command in (["inspect"], ["generate", "--prompt", "x"], ["bundle", "--out", tmp_path / "b"]):
        assert_user_error(run_cli(command[0], folder, *command[1:]), "is not a plain file name inside the folder")
    assert not (tmp_path / "b").exists()


def test_export_refuses_non_finite_weights(run_cli, preset_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    model = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), model)
    tensors = load_file(model / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = float("inf")
    save_file(tensors, model / "model.safetensors")
    for fmt, out in (("gguf", tmp_path / "m.gguf"), ("onnx", tmp_path / "m-onnx")):
        assert_user_error(run_cli("export", model, "--format", fmt, "--quant", "f32", "--out", out),
                          "model.layers.1.mlp.up_proj.weight holds NaN or infinite values")
        assert not out.exists()


def _with_huge_mlp_weight(source, target):
    """A weight past float16's range outside attention (so the q/k/v bound does not see it first)."""
    import shutil

    from safetensors.torch import load_file, save_file

    shutil.copytree(source, target)
    tensors = load_file(target / "model.safetensors")
    tensors["model.layers.1.mlp.up_proj.weight"][3, 4] = 1e6
    save_file(tensors, target / "model.safetensors")
    return target


def test_f16_export_refuses_a_weight_past_f16_range(run_cli, preset_dir, tmp_path):
    model = _with_huge_mlp_weight(preset_dir("tiny-nope"), tmp_path / "model")
    assert_user_error(run_cli("export", model, "--format", "onnx", "--quant", "f16", "--out", tmp_path / "m-onnx"),
                      "beyond float16's 65504, so f16 would make it infinite")
    assert_user_error(run_cli("export", model, "--out", tmp_path / "m.gguf"), "beyond float16's 65504", "--quant f32 (or bf16 for GGUF)")
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_temperature_past_f16_is_refused_at_every_quant(run_cli, preset_dir, tmp_path):
    """λ = 1e30 folds into q weights of ~1e28: fine in an f32 file, infinite in the f16 the runtime computes
    attention in, so it is refused at f32 too (bad_input_catalogue.py has the one-head rows)."""
    import json

    temps = tmp_path / "temps.json"
    temps.write_text(json.dumps({"layers": [[1e30] * 8] * 4}))
    for quant in ("f32", "f16", "int8"):
        assert_user_error(run_cli("export", preset_dir("tiny-nope"), "--quant", quant, "--head-temperatures", temps,
                                  "--out", tmp_path / "m.gguf"), "layer 0's queries", "past float16's 65504", "smaller head temperatures")
    assert [p.name for p in tmp_path.iterdir()] == ["temps.json"]


def test_llama_cpp_gguf_context_past_memory_is_refused_before_llama_cpp_allocates(run_cli, preset_dir, tmp_path, monkeypatch):
    """A llama.cpp GGUF declaring 2^24 positions skipped the KV memory check: 60 s of allocation, then
    'the file is damaged'. The cache is sized from the keys llama.cpp sizes it by (tiny-rope: 1024 bytes per
    position at f16, llama.cpp's own 'KV buffer size = 2.00 MiB' at 2048) and refused before Llama() runs."""
    from edgelm.formats.gguf import GGUF
    from edgelm.runtime import backend, llama_cpp_backend

    exported = export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "m.gguf", "f16").path
    assert GGUF(exported).llama_cpp_cache_bytes(2048, False) == 2 * 2**20
    huge = rewrite_gguf(exported, tmp_path / "huge.gguf", add={"llama.context_length": (1 << 24, GGUFValueType.UINT32)},
                        drop_keys={"llama.context_length"})
    monkeypatch.setattr(backend, "available_memory", lambda: 8 << 30)  # this machine's 21 GB would hold the 17 GB

    def never(*args, **kwargs):
        raise AssertionError("llama.cpp was asked to allocate")

    monkeypatch.setattr(llama_cpp_backend.LlamaCppBackend, "__init__", never)
    # the file's context is no longer the default (that is min(training context, 4096)): asked for, it is checked
    assert_user_error(run_cli("generate", huge, "--prompt", "x", "-c", 1 << 24), "a context of 16777216 tokens needs 17.2 GB of KV cache")
    text = tmp_path / "t.txt"
    text.write_text("It is a truth. " * 20)
    assert_user_error(run_cli("perplexity", huge, "--text", text, "--ctx", 10_000_000), "a context of 10000000 tokens needs",
                      "if the context asked for is what asks for it", "--ctx in perplexity, --tokens in parity")


@pytest.fixture(scope="module")
def llama_gguf(tmp_path_factory):
    from pathlib import Path

    models = Path(__file__).resolve().parents[1] / "examples" / "models"
    return export_gguf(open_checkpoint(models / "tiny-rope"), tmp_path_factory.mktemp("llama") / "rope.gguf", "f32",
                       certificate=False).path


@pytest.mark.parametrize("key,value,vtype,needle", [
    ("llama.block_count", 0, GGUFValueType.UINT32, "block_count is 0, not from 1 to 512"),
    ("llama.block_count", 600, GGUFValueType.UINT32, "block_count is 600"),
    ("llama.expert_count", 8, GGUFValueType.UINT32, "expert_count 8 with expert_used_count 0"),
    ("llama.expert_used_count", 2, GGUFValueType.UINT32, "expert_count 0 and expert_used_count 2"),
    ("llama.rope.scaling.type", "bogus", GGUFValueType.STRING, "rope.scaling.type is 'bogus'"),
])
def test_keys_llama_cpp_asserts_on_are_refused_before_it_loads(run_cli, llama_gguf, tmp_path, key, value, vtype, needle):
    """A stranger's finding: one key changed (block_count 0, an expert_count added) and llama.cpp aborted the
    process in load_hparams' GGML_ASSERTs: exit 134 and no message from verify, generate and chat; bundle
    shipped the file. Each is now one line, exit 2, from every command that opens a GGUF."""
    evil = rewrite_gguf(llama_gguf, tmp_path / "evil.gguf", drop_keys={key}, add={key: (value, vtype)})
    for command in (("generate", evil, "--prompt", "x"), ("verify", evil), ("inspect", evil), ("bundle", evil, "--out", tmp_path / "b")):
        assert_user_error(run_cli(*command), needle)


@pytest.mark.parametrize("kind", ["uint32", "float32", "int32 array", "string"])
@pytest.mark.parametrize("which", ["llama", "tokenformer"])
def test_an_edgelm_key_of_another_type_is_one_line_or_runs(run_cli, llama_gguf, gguf_file, tmp_path, kind, which):
    """Stranger 35: edgelm.config holding a number (or an array) where JSON text belongs was a 53-line traceback from
    `inspect`, the first command run on a downloaded file; stranger 37: general.file_type as an array, from inspect and
    bundle. Every edgelm.* key of a llama and a tokenformer GGUF, its architecture, file type and chat template retyped in turn:
    inspect, generate and bundle either run or refuse it in one line, never a traceback."""
    from gguf import GGUFReader

    source = llama_gguf if which == "llama" else gguf_file
    value = {"uint32": (5, GGUFValueType.UINT32), "float32": (0.5, GGUFValueType.FLOAT32),
             "int32 array": ([1, 2], GGUFValueType.ARRAY, GGUFValueType.INT32), "string": ("x", GGUFValueType.STRING)}[kind]
    keys = [key for key in GGUFReader(str(source)).fields if key.startswith("edgelm.") and not key.startswith("edgelm.parity.")]
    assert "edgelm.config" in keys and len(keys) >= 5, keys
    for key in keys + ["general.architecture", "general.file_type", "tokenizer.chat_template"]:
        evil = rewrite_gguf(source, tmp_path / "evil.gguf", drop_keys={key}, add={key: value})
        shutil.rmtree(tmp_path / "b", ignore_errors=True)
        for command in (("inspect", evil), ("generate", evil, "--prompt", "It", "--max-new-tokens", 1), ("bundle", evil, "--out", tmp_path / "b")):
            code, out, err = run_cli(*command)
            assert code == 0 or (code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1), (key, command, code, err[-800:])


def _vocab_edits(gguf_path):
    from gguf import GGUFReader

    tokens = list(GGUFReader(str(gguf_path)).fields["tokenizer.ggml.tokens"].contents())
    tokens[300] = tokens[299]
    return {
        "no vocabulary": ({"tokenizer.ggml.model": ("none", GGUFValueType.STRING)}, "it has no vocabulary (tokenizer.ggml.model is 'none')"),
        "a token twice": ({"tokenizer.ggml.tokens": (tokens, GGUFValueType.ARRAY, GGUFValueType.STRING)},
                          f"its vocabulary holds the token {tokens[299]!r} 2 times"),
        "bos to add, none given": ({"tokenizer.ggml.model": ("gemma4", GGUFValueType.STRING),  # no default bos id
                                    "tokenizer.ggml.bos_token_id": (99999, GGUFValueType.UINT32),
                                    "tokenizer.ggml.add_bos_token": (True, GGUFValueType.BOOL)}, "its vocabulary has no bos token"),
        "RWKV without an unknown token": ({"tokenizer.ggml.model": ("rwkv", GGUFValueType.STRING),  # stranger 25
                                           "tokenizer.ggml.unknown_token_id": (99999, GGUFValueType.UINT32)}, "its vocabulary has no unknown token"),
    }


@pytest.mark.parametrize("case", ["no vocabulary", "a token twice", "bos to add, none given", "RWKV without an unknown token"])
def test_vocabularies_llama_cpp_aborts_on_are_refused(run_cli, llama_gguf, tmp_path, case):
    """Stranger 24: tokenizer.ggml.model 'none' (a value llama.cpp accepts) or a vocabulary of one token 4,096 times
    killed generate, verify and chat (SIGABRT in llama-vocab.cpp's asserts, a gdb backtrace or no word). Each file is
    first shown to abort llama.cpp itself (tokenizing 'héllo 😀' with its bos and back), then refused in one line by every command."""
    import subprocess
    import sys

    add, needle = _vocab_edits(llama_gguf)[case]
    evil = rewrite_gguf(llama_gguf, tmp_path / "evil.gguf", drop_keys=set(add), add=add)
    raw = subprocess.run([sys.executable, "-c", "import sys, llama_cpp; m = llama_cpp.Llama(sys.argv[1], verbose=False, n_ctx=64); "
                          "m.detokenize(m.tokenize('héllo 😀'.encode(), add_bos=True))", evil], capture_output=True, timeout=120)
    assert raw.returncode == -signal.SIGABRT, raw.stderr[-300:]
    for command in (("generate", evil, "--prompt", "x"), ("verify", evil), ("chat", evil), ("bundle", evil, "--out", tmp_path / "b")):
        assert_user_error(run_cli(*command), needle)


def test_a_bos_id_past_the_vocabulary_falls_back_as_in_llama_cpp(run_cli, llama_gguf, tmp_path):
    """The control: a GPT-2 vocabulary's bos id past its end is replaced by llama.cpp's default (11), which it runs; so
    does edgelm."""
    add = {"tokenizer.ggml.bos_token_id": (99999, GGUFValueType.UINT32), "tokenizer.ggml.add_bos_token": (True, GGUFValueType.BOOL)}
    odd = rewrite_gguf(llama_gguf, tmp_path / "odd.gguf", drop_keys=set(add), add=add)
    code, out, err = run_cli("generate", odd, "--prompt", "It is", "--max-new-tokens", 2)
    assert code == 0 and out.strip(), err


def test_tokenformer_without_rotary_runs(run_cli, gguf_file, tmp_path):
    """rope.dimension_count 0 (no rotary: the graph reads no positions) aborted ggml ('tensor buffer not set'):
    the executor set an input the graph had left unallocated."""
    no_rotary = rewrite_gguf(gguf_file, tmp_path / "nope.gguf", drop_keys={"tokenformer.rope.dimension_count"},
                             add={"tokenformer.rope.dimension_count": (0, GGUFValueType.UINT32)})
    code, out, err = run_cli("generate", no_rotary, "--prompt", "It is", "--max-new-tokens", 4)
    assert code == 0 and out.strip(), err


def test_llama_cpp_log_lines_do_not_reach_the_terminal(preset_dir, tmp_path):
    """A GGUF declaring 1 position, run with -c 8: edgelm's note is the one line on stderr. llama.cpp's own
    'n_ctx_seq (256) > n_ctx_train (1)' came too: llama-cpp-python maps ggml's WARN level onto ERROR and
    prints it with verbose=False (stranger finding)."""
    import subprocess
    import sys

    exported = export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "m.gguf", "f16").path
    short = rewrite_gguf(exported, tmp_path / "short.gguf", add={"llama.context_length": (1, GGUFValueType.UINT32)},
                         drop_keys={"llama.context_length"})
    done = subprocess.run([sys.executable, "-m", "edgelm", "generate", short, "--prompt", "It is", "--max-new-tokens", "2", "-c", "8"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == ["note: a context of 8 tokens is above the 1 positions the model declares"], done.stderr


SHIPPED_ROPE = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope"  # a tokenizer.json, 4096 rows


def _with_tokenizer(source, target, change):
    import json
    import shutil

    shutil.copytree(source, target)
    data = json.loads((target / "tokenizer.json").read_text())
    change(data)
    (target / "tokenizer.json").write_text(json.dumps(data))
    return target


def _token_past_the_embedding(data):
    data["added_tokens"].append({"id": 4096, "content": "<x>", "single_word": False, "lstrip": False, "rstrip": False,
                                 "normalized": False, "special": True})


COMMANDS_ON_A_FOLDER = {
    "generate": ["generate", "{m}", "--prompt", "<x> hi"], "inspect": ["inspect", "{m}"],
    "export gguf": ["export", "{m}", "--out", "{t}/x.gguf"], "export onnx": ["export", "{m}", "--format", "onnx", "--out", "{t}/x-onnx"],
}


@pytest.mark.parametrize("command", COMMANDS_ON_A_FOLDER)
def test_a_tokenizer_with_ids_past_the_embedding_is_refused(run_cli, tmp_path, command):
    """Stranger finding: an added token with id 4096 beside a 4096-row embedding was a traceback in generate
    (torch's index out of range) and export --format gguf, and an ONNX export exited 0 and failed at the token."""
    folder = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", _token_past_the_embedding)
    args = [a.format(m=folder, t=tmp_path) for a in COMMANDS_ON_A_FOLDER[command]]
    assert_user_error(run_cli(*args), "m/tokenizer.json: the tokenizer has token ids up to 4096; the model's embedding has 4096 rows")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_onnx_folder_whose_tokenizer_passes_its_embedding_is_refused(run_cli, tmp_path):
    """The same tokenizer put into an ONNX folder afterwards: refused at opening against genai_config's vocab_size;
    and a graph that fails on its tokens at run time is one line, not onnxruntime's traceback."""
    import json

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32").path
    data = json.loads((folder / "tokenizer.json").read_text())
    _token_past_the_embedding(data)
    (folder / "tokenizer.json").write_text(json.dumps(data))
    assert_user_error(run_cli("generate", folder, "--prompt", "<x> hi"), "onnx/tokenizer.json: the tokenizer has token ids up to 4096")
    genai = json.loads((folder / "genai_config.json").read_text())
    genai["model"]["vocab_size"] = 5000  # a folder that lies about its embedding gets to the graph
    (folder / "genai_config.json").write_text(json.dumps(genai))
    assert_user_error(run_cli("generate", folder, "--prompt", "<x> hi"), "onnxruntime could not run model.onnx on these tokens")


def test_a_bpe_tokenizer_without_merges_is_refused_before_a_gguf_is_made(run_cli, tmp_path):
    """Stranger finding: llama.cpp loads no GGUF whose BPE vocabulary has no merges; the export's own check of the
    file blamed the temporary file ('.s.gguf.partial-…: the file is damaged')."""
    def no_merges(data):
        data["model"]["merges"] = []

    folder = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", no_merges)
    assert_user_error(run_cli("export", folder, "--out", tmp_path / "s.gguf"), "m/tokenizer.json: this BPE tokenizer has no merges")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_an_error_about_the_output_being_made_names_the_output(tmp_path):
    """A check of the output as made (the certificate opens it) names the temporary path: re-pointed at the target."""
    from edgelm.errors import UserError
    from edgelm.fileio import atomic_output_dir, atomic_output_file

    with pytest.raises(UserError) as raised:
        with atomic_output_file(tmp_path / "x.gguf") as made:
            raise UserError("llama.cpp could not load this GGUF", made, "export it again")
    assert raised.value.line() == (f"{tmp_path / 'x.gguf'}: llama.cpp could not load this GGUF (the output, checked before it was written; "
                                   "nothing was written) — export it again")
    with pytest.raises(UserError) as raised:
        with atomic_output_dir(tmp_path / "out") as made:
            raise UserError("bad", made / "genai_config.json")
    assert raised.value.path == tmp_path / "out" / "genai_config.json"
    assert list(tmp_path.iterdir()) == []


def test_a_sentencepiece_tokenizer_without_byte_pieces_never_reaches_llama_cpp(run_cli, preset_dir, tmp_path):
    """Stranger finding: a tokenizer.model trained without byte_fallback exported to GGUF (exit 0), then any character
    outside its pieces ("日本") made llama.cpp throw out of llama_tokenize: the process aborted, exit 134. Refused at
    export, and a GGUF whose llama vocabulary has no byte tokens is refused when opened."""
    import shutil

    import sentencepiece as spm
    from gguf import GGUFReader

    text = tmp_path / "text.txt"
    text.write_text((Path(__file__).resolve().parents[1] / "examples" / "data" / "emma.txt").read_text(encoding="utf-8")[:200_000])
    spm.SentencePieceTrainer.train(input=str(text), model_prefix=str(tmp_path / "sp"), vocab_size=400, model_type="bpe", minloglevel=2)
    folder = shutil.copytree(preset_dir("tiny-rope"), tmp_path / "m")
    shutil.copy(tmp_path / "sp.model", folder / "tokenizer.model")
    assert_user_error(run_cli("export", folder, "--out", tmp_path / "sp.gguf"), "m/tokenizer.model: this SentencePiece tokenizer has no byte pieces")
    assert not (tmp_path / "sp.gguf").exists()

    exported = export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "ok.gguf", "f16").path
    types = [int(t) for t in GGUFReader(str(exported)).fields["tokenizer.ggml.token_type"].contents()]
    assert 6 in types
    unbytes = rewrite_gguf(exported, tmp_path / "nobytes.gguf", drop_keys={"tokenizer.ggml.token_type"},
                           add={"tokenizer.ggml.token_type": ([1 if t == 6 else t for t in types], GGUFValueType.ARRAY, GGUFValueType.INT32)})
    assert_user_error(run_cli("generate", unbytes, "--prompt", "日本"), "nobytes.gguf: its SentencePiece (llama) vocabulary has no byte pieces")


@pytest.mark.parametrize("role", ["bos_token", "eos_token"])
def test_a_special_token_the_vocabulary_lacks_is_refused(run_cli, tmp_path, role):
    """Stranger finding: tokenizer_config.json naming bos_token '<s>' and eos_token '</s>' that tokenizer.json lacks ran
    with neither (no word), and its GGUF had no bos/eos keys, so llama.cpp took token 11 ('+') for both."""
    import json

    folder = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", lambda data: None)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config[role] = {"bos_token": "<s>", "eos_token": {"content": "</s>", "special": True}}[role]
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    for args in (["generate", folder, "--prompt", "It is"], ["export", folder, "--out", tmp_path / "x.gguf"]):
        assert_user_error(run_cli(*args), f"m/tokenizer_config.json: {role} '{'<s>' if role == 'bos_token' else '</s>'}' is no token of tokenizer.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]


def test_a_context_llama_cpp_cannot_allocate_is_not_called_a_damaged_file(run_cli, preset_dir, tmp_path):
    """Stranger finding: -c 10,000,000 on a tiny GGUF passed the KV-cache check (10 GB) and llama.cpp then failed to
    allocate 176 GB of compute buffers, reported as 'the file is damaged'. Now the context is named."""
    exported = export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "m.gguf", "f16").path
    assert_user_error(run_cli("-q", "generate", exported, "--prompt", "x", "-c", 10_000_000),
                      "m.gguf: llama.cpp could not allocate a context of 10,000,000 tokens", "ask for a shorter context (--ctx-size")


def _backtracking_split(data):
    """A pre-tokenizer regex whose backtracking passes onig's retry limit on a sentence ending in '!'."""
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(\\w+\\s?)*$"}, "behavior": "Isolated", "invert": False}, data["pre_tokenizer"]]}


@pytest.mark.parametrize("command", [["generate", "{m}", "--prompt", "It is a truth universally acknowledged that a single man in possession!"],
                                     ["perplexity", "{m}", "--text", "{t}/text.txt", "--ctx", "64"]])
def test_a_tokenizer_whose_rules_panic_is_one_line(tmp_path, command):
    """Stranger round 10: tokenizers (Rust) panics on such a regex; pyo3's PanicException is a BaseException
    that `except Exception` missed (a traceback, exit 1), and Rust's panic hook wrote 'thread … panicked'
    and a backtrace (RUST_BACKTRACE=1) to descriptor 2 before it. Now the whole stderr is one line, exit 2."""
    import os
    import subprocess
    import sys

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", _backtracking_split)
    (tmp_path / "text.txt").write_text("It is a truth universally acknowledged that a single man in possession!\n" * 20)
    argv = [arg.format(m=model, t=tmp_path) for arg in command]
    done = subprocess.run([sys.executable, "-m", "edgelm", *argv], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"RUST_BACKTRACE": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and "the tokenizer failed while encoding a text" in done.stderr, done.stderr


THREADED_TOKENIZERS = """
import sys, threading
from edgelm import descriptor2
from edgelm.tokenizer import load_tokenizer
descriptor2.for_the_program().__enter__()  # the edgelm program's hold of descriptor 2, which library use does not take
first, second = load_tokenizer(sys.argv[1]), load_tokenizer(sys.argv[2])
long_text = "It is a truth universally acknowledged, that a single man in possession of a good fortune. " * 3000
failures = []

def run(work):
    try:
        for _ in range(40):
            work()
    except BaseException as exc:
        failures.append(repr(exc))

works = [lambda: first.decode(first.encode("Emma Woodhouse, handsome, clever and rich")),  # two tokenizers, two threads
         lambda: second.encode("with a comfortable home and happy disposition", special=False),
         lambda: first.encode(long_text),  # and one shared: a long encode beside short ones that set encode_special_tokens
         lambda: first.encode("<|endoftext|> seemed to unite", special=False)]
threads = [threading.Thread(target=run, args=(work,)) for work in works]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
print("failures:", failures)
"""


def test_tokenizers_used_from_many_threads_at_once_neither_hang_nor_collide(tmp_path):
    """Stranger 50: each tokenizer call pointed descriptor 2 at a pipe and back on its own, so two threads interleaving
    left one reading another's pipe for ever (four threads chatting with one model, or two models in two threads,
    hung the process); and a Rust tokenizer encoding in one thread while another set its encode_special_tokens raised
    "RuntimeError: Already borrowed". Run in a child, so that a hang fails the test instead of stopping the suite."""
    import subprocess
    import sys

    second = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", lambda data: None)
    done = subprocess.run([sys.executable, "-c", THREADED_TOKENIZERS, str(SHIPPED_ROPE), str(second)], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "failures: []" and done.stderr == "", done


GGUF_LOADS_BESIDE_TOKENIZING = """
import os, sys, threading
import edgelm
from edgelm import descriptor2
from edgelm.tokenizer import load_tokenizer
descriptor2.for_the_program().__enter__()
tokenizer, failures = load_tokenizer(sys.argv[2]), []

def run(work, times):
    try:
        for _ in range(times):
            work()
    except BaseException as exc:
        failures.append(repr(exc))

threads = [threading.Thread(target=run, args=(lambda: edgelm.load(sys.argv[1]).close(), 30)),
           threading.Thread(target=run, args=(lambda: tokenizer.encode("It is a truth universally acknowledged"), 3000))]
for thread in threads:
    thread.start()
for thread in threads:
    thread.join()
os.write(2, b"standard error is still standard error\\n")
print("failures:", failures)
"""


def test_a_gguf_loaded_beside_a_tokenizer_call_leaves_stderr_as_it_was(tmp_path):
    """The same descriptor, the same layer: llama-cpp-python's Llama() points descriptor 2 at /dev/null and back while
    it loads; beside a tokenizer's hold in another thread it put back the hold's pipe, whose reader was gone: standard
    error then failed (BrokenPipeError). A load runs alone (descriptor2.alone)."""
    import subprocess
    import sys

    gguf = export_gguf(open_checkpoint(SHIPPED_ROPE), tmp_path / "rope.gguf", "f16", certificate=False).path
    done = subprocess.run([sys.executable, "-c", GGUF_LOADS_BESIDE_TOKENIZING, str(gguf), str(SHIPPED_ROPE)], capture_output=True,
                          text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "failures: []", done
    assert done.stderr == "standard error is still standard error\n", done.stderr


HELPERS_BESIDE_GENERATING = """
import subprocess, sys, threading
import edgelm
model, going = edgelm.load(sys.argv[1]), True

def generate():
    while going:
        model.generate("It is a truth universally acknowledged", max_new_tokens=4)

thread = threading.Thread(target=generate)
thread.start()
ends = [subprocess.run(["sh", "-c", "sleep 0.2; echo helper >&2; echo done"], stdout=subprocess.PIPE).returncode  # stderr: ours
        for _ in range(20)]
going = False
thread.join()
print("helpers:", ends)
"""


def test_a_process_that_imports_edgelm_keeps_its_stderr_while_a_model_tokenizes(tmp_path):
    """Stranger 52: a tokenizer call pointed the process's descriptor 2 at a pipe in library use too; a helper process
    another thread started meanwhile inherited it and died of SIGPIPE once the call closed it (15 of 20 on an ONNX
    folder), and other threads' lines past its 64 KB were lost. Only the edgelm program holds it (descriptor2)."""
    import subprocess
    import sys

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32", certificate=False).path  # quick steps: many calls
    done = subprocess.run([sys.executable, "-c", HELPERS_BESIDE_GENERATING, str(folder)], capture_output=True, text=True, timeout=240)
    assert done.returncode == 0 and done.stdout.strip() == "helpers: " + str([0] * 20), done


def test_a_model_loads_where_python_has_no_stderr(tmp_path):
    """Stranger 50: under pythonw or a windowed build sys.stderr is None, and a model folder's tokenizer was refused as
    damaged ("'NoneType' object has no attribute 'flush'"); with descriptor 2 closed (`2>&-`) too."""
    import shlex
    import subprocess
    import sys

    script = (f"import sys\nsys.stderr = None\nimport edgelm\nm = edgelm.load({str(SHIPPED_ROPE)!r})\n"
              "print(repr(m.generate('It is a truth', max_new_tokens=4)))\n")
    for stderr in (subprocess.PIPE, subprocess.DEVNULL):
        done = subprocess.run([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=stderr, text=True, timeout=240)
        assert done.returncode == 0 and done.stdout.startswith("'"), done
    closed = subprocess.run(f"{sys.executable} -c {shlex.quote(script.replace('sys.stderr = None', 'pass'))} 2>&-", shell=True,
                            stdout=subprocess.PIPE, text=True, timeout=240)
    assert closed.returncode == 0 and closed.stdout.startswith("'"), closed


def _longer_token_in_merges(data):
    """The token '.' renamed to a longer one in the vocabulary and in every merge (stranger 44): a merge's result is
    then no vocabulary entry; tokenizers 0.23's BPE loader panics slicing it, 0.22's refuses it in an error."""
    longer = "\u011b]0;PWNED-TITLE\u0107\u011b[41;97mRED\u011b[0m\u011b[2K."  # ESC ]0;…BEL ESC[41;97m…, byte-level encoded
    data["model"]["vocab"][longer] = data["model"]["vocab"].pop(".")
    data["model"]["merges"] = [[longer if piece == "." else piece for piece in merge] for merge in data["model"]["merges"]]


@pytest.mark.parametrize("command", ["inspect", "generate", "export"])
def test_a_tokenizer_that_panics_while_loading_is_one_line(tmp_path, command):
    """Rust's panic message (180 lines under RUST_BACKTRACE=1) reached the terminal above the one line when the panic
    came in Tokenizer.from_file rather than in an encoding (stranger 44): the load's descriptor 2 is held too."""
    import os
    import subprocess
    import sys

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", _longer_token_in_merges)
    argv = [command, str(model)] + {"generate": ["--prompt", "It is"], "export": ["--out", str(tmp_path / "x.gguf")]}.get(command, [])
    done = subprocess.run([sys.executable, "-m", "edgelm", *argv], capture_output=True, text=True, timeout=300,
                          env=os.environ | {"RUST_BACKTRACE": "1"})
    assert done.returncode == 2, done.stderr
    assert done.stderr.splitlines() == [done.stderr.strip()] and "tokenizer.json" in done.stderr, done.stderr
    assert not (tmp_path / "x.gguf").exists()


def _title_setting_full_stop(data):
    """'.' renamed to ESC ]0;PWNED BEL U+202E '.' (byte-level encoded: ESC is U+011B, BEL U+0107, U+202E's UTF-8 bytes
    U+00E2 U+0122 U+00AE), the merges using it dropped: the shipped model's greedy continuation of "It is a truth" begins
    with it."""
    data["model"]["vocab"]["\u011b]0;PWNED\u0107\u00e2\u0122\u00ae."] = data["model"]["vocab"].pop(".")
    data["model"]["merges"] = [merge for merge in data["model"]["merges"] if "." not in merge]


def test_generated_control_characters_are_spelled_out_in_a_terminal(tmp_path):
    """A model's vocabulary can hold terminal escapes (set the title, write the clipboard, erase a line) and bidi overrides:
    in a terminal generate and chat show them spelled out (stranger 44: the title changed; stranger 47: U+202E and --json);
    piped, the text is the model's own."""
    import os
    import subprocess
    import sys

    import pexpect

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", _title_setting_full_stop)
    argv = ["-m", "edgelm", "generate", str(model), "--prompt", "It is a truth", "--max-new-tokens", "4", "--temperature", "0"]
    child = pexpect.spawn(sys.executable, argv, encoding="utf-8", timeout=300, dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "It is a truth\\x1b]0;PWNED\\x07\\u202e." in child.before, child.before
    assert "\x1b]0;" not in child.before and "\u202e" not in child.before
    piped = subprocess.run([sys.executable, *argv], capture_output=True, text=True, timeout=300, env=os.environ)
    assert piped.returncode == 0 and piped.stdout.startswith("It is a truth\x1b]0;PWNED\x07\u202e."), piped
    # --json on a terminal: every character past ASCII as its \u escape, the same JSON (stranger 47: C1 and U+202E went raw)
    child = pexpect.spawn(sys.executable, [*argv, "--json"], encoding="utf-8", timeout=300, dimensions=(40, 120))
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "\\u202e" in child.before and "\u202e" not in child.before and "\x07" not in child.before, child.before
    child = pexpect.spawn(sys.executable, ["-m", "edgelm", "chat", str(model), "-n", "4", "--temperature", "0"], encoding="utf-8",
                          timeout=300, dimensions=(40, 120))
    child.expect("> ")
    child.sendline("It is a truth")
    child.expect("> ")
    reply = child.before
    child.sendeof()
    child.expect(pexpect.EOF)
    assert "\x1b]0;" not in reply and "\x07" not in reply and "\u202e" not in reply, reply


def _charsmap(longest: int) -> str:
    """sentencepiece's precompiled charsmap layout (uint32 trie size, trie, NUL-ended replacements), its longest given."""
    import base64

    return base64.b64encode((4).to_bytes(4, "little") + b"\0" * 4 + b"ab\0" + b"x" * longest + b"\0").decode()


def _nmt_nfkc_charsmap() -> str:
    """The charsmap sentencepiece builds for its default rule (nmt_nfkc: its longest replacement 33 bytes), as T5's has."""
    import base64
    import io

    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2

    written = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(input=str(SHIPPED_ROPE.parents[1] / "data" / "persuasion.txt"), model_writer=written,
                                             vocab_size=100, normalization_rule_name="nmt_nfkc", minloglevel=2)
    model = sentencepiece_model_pb2.ModelProto()
    model.ParseFromString(written.getvalue())
    return base64.b64encode(model.normalizer_spec.precompiled_charsmap).decode()


HONEST_RULES = {  # Llama 2's (tokenizers' converter), T5's (sentencepiece's charsmap, then spaces folded) with NFKC after
    "llama": lambda: {"type": "Sequence", "normalizers": [{"type": "Prepend", "prepend": "▁"},
                                                          {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]},
    "t5 with nfkc": lambda: {"type": "Sequence", "normalizers": [
        {"type": "Precompiled", "precompiled_charsmap": _nmt_nfkc_charsmap()},
        {"type": "Replace", "pattern": {"Regex": " {2,}"}, "content": " "}, {"type": "NFKC"}]},
}
GROWING_RULES = {
    "one replace": lambda: {"type": "Replace", "pattern": {"String": " "}, "content": "x" * 100_000},
    "replaces chained": lambda: {"type": "Sequence", "normalizers": [{"type": "Replace", "pattern": {"String": " "}, "content": " " * 16}] * 3},
    "charsmap": lambda: {"type": "Precompiled", "precompiled_charsmap": _charsmap(5000)},
}


@pytest.mark.parametrize("rules", [*HONEST_RULES, *GROWING_RULES])
def test_a_tokenizer_whose_rules_multiply_a_text_is_refused_as_it_is_read(run_cli, tmp_path, rules):
    """Stranger 27: a normalizer Replace(' ' → 100 MB), in a tokenizer.json within every size bound, aborted tokenizers on a
    16-word prompt (Rust's failed allocation: SIGABRT, nothing said; 1 MB a space: 2 GB for 3,000 words). How much one
    character may become through the normalizer (and the decoder) is bounded as the file is read; the honest rules load."""
    def set_rules(data):
        data["normalizer"] = {**HONEST_RULES, **GROWING_RULES}[rules]()

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", set_rules)
    result = run_cli("generate", model, "--prompt", "It is a truth", "--max-new-tokens", "1")
    if rules in HONEST_RULES:
        assert result[0] == 0, result
    else:
        assert_user_error(result, "tokenizer.json: its normalizer may turn one character into", "(edgelm takes at most 4,096)")


def test_gguf_metadata_past_its_bound_is_one_line(run_cli, gguf_file, monkeypatch):
    """Stranger round 10b: the string-key limit did not bound a key's name or one text entry of an array (a 700 MB
    tokenizer.ggml.tokens entry reached llama.cpp, 3.2 GB peak); the whole metadata before the tensors' data is
    bounded now (a 400 MB entry: one line in 2.8 s). Here the bound is lowered below this small file's metadata."""
    from edgelm.formats import gguf_file as reader

    monkeypatch.setattr(reader, "MAX_METADATA_BYTES", 1000)
    for command in (["inspect", gguf_file], ["generate", gguf_file, "--prompt", "x"], ["verify", gguf_file]):
        assert_user_error(run_cli(*command), "its metadata takes", "bytes before the tensors' data; edgelm reads at most 1,000")


def test_a_gguf_declaring_more_keys_than_a_model_has_is_refused_before_ggml_parses_it(run_cli, gguf_file, tmp_path, monkeypatch):
    """Stranger round 10b: ggml's parser checks each key against those before it, n² in C where no signal reaches
    Python — 100,000 small keys took 35 s, a 98 MB file of 3M keys ran past 11 minutes and ignored Ctrl-C. The
    header's counts are read first (50,052 keys: one line in 0.3 s). Here the bound is lowered below this file's."""
    from edgelm.formats import gguf_file as reader

    monkeypatch.setattr(reader, "MAX_KEYS", 10)
    for command in (["inspect", gguf_file], ["generate", gguf_file, "--prompt", "x"], ["verify", gguf_file]):
        assert_user_error(run_cli(*command), "metadata keys and", "edgelm reads at most 10 and 65,536")


def test_a_gguf_tensor_with_a_dimension_of_zero_is_refused_before_ggml_divides_by_it(run_cli, gguf_file, tmp_path):
    """Stranger 27: token_embd.weight declared [d, 0] killed inspect, generate and verify with SIGFPE (ggml's parser divides
    INT64_MAX by ne[1..3]; llama.cpp's loader too). The tensor table is read before ggml parses it."""
    empty = rewrite_gguf(gguf_file, tmp_path / "empty.gguf", replace_tensors={"token_embd.weight": np.zeros((0, 16), np.float32)})
    for command in (["inspect", empty], ["generate", empty, "--prompt", "x"], ["verify", empty]):
        assert_user_error(run_cli(*command), "token_embd.weight has shape [16, 0]: a dimension of 0", "export it again")


def test_a_gguf_holding_bytes_long_after_its_last_tensor_is_refused(run_cli, gguf_file, tmp_path):
    """A GGUF with a sparse 20 GB tail ran as the model does, and `verify`'s sha256 of the file read the tail for 50 s (a
    terabyte: most of an hour). Writers pad the last tensor to the alignment: a few bytes more still run, a megabyte
    is refused by every command as it opens the file. The tail here is sparse: no disk is written."""
    import shutil

    padded = tmp_path / "padded.gguf"
    shutil.copyfile(gguf_file, padded)
    with open(padded, "ab") as handle:
        handle.write(b"\0" * 1000)
    assert run_cli("generate", padded, "--prompt", "x", "--max-new-tokens", "1")[0] == 0
    with open(padded, "r+b") as handle:
        handle.truncate(padded.stat().st_size + (20 << 30))
    for command in (["verify", padded], ["generate", padded, "--prompt", "x"], ["inspect", padded]):
        assert_user_error(run_cli(*command), "bytes after its last tensor", "export or download it again")


def test_verify_hashes_the_bytes_onnxruntime_reads_of_an_initializer_without_a_length(tmp_path, run_cli):
    """Stranger 25: an ONNX graph whose external initializer names no length, its file made a sparse 1 TiB: generate ran
    in 2 s, the weights hash read to the end of the file. It takes the tensor's bytes, as onnxruntime reads them; a length
    that is not the tensor's is refused, and so is a file holding more than its tensors, before verify's sha256 of the folder."""
    import subprocess
    import sys

    import onnx

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32").path
    model = onnx.load(str(folder / "model.onnx"))
    onnx.save(model, str(folder / "model.onnx"), save_as_external_data=True, location="weights.bin", size_threshold=1024)
    model = onnx.load(str(folder / "model.onnx"), load_external_data=False)
    tensor = next(t for t in model.graph.initializer if any(e.key == "location" for e in t.external_data))
    entries = [(e.key, e.value) for e in tensor.external_data if e.key != "length"]
    del tensor.external_data[:]
    for key, value in entries:
        tensor.external_data.add(key=key, value=value)
    onnx.save(model, str(folder / "model.onnx"))
    weights = folder / dict(entries)["location"]
    with open(weights, "ab") as handle:  # bytes past the tensors, as much as onnx's alignment may leave: the tensors are hashed
        handle.write(b"\0" * 4096)
    done = subprocess.run([sys.executable, "-m", "edgelm", "verify", str(folder)], capture_output=True, text=True, timeout=600)
    assert done.returncode in (0, 1) and "Traceback" not in done.stderr, done.stderr[-2000:]
    with open(weights, "ab") as handle:  # a megabyte more (a terabyte, sparse, was read to its end by the folder's sha256)
        handle.write(b"\0" * (1 << 20))
    assert_user_error(run_cli("verify", folder), f"{weights.name} holds", "past the last tensor the graph reads from it")
    tensor.external_data.add(key="length", value="12")
    onnx.save(model, str(folder / "model.onnx"))
    done = subprocess.run([sys.executable, "-m", "edgelm", "verify", str(folder)], capture_output=True, text=True, timeout=600)
    # onnxruntime refuses it as it opens the graph, before any hash: one line either way
    assert done.returncode == 2 and len(done.stderr.strip().splitlines()) == 1 and "model.onnx" in done.stderr, done.stderr[-2000:]


def _looping_graph(folder: Path) -> None:
    """The graph's logits plus 0 × Loop(10^15 trips of x + 1), the loop's start tied to the logits (nothing folds)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_logits" if name == "logits" else name for name in node.output]
    scalar = lambda name, kind: helper.make_tensor_value_info(name, kind, [])  # noqa: E731
    body = helper.make_graph([helper.make_node("Identity", ["go"], ["go_on"]), helper.make_node("Add", ["x", "one"], ["x_next"])], "body",
                             [scalar("i", TensorProto.INT64), scalar("go", TensorProto.BOOL), scalar("x", TensorProto.FLOAT)],
                             [scalar("go_on", TensorProto.BOOL), scalar("x_next", TensorProto.FLOAT)],
                             [numpy_helper.from_array(np.array(1.0, np.float32), "one")])
    graph.initializer.extend([numpy_helper.from_array(np.array(10**15, np.int64), "trips"), numpy_helper.from_array(np.array(True), "go0"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    graph.node.extend([helper.make_node("ReduceMin", ["raw_logits"], ["low"], keepdims=0), helper.make_node("Mul", ["low", "zero"], ["start"]),
                       helper.make_node("Loop", ["trips", "go0", "start"], ["looped"], body=body),
                       helper.make_node("Mul", ["looped", "zero"], ["nothing"]), helper.make_node("Add", ["raw_logits", "nothing"], ["logits"])])
    onnx.save(model, str(folder / "model.onnx"))


def test_sigterm_ends_a_command_while_native_code_computes(tmp_path):
    """Stranger 27: a graph looping 10^15 times held onnxruntime's run, where Python's SIGTERM handler never ran: `timeout
    60` went unanswered for 11 minutes (SIGKILL ended it). A thread watching the signal wakeup descriptor ends the process
    when the main thread has not taken the stop within stops.GRACE_S: exit 143, one line."""
    import subprocess
    import sys
    import time

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32", certificate=False).path
    _looping_graph(folder)
    process = subprocess.Popen([sys.executable, "-m", "edgelm", "generate", str(folder), "--prompt", "It is a truth", "-n", "2"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(20)  # loaded, and in the graph's loop (a slow machine: still loading, which takes the stop at once too)
    assert process.poll() is None, process.communicate()
    process.terminate()
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143 and "Traceback" not in err, err
    assert err.strip().splitlines()[-1].startswith(("terminated", "\nterminated")) and "nothing was left half-written" in err, err


def test_a_stop_ends_onnxruntimes_run_at_once_and_chat_goes_on(tmp_path):
    """Past stranger 27's fix the graph's loop still held the first Ctrl-C off ("stopping when the model's current step
    ends; Ctrl-C again to quit now": that step never ended) and chat lost its conversation to the second. A stop now
    sets onnxruntime's RunOptions.terminate (stops.ends_early): Ctrl-C in a pseudo-terminal chat stops the reply and the
    chat goes on to its next turn, twice; Ctrl-C and SIGTERM to `generate` end it as the main thread's stop (its own
    line, without "while native code was computing"), each within 10 s where the loop runs for ever."""
    import subprocess
    import sys
    import time

    import pexpect

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32", certificate=False).path
    _looping_graph(folder)
    child = pexpect.spawn(sys.executable, ["-m", "edgelm", "chat", str(folder)], encoding="utf-8", timeout=120, dimensions=(40, 120))
    child.expect("\r\n> ")
    for _ in range(2):
        child.sendline("It is a truth")
        time.sleep(8)  # in the loop (a slow machine: still in the prefill's first nodes, which the stop ends as well)
        child.sendintr()
        child.expect("(stopped)", timeout=10)
        child.expect("\r\n> ", timeout=10)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Ctrl-C again" not in child.before, child.before
    for stop, code, line in ((signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")):
        process = subprocess.Popen([sys.executable, "-m", "edgelm", "generate", str(folder), "--prompt", "It is a truth", "-n", "2"],
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))  # not ignored as a background job's
        time.sleep(15)
        assert process.poll() is None, process.communicate()
        process.send_signal(stop)
        _, err = process.communicate(timeout=10)
        assert process.returncode == code and err.strip().splitlines()[-1] == f"{line}; nothing was left half-written", err


def test_a_burst_of_ctrl_c_is_one_stop_and_chat_goes_on(tmp_path):
    """Stranger 32: five Ctrl-Cs 3 ms apart, 0.3 s into a 3,000-token message, stopped the reply, and ~2 s later, at the
    idle prompt, the chat ended ("interrupted while native code was computing", exit 130, the conversation lost): Python
    took them in one handler call, the stop watcher counted five. On a loaded machine Python took them one by one, and the
second, raised while "(stopped)" was printed, ended the chat (CI at 4526027). The chat now goes on: alive 4 s later,
answering."""
    import sys
    import time

    import pexpect

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32", certificate=False).path
    child = pexpect.spawn(sys.executable, ["-m", "edgelm", "chat", str(folder), "--temperature", "0", "-n", "8"], encoding="utf-8",
                          timeout=120, dimensions=(40, 120))
    child.delaybeforesend = None
    child.expect("\r\n> ")
    child.sendline("Anne walked in the garden with her sister and " * 300)
    time.sleep(0.3)
    for _ in range(5):
        child.sendintr()
        time.sleep(0.003)
    # not expect("> "): each ^C makes the terminal drop what the chat wrote and was not read yet (no NOFLSH), and on a
    # loaded machine "(stopped)" and the next prompt came between two of them; the chat answering next is the proof
    time.sleep(4)
    assert child.isalive(), child.before
    child.sendline("hello there")
    child.expect("8 tokens", timeout=60)
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0 and "Ctrl-C again" not in child.before, child.before


NATIVE_STEP = """
import hashlib, signal, sys
from edgelm import cli
from edgelm.stops import StopWatch
signal.signal(signal.SIGINT, cli._interrupt)
with StopWatch():
    try:
        print("ready", flush=True)
        hashlib.pbkdf2_hmac("sha256", b"x", b"y", int(sys.argv[1]))  # C that releases the GIL and takes no signal, as a llama.cpp batch
        print("finished", flush=True)
    except KeyboardInterrupt:
        print("stopped", flush=True)
"""


def test_a_burst_of_ctrl_c_in_a_long_native_step_is_one_stop_and_another_quits(tmp_path):
    """A llama.cpp prefill batch holds the main thread for seconds on a 1.1B model. Five Ctrl-Cs 3 ms apart in it: the
    watcher said "Ctrl-C again to quit now" a second later, then read the burst's other four, still untaken, as that
    second Ctrl-C and ended the process (exit 130). The burst is now the one stop the line speaks of: the step ends and
    the stop is taken (exit 0 here); a Ctrl-C pressed after the line still quits."""
    import hashlib
    import signal
    import subprocess
    import sys
    import time

    start = time.perf_counter()
    hashlib.pbkdf2_hmac("sha256", b"x", b"y", 100_000)
    rounds = int(100_000 * 4.0 / (time.perf_counter() - start))  # about 4 s of native code
    again = "stopping when the model's current step ends; Ctrl-C again to quit now"
    for burst, code, printed, said in ((5, 0, "stopped\n", again), (1, 130, "", "interrupted while native code was computing")):
        process = subprocess.Popen([sys.executable, "-c", NATIVE_STEP, str(rounds)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        assert process.stdout.readline() == "ready\n"
        time.sleep(0.1)
        for _ in range(burst):
            process.send_signal(signal.SIGINT)
            time.sleep(0.003)
        if burst == 1:
            assert process.stderr.readline() == "\n" and process.stderr.readline().strip() == again
            process.send_signal(signal.SIGINT)  # after the line: quit now
        out, err = process.communicate(timeout=60)
        assert (process.returncode, out) == (code, printed) and err.count(said) == 1 and "Traceback" not in err, (burst, out, err)


def test_a_stop_inside_an_import_that_drops_errors_is_taken_when_it_returns(tmp_path):
    """Stranger 48: a Ctrl-C or SIGTERM 0.4-0.5 s into `export` was lost (the export wrote its file, exit 0), or left
    numpy half-imported (an AttributeError later, an abort): torch's C++ imports numpy and drops any error that import
    raises. `swallowing` does the same to `interrupted`, which gets a Ctrl-C part way: the stop is taken when the
    outer import returns, with both modules whole."""
    import subprocess
    import sys

    (tmp_path / "swallowing.py").write_text("try:\n    import interrupted\nexcept BaseException:\n    pass\n")
    (tmp_path / "interrupted.py").write_text("import os, signal, time\nos.kill(os.getpid(), signal.SIGINT)\ntime.sleep(0.1)\nwhole = True\n")
    script = ("import signal, sys\nfrom edgelm import cli\nfrom edgelm.stops import held_during_imports\n"
              "signal.signal(signal.SIGINT, cli._interrupt)\nsys.path.insert(0, sys.argv[1])\n"
              "try:\n    with held_during_imports():\n        import swallowing\n    print('went on')\n"
              "except KeyboardInterrupt:\n    print('stopped', sys.modules['interrupted'].whole, 'swallowing' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert (done.returncode, done.stdout) == (0, "stopped True True\n"), done


def test_a_ctrl_c_while_the_program_imports_its_cli_is_one_line_and_130(tmp_path):
    """Stranger 48's note: a Ctrl-C in the ~0.1 s before cli.main installs its handlers (while typer and rich load) was
    Python's own: a KeyboardInterrupt traceback out of an import. The program's first step takes it (edgelm.program).
    Here the import of typer is held until the Ctrl-C has arrived."""
    import subprocess
    import sys

    script = ("import importlib.abc, os, sys, time\n"
              "class Held(importlib.abc.MetaPathFinder):\n"
              "    def find_spec(self, name, path=None, target=None):\n"
              "        if name == 'typer':\n"
              "            os.write(2, b'importing typer\\n')\n"
              "            time.sleep(30)\n"
              "        return None\n"
              "sys.meta_path.insert(0, Held())\n"
              "sys.argv[0] = 'edgelm'\n"
              "from edgelm.program import entry\nentry()\n")
    process = subprocess.Popen([sys.executable, "-c", script, "--version"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert process.stderr.readline() == "importing typer\n"
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130 and err.strip() == "interrupted; nothing was left half-written", (process.returncode, err)


def _graph_allocating_per_token(folder: Path, megabytes: int) -> None:
    """The logits plus 0 × ReduceMax of a ConstantOfShape of `megabytes` MB per position the attention mask holds."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_logits" if name == "logits" else name for name in node.output]
    rows = megabytes * (1 << 20) // (4 * 16384)
    graph.initializer.extend([numpy_helper.from_array(np.array([rows], np.int64), "rows_per_token"),
                              numpy_helper.from_array(np.array([16384], np.int64), "width"),
                              numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "two"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    graph.node.extend([helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
                       helper.make_node("Slice", ["mask_shape", "one", "two"], ["positions"]),
                       helper.make_node("Mul", ["positions", "rows_per_token"], ["rows"]),
                       helper.make_node("Concat", ["rows", "width"], ["shape"], axis=0),
                       helper.make_node("ConstantOfShape", ["shape"], ["bomb"], value=helper.make_tensor("v", TensorProto.FLOAT, [1], [1.0])),
                       helper.make_node("ReduceMax", ["bomb"], ["most"], keepdims=0), helper.make_node("Mul", ["most", "zero"], ["nothing"]),
                       helper.make_node("Add", ["raw_logits", "nothing"], ["logits"])])
    onnx.save(model, str(folder / "model.onnx"))


def _graph_copying_strings_per_token(folder: Path, megabytes: int) -> None:
    """The logits plus 0 × the element count of a 1 MB string Expanded to `megabytes` copies per position: each copy is
    a string on the C++ heap, outside onnxruntime's arena (which holds the 32-byte headers)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(folder / "model.onnx"))
    graph = model.graph
    for node in graph.node:
        node.output[:] = ["raw_logits" if name == "logits" else name for name in node.output]
    graph.initializer.extend([helper.make_tensor("text", TensorProto.STRING, [1], [b"x" * (1 << 20)]),
                              numpy_helper.from_array(np.array([megabytes], np.int64), "copies"),
                              numpy_helper.from_array(np.array([1], np.int64), "one"), numpy_helper.from_array(np.array([2], np.int64), "two"),
                              numpy_helper.from_array(np.array(0.0, np.float32), "zero")])
    graph.node.extend([helper.make_node("Shape", ["attention_mask"], ["mask_shape"]),
                       helper.make_node("Slice", ["mask_shape", "one", "two"], ["positions"]),
                       helper.make_node("Mul", ["positions", "copies"], ["count"]),
                       helper.make_node("Expand", ["text", "count"], ["texts"]),
                       helper.make_node("Size", ["texts"], ["how_many"]), helper.make_node("Cast", ["how_many"], ["many"], to=TensorProto.FLOAT),
                       helper.make_node("Mul", ["many", "zero"], ["nothing"]), helper.make_node("Add", ["raw_logits", "nothing"], ["logits"])])
    onnx.save(model, str(folder / "model.onnx"))


@pytest.mark.parametrize("allocates", ["in the arena", "strings on the heap"])
def test_a_graph_allocating_without_bound_meets_onnxruntimes_bounds(tmp_path, allocates):
    """Strangers 27 and 28: a foreign graph's ConstantOfShape grew with the attention mask (330 MB a token; 6 GB in
    another), and nothing bounded what onnxruntime allocated below the machine's memory: the OOM killer, no word; bounded,
    the arena's was passed by a string tensor's heap copies (5.6 GB). onnxruntime's CPU arena and the process's address
    space while a graph runs are bounded (90 % of the memory available; here it is made 400 MB): the run fails, one line."""
    import subprocess
    import sys

    from edgelm.export.onnx import export_onnx

    folder = export_onnx(open_checkpoint(SHIPPED_ROPE), tmp_path / "onnx", "f32", certificate=False).path
    # a 6-token prompt asks for 600 MB
    (_graph_allocating_per_token if allocates == "in the arena" else _graph_copying_strings_per_token)(folder, 100)
    script = ("import sys\nfrom edgelm.runtime import onnx_backend\nonnx_backend.available_memory = lambda: 400 << 20\n"
              "from edgelm.cli import entry\nsys.argv[0] = 'edgelm'\nentry()")
    done = subprocess.run([sys.executable, "-c", script, "generate", str(folder), "--prompt", "It is a truth universally", "-n", "1"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "onnxruntime could not allocate the memory model.onnx asks for" in done.stderr, done.stderr


def test_a_gguf_tensor_table_past_the_metadata_bound_is_refused_before_ggml_reads_it(run_cli, tmp_path):
    """Stranger 28: behind one 320 MB string key (sparse here) the tensor table lay past the pre-scan's reach, which gave up
    silently, and ggml's parser divided by the zero dimension there: SIGFPE again. A table the scan cannot reach within
    the metadata bound is refused."""
    import struct

    from edgelm.formats.gguf_file import MAX_METADATA_BYTES

    def text(data: bytes) -> bytes:
        return struct.pack("<Q", len(data)) + data

    path = tmp_path / "far-table.gguf"
    with open(path, "wb") as handle:
        handle.write(b"GGUF" + struct.pack("<IQQ", 3, 1, 2))
        handle.write(text(b"general.architecture") + struct.pack("<I", 8) + text(b"llama"))
        handle.write(text(b"general.filler") + struct.pack("<I", 8) + struct.pack("<Q", MAX_METADATA_BYTES + 4096))
        handle.seek(MAX_METADATA_BYTES + 4096, 1)  # a hole: nothing written
        handle.write(text(b"token_embd.weight") + struct.pack("<I", 2) + struct.pack("<qq", 64, 0) + struct.pack("<IQ", 0, 0))
        handle.write(b"\0" * 64)
    for command in (["inspect", path], ["generate", path, "--prompt", "x"], ["verify", path]):
        assert_user_error(run_cli(*command), "its metadata takes more than", "re-download or export it again")


POST_PROCESSORS = {  # Llama 3's (transformers' converter: a bos before each sequence), and one repeating a 1,000-id token
    "llama 3": ({"type": "TemplateProcessing",
                 "single": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                 "pair": [{"SpecialToken": {"id": "<|endoftext|>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                          {"SpecialToken": {"id": "<|endoftext|>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                 "special_tokens": {"<|endoftext|>": {"id": "<|endoftext|>", "ids": [0], "tokens": ["<|endoftext|>"]}}}, True),
    "a token of 1,000 ids, 1,000 times": ({"type": "TemplateProcessing",
                                           "single": [{"SpecialToken": {"id": "X", "type_id": 0}}] * 1000 + [{"Sequence": {"id": "A", "type_id": 0}}],
                                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                                           "special_tokens": {"X": {"id": "X", "ids": [0] * 1000, "tokens": ["<|endoftext|>"] * 1000}}}, False),
    "the text 1,000 times": ({"type": "TemplateProcessing",  # stranger 29: $A 100,000 times, no special token (SIGABRT at 5 GB)
                              "single": [{"Sequence": {"id": "A", "type_id": 0}}] * 1000,
                              "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                              "special_tokens": {}}, False),
}


@pytest.mark.parametrize("processor", POST_PROCESSORS)
def test_a_post_processor_adding_ids_without_bound_is_refused_as_it_is_read(run_cli, tmp_path, processor):
    """Stranger 28: a TemplateProcessing repeating a special token of 10,000 ids 100,000 times (a 5 MB tokenizer.json);
    encoding "a" with special tokens, as edgelm asks which ids lead a text, built 10^9 ids (SIGABRT at 5.4 GB)."""
    def set_processor(data):
        data["post_processor"] = POST_PROCESSORS[processor][0]

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", set_processor)
    result = run_cli("inspect", model)
    if POST_PROCESSORS[processor][1]:
        assert result[0] == 0, result
    else:
        assert_user_error(result, "its post-processor adds up to 1,000,000 ids" if "ids" in processor else "its post-processor copies the text more than once",
                          "(edgelm takes at most 256 ids added, the text once)")


def _slow_split(data):  # onig's retry limit holds at each start, and every start pays it: ~0.05 s a character here
    data["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": r"\D{0,2500}\D{0,2500}\d"}, "behavior": "Isolated", "invert": False}, data["pre_tokenizer"]]}


@pytest.mark.parametrize("stop", ["budget", "SIGTERM"])
def test_a_tokenizer_that_takes_without_bound_is_stopped(tmp_path, stop):
    """Stranger 28: a pre-tokenizer regex under onig's retry limit at each start took a 12,000-character prompt past 120 s
    in Rust, and SIGTERM went unanswered (tokenizers' `encode` holds the GIL: the stop watcher could not run). Calls go
    through the *_batch methods (the GIL released) on a thread given a budget: past it one line, exit 2; a SIGTERM
    meanwhile ends the process (143). The budget is lowered to 2 s here."""
    import subprocess
    import sys
    import time

    model = _with_tokenizer(SHIPPED_ROPE, tmp_path / "m", _slow_split)
    (tmp_path / "prompt.txt").write_text(("It is a truth universally acknowledged, that a single man in possession. " * 200)[:12000])
    budget = 2 if stop == "budget" else 600
    script = (f"import sys\nfrom edgelm import tokenizer\ntokenizer.RUST_SECONDS, tokenizer.RUST_SECONDS_PER_ITEM = {budget}, 0\n"
              "from edgelm.cli import entry\nsys.argv[0] = 'edgelm'\nentry()")
    process = subprocess.Popen([sys.executable, "-c", script, "generate", str(model), "--file", str(tmp_path / "prompt.txt"), "-n", "1"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if stop == "SIGTERM":
        time.sleep(15)
        assert process.poll() is None, process.communicate()
        process.terminate()
    out, err = process.communicate(timeout=120)
    if stop == "budget":
        assert process.returncode == 2 and len(err.strip().splitlines()) == 1, err
        assert "the tokenizer took more than 2 s encoding a text of 12,000 characters" in err, err
    else:
        assert process.returncode == 143 and "terminated" in err and "Traceback" not in err, err


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    from edgelm.export.onnx import export_onnx

    models = Path(__file__).resolve().parents[1] / "examples" / "models"
    return export_onnx(open_checkpoint(models / "tiny-rope"), tmp_path_factory.mktemp("onnx") / "rope", "f32", certificate=False).path


@pytest.mark.parametrize("value", ["5", "[1]", "null", '"abc"'])
def test_an_onnx_graphs_recorded_facts_that_are_no_object_are_one_line(run_cli, onnx_folder, tmp_path, value):
    """Stranger 37: edgelm.facts in a graph's metadata_props holding 5, [1], null or a string was a traceback from `bundle`
    (TypeError / ValueError merging it into the facts)."""
    import onnx

    folder = tmp_path / "evil"
    shutil.copytree(onnx_folder, folder)
    model = onnx.load(str(folder / "model.onnx"))
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, "edgelm.facts": value})
    onnx.save(model, str(folder / "model.onnx"))
    assert_user_error(run_cli("bundle", folder, "--out", tmp_path / "b"), "the graph's recorded facts must hold a JSON object")


@pytest.mark.parametrize("value", [[1], {"layers": 5}, "x", {"layers": [5]}, {"layers": [[1.0, "x"]]}])
def test_an_onnx_manifests_malformed_temperatures_are_one_line(run_cli, onnx_folder, tmp_path, value):
    """Stranger 37: edgelm.json's head_temperatures as [1], {"layers": 5}, "x" or {"layers": [5]} was a traceback from
    `inspect` ('list' object has no attribute 'get', 'int' object is not iterable). inspect reads the table as parity
    does: one that is no [layers][heads] table of λ is refused in one line; one that is not even an object is no table."""
    import json

    folder = tmp_path / "evil"
    shutil.copytree(onnx_folder, folder)
    manifest = json.loads((folder / "edgelm.json").read_text())
    (folder / "edgelm.json").write_text(json.dumps(manifest | {"head_temperatures": value}))
    code, out, err = run_cli("inspect", folder)
    assert code == 0 or (code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1), (code, err[-800:])
    assert code == (0 if not isinstance(value, dict) else 2), (code, err)


@pytest.mark.parametrize("template", [{"a": 1}, [1, 2], [{"name": "default"}], 5])
def test_a_chat_template_that_is_no_text_is_one_line_for_export_and_chat(run_cli, preset_dir, tmp_path, template):
    """Stranger 37: tokenizer_config.json's chat_template as a dict or a list of numbers was a traceback from
    `export --format gguf` (gguf-py's add_chat_template), where chat refused it in one line; reviewer 38: the ONNX export
    shipped it. The tokenizer refuses it as it loads, for every reader; a list of named templates, as transformers saves
    several, is a template. A GGUF carrying such a config among its stored tokenizer files is refused naming the GGUF."""
    import base64
    import json

    folder = tmp_path / "m"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps(config | {"chat_template": template}))
    needle = f"chat_template is a {type(template).__name__}, not a template text"
    for command in (("export", folder, "--out", tmp_path / "m.gguf", "--no-certificate"), ("chat", folder),
                    ("export", folder, "--format", "onnx", "--out", tmp_path / "m-onnx", "--no-certificate")):
        assert_user_error(run_cli(*command), needle)
    assert not (tmp_path / "m.gguf").exists() and not (tmp_path / "m-onnx").exists()
    good = tmp_path / "good.gguf"
    assert run_cli("export", preset_dir("tiny-tokenformer"), "--out", good, "--no-certificate")[0] == 0
    stored = base64.b64encode(json.dumps(config | {"chat_template": template}).encode()).decode()
    key = "edgelm.tokenizer_file_base64.tokenizer_config.json"
    evil = rewrite_gguf(good, tmp_path / "evil.gguf", drop_keys={key, "edgelm.tokenizer_file.tokenizer_config.json"},
                        add={key: (stored, GGUFValueType.STRING)})
    code, _, err = run_cli("generate", evil, "--prompt", "It")
    assert_user_error((code, _, err), needle)
    assert err.startswith(f"error: {evil}: its stored tokenizer_config.json: "), err



def test_rotary_dimensions_a_graph_builder_asserts_on_are_refused(run_cli, tmp_path):
    """granite's graph builder asserts n_embd_head == n_rot (llama.cpp src/models/granite.cpp): a stranger's granite file with
    rope.dimension_count 99 aborted generate (stranger 47). Half the head, even and within it, passes ggml's rope kernel's
    own asserts and is refused for an arch that rotates the whole head."""
    from gguf import GGUFReader, GGUFValueType

    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    gguf = export_gguf(open_checkpoint(SHIPPED_ROPE.parent / "tiny-nope"), tmp_path / "nope.gguf", "f16", certificate=False).path
    fields = GGUFReader(str(gguf)).fields
    assert fields["general.architecture"].contents() == "granite"
    width = fields["granite.embedding_length"].contents() // fields["granite.attention.head_count"].contents()
    for rotary, words in ((width // 2, f"the granite arch rotates the whole head of {width}"), (99, "not an even number")):
        key = "granite.rope.dimension_count"
        evil = rewrite_gguf(gguf, tmp_path / f"r{rotary}.gguf", drop_keys={key}, add={key: (rotary, GGUFValueType.UINT32)})
        assert_user_error(run_cli("generate", evil, "--prompt", "x", "-n", 1), words, "(llama.cpp would abort on it)")
