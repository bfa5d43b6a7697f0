"""The tokenizer inside a GGUF, so that llama.cpp tokenizes exactly as the source tokenizer.

SentencePiece models are written as llama.cpp's "llama" (SPM) vocabulary: pieces, scores and token
types, as llama.cpp's converter (`_set_vocab_sentencepiece`) does. Byte-level BPE `tokenizer.json`
files are written as its "gpt2" vocabulary: tokens in id order, merges, and the pre-tokenizer name.
A model vocabulary larger than the tokenizer's is padded with unused `[PAD{i}]` tokens, as the
converter does, because llama.cpp needs one token per embedding row.
"""

from __future__ import annotations

import base64

import json

from gguf import GGUFWriter, TokenType

from ..artifact_files import MAX_TOKENIZER_BYTES, read_bytes, read_json
from ..constants import GGUF_TOKENIZER_FILE, GGUF_TOKENIZER_FILE_BASE64
from ..tokenizer import JSONTokenizer, SentencePieceTokenizer, Tokenizer


def _pad(tokens: list[str], scores: list[float], types: list[int], vocab_size: int) -> None:
    if len(tokens) > vocab_size:
        raise ValueError(f"the tokenizer has {len(tokens)} tokens, the model's vocabulary only {vocab_size}")
    for i in range(len(tokens), vocab_size):
        tokens.append(f"[PAD{i}]")
        scores.append(-1000.0)
        types.append(TokenType.UNUSED)


def _sentencepiece(writer: GGUFWriter, tokenizer: SentencePieceTokenizer, vocab_size: int) -> None:
    sp = tokenizer.backend
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(sp.get_score(i))
        if sp.is_unknown(i):
            types.append(TokenType.UNKNOWN)
        elif sp.is_control(i):
            types.append(TokenType.CONTROL)
        elif sp.is_unused(i):
            types.append(TokenType.UNUSED)
        elif sp.is_byte(i):
            types.append(TokenType.BYTE)
        else:
            types.append(TokenType.NORMAL)
    _pad(tokens, scores, types, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(sp.unk_id())


# Split regexes of tokenizer.json pre-tokenizers that llama.cpp re-implements, by its name for them
# (`tokenizer.ggml.pre`; llama-vocab.cpp keeps each original regex beside its rewrite). llama.cpp's
# converter tells them apart by hashing the tokenizer's output on a check text, which recognises only
# the published vocabularies; the regex is what decides the split, so it is what is compared here.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
               r"|\s*[\r\n]+|\s+(?!\S)|\s+")
SPLIT_PRE_TOKENIZERS = {LLAMA3_SPLIT: "llama-bpe", QWEN2_SPLIT: "qwen2"}


def _is_byte_level(step: dict, use_regex: bool) -> bool:
    return step.get("type") == "ByteLevel" and step.get("use_regex", True) is use_regex and not step.get("add_prefix_space", False)


def _pre_tokenizer_name(data: dict) -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json (only the ones edgelm can vouch for):
    GPT-2's (ByteLevel with its own regex), SmolLM's (single digits, then GPT-2's), and a Split
    regex then ByteLevel without one as Llama 3 ("llama-bpe") and Qwen2 publish theirs."""
    pre = data.get("pre_tokenizer") or {}
    if _is_byte_level(pre, True):
        return "gpt-2"  # GPT-2's split regex, then byte-level mapping: GPT-2 and GPT-NeoX style
    steps = (pre.get("pretokenizers") or []) if pre.get("type") == "Sequence" else []
    if len(steps) == 2 and _is_byte_level(steps[1], True) and steps[0] == {"type": "Digits", "individual_digits": True}:
        return "smollm"  # llama.cpp's smollm: "\\p{N}", then GPT-2's regex
    if len(steps) == 2 and _is_byte_level(steps[1], False) and steps[0].get("type") == "Split" \
            and steps[0].get("behavior") == "Isolated" and not steps[0].get("invert", False):
        name = SPLIT_PRE_TOKENIZERS.get((steps[0].get("pattern") or {}).get("Regex"))
        if name:
            return name
    raise ValueError(f"pre-tokenizer {json.dumps(pre)[:80]} has no llama.cpp equivalent edgelm knows")


def _bpe(writer: GGUFWriter, tokenizer: JSONTokenizer, vocab_size: int) -> None:
    data = read_json(tokenizer.file, what="tokenizer.json")
    if data["model"]["type"] != "BPE":
        raise ValueError(f"tokenizer.json model {data['model']['type']} is not BPE")
    by_id = {i: t for t, i in tokenizer.backend.get_vocab(with_added_tokens=True).items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(len(by_id)):
        tokens.append(by_id[i])
        if i in added:
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL)
    scores = [0.0] * len(tokens)
    _pad(tokens, scores, types, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(data))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


WRITERS = {SentencePieceTokenizer: _sentencepiece, JSONTokenizer: _bpe}


def add_vocab(writer: GGUFWriter, tokenizer: Tokenizer, vocab_size: int) -> None:
    WRITERS[type(tokenizer)](writer, tokenizer, vocab_size)
    if tokenizer.bos_id is not None:
        writer.add_bos_token_id(tokenizer.bos_id)
    if tokenizer.eos_id is not None:
        writer.add_eos_token_id(tokenizer.eos_id)
    pad_id = tokenizer.token_id(tokenizer.config.get("pad_token"))
    if pad_id is not None:
        writer.add_pad_token_id(pad_id)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_eos_token(bool(tokenizer.config.get("add_eos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    # the source tokenizer files themselves, so edgelm's native executor tokenizes without llama.cpp
    for name, file in tokenizer.files.items():
        data = read_bytes(file, MAX_TOKENIZER_BYTES, name)
        try:
            writer.add_string(GGUF_TOKENIZER_FILE + name, data.decode("utf-8"))
        except UnicodeDecodeError:  # tokenizer.model is a protobuf
            writer.add_string(GGUF_TOKENIZER_FILE_BASE64 + name, base64.b64encode(data).decode("ascii"))
