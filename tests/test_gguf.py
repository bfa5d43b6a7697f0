"""GGUF export: stock llama.cpp (llama-cpp-python) and edgelm's ggml executor against the torch
reference, tokenizer fidelity, quantized types, and bad input."""

import json
import os

import gguf
import numpy as np
import pytest
import torch

from edgelm.export.gguf import export_gguf
from edgelm.models import open_checkpoint
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.torch_backend import TorchBackend

from .test_families import ALL_PRESETS

PREFILL, DECODE = 48, 24  # 72 positions compared: a prefill, then one token at a time
TOL = 1e-4
# llama.cpp's CPU GELU (gptneox) reads a table indexed by the fp16-rounded input (GGML_GELU_FP16), which
# alone moves the tiny ngen4's logits by ~5e-4 (gpt2's by 5.2e-4, the same GELU); every other op is fp32.
TOL_GGUF = {"tiny-ngen4": 1e-3, "tiny-gpt2": 1e-3}


def temperatures_file(tmp_path, spec):
    path = tmp_path / "temps.json"
    generator = torch.Generator().manual_seed(5)
    path.write_text(json.dumps({"layers": (0.6 + torch.rand(spec.num_layers, spec.num_heads, generator=generator)).tolist()}))
    return path


def run_positions(backend, ids):
    """Logits for every position: prefill, then token-by-token decode."""
    backend.reset()
    logits = [backend.forward(ids[:PREFILL])]
    for token in ids[PREFILL:]:
        logits.append(backend.forward([token]))
    return np.concatenate(logits)


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_f32_gguf_matches_reference(preset_dir, tmp_path, name):
    folder = preset_dir(name)
    temps = temperatures_file(tmp_path, open_checkpoint(folder).spec) if name == "tiny-nope" else None
    checkpoint = open_checkpoint(folder, head_temperatures=temps)
    report = export_gguf(checkpoint, tmp_path / "model.gguf", "f32")
    artifact = open_artifact(report.path, LoadOptions(f32_kv_cache=True, all_logits=True, context_length=128, threads=2))
    expected_engine = "edgelm ggml" if name == "tiny-tokenformer" else "llama.cpp"
    assert artifact.engine.startswith(expected_engine)
    ids = torch.randint(0, checkpoint.spec.vocab_size, (PREFILL + DECODE,), generator=torch.Generator().manual_seed(1)).tolist()
    reference = run_positions(TorchBackend(checkpoint.load_model()), ids)
    exported = run_positions(artifact.backend, ids)
    assert exported.shape == reference.shape == (PREFILL + DECODE, checkpoint.spec.vocab_size)
    assert np.abs(exported - reference).max() <= TOL_GGUF.get(name, TOL)
    assert (exported.argmax(-1) == reference.argmax(-1)).all()


def test_nope_exports_as_granite_with_temperatures_folded(preset_dir, tmp_path):
    from edgelm.formats.gguf_file import open_gguf

    checkpoint = open_checkpoint(preset_dir("tiny-nope"), head_temperatures=temperatures_file(tmp_path, open_checkpoint(preset_dir("tiny-nope")).spec))
    export_gguf(checkpoint, tmp_path / "nope.gguf", "f32")
    gguf = open_gguf(tmp_path / "nope.gguf")
    assert gguf.arch == "granite"
    assert gguf.field("granite.rope.scaling.finetuned") is False
    assert gguf.field("edgelm.position_encoding") == "none"
    table = checkpoint.head_temperatures()
    assert np.allclose(gguf.field("edgelm.head_temperatures"), table.flatten().numpy())
    q = next(t for t in gguf.reader.tensors if t.name == "blk.0.attn_q.weight")
    source = checkpoint.tensors.get("model.layers.0.self_attn.q_proj.weight")
    assert torch.allclose(torch.from_numpy(np.array(q.data)), source * table[0].repeat_interleave(32)[:, None])


@pytest.mark.parametrize("quant", ["f16", "int8"])
def test_tensors_written_a_block_of_rows_at_a_time_equal_the_whole_tensor_encoded(preset_dir, tmp_path, monkeypatch, quant):
    """Unchanged tensors (the embedding here) stream in row blocks; every tensor in the file must
    hold the bytes gguf-py makes of the whole tensor (float16 cast, or `gguf.quants` Q8_0)."""
    from gguf import GGUFReader

    import edgelm.export.gguf as gguf_export
    import edgelm.models.checkpoint as checkpoint_module
    from edgelm.export.weights import ExportedWeights

    monkeypatch.setattr(checkpoint_module, "CONVERT_BLOCK_BYTES", 4096)  # the 4096×256 embedding: 1024 blocks of 4 rows
    blocks = {}
    real_row_blocks = ExportedWeights.row_blocks

    def counted(self, name):
        for block in real_row_blocks(self, name):
            blocks[name] = blocks.get(name, 0) + 1
            yield block

    monkeypatch.setattr(ExportedWeights, "row_blocks", counted)
    checkpoint = open_checkpoint(preset_dir("tiny-tokenformer"))  # gguf-py encodes its quants: no llama.cpp in between
    report = export_gguf(checkpoint, tmp_path / "m.gguf", quant)
    assert blocks["sequential.0.word_embeddings.weight"] == 1024

    monkeypatch.setattr(checkpoint_module, "CONVERT_BLOCK_BYTES", 1 << 40)
    weights = ExportedWeights(checkpoint)
    wholes = {name: tensor for source in gguf_export._sources(checkpoint, weights)
              for name, tensor in gguf_export.gguf_tensor_data(weights, source).items()}
    written = GGUFReader(str(report.path)).tensors
    assert len(written) == len(wholes)
    for tensor in written:
        whole = wholes[tensor.name].contiguous().numpy()
        expected = whole.astype(np.float32) if tensor.tensor_type.name == "F32" else (
            whole.astype(np.float16) if tensor.tensor_type.name == "F16" else gguf.quants.quantize(whole, tensor.tensor_type))
        assert np.array(tensor.data).tobytes() == expected.tobytes(), tensor.name


def test_llama_cpp_quantizer_process_failing_is_one_user_error(tmp_path):
    """The quantizer runs in a process of its own: llama.cpp refusing (here: a source that is no GGUF)
    comes back as one UserError, not a traceback, and leaves no target."""
    from edgelm.errors import UserError
    from edgelm.quantize.llama_cpp import quantize_gguf

    source = tmp_path / "source.gguf"
    source.write_bytes(b"not a gguf file at all")
    with pytest.raises(UserError, match="llama.cpp's quantizer refused to make Q4_K_M"):
        quantize_gguf(source, tmp_path / "target.gguf", 15, "Q4_K_M")  # 15: LLAMA_FTYPE_MOSTLY_Q4_K_M
    assert not (tmp_path / "target.gguf").exists()


@pytest.mark.parametrize("name", ["tiny-rope", "tiny-ngen4"])
def test_llama_cpp_tokenizes_like_the_source_tokenizer(preset_dir, tmp_path, name):
    """≥ 1000 corpus lines plus unicode edge cases; detokenization round-trips."""
    from llama_cpp import Llama

    from edgelm.tokenizer import load_tokenizer

    folder = preset_dir(name)
    export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16")
    llm = Llama(model_path=str(tmp_path / "m.gguf"), vocab_only=True, verbose=False)
    tokenizer = load_tokenizer(folder)
    corpus = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "persuasion.txt")
    lines = [line for line in open(corpus, encoding="utf-8").read().splitlines() if line.strip()][:1200]
    edge_cases = ["café naïve — “quoted” ‘single’", "日本語のテキスト", "emoji 🙂👍🏽 and ZWJ 👨‍👩‍👧", "  two  spaces\tand tab",
                  "trailing space ", "\n\nnew lines\n", "numbers 1234567890 3.14159", "Ελληνικά Русский", "a" * 50]
    mismatches = []
    for text in lines + edge_cases:
        ours = tokenizer.encode(text)
        theirs = llm.tokenize(text.encode("utf-8"), add_bos=tokenizer.add_bos, special=False)
        if ours != theirs:
            mismatches.append(text)
    assert not mismatches, f"{len(mismatches)} of {len(lines) + len(edge_cases)} texts differ, e.g. {mismatches[:3]}"
    prefix = " " if tokenizer.kind.startswith("sentencepiece") else ""  # SentencePiece's dummy prefix
    for text in lines[:200] + edge_cases:
        ids = llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        assert llm.detokenize(ids).decode("utf-8") == prefix + text


@pytest.mark.parametrize("quant,expected", [("int8", "Q8_0"), ("int4", "Q4_K"), ("bf16", "BF16")])
def test_llama_cpp_quantizes_llama(preset_dir, tmp_path, quant, expected):
    report = export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "q.gguf", quant)
    assert expected in report.type_counts()
    artifact = open_artifact(report.path, LoadOptions(context_length=64, threads=2, all_logits=True))
    logits = artifact.backend.forward(list(range(10, 40)))
    assert np.isfinite(logits).all()


def test_tokenformer_quantizes_types_it_cannot_make_to_the_nearest_and_says_so(preset_dir, tmp_path):
    """K-quant file types by ggml's quantizer (test_tokenformer_kquants.py); Q3_K_M, which llama.cpp's
    recipe would mix with Q2_K…Q5_K, becomes the nearest type edgelm makes for an arch of its own."""
    report = export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), tmp_path / "q.gguf", "Q3_K_M", certificate=False)
    assert report.file_type == "Q4_K_S" and report.notes and "Q3_K_M" in report.notes[0]
    # per block: q·k·v stacked (2), output (2), FFN (2): the key tokens Q4_K (Q4_K_S's ffn_down gets Q5_K
    # below block n/8: none of 4), the value tokens its 32-wide fallback Q5_0; the tied LM head Q6_K
    assert report.type_counts() == {"Q6_K": 1, "Q4_K": 12, "Q5_0": 12, "F32": 2}


def test_gguf_bad_input(run_cli, preset_dir, tmp_path):
    folder = preset_dir("tiny-rope")
    target = tmp_path / "m.gguf"
    code, _, err = run_cli("export", folder, "--quant", "int4", "--gguf-type", "Q9_9", "--out", target)
    assert code == 2 and "unknown --gguf-type" in err and "Q5_K_M" in err
    assert run_cli("export", folder, "--quant", "f32", "--out", target)[0] == 0
    code, _, err = run_cli("export", folder, "--out", target)
    assert code == 2 and "output already exists" in err
    data = target.read_bytes()
    broken = tmp_path / "broken.gguf"
    broken.write_bytes(data[: len(data) // 3])
    for command in ("inspect", "generate"):
        code, _, err = run_cli(command, broken, *(["--prompt", "x"] if command == "generate" else []))
        assert code == 2 and "not a valid GGUF file" in err, err
    (tmp_path / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 12)
    assert run_cli("inspect", tmp_path / "bad.gguf")[0] == 2
    temps = tmp_path / "t.json"
    temps.write_text(json.dumps({"layers": [[1.0] * 3]}))
    code, _, err = run_cli("export", folder, "--head-temperatures", temps, "--out", tmp_path / "t.gguf")
    assert code == 2 and "temperatures have shape" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.gguf", "broken.gguf", "m.gguf", "t.json"]  # nothing half-written


def test_bench_reports_rates_and_the_raw_engine(run_cli, preset_dir, tmp_path):
    """The rates are the medians of --repetitions runs of each engine (llama-bench's -r), every run kept: one
    run on a shared machine read 7 and 2,153 tok/s for the same file."""
    export_gguf(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "m.gguf", "int8")
    code, out, err = run_cli("bench", tmp_path / "m.gguf", "--prompt-tokens", 32, "--new-tokens", 8, "--threads", 2, "--compare", "--json",
                             "-r", 3)
    assert code == 0, err
    report = json.loads(out)
    assert report["engine"] == "llama.cpp" and report["raw_engine"] == "llama-cpp-python"
    for key in ("time_to_first_token_s", "prefill_tok_s", "decode_tok_s", "raw_decode_tok_s", "roofline_tok_s", "peak_rss_bytes"):
        assert report[key] > 0, key
    assert 0 < report["weight_bytes"] < (tmp_path / "m.gguf").stat().st_size
    assert report["repetitions"] == 3
    for key in ("time_to_first_token_s", "decode_tok_s", "raw_decode_tok_s"):
        runs = report[f"{key}_runs"]
        assert len(runs) == 3 and report[key] == sorted(runs)[1], (key, runs)
    code, out, err = run_cli("bench", tmp_path / "m.gguf", "--prompt-tokens", 8, "--new-tokens", 2, "--repetitions", 2)
    assert code == 0 and "over 2 runs" in out, out + err


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_interrupted_export_leaves_nothing(run_cli, preset_dir, tmp_path, monkeypatch, fmt):
    from edgelm.models.checkpoint import TensorSource

    real_blocks, calls = TensorSource.row_blocks, []

    def read_then_interrupt(self, name, dtype):  # a few weights reach the file, then Ctrl-C
        calls.append(name)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_blocks(self, name, dtype)

    monkeypatch.setattr(TensorSource, "row_blocks", read_then_interrupt)
    out = tmp_path / "out"
    code, _, err = run_cli("export", preset_dir("tiny-rope"), "--format", fmt, "--quant", "f32", "--out", out)
    assert code == 130 and "nothing was left half-written" in err
    assert list(tmp_path.iterdir()) == []


def test_quiet_silences_notes_but_not_errors(run_cli, preset_dir, tmp_path):
    folder = preset_dir("tiny-tokenformer")  # Q3_K_M: a type edgelm makes the nearest of for this arch, and says so
    code, _, err = run_cli("export", folder, "--quant", "Q3_K_M", "--out", tmp_path / "a.gguf")
    assert code == 0 and "note: " in err and "Q3_K_M" in err
    code, _, err = run_cli("--quiet", "export", folder, "--quant", "Q3_K_M", "--out", tmp_path / "b.gguf")
    assert code == 0 and err == ""
    code, _, err = run_cli("--quiet", "export", folder, "--quant", "Q3_K_M", "--out", tmp_path / "b.gguf")
    assert code == 2 and "output already exists" in err
