"""The GGUF architectures edgelm's ggml executor runs, as ggml ops (llama.cpp keeps one graph builder
per arch the same way). Shapes in comments are ggml's, innermost first: [ne0, ne1, …]."""

from __future__ import annotations

import math

from ..errors import UserError
from ..ggml_python import ggml
from ..gguf_layout import VOCAB, Key
from ..gguf_layout import tokenformer as layout
from .ggml_executor import ARCH_GRAPHS, ArchGraph, Inputs, register_arch

__all__ = ["ARCH_GRAPHS", "TokenFormerGraph"]

# TokenFormer divides the scores by ‖s‖ and multiplies by √n: ggml's rms_norm, s / √(mean(s²) + eps), in
# one op. eps only keeps an all-zero row (where the reference divides 0 by 0) at 0
RMS_EPS = 1e-30


@register_arch
class TokenFormerGraph(ArchGraph):
    """TokenFormer (Wang et al. 2024; megatron/model/tokenformer.py of the authors' repository), the
    forward pass of edgelm/families/tokenformer.py: every projection is a Pattention
        S = X·K_pᵀ,  A = GELU_erf(S / ‖S‖₂ · √n),  O = A·V_p
    over the layout of gguf_layout/tokenformer.py: a block's q, k and v Pattentions run as one key product,
    one normalisation of the three groups of scores, one batched value product and one rotary over q and k."""

    arch = layout.ARCH

    def __init__(self, gguf):
        super().__init__(gguf)
        version = self.gguf.hparam(layout.VERSION.name)
        if all(self.gguf.hparam(key.name) is None for key in layout.KEYS):  # a stranger's llama file relabelled: not layout 1
            raise UserError(f"general.architecture says {self.arch!r}, yet the file has none of its {self.arch}.* keys "
                            f"({self.arch}.{layout.EMBEDDING_LENGTH.name}, …): it is not a TokenFormer GGUF", gguf.path,
                            "export the model again with edgelm, or check the file's general.architecture")
        if version != layout.LAYOUT_VERSION:
            written = f"layout {version!r}" if version is not None else "the layout before q, k and v were stacked"
            raise UserError(f"this TokenFormer GGUF has {written}; this edgelm runs layout {layout.LAYOUT_VERSION}", gguf.path,
                            "export the model again with this edgelm")
        self.hidden = self.size(layout.EMBEDDING_LENGTH.name)
        self.layers = self.size(layout.BLOCK_COUNT.name, 4096)
        self.heads = self.size(layout.HEAD_COUNT.name, self.hidden)
        self.eps = self.number(layout.LAYER_NORM_EPS.name)
        self.rope_base = self.number(layout.ROPE_FREQ_BASE.name)
        self.slot_counts = {key: self.size(key.name) for key in (layout.QKV_SLOTS, layout.PROJ_SLOTS, layout.FFN_SLOTS)}
        if self.hidden % self.heads:
            self.refuse(f"{self.arch}.{layout.EMBEDDING_LENGTH.name} {self.hidden} is not a multiple of "
                        f"{layout.HEAD_COUNT.name} {self.heads}")
        self.head_dim = self.hidden // self.heads
        rotary = self.gguf.hparam(layout.ROPE_DIMENSIONS.name)
        if type(rotary) is not int or not 0 <= rotary <= self.head_dim or rotary % 2:
            self.refuse(f"{self.arch}.{layout.ROPE_DIMENSIONS.name} is {rotary!r}, not an even number up to the head width {self.head_dim}")
        self.rotary_dims = rotary
        self.kv_width = self.hidden
        embedding = next((t for t in gguf.reader.tensors if t.name == layout.EMBEDDING.name), None)
        self.vocab_size = int(embedding.shape[1]) if embedding is not None and len(embedding.shape) == 2 else 0

    def expected_tensors(self):
        values = {layout.EMBEDDING_LENGTH: self.hidden, VOCAB: self.vocab_size, **self.slot_counts}
        return {name: tuple(values[d] if isinstance(d, (Key, str)) else d for d in tensor.shape)
                for tensor in layout.TENSORS for name in tensor.names(self.layers)}

    def build(self, ctx, graph, weights, cache, inputs: Inputs, n_tokens, n_kv, last_only):
        d, hd, heads, f32 = self.hidden, self.head_dim, self.heads, 4

        def activation(scores):  # GELU(S / ‖S‖₂ · √n) over each row of n scores
            return ggml.ggml_gelu_erf_inplace(ctx, ggml.ggml_rms_norm(ctx, scores, RMS_EPS))

        def pattention(x, keys, values):  # x [d, n] → [d, n]
            return ggml.ggml_mul_mat(ctx, values, activation(ggml.ggml_mul_mat(ctx, keys, x)))

        def cached(layer_cache):  # the first n_kv positions of a cache [d, context] as [hd, n_kv, heads]
            size = layer_cache.contents.nb[0]
            view = ggml.ggml_view_3d(ctx, layer_cache, hd, heads, n_kv, hd * size, d * size, 0)
            return ggml.ggml_permute(ctx, view, 0, 2, 1, 3)

        def qkv(h, i):  # → q, k [hd, heads, n, 2] (rotated) and v [d, n]
            keys = weights[layout.QKV_KEYS.name.format(bid=i)]  # [d, slots, 3]
            slots = keys.contents.ne[1]
            scores = ggml.ggml_mul_mat(ctx, ggml.ggml_reshape_2d(ctx, keys, d, 3 * slots), h)  # [3·slots, n]
            weights_of = activation(ggml.ggml_reshape_3d(ctx, scores, slots, 3, n_tokens))  # normalised per group
            # [slots, n, 3]: slice j multiplies value slice j (mul_mat broadcasts over ne2)
            out = ggml.ggml_mul_mat(ctx, weights[layout.QKV_VALUES.name.format(bid=i)], ggml.ggml_permute(ctx, weights_of, 0, 2, 1, 3))
            slab = d * n_tokens * f32  # out [d, n, 3]: q, k, v
            qk = ggml.ggml_view_4d(ctx, out, hd, heads, n_tokens, 2, hd * f32, d * f32, slab, 0)
            if self.rotary_dims:  # GPT-NeoX rotate-half on the first rotary_dims of each head, q and k at once, in place
                # n_ctx_orig 0 and ext_factor 0: no YaRN, plain θ_i = base^(-2i/d) rotation
                qk = ggml.ggml_rope_ext_inplace(ctx, qk, inputs.positions, None, self.rotary_dims, ggml.GGML_ROPE_TYPE_NEOX,
                                                0, self.rope_base, 1.0, 0.0, 1.0, 0.0, 0.0)
            return qk, ggml.ggml_view_2d(ctx, out, d, n_tokens, d * f32, 2 * slab)

        x = ggml.ggml_get_rows(ctx, weights[layout.EMBEDDING.name], inputs.tokens)  # [d, n]
        for i, (k_cache, v_cache) in enumerate(cache):
            qk, v = qkv(ggml.ggml_norm(ctx, x, self.eps), i)  # affine-free LayerNorm
            slab = qk.contents.nb[3]
            k = ggml.ggml_view_2d(ctx, qk, d, n_tokens, d * f32, slab)
            for layer_cache, new in ((k_cache, k), (v_cache, v)):
                ggml.ggml_build_forward_expand(graph, ggml.ggml_set_rows(ctx, layer_cache, new, inputs.cache_rows))
            q = ggml.ggml_view_3d(ctx, qk, hd, heads, n_tokens, hd * f32, d * f32, 0)
            attended = ggml.ggml_flash_attn_ext(ctx, ggml.ggml_permute(ctx, q, 0, 2, 1, 3), cached(k_cache), cached(v_cache),
                                                inputs.mask, 1.0 / math.sqrt(hd), 0.0, 0.0)  # [hd, heads, n]
            output, ffn = ([weights[t.name.format(bid=i)] for t in pair] for pair in ((layout.OUTPUT_KEYS, layout.OUTPUT_VALUES),
                                                                                   (layout.FFN_KEYS, layout.FFN_VALUES)))
            x = ggml.ggml_add(ctx, x, pattention(ggml.ggml_reshape_2d(ctx, attended, d, n_tokens), *output))
            x = ggml.ggml_add(ctx, x, pattention(ggml.ggml_norm(ctx, x, self.eps), *ffn))
        if last_only and n_tokens > 1:
            stride = x.contents.nb[1]
            x = ggml.ggml_view_2d(ctx, x, d, 1, stride, (n_tokens - 1) * stride)
        x = ggml.ggml_add(ctx, ggml.ggml_mul(ctx, ggml.ggml_norm(ctx, x, self.eps), weights[layout.OUTPUT_NORM.name]),
                          weights[layout.OUTPUT_NORM_BIAS.name])
        return ggml.ggml_mul_mat(ctx, weights[layout.EMBEDDING.name], x)  # tied LM head: [vocab, rows]
