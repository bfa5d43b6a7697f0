"""gemma: Gemma (version 1: 2B, 7B, and 1.1), Hugging Face `GemmaForCausalLM`.

Llama's block with three differences: every RMSNorm multiplies by (1 + weight) (the checkpoint
stores weight - 1), the embedding's output is scaled by √hidden_size, and the gated MLP is GeGLU
(tanh GELU; published configs say `hidden_act: "gelu"`, which transformers reads as the tanh
approximation, and 1.1 adds `hidden_activation: "gelu_pytorch_tanh"`). `head_dim` is given in the
config (256 at both sizes, not hidden / heads at 7B); embeddings are tied. Rotary only. In GGUF,
llama.cpp's gemma arch (the converter's GemmaModel: norm weights + 1, no q/k permutation, output
read from token_embd); in ONNX, llama's mapping with genai's `gemma` type.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from ..export.gguf_mapping import register_gguf
from ..export.onnx_mapping import register_onnx
from ..models.positions import Llama3Scaling, Rotary
from ..models.registry import register
from .llama import Llama, LlamaGguf, LlamaOnnx

# transformers reads a published "gelu" as the tanh approximation (GemmaConfig.__post_init__), as llama.cpp's
# gemma arch computes it; `hidden_activation` (Gemma 1.1, transformers 4.3x) wins over hidden_act when set
GELU_TANH = ("gelu", "gelu_pytorch_tanh")


@register
class Gemma(Llama):
    name = "gemma"
    architectures = ("GemmaForCausalLM",)
    model_types = ("gemma",)

    def spec_from_config(self, config):
        if config("use_bidirectional_attention", None) is not None:  # transformers 5's key (EmbeddingGemma)
            config.implemented("use_bidirectional_attention", (False,))
        spec = super().spec_from_config(config)
        # published Gemma configs leave tie_word_embeddings out: GemmaConfig's default is True (llama's False)
        return replace(spec, position_alternatives=(), tie_embeddings=config.flag("tie_word_embeddings", True),
                       family_config=replace(spec.family_config, norm_offset=1.0, embed_scale=math.sqrt(spec.hidden_size)))

    def activation(self, config):
        if config("hidden_activation", None) is not None:
            config.implemented("hidden_activation", ("gelu_pytorch_tanh",))
        else:
            config.implemented("hidden_act", GELU_TANH, "gelu_pytorch_tanh")
        return "gelu_pytorch_tanh"

    def init_weights(self, model, seed):
        """As every family's, then the norms' weights near 0: Gemma's gain is 1 + weight."""
        super().init_weights(model, seed)
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("norm.weight"):
                    param.sub_(1.0)


@register_gguf
class GemmaGguf(LlamaGguf):
    family = Gemma
    omits_tied = True  # llama.cpp's gemma always reads its output from token_embd

    def arch(self, spec):
        return "gemma"

    def hparams(self, spec):
        if not spec.tie_embeddings:
            raise ValueError("llama.cpp's gemma arch reads its output from token_embd: an untied lm_head has no place")
        if isinstance(spec.positions, Rotary) and isinstance(spec.positions.scaling, Llama3Scaling):
            raise ValueError("llama.cpp's gemma arch reads no rope_freqs tensor, which holds Llama 3's rope scaling")
        return super().hparams(spec)

    def transform(self, spec, name, tensor):
        """As the converter's GemmaModel.modify_tensors: norm weights + 1 (llama.cpp multiplies by the
        weight); q/k as they are (gemma rotates in rotate-half order, as qwen2)."""
        return tensor + 1 if name.endswith("norm.weight") else tensor


@register_onnx
class GemmaOnnx(LlamaOnnx):
    family = Gemma
    genai_type = "gemma"

