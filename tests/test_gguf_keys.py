"""GGUF architecture keys are declared once with their value types (edgelm/gguf_keys.py, edgelm/gguf_layout/): the writer
writes each with its declared type and refuses a key nobody declared, instead of guessing a type
from the Python value."""

import pytest
from gguf import GGUFReader, GGUFValueType

from edgelm.errors import UserError
from edgelm.export.gguf import export_gguf
from edgelm.export.gguf_mapping import gguf_mapping
from edgelm.gguf_keys import ARCH_KEYS
from edgelm.gguf_layout import Key
from edgelm.models import open_checkpoint


def test_written_keys_have_their_declared_types(preset_dir, tmp_path):
    checkpoint = open_checkpoint(preset_dir("tiny-nope"))  # granite: bool, float and uint32 keys
    path = export_gguf(checkpoint, tmp_path / "m.gguf", "f32", certificate=False).path
    reader = GGUFReader(path)
    arch = gguf_mapping(checkpoint.family).arch(checkpoint.spec)
    written = {name.removeprefix(arch + "."): field.types[0] for name, field in reader.fields.items() if name.startswith(arch + ".")}
    assert written and all(ARCH_KEYS[key] == value_type for key, value_type in written.items()), written
    assert GGUFValueType.BOOL in written.values() and GGUFValueType.FLOAT32 in written.values()


def test_an_undeclared_key_is_refused(preset_dir, tmp_path, monkeypatch):
    checkpoint = open_checkpoint(preset_dir("tiny-rope"))
    mapping = gguf_mapping(checkpoint.family)
    hparams = mapping.hparams
    monkeypatch.setattr(type(mapping), "hparams", lambda self, spec: hparams(spec) | {Key("made_up_width", "UINT32"): 3})
    with pytest.raises(UserError, match="'made_up_width' is not declared"):
        export_gguf(checkpoint, tmp_path / "m.gguf", "f32", certificate=False)
    assert not (tmp_path / "m.gguf").exists()


def test_a_key_declared_twice_would_have_one_type():
    """llama.cpp's keys (gguf-py's names) and an edgelm-defined arch's share one index: a name the two
    declare alike (tokenformer's context_length) is one key, with one value type."""
    from edgelm.gguf_keys import CONTEXT_LENGTH, DECLARED
    from edgelm.gguf_layout import tokenformer

    assert tokenformer.CONTEXT_LENGTH == CONTEXT_LENGTH and tokenformer.QKV_SLOTS in DECLARED
    assert {key.name for key in DECLARED} == set(ARCH_KEYS)
