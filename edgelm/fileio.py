"""Writing outputs so that a crash or Ctrl-C never leaves a half-written model: build beside the
target under a temporary name, fsync, and rename into place at the end."""

from __future__ import annotations

import errno
import fcntl
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path, PurePosixPath
from typing import Any

from .errors import UserError, WriteFailed, shown


def is_plain_name(name: Any) -> bool:
    """A plain file name for the top of a folder, from a file a stranger wrote (a manifest, a zip
    entry, a genai_config `filename`): no folder part, no way out, no absolute path, on any OS."""
    if not isinstance(name, str) or not name or "\\" in name or "\0" in name:
        return False
    return len(PurePosixPath(name).parts) == 1 and name not in (".", "..") and not Path(name).is_absolute()


def refuse_non_utf8(path: Path, what: str) -> None:
    """llama.cpp, onnxruntime and safetensors take a path as UTF-8: one with other bytes in its name (which Linux
    allows) was a UnicodeEncodeError or pybind11 traceback, or "the file is damaged", in every command."""
    try:
        os.fsdecode(os.fsencode(path)).encode("utf-8")
    except UnicodeEncodeError:
        raise UserError(f"the {what}'s path {shown(path)} is not UTF-8 text; llama.cpp, onnxruntime and safetensors "
                        "open UTF-8 paths only", None, "rename it (or the folder holding it) with UTF-8 characters") from None


NAME_MAX = 255  # bytes a name may have on Linux's and macOS's file systems (NAME_MAX), PATH_MAX 4096 for a whole path


def refuse_long_names(path: Path, what: str) -> None:
    """A name past NAME_MAX (or a path past PATH_MAX) in one line: `bundle --zip --out <255 bytes>` (259 with .zip) and
    `inspect <300 bytes>` were ENAMETOOLONG tracebacks, and `edgelm.load` raised a bare OSError."""
    long = next((part for part in Path(path).parts if len(os.fsencode(part)) > NAME_MAX), None)
    if long is not None or len(os.fsencode(path)) > 4096:
        size = len(os.fsencode(long)) if long is not None else len(os.fsencode(path))
        raise UserError(f"the {what}'s {'name' if long is not None else 'path'} is {size:,} bytes; file systems take at most "
                        f"{NAME_MAX if long is not None else 4096:,}", None, f"give the {what} a shorter name")


def refuse_existing(target: Path, force: bool, kind: str | None = None) -> None:
    """An output that exists needs --force; and even then not a link, not the current folder or one
    holding it, and not a folder where a file goes (or the reverse): --force replaces an output, it
    does not guess which of two things was meant."""
    if not os.path.lexists(target):
        return
    if not force:
        raise UserError("output already exists", target, "choose another path or pass --force to replace it")
    if target.is_symlink():
        raise UserError("the output is a symbolic link; --force replaces files and folders, not links", target,
                        "remove the link or give the path it points to")
    if not (target.is_file() or target.is_dir()):  # a device node, FIFO or socket: /dev/null as root was replaced by a file
        raise UserError("the output is not a file or a folder (a device, pipe or socket); --force replaces files and folders", target,
                        "give the output a path of its own")
    if Path.cwd().resolve().is_relative_to(target.resolve()):
        raise UserError("the output would replace the current folder", target, "give the output a name of its own")
    if kind == "folder" and not target.is_dir() or kind == "file" and target.is_dir():
        there = "a folder" if target.is_dir() else "a file"
        raise UserError(f"the output is a {kind} but {there} is there", target, "remove it or choose another path")
    if target.is_dir() and (held := _not_an_output(target)):
        raise UserError(f"the output is a folder that holds what no edgelm output holds ({held}); --force replaces a model folder, "
                        "an ONNX export or a bundle edgelm wrote, not any folder", target, "remove it yourself or choose another path")


# what each folder edgelm writes holds at its top: a model folder (init) config.json, an ONNX export
# genai_config.json and model.onnx, a bundle edgelm.json
OUTPUT_FOLDER_MARKERS = ("config.json", "genai_config.json", "model.onnx", "edgelm.json")
# the files of edgelm's folder outputs (model folder, ONNX export, mobile and web bundle), by suffix, and the names
# without one of those: a folder --force replaces holds nothing else, no subfolder and no hidden entry
OUTPUT_FILE_SUFFIXES = (".json", ".safetensors", ".model", ".onnx", ".data", ".onnx_data", ".ort", ".config", ".jinja", ".gguf",
                        ".html", ".js", ".mjs", ".wasm", ".LICENSE")  # .onnx_data: Optimum's external weights
OUTPUT_FILE_NAMES = ("merges.txt", "README.md")


def _not_an_output(folder: Path) -> str | None:
    """A few of the entries of `folder` no edgelm output holds, or a word that it holds no model, if --force is not to
    replace it: a stranger's --force deleted a folder holding a git repository and notes, and then (round 9) an app's
    folder holding a config.json, and a model folder's clone with its .git and notes."""
    try:
        entries = sorted(folder.iterdir())
    except OSError:  # unreadable: replacing it fails later, in one line
        return None
    foreign = [p.name + ("/" if p.is_dir() else "") for p in entries
               if p.name.startswith(".") or p.is_dir() or not (p.name.endswith(OUTPUT_FILE_SUFFIXES) or p.name in OUTPUT_FILE_NAMES)]
    if foreign:
        return ", ".join(foreign[:3]) + (", …" if len(foreign) > 3 else "")
    if entries and not any((folder / marker).is_file() for marker in OUTPUT_FOLDER_MARKERS):
        return "no config.json, genai_config.json, model.onnx or edgelm.json"
    return None


WRITING: dict[Path, Path] = {}  # each output being written: its temporary path → its lock file


class _Stops:
    """The stop signals (Ctrl-C, SIGTERM) this process received, counted by `stopped`, which the command
    line's handlers call. Python drops an exception its signal handler raises while a finalizer or a weakref
    callback runs ("Exception ignored in …"), and the interrupted code goes on: a stranger's Ctrl-C late in an
    export was dropped so, and the export wrote its output and exited 0. An atomic output that a stop
    arrived during is not renamed into place: the stop is raised again there."""

    count = 0
    last: type[BaseException] = KeyboardInterrupt


def stopped(kind: type[BaseException]) -> None:
    _Stops.count += 1
    _Stops.last = kind


def stops_taken() -> int:
    """How many stops the command line's handlers have taken (stops.py watches for one they have not)."""
    return _Stops.count


# the longest part of an output's name its hidden working files repeat: a file system takes 255 bytes a name, and
# ".NAME.partial-XXXXXXXX.lock" (or a certificate's rewrite of that partial) added up to 40 more to a name that fit
HIDDEN_STEM_BYTES = 120


def _hidden_stem(target: Path) -> str:
    return os.fsdecode(os.fsencode(target.name)[:HIDDEN_STEM_BYTES])


def hidden_prefix(target: Path, what: str) -> str:
    """The prefix of a hidden working file beside the output `target` (`what`: partial, f32, old). Files made
    beside the partial output (a certificate's rewrite, `..NAME.partial-X.certified-Y`) take its name whole: it is
    at most HIDDEN_STEM_BYTES + 18 bytes."""
    return f".{_hidden_stem(target)}.{what}-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync_tree(path: Path) -> None:
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    for file in files:
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())


# errors of the place written to, not of edgelm: a full disk, a quota, a file size limit; a read-only file system, permissions
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
WRITE_ERRNOS = DISK_FULL_ERRNOS | {errno.EROFS, errno.EACCES, errno.EPERM}


def write_failure(exc: BaseException) -> str | None:
    """Why writing failed, if the place written to failed it. Not every writer says so with an OSError's errno:
    numpy's tofile, with which gguf-py writes a tensor, reports a short write with none ("1048576 requested and
    423856 written"), and safetensors a SafetensorError ("I/O error: No space left on device (os error 28)"): a
    GGUF export and calibrate --write-checkpoint onto a full disk were tracebacks."""
    if isinstance(exc, OSError) and exc.errno is not None:
        return exc.strerror if exc.errno in WRITE_ERRNOS else None
    if isinstance(exc, OSError) and " requested and " in str(exc):
        return "the file system took only part of a write: a full disk or a file size limit"
    if type(exc).__name__ == "SafetensorError" and (code := re.search(r"\(os error (\d+)\)", str(exc))):
        return os.strerror(int(code[1])) if int(code[1]) in WRITE_ERRNOS else None
    return None


def _replace(tmp: Path, target: Path, force: bool) -> None:
    if not force:  # no clobbering, atomically: two exports to one new path both said "wrote" and the second won
        _rename_new(tmp, target)
    elif target.is_dir() and not target.is_symlink():
        old = Path(tempfile.mkdtemp(prefix=hidden_prefix(target, "old"), dir=target.parent))
        os.rename(target, old / target.name)
        os.rename(tmp, target)
        shutil.rmtree(old)
    else:
        os.replace(tmp, target)


def _rename_new(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target` unless something came there since the output was begun: a file by a hard link, which
    fails where the name exists (where links cannot be made, a check just before), a folder by rename, which
    fails onto a folder that is not empty."""
    appeared = UserError("output already exists: it was written while this command worked (another edgelm run?); this "
                         "output was not written", target, "choose another path or pass --force to replace it")
    try:
        if tmp.is_dir():
            os.rename(tmp, target)
            return
        try:
            os.link(tmp, target)
        except OSError as exc:
            if exc.errno == errno.EEXIST:
                raise
            if os.path.lexists(target):
                raise appeared from None
            os.rename(tmp, target)
            return
        os.unlink(tmp)
    except OSError as exc:
        if exc.errno in (errno.EEXIST, errno.ENOTEMPTY, errno.ENOTDIR, errno.EISDIR):
            raise appeared from None
        raise


def _hold(target: Path) -> tuple[int, Path]:
    """A lock held for as long as an output to `target` is being made (flock on a lock file of its own beside it,
    released when the process ends, however it ends), by which a later write to the same target tells a killed run's
    leftovers from a running one's files. Not a lock on the temporary output: the certificate's rewrite renames a
    new file over it."""
    fd, name = tempfile.mkstemp(prefix=hidden_prefix(target, "partial"), suffix=".lock", dir=target.parent)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd, Path(name)


def _leftovers(target: Path) -> list[Path]:
    """What a write to `target` makes beside it under a hidden name: the temporary output (`.NAME.partial-*`), the
    files made on the way to it (`.NAME.f32-*`, `..NAME.partial-*.certified-*`) and a replaced folder (`.NAME.old-*`)."""
    ours = re.compile(rf"\.\.?{re.escape(_hidden_stem(target))}\.(partial|f32|old)-")
    try:
        return [p for p in target.parent.iterdir() if ours.match(p.name)]
    except OSError:
        return []


def _remove_leftovers(target: Path) -> None:
    """Temporary outputs a killed run left beside `target` (SIGKILL or a power cut: nothing could remove them, and a
    stranger found 21 MB of hidden files next to their export), removed by the next write to the same target, unless
    a running process holds one of them: then they are that run's."""
    found = _leftovers(target)
    for lock in (p for p in found if p.name.endswith(".lock") and p.is_file() and not p.is_symlink()):
        try:
            fd = os.open(lock, os.O_RDONLY)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # an export to this target is running
        finally:
            os.close(fd)
    for path in found:
        if ".old-" in path.name and not os.path.lexists(target):  # killed between two renames: the old output is all there is
            continue
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def _temporary_dir(target: Path) -> Path:
    tmp = Path(tempfile.mkdtemp(prefix=hidden_prefix(target, "partial"), dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700; the result is an ordinary folder
    return tmp


def _temporary_file(target: Path) -> Path:
    fd, name = tempfile.mkstemp(prefix=hidden_prefix(target, "partial"), dir=target.parent)
    os.close(fd)
    os.chmod(name, 0o666 & ~_umask())  # mkstemp makes 0600; the result is an ordinary file
    return Path(name)


def _missing_parents(folder: Path) -> list[Path]:
    """The folders mkdir(parents=True) would make for `folder`, deepest first."""
    missing = []
    while not os.path.lexists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


@contextmanager
def _atomic(target: Path, force: bool, make_temporary, kind: str) -> Iterator[Path]:
    if not str(target) or not Path(target).name:  # '' and '/': typer makes `--out ''` the current folder
        raise UserError(f"{str(target)!r} is not a name for the output", None, "give the output's path")
    target = Path(os.path.abspath(target))  # '.', '..' and 'x/..' become the folders they name
    refuse_non_utf8(target, "output")
    refuse_long_names(target, "output")
    refuse_existing(target, force, kind)
    made = _missing_parents(target.parent)
    succeeded, stops, hold = False, _Stops.count, None
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(target)
        hold, lock = _hold(target)
        tmp = make_temporary(target)
        WRITING[tmp] = lock
    except OSError as exc:  # a parent that is a file, a read-only or missing mount, no permission
        if hold is not None:
            lock.unlink(missing_ok=True)
            os.close(hold)
        _remove_empty(made)
        blocking = next((p for p in [target.parent, *target.parent.parents] if p.exists() and not p.is_dir()), None)
        why = f"{blocking} is a file, not a folder" if blocking else exc.strerror
        raise UserError(f"cannot write here ({why})", target.parent, "choose an output in a folder you can write") from None
    try:
        yield tmp
        if _Stops.count != stops:  # a stop that reached no exception handler (above): the command is to end, unwritten
            raise _Stops.last
        if tmp.is_file() and not tmp.is_symlink():  # a writer that made the file again (safetensors' save_file: 0600,
            os.chmod(tmp, 0o666 & ~_umask())  # stranger 53's shared model folder unreadable to others) gets the usual mode
        _fsync_tree(tmp)
        _replace(tmp, target, force)
        succeeded = True
    except UserError as exc:  # a check of the output as made (the certificate opens it) names the temporary path
        if not os.path.lexists(tmp):
            raise _removed_meanwhile(target, kind) from None
        if exc.path is None or not (exc.path == tmp or tmp in exc.path.parents):
            raise
        raise UserError(f"{exc.what} (the output, checked before it was written; nothing was written)",
                        target / exc.path.relative_to(tmp), exc.fix) from None
    except Exception as exc:
        if not os.path.lexists(tmp):
            raise _removed_meanwhile(target, kind) from None
        if (why := write_failure(exc)) is None:
            raise
        raise WriteFailed(f"writing the output failed ({why}); no part of it was left behind", target,
                          "free some space or choose another output folder") from None
    finally:
        _discard(tmp, lock)
        WRITING.pop(tmp, None)
        os.close(hold)
        if not succeeded:
            _remove_empty(made)


def _removed_meanwhile(target: Path, kind: str) -> UserError:
    """The output's temporary file or folder was gone when writing failed: its folder was deleted (or the file removed)
    meanwhile. Stranger 54: an ONNX export's FileNotFoundError traceback, and a GGUF export blaming llama.cpp's quantizer."""
    return UserError(f"the output's temporary {kind} beside it was removed while it was written (its folder deleted?); nothing "
                     "was written", target.parent, "keep the output's folder in place while edgelm writes, and run it again")


def _discard(tmp: Path, lock: Path) -> None:
    if tmp.is_dir():
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        tmp.unlink(missing_ok=True)
    lock.unlink(missing_ok=True)


def discard_unfinished() -> None:
    """Remove every output still being written (its temporary file or folder and lock), for a process about to end
    without unwinding (stops.py: a stop the main thread cannot take while native code runs)."""
    for tmp, lock in list(WRITING.items()):
        _discard(tmp, lock)


def _remove_empty(folders: list[Path]) -> None:
    """A failed output leaves no folders it made for itself (deepest first; one that is not empty stays)."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def atomic_output_dir(target: Path, force: bool = False):
    """Yields an empty temporary folder beside `target`; it becomes `target` only if the block succeeds."""
    return _atomic(target, force, _temporary_dir, "folder")


def atomic_output_file(target: Path, force: bool = False):
    """Yields a temporary file path beside `target`; it becomes `target` only if the block succeeds."""
    return _atomic(target, force, _temporary_file, "file")


def refuse_overlap(target: Path, *sources: Path) -> None:
    """An output may not be, hold, or lie inside any of its inputs: --force replaces outputs, never inputs."""
    target = Path(target).resolve()
    for source in sources:
        source = Path(source).resolve()
        if target == source or source.is_relative_to(target) or target.is_relative_to(source):
            raise UserError(f"the output overlaps the input {source}", target, "write the output somewhere else")
