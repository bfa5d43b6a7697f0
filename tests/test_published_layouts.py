"""Checkpoints as their authors publish them: read without editing a file, and computed as the
authors' own code computes them."""

import json
import math

import pytest
import torch
import torch.nn.functional as F

from edgelm.models import open_checkpoint

from .published_layouts import (TOKENFORMER_ROWS, TOKENFORMER_TOKENS, tokenformer_config, tokenformer_state_dict,
                                write_tokenformer_neox)

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
