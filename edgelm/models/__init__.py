"""Torch reference models: one spec type, one file per family, a registry, checkpoint loading.

Importing this package registers every family.
"""

from . import llama, ngen4, qwen2, tokenformer  # noqa: F401  (registration by import)
from .checkpoint import Checkpoint, open_checkpoint, read_head_temperatures, save_checkpoint
from .layers import CausalLM, CausalSelfAttention, KVCache
from .registry import FAMILIES, Family
from .spec import ModelSpec

__all__ = [
    "FAMILIES", "CausalLM", "CausalSelfAttention", "Checkpoint", "Family", "KVCache", "ModelSpec",
    "open_checkpoint", "read_head_temperatures", "save_checkpoint",
]
