"""The export formats, registered as the artifact formats are (formats/base.py): each declares its
`--format` name, which options are its own (the others refuse them, with the fix), how its output is
named, what it reports. `edgelm export` parses the options, asks the exporter, prints.

Only the exporter asked for is imported (edgelm.export.gguf or .onnx, when it runs): the ONNX one
brings the tracer (~70 MB resident), and the commands that run an artifact import neither.
"""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Any, ClassVar

from .constants import TRAINING_TEXTS
from .errors import UserError
from .registry import registrar

EXPORTERS: dict[str, "Exporter"] = {}
KV_CALIBRATION_TEXT = TRAINING_TEXTS[0]  # emma


@dataclass(frozen=True)
class ExportOptions:
    """Every option of `edgelm export` that shapes the artifact, at its default when not given."""

    quant: str = "f16"
    gguf_type: str | None = None  # GGUF: a llama.cpp type name instead of --quant's default
    int4_embedding: bool = False  # ONNX int4
    int8_lm_head: bool = False  # ONNX int4
    int4_block_size: int | None = None  # ONNX int4
    int4_accuracy_level: int | None = None  # ONNX int4
    kv_cache: str = "float"  # ONNX
    calibration_text: Path | None = None  # ONNX --kv-cache int8
    calibration: tuple[Path, ...] = ()  # int4 calibration texts (both formats)
    certificate: bool = True
    force: bool = False
    max_size: int | None = None  # quantized: the output's largest size in bytes, types chosen by measured sensitivity
    context: int | None = None  # ONNX: the positions the folder states (genai_config's context_length and max_length)

    def given(self, names: tuple[str, ...]) -> bool:
        """Whether any of the options `names` differs from its default."""
        defaults = {f.name: f.default for f in fields(self)}
        return any(getattr(self, name) != defaults[name] for name in names)


@dataclass(frozen=True)
class Refusal:
    """Options of another format: given to this one, refused with `message` and `fix`."""

    options: tuple[str, ...]
    message: str
    fix: str


@dataclass
class ExportResult:
    path: Path
    summary: dict[str, Any]  # what --json prints
    notes: list[str]
    lines: list[str]  # what a person reads after the notes


class Exporter(ABC):
    name: ClassVar[str]  # the --format value
    suffix: ClassVar[str]  # of the default output, after "{model}-{type}"
    writes_file: ClassVar[bool] = False  # a file (an --out that is a folder then holds it), else a folder
    refuses: ClassVar[tuple[Refusal, ...]] = ()
    default_quant: ClassVar[str]  # --quant when not given: what the format's own tool writes by default

    def check(self, options: ExportOptions) -> ExportOptions:
        """The options resolved and checked before anything is read (a bad one fails in a second, not
        after minutes of export)."""
        for refusal in self.refuses:
            if options.given(refusal.options):
                raise UserError(refusal.message, None, refusal.fix)
        if options.calibration and options.calibration != TRAINING_TEXTS:  # the built-in texts are edgelm's own
            read_user_text(options.calibration[0], "--calibration")  # refused here, before minutes of export
        return options

    @abstractmethod
    def type_name(self, options: ExportOptions) -> str:
        """The quantization the output is named by."""

    def default_output(self, stem: Path, options: ExportOptions) -> Path:
        return stem.parent / f"{stem.name}-{self.type_name(options).lower()}{self.suffix}"

    def output(self, stem: Path, options: ExportOptions, out: Path | None) -> Path:
        """--out, or the default beside the model; a file's default name inside --out where that is a folder, as
        llama.cpp's converter does with --outfile DIR (a stranger's `--out ex/` was told to remove the folder)."""
        # os.path's tests, which answer False for a name too long to look up (Path.is_dir raised it: stranger 44); the
        # atomic output then refuses it in its one line
        if out is None or self.writes_file and os.path.isdir(out) and not os.path.islink(out):
            return (out or stem.parent) / self.default_output(stem, options).name
        return out

    @abstractmethod
    def progress(self, checkpoint, options: ExportOptions) -> tuple[str, int | None]:
        """The progress display's title and number of steps (None: a spinner with a stage text)."""

    @abstractmethod
    def export(self, checkpoint, target: Path, options: ExportOptions, progress) -> ExportResult:
        """`progress`: console.Progress (advance, stage)."""


register = registrar(EXPORTERS)


def _f32_roles(tensor_types: dict[str, str], main_type: str) -> str:
    """What the F32 tensors of a quantized GGUF are, by name (a llama file's summary said "norms and biases" of a model
    without biases: stranger 45)."""
    f32 = [name for name, kind in tensor_types.items() if kind == "F32"]
    if not f32 or main_type == "F32":
        return ""
    roles = ["norms"] * any("norm" in n for n in f32) + ["biases"] * any(n.endswith(".bias") for n in f32)
    rest = [n for n in f32 if "norm" not in n and not n.endswith(".bias")]
    return f" (F32: {', '.join(roles + rest[:3] + ([f'{len(rest) - 3} more'] if len(rest) > 3 else []))})"


@register
class GGUFExporter(Exporter):
    name = "gguf"
    suffix = ".gguf"
    writes_file = True
    default_quant = "f16"  # llama.cpp's converter's default --outtype
    refuses = (
        Refusal(("int4_embedding", "int8_lm_head", "int4_block_size", "int4_accuracy_level"),
                "--int4-embedding, --int8-lm-head, --int4-block-size and --int4-accuracy-level apply to --format onnx only",
                "drop them, or use --gguf-type to pick a llama.cpp type"),
        Refusal(("kv_cache", "calibration_text"), "--kv-cache and --calibration-text apply to --format onnx only",
                "drop them: llama.cpp chooses its KV cache type when it loads the file"),
        Refusal(("context",), "--ctx-size applies to --format onnx only: llama.cpp chooses the context when it loads a GGUF",
                "drop it, and give the context when you run the file (llama.cpp's -c, `edgelm chat -c`)"),
    )

    def check(self, options):
        options = super().check(options)
        type_name = self.type_name(options)  # a bad --quant fails before anything is read
        if options.calibration and type_name.lower() in ("f32", "f16", "bf16"):  # any quantized type takes an importance matrix
            raise UserError("--calibrate and --calibration apply to a quantized type", None,
                            "add --quant int4 (or int8, or a llama.cpp type such as q4_k_m), or drop them")
        return options

    def type_name(self, options):
        from .export.gguf import resolve_type

        return resolve_type(options.quant, options.gguf_type)

    def progress(self, checkpoint, options):
        return f"exporting {self.type_name(options)}", len(checkpoint.weight_names())

    def export(self, checkpoint, target, options, progress):
        from .export.gguf import export_gguf

        title, steps = self.progress(checkpoint, options)
        report = export_gguf(checkpoint, target, options.quant, options.gguf_type, options.force, on_tensor=lambda _: progress.advance(),
                             calibration=list(options.calibration), certificate=options.certificate, max_size=options.max_size,
                             on_step=lambda text: progress.step(f"{title}: {text}" if text else title, None if text else steps),
                             on_quantized=progress.update)
        summary = {
            "path": str(report.path), "arch": report.arch, "file_type": report.file_type,
            "bytes": report.path.stat().st_size, "tensor_types": report.type_counts(), "notes": report.notes,
        }
        main_type = max(report.type_counts(), key=report.type_counts().get)
        others = {n: t for n, t in report.tensor_types.items() if t not in (main_type, "F32")}
        # under --max-size the types are the plan's, whatever file type llama.cpp's quantizer records
        kind = "types chosen within --max-size" if options.max_size is not None else report.file_type
        lines = [f"wrote {report.path} ({summary['bytes'] / 1e6:.1f} MB, arch {report.arch}, {kind})",
                 "tensor types: " + ", ".join(f"{t} ×{n}" for t, n in report.type_counts().items()) + _f32_roles(report.tensor_types, main_type),
                 *(f"  {name}: {kind}" for name, kind in others.items())]
        return ExportResult(report.path, summary | {"tensors": report.tensor_types}, report.notes, lines)


@register
class ONNXExporter(Exporter):
    name = "onnx"
    suffix = "-onnx"
    # Optimum's default: ONNX Runtime's CPU provider has no fp16 kernel for some ops and casts around them (a stranger's f16
    # export of tiny-rope decoded at 385 tok/s, int4 at 1,716); f16 pays on GPU and mobile providers (stranger 45)
    default_quant = "f32"
    refuses = (Refusal(("gguf_type",), "--gguf-type applies to --format gguf only", "drop it or choose --format gguf"),)

    def check(self, options):
        from .export.onnx import check_quant_options

        int4 = {name: value for name, value in (("int4_block_size", options.int4_block_size),
                                                ("int4_accuracy_level", options.int4_accuracy_level)) if value is not None}
        check_quant_options(options.quant, options.int4_embedding, options.int8_lm_head, options.kv_cache, **int4)
        if options.calibration and options.quant != "int4":  # activation-aware scales for MatMulNBits
            raise UserError("--calibrate and --calibration apply to --quant int4", None, "add --quant int4 or drop them")
        if options.calibration_text and options.kv_cache != "int8":
            raise UserError("--calibration-text calibrates --kv-cache int8", None, "add --kv-cache int8 or drop it")
        text = options.calibration_text or (KV_CALIBRATION_TEXT if options.kv_cache == "int8" else None)
        if text:
            read_user_text(text, "--calibration-text")  # refused here, before minutes of export
        return replace(super().check(options), calibration_text=text)

    def type_name(self, options):
        return options.quant

    def progress(self, checkpoint, options):
        return "exporting to ONNX", None

    def export(self, checkpoint, target, options, progress):
        from .export.onnx import export_onnx

        int4 = {name: value for name, value in (("int4_block_size", options.int4_block_size),
                                                ("int4_accuracy_level", options.int4_accuracy_level)) if value is not None}
        report = export_onnx(checkpoint, target, options.quant, options.force,
                             on_step=lambda text: progress.stage(f"exporting to ONNX: {text}"),
                             int4_embedding=options.int4_embedding, int8_lm_head=options.int8_lm_head, kv_cache=options.kv_cache,
                             **int4, calibration_text=options.calibration_text, calibration=list(options.calibration),
                             certificate=options.certificate, max_size=options.max_size, context=options.context)
        size = sum(p.stat().st_size for p in report.path.iterdir())
        kind = "4/8-bit MatMuls chosen within --max-size" if options.max_size is not None else options.quant
        lines = [f"wrote {report.path} ({size / 1e6:.1f} MB, {kind}): model.onnx, genai_config.json, config.json, tokenizer, edgelm.json"]
        summary = {"path": str(report.path), "quant": options.quant, "bytes": size, "notes": report.notes}  # bytes: the folder's, as GGUF's file's
        return ExportResult(report.path, summary, report.notes, lines)


def read_user_text(path: Path, option: str) -> str:
    """A text file given by `option`: UTF-8 text, or one line saying why not."""
    from .artifact_files import MAX_TEXT_BYTES, read_text, user_file

    return read_text(user_file(path, option, MAX_TEXT_BYTES, "text file"), MAX_TEXT_BYTES, "the text")
