"""llama-cpp-python and ggml-python each ship a ggml of their own under the same symbol names; whichever loads first
decides what libllama binds to (edgelm/ggml_python.py). A stranger's `export --max-size` GGUF (a Q3_K output layer)
failed `verify` in a fresh process: llama.cpp there ran ggml-python's older ggml, the certificate's process its own."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgelm.export.gguf import export_gguf
from edgelm.models import open_checkpoint

REPO = Path(__file__).resolve().parent.parent
RUN = """import sys
from edgelm.formats import open_artifact
with open_artifact(sys.argv[1]) as artifact:
    artifact.backend.prefill(artifact.tokenizer.encode("It is a truth universally acknowledged"))
"""


@pytest.fixture(scope="module")
def mixed_gguf(tmp_path_factory):
    """tiny-rope within 2,616,896 bytes: every weight Q3_K, the output layer too, where the two ggml builds compute apart."""
    path = tmp_path_factory.mktemp("mixed") / "rope.gguf"
    export_gguf(open_checkpoint(REPO / "examples" / "models" / "tiny-rope"), path, "Q4_K_M", max_size=2_616_896)
    return path


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's LD_DEBUG shows the dynamic linker's bindings")
def test_llama_cpp_binds_only_its_own_ggml(mixed_gguf, tmp_path):
    log = tmp_path / "bindings"
    env = os.environ | {"LD_DEBUG": "bindings", "LD_DEBUG_OUTPUT": str(log), "PYTHONPATH": str(REPO)}
    subprocess.run([sys.executable, "-c", RUN, str(mixed_gguf)], check=True, env=env, capture_output=True, cwd=tmp_path)
    # "binding file A [0] to B [0]: normal symbol `name'": A's reference to name resolved in B
    pairs = [line.split("binding file ", 1)[1].split(": ", 1)[0].split(" to ") for file in tmp_path.glob("bindings.*")
             for line in file.read_text(errors="replace").splitlines() if "binding file " in line]
    assert any("/llama_cpp/lib/libllama" in a for a, _ in pairs), f"no binding of libllama in {len(pairs)} logged"
    crossed = [(a, b) for a, b in pairs if "/llama_cpp/lib/" in a and "/ggml/lib/" in b]
    assert not crossed, f"{len(crossed)} of llama-cpp-python's references bound to ggml-python's ggml, as {crossed[0]}"  # before: 1,361


def test_a_mixed_precision_export_verifies_in_a_fresh_process(mixed_gguf):
    result = subprocess.run([sys.executable, "-m", "edgelm", "verify", str(mixed_gguf)], capture_output=True, text=True,
                            env=os.environ | {"PYTHONPATH": str(REPO)})
    assert result.returncode == 0, result.stdout + result.stderr  # before: "probe DIFFERS … max |Δ| 0.0195", exit 1
    assert "top-8 logits max |Δ| 0 " in result.stdout


def test_ggml_python_is_imported_in_one_place():
    """Any other `import ggml` could load it before llama-cpp-python again."""
    direct = re.compile(r"^\s*(import ggml\b|from ggml\b)", re.MULTILINE)
    found = [str(p.relative_to(REPO)) for folder in ("edgelm", "tests", "benchmarks", "examples") for p in (REPO / folder).rglob("*.py")
             if direct.search(p.read_text(encoding="utf-8")) and p.name != "ggml_python.py"]
    assert not found


def test_a_script_that_imported_ggml_python_first_is_told():
    script = "import ggml, logging; logging.basicConfig(); import edgelm.ggml_python"
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert result.returncode == 0 and "ggml-python was imported before llama-cpp-python" in result.stderr, result.stderr
    quiet = subprocess.run([sys.executable, "-c", "import logging; logging.basicConfig(); import edgelm.ggml_python"],
                           capture_output=True, text=True, env=os.environ | {"PYTHONPATH": str(REPO)})
    assert quiet.returncode == 0 and "imported before" not in quiet.stderr
