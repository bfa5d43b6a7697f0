"""ONNX export: ONNX Runtime and onnxruntime-genai against the torch reference, and bad input."""

import json
import re
import zipfile
import shutil

import numpy as np
import pytest
import torch

from edgelm.export.onnx import export_onnx
from edgelm.models import open_checkpoint
from edgelm.errors import UserError
from edgelm.formats import LoadOptions, open_artifact
from edgelm.runtime.torch_backend import TorchBackend

from .genai import genai_greedy as genai_greedy_from
from .test_families import ALL_PRESETS
from .test_gguf import DECODE, PREFILL, run_positions, temperatures_file

TOL = 1e-4


@pytest.fixture(scope="module")
def exported(preset_dir, tmp_path_factory):
    """name → (checkpoint, f32 ONNX folder), exported once per module (NoPE with non-trivial temperatures)."""
    made = {}

    def get(name):
        if name not in made:
            root = tmp_path_factory.mktemp(name)
            temps = temperatures_file(root, open_checkpoint(preset_dir(name)).spec) if name == "tiny-nope" else None
            checkpoint = open_checkpoint(preset_dir(name), head_temperatures=temps)
            made[name] = checkpoint, export_onnx(checkpoint, root / "onnx", "f32").path
        return made[name]

    return get


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_f32_onnx_matches_reference_batch_1(exported, name):
    checkpoint, folder = exported(name)
    artifact = open_artifact(folder)
    ids = torch.randint(0, checkpoint.spec.vocab_size, (PREFILL + DECODE,), generator=torch.Generator().manual_seed(2)).tolist()
    reference = run_positions(TorchBackend(checkpoint.load_model()), ids)
    ours = run_positions(artifact.backend, ids)
    assert ours.shape == (PREFILL + DECODE, checkpoint.spec.vocab_size)
    assert np.abs(ours - reference).max() <= TOL
    assert (ours.argmax(-1) == reference.argmax(-1)).all()
    # GroupQueryAttention counts positions itself: no family's graph takes position_ids
    assert [i.name for i in artifact.backend.session.get_inputs()][:2] == ["input_ids", "attention_mask"]
    assert "position_ids" not in {i.name for i in artifact.backend.session.get_inputs()}


def test_rotary_tables_cover_the_models_own_positions_and_no_more(exported):
    """The cos/sin tables have max_position_embeddings rows, as genai_config's context_length says and as
    onnxruntime-genai's builder sizes its caches (32,768 rows before: 2 × 2.1 MB of fp32 in an int4 tiny-rope);
    a context past them is refused as the folder opens (it was accepted, and the prompt streamed before the
    refusal); a prefill of all 4,096 positions runs, the token after it is refused in one line."""
    import onnx

    checkpoint, folder = exported("tiny-rope")
    rows = checkpoint.spec.max_positions
    tables = [t for t in onnx.load(folder / "model.onnx", load_external_data=False).graph.initializer
              if list(t.dims) == [rows, checkpoint.spec.rotated_dims // 2]]
    assert len(tables) == 2 and json.loads((folder / "edgelm.json").read_text())["rotary_table_positions"] == rows
    with pytest.raises(UserError, match=f"a context of {rows + 8:,} tokens is past the {rows:,} positions of this model's rotary tables"):
        open_artifact(folder, LoadOptions(context_length=rows + 8))  # refused as it opens, before a token runs
    artifact = open_artifact(folder, LoadOptions(context_length=rows))
    ids = torch.randint(0, checkpoint.spec.vocab_size, (rows,), generator=torch.Generator().manual_seed(3)).tolist()
    assert np.isfinite(artifact.backend.forward(ids)).all()
    with pytest.raises(UserError, match=f"position {rows + 1} is past the {rows} positions of this model's rotary tables"):
        artifact.backend.forward([ids[0]])


def test_rotary_tables_stop_at_the_limit_whatever_positions_a_config_declares(preset_dir, tmp_path):
    """A config declaring 2,000,000,000 positions asked torch for a 16 GB arange at export (a traceback, or the
    machine's memory); the tables stop at ROTARY_TABLE_LIMIT rows, genai_config's context_length with them,
    and the export says so in a note."""
    from edgelm.export.onnx import ROTARY_TABLE_LIMIT

    folder = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 2_000_000_000}))
    report = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32", certificate=False)
    assert json.loads((report.path / "genai_config.json").read_text())["model"]["context_length"] == ROTARY_TABLE_LIMIT
    assert json.loads((report.path / "edgelm.json").read_text())["rotary_table_positions"] == ROTARY_TABLE_LIMIT
    assert any("cover the first 131,072 of the model's 2,000,000,000 positions" in note for note in report.notes), report.notes


def test_ctx_size_states_the_context_onnxruntime_genai_allocates_for(preset_dir, tmp_path, run_cli):
    """onnxruntime-genai allocates its KV cache for genai_config's max_length up front (past_present_share_buffer) where
    an app sets none: a tiny Llama 3 declaring 131,072 positions took 343 MB in a generator where 4,096 take 96 MB, and
    its int4 graph held 16 MB of rotary tables (23.7 MB against 7.4). `export --ctx-size N` states N positions:
    context_length, max_length and the tables' rows; onnxruntime-genai runs the folder, and a longer context is refused.
    GGUF refuses the option (llama.cpp takes the context at load), and a learned position table caps it."""
    import onnx
    import onnxruntime_genai as og

    from edgelm.export.onnx import _context_notes
    from edgelm.models import families
    from edgelm.models.util import ConfigReader

    folder = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-llama3"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"max_position_embeddings": 131072}))
    checkpoint = open_checkpoint(folder)
    report = export_onnx(checkpoint, tmp_path / "onnx", "int4", certificate=False, context=1024)
    genai = json.loads((report.path / "genai_config.json").read_text())
    assert genai["model"]["context_length"] == genai["search"]["max_length"] == 1024
    assert json.loads((report.path / "edgelm.json").read_text())["rotary_table_positions"] == 1024
    rows = [list(t.dims) for t in onnx.load(report.path / "model.onnx", load_external_data=False).graph.initializer
            if len(t.dims) == 2 and t.dims[1] == checkpoint.spec.rotated_dims // 2]
    assert rows == [[1024, checkpoint.spec.rotated_dims // 2]] * 2, rows
    assert any("cover the first 1,024 of the model's 131,072 positions (--ctx-size)" in note for note in report.notes), report.notes
    model = og.Model(str(report.path))
    generator = og.Generator(model, og.GeneratorParams(model))
    generator.append_tokens(np.array([[1, 5, 9]], dtype=np.int32))
    generator.generate_next_token()
    with pytest.raises(UserError, match="a context of 2,000 tokens is past the 1,024 positions of this model's rotary tables"):
        open_artifact(report.path, LoadOptions(context_length=2000))
    # the certificate's held-out text takes what the stated context holds; its probe needs its prompt and steps
    certified = export_onnx(checkpoint, tmp_path / "certified", "int4", context=100)
    assert json.loads((certified.path / "edgelm.json").read_text())["parity_certificate"]["positions"] == 99
    code, out, err = run_cli("verify", certified.path, "--reference", folder)
    assert code == 0 and "probe matches" in out, (out, err)
    code, out, err = run_cli("parity", certified.path, "--reference", folder)  # its default 256 positions were refused
    assert code == 0 and "states a context of 100 tokens: parity compares 99 positions, not 256" in err, (out, err)
    code, out, err = run_cli("parity", certified.path, "--reference", folder, "--tokens", 256)  # asked for: refused, not clamped
    assert code == 2 and "--tokens" in err and "parity compares 99" not in err, (out, err)
    with pytest.raises(UserError, match=r"the parity certificate's probe runs \d+ positions, more than --ctx-size 20"):
        export_onnx(checkpoint, tmp_path / "short", "int4", context=20)
    assert not (tmp_path / "short").exists()
    tiny = export_onnx(checkpoint, tmp_path / "two", "f32", certificate=False, context=2).path  # stranger 33: the least context
    code, out, err = run_cli("verify", tiny)  # no certificate (exit 1), and not "a context of 8 tokens" it never asked for
    assert code == 1 and "loads and runs" in out and "context" not in err, (out, err)
    code, _, err = run_cli("parity", tiny, "--reference", folder)
    assert code == 2 and "states a context of 2 tokens; parity compares at least 2 positions" in err, err
    code, _, err = run_cli("export", folder, "--format", "onnx", "--ctx-size", "1", "--out", tmp_path / "one")
    assert code == 2 and "1 is not in the range x>=2" in err, err
    code, _, err = run_cli("export", folder, "--format", "gguf", "--ctx-size", "512", "--out", tmp_path / "m.gguf")
    assert code == 2 and "--ctx-size applies to --format onnx only" in err and not (tmp_path / "m.gguf").exists(), err
    with pytest.raises(UserError, match="--ctx-size 5,000 is past the 1,024 positions this model has learned"):
        export_onnx(open_checkpoint(preset_dir("tiny-gpt2")), tmp_path / "gpt2", "f32", certificate=False, context=5000)
    # without --ctx-size, a context whose cache is past a gigabyte is said: Llama 3.2 1B's config.json (its published values)
    llama32 = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": 2048, "intermediate_size": 8192,
               "num_hidden_layers": 16, "num_attention_heads": 32, "num_key_value_heads": 8, "head_dim": 64, "vocab_size": 128256,
               "max_position_embeddings": 131072, "rms_norm_eps": 1e-5, "tie_word_embeddings": True, "hidden_act": "silu",
               "rope_theta": 500000.0, "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                        "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
    spec = families()["llama"].spec_from_config(ConfigReader(llama32))
    notes = _context_notes(spec, 131072, None, "float", "int4")
    assert notes == ["onnxruntime-genai allocates the KV cache for genai_config's max_length, 131,072 positions: 8.6 GB, where "
                     "an app sets no max_length; --ctx-size 4096 states a smaller context (268 MB)"], notes
    assert _context_notes(spec, 4096, 4096, "float", "int4") == [
        "the rotary tables and genai_config's context_length cover the first 4,096 of the model's 131,072 positions (--ctx-size); "
        "a longer context is refused"]


def test_a_folder_with_external_weights_bundles_for_a_phone(preset_dir, tmp_path, run_cli, monkeypatch):
    """Stranger 33: every export past 256 MB keeps its weights in model.onnx.data, and `bundle` refused each (onnxruntime's
    ORT-format converter, given the graph in the bundle's folder without them: "External data path validation failed").
    The weights go beside the graph for the conversion and not into the bundle: model.ort holds them."""
    import edgelm.quantize.onnx as quantize_onnx

    monkeypatch.setattr(quantize_onnx, "EXTERNAL_DATA_OVER", 0)  # a tiny model written as a large one is
    folder = export_onnx(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "onnx", "int4").path
    assert (folder / "model.onnx.data").is_file()
    code, out, err = run_cli("bundle", folder, "--out", tmp_path / "bundle")
    assert code == 0, err
    assert not list((tmp_path / "bundle").glob("model.onnx*")), sorted(p.name for p in (tmp_path / "bundle").iterdir())
    code, out, err = run_cli("verify", tmp_path / "bundle")
    assert code == 0 and "probe matches" in out, (out, err)


def test_the_written_config_takes_bos_and_eos_from_the_tokenizer_not_the_source_config(preset_dir, tmp_path):
    """Stranger finding: a source config.json's eos_token_id past the vocabulary was copied into the ONNX folder's
    config.json, which Optimum's generate() stops at; edgelm and genai_config ran by the tokenizer's."""
    from edgelm.tokenizer import load_tokenizer

    folder = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"eos_token_id": 99_999, "bos_token_id": [7, 8]}))
    tokenizer = load_tokenizer(folder)
    out = export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32", certificate=False).path
    written, genai = (json.loads((out / name).read_text()) for name in ("config.json", "genai_config.json"))
    assert (written["bos_token_id"], written["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id) != (None, None)
    assert (genai["model"]["bos_token_id"], genai["model"]["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id)


@pytest.mark.parametrize("name", ["tiny-nope", "tiny-tokenformer"])
def test_f32_onnx_matches_reference_batch_3(exported, name):
    """Three rows through the graph directly, one KV buffer per layer and side bound as past and present."""
    import onnxruntime as ort

    checkpoint, folder = exported(name)
    spec = checkpoint.spec
    session = ort.InferenceSession(str(folder / "model.onnx"), providers=["CPUExecutionProvider"])
    ids = torch.randint(0, spec.vocab_size, (3, PREFILL + DECODE), generator=torch.Generator().manual_seed(3))
    model = checkpoint.load_model()
    with torch.no_grad():
        expected = model(ids)[0].numpy()
    capacity = PREFILL + DECODE + 7
    buffers = [ort.OrtValue.ortvalue_from_numpy(np.zeros((3, spec.num_kv_heads, capacity, spec.head_dim), np.float32))
               for _ in range(2 * spec.num_layers)]
    got, start = [], 0
    for chunk in [ids[:, :PREFILL]] + [ids[:, t : t + 1] for t in range(PREFILL, PREFILL + DECODE)]:
        n = chunk.shape[1]
        binding = session.io_binding()
        binding.bind_cpu_input("input_ids", chunk.numpy())
        binding.bind_cpu_input("attention_mask", np.ones((3, start + n), np.int64))
        binding.bind_output("logits")
        for i, buffer in enumerate(buffers):
            side = ("key", "value")[i % 2]
            binding.bind_ortvalue_input(f"past_key_values.{i // 2}.{side}", buffer)
            binding.bind_ortvalue_output(f"present.{i // 2}.{side}", buffer)
        session.run_with_iobinding(binding)
        got.append(binding.get_outputs()[0].numpy())
        start += n
    got = np.concatenate(got, axis=1)
    assert got.shape == expected.shape == (3, PREFILL + DECODE, spec.vocab_size)
    assert np.abs(got - expected).max() <= TOL
    assert (got.argmax(-1) == expected.argmax(-1)).all()


GREEDY_PROMPT, GREEDY_NEW = [1, 600, 367, 261, 1871, 452, 4033, 1188], 24


def genai_greedy(folder):
    return genai_greedy_from(folder, GREEDY_PROMPT, GREEDY_NEW)


def greedy(backend, prompt=GREEDY_PROMPT):
    from edgelm.runtime.sampling import Sampler, SamplingOptions

    logits, tokens = backend.prefill(prompt), []
    for _ in range(GREEDY_NEW):
        tokens.append(Sampler(SamplingOptions())(logits))
        logits = backend.decode(tokens[-1])
    return tokens


@pytest.mark.parametrize("name", ["tiny-nope", "tiny-rope"])
def test_onnxruntime_genai_greedy_equals_edgelm_and_reference(exported, name):
    checkpoint, folder = exported(name)
    assert genai_greedy(folder) == greedy(open_artifact(folder).backend) == greedy(TorchBackend(checkpoint.load_model()))


def test_int4_and_int8_quantize_matmuls(exported, tmp_path):
    import onnx

    checkpoint, _ = exported("tiny-tokenformer")
    int4 = export_onnx(checkpoint, tmp_path / "int4", "int4").path
    ops = {node.op_type for node in onnx.load(str(int4 / "model.onnx")).graph.node}
    assert "MatMulNBits" in ops  # Pattention's constant-weight MatMuls were quantized
    int8 = export_onnx(checkpoint, tmp_path / "int8", "int8").path
    ops = {node.op_type for node in onnx.load(str(int8 / "model.onnx")).graph.node}
    assert ops & {"MatMulInteger", "DynamicQuantizeLinear"}
    for folder in (int4, int8):
        logits = open_artifact(folder).backend.forward(list(range(5, 40)))
        assert np.isfinite(logits).all()


def test_weights_beside_the_graph_run_as_the_single_file_does(exported, tmp_path, monkeypatch):
    """Above EXTERNAL_DATA_OVER (256 MB: every real-size model) the weights go to model.onnx.data; a tiny
    model is made to cross it. onnxruntime (edgelm's runtime) and onnxruntime-genai must load the folder
    and give what the single-file export gives."""
    import edgelm.quantize.onnx as onnx_quantize

    checkpoint, _ = exported("tiny-rope")
    single = export_onnx(checkpoint, tmp_path / "single", "int4").path
    monkeypatch.setattr(onnx_quantize, "EXTERNAL_DATA_OVER", 0)
    beside = export_onnx(checkpoint, tmp_path / "beside", "int4").path
    assert not (single / "model.onnx.data").exists()
    assert (beside / "model.onnx.data").stat().st_size > 10 * (beside / "model.onnx").stat().st_size
    ids = list(range(5, 40))
    assert np.array_equal(open_artifact(beside).backend.forward(ids), open_artifact(single).backend.forward(ids))
    assert genai_greedy(beside) == genai_greedy(single)


@pytest.mark.parametrize("options", [{}, {"int4_embedding": True, "int8_lm_head": True}], ids=["plain", "embedding+head"])
def test_int4_written_weight_by_weight_equals_onnxruntime_quantizing_the_whole_graph(exported, tmp_path, options):
    """edgelm quantizes each weight alone as the graph is written; onnxruntime's documented use runs
    MatMulNBitsQuantizer once over the whole fp32 graph. Both must give the same graph and bytes."""
    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    checkpoint, f32 = exported("tiny-ngen4")  # tied LM head: the embedding feeds a Gather and the head
    ours = onnx.load(str(export_onnx(checkpoint, tmp_path / "q", "int4", **options).path / "model.onnx"))
    ops = ("MatMul", "Gather") if options else ("MatMul",)
    whole = onnx.load(str(f32 / "model.onnx"))
    head = [n.name for n in whole.graph.node if "logits" in n.output] if options else []
    config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, op_types_to_quantize=ops,
                                          quant_axes=(("MatMul", 0), ("Gather", 1)))
    quantizer = MatMulNBitsQuantizer(whole, nodes_to_exclude=head, algo_config=config)
    quantizer.process()
    if head:
        config = DefaultWeightOnlyQuantConfig(block_size=32, is_symmetric=True, accuracy_level=4, bits=8)
        quantizer = MatMulNBitsQuantizer(quantizer.model.model, nodes_to_include=head, algo_config=config)
        quantizer.process()
    theirs = quantizer.model.model

    def summary(model):
        nodes = sorted((n.op_type, tuple(sorted((a.name, onnx.helper.get_attribute_value(a)) for a in n.attribute
                                                if a.type == onnx.AttributeProto.INT))) for n in model.graph.node)
        return nodes, sorted(t.raw_data for t in model.graph.initializer)

    assert summary(ours) == summary(theirs)


@pytest.mark.parametrize("name", ["tiny-rope", "tiny-ngen4"])
def test_int8_written_weight_by_weight_equals_quantize_dynamic_over_the_whole_graph(exported, tmp_path, name):
    """onnxruntime's documented int8 path is `quantize_dynamic` over the whole fp32 graph, which
    quantizes an activation once for all the MatMuls that read it (tiny-rope's q/k/v and gate/up;
    tiny-ngen4 fuses them). edgelm's weight-by-weight int8 must give the same nodes, by name, wired the
    same way, and the same bytes: a DynamicQuantizeLinear made twice would be an extra node."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    checkpoint, f32 = exported(name)
    ours = onnx.load(str(export_onnx(checkpoint, tmp_path / "q", "int8").path / "model.onnx"))
    quantize_dynamic(f32 / "model.onnx", tmp_path / "theirs.onnx", weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul"])
    theirs = onnx.load(str(tmp_path / "theirs.onnx"))

    def summary(model):
        nodes = sorted((n.op_type, n.name, tuple(n.input), tuple(n.output),
                        tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))) for n in model.graph.node)
        return nodes, {t.name: onnx.numpy_helper.to_array(t).tobytes() for t in model.graph.initializer}

    assert summary(ours) == summary(theirs)


@pytest.mark.parametrize("name", ["tiny-nope", "tiny-ngen4"])
def test_f16_written_weight_by_weight_equals_convert_float_to_float16_over_the_whole_graph(exported, tmp_path, name):
    """onnxruntime's f16 conversion, `convert_float_to_float16(keep_io_types=False)` over the whole fp32
    graph, against edgelm's (the converter over the graph with the weights as data-less inputs, each
    weight converted as it is written): same nodes by name and wiring, same value types, same bytes."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    checkpoint, f32 = exported(name)
    ours = onnx.load(str(export_onnx(checkpoint, tmp_path / "h", "f16").path / "model.onnx"))
    theirs = convert_float_to_float16(onnx.load(str(f32 / "model.onnx")), keep_io_types=False)

    def summary(model):
        graph = model.graph
        nodes = sorted((n.op_type, n.name, tuple(n.input), tuple(n.output),
                        tuple(sorted((a.name, str(onnx.helper.get_attribute_value(a))) for a in n.attribute))) for n in graph.node)
        types = sorted((v.name, v.type.tensor_type.elem_type) for v in [*graph.input, *graph.output])
        return nodes, types, {t.name: (t.data_type, onnx.numpy_helper.to_array(t).tobytes()) for t in graph.initializer}

    assert summary(ours) == summary(theirs)


def test_int4_options_quantize_the_embedding_and_keep_the_lm_head_at_8_bits(exported, tmp_path):
    """tiny-ngen4 ties its LM head to the embedding: the head must still be a constant the quantizer sees."""
    import onnx

    checkpoint, _ = exported("tiny-ngen4")
    folder = export_onnx(checkpoint, tmp_path / "q", "int4", int4_embedding=True, int8_lm_head=True).path
    graph = onnx.load(str(folder / "model.onnx")).graph
    ops = [node.op_type for node in graph.node]
    assert "GatherBlockQuantized" in ops and "Transpose" not in ops and "MatMul" not in ops
    head = next(node for node in graph.node if "logits" in node.output)
    assert head.op_type == "MatMulNBits" and {a.name: a.i for a in head.attribute}["bits"] == 8
    ids = list(range(5, 69))
    reference = TorchBackend(checkpoint.load_model()).forward(ids)
    ours = open_artifact(folder).backend.forward(ids)
    # 64 positions of a random-weight model (flat logits, so argmax is fragile): a wrong head correlates ~0
    assert np.corrcoef(ours.ravel(), reference.ravel())[0, 1] > 0.95


# mean KL per position over 72; measured 6e-5 to 1e-4 here (3e-5 to 8e-5 on the shipped trained models
# over 200). No top-1 bound: these random-weight models have flat logits (top-1 agreement 93-100 %).
KV_INT8_MAX_KLD = 1e-3


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_int8_kv_cache_stays_close_to_the_reference(exported, tmp_path, name):
    """f32 weights, int8 KV buffers: what is left is the cache's quantization. Rotary families check that
    a key's scale bounds it at every position (the pair norm), NoPE that temperatures do not touch keys."""
    import onnx

    from edgelm.exporters import KV_CALIBRATION_TEXT as CALIBRATION_TEXT

    checkpoint, _ = exported(name)
    folder = export_onnx(checkpoint, tmp_path / "kv8", "f32", kv_cache="int8", calibration_text=CALIBRATION_TEXT).path
    graph = onnx.load(str(folder / "model.onnx")).graph
    assert {i.type.tensor_type.elem_type for i in graph.input if i.name.startswith("past_key_values")} == {onnx.TensorProto.INT8}
    assert json.loads((folder / "edgelm.json").read_text())["kv_cache"] == "int8"
    ids = torch.randint(0, checkpoint.spec.vocab_size, (PREFILL + DECODE,), generator=torch.Generator().manual_seed(4)).tolist()
    reference = torch.tensor(run_positions(TorchBackend(checkpoint.load_model()), ids)).log_softmax(-1)
    ours = torch.tensor(run_positions(open_artifact(folder).backend, ids)).log_softmax(-1)
    kld = (reference.exp() * (reference - ours)).sum(-1)
    assert kld.shape == (PREFILL + DECODE,) and kld.mean() <= KV_INT8_MAX_KLD
    if name == "tiny-rope":  # onnxruntime-genai runs the int8 buffers as they are, shared as past and present
        assert genai_greedy(folder) == greedy(open_artifact(folder).backend)


def test_onnx_bad_input(run_cli, exported, tmp_path):
    _, folder = exported("tiny-rope")
    code, _, err = run_cli("export", "nowhere", "--format", "onnx", "--quant", "bf16")
    assert code == 2 and "unknown --quant 'bf16' for ONNX" in err
    code, _, err = run_cli("export", "nowhere", "--format", "onnx", "--quant", "int8", "--int8-lm-head")
    assert code == 2 and "refine --quant int4" in err
    code, _, err = run_cli("export", "nowhere", "--format", "gguf", "--int4-embedding")
    assert code == 2 and "apply to --format onnx only" in err
    code, _, err = run_cli("export", "nowhere", "--format", "gguf", "--kv-cache", "int8")
    assert code == 2 and "--kv-cache and --calibration-text apply to --format onnx only" in err
    code, _, err = run_cli("export", "nowhere", "--format", "onnx", "--quant", "f16", "--kv-cache", "int8")
    assert code == 2 and "--kv-cache int8 goes with --quant f32, int8 or int4" in err
    code, _, err = run_cli("export", "nowhere", "--format", "onnx", "--calibration-text", "x.txt")
    assert code == 2 and "--calibration-text calibrates --kv-cache int8" in err
    short = tmp_path / "short.txt"
    short.write_text("Too short.")
    code, _, err = run_cli("export", exported("tiny-rope")[0].path, "--format", "onnx", "--quant", "f32", "--kv-cache", "int8",
                           "--calibration-text", short, "--out", tmp_path / "kv8")
    assert code == 2 and "the calibration text has" in err and not (tmp_path / "kv8").exists()
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    code, _, err = run_cli("generate", copy, "--prompt", "Hello", "--provider", "qnn")
    assert code == 2 and "provider 'qnn' is not in this onnxruntime build" in err
    (copy / "model.onnx").write_bytes(b"not a model")
    code, _, err = run_cli("generate", copy, "--prompt", "Hello")
    assert code == 2 and "onnxruntime cannot load model.onnx" in err
    code, _, err = run_cli("inspect", copy)
    assert code == 2 and "model.onnx is not a readable ONNX graph" in err
    (copy / "genai_config.json").write_text("{")
    code, _, err = run_cli("generate", copy, "--prompt", "Hello")
    assert code == 2 and "genai_config.json is not valid JSON" in err
    (copy / "genai_config.json").unlink()
    code, _, err = run_cli("perplexity", copy, "--text", copy / "edgelm.json")
    assert code == 2 and "model.onnx is not a readable ONNX graph" in err  # read as Optimum's layout: config.json, the graph
    (copy / "config.json").unlink()
    code, _, err = run_cli("perplexity", copy, "--text", copy / "edgelm.json")
    assert code == 2 and "genai_config.json and config.json are both missing" in err
    code, _, err = run_cli("export", exported("tiny-rope")[0].path, "--format", "onnx", "--out", copy)
    assert code == 2 and "output already exists" in err
    manifest = json.loads((folder / "edgelm.json").read_text())
    assert manifest["family"] == "llama" and len(manifest["source_checkpoint_sha256"]) == 64


def test_open_reports_only_onnxruntimes_load_errors_as_an_unloadable_file(exported, run_cli, tmp_path, monkeypatch):
    """open() turned every exception into 'onnxruntime cannot load model.onnx': a bug in edgelm's backend read
    as a damaged file. A graph onnxruntime refuses stays one line; edgelm's own error is not hidden."""
    import onnx
    from onnx import TensorProto, helper

    from edgelm.runtime.onnx_backend import OnnxBackend

    from .test_bad_input import assert_user_error

    _, folder = exported("tiny-rope")
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    value = [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1]) for n in ("x", "y")]
    graph = helper.make_graph([helper.make_node("NoSuchOperator", ["x"], ["y"])], "g", value[:1], value[1:])
    onnx.save(helper.make_model(graph), copy / "model.onnx")  # a well-formed protobuf onnxruntime refuses: InvalidGraph
    assert_user_error(run_cli("generate", copy, "--prompt", "Hello"), "onnxruntime cannot load model.onnx", "INVALID_GRAPH", str(copy))

    def bug(self, model, position_ids):
        raise ZeroDivisionError("a bug in edgelm")

    monkeypatch.setattr(OnnxBackend, "_check_against_graph", bug)
    with pytest.raises(ZeroDivisionError):  # before: UserError "onnxruntime cannot load model.onnx (a bug in edgelm)"
        open_artifact(folder)


def test_inspect_reads_an_onnx_folder(run_cli, exported):
    checkpoint, folder = exported("tiny-nope")
    code, out, err = run_cli("inspect", folder, "--json")
    assert code == 0, err
    info = json.loads(out)
    assert (info["family"], info["format"], info["quantization"], info["kv_cache"]) == ("llama", "onnx folder", "f32", "float")
    assert info["operators"]["GroupQueryAttention"] == info["layers"] == checkpoint.spec.num_layers
    assert info["head_temperatures"]["baked_into_weights"] and info["head_temperatures"]["min"] < 1  # the test's random table


def test_parity_command_reports_and_enforces_limits(run_cli, exported):
    checkpoint, folder = exported("tiny-rope")
    code, out, err = run_cli("parity", folder, "--reference", checkpoint.path, "--tokens", 80, "--device", "cpu", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["positions"] == 80 and report["max_abs_logit_diff"] <= TOL and report["top1_agreement"] == 1.0
    assert abs(report["perplexity_change"]) < 1e-5
    assert report["mean_kld"] > 0  # two engines' float rounding: above a limit of 0 (a negative limit is refused, exit 2)
    code, _, err = run_cli("parity", folder, "--reference", checkpoint.path, "--tokens", 80, "--device", "cpu", "--max-kld", "0")
    assert code == 1 and re.search(r"parity check failed: mean KL divergence [0-9.e-]+ above the limit 0$", err.strip()), err  # the value (stranger 20)


def test_bundle_and_verify(run_cli, exported, tmp_path):
    _, folder = exported("tiny-rope")
    code, _, err = run_cli("bundle", folder, "--out", tmp_path / "b")
    assert code == 0, err
    bundle = tmp_path / "b"
    assert {"model.ort", "required_operators.config", "genai_config.json", "edgelm.json"} <= {p.name for p in bundle.iterdir()}
    # the reduced-build config names the graph by its name in the bundle, not by the temporary folder it was made in
    config = (bundle / "required_operators.config").read_text()
    assert "# - model.ort\n" in config and str(tmp_path) not in config and "com.microsoft;1;" in config, config
    manifest = json.loads((bundle / "edgelm.json").read_text())
    assert manifest["family"] == "llama" and set(manifest["files"]) >= {"model.ort", "tokenizer.model"}
    code, out, err = run_cli("verify", bundle)
    assert code == 0 and "match their sha256" in out, err
    # inspect and bench read the ORT-format graph through onnxruntime (onnx cannot parse it: a stranger's finding)
    code, out, err = run_cli("inspect", bundle, "--json")
    assert code == 0 and json.loads(out)["operators"] == {} and json.loads(out)["kv_cache"] == "float", (out, err)
    assert json.loads(out)["position_encoding"] == manifest["position_encoding"] == "rope"
    code, out, err = run_cli("bench", bundle, "--prompt-tokens", 8, "--new-tokens", 2, "--json")
    assert code == 0 and json.loads(out)["decode_tok_s"] > 0, err
    code, _, err = run_cli("bundle", folder, "--out", tmp_path / "z", "--zip")
    assert code == 0 and run_cli("verify", tmp_path / "z.zip")[0] == 0
    code, _, err = run_cli("bundle", folder, "--out", tmp_path / "named.zip")  # a .zip name is a zip (was a folder so named)
    assert code == 0 and zipfile.is_zipfile(tmp_path / "named.zip"), err

    with open(bundle / "tokenizer.model", "ab") as handle:  # tampered
        handle.write(b"x")
    code, out, err = run_cli("verify", bundle, "--json")
    assert code == 1 and err.startswith("verify failed: ") and "tokenizer.model does not match its sha256" in err
    assert json.loads(out)["ok"] is False and "tokenizer.model does not match its sha256" in json.loads(out)["failed"][0]
    manifest["files"]["../escape.txt"] = {"sha256": "0" * 64, "bytes": 1}
    (bundle / "edgelm.json").write_text(json.dumps(manifest))
    code, _, err = run_cli("verify", bundle)
    assert code == 2 and "outside the bundle" in err


def test_bench_compares_with_onnxruntime_genai(run_cli, exported):
    _, folder = exported("tiny-rope")
    code, out, err = run_cli("bench", folder, "--prompt-tokens", 32, "--new-tokens", 8, "--threads", 2, "--compare", "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["engine"] == "onnxruntime (cpu)" and report["raw_engine"] == "onnxruntime-genai"
    assert report["decode_tok_s"] > 0 and report["raw_decode_tok_s"] > 0 and report["edgelm_over_raw"] > 0
    assert len(report["raw_decode_tok_s_runs"]) == report["repetitions"] == 5  # one generator a run, the model opened once


@pytest.mark.parametrize("name", ["tiny-nope", "tiny-rope"])
def test_optimum_generates_edgelm_greedy_tokens(exported, name):
    """Optimum's ORTModelForCausalLM opens an edgelm ONNX folder as it is (config.json, tokenizer files)
    and the standard `generate(**tokenizer(text, return_tensors="pt"))` call continues the text with
    edgelm's greedy tokens (NoPE with non-trivial temperatures folded in included)."""
    from optimum.onnxruntime import ORTModelForCausalLM
    from transformers import AutoTokenizer

    _, folder = exported(name)
    text = "It is a truth universally acknowledged"
    artifact = open_artifact(folder)
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    inputs = hf_tokenizer(text, return_tensors="pt")
    assert inputs["input_ids"][0].tolist() == artifact.tokenizer.encode(text)
    optimum = ORTModelForCausalLM.from_pretrained(folder)
    out = optimum.generate(**inputs, max_new_tokens=GREEDY_NEW, do_sample=False)[0, inputs["input_ids"].shape[1]:].tolist()
    ours = greedy(artifact.backend, inputs["input_ids"][0].tolist())
    assert len(out) >= 1 and out == ours[: len(out)]
    assert len(out) == GREEDY_NEW or out[-1] == artifact.tokenizer.eos_id  # Optimum stops at eos_token_id


@pytest.mark.parametrize("name", ALL_PRESETS)
def test_onnxruntime_genai_applies_the_chat_template_as_edgelm_does(exported, name):
    import onnxruntime_genai as og

    from edgelm.chat import Conversation

    _, folder = exported(name)
    turns = [{"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How?"}]
    conversation = Conversation(open_artifact(folder).tokenizer, 256, 16, system="Be brief.")
    messages = [{"role": "system", "content": "Be brief."}] + turns
    genai_tokenizer = og.Tokenizer(og.Config(str(folder)))  # reads tokenizer.json (made at export from a tokenizer.model)
    rendered = genai_tokenizer.apply_chat_template(json.dumps(messages), add_generation_prompt=True)
    assert rendered == conversation.render(turns) and "Hello" in rendered
    text = "It is a truth universally acknowledged, that a single man in possession of a good fortune"
    assert genai_tokenizer.encode(text).tolist() == conversation.tokenizer.encode(text, add_bos=False)


LIBRARY_SOURCE = r"""
#include <stdio.h>
__attribute__((constructor)) static void loaded(void) { FILE *f = fopen(MARKER, "a"); if (f) { fputs("loaded\n", f); fclose(f); } }
int RegisterCustomOps(void *options, const void *api) { return 0; }
"""


@pytest.mark.parametrize("option", [("custom_ops_library", "libcustom.so"), ("custom_ops_library", "/abs/libcustom.so"),
                                    ("provider_options", [{"qnn": {"backend_path": "libcustom.so"}}])])
def test_a_library_named_in_genai_config_is_never_loaded(run_cli, exported, tmp_path, option):
    """A stranger's finding: a bundle whose genai_config named `session_options.custom_ops_library` (its own .so,
    listed with its sha256 in the manifest) made `edgelm verify` load it in onnxruntime-genai's check: native
    code from the bundle's author, run by verify; `bundle` copied the option from an ONNX folder. Each path in is
    now refused in one line, and the library is not loaded."""
    import hashlib
    import shutil
    import subprocess

    _, folder = exported("tiny-rope")
    assert run_cli("bundle", folder, "--out", tmp_path / "b")[0] == 0
    marker = tmp_path / "LOADED"
    library = tmp_path / "b" / "libcustom.so"
    if shutil.which("gcc"):
        (tmp_path / "lib.c").write_text(LIBRARY_SOURCE.replace("MARKER", json.dumps(str(marker))))
        subprocess.run(["gcc", "-shared", "-fPIC", "-o", library, tmp_path / "lib.c"], check=True)
    else:
        library.write_bytes(b"\x7fELF")  # the refusal comes before any load either way
    key, value = option
    value = str(tmp_path / "b" / "libcustom.so") if value == "/abs/libcustom.so" else value
    for root in (tmp_path / "b", shutil.copytree(folder, tmp_path / "folder")):
        genai = json.loads((root / "genai_config.json").read_text())
        genai["model"]["decoder"].setdefault("session_options", {})[key] = value
        (root / "genai_config.json").write_text(json.dumps(genai))
    manifest = json.loads((tmp_path / "b" / "edgelm.json").read_text())
    for name in ("genai_config.json", "libcustom.so"):
        data = (tmp_path / "b" / name).read_bytes()
        manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (tmp_path / "b" / "edgelm.json").write_text(json.dumps(manifest))
    for command in (("verify", tmp_path / "b"), ("generate", tmp_path / "folder", "--prompt", "Hi"),
                    ("bundle", tmp_path / "folder", "--out", tmp_path / "b2"), ("inspect", tmp_path / "folder")):
        code, _, err = run_cli(*command)
        assert code == 2 and "names a file for onnxruntime-genai to load" in err and len(err.strip().splitlines()) == 1, (command, err)
    assert not marker.exists() and not (tmp_path / "b2").exists()


@pytest.mark.parametrize("padding", ["comment", "files"])
def test_a_manifest_past_its_bound_is_refused_not_taken_for_an_onnx_folder(run_cli, exported, tmp_path, padding):
    """A stranger's finding: a mobile bundle with a changed model.ort, its edgelm.json padded past 1 MiB (a long
    field, or 20,000 made-up files), was no longer detected as a bundle: it ran as the ONNX folder around it,
    every sha256 skipped, and verify said ok."""
    _, folder = exported("tiny-rope")
    assert run_cli("bundle", folder, "--out", tmp_path / "b")[0] == 0
    bundle = tmp_path / "b"
    manifest = json.loads((bundle / "edgelm.json").read_text())
    if padding == "comment":
        manifest["comment"] = "x" * (1 << 20)
    else:
        manifest["files"].update({f"f{i}.bin": {"sha256": "0" * 64, "bytes": 1} for i in range(20000)})
    (bundle / "edgelm.json").write_text(json.dumps(manifest))
    data = bytearray((bundle / "model.ort").read_bytes())
    data[-100] ^= 1
    (bundle / "model.ort").write_bytes(bytes(data))
    for command in (("verify", bundle), ("generate", bundle, "--prompt", "Emma"), ("inspect", bundle)):
        code, _, err = run_cli(*command)
        assert code == 2 and "edgelm.json is" in err and "reads at most" in err, (command, err)


@pytest.mark.parametrize("damage", ["external data truncated", "tokenizer nobody reads"])
def test_bundle_refuses_what_its_runtime_could_not_load(run_cli, exported, tmp_path, damage):
    """A stranger's findings: `bundle` of a folder whose external weights were truncated (or a FIFO) ended in
    onnxruntime's converter's CalledProcessError, a 48-line traceback; a tokenizer.json of nested brackets was
    bundled with exit 0, and the bundle then failed verify. The bundle made is checked as verify checks one,
    before it is renamed into place: one line, exit 2, nothing at --out."""
    import shutil

    import onnx

    _, folder = exported("tiny-rope")
    copy = shutil.copytree(folder, tmp_path / "folder")
    # without its certificate: `bundle` refuses a certified folder changed since export before it converts anything
    # (test_certificate.py); these are the doors after that one
    manifest = json.loads((copy / "edgelm.json").read_text())
    (copy / "edgelm.json").write_text(json.dumps({k: v for k, v in manifest.items() if k != "parity_certificate"}))
    if damage == "external data truncated":
        model = onnx.load(str(copy / "model.onnx"))
        onnx.save_model(model, str(copy / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        with open(copy / "model.onnx.data", "r+b") as data:
            data.truncate(1000)
        needle = "could not convert the graph"
    else:
        (copy / "tokenizer.json").write_text("[" * 20000 + "]" * 20000)
        needle = "the bundle made from it would not load"
    for zipped in ((), ("--zip",)):
        code, _, err = run_cli("bundle", copy, "--out", tmp_path / "b", *zipped)
        assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "b").exists() and not (tmp_path / "b.zip").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["folder"]


def test_parity_measures_the_tokens_a_short_text_has(run_cli, exported, tmp_path):
    """Stranger finding (round 7): `parity --tokens 100000` of a 6,763-token text asked the ONNX export for a
    100,001-token context, past its 4,096-position rotary tables, and was refused (llama.cpp allocated it all); and
    `generate -c 8192` said such a context runs, then refused it."""
    from pathlib import Path

    checkpoint, folder = exported("tiny-rope")
    text = tmp_path / "short.txt"
    text.write_text((Path(__file__).parents[1] / "examples" / "data" / "persuasion.txt").read_text()[:3000])
    code, out, err = run_cli("parity", folder, "--reference", checkpoint.path, "--tokens", 100000, "--text", text, "--json")
    assert code == 0 and 500 < json.loads(out)["positions"] < 4096, (code, out, err)
    code, _, err = run_cli("generate", folder, "--prompt", "It is", "-c", 8192)
    assert code == 2 and "past the 4,096 positions of this model's rotary tables" in err and "is above the" not in err, err
    # a text longer than the tables: the fix names the option of each command that sets the context
    code, _, err = run_cli("parity", folder, "--reference", checkpoint.path, "--tokens", 6000)
    assert code == 2 and "past the 4,096 positions" in err and "--tokens in parity" in err, err


def test_a_rotary_too_narrow_for_group_query_attention_is_refused_before_the_export(preset_dir, tmp_path):
    """Stranger round 10: onnxruntime's GroupQueryAttention needs cos/sin tables a multiple of 8 wide; an NGen4
    rotating 8 dims of its 64-wide heads (rope_pct 0.125) failed only when the finished folder was run, with
    onnxruntime's own log line and "export it again". Now one line before any work, pointing at GGUF."""
    folder = shutil.copytree(preset_dir("tiny-ngen4"), tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps(config | {"rope_pct": 0.125}))
    with pytest.raises(UserError, match="rotates 8 dims of each head; onnxruntime's GroupQueryAttention needs a multiple of 16"):
        export_onnx(open_checkpoint(folder), tmp_path / "onnx", "f32")
    assert not (tmp_path / "onnx").exists()
