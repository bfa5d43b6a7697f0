"""torch checkpoint → an ONNX folder that ONNX Runtime and onnxruntime-genai load as they are.

The graph follows the Optimum / onnxruntime-genai decoder convention: inputs `input_ids`,
`attention_mask` [batch, past + seq], `position_ids` (only when the model rotates), and
`past_key_values.{i}.key/value`; outputs `logits` and `present.{i}.key/value` (the past concatenated
with this call's keys and values, so `past_present_share_buffer` is false). Batch, sequence and past
lengths are dynamic; a past of length 0 works for the first call. Head temperatures are folded into the
query weights first (export/temperatures.py, the same fold as GGUF).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from .. import __version__
from ..errors import UserError
from ..fileio import atomic_output_dir
from ..models import Checkpoint, CausalLM
from ..tokenizer import TOKENIZER_FILES, Tokenizer, load_tokenizer
from .temperatures import bake_head_temperatures

QUANTS = ("f32", "f16", "int8", "int4")
MODEL_FILE = "model.onnx"
EXTERNAL_DATA_OVER = 2 * 1024**3  # protobuf's limit: larger models keep weights beside the graph


def io_names(num_layers: int, uses_positions: bool) -> tuple[list[str], list[str]]:
    inputs = ["input_ids", "attention_mask"] + (["position_ids"] if uses_positions else [])
    for i in range(num_layers):
        inputs += [f"past_key_values.{i}.key", f"past_key_values.{i}.value"]
    outputs = ["logits"] + [name for i in range(num_layers) for name in (f"present.{i}.key", f"present.{i}.value")]
    return inputs, outputs


class DecoderWithPast(nn.Module):
    """The reference module with the flat ONNX signature."""

    def __init__(self, model: CausalLM, uses_positions: bool):
        super().__init__()
        self.model = model
        self.uses_positions = uses_positions

    def forward(self, input_ids, attention_mask, *rest):
        position_ids, flat = (rest[0], rest[1:]) if self.uses_positions else (None, rest)
        past = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        if position_ids is None:  # unused without rotary, but the model wants a tensor of the right shape
            position_ids = torch.zeros_like(input_ids)
        logits, present = self.model(input_ids, past, attention_mask, position_ids)
        return (logits, *[t for kv in present for t in kv])


def _example_inputs(model: CausalLM, uses_positions: bool) -> tuple[torch.Tensor, ...]:
    """Batch 2, 3 new tokens, past 5: no dimension of size 0 or 1, which the exporter would specialise."""
    spec = model.spec
    batch, seq, past = 2, 3, 5
    inputs = [torch.randint(0, spec.vocab_size, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.long)]
    if uses_positions:
        inputs.append(torch.arange(past, past + seq).expand(batch, seq).contiguous())
    for _ in range(spec.num_layers):
        for _ in ("key", "value"):
            inputs.append(torch.randn(batch, spec.num_kv_heads, past, spec.head_dim))
    return tuple(inputs)


def _export_graph(model: CausalLM, path: Path) -> None:
    spec = model.spec
    uses_positions = spec.rotated_dims > 0
    wrapper = DecoderWithPast(model, uses_positions).eval()
    inputs, outputs = io_names(spec.num_layers, uses_positions)
    batch, seq, past = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("past")
    total = torch.export.Dim.DYNAMIC  # = past + sequence, which the exporter derives itself
    dynamic = [{0: batch, 1: seq}, {0: batch, 1: total}] + ([{0: batch, 1: seq}] if uses_positions else [])
    dynamic += [{0: batch, 2: past}] * (2 * spec.num_layers)
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, _example_inputs(model, uses_positions), dynamo=True, input_names=inputs, output_names=outputs,
            dynamic_shapes=(dynamic[0], dynamic[1], tuple(dynamic[2:])), optimize=True, verbose=False,
        )
    size = sum(p.numel() * p.element_size() for p in model.parameters())
    program.save(str(path), external_data=size > EXTERNAL_DATA_OVER)


def genai_config(checkpoint: Checkpoint, tokenizer: Tokenizer, context_length: int) -> dict:
    """onnxruntime-genai's description of a decoder whose graph concatenates its KV cache."""
    spec = checkpoint.spec
    inputs = {"input_ids": "input_ids", "attention_mask": "attention_mask",
              "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
    if spec.rotated_dims > 0:
        inputs["position_ids"] = "position_ids"
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
            "num_return_sequences": 1, "past_present_share_buffer": False, "repetition_penalty": 1.0,
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


@dataclass
class ONNXReport:
    path: Path
    quant: str
    notes: list[str]


def export_onnx(
    checkpoint: Checkpoint, out: Path, quant: str = "f32", force: bool = False, on_step: Callable[[str], None] | None = None
) -> ONNXReport:
    from ..quantize.onnx import quantize_onnx

    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r} for ONNX", None, f"choose one of {', '.join(QUANTS)}")
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
            notes += quantize_onnx(tmp / MODEL_FILE, quant)
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
            "source_checkpoint_sha256": checkpoint_hash(checkpoint),
            "config": checkpoint.config,
            "edgelm_version": __version__,
        }
        (tmp / "edgelm.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return ONNXReport(out, quant, notes)
