"""Random-weight checkpoints in each family's native layout, for benchmarks and tests (`edgelm init`).

Real-size presets copy the published shapes; tiny ones keep every matrix input dim a multiple of 256
so llama.cpp's K-quants apply. Tokenizers are the ones edgelm ships (trained offline on the training
novels): SentencePiece for llama presets, as TinyLlama uses, byte-level BPE for the rest. A real-size
preset's vocabulary is larger than the shipped tokenizer's; ids past the tokenizer are never produced.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch

from ..errors import UserError
from ..fileio import atomic_output_dir
from .checkpoint import save_checkpoint
from .layers import CausalLM
from .registry import Family, family_for_config
from .spec import ModelSpec
from .util import ConfigReader

TOKENIZERS = resources.files("edgelm") / "assets" / "tokenizers"
TINY_VOCAB = 4096  # the shipped tokenizers' size


def _llama(**overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
        "vocab_size": 32000, "hidden_size": 2048, "intermediate_size": 5632, "num_hidden_layers": 22,
        "num_attention_heads": 32, "num_key_value_heads": 4, "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False,
    }
    return config | overrides


def _qwen2(**overrides: Any) -> dict[str, Any]:
    """Qwen2.5-0.5B's config.json."""
    config = {
        "architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_act": "silu",
        "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24,
        "num_attention_heads": 14, "num_key_value_heads": 2, "max_position_embeddings": 32768,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "use_sliding_window": False,
    }
    return config | overrides


def _qwen3(**overrides: Any) -> dict[str, Any]:
    """Qwen3-0.6B's config.json."""
    config = {
        "architectures": ["Qwen3ForCausalLM"], "model_type": "qwen3", "hidden_act": "silu",
        "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072, "num_hidden_layers": 28,
        "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128, "max_position_embeddings": 40960,
        "rms_norm_eps": 1e-6, "rope_theta": 1000000.0, "tie_word_embeddings": True, "attention_bias": False,
        "use_sliding_window": False,
    }
    return config | overrides


def _gemma(**overrides: Any) -> dict[str, Any]:
    """google/gemma-2b's config.json (no tie_word_embeddings key: tied, GemmaConfig's default)."""
    config = {
        "architectures": ["GemmaForCausalLM"], "model_type": "gemma", "hidden_act": "gelu", "head_dim": 256,
        "vocab_size": 256000, "hidden_size": 2048, "intermediate_size": 16384, "num_hidden_layers": 18,
        "num_attention_heads": 8, "num_key_value_heads": 1, "max_position_embeddings": 8192,
        "rms_norm_eps": 1e-6, "rope_theta": 10000.0, "attention_bias": False,
        "bos_token_id": 2, "eos_token_id": 1, "pad_token_id": 0,
    }
    return config | overrides


def _ngen4(**overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["NGen4ForCausalLM"], "model_type": "ngen4", "vocab_size": 50257,
        "n_positions": 512, "n_embd": 512, "n_layer": 8, "n_head": 8, "n_inner": 2048,
        "activation_function": "gelu_new", "layer_norm_epsilon": 1e-5, "use_rope": True,
        "rope_theta": 10000.0, "rope_pct": 0.5, "tie_word_embeddings": True,
    }
    return config | overrides


def _gpt2(**overrides: Any) -> dict[str, Any]:
    """openai-community/gpt2's config.json (124M), less its task-specific params."""
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "activation_function": "gelu_new",
        "vocab_size": 50257, "n_positions": 1024, "n_ctx": 1024, "n_embd": 768, "n_layer": 12, "n_head": 12,
        "n_inner": None, "layer_norm_epsilon": 1e-5, "scale_attn_weights": True,
    }
    return config | overrides


def _tokenformer(layers: int, hidden: int, heads: int, **overrides: Any) -> dict[str, Any]:
    config = {
        "architectures": ["TokenFormerForCausalLM"], "model_type": "tokenformer", "vocab_size": 50304,
        "hidden_size": hidden, "num_layers": layers, "num_attention_heads": heads,
        "qkv_slot_num": hidden, "proj_slot_num": hidden, "ffn_slot_num": 4 * hidden,
        "rotary_pct": 0.25, "rotary_emb_base": 10000.0, "max_position_embeddings": 2048, "layer_norm_eps": 1e-5,
    }
    return config | overrides


@dataclass(frozen=True)
class Preset:
    config: dict[str, Any]
    tokenizer: str  # folder under edgelm/assets/tokenizers
    dtype: torch.dtype
    # NoPE: no position encoding, with HeadScale tensors (all 1.0) as the NoPE paper's HeadScale models
    # carry them; config.json declares it (written_config)
    nope: bool = False
    description: str = field(default="")
    chat_template: str | None = None  # replaces the shipped tokenizer's, as the family publishes its own

    def build(self) -> tuple[Family, ModelSpec, CausalLM]:
        family = family_for_config(self.config, "preset")
        spec = family.spec_from_config(ConfigReader(self.config))
        if self.nope:
            spec = spec.with_position_encoding("none")
        return family, spec, family.build(spec)


# Llama 3.2's rotary: θ 500000, rope_scaling llama3 (factor 32, original 8192 positions)
LLAMA3_ROPE = dict(rope_theta=500000.0, rope_scaling={"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0,
                                                      "high_freq_factor": 4.0, "original_max_position_embeddings": 8192})
CHATML = ("{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
          "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}")
TINY_LLAMA = dict(vocab_size=TINY_VOCAB, hidden_size=256, intermediate_size=768, num_hidden_layers=4,
                  num_attention_heads=8, num_key_value_heads=2, max_position_embeddings=4096)

PRESETS: dict[str, Preset] = {
    "tinyllama-1.1b": Preset(_llama(), "sentencepiece", torch.bfloat16, description="TinyLlama 1.1B shapes, RoPE"),
    "tinyllama-nope-1.1b": Preset(_llama(), "sentencepiece", torch.bfloat16, True, "TinyLlama-NoPE-1.1B shapes, HeadScale tensors"),
    "ngen4-50m": Preset(_ngen4(), "bpe", torch.float32, description="NGen4 model-card example"),
    "tokenformer-150m": Preset(_tokenformer(12, 768, 12), "bpe", torch.float32, description="TokenFormer 150M"),
    "tokenformer-450m": Preset(_tokenformer(24, 1024, 16), "bpe", torch.float32, description="TokenFormer 450M"),
    "tiny-nope": Preset(_llama(**TINY_LLAMA), "sentencepiece", torch.float32, True, "4-layer llama, no position encoding"),
    "tiny-rope": Preset(_llama(**TINY_LLAMA), "sentencepiece", torch.float32, description="4-layer llama, RoPE, GQA"),
    "tiny-llama3": Preset(_llama(**TINY_LLAMA, **LLAMA3_ROPE, tie_word_embeddings=True), "sentencepiece", torch.float32,
                          description="4-layer llama, Llama 3.2's rope_scaling llama3, tied embeddings"),
    "tiny-smollm2": Preset(_llama(**TINY_LLAMA, rope_theta=100000.0, tie_word_embeddings=True), "sentencepiece", torch.float32,
                           description="4-layer llama, tied embeddings, as SmolLM2"),
    "tiny-qwen2": Preset(_qwen2(**TINY_LLAMA), "sentencepiece", torch.float32, chat_template=CHATML,
                         description="4-layer qwen2, q/k/v biases, tied embeddings, ChatML"),
    "qwen3-0.6b": Preset(_qwen3(), "bpe", torch.bfloat16, chat_template=CHATML, description="Qwen3-0.6B shapes, q/k norms"),
    "tiny-qwen3": Preset(_qwen3(**TINY_LLAMA, head_dim=64), "sentencepiece", torch.float32, chat_template=CHATML,
                         description="4-layer qwen3, q/k norms, 64-wide heads (not hidden / heads), tied embeddings, ChatML"),
    "gemma-2b": Preset(_gemma(), "sentencepiece", torch.bfloat16, description="Gemma 2B shapes, GeGLU, (1 + w) norms"),
    "tiny-gemma": Preset(_gemma(**(TINY_LLAMA | dict(num_key_value_heads=1)), head_dim=64), "sentencepiece", torch.float32,
                         description="4-layer gemma, GeGLU, (1 + w) norms, √d embedding scale, 64-wide heads, MQA, tied"),
    "tiny-ngen4": Preset(
        _ngen4(vocab_size=TINY_VOCAB, n_positions=4096, n_embd=256, n_layer=4, n_head=4, n_inner=1024),
        "bpe", torch.float32, description="4-layer ngen4, rope_pct 0.5",
    ),
    "gpt2-124m": Preset(_gpt2(), "bpe", torch.float32, description="GPT-2 124M shapes, learned positions"),
    "tiny-gpt2": Preset(_gpt2(vocab_size=TINY_VOCAB, n_embd=256, n_layer=4, n_head=4),
                        "bpe", torch.float32, description="4-layer gpt2, learned positions, Conv1D layout"),
    "tiny-tokenformer": Preset(
        _tokenformer(4, 256, 4, vocab_size=TINY_VOCAB, max_position_embeddings=4096, ffn_slot_num=1024),
        "bpe", torch.float32, description="4-layer tokenformer",
    ),
}


def copy_tokenizer(name: str, folder: Path) -> None:
    for item in (TOKENIZERS / name).iterdir():
        with resources.as_file(item) as path:
            shutil.copy(path, folder / item.name)


def write_preset(name: str, out: Path, seed: int = 0, force: bool = False) -> Path:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}", None, f"choose one of {', '.join(PRESETS)}")
    preset = PRESETS[name]
    family, _, model = preset.build()
    family.init_weights(model, seed)
    with atomic_output_dir(out, force) as tmp:
        copy_tokenizer(preset.tokenizer, tmp)
        if preset.chat_template is not None:
            tokenizer_config = json.loads((tmp / "tokenizer_config.json").read_text())
            (tmp / "tokenizer_config.json").write_text(json.dumps(tokenizer_config | {"chat_template": preset.chat_template}, indent=2))
        save_checkpoint(model, family, preset.config, tmp, preset.dtype, with_temperatures=preset.nope)
    return out
