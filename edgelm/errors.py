"""The one error type for user mistakes: the CLI prints it as one line and exits with its exit_code (2)."""

from __future__ import annotations

import re
from pathlib import Path

# str(OSError) shows the path it was given with repr: "No such file: PosixPath('/x')" → "No such file: '/x'"
_PATH_REPR = re.compile(r"\b(?:Posix|Windows|Pure\w*)?Path\(('(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")\)")


def shown(path: str | Path) -> str:
    """A path as a line shows it: bytes that are not UTF-8 (which Python keeps as surrogates, printed as
    "bad" and U+DCFF in one line and as a bytes repr in another) as backslash-x escapes, bad\\xff."""
    return str(path).encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def one_line(text: str) -> str:
    """`text` as one line of printable characters: a newline, a terminal escape or a bidirectional override
    that a file put into a message (a chat template's raise_exception, a file name, a tokenizer's error)
    is shown as its escape — \\n, \\x1b, \\u202e — never forging a line or reaching the terminal."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class UserError(Exception):
    """A mistake in what the user gave us (a path, a file, an option), never a bug in edgelm.

    The message says what is wrong, in which file, and what to do about it.
    """

    exit_code = 2

    def __init__(self, what: str, path: str | Path | None = None, fix: str | None = None):
        self.what = what
        self.path = Path(path) if path is not None else None
        self.fix = fix
        super().__init__(self.line())

    def line(self) -> str:
        parts = [f"{shown(self.path)}: {self.what}" if self.path is not None else self.what]
        if self.fix:
            parts.append(self.fix)
        return one_line(_PATH_REPR.sub(r"\1", " — ".join(parts)))


class ArtifactMismatch(UserError):
    """An artifact that is not what its own record says: a bundled file against its manifest's sha256 or size, a
    file or archive entry the manifest does not list, one listed twice, a fact the manifest states that the model's own
    files contradict. Refused (exit 2) by the commands that
    would run it; a failed check (exit 1) for `verify`, as a changed weight of a bare GGUF is."""


class RepeatedKey(UserError):
    """A JSON object giving one key twice (artifact_files.parse_json): readers differ on which of its values counts."""


class RefusedText(UserError):
    """A text refused whole (not UTF-8, or a terminal line past the limit) after it was read: what follows it
    can still be read (chat goes on to the next message)."""


class WriteFailed(UserError):
    """Output the command made and could not write (a full disk, a quota): said in one line as a mistake is,
    with exit code 1, as README's exit codes have it: the command ran, its result did not arrive."""

    exit_code = 1
