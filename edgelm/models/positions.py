"""Position encodings: how a model learns where each token sits, as one typed value per model.

`ModelSpec.positions` is one of NoPositions (NoPE), Rotary (RoPE: base θ, how many leading dims of
each head rotate, an optional frequency scaling) or LearnedAbsolute (a table of position vectors
added to the token embeddings, GPT-2's wpe). The torch model rotates with `Rotary.rotation` /
`Rotary.rotate`, the ONNX graph takes its cos/sin tables from `Rotary.tables`, and the GGUF mapping
reads the same fields (export/gguf_mapping.py), so each number is computed in one place.

Scalings are Hugging Face's `rope_scaling` kinds edgelm computes: linear (every frequency divided
by `factor`), llama3 (by wavelength band) and yarn (blended by a ramp, cos and sin scaled); the rest
are refused where a config is read.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import ClassVar

import torch

from .util import ConfigReader, UnsupportedConfigValue

Rotation = tuple[torch.Tensor, torch.Tensor] | None  # (cos, sin), each [batch, 1, seq, rotated dims]; None: nothing rotates


class RopeScaling:
    rope_type: ClassVar[str]
    attention_factor: float = 1.0  # what cos and sin are multiplied by (YaRN's mscale); 1 for the others

    def factors(self, frequencies: torch.Tensor, theta: float) -> torch.Tensor:
        """What each frequency θ^(-2i/d) of `frequencies` [d / 2] is divided by."""
        raise NotImplementedError


@dataclass(frozen=True)
class LinearScaling(RopeScaling):
    """Position interpolation (Chen et al. 2023): every frequency divided by `factor`, as
    transformers' `_compute_linear_scaling_rope_parameters`."""

    rope_type: ClassVar[str] = "linear"
    factor: float

    def __post_init__(self) -> None:
        if not self.factor > 0:
            raise ValueError("rope_scaling's factor must be positive")

    def factors(self, frequencies, theta):
        return torch.full_like(frequencies, self.factor)


@dataclass(frozen=True)
class Llama3Scaling(RopeScaling):
    """Rotary frequencies rescaled by wavelength, as Llama 3.1+ declares in `rope_scaling` with
    rope_type "llama3": wavelengths shorter than original_max_positions / high_freq_factor keep their
    frequency, those longer than original_max_positions / low_freq_factor are divided by `factor`,
    and those between are interpolated."""

    rope_type: ClassVar[str] = "llama3"
    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_positions: int

    def __post_init__(self) -> None:
        if self.high_freq_factor <= self.low_freq_factor:
            raise ValueError("rope_scaling's high_freq_factor must be larger than its low_freq_factor")

    def factors(self, frequencies, theta):
        """transformers' `_compute_llama3_parameters` (modeling_rope_utils.py) computes the divided
        frequencies, llama.cpp stores these divisors as the `rope_freqs.weight` tensor (its
        converter's `LlamaModel.generate_extra_tensors`); in f32 and in the converter's order of
        operations, so the GGUF tensor equals the converter's bit for bit."""
        low_freq_wavelength = self.original_max_positions / self.low_freq_factor
        high_freq_wavelength = self.original_max_positions / self.high_freq_factor
        wavelength = 2 * math.pi / frequencies
        smooth = (self.original_max_positions / wavelength - self.low_freq_factor) / (self.high_freq_factor - self.low_freq_factor)
        between = 1 / ((1 - smooth) / self.factor + smooth)
        factors = torch.where(wavelength > low_freq_wavelength, torch.full_like(frequencies, self.factor), between)
        return torch.where(wavelength < high_freq_wavelength, torch.ones_like(frequencies), factors)


@dataclass(frozen=True)
class YarnScaling(RopeScaling):
    """YaRN (Peng et al. 2023, "YaRN: Efficient Context Window Extension of Large Language Models", §3.2-3.4),
    as Qwen2.5 and Qwen3 declare it for long contexts: frequencies that turn fewer than `beta_slow` times
    in the original context are divided by `factor`, those that turn more than `beta_fast` times are kept,
    a linear ramp over the dims between blends the two; cos and sin are multiplied by 0.1·ln(factor) + 1.
    transformers' `_compute_yarn_parameters` (modeling_rope_utils.py) and llama.cpp's `rope_yarn` /
    `ggml_rope_yarn_corr_dims` (ggml-cpu/ops.cpp, ggml.c) compute the same: the ramp's ends floored and
    ceiled, clamped to [0, d - 1]; a `truncate: false` (gpt-oss) or DeepSeek's mscale pair is refused
    where the config is read."""

    rope_type: ClassVar[str] = "yarn"
    factor: float
    original_max_positions: int
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 0.0  # 0: 0.1·ln(factor) + 1, the paper's √(1/t) (its eq. 22), as transformers' default

    def __post_init__(self) -> None:
        if not self.factor >= 1:  # transformers warns "factor field must be a float or int >= 1"; 1e-30 drifted from it by 0.29
            raise ValueError(f"rope_scaling's factor must be at least 1 for YaRN, which extends a context, not {self.factor:g}")
        if not self.beta_fast > self.beta_slow > 0:
            raise ValueError("rope_scaling's beta_fast must be larger than its beta_slow, and both positive")
        if not self.attention_factor:
            object.__setattr__(self, "attention_factor", self.default_attention_factor)

    @property
    def default_attention_factor(self) -> float:
        return 1.0 if self.factor <= 1 else 0.1 * math.log(self.factor) + 1.0

    def factors(self, frequencies, theta):
        dims = 2 * frequencies.shape[-1]

        def dim_turning(rotations: float) -> float:
            """The dim index i whose wavelength 2π·θ^(2i/d) fits `rotations` times in the original context."""
            return dims * math.log(self.original_max_positions / (rotations * 2 * math.pi)) / (2 * math.log(theta))

        low = max(math.floor(dim_turning(self.beta_fast)), 0)
        high = min(math.ceil(dim_turning(self.beta_slow)), dims - 1)
        index = torch.arange(frequencies.shape[-1], dtype=torch.float32, device=frequencies.device)
        # share of the kept (extrapolated) frequency: 1 below `low`, 0 above `high`
        kept = 1 - ((index - low) / max(high - low, 0.001)).clamp(0, 1)
        scaled = frequencies / self.factor * (1 - kept) + frequencies * kept
        return frequencies / scaled


class PositionEncoding:
    name: ClassVar[str]  # what `--position-encoding`, inspect and the export manifests call it
    rotated_dims: ClassVar[int] = 0
    position_free: ClassVar[bool] = False  # keys and values carry no position: a KV cache's entries may move (context shift)

    def rotation(self, positions: torch.Tensor) -> Rotation:
        """Per-call rotary state for positions [batch, seq], computed once for all layers."""
        return None

    def rotate(self, x: torch.Tensor, rotation: Rotation) -> torch.Tensor:
        return x

    def scaling_summary(self) -> dict | None:
        """The rotary scaling as `inspect` shows it: its kind and every value it runs with, defaults included."""
        return None


@dataclass(frozen=True)
class NoPositions(PositionEncoding):
    """NoPE: attention alone, causally masked, tells tokens apart (Kazemnejad et al. 2023)."""

    name: ClassVar[str] = "none"
    position_free: ClassVar[bool] = True


@dataclass(frozen=True)
class Rotary(PositionEncoding):
    """RoPE (RoFormer, Su et al. 2021) in the Hugging Face / GPT-NeoX rotate-half convention on the
    first `dims` of each head (partial rotary: NeoX's rotary_pct, Phi's partial_rotary_factor)."""

    name: ClassVar[str] = "rope"
    theta: float
    dims: int
    scaling: RopeScaling | None = None

    def __post_init__(self) -> None:
        if self.dims % 2 or self.dims < 0:
            raise ValueError("the rotary width must be even")
        if not self.theta > 0:
            raise ValueError("rope_theta must be positive")

    @property
    def rotated_dims(self) -> int:  # type: ignore[override]
        return self.dims

    def base_frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        """[dims / 2] angular frequencies θ^(-2i/dims) (RoFormer eq. 15), before scaling."""
        return 1.0 / (self.theta ** (torch.arange(0, self.dims, 2, dtype=torch.int64, device=device).float() / self.dims))

    def frequencies(self, device: torch.device | None = None) -> torch.Tensor:
        base = self.base_frequencies(device)
        return base if self.scaling is None else base / self.scaling.factors(base, self.theta)

    @property
    def attention_factor(self) -> float:
        return 1.0 if self.scaling is None else self.scaling.attention_factor

    def scaling_summary(self):
        return None if self.scaling is None else {"rope_type": self.scaling.rope_type, **asdict(self.scaling)}  # type: ignore[call-overload]

    def angles(self, positions: torch.Tensor) -> torch.Tensor:
        """positions [...] → angles [..., dims / 2]."""
        return positions[..., None].float() * self.frequencies(positions.device)

    def tables(self, count: int) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin [count, dims / 2] for positions 0..count-1 (onnxruntime's rotary caches)."""
        angles = self.angles(torch.arange(count))
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def rotation(self, positions):
        if self.dims == 0:
            return None
        angles = self.angles(positions)  # [batch, seq, dims/2]
        angles = torch.cat((angles, angles), dim=-1)[:, None]  # [batch, 1, seq, dims]
        return angles.cos() * self.attention_factor, angles.sin() * self.attention_factor

    def rotate(self, x, rotation):
        """x: [batch, heads, seq, head_dim]; the dims past `dims` pass through unchanged (eq. 34)."""
        if rotation is None:
            return x
        cos, sin = (t.to(x.dtype) for t in rotation)
        rot, rest = x[..., :self.dims], x[..., self.dims:]
        rot = rot * cos + rotate_half(rot) * sin
        return torch.cat((rot, rest), dim=-1)


@dataclass(frozen=True)
class LearnedAbsolute(PositionEncoding):
    """A trained vector per position, added to the token embedding (GPT-2's wpe): the family's
    `embed` adds its table's rows for the positions it is given; attention does nothing more."""

    name: ClassVar[str] = "learned"
    max_positions: int


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


SCALINGS = {cls.rope_type: cls for cls in (LinearScaling, Llama3Scaling, YarnScaling)}
ROPE_TYPES = ("default", *SCALINGS)


def refuse_two_rotary_declarations(config: ConfigReader) -> None:
    """transformers 5's `rope_parameters` beside transformers 4's `rope_scaling` and top-level `rope_theta`,
    saying different things (a kind, a factor, θ): which one a reader follows differs between versions and
    readers (a stranger's config ran θ 10 with llama3 scaling here, something else in transformers 5.25),
    so a config that disagrees with itself is refused; the same facts twice are fine."""
    new, old = config.section("rope_parameters").config, config.section("rope_scaling").config
    if not new:
        return
    old = {("rope_type" if key == "type" else key): value for key, value in old.items()}
    if old:
        old.setdefault("rope_type", "default")
    if "rope_theta" in config.config:
        old["rope_theta"] = config.config["rope_theta"]
    new = {("rope_type" if key == "type" else key): value for key, value in new.items()}
    new.setdefault("rope_type", "default")
    differing = sorted(key for key in new.keys() & old.keys() if new[key] != old[key])
    if differing:
        raise ValueError(f"rope_parameters and rope_scaling/rope_theta disagree on {', '.join(differing)} "
                         f"({', '.join(f'{new[k]!r} against {old[k]!r}' for k in differing)}); keep one declaration")


def rope_scaling(config: ConfigReader) -> RopeScaling | None:
    """The rotary scaling a Hugging Face config declares: in `rope_scaling` (transformers 4; older
    files name the kind `type`) or in `rope_parameters` (transformers 5). Kinds edgelm does not
    compute (dynamic, longrope, …) are refused, not run as unscaled."""
    refuse_two_rotary_declarations(config)
    for section in (config.section("rope_parameters"), config.section("rope_scaling")):
        kind = section.first(("rope_type", "type"), "default")
        if kind not in ROPE_TYPES:
            raise UnsupportedConfigValue("rope_type", kind, ROPE_TYPES)
        if kind == "linear":
            return LinearScaling(factor=section.number("factor"))
        if kind == "llama3":
            return Llama3Scaling(
                factor=section.number("factor"),
                low_freq_factor=section.number("low_freq_factor"),
                high_freq_factor=section.number("high_freq_factor"),
                original_max_positions=section.size("original_max_position_embeddings"),
            )
        if kind == "yarn":
            return yarn_scaling(section, config)
    return None


def yarn_scaling(section: ConfigReader, config: ConfigReader) -> YarnScaling:
    """The keys transformers' `_compute_yarn_parameters` reads, with its defaults: the original context
    from max_position_embeddings when the section names none; the variants it computes another way
    refused by their key."""
    section.implemented("truncate", (True,), True)
    for key in ("mscale", "mscale_all_dim"):  # DeepSeek's attention factor: a ratio of two mscales
        if section(key, None) is not None:
            raise UnsupportedConfigValue(key, section(key), (None,))
    return YarnScaling(
        factor=section.number("factor"),
        original_max_positions=section.size("original_max_position_embeddings", config.size("max_position_embeddings")),
        beta_fast=section.number("beta_fast", 32.0),
        beta_slow=section.number("beta_slow", 1.0),
        attention_factor=section.number("attention_factor") if section("attention_factor", None) is not None else 0.0,
    )
