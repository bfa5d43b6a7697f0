"""A model folder's tokenizer: `tokenizer.json` through `tokenizers`, or a SentencePiece
`tokenizer.model` through `sentencepiece`, with special tokens and chat template from
`tokenizer_config.json`. Both libraries do the tokenizing; this only reads the folder."""

from __future__ import annotations

import re
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .artifact_files import (MAX_JSON_BYTES, MAX_TEMPLATE_BYTES, MAX_TEXT_BYTES, MAX_TOKENIZER_BYTES, find_member, parse_json,
                             read_json_object, read_text, read_text_head)
from . import descriptor2
from .constants import CHAT_TEMPLATE_FILE
from .errors import RefusedText, UserError

def unicode_text(text: str) -> str:
    """`text`, refused in one line where it holds a lone surrogate: Python keeps a byte that is not UTF-8 in a
    command-line argument or a terminal's input so (PEP 383), and tokenizers ("TextInputSequence must be
    str") and llama.cpp's tokenizer (UnicodeEncodeError) then fail with a traceback. Every text reaches a
    model through Tokenizer.encode, so the check is here once, whatever it came from (and a text that is no
    str at all, bytes from the Python API, is a TypeError saying so, not an AttributeError deep inside)."""
    if not isinstance(text, str):
        raise TypeError(f"a text is a str, not {type(text).__name__}" + (" (decode the bytes first)" if isinstance(text, bytes) else ""))
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise RefusedText(f"the text holds a byte that is not UTF-8 (character {exc.start + 1})", None,
                        "give UTF-8 text (a terminal's or argument's bytes in another encoding: convert them with iconv)") from None
    return text


# Token texts that end a generation wherever a vocabulary has them, as llama.cpp decides its end-of-generation
# ids beside eos (llama-cpp-python 0.3.36's vendored src/llama-vocab.cpp): a chat stops at the end-of-turn marker
# its template writes (ChatML's <|im_end|>, Llama 3's <|eot_id|>) in every format, as llama.cpp's chat does
END_OF_GENERATION_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<|flush|>", "<|calls|>", "<end_of_turn>",
                           "<|endoftext|>", "</s>", "<|eom_id|>", "<EOT>", "_<EOT>", "[EOT]", "[EOS]", "<|end_of_text|>",
                           "<end_of_utterance>", "<eos>", "<turn|>", "<|tool_response>", "<\uff5cend\u2581of\u2581sentence\uff5c>", "[e~[")
# where transformers reads the ids its generate stops at (an int or a list: Llama 3.x Instruct lists three)
END_ID_FILES = ("config.json", "generation_config.json")

HEAD_BYTES_PER_TOKEN = 16  # a first read of a text's head: ~4 bytes a token in English prose, so usually one read
HEAD_MARGIN_TOKENS = 16  # tokens past those wanted, so the cut (a word split in two) cannot change the ones kept


def leading_ids(tokenizer, path: Path, count: int, what: str = "the text") -> list[int]:
    """The first `count` token ids of the text file `path` (fewer where it has fewer), reading and encoding
    only its head: bytes enough for `count` tokens and a margin, four times more until they are there.
    The ids are those of encoding the whole file, since a tokenizer's pieces near the start do not
    depend on text HEAD_MARGIN_TOKENS tokens later. A 256 MB --text cost parity its whole encoding for
    257 positions."""
    size = (count + HEAD_MARGIN_TOKENS) * HEAD_BYTES_PER_TOKEN
    while True:
        text, whole = read_text_head(path, min(size, MAX_TEXT_BYTES), what)
        ids = tokenizer.encode(text)
        if whole or len(ids) >= count + HEAD_MARGIN_TOKENS or size >= MAX_TEXT_BYTES:
            return ids[:count]
        size *= 4


class Tokenizer:
    kind: str

    def __init__(self, file: Path, config: dict[str, Any]):
        self.file = file
        self.config = config
        # the files read (load_tokenizer adds tokenizer_config.json), by name: what a GGUF export stores
        self.files: dict[str, Path] = {file.name: file}
        self.template_file: Path | None = None  # where chat_template was read: an error in it names this file
        self.bos_id = self.token_id(config.get("bos_token"))
        self.eos_id = self.token_id(config.get("eos_token"))
        # tokenizer_config.json's add_bos_token where it states one; otherwise whether the tokenizer itself puts bos
        # first (Llama 3.x's tokenizer.json does, by its post-processor, and its config says nothing), which is what
        # transformers' tokenizer(text) adds and what llama.cpp's converter (gguf-py's SpecialVocab) writes as add_bos
        stated = config.get("add_bos_token")
        self.add_bos = bool(stated) if stated is not None else self.bos_id is not None and self.leading_special_ids() == [self.bos_id]
        # the ids llama.cpp ends a generation at by their text (a GGUF export states only the others)
        self.named_end_ids = frozenset(i for i in map(self.lookup, END_OF_GENERATION_TEXTS) if i is not None)
        self.end_ids = self.named_end_ids | ({self.eos_id} if self.eos_id is not None else set())
        self.config_bos_id: int | None = None  # config.json's bos_token_id, where the tokenizer names no bos (load_tokenizer)

    @property
    def declared_bos_id(self) -> int | None:
        """The bos id a written model states (config.json, GGUF): the tokenizer's, else config.json's. Only bos_id is ever added."""
        return self.bos_id if self.bos_id is not None else self.config_bos_id

    def ends_reply(self, token: int) -> bool:
        """Whether generating `token` ends the reply: eos, a token llama.cpp ends a generation at by its text, or
        one the model folder's config.json / generation_config.json names as eos_token_id."""
        return token in self.end_ids

    def every_end_id(self) -> frozenset[int]:
        """Every token that ends a reply (what `ignore_eos` bans): end_ids, and where an engine decides by its own
        vocabulary (llama.cpp's end-of-generation flags), every token it says so of."""
        return frozenset(self.end_ids)

    def end_id_list(self) -> list[int]:
        """The end ids as config.json and genai_config.json state several: eos first (Optimum pads with it)."""
        return ([self.eos_id] if self.eos_id is not None else []) + sorted(self.end_ids - {self.eos_id})

    @property
    def chat_template(self) -> str | list[dict[str, str]] | None:
        """The template text, or transformers' named templates ([{"name": …, "template": …}, …]): load_tokenizer refused
        any other value."""
        return self.config.get("chat_template")

    def check_fits(self, rows: int) -> None:
        """Refuse a tokenizer with an id past the model's embedding rows: it gave tracebacks (an index out of range
        in torch, onnxruntime's Gather) or an ONNX export that failed at its first such token. Fewer ids than
        rows is how models are published (an embedding padded to a round size: Qwen2.5 151,936 rows for 151,665
        tokens), as transformers and llama.cpp's converter take it."""
        if self.highest_id >= rows:
            raise UserError(f"the tokenizer has token ids up to {self.highest_id}; the model's embedding has {rows} rows (ids 0 to {rows - 1})",
                            self.file, "give the tokenizer the model was trained with")

    def encode(self, text: str, add_bos: bool | None = None, special: bool = True) -> list[int]:
        """Token ids; a bos token leads when the tokenizer config asks for one (or `add_bos` says so).

        `special`: the text of a special token (`<|endoftext|>`, `<s>`, ChatML's `<|im_start|>`) becomes its
        id, as in transformers' `tokenizer(text)` and `apply_chat_template(tokenize=True)`, llama.cpp's `-p`
        prompt and the chat it renders (`parse_special=true`). False spells them out as ordinary text
        (transformers' `split_special_tokens=True`, llama.cpp's `parse_special=false`). Every tokenizer kind
        honours it, so one text gives one list of ids in every format."""
        ids = self.encode_text(unicode_text(text), special)
        if (self.add_bos if add_bos is None else add_bos) and self.bos_id is not None:
            ids = [self.bos_id] + ids
        return ids

    def token_id(self, token: str | dict | None) -> int | None:
        text = token.get("content") if isinstance(token, dict) else token
        return None if text is None else self.lookup(text)

    # What each backend provides:
    vocab_size: int
    highest_id: int  # added tokens included

    def encode_text(self, text: str, special: bool = True) -> list[int]:
        raise NotImplementedError

    def decode(self, ids: list[int]) -> str:
        raise NotImplementedError

    def leading_special_ids(self) -> list[int]:
        """The ids the tokenizer's own rules put before a text's (none where it has no such rules)."""
        return []

    def token_text(self, token: int) -> str:
        """One token's text for a person reading the prompt (chat --verbose-prompt), control tokens spelled out."""
        return self.decode([token])

    def is_control(self, token: int) -> bool:
        """Whether the tokenizer marks `token` special (a control token: bos, ChatML's <|im_start|>). A generated one
        shows no text in a reply, as llama.cpp's llama-cli and llama-server detokenize replies (special=false) and
        transformers' text-generation pipeline decodes them (skip_special_tokens=True); `decode` keeps its text."""
        return token in self.control_ids

    control_ids: frozenset[int] = frozenset()

    def lookup(self, token: str) -> int | None:
        raise NotImplementedError


@contextmanager
def _panic_message_held():
    """Rust's panic hook writes 'thread ... panicked at ...' (and, under RUST_BACKTRACE, a backtrace) to
    file descriptor 2 before pyo3 raises: while tokenizers runs, descriptor 2 is a pipe (descriptor2.held), whose
    content is dropped after a panic (the one line says it) and written to stderr otherwise."""
    with descriptor2.held():
        try:
            yield
        except BaseException as exc:
            if type(exc).__name__ == "PanicException":
                descriptor2.drop()
            raise


READING = "reading it"


def _rust_panic(exc: BaseException, file: Path, doing: str) -> BaseException:
    """tokenizers is Rust: where a file's own rules fail (a pre-tokenizer regex that backtracks past
    onig's retry limit), it panics, and pyo3 raises PanicException, a BaseException that no `except
    Exception` catches — a traceback. As one line, naming the tokenizer file; anything else as it is."""
    if type(exc).__name__ != "PanicException":
        return exc
    return UserError(f"the tokenizer failed while {doing} ({str(exc).splitlines()[0][:200] if str(exc) else 'a panic in tokenizers'})",
                     file, ("the file is damaged or not one tokenizers reads" if doing == READING else
                            "its normalizer or pre-tokenizer rules cannot run on this text") + ": give the tokenizer.json the model was published with")


# How many characters one character of text may become in a normalizer or decoder step, at worst: Unicode's longest
# decompositions (U+FDFA is 18 characters under NFKD/NFKC; canonical forms 4), a lowercase of 3 (İ is 2), BERT's spaces
# around a CJK character (×3) with its accents stripped (NFD) and lowercased; a step tokenizers adds later: 4.
_STEP_GROWTH = {"NFKC": 18, "NFKD": 18, "NFC": 4, "NFD": 4, "Lowercase": 3, "BertNormalizer": 36, "ByteLevel": 4, "Strip": 1,
                "StripAccents": 1, "Nmt": 1, "Metaspace": 1, "ByteFallback": 1, "Fuse": 1, "WordPiece": 1, "BPEDecoder": 1,
                "CTC": 1}
RUST_SECONDS, RUST_SECONDS_PER_ITEM = 30.0, 2e-5  # a tokenizers call's budget: ~1 µs a character honest, 20 µs allowed
MAX_TEXT_GROWTH = 4096  # the most its rules may multiply a text by, at worst (T5's charsmap with NFKC after it: 1,188; Llama 2's: 4)


def _growth(step: dict) -> int:
    """The most one character may become through `step` (a normalizer's or decoder's serialized JSON), sequences multiplied."""
    kind = step.get("type")
    if kind == "Sequence":
        growth = 1
        for inner in step.get("normalizers") or step.get("decoders") or []:
            growth *= _growth(inner)
        return growth
    if kind == "Replace":  # every match, an empty one of a regex too, becomes `content`: n characters at most n + 1 times
        return 1 + len(step.get("content", ""))
    if kind == "Prepend":
        return 1 + len(step.get("prepend", ""))
    if kind == "Precompiled":  # sentencepiece's charsmap: uint32 trie size, the trie, then NUL-ended replacement strings
        import base64

        blob = base64.b64decode(step.get("precompiled_charsmap") or b"")
        trie = int.from_bytes(blob[:4], "little")
        return max((len(text) for text in blob[4 + trie:].split(b"\0")), default=1) or 1
    return _STEP_GROWTH.get(kind, 4)


def _refuse_growing_rules(backend, file: Path) -> None:
    """A normalizer or decoder that multiplies text past MAX_TEXT_GROWTH, refused as the file is read: a stranger's
    Replace(' ' → 100 MB) aborted tokenizers (Rust's failed allocation: SIGABRT, no word) on a 16-word prompt."""
    for part in ("normalizer", "decoder"):
        if (step := getattr(backend, part)) is None:
            continue
        if (growth := _growth(parse_json(step.__getstate__(), file, f"its {part}", MAX_TOKENIZER_BYTES))) > MAX_TEXT_GROWTH:
            raise UserError(f"its {part} may turn one character into {growth:,} (edgelm takes at most {MAX_TEXT_GROWTH:,}): "
                            "encoding a prompt would take memory without bound", file,
                            "give the tokenizer.json the model was published with")
    processor = backend.post_processor
    if processor is not None and (added := _added_ids(parse_json(processor.__getstate__(), file, "its post-processor", MAX_TOKENIZER_BYTES))) > MAX_ADDED_IDS:
        raise UserError((f"its post-processor adds up to {added:,} ids to a text" if added < 1 << 62 else "its post-processor copies the text more than once")
                        + f" (edgelm takes at most {MAX_ADDED_IDS:,} ids added, the text once): "
                        "encoding a prompt would take memory without bound", file, "give the tokenizer.json the model was published with")


MAX_ADDED_IDS = 256  # ids a post-processor may add around a text (a pair's template included): a bos and an eos in practice


def _added_ids(step: dict) -> int:
    """The most ids a post-processor adds to one encoding (its pair template's, the larger), sequences summed: a stranger's
    TemplateProcessing repeated a special token of 10,000 ids 100,000 times, and encoding "a" built 10^9 (SIGABRT at 5 GB).
    A template naming a text ($A, $B) more than once copies it each time: counted as without bound."""
    kind = step.get("type")
    if kind == "Sequence":
        return sum(_added_ids(inner) for inner in step.get("processors") or [])
    if kind == "TemplateProcessing":
        specials = step.get("special_tokens") or {}
        added = 0
        for template in ("single", "pair"):
            pieces = step.get(template) or []
            texts = [piece["Sequence"].get("id") for piece in pieces if "Sequence" in piece]
            if len(texts) != len(set(texts)):  # each copy of a sequence copies the text: a stranger's $A 100,000 times (SIGABRT)
                return 1 << 62
            added = max(added, sum(len((specials.get(piece["SpecialToken"].get("id")) or {}).get("ids") or [1])
                                   for piece in pieces if "SpecialToken" in piece))
        return added
    return 4  # BERT's, RoBERTa's: a CLS and SEPs; ByteLevel's: none


class JSONTokenizer(Tokenizer):
    kind = "bpe (tokenizer.json)"

    def __init__(self, file: Path, config: dict[str, Any]):
        from tokenizers import Tokenizer as Backend

        self._busy = threading.Lock()  # _in_rust: one call into the Rust tokenizer at a time
        try:  # held as in _in_rust: a merge naming a renamed token panicked in BPE's loader, its 180-line backtrace on the
            with _panic_message_held():  # terminal above the one line (stranger 44)
                self.backend = Backend.from_file(str(file))
                self.vocab_size = self.backend.get_vocab_size()
                self.highest_id = max(self.backend.get_vocab(with_added_tokens=True).values(), default=-1)
                self.control_ids = frozenset(i for i, token in self.backend.get_added_tokens_decoder().items() if token.special)
        except BaseException as exc:
            raise _rust_panic(exc, file, READING) from None
        _refuse_growing_rules(self.backend, file)
        super().__init__(file, config)

    def encode_text(self, text, special=True):
        def encode() -> list[int]:
            # tokenizers matches added tokens in the text; `encode_special_tokens` spells the special ones out
            self.backend.encode_special_tokens = not special
            return self.backend.encode_batch([text], add_special_tokens=False)[0].ids

        return self._in_rust(encode, len(text), f"encoding a text of {len(text):,} characters")

    def leading_special_ids(self):
        # the post-processor's (TemplateProcessing, RobertaProcessing) ids before the text's, as tokenizers marks them
        encoding = self._in_rust(lambda: self.backend.encode_batch(["a"], add_special_tokens=True)[0], 1, "encoding a text of 1 character")
        return encoding.ids[: encoding.special_tokens_mask.index(0)] if 0 in encoding.special_tokens_mask else []

    def decode(self, ids):
        return self._in_rust(lambda: self.backend.decode_batch([ids], skip_special_tokens=False)[0], len(ids), f"decoding {len(ids):,} ids")

    def _in_rust(self, call, size: int, doing: str):
        """`call` into tokenizers on a thread of its own, given RUST_SECONDS + RUST_SECONDS_PER_ITEM × size to finish.
        The *_batch calls release the GIL (`encode` holds it), so Python's stop watcher (stops.py) runs meanwhile: a
        stranger's SIGTERM went unanswered while a pre-tokenizer regex (\\D{0,2500}\\D{0,2500}\\d, under onig's retry limit
        at each start) took 0.05 s a character; past the budget such a text is refused in one line."""
        done: dict[str, Any] = {}

        def work() -> None:
            # one call at a time, until the call ends, not until its caller stops waiting: encode_batch borrows the Rust
            # tokenizer, and setting encode_special_tokens meanwhile (another thread's encode, or the next call after a
            # Ctrl-C stopped waiting for a long one) raised "RuntimeError: Already borrowed" (stranger 50)
            with self._busy:
                try:
                    done["value"] = call()
                except BaseException as exc:  # a PanicException too: a BaseException
                    done["error"] = exc

        budget = RUST_SECONDS + RUST_SECONDS_PER_ITEM * size
        worker = threading.Thread(target=work, name="edgelm-tokenizer", daemon=True)
        try:
            with _panic_message_held():
                worker.start()
                worker.join(budget)
                if "error" in done:  # raised inside: the panic's own message, held meanwhile, is dropped
                    raise done["error"]
        except BaseException as exc:
            raise _rust_panic(exc, self.file, doing) from None
        if worker.is_alive():  # left to finish on its own: Rust code cannot be stopped from outside
            raise UserError(f"the tokenizer took more than {budget:.0f} s {doing}", self.file,
                            "its rules (a pre-tokenizer's regular expression?) cost without bound on this text: give the "
                            "tokenizer.json the model was published with")
        return done["value"]

    def lookup(self, token):
        return self.backend.token_to_id(token)


class SentencePieceTokenizer(Tokenizer):
    kind = "sentencepiece (tokenizer.model)"

    def __init__(self, file: Path, config: dict[str, Any]):
        import sentencepiece

        self.backend = sentencepiece.SentencePieceProcessor(model_file=str(file))
        self.vocab_size = self.backend.get_piece_size()
        self.highest_id = self.vocab_size - 1
        super().__init__(file, config)
        # sentencepiece never reads a control token in text (`<s>` is three pieces): they are split out
        # first, as transformers' tokenizer and llama.cpp do; each stretch between gets sentencepiece's
        # dummy prefix, as under transformers' `legacy` (its default) and in llama.cpp
        self.specials = {text: found for text in self._special_texts() if text and (found := self.lookup(text)) is not None}
        by_length = sorted(self.specials, key=len, reverse=True)  # the longest match wins, as in transformers' trie
        self.special_pattern = re.compile("|".join(map(re.escape, by_length))) if by_length else None
        self.control_ids = frozenset(self.specials.values())

    def _special_texts(self):
        """The config's special tokens (bos/eos/unk/pad…, additional, added ones marked special) and the
        model's control and unknown pieces, which llama.cpp's vocabulary marks special."""
        names = ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token")
        extra, added = self.config.get("additional_special_tokens"), self.config.get("added_tokens_decoder")
        declared = [self.config.get(name) for name in names] + (extra if isinstance(extra, list) else [])
        declared += [t for t in added.values() if isinstance(t, dict) and t.get("special")] if isinstance(added, dict) else []
        for token in declared:
            text = token.get("content") if isinstance(token, dict) else token
            if isinstance(text, str):
                yield text
        for piece in range(self.vocab_size):
            if self.backend.is_control(piece) or self.backend.is_unknown(piece):
                yield self.backend.id_to_piece(piece)

    def encode_text(self, text, special=True):
        if not special or self.special_pattern is None:
            return self.backend.encode_as_ids(text)
        ids, start = [], 0
        for match in self.special_pattern.finditer(text):
            ids += self.backend.encode_as_ids(text[start:match.start()]) if match.start() > start else []
            ids.append(self.specials[match.group()])
            start = match.end()
        return ids + (self.backend.encode_as_ids(text[start:]) if start < len(text) else [])

    def decode(self, ids):
        # sentencepiece drops control tokens from its text; transformers' decode keeps their text (a model's <think>,
        # a </s> mid-reply), as tokenizers and llama.cpp's detokenize(special=True) do: decoded between them, each
        # stretch after the first keeps the space its leading '▁' means (sentencepiece strips it as a text's start)
        text, run = [], []
        for token in [*ids, None]:
            if token is not None and token not in self.control_ids:
                run.append(token)
                continue
            if run:
                spaced = bool(text) and self.backend.id_to_piece(run[0]).startswith("\u2581")
                text.append(" " * spaced + self.backend.decode_ids(run))
                run = []
            if token is not None:
                text.append(self.backend.id_to_piece(token))
        return "".join(text)

    def lookup(self, token):
        found = self.backend.piece_to_id(token)
        return found if self.backend.id_to_piece(found) == token else None


BACKENDS = {"tokenizer.json": JSONTokenizer, "tokenizer.model": SentencePieceTokenizer}


def load_tokenizer(folder: str | Path) -> Tokenizer:
    folder = Path(folder)
    found = ((name, find_member(folder, name, MAX_TOKENIZER_BYTES)) for name in BACKENDS)
    name, file = next(((name, path) for name, path in found if path is not None), (None, None))
    if file is None:
        raise UserError("no tokenizer found", folder, "put tokenizer.json or tokenizer.model beside config.json")
    config_path = find_member(folder, "tokenizer_config.json", MAX_JSON_BYTES)
    config = read_json_object(config_path, what="tokenizer_config.json") if config_path else {}
    template = find_member(folder, CHAT_TEMPLATE_FILE, MAX_TEMPLATE_BYTES)  # where transformers 5, Optimum and genai's builder write it
    template_file = config_path if config.get("chat_template") is not None else None
    if template is not None:  # the file wins over tokenizer_config.json's key, as transformers' from_pretrained reads them
        config = {**config, "chat_template": read_text(template, MAX_TEMPLATE_BYTES, CHAT_TEMPLATE_FILE)}
        template_file = template
    check_chat_template(config.get("chat_template"), template_file)
    tokenizer = load_tokenizer_file(file, config)
    for role in ("bos_token", "eos_token"):  # named, yet no token of the vocabulary: the folder ran without a bos or an eos,
        named = config.get(role)  # and its GGUF left llama.cpp to guess both (token 11, '+') — a stranger's finding
        if (named.get("content") if isinstance(named, dict) else named) and getattr(tokenizer, role.replace("_token", "_id")) is None:
            raise UserError(f"{role} {str(named.get('content') if isinstance(named, dict) else named)[:40]!r} is no token of {name}",
                            config_path, f"name a token {name} has, or drop {role}")
    tokenizer.files = {name: file} | ({"tokenizer_config.json": config_path} if config_path else {})
    tokenizer.template_file = template_file
    tokenizer.end_ids |= stated_end_ids(folder, tokenizer.highest_id)
    if tokenizer.bos_id is None:
        tokenizer.config_bos_id = stated_bos_id(folder, tokenizer.highest_id)
    return tokenizer


def check_chat_template(template: Any, where: Path | None) -> None:
    """A chat template is text, or transformers' named templates ([{"name": …, "template": …}, …], as the converter
    writes them); any other value is refused once, as the tokenizer loads, for every reader (chat checked it, export's GGUF
    writer met a dict inside gguf-py and its ONNX writer shipped it: strangers 37 and 38)."""
    named = isinstance(template, list) and all(isinstance(t, dict) and isinstance(t.get("name"), str)
                                               and isinstance(t.get("template"), str) for t in template)
    if not (template is None or isinstance(template, str) or named):
        raise UserError(f"chat_template is a {type(template).__name__}, not a template text or a list of named templates", where,
                        "fix the model's chat template (tokenizer_config.json or chat_template.jinja)")


def stated_bos_id(folder: Path, highest_id: int) -> int | None:
    """config.json's bos_token_id where it is a token of the vocabulary: Qwen2.5 and Qwen3 name no bos token in
    tokenizer_config.json, yet state one there, which llama.cpp's converter writes (gguf-py's SpecialVocab reads
    config.json for the ids the tokenizer leaves unset); a GGUF without it had llama.cpp guess 11."""
    path = find_member(folder, "config.json", MAX_JSON_BYTES)
    stated = read_json_object(path, what="config.json").get("bos_token_id") if path else None
    return stated if type(stated) is int and 0 <= stated <= highest_id else None


def stated_end_ids(folder: Path, highest_id: int) -> frozenset[int]:
    """The eos_token_id (an id or a list) of the folder's config.json and generation_config.json, which
    transformers' generate stops at; ids past the vocabulary (a stale config) are left out, as
    written_config leaves them out of what edgelm writes."""
    ids: set[int] = set()
    for name in END_ID_FILES:
        path = find_member(folder, name, MAX_JSON_BYTES)
        stated = read_json_object(path, what=name).get("eos_token_id") if path else None
        if stated is None:
            continue
        listed = stated if isinstance(stated, list) else [stated]
        if not all(type(i) is int for i in listed):
            raise UserError(f"{name}'s eos_token_id is {repr(stated)[:80]}, not a token id or a list of them", path,
                            "fix the file or re-download it")
        ids.update(i for i in listed if 0 <= i <= highest_id)
    return frozenset(ids)


def load_tokenizer_file(file: Path, config: dict[str, Any]) -> Tokenizer:
    """One tokenizer file (tokenizer.json or tokenizer.model) with the given tokenizer config."""
    try:
        return BACKENDS[file.name](file, config)
    except UserError:
        raise
    except Exception as exc:  # each library raises its own types for a damaged file
        raise UserError(f"cannot read the tokenizer ({exc or type(exc).__name__})", file, "re-download or rebuild it") from None
