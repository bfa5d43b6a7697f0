"""Checkpoints as their authors publish them: read without editing a file, and computed as the
authors' own code computes them."""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from edgelm.models import open_checkpoint

from .published_layouts import (TOKENFORMER_ROWS, TOKENFORMER_TOKENS, strip_position_encoding_facts, tokenformer_config,
                                tokenformer_state_dict, write_hub_cache, write_tokenformer_neox)

SHIPPED = Path(__file__).resolve().parent.parent / "examples" / "models"
POSITIONS = 48
TOL = 1e-4


@pytest.fixture(scope="module")
def neox_folder(tmp_path_factory):
    return write_tokenformer_neox(tmp_path_factory.mktemp("published") / "TokenFormer-tiny")


def megatron_tokenformer(tensors, cfg, ids):
    """The forward pass of the TokenFormer repository's megatron/model/tokenformer.py and norms.py,
    restated for one sequence: Pattention with norm_activation_type "l2_norm_gelu" (scores / ‖scores‖₂
    · √n, then exact F.gelu), LayerNorm_NonParam (F.layer_norm, ε = layernorm_epsilon 1e-5) before
    attention and MLP, rotary from GPT-NeoX's positional_embeddings (rotate-half on the first
    int(head_dim · rotary_pct) dims, base 10000), sequential residuals, the final affine LayerNorm
    (NormPipe), logits against the tied embedding (parallel_lm_logits)."""
    d, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_layers"]
    hd, eps = d // heads, 1e-5
    rot = int(hd * cfg["rotary_pct"])
    inv_freq = 1.0 / (10000 ** (torch.arange(0, rot, 2).float() / rot))
    freqs = torch.outer(torch.arange(len(ids)).float(), inv_freq)
    emb = torch.cat([freqs, freqs], dim=-1)  # [seq, rot]
    cos, sin = emb.cos()[:, None, :], emb.sin()[:, None, :]

    def rotate_half(x):
        x1, x2 = x[..., : x.shape[-1] // 2], x[..., x.shape[-1] // 2 :]
        return torch.cat((-x2, x1), dim=-1)

    def rotary(x):  # [seq, heads, hd]
        x_rot, x_pass = x[..., :rot], x[..., rot:]
        return torch.cat([x_rot * cos + rotate_half(x_rot) * sin, x_pass], dim=-1)

    def pattention(x, prefix):
        key, value = tensors[prefix + ".key_param_tokens"], tensors[prefix + ".value_param_tokens"]
        weight = x @ key.transpose(-2, -1)
        weight = weight / torch.norm(weight, p=2, dim=-1, keepdim=True) * math.sqrt(weight.shape[-1])
        return F.gelu(weight) @ value

    x = tensors["sequential.0.word_embeddings.weight"][ids]
    mask = torch.ones(len(ids), len(ids), dtype=torch.bool).tril()
    for i in range(layers):
        pre = f"sequential.{i + 2}"
        h = F.layer_norm(x, (d,), eps=eps)
        q, k, v = (pattention(h, f"{pre}.attention.{n}").view(-1, heads, hd) for n in ("query", "key", "value"))
        q, k = rotary(q), rotary(k)
        scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(hd)
        context = torch.einsum("hqk,khd->qhd", scores.masked_fill(~mask, float("-inf")).softmax(-1), v)
        x = x + pattention(context.reshape(-1, d), f"{pre}.attention.proj")
        x = x + pattention(F.layer_norm(x, (d,), eps=eps), f"{pre}.mlp")
    final = f"sequential.{layers + 3}.norm"
    x = F.layer_norm(x, (d,), tensors[final + ".weight"], tensors[final + ".bias"], eps)
    return F.linear(x, tensors["sequential.0.word_embeddings.weight"])


@torch.no_grad()
def test_tokenformer_neox_layout_matches_the_authors_forward(neox_folder):
    checkpoint = open_checkpoint(neox_folder, allow_pickle=True)
    assert checkpoint.spec.vocab_size == TOKENFORMER_ROWS  # from the embedding: config.json has no vocab_size
    assert checkpoint.config["vocab_size"] == TOKENFORMER_ROWS  # the complete config an export stores
    model = checkpoint.load_model()
    ids = torch.randint(0, TOKENFORMER_TOKENS, (POSITIONS,))
    expected = megatron_tokenformer(tokenformer_state_dict(tokenformer_config()), tokenformer_config(), ids)
    logits, _ = model(ids[None])
    assert (logits[0] - expected).abs().max().item() <= TOL  # all POSITIONS positions, all 512 logits


@pytest.mark.parametrize("key,value", [
    ("norm", "rmsnorm"), ("final_norm", "layernorm_nonparam"), ("norm_activation_type", "gelu_l2_norm"),
    ("pos_emb", "alibi"), ("no_weight_tying", True), ("gpt_j_residual", True),
])
def test_tokenformer_variant_not_implemented_is_one_line(tmp_path, run_cli, key, value):
    folder = write_tokenformer_neox(tmp_path / "m", tokenformer_config(**{key: value}))
    code, out, err = run_cli("inspect", folder, "--allow-pickle")
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and f"{key} = {value!r} is not implemented" in err and "config.json" in err


def test_no_vocab_size_and_no_embedding_is_one_line(tmp_path, run_cli):
    folder = write_tokenformer_neox(tmp_path / "m")
    tensors = torch.load(folder / "pytorch_model.bin", weights_only=True)
    del tensors["sequential.0.word_embeddings.weight"]
    torch.save(tensors, folder / "pytorch_model.bin")
    code, _, err = run_cli("inspect", folder, "--allow-pickle")
    assert code == 2 and err.count("\n") == 1
    assert "lacks 'vocab_size'" in err and "sequential.0.word_embeddings.weight" in err


COMMANDS_THAT_LOAD_A_CHECKPOINT = [
    ("inspect",), ("generate", "--prompt", "Hi"), ("perplexity", "--text", "TEXT"), ("export", "--format", "gguf"),
    ("chat",), ("bench",), ("calibrate", "--text", "TEXT", "--target-length", "64", "--out", "OUT"),
]


@pytest.mark.parametrize("command", COMMANDS_THAT_LOAD_A_CHECKPOINT, ids=lambda c: c[0])
def test_pickle_refused_in_one_line_by_every_command(neox_folder, tmp_path, run_cli, command):
    text = tmp_path / "t.txt"
    text.write_text("Some text. " * 50)
    args = [str(text) if a == "TEXT" else str(tmp_path / "out.json") if a == "OUT" else a for a in command]
    code, out, err = run_cli(args[0], neox_folder, *args[1:])
    assert code == 2 and err.count("\n") == 1
    assert "pickle checkpoint refused" in err and "--allow-pickle" in err and "pytorch_model.bin" in err


def test_parity_reference_pickle_refused_without_the_option(neox_folder, tmp_path, run_cli):
    code, _, err = run_cli("export", neox_folder, "--allow-pickle", "--format", "gguf", "--quant", "f32",
                           "--out", tmp_path / "m.gguf")
    assert code == 0
    code, _, err = run_cli("parity", tmp_path / "m.gguf", "--reference", neox_folder)
    assert code == 2 and "pickle checkpoint refused" in err


def test_tokenformer_neox_layout_whole_pipeline(neox_folder, tmp_path, run_cli):
    """inspect, generate, perplexity, export GGUF and ONNX at f32 and int4, parity of each against the
    pickle folder (64 positions each), without touching a file of the published folder."""
    before = {p.name: p.read_bytes() for p in neox_folder.iterdir()}
    code, out, _ = run_cli("inspect", neox_folder, "--allow-pickle", "--json")
    assert code == 0 and json.loads(out)["vocab_size"] == TOKENFORMER_ROWS
    code, out, _ = run_cli("generate", neox_folder, "--allow-pickle", "--prompt", "It was", "--max-new-tokens", "8",
                           "--temperature", "0")
    assert code == 0 and out.startswith("It was")
    reference_text = out
    text = tmp_path / "t.txt"
    text.write_text("It was a truth universally acknowledged. " * 20)
    code, out, _ = run_cli("perplexity", neox_folder, "--allow-pickle", "--text", text, "--json")
    assert code == 0 and math.isfinite(json.loads(out)["perplexity"])
    # mean KL divergence per position, nats; int4 of random Gaussian parameter tokens measured 0.061 in
    # both formats (Q4_0 GGUF, MatMulNBits ONNX), top-1 agreement 0.69-0.70
    limits = {"f32": 1e-6, "int4": 0.08}
    for fmt, suffix in (("gguf", ".gguf"), ("onnx", "-onnx")):
        for quant, max_kld in limits.items():
            artifact = tmp_path / f"m-{quant}{suffix}"
            code, _, err = run_cli("export", neox_folder, "--allow-pickle", "--format", fmt, "--quant", quant, "--out", artifact)
            assert code == 0, err
            code, out, err = run_cli("parity", artifact, "--reference", neox_folder, "--allow-pickle", "--tokens", "64",
                                     "--max-kld", str(max_kld), "--json")
            report = json.loads(out)
            assert code in (0, 1), err
            assert report["positions"] == 64 and report["mean_kld"] <= max_kld, (artifact.name, report["mean_kld"])
            if quant == "f32":
                assert report["top1_agreement"] == 1.0
                code, out, _ = run_cli("generate", artifact, "--prompt", "It was", "--max-new-tokens", "8", "--temperature", "0")
                assert code == 0 and out == reference_text
    assert {p.name: p.read_bytes() for p in neox_folder.iterdir()} == before


# --- the position encoding of a Llama-style checkpoint: declared, known, or measured ---

def test_stripped_trained_nope_is_measured_nope_and_exports_granite(tmp_path, run_cli):
    folder = strip_position_encoding_facts(SHIPPED / "tiny-nope", tmp_path / "nope")
    code, out, err = run_cli("inspect", folder, "--json")
    described = json.loads(out)
    assert code == 0 and described["position_encoding"] == "none"
    assert described["position_encoding_rule"].startswith("measured")
    ppl = described["position_encoding_perplexities"]
    assert ppl["rope"] > 1.02 * ppl["none"]  # both perplexities reported: 244.1 with rotary, 233.6 without
    assert "note: position encoding 'none', measured" in err
    code, out, _ = run_cli("export", folder, "--format", "gguf", "--quant", "f16", "--out", tmp_path / "n.gguf")
    assert code == 0 and "arch granite" in out


def test_stripped_trained_rope_is_measured_rope(tmp_path):
    checkpoint = open_checkpoint(strip_position_encoding_facts(SHIPPED / "tiny-rope", tmp_path / "rope"))
    assert checkpoint.spec.position_encoding == "rope" and checkpoint.position_encoding_rule.startswith("measured")
    assert checkpoint.position_encoding_perplexities["none"] > 2 * checkpoint.position_encoding_perplexities["rope"]


def test_random_weights_cannot_be_told_and_ask_for_the_option(preset_dir, tmp_path, run_cli):
    folder = strip_position_encoding_facts(preset_dir("tiny-rope"), tmp_path / "random")
    code, out, err = run_cli("export", folder, "--format", "gguf", "--out", tmp_path / "x.gguf")
    assert code == 2 and err.count("\n") == 1 and "--position-encoding" in err and "cannot tell" in err
    assert not (tmp_path / "x.gguf").exists()
    code, out, _ = run_cli("inspect", folder, "--position-encoding", "none", "--json")
    assert code == 0 and json.loads(out)["position_encoding_rule"] == "--position-encoding option"


def test_folders_edgelm_writes_declare_their_position_encoding(preset_dir):
    for name, encoding in (("tiny-nope", "none"), ("tiny-rope", "rope")):
        config = json.loads((preset_dir(name) / "config.json").read_text())
        assert config["edgelm"]["position_encoding"] == encoding
        assert open_checkpoint(preset_dir(name)).position_encoding_rule == "edgelm block in config.json"


def test_written_token_ids_match_the_tokenizer(preset_dir):
    from edgelm.tokenizer import load_tokenizer

    for folder in [preset_dir("tiny-rope"), preset_dir("tiny-tokenformer"), *SHIPPED.iterdir()]:
        config, tokenizer = json.loads((folder / "config.json").read_text()), load_tokenizer(folder)
        assert (config["bos_token_id"], config["eos_token_id"]) == (tokenizer.bos_id, tokenizer.eos_id), folder.name


def test_transformers_refuses_an_edgelm_nope_folder_instead_of_running_it_with_rotary():
    from transformers import AutoConfig

    with pytest.raises(ValueError, match="edgelm_nope_llama"):
        AutoConfig.from_pretrained(SHIPPED / "tiny-nope")


# --- hub ids, through huggingface_hub's cache (offline) ---

NOPE_ID = "AntNLP/TinyLlama-NoPE-1.1B"


def edgelm_offline(hf_home, *args, cwd=None):
    """The CLI in a fresh process, as a user runs it: huggingface_hub reads HF_HOME and
    HF_HUB_OFFLINE when it is imported."""
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "edgelm", *map(str, args)], capture_output=True, text=True, env=env, cwd=cwd)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def hub_cache(tmp_path_factory, preset_dir):
    """AntNLP/TinyLlama-NoPE-1.1B as published (plain llama config, no scale_param), random weights:
    only the table of known checkpoints can tell it is NoPE, since measurement refuses random weights."""
    root = tmp_path_factory.mktemp("hf")
    plain = strip_position_encoding_facts(preset_dir("tiny-rope"), root / "plain")
    write_hub_cache(root / "home", NOPE_ID, plain)
    return root / "home"


def test_hub_id_from_the_cache_uses_the_known_checkpoint_table(hub_cache, tmp_path):
    code, out, err = edgelm_offline(hub_cache, "inspect", NOPE_ID, "--json")
    assert code == 0, err
    described = json.loads(out)
    assert described["position_encoding"] == "none"
    assert described["position_encoding_rule"] == f"known published checkpoint {NOPE_ID}"
    code, out, err = edgelm_offline(hub_cache, "export", NOPE_ID + "@main", "--format", "gguf", "--quant", "int4", cwd=tmp_path)
    assert code == 0 and "arch granite" in out, err
    assert (tmp_path / "TinyLlama-NoPE-1.1B-q4_k_m.gguf").is_file()  # default output: the current folder
    # the snapshot folder itself, given as a path, is recognised as the same checkpoint
    snapshot = next((hub_cache / "hub").glob("models--*/snapshots/*"))
    assert open_checkpoint(snapshot).position_encoding_rule == f"known published checkpoint {NOPE_ID}"


def test_smollm2_by_hub_id_is_rotary_by_the_table(preset_dir, tmp_path):
    """Stranger 55: a SmolLM2 folder (a plain LlamaForCausalLM config, no rope_scaling) with random weights was refused
    until --position-encoding was given, since measurement cannot tell; SmolLM2's hub ids are in the table."""
    plain = strip_position_encoding_facts(preset_dir("tiny-smollm2"), tmp_path / "plain")
    for repo_id in ("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-1.7B-Instruct"):
        write_hub_cache(tmp_path / repo_id, repo_id, plain)
        code, out, err = edgelm_offline(tmp_path / repo_id, "inspect", repo_id, "--json")
        assert code == 0, err
        described = json.loads(out)
        assert (described["position_encoding"], described["position_encoding_rule"]) == ("rope", f"known published checkpoint {repo_id}")
    assert "cannot tell whether" in edgelm_offline(tmp_path, "inspect", plain)[2]  # the same files as a plain folder are measured


@pytest.mark.parametrize("model,expected", [
    ("nobody/no-such-model", "not in the Hugging Face cache"),
    (NOPE_ID + "@no-such-branch", "not in the Hugging Face cache"),
])
def test_hub_id_missing_offline_is_one_line(hub_cache, model, expected):
    code, out, err = edgelm_offline(hub_cache, "inspect", model)
    assert code == 2 and err.count("\n") == 1 and expected in err and "HF_HUB_OFFLINE" in err
