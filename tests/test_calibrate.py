"""HeadScale calibration: lowers loss at the target length, respects the clamp, and its file round-trips
into an export; zero steps at λ = 1 changes nothing."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgelm.calibrate import CalibrationSettings, calibrate, heldout_loss, split_ids
from edgelm.models import open_checkpoint
from edgelm.tokenizer import load_tokenizer

from .test_bad_input import assert_user_error

CORPUS = Path(__file__).resolve().parents[1] / "examples" / "data" / "emma.txt"
LENGTH = 96


def corpus_ids(folder):
    return load_tokenizer(folder).encode(CORPUS.read_text(encoding="utf-8")[:60_000])


def test_calibration_lowers_heldout_loss_and_respects_clamp(preset_dir):
    folder = preset_dir("tiny-nope")
    ids = corpus_ids(folder)
    model = open_checkpoint(folder).load_model()
    settings = CalibrationSettings(target_length=LENGTH, steps=30, lr=0.1, init=1.6, min=1.2, eval_every=5, batch=2)
    _, held = split_ids(ids, LENGTH, settings.eval_windows)
    model.set_head_temperatures(torch.full((4, 8), 1.6))
    at_init = heldout_loss(model, held)
    result = calibrate(model, ids, settings)
    assert result.heldout_loss < at_init
    assert bool((result.table >= 1.2).all())
    assert not (result.table == 1.6).all()  # the temperatures moved
    assert torch.equal(model.head_temperatures(), result.table)
    assert all(not p.requires_grad for p in model.parameters())


def test_zero_steps_at_one_equals_the_uncalibrated_model(preset_dir):
    folder = preset_dir("tiny-nope")
    model = open_checkpoint(folder).load_model()
    ids = torch.tensor(corpus_ids(folder)[:64])[None]
    expected, _ = model(ids)
    result = calibrate(model, corpus_ids(folder), CalibrationSettings(target_length=LENGTH, steps=0, init=1.0))
    assert torch.equal(result.table, torch.ones(4, 8))
    with torch.no_grad():
        assert torch.equal(model(ids)[0], expected)


def test_cli_file_round_trips_through_export(run_cli, preset_dir, tmp_path):
    from edgelm.formats.gguf_file import open_gguf

    folder = preset_dir("tiny-nope")
    text = tmp_path / "text.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:60_000])
    temps = tmp_path / "temps.json"
    code, out, err = run_cli("calibrate", folder, "--text", text, "--target-length", LENGTH, "--out", temps,
                             "--steps", 4, "--min", 0.5, "--json")
    assert code == 0, err
    saved = json.loads(temps.read_text())
    assert saved["calibration"]["method"] == "headscale" and saved["calibration"]["target_length"] == LENGTH
    code, _, err = run_cli("export", folder, "--quant", "f32", "--head-temperatures", temps, "--out", tmp_path / "m.gguf")
    assert code == 0, err
    stored = open_gguf(tmp_path / "m.gguf").field("edgelm.head_temperatures")
    assert np.allclose(stored, np.array(saved["layers"]).flatten(), atol=1e-6)
    code, _, err = run_cli("calibrate", folder, "--text", text, "--target-length", LENGTH, "--out", temps)
    assert code == 2 and "output already exists" in err


def test_cli_bad_input(run_cli, preset_dir, tmp_path):
    folder = preset_dir("tiny-nope")
    short = tmp_path / "short.txt"
    short.write_text("Only a few words here.")
    code, _, err = run_cli("calibrate", folder, "--text", short, "--target-length", 512, "--out", tmp_path / "t.json")
    assert code == 2 and "needs at least" in err and "tokens" in err
    assert not (tmp_path / "t.json").exists()


def test_write_checkpoint_stores_headscale_tensors_and_pins_encoding(run_cli, preset_dir, tmp_path):
    import shutil

    folder = tmp_path / "rope"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    text = tmp_path / "text.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:60_000])
    code, _, err = run_cli("calibrate", folder, "--text", text, "--target-length", LENGTH, "--out", tmp_path / "t.json",
                           "--steps", 2, "--write-checkpoint")
    assert code == 0, err
    checkpoint = open_checkpoint(folder)
    assert checkpoint.spec.position_encoding == "rope"  # scale_param present, but the edgelm block decides
    table = torch.tensor(json.loads((tmp_path / "t.json").read_text())["layers"])
    assert torch.allclose(checkpoint.head_temperatures(), table, atol=1e-6)


def test_a_run_that_never_beats_one_keeps_one(preset_dir):
    """An initial λ worse than λ = 1 and no step to improve on it (as after an early Ctrl-C): λ = 1 stays."""
    folder = preset_dir("tiny-nope")
    model = open_checkpoint(folder).load_model()
    result = calibrate(model, corpus_ids(folder), CalibrationSettings(target_length=LENGTH, steps=0, init=40.0, min=1.0))
    assert torch.equal(result.table, torch.ones(4, 8)) and result.heldout_loss == result.heldout_loss_before


@pytest.mark.parametrize("uniform", [False, True], ids=["headscale", "uniform"])
def test_every_temperature_honours_min(preset_dir, uniform):
    """Stranger finding: --min 3 with the default --init 1.6 gave λ = 1.6 everywhere (the start was kept when no
    step did better on the held-out windows); --uniform with a --min above its grid gave 1."""
    folder = preset_dir("tiny-nope")
    model = open_checkpoint(folder).load_model()
    result = calibrate(model, corpus_ids(folder), CalibrationSettings(target_length=LENGTH, steps=2, min=3.0, eval_every=1, uniform=uniform))
    assert bool((result.table >= 3.0).all()), result.table


def test_a_batch_past_the_text_or_the_memory_is_one_line(run_cli, preset_dir, tmp_path, monkeypatch):
    """Stranger finding: --batch 100000 grew until the process was killed (23 GB), or under a memory limit was
    torch's allocator traceback."""
    import edgelm.calibrate

    folder = preset_dir("tiny-nope")
    text = tmp_path / "text.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:60_000])
    args = ("-q", "calibrate", folder, "--text", text, "--target-length", LENGTH, "--out", tmp_path / "t.json", "--steps", 1)
    assert_user_error(run_cli(*args, "--batch", 100_000), "text.txt: --batch 100000 is more than the", "windows of 97 tokens")

    def no_memory(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried to allocate 3276800000 bytes.")

    monkeypatch.setattr(edgelm.calibrate, "calibrate", no_memory)
    assert_user_error(run_cli(*args, "--batch", 2), "not enough memory for --batch 2 windows of 97 tokens")
    assert not (tmp_path / "t.json").exists()


def test_a_file_of_lambda_one_says_it_changes_nothing(run_cli, preset_dir, tmp_path):
    """Stranger 43: a 5-step run wrote λ = 1 everywhere (no tuned table beat λ = 1 on the held-out windows) and
    printed its summary as if it had tuned something. It says so now."""
    folder = preset_dir("tiny-nope")
    text = tmp_path / "text.txt"
    text.write_text(CORPUS.read_text(encoding="utf-8")[:60_000])
    code, out, err = run_cli("calibrate", folder, "--text", text, "--target-length", LENGTH, "--out", tmp_path / "t.json",
                             "--steps", 0, "--init", 40)
    assert code == 0 and "no temperatures beat λ = 1 on the held-out windows in 0 steps" in err, (code, err)
