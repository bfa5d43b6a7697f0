"""edgelm's native GGUF executor, for the archs stock llama.cpp cannot run (tokenformer): the family's
torch module rebuilt from a file edgelm wrote, its tensors dequantized by gguf-py."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import numpy as np
import torch
from gguf import quants

from ..constants import GGUF_CONFIG, GGUF_FAMILY, GGUF_POSITION_ENCODING
from ..errors import UserError
from ..models import FAMILIES, CausalLM, Family, ModelSpec
from ..models.checkpoint import empty_model
from ..models.registry import expand_names
from ..models.util import ConfigReader
from .gguf_file import GGUFFile


def edgelm_model(gguf: GGUFFile) -> tuple[Family, ModelSpec]:
    """Family and spec from the edgelm.* keys; a GGUF edgelm did not write cannot be rebuilt."""
    family_name, config = gguf.field(GGUF_FAMILY), gguf.field(GGUF_CONFIG)
    if family_name not in FAMILIES or config is None:
        raise UserError(
            f"this GGUF (arch {gguf.arch!r}) was not written by edgelm, and edgelm's own executor runs only those",
            gguf.path,
            "run it with llama.cpp, or export the model with `edgelm export`",
        )
    family = FAMILIES[family_name]
    try:
        spec = family.spec_from_config(ConfigReader(json.loads(config)))
    except (json.JSONDecodeError, TypeError, ValueError, KeyError) as exc:  # MissingConfigKey is a KeyError
        raise UserError(f"{GGUF_CONFIG} does not describe a {family_name} model ({exc})", gguf.path,
                        "the file is damaged: re-export it") from None
    _check_architecture_keys(gguf, family, spec)
    encoding = gguf.field(GGUF_POSITION_ENCODING)
    if encoding not in family.position_encodings:
        raise UserError(f"{GGUF_POSITION_ENCODING} is {encoding!r}, not one of {', '.join(family.position_encodings)}", gguf.path,
                        "the file is damaged: re-export it")
    return family, replace(spec, position_encoding=encoding)


def _check_architecture_keys(gguf: GGUFFile, family: Family, spec: ModelSpec) -> None:
    """general.architecture and the `{arch}.*` keys (what a llama.cpp-style reader sees) must say what
    edgelm.config says: a file edited in one place and not the other is refused, not run half-trusted."""
    arch = family.gguf_arch(spec)
    if gguf.arch != arch:
        raise UserError(f"general.architecture is {gguf.arch!r}, but edgelm.family {family.name!r} is written as {arch!r}", gguf.path,
                        "the file was damaged or edited: re-export it")
    for key, expected in family.gguf_hparams(spec).items():
        found = gguf.hparam(key)
        same = (isinstance(found, (int, float)) and not isinstance(found, bool) and math.isclose(found, expected, rel_tol=1e-6)
                if not isinstance(expected, bool) else found is expected)
        if not same:
            raise UserError(f"{arch}.{key} is {found!r}, but {GGUF_CONFIG} says {expected!r}", gguf.path,
                            "the file was damaged or edited: re-export it")


def load_gguf_model(gguf: GGUFFile, device: str | torch.device = "cpu") -> CausalLM:
    """Dequantize (gguf.quants) every tensor back into the family's fp32 module. Head temperatures
    are already folded into the weights, so the module runs with λ = 1."""
    family, spec = edgelm_model(gguf)
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
