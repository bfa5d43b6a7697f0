"""edgelm installed from its wheel, run from a folder that is not the checkout: its defaults (texts, the
web runtime) must not point into a checkout that is not there.

The wheel is built from a copy of the sources (the checkout is left as it was) with the build backend of
this environment, and installed into a fresh virtual environment that sees this environment's packages
(torch, llama-cpp-python, …) through a .pth line. Such a line adds the folder to sys.path without running
the .pth files inside it, so this environment's editable install of edgelm is not active there: the only
edgelm it can import is the wheel's, which the test checks."""

import json
import os
import shutil
import site
import subprocess
import sys
import sysconfig
import venv
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MODEL = REPO / "examples" / "models" / "tiny-rope"
TIMEOUT_S = 300


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """(the fresh environment's python, a folder outside the checkout to run in)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, source / name)
    shutil.copytree(REPO / "edgelm", source / "edgelm", ignore=shutil.ignore_patterns("__pycache__"))
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(root / "dist"), str(source)],
                           capture_output=True, text=True, timeout=TIMEOUT_S)
    if built.returncode != 0 and "No module named pip" in built.stderr:
        pytest.skip("this environment has no pip to build the wheel with")
    assert built.returncode == 0, built.stderr
    wheel = next((root / "dist").glob("edgelm-*.whl"))

    env_dir = root / "env"
    venv.create(env_dir, with_pip=False)
    python = env_dir / "bin" / "python"
    purelib = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  capture_output=True, text=True, check=True).stdout.strip())
    ours = [p for p in [*site.getsitepackages(), sysconfig.get_paths()["purelib"]] if Path(p).is_dir()]
    (purelib / "this-environments-packages.pth").write_text("\n".join(dict.fromkeys(ours)) + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps", "--no-index", "-q", str(wheel)],
                          capture_output=True, text=True, timeout=TIMEOUT_S)
    assert done.returncode == 0, done.stderr
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    return python, elsewhere


def edgelm(installed, *args):
    python, cwd = installed
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "EDGELM_WEB_RUNTIME")}
    done = subprocess.run([str(python.parent / "edgelm"), *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    return done.returncode, done.stdout, done.stderr


def test_the_environment_imports_the_wheel_not_the_checkout(installed):
    python, cwd = installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    found = subprocess.run([str(python), "-c", "import edgelm, edgelm.constants; print(edgelm.__file__); print(edgelm.constants.HELD_OUT_TEXT)"],
                           cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.split()
    assert all(Path(p).is_relative_to(python.parents[1]) for p in found), found
    assert not Path(found[0]).is_relative_to(REPO)


def test_the_main_commands_run_from_another_folder(installed):
    _, cwd = installed
    code, out, err = edgelm(installed, "inspect", MODEL, "--json")
    assert code == 0 and json.loads(out)["family"] == "llama", err
    code, out, err = edgelm(installed, "generate", MODEL, "--prompt", "It is a truth", "--max-new-tokens", "8")
    assert code == 0 and out.startswith("It is a truth") and len(out) > len("It is a truth\n"), err
    code, out, err = edgelm(installed, "export", MODEL, "--format", "gguf", "--quant", "int4", "--out", "r.gguf")
    assert code == 0 and (cwd / "r.gguf").is_file(), err
    code, out, err = edgelm(installed, "parity", "r.gguf", "--reference", MODEL, "--json")  # the shipped default text
    assert code == 0, err
    report = json.loads(out)
    assert report["positions"] == 256 and report["top1_agreement"] > 0.8, report
    code, out, err = edgelm(installed, "perplexity", "r.gguf", "--json")  # the shipped default text
    assert code == 0, err
    assert json.loads(out)["tokens"] > 1000 and 1 < json.loads(out)["perplexity"] < 1000


def test_a_web_bundle_without_the_runtime_says_the_step_to_get_it(installed, tmp_path):
    code, out, err = edgelm(installed, "export", MODEL, "--format", "onnx", "--quant", "int4", "--out", "rope-onnx")
    assert code == 0, err
    code, out, err = edgelm(installed, "bundle", "rope-onnx", "--target", "web", "--out", "web")
    assert code == 2 and err.count("\n") == 1, err
    assert "npm install --prefix DIR onnxruntime-web@1.30.0 @huggingface/tokenizers@0.2.0" in err and "--web-runtime" in err, err
    assert "make web-runtime" not in err  # no checkout here
    # stranger 23: it named "site-packages/web/node_modules", a checkout's path that an install never has
    assert "from an npm node_modules folder, which an installed edgelm does not ship" in err and "site-packages" not in err, err
    # stranger 31: a GGUF was told to fetch the runtime first, and only then that a web bundle takes an ONNX export
    code, out, err = edgelm(installed, "export", MODEL, "--format", "gguf", "--quant", "int4", "--out", "w.gguf", "--no-certificate")
    assert code == 0, err
    code, out, err = edgelm(installed, "bundle", "w.gguf", "--target", "web", "--out", "web")
    assert code == 2 and err.count("\n") == 1 and "the web bundle takes an ONNX export, not a" in err and "npm" not in err, err
