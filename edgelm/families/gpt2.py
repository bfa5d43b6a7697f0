"""gpt2: GPT-2 (124M–1.5B) and its fine-tunes, Hugging Face `GPT2LMHeadModel`.

Pre-LayerNorm blocks: ln_1 → attention (fused c_attn = [q | k | v] with bias, c_proj) → ln_2 → MLP
(c_fc → gelu_new → c_proj); learned absolute positions `wpe` added to `wte`; lm_head tied to wte.
Every projection is a transformers `Conv1D`: its weight is stored [in, out] (the transpose of
`nn.Linear`'s), so this module keeps that layout and checkpoint tensors load as they are.
Checkpoints saved by transformers before 4.32 carry the causal mask `h.{i}.attn.bias` and
`h.{i}.attn.masked_bias` as tensors: read and dropped (`unused_tensors`), as the converter drops them.
The published openai-community/gpt2 weights are the body's alone, named without `transformer.`
(`base_model_prefix`); its lm_head is the tied wte.
In GGUF, llama.cpp's gpt2 arch (Conv1D weights transposed, as its converter's GPT2Model); in ONNX,
the traced graph with the position table read at the positions the attention mask gives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gguf import MODEL_TENSOR, TENSOR_NAMES
from torch import nn

from .. import gguf_keys as keys
from ..export.gguf_mapping import GgufMapping, register_gguf
from ..models.layers import CausalLM, CausalSelfAttention
from ..models.positions import LearnedAbsolute
from ..models.registry import AttentionInput, Family, register
from ..models.spec import ModelSpec
from .ngen4 import gelu_new

ACTIVATIONS = ("gelu_new", "gelu_pytorch_tanh")  # what llama.cpp's gpt2 arch computes (tanh GELU)


@dataclass(frozen=True)
class GPT2Config:
    n_inner: int  # MLP width


class Conv1D(nn.Module):
    """transformers' Conv1D: y = x W + b with W [in, out]."""

    def __init__(self, n_in: int, n_out: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n_in, n_out))
        self.bias = nn.Parameter(torch.zeros(n_out))

    def forward(self, x):
        return torch.matmul(x, self.weight) + self.bias


class GPT2Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.c_attn = Conv1D(spec.hidden_size, 3 * spec.hidden_size)
        self.c_proj = Conv1D(spec.hidden_size, spec.hidden_size)
        self.attention = CausalSelfAttention(spec)
        self.spec = spec

    def forward(self, x, rotation, past, attention_mask):
        q, k, v = self.c_attn(x).split(self.spec.hidden_size, dim=-1)
        out, present = self.attention(q, k, v, rotation, past, attention_mask)
        return self.c_proj(out), present


class GPT2MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.c_fc = Conv1D(spec.hidden_size, spec.family_config.n_inner)
        self.c_proj = Conv1D(spec.family_config.n_inner, spec.hidden_size)

    def forward(self, x):
        return self.c_proj(gelu_new(self.c_fc(x)))


class GPT2Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.ln_1 = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
        self.attn = GPT2Attention(spec)
        self.ln_2 = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
        self.mlp = GPT2MLP(spec)

    def forward(self, x, rotation, past, attention_mask):
        attn, present = self.attn(self.ln_1(x), rotation, past, attention_mask)
        x = x + attn
        return x + self.mlp(self.ln_2(x)), present


class GPT2Body(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.wpe = nn.Embedding(spec.positions.max_positions, spec.hidden_size)
        self.h = nn.ModuleList(GPT2Block(spec) for _ in range(spec.num_layers))
        self.ln_f = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)


class GPT2LMHeadModel(CausalLM):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.transformer = GPT2Body(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def embed(self, input_ids, positions):
        return self.transformer.wte(input_ids) + self.transformer.wpe(positions)

    def blocks(self):
        return self.transformer.h

    def logits(self, x):
        return self.lm_head(self.transformer.ln_f(x))


@register
class GPT2(Family):
    name = "gpt2"
    architectures = ("GPT2LMHeadModel",)
    model_types = ("gpt2",)
    base_model_prefix = "transformer"  # openai-community/gpt2's own weights are `GPT2Model`'s: wte.weight, h.0.ln_1.weight, …

    def spec_from_config(self, config):
        hidden, heads = config.size("n_embd"), config.size("n_head")
        config.implemented("activation_function", ACTIVATIONS, "gelu_new")
        config.implemented("scale_attn_weights", (True,), True)
        config.implemented("scale_attn_by_inverse_layer_idx", (False,), False)
        config.implemented("add_cross_attention", (False,), False)
        positions = config.size("n_positions", 1024)
        return ModelSpec(
            family=self.name,
            vocab_size=config.size("vocab_size"),
            hidden_size=hidden,
            num_layers=config.size("n_layer"),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=config.head_width("n_embd", "n_head"),
            max_positions=positions,
            norm_eps=config.number("layer_norm_epsilon", 1e-5),
            positions=LearnedAbsolute(max_positions=positions),
            tie_embeddings=config.flag("tie_word_embeddings", True),
            family_config=GPT2Config(n_inner=config.size("n_inner", 4 * hidden)),  # null: 4 · n_embd
        )

    def build(self, spec):
        return GPT2LMHeadModel(spec)

    def query_tensors(self, spec, layer):
        # Conv1D c_attn: columns [q | k | v], so q is the first n_embd columns of the weight, entries of the bias
        return [(f"transformer.h.{layer}.attn.c_attn.weight", 1), (f"transformer.h.{layer}.attn.c_attn.bias", 0)]

    def attention_inputs(self, spec, layer):
        prefix, d = f"transformer.h.{layer}.", spec.hidden_size
        return [AttentionInput(what, f"{prefix}attn.c_attn.weight", 1, i * d, (i + 1) * d, f"{prefix}attn.c_attn.bias",
                               f"{prefix}ln_1.weight", f"{prefix}ln_1.bias")
                for i, what in enumerate(("queries", "keys", "values"))]

    def tied_tensors(self, spec):
        return {"lm_head.weight": "transformer.wte.weight"} if spec.tie_embeddings else {}

    def unused_tensors(self, spec):
        return {f"transformer.h.{i}.attn.{buffer}" for i in range(spec.num_layers) for buffer in ("bias", "masked_bias")}


CONV1D_WEIGHTS = ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")


@register_gguf
class GPT2Gguf(GgufMapping):
    family = GPT2
    omits_tied = True  # llama.cpp's gpt2 reads token_embd when output.weight is absent
    tensor_names = {
        "transformer.wte.weight": TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight",
        "transformer.wpe.weight": TENSOR_NAMES[MODEL_TENSOR.POS_EMBD] + ".weight",
        "transformer.ln_f.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".weight",
        "transformer.ln_f.bias": TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".bias",
        "lm_head.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + ".weight",
        **{
            f"transformer.h.{{bid}}.{ours}.{kind}": f"{TENSOR_NAMES[theirs]}.{kind}"
            for ours, theirs in [
                ("ln_1", MODEL_TENSOR.ATTN_NORM), ("attn.c_attn", MODEL_TENSOR.ATTN_QKV), ("attn.c_proj", MODEL_TENSOR.ATTN_OUT),
                ("ln_2", MODEL_TENSOR.FFN_NORM), ("mlp.c_fc", MODEL_TENSOR.FFN_UP), ("mlp.c_proj", MODEL_TENSOR.FFN_DOWN),
            ]
            for kind in ("weight", "bias")
        },
    }

    def arch(self, spec):
        return "gpt2"

    def hparams(self, spec):
        return {
            keys.BLOCK_COUNT: spec.num_layers,
            keys.CONTEXT_LENGTH: spec.max_positions,
            keys.EMBEDDING_LENGTH: spec.hidden_size,
            keys.FEED_FORWARD_LENGTH: spec.family_config.n_inner,
            keys.HEAD_COUNT: spec.num_heads,
            keys.LAYERNORM_EPS: spec.norm_eps,
        }

    def transposed(self, spec):
        return frozenset(f"transformer.h.{i}.{m}.weight" for i in range(spec.num_layers) for m in CONV1D_WEIGHTS)

    def transform(self, spec, name, tensor):
        """Conv1D [in, out] → ggml's [out, in] rows, as the converter's GPT2Model.modify_tensors."""
        return tensor.t() if name.endswith(tuple(f"{m}.weight" for m in CONV1D_WEIGHTS)) and ".h." in name else tensor
