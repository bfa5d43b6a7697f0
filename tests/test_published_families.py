"""The RoPE families people put on devices — Llama 3.x (rope_scaling "llama3", tied), Qwen2/2.5
(q/k/v biases, tied; with YaRN as Qwen's model cards configure it for long contexts), Qwen3 (per-head q/k norms, a head_dim of its own, tied), Gemma (GeGLU, (1 + w) norms, √d embedding scale, tied) and SmolLM2 (plain
llama, tied) — against independent references only: tiny random models built by transformers' own
config classes and `save_pretrained`, run by transformers' own `LlamaForCausalLM` /
`Qwen2ForCausalLM` / `Qwen3ForCausalLM`; the GGUF against what llama.cpp's `convert_hf_to_gguf.py`
writes for the same folder, run in stock llama.cpp; the ONNX in onnxruntime, onnxruntime-genai and Optimum.

The folders carry the SentencePiece tokenizer `edgelm init tiny-rope` writes (as TinyLlama does),
which the converter accepts for llama, qwen2 and qwen3; a Llama 3 / Qwen2 byte-level BPE
tokenizer.json, whose pre-tokenizer llama.cpp's converter recognises only by the hash of the
published vocabularies, is not what these folders compare.
"""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from gguf import GGUFReader

from edgelm.export.gguf import export_gguf
from edgelm.export.onnx import export_onnx
from edgelm.formats import open_artifact
from edgelm.models import open_checkpoint
from edgelm.models.presets import copy_tokenizer

from .genai import genai_greedy as genai_greedy_from

CONVERTER = Path(__file__).resolve().parent.parent / "build" / "llama.cpp-converter" / "convert_hf_to_gguf.py"
SIZES = dict(vocab_size=4096, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, max_position_embeddings=512, rms_norm_eps=1e-6, tie_word_embeddings=True)
# original_max_position_embeddings 64 puts the 32-wide heads' wavelengths (6 to 35 000 positions) in
# all three of Llama 3's bands (kept, interpolated, divided by `factor`) within a short sequence
LLAMA3_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                  "original_max_position_embeddings": 64}
# Qwen2.5's long-context setting as its model card gives it ({"type": "yarn", "factor": 4.0,
# "original_max_position_embeddings": 32768}), with the original context at a quarter of SIZES' 512
# positions as there: the 32-wide heads' dims 0-3 keep their frequency, 5-15 are interpolated, 4 blended
QWEN_YARN = {"type": "yarn", "factor": 4.0, "original_max_position_embeddings": 128}
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")  # Qwen2's, less its default system turn
POSITIONS = 48
TOL = 1e-4  # fp32 logits, edgelm's torch module vs transformers
TOL_GGUF = 1e-4  # f32 GGUF in llama.cpp (its own kernels, f32 KV cache) vs transformers; measured ≤ 8.4e-7


def hf_config(family):
    if family == "llama3":
        return transformers.LlamaConfig(**SIZES, rope_theta=10000.0, rope_scaling=LLAMA3_SCALING)
    if family == "qwen2":
        return transformers.Qwen2Config(**SIZES, rope_theta=1000000.0, use_sliding_window=False)
    if family == "qwen2-yarn":
        return transformers.Qwen2Config(**SIZES, rope_theta=1000000.0, use_sliding_window=False, rope_scaling=QWEN_YARN)
    if family == "qwen3":  # 48-wide heads, not hidden / heads = 32, as Qwen3's 128 is not
        return transformers.Qwen3Config(**SIZES, head_dim=48, rope_theta=1000000.0, use_sliding_window=False)
    if family == "gemma":  # 48-wide heads (not hidden / heads = 32), one KV head as Gemma 2B; GeGLU, (1 + w) norms, √d embedding
        return transformers.GemmaConfig(**(SIZES | dict(num_key_value_heads=1)), head_dim=48, rope_theta=10000.0)
    return transformers.LlamaConfig(**SIZES, rope_theta=100000.0)  # smollm2: plain llama, tied


HF_CLASSES = {"qwen2": transformers.Qwen2ForCausalLM, "qwen2-yarn": transformers.Qwen2ForCausalLM, "qwen3": transformers.Qwen3ForCausalLM,
              "gemma": transformers.GemmaForCausalLM}
ARCHES = {"qwen2": "qwen2", "qwen2-yarn": "qwen2", "qwen3": "qwen3", "gemma": "gemma"}  # llama.cpp's arch and genai's model type; llama for the rest


def hf_class(family):
    return HF_CLASSES.get(family, transformers.LlamaForCausalLM)


FAMILIES = ["llama3", "qwen2", "qwen2-yarn", "smollm2", "qwen3", "gemma"]
CHATML_FAMILIES = ("qwen2", "qwen2-yarn", "qwen3")


def write_hf_folder(folder: Path, family: str):
    config = hf_config(family)
    config._attn_implementation = "eager"
    torch.manual_seed({"llama3": 1, "qwen2": 2, "qwen2-yarn": 8, "smollm2": 3, "qwen3": 6, "gemma": 9}[family])
    model = hf_class(family)(config).eval()
    with torch.no_grad():  # norms and biases off their init values, so a dropped one shows
        for name, param in model.named_parameters():
            if "norm" in name or name.endswith("bias"):
                param.add_(0.1 * torch.randn_like(param))
    model.save_pretrained(folder)
    copy_tokenizer("sentencepiece", folder)
    if family in CHATML_FAMILIES:
        tokenizer_config = json.loads((folder / "tokenizer_config.json").read_text())
        (folder / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | {"chat_template": CHATML}))
    return model


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    made = {}

    def get(family):
        if family not in made:
            folder = tmp_path_factory.mktemp(family) / "model"
            made[family] = folder, write_hf_folder(folder, family)
        return made[family]

    return get


def ids_for(spec, n=POSITIONS):
    return torch.randint(0, spec.vocab_size, (1, n), generator=torch.Generator().manual_seed(7))


def hf_logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_torch_logits_equal_transformers(published, family):
    folder, hf = published(family)
    checkpoint = open_checkpoint(folder, position_encoding="rope")  # random llama weights: nothing else can tell
    assert checkpoint.spec.tie_embeddings and "lm_head.weight" not in checkpoint.tensors.shapes
    ids = ids_for(checkpoint.spec)
    with torch.no_grad():
        ours = checkpoint.load_model()(ids)[0]
    delta = (ours - hf_logits(hf, ids)).abs().max().item()
    print(f"\n{family}: torch vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL


@pytest.mark.parametrize("family", ["smollm2", "qwen2"])
def test_a_body_only_checkpoint_loads_as_transformers_loads_it(published, family, tmp_path):
    """A tied model saved from its body alone (`LlamaModel`/`Qwen2Model`'s tensor names, no `model.` prefix) under a
    config naming the model with a head: transformers' from_pretrained adds its base_model_prefix; so does edgelm."""
    from safetensors.torch import load_file, save_file

    folder, hf = published(family)
    body = tmp_path / "model"
    shutil.copytree(folder, body)
    tensors = load_file(folder / "model.safetensors")
    save_file({n.removeprefix("model."): t for n, t in tensors.items()}, body / "model.safetensors", metadata={"format": "pt"})
    checkpoint = open_checkpoint(body, position_encoding="rope")
    ids = ids_for(checkpoint.spec)
    assert torch.equal(hf_logits(hf_class(family).from_pretrained(body, attn_implementation="eager").eval(), ids), hf_logits(hf, ids))
    with torch.no_grad():
        assert (checkpoint.load_model()(ids)[0] - hf_logits(hf, ids)).abs().max().item() <= TOL



def test_a_body_named_alone_beside_its_head_is_refused_as_transformers_refuses_it(tmp_path):
    """Stranger 24: the shipped tiny-rope (untied) with its body's tensors renamed without `model.` and lm_head.weight kept
    was told '1 tensors missing: lm_head.weight', which the file holds. transformers' from_pretrained refuses such a state
    dict ('corrupted'): so does edgelm, saying what it is."""
    from safetensors.torch import load_file, save_file

    from edgelm.errors import UserError

    folder = tmp_path / "m"
    shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope", folder)
    tensors = load_file(folder / "model.safetensors")
    assert "lm_head.weight" in tensors
    save_file({n.removeprefix("model."): t for n, t in tensors.items()}, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="The state dictionary of the model you are trying to load is corrupted"):
        transformers.LlamaForCausalLM.from_pretrained(folder)
    with pytest.raises(UserError, match=r"the body's tensors are named without the 'model' prefix \(a body-only checkpoint\) beside "
                                        r"the head's lm_head\.weight"):
        open_checkpoint(folder)

def test_defaults_decide_rotary_as_transformers_runs_it_or_refuse(published):
    """Stranger finding: a Llama 3.x folder saved by transformers (rope_parameters rope_type llama3) ran without
    rotary by default — the measurement chose "none" at perplexities 2,299 / 2,122 over 600 tokens, no better
    than a uniform guess — and generated other text than transformers. A llama3 scaling declares rotary; an
    untrained folder that declares nothing (SmolLM2-shaped random weights) is refused, not guessed."""
    from edgelm.errors import UserError

    folder, _ = published("llama3")
    checkpoint = open_checkpoint(folder)
    assert (checkpoint.spec.position_encoding, checkpoint.position_encoding_rule) == (
        "rope", "rotary scaling in config.json (rope_type llama3)")
    folder, _ = published("smollm2")
    with pytest.raises(UserError, match="neither better than a uniform guess over its"):
        open_checkpoint(folder)


@pytest.mark.parametrize("family", ["llama3", "qwen2-yarn"])
def test_rope_scaling_changes_the_logits(published, family):
    """The references above would not notice a scaling ignored unless it moves the logits well past TOL."""
    folder, hf = published(family)
    plain = hf_class(family)(hf.config.__class__(**{**hf.config.to_dict(), "rope_scaling": None})).eval()
    plain.load_state_dict(hf.state_dict())
    ids = ids_for(open_checkpoint(folder, position_encoding="rope").spec)
    assert (hf_logits(plain, ids) - hf_logits(hf, ids)).abs().max().item() > 100 * TOL


def saved(model_class, config, seed: int, folder: Path):
    """A random transformers model of `config`, saved with the tokenizer, and edgelm's checkpoint of the folder."""
    config._attn_implementation = "eager"
    torch.manual_seed(seed)
    hf = model_class(config).eval()
    hf.save_pretrained(folder)
    copy_tokenizer("sentencepiece", folder)
    return hf, open_checkpoint(folder, position_encoding="rope")


def test_linear_scaling_equals_transformers(tmp_path):
    """Linear rope scaling (every frequency / factor) as the typed encoding (models/positions.py)
    computes it, against transformers' LlamaForCausalLM with the same config: the torch module, and
    the f32 GGUF (rope.scaling.type linear, rope.scaling.factor) in stock llama.cpp. (Partial rotary is
    compared with GPT-NeoX's own code in test_families.py: transformers 4.57's Llama rotates whole heads.)"""
    from llama_cpp import Llama

    config = transformers.LlamaConfig(**SIZES, rope_theta=10000.0, rope_scaling={"rope_type": "linear", "factor": 4.0})
    hf, checkpoint = saved(transformers.LlamaForCausalLM, config, 4, tmp_path / "model")
    ids = ids_for(checkpoint.spec)
    expected = hf_logits(hf, ids)
    unscaled = transformers.LlamaForCausalLM(transformers.LlamaConfig(**{**config.to_dict(), "rope_scaling": None})).eval()
    unscaled.load_state_dict(hf.state_dict())
    assert (hf_logits(unscaled, ids) - expected).abs().max().item() > 100 * TOL  # the scaling shows in the logits
    with torch.no_grad():
        delta = (checkpoint.load_model()(ids)[0] - expected).abs().max().item()
    gguf = export_gguf(checkpoint, tmp_path / "m.gguf", "f32", certificate=False).path
    assert arch_keys(gguf)[1]["llama.rope.scaling.type"] == "linear"
    llm = Llama(model_path=str(gguf), n_ctx=128, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)  # 0: f32 KV
    llm.eval(ids[0].tolist())
    delta_gguf = float(np.abs(np.array(llm.scores[: ids.shape[1]]) - expected[0].numpy()).max())
    print(f"\nlinear scaling: torch vs transformers max |Δlogit| {delta:.3g}, f32 GGUF in llama.cpp {delta_gguf:.3g}")
    assert delta <= TOL and delta_gguf <= TOL_GGUF


def test_yarn_transformers_computes_and_llama_cpp_does_not(tmp_path):
    """YaRN with its own beta_fast, beta_slow and attention_factor: the torch module equals transformers; llama.cpp's
    qwen2 reads none of those three keys (it runs 32, 1 and 0.1·ln(factor) + 1), so the GGUF export is refused
    with the reason, before any file is written, and the ONNX export (whose rotary tables carry them) runs."""
    from edgelm.errors import UserError

    scaling = {**QWEN_YARN, "beta_fast": 16.0, "beta_slow": 2.0, "attention_factor": 1.3}
    config = transformers.Qwen2Config(**SIZES, rope_theta=1000000.0, use_sliding_window=False, rope_scaling=scaling)
    hf, checkpoint = saved(transformers.Qwen2ForCausalLM, config, 9, tmp_path / "model")
    ids = ids_for(checkpoint.spec)
    with torch.no_grad():
        assert (checkpoint.load_model()(ids)[0] - hf_logits(hf, ids)).abs().max().item() <= TOL
    with pytest.raises((UserError, ValueError), match="llama.cpp runs YaRN with beta_fast 32, beta_slow 1"):
        export_gguf(checkpoint, tmp_path / "m.gguf", "f32", certificate=False)
    assert not list(tmp_path.glob("m.gguf*"))
    onnx = export_onnx(checkpoint, tmp_path / "onnx", "f32").path
    last = open_artifact(onnx).backend.prefill(ids[0].tolist())
    assert float(np.abs(last - hf_logits(hf, ids)[0, -1].numpy()).max()) <= TOL


@pytest.mark.parametrize("declared", [{"truncate": False}, {"mscale": 1.0, "mscale_all_dim": 0.707}, {"beta_fast": 1.0},
                                      {"factor": 1e-30}])
def test_yarn_variants_computed_otherwise_are_refused(tmp_path, declared):
    """gpt-oss's untruncated ramp and DeepSeek's mscale pair change what transformers computes: refused by their
    key, not run as plain YaRN; a beta_fast at or below beta_slow has no ramp; a factor below 1 shrinks no context
    (transformers warns; at 1e-30 its float32 rounding and ours drifted 0.29 apart, round 12b)."""
    from edgelm.errors import UserError

    write_hf_folder(tmp_path, "smollm2")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"rope_scaling": {**QWEN_YARN, **declared}}))
    with pytest.raises(UserError, match="truncate = False is not implemented|mscale = 1.0 is not implemented|beta_fast must be larger|"
                                        "factor must be at least 1"):
        open_checkpoint(tmp_path, position_encoding="rope")


def test_unimplemented_rope_scaling_is_refused(tmp_path):
    from edgelm.errors import UserError

    write_hf_folder(tmp_path, "smollm2")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | {"rope_scaling": {"type": "dynamic", "factor": 2.0}}))
    with pytest.raises(UserError, match="rope_type = 'dynamic' is not implemented"):
        open_checkpoint(tmp_path, position_encoding="rope")


@pytest.mark.parametrize("declared", [{"partial_rotary_factor": 0.5}, {"rope_parameters": {"rope_theta": 1e5, "rope_type": "default",
                                      "partial_rotary_factor": 0.5}}, {"attention_bias": True}, {"mlp_bias": True}])
def test_llama_variants_transformers_runs_otherwise_are_refused_by_their_key(tmp_path, declared):
    """Stranger round 10: a LlamaConfig(partial_rotary_factor=0.5) folder ran rotating half of each head where
    transformers' LlamaForCausalLM rotates all of it (5.x; 4.57 fails), other greedy tokens with no word; one with
    attention_bias was refused for its tensors, not for the key that declares them."""
    from edgelm.errors import UserError

    write_hf_folder(tmp_path, "smollm2")
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(config | declared))
    key = next(k for k in ("partial_rotary_factor", "attention_bias", "mlp_bias") if k in json.dumps(declared))
    with pytest.raises(UserError, match=f"{key} = .* is not implemented"):
        open_checkpoint(tmp_path, position_encoding="rope")


@pytest.fixture(scope="module")
def converted(published, tmp_path_factory):
    """family → (edgelm's f16 GGUF, the converter's f16 GGUF) of the same folder."""
    if not CONVERTER.is_file():
        pytest.skip(f"{CONVERTER} is missing: `make test` fetches it")
    made = {}

    def get(family, outtype="f16"):
        if (family, outtype) not in made:
            folder, _ = published(family)
            root = tmp_path_factory.mktemp(f"{family}-{outtype}")
            theirs = root / "converter.gguf"
            subprocess.run([sys.executable, str(CONVERTER), str(folder), "--outfile", str(theirs), "--outtype", outtype],
                           check=True, capture_output=True, text=True)
            ours = export_gguf(open_checkpoint(folder, position_encoding="rope"), root / "edgelm.gguf", outtype).path
            made[family, outtype] = ours, theirs
        return made[family, outtype]

    return get


def tensors(path):
    return {t.name: t for t in GGUFReader(str(path)).tensors}


@pytest.mark.parametrize("outtype", ["f16", "f32"])
@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_tensors_equal_the_converters(converted, family, outtype):
    ours, theirs = (tensors(p) for p in converted(family, outtype))
    assert sorted(ours) == sorted(theirs)
    assert "output.weight" not in ours  # tied: llama.cpp reads token_embd
    assert ("rope_freqs.weight" in ours) == (family == "llama3")
    for name, tensor in theirs.items():
        mine = ours[name]
        assert (list(mine.shape), mine.tensor_type) == (list(tensor.shape), tensor.tensor_type), name
        assert np.array(mine.data).tobytes() == np.array(tensor.data).tobytes(), name


def arch_keys(path):
    reader = GGUFReader(str(path))
    arch = reader.fields["general.architecture"].contents()
    return arch, {k: f.contents() for k, f in reader.fields.items() if k.startswith(arch + ".")}


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_arch_keys_equal_the_converters(converted, family):
    (our_arch, ours), (their_arch, theirs) = (arch_keys(p) for p in converted(family))
    assert our_arch == their_arch == ARCHES.get(family, "llama")
    for key, value in theirs.items():
        assert ours.get(key) == pytest.approx(value), key


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_general_keys_the_converter_writes_are_written(converted, family):
    """general.type, size_label and quantization_version as the converter writes them at every type (stranger 46: an f16
    file lacked quantization_version, and every file type and size_label)."""
    keys = ("general.type", "general.size_label", "general.quantization_version", "general.file_type")
    ours, theirs = ({k: GGUFReader(str(p)).fields[k].contents() for k in keys if k in GGUFReader(str(p)).fields} for p in converted(family))
    assert ours == theirs and len(theirs) == len(keys), (ours, theirs)


@pytest.mark.parametrize("family", FAMILIES)
def test_tied_gguf_is_as_small_as_the_converters(converted, family):
    """The same tensor bytes; the files differ by edgelm's own keys (its config, provenance and certificate), a few
    general keys and the padding to the data's alignment. The source tokenizer files are not among them: llama.cpp
    reads its own vocabulary keys (stranger 46: a second copy of tokenizer.json in every llama GGUF, ~270 KB here,
    ~9 MB for Llama 3's)."""
    paths = converted(family)
    ours, theirs = (p.stat().st_size for p in paths)
    our_data, their_data = (sum(int(t.n_bytes) for t in tensors(p).values()) for p in paths)
    own_keys = sum(sum(part.nbytes for part in field.parts)
                   for key, field in GGUFReader(str(paths[0])).fields.items() if key.startswith("edgelm."))
    print(f"\n{family} f16 GGUF: edgelm {ours} B ({our_data} B of tensors, {own_keys} B of edgelm keys), "
          f"convert_hf_to_gguf {theirs} B ({their_data} B of tensors)")
    assert our_data == their_data
    assert ours - own_keys <= theirs + 1024  # the untied f16 output would add 1 MB
    assert not [key for key in GGUFReader(str(paths[0])).fields if key.startswith("edgelm.tokenizer_file")]


@pytest.mark.parametrize("family", FAMILIES)
def test_gguf_runs_in_llama_cpp_as_transformers(published, converted, family):
    from llama_cpp import Llama

    folder, hf = published(family)
    ours, _ = converted(family, "f32")
    llm = Llama(model_path=str(ours), n_ctx=128, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)  # 0: f32 KV
    ids = ids_for(open_checkpoint(folder, position_encoding="rope").spec)
    llm.eval(ids[0].tolist())
    got = np.array(llm.scores[: ids.shape[1]])
    delta = float(np.abs(got - hf_logits(hf, ids)[0].numpy()).max())
    print(f"\n{family}: f32 GGUF in llama.cpp vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL_GGUF


GREEDY_PROMPT, GREEDY_NEW = [1, 600, 367, 261, 1871, 452, 4033, 1188], 16


def reference_greedy(hf):
    with torch.no_grad():
        out = hf.generate(torch.tensor([GREEDY_PROMPT]), max_new_tokens=GREEDY_NEW, do_sample=False, min_new_tokens=GREEDY_NEW,
                          pad_token_id=0)
    return out[0, len(GREEDY_PROMPT):].tolist()


def backend_greedy(backend):
    logits, tokens = backend.prefill(GREEDY_PROMPT), []
    for _ in range(GREEDY_NEW):
        tokens.append(int(np.argmax(logits)))
        logits = backend.decode(tokens[-1])
    return tokens


def genai_greedy(folder):
    return genai_greedy_from(folder, GREEDY_PROMPT, GREEDY_NEW, exact_length=True)


@pytest.mark.parametrize("family", FAMILIES)
def test_onnx_greedy_equals_transformers(published, tmp_path, family):
    folder, hf = published(family)
    checkpoint = open_checkpoint(folder, position_encoding="rope")
    onnx = export_onnx(checkpoint, tmp_path / "onnx", "f32").path
    ids = ids_for(checkpoint.spec)
    last = open_artifact(onnx).backend.prefill(ids[0].tolist())  # the logits, not only their argmax
    delta = float(np.abs(last - hf_logits(hf, ids)[0, -1].numpy()).max())
    print(f"\n{family}: f32 ONNX in onnxruntime vs transformers max |Δlogit| at position {POSITIONS} {delta:.3g}")
    assert delta <= TOL
    expected = reference_greedy(hf)
    assert backend_greedy(open_artifact(onnx).backend) == expected  # onnxruntime
    assert genai_greedy(onnx) == expected
    # the model type onnxruntime-genai's own builder writes for the family (what `verify` prints as its family)
    assert json.loads((onnx / "genai_config.json").read_text())["model"]["type"] == ARCHES.get(family, "llama")
    if getattr(hf.config, "head_dim", None) not in (None, hf.config.hidden_size // hf.config.num_attention_heads):
        # Optimum 2.1's ORTModelForCausalLM sizes its empty cache hidden_size // heads wide for every model
        # type but a few of Gemma's, gpt_oss and nemotron (optimum/onnxruntime/modeling_decoder.py), so it
        # refuses the cache of a Qwen3 (head_dim 128 at 0.6B, where hidden_size / heads is 64)
        return
    from optimum.onnxruntime import ORTModelForCausalLM  # Optimum opens the folder as it is (its config.json)

    optimum = ORTModelForCausalLM.from_pretrained(onnx)
    out = optimum.generate(torch.tensor([GREEDY_PROMPT]), max_new_tokens=GREEDY_NEW, min_new_tokens=GREEDY_NEW, do_sample=False,
                           pad_token_id=0)
    assert out[0, len(GREEDY_PROMPT):].tolist() == expected


@pytest.mark.parametrize("family", ["llama3", "qwen2"])
def test_nope_with_head_temperatures_equals_transformers_without_rotary(published, tmp_path, family, monkeypatch):
    """NoPE and head temperatures on a published family: transformers with rotary made the identity
    and each head's q_proj rows (and bias) multiplied by λ_h, against edgelm's torch module and its
    f32 GGUF in llama.cpp (arch granite)."""
    from llama_cpp import Llama

    folder, hf = published(family)
    model = hf_class(family)(hf.config).eval()
    model.load_state_dict(hf.state_dict())
    table = 0.5 + torch.rand(2, 4, generator=torch.Generator().manual_seed(5))
    (tmp_path / "temps.json").write_text(json.dumps({"layers": table.tolist()}))
    with torch.no_grad():
        for layer, row in zip(model.model.layers, table):
            scale = row.repeat_interleave(32)
            layer.self_attn.q_proj.weight.mul_(scale[:, None])
            if layer.self_attn.q_proj.bias is not None:
                layer.self_attn.q_proj.bias.mul_(scale)
    module = sys.modules[type(model).__module__]
    monkeypatch.setattr(module, "apply_rotary_pos_emb", lambda q, k, *args, **kwargs: (q, k))
    checkpoint = open_checkpoint(folder, position_encoding="none", head_temperatures=tmp_path / "temps.json")
    ids = ids_for(checkpoint.spec)
    expected = hf_logits(model, ids)
    with torch.no_grad():
        assert (checkpoint.load_model()(ids)[0] - expected).abs().max().item() <= TOL
    gguf = export_gguf(checkpoint, tmp_path / "nope.gguf", "f32").path
    assert "output.weight" not in tensors(gguf)
    llm = Llama(model_path=str(gguf), n_ctx=128, logits_all=True, n_threads=2, verbose=False, type_k=0, type_v=0)
    llm.eval(ids[0].tolist())
    delta = float(np.abs(np.array(llm.scores[: ids.shape[1]]) - expected[0].numpy()).max())
    print(f"\n{family} NoPE + temperatures: f32 GGUF (granite) in llama.cpp vs transformers max |Δlogit| {delta:.3g}")
    assert delta <= TOL_GGUF


def test_edgelm_nope_folder_reopens_as_its_family(published, tmp_path):
    """A NoPE Qwen2 edgelm writes says so in config.json and reads back as qwen2 without rotary."""
    from edgelm.models import save_checkpoint

    folder, _ = published("qwen2")
    checkpoint = open_checkpoint(folder, position_encoding="none")
    out = tmp_path / "nope"
    out.mkdir()
    shutil.copy(folder / "tokenizer.model", out)
    save_checkpoint(checkpoint.load_model(), checkpoint.family, checkpoint.config, out, torch.float32, with_temperatures=False)
    again = open_checkpoint(out)
    assert (again.family.name, again.spec.position_encoding) == ("qwen2", "none")


def test_qwen3_takes_no_head_temperatures(published, tmp_path):
    """Qwen3's q-norm divides away any scale of a head's query projection, and its one weight is shared
    by every head: no exported file can carry λ. A table other than all 1 is refused where it is given,
    and `calibrate` refuses before it trains (it ran 130 s and wrote a table no export could use)."""
    from edgelm.errors import UserError

    folder, _ = published("qwen3")
    table = torch.ones(2, 4)
    assert open_checkpoint(folder, head_temperatures=table.tolist()).spec.family == "qwen3"  # λ = 1: nothing to fold
    table[1, 2] = 1.5
    (tmp_path / "temps.json").write_text(json.dumps({"layers": table.tolist()}))
    for given in (tmp_path / "temps.json", table.tolist()):
        with pytest.raises(UserError, match="head temperatures cannot be folded into a qwen3 model's weights"):
            open_checkpoint(folder, head_temperatures=given)
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged. " * 400)
    done = subprocess.run([sys.executable, "-m", "edgelm", "calibrate", str(folder), "--text", str(text), "--target-length", "64",
                           "--out", str(tmp_path / "out.json")], capture_output=True, text=True, timeout=120)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1), done.stderr
    assert "head temperatures cannot be folded into a qwen3 model's weights" in done.stderr
    assert not (tmp_path / "out.json").exists()
