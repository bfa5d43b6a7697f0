"""How close an artifact is to the full-precision reference, over the same tokens, with a KV cache:
the first `prefill` tokens in one call, the rest one at a time."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .errors import UserError
from .evaluate import log_softmax
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

    def nonfinite_side(self) -> str:
        """Which side's logits were NaN or infinite, as its perplexity shows (a non-finite logit in a row makes the
        row's log-probabilities NaN): a reference run with λ = 1e38 gave NaN, and the failure blamed the artifact."""
        reference, artifact = math.isfinite(self.reference_perplexity), math.isfinite(self.artifact_perplexity)
        return "the reference" if artifact and not reference else "the reference and the artifact" if not (reference or artifact) else "the artifact"


def run_with_cache(backend: Backend, ids: Sequence[int], prefill: int) -> np.ndarray:
    backend.reset()
    logits = [backend.forward(list(ids[:prefill]))]
    logits += [backend.forward([token]) for token in ids[prefill:]]
    return np.concatenate(logits)


def compare(reference: Backend, artifact: Backend, ids: Sequence[int], prefill: int | None = None) -> ParityReport:
    """Logits at every position but the last are compared; perplexity scores ids[1:]."""
    prefill = len(ids) // 2 if prefill is None else prefill
    return compare_logits(run_with_cache(reference, ids, prefill), run_with_cache(artifact, ids, prefill), ids)


ROWS_AT_ONCE = 256  # positions compared per block: float64 copies of a block, not of every position (32k vocab: 65 MB each)


def compare_logits(reference: np.ndarray, artifact: np.ndarray, ids: Sequence[int]) -> ParityReport:
    """`compare` on logits already computed (run_with_cache), so the two models need not be held at once. Row
    blocks at a time: whole, the float64 log-softmaxes and their differences held ~10 copies of the logits
    (3.7 GB for 6,763 positions of a 4,096-token vocabulary; a stranger's `parity --tokens` past the context)."""
    positions = len(ids) - 1
    targets = np.asarray(ids[1:])
    diff_max = diff_sum = 0.0
    kld, ref_nll, art_nll, top1 = np.empty(positions), np.empty(positions), np.empty(positions), np.empty(positions, dtype=bool)
    for start in range(0, positions, ROWS_AT_ONCE):
        block = slice(start, min(start + ROWS_AT_ONCE, positions))
        ref, art = reference[block], artifact[block]
        diff = np.abs(ref - art)
        diff_max, diff_sum = float(np.max([diff_max, diff.max()])), diff_sum + float(diff.sum(dtype=np.float64))  # NaN carries
        ref_lp, art_lp = log_softmax(ref), log_softmax(art)
        kld[block] = (np.exp(ref_lp) * (ref_lp - art_lp)).sum(-1)
        rows = np.arange(len(ref))
        ref_nll[block], art_nll[block] = -ref_lp[rows, targets[block]], -art_lp[rows, targets[block]]
        top1[block] = ref.argmax(-1) == art.argmax(-1)
    return ParityReport(
        positions=positions,
        max_abs_logit_diff=diff_max,
        mean_abs_logit_diff=diff_sum / (positions * reference.shape[-1]),
        mean_kld=float(kld.mean()),
        max_kld=float(kld.max()),
        top1_agreement=float(top1.mean()),
        reference_perplexity=exp_or_inf(ref_nll.mean()),
        artifact_perplexity=exp_or_inf(art_nll.mean()),
    )


def spread_windows(ids: Sequence[int], length: int, count: int) -> list[list[int]]:
    """`count` windows of `length` ids spread evenly over `ids`, none overlapping, the first at its start. Fidelity
    measured on one window of a novel's opening (its title page and first paragraph) gave verdicts that eight windows
    across the novel reversed (stranger 36: an ONNX calibration −4 % there, +5 % over 2,048 positions)."""
    if count < 1 or count * length > len(ids):  # overlapping windows would count positions twice
        raise ValueError(f"{count} windows of {length} ids do not fit apart in {len(ids)}")
    step = (len(ids) - length) // max(count - 1, 1)
    return [list(ids[i * step: i * step + length]) for i in range(count)]


def pooled(reports: Sequence[ParityReport]) -> ParityReport:
    """Reports over separate windows as one over all their positions: means weighted by positions, maxima the largest,
    perplexities the exponent of the pooled mean log-likelihood."""
    total = sum(r.positions for r in reports)

    def mean(values) -> float:
        return sum(r.positions * v for r, v in zip(reports, values)) / total

    return ParityReport(
        positions=total,
        max_abs_logit_diff=float(np.max([r.max_abs_logit_diff for r in reports])),  # NaN carries, as in compare_logits
        mean_abs_logit_diff=mean(r.mean_abs_logit_diff for r in reports),
        mean_kld=mean(r.mean_kld for r in reports),
        max_kld=float(np.max([r.max_kld for r in reports])),
        top1_agreement=mean(r.top1_agreement for r in reports),
        reference_perplexity=exp_or_inf(mean(np.log(r.reference_perplexity) for r in reports)),
        artifact_perplexity=exp_or_inf(mean(np.log(r.artifact_perplexity) for r in reports)),
    )


def positions_to_compare(asked: int | None, default: int, learned: int | None, stated: int | None, artifact_path) -> tuple[int, list[str]]:
    """The positions parity compares, and a note for each time the default was clamped: to a learned position table
    (`learned`: the reference has none past it) or to the context an artifact states (export --ctx-size 100 had the
    default refused). A count asked for past either is refused where the artifact opens, naming the option."""
    tokens, notes = asked or default, []
    if learned is not None and tokens >= learned and asked is None:
        notes.append(f"note: the model has learned {learned:,} positions: parity compares {learned - 1:,}, not {tokens:,}")
        tokens = learned - 1
    if stated is not None and stated < 3:  # not "the text is too short"
        raise UserError(f"the artifact states a context of {stated} tokens; parity compares at least 2 positions, 3 tokens", artifact_path,
                        "export it with --ctx-size 3 or more")
    if stated is not None and tokens >= stated and asked is None:
        notes.append(f"note: the artifact states a context of {stated:,} tokens: parity compares {stated - 1:,} positions, not {tokens:,}")
        tokens = stated - 1
    return tokens, notes


def temperature_note(artifact_path, recorded, given) -> str | None:
    """A note when the reference runs with head temperatures the artifact records, or a warning when
    --head-temperatures (which wins) differs from them: the numbers then measure that difference too."""
    try:
        table = np.asarray(recorded, dtype=np.float32)
    except (TypeError, ValueError):  # not a table of numbers; with no --head-temperatures the reference refused it
        table = None
    if recorded is None or (given is None and np.all(table == 1)):
        return None
    if given is None:
        return (f"note: the reference runs with the head temperatures {artifact_path} records (λ from {table.min():.4g} to "
                f"{table.max():.4g}), folded into it at export")
    from .artifact_files import read_json

    layers = np.asarray(read_json(given, what="the temperatures file")["layers"], dtype=np.float32)  # valid: the reference read it
    if table is None or layers.shape != table.shape or not np.allclose(layers, table, rtol=1e-6, atol=0):
        return (f"warning: --head-temperatures {given} differs from the λ {artifact_path} records (folded into it at export); "
                "the reference runs with the file's: drop the option to compare with what was exported")
    return None


def certificate_notes(artifact_path, artifact, kv_cache: str, reference, allow_pickle: bool, positions: int, text: Path) -> list[str]:
    """Notes when the artifact's parity certificate was measured otherwise than this run — another KV cache type (a
    GGUF's with float32, parity's default llama.cpp's float16), another number of positions or another text: its numbers
    and these differ by that too (stranger 45 read two "truths", 0.0034 at export and 0.00265 here, the note naming the
    cache alone); and when `reference` is not the model it was measured against (a stranger's run compared a NoPE GGUF
    with tiny-rope and no word)."""
    from .artifact_files import sha256
    from .certificate import certified_kv_cache, reference_sha256, validate
    from .models import open_checkpoint

    try:
        certificate = artifact.format.certificate()
        if certificate is not None:
            validate(certificate, artifact_path)
    except UserError:  # a damaged certificate is verify's to report; parity measures the artifact itself
        return []
    if certificate is None:
        return []
    notes, certified, fixes = [], [], []
    if certified_kv_cache(certificate) != kv_cache:
        certified.append((f"a {certified_kv_cache(certificate)} KV cache", f"a {kv_cache} one"))
        fixes += ["--f32-kv-cache"] if "f32_kv_cache" in artifact.format.honoured else []
    if certificate["positions"] != positions:
        certified.append((f"{certificate['positions']:,} positions", f"{positions:,}"))
        fixes.append(f"--tokens {certificate['positions']}")
    if certificate["text_sha256"] != sha256(text):
        certified.append((f"the text {certificate['text']}", text.name))
    if certified:
        notes.append(f"note: the parity certificate in {artifact_path} was measured with " + ", ".join(c for c, _ in certified)
                     + "; this run: " + ", ".join(h for _, h in certified) + ", so its numbers differ from these by that too"
                     + (f" (add {' '.join(fixes)} to compare like with like)" if fixes else ""))
    checkpoint = open_checkpoint(reference, position_encoding=artifact.format.recorded_position_encoding(), allow_pickle=allow_pickle)
    if (here := reference_sha256(checkpoint)) != certificate["reference_sha256"]:
        notes.append(f"note: {reference} is not the model the parity certificate in {artifact_path} was measured against (its weights "
                     f"and config.json hash to {here[:16]}…, certified {certificate['reference_sha256'][:16]}…)")
    return notes
