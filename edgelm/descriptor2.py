"""Descriptor 2, standard error, is the process's, and two things point it elsewhere for a while: edgelm's tokenizer
calls hold what Rust's panic hook writes there (tokenizer.py), and llama-cpp-python's Llama() points it at /dev/null
while it loads (its suppress_stdout_stderr, with verbose=False). Each saves the descriptor and puts it back, so two at
once put back each other's: threads tokenizing at once left one reading another's pipe for ever (stranger 50: four
threads chatting with one model, or two models in two threads, hung the process), and a Llama() load beside a
tokenizer call would leave a pipe as standard error. So tokenizer calls share one hold, and a load runs alone. Only
the `edgelm` program holds it (for_the_program): in a process that imports edgelm, descriptor 2 is that process's, and
a hold took it from every other thread for the length of a call (stranger 52: a helper process started meanwhile
inherited the pipe and died of SIGPIPE after it closed; other threads' lines past its 64 KB were lost); there a
tokenizer's panic message reaches standard error as it does for any user of tokenizers."""

from __future__ import annotations

import os
import sys
import threading
from contextlib import contextmanager


class _Hold:
    program = False  # the edgelm program's own process (for_the_program)
    turn = threading.Condition()
    holders = 0  # tokenizer calls inside held()
    alone = False  # a call inside alone()
    saved: int | None = None  # the real descriptor 2, while held
    read_end: int | None = None
    dropped = False  # what the hold caught is not to be written (a panic's message, said in one line instead)


@contextmanager
def held():
    """While inside, descriptor 2 is a pipe, shared by every thread inside; when the last leaves, what it caught is
    written to standard error, unless one of them dropped it (`drop()`). The pipe blocks neither its writers (past its
    64 KB a write fails, EAGAIN) nor its reader (a process started meanwhile holds its write end too)."""
    if not _Hold.program:
        yield
        return
    with _Hold.turn:
        _Hold.turn.wait_for(lambda: not _Hold.alone)
        if _Hold.holders == 0:
            _hold()
        _Hold.holders += 1
    try:
        yield
    finally:
        with _Hold.turn:
            _Hold.holders -= 1
            if _Hold.holders == 0:
                _release()
                _Hold.turn.notify_all()


@contextmanager
def for_the_program():
    """While inside (cli.main), the process is the edgelm program's, and held() holds descriptor 2."""
    _Hold.program = True
    try:
        yield
    finally:
        _Hold.program = False


def drop() -> None:
    """Inside held(): what the hold caught is not written."""
    _Hold.dropped = True


@contextmanager
def alone():
    """While inside, no hold is made: for a call that saves and restores descriptor 2 itself (llama-cpp-python's load)."""
    with _Hold.turn:
        _Hold.turn.wait_for(lambda: not _Hold.alone and not _Hold.holders)
        _Hold.alone = True
    try:
        yield
    finally:
        with _Hold.turn:
            _Hold.alone = False
            _Hold.turn.notify_all()


def _hold() -> None:
    if sys.stderr is not None:  # None under pythonw or a windowed build (stranger 50: a model folder did not load)
        sys.stderr.flush()
    try:
        saved = os.dup(2)
    except OSError:  # descriptor 2 closed (`2>&-`): what is written there goes nowhere as it is
        return
    read_end, write_end = os.pipe()
    os.set_blocking(write_end, False)
    os.set_blocking(read_end, False)
    os.dup2(write_end, 2)
    os.close(write_end)
    _Hold.saved, _Hold.read_end, _Hold.dropped = saved, read_end, False


def _release() -> None:
    if _Hold.saved is None:
        return
    os.dup2(_Hold.saved, 2)  # closes the pipe's write end
    os.close(_Hold.saved)
    written = b""
    with os.fdopen(_Hold.read_end, "rb", buffering=0) as caught:
        while chunk := caught.read(1 << 16):  # None once empty (non-blocking), b"" at its end
            written += chunk
    _Hold.saved = _Hold.read_end = None
    if written and not _Hold.dropped:
        os.write(2, written)
