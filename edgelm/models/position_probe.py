"""Telling a Llama-style checkpoint's position encoding from its weights, when nothing declares it.

A published NoPE checkpoint can look exactly like a RoPE one (AntNLP's TinyLlama-NoPE-1.1B has a plain
LlamaForCausalLM config and no HeadScale tensors). Run the model both ways on a short held-out
text (Persuasion, chapter 1: not in the shipped models' training novels) and keep the one whose
next-token loss is clearly lower. Measured on 255 tokens: random weights differ by 0.03 % in
perplexity (refused, not guessed); the shipped tiny-rope, trained 500 steps, is 3.0× worse without
rotary; the shipped tiny-nope, as weak, is 4.5 % worse with it — a real NoPE model far more (the
issue that asked for this: top-1 agreement 5 % for TinyLlama-NoPE-1.1B run with rotary). The 2 %
margin sits between those. A model no better than a uniform guess either way (perplexity at or above
the vocabulary size) tells nothing, whatever the margin: a stranger's untrained Llama-3-shaped model
measured 2,298.9 with rotary and 2,121.8 without over 600 tokens, and ran without.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..constants import TEXTS

PROBE_TEXT = TEXTS / "position_probe.txt"
PROBE_TOKENS = 256
CLEAR_MARGIN = math.log(1.02)  # nats per token: the better choice has ≥ 2 % lower perplexity


@dataclass(frozen=True)
class ProbeResult:
    perplexities: dict[str, float]  # position encoding → perplexity on the probe text
    tokens: int
    vocab_size: int

    @property
    def choice(self) -> str | None:
        (best, low), (_, high) = sorted(self.perplexities.items(), key=lambda kv: kv[1])
        informative = low < self.vocab_size
        return best if informative and math.log(high) - math.log(low) >= CLEAR_MARGIN else None

    def summary(self) -> str:
        shown = ", ".join(f"{'rotary' if enc == 'rope' else 'no position encoding'} {ppl:.1f}"
                          for enc, ppl in self.perplexities.items())
        return f"perplexity over {self.tokens} tokens of a built-in text: {shown}"


@torch.no_grad()
def probe_position_encoding(load_model, spec, tokenizer) -> ProbeResult:
    """`load_model(spec)` → the model with that spec's position encoding (weights read each time, so
    only one copy is in memory)."""
    ids = tokenizer.encode(PROBE_TEXT.read_text(encoding="utf-8"))[: min(PROBE_TOKENS, spec.max_positions)]
    ids = torch.tensor([i for i in ids if i < spec.vocab_size])[None]
    perplexities = {}
    for encoding in spec.position_encodings:
        model = load_model(spec.with_position_encoding(encoding))
        logits, _ = model(ids)
        loss = torch.nn.functional.cross_entropy(logits[0, :-1].float(), ids[0, 1:])
        perplexities[encoding] = math.exp(loss.item())
        del model
    return ProbeResult(perplexities, ids.shape[1] - 1, spec.vocab_size)
