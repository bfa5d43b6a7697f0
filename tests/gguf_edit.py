"""Rewriting a GGUF with gguf-py's own writer, field by field, as a stranger could: add or drop metadata
keys and tensors of a file that is otherwise valid (gguf-py's gguf_new_metadata.py does the same)."""

from __future__ import annotations

from pathlib import Path

from gguf import GGUFReader, GGUFValueType, GGUFWriter


def rewrite_gguf(source: Path, target: Path, add: dict[str, tuple] | None = None, drop_keys=(), drop_tensors=(),
                 arch: str | None = None, replace_tensors: dict | None = None) -> Path:
    """`add`: key → (value, GGUFValueType[, sub type for arrays]); `arch`: another general.architecture;
    `replace_tensors`: name → numpy array written in its place (its dtype becomes the GGML type)."""
    reader = GGUFReader(str(source))
    arch = arch or reader.fields["general.architecture"].contents()
    writer = GGUFWriter(str(target), arch)
    if "general.architecture" in (add or {}):  # the writer sets it itself: `add` may retype it
        del writer.kv_data[0]["general.architecture"]
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key == "general.architecture" or key in drop_keys:
            continue
        sub_type = field.types[1] if field.types[0] == GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), field.types[0], sub_type)
    for key, (value, vtype, *sub) in (add or {}).items():
        writer.add_key_value(key, value, vtype, *sub)
    for tensor in reader.tensors:
        if tensor.name in (replace_tensors or {}):
            writer.add_tensor(tensor.name, replace_tensors[tensor.name])
        elif tensor.name not in drop_tensors:
            # a quantized tensor's data reads as rows of bytes, from which the writer takes its shape back
            writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return target
