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

`kv_cache="int8"` stores the buffers as int8 with static per-channel scales (the op's
`kv_cache_bit_width = 8`, `k/v_quant_type = PER_CHANNEL`), calibrated on a text with the torch model:
a quarter of the bytes to hold and read (1.1B at 2048 positions: 92 → 23 MB).
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import onnx_ir as ir
import onnxscript.optimizer
import torch
from torch import nn
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

from .. import __version__
from ..artifact_files import find_member, read_json_object, user_file
from ..certificate import certify_onnx, probe_positions, reference_sha256
from ..constants import CHAT_TEMPLATE_FILE, GENAI_CONFIG, HF_CONFIG, ONNX_MANIFEST, ONNX_MODEL_FILE, TOKENIZER_FILES
from ..errors import UserError
from ..fileio import atomic_output_dir
from ..genai_config import genai_search
from ..models import Checkpoint, CausalLM, CausalSelfAttention, ModelSpec
from ..models.checkpoint import with_token_ids
from ..models.positions import LearnedAbsolute
from ..numbers import check_count
from ..quantize.onnx import (F16_NOTE, INT4_ACCURACY_LEVEL, INT4_ACCURACY_LEVELS, INT4_BLOCK, INT4_BLOCK_SIZES, convert_f16, quantize_int4,
                              quantize_int8, save_ir)
from ..tokenizer import Tokenizer, leading_ids, load_tokenizer_file
from .onnx_mapping import onnx_mapping
from .temperatures import refuse_beyond_f16
from .weights import ExportedWeights

QUANTS = ("f32", "f16", "int8", "int4")
KV_CACHES = ("float", "int8")
KV_CALIBRATION_TOKENS = 1024  # tokens of calibration text run through the model for the int8 KV scales
INT8_MAX = 127
log = logging.getLogger("edgelm")
ROTARY_TABLE_LIMIT = 131072  # rows at most (Llama 3.x's context): a config's 2,000,000,000 positions asked for 16 GB of arange


def position_limit(spec: ModelSpec) -> int | None:
    """The most positions an ONNX graph of `spec` runs: a learned table's rows, the rotary tables' limit, or None (no
    position encoding: none)."""
    if isinstance(spec.positions, LearnedAbsolute):
        return spec.max_positions
    return ROTARY_TABLE_LIMIT if spec.rotated_dims else None


def rotary_table_positions(spec: ModelSpec, context: int | None = None) -> int:
    """Rows of the cos/sin tables: `context` (export --ctx-size), else the model's own max_position_embeddings, as
    onnxruntime-genai's builder sizes its cos/sin caches, up to position_limit; RoPE positions past them are
    refused. (32,768 rows before: 2 × 2.1 MB of fp32 tables in an 8 MB int4 tiny-rope, 2 × 0.26 MB now.)"""
    return min(context or spec.max_positions, position_limit(spec)) if spec.rotated_dims else 0


def context_positions(spec: ModelSpec, context: int | None = None) -> int:
    """The positions the graph runs (genai_config's context_length and max_length): `context`, else the rotary
    tables', or the model's."""
    return context or rotary_table_positions(spec) or spec.max_positions


def refuse_context(spec: ModelSpec, context: int, where: Path) -> None:
    """export --ctx-size: within the rotary tables' limit and a learned position table; 2 or more (a prompt and a reply)."""
    check_count("context", context, 2)
    if (table := position_limit(spec)) is not None and context > table:
        learned = isinstance(spec.positions, LearnedAbsolute)
        raise UserError(f"--ctx-size {context:,} is past the {table:,} positions " + ("this model has learned" if learned else
                        "of the rotary tables an ONNX export holds at most"), where, f"give --ctx-size {table:,} or less")


def kv_cache_bytes(spec: ModelSpec, positions: int, itemsize: int) -> int:
    """The KV buffers onnxruntime-genai allocates for `positions` (past_present_share_buffer: max_length of them)."""
    return 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * positions * itemsize


# the graph's input and output names, in onnxruntime-genai's keys (genai_config.json declares them)
GRAPH_INPUTS = {"input_ids": "input_ids", "attention_mask": "attention_mask",
                "past_key_names": "past_key_values.%d.key", "past_value_names": "past_key_values.%d.value"}
GRAPH_OUTPUTS = {"logits": "logits", "present_key_names": "present.%d.key", "present_value_names": "present.%d.value"}


def io_names(num_layers: int) -> tuple[list[str], list[str]]:
    inputs = [GRAPH_INPUTS["input_ids"], GRAPH_INPUTS["attention_mask"]]
    inputs += [GRAPH_INPUTS[f"past_{side}_names"] % i for i in range(num_layers) for side in ("key", "value")]
    outputs = [GRAPH_OUTPUTS["logits"]]
    outputs += [GRAPH_OUTPUTS[f"present_{side}_names"] % i for i in range(num_layers) for side in ("key", "value")]
    return inputs, outputs


def kv_cache_scales(model: CausalLM, ids: torch.Tensor, window: int) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per-channel int8 scales (largest |value| / 127) of every attention's keys and values over `ids`
    run in windows of `window` tokens, shaped as GroupQueryAttention's PER_CHANNEL k_scale / v_scale
    [kv_heads · head_dim], by the attention module's name. Keys are seen before rotary: the op turns
    each pair of channels (i, i + r/2) by a position-dependent angle, so what bounds both channels at
    every position is the pair's norm."""
    spec = model.spec
    largest: dict[CausalSelfAttention, list[torch.Tensor]] = {}

    def record(module, args):
        k, v = (t.unflatten(-1, (spec.num_kv_heads, spec.head_dim)) for t in args[1:3])  # [batch, seq, kv_heads, head_dim]
        k = k.abs()
        if spec.rotated_dims:
            half = spec.rotated_dims // 2
            pair = torch.hypot(k[..., :half], k[..., half:spec.rotated_dims])
            k = torch.cat((pair, pair, k[..., spec.rotated_dims:]), dim=-1)
        found = [k.amax(dim=(0, 1)), v.abs().amax(dim=(0, 1))]  # [kv_heads, head_dim]
        if module in largest:
            found = [torch.maximum(a, b) for a, b in zip(largest[module], found)]
        largest[module] = found

    attentions = {name: m for name, m in model.named_modules() if isinstance(m, CausalSelfAttention)}
    hooks = [m.register_forward_pre_hook(record) for m in attentions.values()]
    try:
        with torch.no_grad():
            for start in range(0, ids.numel(), window):
                model(ids[None, start:start + window])
    finally:
        for hook in hooks:
            hook.remove()
    # a channel that never moved still needs a positive scale
    return {name: tuple((t.flatten() / INT8_MAX).clamp_min(1e-8) for t in largest[m]) for name, m in attentions.items()}


class GroupQueryAttention(nn.Module):
    """Stands in for CausalSelfAttention in the exported graph: one com.microsoft GroupQueryAttention
    node over the shared KV buffer (same inputs and outputs as CausalSelfAttention, but `past` is the
    whole buffer and `positions` is unused: the op derives positions from the mask). With `kv_scales`,
    the buffer holds int8 and the op quantizes what it writes and dequantizes what it reads."""

    def __init__(self, spec: ModelSpec, rotary_tables: tuple[torch.Tensor, torch.Tensor] | None,
                 kv_scales: tuple[torch.Tensor, torch.Tensor] | None = None):
        super().__init__()
        self.spec = spec
        self.rotary_tables = rotary_tables  # shared by every layer: one cos and one sin initializer in the graph
        self.register_buffer("k_scale", kv_scales[0] if kv_scales else None)
        self.register_buffer("v_scale", kv_scales[1] if kv_scales else None)

    def forward(self, q, k, v, positions, past, attention_mask):
        spec = self.spec
        seqlens_k = (attention_mask.sum(1) - 1).to(torch.int32)  # [batch]: index of each row's last token
        total = torch.tensor(attention_mask.shape[1], dtype=torch.int32)
        inputs = [q, k, v, past[0], past[1], seqlens_k, total, *(self.rotary_tables or (None, None))]
        attributes = {"num_heads": spec.num_heads, "kv_num_heads": spec.num_kv_heads, "scale": 1 / math.sqrt(spec.head_dim),
                      "do_rotary": int(spec.rotated_dims > 0), "rotary_interleaved": 0}
        if self.k_scale is not None:
            inputs += [None, None, None, self.k_scale, self.v_scale]  # position_ids, attention_bias, head_sink unused
            attributes |= {"kv_cache_bit_width": 8, "k_quant_type": "PER_CHANNEL", "v_quant_type": "PER_CHANNEL"}
        else:
            while inputs[-1] is None:
                inputs.pop()
        out, key_buffer, value_buffer = torch.onnx.ops.symbolic_multi_out(
            "com.microsoft::GroupQueryAttention", inputs, attributes,
            dtypes=[q.dtype, past[0].dtype, past[1].dtype], shapes=[q.shape, past[0].shape, past[1].shape], version=1,
        )
        return out, (key_buffer, value_buffer)


# onnxruntime's GroupQueryAttention takes cos/sin tables of width (rotated dims / 2) that is a multiple of 8
# (its check: "cos_cache dimension 1 must be <= head_size / 2 and a multiple of 8")
ROTARY_TABLE_MULTIPLE = 8


def refuse_rotary_group_query_attention_cannot_run(checkpoint: Checkpoint) -> None:
    """Before any work: a partial rotary too narrow for onnxruntime's kernel (an NGen4 with 64-wide heads and
    rope_pct 0.125 rotates 8 dims) failed only when the finished folder was run, after the whole export."""
    rotated = checkpoint.spec.rotated_dims
    if rotated and (rotated // 2) % ROTARY_TABLE_MULTIPLE:
        raise UserError(f"the model rotates {rotated} dims of each head; onnxruntime's GroupQueryAttention needs a multiple of "
                        f"{2 * ROTARY_TABLE_MULTIPLE}", checkpoint.path, "export it to GGUF, which llama.cpp runs at any rotary width")


def with_group_query_attention(model: CausalLM, kv_scales: dict | None = None, context: int | None = None) -> CausalLM:
    """The model with every CausalSelfAttention replaced by a GroupQueryAttention node, which applies
    no head temperatures (the weights it is given have them folded in); `kv_scales` from
    kv_cache_scales make the KV buffers int8; `context` sizes the rotary tables (rotary_table_positions)."""
    spec = model.spec
    tables = None
    if spec.rotated_dims:
        tables = spec.positions.tables(rotary_table_positions(spec, context))  # [positions, rotated_dims / 2]
    for name, child in list(model.named_modules()):
        if isinstance(child, CausalSelfAttention):
            owner, _, attribute = name.rpartition(".")
            setattr(model.get_submodule(owner), attribute, GroupQueryAttention(spec, tables, kv_scales[name] if kv_scales else None))
    return model


class DecoderWithPast(nn.Module):
    """The model with the flat ONNX signature."""

    def __init__(self, model: CausalLM):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask, *flat):
        buffers = [(flat[2 * i], flat[2 * i + 1]) for i in range(len(flat) // 2)]
        if isinstance(self.model.spec.positions, LearnedAbsolute):  # the family's embed reads its table at them
            # each new token's position is the count of attended tokens before it, as GroupQueryAttention's seqlens_k
            positions = (attention_mask.cumsum(-1)[:, -input_ids.shape[1]:] - 1).clamp(min=0)
        else:
            positions = torch.zeros_like(input_ids)  # unused: GroupQueryAttention counts positions itself
        logits, present = self.model(input_ids, buffers, attention_mask, positions)
        return (logits, *[t for kv in present for t in kv])


def _example_inputs(spec: ModelSpec, cache_dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Batch 2, 3 new tokens after 5, buffers of 16: no dimension of size 0 or 1, which the exporter
    would specialise, and one buffer tensor per input (the exporter merges inputs that are one object)."""
    batch, seq, past, capacity = 2, 3, 5, 16
    buffers = [torch.zeros(batch, spec.num_kv_heads, capacity, spec.head_dim, dtype=cache_dtype) for _ in range(2 * spec.num_layers)]
    return (torch.randint(0, spec.vocab_size, (batch, seq)), torch.ones(batch, past + seq, dtype=torch.long), *buffers)


WRAPPER_PREFIX = "model."  # DecoderWithPast's attribute: graph weight names are it + the module's state dict names


def _traced_graph(checkpoint: Checkpoint, kv_scales: dict | None, context: int | None) -> ir.Model:
    """The decoder graph, traced over fake weights (shapes without data: nothing is read or
    allocated, whatever the model's size); its weight initializers are filled by _fill_weights."""
    spec = checkpoint.spec
    with FakeTensorMode(allow_non_fake_inputs=True):
        model = checkpoint.family.build(spec).eval()
    wrapper = DecoderWithPast(with_group_query_attention(model, kv_scales, context)).eval()
    inputs, outputs = io_names(spec.num_layers)
    batch, seq, capacity = torch.export.Dim("batch"), torch.export.Dim("sequence"), torch.export.Dim("capacity")
    total = torch.export.Dim.DYNAMIC  # = past + sequence
    dynamic = ({0: batch, 1: seq}, {0: batch, 1: total}, tuple({0: batch, 2: capacity} for _ in range(2 * spec.num_layers)))
    with torch.no_grad():
        program = torch.onnx.export(
            wrapper, _example_inputs(spec, torch.int8 if kv_scales else torch.float32), dynamo=True, input_names=inputs, output_names=outputs,
            dynamic_shapes=dynamic, optimize=False, verbose=False,
        )
    return program.model


def _lazy_weight(weights: ExportedWeights, name: str, perm: list[int] | None, to_f16: bool) -> ir.LazyTensor:
    """The checkpoint tensor `name` as export/weights.py gives it, permuted by `perm`, read when
    the graph is written and let go after (ir.save writes one tensor at a time)."""
    shape = weights.shapes[name]
    if perm:
        shape = tuple(shape[p] for p in perm)

    def load() -> ir.Tensor:
        tensor = weights.get(name)
        if to_f16:
            refuse_beyond_f16(name, float(tensor.abs().max()), "f16")
        return ir.Tensor((tensor.permute(perm) if perm else tensor).contiguous().numpy())

    return ir.LazyTensor(load, dtype=ir.DataType.FLOAT, shape=ir.Shape(shape))


def _fill_weights(model: ir.Model, weights: ExportedWeights, to_f16: bool) -> None:
    """Give each fake weight of the traced graph its checkpoint tensor, lazily. A Linear's weight
    enters the graph as Transpose(W) → MatMul: that Transpose is folded here into a transposed
    initializer (lazy too), so the MatMul's weight is a constant the int4 quantizer finds, and no
    runtime transposes vocab × hidden per call for a tied LM head."""
    graph = model.graph
    filled: dict[str, str] = {}  # initializer name → module name
    for value in graph.initializers.values():
        if isinstance(getattr(value.const_value, "raw", None), FakeTensor):
            name = value.name.removeprefix(WRAPPER_PREFIX)
            if name not in weights.shapes:
                raise ValueError(f"the traced graph has a weight {value.name} that is no tensor of the checkpoint")
            value.const_value = _lazy_weight(weights, name, None, to_f16)
            filled[value.name] = name
    for node in list(graph):
        source = node.inputs[0] if node.inputs else None
        if node.op_type == "Transpose" and source is not None and source.name in filled and source.is_initializer():
            perm = list(node.attributes["perm"].as_ints())
            folded = ir.Value(name=f"{source.name}.transposed", type=source.type,
                              const_value=_lazy_weight(weights, filled[source.name], perm, to_f16))
            folded.shape = folded.const_value.shape
            graph.register_initializer(folded)
            node.outputs[0].replace_all_uses_with(folded)
            graph.remove(node, safe=True)
    for name in [n for n, v in graph.initializers.items() if not v.uses() and not v.is_graph_output()]:
        graph.initializers.pop(name)


def write_hf_configs(checkpoint: Checkpoint, folder: Path) -> None:
    """config.json, and model_input_names in tokenizer_config.json (transformers' generic fast
    tokenizer otherwise adds token_type_ids, which generate() refuses), so that Optimum's
    ORTModelForCausalLM and `generate(**tokenizer(text, return_tensors="pt"))` work on the folder."""
    tokenizer = checkpoint.tokenizer()
    config = with_token_ids(onnx_mapping(checkpoint.family).folder_config(checkpoint.spec, checkpoint.config), tokenizer)
    (folder / HF_CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    tokenizer_json_from_sentencepiece(folder)
    path = folder / "tokenizer_config.json"
    tokenizer_config = read_json_object(path) if path.is_file() else {}  # the copy in the output folder
    tokenizer_config.setdefault("model_input_names", [GRAPH_INPUTS["input_ids"], GRAPH_INPUTS["attention_mask"]])
    if tokenizer.add_bos:  # stated, where the tokenizer.json's post-processor alone said it: the web page reads this key
        tokenizer_config.setdefault("add_bos_token", True)
    if (folder / CHAT_TEMPLATE_FILE).is_file():  # transformers reads the file, onnxruntime-genai the key: both the template edgelm uses
        tokenizer_config["chat_template"] = tokenizer.chat_template
    path.write_text(json.dumps(tokenizer_config, indent=2) + "\n")


def tokenizer_json_from_sentencepiece(folder: Path) -> None:
    """onnxruntime-genai's tokenizer reads tokenizer.json only. A SentencePiece-only model (as edgelm's
    llama presets are) gets one made by transformers' slow→fast conversion, as the hub's Llama
    repositories carry both; it is kept only if it encodes a built-in text to the same ids."""
    if (folder / "tokenizer.json").exists() or not (folder / "tokenizer.model").exists():
        return
    from transformers import AutoTokenizer

    from ..models.position_probe import PROBE_TEXT

    AutoTokenizer.from_pretrained(folder).backend_tokenizer.save(str(folder / "tokenizer.json"))
    text = PROBE_TEXT.read_text(encoding="utf-8")
    converted, original = (load_tokenizer_file(folder / name, {}) for name in ("tokenizer.json", "tokenizer.model"))
    if converted.encode_text(text) != original.encode_text(text):
        (folder / "tokenizer.json").unlink()
        log.warning("tokenizer.model did not convert to an identical tokenizer.json: onnxruntime-genai's "
                    "tokenizer will not load this folder (edgelm's runtime does)")


def genai_config(checkpoint: Checkpoint, tokenizer: Tokenizer, context_length: int) -> dict:
    """onnxruntime-genai's description of a decoder over one shared KV buffer per layer."""
    spec = checkpoint.spec
    stated = checkpoint.config.get("eos_token_id")  # only where the tokenizer names none, and only an id it has
    eos = tokenizer.eos_id if tokenizer.eos_id is not None else (
        stated if type(stated) is int and 0 <= stated < spec.vocab_size else 0)
    bos = tokenizer.declared_bos_id if tokenizer.declared_bos_id is not None else eos
    ends = tokenizer.end_id_list() if tokenizer.eos_id is not None else [eos]  # genai stops at any of a list
    return {
        "model": {
            "bos_token_id": bos,
            "context_length": context_length,
            "decoder": {
                "session_options": {"log_id": "onnxruntime-genai", "provider_options": []},
                "filename": ONNX_MODEL_FILE,
                "head_size": spec.head_dim,
                "hidden_size": spec.hidden_size,
                "inputs": GRAPH_INPUTS,
                "outputs": GRAPH_OUTPUTS,
                "num_attention_heads": spec.num_heads,
                "num_hidden_layers": spec.num_layers,
                "num_key_value_heads": spec.num_kv_heads,
            },
            "eos_token_id": ends if len(ends) > 1 else eos,
            "pad_token_id": eos,
            "type": onnx_mapping(checkpoint.family).genai_type,
            "vocab_size": spec.vocab_size,
        },
        "search": {
            "do_sample": False, "max_length": context_length, "min_length": 0, "num_beams": 1,
            "num_return_sequences": 1, "past_present_share_buffer": True, "repetition_penalty": 1.0,
            "temperature": 1.0, "top_k": 1, "top_p": 1.0,
            **({"do_sample": True, **genai_search(recommended)} if (recommended := checkpoint.recommended_sampling()) else {}),
        },
    }


def check_quant_options(quant: str, int4_embedding: bool = False, int8_lm_head: bool = False, kv_cache: str = "float",
                        int4_block_size: int = INT4_BLOCK, int4_accuracy_level: int = INT4_ACCURACY_LEVEL) -> None:
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r} for ONNX", None, f"choose one of {', '.join(QUANTS)}"
                        + (" (llama.cpp's type names are for --format gguf)" if quant.lower() not in QUANTS else ""))
    if (int4_embedding or int8_lm_head or int4_block_size != INT4_BLOCK or int4_accuracy_level != INT4_ACCURACY_LEVEL) and quant != "int4":
        raise UserError("--int4-embedding, --int8-lm-head, --int4-block-size and --int4-accuracy-level refine --quant int4", None,
                        "add --quant int4 or drop them")
    if int4_block_size not in INT4_BLOCK_SIZES:
        raise UserError(f"--int4-block-size {int4_block_size} is not one MatMulNBits takes", None,
                        f"choose one of {', '.join(map(str, INT4_BLOCK_SIZES))}")
    if int4_accuracy_level not in INT4_ACCURACY_LEVELS:
        raise UserError(f"--int4-accuracy-level {int4_accuracy_level} is not one MatMulNBits takes", None,
                        "choose 0 (unset), 1 (fp32), 2 (fp16), 3 (bf16) or 4 (int8)")
    if kv_cache not in KV_CACHES:
        raise UserError(f"unknown --kv-cache {kv_cache!r}", None, f"choose one of {', '.join(KV_CACHES)}")
    if kv_cache == "int8" and quant == "f16":
        # the op's scales stay fp32 while the f16 conversion turns every float initializer to fp16
        raise UserError("--kv-cache int8 goes with --quant f32, int8 or int4", None, "drop --kv-cache or choose another --quant")


def calibration_ids(tokenizer: Tokenizer, text_file: Path) -> torch.Tensor:
    """The first KV_CALIBRATION_TOKENS tokens of `text_file`."""
    ids = leading_ids(tokenizer, user_file(text_file, "--calibration-text", None, "text file"), KV_CALIBRATION_TOKENS, "the calibration text")
    if len(ids) < 64:
        raise UserError(f"the calibration text has {len(ids)} tokens", text_file, "give a text of at least 64 tokens (1024 are used)")
    return torch.tensor(ids)


def activation_folds(checkpoint: Checkpoint, texts: Sequence[Path]) -> tuple[dict, str]:
    """AWQ scales (quantize/awq.py) from one calibration pass over `texts`, and a note for the user."""
    from ..quantize.awq import ALPHA, norm_folds
    from ..quantize.calibration import calibration_chunks, collect

    model = checkpoint.load_model()
    imatrix = collect(model, calibration_chunks(checkpoint.tokenizer(), texts), [p.name for p in texts])
    # a norm whose gain is offset + weight (Gemma's 1 + w) cannot take 1/s multiplied into its weight: left unscaled
    norms = {name: [f"{name}.{p}" for p, _ in m.named_parameters(recurse=False)] for name, m in model.named_modules()
             if all(p.dim() == 1 for p in m.parameters(recurse=False)) and not getattr(m, "offset", 0)}
    tied = {n for pair in checkpoint.family.tied_tensors(checkpoint.spec).items() for n in pair}
    folds = norm_folds(imatrix, norms, tied)
    scaled = sum(1 for _, (axis, _) in folds.items() if axis == 1)
    return folds, (f"int4: activation-aware scales (AWQ, α {ALPHA}) on the {scaled} weights that read a norm, folded into it; "
                   f"from {imatrix.chunk_count} chunks × {imatrix.chunk_size} tokens of " + ", ".join(p.name for p in texts))


def _eight_bit_choice(checkpoint: Checkpoint, model: ir.Model, texts: Sequence[Path], budget: int, other_bytes: int,
                      int4_embedding: bool, block: int) -> tuple[set[str], list[str]]:
    """The MatMul weights (initializer names) to keep at 8 bits within `budget` bytes for the folder
    (quantize/mixed.py): each weight's KLD measured with it alone through MatMulNBits int4, on `texts`
    (the built-in calibration text when none); `other_bytes`: the folder's files besides model.onnx."""
    from ..quantize import mixed
    from ..quantize.calibration import DEFAULT_TEXTS

    texts = texts or DEFAULT_TEXTS
    sizes = mixed.matmul_nbits_sizes(block)
    graph = model.graph
    plan = {}  # MatMul weight initializer → the checkpoint tensor it is made from
    for node in graph:
        weight = next((v for v in node.inputs if v is not None and v.is_initializer()), None)
        if node.op_type == "MatMul" and weight is not None and weight.shape is not None and len(weight.shape) == 2:
            plan[weight.name] = weight.name.removeprefix(WRAPPER_PREFIX).removesuffix(".transposed")
    # model.onnx besides its weights: the nodes the quantizer keeps, as serialized now; for each MatMul it
    # replaces, room for its MatMulNBits node and scales; the values' types; the certificate; edgelm.json
    structure = sum(ir.serde.serialize_node(node).ByteSize() for node in graph
                    if not (node.op_type == "MatMul" and any(v is not None and v.name in plan for v in node.inputs)))
    structure += sum(ir.serde.serialize_value(v).ByteSize() for v in (*graph.inputs, *graph.outputs))
    structure += sum(ir.serde.serialize_value(v).ByteSize() for node in graph for v in node.outputs)  # value_info
    fixed = other_bytes + structure + mixed.ONNX_PER_MATMUL * len(plan) + mixed.ONNX_MANIFEST_RESERVE + mixed.CERTIFICATE_RESERVE
    # the rest: norms, tables, the embedding (int4 with --int4-embedding: the 2-D tables a Gather reads, as
    # quantize_int4 picks them; RoPE's cos/sin tables are 2-D too but stay fp32 — counted at int4 they hid
    # 3.7 MB of tiny-rope's folder and every MatMul went to 8 bits, over the budget)
    gathered = {v.name for node in graph if node.op_type == "Gather" for v in node.inputs
                if v is not None and v.is_initializer() and v.shape is not None and len(v.shape) == 2}
    for name, value in graph.initializers.items():
        if name not in plan and value.const_value is not None:
            shape = value.const_value.shape
            fixed += sizes(shape[1], shape[0])["int4"] if int4_embedding and name in gathered else value.const_value.nbytes
    torch_model = checkpoint.load_model()
    found = mixed.units(torch_model, plan, lambda name, out, inputs: sizes(out, inputs))
    choice, how = mixed.choose(torch_model, found, budget, fixed, "int4", checkpoint.tokenizer(), texts, mixed.matmul_nbits_trip(block), "int4")
    eight = {name for name, bits in mixed.overrides(found, choice).items() if bits == "int8"}
    note = f"mixed precision within {budget} bytes: {len(eight)} of {len(plan)} MatMuls at 8 bits ({how})"
    return eight, [note]


def _write_graph(checkpoint: Checkpoint, path: Path, kv_calibration_text: Path | None, quant: str,
                 int4_embedding: bool = False, int8_lm_head: bool = False, calibration: Sequence[Path] = (),
                 int4_block_size: int = INT4_BLOCK, int4_accuracy_level: int = INT4_ACCURACY_LEVEL,
                 budget: tuple[int, int] | None = None, context: int | None = None) -> list[str]:
    """Trace the graph over fake weights, calibrate an int8 KV cache on `kv_calibration_text` with the
    torch model (None: a float cache), and write the graph with each weight streamed from the
    checkpoint (temperatures folded, checked finite and, for f16, within float16's range); int4, int8
    and f16 convert each weight on its way (quantize/onnx.py); `budget` (bytes for the folder, bytes of
    its other files): int4 with MatMuls kept at 8 bits by measured sensitivity; `context`: the rotary tables' rows
    (export --ctx-size). Returns notes for the user."""
    # the tracer's notes on dynamic axes, missing torchvision ops and pytree deprecations: none is the user's to act on
    warnings.filterwarnings("ignore", module="torch.onnx")
    warnings.filterwarnings("ignore", message=".*LeafSpec")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    notes, kv_scales = [], None
    if kv_calibration_text is not None:
        ids = calibration_ids(checkpoint.tokenizer(), kv_calibration_text)
        kv_scales = kv_cache_scales(checkpoint.load_model(), ids, min(checkpoint.spec.max_positions, 512))
        notes.append(f"KV cache: int8, per-channel scales from the largest |key| and |value| over {ids.numel()} "
                     f"tokens of {kv_calibration_text.name}; larger values are clipped")
    folds = None
    if calibration and quant == "int4":
        folds, note = activation_folds(checkpoint, calibration)
        notes.append(note)
    weights = ExportedWeights(checkpoint, folds=folds)  # refuses q/k/v past f16 before the tracer's seconds
    model = _traced_graph(checkpoint, kv_scales, context)
    _fill_weights(model, weights, quant == "f16")
    onnxscript.optimizer.optimize(model)  # folds the small constants only: the weights stay lazy
    eight_bit: set[str] = set()
    if budget is not None:
        eight_bit, chosen = _eight_bit_choice(checkpoint, model, calibration, *budget, int4_embedding, int4_block_size)
        notes += chosen
    try:
        if quant == "int4":
            notes += quantize_int4(model, int4_embedding, int8_lm_head, int4_block_size, int4_accuracy_level, eight_bit)
        elif quant == "int8":
            notes += quantize_int8(model)
        elif quant == "f16":
            model = convert_f16(model)
            notes.append(F16_NOTE)
        save_ir(model, path)
    except Exception as exc:  # onnx_ir wraps what a lazy weight raised (a refused tensor) in its SerdeError
        cause = exc
        while cause is not None and not isinstance(cause, UserError):
            cause = cause.__cause__
        if cause is None:
            raise
        raise cause from None
    return notes


GENAI_KV_NOTE_BYTES = 1 << 30  # a KV cache for genai_config's max_length past this gets a note: a phone has 4-8 GB in all


def _context_notes(spec: ModelSpec, positions: int, context: int | None, kv_cache: str, quant: str) -> list[str]:
    """What the context the folder states means: positions past the model's or short of them, and, where no --ctx-size
    was given, the KV cache onnxruntime-genai allocates for it (Llama 3.2 1B's 131,072 positions: 8.6 GB of float32)."""
    trained, notes = spec.max_positions, []
    if positions > trained:
        notes.append(f"a context of {positions:,} tokens is past the {trained:,} positions the model declares: it sees positions "
                     "it never learned (llama.cpp warns alike)")
    elif positions < trained:
        cut = "rotary tables and " if spec.rotated_dims else ""
        notes.append(f"the {cut}genai_config's context_length cover the first {positions:,} of the model's {trained:,} positions"
                     + (" (--ctx-size)" if context else "") + "; a longer context is refused")
    itemsize = 1 if kv_cache == "int8" else 2 if quant == "f16" else 4
    if context is None and (size := kv_cache_bytes(spec, positions, itemsize)) > GENAI_KV_NOTE_BYTES:
        notes.append(f"onnxruntime-genai allocates the KV cache for genai_config's max_length, {positions:,} positions: "
                     f"{size / 1e9:.1f} GB, where an app sets no max_length; --ctx-size 4096 states a smaller context "
                     f"({kv_cache_bytes(spec, 4096, itemsize) / 1e6:,.0f} MB)")
    return notes


@dataclass
class ONNXReport:
    path: Path
    quant: str
    notes: list[str]


def export_onnx(
    checkpoint: Checkpoint, out: Path, quant: str = "f32", force: bool = False, on_step: Callable[[str], None] | None = None,
    int4_embedding: bool = False, int8_lm_head: bool = False, kv_cache: str = "float", calibration_text: Path | None = None,
    calibration: Sequence[Path] = (), int4_block_size: int = INT4_BLOCK, int4_accuracy_level: int = INT4_ACCURACY_LEVEL,
    certificate: bool = True, max_size: int | None = None, context: int | None = None,
) -> ONNXReport:
    """`int4_embedding`, `int8_lm_head`, `int4_block_size`, `int4_accuracy_level`: int4 options (embedding
    Gather at int4 too; LM head at 8 bits; weights per scale; MatMulNBits' compute type).
    `kv_cache="int8"`: int8 KV buffers, scales calibrated on `calibration_text`. `certificate`: the
    parity certificate, computed on the finished folder by onnxruntime (certificate.py). `max_size`: bytes
    the folder may take; int4's MatMuls are then kept at 8 bits by measured sensitivity (quantize/mixed.py). `context`:
    the positions the folder runs (genai_config's context_length and max_length, the rotary tables' rows; default the
    model's): onnxruntime-genai allocates its KV cache for max_length where an app sets none."""
    if max_size is not None and (quant != "int4" or int8_lm_head):
        raise UserError("--max-size chooses which MatMuls of --quant int4 stay at 8 bits (the LM head too)", None,
                        "use it with --quant int4, without --int8-lm-head")
    check_quant_options(quant, int4_embedding, int8_lm_head, kv_cache, int4_block_size, int4_accuracy_level)
    refuse_rotary_group_query_attention_cannot_run(checkpoint)
    if kv_cache == "int8" and calibration_text is None:
        raise UserError("--kv-cache int8 needs a calibration text", None, "add --calibration-text FILE")
    step = on_step or (lambda _: None)
    tokenizer = checkpoint.tokenizer()
    if context is not None:
        refuse_context(checkpoint.spec, context, checkpoint.path)
        if certificate and context < (probe := probe_positions(tokenizer)):  # refused before the export, not after it
            raise UserError(f"the parity certificate's probe runs {probe} positions, more than --ctx-size {context}", checkpoint.path,
                            f"give --ctx-size {probe} or more, or --no-certificate")
    with atomic_output_dir(out, force) as tmp:
        step("writing configs")  # first: a --max-size budget counts them
        for name in TOKENIZER_FILES:
            if (source := find_member(checkpoint.path, name)) is not None:
                shutil.copyfile(source, tmp / name)
        write_hf_configs(checkpoint, tmp)
        positions = context_positions(checkpoint.spec, context)
        (tmp / GENAI_CONFIG).write_text(json.dumps(genai_config(checkpoint, tokenizer, positions), indent=2) + "\n")
        budget = None if max_size is None else (max_size, sum(p.stat().st_size for p in tmp.iterdir()))
        # the slow step under its own label (stranger 45: piped progress showed "writing configs (5 s)" while it traced)
        step("tracing the graph" + (" and calibrating the int8 KV cache" if kv_cache == "int8" else "")
             + (f", writing {quant} weights" if quant != "f32" else ""))
        notes = _write_graph(checkpoint, tmp / ONNX_MODEL_FILE, calibration_text if kv_cache == "int8" else None, quant,
                             int4_embedding, int8_lm_head, calibration, int4_block_size, int4_accuracy_level, budget, context)
        if (min_p := checkpoint.recommended_sampling().get("min_p")) is not None:  # said, not dropped (stranger round 12)
            notes.append(f"the model recommends min_p {min_p:g}; onnxruntime-genai has no min_p, so genai_config.json's search "
                         "and chat on this folder sample without it (its GGUF export keeps it)")
        notes += _context_notes(checkpoint.spec, positions, context, kv_cache, quant)
        manifest = {
            "family": checkpoint.spec.family,
            "position_encoding": checkpoint.spec.position_encoding,
            "head_temperatures": {"layers": checkpoint.head_temperatures().tolist(), "baked_into_weights": True},
            "quantization": quant,
            "int4_options": {"embedding": int4_embedding, "lm_head_int8": int8_lm_head, "block_size": int4_block_size,
                             "accuracy_level": int4_accuracy_level, "max_size": max_size} if quant == "int4" else None,
            "kv_cache": kv_cache,
            "rotary_table_positions": rotary_table_positions(checkpoint.spec, context),
            "source_checkpoint_sha256": reference_sha256(checkpoint),
            "config": checkpoint.config,
            "edgelm_version": __version__,
        }
        (tmp / ONNX_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if certificate:
            step("computing the parity certificate")
            notes.append(certify_onnx(checkpoint, tmp))
        size = sum(p.stat().st_size for p in tmp.iterdir())
        if max_size is not None and size > max_size:  # the allocation's estimate of the other bytes fell short
            raise UserError(f"the mixed-precision folder came out at {size} bytes, over --max-size {max_size}", out,
                            f"give --max-size {size} or more")
        checkpoint.check_unchanged()
    return ONNXReport(out, quant, notes)
