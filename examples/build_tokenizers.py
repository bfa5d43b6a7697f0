"""Train the two tokenizers edgelm ships, offline, on the five training novels (persuasion is held out).

- `bpe`: byte-level BPE (GPT-2 / GPT-NeoX style) with the `tokenizers` library: ngen4 and tokenformer
  presets and every trained example model.
- `sentencepiece`: a Llama-2-style `tokenizer.model` (BPE with byte fallback, `<unk>`/`<s>`/`</s>` at
  0/1/2, digits split, dummy prefix) with `sentencepiece`, as real TinyLlama ships it: the llama
  presets exercise that path. No `tokenizer.json` is written beside it: transformers 5's conversion
  of a SentencePiece model differs from sentencepiece on runs of spaces, and sentencepiece is the
  tokenizer llama.cpp reproduces.

Run once by a developer: `python examples/build_tokenizers.py`; the results are committed under
`edgelm/assets/tokenizers/`.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
OUT = REPO / "edgelm" / "assets" / "tokenizers"
TRAIN_NOVELS = ["emma", "mansfield_park", "northanger_abbey", "pride_and_prejudice", "sense_and_sensibility"]
VOCAB_SIZE = 4096

# A plain chat template: role-labelled turns separated by a blank line, in the text of llama.cpp's
# "rwkv-world" format, which its C API (llama_chat_apply_template, what its Android and iOS examples call)
# recognises by the `'User: '` line below and renders identically; jinja engines (transformers, llama.cpp
# --jinja, onnxruntime-genai) render the same text. Role names are spelled out rather than `| capitalize`d:
# onnxruntime-genai's template engine has no such filter.
BPE_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{%- if message['role'] == 'user' -%}"
    "{{- 'User: ' + message['content']|trim + '\\n\\n' -}}"
    "{%- if loop.last and add_generation_prompt -%}{{- 'Assistant:' -}}{%- endif -%}"
    "{%- elif message['role'] == 'assistant' -%}"
    "{{- 'Assistant: ' + message['content']|trim + '\\n\\n' -}}"
    "{%- else -%}"
    "{{- 'System: ' + message['content']|trim + '\\n\\n' -}}"
    "{%- endif -%}"
    "{%- endfor -%}"
)
# The Llama-2 chat format TinyLlama-Chat-style models use.
LLAMA_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if message['role'] == 'system' %}<<SYS>>\n{{ message['content'] }}\n<</SYS>>\n\n"
    "{% elif message['role'] == 'user' %}{{ bos_token }}[INST] {{ message['content'] }} [/INST]"
    "{% else %} {{ message['content'] }} {{ eos_token }}{% endif %}{% endfor %}"
)


def training_files() -> list[str]:
    return [str(DATA / f"{name}.txt") for name in TRAIN_NOVELS]


def build_bpe(out: Path) -> None:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train(training_files(), trainer)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save(str(out / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "add_bos_token": False,
        "add_eos_token": False,
        "model_max_length": 2048,
        "chat_template": BPE_CHAT_TEMPLATE,
        # transformers' generic fast tokenizer otherwise returns token_type_ids, which
        # generate(**tokenizer(...)) then refuses for a causal LM
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")


def build_sentencepiece(out: Path) -> None:
    import sentencepiece as spm

    with tempfile.TemporaryDirectory() as tmp:
        prefix = Path(tmp) / "tokenizer"
        spm.SentencePieceTrainer.train(
            input=",".join(training_files()),
            model_prefix=str(prefix),
            vocab_size=VOCAB_SIZE,
            model_type="bpe",
            byte_fallback=True,
            split_digits=True,
            add_dummy_prefix=True,
            remove_extra_whitespaces=False,
            allow_whitespace_only_pieces=True,
            normalization_rule_name="identity",
            character_coverage=0.99995,
            unk_id=0, bos_id=1, eos_id=2, pad_id=-1,
            num_threads=2,
            minloglevel=2,
        )
        out.mkdir(parents=True, exist_ok=True)
        shutil.copy(f"{prefix}.model", out / "tokenizer.model")
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "legacy": True,
        "model_max_length": 2048,
        "chat_template": LLAMA_CHAT_TEMPLATE,
        "model_input_names": ["input_ids", "attention_mask"],
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")

if __name__ == "__main__":
    build_bpe(OUT / "bpe")
    build_sentencepiece(OUT / "sentencepiece")
    for path in sorted(OUT.rglob("*")):
        if path.is_file():
            print(f"{path.relative_to(REPO)}  {path.stat().st_size:,} bytes")
