"""`edgelm verify`: whether an artifact computes what its parity certificate says, on this machine's runtime.

A GGUF file or an ONNX export (its edgelm.json) is checked as itself; anything else as a bundle, whose checks say
what is missing (a bundle folder without its manifest is refused, not run as an ONNX folder): every file's sha256
against its manifest first, then the model inside. The artifact's own sha256 is printed, and compared with the
publisher's where given: what every other check reads lies inside the artifact, and whoever edits it can rewrite
that too (a stranger edited a bundle's template and its manifest's sha256, and forged a GGUF's certified numbers).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from . import __version__
from .artifact_files import artifact_sha256
from .certificate import ARTIFACT_HASHES, verify as check
from .constants import ONNX_MANIFEST
from .errors import ArtifactMismatch


@dataclass(frozen=True)
class Verdict:
    lines: list[str]  # what a person reads
    summary: dict  # what --json prints
    failure: str | None  # why it failed, one line; None where it passed


def verify_artifact(path: Path, reference: Path | None, threads: int | None, device: str, expected_sha256: str | None) -> Verdict:
    from .bundle import check_runs, verify_bundle
    from .formats import detect

    fmt = detect(path)
    if fmt.bundled and (path.is_file() or (path / ONNX_MANIFEST).is_file()):
        check_runs(fmt, path.name, path, "export it again")
        result = check(fmt, reference, threads, device)
        lines = [f"{path} loads and runs"]  # the path as given (a stranger read only its last part)
    else:
        try:
            manifest, model, result = verify_bundle(path, lambda inner: check(inner, reference, threads, device, bundled=True))
        except ArtifactMismatch as exc:  # a bundle that is not what its manifest says fails the check, as a changed weight does
            return Verdict([], {"ok": False, "failed": [exc.line()]}, exc.line())
        count = len(manifest["files"])
        lines = [f"bundle: {count} {'file matches its' if count == 1 else 'files match their'} sha256, nothing else in the bundle; "
                 f"{manifest['model']} loads and runs ({model['family']}, {model['format']}, {model['quantization']})"
                 + (f"; {model['app_runtime']} runs it too (one token)" if "app_runtime" in model else "")]
        if manifest.get("target") == "web":
            lines.append(f"web page: edgelm {__version__}'s own; runtime: " + ", ".join(f"{p} {v}" for p, v in manifest["web_runtime"].items())
                         + ", the published files")
    identity = artifact_sha256(path)  # check's extent check bounded what it reads
    expected = None if expected_sha256 is None else expected_sha256.lower()
    published = None if expected is None else identity == expected
    identity_line = f"sha256 {identity} (of the {'folder' if path.is_dir() else 'file'}): " + (
        "the artifact checked above is not signed; compare this with the sha256 its publisher gives, or pass --sha256"
        if published is None else "equals --sha256" if published else f"DIFFERS from --sha256 {expected}")
    # why it failed, in the JSON too (a stranger's verify --json without a certificate said only "differences": [])
    failed = ([f"not the artifact published with sha256 {expected}"] if published is False else []) + ([] if result.ok else [result.failure()])
    summary = {"ok": not failed, "failed": failed, "certificate": result.certificate, "engine_version": result.engine_version,
               "probe": result.probe.as_dict() if result.probe else None,
               **{f"{key}_equal": result.equal(key) for key in ARTIFACT_HASHES}, "sha256": identity, "sha256_equal": published,
               "recomputed": result.recomputed, "differences": result.differences}
    failure = (f"{path} is not the artifact published with sha256 {expected} (its sha256 is {identity})" if published is False
               else None if result.ok else result.failure())
    return Verdict(lines + result.lines(reference) + [identity_line], summary, failure)
