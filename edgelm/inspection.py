"""What `edgelm inspect` reports, as plain data (the CLI prints it as a table or JSON)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .models import open_checkpoint
from .tokenizer import load_tokenizer


def _temperature_summary(table) -> dict[str, Any]:
    return {
        "min": round(table.min().item(), 6),
        "max": round(table.max().item(), 6),
        "mean": round(table.mean().item(), 6),
        "all_one": bool((table == 1).all()),
    }


def describe_checkpoint(
    path: Path, *, position_encoding: str | None = None, head_temperatures: Path | None = None, allow_pickle: bool = False
) -> dict[str, Any]:
    checkpoint = open_checkpoint(path, position_encoding=position_encoding, head_temperatures=head_temperatures, allow_pickle=allow_pickle)
    spec = checkpoint.spec
    tokenizer = load_tokenizer(path)
    temperatures = checkpoint.head_temperatures()
    return {
        "family": spec.family,
        "parameters": checkpoint.parameter_count(),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "layers": spec.num_layers,
        "heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "head_dim": spec.head_dim,
        "ffn_size": spec.ffn_size,
        "max_positions": spec.max_positions,
        "tied_embeddings": spec.tie_embeddings,
        "position_encoding": spec.position_encoding,
        "position_encoding_rule": checkpoint.position_encoding_rule,
        "rotary_dims": spec.rotated_dims,
        "rope_theta": spec.rope_theta if spec.rotated_dims else None,
        "head_temperatures": _temperature_summary(temperatures),
        "head_temperature_source": checkpoint.temperature_source,
        "tokenizer": {
            "kind": tokenizer.kind,
            "vocab_size": tokenizer.vocab_size,
            "bos_id": tokenizer.bos_id,
            "eos_id": tokenizer.eos_id,
            "add_bos": tokenizer.add_bos,
            "chat_template": tokenizer.chat_template is not None,
        },
    }


def describe_gguf(path: Path) -> dict[str, Any]:
    from collections import Counter

    from .runtime.gguf_file import open_gguf

    gguf = open_gguf(path)
    family, spec = gguf.edgelm_model()
    temperatures = gguf.field("edgelm.head_temperatures")
    return {
        "family": family.name,
        "arch": gguf.arch,
        "file_type": gguf.field("general.file_type"),
        "parameters": int(sum(t.n_elements for t in gguf.reader.tensors)),
        "tensor_types": dict(Counter(t.tensor_type.name for t in gguf.reader.tensors)),
        "vocab_size": spec.vocab_size,
        "hidden_size": spec.hidden_size,
        "layers": spec.num_layers,
        "heads": spec.num_heads,
        "kv_heads": spec.num_kv_heads,
        "position_encoding": spec.position_encoding,
        "rotary_dims": spec.rotated_dims,
        "head_temperatures": {"baked_into_weights": bool(gguf.field("edgelm.head_temperatures_baked", False)),
                              "min": min(temperatures), "max": max(temperatures)},
        "tokenizer_model": gguf.field("tokenizer.ggml.model"),
        "edgelm_version": gguf.field("edgelm.version"),
    }


def describe_onnx(folder: Path) -> dict[str, Any]:
    """An ONNX folder from `edgelm export`: its manifest, genai_config's dims, and the graph's operators
    and KV cache type (the graph is read without its external weights)."""
    from collections import Counter

    import onnx

    from .errors import UserError
    from .runtime.onnx_backend import read_onnx_folder

    genai, manifest = read_onnx_folder(folder)
    decoder = genai["model"]["decoder"]
    try:
        graph = onnx.load(str(folder / decoder["filename"]), load_external_data=False).graph
    except Exception as exc:  # protobuf's DecodeError and friends for a damaged file
        raise UserError(f"{decoder['filename']} is not a readable ONNX graph ({exc.__class__.__name__})", folder,
                        "export the model again") from None
    caches = {onnx.TensorProto.DataType.Name(i.type.tensor_type.elem_type).lower()
              for i in graph.input if i.name.startswith("past_key_values")}
    temperatures = [t for layer in manifest.get("head_temperatures", {}).get("layers", []) for t in layer]
    return {
        "family": manifest.get("family"),
        "format": "onnx",
        "quantization": manifest.get("quantization"),
        "kv_cache": ", ".join(sorted(caches)),
        "operators": dict(Counter(node.op_type for node in graph.node).most_common()),
        "bytes": sum(f.stat().st_size for f in folder.iterdir() if f.is_file()),
        "vocab_size": genai["model"]["vocab_size"],
        "hidden_size": decoder["hidden_size"],
        "layers": decoder["num_hidden_layers"],
        "heads": decoder["num_attention_heads"],
        "kv_heads": decoder["num_key_value_heads"],
        "head_dim": decoder["head_size"],
        "context_length": genai["model"]["context_length"],
        "position_encoding": manifest.get("position_encoding"),
        "rotary_table_positions": manifest.get("rotary_table_positions"),
        "head_temperatures": {"baked_into_weights": manifest.get("head_temperatures", {}).get("baked_into_weights", False),
                              "min": min(temperatures, default=None), "max": max(temperatures, default=None)},
        "edgelm_version": manifest.get("edgelm_version"),
    }
