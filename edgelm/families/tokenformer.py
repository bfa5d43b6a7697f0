"""tokenformer: every projection is a Pattention, attention from tokens to learned parameter tokens.

TokenFormer (Wang et al. 2024, "Rethinking Transformer Scaling with Tokenized Model Parameters"),
Pattention with the paper's modified softmax (l2-norm then GELU, eq. 5):
    S = X·K_pᵀ,  A = GELU_erf(S / ‖S‖₂ · √n),  O = A·V_p     (norm over the n parameter tokens)
Block: affine-free LayerNorm → attention (q, k, v, proj Pattentions; causal softmax, scale 1/√head_dim,
GPT-NeoX rotate-half rotary on the first rotary_pct of head dims) → affine-free LayerNorm → FFN (one
Pattention); sequential residuals; final affine LayerNorm; LM head tied to the embedding.
Checkpoint names follow the published GPT-NeoX pipeline layout: `sequential.0.word_embeddings.weight`,
`sequential.{i+2}.attention.{query,key,value,proj}.{key,value}_param_tokens`,
`sequential.{i+2}.mlp.{key,value}_param_tokens`, `sequential.{L+3}.norm.{weight,bias}`.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..export.gguf_mapping import GgufMapping, register_gguf
from ..gguf_layout import expand_names
from ..gguf_layout import tokenformer as layout
from ..models.layers import CausalLM, CausalSelfAttention
from ..models.positions import Rotary
from ..models.registry import AttentionInput, Family, register
from ..models.spec import ModelSpec


@functools.cache
def _transposed_sources(layers: int) -> frozenset[str]:
    return frozenset(expand_names({s: t.name for t in layout.TENSORS if t.transposed for s in t.sources}, layers))


@dataclass(frozen=True)
class TokenFormerConfig:
    """Parameter tokens n of each Pattention."""

    qkv_slots: int  # q, k and v
    proj_slots: int  # attention output
    ffn_slots: int  # the FFN


class Pattention(nn.Module):
    def __init__(self, d_in: int, d_out: int, slots: int):
        super().__init__()
        self.key_param_tokens = nn.Parameter(torch.empty(slots, d_in))  # K_p [n, d_in]
        self.value_param_tokens = nn.Parameter(torch.empty(slots, d_out))  # V_p [n, d_out]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scores = x @ self.key_param_tokens.t()  # [batch, seq, n]
        scores = scores / scores.norm(p=2, dim=-1, keepdim=True) * math.sqrt(scores.shape[-1])
        return F.gelu(scores) @ self.value_param_tokens  # [batch, seq, d_out]


class TokenFormerAttention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d = spec.hidden_size
        self.query = Pattention(d, d, spec.family_config.qkv_slots)
        self.key = Pattention(d, d, spec.family_config.qkv_slots)
        self.value = Pattention(d, d, spec.family_config.qkv_slots)
        self.proj = Pattention(d, d, spec.family_config.proj_slots)
        self.attention = CausalSelfAttention(spec)
        self.spec = spec

    def forward(self, x, rotation, past, attention_mask):
        out, present = self.attention(self.query(x), self.key(x), self.value(x), rotation, past, attention_mask)
        return self.proj(out), present


class TokenFormerLayer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, elementwise_affine=False)
        self.attention = TokenFormerAttention(spec)
        self.post_attention_layernorm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps, elementwise_affine=False)
        self.mlp = Pattention(spec.hidden_size, spec.hidden_size, spec.family_config.ffn_slots)

    def forward(self, x, rotation, past, attention_mask):
        attn, present = self.attention(self.input_layernorm(x), rotation, past, attention_mask)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class TokenFormerEmbedding(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.word_embeddings = nn.Embedding(spec.vocab_size, spec.hidden_size)


class TokenFormerFinalNorm(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.norm = nn.LayerNorm(spec.hidden_size, eps=spec.norm_eps)


class TokenFormerForCausalLM(CausalLM):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        # GPT-NeoX pipeline stages: 0 embedding, 1 (no weights), 2..L+1 layers, L+2 (no weights), L+3 norm
        stages = {"0": TokenFormerEmbedding(spec)}
        stages.update({str(i + 2): TokenFormerLayer(spec) for i in range(spec.num_layers)})
        stages[str(spec.num_layers + 3)] = TokenFormerFinalNorm(spec)
        self.sequential = nn.ModuleDict(stages)

    def embed(self, input_ids, positions):
        return self.sequential["0"].word_embeddings(input_ids)

    def blocks(self):
        return [self.sequential[str(i + 2)] for i in range(self.spec.num_layers)]

    def logits(self, x):
        x = self.sequential[str(self.spec.num_layers + 3)].norm(x)
        return x @ self.sequential["0"].word_embeddings.weight.t()  # tied LM head


@register
class TokenFormer(Family):
    name = "tokenformer"
    architectures = ("TokenFormerForCausalLM",)
    model_types = ("tokenformer",)
    # GPT-NeoX variants the published config.json can name; edgelm implements the ones TokenFormer
    # was trained with (megatron/model/norms.py, tokenformer.py) and refuses the rest rather than
    # computing a different model
    implemented_variants = {
        "pos_emb": ("rotary",),
        "norm": ("layernorm_nonparam",),
        "final_norm": ("layernorm",),
        "norm_activation_type": ("l2_norm_gelu",),
        "no_weight_tying": (False,),
        "gpt_j_residual": (False,),
    }

    def spec_from_config(self, config):
        """One mapping reads both layouts: the published GPT-NeoX config.json (no model_type, no
        vocab_size: the embedding's rows give it, as GPT-NeoX pads the vocabulary to a multiple of
        128) and edgelm's own, which adds model_type and vocab_size."""
        for key, values in self.implemented_variants.items():
            config.implemented(key, values, values[0])
        hidden, heads = config.size("hidden_size"), config.size("num_attention_heads")
        head_dim = config.head_width("hidden_size", "num_attention_heads")
        return ModelSpec(
            family=self.name,
            vocab_size=config.size_or_rows("vocab_size", "sequential.0.word_embeddings.weight"),
            hidden_size=hidden,
            num_layers=config.size("num_layers"),
            num_heads=heads,
            num_kv_heads=heads,
            head_dim=head_dim,
            max_positions=config.size(("max_position_embeddings", "seq_length"), 2048),
            norm_eps=config.number(("layer_norm_eps", "layernorm_epsilon"), 1e-5),
            # GPT-NeoX rotates int(head_dim · rotary_pct) dims (megatron/model/tokenformer.py)
            positions=Rotary(theta=config.number("rotary_emb_base", 10000.0), dims=int(head_dim * config.number("rotary_pct", 0.25)) // 2 * 2),
            tie_embeddings=True,
            family_config=TokenFormerConfig(qkv_slots=config.size("qkv_slot_num"), proj_slots=config.size("proj_slot_num"),
                                            ffn_slots=config.size("ffn_slot_num")),
        )

    def build(self, spec):
        return TokenFormerForCausalLM(spec)

    def query_tensors(self, spec, layer):
        # q = A·V_p: scaling V_p's columns of head h scales that head's queries
        return [(f"sequential.{layer + 2}.attention.query.value_param_tokens", 1)]

    def attention_inputs(self, spec, layer):
        # a Pattention's output is GeLU(s)·V_p with s L2-normalised to √n and |GeLU(s)| ≤ |s|: the
        # input norm carries no affine, and each output is bounded by √n·‖its column of V_p‖
        return [AttentionInput(what, f"sequential.{layer + 2}.attention.{side}.value_param_tokens", 1, 0, spec.hidden_size,
                               rotates=spec.rotated_dims > 0 and what != "values")
                for what, side in (("queries", "query"), ("keys", "key"), ("values", "value"))]


@register_gguf
class TokenFormerGguf(GgufMapping):
    family = TokenFormer
    # edgelm-defined GGUF arch (llama.cpp does not know it; edgelm's native executor runs it), its
    # layout declared once in gguf_layout/tokenformer.py; stacked sources are listed in stacking order
    tensor_names = {source: tensor.name for tensor in layout.TENSORS for source in tensor.sources}
    stores_tokenizer_files = True

    def arch(self, spec):
        return layout.ARCH

    def hparams(self, spec):
        rotary = spec.positions if isinstance(spec.positions, Rotary) else None
        values = {
            layout.CONTEXT_LENGTH: spec.max_positions,
            layout.EMBEDDING_LENGTH: spec.hidden_size,
            layout.BLOCK_COUNT: spec.num_layers,
            layout.HEAD_COUNT: spec.num_heads,
            layout.LAYER_NORM_EPS: spec.norm_eps,
            layout.ROPE_DIMENSIONS: spec.rotated_dims,
            layout.ROPE_FREQ_BASE: rotary.theta if rotary else 10000.0,  # unread without rotated dimensions
            layout.QKV_SLOTS: spec.family_config.qkv_slots,
            layout.PROJ_SLOTS: spec.family_config.proj_slots,
            layout.FFN_SLOTS: spec.family_config.ffn_slots,
            layout.VERSION: layout.LAYOUT_VERSION,
        }
        assert set(values) == set(layout.KEYS)
        return values

    def transform(self, spec, name, tensor):
        """Sources the layout declares transposed (V_p [n, d_out] as [d_out, n], ggml [n, d_out], as
        llama.cpp stores a Linear's weight: ggml's mul_mat then multiplies the quantized rows in place)."""
        return tensor.t() if name in _transposed_sources(spec.num_layers) else tensor

    def tensor_roles(self, spec):
        return {name: (tensor.role, bid) for tensor in layout.TENSORS if tensor.role
                for bid, name in enumerate(tensor.names(spec.num_layers))}

    def input_blocks(self, spec):
        return {name: tensor.max_input_block for tensor in layout.TENSORS if tensor.max_input_block
                for name in tensor.names(spec.num_layers)}

    def transposed(self, spec):
        return _transposed_sources(spec.num_layers)
