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
    """Prefill `ids` from an empty cache, then sample until eos, a stop string or `max_new_tokens`."""
    if len(ids) >= backend.context_length:
        raise UserError(
            f"the prompt is {len(ids)} tokens, the context holds {backend.context_length}", None,
            "shorten the prompt, or pass --truncate to keep its last tokens",
        )
    return _stream(backend, tokenizer, ids, min(max_new_tokens, backend.context_length - len(ids)), options, stop)


def _stream(backend, tokenizer, ids, max_new_tokens, options, stop) -> Iterator[Piece]:
    sampler = Sampler(options)
    backend.reset()
    logits = backend.prefill(ids)
    produced: list[int] = []
    shown = tokenizer.decode(ids)  # decode with the prompt, so a leading space is not lost
    text = shown
    for _ in range(max_new_tokens):
        token = sampler(logits, ids + produced)
        if token == tokenizer.eos_id:
            break
        produced.append(token)
        text = tokenizer.decode(ids + produced)
        if text.endswith("\ufffd"):  # a character split across tokens: wait for the rest
            yield Piece(token, "")
        else:
            # a stop string may span tokens: search all text not yet shown, and hold back an end that could begin one
            hit = min((i for i in (text.find(s, len(shown)) for s in stop) if i >= 0), default=-1)
            if hit >= 0:  # a stop string: yield what precedes it, then end
                yield Piece(token, text[len(shown):hit])
                return
            end = len(text) - _stop_prefix(text, stop, len(shown))
            yield Piece(token, text[len(shown):end])
            shown = text[:end]
        if len(produced) < max_new_tokens:
            logits = backend.decode(token)
    if produced and not text.endswith("\ufffd") and len(text) > len(shown):  # held back, and no stop string came
        yield Piece(None, text[len(shown):])


def _stop_prefix(text: str, stop: tuple[str, ...], start: int) -> int:
    """Length of the longest end of text[start:] that is the beginning of a stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text) - start), 0, -1) if text.endswith(s[:n])), default=0)
