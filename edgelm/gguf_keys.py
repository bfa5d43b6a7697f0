"""The GGUF architecture keys edgelm's families write, declared once with their value types.

Names come from gguf-py's `Keys` (what llama.cpp's converter writes and its loader reads) where it
has them; the few edgelm-defined ones (tokenformer's) are declared here beside them. The writer
(export/gguf.py) writes each key with its declared type and refuses one not declared; the reader
that checks a GGUF against its edgelm.config (runtime/gguf_native.py) compares by the same type.
Families name keys without the "{arch}." prefix, as llama.cpp's hparams do.
"""

from __future__ import annotations

from gguf import GGUFValueType, Keys

T = GGUFValueType


def _suffix(template: str) -> str:
    return template.removeprefix("{arch}.")


ARCH_KEYS: dict[str, GGUFValueType] = {
    _suffix(key): value_type for key, value_type in [
        (Keys.LLM.CONTEXT_LENGTH, T.UINT32),
        (Keys.LLM.EMBEDDING_LENGTH, T.UINT32),
        (Keys.LLM.BLOCK_COUNT, T.UINT32),
        (Keys.LLM.FEED_FORWARD_LENGTH, T.UINT32),
        (Keys.LLM.VOCAB_SIZE, T.UINT32),
        (Keys.LLM.LOGIT_SCALE, T.FLOAT32),
        (Keys.LLM.USE_PARALLEL_RESIDUAL, T.BOOL),
        (Keys.Attention.HEAD_COUNT, T.UINT32),
        (Keys.Attention.HEAD_COUNT_KV, T.UINT32),
        (Keys.Attention.KEY_LENGTH, T.UINT32),
        (Keys.Attention.VALUE_LENGTH, T.UINT32),
        (Keys.Attention.LAYERNORM_EPS, T.FLOAT32),
        (Keys.Attention.LAYERNORM_RMS_EPS, T.FLOAT32),
        (Keys.Rope.DIMENSION_COUNT, T.UINT32),
        (Keys.Rope.FREQ_BASE, T.FLOAT32),
        (Keys.Rope.SCALING_TYPE, T.STRING),
        (Keys.Rope.SCALING_FACTOR, T.FLOAT32),
        (Keys.Rope.SCALING_FINETUNED, T.BOOL),
        # edgelm-defined: tokenformer's Pattention parameter-token counts (runtime/ggml_archs.py reads them)
        ("{arch}.qkv_slot_count", T.UINT32),
        ("{arch}.proj_slot_count", T.UINT32),
        ("{arch}.layout_version", T.UINT32),  # tokenformer's layout (gguf_layout/tokenformer.py)
    ]
}


def arch_key_type(key: str) -> GGUFValueType:
    """The declared type of arch key `key` (no "{arch}." prefix); ValueError for one not declared."""
    if key not in ARCH_KEYS:
        raise ValueError(f"GGUF key {key!r} is not declared in edgelm/gguf_keys.py")
    return ARCH_KEYS[key]


def same_value(value_type: GGUFValueType, found, expected) -> bool:
    """Whether a key read back from a file holds `expected`: floats are stored as float32 (equal to ~1e-7)."""
    if value_type == T.BOOL:
        return found is expected
    if value_type == T.STRING:
        return found == expected
    if value_type == T.FLOAT32:
        return type(found) in (int, float) and abs(found - expected) <= 1e-6 * max(abs(found), abs(expected))
    return type(found) is int and found == expected
