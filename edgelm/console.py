"""What the command line prints with: three lazily made rich consoles and a progress display.

rich is imported on first use: `generate` streams plain text and never needs it (importing rich was 2.5 of
the 11 MB a tiny model's `edgelm generate` held over llama-cpp-python's own script). `LazyConsole`
forwards method calls (`print`, `status`, `is_terminal`, …) to the Console it makes; anything handed to
rich itself gets the real Console from `.console`, since rich enters a console as a context manager and
keeps it by identity (a forwarding object there crashed export, perplexity and calibrate in a terminal).
`Progress` is the only place that builds a rich progress display.
"""

from __future__ import annotations

import os
import re
import sys
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

PLAIN_INTERVAL_S = 5.0  # piped: at most one progress line this often (a 10-minute calibrate prints ~120)
# C0 controls but tab, newline and carriage return; DEL; C1 controls; the bidirectional embeddings, overrides and isolates
# (U+202A–U+202E, U+2066–U+2069: "Trojan Source", CVE-2021-42574). A model's vocabulary may hold them, and a terminal obeys
# them: ESC ]0; sets the window title, OSC 52 writes the clipboard, ESC [2K erases the line (stranger 44), U+202E shows
# what follows reversed (stranger 47)
_CONTROLS = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def terminal_text(stream) -> Callable[[str], str]:
    """How generated text is written to `stream`: on a terminal as it shows it without obeying it, each control character
    spelled out (ESC as \\x1b); as it is where `stream` is no terminal (a pipe or a file gets the model's own text, as
    from llama.cpp). Asked once per stream, not per token."""
    isatty = getattr(stream, "isatty", None)
    if not (callable(isatty) and isatty()):
        return str
    return lambda text: _CONTROLS.sub(lambda found: f"\\x{ord(found[0]):02x}" if ord(found[0]) < 0x100 else f"\\u{ord(found[0]):04x}", text)


class LazyConsole:
    """A rich Console made on first use; `.console` is the Console itself, the only thing to give rich."""

    def __init__(self, stderr: bool = False):
        self._stderr = stderr
        self._console: Console | None = None
        self._quiet = False

    @property
    def console(self) -> Console:
        if self._console is None:
            from rich.console import Console

            # NO_COLOR (no-color.org): rich drops colours but kept dim and bold (ESC[2m on every chat turn's count, a
            # stranger's finding); without a colour system it writes no style at all
            plain = {"color_system": None} if os.environ.get("NO_COLOR") else {}
            self._console = Console(stderr=self._stderr, highlight=False, soft_wrap=True, quiet=self._quiet, **plain)
        return self._console

    @property
    def quiet(self) -> bool:
        return self._quiet

    @quiet.setter
    def quiet(self, value: bool) -> None:
        self._quiet = value
        if self._console is not None:
            self._console.quiet = value

    def print_json(self, text: str) -> None:
        """--json's answer. On a terminal every character past ASCII is written as its \\u escape (the same JSON): a C1
        control or bidi override in a model's text or a file's metadata reached the terminal raw (stranger 47); and where
        standard output's encoding is not UTF-8 (a Latin-1 locale: stranger 54's answer was lost to an encoding error)."""
        encoding = (getattr(sys.stdout, "encoding", None) or "").lower().replace("-", "").replace("_", "")
        self.console.print_json(text, ensure_ascii=self.console.is_terminal or encoding != "utf8")

    def __getattr__(self, name: str) -> Any:  # what this class lacks: the Console's own methods
        if name.startswith("__"):  # protocols (copy, pickle) look these up: never make a Console for them
            raise AttributeError(name)
        return getattr(self.console, name)


class Progress:
    """Progress of one long step on `console` (stderr). On a terminal a rich bar, removed when done. Piped, a
    plain line every `interval` seconds while the step runs, and one at the end when any was printed (as
    llama.cpp and Optimum keep printing into a log), so a quick run prints nothing. Nothing with --quiet or
    `enabled=False`.

    `line(progress)` words the plain line (default: label, completed/total; the seconds so far are added);
    `columns()` gives the bar's rich columns (default: rich's); `fields` are the task's extra fields, as rich's.
    Use as a context manager; report with `update(completed, total, **fields)`, `advance()` or `stage(label)`."""

    def __init__(self, console: LazyConsole, label: str, total: int | None = None, *, enabled: bool = True,
                 columns: Callable[[], tuple] | None = None, line: Callable[[Progress], str] | None = None,
                 interval: float | None = None, **fields: Any):
        self._console, self.label, self.total = console, label, total
        self._columns, self._line = columns, line
        self._interval = PLAIN_INTERVAL_S if interval is None else interval
        self._mode = None if not enabled or console.quiet else "bar" if console.is_terminal else "plain"
        self._bar = self._task = self._beat = None
        self._done = threading.Event()
        self._printed = False
        self.completed, self.fields, self.started = 0, fields, time.monotonic()

    def __enter__(self) -> Progress:
        self.started = time.monotonic()
        if self._mode == "bar":
            from rich.progress import Progress as Bar

            self._bar = Bar(*(self._columns() if self._columns else ()), console=self._console.console, transient=True)
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=self.total, **self.fields)
        elif self._mode == "plain":
            self._beat = threading.Thread(target=self._beating, name="edgelm-progress", daemon=True)
            self._beat.start()
        return self

    def update(self, completed: int, total: int | None = None, **fields: Any) -> None:
        self.completed, self.total = completed, total if total is not None else self.total
        self.fields.update(fields)
        if self._bar is not None:
            self._bar.update(self._task, completed=completed, total=self.total, **fields)

    def advance(self, steps: int = 1) -> None:
        self.update(self.completed + steps)

    def stage(self, label: str) -> None:
        self.label = label
        if self._bar is not None:
            self._bar.update(self._task, description=label)

    def step(self, label: str, total: int | None) -> None:
        """A new step counted from 0 of its own `total`; None: uncounted (a pulsing bar, no count in the plain
        line), where a stale count would show the step before it as this one's (100 % at its start)."""
        self.label, self.completed, self.total = label, 0, total
        if self._bar is not None:
            for task in self._bar.tasks:  # rich's update() reads total=None as "unchanged"; the task itself takes it
                if task.id == self._task:
                    task.total = total
            self._bar.update(self._task, description=label, completed=0)

    def text(self) -> str:
        words = self._line(self) if self._line else self.label + (f": {self.completed}/{self.total}" if self.total else "")
        return f"{words} ({time.monotonic() - self.started:.0f} s)"

    def _beating(self) -> None:
        while not self._done.wait(self._interval):
            self._console.print(self.text(), markup=False, highlight=False)
            self._printed = True

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
        if self._beat is not None:
            self._done.set()
            self._beat.join()
            if self._printed and exc[0] is None:
                self._console.print(self.text(), markup=False, highlight=False)  # a log shows the step finished


class OutputLost(Exception):
    """Standard output refused a write (a full device, a closed descriptor, a reader gone): the command's result
    did not arrive, so the command fails. `errno` is the write's."""

    def __init__(self, why: str, errno: int | None):
        super().__init__(why)
        self.errno = errno


class _Guarded:
    """A standard stream whose failures are handled: stdout's become OutputLost; stderr's are dropped (a note
    that cannot be shown must not fail a command whose result arrived). Everything else is the stream's."""

    def __init__(self, stream, lost: bool):
        self._stream, self._lost = stream, lost

    escaped = False  # a note said that characters the encoding lacks were written as escapes

    def _call(self, name: str, *args):
        try:
            return getattr(self._stream, name)(*args)
        except UnicodeEncodeError as exc:  # a locale whose encoding lacks the text's characters: as Python's stderr writes them
            # (a Latin-1 locale failed `verify` on its own "ΔPPL", exit 1 read as a failed check: stranger 56)
            if not _Guarded.escaped:
                _Guarded.escaped = True
                sys.stderr.write(f"note: standard output's encoding, {exc.encoding}, has no {exc.object[exc.start:exc.end]!r}: such "
                                 "characters are written as \\u escapes (set a UTF-8 locale, LANG=C.UTF-8, to see them)\n")
            return self._call(name, args[0].encode(exc.encoding, "backslashreplace").decode(exc.encoding), *args[1:])
        except (OSError, ValueError) as exc:  # ValueError: a write to a stream already closed
            if self._lost:
                raise OutputLost(getattr(exc, "strerror", None) or str(exc), getattr(exc, "errno", None)) from None
            return None

    def write(self, text: str):
        return self._call("write", text)

    def flush(self):
        return self._call("flush")

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def guarded_streams() -> tuple:
    """Install guarded stdout and stderr (a closed one reads as os.devnull: stdout then loses what is written
    to it) and an empty stdin for a closed one; returns the previous three, to put back."""
    import os
    import sys

    previous = sys.stdin, sys.stdout, sys.stderr
    sys.stdout = _Guarded(sys.stdout, lost=True) if sys.stdout is not None else _Guarded(_Closed(), lost=True)
    sys.stderr = _Guarded(sys.stderr if sys.stderr is not None else open(os.devnull, "w"), lost=False)
    if sys.stdin is None:  # `<&-`: nothing to read, as at the end of a file
        sys.stdin = open(os.devnull)
    return previous


class _Closed:
    """Standard output closed by the caller (`>&-`): every write fails."""

    encoding = "utf-8"

    def write(self, text: str):
        raise OSError(9, "standard output is closed")

    def flush(self):
        pass

    def isatty(self) -> bool:
        return False

    def fileno(self) -> int:
        raise OSError(9, "standard output is closed")
