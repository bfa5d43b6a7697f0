"""What a mobile app or a web page ships: a self-describing, checksummed folder (optionally zipped).

The artifact's format writes the model files (formats/*.bundle_into for a phone: an ONNX folder becomes
ONNX Runtime's mobile format plus its required-operators config, a GGUF is copied; web_bundle_into for a
browser: an ONNX export as it is); for the web target this module adds the page (edgelm/assets/web) and
the pinned onnxruntime-web and tokenizers.js files it runs on, so the folder works offline from any
static server. Both get the manifest `edgelm.json` — family, quantization, context length, sampling
defaults, the sha256 and size of every file, the edgelm version, the artifact's parity certificate
(certificate.py; null where it has none) — and `verify_bundle` checks a bundle against it.
"""

from __future__ import annotations

import json
import lzma
import os
import shutil
import tempfile
import zipfile
import zlib
from collections.abc import Callable
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .constants import BUNDLE_MANIFEST, BUNDLE_SAMPLING_DEFAULTS, WEB_PAGE_FILES, WEB_RUNTIME_FILES
from .errors import UserError
from .artifact_files import find_member, member, parse_json, read_json, read_json_object, sha256, user_file
from .fileio import WRITE_ERRNOS, atomic_output_dir, atomic_output_file, is_plain_name, refuse_overlap

MANIFEST_VERSION = 1
# a zip is read before anything is unpacked, and refused past these (a bundle is a model and a few configs)
MAX_FILES = 64
MAX_UNPACKED_BYTES = 64 << 30
MAX_MANIFEST_BYTES = 1 << 20
VERIFY_CONTEXT = 8  # the context verify opens the model with: one token goes through it
TARGETS = ("mobile", "web")
WEB_ASSETS = Path(__file__).parent / "assets" / "web"
# the web runtime: --web-runtime, else this variable, else a checkout's web/node_modules (`make web-runtime` installs
# the npm packages web/package.json pins); an installed edgelm has no checkout, and the error says the npm step
WEB_RUNTIME_ENV = "EDGELM_WEB_RUNTIME"
CHECKOUT_WEB = Path(__file__).resolve().parents[1] / "web"


def _web_files(fmt, folder: Path, runtime: Path) -> dict[str, Any]:
    """The model (the format's web_bundle_into), the page, and the runtime's files from `runtime`, a
    node_modules folder holding the pinned versions."""
    facts = fmt.web_bundle_into(folder)
    for name in WEB_PAGE_FILES:
        shutil.copy(WEB_ASSETS / name, folder / name)
    versions = {}
    for package, (version, files) in WEB_RUNTIME_FILES.items():
        found = _package_version(runtime / package / "package.json")
        if found != version:
            raise UserError(f"the web bundle runs on {package} {version}; {runtime} holds {found or 'none'}", runtime, _web_runtime_fix())
        for name in files:
            copied = f"{package.split('/')[-1]}.{name}" if name == "LICENSE" else Path(name).name
            shutil.copy(runtime / package / name, folder / copied)
        versions[package] = version
    return facts | {"name": fmt.path.name, "web_runtime": versions}


def web_runtime_folder(given: Path | None) -> Path:
    """The node_modules folder a web bundle copies its runtime from."""
    return given or (Path(os.environ[WEB_RUNTIME_ENV]) if os.environ.get(WEB_RUNTIME_ENV) else CHECKOUT_WEB / "node_modules")


def _web_runtime_fix() -> str:
    packages = " ".join(f"{name}@{version}" for name, (version, _) in WEB_RUNTIME_FILES.items())
    npm = f"`npm install --prefix DIR {packages}`, then pass --web-runtime DIR/node_modules or set {WEB_RUNTIME_ENV}=DIR/node_modules"
    return f"run `make web-runtime` (npm ci in web/), or {npm}" if (CHECKOUT_WEB / "package.json").is_file() else npm


def _package_version(package_json: Path) -> Any:
    """The version a package.json states; None for a missing or unreadable one (a folder the user named)."""
    try:
        return read_json_object(user_file(package_json, "--web-runtime", MAX_MANIFEST_BYTES, "package.json")).get("version")
    except UserError:  # missing, not JSON or not UTF-8, not an object
        return None


def _fill(fmt, folder: Path, target: str, web_runtime: Path) -> None:
    facts = fmt.bundle_into(folder) if target == "mobile" else _web_files(fmt, folder, web_runtime)
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())}
    manifest = {"manifest_version": MANIFEST_VERSION, "target": target} | facts | {
        "sampling_defaults": BUNDLE_SAMPLING_DEFAULTS, "files": files, "edgelm_version": __version__}
    (folder / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def make_bundle(artifact: Path, out: Path, zip_it: bool = False, force: bool = False, allow_desktop_only: bool = False,
                target: str = "mobile", web_runtime: Path | None = None) -> Path:
    from .formats import detect

    artifact, out = Path(artifact), Path(out)
    if target not in TARGETS:
        raise UserError(f"unknown --target {target!r}", None, f"choose one of {', '.join(TARGETS)}")
    fmt = detect(artifact)
    refusal = fmt.mobile_refusal() if target == "mobile" else None
    if refusal and not allow_desktop_only:
        raise UserError(f"no mobile runtime can load this: {refusal}", artifact,
                        "export a format phones run (e.g. an architecture llama.cpp knows, or ONNX), or pass --allow-desktop-only")
    if not out.name:  # typer makes `--out ''` the current folder
        raise UserError(f"--out {str(out)!r} is not a name for the bundle", None, "give the bundle's path")
    destination = out.with_suffix(".zip") if zip_it else out
    refuse_overlap(destination, artifact)
    runtime = web_runtime_folder(web_runtime)
    if not zip_it:
        with atomic_output_dir(destination, force) as tmp:
            _fill(fmt, tmp, target, runtime)
        return destination
    with atomic_output_file(destination, force) as zip_tmp, tempfile.TemporaryDirectory(dir=destination.parent) as staging:
        _fill(fmt, Path(staging), target, runtime)
        with zipfile.ZipFile(zip_tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(staging).iterdir()):
                archive.write(path, path.name)
    return destination


def check_manifest(manifest: Any, where: Path) -> dict:
    """The manifest's shape, before any file it names is opened."""
    def bad(what: str):
        raise UserError(f"the manifest is not valid: {what}", where, "make the bundle again with `edgelm bundle`")

    if not isinstance(manifest, dict):
        bad("not a JSON object")
    if manifest.get("manifest_version", MANIFEST_VERSION) != MANIFEST_VERSION:
        raise UserError(f"manifest_version {manifest.get('manifest_version')!r}; this edgelm reads version {MANIFEST_VERSION}", where,
                        "make the bundle again with this edgelm, or use the edgelm that made it")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        bad("'files' is not a table of files")
    for name, entry in files.items():
        if not is_plain_name(name):
            raise UserError(f"the manifest names {name!r}, outside the bundle", where, "files must stay inside the bundle: make it again")
        if not (isinstance(entry, dict) and isinstance(entry.get("sha256"), str) and isinstance(entry.get("bytes"), int)):
            bad(f"the entry of {name!r} needs a sha256 string and a bytes count")
    model = manifest.get("model")
    if not isinstance(model, str) or model not in files:
        bad(f"the model {model!r} is not one of the files it lists")
    return manifest


def _read_manifest(folder: Path) -> dict:
    path = find_member(folder, BUNDLE_MANIFEST, MAX_MANIFEST_BYTES, "the manifest")
    if path is None:
        raise UserError(f"no {BUNDLE_MANIFEST} manifest", folder, "give a folder made by `edgelm bundle`")
    return check_manifest(read_json(path, MAX_MANIFEST_BYTES, "the manifest"), path)


def _check_folder(folder: Path, manifest: dict) -> None:
    files = manifest["files"]
    extra = sorted(p.name for p in folder.iterdir() if p.name != BUNDLE_MANIFEST and p.name not in files)
    if extra:
        raise UserError(f"{extra[0]} is in the bundle but not in its manifest", folder,
                        "a bundle holds exactly what its manifest lists: remove it or make the bundle again")
    for name, entry in files.items():
        path = folder / name
        if path.is_symlink():  # a bundle is copied as plain files: a link in one was put there
            raise UserError(f"{name} is a link, not a file of the bundle", folder, "refused: copy the bundle again")
        member(folder, name, fix="the bundle is incomplete: copy it again")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise UserError(f"{name} does not match its sha256 in the manifest", path, "the file was changed or damaged: copy the bundle again")


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
                raise UserError(f"unpacking the bundle failed ({exc.strerror})", folder, "free some space in the temporary folder (TMPDIR)") from None
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise UserError(f"the archive cannot be read ({type(exc).__name__}: {first})", bundle, "copy the bundle again") from None


def _unpack_checked(archive: zipfile.ZipFile, bundle: Path, folder: Path) -> None:
    entries = archive.infolist()
    for entry in entries:
        if not is_plain_name(entry.filename):
            raise UserError(f"the archive holds {entry.filename!r}, outside the bundle", bundle, "refused: make the bundle again")
    names = [e.filename for e in entries]
    if len(entries) > MAX_FILES or len(set(names)) != len(names):
        raise UserError(f"the archive holds {len(entries)} entries ({len(set(names))} names); a bundle has at most {MAX_FILES}", bundle,
                        "refused: make the bundle again")
    if BUNDLE_MANIFEST not in names:
        raise UserError(f"no {BUNDLE_MANIFEST} manifest in the archive", bundle, "give a zip made by `edgelm bundle --zip`")
    info = archive.getinfo(BUNDLE_MANIFEST)
    if info.file_size > MAX_MANIFEST_BYTES:
        raise UserError(f"the manifest would unpack to {info.file_size} bytes", bundle, "refused: make the bundle again")
    manifest = check_manifest(parse_json(_read_entry(archive, info, MAX_MANIFEST_BYTES), bundle, "the manifest", MAX_MANIFEST_BYTES), bundle)
    for entry in entries:
        expected = BUNDLE_MANIFEST if entry.filename == BUNDLE_MANIFEST else manifest["files"].get(entry.filename)
        if expected is None:
            raise UserError(f"{entry.filename} is in the archive but not in its manifest", bundle, "refused: make the bundle again")
        if expected != BUNDLE_MANIFEST and entry.file_size != expected["bytes"]:
            raise UserError(f"{entry.filename} would unpack to {entry.file_size} bytes, the manifest says {expected['bytes']}", bundle,
                            "refused: make the bundle again")
    for entry in entries:
        if entry.flag_bits & 0x1:
            raise UserError(f"{entry.filename} is encrypted in the archive", bundle, "refused: make the bundle again without a password")
        if entry.file_size > RATIO_FLOOR_BYTES and entry.file_size > MAX_PACKING_RATIO * max(entry.compress_size, 1):
            raise UserError(f"{entry.filename} would unpack {entry.file_size / max(entry.compress_size, 1):.0f} times its packed size",
                            bundle, "refused as a zip bomb: make the bundle again")
    total = sum(e.file_size for e in entries)
    free = shutil.disk_usage(folder).free
    if total > MAX_UNPACKED_BYTES or total > free:
        raise UserError(f"the archive would unpack to {total / 1e9:.1f} GB ({free / 1e9:.1f} GB free where it unpacks)", bundle,
                        "refused: make the bundle again, or point TMPDIR at a larger disk")
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
        yield Path(folder)


def verify_folder(folder: Path) -> dict:
    """Every file's size and hash, nothing outside the manifest; returns the manifest."""
    manifest = _read_manifest(folder)
    _check_folder(folder, manifest)
    return manifest


def check_runs(model, name: str, where: Path, fix: str = "make the bundle again") -> None:
    """The model opened by the runtime that would run it, one token through it, finite logits out."""
    import numpy as np

    from .formats import LoadOptions

    with model.open(LoadOptions(context_length=VERIFY_CONTEXT)) as artifact:
        token = artifact.tokenizer.bos_id if artifact.tokenizer.bos_id is not None else 0
        logits = artifact.backend.prefill([token])
    if not logits.size or not np.isfinite(logits).all():
        raise UserError(f"{name} loads but one token through it gives no finite logits", where, fix)


def verify_bundle(bundle: Path, check: Callable[[Any], Any] | None = None) -> tuple[dict, dict, Any]:
    """Every hash, no path leaving the bundle, and the model opened by the runtime that would run it, one
    token through it; returns the manifest, what the model itself says it is (Format.identity), and
    what `check` (given the bundled Format, while the bundle is unpacked) returns."""
    from .formats import bundled_format

    with unpacked(Path(bundle)) as folder:
        manifest = verify_folder(folder)
        model = bundled_format(folder, manifest)
        identity = model.identity()
        model.check_bundled()  # what the app's own runtime needs (onnxruntime-genai for ONNX)
        check_runs(model, manifest["model"], folder)
        checked = check(model) if check else None
    return manifest, identity, checked
