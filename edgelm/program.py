"""The `edgelm` program (pyproject's console script, `python -m edgelm`). cli.main installs the handlers that make a
stop one line and exit 130 once cli's imports (typer, rich: ~0.1 s) are done; a Ctrl-C before then was Python's own,
a KeyboardInterrupt traceback from inside an import (stranger 48's note). So the program's first step takes Ctrl-C:
before the command begins nothing has been written, and the process ends at once. SIGTERM keeps the system's default
there, which ends the process as a shell reports 143."""

import os
import signal


def _before_the_command(signum, frame) -> None:
    os.write(2, b"\ninterrupted; nothing was left half-written\n")  # as cli says it
    os._exit(130)


def entry() -> None:
    ours = signal.getsignal(signal.SIGINT) is signal.default_int_handler  # a Ctrl-C the caller ignores (nohup, `&`) stays so
    if ours:
        signal.signal(signal.SIGINT, _before_the_command)
    from .cli import entry as run_command

    if ours:
        signal.signal(signal.SIGINT, signal.default_int_handler)  # cli.main replaces Python's own handler with its own
    try:
        run_command()
    except KeyboardInterrupt:  # in the steps between the line above and cli.main's handler
        _before_the_command(signal.SIGINT, None)
