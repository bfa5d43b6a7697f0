"""Why the shipped tiny-nope (trained at 256 tokens) degrades past its training length, and what a
per-head temperature can and cannot do about it.

1. How sharply each head attends: for the last 128 queries of a window of L tokens of held-out
   persuasion.txt (L = 256, 1024, 4096), each head's attention entropy divided by log(number of
   visible keys) (1 = uniform over the prefix), and the spread (standard deviation over the visible
   keys) of its logits q·k/√d at 4096. A head whose logits barely spread stays uniform under any
   temperature λ: softmax(λ·s) of a near-constant s is near-uniform.
2. Sliding windows instead of temperatures: perplexity at every length (the same fixed targets as
   benchmarks/length_generalization.py) when some layers see only their last W keys.

    python benchmarks/length_diagnostics.py
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F

from edgelm.evaluate import fixed_target_perplexity
from edgelm.models import CausalSelfAttention, open_checkpoint
from edgelm.models.layers import merge_heads, split_heads
from edgelm.runtime.torch_backend import TorchBackend
from edgelm.tokenizer import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
LENGTHS = (256, 1024, 4096)
CURVE_LENGTHS = (256, 512, 1024, 2048, 4096)
QUERIES = 128
WINDOWS = [(256, (0,)), (256, (1, 2, 3)), (256, (0, 1, 2, 3)), (128, (1, 2, 3)), (128, (0, 1, 2, 3))]


class WindowedAttention(CausalSelfAttention):
    """Causal attention over the last `window` keys only (whole-window prefill, no cache: evaluation)."""

    def __init__(self, spec, window: int):
        super().__init__(spec)
        self.window = window

    def forward(self, q, k, v, positions, past, attention_mask):
        spec = self.spec
        group = spec.num_heads // spec.num_kv_heads
        q, k, v = split_heads(q, spec.num_heads), split_heads(k, spec.num_kv_heads), split_heads(v, spec.num_kv_heads)
        i = torch.arange(q.shape[2])
        band = (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - self.window)  # [query, key]
        out = F.scaled_dot_product_attention(q, k.repeat_interleave(group, 1), v.repeat_interleave(group, 1), attn_mask=band)
        return merge_heads(out), (k, v)


def windowed_curve(checkpoint, ids, window: int, layers: tuple[int, ...]) -> list[float]:
    model = checkpoint.load_model()
    attentions = [m for m in model.modules() if isinstance(m, CausalSelfAttention)]
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if child in attentions and attentions.index(child) in layers:
                setattr(parent, name, WindowedAttention(checkpoint.spec, window))
    with torch.no_grad():
        return [fixed_target_perplexity(TorchBackend(model), ids, n).perplexity for n in CURVE_LENGTHS]


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

    print("\n| attention | " + " | ".join(map(str, CURVE_LENGTHS)) + " |")
    print("|---|" + "---:|" * len(CURVE_LENGTHS))
    rows = [("full (no scaling)", windowed_curve(checkpoint, ids, 0, ()))]
    rows += [(f"last {w} keys in layers {', '.join(map(str, layers))}", windowed_curve(checkpoint, ids, w, layers)) for w, layers in WINDOWS]
    for label, curve in rows:
        print(f"| {label} | " + " | ".join(f"{x:.2f}" for x in curve) + " |")


if __name__ == "__main__":
    main()
