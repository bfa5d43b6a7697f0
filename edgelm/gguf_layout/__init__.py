"""How a GGUF layout is declared, once, and read by both sides, as llama.cpp's converter and loader
share gguf-py's constants.py (MODEL_TENSORS, TENSOR_NAMES, Keys): the writer (a family's GGUF mapping,
export/gguf_mapping.py) and edgelm's ggml executor (runtime/ggml_archs.py). Every arch key is a `Key`
(llama.cpp's in gguf_keys.py, an edgelm-defined arch's in its module here); tensor names are templates
over `{bid}`. No torch, no gguf-py here: the runtime imports it."""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["VOCAB", "Key", "Tensor", "expand_names"]

VOCAB = "vocab"  # a shape entry: the embedding's rows (no key holds the vocabulary size; the tokenizer does)


@dataclass(frozen=True)
class Key:
    """`{arch}.{name}`, of GGUF value type `value_type` (a name of gguf-py's GGUFValueType)."""

    name: str
    value_type: str


@dataclass(frozen=True)
class Tensor:
    """One GGUF tensor. `name` is a template over the block number `{bid}`; `sources` the checkpoint
    tensors it is made from (templates as the family's checkpoint names them), several stacked in this
    order along a new outermost axis; `transposed`: each source is stored transposed. `shape`: ggml's
    (ne0 first), each entry a whole number, a Key whose value it is, or VOCAB. `role`: the llama.cpp
    tensor category whose rule of the K-quant recipes it follows (quantize/ggml_quants.py: "output",
    "attn_qkv", "ffn_down"); None, the file type's base type. `max_input_block`: the widest block in which
    the runtime may quantize the other operand of this tensor's product (a K-quant's dot product quantizes it
    to Q8_K, one scale per 256 values; the 32-wide types to Q8_0/Q8_1, one per 32): where the input is too
    heavy-tailed for one scale per 256, 32, and the tensor takes llama.cpp's 32-wide fallback types."""

    name: str
    sources: tuple[str, ...]
    shape: tuple[int | Key | str, ...]
    transposed: bool = False
    role: str | None = None
    max_input_block: int | None = None

    def names(self, layers: int) -> list[str]:
        return [self.name.format(bid=bid) for bid in range(layers)] if "{bid}" in self.name else [self.name]


_PLACEHOLDER = re.compile(r"\{(bid|L)([+-]\d+)?\}")


def expand_names(mapping: dict[str, str], num_layers: int) -> dict[str, str]:
    """Concrete names from templates: `{bid}` (and `{bid+2}`) runs over the layers, `{L+3}` counts from
    the number of layers L, as pipeline-stage layouts (GPT-NeoX, TokenFormer) number their stages."""
    concrete = {}
    for source, target in mapping.items():
        per_layer = "{bid" in source or "{bid" in target
        for bid in range(num_layers) if per_layer else [0]:
            values = {"bid": bid, "L": num_layers}
            fill = lambda m: str(values[m.group(1)] + int(m.group(2) or 0))  # noqa: E731
            concrete[_PLACEHOLDER.sub(fill, source)] = _PLACEHOLDER.sub(fill, target)
    return concrete
