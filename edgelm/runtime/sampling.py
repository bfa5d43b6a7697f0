"""Next-token choice, written once for every backend (numpy over fp32 logits)."""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Real

import numpy as np

from ..numbers import SAMPLING_RANGES, SEED_MAX, NotFinite, check_count, check_flag


@dataclass(frozen=True)
class SamplingOptions:
    temperature: float = 0.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0
    min_p: float = 0.0  # drop tokens below min_p × the most likely token's probability
    repetition_penalty: float = 1.0  # CTRL (Keskar et al. 2019): seen tokens' logits / p if > 0, × p if < 0
    seed: int | None = None
    ignore_eos: bool = False  # never choose a token that ends the reply (llama.cpp's --ignore-eos: its logit set to -inf)

    def __post_init__(self) -> None:
        """ValueError for a value out of range: NaN passed `<= 0` checks and made NaN probabilities."""
        check_flag("ignore_eos", self.ignore_eos)
        for name, allowed in SAMPLING_RANGES.items():
            value = getattr(self, name)
            if not isinstance(value, Real) or isinstance(value, bool):  # "0.5" passed float(); the CLI parses its text itself
                raise TypeError(f"{name} must be a number, not {type(value).__name__} {str(value)[:40]!r}")
            object.__setattr__(self, name, allowed.check(name, value))
        for name, value, high in (("top_k", self.top_k, None), ("seed", self.seed, SEED_MAX)):
            if value is not None:
                check_count(name, value, 0, high)


class Sampler:
    def __init__(self, options: SamplingOptions, end_ids: frozenset[int] | set[int] = frozenset()):
        """`end_ids`: the tokens that end a reply (Tokenizer.end_ids), never chosen under `ignore_eos`."""
        self.options = options
        self.rng = np.random.default_rng(options.seed)
        self.banned = np.array(sorted(end_ids), dtype=np.int64) if options.ignore_eos else np.zeros(0, dtype=np.int64)

    def __call__(self, logits: np.ndarray, seen: list[int] | tuple[int, ...] = ()) -> int:
        probs = self.distribution(logits, seen)
        if isinstance(probs, int):
            return probs
        return int(self.rng.choice(probs.size, p=probs))

    def verify(self, logits: np.ndarray, seen: list[int] | tuple[int, ...], guess: int) -> int:
        """The token to take where a draft proposed `guess`: `guess` itself when it is accepted, otherwise
        another. Greedy: the argmax, so the output is plain greedy decoding's. Sampling: speculative
        sampling's rule (Leviathan et al. 2023; Chen et al. 2023) for a draft that proposes one token with
        certainty: accept it with probability p(guess), else draw from p without it, renormalized; the
        token taken is distributed as p exactly, as if sampled directly."""
        probs = self.distribution(logits, seen)
        if isinstance(probs, int):
            return probs
        if not 0 <= guess < probs.size:  # a prompt id past the model's vocabulary: never drawn
            return int(self.rng.choice(probs.size, p=probs))
        if self.rng.random() < probs[guess]:
            return guess
        rest = probs.copy()
        rest[guess] = 0.0
        return int(self.rng.choice(rest.size, p=rest / rest.sum()))

    def distribution(self, logits: np.ndarray, seen: list[int] | tuple[int, ...] = ()) -> np.ndarray | int:
        """The probabilities the next token is drawn from (float64 [vocab]), or the token itself where
        decoding is greedy. NotFinite when a logit is NaN or infinite: argmax of a NaN row is token 0 (an
        empty reply that looked like success), and sampling one raised numpy's 'probabilities contain NaN'."""
        low, high = logits.min(), logits.max()  # NaN propagates to both; no mask allocated
        if not (np.isfinite(low) and np.isfinite(high)):
            raise NotFinite("the model gave NaN or infinite logits (damaged weights, or values past what its runtime's "
                            "number type holds): nothing to choose a token from")
        o = self.options
        if o.repetition_penalty != 1.0 and len(seen):
            logits = logits.astype(np.float64)  # a copy; a penalty of 1e-300 or 1e300 stays finite (clipped), never NaN later
            ids = np.unique(np.asarray(seen))
            with np.errstate(over="ignore"):
                penalized = np.where(logits[ids] > 0, logits[ids] / o.repetition_penalty, logits[ids] * o.repetition_penalty)
            logits[ids] = np.clip(penalized, -np.finfo(np.float64).max, np.finfo(np.float64).max)
        if self.banned.size:
            logits = logits.astype(np.float64)  # a copy: the backend's row stays as it was
            logits[self.banned[self.banned < logits.size]] = -np.inf
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
            keep[0] = True  # the most likely token always stays (llama.cpp's min_keep = 1): top_p 0 is greedy
            mask = np.zeros_like(probs, dtype=bool)
            mask[order[keep]] = True
            probs = np.where(mask, probs, 0.0)
            probs /= probs.sum()
        return probs
