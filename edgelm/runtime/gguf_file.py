"""Reading .gguf files: a validated header (llama.cpp alone only says "Failed to load model") and the
tokenizer files edgelm stores in its own. No torch here: running a GGUF in llama.cpp needs only this;
gguf_native.py rebuilds the torch module for the archs only edgelm's executor runs."""

from __future__ import annotations

import base64
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gguf import GGUFReader, GGUFValueType

from ..constants import GGUF_FAMILY, GGUF_TOKENIZER_FILE, GGUF_TOKENIZER_FILE_BASE64, TOKENIZER_FILES
from ..errors import UserError
from ..tokenizer import Tokenizer, load_tokenizer


@dataclass
class GGUFFile:
    path: Path
    reader: GGUFReader

    def field(self, key: str, default: Any = None) -> Any:
        found = self.reader.fields.get(key)
        return default if found is None else found.contents()

    @property
    def arch(self) -> str:
        return self.field("general.architecture")

    def hparam(self, key: str, default: Any = None) -> Any:
        """An architecture key, `{arch}.{key}` (llama.cpp's LLM_KV names)."""
        return self.field(f"{self.arch}.{key}", default)

    @property
    def written_by_edgelm(self) -> bool:
        return GGUF_FAMILY in self.reader.fields


def open_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path, "give the path of a .gguf file")
    try:
        reader = GGUFReader(str(path))
        for tensor in reader.tensors:  # every tensor's data must lie inside the file
            if tensor.data_offset + tensor.n_bytes > len(reader.data):
                raise ValueError(f"tensor {tensor.name} runs past the end of the file")
    except Exception as exc:  # gguf-py raises ValueError, struct errors, IndexError… on bad files
        raise UserError(f"not a valid GGUF file ({exc})", path, "the file is truncated or damaged: export it again") from None
    return GGUFFile(path, reader)


def stored_tokenizer_files(gguf: GGUFFile) -> dict[str, bytes]:
    """The source tokenizer files edgelm stored in the file (edgelm.tokenizer_file[_base64].<name>), by
    name. A name is a key a stranger wrote: only the plain file names of TOKENIZER_FILES are accepted, so
    no name can lead a write outside the folder the files are unpacked into. Files edgelm wrote before
    storing strings hold uint8 arrays; those are read too."""
    found = {}
    for key, field in gguf.reader.fields.items():
        prefix = next((p for p in (GGUF_TOKENIZER_FILE_BASE64, GGUF_TOKENIZER_FILE) if key.startswith(p)), None)
        if prefix is None:
            continue
        name = key.removeprefix(prefix)
        if name not in TOKENIZER_FILES:
            raise UserError(f"metadata key {key!r} names a tokenizer file edgelm does not know (it reads {', '.join(TOKENIZER_FILES)})",
                            gguf.path, "refused: the file is damaged or was made to write elsewhere; export it again with edgelm")
        try:
            if field.types == [GGUFValueType.STRING]:
                text = field.contents()
                found[name] = base64.b64decode(text, validate=True) if prefix == GGUF_TOKENIZER_FILE_BASE64 else text.encode("utf-8")
            elif field.types == [GGUFValueType.ARRAY, GGUFValueType.UINT8] and prefix == GGUF_TOKENIZER_FILE:
                found[name] = bytes(field.contents())
            else:
                raise ValueError("wrong type")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            raise UserError(f"metadata key {key!r} is not a text, base64 text or byte array file", gguf.path,
                            "export the model again with edgelm") from None
    return found


def gguf_tokenizer(gguf: GGUFFile) -> Tokenizer:
    """The source tokenizer edgelm stored in the file, unpacked into a private temporary folder."""
    files = stored_tokenizer_files(gguf)
    if not files:
        raise UserError("this GGUF carries no edgelm tokenizer files", gguf.path, "export it again with edgelm")
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        return load_tokenizer(folder)
