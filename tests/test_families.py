"""Every registered family: KV-cache decode equals a full forward; tokenformer and ngen4 equal
straightforward implementations written here, independently of edgelm's module code."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from edgelm.models import families, open_checkpoint

# One tiny preset per registered family (a NoPE and a RoPE one for llama). A family added without
# an entry here fails test_every_family_has_a_test.
FAMILY_PRESETS = {
    "llama": ["tiny-nope", "tiny-rope", "tiny-llama3", "tiny-smollm2"],
    "gemma": ["tiny-gemma"],
    "gpt2": ["tiny-gpt2"],
    "ngen4": ["tiny-ngen4"],
    "qwen2": ["tiny-qwen2"],
    "qwen3": ["tiny-qwen3"],
    "tokenformer": ["tiny-tokenformer"],
}
ALL_PRESETS = [p for presets in FAMILY_PRESETS.values() for p in presets]
TOL = 1e-5
PREFILL = 40  # positions in the prefill; then tokens are decoded one at a time


def test_every_family_has_a_test():
    assert set(families()) == set(FAMILY_PRESETS), "add the new family's tiny preset to FAMILY_PRESETS"


def test_the_models_layer_imports_no_format_code():
    """edgelm/models is the torch reference alone: how a format writes a family is in the family's file
    (edgelm/families/), on the export layer's mapping bases; data flows models → export → formats."""
    check = ("import importlib, pkgutil, sys, edgelm.models as m\n"
             "for info in pkgutil.iter_modules(m.__path__): importlib.import_module('edgelm.models.' + info.name)\n"
             "print(sorted(n for n in sys.modules if n.split('.')[0] in ('gguf', 'onnx', 'onnxruntime', 'ggml')\n"
             "             or n.startswith(('edgelm.export', 'edgelm.families', 'edgelm.formats', 'edgelm.runtime'))))")
    done = subprocess.run([sys.executable, "-c", check], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]", done.stdout


def load(preset_dir, name):
    model = open_checkpoint(preset_dir(name)).load_model()
    if model.spec.family == "llama" and model.spec.position_encoding == "none":
        model.set_head_temperatures(0.6 + torch.rand(model.spec.num_layers, model.spec.num_heads))
    return model


@pytest.mark.parametrize("name", ALL_PRESETS)
@torch.no_grad()
def test_prefill_then_decode_equals_full_forward(preset_dir, name):
    model = load(preset_dir, name)
    ids = torch.randint(0, model.spec.vocab_size, (2, PREFILL + 4))
    full, _ = model(ids)
    logits, cache = model(ids[:, :PREFILL])
    steps = [logits]
    for t in range(PREFILL, ids.shape[1]):  # decode one token at a time
        step, cache = model(ids[:, t : t + 1], cache)
        steps.append(step)
    assert cache[0][0].shape[2] == ids.shape[1]
    assert (torch.cat(steps, dim=1) - full).abs().max().item() <= TOL


@pytest.mark.parametrize("name", ALL_PRESETS)
@torch.no_grad()
def test_padding_mask_leaves_real_tokens_alone(preset_dir, name):
    """A left-padded batch row gives the same logits as the row alone (positions counted from its start)."""
    model = load(preset_dir, name)
    ids = torch.randint(0, model.spec.vocab_size, (1, 12))
    alone, _ = model(ids)
    padded = torch.cat([torch.zeros(1, 3, dtype=torch.long), ids], dim=1)
    mask = torch.cat([torch.zeros(1, 3), torch.ones(1, 12)], dim=1)
    positions = (torch.arange(15) - 3).clamp(min=0)[None]
    out, _ = model(padded, attention_mask=mask, position_ids=positions)
    assert (out[:, 3:] - alone).abs().max().item() <= TOL


def rotate(x, positions, dims, theta):
    """Rotary written out pair by pair (rotate-half pairing: dim i with dim i + dims/2)."""
    out = x.clone()
    half = dims // 2
    for p in range(x.shape[-2]):
        for i in range(half):
            angle = positions[p] / theta ** (2 * i / dims)
            a, b = x[..., p, i], x[..., p, i + half]
            out[..., p, i] = a * math.cos(angle) - b * math.sin(angle)
            out[..., p, i + half] = b * math.cos(angle) + a * math.sin(angle)
    return out


def naive_attention(q, k, v, heads, scale):
    """q, k, v: [seq, hidden]; explicit causal softmax per head."""
    seq, hidden = q.shape
    hd = hidden // heads
    out = torch.zeros_like(q)
    for h in range(heads):
        qh, kh, vh = (t[:, h * hd : (h + 1) * hd] for t in (q, k, v))
        scores = qh @ kh.T * scale[h]
        scores = scores.masked_fill(torch.triu(torch.ones(seq, seq, dtype=torch.bool), 1), float("-inf"))
        out[:, h * hd : (h + 1) * hd] = scores.softmax(-1) @ vh
    return out


def naive_tokenformer(tensors, cfg, ids):
    """TokenFormer from its paper's equations, reading the published tensor names directly."""
    d, heads, layers = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_layers"]
    hd = d // heads
    rot = int(hd * cfg["rotary_pct"])

    def pattention(x, prefix):
        k_p, v_p = tensors[prefix + ".key_param_tokens"], tensors[prefix + ".value_param_tokens"]
        s = x @ k_p.T
        s = s / torch.sqrt((s * s).sum(-1, keepdim=True)) * math.sqrt(k_p.shape[0])
        return 0.5 * s * (1 + torch.erf(s / math.sqrt(2))) @ v_p

    def norm(x):
        mu = x.mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(((x - mu) ** 2).mean(-1, keepdim=True) + cfg["layer_norm_eps"])

    x = tensors["sequential.0.word_embeddings.weight"][ids]
    positions = list(range(len(ids)))
    for i in range(layers):
        pre = f"sequential.{i + 2}"
        h = norm(x)
        q, k, v = (pattention(h, f"{pre}.attention.{n}") for n in ("query", "key", "value"))
        q = rotate(q.view(-1, heads, hd).transpose(0, 1), positions, rot, cfg["rotary_emb_base"]).transpose(0, 1).reshape(-1, d)
        k = rotate(k.view(-1, heads, hd).transpose(0, 1), positions, rot, cfg["rotary_emb_base"]).transpose(0, 1).reshape(-1, d)
        x = x + pattention(naive_attention(q, k, v, heads, [1 / math.sqrt(hd)] * heads), f"{pre}.attention.proj")
        x = x + pattention(norm(x), f"{pre}.mlp")
    final = f"sequential.{layers + 3}.norm"
    x = norm(x) * tensors[final + ".weight"] + tensors[final + ".bias"]
    return x @ tensors["sequential.0.word_embeddings.weight"].T


def naive_ngen4(tensors, cfg, ids):
    d, heads = cfg["n_embd"], cfg["n_head"]
    hd = d // heads
    rot = int(hd * cfg["rope_pct"])

    def linear(x, name):
        return x @ tensors[name + ".weight"].T + tensors[name + ".bias"]

    def layer_norm(x, name):
        return F.layer_norm(x, (d,), tensors[name + ".weight"], tensors[name + ".bias"], cfg["layer_norm_epsilon"])

    def gelu_new(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    x = tensors["transformer.wte.weight"][ids]
    positions = list(range(len(ids)))
    for i in range(cfg["n_layer"]):
        pre = f"transformer.h.{i}"
        qkv = linear(layer_norm(x, pre + ".ln_1"), pre + ".attn.c_attn")
        q, k, v = qkv[:, :d], qkv[:, d : 2 * d], qkv[:, 2 * d :]
        q = rotate(q.view(-1, heads, hd).transpose(0, 1), positions, rot, cfg["rope_theta"]).transpose(0, 1).reshape(-1, d)
        k = rotate(k.view(-1, heads, hd).transpose(0, 1), positions, rot, cfg["rope_theta"]).transpose(0, 1).reshape(-1, d)
        x = x + linear(naive_attention(q, k, v, heads, [1 / math.sqrt(hd)] * heads), pre + ".attn.c_proj")
        x = x + linear(gelu_new(linear(layer_norm(x, pre + ".ln_2"), pre + ".mlp.c_fc")), pre + ".mlp.c_proj")
    x = layer_norm(x, "transformer.ln_f")
    return x @ tensors["transformer.wte.weight"].T


@pytest.mark.parametrize("name,naive", [("tiny-tokenformer", naive_tokenformer), ("tiny-ngen4", naive_ngen4)])
@torch.no_grad()
def test_equals_independent_implementation(preset_dir, name, naive):
    import json

    from safetensors.torch import load_file

    folder = preset_dir(name)
    tensors = load_file(folder / "model.safetensors")
    cfg = json.loads((folder / "config.json").read_text())
    ids = torch.randint(0, cfg["vocab_size"], (20,))
    expected = naive(tensors, cfg, ids)
    ours, _ = open_checkpoint(folder).load_model()(ids[None])
    assert (ours[0] - expected).abs().max().item() <= TOL
