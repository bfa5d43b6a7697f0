"""Streaming generation over any backend: prefill the prompt, then sample and decode token by token,
yielding text as it becomes valid UTF-8; with prompt-lookup decoding, several tokens a step where the
conversation already holds what comes next."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import UserError
from ..numbers import LOOKUP_NGRAM, LOOKUP_NGRAM_MAX, check_count
from ..tokenizer import Tokenizer
from .backend import Backend
from .sampling import Sampler, SamplingOptions

log = logging.getLogger("edgelm")

# the shortest n-gram a draft comes from (a shorter `lookup_ngram` is taken as asked): a single token that
# occurred before predicts its next one too rarely, and each wrong draft costs a wider forward
LOOKUP_NGRAM_MIN = 2


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
    draft: int | None = None,
    lookup_ngram: int = LOOKUP_NGRAM,
) -> Iterator[Piece]:
    """`truncate`: a prompt the context cannot hold keeps its last tokens, leaving room for
    `max_new_tokens` (at most half the context), as llama.cpp's examples keep the end of a long prompt.
    `draft`, `lookup_ngram`: prompt-lookup decoding (see `generate_from_ids`)."""
    ids = tokenizer.encode(prompt)
    if not ids:
        raise UserError("the prompt is empty after tokenization", None, "give a prompt with some text (--prompt; the prompt in Python)")
    if truncate and len(ids) >= backend.context_length:
        kept = backend.context_length - min(max_new_tokens, backend.context_length // 2)
        # said (stranger 43: the whole prompt was echoed with no word of the 667 tokens the model never read)
        log.info(f"--truncate: the prompt's {len(ids):,} tokens do not fit the {backend.context_length:,}-token context with the "
                 f"reply's room; the model reads its last {kept:,}")
        ids = ids[-kept:]
    return generate_from_ids(backend, tokenizer, ids, max_new_tokens, options, stop, draft, lookup_ngram)


def generate_from_ids(
    backend: Backend,
    tokenizer: Tokenizer,
    ids: list[int],
    max_new_tokens: int = 64,
    options: SamplingOptions = SamplingOptions(),
    stop: tuple[str, ...] = (),
    draft: int | None = None,
    lookup_ngram: int = LOOKUP_NGRAM,
) -> Iterator[Piece]:
    """Prefill `ids` (evaluating only what the backend's cache does not already hold), then sample until
    eos, a stop string or `max_new_tokens`.

    Prompt-lookup decoding: at each step up to `draft` tokens are drafted from the conversation itself
    (the longest n-gram of its last tokens, up to `lookup_ngram`, found earlier: what followed it there)
    and verified in one forward; `draft` 0 turns it off, None takes the backend's default (on only where
    it measured faster, docs/benchmarks.md). Greedy output is plain decoding's; sampled output follows
    the same distribution (speculative sampling's acceptance rule), not the same draws of a seed."""
    draft = backend.lookup_draft if draft is None else draft
    check_count("draft", draft, 0)
    check_count("lookup_ngram", lookup_ngram, 1, LOOKUP_NGRAM_MAX)
    check_count("max_new_tokens", max_new_tokens, 1)  # the CLI's option has min=1; the Python API comes here
    if any(type(s) is not str or not s for s in stop):  # as the CLI refuses --stop ""
        raise ValueError(f"stop must be a list of non-empty texts, not {stop!r} (an empty one would stop before the first token)")
    if len(ids) >= backend.context_length:
        raise UserError(
            f"the prompt is {len(ids)} tokens and the context holds {backend.context_length}, with no room for a reply", None,
            "shorten the prompt, give a larger context (--ctx-size; context_length= in Python), or pass --truncate "
            "(truncate=True) to keep the prompt's last tokens",
        )
    limit = min(max_new_tokens, backend.context_length - len(ids))
    if limit < max_new_tokens:  # said before the stream, which otherwise just ends (a stranger's finding)
        log.warning(f"the {backend.context_length}-token context leaves room for {limit} new token{'s' if limit != 1 else ''} after the {len(ids)}-token prompt, "
                    f"not {max_new_tokens}: the reply ends there at the latest")
    return _stream(tokenizer, ids, _tokens(backend, Sampler(options, tokenizer.every_end_id() if options.ignore_eos else ()), ids, limit, draft, lookup_ngram), stop)


class TextStream:
    """The text each new token adds, decoded from a window of recent ids rather than the whole sequence
    (as transformers' TextStreamer and vLLM's detokenize_incrementally do): the window's text before the
    token against its text with it, so a token's cost does not grow with the conversation. The window
    starts a few tokens back, so a leading space (SentencePiece's ▁) is decoded as the full text has
    it; it moves up to each token that completes text, and a token that ends in part of a UTF-8
    character shows nothing until a later one completes it. A control token shows nothing and stays out of
    the window (Tokenizer.is_control)."""

    CONTEXT = 6  # prompt tokens the first window starts with

    def __init__(self, tokenizer: Tokenizer, prompt: list[int]):
        self.tokenizer = tokenizer
        self.ids = list(prompt[-self.CONTEXT:])
        self.read = len(self.ids)  # ids[:read] are shown; ids[read:] wait for the rest of a character
        self.shown = tokenizer.decode(self.ids)

    def add(self, token: int) -> str:
        if self.tokenizer.is_control(token):
            return ""
        self.ids.append(token)
        text = self.tokenizer.decode(self.ids)
        if text.endswith("\ufffd") or len(text) <= len(self.shown):
            return ""  # a character split across tokens (or nothing yet): wait for the rest
        new = text[len(self.shown):]
        del self.ids[: self.read]  # the next window starts at the tokens this one completed
        self.read = len(self.ids)
        self.shown = self.tokenizer.decode(self.ids)
        return new


def _stream(tokenizer, ids, tokens, stop) -> Iterator[Piece]:
    """The text of `tokens` as it becomes valid, until an end token (Tokenizer.ends_reply) or a stop string."""
    text = TextStream(tokenizer, ids)
    pending = ""  # decoded but not yet shown: an end that could begin a stop string
    for token in tokens:
        if tokenizer.ends_reply(token):
            break
        pending += text.add(token)
        # a stop string may span tokens: it can only begin in what is held back or in the new text
        hit = min((i for i in (pending.find(s) for s in stop) if i >= 0), default=-1)
        if hit >= 0:  # a stop string: yield what precedes it, then end
            yield Piece(token, pending[:hit])
            return
        end = len(pending) - _stop_prefix(pending, stop)
        yield Piece(token, pending[:end])
        pending = pending[end:]
    if pending:  # held back, and no stop string came
        yield Piece(None, pending)


def _tokens(backend: Backend, sampler: Sampler, ids: list[int], limit: int, draft: int, ngram: int) -> Iterator[int]:
    """Up to `limit` tokens after `ids` (eos among them; the caller stops there). The backend's cache keeps
    what it shares with `ids` (an earlier turn of the same chat): only the rest is evaluated.

    Each token is evaluated with the tokens drafted after it in one forward: row i of its logits is
    what decoding would have computed after the token and the first i drafts, so the drafts are taken
    while each is the token the sampler chooses (verifies) there, and the row after the last one taken
    gives the next token as a plain step would. The cache is then cut back to the tokens taken, before
    any of them is yielded: a consumer that stops early leaves a cache that holds exactly its ids."""
    seen = list(ids)  # the prompt and the tokens produced so far
    lookup = NgramLookup(seen, ngram, LOOKUP_NGRAM_MIN) if draft else None
    token = sampler(backend.prefill(ids), seen)
    left = limit  # tokens still to produce, `token` among them
    size = draft  # drafts a step: down one after a rejection, up two after a draft taken whole (transformers' assisted generation)
    while True:
        seen.append(token)
        if lookup is not None:
            lookup.add(token)
        yield token
        left -= 1
        if not left:
            return
        # drafts and the token after them fit in what is left (and so in the context: limit saw to that)
        guesses = lookup.draft(min(size, left - 1)) if lookup is not None else []
        if not guesses:
            token = sampler(backend.decode(token), seen)
            continue
        start, before = backend.position, len(seen)
        rows = backend.forward([token, *guesses])
        for row, guess in zip(rows, guesses):
            token = sampler.verify(row, seen, guess)
            if token != guess:
                break
            seen.append(token)
        else:
            token = sampler(rows[-1], seen)
        taken = seen[before:]
        size = min(size + 2, draft) if len(taken) == len(guesses) else max(size - 1, 1)
        backend.drafted += len(guesses)
        backend.accepted += len(taken)
        backend.rewind(start + 1 + len(taken))
        left -= len(taken)  # each taken draft counts as a step of its own would
        for accepted in taken:
            lookup.add(accepted)
            yield accepted


class NgramLookup:
    """Drafts from the token sequence itself, as llama-cpp-python's LlamaPromptLookupDecoding and
    llama.cpp's lookup example do: the longest n-gram (`longest` tokens down to `shortest`) that ends the
    sequence and occurred before, and the tokens that followed its latest occurrence. An index from each
    n-gram to where its latest continuation starts, updated per token, keeps a step's cost independent
    of the length of the chat (LlamaPromptLookupDecoding scans the whole sequence each step)."""

    def __init__(self, ids: list[int], longest: int, shortest: int = 1):
        self.ids: list[int] = []
        self.shortest = min(shortest, longest)
        self.index: list[dict[tuple[int, ...], int]] = [{} for _ in range(longest)]  # [n - 1]: n-gram → start of what followed it
        for token in ids:
            self.add(token)

    def add(self, token: int) -> None:
        ids = self.ids
        ids.append(token)
        end = len(ids) - 1  # `token` continues the n-grams that end just before it
        for n, index in enumerate(self.index, 1):
            if end >= n:
                index[tuple(ids[end - n:end])] = end

    def draft(self, count: int) -> list[int]:
        """Up to `count` tokens; [] where no n-gram ending the sequence occurred before."""
        ids = self.ids
        if count <= 0:
            return []
        for n in range(min(len(self.index), len(ids) - 1), self.shortest - 1, -1):
            start = self.index[n - 1].get(tuple(ids[-n:]))
            if start is not None:
                return ids[start:start + count]
        return []


def _stop_prefix(text: str, stop: tuple[str, ...]) -> int:
    """Length of the longest end of `text` that is the beginning of a stop string."""
    return max((n for s in stop for n in range(min(len(s) - 1, len(text)), 0, -1) if text.endswith(s[:n])), default=0)
