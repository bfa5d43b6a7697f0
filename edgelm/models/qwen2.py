"""qwen2: Qwen2 and Qwen2.5 (0.5B–72B), Hugging Face `Qwen2ForCausalLM`.

Llama's block with a bias on the q, k and v projections (none on o_proj), tied embeddings at the
small sizes, ChatML chat template in tokenizer_config.json. Sliding-window attention, which the
published configs switch off (`use_sliding_window: false`), is refused when switched on.
"""

from __future__ import annotations

from dataclasses import replace

from gguf import MODEL_TENSOR, TENSOR_NAMES

from .llama import Llama
from .positions import Rotary
from .registry import register


@register
class Qwen2(Llama):
    name = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
    nope_model_type = "edgelm_nope_qwen2"
    model_types = ("qwen2", nope_model_type)
    # every published Qwen2 rotates: its model_type declares it (edgelm's NoPE folders say so first)
    position_encoding_key = "model_type"
    gguf_omits_tied = True  # llama.cpp's qwen2 reads token_embd when output.weight is absent

    gguf_tensor_names = Llama.gguf_tensor_names | {
        f"model.layers.{{bid}}.self_attn.{proj}.bias": TENSOR_NAMES[tensor] + ".bias"
        for proj, tensor in (("q_proj", MODEL_TENSOR.ATTN_Q), ("k_proj", MODEL_TENSOR.ATTN_K), ("v_proj", MODEL_TENSOR.ATTN_V))
    }

    def spec_from_config(self, config):
        config.implemented("use_sliding_window", (False,), False)
        spec = super().spec_from_config(config)
        return replace(spec, family_config=replace(spec.family_config, qkv_bias=True))

    def query_tensors(self, spec, layer):
        return super().query_tensors(spec, layer) + [(f"model.layers.{layer}.self_attn.q_proj.bias", 0)]

    def gguf_arch(self, spec):
        # without rotary, llama.cpp's granite arch (which loads optional q/k/v biases) is Qwen2 too
        return "qwen2" if isinstance(spec.positions, Rotary) else "granite"

    def gguf_hparams(self, spec):
        if isinstance(spec.positions, Rotary) and spec.positions.scaling is not None:
            raise ValueError(f"llama.cpp's qwen2 arch reads no rope frequency scaling (rope_scaling {spec.positions.scaling.rope_type})")
        return super().gguf_hparams(spec)

    def gguf_transform(self, spec, name, tensor):
        """As it is: llama.cpp's qwen2 rotates in Hugging Face's rotate-half (NEOX) order, so its
        converter does not permute q/k as it does for llama."""
        return tensor
