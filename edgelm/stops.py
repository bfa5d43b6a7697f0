"""Stops that native code would hold off. Python runs a signal's handler in the main thread between bytecodes, so
while onnxruntime, llama.cpp or ggml computes (one call that may last minutes: a stranger's graph looping 10^15
times) SIGTERM and Ctrl-C wait: `timeout`'s SIGTERM went unanswered for 11 minutes. A thread reading Python's
signal wakeup descriptor (signal.set_wakeup_fd) sees each signal as it arrives; where the main thread has not taken
it (cli's handlers count it: fileio.stopped) the process ends from this thread — SIGTERM after GRACE_S seconds, a
Ctrl-C at the second one (the first says so: chat's Ctrl-C stops a reply, which a long prefill may delay) — with one
line, the outputs still being written removed (fileio.discard_unfinished), and the status a stop gives. A native call
that can be ended early registers how (`ends_early`: onnxruntime's RunOptions.terminate), and each stop ends it at once,
so the main thread takes the stop as between two Python steps."""

from __future__ import annotations

import os
import select
import signal
import threading
import time
from collections.abc import Callable
from contextlib import contextmanager
from typing import NoReturn

from .fileio import discard_unfinished, stops_taken

GRACE_S = 3.0  # seconds the main thread has to take a SIGTERM before the process ends without it
TERMINATED, INTERRUPTED = 143, 130  # 128 + the signal, as a shell reports a process it ended
# the signals whose default action ends the process (signal(7): "Term", and "Core" but for the faults and SIGQUIT,
# Ctrl-\'s "quit now"), each taken as SIGTERM is (cli's Terminated): a closed terminal's SIGHUP, a CPU-time limit's
# SIGXCPU, SIGUSR1/2 and SIGALRM (stranger 54), then SIGVTALRM, SIGPROF, SIGPWR, SIGIO, SIGSTKFLT, SIGSYS and the
# real-time signals (stranger 56) ended an export at once, its partial file, f32 intermediate and lock left beside it
_ENDING_NAMES = ("SIGTERM", "SIGHUP", "SIGXCPU", "SIGUSR1", "SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGPWR", "SIGIO",
                 "SIGSTKFLT", "SIGSYS")
ENDING = tuple(number for name in _ENDING_NAMES if (number := getattr(signal, name, None)) is not None) + (
    tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1)) if hasattr(signal, "SIGRTMIN") else ())


def ending_words(number: int) -> str:
    """How the last line names a stop by `number`: "terminated" for SIGTERM, as before; the signal's name for the others."""
    if number == signal.SIGTERM:
        return "terminated"
    try:
        return f"ended by {signal.Signals(number).name}"
    except ValueError:  # a real-time signal past SIGRTMIN, which the enum does not name
        return f"ended by signal {number}"


_ENDS: list[Callable[[], None]] = []  # how to end each native call in progress early (ends_early)
_STDERR = [2]  # the descriptor standard error had when the watch began: tokenizer calls point 2 at a pipe meanwhile


def _end(code: int, what: str) -> None:
    """As cli's handlers end a command, from this thread: one line (the terminal may be gone: a SIGHUP's), status `code`."""
    discard_unfinished()
    try:
        os.write(_STDERR[0], f"\n{what} while native code was computing; nothing was left half-written\n".encode())
    except OSError:
        pass
    os._exit(code)


def _taken_within(before: int, seconds: float) -> bool:
    """Whether the main thread's handlers have taken a stop since they had taken `before`, within `seconds`."""
    deadline = time.monotonic() + seconds
    while stops_taken() == before and time.monotonic() < deadline:
        time.sleep(0.05)
    return stops_taken() != before


def _stops_in(signals: bytes) -> set[int]:
    return {number for number in signals if number == signal.SIGINT or number in ENDING}


def _drain(read_end: int) -> set[int] | None:
    """The stops the descriptor holds now, read without waiting; None at its end."""
    numbers: set[int] = set()
    while select.select([read_end], [], [], 0)[0]:
        if not (signals := os.read(read_end, 512)):
            return None
        numbers |= _stops_in(signals)
    return numbers


def _watch(read_end: int) -> None:
    """Signals arriving before the main thread runs Python again are taken by one call of its handler (Python keeps one
    flag a signal), while the descriptor holds a byte for each: five Ctrl-Cs 3 ms apart, counted one by one, were four
    stops never taken, and ended a chat at its idle prompt. So the stops read at once, and those still pending when the
    main thread takes them, are one stop; the handlers' count is read before each wait, so a handler that runs before
    the byte is read counts too."""
    waiting = False  # a Ctrl-C the main thread has not taken
    while True:
        before = stops_taken()
        if not (signals := os.read(read_end, 512)):
            break
        numbers = _stops_in(signals)
        if not numbers:
            continue
        if stops_taken() == before:  # a native call in progress: ended, where it says how (ends_early)
            for end in list(_ENDS):
                end()
        terminate = min(numbers & set(ENDING), default=None)
        if _taken_within(before, GRACE_S if terminate else 1.0):
            waiting = False
            if _drain(read_end) is None:  # bytes of signals that handler took along with this one
                break
            continue
        if terminate or waiting:
            _end(128 + terminate if terminate else INTERRUPTED, ending_words(terminate) if terminate else "interrupted")
        # the Ctrl-Cs that came before the line below are the stop it speaks of, not a second one: a burst of five 3 ms
        # apart, in a 3 s step of native code (a llama.cpp prefill batch), read as "again" a second later, ended the chat
        if (pending := _drain(read_end)) is None:
            break
        if terminate := min(pending & set(ENDING), default=None):
            if not _taken_within(before, GRACE_S):
                _end(128 + terminate, ending_words(terminate))
            continue
        waiting = True
        os.write(_STDERR[0], b"\nstopping when the model's current step ends; Ctrl-C again to quit now\n")
    os.close(read_end)


@contextmanager
def ends_early(end: Callable[[], None]):
    """While in it, a stop's arrival calls `end` (from the watching thread) to end the native call in progress: a foreign
    ONNX graph's 10^15-trip loop held a Ctrl-C off until the second one ended the process, and a chat lost its
    conversation with it. The call, ended, raises its own error; the main thread's handler raises the stop there."""
    _ENDS.append(end)
    try:
        yield
    finally:
        _ENDS.remove(end)


class _Held:
    depth = 0  # imports in progress (held_during_imports)
    pending: type[BaseException] | None = None


def raise_unless_held(stop: type[BaseException]) -> None:
    """Raise the stop a handler took, or, inside an import, keep it for the import's end."""
    if _Held.depth:
        _Held.pending = _Held.pending or stop
        return
    raise stop


@contextmanager
def held_during_imports():
    """Stops raised inside an import are raised when it returns. torch's C++ imports numpy and swallows any error it
    raises (is_numpy_available: "Failed to initialize NumPy"): a Ctrl-C or SIGTERM 0.5 s into an export was lost there
    (the export wrote its file and exited 0), or left numpy half-imported (an AttributeError later, or an abort). Every
    import statement, from Python or from C (PyImport_Import calls builtins.__import__), goes through this hold."""
    import builtins

    original, main = builtins.__import__, threading.main_thread()

    def held_import(*args, **kwargs):
        if threading.current_thread() is not main:  # handlers run in the main thread: its imports alone hold a stop
            return original(*args, **kwargs)
        _Held.depth += 1
        try:
            return original(*args, **kwargs)
        finally:
            _Held.depth -= 1
            if not _Held.depth and (stop := _Held.pending):
                _Held.pending = None
                raise stop  # the module imported whole, or what the import raised chained to the stop

    builtins.__import__ = held_import
    try:
        yield
    finally:
        builtins.__import__ = original


def take_pending_stop() -> NoReturn:
    """Where a native call a stop ended (ends_early) returns: the stop's handler is pending, and CPython runs a pending
    handler as a Python function starts, this one included, so the handler's stop (cli's Terminated for SIGTERM) is
    raised from here; Ctrl-C's where no handler raised one."""
    raise KeyboardInterrupt


class StopWatch:
    """Installed by cli.main for one command; removed when it returns (the wakeup descriptor is the process's one)."""

    def __enter__(self) -> StopWatch:
        _STDERR[0] = os.dup(2)
        self.read_end, write_end = os.pipe()
        os.set_blocking(write_end, False)
        self.previous = signal.set_wakeup_fd(write_end, warn_on_full_buffer=False)
        self.write_end = write_end
        threading.Thread(target=_watch, args=(self.read_end,), name="edgelm-stops", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        signal.set_wakeup_fd(self.previous)
        os.close(self.write_end)  # the thread's read ends
        os.close(_STDERR[0])
        _STDERR[0] = 2
