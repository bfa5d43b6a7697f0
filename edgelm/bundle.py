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

import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from abc import abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar

from . import __version__
from .certificate import check_holds
from .constants import BUNDLE_MANIFEST, SAMPLING_DEFAULTS, WEB_PAGE_FILES, WEB_RUNTIME_FILES, WEB_RUNTIME_MAX_BYTES
from .errors import ArtifactMismatch, UserError
from .artifact_files import read_json_object, sha256, user_file
from .bundle_files import MANIFEST_VERSION, MAX_MANIFEST_BYTES, path_inside, unpacked, verify_folder
from .fileio import atomic_output_dir, atomic_output_file, refuse_overlap
from .registry import registrar

VERIFY_CONTEXT = 8  # the context verify opens the model with: one token goes through it
ZIP_TIME = (1980, 1, 1, 0, 0, 0)  # every entry's time in a bundle's zip: the earliest a zip records, as reproducible builds set it
WEB_ASSETS = Path(__file__).parent / "assets" / "web"
# the web runtime: --web-runtime, else this variable, else a checkout's web/node_modules (`make web-runtime` installs
# the npm packages web/package.json pins); an installed edgelm has no checkout, and the error says the npm step
WEB_RUNTIME_ENV = "EDGELM_WEB_RUNTIME"
CHECKOUT_WEB = Path(__file__).resolve().parents[1] / "web"


def _web_files(fmt, folder: Path, runtime: Path) -> dict[str, Any]:
    """The model (the format's web_bundle_into), the page, and the runtime's files from `runtime`, a
    node_modules folder holding the pinned versions."""
    wanted = ", ".join(f"{package} {version}" for package, (version, _) in WEB_RUNTIME_FILES.items())
    facts = fmt.web_bundle_into(folder)  # first: a GGUF was sent to install npm packages before hearing it takes an ONNX export
    if not runtime.is_dir() and runtime == CHECKOUT_WEB / "node_modules" and not (CHECKOUT_WEB / "package.json").is_file():
        # an installed edgelm: the default is a checkout's folder, a path inside site-packages that never exists (stranger 23)
        raise UserError(f"a web bundle copies its runtime ({wanted}) from an npm node_modules folder, which an installed edgelm "
                        "does not ship", None, _web_runtime_fix())
    for name in WEB_PAGE_FILES:
        shutil.copy(WEB_ASSETS / name, folder / name)
    versions = {}
    for package, (version, files) in WEB_RUNTIME_FILES.items():
        found = _package_version(runtime / package / "package.json")
        if found != version:
            raise UserError(f"the web bundle runs on {package} {version}; {runtime} holds {found or 'none'}", runtime, _web_runtime_fix())
        for name, pinned in files.items():
            copied = _bundled_name(package, name)
            given = runtime / package / name
            try:  # one bounded read of a regular file, hashed as it is written (a missing one was a traceback)
                data = user_file(given, "--web-runtime", WEB_RUNTIME_MAX_BYTES, name).read_bytes()
            except UserError as exc:
                raise UserError(f"{exc.what}: {runtime} is not an install of {package} {version}", given, _web_runtime_fix()) from None
            if hashlib.sha256(data).hexdigest() != pinned:
                raise UserError(f"not {package} {version}'s {name} (its sha256 differs from the published file's)", given, _web_runtime_fix())
            (folder / copied).write_bytes(data)
        versions[package] = version
    return facts | {"name": fmt.path.name, "web_runtime": versions}


def _bundled_name(package: str, name: str) -> str:
    """A runtime file's name in a web bundle (one folder): its own, a license prefixed with its package's."""
    return f"{package.split('/')[-1]}.{name}" if name == "LICENSE" else Path(name).name


def _check_web_files(folder: Path, manifest: dict) -> None:
    """A web bundle's page and runtime are the files edgelm writes: the page this edgelm's own (edgelm/assets/web), the
    runtime files the pinned ones (WEB_RUNTIME_FILES' sha256). The manifest's hashes are the bundle's own word: a
    stranger's `<script>` sending document.cookie away, added to index.html with the manifest's sha256 made again,
    passed verify and `edgelm serve` served it."""
    for name in WEB_PAGE_FILES:
        if sha256(folder / name) != sha256(WEB_ASSETS / name):
            raise ArtifactMismatch(f"{name} is not the page edgelm {__version__} writes", folder / name,
                                   "the page was changed after bundling (or by another edgelm version): make the bundle again with `edgelm bundle`")
    stated = manifest.get("web_runtime")
    if stated != {package: version for package, (version, _) in WEB_RUNTIME_FILES.items()}:
        raise ArtifactMismatch(f"the manifest states the web runtime {json.dumps(stated)[:120]}; edgelm {__version__} bundles "
                               + ", ".join(f"{p} {v}" for p, (v, _) in WEB_RUNTIME_FILES.items()), folder / BUNDLE_MANIFEST,
                               "make the bundle again with this edgelm")
    for package, (version, files) in WEB_RUNTIME_FILES.items():
        for name, pinned in files.items():
            if sha256(folder / _bundled_name(package, name)) != pinned:
                raise ArtifactMismatch(f"{_bundled_name(package, name)} is not {package} {version}'s published file", folder,
                                       "the runtime was changed after bundling: make the bundle again with `edgelm bundle`")


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


class BundleTarget:
    """What `--target NAME` ships: the model files (and any others) a runtime there needs, and the checks they get."""

    name: ClassVar[str]

    def refusal(self, fmt) -> str | None:
        """Why no runtime of this target loads the artifact (--allow-desktop-only bundles it anyway); None where one does."""
        return None

    def check_destination(self, destination: Path, runtime: Path) -> None:
        """Refuse an output that would replace what bundling reads."""

    @abstractmethod
    def fill(self, fmt, folder: Path, runtime: Path) -> dict[str, Any]:
        """Write the bundle's files into `folder`; the facts the manifest states about them."""

    def check_files(self, folder: Path, manifest: dict) -> None:
        """ArtifactMismatch where a file beyond the model is not what this edgelm writes."""

    def notes(self, written: Path, zipped: bool) -> tuple[str, list[str]]:
        """What to say after "wrote PATH" on its line, and the notes after it."""
        return "", []


BUNDLE_TARGETS: dict[str, BundleTarget] = {}
register_target = registrar(BUNDLE_TARGETS)


@register_target
class MobileTarget(BundleTarget):
    name = "mobile"

    def refusal(self, fmt):
        return fmt.mobile_refusal()

    def fill(self, fmt, folder, runtime):
        return fmt.bundle_into(folder)


@register_target
class WebTarget(BundleTarget):
    name = "web"

    def check_destination(self, destination, runtime):
        destination, runtime_at = Path(os.path.abspath(destination)), Path(os.path.abspath(runtime))
        if destination in (runtime_at, *runtime_at.parents):  # --force would replace the runtime the bundle copies from
            raise UserError(f"the output would replace the web runtime {runtime}", destination, "write the bundle somewhere else")
        if runtime_at in destination.parents:  # an npm folder is npm's: a bundle there is written among its packages (stranger 42)
            raise UserError(f"the output is inside the web runtime {runtime}", destination, "write the bundle somewhere else")

    def fill(self, fmt, folder, runtime):
        return _web_files(fmt, folder, runtime)

    def check_files(self, folder, manifest):
        _check_web_files(folder, manifest)

    def notes(self, written, zipped):
        notes = []
        if not zipped and "int4" in str(read_json_object(written / BUNDLE_MANIFEST).get("quantization")).split("+"):
            notes.append("int4 runs on WebGPU; on WASM (browsers without a GPU) onnxruntime-web has no int4 kernel and dequantizes "
                         "every weight at every step (a 1.1B model: ~20 s a token): for those, bundle an int8 export (docs/web.md)")
        return f" (serve it with `edgelm serve {written}` and open the address it prints)", notes


def bundle_target(name: str) -> BundleTarget:
    if name not in BUNDLE_TARGETS:
        raise UserError(f"unknown --target {name!r}", None, f"choose one of {', '.join(BUNDLE_TARGETS)}")
    return BUNDLE_TARGETS[name]


def _fill(fmt, folder: Path, target: BundleTarget, web_runtime: Path, desktop_only: str | None = None) -> None:
    facts = target.fill(fmt, folder, web_runtime)
    if desktop_only:  # --allow-desktop-only: said in the manifest an app reads, not only at bundling
        facts["desktop_only"] = desktop_only
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())}
    manifest = {"manifest_version": MANIFEST_VERSION, "target": target.name} | facts | {
        "sampling_defaults": fmt.stated_sampling() or SAMPLING_DEFAULTS, "files": files, "edgelm_version": __version__}
    (folder / BUNDLE_MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def make_bundle(artifact: Path, out: Path, zip_it: bool = False, force: bool = False, allow_desktop_only: bool = False,
                target: str = "mobile", web_runtime: Path | None = None) -> Path:
    from .formats import detect

    artifact, out, target = Path(artifact), Path(out), bundle_target(target)
    fmt = detect(artifact)
    check_holds(fmt)
    refusal = target.refusal(fmt)
    if refusal and not allow_desktop_only:
        raise UserError(f"no mobile runtime can load this: {refusal}", artifact,
                        "export a format phones run (e.g. an architecture llama.cpp knows, or ONNX), or pass --allow-desktop-only")
    if not out.name:  # typer makes `--out ''` the current folder
        raise UserError(f"--out {str(out)!r} is not a name for the bundle", None, "give the bundle's path")
    zip_it = zip_it or out.suffix.lower() == ".zip"  # `--out app.zip` means a zip (it made a folder named app.zip)
    # OUT.zip as asked: --out b.ZIP was written to b.zip, and --out app.v2 --zip to app.zip
    destination = out.with_name(out.name + ".zip") if zip_it and out.suffix.lower() != ".zip" else out
    refuse_overlap(destination, artifact)
    runtime = web_runtime_folder(web_runtime)
    target.check_destination(destination, runtime)
    if not zip_it:
        with atomic_output_dir(destination, force) as tmp:
            _fill(fmt, tmp, target, runtime, refusal)
            _check_made(tmp, artifact)
        return destination
    with atomic_output_file(destination, force) as zip_tmp, tempfile.TemporaryDirectory(dir=destination.parent) as staging:
        _fill(fmt, Path(staging), target, runtime, refusal)
        _check_made(Path(staging), artifact)
        with zipfile.ZipFile(zip_tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(staging).iterdir()):
                # the same files give the same archive: no time or owner's mode in it (stranger 42: two zips of one bundle
                # differed in their entries' times, so a publisher's sha256 could not be made again)
                entry = zipfile.ZipInfo(path.name, date_time=ZIP_TIME)
                entry.compress_type, entry.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
                with path.open("rb") as source, archive.open(entry, "w") as target:
                    shutil.copyfileobj(source, target, 1 << 20)
    return destination


def _check_made(folder: Path, artifact: Path) -> None:
    """The bundle just made, checked as `verify` checks one, before it is renamed into place: a bundle its
    runtime cannot load is refused now, not shipped (a stranger's tokenizer.json that no tokenizer reads was
    bundled with exit 0, and verify refused the bundle afterwards). A refusal names the file the user gave."""
    try:
        _check_folder(folder)
    except UserError as exc:
        if (inside := path_inside(exc, folder)) is None:
            raise
        source = artifact / inside if artifact.is_dir() and (artifact / inside).exists() else artifact
        raise UserError(f"the bundle made from it would not load: {exc.what}", source, "fix the artifact, or export it again") from None


def check_runs(model, name: str, where: Path, fix: str = "make the bundle again") -> None:
    """The model opened by the runtime that would run it, one token through it, finite logits out, and its chat
    template rendering a one-message conversation as `edgelm chat` renders it (a stranger's GGUF whose template
    always raised passed verify, and no chat could start on it)."""
    import numpy as np

    from .chat import Conversation
    from .formats import LoadOptions

    # within what the artifact states (an export --ctx-size 2 was refused for "a context of 8 tokens" it never asked for)
    with model.open(LoadOptions(context_length=min(VERIFY_CONTEXT, model.stated_context() or VERIFY_CONTEXT))) as artifact:
        token = artifact.tokenizer.bos_id if artifact.tokenizer.bos_id is not None else 0
        logits = artifact.backend.prefill([token])
        Conversation(artifact.tokenizer, context_length=1 << 20, reply_budget=1)  # renders a one-message conversation
    if not logits.size or not np.isfinite(logits).all():
        raise UserError(f"{name} loads but one token through it gives no finite logits", where, fix)


def verify_bundle(bundle: Path, check: Callable[[Any], Any] | None = None) -> tuple[dict, dict, Any]:
    """Every hash, no path leaving the bundle, and the model opened by the runtime that would run it, one
    token through it; returns the manifest, what the model itself says it is (Format.identity), and
    what `check` (given the bundled Format, while the bundle is unpacked) returns."""
    with unpacked(Path(bundle)) as folder:
        manifest, model, identity = _check_folder(folder)
        checked = check(model) if check else None
    return manifest, identity, checked


def _check_folder(folder: Path) -> tuple[dict, Any, dict]:
    """A bundle folder's hashes and files against its manifest, what its model says it is, the model in what
    the app's own runtime needs (onnxruntime-genai for ONNX) and one token through the runtime that would run it."""
    from .formats.bundle import bundled_format, check_manifest_facts

    manifest = verify_folder(folder)
    if (target := BUNDLE_TARGETS.get(manifest.get("target"))) is not None:
        target.check_files(folder, manifest)
    model = bundled_format(folder, manifest)
    identity = model.identity()
    check_manifest_facts(manifest, model, folder)
    if (app_runtime := model.check_bundled()) is not None:
        identity["app_runtime"] = app_runtime
    check_runs(model, manifest["model"], folder)
    return manifest, model, identity
