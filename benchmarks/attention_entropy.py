"""How sharply each head of the shipped tiny-nope attends, at the training length and past it.

For the last 128 queries of a window of L tokens of held-out persuasion.txt (L = 256, 1024, 4096):
each head's attention entropy divided by log(number of visible keys) (1 = uniform over the prefix) and
the spread (standard deviation over the visible keys) of its logits q·k/√d. A head whose logits barely
spread stays uniform under any temperature λ, since softmax(λ·s) of a near-constant s is near-uniform:
HeadScale can sharpen a distracted head, but not change what a uniform head averages.

    python benchmarks/attention_entropy.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from edgelm.models import CausalSelfAttention, open_checkpoint
from edgelm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (256, 1024, 4096)
QUERIES = 128


def main() -> None:
    torch.set_num_threads(2)
    checkpoint = open_checkpoint(REPO / "examples" / "models" / "tiny-nope")
    spec, model = checkpoint.spec, checkpoint.load_model()
    ids = load_tokenizer(checkpoint.path).encode((REPO / "examples" / "data" / "persuasion.txt").read_text(encoding="utf-8"))
    found: dict[int, list[tuple[torch.Tensor, torch.Tensor]]] = {}

    def measure(module, args):
        q, k = args[0], args[1]  # [1, seq, heads·head_dim], [1, seq, kv_heads·head_dim]; NoPE: no rotary
        seq = q.shape[1]
        q = q.view(seq, spec.num_heads, spec.head_dim)[-QUERIES:].transpose(0, 1)  # [heads, queries, head_dim]
        k = k.view(seq, spec.num_kv_heads, spec.head_dim).transpose(0, 1).repeat_interleave(spec.num_heads // spec.num_kv_heads, 0)
        scores = q @ k.transpose(1, 2) / math.sqrt(spec.head_dim)  # [heads, queries, seq]
        position = torch.arange(seq - QUERIES, seq)
        hidden = torch.arange(seq)[None, :] > position[:, None]  # [queries, seq]: keys after the query
        p = scores.masked_fill(hidden, float("-inf")).softmax(-1)
        entropy = -(p * p.clamp_min(1e-30).log()).sum(-1) / torch.log(position + 1.0)
        spread = scores.masked_fill(hidden, float("nan")).nanmean(-1, keepdim=True)
        spread = ((scores - spread).masked_fill(hidden, 0).pow(2).sum(-1) / (position + 1)).sqrt()
        found.setdefault(seq, []).append((entropy.mean(-1), spread.mean(-1)))

    hooks = [m.register_forward_pre_hook(measure) for m in model.modules() if isinstance(m, CausalSelfAttention)]
    with torch.no_grad():
        for length in LENGTHS:
            model(torch.tensor([ids[8192 - length:8192]]))
    for hook in hooks:
        hook.remove()
    print("| layer | " + " | ".join(f"entropy / log n @{n}" for n in LENGTHS) + " | logit spread @4096 |")
    print("|---|" + "---|" * (len(LENGTHS) + 1))
    for layer in range(spec.num_layers):
        cells = [" ".join(f"{x:.2f}" for x in found[n][layer][0].tolist()) for n in LENGTHS]
        spread = " ".join(f"{x:.2f}" for x in found[LENGTHS[-1]][layer][1].tolist())
        print(f"| {layer} | " + " | ".join(cells) + f" | {spread} |")


if __name__ == "__main__":
    main()
