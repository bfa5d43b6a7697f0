"""Next-token choice, written once for every backend (numpy over fp32 logits)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0  # drop tokens below min_p × the most likely token's probability
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): seen tokens' logits / p if > 0, × p if < 0
    seed: int | None = None


class Sampler:
    def __init__(self, options: SamplingOptions):
        self.options = options
        self.rng = np.random.default_rng(options.seed)

    def __call__(self, logits: np.ndarray, seen: list[int] | tuple[int, ...] = ()) -> int:
        o = self.options
        if o.repetition_penalty != 1.0 and len(seen):
            logits = logits.copy()
            ids = np.unique(np.asarray(seen))
            logits[ids] = np.where(logits[ids] > 0, logits[ids] / o.repetition_penalty, logits[ids] * o.repetition_penalty)
        if o.temperature <= 0:
            return int(np.argmax(logits))
        with np.errstate(over="ignore"):  # max first: a tiny temperature sends the rest to -inf, never NaN
            scores = (logits.astype(np.float64) - logits.max()) / o.temperature
        if o.top_k > 0 and o.top_k < scores.size:
            kth = np.partition(scores, -o.top_k)[-o.top_k]
            scores = np.where(scores < kth, -np.inf, scores)
        probs = np.exp(scores - scores.max())
        probs /= probs.sum()
        if o.min_p > 0:
            probs = np.where(probs >= o.min_p * probs.max(), probs, 0.0)
            probs /= probs.sum()
        if o.top_p < 1.0:  # keep the smallest set of most likely tokens whose mass reaches top_p
            order = np.argsort(-probs)
            keep = np.cumsum(probs[order]) - probs[order] < o.top_p
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return int(self.rng.choice(probs.size, p=probs))
