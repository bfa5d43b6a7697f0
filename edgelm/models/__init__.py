"""Torch reference models: one spec type, the shared parts families build on, a registry, checkpoint
loading. The families themselves are in edgelm/families/, registered on first lookup (`families()`).
"""

from .checkpoint import Checkpoint, open_checkpoint, read_head_temperatures, save_checkpoint
from .layers import CausalLM, CausalSelfAttention, KVCache
from .registry import Family, families
from .spec import ModelSpec

__all__ = [
    "CausalLM", "CausalSelfAttention", "Checkpoint", "Family", "KVCache", "ModelSpec", "families",
    "open_checkpoint", "read_head_temperatures", "save_checkpoint",
]
