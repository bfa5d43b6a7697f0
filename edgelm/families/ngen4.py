"""ngen4: GPT-style decoder with rotary position embedding (from the NGen4 model card).

Pre-LayerNorm blocks: ln_1 → attention (fused c_attn = [q | k | v] with bias, c_proj) → ln_2 →
MLP (c_fc → activation → c_proj); wte with lm_head tied to it; RoPE on rope_pct of each head's dims.
Tensor layout (no public reference code; documented in docs/formats.md): `transformer.wte.weight`,
`transformer.h.{i}.{ln_1,attn.c_attn,attn.c_proj,ln_2,mlp.c_fc,mlp.c_proj}.{weight,bias}`,
`transformer.ln_f.{weight,bias}`; Linear weights are [out, in] (torch `nn.Linear`, not GPT-2 Conv1D).
In GGUF, llama.cpp's gptneox arch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gguf import MODEL_TENSOR, TENSOR_NAMES
from torch import nn

from .. import gguf_keys as keys
from ..export.gguf_mapping import GgufMapping, register_gguf, rope_hparams
from ..models.layers import CausalLM, CausalSelfAttention
from ..models.positions import NoPositions, Rotary
from ..models.registry import AttentionInput, Family, register
from ..models.spec import ModelSpec


def gelu_new(x: torch.Tensor) -> torch.Tensor:
    """GPT-2's tanh approximation of GELU (Hendrycks & Gimpel 2016)."""
    return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3.0))))


ACTIVATIONS = {
    "gelu_new": gelu_new,
    "gelu_pytorch_tanh": gelu_new,
    "gelu": F.gelu,
    "relu": F.relu,
    "silu": F.silu,
}


@dataclass(frozen=True)
class NGen4Config:
    n_inner: int  # MLP width
    activation: str  # a key of ACTIVATIONS


class NGen4Attention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.c_attn = nn.Linear(spec.hidden_size, 3 * spec.hidden_size)
        self.c_proj = nn.Linear(spec.hidden_size, spec.hidden_size)
        self.attention = CausalSelfAttention(spec)
        self.spec = spec

    def forward(self, x, rotation, past, attention_mask):
        q, k, v = self.c_attn(x).split(self.spec.hidden_size, dim=-1)
        out, present = self.attention(q, k, v, rotation, past, attention_mask)
        return self.c_proj(out), present


class NGen4MLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.c_fc = nn.Linear(spec.hidden_size, spec.family_config.n_inner)
        self.c_proj = nn.Linear(spec.family_config.n_inner, spec.hidden_size)
        self.act = ACTIVATIONS[spec.family_config.activation]

    def forward(self, x):
        return self.c_proj(self.act(self.c_fc(x)))


class NGen4Block(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.ln_1 = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
        self.attn = NGen4Attention(spec)
        self.ln_2 = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)
        self.mlp = NGen4MLP(spec)

    def forward(self, x, rotation, past, attention_mask):
        attn, present = self.attn(self.ln_1(x), rotation, past, attention_mask)
        x = x + attn
        x = x + self.mlp(self.ln_2(x))
        return x, present


class NGen4Body(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.wte = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.h = nn.ModuleList(NGen4Block(spec) for _ in range(spec.num_layers))
        self.ln_f = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)


class NGen4ForCausalLM(CausalLM):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.transformer = NGen4Body(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.transformer.wte.weight

    def embed(self, input_ids, positions):
        return self.transformer.wte(input_ids)

    def blocks(self):
        return self.transformer.h

    def logits(self, x):
        return self.lm_head(self.transformer.ln_f(x))


@register
class NGen4(Family):
    name = "ngen4"
    architectures = ("NGen4ForCausalLM",)
    model_types = ("ngen4",)
    position_encoding_key = "use_rope"

    def spec_from_config(self, config):
        hidden, heads = config.size("n_embd"), config.size("n_head")
        head_dim = config.head_width("n_embd", "n_head")
        activation = config.implemented("activation_function", tuple(ACTIVATIONS), "gelu_new")
        rotary = Rotary(theta=config.number("rope_theta", 10000.0), dims=int(head_dim * config.number("rope_pct", 1.0)) // 2 * 2)
        return ModelSpec(
            family=self.name,
            vocab_size=config.size("vocab_size"),
            hidden_size=hidden,
            num_layers=config.size("n_layer"),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=head_dim,
            max_positions=config.size("n_positions", 2048),
            norm_eps=config.number("layer_norm_epsilon", 1e-5),
            positions=rotary if config.flag("use_rope", True) else NoPositions(),
            position_alternatives=(rotary, NoPositions()),
            tie_embeddings=config.flag("tie_word_embeddings", True),
            family_config=NGen4Config(n_inner=config.size("n_inner", 4 * hidden), activation=activation),
        )

    def build(self, spec):
        return NGen4ForCausalLM(spec)

    def query_tensors(self, spec, layer):
        # fused c_attn: rows [q; k; v], so q is the first n_embd rows of the weight and the bias
        return [(f"transformer.h.{layer}.attn.c_attn.weight", 0), (f"transformer.h.{layer}.attn.c_attn.bias", 0)]

    def attention_inputs(self, spec, layer):
        prefix, d = f"transformer.h.{layer}.", spec.hidden_size
        return [AttentionInput(what, f"{prefix}attn.c_attn.weight", 0, i * d, (i + 1) * d, f"{prefix}attn.c_attn.bias",
                               f"{prefix}ln_1.weight", f"{prefix}ln_1.bias", rotates=spec.rotated_dims > 0 and what != "values")
                for i, what in enumerate(("queries", "keys", "values"))]

    def tied_tensors(self, spec):
        return {"lm_head.weight": "transformer.wte.weight"} if spec.tie_embeddings else {}


@register_gguf
class NGen4Gguf(GgufMapping):
    family = NGen4
    # llama.cpp's gptneox arch: fused qkv as [all q; all k; all v] (this layout already), biases, LayerNorm
    tensor_names = {
        "transformer.wte.weight": TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight",
        "transformer.ln_f.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".weight",
        "transformer.ln_f.bias": TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".bias",
        "lm_head.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + ".weight",  # gptneox requires it even when tied
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
        return "gptneox"

    def hparams(self, spec):
        if spec.family_config.activation not in ("gelu_new", "gelu_pytorch_tanh"):
            raise ValueError(f"llama.cpp's gptneox arch uses tanh GELU, not {spec.family_config.activation}")
        return {
            keys.CONTEXT_LENGTH: spec.max_positions,
            keys.EMBEDDING_LENGTH: spec.hidden_size,
            keys.BLOCK_COUNT: spec.num_layers,
            keys.FEED_FORWARD_LENGTH: spec.family_config.n_inner,
            keys.HEAD_COUNT: spec.num_heads,
            keys.LAYERNORM_EPS: spec.norm_eps,
            **rope_hparams(spec.positions),
            keys.USE_PARALLEL_RESIDUAL: False,
        }
