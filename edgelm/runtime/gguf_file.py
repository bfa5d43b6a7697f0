"""Reading .gguf files: a validated header first (llama.cpp alone only says "Failed to load model");
for files edgelm wrote, the torch module rebuilt from the tensors — edgelm's native executor for archs
stock llama.cpp cannot run (tokenformer)."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, GGUFValueType, quants

from ..errors import UserError
from ..constants import GGUF_CONFIG, GGUF_FAMILY, GGUF_POSITION_ENCODING, GGUF_TOKENIZER_FILE, TOKENIZER_FILES
from ..models import FAMILIES, CausalLM, Family, ModelSpec
from ..models.checkpoint import empty_model
from ..models.registry import expand_names
from ..models.util import ConfigReader
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

    def edgelm_model(self) -> tuple[Family, ModelSpec]:
        """Family and spec from the edgelm.* keys; a GGUF edgelm did not write cannot be rebuilt."""
        family_name, config = self.field(GGUF_FAMILY), self.field(GGUF_CONFIG)
        if family_name not in FAMILIES or config is None:
            raise UserError(
                f"this GGUF (arch {self.arch!r}) was not written by edgelm, and edgelm's own executor runs only those",
                self.path,
                "run it with llama.cpp, or export the model with `edgelm export`",
            )
        family = FAMILIES[family_name]
        try:
            spec = family.spec_from_config(ConfigReader(json.loads(config)))
        except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:  # MissingConfigKey is a KeyError
            raise UserError(f"{GGUF_CONFIG} does not describe a {family_name} model ({exc})", self.path,
                            "the file is damaged: re-export it") from None
        return family, replace(spec, position_encoding=self.field(GGUF_POSITION_ENCODING))


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


def load_gguf_model(gguf: GGUFFile, device: str | torch.device = "cpu") -> CausalLM:
    """Dequantize (gguf.quants) every tensor back into the family's fp32 module. Head temperatures
    are already folded into the weights, so the module runs with λ = 1."""
    family, spec = gguf.edgelm_model()
    model = empty_model(family, spec, device)
    to_checkpoint = {g: c for c, g in expand_names(family.gguf_tensor_names, spec.num_layers).items()}
    aliases = family.tied_tensors(spec)
    targets = model.state_dict(keep_vars=True)
    present = {t.name for t in gguf.reader.tensors}
    unknown = sorted(n for n in present if to_checkpoint.get(n) not in targets.keys() | aliases.keys())
    missing = sorted(g for g, c in to_checkpoint.items() if c in targets and c not in aliases and g not in present)
    wrong_shape = sorted(t.name for t in gguf.reader.tensors if t.name in to_checkpoint and to_checkpoint[t.name] in targets
                         and int(t.n_elements) != targets[to_checkpoint[t.name]].numel())
    for problem, names in (("missing", missing), ("not part of the model", unknown), ("of the wrong size", wrong_shape)):
        if names:  # the module was built empty: every tensor must be there, or it would run on uninitialised memory
            raise UserError(f"{len(names)} tensors {problem}: {', '.join(names[:5])}{' …' if len(names) > 5 else ''}",
                            gguf.path, "the file is damaged: export it again")
    with torch.no_grad():
        for tensor in gguf.reader.tensors:
            name = to_checkpoint[tensor.name]
            if name in aliases:
                continue  # written for llama.cpp; the module shares its source
            values = quants.dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
            values = torch.from_numpy(values.reshape(targets[name].shape))
            targets[name].copy_(family.gguf_transform(spec, name, values, inverse=True))
        model.set_head_temperatures(torch.ones(spec.num_layers, spec.num_heads))
    return model.eval()


def stored_tokenizer_files(gguf: GGUFFile) -> dict[str, bytes]:
    """The source tokenizer files edgelm stored in the file (edgelm.tokenizer_file.<name>), by name.
    A name is a key a stranger wrote: only the plain file names of TOKENIZER_FILES are accepted, so no
    name can lead a write outside the folder the files are unpacked into."""
    found = {}
    for key, field in gguf.reader.fields.items():
        if not key.startswith(GGUF_TOKENIZER_FILE):
            continue
        name = key.removeprefix(GGUF_TOKENIZER_FILE)
        if name not in TOKENIZER_FILES:
            raise UserError(f"metadata key {key!r} names a tokenizer file edgelm does not know (it reads {', '.join(TOKENIZER_FILES)})",
                            gguf.path, "refused: the file is damaged or was made to write elsewhere; export it again with edgelm")
        if field.types != [GGUFValueType.ARRAY, GGUFValueType.UINT8]:
            raise UserError(f"metadata key {key!r} is not an array of bytes", gguf.path, "export the model again with edgelm")
        found[name] = bytes(field.contents())
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
