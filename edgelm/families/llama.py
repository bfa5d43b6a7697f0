"""llama: TinyLlama 1.1B (RoPE), TinyLlama-NoPE-1.1B (no position encoding), Llama 3.x (rope_scaling
"llama3", tied embeddings) and SmolLM2 (tied embeddings).

RMSNorm, SwiGLU MLP, grouped-query attention, tied or untied embeddings; Hugging Face
`LlamaForCausalLM` checkpoint names. NoPE checkpoints carry HeadScale temperatures as
`model.layers.{i}.self_attn.scale_param` ([num_heads]; the NoPE paper's code computes
`q *= scale_param[h] / sqrt(head_dim)`). In GGUF, llama.cpp's llama arch (granite for NoPE); in ONNX,
the published model_type for Optimum.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from gguf import MODEL_TENSOR, TENSOR_NAMES
from torch import nn

from .. import gguf_keys as keys
from ..export.gguf_mapping import GgufMapping, register_gguf, rope_hparams
from ..export.onnx_mapping import OnnxMapping, register_onnx
from ..models.layers import CausalLM, CausalSelfAttention, RMSNorm
from ..models.positions import Llama3Scaling, NoPositions, Rotary, rope_scaling
from ..models.registry import AttentionInput, Family, register
from ..models.spec import ModelSpec


@dataclass(frozen=True)
class LlamaConfig:
    intermediate_size: int  # SwiGLU width
    qkv_bias: bool = False  # q/k/v projections with a bias (Qwen2)
    qk_norm: bool = False  # an RMSNorm over each head's query and key before rotary (Qwen3)
    activation: str = "silu"  # the gated MLP's activation: silu (SwiGLU) or gelu_pytorch_tanh (GeGLU, Gemma)
    norm_offset: float = 0.0  # every RMSNorm multiplies by (norm_offset + weight): Gemma stores weight - 1
    embed_scale: float = 1.0  # the embedding's output times this (Gemma: √hidden_size)


class LlamaAttention(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        d, hd = spec.hidden_size, spec.head_dim
        bias = spec.family_config.qkv_bias
        self.q_proj = nn.Linear(d, spec.num_heads * hd, bias=bias)
        self.k_proj = nn.Linear(d, spec.num_kv_heads * hd, bias=bias)
        self.v_proj = nn.Linear(d, spec.num_kv_heads * hd, bias=bias)
        self.o_proj = nn.Linear(spec.num_heads * hd, d, bias=False)
        if spec.family_config.qk_norm:  # one weight of head_dim, shared by every head
            self.q_norm = RMSNorm(hd, spec.norm_eps, spec.family_config.norm_offset)
            self.k_norm = RMSNorm(hd, spec.norm_eps, spec.family_config.norm_offset)
        self.attention = CausalSelfAttention(spec)
        self.spec = spec

    def forward(self, x, rotation, past, attention_mask):
        q, k = self.q_proj(x), self.k_proj(x)  # [batch, seq, heads·head_dim], [batch, seq, kv_heads·head_dim]
        if self.spec.family_config.qk_norm:
            q = self.q_norm(q.unflatten(-1, (-1, self.spec.head_dim))).flatten(-2)  # per head: [batch, seq, heads, head_dim]
            k = self.k_norm(k.unflatten(-1, (-1, self.spec.head_dim))).flatten(-2)
        out, present = self.attention(q, k, self.v_proj(x), rotation, past, attention_mask)
        return self.o_proj(out), present


ACTIVATIONS = {"silu": F.silu, "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh")}


class LlamaMLP(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.gate_proj = nn.Linear(spec.hidden_size, spec.family_config.intermediate_size, bias=False)
        self.up_proj = nn.Linear(spec.hidden_size, spec.family_config.intermediate_size, bias=False)
        self.down_proj = nn.Linear(spec.family_config.intermediate_size, spec.hidden_size, bias=False)
        self.activation = ACTIVATIONS[spec.family_config.activation]

    def forward(self, x):
        return self.down_proj(self.activation(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        offset = spec.family_config.norm_offset
        self.input_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps, offset)
        self.self_attn = LlamaAttention(spec)
        self.post_attention_layernorm = RMSNorm(spec.hidden_size, spec.norm_eps, offset)
        self.mlp = LlamaMLP(spec)

    def forward(self, x, rotation, past, attention_mask):
        attn, present = self.self_attn(self.input_layernorm(x), rotation, past, attention_mask)
        x = x + attn
        x = x + self.mlp(self.post_attention_layernorm(x))
        return x, present


class LlamaBody(nn.Module):
    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.embed_tokens = nn.Embedding(spec.vocab_size, spec.hidden_size)
        self.layers = nn.ModuleList(LlamaDecoderLayer(spec) for _ in range(spec.num_layers))
        self.norm = RMSNorm(spec.hidden_size, spec.norm_eps, spec.family_config.norm_offset)


class LlamaForCausalLM(CausalLM):
    def __init__(self, spec: ModelSpec):
        super().__init__(spec)
        self.model = LlamaBody(spec)
        self.lm_head = nn.Linear(spec.hidden_size, spec.vocab_size, bias=False)
        if spec.tie_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight

    def embed(self, input_ids, positions):
        scale = self.spec.family_config.embed_scale
        x = self.model.embed_tokens(input_ids)
        return x if scale == 1.0 else x * torch.tensor(scale, dtype=x.dtype)

    def blocks(self):
        return self.model.layers

    def logits(self, x):
        return self.lm_head(self.model.norm(x))


@register
class Llama(Family):
    name = "llama"
    architectures = ("LlamaForCausalLM",)
    # a NoPE folder edgelm writes says so in model_type: transformers' AutoConfig refuses a type it
    # does not know ("does not recognize this architecture") instead of running it with rotary
    nope_model_type = "edgelm_nope_llama"
    model_types = ("llama", nope_model_type)
    base_model_prefix = "model"  # a `LlamaModel` checkpoint (the body alone) names its tensors embed_tokens.weight, layers.0…
    head_temperature_tensor = "model.layers.{bid}.self_attn.scale_param"

    def spec_from_config(self, config):
        hidden, heads = config.size("hidden_size"), config.size("num_attention_heads")
        head_dim = config.head_width("hidden_size", "num_attention_heads", "head_dim")
        activation = self.activation(config)
        config.implemented("attention_bias", (False,), False)  # transformers' Llama: biases on q, k, v and o
        config.implemented("mlp_bias", (False,), False)
        # transformers 5 moved rope_theta into rope_parameters; older configs keep it at the top level
        rope = config.section("rope_parameters")
        theta = rope.number("rope_theta", config.number("rope_theta", 10000.0))
        # transformers' LlamaForCausalLM, the reference for this layout, rotates whole heads whatever
        # partial_rotary_factor says (5.x), or fails on one below 1 (4.57): refused, not run one of two ways
        for section in (rope, config):
            section.implemented("partial_rotary_factor", (1.0,), 1.0)
        rotary = Rotary(theta=theta, dims=head_dim, scaling=rope_scaling(config))
        return ModelSpec(
            family=self.name,
            vocab_size=config.size("vocab_size"),
            hidden_size=hidden,
            num_layers=config.size("num_hidden_layers"),
            num_heads=heads,
            num_kv_heads=config.size("num_key_value_heads", heads),
            head_dim=head_dim,
            max_positions=config.size("max_position_embeddings", 2048),
            norm_eps=config.number("rms_norm_eps", 1e-6),
            positions=rotary,
            position_alternatives=(NoPositions(),),
            tie_embeddings=config.flag("tie_word_embeddings", False),
            family_config=LlamaConfig(intermediate_size=config.size("intermediate_size"), activation=activation),
        )

    def activation(self, config):
        """The gated MLP's activation, as config.json names it (a key of ACTIVATIONS)."""
        return config.implemented("hidden_act", ("silu",), "silu")

    def build(self, spec):
        return LlamaForCausalLM(spec)

    def query_tensors(self, spec, layer):
        return [(f"model.layers.{layer}.self_attn.q_proj.weight", 0)]

    def attention_inputs(self, spec, layer):
        prefix = f"model.layers.{layer}."
        bias = spec.family_config.qkv_bias
        rotates = spec.rotated_dims > 0
        return [AttentionInput(what, f"{prefix}self_attn.{proj}.weight", 0, 0, heads * spec.head_dim,
                               f"{prefix}self_attn.{proj}.bias" if bias else None, f"{prefix}input_layernorm.weight",
                               rotates=rotates and what != "values", norm_offset=spec.family_config.norm_offset)
                for what, proj, heads in (("queries", "q_proj", spec.num_heads), ("keys", "k_proj", spec.num_kv_heads),
                                          ("values", "v_proj", spec.num_kv_heads))]

    def mark_written_config(self, spec, config):
        return config | {"model_type": self.nope_model_type if isinstance(spec.positions, NoPositions) else self.model_types[0]}

    def tied_tensors(self, spec):
        return {"lm_head.weight": "model.embed_tokens.weight"} if spec.tie_embeddings else {}



@register_gguf
class LlamaGguf(GgufMapping):
    family = Llama
    omits_tied = True  # llama.cpp's llama and granite read token_embd when output.weight is absent

    tensor_names = {
        "model.embed_tokens.weight": TENSOR_NAMES[MODEL_TENSOR.TOKEN_EMBD] + ".weight",
        "model.norm.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT_NORM] + ".weight",
        "lm_head.weight": TENSOR_NAMES[MODEL_TENSOR.OUTPUT] + ".weight",
        "model.layers.{bid}.input_layernorm.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_NORM] + ".weight",
        "model.layers.{bid}.self_attn.q_proj.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_Q] + ".weight",
        "model.layers.{bid}.self_attn.k_proj.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_K] + ".weight",
        "model.layers.{bid}.self_attn.v_proj.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_V] + ".weight",
        "model.layers.{bid}.self_attn.o_proj.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_OUT] + ".weight",
        "model.layers.{bid}.post_attention_layernorm.weight": TENSOR_NAMES[MODEL_TENSOR.FFN_NORM] + ".weight",
        "model.layers.{bid}.mlp.gate_proj.weight": TENSOR_NAMES[MODEL_TENSOR.FFN_GATE] + ".weight",
        "model.layers.{bid}.mlp.up_proj.weight": TENSOR_NAMES[MODEL_TENSOR.FFN_UP] + ".weight",
        "model.layers.{bid}.mlp.down_proj.weight": TENSOR_NAMES[MODEL_TENSOR.FFN_DOWN] + ".weight",
    }

    def arch(self, spec):
        # llama.cpp's llama arch always rotates (it rejects rope.dimension_count != head_dim); its
        # granite arch with rope.scaling.finetuned = false and neutral scales is llama without rotary.
        return "llama" if isinstance(spec.positions, Rotary) else "granite"

    def hparams(self, spec):
        hparams = {
            keys.CONTEXT_LENGTH: spec.max_positions,
            keys.EMBEDDING_LENGTH: spec.hidden_size,
            keys.BLOCK_COUNT: spec.num_layers,
            keys.FEED_FORWARD_LENGTH: spec.family_config.intermediate_size,
            keys.HEAD_COUNT: spec.num_heads,
            keys.HEAD_COUNT_KV: spec.num_kv_heads,
            keys.KEY_LENGTH: spec.head_dim,
            keys.VALUE_LENGTH: spec.head_dim,
            keys.LAYERNORM_RMS_EPS: spec.norm_eps,
            keys.VOCAB_SIZE: spec.vocab_size,
        }
        if isinstance(spec.positions, Rotary):
            if spec.rotated_dims != spec.head_dim:
                raise ValueError("llama.cpp's llama arch cannot rotate only part of each head")
            return hparams | rope_hparams(spec.positions)
        return hparams | {keys.ROPE_SCALING_FINETUNED: False, keys.LOGIT_SCALE: 1.0}

    def extra_tensors(self, spec):
        """Llama 3's scaling as llama.cpp's converter writes it: no key, a `rope_freqs.weight` tensor of
        each frequency's divisor, which llama.cpp's llama arch applies when the file has one."""
        positions = spec.positions
        if isinstance(positions, Rotary) and isinstance(positions.scaling, Llama3Scaling):
            factors = positions.scaling.factors(positions.base_frequencies(), positions.theta)
            yield TENSOR_NAMES[MODEL_TENSOR.ROPE_FREQS] + ".weight", factors.to(torch.float32)

    def transform(self, spec, name, tensor):
        """q/k rows from Hugging Face's rotate-half order to GGML's interleaved pairs (as llama.cpp's
        converter, LlamaModel.permute); NoPE has no rotary, so its weights stay as they are."""
        if not spec.rotated_dims:
            return tensor
        heads = {"q_proj": spec.num_heads, "k_proj": spec.num_kv_heads}.get(name.split(".")[-2])
        if heads is None:
            return tensor
        rows, cols = tensor.shape
        return tensor.reshape(heads, 2, rows // heads // 2, cols).swapaxes(1, 2).reshape(rows, cols)


@register_onnx
class LlamaOnnx(OnnxMapping):
    family = Llama

    def folder_config(self, spec, config):
        # the graph computes the model as it is, NoPE included (no rotary in it, temperatures folded),
        # so Optimum may treat any of them as the published family
        return config | {"model_type": self.family.model_types[0]}
