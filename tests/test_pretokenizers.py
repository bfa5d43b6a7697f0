"""Byte-level BPE tokenizers with the pre-tokenizers Llama 3.x, Qwen2/2.5 and SmolLM2 publish, in a GGUF:
llama.cpp must split and merge as Hugging Face `tokenizers` does.

The tokenizers are trained here (the published vocabularies are 49k-151k tokens and not on this
machine) with each family's tokenizer.json structure as published: its pre-tokenizer, normalizer and
the BPE model's `ignore_merges`. The reference is `tokenizers` itself; the other side is llama.cpp's
own tokenizer (through llama-cpp-python, vocabulary only) reading the GGUF edgelm writes. llama.cpp's
converter cannot be the reference here: it recognises these pre-tokenizers only by hashing the
published vocabularies' output, so it refuses a vocabulary of the same structure trained elsewhere.
"""

import json

import pytest
import transformers
from llama_cpp import Llama
from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from edgelm.errors import UserError
from edgelm.export.gguf import export_gguf
from edgelm.export.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT
from edgelm.models import open_checkpoint
from edgelm.quantize.calibration import DEFAULT_TEXTS
from gguf import GGUFReader

# what tells the splits apart: contractions in both cases, digit runs (1-3 at a time in Llama 3, one
# in Qwen2 and SmolLM2), newlines after punctuation, runs of spaces before a word, letters with
# diacritics, CJK, emoji, a tab
PROBES = [
    "It is a truth universally acknowledged, that a single man in possession of a good fortune...",
    "I'LL say it's 1234567 or 3.14159; they'VE said 1,000,000!\n\n\tNext   line  \n",
    "Café naïve résumé — «quoted» 東京タワー 😀👍🏽 don't DON'T we'd\r\n  x   12a34",
    "   leading\n\n\n   and trailing   ",
]
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>", "<|im_start|>", "<|im_end|>"]


def split(regex):
    return pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)


# name llama.cpp gives it → (normalizer, pre-tokenizer, ignore_merges), as each family's tokenizer.json has them
PUBLISHED = {
    "llama-bpe": (None, pre_tokenizers.Sequence([split(LLAMA3_SPLIT),
                                                 pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]), True),
    "qwen2": (normalizers.NFC(), pre_tokenizers.Sequence([split(QWEN2_SPLIT),
                                                         pre_tokenizers.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                                                                  use_regex=False)]), False),
    "smollm": (None, pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                              pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]), False),
}


def train(normalizer, pre_tokenizer, ignore_merges) -> Tokenizer:
    tokenizer = Tokenizer(models.BPE(ignore_merges=ignore_merges))
    tokenizer.normalizer = normalizer
    tokenizer.pre_tokenizer = pre_tokenizer
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1200, special_tokens=SPECIALS, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tokenizer.train_from_iterator([path.read_text() for path in DEFAULT_TEXTS[:2]]
                                  + PROBES[1:], trainer)
    return tokenizer


def published_folder(folder, tokenizer: Tokenizer):
    config = transformers.LlamaConfig(vocab_size=tokenizer.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                      max_position_embeddings=128, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({"bos_token": SPECIALS[0], "eos_token": SPECIALS[1],
                                                              "add_bos_token": False}))
    return folder


@pytest.mark.parametrize("name", PUBLISHED)
def test_llama_cpp_tokenizes_as_tokenizers(tmp_path, name):
    tokenizer = train(*PUBLISHED[name])
    data = json.loads(tokenizer.to_str())
    assert data["model"]["ignore_merges"] == PUBLISHED[name][2]
    gguf = export_gguf(open_checkpoint(published_folder(tmp_path, tokenizer), position_encoding="rope"),
                       tmp_path / "m.gguf", "f32").path
    field = GGUFReader(gguf).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == name
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    compared = 0
    for text in PROBES:
        expected = tokenizer.encode(text, add_special_tokens=False).ids
        assert llm.tokenize(text.encode(), add_bos=False, special=False) == expected, text
        compared += len(expected)
    assert compared > 100  # tokens compared over the four probes


@pytest.mark.parametrize("changed", [
    lambda data: data["pre_tokenizer"]["pretokenizers"][0]["pattern"].update(Regex=LLAMA3_SPLIT.replace("{1,3}", "{1,2}")),
    lambda data: data["model"].update(ignore_merges=False),  # llama.cpp's llama-bpe always ignores merges
    lambda data: data.update(normalizer={"type": "NFKC"}),
], ids=["digit-runs", "ignore-merges", "normalizer"])
def test_a_pre_tokenizer_llama_cpp_lacks_is_refused(tmp_path, changed):
    """Near misses of Llama 3's structure would tokenize differently in llama.cpp: refused, not written."""
    data = json.loads(train(*PUBLISHED["llama-bpe"]).to_str())
    changed(data)
    folder = published_folder(tmp_path, Tokenizer.from_str(json.dumps(data)))
    with pytest.raises(UserError, match="no llama.cpp equivalent"):  # one line (a ValueError was a traceback: stranger round 10b)
        export_gguf(open_checkpoint(folder, position_encoding="rope"), tmp_path / "m.gguf", "f32")
    assert not (tmp_path / "m.gguf").exists()
