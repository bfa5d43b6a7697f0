"""Families and the registry that maps a checkpoint's config.json to one.

A family is a set of declared facts (which config names it answers to, which position encodings it
supports, where a checkpoint keeps head temperatures, which tensors are tied) plus two functions:
config.json → ModelSpec, and ModelSpec → torch module. Loading, export and runtime read these facts;
nothing outside a family's own file branches on its name.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import UserError
from .layers import CausalLM
from .positions import LinearScaling, PositionEncoding, Rotary
from .spec import ModelSpec
from .util import ConfigReader

FAMILIES: dict[str, "Family"] = {}


@dataclass(frozen=True)
class AttentionInput:
    """How a layer makes its queries, keys or values: `weight`'s entries [start, stop) along
    `axis` are the outputs, each a dot product of that output's weights with an input vector
    g ⊙ u + b (g, b: `norm_weight`, `norm_bias` when the input is an affine norm's output, else 1
    and 0) whose u has L2 norm at most √(its length), plus `bias`'s entry. RMSNorm and LayerNorm
    outputs are such u before their affine; so is a Pattention's GeLU(L2-normalised scores)·√n.
    Export bounds every output from this (export/temperatures.py) without running the model."""
    what: str  # "queries" | "keys" | "values"
    weight: str
    axis: int  # the output axis of `weight`: 0 for an nn.Linear [out, in]
    start: int
    stop: int
    bias: str | None = None
    norm_weight: str | None = None
    norm_bias: str | None = None
    rotates: bool = False  # rotary mixes each pair of outputs, so one output can reach the pair's L2 norm


class Family:
    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]  # config.json "architectures" entries
    model_types: ClassVar[tuple[str, ...]]  # config.json "model_type" values
    # config.json key that declares the position encoding, when the family's published layout has
    # one; without it (llama) weights with two possible encodings have it measured (position_probe.py)
    position_encoding_key: ClassVar[str | None] = None
    # Checkpoint tensor holding λ for layer {bid}, shape [num_heads], when the family has one.
    head_temperature_tensor: ClassVar[str | None] = None

    def spec_from_config(self, config: ConfigReader) -> ModelSpec:
        """The family's config mapping: every layout of config.json it is published in → ModelSpec.
        Position encoding is the config's own default; the loader may override it. Raises
        MissingConfigKey, or ValueError for a value out of range or a variant not implemented."""
        raise NotImplementedError

    def build(self, spec: ModelSpec) -> CausalLM:
        raise NotImplementedError

    def query_tensors(self, spec: ModelSpec, layer: int) -> list[tuple[str, int]] | None:
        """(tensor name, axis) pairs that produce layer `layer`'s queries: along `axis`, the first
        num_heads·head_dim entries are the query outputs, head-major. Temperature baking scales them.

        None declares that head temperatures cannot be folded into this family's weights (queries
        not linear in one weight, e.g. a per-head q-norm after the projection): export then refuses
        a temperature table other than all 1.0."""
        raise NotImplementedError

    def attention_inputs(self, spec: ModelSpec, layer: int) -> list[AttentionInput] | None:
        """How layer `layer` makes the queries, keys and values a runtime may hold in f16 (llama.cpp's
        f16 KV cache, ONNX Runtime's fp16 attention). None: not known, and export bounds only the
        query tensors the temperatures fold into (`query_tensors`) by their own size."""
        return None

    # GGUF facts: architecture name, checkpoint → GGUF tensor names (templates with {bid}; checkpoint
    # tensors that name one GGUF tensor are stacked into it, in this order, along a new outermost axis),
    # and the architecture's hyperparameter keys (without the "ARCH." prefix).
    gguf_tensor_names: ClassVar[dict[str, str]] = {}
    # The arch's runtime reads a tied alias from its source when the GGUF lacks it (llama.cpp's
    # llama, granite and qwen2 load token_embd when output.weight is absent), so the GGUF holds the
    # tensor once, as llama.cpp's converter writes it.
    gguf_omits_tied: ClassVar[bool] = False

    def gguf_arch(self, spec: ModelSpec) -> str:
        raise NotImplementedError

    def gguf_hparams(self, spec: ModelSpec) -> dict[str, int | float | bool]:
        raise NotImplementedError

    def gguf_tensors(self, spec: ModelSpec, name: str, gguf_name: str, tensor: torch.Tensor) -> Iterator[tuple[str, torch.Tensor]]:
        """What checkpoint tensor `name` (declared as `gguf_name`) becomes in the GGUF, as llama.cpp's
        converter's `modify_tensors`: nothing (dropped), one tensor (renamed, reordered) or several
        (split). The writer runs it on meta tensors first to learn names and shapes. Default: the
        declared name and `gguf_transform`, a tied alias dropped where the arch reads its source."""
        if self.gguf_omits_tied and name in self.tied_tensors(spec):
            return
        yield gguf_name, self.gguf_transform(spec, name, tensor)

    def gguf_transform(self, spec: ModelSpec, name: str, tensor: torch.Tensor) -> torch.Tensor:
        """Reorder a tensor from the checkpoint layout into the one the GGUF arch's runtime expects
        (default: as it is). Shapes may change: the writer reads them off the transform of a meta tensor."""
        return tensor

    def gguf_extra_tensors(self, spec: ModelSpec) -> Iterator[tuple[str, torch.Tensor]]:
        """Tensors the GGUF arch reads that no checkpoint tensor holds, computed from the spec (the
        converter's `generate_extra_tensors`: Llama 3's rope_freqs)."""
        return iter(())

    def gguf_tensor_roles(self, spec: ModelSpec) -> dict[str, tuple[str, int]]:
        """For an arch llama.cpp's quantizer does not know (edgelm quantizes it with ggml's
        quantizer): GGUF tensor name → (llama.cpp tensor category whose K-quant recipe rule it
        follows, its block number). Tensors left out take the file type's base type."""
        return {}

    def gguf_transposed(self, spec: ModelSpec) -> frozenset[str]:
        """The checkpoint tensors `gguf_transform` stores transposed (a quantizer's rows are then the
        checkpoint's columns)."""
        return frozenset()

    def tied_tensors(self, spec: ModelSpec) -> dict[str, str]:
        """{alias: source} for tensors that share storage; a checkpoint may omit the alias."""
        return {}

    def mark_written_config(self, spec: ModelSpec, config: dict[str, Any]) -> dict[str, Any]:
        """config.json as edgelm writes it for this spec (default: as it is)."""
        return config

    def onnx_folder_config(self, spec: ModelSpec, config: dict[str, Any]) -> dict[str, Any]:
        """The config.json an ONNX export carries for Optimum's ORTModelForCausalLM, which reads the
        model type and sizes from it (default: the checkpoint's own)."""
        return config

    def init_weights(self, model: CausalLM, seed: int) -> None:
        """Random weights for presets: matrices N(0, 0.02); norm weights near 1 and biases near 0, not
        exactly, so parity tests notice a dropped norm weight or bias."""
        generator = torch.Generator().manual_seed(seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                noise = torch.randn(param.shape, generator=generator)
                if param.dim() >= 2:
                    param.copy_(noise * 0.02)
                elif name.endswith("bias"):
                    param.copy_(noise * 0.02)
                else:
                    param.copy_(1.0 + noise * 0.1)


def rope_hparams(positions: PositionEncoding) -> dict[str, int | float | str]:
    """The rotary keys of a llama.cpp arch (without the "ARCH." prefix), read off the typed encoding:
    width and base; a linear scaling as llama.cpp's converter writes it (rope.scaling.type/factor).
    Llama 3's scaling has no key: llama.cpp reads it as the rope_freqs tensor (Llama.gguf_extra_tensors)."""
    if not isinstance(positions, Rotary):
        return {"rope.dimension_count": 0}
    hparams: dict[str, int | float | str] = {"rope.dimension_count": positions.dims, "rope.freq_base": positions.theta}
    if isinstance(positions.scaling, LinearScaling):
        hparams |= {"rope.scaling.type": "linear", "rope.scaling.factor": positions.scaling.factor}
    return hparams


_PLACEHOLDER = re.compile(r"\{(bid|L)([+-]\d+)?\}")


def expand_names(mapping: dict[str, str], num_layers: int) -> dict[str, str]:
    """Concrete names from templates: `{bid}` (and `{bid+2}`) runs over the layers, `{L+3}` counts from
    the number of layers L, as pipeline-stage layouts (GPT-NeoX, TokenFormer) number their stages."""
    concrete = {}
    for source, target in mapping.items():
        per_layer = "{bid" in source or "{bid" in target
        for bid in range(num_layers) if per_layer else [0]:
            values = {"bid": bid, "L": num_layers}
            fill = lambda m: str(values[m.group(1)] + int(m.group(2) or 0))  # noqa: E731
            concrete[_PLACEHOLDER.sub(fill, source)] = _PLACEHOLDER.sub(fill, target)
    return concrete


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family known to the loader, export and runtime."""
    FAMILIES[cls.name] = cls()
    return cls


def _lookup() -> dict[str, Family]:
    table = {}
    for family in FAMILIES.values():
        for key in family.architectures + family.model_types:
            table[key] = family
    return table


def family_for_config(config: dict[str, Any], config_path) -> Family:
    table = _lookup()
    architectures, model_type = config.get("architectures") or [], config.get("model_type")
    if not isinstance(architectures, list) or not all(isinstance(a, str) for a in architectures) \
            or not isinstance(model_type, (str, type(None))):
        raise UserError("config.json's architectures must be a list of names and model_type a name", config_path,
                        "fix or re-download the file")
    keys = architectures + [model_type]
    for key in keys:
        if key in table:
            return table[key]
    supported = ", ".join(sorted(k for k in table if k[0].isupper()))
    raise UserError(
        f"unknown architecture {keys[0] if keys[0] else 'model_type ' + repr(config.get('model_type'))}",
        config_path,
        f"edgelm supports {supported}",
    )
