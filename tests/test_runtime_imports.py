"""Running an exported artifact needs neither torch nor the model families nor the exporters: the
runtime path of `edgelm generate` on a GGUF or ONNX file imports only what runs it. (Cold-start time
is a benchmark, benchmarks/runtime_table.py; this checks the imports, which are what cost it.)"""

import json
import subprocess
import sys

import pytest

CHECK = """
import sys
from edgelm.cli import main
sys.argv = ["edgelm", "generate", sys.argv[1], "--prompt", "It is a truth", "--max-new-tokens", "4", "--json"]
try:
    main()
except SystemExit as exc:
    assert not exc.code, exc.code
heavy = sorted(m for m in ("torch", "transformers", "edgelm.models", "edgelm.export") if m in sys.modules)
print("IMPORTED", heavy, file=sys.stderr)
"""


@pytest.fixture(scope="module")
def artifacts(preset_dir, tmp_path_factory):
    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    root = tmp_path_factory.mktemp("artifacts")
    checkpoint = open_checkpoint(preset_dir("tiny-rope"))
    return {"gguf": export_gguf(checkpoint, root / "m.gguf", "int4").path,
            "onnx": export_onnx(checkpoint, root / "m-onnx", "int4").path,
            # run by edgelm's ggml executor, not llama.cpp
            "tokenformer gguf": export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), root / "tf.gguf", "int4").path}


@pytest.mark.parametrize("kind", ["gguf", "onnx", "tokenformer gguf"])
def test_generate_on_an_artifact_imports_no_torch(artifacts, kind):
    done = subprocess.run([sys.executable, "-c", CHECK, str(artifacts[kind])], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert len(json.loads(done.stdout)["tokens"]) == 4
    assert "IMPORTED []" in done.stderr, done.stderr
