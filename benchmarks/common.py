"""What the benchmark scripts share: measured subprocesses, sizes, prompts (timing itself is edgelm.benchmark's)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

EDGELM = [sys.executable, "-m", "edgelm"]


def run_measured(command: list[str]) -> dict:
    """Run `command`; its wall seconds and peak RSS in bytes (of the process and the children it waited for)."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty command would block on a full pipe
        start = time.time()
        process = subprocess.Popen([str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(process.pid, 0)
        seconds = time.time() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{log.read()[-2000:]}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024}


def folder_bytes(path: Path) -> int:
    return path.stat().st_size if path.is_file() else sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def prompt_ids(length: int, vocab: int = 30000) -> list[int]:
    """A fixed prompt of `length` ordinary token ids (random weights: the text does not matter)."""
    return [(7 * i) % (vocab - 100) + 100 for i in range(length)]


def replace_marked_block(doc: Path, block: str, marker: str = "table") -> None:
    """Replace the text from `<!-- {marker}` to `<!-- /{marker} -->` in `doc` with `block`, which
    starts and ends with those markers itself."""
    text = doc.read_text()
    start, end = text.index(f"<!-- {marker}"), text.index(f"<!-- /{marker} -->") + len(f"<!-- /{marker} -->")
    doc.write_text(text[:start] + block + text[end:])
