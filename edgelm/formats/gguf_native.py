"""The edgelm model a GGUF edgelm wrote describes (edgelm.family, edgelm.config), rebuilt as a family and
spec for `inspect`, and checked against the arch keys a runtime executes from (the family's GGUF mapping):
a file edited in one place and not the other is refused. Imports torch, the families and their GGUF
mappings; running a GGUF needs none of this."""

from __future__ import annotations

from ..artifact_files import parse_json
from ..constants import GGUF_CONFIG, GGUF_FAMILY, GGUF_POSITION_ENCODING
from ..errors import UserError
from ..export.gguf_mapping import gguf_mapping
from ..gguf_keys import same_value
from ..models import Family, ModelSpec, families
from ..models.util import ConfigReader
from .gguf_file import GGUFFile


def edgelm_model(gguf: GGUFFile) -> tuple[Family, ModelSpec]:
    """Family and spec from the edgelm.* keys; a GGUF edgelm did not write cannot be rebuilt."""
    family_name, config = gguf.field(GGUF_FAMILY), gguf.field(GGUF_CONFIG)
    if family_name not in families() or config is None:
        raise UserError(
            f"this GGUF (arch {gguf.arch!r}) was not written by edgelm, and edgelm's own executor runs only those",
            gguf.path,
            "run it with llama.cpp, or export the model with `edgelm export`",
        )
    family = families()[family_name]
    document = parse_json(config, gguf.path, GGUF_CONFIG)
    try:
        spec = family.spec_from_config(ConfigReader(document))
    except (TypeError, ValueError, KeyError, AttributeError) as exc:  # MissingConfigKey is a KeyError
        raise UserError(f"{GGUF_CONFIG} does not describe a {family_name} model ({exc})", gguf.path,
                        "the file is damaged: re-export it") from None
    encoding = gguf.field(GGUF_POSITION_ENCODING)
    if encoding not in spec.position_encodings:
        raise UserError(f"{GGUF_POSITION_ENCODING} is {encoding!r}, not one of {', '.join(spec.position_encodings)}", gguf.path,
                        "the file is damaged: re-export it")
    spec = spec.with_position_encoding(encoding)
    _check_architecture_keys(gguf, family, spec)
    return family, spec


def _check_architecture_keys(gguf: GGUFFile, family: Family, spec: ModelSpec) -> None:
    """general.architecture and the `{arch}.*` keys (what a llama.cpp-style reader sees) must say what
    edgelm.config says: a file edited in one place and not the other is refused, not run half-trusted."""
    mapping = gguf_mapping(family)
    arch = mapping.arch(spec)
    if gguf.arch != arch:
        raise UserError(f"general.architecture is {gguf.arch!r}, but edgelm.family {family.name!r} is written as {arch!r}", gguf.path,
                        "the file was damaged or edited: re-export it")
    for key, expected in mapping.hparams(spec).items():
        found = gguf.hparam(key.name)
        if not same_value(key, found, expected):
            raise UserError(f"{arch}.{key.name} is {found!r}, but {GGUF_CONFIG} says {expected!r}", gguf.path,
                            "the file was damaged or edited: re-export it")
