"""Files a stranger wrote, generated: whatever a config.json, genai_config.json, bundle manifest or
native GGUF's metadata holds, loading it either works or ends in the one-line UserError, never another
exception.

Each property starts from a valid file edgelm reads and replaces one key (or a nested key) with an
arbitrary value, the way a damaged or hostile file differs from a good one."""

import json
import os
import shutil

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from edgelm.errors import UserError

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=8,
)
def fuzz(examples: int):
    """Hypothesis settings: `examples` cases in CI (a few seconds to a minute per reader), EDGELM_FUZZ_EXAMPLES to run more.
    Under CI (CI=true) the examples are derandomized, the same every run: a finding shows up in a local run
    (which draws new ones) with its example, instead of turning one CI run in many red at random."""
    count = int(os.environ.get("EDGELM_FUZZ_EXAMPLES", examples))
    return settings(max_examples=count, deadline=None, derandomize=os.environ.get("CI") == "true",
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


def replace_key(document: dict, path: list[str], value) -> dict:
    """A copy of `document` with the key at `path` (nested objects) set to `value`."""
    copy = json.loads(json.dumps(document))
    target = copy
    for key in path[:-1]:
        target = target.setdefault(key, {}) if isinstance(target.get(key), dict) else target.setdefault(key, {})
    target[path[-1]] = value
    return copy


def loads_or_user_error(load) -> None:
    try:
        load()
    except UserError as exc:
        assert "\n" not in exc.line(), exc.line()


@pytest.fixture(scope="module")
def folders(preset_dir, tmp_path_factory):
    return {name: preset_dir(name) for name in ("tiny-rope", "tiny-ngen4", "tiny-tokenformer")}


@pytest.mark.parametrize("name", ["tiny-rope", "tiny-ngen4", "tiny-tokenformer"])
@fuzz(300)
@given(data=st.data())
def test_config_json_values(folders, tmp_path_factory, name, data):
    from edgelm.models import open_checkpoint

    source = folders[name]
    config = json.loads((source / "config.json").read_text())
    key = data.draw(st.sampled_from(sorted(config)) | st.sampled_from(["rope_parameters", "rope_scaling", "head_dim"]))
    value = data.draw(JSON_VALUES)
    folder = tmp_path_factory.mktemp("cfg")
    for file in source.iterdir():  # hard links: a symlink out of the folder is refused (artifact_files), which would hide every case
        os.link(file, folder / file.name)
    (folder / "config.json").unlink()
    (folder / "config.json").write_text(json.dumps(replace_key(config, [key], value)))
    loads_or_user_error(lambda: open_checkpoint(folder, position_encoding="rope"))


@pytest.fixture(scope="module")
def onnx_folder(preset_dir, tmp_path_factory):
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    return export_onnx(open_checkpoint(preset_dir("tiny-rope")), tmp_path_factory.mktemp("onnx") / "m", "f32").path


GENAI_KEYS = [["model", "context_length"], ["model", "decoder", "filename"], ["model", "decoder", "num_hidden_layers"],
              ["model", "decoder", "num_key_value_heads"], ["model", "decoder", "head_size"], ["model", "decoder", "inputs"],
              ["model", "decoder", "outputs"], ["model", "decoder"], ["model"], ["search"]]


@fuzz(200)
@given(path=st.sampled_from(GENAI_KEYS), value=JSON_VALUES)
def test_genai_config_values(onnx_folder, tmp_path_factory, path, value):
    from edgelm.formats import open_artifact

    folder = tmp_path_factory.mktemp("genai") / "m"
    shutil.copytree(onnx_folder, folder, copy_function=os.link)  # hard links: a symlink out of the folder is refused
    genai = json.loads((onnx_folder / "genai_config.json").read_text())
    (folder / "genai_config.json").unlink()
    (folder / "genai_config.json").write_text(json.dumps(replace_key(genai, path, value)))

    def run():
        with open_artifact(folder) as artifact:
            artifact.backend.prefill([1, 2, 3])

    loads_or_user_error(run)


@pytest.fixture(scope="module")
def bundle_folder(onnx_folder, tmp_path_factory):
    from edgelm.bundle import make_bundle

    out = tmp_path_factory.mktemp("bundle") / "b"
    make_bundle(onnx_folder, out)
    return out


@fuzz(200)
@given(data=st.data())
def test_bundle_manifest_values(bundle_folder, tmp_path_factory, data):
    from edgelm.bundle_files import verify_folder

    manifest = json.loads((bundle_folder / "edgelm.json").read_text())
    key = data.draw(st.sampled_from(sorted(manifest)))
    inner = manifest[key]
    path = [key] + ([data.draw(st.sampled_from(sorted(inner)))] if isinstance(inner, dict) and inner and data.draw(st.booleans()) else [])
    folder = tmp_path_factory.mktemp("manifest") / "b"
    shutil.copytree(bundle_folder, folder)
    (folder / "edgelm.json").write_text(json.dumps(replace_key(manifest, path, data.draw(JSON_VALUES))))
    loads_or_user_error(lambda: verify_folder(folder))


GGUF_VALUES = st.one_of(
    st.tuples(st.text(max_size=40), st.just("STRING")),
    st.tuples(st.integers(min_value=-(2**31), max_value=2**31 - 1), st.just("INT32")),
    st.tuples(st.floats(width=32, allow_nan=True, allow_infinity=True), st.just("FLOAT32")),
    st.tuples(st.booleans(), st.just("BOOL")),
    st.tuples(st.lists(st.integers(min_value=0, max_value=255), max_size=16), st.just("UINT8_ARRAY")),
)


@pytest.fixture(scope="module")
def native_gguf(preset_dir, tmp_path_factory):
    """A tokenformer GGUF: edgelm's native executor reads every edgelm.* key of it."""
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    return export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), tmp_path_factory.mktemp("gguf") / "m.gguf", "f16").path


@fuzz(40)  # each case writes a whole GGUF and runs it (~1 s)
@given(data=st.data())
def test_gguf_edgelm_metadata_values(native_gguf, tmp_path_factory, data):
    from gguf import GGUFReader, GGUFValueType

    from edgelm.formats import open_artifact

    from .gguf_edit import rewrite_gguf

    keys = sorted(k for k in GGUFReader(str(native_gguf)).fields if k.startswith(("edgelm.", "tokenformer.")))
    key = data.draw(st.sampled_from(keys))
    value, kind = data.draw(GGUF_VALUES)
    typed = {"STRING": (value, GGUFValueType.STRING), "INT32": (value, GGUFValueType.INT32),
             "FLOAT32": (value, GGUFValueType.FLOAT32), "BOOL": (value, GGUFValueType.BOOL),
             "UINT8_ARRAY": (value, GGUFValueType.ARRAY, GGUFValueType.UINT8)}[kind]
    if kind == "UINT8_ARRAY" and not value:
        return  # gguf-py cannot write an empty array
    evil = rewrite_gguf(native_gguf, tmp_path_factory.mktemp("evil") / "m.gguf", drop_keys={key}, add={key: typed})

    def run():
        with open_artifact(evil) as artifact:
            artifact.backend.prefill(artifact.tokenizer.encode("It is"))

    loads_or_user_error(run)
