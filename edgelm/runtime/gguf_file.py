"""Reading .gguf files edgelm wrote: a validated header first (llama.cpp alone only says "Failed to
load model"), then the torch module rebuilt from the tensors — edgelm's native executor for archs
stock llama.cpp cannot run (tokenformer), usable for any edgelm GGUF."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from gguf import GGUFReader, quants

from ..errors import UserError
from ..export.gguf_vocab import TOKENIZER_FILE_KEY
from ..models import FAMILIES, CausalLM, Family, ModelSpec
from ..models.checkpoint import empty_model
from ..models.registry import expand_names
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

    def edgelm_model(self) -> tuple[Family, ModelSpec]:
        """Family and spec from the edgelm.* keys; a GGUF edgelm did not write cannot be rebuilt."""
        family_name, config = self.field("edgelm.family"), self.field("edgelm.config")
        if family_name not in FAMILIES or config is None:
            raise UserError(
                f"this GGUF (arch {self.arch!r}) was not written by edgelm, and edgelm's own executor runs only those",
                self.path,
                "run it with llama.cpp, or export the model with `edgelm export`",
            )
        family = FAMILIES[family_name]
        spec = family.spec_from_config(json.loads(config))
        return family, replace(spec, position_encoding=self.field("edgelm.position_encoding"))


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


def gguf_tokenizer(gguf: GGUFFile) -> Tokenizer:
    """The source tokenizer edgelm stored in the file (edgelm.tokenizer_file.*)."""
    keys = [k for k in gguf.reader.fields if k.startswith(TOKENIZER_FILE_KEY)]
    if not keys:
        raise UserError("this GGUF carries no edgelm tokenizer files", gguf.path, "export it again with edgelm")
    with tempfile.TemporaryDirectory() as folder:
        for key in keys:
            (Path(folder) / key.removeprefix(TOKENIZER_FILE_KEY)).write_bytes(bytes(gguf.field(key)))
        return load_tokenizer(folder)
