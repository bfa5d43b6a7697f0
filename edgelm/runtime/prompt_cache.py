"""A saved system prompt (`chat --prompt-cache FILE`, as llama.cpp's --prompt-cache): the KV cache after
the system prompt and the chat template's preamble, written once and loaded at the next start, so the
first turn evaluates only its own tokens.

The file is safetensors (never pickle): the token ids the cache holds ("ids") and the backend's state
(runtime/backend.py `save_state`: its K/V arrays, or llama.cpp's sequence state as bytes), with metadata
naming the model it was made from (a fingerprint of the artifact's files) and the backend's cache form.
It is untrusted input: a file that is no prompt cache at all (another file named by mistake, random
bytes, a symlink, a folder) is refused, since writing would destroy it; one made for another model,
engine or system prompt, or damaged, is ignored with a note and rebuilt. Sizes are checked before
anything is read or handed to an engine: the header against a small bound, the file against what the
context's tokens can take, each array against the backend's layout (safetensors checks the offsets), and
the contents against the SHA-256 written with them (llama.cpp's state is bytes only llama.cpp parses: a
stranger's NaN written into its K rows loaded silently and the chat replied "the the the"), which covers the metadata
naming the model and engine too (stranger 53 relabelled another model's cache by its `model` field alone, and it
loaded). The SHA-256 finds damage and relabelling, not a forger, who can compute it again: such a file loads, and a NaN
it brings fails the turn naming the file (cli.chat). A prompt cache is trusted as its source is, as a model file is."""

from __future__ import annotations

import hashlib
import os
import stat
import struct
from dataclasses import dataclass
from pathlib import Path

from ..artifact_files import parse_json, read_bytes
from ..errors import UserError, WriteFailed, one_line, shown
from ..fileio import DISK_FULL_ERRNOS, hidden_prefix, refuse_long_names, refuse_non_utf8, write_failure
from .backend import Backend, StateMismatch

FORMAT = "edgelm prompt cache"
VERSION = "3"  # 2: the contents' SHA-256 in the metadata; 3: over what the metadata says they are too
HEADER_LIMIT = 1 << 20  # bytes of safetensors JSON header: ours is well under 1 KB
SAMPLE_BLOCKS, SAMPLE_BYTES = 64, 4096


def fingerprint(path: Path) -> str:
    """A SHA-256 over each file of the artifact (a file, or a folder's files): its name, size, first and
    last 64 KiB and SAMPLE_BLOCKS blocks spread through it. Hashing a 600 MB GGUF whole costs more than
    the prefill the cache saves; two models differ in their sizes, headers or weights, which these
    samples read."""
    from ..artifact_files import open_regular, regular_members

    digest = hashlib.sha256()
    files = [path] if path.is_file() else regular_members(path)
    for file in files:
        with open_regular(file, file.name) as handle:  # non-blocking, a regular file: checked on the descriptor
            size = os.fstat(handle.fileno()).st_size
            digest.update(f"{file.relative_to(path) if file != path else file.name}\0{size}\0".encode())
            offsets = sorted({0, max(size - 65536, 0), *(size * i // SAMPLE_BLOCKS for i in range(SAMPLE_BLOCKS))})
            for offset in offsets:
                handle.seek(offset)
                digest.update(handle.read(65536 if offset in (0, max(size - 65536, 0)) else SAMPLE_BYTES))
    return digest.hexdigest()


def contents_digest(arrays: dict, identity: dict[str, str]) -> str:
    """SHA-256 over the identity (format, version, model, backend) and the arrays (name, dtype, shape, bytes) in name
    order: what the file holds, whatever the order, and what it says it was made for."""
    import numpy as np

    digest = hashlib.sha256("".join(f"{key}\0{identity[key]}\0" for key in sorted(identity)).encode())
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}\0{array.dtype.str}\0{array.shape}\0".encode())
        digest.update(memoryview(array).cast("B"))
    return digest.hexdigest()


@dataclass
class PromptCache:
    """The file at `path` for the model at `model` run by `backend`."""

    path: Path
    model: Path
    backend: Backend

    def __post_init__(self) -> None:
        try:
            self.backend.state_signature()
        except StateMismatch:
            raise UserError(f"--prompt-cache: {type(self.backend).__name__} cannot save its KV cache", self.path,
                            "drop --prompt-cache, or run a GGUF or ONNX export of the model") from None
        check_path(self.path)
        model = self.model.resolve()
        if self.path.resolve() == model or self.path.resolve().is_relative_to(model):  # an output inside its input
            raise UserError("--prompt-cache lies inside the model's folder: a file there changes the artifact (`verify` fails it, "
                            "a bundle refuses it)", self.path, "give a path outside the model's folder")

    def _identity(self) -> dict[str, str]:
        if not hasattr(self, "_model_fingerprint"):  # once: the artifact does not change while it is open
            self._model_fingerprint = fingerprint(self.model)
        return {"format": FORMAT, "version": VERSION, "model": self._model_fingerprint, "backend": self.backend.state_signature()}

    def load(self, prefix: list[int]) -> str | None:
        """Load the saved cache into the backend where it was made for this model and backend and its
        tokens begin `prefix`; returns a note saying what happened (None: there is no file yet)."""
        if not self.path.exists():
            return None
        why = self._why_not(prefix)
        if why:
            self.backend.reset()
            return f"prompt cache {_shown(self.path)} ignored ({why}); it is written again"
        return f"prompt cache: loaded {self.backend.position} tokens from {_shown(self.path)}"

    def _why_not(self, prefix: list[int]) -> str | None:
        from safetensors import SafetensorError
        from safetensors.numpy import load

        check_path(self.path)  # between the start and now the file may have changed
        metadata, identity = _metadata(self.path), self._identity()
        for key, what in (("version", "another version of the format"),
                          ("model", "made for another model file: each artifact, even another export of the same model, keeps its own"),
                          ("backend", "made by another engine or cache type")):
            if metadata.get(key) != identity[key]:
                return what
        limit = 1024 + HEADER_LIMIT + self.backend.context_length * self.backend.state_bytes_per_position()
        if self.path.stat().st_size > limit:
            return f"{self.path.stat().st_size:,} bytes, more than a {self.backend.context_length}-token context takes"
        try:
            arrays = load(read_bytes(self.path, limit, "the prompt cache"))
        except (SafetensorError, ValueError, OSError) as exc:
            return f"damaged: {str(exc).splitlines()[0][:120]}"
        if metadata.get("sha256") != contents_digest(arrays, identity):
            return "damaged: its contents do not match the SHA-256 written with them"
        import numpy as np

        # a NaN or infinite key or value runs: the ggml executor printed newlines, ONNX and torch stopped on NaN
        # logits without naming this file (llama.cpp's state is opaque bytes, checked by llama.cpp)
        if any(a.dtype.kind == "f" and not np.isfinite(a).all() for name, a in arrays.items() if name != "ids"):
            return "damaged: its KV cache holds NaN or infinite values"
        ids = arrays.get("ids")
        if ids is None or ids.ndim != 1 or not len(ids) or len(ids) > len(prefix) or ids.tolist() != prefix[: len(ids)]:
            return "it holds another system prompt"
        try:
            self.backend.load_state(arrays)
        except StateMismatch as exc:
            self.backend.reset()
            return str(exc)
        return None

    def save(self) -> str:
        """Write the backend's cache (atomically: a temporary file beside the target, then renamed)."""
        from safetensors.numpy import save_file

        check_path(self.path)
        temporary = self.path.with_name(f"{hidden_prefix(self.path, 'partial')}{os.getpid()}.tmp")  # a 255-byte name fits
        try:
            state = self.backend.save_state()
            identity = self._identity()
            save_file(state, str(temporary), metadata=identity | {"sha256": contents_digest(state, identity)})
            os.replace(temporary, self.path)
        except Exception as exc:
            # room: safetensors' own error for any write failure, an OSError only for a full disk, quota or size limit
            why = write_failure(exc)
            if why is not None and (not isinstance(exc, OSError) or exc.errno in DISK_FULL_ERRNOS):
                raise WriteFailed(f"--prompt-cache could not be written ({why})", self.path, "free some space or give another path") from None
            if isinstance(exc, OSError):  # a folder there, no such folder, no permission: the path given
                raise UserError(f"--prompt-cache could not be written ({exc.strerror})", self.path, "give a writable path") from None
            raise
        finally:
            try:
                temporary.unlink(missing_ok=True)
            except OSError:  # a read-only file system: nothing was made (stranger 54: its EROFS hid the line above)
                pass
        return f"prompt cache: wrote {self.backend.position} tokens to {_shown(self.path)}"


def _shown(path: Path) -> str:
    """The path in a note line: escapes for bytes that are not UTF-8 and for a newline or terminal escape in its name."""
    return one_line(shown(path))


def check_path(given: str | Path) -> Path:
    """A --prompt-cache path as given, checked before any model loads: a file's name (not "", which typer made the
    current folder, nor one ending in a separator, which named a file `dir` for `dir/`), in an existing folder, and
    where it exists a regular file (not a symlink, folder, FIFO or device) holding a prompt cache: anything else would
    be read blind or overwritten. The path to use."""
    if isinstance(given, str) and (not given or given.endswith(("/", os.sep))):
        raise UserError(f"--prompt-cache {given!r} names no file", Path(given or "."), "give the path of a file (it is created if missing)")
    path = Path(given)
    refuse_non_utf8(path, "prompt cache")  # as every output's: a stranger's bad\xff.bin was written, exit 0
    refuse_long_names(path, "prompt cache")
    if not path.parent.is_dir():
        raise UserError("--prompt-cache: its folder does not exist", path, "give a path in an existing folder")
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISREG(mode):
        what = "a symlink" if stat.S_ISLNK(mode) else "a folder" if stat.S_ISDIR(mode) else "not a regular file"
        raise UserError(f"--prompt-cache is {what}", path, "give the path of a regular file (it is created if missing)")
    try:
        metadata = _metadata(path)
    except OSError as exc:  # /proc/self/mem is a "regular file" whose read fails: a traceback (stranger round 12b)
        raise UserError(f"cannot read the prompt cache ({exc.strerror})", path, "give the path of a prompt cache edgelm wrote, "
                        "or of a file to create") from None
    if metadata is None:
        raise UserError("--prompt-cache names a file that is not an edgelm prompt cache; it is left as it is", path,
                        "give another path, or delete the file")
    return path


def _metadata(path: Path) -> dict | None:
    """The safetensors header's __metadata__ where it is a prompt cache's, else None: read from the
    first bytes only, under HEADER_LIMIT."""
    with open(path, "rb") as handle:
        head = handle.read(8)
        if len(head) < 8:
            return None
        (length,) = struct.unpack("<Q", head)
        if not 2 <= length <= HEADER_LIMIT:
            return None
        try:  # bounded like every JSON a stranger wrote: '[' * 100000 was a RecursionError traceback
            header = parse_json(handle.read(length), path, "--prompt-cache's header", HEADER_LIMIT)
        except UserError:
            return None
    metadata = header.get("__metadata__") if isinstance(header, dict) else None
    return metadata if isinstance(metadata, dict) and metadata.get("format") == FORMAT else None


def start_from(path: Path, model: Path, backend: Backend, preamble: list[int]) -> str:
    """The backend's cache holding `preamble` at the start of a chat: already (the same chat), loaded from
    the file at `path`, or evaluated and written there. Returns what happened, as one line."""
    before = backend.evaluated
    if not preamble:
        return "prompt cache: nothing precedes the first user message in this chat template, so there is nothing to keep"
    if backend.cached_ids[: len(preamble)] == preamble:
        return f"prompt cache: {len(preamble)} tokens already in the KV cache"
    cache = PromptCache(path, model, backend)
    note = cache.load(preamble)
    if backend.cached_ids != preamble:
        backend.prefill(preamble)
        note = (f"{note}; " if note else "") + cache.save()
    return f"{note} ({backend.evaluated - before} evaluated)"
