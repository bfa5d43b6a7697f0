"""The one spec type that describes any supported model, whatever its family."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

POSITION_ENCODINGS = ("rope", "none")


@dataclass(frozen=True)
class Llama3RopeScaling:
    """Rotary frequencies rescaled by wavelength, as Llama 3.1+ declares in `rope_scaling` with
    rope_type "llama3": wavelengths shorter than original_max_positions / high_freq_factor keep their
    frequency, those longer than original_max_positions / low_freq_factor are divided by `factor`,
    and those between are interpolated (layers.rotary_frequency_factors computes it)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int

    def __post_init__(self) -> None:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("rope_scaling's high_freq_factor must be larger than its low_freq_factor")


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions and choices of a decoder-only causal LM.

    The fields every family has are shared; what only one family has (an MLP width, an activation,
    Pattention's parameter-token counts) is in `family_config`, a frozen dataclass of that family's
    own file.
    """

    family: str
    vocab_size: int
    hidden_size: int
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    max_positions: int
    norm_eps: float
    position_encoding: str  # "rope" | "none"
    rope_theta: float = 10000.0
    rotary_dim: int = 0  # leading dims of each head that rotate when position_encoding is "rope"
    rope_scaling: Llama3RopeScaling | None = None  # None: the plain θ^(-2i/d) frequencies
    tie_embeddings: bool = False
    family_config: Any = None

    def __post_init__(self) -> None:
        if self.position_encoding not in POSITION_ENCODINGS:
            raise ValueError(f"position_encoding must be one of {POSITION_ENCODINGS}, not {self.position_encoding!r}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"its {self.num_heads} attention heads are not a multiple of its {self.num_kv_heads} key/value heads")
        if self.rotary_dim % 2 or not 0 <= self.rotary_dim <= self.head_dim:
            raise ValueError("rotary_dim must be even and at most head_dim")

    @property
    def rotated_dims(self) -> int:
        """Dims of each head the rotary embedding touches: 0 without position encoding."""
        return self.rotary_dim if self.position_encoding == "rope" else 0
