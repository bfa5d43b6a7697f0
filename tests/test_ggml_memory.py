"""edgelm's ggml executor under glibc's heap checker, over prompts of changing length in one backend
(issue 29: the graph kept for decoding pointed into a compute buffer that a longer prompt's graph had made
ggml free; the second, longer prompt corrupted the heap). Each run is a subprocess, so a corrupted heap
fails the test instead of killing pytest; its logits must equal a freshly opened backend's, which catches
stale buffers and stale cache rows that do not crash. valgrind runs the same script: `make memcheck`."""

import ctypes
import json
import os
import re
import subprocess
import sys
import typing
from pathlib import Path

import numpy as np
import pytest

from edgelm.export.gguf import export_gguf
from edgelm.formats import LoadOptions, open_artifact
from edgelm.models import open_checkpoint

SEQUENCE = Path(__file__).with_name("ggml_prompt_sequence.py")
# glibc checks every free and malloc (3: report and abort) and fills freed memory with 0x5a bytes, so a
# read of freed memory gives garbage rather than the old values
HEAP_CHECK = {"MALLOC_CHECK_": "3", "MALLOC_PERTURB_": "165"}
# short, long, short, past KV_PAD (the attention reads 512 cache positions), a prompt whose decode steps
# cross position 256 (a second decode graph), short again, past 512 (768 positions)
LENGTHS = [4, 40, 2, 300, 250, 7, 600]
DECODE_STEPS = 8
CONTEXT = 1024
# the same kernels on the same shapes and threads give the same bits; a stale buffer or a visible stale
# cache row moves logits by far more
TOL = 1e-6


@pytest.fixture(scope="module")
def tokenformer_gguf(preset_dir, tmp_path_factory):
    path = tmp_path_factory.mktemp("tf") / "tf-q4.gguf"
    return export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), path, "int4").path


def run_checked(args: list[str]) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, *args], capture_output=True, text=True, env=os.environ | HEAP_CHECK, timeout=600)
    assert done.returncode == 0, f"exit {done.returncode} under {HEAP_CHECK}: {done.stderr[-2000:]}"
    return done


def test_prompts_of_changing_length_keep_the_heap_and_match_a_fresh_backend(tokenformer_gguf, tmp_path):
    out = tmp_path / "logits.npz"
    run_checked([str(SEQUENCE), str(tokenformer_gguf), str(out), str(CONTEXT), str(DECODE_STEPS), *map(str, LENGTHS)])
    saved = np.load(out)
    for turn, length in enumerate(LENGTHS):
        ids, reused = saved[f"ids{turn}"].tolist(), saved[f"logits{turn}"]
        fresh = open_artifact(tokenformer_gguf, LoadOptions(context_length=CONTEXT, threads=2)).backend
        try:
            rows = [fresh.forward(ids) if turn % 2 == 0 else fresh.prefill(ids)[None]]
            for row in reused[-DECODE_STEPS - 1:-1]:  # the tokens the reused backend chose
                rows.append(fresh.forward([int(row.argmax())]))
        finally:
            fresh.close()
        expected = np.concatenate(rows)
        assert reused.shape == expected.shape == ((length if turn % 2 == 0 else 1) + DECODE_STEPS, fresh.arch.vocab_size)
        assert np.isfinite(reused).all()
        assert np.abs(reused - expected).max() <= TOL, f"prompt {turn} ({length} tokens) after {turn} earlier prompts"


HOOK_PROMPTS = ["It is a truth",
                "It is a truth universally acknowledged that a single man in possession of a good fortune must be in want of a wife",
                "It is",
                "However little known the feelings or views of such a man may be on his first entering a neighbourhood, "
                "this truth is so well fixed"]


def test_generate_on_one_model_over_prompts_of_changing_length(tokenformer_gguf):
    """The public API as issue 29 reproduced it: one edgelm.load, several generate calls (chat's turns)."""
    script = "import json, sys, edgelm; m = edgelm.load(sys.argv[1], threads=2); " \
             "print(json.dumps([m.generate(p, max_new_tokens=6) for p in json.loads(sys.argv[2])]))"
    done = run_checked(["-c", script, str(tokenformer_gguf), json.dumps(HOOK_PROMPTS)])
    import edgelm

    fresh = []
    for prompt in HOOK_PROMPTS:
        model = edgelm.load(tokenformer_gguf, threads=2)
        fresh.append(model.generate(prompt, max_new_tokens=6))
        model.artifact.backend.close()
    assert json.loads(done.stdout.splitlines()[-1]) == fresh


def declared_in_ctypes(function) -> bool:
    """ctypes passes and returns exactly these types; any other restype (a Python type, a NewType) is a
    callable ctypes hands the result as a 32-bit C int, cutting a pointer or a size_t."""
    ctypes_types = (ctypes._SimpleCData, ctypes._Pointer, ctypes.Structure, ctypes.Union, ctypes.Array, ctypes._CFuncPtr)
    return all(kind is None or isinstance(kind, type) and issubclass(kind, ctypes_types)
               for kind in [function.restype, *(function.argtypes or [])])


def test_every_ggml_function_edgelm_calls_is_declared_in_ctypes_types():
    """ggml-python 0.0.45 declares some results as NewTypes of int (ggml_backend_cpu_buffer_from_ptr,
    which the executor binds again); a call edgelm adds to one of those fails here, not in a user's heap."""
    from edgelm.ggml_python import ggml

    runtime = Path(__file__).parents[1] / "edgelm"
    called = {name for path in runtime.rglob("*.py") for name in re.findall(r"\bggml\.((?:ggml|gguf)_\w+)\s*\(", path.read_text())}
    functions = {name: getattr(ggml, name) for name in called if isinstance(getattr(ggml, name), ctypes._CFuncPtr)}
    assert {"ggml_backend_tensor_set", "ggml_gallocr_alloc_graph", "gguf_get_tensor_offset"} <= set(functions)
    assert [name for name, function in sorted(functions.items()) if not declared_in_ctypes(function)] == []
    cut = ctypes.CDLL(None).getpid
    cut.restype = typing.NewType("pointer", int)
    assert not declared_in_ctypes(cut)
