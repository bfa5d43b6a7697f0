"""How close an artifact is to the full-precision reference, over the same tokens, with a KV cache:
the first `prefill` tokens in one call, the rest one at a time."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from .numbers import exp_or_inf
from .runtime.backend import Backend


@dataclass
class ParityReport:
    positions: int
    max_abs_logit_diff: float
    mean_abs_logit_diff: float
    mean_kld: float  # KL(reference ‖ artifact), nats per position
    max_kld: float
    top1_agreement: float
    reference_perplexity: float
    artifact_perplexity: float

    @property
    def perplexity_change(self) -> float:
        """Relative change of the artifact's perplexity against the reference's."""
        return self.artifact_perplexity / self.reference_perplexity - 1

    def as_dict(self) -> dict:
        return asdict(self) | {"perplexity_change": self.perplexity_change}


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits.astype(np.float64) - logits.max(-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))


def run_with_cache(backend: Backend, ids: Sequence[int], prefill: int) -> np.ndarray:
    backend.reset()
    logits = [backend.forward(list(ids[:prefill]))]
    logits += [backend.forward([token]) for token in ids[prefill:]]
    return np.concatenate(logits)


def compare(reference: Backend, artifact: Backend, ids: Sequence[int], prefill: int | None = None) -> ParityReport:
    """Logits at every position but the last are compared; perplexity scores ids[1:]."""
    prefill = len(ids) // 2 if prefill is None else prefill
    return compare_logits(run_with_cache(reference, ids, prefill), run_with_cache(artifact, ids, prefill), ids)


def compare_logits(reference: np.ndarray, artifact: np.ndarray, ids: Sequence[int]) -> ParityReport:
    """`compare` on logits already computed (run_with_cache), so the two models need not be held at once."""
    ref, art = reference[:-1], artifact[:-1]
    diff = np.abs(ref - art)
    ref_lp, art_lp = _log_softmax(ref), _log_softmax(art)
    kld = (np.exp(ref_lp) * (ref_lp - art_lp)).sum(-1)
    targets = np.asarray(ids[1:])
    rows = np.arange(len(targets))
    return ParityReport(
        positions=len(targets),
        max_abs_logit_diff=float(diff.max()),
        mean_abs_logit_diff=float(diff.mean()),
        mean_kld=float(kld.mean()),
        max_kld=float(kld.max()),
        top1_agreement=float((ref.argmax(-1) == art.argmax(-1)).mean()),
        reference_perplexity=exp_or_inf(-ref_lp[rows, targets].mean()),
        artifact_perplexity=exp_or_inf(-art_lp[rows, targets].mean()),
    )
