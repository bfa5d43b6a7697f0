"""How a family's checkpoint becomes a GGUF: one `GgufMapping` subclass per family, registered with
`@register_gguf` and looked up by family (as llama.cpp's converter's `ModelBase.register`), declared in
the family's file (edgelm/families/). The torch model knows nothing of it; the writer (export/gguf.py)
and the GGUF checker (formats/gguf_native.py) read it."""

from __future__ import annotations

from collections.abc import Iterator
from typing import ClassVar

import torch

from ..gguf_keys import ROPE_DIMENSION_COUNT, ROPE_FREQ_BASE, ROPE_SCALING_FACTOR, ROPE_SCALING_ORIG_CTX_LEN, ROPE_SCALING_TYPE
from ..gguf_layout import Key
from ..models.positions import LinearScaling, PositionEncoding, Rotary, YarnScaling
from ..models.registry import Family, families
from ..models.spec import ModelSpec

GGUF_MAPPINGS: dict[str, "GgufMapping"] = {}


class GgufMapping:
    family: ClassVar[type[Family]]  # the family it maps (declared by each registered subclass)
    # checkpoint → GGUF tensor names (templates with {bid}; checkpoint tensors that name one GGUF tensor
    # are stacked into it, in this order, along a new outermost axis)
    tensor_names: ClassVar[dict[str, str]] = {}
    # The arch's runtime reads a tied alias from its source when the GGUF lacks it (llama.cpp's
    # llama, granite and qwen2 load token_embd when output.weight is absent), so the GGUF holds the
    # tensor once, as llama.cpp's converter writes it.
    omits_tied: ClassVar[bool] = False
    # The arch's runtime tokenizes with the source tokenizer files the GGUF stores (edgelm's ggml executor); llama.cpp
    # reads its own vocabulary keys, and a second copy of tokenizer.json in every llama GGUF made it ~270 KB larger than
    # the converter's even on a tiny model (stranger 46; a published 128k-token vocabulary's file is some megabytes)
    stores_tokenizer_files: ClassVar[bool] = False

    def arch(self, spec: ModelSpec) -> str:
        raise NotImplementedError

    def hparams(self, spec: ModelSpec) -> dict[Key, int | float | bool | str]:
        """The arch's hyperparameter keys (declared `Key`s, gguf_keys.py) and their values, in writing order."""
        raise NotImplementedError

    def tensors(self, spec: ModelSpec, name: str, gguf_name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """What checkpoint tensor `name` (declared as `gguf_name`) becomes in the GGUF, as llama.cpp's
        converter's `modify_tensors`: nothing (dropped), one tensor (renamed, reordered) or several
        (split). The writer runs it on meta tensors first to learn names and shapes. Default: the
        declared name and `transform`, a tied alias dropped where the arch reads its source."""
        if self.omits_tied and name in families()[self.family.name].tied_tensors(spec):
            return
        yield gguf_name, self.transform(spec, name, tensor)

    def transform(self, spec: ModelSpec, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Reorder a tensor from the checkpoint layout into the one the GGUF arch's runtime expects
        (default: as it is). Shapes may change: the writer reads them off the transform of a meta tensor."""
        return tensor

    def extra_tensors(self, spec: ModelSpec) -> Iterator[tuple[str, torch.Tensor]]:
        """Tensors the GGUF arch reads that no checkpoint tensor holds, computed from the spec (the
        converter's `generate_extra_tensors`: Llama 3's rope_freqs)."""
        return iter(())

    def tensor_roles(self, spec: ModelSpec) -> dict[str, tuple[str, int]]:
        """For an arch llama.cpp's quantizer does not know (edgelm quantizes it with ggml's
        quantizer): GGUF tensor name → (llama.cpp tensor category whose K-quant recipe rule it
        follows, its block number). Tensors left out take the file type's base type."""
        return {}

    def input_blocks(self, spec: ModelSpec) -> dict[str, int]:
        """GGUF tensor name → the widest block its product's other operand may be quantized in
        (gguf_layout.Tensor.max_input_block); tensors left out take any type."""
        return {}

    def transposed(self, spec: ModelSpec) -> frozenset[str]:
        """The checkpoint tensors `transform` stores transposed (a quantizer's rows are then the
        checkpoint's columns)."""
        return frozenset()


def register_gguf(cls: type[GgufMapping]) -> type[GgufMapping]:
    """Class decorator: the GGUF mapping of `cls.family`, which the class itself must name (a subclass
    inheriting its parent's would replace the parent's mapping)."""
    assert "family" in vars(cls), f"{cls.__name__} names no family"
    GGUF_MAPPINGS[cls.family.name] = cls()
    return cls


def gguf_mapping(family: Family) -> GgufMapping:
    families()  # the family files register the mappings beside the families
    if family.name not in GGUF_MAPPINGS:
        raise ValueError(f"the {family.name} family declares no GGUF mapping")
    return GGUF_MAPPINGS[family.name]


def rope_hparams(positions: PositionEncoding) -> dict[Key, int | float | str]:
    """The rotary keys of a llama.cpp arch, read off the typed encoding: width and base; a linear scaling
    and YaRN as llama.cpp's converter writes them (rope.scaling.type/factor, YaRN's original context).
    Llama 3's scaling has no key: llama.cpp reads it as the rope_freqs tensor (LlamaGguf.extra_tensors)."""
    if not isinstance(positions, Rotary):
        return {ROPE_DIMENSION_COUNT: 0}
    hparams: dict[Key, int | float | str] = {ROPE_DIMENSION_COUNT: positions.dims, ROPE_FREQ_BASE: positions.theta}
    scaling = positions.scaling
    if isinstance(scaling, LinearScaling):
        hparams |= {ROPE_SCALING_TYPE: "linear", ROPE_SCALING_FACTOR: scaling.factor}
    if isinstance(scaling, YarnScaling):
        # llama.cpp's llama and qwen2 read no yarn_beta_* or yarn_attn_factor key (only grok and mistral3 do,
        # src/models/*.cpp): they run YaRN with beta 32 and 1 and the factor's own mscale, so a file asking
        # for other values would run them otherwise
        if (scaling.beta_fast, scaling.beta_slow, scaling.attention_factor) != (32.0, 1.0, scaling.default_attention_factor):
            raise ValueError("llama.cpp runs YaRN with beta_fast 32, beta_slow 1 and attention_factor 0.1·ln(factor) + 1 "
                             f"only, not {scaling.beta_fast:g}, {scaling.beta_slow:g} and {scaling.attention_factor:g}: "
                             "export this model to ONNX")
        hparams |= {ROPE_SCALING_TYPE: "yarn", ROPE_SCALING_FACTOR: scaling.factor,
                    ROPE_SCALING_ORIG_CTX_LEN: scaling.original_max_positions}
    return hparams
