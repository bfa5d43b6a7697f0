"""Streaming generation over any backend: prefill the prompt, then sample and decode token by token,
yielding text as it becomes valid UTF-8."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UserError
from ..tokenizer import Tokenizer
from .backend import Backend
from .sampling import Sampler, SamplingOptions


@dataclass
class Piece:
    token: int | None  # None: the last piece, releasing text held back while it could have begun a stop string
    text: str  # new text this token completes ("" while a multi-byte character or a possible stop string is open)


def generate(
    backend: Backend,
    tokenizer: Tokenizer,
    prompt: str,
    max_new_tokens: int = 64,
    options: SamplingOptions = SamplingOptions(),
    stop: tuple[str, ...] = (),
    truncate: bool = False,
) -> Iterator[Piece]:
    """`truncate`: a prompt the context cannot hold keeps its last tokens, leaving room for
    `max_new_tokens` (at most half the context), as llama.cpp's examples keep the end of a long prompt."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty after tokenization", None, "give a non-empty --prompt")
    if truncate and len(ids) >= backend.context_length:
        ids = ids[-(backend.context_length - min(max_new_tokens, backend.context_length // 2)):]
    return generate_from_ids(backend, tokenizer, ids, max_new_tokens, options, stop)


def generate_from_ids(
    backend: Backend,
    tokenizer: Tokenizer,
    ids: list[int],
    max_new_tokens: int = 64,
    options: SamplingOptions = SamplingOptions(),
    stop: tuple[str, ...] = (),
) -> Iterator[Piece]:
    """Prefill `ids` (evaluating only what the backend's cache does not already hold), then sample until
    eos, a stop string or `max_new_tokens`."""
    if len(ids) >= backend.context_length:
        raise UserError(
            f"the prompt is {len(ids)} tokens, the context holds {backend.context_length}", None,
            "shorten the prompt, or pass --truncate to keep its last tokens",
        )
    return _stream(backend, tokenizer, ids, min(max_new_tokens, backend.context_length - len(ids)), options, stop)


class TextStream:
    """The text each new token adds, decoded from a window of recent ids rather than the whole sequence
    (as transformers' TextStreamer and vLLM's detokenize_incrementally do): the window's text before the
    token against its text with it, so a token's cost does not grow with the conversation. The window
    starts a few tokens back, so a leading space (SentencePiece's ▁) is decoded as the full text has
    it; it moves up to each token that completes text, and a token that ends in part of a UTF-8
    character shows nothing until a later one completes it."""

    CONTEXT = 6  # prompt tokens the first window starts with

    def __init__(self, tokenizer: Tokenizer, prompt: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt[-self.CONTEXT:])
        self.read = len(self.ids)  # ids[:read] are shown; ids[read:] wait for the rest of a character
        self.shown = tokenizer.decode(self.ids)

    def add(self, token: int) -> str:
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or len(text) <= len(self.shown):
            return ""  # a character split across tokens (or nothing yet): wait for the rest
        new = text[len(self.shown):]
        del self.ids[: self.read]  # the next window starts at the tokens this one completed
        self.read = len(self.ids)
        self.shown = self.tokenizer.decode(self.ids)
        return new


def _stream(backend, tokenizer, ids, max_new_tokens, options, stop) -> Iterator[Piece]:
    """The backend's cache keeps what it shares with `ids` (an earlier turn of the same chat): only the
    rest is evaluated."""
    sampler = Sampler(options)
    logits = backend.prefill(ids)
    seen = list(ids)  # the prompt and the tokens produced so far
    text = TextStream(tokenizer, ids)
    pending = ""  # decoded but not yet shown: an end that could begin a stop string
    for produced in range(1, max_new_tokens + 1):
        token = sampler(logits, seen)
        if token == tokenizer.eos_id:
            break
        seen.append(token)
        pending += text.add(token)
        # a stop string may span tokens: it can only begin in what is held back or in the new text
        hit = min((i for i in (pending.find(s) for s in stop) if i >= 0), default=-1)
        if hit >= 0:  # a stop string: yield what precedes it, then end
            yield Piece(token, pending[:hit])
            return
        end = len(pending) - _stop_prefix(pending, stop)
        yield Piece(token, pending[:end])
        pending = pending[end:]
        if produced < max_new_tokens:
            logits = backend.decode(token)
    if pending:  # held back, and no stop string came
        yield Piece(None, pending)


def _stop_prefix(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)
