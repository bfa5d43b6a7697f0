"""The sampling a model's publisher recommends (generation_config.json with do_sample: true; Qwen3's temperature 0.6,
top_k 20, top_p 0.95) travels as llama.cpp's converter and onnxruntime-genai's builder carry it — a GGUF's
general.sampling.* keys, genai_config's search — and is what `edgelm chat` and a bundle sample with unless told
otherwise (a stranger's finding: it was ignored everywhere, chat sampling at edgelm's 0.7/40/0.95)."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from gguf import GGUFReader
from gguf.metadata import Metadata

from edgelm.bundle import make_bundle
from edgelm.constants import GGUF_SAMPLING_KEYS, SAMPLING_DEFAULTS
from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import detect
from edgelm.models import open_checkpoint

MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope"
QWEN3 = {"do_sample": True, "temperature": 0.6, "top_k": 20, "top_p": 0.95, "eos_token_id": 0}  # Qwen3's, its eos ours


@pytest.fixture(scope="module")
def recommending(tmp_path_factory):
    folder = shutil.copytree(MODEL, tmp_path_factory.mktemp("qwen3like") / "model")
    (folder / "generation_config.json").write_text(json.dumps(QWEN3))
    checkpoint = open_checkpoint(folder)
    root = folder.parent
    return folder, export_gguf(checkpoint, root / "m.gguf", "f16", certificate=False).path, \
        export_onnx(checkpoint, root / "onnx", "f32", certificate=False).path


def test_exports_carry_it_as_llama_cpp_and_genai_write_it(recommending):
    folder, gguf, onnx = recommending
    converter = Metadata.load(None, folder)  # gguf-py's reading of generation_config.json, which convert_hf_to_gguf.py writes
    fields = GGUFReader(gguf).fields
    written = {name: fields[key].contents() for name, key in GGUF_SAMPLING_KEYS.items() if key in fields}
    assert written == pytest.approx({"temperature": converter.sampling_temp, "top_k": converter.sampling_top_k,
                                     "top_p": converter.sampling_top_p})
    search = json.loads((onnx / "genai_config.json").read_text())["search"]
    assert search["do_sample"] is True and {k: search[k] for k in ("temperature", "top_k", "top_p")} == {
        k: QWEN3[k] for k in ("temperature", "top_k", "top_p")}
    for path in (folder, gguf, onnx):
        assert detect(path).stated_sampling() == pytest.approx({k: QWEN3[k] for k in ("temperature", "top_k", "top_p")}), path


def test_what_the_file_leaves_out_is_filled_alike_in_every_format(tmp_path):
    """Stranger finding: Llama 3.2 Instruct's generation_config.json gives no top_k; the folder and GGUF then sampled with
    none, the ONNX export with the genai builder's 50. Every format now fills it as chat does (edgelm's 40, llama.cpp's)."""
    folder = shutil.copytree(MODEL, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({"do_sample": True, "temperature": 0.6, "top_p": 0.9}))
    onnx = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32", certificate=False).path
    search = json.loads((onnx / "genai_config.json").read_text())["search"]
    assert (search["temperature"], search["top_p"], search["top_k"]) == (0.6, 0.9, SAMPLING_DEFAULTS["top_k"])


def test_a_model_that_does_not_ask_for_sampling_states_none(tmp_path):
    folder = shutil.copytree(MODEL, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({**QWEN3, "do_sample": False}))  # transformers: greedy
    gguf = export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    assert not any(key.startswith("general.sampling") for key in GGUFReader(gguf).fields)
    assert detect(folder).stated_sampling() == detect(gguf).stated_sampling() == {}


def test_chat_samples_with_it_unless_told_and_bundles_carry_it(recommending, tmp_path):
    folder, gguf, onnx = recommending
    for path in (folder, gguf, onnx):
        chat = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(path), "-n", "2"], input="hi\n", capture_output=True,
                              text=True, timeout=300)
        assert chat.returncode == 0 and "sampling temperature 0.6, top_k 20, top_p 0.95 (as the model recommends)" in chat.stderr, chat.stderr
    given = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(gguf), "-n", "2", "--temp", "1.2"], input="hi\n",
                           capture_output=True, text=True, timeout=300)  # the banner says what is used (a stranger's finding)
    assert "sampling temperature 1.2 (as given); top_k 20, top_p 0.95 (as the model recommends)" in given.stderr, given.stderr
    greedy = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(MODEL), "-n", "2", "--temp", "0"], input="hi\n",
                            capture_output=True, text=True, timeout=300)  # stranger 42: top_k and top_p were "as given" too
    assert "sampling greedy: temperature 0 (as given); /reset" in greedy.stderr, greedy.stderr
    plain = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(MODEL), "-n", "2"], input="hi\n", capture_output=True,
                           text=True, timeout=300)
    assert plain.returncode == 0 and "sampling temperature 0.7, top_k 40, top_p 0.95 (edgelm's defaults)" in plain.stderr
    bundled = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(make_bundle(onnx, tmp_path / "chat-bundle")), "-n", "2"],
                             input="hi\n", capture_output=True, text=True, timeout=300)  # chat on a bundle used edgelm's defaults
    assert "sampling temperature 0.6, top_k 20, top_p 0.95 (as the model recommends)" in bundled.stderr, bundled.stderr
    bundle = make_bundle(gguf, tmp_path / "bundle")
    assert json.loads((bundle / "edgelm.json").read_text())["sampling_defaults"] == pytest.approx(
        {k: QWEN3[k] for k in ("temperature", "top_k", "top_p")})
    mobile = make_bundle(onnx, tmp_path / "mobile")
    search = json.loads((mobile / "genai_config.json").read_text())["search"]
    assert search["do_sample"] is True and search["top_k"] == 20
    plain_gguf = export_gguf(open_checkpoint(MODEL), tmp_path / "plain.gguf", "f16", certificate=False).path
    plain_bundle = make_bundle(plain_gguf, tmp_path / "plain")
    assert json.loads((plain_bundle / "edgelm.json").read_text())["sampling_defaults"] == SAMPLING_DEFAULTS
    chat = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(plain_bundle), "-n", "2"], input="hi\n", capture_output=True,
                          text=True, timeout=300)  # stranger round 12: "(as the model recommends)" for edgelm's defaults
    assert "sampling temperature 0.7, top_k 40, top_p 0.95 (edgelm's defaults)" in chat.stderr, chat.stderr
    plain_onnx = make_bundle(export_onnx(open_checkpoint(MODEL), tmp_path / "plain-onnx", "f32", certificate=False).path,
                             tmp_path / "plain-mobile")  # round 12b: an ONNX bundle said "(as the model recommends)"
    chat = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(plain_onnx), "-n", "2"], input="hi\n", capture_output=True,
                          text=True, timeout=300)
    assert "sampling temperature 0.7, top_k 40, top_p 0.95 (edgelm's defaults)" in chat.stderr, chat.stderr


@pytest.mark.parametrize("forged", [{"sampling_defaults": {"temperature": 2.0, "top_k": 0, "top_p": 1.0}}, {"family": "tokenformer"},
                                    {"quantization": "F32"}, {"context_length": 64}, {"arch": "gpt2"}, {"position_encoding": "learned"},
                                    {"head_temperatures": {"layers": [[2.0]], "baked_into_weights": True}}])
def test_a_manifest_edited_after_bundling_is_refused_where_the_model_says_otherwise(recommending, tmp_path, forged):
    """Stranger round 12: a bundle's manifest edited after bundling passed verify, chat sampled with its forged temperature
    while apps on the same GGUF did not, and inspect printed the forged family as verified. Every fact the bundled files
    state too is theirs, checked wherever a bundle is opened."""
    _, gguf, _ = recommending
    bundle = make_bundle(gguf, tmp_path / "bundle")
    manifest = json.loads((bundle / "edgelm.json").read_text())
    (bundle / "edgelm.json").write_text(json.dumps(manifest | forged))
    key = next(iter(forged))
    for command in (["verify", str(bundle)], ["inspect", str(bundle)], ["chat", str(bundle), "-n", "1"]):
        run = subprocess.run([sys.executable, "-m", "edgelm", *command], input="hi\n", capture_output=True, text=True, timeout=300)
        failed = 1 if command[0] == "verify" else 2  # a check that failed, for verify; a refused input, for the others
        assert run.returncode == failed and f"the manifest states {key}" in run.stderr and run.stderr.count("\n") == 1, (command, run.stderr)


def test_onnx_export_says_it_cannot_carry_min_p(tmp_path):
    """Stranger round 12: a recommended min_p was dropped from the ONNX export (onnxruntime-genai has no min_p) without a word."""
    folder = shutil.copytree(MODEL, tmp_path / "model")
    (folder / "generation_config.json").write_text(json.dumps({**QWEN3, "min_p": 0.05}))
    report = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32", certificate=False)
    assert any("recommends min_p 0.05; onnxruntime-genai has no min_p" in note for note in report.notes), report.notes
    assert "min_p" not in json.loads((report.path / "genai_config.json").read_text())["search"]
