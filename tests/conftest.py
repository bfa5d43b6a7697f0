import signal
import sys
from pathlib import Path

import pytest
import torch

from edgelm.cli import main
from edgelm.models.presets import write_preset

TINY = ("tiny-nope", "tiny-rope", "tiny-ngen4", "tiny-tokenformer")

# A shell without job control starts `cmd &` with SIGINT ignored, and children inherit an ignored signal
# through exec: the tests' Ctrl-C to `edgelm serve` or `chat` then did nothing and the suite waited
# (a suite started in the background hung at 66 %). The suite's children get Ctrl-C as a terminal gives it.
if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


@pytest.fixture(scope="session")
def preset_dir(tmp_path_factory):
    """A function giving the folder of a tiny random preset, written once per test session."""
    root = tmp_path_factory.mktemp("presets")
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = write_preset(name, root / name, seed=1)
        return made[name]

    return get


@pytest.fixture
def run_cli(capsys, monkeypatch):
    """Run the real `edgelm` entry point in-process; returns (exit code, stdout, stderr)."""

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["edgelm", *map(str, args)])
        code = 0
        try:
            main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        captured = capsys.readouterr()
        return code, captured.out, captured.err

    return run


@pytest.fixture(autouse=True)
def _deterministic(monkeypatch):
    torch.manual_seed(0)
    # piped progress prints a line every PLAIN_INTERVAL_S: on a loaded machine a slow step would add lines
    # to an error's stderr that a quick one does not; tests of that progress set the interval themselves
    from edgelm import console

    monkeypatch.setattr(console, "PLAIN_INTERVAL_S", 3600.0)
