"""tokenizer.json pre-tokenizers → GGUF `tokenizer.ggml.pre`, judged by llama.cpp itself: the shipped
byte-level BPE vocabulary with Llama 3's, Qwen2's and SmolLM's pre-tokenizer (as their published
tokenizer.json files declare them) is exported, and stock llama.cpp, which splits by the regex it
compiles in for the name written, must tokenize as the `tokenizers` library does. Three merges are
swapped into the vocabulary ("12", "123", "'S") so that the four splits give different ids: Llama 3
keeps up to three digits together, Qwen2 and SmolLM one, and Qwen2 (like Llama 3) matches "'S"
case-insensitively where SmolLM's GPT-2 regex does not; a name written for the wrong pre-tokenizer
fails (test_the_vocabulary_tells_the_pre_tokenizers_apart checks they differ)."""

import json
import os
import shutil

import pytest

from edgelm.export.gguf import export_gguf
from edgelm.export.gguf_vocab import LLAMA3_SPLIT, QWEN2_SPLIT
from edgelm.models import open_checkpoint
from edgelm.tokenizer import load_tokenizer


def split_then_bytes(regex):
    return {"type": "Sequence", "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}


PRE_TOKENIZERS = {
    "llama-bpe": split_then_bytes(LLAMA3_SPLIT),
    "qwen2": split_then_bytes(QWEN2_SPLIT),
    "smollm": {"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": True},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}]},
}
DISTINGUISHING = ["' S", "1 2", "12 3"]


def with_distinguishing_merges(data):
    """The tokenizer.json with its last three plain tokens (no merge builds on them) replaced by the
    merges of DISTINGUISHING, at the same ids: the vocabulary keeps its size."""
    model = data["model"]
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    parts = {part for m in merges for part in m.split(" ")}
    special = {t["content"] for t in data.get("added_tokens", [])}
    free = [t for t, _ in sorted(model["vocab"].items(), key=lambda kv: -kv[1]) if t not in parts and t not in special][:3]
    vocab = {t: i for t, i in model["vocab"].items() if t not in free}
    vocab |= {m.replace(" ", ""): model["vocab"][old] for m, old in zip(DISTINGUISHING, free)}
    merges = [m for m in merges if m.replace(" ", "") not in free] + DISTINGUISHING
    return data | {"model": model | {"vocab": vocab, "merges": merges}}


TEXTS = ["numbers 1234567890 and 3.14159, 42 or 7", "I'm sure they'll say it's HE'S and we'd", "café naïve — “quoted”",
         "日本語のテキスト", "  two  spaces\tand tab", "\n\nnew lines\r\n\n", "trailing space ", "x=1+22*333/4444"]


@pytest.mark.parametrize("name", list(PRE_TOKENIZERS))
def test_llama_cpp_splits_as_the_pre_tokenizer_named(preset_dir, tmp_path, name):
    from llama_cpp import Llama
    from gguf import GGUFReader

    folder = shutil.copytree(preset_dir("tiny-ngen4"), tmp_path / "model")
    data = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(with_distinguishing_merges(data) | {"pre_tokenizer": PRE_TOKENIZERS[name]}))
    gguf = export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    field = GGUFReader(gguf).fields["tokenizer.ggml.pre"]
    assert bytes(field.parts[field.data[0]]).decode() == name
    llm = Llama(model_path=str(gguf), vocab_only=True, verbose=False)
    tokenizer = load_tokenizer(folder)
    corpus = os.path.join(os.path.dirname(__file__), "..", "examples", "data", "persuasion.txt")
    lines = [line for line in open(corpus, encoding="utf-8").read().splitlines() if line.strip()][:300]
    mismatches = [text for text in TEXTS + lines
                  if tokenizer.encode(text) != llm.tokenize(text.encode("utf-8"), add_bos=tokenizer.add_bos, special=False)]
    assert not mismatches, f"{len(mismatches)} texts differ, e.g. {mismatches[:3]}"


def test_the_vocabulary_tells_the_pre_tokenizers_apart():
    from tokenizers import Tokenizer

    from edgelm.models.presets import TOKENIZERS

    data = with_distinguishing_merges(json.loads((TOKENIZERS / "bpe" / "tokenizer.json").read_text()))
    ids = {name: [Tokenizer.from_str(json.dumps(data | {"pre_tokenizer": pre})).encode(text, add_special_tokens=False).ids for text in TEXTS]
           for name, pre in PRE_TOKENIZERS.items()}
    names = list(ids)
    assert all(ids[a] != ids[b] for i, a in enumerate(names) for b in names[i + 1:])


def test_an_unknown_split_regex_is_refused(preset_dir, tmp_path):
    from edgelm.errors import UserError

    folder = shutil.copytree(preset_dir("tiny-ngen4"), tmp_path / "model")
    data = json.loads((folder / "tokenizer.json").read_text())
    (folder / "tokenizer.json").write_text(json.dumps(data | {"pre_tokenizer": split_then_bytes(r"\p{N}{1,2}|\p{L}+|\s+")}))
    with pytest.raises((UserError, ValueError), match="no llama.cpp equivalent"):
        export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False)
