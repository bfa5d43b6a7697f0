"""What a mobile app ships: a self-describing, checksummed folder (optionally zipped).

ONNX: the model converted to ONNX Runtime's mobile format (`model.ort`, by onnxruntime's own
converter), the required-operators config it writes for a reduced-size onnxruntime build,
genai_config.json (pointing at model.ort) and the tokenizer files. GGUF: the .gguf file. Both: a
manifest `edgelm.json` with family, quantization, context length, sampling defaults, the sha256 of every
file and the edgelm version. `verify_bundle` checks every hash and loads the bundle.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from . import __version__
from .errors import UserError
from .fileio import atomic_output_dir, atomic_output_file
from .tokenizer import TOKENIZER_FILES

MANIFEST = "edgelm.json"
SAMPLING_DEFAULTS = {"temperature": 0.7, "top_k": 40, "top_p": 0.95}


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _onnx_files(source: Path, folder: Path) -> dict:
    from .runtime.onnx_backend import read_onnx_folder

    genai, manifest = read_onnx_folder(source)
    model = source / genai["model"]["decoder"]["filename"]
    shutil.copy(model, folder / "model.onnx")
    subprocess.run(
        [sys.executable, "-m", "onnxruntime.tools.convert_onnx_models_to_ort", str(folder / "model.onnx"),
         "--output_dir", str(folder), "--optimization_style", "Fixed"],
        check=True, capture_output=True, text=True,
    )
    (folder / "model.onnx").unlink()
    configs = list(folder.glob("*.required_operators.config")) + list(folder.glob("required_operators.config"))
    for config in configs:
        config.rename(folder / "required_operators.config")
    genai["model"]["decoder"]["filename"] = "model.ort"
    (folder / "genai_config.json").write_text(json.dumps(genai, indent=2) + "\n")
    for name in TOKENIZER_FILES:
        if (source / name).is_file():
            shutil.copy(source / name, folder / name)
    return {"format": "onnx (ORT mobile format)", "family": manifest["family"], "quantization": manifest["quantization"],
            "context_length": genai["model"]["context_length"], "model": "model.ort"}


def _gguf_files(source: Path, folder: Path) -> dict:
    from .runtime.gguf_file import open_gguf

    gguf = open_gguf(source)
    family, spec = gguf.edgelm_model()
    shutil.copy(source, folder / source.name)
    from gguf import LlamaFileType

    file_type = LlamaFileType(gguf.field("general.file_type")).name.removeprefix("MOSTLY_")
    return {"format": "gguf", "family": family.name, "quantization": file_type, "context_length": spec.max_positions,
            "model": source.name, "arch": gguf.arch}


def _fill(collect, artifact: Path, folder: Path) -> None:
    facts = collect(artifact, folder)
    files = {p.name: {"sha256": sha256(p), "bytes": p.stat().st_size} for p in sorted(folder.iterdir())}
    manifest = facts | {"sampling_defaults": SAMPLING_DEFAULTS, "files": files, "edgelm_version": __version__}
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")


def make_bundle(artifact: Path, out: Path, zip_it: bool = False, force: bool = False) -> Path:
    artifact, out = Path(artifact), Path(out)
    if artifact.suffix == ".gguf" and artifact.is_file():
        collect = _gguf_files
    elif artifact.is_dir() and (artifact / "genai_config.json").is_file():
        collect = _onnx_files
    else:
        raise UserError("not an exported artifact", artifact, "bundle a .gguf file or an ONNX folder from `edgelm export`")
    if not zip_it:
        with atomic_output_dir(out, force) as tmp:
            _fill(collect, artifact, tmp)
        return out
    target = out.with_suffix(".zip")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as staging, atomic_output_file(target, force) as zip_tmp:
        _fill(collect, artifact, Path(staging))
        with zipfile.ZipFile(zip_tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(Path(staging).iterdir()):
                archive.write(path, path.name)
    return target


def _outside(name: str) -> bool:
    pure = PurePosixPath(name.replace("\\", "/"))
    return pure.is_absolute() or ".." in pure.parts or Path(name).is_absolute()


def verify_bundle(bundle: Path) -> dict:
    """Every file's hash, no path leaving the bundle, and a load of the model; returns the manifest.
    A .zip is checked for names leaving it, then unpacked to a temporary folder and verified there."""
    bundle = Path(bundle)
    if bundle.suffix == ".zip" and bundle.is_file():
        with zipfile.ZipFile(bundle) as archive, tempfile.TemporaryDirectory() as folder:
            bad = [n for n in archive.namelist() if _outside(n)]
            if bad:
                raise UserError(f"the archive holds {bad[0]!r}, outside the bundle", bundle, "refused: make the bundle again")
            archive.extractall(folder)
            return verify_bundle(Path(folder))
    manifest_path = bundle / MANIFEST
    if not manifest_path.is_file():
        raise UserError("no edgelm.json manifest", bundle, "give a folder made by `edgelm bundle`")
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        raise UserError(f"the manifest is not valid ({exc})", manifest_path, "make the bundle again") from None
    for name in files:  # every name first: nothing outside the bundle is even opened
        if _outside(name):
            raise UserError(f"the manifest names {name!r}, outside the bundle", manifest_path, "files must stay inside the bundle: make it again")
    for name, entry in files.items():
        path = bundle / name
        if not path.is_file():
            raise UserError(f"{name} is missing", bundle, "the bundle is incomplete: copy it again")
        if sha256(path) != entry["sha256"]:
            raise UserError(f"{name} does not match its sha256 in the manifest", path, "the file was changed or damaged: copy the bundle again")
    if manifest.get("format") == "gguf":
        from .runtime.gguf_file import open_gguf

        open_gguf(bundle / manifest["model"]).edgelm_model()
    else:
        from .runtime.onnx_backend import session_for

        session_for(bundle / manifest["model"], 1, "cpu")
    return manifest
