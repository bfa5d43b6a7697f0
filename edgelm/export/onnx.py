"""torch checkpoint → an ONNX folder that ONNX Runtime and onnxruntime-genai load as they are.

The graph follows the onnxruntime-genai decoder convention for a shared KV buffer: inputs `input_ids`,
`attention_mask` [batch, past + seq] and `past_key_values.{i}.key/value` [batch, kv_heads, capacity,
head_dim]; outputs `logits` and `present.{i}.key/value`, the same buffers with this call's keys and
values written at positions past..past+seq-1 (`past_present_share_buffer: true`: the caller binds one
buffer as both, so a decode step copies nothing and its cost does not grow with the cache's size).

Attention is onnxruntime's GroupQueryAttention contrib op (com.microsoft), the op onnxruntime-genai's own
model builder emits: it reads `seqlens_k` (= attention_mask row sums − 1) and `total_sequence_length`
(= attention_mask's width), applies rotary itself from cos/sin tables for the rotating families
(`do_rotary = 1`, rotate-half layout, the first `rotated_dims` of each head) and none for NoPE
(`do_rotary = 0`), so the graph needs no `position_ids`. Rows of a batch share the past length
(GroupQueryAttention takes right padding only). Head temperatures are folded into the query weights
first (export/temperatures.py, the same fold as GGUF), so the op's scale is the plain 1/√head_dim.
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnxscript.optimizer
import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..fileio import atomic_output_dir
from ..models import Checkpoint, CausalLM, CausalSelfAttention, ModelSpec
from ..models.layers import merge_heads, rotary_frequencies
from ..quantize.onnx import EXTERNAL_DATA_OVER, quantize_onnx
from ..tokenizer import TOKENIZER_FILES, Tokenizer, load_tokenizer
from .temperatures import bake_head_temperatures

QUANTS = ("f32", "f16", "int8", "int4")
MODEL_FILE = "model.onnx"
ROTARY_TABLE_POSITIONS = 32768  # rows of the cos/sin tables; RoPE positions past max(this, max_positions) are refused


def rotary_table_positions(spec: ModelSpec) -> int:
    return max(ROTARY_TABLE_POSITIONS, spec.max_positions) if spec.rotated_dims else 0


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask"]
    for i in range(num_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    outputs = ["logits"] + [name for i in range(num_layers) for name in (f"present.{i}.key", f"present.{i}.value")]
    return inputs, outputs


class GroupQueryAttention(nn.Module):
    """Stands in for CausalSelfAttention in the exported graph: one com.microsoft GroupQueryAttention
    node over the shared KV buffer (same inputs and outputs as CausalSelfAttention, but `past` is the
    whole buffer and `positions` is unused: the op derives positions from the mask)."""

    def __init__(self, spec: ModelSpec, rotary_tables: tuple[torch.Tensor, torch.Tensor] | None):
        super().__init__()
        self.spec = spec
        self.rotary_tables = rotary_tables  # shared by every layer: one cos and one sin initializer in the graph

    def forward(self, q, k, v, positions, past, attention_mask):
        spec = self.spec
        batch, _, seq, _ = q.shape
        query = merge_heads(q)  # [batch, seq, heads·head_dim]
        seqlens_k = (attention_mask.sum(1) - 1).to(torch.int32)  # [batch]: index of each row's last token
        total = torch.tensor(attention_mask.shape[1], dtype=torch.int32)
        rotary = self.rotary_tables or (None, None)
        out, key_buffer, value_buffer = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::GroupQueryAttention",
            [query, merge_heads(k), merge_heads(v), past[0], past[1], seqlens_k, total, *rotary],
            {"num_heads": spec.num_heads, "kv_num_heads": spec.num_kv_heads, "scale": 1 / math.sqrt(spec.head_dim),
             "do_rotary": int(spec.rotated_dims > 0), "rotary_interleaved": 0},
            dtypes=[q.dtype, past[0].dtype, past[1].dtype], shapes=[query.shape, past[0].shape, past[1].shape], version=1,
        )
        return out.view(batch, seq, spec.num_heads, spec.head_dim).transpose(1, 2), (key_buffer, value_buffer)


def with_group_query_attention(model: CausalLM) -> CausalLM:
    """The model with every CausalSelfAttention replaced by a GroupQueryAttention node (temperatures
    must already be folded into the weights: the node has none)."""
    spec = model.spec
    tables = None
    if spec.rotated_dims:
        angles = torch.arange(rotary_table_positions(spec)).float()[:, None] * rotary_frequencies(spec.rotated_dims, spec.rope_theta)
        tables = (angles.cos(), angles.sin())  # [positions, rotated_dims / 2]
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, CausalSelfAttention):
                if not torch.all(child.head_temperature == 1):
                    raise ValueError("fold the head temperatures into the weights before exporting")
                setattr(parent, name, GroupQueryAttention(spec, tables))
    return model


class DecoderWithPast(nn.Module):
    """The model with the flat ONNX signature."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *flat):
        buffers = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        positions = torch.zeros_like(input_ids)  # unused: GroupQueryAttention counts positions itself
        logits, present = self.model(input_ids, buffers, attention_mask, positions)
        return (logits, *[t for kv in present for t in kv])


def _example_inputs(spec: ModelSpec) -> tuple[torch.Tensor, ...]:
    """Batch 2, 3 new tokens after 5, buffers of 16: no dimension of size 0 or 1, which the exporter
    would specialise, and one buffer tensor per input (the exporter merges inputs that are one object)."""
    batch, seq, past, capacity = 2, 3, 5, 16
    buffers = [torch.zeros(batch, spec.num_kv_heads, capacity, spec.head_dim) for _ in range(2 * spec.num_layers)]
    return (torch.randint(0, spec.vocab_size, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.long), *buffers)


def _export_graph(model: CausalLM, path: Path) -> None:
    spec = model.spec
    wrapper = DecoderWithPast(with_group_query_attention(model)).eval()
    inputs, outputs = io_names(spec.num_layers)
    batch, seq, capacity = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("capacity")
    total = torch.export.Dim.DYNAMIC  # = past + sequence
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: capacity} for _ in range(2 * spec.num_layers)))
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, _example_inputs(spec), dynamo=True, input_names=inputs, output_names=outputs,
            dynamic_shapes=dynamic, optimize=True, verbose=False,
        )
    # fold what depends on weights only, however large: a tied LM head is a Transpose of the embedding,
    # which the exporter's size limits leave in the graph, so every call would transpose vocab × hidden
    # and the int4 quantizer would not see a constant LM head weight
    onnxscript.optimizer.optimize(program.model, input_size_limit=1 << 40, output_size_limit=1 << 40)
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=size > EXTERNAL_DATA_OVER)


def genai_config(checkpoint: Checkpoint, tokenizer: Tokenizer, context_length: int) -> dict:
    """onnxruntime-genai's description of a decoder over one shared KV buffer per layer."""
    spec = checkpoint.spec
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else checkpoint.config.get("eos_token_id", 0)
    bos = tokenizer.bos_id if tokenizer.bos_id is not None else eos
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": MODEL_FILE,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": inputs,
                "outputs": {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"},
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": eos,
            "pad_token_id": eos,
            "type": "llama",
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "do_sample": False, "max_length": context_length, "min_length": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
        },
    }


def checkpoint_hash(checkpoint: Checkpoint) -> str:
    digest = hashlib.sha256()
    for file in sorted(set(checkpoint.tensors.files.values())) + [checkpoint.path / "config.json"]:
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_quant_options(quant: str, int4_embedding: bool = False, int8_lm_head: bool = False) -> None:
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r} for ONNX", None, f"choose one of {', '.join(QUANTS)}")
    if (int4_embedding or int8_lm_head) and quant != "int4":
        raise UserError("--int4-embedding and --int8-lm-head refine --quant int4", None, "add --quant int4 or drop them")


@dataclass
class ONNXReport:
    path: Path
    quant: str
    notes: list[str]


def export_onnx(
    checkpoint: Checkpoint, out: Path, quant: str = "f32", force: bool = False, on_step: Callable[[str], None] | None = None,
    int4_embedding: bool = False, int8_lm_head: bool = False,
) -> ONNXReport:
    """`int4_embedding`, `int8_lm_head`: int4 options (embedding Gather at int4 too; LM head at 8 bits)."""
    check_quant_options(quant, int4_embedding, int8_lm_head)
    step = on_step or (lambda _: None)
    model = checkpoint.load_model()
    table = bake_head_temperatures(model, checkpoint.family)
    tokenizer = load_tokenizer(checkpoint.path)
    notes: list[str] = []
    with atomic_output_dir(out, force) as tmp:
        step("exporting the graph")
        _export_graph(model, tmp / MODEL_FILE)
        del model
        if quant != "f32":
            step(f"quantizing to {quant}")
            notes += quantize_onnx(tmp / MODEL_FILE, quant, int4_embedding, int8_lm_head)
        step("writing configs")
        for name in TOKENIZER_FILES:
            if (checkpoint.path / name).is_file():
                shutil.copy(checkpoint.path / name, tmp / name)
        (tmp / "genai_config.json").write_text(json.dumps(genai_config(checkpoint, tokenizer, checkpoint.spec.max_positions), indent=2) + "\n")
        manifest = {
            "family": checkpoint.spec.family,
            "position_encoding": checkpoint.spec.position_encoding,
            "head_temperatures": {"layers": table.tolist(), "baked_into_weights": True},
            "quantization": quant,
            "int4_options": {"embedding": int4_embedding, "lm_head_int8": int8_lm_head} if quant == "int4" else None,
            "rotary_table_positions": rotary_table_positions(checkpoint.spec),
            "source_checkpoint_sha256": checkpoint_hash(checkpoint),
            "config": checkpoint.config,
            "edgelm_version": __version__,
        }
        (tmp / "edgelm.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ONNXReport(out, quant, notes)
