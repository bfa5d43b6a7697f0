"""Train edgelm's small example models on the five training novels (persuasion.txt is held out).

    python examples/train.py tiny-rope            # one model
    python examples/train.py all                  # all four, one after another

Reproducible: fixed seed, fixed steps, 2 CPU threads. Each model is written in its family's native
checkpoint layout (fp16 safetensors) to examples/models/NAME with the shipped byte-level BPE tokenizer
and a model card (README.md) recording the command, time taken, final losses and held-out perplexity.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from edgelm.evaluate import perplexity, unigram_perplexity
from edgelm.fileio import atomic_output_dir
from edgelm.models.checkpoint import save_checkpoint, written_config
from edgelm.models.presets import PRESETS, copy_tokenizer
from edgelm.runtime.torch_backend import TorchBackend
from edgelm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "examples" / "data"
MODELS = REPO / "examples" / "models"
TOKENIZER = REPO / "edgelm" / "assets" / "tokenizers" / "bpe"
TRAIN_NOVELS = ["emma", "mansfield_park", "northanger_abbey", "pride_and_prejudice", "sense_and_sensibility"]
HELD_OUT = "persuasion"
CTX = 256
BATCH = 16
EVAL_TOKENS = 40_000  # held-out tokens scored in the model card (the first ones of persuasion.txt)

# Per model: training steps (about 10 minutes each on 2 cores) and peak learning rate.
RECIPES = {
    "tiny-rope": {"steps": 500, "lr": 3e-3},
    "tiny-nope": {"steps": 500, "lr": 3e-3},
    "tiny-ngen4": {"steps": 500, "lr": 3e-3},
    "tiny-tokenformer": {"steps": 800, "lr": 3e-3},  # 500 steps reached 0.21 of the unigram perplexity
}


def trained_config(name: str) -> dict:
    """The preset's config plus the length it was trained at (`edgelm calibrate` warns below it)."""
    return PRESETS[name].config | {"edgelm": {"training_length": CTX}}


def encode_novels(names: list[str]) -> list[int]:
    tokenizer = load_tokenizer(TOKENIZER)
    ids: list[int] = []
    for name in names:
        ids += tokenizer.encode((DATA / f"{name}.txt").read_text()) + [tokenizer.eos_id]
    return ids


def learning_rate(step: int, steps: int, peak: float, warmup: int = 100) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train(name: str, steps: int | None = None, seed: int = 0, out: Path | None = None) -> dict:
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    recipe = RECIPES[name] | ({"steps": steps} if steps else {})
    preset = PRESETS[name]
    family, spec, model = preset.build()
    family.init_weights(model, seed)
    for module in model.modules():  # train from the usual init: norm weights 1, biases 0
        for pname, param in module.named_parameters(recurse=False):
            if param.dim() == 1:
                torch.nn.init.constant_(param, 0.0 if pname == "bias" else 1.0)

    train_ids = torch.tensor(encode_novels(TRAIN_NOVELS))
    held_out = encode_novels([HELD_OUT])
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=recipe["lr"], betas=(0.9, 0.95)
    )
    generator = torch.Generator().manual_seed(seed)
    start, losses = time.time(), []
    columns = (TextColumn(f"[bold]{name}"), BarColumn(), TextColumn("{task.completed}/{task.total} loss {task.fields[loss]:.3f}"),
               TimeElapsedColumn(), TimeRemainingColumn())
    model.train()
    with Progress(*columns) as progress:
        task = progress.add_task(name, total=recipe["steps"], loss=float("nan"))
        for step in range(recipe["steps"]):
            starts = torch.randint(0, len(train_ids) - CTX - 1, (BATCH,), generator=generator)
            batch = torch.stack([train_ids[s : s + CTX + 1] for s in starts])  # [BATCH, CTX + 1]
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(step, recipe["steps"], recipe["lr"])
            logits, _ = model(batch[:, :-1])
            loss = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            losses.append(loss.item())
            progress.update(task, advance=1, loss=sum(losses[-20:]) / len(losses[-20:]))
    minutes = (time.time() - start) / 60
    model.eval()
    eval_ids = held_out[:EVAL_TOKENS]
    result = perplexity(TorchBackend(model.half().float()), eval_ids, ctx=CTX)  # as stored: fp16 weights
    unigram = unigram_perplexity(train_ids.tolist(), eval_ids[1:], spec.vocab_size)
    report = {
        "model": name, "steps": recipe["steps"], "batch": BATCH, "ctx": CTX, "lr": recipe["lr"], "seed": seed,
        "train_tokens_seen": recipe["steps"] * BATCH * CTX, "minutes": round(minutes, 1),
        "final_train_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "held_out_perplexity": round(result.perplexity, 2), "held_out_tokens": result.tokens,
        "unigram_perplexity": round(unigram, 2), "ratio": round(result.perplexity / unigram, 4),
        "parameters": sum(p.numel() for p in model.parameters()),
    }
    with atomic_output_dir(out or MODELS / name, force=True) as tmp:
        copy_tokenizer("bpe", tmp)
        save_checkpoint(model, family, trained_config(name), tmp, torch.float16, with_temperatures=preset.nope)
        (tmp / "training.json").write_text(json.dumps(report, indent=2) + "\n")
        write_model_card(tmp, report)
    print(json.dumps(report))
    return report


def write_model_card(folder: Path, report: dict) -> None:
    name = report["model"]
    preset = PRESETS[name]
    config = (folder / "config.json").read_text().strip()
    (folder / "README.md").write_text(f"""# {name}

{preset.description}, trained by edgelm on five Jane Austen novels (`examples/data/`, public domain)
with the shipped byte-level BPE tokenizer (4096 tokens). `persuasion.txt` is held out.

- Reproduce: `python examples/train.py {name}` (seed {report['seed']}, {report['steps']} steps of
  {report['batch']} × {report['ctx']} tokens, AdamW, peak lr {report['lr']}, 2 CPU threads)
- Training time: {report['minutes']} minutes on a 2-core CPU; {report['train_tokens_seen']:,} tokens seen
- Final training loss (mean of the last 50 steps): {report['final_train_loss']}
- Parameters: {report['parameters']:,}; stored as fp16 safetensors{' (HeadScale `scale_param` tensors fp32, all 1.0)' if preset.nope else ''}
- Held-out perplexity, first {report['held_out_tokens'] + 1:,} tokens of persuasion.txt at ctx {report['ctx']}:
  **{report['held_out_perplexity']}** (a unigram model of the same tokenizer fitted on the training
  novels: {report['unigram_perplexity']}; ratio {report['ratio']})

Training context is {report['ctx']} tokens: longer contexts are out of distribution{' (see docs/length-generalization.md for head temperatures)' if preset.nope else ''}.

```json
{config}
```
""")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", choices=[*RECIPES, "all"])
    parser.add_argument("--steps", type=int, help="override the recipe's step count (for quick trials)")
    parser.add_argument("--out", type=Path, help="write the model here instead of examples/models/NAME (one model only)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--card-only", action="store_true", help="rewrite README.md from training.json, train nothing")
    args = parser.parse_args()
    if args.out and (args.model == "all" or args.card_only):
        parser.error("--out takes one model to train")
    for model_name in RECIPES if args.model == "all" else [args.model]:
        if args.card_only:  # also brings config.json up to date with trained_config, as save_checkpoint writes it
            folder = MODELS / model_name
            family, spec, _ = PRESETS[model_name].build()
            config = written_config(family, spec, trained_config(model_name), folder)
            (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
            write_model_card(MODELS / model_name, json.loads((MODELS / model_name / "training.json").read_text()))
        else:
            train(model_name, args.steps, args.seed, args.out)
