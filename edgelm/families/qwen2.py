"""qwen2: Qwen2 and Qwen2.5 (0.5B–72B), Hugging Face `Qwen2ForCausalLM`.

Llama's block with a bias on the q, k and v projections (none on o_proj), tied embeddings at the
small sizes, ChatML chat template in tokenizer_config.json. Sliding-window attention, which the
published configs switch off (`use_sliding_window: false`), is refused when switched on. In GGUF,
llama.cpp's qwen2 arch (llama's keys, the biases, no q/k permutation); in ONNX, llama's mapping.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_TENSOR, TENSOR_NAMES

from ..export.gguf_mapping import register_gguf
from ..export.onnx_mapping import register_onnx
from ..models.positions import Llama3Scaling, Rotary
from ..models.registry import register
from .llama import Llama, LlamaGguf, LlamaOnnx


@register
class Qwen2(Llama):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    nope_model_type = "edgelm_nope_qwen2"
    model_types = ("qwen2", nope_model_type)
    # every published Qwen2 rotates: its model_type declares it (edgelm's NoPE folders say so first)
    position_encoding_key = "model_type"

    def spec_from_config(self, config):
        config.implemented("use_sliding_window", (False,), False)
        spec = super().spec_from_config(config)
        return replace(spec, family_config=replace(spec.family_config, qkv_bias=True))

    def query_tensors(self, spec, layer):
        return super().query_tensors(spec, layer) + [(f"model.layers.{layer}.self_attn.q_proj.bias", 0)]


@register_gguf
class Qwen2Gguf(LlamaGguf):
    family = Qwen2
    omits_tied = True  # llama.cpp's qwen2 reads token_embd when output.weight is absent

    tensor_names = LlamaGguf.tensor_names | {
        f"model.layers.{{bid}}.self_attn.{proj}.bias": TENSOR_NAMES[tensor] + ".bias"
        for proj, tensor in (("q_proj", MODEL_TENSOR.ATTN_Q), ("k_proj", MODEL_TENSOR.ATTN_K), ("v_proj", MODEL_TENSOR.ATTN_V))
    }

    def arch(self, spec):
        # without rotary, llama.cpp's granite arch (which loads optional q/k/v biases) is Qwen2 too
        return "qwen2" if isinstance(spec.positions, Rotary) else "granite"

    def hparams(self, spec):
        if isinstance(spec.positions, Rotary) and isinstance(spec.positions.scaling, Llama3Scaling):
            raise ValueError("llama.cpp's qwen2 arch reads no rope_freqs tensor, which holds Llama 3's rope scaling")
        return super().hparams(spec)

    def transform(self, spec, name, tensor):
        """As it is: llama.cpp's qwen2 rotates in Hugging Face's rotate-half (NEOX) order, so its
        converter does not permute q/k as it does for llama."""
        return tensor


@register_onnx
class Qwen2Onnx(LlamaOnnx):
    family = Qwen2
    genai_type = "qwen2"
