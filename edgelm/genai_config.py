"""Facts of onnxruntime-genai's genai_config.json that edgelm's writer (export/onnx.py), its folder reader and bundler
(formats/onnx.py) and its runtime (runtime/onnx_backend.py) share: which fields genai needs, the IO names it defaults
to, and how edgelm's sampling options become its search section."""
from __future__ import annotations

from .constants import SAMPLING_DEFAULTS


# what onnxruntime-genai's model builder writes beyond the IO and genai reads: without vocab_size its
# generator refuses to start ("vocab_size must be 1 or greater, is 0"); eos ends generation, pad pads a batch
GENAI_MODEL_FIELDS = ("vocab_size", "bos_token_id", "eos_token_id", "pad_token_id")
GENAI_DECODER_FIELDS = ("num_attention_heads", "hidden_size")


def missing_genai_fields(genai: dict) -> list[str]:
    model = genai.get("model", {})
    return [f"model.{k}" for k in GENAI_MODEL_FIELDS if k not in model] + \
        [f"model.decoder.{k}" for k in GENAI_DECODER_FIELDS if k not in model.get("decoder", {})]


# onnxruntime-genai's names where genai_config's decoder.inputs/outputs leave one out (its Config::Defaults)
DEFAULT_DECODER_NAMES = {"input_ids": "input_ids", "attention_mask": "attention_mask", "position_ids": "position_ids",
                         "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value",
                         "logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}
LAYER_NAME_PATTERNS = ("past_key_names", "past_value_names", "present_key_names", "present_value_names")


def decoder_names(decoder: dict) -> dict:
    """The decoder's input and output names as onnxruntime-genai reads them: genai_config's, else its defaults."""
    return DEFAULT_DECODER_NAMES | decoder.get("inputs", {}) | decoder.get("outputs", {})


def genai_search(sampling: dict) -> dict:
    """genai_config's search options for SamplingOptions' values (onnxruntime-genai's builder writes generation_config.json's
    sampling there), the ones not given as edgelm's chat fills them (SAMPLING_DEFAULTS: llama.cpp's top_k 40, where the
    builder and transformers take 50), so a model samples alike in every format; genai has no min_p."""
    return {"repetition_penalty": 1.0} | SAMPLING_DEFAULTS | {name: value for name, value in sampling.items() if name != "min_p"}
