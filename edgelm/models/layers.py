"""Pieces every family shares: causal attention with KV cache and head temperatures (position
encodings: positions.py).

KV cache layout (also the ONNX `past_key_values.{i}.key/value` layout): one `(key, value)` pair per
layer, each `[batch, kv_heads, positions, head_dim]`, keys stored after rotary.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .positions import Rotation
from .spec import ModelSpec

KVCache = list[tuple[torch.Tensor, torch.Tensor]]


def default_positions(batch: int, seq: int, past: int, device: torch.device) -> torch.Tensor:
    return torch.arange(past, past + seq, device=device).expand(batch, seq)


class CausalSelfAttention(nn.Module):
    """Multi-head (grouped-query) causal attention, given q/k/v from the family's own projections.

    scores = λ_h · q·kᵀ/√d: λ_h is the per-head temperature (NoPE paper, HeadScale: q *= scale_param[h]
    / sqrt(head_dim)). Temperatures are a buffer, all 1 unless a checkpoint or a file sets them.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec
        self.register_buffer("head_temperature", torch.ones(spec.num_heads), persistent=False)

    def forward(
        self,
        q: torch.Tensor,  # [batch, seq, heads·head_dim]
        k: torch.Tensor,  # [batch, seq, kv_heads·head_dim]
        v: torch.Tensor,  # [batch, seq, kv_heads·head_dim]
        rotation: Rotation,  # the model's positions.rotation for this call's positions
        past: tuple[torch.Tensor, torch.Tensor] | None,  # [batch, kv_heads, past, head_dim] each
        attention_mask: torch.Tensor | None,  # [batch, past + seq], 1 = attend, 0 = padding
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """Returns the heads' outputs [batch, seq, heads·head_dim] and the cache with this call's keys
        and values appended."""
        spec = self.spec
        q = spec.positions.rotate(split_heads(q, spec.num_heads), rotation)
        k = spec.positions.rotate(split_heads(k, spec.num_kv_heads), rotation)
        v = split_heads(v, spec.num_kv_heads)
        if past is not None:
            k = torch.cat((past[0], k), dim=2)
            v = torch.cat((past[1], v), dim=2)
        present = (k, v)
        seq, total = q.shape[2], k.shape[2]
        group = spec.num_heads // spec.num_kv_heads
        k = k.repeat_interleave(group, dim=1)  # [batch, heads, total, head_dim]
        v = v.repeat_interleave(group, dim=1)
        q = q * (self.head_temperature.to(q.dtype)[:, None, None] / math.sqrt(spec.head_dim))
        # query i sits at absolute position total - seq + i and sees keys 0..that position
        if attention_mask is None and seq == total:  # plain causal prefill: let SDPA pick a fused kernel
            return merge_heads(F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=1.0)), present
        causal = torch.ones(seq, total, dtype=torch.bool, device=q.device).tril(total - seq)
        mask = causal[None, None]
        if attention_mask is not None:
            # a padding query still sees itself, so no row is empty: its output stays finite (Pattention's
            # L2 norm of an all-zero row would be 0/0) and real tokens never attend to it anyway
            itself = causal ^ causal.tril(total - seq - 1)
            mask = (mask & attention_mask.bool()[:, None, None, :]) | itself
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        return merge_heads(out), present


def split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    batch, seq, _ = x.shape
    return x.view(batch, seq, heads, -1).transpose(1, 2)  # [batch, heads, seq, head_dim]


def merge_heads(x: torch.Tensor) -> torch.Tensor:
    batch, heads, seq, head_dim = x.shape
    return x.transpose(1, 2).reshape(batch, seq, heads * head_dim)  # [batch, seq, hidden]


class RMSNorm(nn.Module):
    """Root-mean-square norm as Hugging Face Llama computes it (in fp32, then back to the input dtype).
    With an `offset` (Gemma: 1) the gain is offset + weight, multiplied in fp32 before the cast, as
    transformers' GemmaRMSNorm does."""

    def __init__(self, dim: int, eps: float, offset: float = 0.0):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(dim))
        self.eps = eps
        self.offset = offset

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        dtype = x.dtype
        x = x.float()
        # x / sqrt(·), not x * rsqrt(·) (equal to an ulp): onnxruntime fuses this form into one
        # SimplifiedLayerNormalization kernel, the other stays five ops per norm in exported graphs
        x = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + self.eps)
        if self.offset:
            return (x * (self.offset + self.weight.float())).to(dtype)
        return self.weight * x.to(dtype)


class CausalLM(nn.Module):
    """Base class of every family's module: one forward signature, one temperature interface.

    Module names equal the family's native checkpoint tensor names, so a checkpoint loads with
    `load_state_dict` and nothing is renamed in between.
    """

    def __init__(self, spec: ModelSpec):
        super().__init__()
        self.spec = spec

    def attention_modules(self) -> list[CausalSelfAttention]:
        return [m for m in self.modules() if isinstance(m, CausalSelfAttention)]

    def head_temperatures(self) -> torch.Tensor:
        """[num_layers, num_heads] table of λ."""
        return torch.stack([a.head_temperature for a in self.attention_modules()])

    def set_head_temperatures(self, table: torch.Tensor) -> None:
        attentions = self.attention_modules()
        if tuple(table.shape) != (len(attentions), self.spec.num_heads):
            raise ValueError(f"temperature table has shape {tuple(table.shape)}, the model needs {(len(attentions), self.spec.num_heads)}")
        with torch.no_grad():
            for attention, row in zip(attentions, table):
                attention.head_temperature.copy_(row)

    def forward(
        self,
        input_ids: torch.Tensor,  # [batch, seq]
        past_key_values: KVCache | None = None,
        attention_mask: torch.Tensor | None = None,  # [batch, past + seq]
        position_ids: torch.Tensor | None = None,  # [batch, seq]
    ) -> tuple[torch.Tensor, KVCache]:
        """Returns logits [batch, seq, vocab] and the cache extended by this call's positions."""
        past = past_key_values[0][0].shape[2] if past_key_values else 0
        if position_ids is None:
            position_ids = default_positions(input_ids.shape[0], input_ids.shape[1], past, input_ids.device)
        x = self.embed(input_ids, position_ids)
        rotation = self.spec.positions.rotation(position_ids)  # once for every layer
        present: KVCache = []
        for i, block in enumerate(self.blocks()):
            x, kv = block(x, rotation, past_key_values[i] if past_key_values else None, attention_mask)
            present.append(kv)
        return self.logits(x), present

    # What each family provides:
    def embed(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        """[batch, seq] token ids and positions -> [batch, seq, hidden]; a LearnedAbsolute family adds
        its position table's rows here."""
        raise NotImplementedError

    def blocks(self) -> list[nn.Module]:  # in order; each: (x, rotation, past, attention_mask) -> (x, (k, v))
        raise NotImplementedError

    def logits(self, x: torch.Tensor) -> torch.Tensor:  # final norm and LM head
        raise NotImplementedError
