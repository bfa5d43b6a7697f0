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
from dataclasses import dataclass

from gguf import GGUFWriter, TokenType

from ..artifact_files import MAX_TOKENIZER_BYTES, read_bytes, read_json
from ..constants import GGUF_END_TOKEN_KEYS, GGUF_TOKENIZER_FILE, GGUF_TOKENIZER_FILE_BASE64, NO_BYTE_PIECES
from ..errors import UserError
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
    if TokenType.BYTE not in types:
        raise UserError(f"this {NO_BYTE_PIECES}", tokenizer.file, "retrain the tokenizer with byte_fallback=true, or export to ONNX")
    _pad(tokens, scores, types, vocab_size)
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_unk_token_id(sp.unk_id())


# The split regexes of published byte-level BPE tokenizers, as their tokenizer.json spells them. llama.cpp
# names each by its pre-tokenizer type (`tokenizer.ggml.pre`) and carries its own port of the regex
# (src/llama-vocab.cpp, llm_tokenizer_bpe); its converter recognises a vocabulary only by hashing the
# published tokens' output (convert_hf_to_gguf.py get_vocab_base_pre), so a model trained with the same
# pre-tokenizer and its own vocabulary is recognised here by the structure itself.
LLAMA3_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
                "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_SPLIT = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*"
               "|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": True}  # GPT-2's split inside
BYTE_LEVEL_NO_SPLIT = {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False}


def _split(regex: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False}


@dataclass(frozen=True)
class PreTokenizer:
    """A pre-tokenizer llama.cpp implements: its `tokenizer.ggml.pre` name, the tokenizer.json
    `pre_tokenizer` steps (the fields that change the split), the BPE model's `ignore_merges`, which
    llama.cpp fixes per name (true for llama-bpe: a word already in the vocabulary is one token), and
    the normalizers under which llama.cpp, which normalises nothing, splits the same."""
    name: str
    steps: tuple[dict, ...]
    ignore_merges: bool = False
    normalizers: tuple[str | None, ...] = (None,)


PRE_TOKENIZERS = (
    PreTokenizer("gpt-2", (BYTE_LEVEL,), normalizers=(None, "NFC")),  # GPT-2; GPT-NeoX (and TokenFormer) under NFC
    PreTokenizer("llama-bpe", (_split(LLAMA3_SPLIT), BYTE_LEVEL_NO_SPLIT), ignore_merges=True),  # Llama 3.x
    # Qwen2/2.5 and GPT-NeoX normalise to NFC first, which llama.cpp does not: text already in NFC (what
    # keyboards and most files hold) splits the same
    PreTokenizer("qwen2", (_split(QWEN2_SPLIT), BYTE_LEVEL_NO_SPLIT), normalizers=(None, "NFC")),
    PreTokenizer("smollm", ({"type": "Digits", "individual_digits": True}, BYTE_LEVEL)),  # SmolLM/SmolLM2, StarCoder
)


def _steps(pre: dict) -> list[dict]:
    """The pre-tokenizer as a list of steps, each with only the fields that change the split (not
    `trim_offsets`, which changes offsets only), tokenizers' defaults filled in."""
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kept = []
    for step in steps:
        step = {key: value for key, value in step.items() if key != "trim_offsets"}
        if step.get("type") == "ByteLevel":
            step = {"add_prefix_space": True, "use_regex": True} | step
        kept.append(step)
    return kept


def _pre_tokenizer_name(data: dict, path) -> str:
    """llama.cpp's name for the pre-tokenizer of a tokenizer.json (only the ones edgelm can vouch for); another is
    refused in one line (a stranger's Split regex before the pre-tokenizer was a ValueError traceback)."""
    pre = data.get("pre_tokenizer") or {}
    normalizer = (data.get("normalizer") or {}).get("type")
    ignore_merges = bool(data["model"].get("ignore_merges", False))
    for known in PRE_TOKENIZERS:
        if _steps(pre) == list(known.steps) and ignore_merges == known.ignore_merges and normalizer in known.normalizers:
            return known.name
    raise UserError(f"its pre-tokenizer {json.dumps(pre)[:80]} (normalizer {normalizer}, ignore_merges {ignore_merges}) has no "
                    f"llama.cpp equivalent edgelm knows ({', '.join(p.name for p in PRE_TOKENIZERS)}), so llama.cpp would split text "
                    "otherwise", path, "export to ONNX, whose runtimes read tokenizer.json as it is")


def _bpe(writer: GGUFWriter, tokenizer: JSONTokenizer, vocab_size: int) -> None:
    data = read_json(tokenizer.file, what="tokenizer.json")
    if data["model"]["type"] != "BPE":
        raise ValueError(f"tokenizer.json model {data['model']['type']} is not BPE")
    by_id = {i: t for t, i in tokenizer.backend.get_vocab(with_added_tokens=True).items()}
    added = {t["id"]: t for t in data.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(tokenizer.highest_id + 1):  # an id the tokenizer skips is an unused token, as a padded row
        tokens.append(by_id.get(i, f"[PAD{i}]"))
        if i in added:
            types.append(TokenType.CONTROL if added[i].get("special") else TokenType.USER_DEFINED)
        else:
            types.append(TokenType.NORMAL if i in by_id else TokenType.UNUSED)
    scores = [0.0] * len(tokens)
    _pad(tokens, scores, types, vocab_size)
    merges = [m if isinstance(m, str) else " ".join(m) for m in data["model"]["merges"]]
    if not merges:  # llama.cpp: "cannot find tokenizer merges in model file", for a GGUF that looked written
        raise UserError("this BPE tokenizer has no merges, and llama.cpp loads no GGUF without them", tokenizer.file,
                        "give the model's tokenizer.json with its merges, or export to ONNX")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_pre_tokenizer_name(data, tokenizer.file))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)


WRITERS = {SentencePieceTokenizer: _sentencepiece, JSONTokenizer: _bpe}


def extra_end_ids(tokenizer: Tokenizer) -> list[int]:
    """The ids the model's config lists as eos_token_id besides eos that llama.cpp would not end at by their text
    (a stranger's generation_config.json listing '.' ended the folder's and the ONNX export's replies, not the
    GGUF's); past the two GGUF_END_TOKEN_KEYS hold, refused: no GGUF could end where the model does."""
    extra = sorted(tokenizer.end_ids - tokenizer.named_end_ids - {tokenizer.eos_id})
    if len(extra) > len(GGUF_END_TOKEN_KEYS):
        raise UserError(f"the model's config lists {len(extra) + 1} eos_token_id values, {len(extra)} of them no end-of-turn "
                        f"token llama.cpp knows by its text; a GGUF can state {len(GGUF_END_TOKEN_KEYS)} besides eos", tokenizer.file,
                        "export it to ONNX, whose genai_config.json lists them all, or list fewer in generation_config.json")
    return extra


def add_vocab(writer: GGUFWriter, tokenizer: Tokenizer, vocab_size: int, store_files: bool) -> None:
    WRITERS[type(tokenizer)](writer, tokenizer, vocab_size)
    if tokenizer.declared_bos_id is not None:
        writer.add_bos_token_id(tokenizer.declared_bos_id)
    if tokenizer.eos_id is not None:
        writer.add_eos_token_id(tokenizer.eos_id)
    for key, token in zip(GGUF_END_TOKEN_KEYS, extra_end_ids(tokenizer)):
        writer.add_uint32(key, token)
    pad_id = tokenizer.token_id(tokenizer.config.get("pad_token"))
    if pad_id is not None:
        writer.add_pad_token_id(pad_id)
    unk_id = tokenizer.token_id(tokenizer.config.get("unk_token")) if isinstance(tokenizer, JSONTokenizer) else None
    if unk_id is not None:  # as the converter's SpecialVocab (a SentencePiece vocabulary's is written with its pieces)
        writer.add_unk_token_id(unk_id)
    writer.add_add_bos_token(tokenizer.add_bos)
    writer.add_add_eos_token(bool(tokenizer.config.get("add_eos_token", False)))
    if tokenizer.chat_template:
        writer.add_chat_template(tokenizer.chat_template)
    # the source tokenizer files themselves, where edgelm's native executor tokenizes without llama.cpp
    for name, file in tokenizer.files.items() if store_files else ():
        data = read_bytes(file, MAX_TOKENIZER_BYTES, name)
        try:
            writer.add_string(GGUF_TOKENIZER_FILE + name, data.decode("utf-8"))
        except UnicodeDecodeError:  # tokenizer.model is a protobuf
            writer.add_string(GGUF_TOKENIZER_FILE_BASE64 + name, base64.b64encode(data).decode("ascii"))
