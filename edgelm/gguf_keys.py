"""The GGUF architecture keys edgelm's families write, each a `gguf_layout.Key` (name without the
"{arch}." prefix, as llama.cpp's hparams name them, and its value type): llama.cpp's are declared here
with their names from gguf-py's `Keys` (what llama.cpp's converter writes and its loader reads); an
edgelm-defined arch's are declared in its layout module (gguf_layout/tokenformer.py), which edgelm's
ggml executor reads too, and indexed here, not spelled again. The writer (export/gguf.py) writes each
key with its declared type and refuses one not declared; the reader that checks a GGUF against its
edgelm.config (formats/gguf_native.py) compares by the same type.
"""

from __future__ import annotations

from gguf import GGUFValueType, Keys

from .gguf_layout import Key, tokenformer


def _llama_cpp(template: str, value_type: GGUFValueType) -> Key:
    return Key(template.removeprefix("{arch}."), value_type.name)


T = GGUFValueType
CONTEXT_LENGTH = _llama_cpp(Keys.LLM.CONTEXT_LENGTH, T.UINT32)
EMBEDDING_LENGTH = _llama_cpp(Keys.LLM.EMBEDDING_LENGTH, T.UINT32)
BLOCK_COUNT = _llama_cpp(Keys.LLM.BLOCK_COUNT, T.UINT32)
FEED_FORWARD_LENGTH = _llama_cpp(Keys.LLM.FEED_FORWARD_LENGTH, T.UINT32)
VOCAB_SIZE = _llama_cpp(Keys.LLM.VOCAB_SIZE, T.UINT32)
LOGIT_SCALE = _llama_cpp(Keys.LLM.LOGIT_SCALE, T.FLOAT32)
USE_PARALLEL_RESIDUAL = _llama_cpp(Keys.LLM.USE_PARALLEL_RESIDUAL, T.BOOL)
HEAD_COUNT = _llama_cpp(Keys.Attention.HEAD_COUNT, T.UINT32)
HEAD_COUNT_KV = _llama_cpp(Keys.Attention.HEAD_COUNT_KV, T.UINT32)
KEY_LENGTH = _llama_cpp(Keys.Attention.KEY_LENGTH, T.UINT32)
VALUE_LENGTH = _llama_cpp(Keys.Attention.VALUE_LENGTH, T.UINT32)
LAYERNORM_EPS = _llama_cpp(Keys.Attention.LAYERNORM_EPS, T.FLOAT32)
LAYERNORM_RMS_EPS = _llama_cpp(Keys.Attention.LAYERNORM_RMS_EPS, T.FLOAT32)
ROPE_DIMENSION_COUNT = _llama_cpp(Keys.Rope.DIMENSION_COUNT, T.UINT32)
ROPE_FREQ_BASE = _llama_cpp(Keys.Rope.FREQ_BASE, T.FLOAT32)
ROPE_SCALING_TYPE = _llama_cpp(Keys.Rope.SCALING_TYPE, T.STRING)
ROPE_SCALING_FACTOR = _llama_cpp(Keys.Rope.SCALING_FACTOR, T.FLOAT32)
ROPE_SCALING_FINETUNED = _llama_cpp(Keys.Rope.SCALING_FINETUNED, T.BOOL)
ROPE_SCALING_ORIG_CTX_LEN = _llama_cpp(Keys.Rope.SCALING_ORIG_CTX_LEN, T.UINT32)
LLAMA_CPP_KEYS = (CONTEXT_LENGTH, EMBEDDING_LENGTH, BLOCK_COUNT, FEED_FORWARD_LENGTH, VOCAB_SIZE, LOGIT_SCALE,
                  USE_PARALLEL_RESIDUAL, HEAD_COUNT, HEAD_COUNT_KV, KEY_LENGTH, VALUE_LENGTH, LAYERNORM_EPS,
                  LAYERNORM_RMS_EPS, ROPE_DIMENSION_COUNT, ROPE_FREQ_BASE, ROPE_SCALING_TYPE, ROPE_SCALING_FACTOR,
                  ROPE_SCALING_FINETUNED, ROPE_SCALING_ORIG_CTX_LEN)

DECLARED: frozenset[Key] = frozenset(LLAMA_CPP_KEYS + tokenformer.KEYS)
ARCH_KEYS: dict[str, GGUFValueType] = {key.name: T[key.value_type] for key in DECLARED}
assert len(ARCH_KEYS) == len(DECLARED), "one name declared with two value types"


def declared(key: Key) -> Key:
    """`key`, if a layout declares it; ValueError for one not declared."""
    if key not in DECLARED:
        raise ValueError(f"GGUF key {key.name!r} is not declared in edgelm/gguf_keys.py or edgelm/gguf_layout/")
    return key


def same_value(key: Key, found, expected) -> bool:
    """Whether a key read back from a file holds `expected`: floats are stored as float32 (equal to ~1e-7)."""
    value_type = T[key.value_type]
    if value_type == T.BOOL:
        return found is expected
    if value_type == T.STRING:
        return found == expected
    if value_type == T.FLOAT32:
        return type(found) in (int, float) and abs(found - expected) <= 1e-6 * max(abs(found), abs(expected))
    return type(found) is int and found == expected
