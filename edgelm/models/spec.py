"""The one spec type that describes any supported model, whatever its family."""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from .positions import PositionEncoding


@dataclass(frozen=True)
class ModelSpec:
    """Dimensions and choices of a decoder-only causal LM.

    The fields every family has are shared; what only one family has (an MLP width, an activation,
    Pattention's parameter-token counts) is in `family_config`, a frozen dataclass of that family's
    own file. `positions` is the encoding the model runs with; `position_alternatives` are the
    others the same weights may be run with (a RoPE layout whose checkpoint may be NoPE), which
    `--position-encoding`, a declaration or the position probe choose among by name.
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
    positions: PositionEncoding
    position_alternatives: tuple[PositionEncoding, ...] = ()
    tie_embeddings: bool = False
    family_config: Any = None

    def __post_init__(self) -> None:
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"its {self.num_heads} attention heads are not a multiple of its {self.num_kv_heads} key/value heads")
        if any(p.rotated_dims > self.head_dim for p in self.position_choices):
            raise ValueError("the rotary width must be at most head_dim")

    @property
    def position_choices(self) -> tuple[PositionEncoding, ...]:
        return (self.positions, *(p for p in self.position_alternatives if p != self.positions))

    @property
    def position_encodings(self) -> tuple[str, ...]:
        """Names of the encodings these weights may be run with."""
        return tuple(p.name for p in self.position_choices)

    @property
    def position_encoding(self) -> str:
        return self.positions.name

    @property
    def rotated_dims(self) -> int:
        """Dims of each head the rotary embedding touches: 0 without rotary."""
        return self.positions.rotated_dims

    def with_position_encoding(self, name: str) -> "ModelSpec":
        """The spec run with the encoding called `name`; ValueError when these weights have none such."""
        for choice in self.position_choices:
            if choice.name == name:
                return replace(self, positions=choice)
        raise ValueError(f"position encoding {name!r} is not one of {', '.join(self.position_encodings)}")

