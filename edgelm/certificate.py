"""A parity certificate inside every artifact edgelm exports: evidence, computed at export on the final
file by the runtime that runs it, of how close it is to the full-precision reference — and a golden
probe anyone can re-run with `edgelm verify` to see whether this machine's runtime computes the same.

What it holds (a flat table; GGUF stores each entry as an `edgelm.parity.<name>` key, the probe as
JSON text; ONNX stores the table as JSON in edgelm.json's `parity_certificate` and in the graph's
metadata_props `edgelm.parity`; bundle manifests copy it):
- `positions` (POSITIONS of the held-out HELD_OUT_TEXT, half prefilled, half decoded one at a
  time), `mean_kld`, `max_kld`, `perplexity_change`, `top1_agreement`, `reference_perplexity`,
  `artifact_perplexity`, `max_abs_logit_diff`: edgelm.parity's numbers against the fp32 torch reference;
- `reference_sha256` (the checkpoint's safetensors files and config.json, as ONNX's edgelm.json has
  long stated it), `text` and `text_sha256` (the evaluation text's file);
- `weights_sha256` (the artifact's own weights, Format.weights_sha256: a byte of a weight the probe
  does not reach still fails `verify`), and the other ARTIFACT_HASHES its format computes: each is required,
  so a certificate without one fails (stranger 53 deleted the key and kept the changed weights);
- `edgelm_version`, `engine` and `engine_version` (the package that ran the artifact), and `kv_cache`, its
  KV cache's number type (float32 for a GGUF; an ONNX graph's own); a certificate without it (an older
  edgelm's) was measured with float32 where the engine had the choice;
- `probe`: PROBE_PROMPT's ids, PROBE_STEPS greedy tokens, and at each step the PROBE_TOP_K highest
  logits and their ids.

Verifying re-runs the probe and requires the same tokenization, the same greedy tokens, and the
certified top-k logits within PROBE_RTOL of the probe's largest |logit| (docs/certificate.md: the
tolerance against the measured run-to-run, thread-count and tampering effects). A certificate is
evidence, not a signature: whoever rewrites the weights can rewrite it too.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import __version__
from .artifact_files import parse_json, sha256
from .constants import HELD_OUT_TEXT
from .errors import UserError
from .numbers import FRACTION, NON_NEGATIVE, POSITIVE, NumberRange, is_count, is_number
from .tokenizer import leading_ids

CERTIFICATE_VERSION = 1
# the held-out novel (the shipped models never trained on it); its first POSITIONS + 1 tokens
POSITIONS = 128  # short, so export stays fast: ~1 s on the tiny models
PROBE_PROMPT = "Sir Walter Elliot, of Kellynch Hall, in Somersetshire, was a man who"
PROBE_STEPS = 8
PROBE_TOP_K = 8
PROBE_RTOL = 1e-3  # of the probe's largest |logit|; docs/certificate.md has the measurements behind it
# a probe from a file a stranger wrote is bounded before anything runs
MAX_PROBE_TOKENS, MAX_PROBE_STEPS, MAX_PROBE_K = 512, 64, 64
MAX_CERTIFICATE_BYTES = 1 << 20
MAX_PROBE_PROMPT_CHARS = 4096
MAX_POSITIONS = 1 << 20
MAX_FIELD_CHARS = 256  # a version, an engine's name, a file name: printed by `verify`
# each number's range, checked by the one gate (numbers.py) before it is printed or compared
NUMBER_RANGES = {"mean_kld": NON_NEGATIVE, "max_kld": NON_NEGATIVE, "perplexity_change": NumberRange(-1.0),
                 "top1_agreement": FRACTION, "reference_perplexity": POSITIVE, "artifact_perplexity": POSITIVE,
                 "max_abs_logit_diff": NON_NEGATIVE}
NUMBERS = tuple(NUMBER_RANGES)
STRINGS = ("edgelm_version", "engine", "engine_version", "reference_sha256", "text", "text_sha256")
HASHES = ("reference_sha256", "text_sha256")
WEIGHTS_HASH = "weights_sha256"
SETTINGS_HASH = "settings_sha256"  # Format.settings_sha256
GRAPH_HASH = "graph_sha256"  # ONNX only: Format.graph_sha256
# ONNX only: the tokenizer files and chat template alone, which a bundle copies as they are, so verify checks them in a
# mobile bundle, where the bundle rewrote genai_config and settings_sha256 cannot hold
TOKENIZER_HASH = "tokenizer_sha256"
# the artifact's hashes: what Verification and check_holds call each, and the Format method that computes it. A certificate
# holds each its format computes (none of an ORT-format graph's weights or graph): one without it was edited, or written by
# an edgelm before 2026-12-07 (not released), and is refused, not read as "nothing to check"
ARTIFACT_HASHES = {WEIGHTS_HASH: ("weights", "weights_sha256"), SETTINGS_HASH: ("tokenizer, chat template or settings", "settings_sha256"),
                   GRAPH_HASH: ("graph", "graph_sha256"), TOKENIZER_HASH: ("tokenizer and chat template", "tokenizer_sha256")}
COUNTS = ("certificate_version", "positions")


# --- running the probe ------------------------------------------------------------------------------

CERTIFIED_KV_CACHE = "float32"  # where the engine has the choice: llama.cpp's default f16 cache moves logits by ~1e-3 by itself
KV_CACHE_TYPES = ("float32", "float16", "bfloat16", "int8")


def probe_options(fmt, context: int, threads: int | None = None, kv_cache: str = CERTIFIED_KV_CACHE):
    """How the probe and the parity numbers run the artifact: with the KV cache `kv_cache` where its engine
    has the choice (an ONNX graph's cache type is fixed at export) and every position's logits."""
    from .formats import LoadOptions

    return LoadOptions(context_length=context, f32_kv_cache=kv_cache == "float32" and "f32_kv_cache" in fmt.honoured,
                       all_logits=True, threads=threads)


def certified_kv_cache(certificate: dict[str, Any]) -> str:
    """The KV cache type a (validated) certificate was measured with."""
    return certificate.get("kv_cache") or CERTIFIED_KV_CACHE


def _greedy(backend, prompt_ids: Sequence[int], steps: int) -> tuple[list[int], np.ndarray]:
    """`steps` greedy tokens and the logits each was chosen from [steps, vocab]."""
    backend.reset()
    rows = [backend.prefill(list(prompt_ids))]
    tokens = [int(rows[-1].argmax())]
    for _ in range(steps - 1):
        rows.append(backend.decode(tokens[-1]))
        tokens.append(int(rows[-1].argmax()))
    return tokens, np.stack(rows).astype(np.float32)


def make_probe(artifact) -> dict[str, Any]:
    prompt_ids = artifact.tokenizer.encode(PROBE_PROMPT)
    tokens, rows = _greedy(artifact.backend, prompt_ids, PROBE_STEPS)
    top = np.argsort(-rows, axis=1, kind="stable")[:, :PROBE_TOP_K]
    return {"prompt": PROBE_PROMPT, "prompt_ids": [int(i) for i in prompt_ids], "greedy_tokens": tokens,
            "top_k_ids": top.tolist(), "top_k_logits": np.take_along_axis(rows, top, 1).astype(float).tolist()}


@dataclass
class ProbeCheck:
    """The probe re-run here against the certified one."""

    tokenization_equal: bool
    greedy_equal: bool
    max_abs_diff: float  # over the certified top-k logits
    tolerance: float  # PROBE_RTOL × the certified probe's largest |logit|
    certified_tokens: list[int]
    tokens: list[int]

    @property
    def ok(self) -> bool:
        return self.tokenization_equal and self.greedy_equal and self.max_abs_diff <= self.tolerance

    def greedy_summary(self) -> str:
        """'8 greedy tokens equal', or from which one on they differ (greedy decoding goes its own way after
        the first different token: 'differ from token 3 of 8', not '8 differ')."""
        count = len(self.certified_tokens)
        if self.greedy_equal:
            return f"{count} greedy tokens equal"
        first = next((i for i, (a, b) in enumerate(zip(self.certified_tokens, self.tokens)) if a != b),
                     min(len(self.tokens), count))
        return f"greedy tokens differ from token {first + 1} of {count}"

    def as_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "tokenization_equal": self.tokenization_equal, "greedy_equal": self.greedy_equal,
                "max_abs_logit_diff": self.max_abs_diff, "tolerance": self.tolerance, "relative_tolerance": PROBE_RTOL,
                "certified_greedy_tokens": self.certified_tokens, "greedy_tokens": self.tokens}


def check_probe(artifact, probe: dict[str, Any], where: Path) -> ProbeCheck:
    """Re-run a (validated) probe: its prompt ids as stored, so a changed tokenizer and changed weights
    are told apart."""
    if max(probe["prompt_ids"]) >= artifact.tokenizer.vocab_size:
        _bad(where, f"the probe's prompt holds id {max(probe['prompt_ids'])}, past the vocabulary's {artifact.tokenizer.vocab_size}")
    steps = len(probe["greedy_tokens"])
    tokens, rows = _greedy(artifact.backend, probe["prompt_ids"], steps)
    ids = np.asarray(probe["top_k_ids"], dtype=np.int64)
    if ids.max() >= rows.shape[1]:
        _bad(where, f"the probe's top_k_ids hold id {ids.max()}, past the {rows.shape[1]} logits")
    certified = np.asarray(probe["top_k_logits"], dtype=np.float64)
    found = np.take_along_axis(rows.astype(np.float64), ids, 1)
    diff = float(np.abs(found - certified).max()) if np.isfinite(found).all() else math.inf
    return ProbeCheck(
        tokenization_equal=artifact.tokenizer.encode(probe["prompt"]) == probe["prompt_ids"],
        greedy_equal=tokens == probe["greedy_tokens"],
        max_abs_diff=diff,
        tolerance=PROBE_RTOL * float(np.abs(certified).max()),
        certified_tokens=list(probe["greedy_tokens"]),
        tokens=tokens,
    )


# --- computing a certificate --------------------------------------------------------------------------

def evaluation_ids(tokenizer, max_positions: int) -> tuple[list[int], str]:
    """The first POSITIONS + 1 tokens of the evaluation text (fewer where the model holds fewer), and the text's sha256."""
    ids = leading_ids(tokenizer, HELD_OUT_TEXT, min(POSITIONS, max_positions - 1) + 1, "the evaluation text")
    return ids, sha256(HELD_OUT_TEXT)


def reference_logits(checkpoint, ids: Sequence[int], device: str = "cpu") -> np.ndarray:
    """The fp32 torch reference's logits over `ids` in one pass (within 1e-5 of `edgelm parity`'s
    cached run on tiny-nope, and 7× faster: 0.5 s against 3.3 s), its weights streamed from the
    checkpoint (models/streamed.py: about one weight in memory, not the model). The artifact is
    opened only after."""
    from .models.streamed import streamed_logits

    return streamed_logits(checkpoint, ids, device)


def reference_sha256(checkpoint) -> str:
    """The checkpoint's weight files and config.json, as one sha256."""
    import hashlib

    from .artifact_files import member

    digest = hashlib.sha256()
    for file in sorted(set(checkpoint.tensors.files.values())) + [member(checkpoint.path, "config.json")]:
        sha256(file, digest)
    return digest.hexdigest()


def certify(checkpoint, fmt, device: str = "cpu", threads: int | None = None, kv_cache: str = CERTIFIED_KV_CACHE) -> dict[str, Any]:
    """The certificate of the artifact `fmt` (an opened Format: the final file, before it is renamed
    into place) against `checkpoint`."""
    from .parity import compare_logits, run_with_cache

    tokenizer = checkpoint.tokenizer()
    ids, text_sha = evaluation_ids(tokenizer, min(checkpoint.spec.max_positions, fmt.stated_context() or checkpoint.spec.max_positions))
    reference = reference_logits(checkpoint, ids, device)
    context = max(len(ids), len(tokenizer.encode(PROBE_PROMPT)) + PROBE_STEPS)
    with fmt.open(probe_options(fmt, context, threads, kv_cache)) as artifact:
        report = compare_logits(reference, run_with_cache(artifact.backend, ids, len(ids) // 2), ids)
        probe = make_probe(artifact)
        engine, engine_version = artifact.engine, artifact.details.get("engine_version", "unknown")
        kv_cache = artifact.backend.kv_cache_type()
    numbers = report.as_dict()
    hashes = artifact_hashes(fmt)
    return ({"certificate_version": CERTIFICATE_VERSION, "positions": report.positions}
            | {name: float(numbers[name]) for name in NUMBERS}
            | {"edgelm_version": __version__, "engine": engine, "engine_version": engine_version, "kv_cache": kv_cache,
               "reference_sha256": reference_sha256(checkpoint), "text": HELD_OUT_TEXT.name, "text_sha256": text_sha,
               "probe": probe} | hashes)


def artifact_hashes(fmt, wanted=lambda key: True) -> dict[str, str]:
    """The certificate's hashes of `fmt` (of those `wanted` keeps) that its format computes, from one parse of its file
    (export's certificate, `bundle` and `verify` each parsed an ONNX graph once per hash)."""
    with fmt.parsed_once():
        return {key: digest for key, (_, method) in ARTIFACT_HASHES.items() if wanted(key) and (digest := getattr(fmt, method)())}


def probe_positions(tokenizer) -> int:
    """The positions the probe runs: its prompt and greedy steps (the held-out text takes what the context holds)."""
    return len(tokenizer.encode(PROBE_PROMPT)) + PROBE_STEPS


def evaluation_text_missing() -> str | None:
    """Why no certificate can be computed here, or None."""
    return None if HELD_OUT_TEXT.is_file() else f"no parity certificate: the evaluation text {HELD_OUT_TEXT} is not here"


def summary(certificate: dict[str, Any]) -> str:
    """One line for the export's notes."""
    return (f"parity certificate: {certificate['positions']} positions of {certificate['text']}: mean KLD {certificate['mean_kld']:.2g}, "
            f"ΔPPL {100 * certificate['perplexity_change']:+.2f} %, top-1 {100 * certificate['top1_agreement']:.1f} % "
            f"({certificate['engine']}); probe: {len(certificate['probe']['greedy_tokens'])} greedy tokens, "
            f"top-{len(certificate['probe']['top_k_ids'][0])} logits — `edgelm verify` re-runs it")


def certify_gguf(checkpoint, path: Path) -> str:
    """Certify the GGUF at `path` (the exporter's temporary file) and write the keys into it; the note."""
    from .formats.gguf import GGUF

    if missing := evaluation_text_missing():
        return missing
    certificate = certify(checkpoint, GGUF(path))
    write_into_gguf(path, certificate)
    return summary(certificate)


def certify_onnx(checkpoint, folder: Path) -> str:
    """Certify the ONNX folder (the exporter's temporary one, edgelm.json written) and store it; the note."""
    from .constants import ONNX_MANIFEST, ONNX_MODEL_FILE
    from .formats.onnx import OnnxFolder

    if missing := evaluation_text_missing():
        return missing
    certificate = certify(checkpoint, OnnxFolder(folder))
    write_into_onnx(folder, folder / ONNX_MODEL_FILE, folder / ONNX_MANIFEST, certificate)
    return summary(certificate)


# --- reading a certificate a stranger may have written -------------------------------------------------

def _bad(where: Path, what: str):
    raise UserError(f"the parity certificate is damaged: {what}", where, "export the model again, or verify without trusting it")


def _int_list(value: Any, where: Path, what: str, limit: int) -> list[int]:
    if not isinstance(value, list) or not 0 < len(value) <= limit or not all(is_count(v) for v in value):
        _bad(where, f"{what} is not a list of 1 to {limit} token ids")
    return value


def validate(certificate: Any, where: Path) -> dict[str, Any]:
    """A certificate's shape and bounds, before its probe runs; refused in one line when it is not one."""
    if not isinstance(certificate, dict):
        _bad(where, "not a table of fields")
    if certificate.get("certificate_version") != CERTIFICATE_VERSION:
        raise UserError(f"parity certificate version {certificate.get('certificate_version')!r}; this edgelm reads {CERTIFICATE_VERSION}",
                        where, "verify with the edgelm that made it, or export again")
    if not is_count(certificate["certificate_version"]):  # True and 1.0 compare equal to 1
        _bad(where, "certificate_version is not an integer")
    positions = certificate.get("positions")
    if not is_count(positions, 1) or positions > MAX_POSITIONS:
        _bad(where, f"positions is not a count from 1 to {MAX_POSITIONS}")
    for name, bounds in NUMBER_RANGES.items():
        value = certificate.get(name)
        if not is_number(value):
            _bad(where, f"{name} is not a number")
        if problem := bounds.why_not(value):
            _bad(where, f"{name} {problem}")
    for name in STRINGS:
        value = certificate.get(name)
        # printed by verify: one line of printable text (no newline to forge a line, no terminal escape)
        if not isinstance(value, str) or not 0 < len(value) <= MAX_FIELD_CHARS or not value.isprintable():
            _bad(where, f"{name} is not one line of printable text of at most {MAX_FIELD_CHARS} characters")
    if "kv_cache" in certificate and certificate["kv_cache"] not in KV_CACHE_TYPES:
        _bad(where, f"kv_cache is not one of {', '.join(KV_CACHE_TYPES)}")
    for name in HASHES + tuple(name for name in ARTIFACT_HASHES if name in certificate):
        if not isinstance(certificate[name], str) or not all(c in "0123456789abcdef" for c in certificate[name]) or len(certificate[name]) != 64:
            _bad(where, f"{name} is not a sha256")
    probe = certificate.get("probe")
    if not isinstance(probe, dict) or not isinstance(probe.get("prompt"), str) or len(probe["prompt"]) > MAX_PROBE_PROMPT_CHARS:
        _bad(where, f"the probe has no prompt of at most {MAX_PROBE_PROMPT_CHARS} characters")
    _int_list(probe.get("prompt_ids"), where, "the probe's prompt_ids", MAX_PROBE_TOKENS)
    tokens = _int_list(probe.get("greedy_tokens"), where, "the probe's greedy_tokens", MAX_PROBE_STEPS)
    ids, logits = probe.get("top_k_ids"), probe.get("top_k_logits")
    if not isinstance(ids, list) or not isinstance(logits, list) or len(ids) != len(tokens) or len(logits) != len(tokens):
        _bad(where, "the probe's top_k_ids and top_k_logits need one row per greedy token")
    for row_ids, row_logits in zip(ids, logits):
        _int_list(row_ids, where, "a top_k_ids row", MAX_PROBE_K)
        if len(row_ids) != len(ids[0]):
            _bad(where, "the probe's top_k_ids rows differ in length")
        if not isinstance(row_logits, list) or len(row_logits) != len(row_ids) or not all(
                is_number(v) and math.isfinite(v) for v in row_logits):
            _bad(where, "a top_k_logits row is not finite numbers, one per id")
    return certificate


def from_json(text: str, where: Path) -> dict[str, Any]:
    return parse_json(text, where, "the parity certificate", MAX_CERTIFICATE_BYTES)


# --- storing it --------------------------------------------------------------------------------------

def write_into_gguf(path: Path, certificate: dict[str, Any]) -> None:
    """Rewrite the GGUF at `path` with the certificate's `edgelm.parity.*` keys (gguf-py's writer, as its
    gguf_new_metadata.py copies a file with new metadata: every key and tensor as read, the new keys
    added), through a temporary file beside it renamed over it: one copy of the file."""
    from gguf import GGUFReader, GGUFValueType, GGUFWriter

    from .constants import GGUF_PARITY

    reader = GGUFReader(str(path))
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.certified-", dir=path.parent)
    os.close(fd)
    try:
        writer = GGUFWriter(name, reader.fields["general.architecture"].contents())
        for key, found in reader.fields.items():
            if key.startswith("GGUF.") or key == "general.architecture" or key.startswith(GGUF_PARITY):
                continue
            sub_type = found.types[-1] if found.types[0] == GGUFValueType.ARRAY else None
            writer.add_key_value(key, found.contents(), found.types[0], sub_type=sub_type)
        for key, value in certificate.items():
            if isinstance(value, dict):
                writer.add_string(GGUF_PARITY + key, json.dumps(value, separators=(",", ":")))
            elif isinstance(value, str):
                writer.add_string(GGUF_PARITY + key, value)
            elif isinstance(value, int):
                writer.add_uint32(GGUF_PARITY + key, value)
            else:
                writer.add_float64(GGUF_PARITY + key, value)
        for tensor in reader.tensors:
            writer.add_tensor_info(tensor.name, tensor.data.shape, tensor.data.dtype, tensor.data.nbytes, tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for tensor in reader.tensors:
            writer.write_tensor_data(tensor.data, tensor_endianess=reader.endianess)
        writer.close()
        os.chmod(name, os.stat(path).st_mode & 0o777)
        os.replace(name, path)
    finally:
        Path(name).unlink(missing_ok=True)


def read_from_gguf(gguf) -> dict[str, Any] | None:
    """The certificate in a GGUFFile's `edgelm.parity.*` keys; None where it has none."""
    from .constants import GGUF_PARITY

    if gguf.field(GGUF_PARITY + "certificate_version") is None:
        return None
    certificate = {name: gguf.field(GGUF_PARITY + name) for name in COUNTS + NUMBERS + STRINGS}
    for name in ("kv_cache", *ARTIFACT_HASHES):  # kept only where present: a missing hash fails verify
        if gguf.field(GGUF_PARITY + name) is not None:
            certificate[name] = gguf.field(GGUF_PARITY + name)
    probe = gguf.field(GGUF_PARITY + "probe")
    certificate["probe"] = from_json(probe, gguf.path) if isinstance(probe, str) else None
    return certificate


def write_into_onnx(folder: Path, model_file: Path, manifest_file: Path, certificate: dict[str, Any]) -> None:
    """The certificate into the ONNX folder's edgelm.json (`parity_certificate`) and the graph's
    metadata_props (`edgelm.parity`, for whoever has only the graph: onnxruntime's
    `get_modelmeta().custom_metadata_map` reads it). The graph is read without its external weights
    and written back beside itself: only the graph's own bytes are copied."""
    import onnx

    from .artifact_files import read_json_object
    from .constants import ONNX_METADATA_FACTS, ONNX_METADATA_PARITY, PARITY_CERTIFICATE
    from .formats.onnx import recorded_facts

    model = onnx.load(str(model_file), load_external_data=False)
    kept = [p for p in model.metadata_props if p.key not in (ONNX_METADATA_PARITY, ONNX_METADATA_FACTS)]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    model.metadata_props.add(key=ONNX_METADATA_PARITY, value=json.dumps(certificate, separators=(",", ":")))
    # and what edgelm.json records that runs the graph: a mobile bundle's manifest, which carries them, is checked against it
    model.metadata_props.add(key=ONNX_METADATA_FACTS, value=json.dumps(recorded_facts(read_json_object(manifest_file)),
                                                                       separators=(",", ":")))
    staged = folder / f".{model_file.name}.certified"
    onnx.save(model, str(staged))
    os.replace(staged, model_file)
    manifest = read_json_object(manifest_file) | {PARITY_CERTIFICATE: certificate}
    staged = folder / f".{manifest_file.name}.certified"
    staged.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(staged, manifest_file)


# --- verifying ---------------------------------------------------------------------------------------

@dataclass
class Verification:
    """What `edgelm verify` found for one artifact."""

    certificate: dict[str, Any] | None
    engine: str = ""
    engine_version: str = ""
    probe: ProbeCheck | None = None
    recomputed: dict[str, Any] | None = None  # with --reference: the certificate computed again here
    differences: list[str] = field(default_factory=list)  # --reference: fields outside their tolerance
    # the ARTIFACT_HASHES computed here where the format has them (an ORT-format graph has no weights or graph hash; a
    # mobile bundle's settings are the bundle's, which its manifest's sha256 cover)
    computed: dict[str, str] = field(default_factory=dict)

    def equal(self, key: str) -> bool | None:
        """Whether the artifact's `key` hash is the certified one (False where the certificate lacks it); None where the
        format computes none here."""
        if self.certificate is None or key not in self.computed:
            return None
        return self.computed[key] == self.certificate.get(key)

    @property
    def hashes_hold(self) -> bool:
        return False not in (self.equal(key) for key in ARTIFACT_HASHES)

    @property
    def ok(self) -> bool:
        """Whether the certificate holds here. An artifact without one fails: `verify X && ship` passed a
        file whose certificate a stranger had stripped, as it passes another tool's."""
        return self.certificate is not None and self.probe is not None and self.probe.ok and not self.differences and self.hashes_hold

    def _hash_line(self, key: str, label: str) -> str:
        digest, certified = self.computed[key], self.certificate.get(key)
        if certified is None:
            return f"{label}: sha256 {digest[:16]}…, and the certificate records NONE (every certificate edgelm writes does)"
        return f"{label}: sha256 {digest[:16]}… " + ("matches the certificate's" if digest == certified else f"DIFFERS from the certified {certified[:16]}…")

    def lines(self, reference: Path | None = None) -> list[str]:
        """What `edgelm verify` prints about the certificate."""
        c = self.certificate
        if c is None:
            return ["no certificate: the artifact carries no parity certificate (made by another tool, an older edgelm, "
                    "`export --no-certificate`, or stripped); nothing to re-run" + (" or compare" if reference else "")]
        p = self.probe
        lines = [("certificate (its numbers as recorded at export: --reference recomputes them)" if reference is None else "certificate")
                 + f": mean KLD {c['mean_kld']:.3g} (max {c['max_kld']:.3g}), ΔPPL {100 * c['perplexity_change']:+.2f} %, "
                 f"top-1 {100 * c['top1_agreement']:.1f} % over {c['positions']} positions of {c['text']} against the reference "
                 f"(sha256 {c['reference_sha256'][:16]}…); made by edgelm {c['edgelm_version']} on {c['engine']}, {c['engine_version']}, "
                 f"{certified_kv_cache(c)} KV cache",
                 f"probe {'matches' if p.ok else 'DIFFERS'}: {p.greedy_summary()}, "
                 f"top-{len(c['probe']['top_k_ids'][0])} logits max |Δ| {p.max_abs_diff:.3g} (tolerance {p.tolerance:.3g} = "
                 f"{PROBE_RTOL:g} × largest |logit|), tokenization {'equal' if p.tokenization_equal else 'differs'}; "
                 f"run here on {self.engine}, {self.engine_version}"]
        if self.equal(WEIGHTS_HASH) is not None:
            lines.append(self._hash_line(WEIGHTS_HASH, "weights"))
        else:
            # the manifest's sha256 is the bundle's own word, which whoever edits the graph writes again (stranger 27 swapped
            # an embedding row the probe never reads): only the publisher's sha256 of the whole bundle covers these bytes
            lines.append("weights: not hashed against the certificate (an ORT-format graph); the probe ran it, and only the "
                         "publisher's sha256 of the bundle (below) shows its bytes are the ones published")
        if self.equal(GRAPH_HASH) is not None:
            lines.append(self._hash_line(GRAPH_HASH, "graph"))
        if self.equal(TOKENIZER_HASH) is not None:
            lines.append(self._hash_line(TOKENIZER_HASH, "tokenizer and chat template"))
        if self.equal(SETTINGS_HASH) is not None:
            lines.append(self._hash_line(SETTINGS_HASH, "tokenizer, template and settings"))
        else:
            lines.append("settings as the bundle wrote them (genai_config): checked against the sha256 its graph records")
        if self.engine_version != c["engine_version"]:
            lines.append(f"note: certified on {c['engine_version']}, run here on {self.engine_version}: a different engine may "
                         "compute slightly different logits")
        if self.recomputed is not None:
            r = self.recomputed
            lines.append(f"recomputed against {reference}: mean KLD {r['mean_kld']:.3g}, ΔPPL {100 * r['perplexity_change']:+.2f} %, "
                         f"top-1 {100 * r['top1_agreement']:.1f} %: " + ("every field within tolerance" if not self.differences
                                                                         else "; ".join(self.differences)))
        return lines

    def failure(self) -> str:
        """Why it failed, in one line."""
        if self.certificate is None:
            return ("the artifact carries no parity certificate: nothing shows it matches a reference model "
                    "(`edgelm parity ARTIFACT --reference MODEL_DIR` measures it; `edgelm export` writes one)")
        p = self.probe
        reasons = []
        for key, (what, _) in ARTIFACT_HASHES.items():
            if self.equal(key) is not False:
                continue
            if key not in self.certificate:
                reasons.append(f"its certificate {_no_hash(what)}: export it again")
            else:
                reasons.append(f"its {what} {'is not the certified one' if what == 'graph' else 'are not the certified ones'} (sha256 "
                               f"{self.computed[key][:16]}…, certified {self.certificate[key][:16]}…)")
        if not p.tokenization_equal:
            reasons.append("the tokenizer encodes the probe's prompt differently")
        if not p.greedy_equal:
            reasons.append(f"greedy tokens {p.tokens}, certified {p.certified_tokens}")
        if not p.max_abs_diff <= p.tolerance:
            reasons.append(f"top-k logits moved by {p.max_abs_diff:.3g}, past the tolerance {p.tolerance:.3g}")
        reasons += self.differences
        return ("the artifact does not compute what its certificate says: " if not p.ok
                else "the artifact is not what was certified: " if not self.hashes_hold
            else "the recomputed certificate differs: ") \
            + "; ".join(reasons)


def _no_hash(what: str) -> str:
    """Why a certificate without one of the hashes its format computes is refused (verify's reason, bundle's line)."""
    return (f"records no sha256 of its {what}, which every certificate edgelm writes records (the key was removed, or an "
            "edgelm before 2026-12-07 wrote it)")


def check_holds(fmt) -> None:
    """Refuse an artifact whose weights or settings are not the ones its certificate records, before it is bundled: the
    bundle's manifest would take the sha256 of the changed files, and `verify` passed the bundle (a stranger's GGUF with
    an edited chat template, eos id and context failed `verify` and passed it bundled)."""
    found = fmt.certificate()
    if found is None:
        return
    validate(found, fmt.path)
    for key, digest in artifact_hashes(fmt).items():
        what = ARTIFACT_HASHES[key][0]
        if key not in found:
            raise UserError(f"its parity certificate {_no_hash(what)}", fmt.path, "export it again from its model folder")
        if digest != found[key]:
            raise UserError(f"its {what} {'is not the one' if what == 'graph' else 'are not the ones'} its parity certificate was made for (sha256 {digest[:16]}…, certified "
                            f"{found[key][:16]}…): a bundle of it would carry a certificate that does not hold", fmt.path,
                            "export it again from its model folder (`edgelm verify` says what differs)")


def check_recorded_settings(fmt) -> None:
    """parity's reference runs with the head temperatures and position encoding the artifact records: where its certificate
    says its settings changed after export, that record is refused, not trusted (a stranger's edited λ in edgelm.json turned
    an honest export's mean KLD 0.0048 into 0.10 with exit 0; rescaled weights with a matching λ would pass as faithful)."""
    found = fmt.certificate()
    if found is None:
        return
    validate(found, fmt.path)
    if (digest := fmt.settings_sha256()) is not None and digest != found.get(SETTINGS_HASH):
        raise UserError("its settings, among them the head temperatures and position encoding it records for the reference, are "
                        "not the ones its parity certificate was made for", fmt.path,
                        "pass --head-temperatures (and --position-encoding) for the reference yourself, or export it again "
                        "(`edgelm verify` says what differs)")


# --reference: how far recomputed numbers may move (the reference runs here too: torch on another CPU or GPU)
NUMBER_RTOL, NUMBER_ATOL = 0.05, 1e-5


def compare_certificates(certified: dict[str, Any], fresh: dict[str, Any]) -> list[str]:
    """The fields of a recomputed certificate outside their tolerance, each as one line."""
    differences = []
    for name in ("reference_sha256", "text_sha256", "positions"):
        if certified[name] != fresh[name]:
            differences.append(f"{name}: certified {certified[name]}, here {fresh[name]}")
    for name in NUMBERS:
        limit = NUMBER_ATOL + NUMBER_RTOL * abs(certified[name])
        if name == "top1_agreement":  # one position's argmax may flip at a near-tie
            limit = max(limit, 1 / max(certified["positions"], 1))
        if not abs(fresh[name] - certified[name]) <= limit:
            differences.append(f"{name}: certified {certified[name]:.6g}, here {fresh[name]:.6g} (tolerance {limit:.2g})")
    return differences


def verify(fmt, reference: Path | None = None, threads: int | None = None, device: str = "cpu", bundled: bool = False) -> Verification:
    """Re-run the probe of `fmt`'s certificate on this machine's runtime; with `reference`, recompute
    the whole certificate against that model folder and compare it too. `bundled`: `fmt` is a bundle's
    model, whose settings are checked only where the bundle holds the artifact as it is (a GGUF; bundling rewrites an
    ONNX folder's genai_config, and `bundle` checked them against the certificate: check_holds)."""
    with fmt.parsed_once():  # the extent check and the hashes read one parse of an ONNX graph, released before the probe runs
        fmt.check_extent()  # first: the artifact's sha256, which `verify` prints last, then ends in the time its weights take
        found = fmt.certificate()
        if found is None:
            return Verification(None)
        validate(found, fmt.path)
        computed = artifact_hashes(fmt, lambda key: key != SETTINGS_HASH or fmt.bundled_as_is or not bundled)
    context = len(found["probe"]["prompt_ids"]) + len(found["probe"]["greedy_tokens"])
    with fmt.open(probe_options(fmt, context, threads, certified_kv_cache(found))) as artifact:  # the cache it was measured with
        probe = check_probe(artifact, found["probe"], fmt.path)
        engine, engine_version = artifact.engine, artifact.details.get("engine_version", "unknown")
    result = Verification(found, engine, engine_version, probe, computed=computed)
    if reference is not None:
        from .models import open_checkpoint

        # the source as the export ran it: its position encoding and the head temperatures it folded in, as parity does
        checkpoint = open_checkpoint(reference, position_encoding=fmt.recorded_position_encoding(),
                                     head_temperatures=fmt.checked_temperatures())
        result.recomputed = certify(checkpoint, fmt, device, threads, certified_kv_cache(found))
        result.differences = compare_certificates(found, result.recomputed)
    return result
