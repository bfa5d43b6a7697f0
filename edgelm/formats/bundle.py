"""A bundle from `edgelm bundle` (folder or .zip): verified against its manifest, then opened as the
format it holds. A zip is unpacked into a temporary folder that lives as long as the opened artifact."""

from __future__ import annotations

import json
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from ..artifact_files import find_member, read_json_object
from ..bundle_files import MAX_MANIFEST_BYTES, errors_named_for, unpack_zip, unpacked, verify_folder
from ..constants import BUNDLE_MANIFEST, PARITY_CERTIFICATE, SAMPLING_DEFAULTS
from ..errors import ArtifactMismatch, UserError
from .base import FORMATS, Artifact, Format, LoadOptions, register


def _is_bundle_folder(path: Path) -> bool:
    """A folder holding an edgelm.json with a `files` list (an ONNX export's edgelm.json has none) — or one
    whose edgelm.json cannot be read within a manifest's bounds: that folder is claimed, so the bundle reader
    refuses it in one line. Unclaimed, it ran as the ONNX folder around it with every checksum skipped (a
    stranger padded a tampered bundle's manifest past 1 MiB: verify said ok)."""
    try:
        manifest = find_member(path, BUNDLE_MANIFEST, MAX_MANIFEST_BYTES)
        return manifest is not None and "files" in read_json_object(manifest)
    except UserError:
        return True


def bundled_format(folder: Path, manifest: dict) -> Format:
    """The format inside a verified bundle folder: the first (other than a bundle) that claims the model
    file or the folder."""
    for candidate in (folder / manifest["model"], folder):
        for cls in FORMATS:
            if cls.bundled and cls.detect(candidate):
                return cls(candidate)
    raise UserError(f"the bundle's model {manifest['model']} is of no format edgelm reads", folder, "make the bundle again")


def _sampling(values: dict) -> dict:
    """Sampling as it runs: what a file leaves out, filled as chat fills it."""
    return {"repetition_penalty": 1.0, "min_p": 0.0} | SAMPLING_DEFAULTS | values


def check_manifest_facts(manifest: dict, model, folder: Path) -> None:
    """Every fact the manifest states that the bundled model's files state too — its sampling (a GGUF's general.sampling.*,
    genai_config's search), family, quantization, context, certificate — must be theirs: a manifest edited after
    bundling passed verify, and chat sampled with its forged temperature while apps on the same files did not."""
    stated = model.bundled_facts() | {"sampling_defaults": _sampling(model.stated_sampling() or SAMPLING_DEFAULTS)}
    said = manifest | {"sampling_defaults": _sampling(manifest.get("sampling_defaults") or {})}
    for key, value in stated.items():
        if said.get(key) == value:
            continue
        if key == PARITY_CERTIFICATE:
            shown, theirs = "a parity certificate", "another one"
        elif isinstance(value, dict) and isinstance(said.get(key), dict):
            differing = sorted(name for name in value.keys() | said[key].keys() if said[key].get(name) != value.get(name))
            shown = f"{key} " + ", ".join(f"{name} {json.dumps(said[key].get(name))}" for name in differing)
            theirs = ", ".join(f"{name} {json.dumps(value.get(name))}" for name in differing)
        else:
            shown, theirs = f"{key} {json.dumps(said.get(key))[:60]}", json.dumps(value)[:60]
        raise ArtifactMismatch(f"the manifest states {shown}; the bundled {manifest['model']} says {theirs}", folder / BUNDLE_MANIFEST,
                        "the manifest was changed after bundling: make the bundle again with `edgelm bundle`")


@register
class Bundle(Format):
    kind = "bundle"
    noun = "a bundle"
    bundled = False
    _opened: Format | None = None  # the bundled model's format, once open() has unpacked it

    @classmethod
    def detect(cls, path: Path) -> bool:
        if path.is_dir():
            return _is_bundle_folder(path)
        return path.is_file() and (path.suffix == ".zip" or zipfile.is_zipfile(path))

    def _inside(self, folder: Path) -> tuple[dict, Format]:
        manifest = verify_folder(folder)
        inner = bundled_format(folder, manifest)
        check_manifest_facts(manifest, inner, folder)
        return manifest, inner

    def open(self, options: LoadOptions) -> Artifact:
        cleanups = []
        folder = self.path
        if not self.path.is_dir():
            scratch = tempfile.TemporaryDirectory(prefix="edgelm-bundle-")
            cleanups.append(scratch.cleanup)
            try:
                unpack_zip(self.path, Path(scratch.name))
            except BaseException:
                scratch.cleanup()
                raise
            folder = Path(scratch.name)
        try:
            with errors_named_for(folder, self.path):
                manifest, inner = self._inside(folder)
                artifact = inner.open(options)
        except BaseException:
            for cleanup in cleanups:
                cleanup()
            raise
        artifact.path, artifact.format = self.path, self
        self._opened = inner
        artifact.details |= {"bundle": {k: manifest.get(k) for k in ("format", "quantization", "edgelm_version")}}
        artifact.cleanups += cleanups
        return artifact

    def _recorded(self, fact: str) -> Any:
        """The bundled model's `fact`, read from the copy an open artifact runs (a zip is unpacked once)."""
        if self._opened is not None:
            return getattr(self._opened, fact)()
        with unpacked(self.path) as folder:
            return getattr(self._inside(folder)[1], fact)()

    def stated_sampling(self) -> dict[str, Any]:
        """What the bundled model's own files recommend (a GGUF's general.sampling.*, the bundle's genai_config search),
        as the app's runtime reads them, not the manifest's copy: chat sampled with a manifest's forged temperature. An ONNX
        bundle of a model that recommends nothing holds edgelm's defaults in its genai_config: they are said to be those."""
        found = self._recorded("stated_sampling")
        return {} if _sampling(found) == _sampling(SAMPLING_DEFAULTS) else found

    def recorded_temperatures(self) -> Any:
        return self._recorded("recorded_temperatures")

    def recorded_position_encoding(self) -> str | None:
        return self._recorded("recorded_position_encoding")

    def training_length(self) -> int | None:
        return self._recorded("training_length")

    def describe(self, options: LoadOptions) -> dict[str, Any]:
        with unpacked(self.path) as folder:
            manifest, inner = self._inside(folder)
            facts = inner.describe(options)
        return facts | {"format": f"bundle of {facts['format']}", "files": len(manifest["files"]), "verified": True,
                        "sampling_defaults": manifest.get("sampling_defaults")}

    def weight_bytes(self) -> int:
        with unpacked(self.path) as folder:
            return self._inside(folder)[1].weight_bytes()
