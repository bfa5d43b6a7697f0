"""The untrusted boundary: the one way a file name written inside an artifact (an index's shard, a
genai_config `filename`, a manifest entry, a tokenizer file beside a config) becomes a file edgelm
reads, and the one bounded reader for every JSON and text file.

A name becomes a path only through `member`: a plain name (no folder part, nothing absolute), whose
link, if it is one, resolves inside the artifact's folder — or, for a Hugging Face cache snapshot,
inside that repository's own `blobs` folder, where huggingface_hub's snapshot links point — and that
is a regular file (no FIFO, device or folder), no larger than the reader's limit. (The path returned
keeps the name: onnxruntime finds external data beside the graph's path, and a hub blob's name is its
hash. A link swapped between the check and the open is outside what this guards: whoever can write
into the folder while edgelm reads it can also change the files themselves.) Files a user names on the command line (`--text`, `--head-temperatures`) are the user's
choice of place, but still go through the same regular-file and size checks (`user_file`).

Every read of bytes goes through `open_regular`: opened non-blocking (a FIFO cannot hang the open),
checked to be a regular file by its descriptor, and read to at most the limit. JSON is parsed with a
nesting-depth bound (Python's json recurses: '[' * 100000 is a RecursionError), text must be UTF-8.
tests/test_boundary.py fails when a module other than the allowed ones opens a path itself.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import stat
import sys
from pathlib import Path
from typing import Any, BinaryIO

from .errors import RefusedText, RepeatedKey, UserError
from .fileio import is_plain_name

MAX_JSON_BYTES = 64 << 20  # the largest JSON edgelm parses itself: a tokenizer.json of a 250k vocabulary is ~20 MB
MAX_JSON_DEPTH = 64  # configs nest 4-6 deep; a depth past this is a bomb, not a config
MAX_TEXT_BYTES = 256 << 20  # a --text to score or calibrate on (a novel is ~1 MB; wikitext-103's test split 1.3 MB)
MAX_TEMPLATE_BYTES = 1 << 20  # a chat template (published ones are a few kB)
MAX_TOKENIZER_BYTES = 256 << 20  # tokenizer.json / tokenizer.model, read whole by their libraries
# huggingface_hub's cache: models--ORG--NAME/snapshots/<commit>/<file> -> ../../blobs/<hash>
_HUB_REPO_FOLDER = re.compile(r"^models--[^/]+--[^/]+$")


def _roots(folder: Path) -> list[Path]:
    """Where a link in `folder` may lead: the folder itself, and for a hub cache snapshot its repo's blobs."""
    real = Path(os.path.realpath(folder))
    roots = [real]
    if real.parent.name == "snapshots" and _HUB_REPO_FOLDER.match(real.parent.parent.name):
        roots.append(real.parent.parent / "blobs")
    return roots


def _refuse_special(info: os.stat_result, path: Path, what: str) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise UserError(f"{what} is a folder, not a file", path, "give a file")
    if not stat.S_ISREG(info.st_mode):
        raise UserError(f"{what} is not a regular file (a FIFO, socket or device)", path, "refused: give a regular file")


def _refuse_size(size: int, limit: int, path: Path, what: str, fix: str = "refused: the file is not what it claims") -> None:
    if size > limit:
        raise UserError(f"{what} is {size:,} bytes; edgelm reads at most {limit:,} for it", path, fix)


def find_member(folder: Path, name: Any, limit: int | None = None, what: str | None = None) -> Path | None:
    """The path of the regular file `name` in `folder`, or None when there is no entry of that name;
    refused (UserError) when the name or its link leads out of the folder, or it is not a regular file
    of at most `limit` bytes."""
    what = what or str(name)
    if not is_plain_name(name):
        raise UserError(f"{what} {name!r} is not a plain file name inside the folder", folder,
                        "refused: an artifact's files lie in its folder; make or download it again")
    entry = Path(folder) / name
    if not os.path.lexists(entry):
        return None
    real = Path(os.path.realpath(entry))
    if not any(real.is_relative_to(root) for root in _roots(Path(folder))):
        raise UserError(f"{name} is a link to {real}, outside the artifact's folder", entry,
                        "refused: copy the file into the folder if you mean it")
    try:
        info = os.stat(real)
    except OSError:
        return None  # a dangling link: as missing
    _refuse_special(info, entry, name)
    if limit is not None:
        _refuse_size(info.st_size, limit, entry, name)
    return entry


def regular_members(folder: Path) -> list[Path]:
    """Every regular file under `folder`, sorted, as find_member admits them: a link is followed only to a file inside
    the folder (or a hub snapshot's blobs); a link out, a FIFO, a device, a dangling link are left out, a folder link not
    entered (a stranger's link to /proc/kmsg hung `chat --prompt-cache`, which fingerprints every file)."""
    roots, found = _roots(Path(folder)), []
    for parent, _, names in os.walk(folder):  # followlinks=False
        for name in names:
            entry = Path(parent) / name
            real = Path(os.path.realpath(entry))
            try:
                if any(real.is_relative_to(root) for root in roots) and stat.S_ISREG(os.stat(real).st_mode):
                    found.append(entry)
            except OSError:  # a dangling link
                continue
    return sorted(found)


def member(folder: Path, name: Any, limit: int | None = None, what: str | None = None, fix: str = "make or download it again") -> Path:
    """As find_member, with a missing file refused too."""
    found = find_member(folder, name, limit, what)
    if found is None:
        raise UserError(f"{name} is missing", Path(folder), fix)
    return found


def user_file(path: Path, option: str, limit: int | None, what: str = "file") -> Path:
    """A file the user named on the command line: wherever it is, but a regular file of at most `limit`
    bytes (None: of any size, for a reader that reads only its start)."""
    path = Path(path)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise UserError(f"{what} not found", path, f"give a {what} with {option}") from None
    except OSError as exc:
        raise UserError(f"cannot read the {what} ({exc.strerror})", path, f"give a readable {what} with {option}") from None
    _refuse_special(info, path, f"the {what}")
    if limit is not None:  # the user's choice of file, too large for what it is given as; not a forgery
        _refuse_size(info.st_size, limit, path, f"the {what}", f"give a {what} of at most {limit:,} bytes with {option}")
    return path


def open_regular(path: Path, what: str):
    """A binary file object on `path`, opened non-blocking (a FIFO cannot hang the open) and refused unless
    its descriptor is a regular file: checked before Python's file object is made, which raises
    IsADirectoryError on a folder (a hub cache's refs/main made a folder was a traceback)."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    try:
        _refuse_special(os.fstat(fd), Path(path), what)
    except BaseException:
        os.close(fd)
        raise
    return os.fdopen(fd, "rb")


def _open_for_reading(path: Path, what: str):
    try:
        return open_regular(path, what)
    except FileNotFoundError:
        raise UserError(f"{what} is missing", path, "give the file") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} ({exc.strerror})", path, "check the file and its permissions") from None


def read_bytes(path: Path, limit: int, what: str = "the file") -> bytes:
    """At most `limit` bytes of a regular file, refusing a longer one (a file can grow after a stat)."""
    with _open_for_reading(path, what) as handle:
        size = os.fstat(handle.fileno()).st_size
        _refuse_size(size, limit, Path(path), what)
        # what the file holds and one byte more, then in blocks while it grows: read(limit + 1) sized its buffer by the
        # limit, 256 MB of address space for a 2 kB config (a MemoryError under a stranger's `ulimit -v`)
        chunks, total, want = [], 0, size + 1
        try:
            while total <= limit and (block := handle.read(min(want, limit + 1 - total))):
                chunks.append(block)
                total, want = total + len(block), 1 << 20
        except OSError as exc:
            raise UserError(f"cannot read {what} ({exc.strerror})", path, "check the file") from None
    data = b"".join(chunks)
    _refuse_size(len(data), limit, Path(path), what)
    return data


def _not_utf8(exc: UnicodeDecodeError, path: Path | None, what: str) -> RefusedText:
    """The one line for bytes that are not UTF-8: a file's (`path`) may be re-downloaded, a stream's not."""
    return RefusedText(f"{what} is not UTF-8 text (byte {exc.start}: {exc.reason})", path,
                       "convert it to UTF-8" + (" or re-download it" if path is not None else ""))


def decode_text(data: bytes, path: Path | None, what: str) -> str:
    """UTF-8 text without the byte-order mark Windows' Notepad writes first (a stranger's prompt file began with
    U+FEFF, which generate echoed and continued from, and perplexity counted as tokens)."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, path, what) from None


def read_text(path: Path, limit: int = MAX_TEXT_BYTES, what: str | None = None) -> str:
    what = what or Path(path).name
    return decode_text(read_bytes(path, limit, what), path, what)


def read_text_head(path: Path, size: int, what: str) -> tuple[str, bool]:
    """The first `size` bytes of a regular file as UTF-8 text (a character the cut splits is left out), and
    whether that is the whole file: a text used only in part (parity's positions, perplexity's --max-tokens,
    a calibration's first windows) is read only in part, whatever its size."""
    with _open_for_reading(path, what) as handle:
        try:
            data = handle.read(size + 1)
        except OSError as exc:
            raise UserError(f"cannot read {what} ({exc.strerror})", path, "check the file") from None
    whole = len(data) <= size
    try:
        return codecs.getincrementaldecoder("utf-8-sig")().decode(data[:size], final=whole), whole
    except UnicodeDecodeError as exc:
        raise _not_utf8(exc, path, what) from None


def read_stream(stream: BinaryIO, limit: int, what: str, line: bool = False) -> str:
    """At most `limit` bytes of UTF-8 text from a pipe or redirect (standard input): all of it, read a
    block at a time, or one line where `line` (with its newline; "" at the end of the input); refused past
    the limit (`--prompt - < /dev/zero` read until the process was killed at 16.7 GB) and decoded strictly
    (Python's own stdin decoding lets bad bytes through as surrogates that fail later)."""
    data = bytearray()
    try:
        if line:
            data += stream.readline(limit + 1)
        while not line and len(data) <= limit:
            block = stream.read(min(1 << 20, limit + 1 - len(data)))
            if not block:
                break
            data += block
    except OSError as exc:
        raise UserError(f"cannot read {what} ({exc.strerror})", None, "check what is piped in") from None
    if len(data) > limit:
        raise UserError(f"{what} holds more than {limit:,} bytes{' in one line' if line else ''}; edgelm reads at most that", None,
                        "give a shorter text")
    return decode_text(bytes(data), None, what)


def _depth(text: str) -> int:
    """The deepest nesting of brackets outside strings (a scan before json recurses into it)."""
    brackets = re.sub(r'"(?:[^"\\]|\\.)*"', "", text) if "[" in text or "{" in text else ""
    depth = deepest = 0
    for char in re.findall(r"[\[\]{}]", brackets):
        depth += 1 if char in "[{" else -1
        deepest = max(deepest, depth)
    return deepest


def parse_json(text: str | bytes, path: Path | None, what: str, limit: int = MAX_JSON_BYTES) -> Any:
    """A JSON document from a file or a string a stranger wrote: at most `limit` bytes and MAX_JSON_DEPTH deep."""
    if isinstance(text, bytes):
        _refuse_size(len(text), limit, path, what)
        text = decode_text(text, path, what)
    elif len(text) > limit:
        _refuse_size(len(text.encode("utf-8")), limit, path, what)
    if _depth(text) > MAX_JSON_DEPTH:
        raise UserError(f"{what} nests deeper than {MAX_JSON_DEPTH} levels", path, "refused: no config nests that deep; re-download it")
    try:
        return json.loads(text, object_pairs_hook=_unique_keys, parse_int=_bounded_int)
    except HugeNumber as exc:
        raise UserError(f"{what} holds a whole number of {exc.digits} digits, past the largest a float holds (about 1.8e308)", path,
                        "refused: fix or re-download it") from None
    except RepeatedKey as exc:
        raise RepeatedKey(f"{what} holds the key {json.dumps(exc.what)[:80]} twice in one object (JSON readers differ on which one "
                          "counts: Python's takes the last, others the first)", path, "refused: fix or re-download it") from None
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, and int('9' * 5000)'s digit limit
        raise UserError(f"{what} is not valid JSON ({str(exc).splitlines()[0][:200]})", path, "fix or re-download it") from None


FLOAT_MAX = int(sys.float_info.max)


class HugeNumber(ValueError):
    def __init__(self, digits: int):
        self.digits = digits


def _bounded_int(text: str) -> int:
    """A JSON integer a float holds: a 400-digit one passed the readers and overflowed float() in six places later (head
    temperatures, a certificate's numbers, genai_config's and a manifest's sampling), each a traceback (stranger 53).
    Smaller ones out of a field's range are the field's reader's to refuse, naming it."""
    value = int(text)
    if abs(value) > FLOAT_MAX:
        raise HugeNumber(len(text.lstrip("-")))
    return value


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    """An object whose keys are each once. A key given twice is read by json as its last value and by other readers as
    its first: a bundle's manifest listing a file twice, the first entry with a forged sha256, passed `verify` while an
    app reading the first entry would check another hash (stranger 51)."""
    document = dict(pairs)
    if len(document) != len(pairs):
        seen: set[str] = set()
        raise RepeatedKey(next(key for key, _ in pairs if key in seen or seen.add(key)))
    return document


def parse_json_object(text: str | bytes, path: Path | None, what: str, limit: int = MAX_JSON_BYTES) -> dict:
    document = parse_json(text, path, what, limit)
    if not isinstance(document, dict):
        raise UserError(f"{what} must hold a JSON object", path, "fix or re-download it")
    return document


def read_json(path: Path, limit: int = MAX_JSON_BYTES, what: str | None = None) -> Any:
    what = what or Path(path).name
    return parse_json(read_bytes(path, limit, what), path, what, limit)


def read_json_object(path: Path, limit: int = MAX_JSON_BYTES, what: str | None = None) -> dict:
    what = what or Path(path).name
    return parse_json_object(read_bytes(path, limit, what), path, what, limit)


def on_disk(path: Path, names: tuple[str, ...] | None = None) -> tuple:
    """Which file (device, inode), of what size and last change, `path` is; for a folder, each regular file in it (`names`:
    those alone, missing ones as missing). What a second look compares, to tell a file replaced or written to since the
    first: a perplexity's second opening (api), an export's source at its end (Checkpoint.check_unchanged). Unreadable: ()."""
    def identity(item: Path) -> tuple:
        try:
            found = item.stat()
        except FileNotFoundError:
            return (item.name,)
        # the change time too, which no one sets: a rewrite in place that kept the size and put the mtime back (stranger 56)
        return item.name, found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns

    try:
        if not path.is_dir():
            return (identity(path),)
        if names is not None:  # those files alone: not the folder's own times, which an output written inside it moves
            return tuple(identity(path / name) for name in names)
        return (identity(path), *(identity(entry) for entry in sorted(path.iterdir()) if entry.is_file()))
    except OSError:
        return ()


def read_prefix(path: Path, size: int) -> bytes:
    """The first `size` bytes of a regular file (a magic number), b'' for anything else."""
    try:
        handle = open_regular(path, Path(path).name)
    except (OSError, UserError):
        return b""
    with handle:
        return handle.read(size)


def contained(path: Path, needles) -> set:
    """Which of `needles` (strings) occur in a regular file's bytes, read a block at a time."""
    wanted = {needle: needle.encode() for needle in needles}
    overlap = max((len(b) for b in wanted.values()), default=1)
    found, tail = set(), b""
    with open_regular(path, Path(path).name) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            window = tail + block
            found |= {needle for needle, raw in wanted.items() if raw in window}
            tail = window[-overlap:]
    return found


def artifact_sha256(path: Path) -> str:
    """What identifies an artifact as a whole, for comparing with the hash its publisher gives: a file's
    (a GGUF, a bundle's zip) sha256 as `sha256sum` prints it; a folder's, the sha256 of its files'
    `sha256sum` lines in byte order of their names, hidden files included, subfolders not — in bash,
    `cd FOLDER && (export LC_ALL=C; shopt -s dotglob; sha256sum * 2>/dev/null | sha256sum)` (docs/certificate.md). Everything else `verify` checks lies inside the artifact, where whoever edits it rewrites it too."""
    path = Path(path)
    if not path.is_dir():
        return sha256(path)
    lines = "".join(f"{sha256(file)}  {file.name}\n" for file in sorted(path.iterdir(), key=lambda f: f.name.encode("utf-8", "surrogateescape"))
                    if file.is_file())
    return hashlib.sha256(lines.encode("utf-8", "surrogateescape")).hexdigest()


def sha256(path: Path, digest=None) -> str:
    """The sha256 of a regular file read a block at a time (fed into `digest` when given: several files' bytes as one)."""
    digest = digest or hashlib.sha256()
    with open_regular(path, Path(path).name) as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
