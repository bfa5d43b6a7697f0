"""What an ONNX export says about a family beyond the traced graph: one `OnnxMapping` subclass per family
that needs more than the default, registered with `@register_onnx` in the family's file (as Optimum's
per-arch `OnnxConfig` classes, `Qwen2OnnxConfig(LlamaOnnxConfig)`). The torch model knows nothing of it."""

from __future__ import annotations

from typing import Any, ClassVar

from ..models.registry import Family, families
from ..models.spec import ModelSpec

ONNX_MAPPINGS: dict[str, "OnnxMapping"] = {}


class OnnxMapping:
    family: ClassVar[type[Family]]
    # genai_config.json's model.type, as onnxruntime-genai's model builder writes it for the published family
    # (its "llama", "qwen2", …: one decoder-only model class in genai); "llama" for families it has no name for
    genai_type: ClassVar[str] = "llama"

    def folder_config(self, spec: ModelSpec, config: dict[str, Any]) -> dict[str, Any]:
        """The config.json an ONNX export carries for Optimum's ORTModelForCausalLM, which reads the
        model type and sizes from it (default: the checkpoint's own)."""
        return config


def register_onnx(cls: type[OnnxMapping]) -> type[OnnxMapping]:
    """Class decorator: the ONNX mapping of `cls.family`, which the class itself must name."""
    assert "family" in vars(cls), f"{cls.__name__} names no family"
    ONNX_MAPPINGS[cls.family.name] = cls()
    return cls


def onnx_mapping(family: Family) -> OnnxMapping:
    families()  # the family files register the mappings beside the families
    return ONNX_MAPPINGS.get(family.name, OnnxMapping())
