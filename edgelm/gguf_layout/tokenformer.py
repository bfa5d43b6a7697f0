"""TokenFormer's GGUF layout (an edgelm-defined arch: llama.cpp has none), read by its writer
(families/tokenformer.py, TokenFormerGguf) and by edgelm's ggml executor (runtime/ggml_archs.py).

Layout 2 stores what lets the executor fuse a block's q, k and v Pattentions, which all read the same
normalised input: their key-parameter tokens stacked into one tensor (one key product; its rows are
independent, so quantized rows stack as they are) and their value-parameter tokens stacked along a third
axis (one batched value product: ggml's mul_mat multiplies each slice by its own slice of the scores).
Layout 1 (edgelm ≤ this change) kept the three apart; the executor refuses it in one line.
"""

from __future__ import annotations

from . import VOCAB, Key, Tensor

ARCH = "tokenformer"
LAYOUT_VERSION = 2

CONTEXT_LENGTH = Key("context_length", "UINT32")
EMBEDDING_LENGTH = Key("embedding_length", "UINT32")
BLOCK_COUNT = Key("block_count", "UINT32")
HEAD_COUNT = Key("attention.head_count", "UINT32")
LAYER_NORM_EPS = Key("attention.layer_norm_epsilon", "FLOAT32")
ROPE_DIMENSIONS = Key("rope.dimension_count", "UINT32")
ROPE_FREQ_BASE = Key("rope.freq_base", "FLOAT32")
QKV_SLOTS = Key("qkv_slot_count", "UINT32")  # parameter tokens of each of q, k, v
PROJ_SLOTS = Key("proj_slot_count", "UINT32")  # of the attention output
FFN_SLOTS = Key("feed_forward_length", "UINT32")  # of the FFN
VERSION = Key("layout_version", "UINT32")
KEYS = (CONTEXT_LENGTH, EMBEDDING_LENGTH, BLOCK_COUNT, HEAD_COUNT, LAYER_NORM_EPS, ROPE_DIMENSIONS, ROPE_FREQ_BASE,
        QKV_SLOTS, PROJ_SLOTS, FFN_SLOTS, VERSION)

QKV = ("query", "key", "value")  # the order of the stacked slices
LAYER = "sequential.{bid+2}"  # GPT-NeoX pipeline stages: 0 embedding, 2..L+1 layers, L+3 final norm
D = EMBEDDING_LENGTH

# roles (llama.cpp's Q4_K_M recipe): the embedding is also the LM head, as llama.cpp's token_embd where no
# output.weight is written (Q6_K); q, k and v stacked are its fused attn_qkv (Q5_K); the FFN's value tokens
# write the block's output, as ffn_down (Q6_K on use_more_bits layers).
# Every value product multiplies GeLU(scores normalised to √n·unit length): heavy-tailed rows, whose
# quantization by a K-quant's dot product (Q8_K: one scale per 256 values) alone costs a mean KLD of 0.00099
# on tiny-tokenformer (2,048 held-out positions; 0.00007 in blocks of 32, more than all its Q4_K_M weights'
# rounding: 0.00066): the value tokens take 32-wide types (VALUE_INPUT_BLOCK)
VALUE_INPUT_BLOCK = 32
EMBEDDING = Tensor("token_embd.weight", ("sequential.0.word_embeddings.weight",), (D, VOCAB), role="output")
# K_p [n, d] each → [d, n, 3]; V_p [n, d] each, stored transposed (as llama.cpp stores a Linear's weight,
# so the value product multiplies quantized rows in place) → [n, d, 3]
QKV_KEYS = Tensor("blk.{bid}.attn_qkv.key_tokens", tuple(f"{LAYER}.attention.{p}.key_param_tokens" for p in QKV), (D, QKV_SLOTS, 3), role="attn_qkv")
QKV_VALUES = Tensor("blk.{bid}.attn_qkv.value_tokens", tuple(f"{LAYER}.attention.{p}.value_param_tokens" for p in QKV),
                    (QKV_SLOTS, D, 3), transposed=True, role="attn_qkv", max_input_block=VALUE_INPUT_BLOCK)
OUTPUT_KEYS = Tensor("blk.{bid}.attn_output.key_tokens", (f"{LAYER}.attention.proj.key_param_tokens",), (D, PROJ_SLOTS))
OUTPUT_VALUES = Tensor("blk.{bid}.attn_output.value_tokens", (f"{LAYER}.attention.proj.value_param_tokens",), (PROJ_SLOTS, D),
                       transposed=True, max_input_block=VALUE_INPUT_BLOCK)
FFN_KEYS = Tensor("blk.{bid}.ffn.key_tokens", (f"{LAYER}.mlp.key_param_tokens",), (D, FFN_SLOTS))
FFN_VALUES = Tensor("blk.{bid}.ffn.value_tokens", (f"{LAYER}.mlp.value_param_tokens",), (FFN_SLOTS, D), transposed=True,
                    role="ffn_down", max_input_block=VALUE_INPUT_BLOCK)
OUTPUT_NORM = Tensor("output_norm.weight", ("sequential.{L+3}.norm.weight",), (D,))
OUTPUT_NORM_BIAS = Tensor("output_norm.bias", ("sequential.{L+3}.norm.bias",), (D,))
TENSORS = (EMBEDDING, QKV_KEYS, QKV_VALUES, OUTPUT_KEYS, OUTPUT_VALUES, FFN_KEYS, FFN_VALUES, OUTPUT_NORM, OUTPUT_NORM_BIAS)
