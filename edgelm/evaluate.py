"""Perplexity of any backend over a text (sliding window, as Hugging Face's perplexity guide:
each window scores only the tokens no earlier window scored, with up to ctx - stride tokens of context)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from .numbers import check_count, exp_or_inf
from .runtime.backend import Backend


@dataclass
class PerplexityResult:
    perplexity: float
    tokens: int  # tokens scored
    ctx: int
    stride: int

    def as_dict(self) -> dict:
        return {"perplexity": self.perplexity, "tokens": self.tokens, "ctx": self.ctx, "stride": self.stride}


def windows(n_tokens: int, ctx: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, first scored index) of each window over n_tokens.

    Every token but the first is scored exactly once; a window scores `stride` new tokens (the first
    window up to ctx - 1) and gives them the ctx - stride … ctx - 1 tokens before them as context.
    """
    spans, scored_to = [], 1  # token 0 has no context and is never scored
    while scored_to < n_tokens:
        end = min(scored_to + stride if spans else ctx, n_tokens)
        spans.append((max(0, end - ctx), end, scored_to))
        scored_to = end
    return spans


def check_windows(tokens: int, ctx: int, stride: int | None) -> int:
    """The stride for windows of `ctx` tokens over `tokens`, each value checked and named as the caller gave
    it (the Python API's perplexity(ctx=0) said "stride must be in 1..ctx-1"; an empty text divided by zero)."""
    check_count("ctx", ctx, 2, where=" (tokens)")
    if stride is not None:
        check_count("stride", stride, 1, ctx - 1, where=" (ctx - 1)")
    if tokens < 2:
        raise ValueError(f"the text has {tokens} token{'s' * (tokens != 1)}; perplexity needs at least 2")
    return stride or ctx - 1


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Each row's log-probabilities, in float64 (finite but huge logits stay finite)."""
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def summed_nll(logits: np.ndarray, targets: Sequence[int]) -> float:
    """The negative log-likelihood of `targets` under the rows of `logits`, summed, as torch's cross_entropy computes
    it. numpy, not torch: a GGUF's or ONNX folder's perplexity imported torch for this alone (a second and more before
    the first window)."""
    return float(-log_softmax(np.asarray(logits))[np.arange(len(logits)), np.asarray(targets)].sum())


def perplexity(
    backend: Backend,
    ids: Sequence[int],
    ctx: int,
    stride: int | None = None,
    on_window: Callable[[int, int], None] | None = None,
) -> PerplexityResult:
    stride = check_windows(len(ids), ctx, stride)
    spans = windows(len(ids), ctx, stride)
    nll, count = 0.0, 0
    for i, (begin, end, first) in enumerate(spans):
        backend.reset()
        logits = backend.forward(list(ids[begin:end]))
        # logits at position p predict token p + 1
        nll += summed_nll(logits[first - begin - 1 : end - begin - 1], ids[first:end])
        count += end - first
        if on_window:
            on_window(i + 1, len(spans))
    return PerplexityResult(exp_or_inf(nll / count), count, ctx, stride)


def unigram_perplexity(train_ids: Sequence[int], eval_ids: Sequence[int], vocab_size: int) -> float:
    """Perplexity of a unigram model fitted on train_ids (add-one smoothing) over eval_ids."""
    counts = Counter(train_ids)
    total = len(train_ids) + vocab_size
    nll = -sum(math.log((counts[t] + 1) / total) for t in eval_ids)
    return math.exp(nll / len(eval_ids))


def fixed_target_perplexity(
    backend: Backend, ids: Sequence[int], length: int, targets: int = 128, windows: int = 24, longest: int = 4096
) -> PerplexityResult:
    """Perplexity over the same target tokens whatever the context length, so lengths compare fairly:
    window j ends at e_j = longest + j·targets and scores its last `targets` tokens, with `length` tokens
    of window in all (the NoPE paper's length curves use the same idea)."""
    if length > longest or targets >= length:
        raise ValueError("need targets < length <= longest")
    if longest + windows * targets > len(ids):
        raise ValueError(f"the text has {len(ids)} tokens; {longest + windows * targets} are needed")
    nll = 0.0
    for j in range(windows):
        end = longest + (j + 1) * targets
        backend.reset()
        logits = backend.forward(list(ids[end - length : end]))
        nll += summed_nll(logits[-targets - 1 : -1], ids[end - targets : end])
    return PerplexityResult(exp_or_inf(nll / (windows * targets)), windows * targets, length, targets)
