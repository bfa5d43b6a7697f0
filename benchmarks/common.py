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
    """Run `command`; its wall seconds, `peak_rss` in bytes (the largest of the process and the children
    it waited for: the kernel's ru_maxrss) and `peak_rss_tree` (the largest sum over the process and its
    live descendants, sampled every 0.1 s from /proc: a command that runs a helper process, as a GGUF
    export runs llama.cpp's quantizer, holds both at once; 0 where /proc is missing)."""
    with tempfile.TemporaryFile("w+") as log:  # a file, not a pipe: a chatty command would block on a full pipe
        start = time.time()
        process = subprocess.Popen([str(c) for c in command], stdout=log, stderr=subprocess.STDOUT, text=True)
        tree_peak = 0
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                break
            tree_peak = max(tree_peak, _tree_rss(process.pid))
            time.sleep(0.1)
        seconds = time.time() - start
        if os.waitstatus_to_exitcode(status) != 0:
            log.seek(0)
            raise RuntimeError(f"{' '.join(map(str, command))} failed:\n{log.read()[-2000:]}")
    return {"seconds": seconds, "peak_rss": usage.ru_maxrss * 1024, "peak_rss_tree": tree_peak}


def _tree_rss(root: int) -> int:
    """Resident bytes of `root` and its descendants now (Linux /proc)."""
    children: dict[int, list[int]] = {}
    pids = [entry for entry in Path("/proc").iterdir() if entry.name.isdigit()] if Path("/proc/self/stat").exists() else []
    for entry in pids:
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])  # field 4, after "(comm)"
        except OSError:  # the process ended while read
            continue
        children.setdefault(parent, []).append(int(entry.name))
    total, pending = 0, [root]
    while pending:
        pid = pending.pop()
        pending += children.get(pid, [])
        try:
            total += next(int(line.split()[1]) * 1024 for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                          if line.startswith("VmRSS:"))
        except (OSError, StopIteration):  # ended, or a zombie without VmRSS
            pass
    return total


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
