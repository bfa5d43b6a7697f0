"""The GGUF architectures edgelm's ggml executor runs, as ggml ops (llama.cpp keeps one graph builder
per arch the same way). Shapes in comments are ggml's, innermost first: [ne0, ne1, …]."""

from __future__ import annotations

import math

import ggml

from .ggml_executor import ARCH_GRAPHS, ArchGraph, Inputs, register_arch

__all__ = ["ARCH_GRAPHS", "TokenFormerGraph"]

L2_EPS = 1e-30  # ggml_l2_norm divides by max(‖s‖, eps); TokenFormer divides by ‖s‖ (0 only for an all-zero row)


@register_arch
class TokenFormerGraph(ArchGraph):
    """TokenFormer (Wang et al. 2024; megatron/model/tokenformer.py of the authors' repository), the
    forward pass of edgelm/models/tokenformer.py: every projection is a Pattention
        S = X·K_pᵀ,  A = GELU_erf(S / ‖S‖₂ · √n),  O = A·V_p
    GGUF layout (edgelm-defined): blk.{i}.{attn_q,attn_k,attn_v,attn_output,ffn}.key_tokens K_p [d, n]
    and .value_tokens V_pᵀ [n, d] (stored transposed, as llama.cpp stores a Linear's weight, so both
    products run on ggml's quantized mul_mat); token_embd [d, vocab] is also the LM head."""

    arch = "tokenformer"

    def __init__(self, gguf):
        super().__init__(gguf)
        self.hidden = self.size("embedding_length")
        self.layers = self.size("block_count", 4096)
        self.heads = self.size("attention.head_count", self.hidden)
        self.eps = self.number("attention.layer_norm_epsilon")
        self.rope_base = self.number("rope.freq_base")
        qkv = self.size("qkv_slot_count")
        self.slots = {"attn_q": qkv, "attn_k": qkv, "attn_v": qkv, "attn_output": self.size("proj_slot_count"),
                      "ffn": self.size("feed_forward_length")}
        if self.hidden % self.heads:
            self.refuse(f"{self.arch}.embedding_length {self.hidden} is not a multiple of attention.head_count {self.heads}")
        self.head_dim = self.hidden // self.heads
        rotary = self.gguf.hparam("rope.dimension_count")
        if type(rotary) is not int or not 0 <= rotary <= self.head_dim or rotary % 2:
            self.refuse(f"{self.arch}.rope.dimension_count is {rotary!r}, not an even number up to the head width {self.head_dim}")
        self.rotary_dims = rotary
        self.kv_width = self.hidden
        embedding = next((t for t in gguf.reader.tensors if t.name == "token_embd.weight"), None)
        self.vocab_size = int(embedding.shape[1]) if embedding is not None and len(embedding.shape) == 2 else 0

    def expected_tensors(self):
        d = self.hidden
        tensors = {"token_embd.weight": (d, self.vocab_size), "output_norm.weight": (d,), "output_norm.bias": (d,)}
        for i in range(self.layers):
            for name, n in self.slots.items():
                tensors[f"blk.{i}.{name}.key_tokens"] = (d, n)
                tensors[f"blk.{i}.{name}.value_tokens"] = (n, d)
        return tensors

    def build(self, ctx, graph, weights, cache, inputs: Inputs, n_tokens, n_kv, last_only):
        d, hd, heads = self.hidden, self.head_dim, self.heads

        def pattention(x, name):  # x [d, n] → [d, n]
            scores = ggml.ggml_mul_mat(ctx, weights[f"{name}.key_tokens"], x)  # [slots, n]
            slots = scores.contents.ne[0]
            scores = ggml.ggml_scale(ctx, ggml.ggml_l2_norm(ctx, scores, L2_EPS), math.sqrt(slots))
            return ggml.ggml_mul_mat(ctx, weights[f"{name}.value_tokens"], ggml.ggml_gelu_erf(ctx, scores))

        def rotary(x):  # [hd, heads, n]: GPT-NeoX rotate-half on the first rotary_dims of each head
            if not self.rotary_dims:
                return x
            # n_ctx_orig 0 and ext_factor 0: no YaRN, plain θ_i = base^(-2i/d) rotation
            return ggml.ggml_rope_ext(ctx, x, inputs.positions, None, self.rotary_dims, ggml.GGML_ROPE_TYPE_NEOX,
                                      0, self.rope_base, 1.0, 0.0, 1.0, 0.0, 0.0)

        def cached(layer_cache):  # the first n_kv positions of a cache [d, context] as [hd, n_kv, heads]
            size = layer_cache.contents.nb[0]
            view = ggml.ggml_view_3d(ctx, layer_cache, hd, heads, n_kv, hd * size, d * size, 0)
            return ggml.ggml_permute(ctx, view, 0, 2, 1, 3)

        x = ggml.ggml_get_rows(ctx, weights["token_embd.weight"], inputs.tokens)  # [d, n]
        for i, (k_cache, v_cache) in enumerate(cache):
            h = ggml.ggml_norm(ctx, x, self.eps)  # affine-free LayerNorm
            q = rotary(ggml.ggml_reshape_3d(ctx, pattention(h, f"blk.{i}.attn_q"), hd, heads, n_tokens))
            k = rotary(ggml.ggml_reshape_3d(ctx, pattention(h, f"blk.{i}.attn_k"), hd, heads, n_tokens))
            v = pattention(h, f"blk.{i}.attn_v")
            for layer_cache, new in ((k_cache, ggml.ggml_reshape_2d(ctx, k, d, n_tokens)), (v_cache, v)):
                ggml.ggml_build_forward_expand(graph, ggml.ggml_set_rows(ctx, layer_cache, new, inputs.cache_rows))
            attended = ggml.ggml_flash_attn_ext(ctx, ggml.ggml_permute(ctx, q, 0, 2, 1, 3), cached(k_cache), cached(v_cache),
                                                inputs.mask, 1.0 / math.sqrt(hd), 0.0, 0.0)  # [hd, heads, n]
            x = ggml.ggml_add(ctx, x, pattention(ggml.ggml_reshape_2d(ctx, attended, d, n_tokens), f"blk.{i}.attn_output"))
            x = ggml.ggml_add(ctx, x, pattention(ggml.ggml_norm(ctx, x, self.eps), f"blk.{i}.ffn"))
        if last_only and n_tokens > 1:
            stride = x.contents.nb[1]
            x = ggml.ggml_view_2d(ctx, x, d, 1, stride, (n_tokens - 1) * stride)
        x = ggml.ggml_add(ctx, ggml.ggml_mul(ctx, ggml.ggml_norm(ctx, x, self.eps), weights["output_norm.weight"]),
                          weights["output_norm.bias"])
        return ggml.ggml_mul_mat(ctx, weights["token_embd.weight"], x)  # tied LM head: [vocab, rows]
