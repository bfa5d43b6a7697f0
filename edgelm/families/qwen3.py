"""qwen3: Qwen3 dense models (0.6B–32B), Hugging Face `Qwen3ForCausalLM`.

Llama's block with an RMSNorm over each head's query and key (`q_norm`, `k_norm`: one weight of
head_dim shared by the heads) before rotary, a head_dim set apart from hidden / heads (128 at every
size), no projection biases, tied embeddings at the small sizes. Head temperatures cannot be folded
into its weights: the q-norm divides away any scale of a head's query projection, and its one weight
is shared by every head. Rotary only: llama.cpp has no arch with q/k norms and without rotary. In
GGUF, llama.cpp's qwen3 arch (no q/k permutation, as qwen2); in ONNX, llama's mapping.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_TENSOR, TENSOR_NAMES

from ..export.gguf_mapping import register_gguf
from ..export.onnx_mapping import register_onnx
from ..models.registry import register
from .llama import Llama, LlamaOnnx
from .qwen2 import Qwen2Gguf


@register
class Qwen3(Llama):
    name = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
    model_types = ("qwen3",)
    head_temperature_tensor = None

    def spec_from_config(self, config):
        config.implemented("use_sliding_window", (False,), False)
        spec = super().spec_from_config(config)
        return replace(spec, position_alternatives=(), family_config=replace(spec.family_config, qk_norm=True))

    def query_tensors(self, spec, layer):
        return None

    def attention_inputs(self, spec, layer):
        # queries and keys leave their q/k-norm at most |weight|·√head_dim: only the values need a bound
        return [entry for entry in super().attention_inputs(spec, layer) if entry.what == "values"]


@register_gguf
class Qwen3Gguf(Qwen2Gguf):
    family = Qwen3

    tensor_names = Qwen2Gguf.tensor_names | {
        "model.layers.{bid}.self_attn.q_norm.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_Q_NORM] + ".weight",
        "model.layers.{bid}.self_attn.k_norm.weight": TENSOR_NAMES[MODEL_TENSOR.ATTN_K_NORM] + ".weight",
    }

    def arch(self, spec):
        return "qwen3"


@register_onnx
class Qwen3Onnx(LlamaOnnx):
    family = Qwen3
    genai_type = "qwen3"
