"""HeadScale: per-head attention temperatures tuned at a target length, every weight frozen.

From "Length Generalization of Causal Transformers without Position Encoding" (Wang et al. 2024) and
its code: one trainable λ per (layer, head), logits λ_h·q·kᵀ/√d, initialised at 1.6, clamped to ≥ 1
after every optimizer step, trained with next-token loss on sequences of the target length. The
uniform baseline picks one λ for every head by held-out loss over a grid.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F

from .errors import UserError
from .models import CausalLM
from .numbers import POSITIVE, is_count

UNIFORM_GRID = (0.7, 0.75, 0.8, 0.85, 0.9, 0.95, 1.0, 1.05, 1.1, 1.2, 1.4, 1.6)


@dataclass(frozen=True)
class CalibrationSettings:
    target_length: int
    steps: int = 200
    lr: float = 0.1
    lr_late: float = 0.05  # used for the second half of the steps
    init: float = 1.6
    min: float = 1.0
    batch: int = 1
    seed: int = 0
    eval_every: int = 25
    eval_windows: int = 4
    uniform: bool = False

    def __post_init__(self) -> None:
        """ValueError before minutes of work: AdamW raised on a negative rate only at its first step, and a
        NaN one trained NaN temperatures."""
        for name in ("lr", "lr_late", "init", "min"):
            POSITIVE.check(name, getattr(self, name))


@dataclass
class CalibrationResult:
    table: torch.Tensor  # [layers, heads]
    settings: CalibrationSettings
    heldout_loss_before: float  # with λ = 1
    heldout_loss: float
    losses: list[float] = field(default_factory=list)
    interrupted: bool = False

    def as_json(self) -> dict:
        return {
            "layers": [[round(float(x), 6) for x in row] for row in self.table],
            "calibration": {
                "method": "uniform" if self.settings.uniform else "headscale",
                **asdict(self.settings),
                "heldout_loss_before": round(self.heldout_loss_before, 5),
                "heldout_loss": round(self.heldout_loss, 5),
                "heldout_perplexity_before": round(math.exp(self.heldout_loss_before), 3),
                "heldout_perplexity": round(math.exp(self.heldout_loss), 3),
                "steps_run": len(self.losses),
                "interrupted": self.interrupted,
            },
        }


def training_length(config: dict, max_positions: int, model_dir) -> int:
    """The length the model trained at: config.json's edgelm.training_length, else its position count."""
    recorded = config.get("edgelm")
    length = recorded.get("training_length", max_positions) if isinstance(recorded, dict) else max_positions
    if not is_count(length, 1):  # a string met `<=` as a TypeError traceback
        raise UserError(f"config.json's edgelm.training_length is {repr(length)[:40]}, not a whole number of tokens", model_dir,
                        "fix it, or remove it (the model's max_position_embeddings counts then)")
    return length


def _tokens_needed(length: int, eval_windows: int) -> int:
    return (eval_windows + 1) * (length + 1)  # the held-out windows and one to train on


def check_text(ids: list[int], settings: CalibrationSettings, text_path) -> None:
    """One line, before the model loads, for a text too short to hold out and train on, or a --batch of more
    windows than it has (--batch 100000 grew past all memory, killed at 23 GB, before its first step)."""
    length, held = settings.target_length, settings.eval_windows
    if len(ids) < (need := _tokens_needed(length, held)):
        raise UserError(f"the text is {len(ids)} tokens; length {length} needs at least {need} "
                        f"({held} held-out windows and one to train on)", text_path, "give a longer text or a smaller --target-length")
    windows = (len(ids) - held * (length + 1)) // (length + 1)
    if settings.batch > windows:
        raise UserError(f"--batch {settings.batch} is more than the {windows} windows of {length + 1} tokens the text has to train on",
                        text_path, f"give --batch {windows} or less, or a longer text")


def split_ids(ids: list[int], length: int, eval_windows: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Training stream and held-out windows [n, length + 1] cut from the end of the text."""
    if len(ids) < (need := _tokens_needed(length, eval_windows)):
        raise ValueError(f"the text has {len(ids)} tokens; calibrating at length {length} needs at least {need}")
    tokens = torch.tensor(ids)
    held = tokens[len(tokens) - eval_windows * (length + 1) :].view(eval_windows, length + 1)
    return tokens[: len(tokens) - eval_windows * (length + 1)], held


def _loss(model: CausalLM, batch: torch.Tensor) -> torch.Tensor:
    logits, _ = model(batch[:, :-1])
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), batch[:, 1:].reshape(-1))


@torch.no_grad()
def heldout_loss(model: CausalLM, held: torch.Tensor) -> float:
    return sum(_loss(model, row[None]).item() for row in held) / len(held)


def _uniform(model: CausalLM, held: torch.Tensor, settings: CalibrationSettings, on_step) -> tuple[torch.Tensor, list[float]]:
    spec = model.spec
    best, best_loss, losses = 1.0, math.inf, []
    grid = [g for g in UNIFORM_GRID if g >= settings.min] or [settings.min]  # a --min above the grid: λ = min
    for i, value in enumerate(grid):
        model.set_head_temperatures(torch.full((spec.num_layers, spec.num_heads), value))
        loss = heldout_loss(model, held)
        losses.append(loss)
        if loss < best_loss:
            best, best_loss = value, loss
        if on_step:
            on_step(i + 1, len(grid), loss)
    return torch.full((spec.num_layers, spec.num_heads), best), losses


def calibrate(
    model: CausalLM,
    ids: list[int],
    settings: CalibrationSettings,
    on_step: Callable[[int, int, float], None] | None = None,
) -> CalibrationResult:
    """Tune the model's temperatures in place (other weights untouched); Ctrl-C keeps the best so far,
    λ = 1 included."""
    spec = model.spec
    model.eval()  # no dropout anywhere, but be explicit: only λ changes
    for param in model.parameters():
        param.requires_grad_(False)
    stream, held = split_ids(ids, settings.target_length, settings.eval_windows)
    model.set_head_temperatures(torch.ones(spec.num_layers, spec.num_heads))
    before = heldout_loss(model, held)
    if settings.uniform:
        table, losses = _uniform(model, held, settings, on_step)
        model.set_head_temperatures(table)
        return CalibrationResult(table, settings, before, heldout_loss(model, held), losses)

    # the start honours --min as every step's clamp does (--min 3 with the default --init 1.6 kept λ = 1.6 when
    # no tuned table did better on the held-out windows)
    model.set_head_temperatures(torch.full((spec.num_layers, spec.num_heads), max(settings.init, settings.min)))
    temperatures = [a.head_temperature for a in model.attention_modules()]
    for t in temperatures:
        t.requires_grad_(True)
    optimizer = torch.optim.AdamW(temperatures, lr=settings.lr, weight_decay=0.0)
    generator = torch.Generator().manual_seed(settings.seed)
    # λ = 1 is a candidate too (where --min allows it): a run stopped early (Ctrl-C) or one that never
    # improves keeps whichever of λ = 1, the initial λ and the tuned ones has the lowest held-out loss
    best_table, best_loss = model.head_temperatures().detach().clone(), heldout_loss(model, held)
    if settings.min <= 1.0 and before <= best_loss:
        best_table, best_loss = torch.ones(spec.num_layers, spec.num_heads), before
    losses: list[float] = []
    interrupted = False
    try:
        for step in range(settings.steps):
            if step == settings.steps // 2:
                for group in optimizer.param_groups:
                    group["lr"] = settings.lr_late
            starts = torch.randint(0, len(stream) - settings.target_length - 1, (settings.batch,), generator=generator)
            batch = torch.stack([stream[s : s + settings.target_length + 1] for s in starts])
            loss = _loss(model, batch)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            with torch.no_grad():
                for t in temperatures:
                    t.clamp_(min=settings.min)
            losses.append(loss.item())
            if (step + 1) % settings.eval_every == 0 or step + 1 == settings.steps:
                current = heldout_loss(model, held)
                if current < best_loss:
                    best_table, best_loss = model.head_temperatures().detach().clone(), current
            if on_step:
                on_step(step + 1, settings.steps, loss.item())
    except KeyboardInterrupt:
        interrupted = True
    for t in temperatures:
        t.requires_grad_(False)
    model.set_head_temperatures(best_table)
    return CalibrationResult(best_table, settings, before, best_loss, losses, interrupted)
