"""Reading a bundle: its manifest checked, its files checked against it, a zip unpacked with every
limit checked first. The bundle format (formats/bundle.py) opens bundles through it and the bundle
maker (bundle.py) checks what it made, so neither imports the other.
"""

from __future__ import annotations

import lzma
import os
import shutil
import tempfile
import zipfile
import zlib
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from .artifact_files import find_member, member, parse_json, read_bytes, sha256
from .constants import BUNDLE_MANIFEST, GGUF_CONTEXT_LIMIT as MAX_CONTEXT
from .errors import ArtifactMismatch, RepeatedKey, UserError, WriteFailed
from .fileio import WRITE_ERRNOS, is_plain_name
from .numbers import SAMPLING_NAMES, is_count, stated_sampling

MANIFEST_VERSION = 1
# a zip is read before anything is unpacked, and refused past these (a bundle is a model and a few configs)
MAX_FILES = 64
MAX_UNPACKED_BYTES = 64 << 30
MAX_MANIFEST_BYTES = 1 << 20


def check_manifest(manifest: Any, where: Path) -> dict:
    """The manifest's shape, before any file it names is opened."""
    def bad(what: str):
        raise UserError(f"the manifest is not valid: {what}", where, "make the bundle again with `edgelm bundle`")

    if not isinstance(manifest, dict):
        bad("not a JSON object")
    version = manifest.get("manifest_version", MANIFEST_VERSION)
    if version != MANIFEST_VERSION or not is_count(version):  # True == 1
        raise UserError(f"manifest_version {manifest.get('manifest_version')!r}; this edgelm reads version {MANIFEST_VERSION}", where,
                        "make the bundle again with this edgelm, or use the edgelm that made it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        bad("'files' is not a table of files")
    for name, entry in files.items():
        if not is_plain_name(name):
            raise UserError(f"the manifest names {name!r}, outside the bundle", where, "files must stay inside the bundle: make it again")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and "bytes" in entry):
            bad(f"the entry of {name!r} needs a sha256 string and a bytes count")
        if not is_count(entry["bytes"]):  # -5 was reported as a sha256 mismatch, true was a count of 1
            bad(f"the entry of {name!r} says its size is {entry['bytes']!r} bytes, not a count of 0 or more")
    model = manifest.get("model")
    if not isinstance(model, str) or model not in files:
        bad(f"the model {model!r} is not one of the files it lists")
    # what an app reads from it, through the gates edgelm's own options have (NaN, -1 and 2^62 passed verify)
    sampling = manifest.get("sampling_defaults", {})
    if not isinstance(sampling, dict) or (problem := stated_sampling(sampling)[1]):
        bad(f"its sampling_defaults: {problem if isinstance(sampling, dict) else 'not a table'}")
    if unknown := sorted(set(sampling) - set(SAMPLING_NAMES)):  # a stray "seed" or "foo" was a TypeError traceback in chat
        bad(f"its sampling_defaults name {str(unknown[0])[:40]!r}, not one of {', '.join(SAMPLING_NAMES)}")
    if "context_length" in manifest and not (is_count(manifest["context_length"], 1) and manifest["context_length"] <= MAX_CONTEXT):
        bad(f"its context_length {str(manifest['context_length'])[:40]} is not a count from 1 to {MAX_CONTEXT:,}")
    return manifest


def _read_manifest(folder: Path) -> dict:
    path = find_member(folder, BUNDLE_MANIFEST, MAX_MANIFEST_BYTES, "the manifest")
    if path is None:
        raise UserError(f"no {BUNDLE_MANIFEST} manifest", folder, "give what `edgelm export` made (a .gguf file, an ONNX folder) "
                        f"or `edgelm bundle` made: a folder without {BUNDLE_MANIFEST} (a model folder, another tool's ONNX export, "
                        "a bundle whose manifest was removed) carries no parity certificate to verify")
    return parse_manifest(read_bytes(path, MAX_MANIFEST_BYTES, "the manifest"), path)


def parse_manifest(raw: bytes, where: Path) -> dict:
    try:
        return check_manifest(parse_json(raw, where, "the manifest", MAX_MANIFEST_BYTES), where)
    except RepeatedKey as exc:  # a file listed twice: not the bundle its manifest was written for
        raise ArtifactMismatch(exc.what, exc.path, "the manifest was changed after bundling: make the bundle again with `edgelm bundle`") from None


def _check_folder(folder: Path, manifest: dict) -> None:
    files = manifest["files"]
    extra = sorted(p.name for p in folder.iterdir() if p.name != BUNDLE_MANIFEST and p.name not in files)
    if extra:
        raise ArtifactMismatch(f"{extra[0]} is in the bundle but not in its manifest", folder,
                        "a bundle holds exactly what its manifest lists: remove it or make the bundle again")
    for name, entry in files.items():
        path = folder / name
        if path.is_symlink():  # a bundle is copied as plain files: a link in one was put there
            raise ArtifactMismatch(f"{name} is a link, not a file of the bundle", folder, "refused: copy the bundle again")
        if not path.exists():  # a bundle short of what its manifest lists fails verify as a changed file does (stranger 42: exit 2)
            raise ArtifactMismatch(f"{name} is in the manifest but not in the bundle", folder, "the bundle is incomplete: copy it again")
        member(folder, name, fix="the bundle is incomplete: copy it again")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise ArtifactMismatch(f"{name} does not match its sha256 in the manifest", path, "the file was changed or damaged: copy the bundle again")


# zip read errors: a bad CRC (BadZipFile), an encrypted entry (RuntimeError), an unknown compression method
# (NotImplementedError), a corrupt deflate or bzip2/lzma stream (zlib.error, OSError, EOFError, LZMAError)
ZIP_READ_ERRORS = (zipfile.BadZipFile, RuntimeError, NotImplementedError, zlib.error, EOFError, OSError, ValueError, lzma.LZMAError)
MAX_PACKING_RATIO = 100  # deflate reaches ~1000:1 on zeros; weights pack ~1.1:1, JSON and tokenizers ~5:1
RATIO_FLOOR_BYTES = 1 << 20  # entries this small unpack without the ratio check


def unpack_zip(bundle: Path, folder: Path) -> None:
    """The zip's directory and manifest are read and checked before anything is written; the bytes written
    are counted, against the manifest, the entry's packed size and the free space."""
    try:
        archive = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise UserError(f"not a readable zip ({exc})", bundle, "copy the bundle again") from None
    with archive:
        try:
            _unpack_checked(archive, bundle, folder)
        except UserError:
            raise
        except ZIP_READ_ERRORS as exc:
            if isinstance(exc, OSError) and exc.errno in WRITE_ERRNOS:
                raise WriteFailed(f"unpacking the bundle failed ({exc.strerror})", folder, "free some space in the temporary folder (TMPDIR)") from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the archive cannot be read ({type(exc).__name__}: {first})", bundle, "copy the bundle again") from None


def _unpack_checked(archive: zipfile.ZipFile, bundle: Path, folder: Path) -> None:
    entries = archive.infolist()
    for entry in entries:
        if not is_plain_name(entry.filename):
            parts = entry.filename.replace("\\", "/").split("/")
            # a name that climbs out or starts at a root leaves the bundle; a folder inside it (a/b/c/) is not a bundle's
            # file (stranger 42: that was "outside the bundle" too)
            where = "outside the bundle" if ".." in parts or entry.filename.startswith(("/", "\\")) or ":" in parts[0] else \
                "not a file at the top of the bundle (a bundle is one folder of files)"
            raise UserError(f"the archive holds {entry.filename!r}, {where}", bundle, "refused: make the bundle again")
    names = [e.filename for e in entries]
    if len(entries) > MAX_FILES:
        raise UserError(f"the archive holds {len(entries)} entries; a bundle has at most {MAX_FILES}", bundle,
                        "refused: make the bundle again")
    if twice := sorted({name for name in names if names.count(name) > 1}):  # which copy an unzipper keeps differs
        raise ArtifactMismatch(f"the archive holds {', '.join(map(repr, twice))} more than once", bundle, "refused: make the bundle again")
    if BUNDLE_MANIFEST not in names:
        raise UserError(f"no {BUNDLE_MANIFEST} manifest in the archive", bundle, "give a zip made by `edgelm bundle --zip`")
    # the file is the archive and nothing else: zipfile reads past bytes before the first entry or after the end record
    # (a stranger's bundle with 1,000 bytes prepended or appended passed verify: one file, a bundle and something else)
    with open(bundle, "rb") as handle:
        head, _ = handle.read(4), handle.seek(-22, os.SEEK_END)
        tail = handle.read(22)
    if head != b"PK\x03\x04" or min((e.header_offset for e in entries), default=0) != 0 or tail[:4] != b"PK\x05\x06" or tail[-2:] != b"\0\0":
        raise ArtifactMismatch("the file holds bytes before or after its zip archive", bundle,
                               "refused: give the zip `edgelm bundle --zip` made, as it made it")
    info = archive.getinfo(BUNDLE_MANIFEST)
    if info.file_size > MAX_MANIFEST_BYTES:
        raise UserError(f"the manifest would unpack to {info.file_size} bytes", bundle, "refused: make the bundle again")
    manifest = parse_manifest(_read_entry(archive, info, MAX_MANIFEST_BYTES), bundle)
    for entry in entries:
        expected = BUNDLE_MANIFEST if entry.filename == BUNDLE_MANIFEST else manifest["files"].get(entry.filename)
        if expected is None:
            raise ArtifactMismatch(f"{entry.filename} is in the archive but not in its manifest", bundle, "refused: make the bundle again")
        if expected != BUNDLE_MANIFEST and entry.file_size != expected["bytes"]:
            raise ArtifactMismatch(f"{entry.filename} would unpack to {entry.file_size} bytes, the manifest says {expected['bytes']}", bundle,
                            "refused: make the bundle again")
    for entry in entries:
        if entry.flag_bits & 0x1:
            raise UserError(f"{entry.filename} is encrypted in the archive", bundle, "refused: make the bundle again without a password")
        if entry.file_size > RATIO_FLOOR_BYTES and entry.file_size > MAX_PACKING_RATIO * max(entry.compress_size, 1):
            raise UserError(f"{entry.filename} would unpack {entry.file_size / max(entry.compress_size, 1):.0f} times its packed size",
                            bundle, "refused as a zip bomb: make the bundle again")
    total = sum(e.file_size for e in entries)
    free = shutil.disk_usage(folder).free
    if total > MAX_UNPACKED_BYTES:
        raise UserError(f"the archive would unpack to {total / 1e9:.1f} GB, past the {MAX_UNPACKED_BYTES / 1e9:.0f} GB a bundle may hold",
                        bundle, "refused: make the bundle again")
    if total > free:  # the bundle is fine: the place it unpacks is not (a stranger's 1 MB TMPDIR read "0.0 GB … make the bundle again")
        raise WriteFailed(f"the archive unpacks to {total / 1e6:,.1f} MB and {folder.parent} has {free / 1e6:,.1f} MB free", bundle,
                          "free some space there, or point TMPDIR at a larger disk")
    for entry in entries:
        with open(folder / entry.filename, "wb") as target:  # an output: a fresh private folder
            for block in _entry_blocks(archive, entry, entry.file_size):
                target.write(block)


def _entry_blocks(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limit: int):
    """An entry's bytes, counted as they come: past `limit` (what the directory declared) is refused."""
    written = 0
    with archive.open(entry) as source:
        for block in iter(lambda: source.read(1 << 20), b""):
            written += len(block)
            if written > limit:
                raise UserError(f"{entry.filename} unpacks past the {limit} bytes the archive declares", Path(archive.filename or ""),
                                "refused: make the bundle again")
            yield block


def _read_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, limit: int) -> bytes:
    return b"".join(_entry_blocks(archive, entry, min(limit, entry.file_size)))


@contextmanager
def unpacked(bundle: Path):
    """The bundle's folder: the folder itself, or a zip unpacked into a temporary one for the block."""
    if bundle.is_dir():
        yield bundle
        return
    with tempfile.TemporaryDirectory() as folder:
        unpack_zip(bundle, Path(folder))
        with errors_named_for(Path(folder), bundle):  # verify named /tmp/tmpXXXX for a zip's missing model (a stranger's finding)
            yield Path(folder)


def path_inside(exc: UserError, folder: Path) -> Path | None:
    """Where in `folder` a one-line error points (relative; "." for the folder itself), None when it names
    no path there: a refusal about a temporary folder is re-pointed to the path the user gave."""
    if exc.path is None or not (exc.path == folder or folder in exc.path.parents):
        return None
    return exc.path.relative_to(folder)


@contextmanager
def errors_named_for(folder: Path, given: Path):
    """A one-line error about a file in `folder` (a zip's temporary unpacking) re-pointed to `given`, the zip the user
    gave, naming the file inside it."""
    try:
        yield
    except UserError as exc:
        if folder == given or (inside := path_inside(exc, folder)) is None:
            raise
        raise type(exc)(f"{exc.what} (its {inside.as_posix()})" if inside != Path(".") else exc.what, given, exc.fix) from None


def verify_folder(folder: Path) -> dict:
    """Every file's size and hash, nothing outside the manifest; returns the manifest."""
    manifest = _read_manifest(folder)
    _check_folder(folder, manifest)
    return manifest
