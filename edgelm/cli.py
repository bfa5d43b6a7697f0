"""The `edgelm` command: parse, call the library, print. User mistakes exit 2 with one line."""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import signal
import sys
import time
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from . import __version__, descriptor2
from .console import LazyConsole, OutputLost, Progress, guarded_streams, terminal_text
from .errors import RefusedText, UserError
from .constants import HELD_OUT_TEXT
from .fileio import DISK_FULL_ERRNOS, refuse_existing, stopped
from .stops import ENDING, INTERRUPTED, StopWatch, ending_words, held_during_imports, raise_unless_held
from .exporters import EXPORTERS, read_user_text
from .numbers import HEAD_TEMPERATURE, LOOKUP_NGRAM, LOOKUP_NGRAM_MAX, NON_NEGATIVE, POSITIVE, SAMPLING_RANGES, SEED_MAX, NotFinite, NumberRange, not_finite

app = typer.Typer(
    help="Export small causal language models to GGUF and ONNX for phones and laptop CPUs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    # click's plain help, wrapped to the terminal: rich's panels cut option names to "--max-new-tokens…" at 80 columns
    # (stranger 34); as wide as the terminal, where click stops at 80 by default
    rich_markup_mode=None,
    context_settings={"max_content_width": 10_000},
)


out = LazyConsole()
err = LazyConsole(stderr=True)  # errors and failed checks: always shown
info = LazyConsole(stderr=True)  # progress, notes, warnings: silenced by --quiet


class PositionEncoding(str, Enum):
    none = "none"
    rope = "rope"


PositionEncodingOption = Annotated[
    Optional[PositionEncoding],
    typer.Option("--position-encoding", help="Override the checkpoint: 'none' (NoPE) or 'rope'."),
]
TemperaturesOption = Annotated[
    Optional[Path],
    typer.Option("--head-temperatures", help='JSON {"layers": [[λ per head], …]}; replaces temperatures found in the checkpoint.'),
]
AllowPickleOption = Annotated[
    bool, typer.Option("--allow-pickle", help="Load a pickle .bin checkpoint with torch.load(weights_only=True).")
]
SeedOption = Annotated[Optional[int], typer.Option("--seed", "-s", min=0, max=SEED_MAX, help="Sampling seed (default: random; llama.cpp's -s).")]
_asked = {"json": False}  # what the command line asked for that the error paths need (set while parsing)


def _json_asked(value: bool) -> bool:
    _asked["json"] = value
    return value


JsonOption = Annotated[bool, typer.Option("--json", callback=_json_asked,
                                          help="Print one JSON object instead of a table (on failure: {\"error\": …, \"exit_code\": …}).")]


def number(allowed: NumberRange):
    """The parser of every float option: a finite number in a NumberRange (numbers.py, which SamplingOptions
    checks with too), else click's one usage line. click's FloatRange let NaN through every bound."""

    def parse(value) -> float:
        problem = allowed.why_not(value)
        if problem:
            raise typer.BadParameter(problem)  # "Invalid value for '--top-p': must be …"
        return float(value)

    parse.__name__ = "number"  # what --help shows for the option's type
    return parse


PERCENT_SHOWN = ("perplexity_change", "top1_agreement")  # fractions a person reads as percent (export notes, verify)


def _report_numbers(result: dict, as_json: bool, show) -> None:
    """Print a command's result (JSON under --json, else `show()`); a result number that is NaN or infinite
    fails the command: JSON `null` in its place, one line on stderr, exit 1 (never a `NaN` and exit 0)."""
    bad = not_finite(result)
    if as_json:
        out.print_json(json.dumps({k: None if k in bad else v for k, v in result.items()}))
    elif not bad:
        show()
    if bad:
        err.print(f"error: {', '.join(bad)} {'is' if len(bad) == 1 else 'are'} not a finite number: the model computed NaN or "
                  "infinity (damaged weights, or values past what its runtime's number type holds)", markup=False)
        raise typer.Exit(1)


def _version(value: bool) -> None:
    if value:
        out.print(f"edgelm {__version__}")
        raise typer.Exit()


class _NotesToStderr(logging.Handler):
    """The library's notices (logger "edgelm", level INFO) as `note:` lines, silenced by --quiet."""

    def emit(self, record: logging.LogRecord) -> None:
        info.print(f"note: {record.getMessage()}", markup=False)


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars, notes or warnings; errors still print.")] = False,
) -> None:
    info.quiet = quiet
    log = logging.getLogger("edgelm")
    log.setLevel(logging.INFO)
    if not any(isinstance(h, _NotesToStderr) for h in log.handlers):
        log.addHandler(_NotesToStderr())


@app.command()
def init(
    preset: Annotated[str, typer.Argument(metavar="PRESET", help="Preset name; `edgelm init --list` shows them.")] = "",
    out_dir: Annotated[Optional[Path], typer.Argument(metavar="OUT_DIR", help="Folder to create.")] = None,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX, help="Seed of the random weights.")] = 0,
    force: Annotated[bool, typer.Option(help="Replace OUT_DIR if it exists.")] = False,
    list_presets: Annotated[bool, typer.Option("--list", help="List the presets.")] = False,
) -> None:
    """Write a random-weight checkpoint of a preset, in its family's native layout, with a tokenizer."""
    from .models.presets import PRESETS, write_preset

    if list_presets or not preset:
        for name, p in PRESETS.items():
            out.print(f"{name:22} {p.description}")
        return
    if out_dir is None:
        raise UserError("OUT_DIR is missing", None, f"usage: edgelm init {preset} OUT_DIR")
    refuse_existing(out_dir, force, "folder")  # before the spinner, which said "writing" first while the model was built (stranger 34)
    with info.status(f"writing {preset}…"):
        write_preset(preset, out_dir, seed=seed, force=force)
    out.print(f"wrote {preset} to {out_dir}")


# what every command that runs a model takes (formats/: a bundle opens as the model inside it)
ArtifactArgument = Annotated[Path, typer.Argument(metavar="PATH", help="A model folder, a .gguf file, an ONNX folder, or a bundle folder or .zip "
                                                       "from `edgelm bundle`.")]

NARROWEST_TABLE = 40  # columns below which inspect prints "key: value" lines, not a table


@app.command()
def inspect(
    path: ArtifactArgument,
    position_encoding: PositionEncodingOption = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    as_json: JsonOption = False,
) -> None:
    """Format, family, dims, parameter count, position encoding and which rule decided it, temperatures, tokenizer: what
    the files say, read without loading the weights (as llama.cpp's gguf-dump), except a model folder whose position
    encoding nothing declares: it is measured by running the model both ways (docs/formats.md); `edgelm verify` loads
    and runs it."""
    from .formats import detect

    info = detect(path, allow_pickle).describe(_load_options(position_encoding, head_temperatures, "cpu", allow_pickle=allow_pickle))
    if as_json:
        out.print_json(json.dumps(info))
        return
    from rich.table import Table
    from rich.text import Text

    from .errors import one_line, shown

    # what the files say, as one line of printable text a cell (a GGUF's tokenizer.ggml.model holding a newline and
    # ESC[31m forged a row and coloured the terminal); rich markup in a value stays text
    rows = [(one_line(key), one_line(value if isinstance(value, str) else json.dumps(value))) for key, value in info.items()]
    if out.width < NARROWEST_TABLE:  # a table there shows "…" in every cell (stranger 54, 10 columns): a line a field, wrapped
        out.print(Text(one_line(shown(path))))
        for key, value in rows:
            out.print(Text(f"{key}: {value}"))
        return
    table = Table(title=one_line(shown(path)), show_header=False)
    for key, value in rows:
        table.add_row(Text(key), Text(value))
    out.print(table)


def _device(requested: str) -> str:
    """--device as asked, checked by name: auto is resolved by the engine that takes a device (an explicit
    device on one that does not is refused: Format.check_options), so auto works everywhere."""
    from .formats.base import DEVICES

    if requested not in DEVICES:
        raise UserError(f"unknown --device {requested!r}", None, f"use {', '.join(DEVICES[:-1])} or {DEVICES[-1]}")
    return requested


# generate, chat and perplexity run where users run them, the CPU; parity, verify --reference and calibrate run the torch
# reference, on a GPU where one exists (stranger 45: one help line said "auto" beside [default: cpu] and [default: auto])
DeviceOption = Annotated[str, typer.Option("--device", help="Where a model folder's torch model (and edgelm's ggml executor) runs: cpu, "
                                                         "the laptop CPU edgelm targets; cuda; or auto, CUDA when a GPU is present.")]
ReferenceDeviceOption = Annotated[str, typer.Option("--device", help="Where the full-precision torch model runs: auto, CUDA when a GPU is present "
                                                                  "and the CPU otherwise; cpu; or cuda.")]


CtxSizeOption = Annotated[Optional[int], typer.Option("--ctx-size", "-c", min=2, help="Context in tokens, the KV cache's size (default: the positions the model declares, max_position_embeddings or a GGUF's context_length, at most 4096; as llama.cpp's -c).")]
RepetitionPenaltyOption = Annotated[float, typer.Option("--repetition-penalty", "--repeat-penalty", parser=number(SAMPLING_RANGES["repetition_penalty"]), help="Divide positive logits of seen tokens by this (1.0: off; llama.cpp's --repeat-penalty).")]
# llama.cpp's names beside edgelm's (its -n/--n-predict, --temp, -t, -s, --repeat-penalty): what its users type
MaxNewTokensOption = Annotated[int, typer.Option("--max-new-tokens", "-n", "--n-predict", min=1, help="Tokens to generate at most (llama.cpp's -n).")]
TemperatureOption = Annotated[float, typer.Option("--temperature", "--temp", parser=number(SAMPLING_RANGES["temperature"]), help="0 = greedy (llama.cpp's --temp).")]
TopPOption = Annotated[float, typer.Option(parser=number(SAMPLING_RANGES["top_p"]))]
MinPOption = Annotated[float, typer.Option(parser=number(SAMPLING_RANGES["min_p"]))]
StopOption = Annotated[Optional[list[str]], typer.Option(help="Stop before this text (repeatable).")]
ThreadsOption = Annotated[Optional[int], typer.Option("--threads", "-t", min=1, help="CPU threads (default: the physical cores, as llama.cpp and onnxruntime choose; llama.cpp's -t).")]
ProviderOption = Annotated[str, typer.Option("--provider", help="onnxruntime execution provider: cpu, xnnpack, coreml, nnapi, qnn, webgpu, cuda, …")]
DraftOption = Annotated[Optional[int], typer.Option("--draft", min=0, help="Prompt-lookup decoding: tokens drafted from the text so far and verified in one step (0: off; default: on only for the engines where it measured faster, docs/benchmarks.md). Greedy output is the same either way, up to the engine's arithmetic at a near-tie (docs/benchmarks.md).")]
LookupNgramOption = Annotated[int, typer.Option("--lookup-ngram", min=1, max=LOOKUP_NGRAM_MAX, help="Prompt-lookup decoding: the longest n-gram of the last tokens looked up in the text so far.")]
GpuLayersOption = Annotated[int, typer.Option("--gpu-layers", min=0, help="Layers to offload to a GPU (llama.cpp builds with one); edgelm's ggml executor puts all on the GPU for any value > 0.")]


def _threads(requested: int | None) -> int | None:
    """At most one thread per CPU: more only contend (onnxruntime with 10,000 threads never finished)."""
    cores = os.cpu_count() or 1
    if requested is not None and requested > cores:
        info.print(f"note: --threads {requested} is more than the {cores} CPUs here; using {cores}", markup=False)
        return cores
    return requested


def _load_options(position_encoding, head_temperatures, device, threads=None, gpu_layers=0, **extra):
    """LoadOptions from the shared command-line options; `extra`: the rest of LoadOptions' fields."""
    from .formats import LoadOptions

    return LoadOptions(
        position_encoding=position_encoding.value if position_encoding else None,
        head_temperatures=head_temperatures,
        device=_device(device),
        threads=_threads(threads),
        gpu_layers=gpu_layers,
        **extra,
    )


VerbosePromptOption = Annotated[bool, typer.Option("--verbose-prompt", help="Print the prompt's tokens (id -> text) on stderr, as llama.cpp's --verbose-prompt does (chat: each turn's).")]


def _print_prompt(tokenizer, ids: list[int]) -> None:
    info.print(f"prompt: {len(ids)} tokens\n" + "\n".join(f"{i:6d} -> {tokenizer.token_text(i)!r}" for i in ids), markup=False)


def _json_object(text: str | None, option: str, example: str) -> dict:
    """An option's JSON object ({} where not given), or one line saying what it is instead."""
    from .artifact_files import MAX_JSON_DEPTH, parse_json

    if text is None:
        return {}
    try:  # bounded as every JSON a stranger writes: 1 MB, MAX_JSON_DEPTH deep
        value = parse_json(text, None, option, limit=1 << 20)
    except UserError as exc:
        raise UserError(exc.what, None, f"give a JSON object at most {MAX_JSON_DEPTH} deep, as {example}") from None
    if not isinstance(value, dict):
        raise UserError(f"{option} is a JSON {type(value).__name__}, not an object", None, f"give a JSON object, as {example}")
    return value


def _check_stop(stop: list[str] | None) -> None:
    if stop and "" in stop:
        raise UserError("--stop \"\" would stop before the first token", None, "give the text to stop at, or drop --stop")


STDIN_NAMES = ("-", "/dev/stdin")  # --file names for standard input, as llama.cpp's `-f /dev/stdin` reads it (a pipe is no regular file)


def _prompt_text(prompt: str | None, file: Path | None) -> str:
    """--prompt TEXT, --file FILE (llama.cpp's -f), or standard input for `--prompt -` or a pipe. A file's or a pipe's
    one trailing newline is dropped, as llama.cpp's -f drops it (common/arg.cpp): `echo TEXT |` and `-f` of a file a
    text editor saved gave another continuation than `--prompt TEXT` (stranger 45)."""
    text = _given_prompt(prompt, file)
    return text[:-1] if text.endswith("\n") and (prompt is None or prompt == "-") else text


def _given_prompt(prompt: str | None, file: Path | None) -> str:
    if prompt is not None and file is not None:
        raise UserError("--prompt and --file both give the prompt", None, "give one of them")
    if file is not None and str(file) not in STDIN_NAMES:
        return read_user_text(file, "--file")
    piped = sys.stdin is not None and not sys.stdin.isatty() and sys.stdin.readable()
    if prompt == "-" or file is not None or (prompt is None and piped):
        from .artifact_files import MAX_TEXT_BYTES, read_stream

        try:
            text = read_stream(sys.stdin.buffer, MAX_TEXT_BYTES, "standard input")
        except (OSError, AttributeError, ValueError):  # closed or not readable
            raise UserError("--prompt - reads standard input, which cannot be read here", None, "give --prompt TEXT or --file FILE") from None
        if not text:  # a closed stdin (`<&-`) reads as /dev/null: it was "the prompt is empty after tokenization"
            raise UserError("no prompt: standard input is empty", None, "give --prompt TEXT, --file FILE, or pipe the text in")
        return text
    if prompt is None:
        raise UserError("no prompt", None, "give --prompt TEXT, --file FILE, or pipe the text in (--prompt - reads standard input)")
    return prompt


MAX_CHAT_MESSAGE_BYTES = 1 << 20  # a typed or piped chat turn: ~250,000 tokens, far past any context edgelm runs
PARITY_TOKENS = 256  # parity's default positions compared


def _line_editor() -> None:
    """GNU readline (or libedit) under input() in a terminal, as Python's own prompt has it: arrows edit the
    line and recall earlier messages, and the line is read key by key, not as the terminal's cooked line,
    which keeps only 4,095 bytes (a pasted 8,000-character message lost its end with no word; Left sent
    ESC [ D to the model as text). Tab inserts itself: a message is text, not a file name to complete."""
    try:
        import readline
    except ImportError:  # a Python built without it: the terminal's own line
        return
    readline.parse_and_bind("bind ^I ed-insert" if "libedit" in (readline.__doc__ or "") else "tab: self-insert")


def _read_turn() -> str:
    """The next chat message: input() with line editing in a terminal (_line_editor); from a pipe a bounded
    line (a pipe from /dev/zero is one endless line, which input() read until memory ran out), its prompt on
    stderr. Either way a message past MAX_CHAT_MESSAGE_BYTES is refused."""
    if sys.stdin is None or sys.stdin.isatty():
        line = input("> ")
        if len(line.encode("utf-8", "surrogateescape")) > MAX_CHAT_MESSAGE_BYTES:
            raise RefusedText(f"a chat message holds more than {MAX_CHAT_MESSAGE_BYTES:,} bytes; edgelm reads at most that", None,
                              "send a shorter message")
        return line
    from .artifact_files import read_stream

    print("> ", end="", flush=True, file=sys.stderr)  # stdout holds the replies alone
    line = read_stream(sys.stdin.buffer, MAX_CHAT_MESSAGE_BYTES, "a chat message on standard input", line=True)
    if not line:
        raise EOFError
    return line.removesuffix("\n")


@app.command()
def generate(
    path: ArtifactArgument,
    prompt: Annotated[Optional[str], typer.Option("--prompt", "-p", help="Text to continue; '-' reads standard input, as does a pipe without --prompt.")] = None,
    file: Annotated[Optional[Path], typer.Option("--file", "-f", help="Read the prompt from this UTF-8 file (llama.cpp's -f).")] = None,
    max_new_tokens: MaxNewTokensOption = 64,
    temperature: TemperatureOption = 0.0,
    top_k: Annotated[int, typer.Option(min=0)] = 0,
    top_p: TopPOption = 1.0,
    min_p: MinPOption = 0.0,
    repetition_penalty: RepetitionPenaltyOption = 1.0,
    stop: StopOption = None,
    seed: SeedOption = None,
    ctx_size: CtxSizeOption = None,
    truncate: Annotated[bool, typer.Option(help="Keep the last tokens of a prompt longer than the context.")] = False,
    position_encoding: PositionEncodingOption = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    gpu_layers: GpuLayersOption = 0,
    provider: ProviderOption = "cpu",
    draft: DraftOption = None,
    lookup_ngram: LookupNgramOption = LOOKUP_NGRAM,
    verbose_prompt: VerbosePromptOption = False,
    ignore_eos: Annotated[bool, typer.Option("--ignore-eos", help="Never end at an end-of-text token: generate --max-new-tokens tokens (llama.cpp's --ignore-eos).")] = False,
    as_json: JsonOption = False,
) -> None:
    """Continue a prompt, streaming tokens as they come."""
    from .formats import open_artifact
    from .runtime.generate import generate as run
    from .runtime.sampling import SamplingOptions

    _check_stop(stop)
    prompt = _prompt_text(prompt, file)
    artifact = open_artifact(path, _load_options(position_encoding, head_temperatures, device, threads, gpu_layers,
                                                 provider=provider, allow_pickle=allow_pickle, context_length=ctx_size))
    options = SamplingOptions(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                              repetition_penalty=repetition_penalty, seed=seed, ignore_eos=ignore_eos)
    if verbose_prompt:
        _print_prompt(artifact.tokenizer, artifact.tokenizer.encode(prompt))
    if not as_json and (trained := artifact.format.training_length()):
        _past_training(trained, len(artifact.tokenizer.encode(prompt)) + max_new_tokens, artifact.backend.context_length,
                       "the prompt and up to --max-new-tokens of continuation can reach", "the text may lose its way past them", "with --truncate keeps the prompt's last tokens within them")
    pieces = run(artifact.backend, artifact.tokenizer, prompt, max_new_tokens, options, tuple(stop or ()), truncate, draft, lookup_ngram)
    if as_json:
        collected = list(pieces)
        text = "".join(p.text for p in collected)
        out.print_json(json.dumps({"prompt": prompt, "text": text, "tokens": [p.token for p in collected if p.token is not None], "engine": artifact.engine}))
        return
    sys.stdout.write(prompt)
    shown = terminal_text(sys.stdout)
    try:
        for piece in pieces:
            sys.stdout.write(shown(piece.text))
            sys.stdout.flush()  # each piece as it comes
    finally:  # a failure's line after the text, not on it ("It is a trutherror: …", stranger 27)
        sys.stdout.write("\n")


def _past_training(trained: int | None, reach: int, context: int, what_reaches: str, risk: str, keep: str) -> bool:
    """A note, where `reach` tokens pass the `trained` the model's config records and the context lets them: a stranger's
    chat of a model trained on 256 tokens (declaring 4,096 positions) fell into word salad from its third turn with no
    word. Whether it was said."""
    if not trained or reach <= trained or context <= trained:
        return False
    info.print(f"note: {what_reaches} past the {trained:,} tokens the model was trained on "
               f"(edgelm.training_length in its config); {risk}: `-c {trained}` {keep}", markup=False)
    return True


def _text_file(path: Path) -> Path:
    """--text, of which only the head is read: a regular file of any size."""
    from .artifact_files import user_file

    return user_file(path, "--text", None, "text file")


def _leading_ids(tokenizer, path: Path, count: int) -> list[int]:
    """The first `count` token ids of --text, reading and encoding only its head."""
    from .tokenizer import leading_ids

    return leading_ids(tokenizer, _text_file(path), count)


@app.command()
def perplexity(
    path: ArtifactArgument,
    text: Annotated[Optional[Path], typer.Option(help="UTF-8 text file to score (default: the opening of the held-out novel, shipped with edgelm).")] = None,
    ctx: Annotated[int, typer.Option(min=2, help="Window length in tokens.")] = 256,
    stride: Annotated[Optional[int], typer.Option(min=1, help="New tokens scored per window (default ctx - 1).")] = None,
    max_tokens: Annotated[Optional[int], typer.Option(min=2, help="Score only the first N tokens of the text.")] = None,
    position_encoding: PositionEncodingOption = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    as_json: JsonOption = False,
) -> None:
    """Sliding-window perplexity of a text."""
    from .evaluate import perplexity as score
    from .formats import open_artifact

    text = text or HELD_OUT_TEXT
    if max_tokens is None:
        content = read_user_text(text, "--text")  # the whole text is scored
    else:
        content = None  # only its head is read and encoded, below; the file is checked now
        _text_file(text)
    if stride is not None and stride >= ctx:
        raise UserError(f"--stride {stride} must be below --ctx {ctx}", None, "each window needs at least one token of context")
    artifact = open_artifact(path, _load_options(position_encoding, head_temperatures, device, threads, context_length=ctx,
                                                 provider=provider, all_logits=True, allow_pickle=allow_pickle))
    ids = artifact.tokenizer.encode(content) if content is not None else _leading_ids(artifact.tokenizer, text, max_tokens)
    if len(ids) < 2:
        raise UserError("the text has fewer than 2 tokens", text, "give a longer text")
    with Progress(info, "scoring windows", enabled=not as_json) as progress:
        result = score(artifact.backend, ids, ctx, stride, on_window=lambda i, n: progress.update(i, n))
    _report_numbers(result.as_dict() | {"engine": artifact.engine}, as_json, lambda: out.print(
        f"perplexity {result.perplexity:.3f} over {result.tokens} tokens (ctx {result.ctx}, stride {result.stride}; {artifact.engine})"))


def _spinner() -> tuple:
    """A progress display's columns for a step of unknown length."""
    from rich.progress import SpinnerColumn, TextColumn

    return SpinnerColumn(), TextColumn("{task.description}…")


ExportFormat = Enum("ExportFormat", {name: name for name in EXPORTERS}, type=str)  # the registered exporters


@app.command()
def export(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="A model folder.")],
    format: Annotated[ExportFormat, typer.Option("--format", help="Output format.")] = ExportFormat.gguf,
    quant: Annotated[Optional[str], typer.Option(help="f32 | f16 | bf16 (GGUF) | int8 | int4 (GGUF: Q8_0, Q4_K_M; ONNX: MatMul int8, MatMulNBits int4); GGUF also takes llama.cpp's type names (q4_k_m, Q5_K_S, …). Default: f16 for GGUF, as llama.cpp's converter writes; f32 for ONNX, as Optimum exports (f16 pays on GPU and mobile providers, not on ONNX Runtime's CPU).")] = None,
    gguf_type: Annotated[Optional[str], typer.Option("--gguf-type", help="A llama.cpp type name (Q4_0, Q5_K_M, …) instead of --quant's default.")] = None,
    out_path: Annotated[Optional[Path], typer.Option("--out", help="Output file or folder (default: beside MODEL_DIR).")] = None,
    position_encoding: PositionEncodingOption = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    int4_embedding: Annotated[bool, typer.Option("--int4-embedding", help="ONNX int4: quantize the embedding table too (GatherBlockQuantized).")] = False,
    int8_lm_head: Annotated[bool, typer.Option("--int8-lm-head", help="ONNX int4: keep the LM head at 8 bits.")] = False,
    int4_block_size: Annotated[Optional[int], typer.Option("--int4-block-size", help="ONNX int4: weights sharing one scale (16, 32, 64, 128, 256; MatMulNBits' block_size; default 32).")] = None,
    int4_accuracy_level: Annotated[Optional[int], typer.Option("--int4-accuracy-level", help="ONNX int4: MatMulNBits' compute type: 0 unset, 1 fp32, 2 fp16, 3 bf16, 4 int8 activations (default 4).")] = None,
    kv_cache: Annotated[str, typer.Option("--kv-cache", help="ONNX: float | int8 (KV buffers in int8, per-channel scales calibrated on --calibration-text).")] = "float",
    calibration_text: Annotated[Optional[Path], typer.Option("--calibration-text", help="ONNX --kv-cache int8: UTF-8 text to calibrate on (default: the opening of a training novel, shipped with edgelm).")] = None,
    calibrate: Annotated[bool, typer.Option("--calibrate", help="int4 (GGUF: any quantized type): calibrate on the openings of the five novels the shipped models trained on, shipped with edgelm (16 chunks × 256 tokens; GGUF: llama.cpp's importance matrix, ONNX: activation-aware scales). Off by default: over 2,048 held-out positions of the shipped models it lowers a GGUF's mean KLD by 0–21 % and moves an ONNX int4 export's by −3 to +7 % (docs/fidelity.md).")] = False,
    calibration: Annotated[Optional[Path], typer.Option("--calibration", help="int4 (GGUF: any quantized type): calibrate on this UTF-8 text instead (implies --calibrate).")] = None,
    max_size: Annotated[Optional[str], typer.Option("--max-size", help="Quantized: the file's (GGUF) or folder's (ONNX int4) largest size (bytes, or 3.5MB, 3.3MiB); each weight's type (GGUF: Q3_K…Q8_0; ONNX: 4 or 8 bits) is then chosen by its measured sensitivity (KLD on the calibration text when it alone is quantized), within the budget.")] = None,
    ctx_size: Annotated[Optional[int], typer.Option("--ctx-size", "-c", min=2, help="ONNX: the context the folder states, in tokens: genai_config's context_length and max_length (onnxruntime-genai allocates its KV cache for max_length where an app sets none) and the rotary tables' rows (default: the model's, at most 131,072).")] = None,
    no_certificate: Annotated[bool, typer.Option("--no-certificate", help="Skip the parity certificate (KLD, ΔPPL, top-1 on 128 held-out positions and a golden probe `edgelm verify` re-runs), stored in the artifact by default.")] = False,
    force: Annotated[bool, typer.Option(help="Replace the output if it exists.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Export a model folder to GGUF (one file llama.cpp loads) or ONNX (a folder ONNX Runtime and
    onnxruntime-genai load), head temperatures folded into the weights."""
    from .exporters import ExportOptions
    from .fileio import refuse_overlap
    from .hub import output_stem
    from .models import open_checkpoint
    from .quantize.calibration import DEFAULT_TEXTS

    calibration_texts = (calibration,) if calibration else tuple(DEFAULT_TEXTS) if calibrate else ()
    if max_size is not None:  # size-budgeted mixed precision (quantize/mixed.py)
        from .quantize.mixed import parse_size

        max_size = parse_size(max_size)
    exporter = EXPORTERS[format.value]
    options = exporter.check(ExportOptions(
        quant=quant or exporter.default_quant, gguf_type=gguf_type, int4_embedding=int4_embedding, int8_lm_head=int8_lm_head, int4_block_size=int4_block_size,
        int4_accuracy_level=int4_accuracy_level, kv_cache=kv_cache.lower(), calibration_text=calibration_text, calibration=calibration_texts,
        certificate=not no_certificate, force=force, max_size=max_size, context=ctx_size))
    checkpoint = open_checkpoint(
        model_dir, position_encoding=position_encoding.value if position_encoding else None,
        head_temperatures=head_temperatures, allow_pickle=allow_pickle,
    )
    target = exporter.output(output_stem(model_dir), options, out_path)
    # every input, not only the model folder: `--out T.txt --calibration T.txt --force` replaced the text by a GGUF
    refuse_overlap(target, checkpoint.path, *[p for p in (calibration, calibration_text, head_temperatures) if p is not None])
    title, steps = exporter.progress(checkpoint, options)
    with Progress(info, title, steps, enabled=not as_json, **({} if steps else {"columns": _spinner})) as progress:
        result = exporter.export(checkpoint, target, options, progress)
    if as_json:
        out.print_json(json.dumps(result.summary))
        return
    for note in result.notes:
        info.print(f"note: {note}", markup=False, soft_wrap=True)
    for line in result.lines:
        out.print(line, markup=False)


@app.command()
def chat(
    path: ArtifactArgument,
    system: Annotated[Optional[str], typer.Option(help="System prompt.")] = None,
    max_new_tokens: MaxNewTokensOption = 128,
    # each default: what the model's files recommend (docs/formats.md), else SAMPLING_DEFAULTS
    temperature: Annotated[Optional[float], typer.Option("--temperature", "--temp", parser=number(SAMPLING_RANGES["temperature"]), help="0 = greedy (llama.cpp's --temp). Default: the model's recommendation, else 0.7.")] = None,
    top_k: Annotated[Optional[int], typer.Option(min=0, help="Default: the model's recommendation, else 40.")] = None,
    top_p: Annotated[Optional[float], typer.Option(parser=number(SAMPLING_RANGES["top_p"]), help="Default: the model's recommendation, else 0.95.")] = None,
    min_p: Annotated[Optional[float], typer.Option(parser=number(SAMPLING_RANGES["min_p"]), help="Default: the model's recommendation, else 0 (off).")] = None,
    repetition_penalty: Annotated[Optional[float], typer.Option("--repetition-penalty", "--repeat-penalty", parser=number(SAMPLING_RANGES["repetition_penalty"]), help="Divide positive logits of seen tokens by this (llama.cpp's --repeat-penalty). Default: the model's recommendation, else 1.0 (off).")] = None,
    stop: StopOption = None,
    seed: SeedOption = None,
    ctx_size: CtxSizeOption = None,
    position_encoding: PositionEncodingOption = None,
    allow_pickle: AllowPickleOption = False,
    device: DeviceOption = "cpu",
    threads: ThreadsOption = None,
    gpu_layers: GpuLayersOption = 0,
    provider: ProviderOption = "cpu",
    verbose_prompt: VerbosePromptOption = False,
    draft: DraftOption = None,
    lookup_ngram: LookupNgramOption = LOOKUP_NGRAM,
    prompt_cache: Annotated[Optional[str], typer.Option("--prompt-cache", metavar="FILE", help="A file keeping the KV cache after the system prompt, as llama.cpp's --prompt-cache: loaded at start where it was made for this model and system prompt, else written, so the first turn evaluates only its own tokens.")] = None,
    context_shift: Annotated[bool, typer.Option("--context-shift", help="When the context is full, drop the oldest exchanges from the KV cache and keep the rest without evaluating it again (llama.cpp's context shift); only for models without position encoding (NoPE). Not exact: the kept tokens were computed with the dropped text in view (docs/formats.md).")] = False,
    chat_template_file: Annotated[Optional[Path], typer.Option("--chat-template-file", help="A jinja chat template file in place of the model's, as llama.cpp's --chat-template-file.")] = None,
    chat_template_kwargs: Annotated[Optional[str], typer.Option("--chat-template-kwargs", metavar="JSON", help="The chat template's other variables, a JSON object, as llama.cpp's --chat-template-kwargs: '{\"enable_thinking\": false}' turns Qwen3's thinking off.")] = None,
) -> None:
    """Streaming chat with a KV cache. /reset clears the history, /exit (or Ctrl-D) leaves; Ctrl-C stops a reply; // starts a message with /."""
    from .chat import Conversation, chat_sampling, check_template_variables, read_chat_line
    from .formats import open_artifact
    from .runtime.sampling import SamplingOptions

    _check_stop(stop)
    template_kwargs = _json_object(chat_template_kwargs, "--chat-template-kwargs", '\'{"enable_thinking": false}\'')
    try:
        check_template_variables(template_kwargs)
    except (TypeError, ValueError) as exc:  # NaN, Infinity and 1e999 parse as JSON here, and were a TypeError traceback
        raise UserError(f"--chat-template-kwargs: {exc}", None, "give the variables the model's template reads, "
                        "as JSON data (no NaN or Infinity)") from None
    if chat_template_file is not None:
        from .artifact_files import MAX_TEMPLATE_BYTES, user_file

        user_file(chat_template_file, "--chat-template-file", MAX_TEMPLATE_BYTES, "chat template file")
    cache_path = None
    if prompt_cache is not None:
        from .runtime.prompt_cache import check_path

        cache_path = check_path(prompt_cache)  # before the model loads, as every other option's refusal
    artifact = open_artifact(path, _load_options(position_encoding, None, device, threads, gpu_layers, provider=provider, allow_pickle=allow_pickle,
                                                 context_length=ctx_size))
    conversation = Conversation(artifact.tokenizer, artifact.backend.context_length, max_new_tokens, system,  # a broken template fails here
                                template_kwargs=template_kwargs, template_file=chat_template_file)
    given = {name: value for name, value in (("temperature", temperature), ("top_k", top_k), ("top_p", top_p), ("min_p", min_p),
                                             ("repetition_penalty", repetition_penalty)) if value is not None}
    sampling, sampled = chat_sampling(artifact.format.stated_sampling(), given)
    options = SamplingOptions(**sampling, seed=seed)
    # replies alone on standard output; the banner and each turn's counts on standard error, as llama.cpp's
    # llama-cli keeps its logs and timings there (a pipe reading the replies got them mixed in)
    info.print(f"[dim]{path} on {artifact.engine}, {conversation.template_name}; {sampled}; /reset, /exit, /help[/dim]")
    backend = artifact.backend
    if context_shift and not backend.position_free:  # the reason first (stranger 45: a NoPE GGUF read "needs a NoPE model")
        reason = ("edgelm shifts a NoPE model's cache on the torch, ONNX and ggml executor backends, not on llama.cpp's"
                  if artifact.details.get("position_encoding") == "none" else
                  "this model encodes positions in its cache (only a NoPE model's entries can move)")
        info.print(f"note: --context-shift is off: {reason}; a full context is evaluated again", markup=False)
    context_shift = context_shift and backend.position_free
    trained = artifact.format.training_length()  # said once, where a turn first reaches past it
    if cache_path is not None:
        from .runtime.prompt_cache import start_from

        info.print(start_from(cache_path, artifact.path, backend, conversation.preamble_ids()), style="dim", markup=False, highlight=False)
    if sys.stdin is not None and sys.stdin.isatty():
        _line_editor()
    shown = terminal_text(sys.stdout)
    while True:
        try:
            user = _read_turn()
        except EOFError:
            out.print()
            return
        except KeyboardInterrupt:  # at the prompt: said how to leave (stranger 31 saw a fresh prompt and nothing else)
            out.print()
            info.print("(Ctrl-C stops a reply; /exit or Ctrl-D leaves)", style="dim", markup=False, highlight=False)
            continue
        except RefusedText as exc:  # this line is refused and was read whole: the chat goes on (a piped line over the limit ends it)
            err.print(f"error: {exc.line()}", markup=False, soft_wrap=True)
            continue
        _last_interrupt[0] = float("-inf")  # a Ctrl-C after a line sent is a new stop, however soon (BURST_S)
        action, user = read_chat_line(user)
        if action == "exit":
            return
        if action == "reset":
            conversation.reset()
            info.print("[dim]history cleared[/dim]")
        elif action == "say":
            info.print(user, markup=False)
        if action != "send":
            continue
        if not user.strip():
            continue
        start, turn, pieces = time.time(), None, None
        try:
            turn = conversation.turn(user, backend, max_new_tokens, options, tuple(stop or ()), draft, lookup_ngram, context_shift)
            if turn.dropped:
                info.print(f"[dim]dropped the {turn.dropped} oldest exchange(s) to fit the {backend.context_length}-token context[/dim]")
            if _past_training(trained, len(turn.ids) + max_new_tokens, backend.context_length, "this turn, with up to --max-new-tokens of reply, can reach",
                              "replies may lose their way from here", "keeps the chat within them, dropping the oldest exchanges"):
                trained = None  # said once
            if verbose_prompt:
                _print_prompt(artifact.tokenizer, turn.ids)
            pieces = iter(turn)
            for piece in pieces:
                out.print(shown(piece.text), end="", markup=False)
        except KeyboardInterrupt:
            if turn is None or not turn.started:  # before the reply began (the template rendering, the lines above it): the turn
                out.print()  # has not joined the history (Conversation.turn)
                info.print("[dim](not sent: the history is as it was)[/dim]")
                continue
            pieces.close()  # the reply so far joins the history
            info.print(" [dim](stopped)[/dim]", end="")  # beside the reply, not in it: piped, stdout holds the model's words alone
        except UserError as exc:  # this turn only (a message too long even alone, …): the history is as it was
            if turn is not None and turn.tokens:
                out.print()
            err.print(f"error: {exc.line()}", markup=False, soft_wrap=True)
            continue
        except NotFinite as exc:  # a prompt cache is bytes llama.cpp parses: a forged one with NaN K rows loads (stranger 27)
            if cache_path is None:
                raise
            raise NotFinite(f"{exc}; the system prompt's KV cache is kept in --prompt-cache {cache_path}: if the chat runs "
                            "without it, that file is damaged: delete it") from None
        rate = turn.tokens / max(time.time() - start, 1e-9)
        lookup = f", {turn.accepted}/{turn.drafted} drafted tokens taken" if turn.drafted else ""  # as llama.cpp's lookup reports n_drafted, n_accept
        prompt = f"; {turn.evaluated} prompt tokens evaluated" if turn.evaluated is not None else ""
        out.print()
        info.print(f"[dim]{turn.tokens} token{'' if turn.tokens == 1 else 's'}, {rate:.1f} tok/s{lookup}{prompt}[/dim]")


@app.command()
def bench(
    path: ArtifactArgument,
    prompt_tokens: Annotated[int, typer.Option(min=1)] = 128,
    new_tokens: Annotated[int, typer.Option(min=1)] = 64,
    threads: ThreadsOption = None,
    provider: ProviderOption = "cpu",
    compare: Annotated[bool, typer.Option("--compare", help="Also time the raw engine on the same file.")] = False,
    repetitions: Annotated[int, typer.Option("--repetitions", "-r", min=1, help="Runs of each engine, interleaved; the medians are reported with each run's range (llama-bench's -r).")] = 5,
    position_encoding: PositionEncodingOption = None,
    allow_pickle: AllowPickleOption = False,
    as_json: JsonOption = False,
) -> None:
    """Time to first token, prefill and decode tok/s (medians of --repetitions runs), peak RSS, decode roofline; --compare with the raw engine."""
    from .benchmark import bench as run, prompt_ids
    from .formats import open_artifact
    from .runtime.backend import physical_cores

    # once: the raw engines get the same count; the physical cores, not the count chat and generate fit to the load (the
    # last bench's own threads would lower the next one's: two benches back to back timed different counts)
    threads = _threads(threads) or physical_cores()
    context = prompt_tokens + new_tokens  # the warm-up runs within it: a bench may fill the model's context exactly
    artifact = open_artifact(path, _load_options(position_encoding, None, "cpu", threads, context_length=context, provider=provider,
                                                 allow_pickle=allow_pickle))
    prompt = prompt_ids(artifact.tokenizer, read_user_text(HELD_OUT_TEXT, "the held-out text"), prompt_tokens)
    load, cores = os.getloadavg()[0], os.cpu_count() or 1  # before the bench's own threads add to it
    with info.status("timing…"):
        result = run(artifact, prompt, new_tokens, compare, threads, repetitions)
    if load > cores - threads + 0.5:  # a stranger saw decode at 2 and at 1,459 tok/s on one busy machine, unwarned
        info.print(f"note: the load average was {load:.1f} on {cores} CPUs: other work shares the cores this bench's threads use, and "
                   "llama.cpp's and ggml's threads wait by spinning, so one run can be many times slower than the next; time on a "
                   "quiet machine, or with fewer --threads", markup=False)
    if compare and not result.raw_engine:  # said, not an empty row (a TokenFormer GGUF, a model folder)
        info.print(f"note: --compare: no engine but edgelm's runs {artifact.format.noun} ({artifact.engine}); only edgelm was timed",
                   markup=False)
    report = result.as_dict() | {"engine": artifact.engine, "load_average": round(load, 2)}

    def show() -> None:
        from rich.table import Table

        table = Table(title=f"{path} ({artifact.engine})", show_header=False)
        def spread(runs: list[float], scale: float = 1.0, digits: int = 2) -> str:
            return f"; {min(runs) * scale:.{digits}f}–{max(runs) * scale:.{digits}f} over {len(runs)} runs" if len(runs) > 1 else ""

        table.add_row("time to first token", f"{result.time_to_first_token_s * 1000:.1f} ms ({result.prompt_tokens} prompt tokens"
                      f"{spread(result.time_to_first_token_s_runs, 1000, 1)})")
        table.add_row("prefill", f"{result.prefill_tok_s:.1f} tok/s")
        table.add_row("decode", f"{result.decode_tok_s:.2f} tok/s ({result.new_tokens} tokens{spread(result.decode_tok_s_runs)})")
        table.add_row("threads", f"{result.threads}" + (" (both engines)" if result.raw_engine else ""))
        table.add_row("peak RSS", f"{result.peak_rss_bytes / 1e6:.0f} MB running the model; {result.command_peak_rss_bytes / 1e6:.0f} MB "
                      f"for the whole bench ({'the raw engine and ' if result.raw_engine else ''}the roofline's bandwidth copy included)")
        table.add_row("decode roofline", f"{report['roofline_tok_s']:.1f} tok/s = {result.copy_bandwidth_bytes_s / 1e9:.1f} GB/s copy ÷ "
                      f"{result.weight_bytes / 1e6:.1f} MB weights; reached {report['roofline_fraction']:.0%}")
        if result.raw_decode_tok_s:
            table.add_row(f"raw {result.raw_engine}", f"{result.raw_decode_tok_s:.2f} tok/s ({spread(result.raw_decode_tok_s_runs)[2:] or 'one run'}); "
                          f"edgelm/raw = {report['edgelm_over_raw']:.3f}")
        out.print(table)

    _report_numbers(report, as_json, show)


@app.command()
def bundle(
    artifact_path: Annotated[Path, typer.Argument(metavar="ARTIFACT_PATH", help="A .gguf file or an ONNX folder.")],
    out_dir: Annotated[Path, typer.Option("--out", help="Bundle folder to create.")],
    target: Annotated[str, typer.Option("--target", help="mobile (an app's files) | web (a static page on onnxruntime-web: WebGPU, else WASM).")] = "mobile",
    web_runtime: Annotated[Optional[Path], typer.Option("--web-runtime", help="node_modules holding the pinned onnxruntime-web and tokenizers.js (default: $EDGELM_WEB_RUNTIME, else a checkout's web/node_modules from `make web-runtime`).")] = None,
    zip_it: Annotated[bool, typer.Option("--zip", help="Write OUT.zip instead of a folder (also when --out ends in .zip).")] = False,
    allow_desktop_only: Annotated[bool, typer.Option("--allow-desktop-only", help="Bundle a format no mobile runtime loads (e.g. a TokenFormer GGUF).")] = False,
    force: Annotated[bool, typer.Option(help="Replace the output if it exists.")] = False,
) -> None:
    """A self-describing, checksummed folder a mobile app ships (ONNX as ORT mobile format + operator config),
    or with --target web a static page that runs the ONNX export in the browser."""
    from .bundle import bundle_target, make_bundle

    with info.status("bundling…"):
        written = make_bundle(artifact_path, out_dir, zip_it, force, allow_desktop_only, target, web_runtime)
    said, notes = bundle_target(target).notes(written, written.is_file())
    out.print(f"wrote {written}{said}", markup=False)
    for note in notes:
        info.print(f"note: {note}", markup=False)


@app.command()
def serve(
    bundle_dir: Annotated[Path, typer.Argument(metavar="BUNDLE_DIR", help="A web bundle folder from `edgelm bundle --target web`.")],
    port: Annotated[int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free one).")] = 8000,
    host: Annotated[str, typer.Option("--host", help="Address to listen on (0.0.0.0: every interface).")] = "127.0.0.1",
) -> None:
    """Serve a web bundle cross-origin isolated (COOP/COEP headers), so onnxruntime-web's WASM runs on every
    core; Ctrl+C stops."""
    from .web_serve import ISOLATION_HEADERS, every_interface, make_server, server_url

    server = make_server(bundle_dir, host, port)
    headers = ", ".join(f"{k}: {v}" for k, v in list(ISOLATION_HEADERS.items())[:2])
    out.print(f"serving {bundle_dir} at {server_url(server)} (cross-origin isolated: {headers}); Ctrl+C stops", markup=False)
    if every_interface(server):  # `--host ''` (an unset $HOST) bound every interface under a banner naming 127.0.0.1
        info.print(f"note: listening on every interface ({server.server_address[0] or '0.0.0.0'}): other machines on the "
                   "network can fetch the bundle", markup=False)
    sys.stdout.flush()
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


@app.command()
def verify(
    artifact_path: Annotated[Path, typer.Argument(metavar="ARTIFACT_PATH", help="A .gguf file, an ONNX folder from `edgelm export`, or a bundle folder or .zip from `edgelm bundle`.")],
    reference: Annotated[Optional[Path], typer.Option(help="The model folder it was exported from: recompute the whole parity certificate and compare.")] = None,
    threads: ThreadsOption = None,
    device: Annotated[Optional[str], ReferenceDeviceOption.__metadata__[0]] = None,
    expected_sha256: Annotated[Optional[str], typer.Option("--sha256", help="The sha256 its publisher gives: of the file (sha256sum FILE), or of a folder (`LC_ALL=C sha256sum * | sha256sum` inside it). Fails when the artifact's differs.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Re-run the artifact's parity certificate probe on this machine's runtime (a bundle: every file's
    sha256 against its manifest first); --reference recomputes the whole certificate; --sha256 checks
    the artifact is the one its publisher gave. Fails (exit 1) on an artifact without a certificate."""
    from .verify import verify_artifact

    if device is not None and reference is None:  # the probe runs on the artifact's own engine; only the reference is torch's
        raise UserError(f"--device {device} sets where --reference's torch model runs, and no --reference was given", None,
                        "add --reference MODEL_DIR, or drop --device (the probe runs on the artifact's engine)")
    if expected_sha256 is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", expected_sha256):
        raise UserError(f"--sha256 {expected_sha256[:80]!r} is not a sha256 (64 hexadecimal digits)", None,
                        "give the hash its publisher lists, as sha256sum prints it")
    from .formats.base import resolve_device

    verdict = verify_artifact(artifact_path, reference, _threads(threads), resolve_device(_device(device or "auto")), expected_sha256)
    if as_json:
        out.print_json(json.dumps(verdict.summary))
    else:
        for line in verdict.lines:
            out.print(line, markup=False)
    if verdict.failure:
        err.print(f"verify failed: {verdict.failure}", markup=False)
        raise typer.Exit(1)


@app.command()
def parity(
    artifact_path: Annotated[Path, typer.Argument(metavar="ARTIFACT_PATH", help="A .gguf file, an ONNX folder or a bundle.")],
    reference: Annotated[Path, typer.Option(help="The model folder it was exported from.")],
    text: Annotated[Optional[Path], typer.Option(help="Text to compare on (default: the opening of the held-out novel, shipped with edgelm).")] = None,
    tokens: Annotated[Optional[int], typer.Option(min=3, help=f"Positions compared: half prefilled, half decoded one at a time (default: {PARITY_TOKENS}, or what a context the artifact states holds).")] = None,
    head_temperatures: TemperaturesOption = None,
    allow_pickle: AllowPickleOption = False,
    device: ReferenceDeviceOption = "auto",
    threads: ThreadsOption = None,
    f32_kv_cache: Annotated[bool, typer.Option("--f32-kv-cache", help="GGUF: run the artifact with an f32 KV cache. By default it runs with the f16 cache llama.cpp and `chat` use, so the numbers (and a NaN from keys, values or queries past float16's range) are what users get.")] = False,
    max_kld: Annotated[Optional[float], typer.Option("--max-kld", parser=number(NON_NEGATIVE), help="Exit 1 when the mean KL divergence exceeds this.")] = None,
    max_ppl_increase: Annotated[Optional[float], typer.Option("--max-ppl-increase", parser=number(NON_NEGATIVE), help="Exit 1 when perplexity rises by more than this fraction.")] = None,
    as_json: JsonOption = False,
) -> None:
    """Numbers proving an artifact matches the full-precision torch reference (on CUDA when present)."""
    from .parity import certificate_notes, compare, positions_to_compare, temperature_note
    from .formats import LoadOptions, open_artifact

    from .formats import detect

    text = text or HELD_OUT_TEXT
    _text_file(text)  # refused before the models load
    if not (given := detect(reference, allow_pickle)).checkpoint:  # an export as the reference said it "carries its position encoding inside"
        raise UserError(f"--reference is {given.noun}; parity compares against the full-precision model folder "
                        "the artifact was exported from", reference, "give that model folder (config.json and its weights)")
    fmt = detect(artifact_path)
    # the reference runs with the λ the export folded in (checked, naming the artifact, when it is to run with them)
    recorded = fmt.recorded_temperatures() if head_temperatures else fmt.checked_temperatures()
    if head_temperatures is None:  # the reference takes the artifact's record: its certificate vouches for it
        from .certificate import check_recorded_settings

        check_recorded_settings(fmt)
    ref = open_artifact(reference, LoadOptions(head_temperatures=head_temperatures or recorded, device=_device(device), allow_pickle=allow_pickle,
                                               position_encoding=fmt.recorded_position_encoding()))
    if note := temperature_note(artifact_path, recorded, head_temperatures):
        info.print(note, markup=False)
    tokens, notes = positions_to_compare(tokens, PARITY_TOKENS, ref.backend.learned_positions, fmt.stated_context(), artifact_path)
    for note in notes:
        info.print(note, markup=False)
    ids = _leading_ids(ref.tokenizer, text, tokens + 1)  # only the head a 256 MB text needs
    if len(ids) < 3:
        raise UserError(f"the text is {len(ids)} token{'s' * (len(ids) != 1)}; parity compares at least 2 positions, 3 tokens", text,
                        "give a longer text")
    if len(ids) <= tokens:  # said, not a context the user never asked for in a later line (round 8)
        info.print(f"note: the text holds {len(ids):,} tokens: parity compares {len(ids) - 1:,} positions, not --tokens {tokens:,}",
                   markup=False)
    # a context for the tokens the text has, not for --tokens: 100,000 asked of a 6,763-token text was refused by an
    # ONNX export's 4,096-position rotary tables, and allocated 100,001 positions of llama.cpp's cache
    art = fmt.open(LoadOptions(threads=_threads(threads), context_length=len(ids), f32_kv_cache=f32_kv_cache, all_logits=True))
    with Progress(info, "comparing", enabled=not as_json, columns=_spinner):
        report = compare(ref.backend, art.backend, ids)
    result = report.as_dict() | {"reference": f"{reference} ({ref.engine})", "artifact": f"{artifact_path} ({art.engine})",
                                 "kv_cache": art.backend.kv_cache_type()}
    for note in certificate_notes(artifact_path, art, result["kv_cache"], reference, allow_pickle, report.positions, text):
        info.print(note, markup=False)
    over = {name: f"{name} {value:.6g} above the limit {limit:g}" for name, limit, value in
            [("mean KL divergence", max_kld, report.mean_kld), ("perplexity increase", max_ppl_increase, report.perplexity_change)]
            if limit is not None and not value <= limit}  # NaN is never within a limit
    failed = list(over)
    if not_finite(result):
        failed.append("finite logits")
    if as_json:
        out.print_json(json.dumps({k: None if k in not_finite(result) else v for k, v in (result | {"failed": failed}).items()}))
    else:
        from rich.table import Table

        table = Table(title=f"{artifact_path} vs {reference}", show_header=False)
        for key, value in result.items():
            shown = f"{value:.6g}" if isinstance(value, float) else str(value)
            if key in PERCENT_SHOWN and isinstance(value, float):  # the fraction --json gives, and the percent certificates print
                shown += f" ({100 * value:{'+' if key == 'perplexity_change' else ''}.2f} %)"
            table.add_row(key, shown)
        out.print(table)
    for name in failed:  # why, on standard error, with --json too (as verify's)
        err.print(f"parity check failed: {over.get(name, f'{report.nonfinite_side()} gave NaN or infinite logits')}", markup=False)
    if failed:
        raise typer.Exit(1)


@app.command()
def calibrate(
    model_dir: Annotated[Path, typer.Argument(metavar="MODEL_DIR", help="A model folder.")],
    text: Annotated[Path, typer.Option(help="UTF-8 training text; its last windows are held out for validation.")],
    target_length: Annotated[int, typer.Option("--target-length", min=2, help="Sequence length to tune at.")],
    out_path: Annotated[Path, typer.Option("--out", help="Temperatures JSON to write.")],
    steps: Annotated[int, typer.Option(min=0)] = 200,
    lr: Annotated[float, typer.Option(parser=number(POSITIVE), help="AdamW learning rate for the first half of the steps.")] = 0.1,
    lr_late: Annotated[float, typer.Option("--lr-late", parser=number(POSITIVE), help="Learning rate for the second half.")] = 0.05,
    init: Annotated[float, typer.Option(parser=number(HEAD_TEMPERATURE), help="Initial λ of every head (the paper: 1.6).")] = 1.6,
    min_value: Annotated[float, typer.Option("--min", parser=number(HEAD_TEMPERATURE), help="Clamp λ to at least this after every step (the paper: 1.0).")] = 1.0,
    batch: Annotated[int, typer.Option(min=1)] = 1,
    seed: Annotated[int, typer.Option(min=0, max=SEED_MAX)] = 0,
    uniform: Annotated[bool, typer.Option("--uniform", help="One λ for every head, by held-out loss over a grid.")] = False,
    write_checkpoint: Annotated[bool, typer.Option("--write-checkpoint", help="Also store λ as HeadScale tensors in the checkpoint.")] = False,
    position_encoding: PositionEncodingOption = None,
    allow_pickle: AllowPickleOption = False,
    device: ReferenceDeviceOption = "auto",
    force: Annotated[bool, typer.Option(help="Replace --out if it exists.")] = False,
    as_json: JsonOption = False,
) -> None:
    """Tune per-head attention temperatures at a longer length (HeadScale), every weight frozen."""
    import torch

    from .calibrate import CalibrationSettings, calibrate as run, check_text, training_length
    from .models.registry import refuse_unfoldable_temperatures
    from .fileio import atomic_output_file, refuse_overlap
    from .hub import resolve_model
    from .formats.base import resolve_device
    from .models import open_checkpoint
    from .models.checkpoint import write_head_temperatures

    from .tokenizer import load_tokenizer

    refuse_existing(out_path, force)
    # --out onto the model's own config.json or weights, or onto the training text, replaced them (with --force)
    refuse_overlap(out_path, text, resolve_model(model_dir, allow_pickle))
    content = read_user_text(text, "--text")
    checkpoint = open_checkpoint(model_dir, position_encoding=position_encoding.value if position_encoding else None,
                                 allow_pickle=allow_pickle)
    refuse_unfoldable_temperatures(checkpoint.family, checkpoint.spec, model_dir, "no export could carry the temperatures calibrate finds for it")
    if target_length <= (trained := training_length(checkpoint.config, checkpoint.spec.max_positions, model_dir)):
        info.print(f"warning: --target-length {target_length} is not above the training length {trained}; "
                  "temperatures matter past it", markup=False)
    ids = load_tokenizer(model_dir).encode(content)
    settings = CalibrationSettings(target_length=target_length, steps=steps, lr=lr, lr_late=lr_late, init=init,
                                   min=min_value, batch=batch, seed=seed, uniform=uniform)
    check_text(ids, settings, text)
    model = checkpoint.load_model(resolve_device(_device(device)))
    if not model.attention_modules():
        raise UserError("this model has no attention heads to scale", model_dir, "calibration applies to attention models")

    def columns():
        from rich.progress import BarColumn, TextColumn, TimeRemainingColumn

        return (TextColumn("[bold]calibrating"), BarColumn(), TextColumn("{task.completed}/{task.total}{task.fields[loss_shown]}"),
                TimeRemainingColumn())

    def line(progress):
        return f"calibrating: step {progress.completed}/{progress.total}{progress.fields['loss_shown']}"

    # no loss until the first step ends: "loss nan" there read as a failure (stranger 34)
    with Progress(info, "calibrate", steps, enabled=not as_json, columns=columns, line=line, loss_shown="") as progress:
        try:
            result = run(model, ids, settings, on_step=lambda i, n, loss: progress.update(i, n, loss_shown=f", loss {loss:.4f}"))
        except RuntimeError as exc:  # torch's allocators: CPU "DefaultCPUAllocator: can't allocate memory", CUDA's OutOfMemoryError
            if "allocate" not in str(exc) and not isinstance(exc, torch.OutOfMemoryError):
                raise
            raise UserError(f"not enough memory for --batch {batch} windows of {target_length + 1} tokens", None,
                            "give a smaller --batch or --target-length") from None
    with atomic_output_file(out_path, force) as tmp:
        tmp.write_text(json.dumps(result.as_json(), indent=2) + "\n")
    if write_checkpoint:
        write_head_temperatures(checkpoint, result.table)
    report = result.as_json()["calibration"]
    if as_json:
        out.print_json(json.dumps(result.as_json()))
        return
    if result.interrupted:
        info.print("interrupted: kept the best temperatures so far")
    if bool((result.table == 1).all()):  # the best held-out loss was λ = 1's: the file changes nothing (stranger 43 read it as tuned)
        info.print(f"note: no temperatures beat λ = 1 on the held-out windows in {len(result.losses)} steps, so the file holds λ = 1 "
                   "(no change); more --steps, or a --target-length further past the training length, give them room", markup=False)
    out.print(f"held-out perplexity at length {target_length}: {report['heldout_perplexity_before']} with λ = 1 → "
              f"{report['heldout_perplexity']} ({report['method']}); λ in [{result.table.min():.3f}, {result.table.max():.3f}]; wrote {out_path}", markup=False)


def _one_line_summaries() -> None:
    """`edgelm --help` lists each command by its docstring's first paragraph, which typer shows with the source's line
    breaks ("what⏎ the files say", a stranger's finding): the paragraph joined into one line, wrapped by the terminal."""
    import inspect

    for command in app.registered_commands:
        if command.short_help is None and (doc := inspect.getdoc(command.callback)):
            command.short_help = " ".join(doc.split("\n\n")[0].split())


_one_line_summaries()


BROKEN_PIPE = 141  # 128 + SIGPIPE


class Terminated(BaseException):
    """SIGTERM (a service manager, `kill`, a CI timeout) or another signal that would end the process (stops.ENDING: a
    closed terminal's SIGHUP), raised where the command is so that it unwinds as for Ctrl-C: atomic outputs and
    temporary folders are removed on the way out. A BaseException, not a KeyboardInterrupt: chat and calibrate take
    Ctrl-C as "stop this reply / keep the best so far" and go on."""

    def __init__(self, signum: int = signal.SIGTERM):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    for number in ENDING:  # a second one must not cut the cleanup short
        if signal.getsignal(number) is _terminate:
            signal.signal(number, signal.SIG_IGN)
    stop = Terminated(signum)
    stopped(stop)
    raise_unless_held(stop)


BURST_S = 0.5  # Ctrl-Cs this close to the one before are one stop (a key held down repeats every ~33 ms after ~500 ms)
_last_interrupt = [float("-inf")]


def _interrupt(signum, frame) -> None:
    """Ctrl-C as Python's own handler (KeyboardInterrupt), counted for the atomic outputs (fileio._Stops). A Ctrl-C
    within BURST_S of the one before is counted, not raised: five 3 ms apart on a loaded machine reached Python one by
    one, the first stopped the reply and the second, raised while "(stopped)" was printed, ended the chat (exit 130)."""
    now = time.monotonic()
    in_burst, _last_interrupt[0] = now - _last_interrupt[0] < BURST_S, now
    stopped(KeyboardInterrupt)
    if not in_burst:
        raise_unless_held(KeyboardInterrupt)


def _unraisable(hook):
    """sys.unraisablehook, but a stop raised where Python cannot raise it (a finalizer, a weakref callback) is not
    printed as a traceback ("Exception ignored in … KeyboardInterrupt"): the next atomic output raises it again."""
    def quiet(unraisable) -> None:
        if not isinstance(unraisable.exc_value, (KeyboardInterrupt, Terminated)):
            hook(unraisable)
    return quiet


QUIET = ("-q", "--quiet")


def _quiet_first(args: list[str]) -> list[str]:
    """`edgelm generate M -q` read as `edgelm -q generate M`: --quiet is the program's option, and a stranger typed it
    after the command, as other CLIs take it ("No such option: -q"). A -q that is an option's value (`-p -q`) stays."""
    group = typer.main.get_command(app)
    first = next((i for i, a in enumerate(args) if not a.startswith("-")), None)
    command = group.commands.get(args[first]) if first is not None else None
    if command is None:
        return args
    takes_value = {name for p in command.params if p.param_type_name == "option" and not p.is_flag and not p.count for name in p.opts}
    rest, hoisted, after_value = [], [], False
    for i, arg in enumerate(args[first + 1:], first + 1):
        if arg == "--":
            rest += args[i:]
            break
        if arg in QUIET and not after_value:
            hoisted.append(arg)
        else:
            rest.append(arg)
        after_value = arg in takes_value and not after_value
    return hoisted + args[:first + 1] + rest


def _other_commands_option(exc: Exception) -> str | None:
    """An option this command lacks that other commands take, said so: `chat --json` read "No such option: --json
    (Possible options: --stop)", click's nearest spelling, not a command that has it. Click's spellings stay where
    they share a word with the option (`generate --tokens`: --max-new-tokens)."""
    if type(exc).__name__ != "NoSuchOption" or getattr(exc, "ctx", None) is None:
        return None
    takers = [name for name, command in typer.main.get_command(app).commands.items()
              if any(exc.option_name in p.opts for p in command.params)]
    if not takers:
        return None
    words = [word for word in exc.option_name.split("-") if len(word) > 2]
    near = [option for option in exc.possibilities or () if any(word in option for word in words)]
    return (f"`{exc.ctx.command_path}` has no {exc.option_name} option ({', '.join(takers)} "
            f"{'takes' if len(takers) == 1 else 'take'} it" + (f"; did you mean {' or '.join(near)}?)" if near else ")"))


def main() -> None:
    """Run the CLI: a user mistake is one line and exit 2; Ctrl-C (exit 130) and SIGTERM (exit 143) say nothing
    was left half-written, without a traceback."""
    # each where the caller left it to end the process: `nohup` keeps SIGHUP ignored, and a caller's own handler stays
    previous = {number: signal.signal(number, _terminate) for number in ENDING
                if number == signal.SIGTERM or signal.getsignal(number) == signal.SIG_DFL}
    _last_interrupt[0] = float("-inf")
    previous_interrupt = signal.signal(signal.SIGINT, _interrupt) if signal.getsignal(signal.SIGINT) is signal.default_int_handler else None
    hook, sys.unraisablehook = sys.unraisablehook, _unraisable(sys.unraisablehook)
    streams = guarded_streams()
    try:
        # a stop the main thread cannot take while native code computes; one in an import; a tokenizer's panic message
        with StopWatch(), held_during_imports(), descriptor2.for_the_program():
            _run()
    finally:
        for number, handler in previous.items():  # main() called in a longer-lived process (tests) leaves them as they were
            signal.signal(number, handler)
        if previous_interrupt is not None:
            signal.signal(signal.SIGINT, previous_interrupt)
        sys.unraisablehook = hook
        sys.stdin, sys.stdout, sys.stderr = streams


def entry() -> None:
    """The `edgelm` program: main(), then the interpreter's exit. Python takes a moment to tear down torch and
    onnxruntime after the command is done, and resets its own signal handlers to the system's first: a Ctrl-C then
    killed the process by SIGINT (a stranger's export had written its file and its last line; the shell saw 130).
    Once main() is done, Ctrl-C is ignored: the command's status is the one it exits with (SIGTERM still ends it)."""
    try:
        main()
    finally:
        if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # kept through finalization, unlike a handler of Python's


def _json_failure(message: str, code: int) -> None:
    """Under --json a failure is a JSON object on stdout too, so a program reading it has something to parse (as
    npm --json answers an error), beside the one line on stderr."""
    if _asked["json"]:
        try:
            sys.stdout.write(json.dumps({"error": message, "exit_code": code}) + "\n")
            sys.stdout.flush()
        except OutputLost:
            _quiet_stdout()


def _quiet_stdout() -> None:
    """Point descriptor 1 at os.devnull, so the interpreter's own flush at exit does not fail a second time
    ("Exception ignored … BrokenPipeError")."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
    except OSError:
        return
    try:
        os.dup2(devnull, 1)
    except OSError:
        pass
    finally:
        os.close(devnull)


def _run() -> None:
    from typer.exceptions import TyperException

    _asked["json"] = False
    try:
        code = app(args=_quiet_first(sys.argv[1:]), standalone_mode=False)
        sys.stdout.flush()  # what is still buffered fails here, in the command, not at the interpreter's exit
    except Terminated as stop:
        try:
            sys.stderr.write(f"\n{ending_words(stop.signum)}; nothing was left half-written\n")
        except OSError:  # a SIGHUP's terminal is gone
            pass
        sys.exit(128 + stop.signum)
    except KeyboardInterrupt:  # past the command's own handling (typer's: exit 130), e.g. while its last line was printed
        sys.stderr.write("\ninterrupted; nothing was left half-written\n")
        sys.exit(INTERRUPTED)
    except UserError as exc:
        err.print(f"error: {exc.line()}", markup=False, soft_wrap=True)
        _json_failure(exc.line(), exc.exit_code)
        sys.exit(exc.exit_code)
    except OutputLost as exc:  # the result did not arrive: a failure, said where it can be (stderr may be gone too)
        _quiet_stdout()
        if exc.errno == errno.EPIPE:  # the reader left (`| head`): quiet, with the status a shell gives a process SIGPIPE ends
            sys.exit(BROKEN_PIPE)
        err.print(f"error: could not write to standard output ({exc}); nothing more was written", markup=False, soft_wrap=True)
        sys.exit(1)
    except MemoryError:  # the machine's memory, or an address-space limit (`ulimit -v`: stranger 54's was a traceback)
        message = ("out of memory: the model, its context and the engine did not fit in what this process may use (an "
                   "address-space limit, `ulimit -v`, counts) — free memory, raise the limit, or use a smaller context (-c) or quant")
        err.print(f"error: {message}", markup=False, soft_wrap=True)
        _json_failure(message, 2)
        sys.exit(2)
    except OSError as exc:  # the place written to, met outside an atomic output: torch's optimizer asks tempfile for a folder
        if "No usable temporary directory" in str(exc):  # (calibrate on a full /tmp and /var/tmp was a traceback)
            message = "no usable temporary folder: TMPDIR, /tmp and /var/tmp are full or cannot be written — free some space or set TMPDIR"
        elif getattr(exc, "errno", None) in DISK_FULL_ERRNOS:
            message = f"writing failed ({exc.strerror}) — free some space"
        elif getattr(exc, "errno", None) == errno.ENAMETOOLONG:  # a user's path, met wherever a command first touched it
            # (export --out of 300 bytes was a traceback while bundle and inspect checked theirs: stranger 44)
            name = os.fsdecode(exc.filename or "")
            message = (f"{name[:60]}{'…' if len(name) > 60 else ''}: the name is too long for the file system (at most 255 bytes "
                       "a name, 4,096 a path) — give a shorter one")
            err.print(f"error: {message}", markup=False, soft_wrap=True)
            _json_failure(message, 2)
            sys.exit(2)
        else:
            raise
        err.print(f"error: {message}", markup=False, soft_wrap=True)
        _json_failure(message, 1)
        sys.exit(1)
    except NotFinite as exc:  # the command ran and its result is no number: a failed check, as parity's limits
        err.print(f"error: {exc}", markup=False, soft_wrap=True)
        sys.exit(1)
    except typer.Abort:  # Ctrl-D at a prompt
        sys.exit(1)
    except TyperException as exc:  # usage errors: click's message on the one line, exit 2
        # a usage error can come before click reached --json (`edgelm generate --bogus --json`): a program that
        # asked for JSON still gets its object
        _asked["json"] = _asked["json"] or "--json" in sys.argv[1:sys.argv.index("--") if "--" in sys.argv else None]
        command = getattr(getattr(exc, "ctx", None), "command_path", "edgelm")
        if type(exc).__name__ == "NoArgsIsHelpError":  # `edgelm` alone: its message is the help, printed as `--help` prints it
            # (a stranger saw "error: ; see …" when rich printed it)
            err.print(exc.format_message(), markup=False, soft_wrap=True, highlight=False)
            message = f"no command given; see `{command} --help`"
        else:
            message = f"{_other_commands_option(exc) or exc.format_message().rstrip('.')}; see `{command} --help`"
        err.print(f"error: {message}", markup=False, soft_wrap=True)
        _json_failure(message, exc.exit_code)
        sys.exit(exc.exit_code)
    if code == INTERRUPTED:
        sys.stderr.write("\ninterrupted; nothing was left half-written\n")
    sys.exit(code if isinstance(code, int) else 0)
