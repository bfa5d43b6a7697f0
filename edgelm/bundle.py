"""What a mobile app or a web page ships: a self-describing, checksummed folder (optionally zipped).

The artifact's format writes the model files (formats/*.bundle_into for a phone: an ONNX folder becomes
ONNX Runtime's mobile format plus its required-operators config, a GGUF is copied; web_bundle_into for a
browser: an ONNX export as it is); for the web target this module adds the page (edgelm/assets/web) and
the pinned onnxruntime-web and tokenizers.js files it runs on, so the folder works offline from any
static server. Both get the manifest `edgelm.json` — family, quantization, context length, sampling
defaults, the sha256 and size of every file, the edgelm version — and `verify_bundle` checks a bundle
against it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from . import __version__
from .constants import BUNDLE_MANIFEST, BUNDLE_SAMPLING_DEFAULTS, WEB_PAGE_FILES, WEB_RUNTIME_FILES
from .errors import UserError
from .fileio import atomic_output_dir, atomic_output_file, is_plain_name, refuse_overlap

MANIFEST_VERSION = 1
# a zip is read before anything is unpacked, and refused past these (a bundle is a model and a few configs)
MAX_FILES = 64
MAX_UNPACKED_BYTES = 64 << 30
MAX_MANIFEST_BYTES = 1 << 20
TARGETS = ("mobile", "web")
WEB_ASSETS = Path(__file__).parent / "assets" / "web"
# the web runtime: --web-runtime, else this variable, else a checkout's web/node_modules (`make web-runtime` installs
# the npm packages web/package.json pins); an installed edgelm has no checkout, and the error says the npm step
WEB_RUNTIME_ENV = "EDGELM_WEB_RUNTIME"
CHECKOUT_WEB = Path(__file__).resolve().parents[1] / "web"


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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
        return json.loads(package_json.read_text(encoding="utf-8")).get("version")
    except (OSError, ValueError, AttributeError):  # missing, not JSON or not UTF-8, not an object
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
    destination = out.with_suffix(".zip") if zip_it else out
    refuse_overlap(destination, artifact)
    runtime = web_runtime_folder(web_runtime)
    if not zip_it:
        with atomic_output_dir(destination, force) as tmp:
            _fill(fmt, tmp, target, runtime)
        return destination
    destination.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=destination.parent) as staging, atomic_output_file(destination, force) as zip_tmp:
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
    path = folder / BUNDLE_MANIFEST
    if not path.is_file():
        raise UserError(f"no {BUNDLE_MANIFEST} manifest", folder, "give a folder made by `edgelm bundle`")
    try:
        return check_manifest(json.loads(path.read_text(encoding="utf-8")), path)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"the manifest is not valid JSON ({exc})", path, "make the bundle again") from None


def _check_folder(folder: Path, manifest: dict) -> None:
    files = manifest["files"]
    extra = sorted(p.name for p in folder.iterdir() if p.name != BUNDLE_MANIFEST and p.name not in files)
    if extra:
        raise UserError(f"{extra[0]} is in the bundle but not in its manifest", folder,
                        "a bundle holds exactly what its manifest lists: remove it or make the bundle again")
    for name, entry in files.items():
        path = folder / name
        if path.is_symlink() or not path.is_file():
            raise UserError(f"{name} is missing", folder, "the bundle is incomplete: copy it again")
        if path.stat().st_size != entry["bytes"] or sha256(path) != entry["sha256"]:
            raise UserError(f"{name} does not match its sha256 in the manifest", path, "the file was changed or damaged: copy the bundle again")


def unpack_zip(bundle: Path, folder: Path) -> None:
    """The zip's directory and manifest are read and checked before anything is written."""
    try:
        archive = zipfile.ZipFile(bundle)
    except (zipfile.BadZipFile, OSError) as exc:
        raise UserError(f"not a readable zip ({exc})", bundle, "copy the bundle again") from None
    with archive:
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
        try:
            manifest = check_manifest(json.loads(archive.read(BUNDLE_MANIFEST)), bundle)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise UserError(f"the manifest is not valid JSON ({exc})", bundle, "make the bundle again") from None
        for entry in entries:
            expected = BUNDLE_MANIFEST if entry.filename == BUNDLE_MANIFEST else manifest["files"].get(entry.filename)
            if expected is None:
                raise UserError(f"{entry.filename} is in the archive but not in its manifest", bundle, "refused: make the bundle again")
            if expected != BUNDLE_MANIFEST and entry.file_size != expected["bytes"]:
                raise UserError(f"{entry.filename} would unpack to {entry.file_size} bytes, the manifest says {expected['bytes']}", bundle,
                                "refused: make the bundle again")
        total = sum(e.file_size for e in entries)
        if total > MAX_UNPACKED_BYTES:
            raise UserError(f"the archive would unpack to {total / 1e9:.1f} GB", bundle, "refused: make the bundle again")
        for entry in entries:  # zipfile stops a member at its declared size, which was checked above
            with archive.open(entry) as source, open(folder / entry.filename, "wb") as target:
                for block in iter(lambda: source.read(1 << 20), b""):
                    target.write(block)


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


def verify_bundle(bundle: Path) -> dict:
    """Every hash, no path leaving the bundle, and a load of the model; returns the manifest."""
    from .formats import bundled_format

    with unpacked(Path(bundle)) as folder:
        manifest = verify_folder(folder)
        bundled_format(folder, manifest)  # reads and validates the model's header
    return manifest
