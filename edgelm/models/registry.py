"""Families and the registry that maps a checkpoint's config.json to one.

A family is a set of declared facts (which config names it answers to, which position encodings it
supports, where a checkpoint keeps head temperatures, which tensors are tied) plus two functions:
config.json → ModelSpec, and ModelSpec → torch module. Loading, export and runtime read these facts;
nothing outside a family's own file branches on its name. How each format writes a family is not
here: the family's file (edgelm/families/) declares it beside the model, on the export layer's bases.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from ..errors import UserError
from .layers import CausalLM
from .spec import ModelSpec
from .util import ConfigReader

FAMILIES: dict[str, "Family"] = {}


def refuse_unfoldable_temperatures(family: "Family", spec: ModelSpec, path, fix: str) -> None:
    """A family whose queries are not linear in one weight (`query_tensors` None: Qwen3's per-head
    q-norm) cannot carry head temperatures in any exported file, so no command takes a table for it."""
    if family.query_tensors(spec, 0) is None:
        raise UserError(f"head temperatures cannot be folded into a {family.name} model's weights", path, fix)


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
    norm_offset: float = 0.0  # the norm's gain is norm_offset + norm_weight (Gemma's RMSNorm: 1 + weight)


class Family:
    name: ClassVar[str]
    architectures: ClassVar[tuple[str, ...]]  # config.json "architectures" entries
    model_types: ClassVar[tuple[str, ...]]  # config.json "model_type" values
    # config.json key that declares the position encoding, when the family's published layout has
    # one; without it (llama) weights with two possible encodings have it measured (position_probe.py)
    position_encoding_key: ClassVar[str | None] = None
    # Checkpoint tensor holding λ for layer {bid}, shape [num_heads], when the family has one.
    head_temperature_tensor: ClassVar[str | None] = None
    # transformers' `base_model_prefix`: the module holding the body in the model with a head; a checkpoint
    # saved from the body alone names its tensors without it (TensorSource.with_base_prefix)
    base_model_prefix: ClassVar[str] = ""

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

    def tied_tensors(self, spec: ModelSpec) -> dict[str, str]:
        """{alias: source} for tensors that share storage; a checkpoint may omit the alias."""
        return {}

    def unused_tensors(self, spec: ModelSpec) -> set[str]:
        """Checkpoint tensors a published layout may carry that are no part of the model (GPT-2's saved causal
        mask buffers): accepted when present, never read."""
        return set()

    def mark_written_config(self, spec: ModelSpec, config: dict[str, Any]) -> dict[str, Any]:
        """config.json as edgelm writes it for this spec (default: as it is)."""
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


def register(cls: type[Family]) -> type[Family]:
    """Class decorator: make a family known to the loader, export and runtime."""
    FAMILIES[cls.name] = cls()
    return cls


def families() -> dict[str, Family]:
    """Every family, by name. The first call imports edgelm.families, whose modules register
    themselves (one file per family, found by pkgutil): a family is added by adding its file."""
    importlib.import_module("edgelm.families")
    return FAMILIES


def _lookup() -> dict[str, Family]:
    table = {}
    for family in families().values():
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
