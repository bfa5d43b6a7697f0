"""What a format declares, and the one place that decides which format a path is.

A format is a kind of thing a user can point edgelm at: a model folder, a GGUF file, an ONNX folder, a
bundle. Each registered class says how it is detected, opened (tokenizer + backend), described
(`edgelm inspect`), bundled for a phone, and how many weight bytes a decode step reads; commands and
benchmarks ask `detect` and never test paths themselves.
"""

from __future__ import annotations

import logging
import os
from abc import ABC, abstractmethod
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

from ..errors import UserError
from ..hub import resolve_model
from ..numbers import check_count, check_flag
from ..runtime.backend import Backend
from ..tokenizer import Tokenizer


DEFAULT_CONTEXT_LENGTH = 4096
log = logging.getLogger("edgelm")


# load options one engine honours and another has no use for: LoadOptions field -> (the values that ask for
# nothing, the command line's flag, what it applies to); what to do instead is each Format's `option_fixes`
# (else "drop FLAG")
RUNTIME_OPTIONS = {
    "f32_kv_cache": ((False,), "--f32-kv-cache", "a GGUF file (llama.cpp's and the ggml executor's KV cache type)"),
    "gpu_layers": ((0,), "--gpu-layers", "a GGUF file (llama.cpp's layer offload)"),
    "provider": (("cpu",), "--provider", "an ONNX folder (onnxruntime's execution provider)"),
    # --device places torch's tensors (and edgelm's ggml executor's graph). onnxruntime and llama.cpp users place
    # work with their engine's own option, which edgelm also takes: an execution provider (CUDA's needs the
    # onnxruntime-gpu package) and a count of offloaded layers (llama.cpp's -ngl, bounded by GPU memory).
    # Mapping cuda onto either would guess a package or a layer count, and give one knob two names; an explicit
    # device is refused with the option to use. auto asks for nothing: it is cuda on any GPU machine, where
    # every engine still runs as its own options say.
    "device": (("cpu", "auto"), "--device", "a model folder (the torch reference) and a GGUF edgelm's ggml executor runs"),
    "allow_pickle": ((False,), "--allow-pickle", "a model folder whose weights are a pickle (pytorch_model.bin)"),
}


DEVICES = ("auto", "cpu", "cuda")


def resolve_device(requested: str) -> str:
    """The torch device a --device names: auto is cuda where torch sees a CUDA GPU, else cpu."""
    if requested == "cpu":
        return requested  # without importing torch: running a GGUF or ONNX artifact does not need it
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda, but torch sees no CUDA GPU", None, "use --device cpu or auto")
    return requested


def recorded_training_length(config: Any) -> int | None:
    """`edgelm.training_length` of a config document, where it is a whole number of tokens; else None."""
    from ..numbers import is_count

    recorded = config.get("edgelm") if isinstance(config, dict) else None
    length = recorded.get("training_length") if isinstance(recorded, dict) else None
    return length if is_count(length, 1) else None


@dataclass(frozen=True)
class LoadOptions:
    position_encoding: str | None = None  # model folders only
    head_temperatures: Path | list | None = None  # model folders only: a file, or a [layers][heads] table
    allow_pickle: bool = False  # model folders only
    device: str = "cpu"  # as asked (auto, cpu, cuda): the torch reference's; cuda also puts edgelm's ggml executor on a GPU
    threads: int | None = None  # llama.cpp and onnxruntime
    gpu_layers: int = 0  # llama.cpp offload, where the build has a GPU
    f32_kv_cache: bool = False  # llama.cpp: its default f16 cache alone costs ~1e-3 in logits
    all_logits: bool = False  # llama.cpp: keep every position's logits (parity, perplexity), not only the last
    context_length: int | None = None  # tokens the KV cache holds; default: the model's, at most DEFAULT_CONTEXT_LENGTH
    provider: str = "cpu"  # onnxruntime execution provider

    def __post_init__(self):
        """The counts checked where every opening passes (the CLI's options have their own minimums; the Python
        API came straight here: context_length -5 aborted ggml, 2.5 decoded forever, True held 'True' tokens)."""
        for name in ("allow_pickle", "f32_kv_cache", "all_logits"):
            check_flag(name, getattr(self, name))
        for name, low in (("context_length", 2), ("threads", 1), ("gpu_layers", 0)):
            value = getattr(self, name)
            if value is not None:
                check_count(name, value, low, where=" or None" if name != "gpu_layers" else "")
        cores = os.cpu_count() or 1
        if self.threads is not None and self.threads > cores:  # onnxruntime with 10^6 threads grew to 8 GB and never opened
            raise ValueError(f"threads must be at most the {cores} CPUs here, not {self.threads}")
        if self.device not in DEVICES:  # device="tpu" was torch's own error from deep in Module.to
            raise ValueError(f"device must be one of {', '.join(DEVICES)}, not {self.device!r}")

    def context_for(self, trained: int) -> int:
        """The context a generation backend allocates: the one asked for, else the model's training context
        up to DEFAULT_CONTEXT_LENGTH (a GGUF declaring 131,072 positions allocated all of them: 6.8 s and
        210 MB to open a 10 MB model). llama-cpp-python's Llama defaults to 512, llama-cli to the training
        context; above the training context a model sees positions it never learned, as llama.cpp warns."""
        if self.context_length and self.context_length > trained:
            log.info(f"a context of {self.context_length} tokens is above the {trained} positions the model declares")
        return self.context_length or min(trained, DEFAULT_CONTEXT_LENGTH)

    def refuse_past_learned_positions(self, table: int | None, path: Path) -> None:
        """A model with learned positions (GPT-2's wpe) has no vector past its table: a longer context is refused
        here, not an IndexError in torch, an abort in llama.cpp or positions read out of bounds in onnxruntime."""
        if table and self.context_length and self.context_length > table:
            raise UserError(f"a context of {self.context_length:,} tokens is past the {table:,} positions this model has learned",
                            path, f"use a context of {table:,} tokens or less")

    def refuse_unused(self, path: Path, noun: str, honoured: frozenset, fixes: dict[str, str]) -> None:
        """One line for a runtime option set away from its default that this format's engine has no use for
        (`parity --f32-kv-cache` on an ONNX folder ran its own cache type and said nothing), as llama.cpp and
        onnxruntime refuse an option they do not know rather than run without it."""
        for name, (unasked, flag, applies) in RUNTIME_OPTIONS.items():
            if name not in honoured and getattr(self, name) not in unasked:
                raise UserError(f"{flag} applies to {applies}, not to {noun}", path, fixes.get(name, f"drop {flag}"))

    def resolved_device(self) -> str:
        """The device the engines that take --device run on (resolve_device)."""
        return resolve_device(self.device)

    def refuse_model_overrides(self, path: Path, noun: str) -> None:
        """An exported artifact carries its position encoding and temperatures inside."""
        if self.position_encoding or self.head_temperatures:
            raise UserError(f"{noun} carries its position encoding and temperatures inside", path,
                            "drop --position-encoding/--head-temperatures, or export again with them")


@dataclass
class Artifact:
    """An opened format: a tokenizer and a backend that own native resources until `close()`."""

    path: Path
    format: Format
    engine: str
    tokenizer: Tokenizer
    backend: Backend
    details: dict[str, Any]
    cleanups: list = field(default_factory=list)  # called by close(), last first (e.g. an unpacked bundle)

    def close(self) -> None:
        self.backend.close()
        while self.cleanups:
            self.cleanups.pop()()

    def __enter__(self) -> Artifact:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Format(ABC):
    kind: ClassVar[str]  # how edgelm names it to a user ("gguf", "onnx folder", …)
    noun: ClassVar[str]  # the same in a sentence ("a GGUF file", "an ONNX folder", …)
    bundled: ClassVar[bool] = True  # what a bundle may hold as its model (not a bundle, not a checkpoint folder)
    honoured: ClassVar[frozenset] = frozenset()  # the RUNTIME_OPTIONS its engine uses (check_options refuses the others)
    option_fixes: ClassVar[dict[str, str]] = {}  # RUNTIME_OPTIONS name -> what to do instead, where not "drop FLAG"
    checkpoint: ClassVar[bool] = False  # a training checkpoint: takes --position-encoding and --head-temperatures, carries no certificate
    bundled_as_is: ClassVar[bool] = False  # a bundle holds the artifact's files unchanged: verify checks its settings_sha256 there too

    def __init__(self, path: Path):
        self.path = path

    @classmethod
    @abstractmethod
    def detect(cls, path: Path) -> bool:
        """Whether `path` is this format; cheap (names, magic bytes, a small JSON), never trusting it."""

    @abstractmethod
    def open(self, options: LoadOptions) -> Artifact:
        """The artifact ready to run; begins with check_options, as describe does."""

    def check_options(self, options: LoadOptions) -> None:
        """The one gate for options against this format, passed by `open` and `describe` alike (`inspect
        x.gguf --allow-pickle` was accepted and ignored while `generate` refused it)."""
        if not self.checkpoint:
            options.refuse_model_overrides(self.path, self.noun)
        options.refuse_unused(self.path, self.noun, self.honoured_options(), self.option_fixes)

    def honoured_options(self) -> frozenset:
        """The RUNTIME_OPTIONS this file's engine uses (a format whose engine depends on the file overrides it)."""
        return self.honoured

    def recorded_temperatures(self) -> Any:
        """The head temperatures an export folded into its weights, as [layers][heads] λ, so a comparison with
        the source model runs the source with them; None where the format records none."""
        return None

    def checked_temperatures(self) -> list[list[float]] | None:
        """recorded_temperatures, refused in one line naming this artifact unless a [layers][heads] table of
        finite, positive λ: parity runs the reference with it, and NaN written into an export's edgelm.json was
        refused as the reference's config.json's fault."""
        import math

        from ..numbers import is_number

        table = self.recorded_temperatures()
        if table is None:
            return None
        rows = table if isinstance(table, list) and table and all(isinstance(row, list) and row for row in table) else None
        if rows is None or len({len(row) for row in rows}) != 1 or not all(is_number(v) and math.isfinite(v) and v > 0 for row in rows for v in row):
            raise UserError("the head temperatures it records (an ONNX folder's edgelm.json head_temperatures, a GGUF's "
                            "edgelm.head_temperatures) are not a [layers][heads] table of finite, positive λ", self.path,
                            "export it again (or give parity --head-temperatures FILE)")
        return table

    def stated_context(self) -> int | None:
        """The positions the artifact states it runs (an ONNX folder's genai_config context_length, which export
        --ctx-size sets); None where its runtime takes the context at load (a GGUF)."""
        return None

    def training_length(self) -> int | None:
        """The tokens the model was trained on where its config records them (`edgelm.training_length`, as
        examples/train.py writes it, carried into a GGUF's edgelm.config and an ONNX folder's config.json): `chat`
        says when a conversation reaches past them. None where nothing says (a model's max_position_embeddings
        is what it may run, not what it learned: the shipped models declare 4,096 and were trained on 256)."""
        return None

    def recorded_position_encoding(self) -> str | None:
        """The position encoding the export ran its model with ("rope", "none", …), so a comparison with the
        source model runs the source the same way even where its config.json declares none; None where the
        format records none."""
        return None

    @abstractmethod
    def describe(self, options: LoadOptions) -> dict[str, Any]:
        """What `edgelm inspect` prints, as plain data; begins with check_options, as open does."""

    @abstractmethod
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step reads (an embedding table only gathered does not count)."""

    def identity(self) -> dict[str, Any]:
        """format, family and quantization as the model file itself states them (`verify` prints these,
        never a manifest's word)."""
        raise UserError(f"a {self.kind} is not what a bundle holds", self.path, "make the bundle again with `edgelm bundle`")

    def certificate(self) -> dict[str, Any] | None:
        """The parity certificate the artifact carries (certificate.py), unchecked; None where it has none."""
        return None

    def stated_sampling(self) -> dict[str, Any]:
        """The sampling the artifact's files recommend, under SamplingOptions' names ({} where they recommend none):
        `chat`'s defaults and a bundle's, as llama.cpp takes a GGUF's general.sampling.* and onnxruntime-genai its search."""
        return {}

    def weights_sha256(self) -> str | None:
        """One sha256 over the artifact's weights (each tensor's name, type, shape and bytes, in file order),
        which the certificate records and `verify` checks: a changed weight is caught whatever the probe
        computes. None where the format has no such hash (its files' sha256 in a bundle manifest cover it)."""
        return None

    def graph_sha256(self) -> str | None:
        """One sha256 over the computation the artifact describes besides its weights, where the format carries one (an
        ONNX graph's nodes); None where the format's runtime defines it (a GGUF's arch and keys: settings_sha256)."""
        return None

    def settings_sha256(self) -> str | None:
        """One sha256 over what the artifact runs by besides its weights and graph — its tokenizer, chat
        template, token ids and generation settings — which the certificate records and `verify` checks:
        a swapped vocabulary entry or an injected template the probe's prompt never meets still fails it.
        None where the format has none (a bundle's files' sha256 in its manifest cover them)."""
        return None

    def tokenizer_sha256(self) -> str | None:
        """One sha256 over the tokenizer files and chat template alone, where a bundle copies them as they are but
        rewrites the other settings (an ONNX folder's genai_config): `verify` checks it in the bundle too. None where
        settings_sha256 covers them in the bundle as well (a GGUF, bundled as it is)."""
        return None

    @property
    def raw_engine(self) -> str | None:
        """The engine that runs this without edgelm, for `bench --compare` (a key of benchmark.RAW_ENGINES)."""
        return None

    def mobile_refusal(self) -> str | None:
        """Why no mobile runtime loads this as it is, or None when one does."""
        return None

    def bundle_into(self, folder: Path) -> dict[str, Any]:
        """Write what a phone needs into `folder`; return the manifest's facts (format, family,
        quantization, context_length, model)."""
        raise UserError(f"a {self.kind} is not bundled as it is", self.path,
                        "bundle a .gguf file or an ONNX folder: run `edgelm export` first")

    def bundled_facts(self) -> dict[str, Any]:
        """What a bundle's manifest says of this bundled model that the model's own files state as well, as they state
        it: `verify` refuses a manifest saying otherwise (an edited family, quantization or context passed it, and
        inspect printed them as verified)."""
        return {}

    def check_extent(self) -> None:
        """`verify`, before the sha256 of the whole artifact: refuse files that hold more than the format reads from them (a
        sparse terabyte behind a graph that runs in seconds), so that hashing ends in the time the weights take."""

    @contextmanager
    def parsed_once(self):
        """Within it, a format that parses its file to answer each question above parses it once (`verify`'s extent check
        and hashes); outside it, no parse is kept, so a graph is not held in memory beside the runtime running it."""
        yield

    def check_bundled(self) -> str | None:
        """`edgelm verify`: what the app's own runtime needs beyond the files edgelm reads (raise UserError); returns
        that runtime's name and version where the model was run in it (verify names it), None where nothing ran."""
        return None

    def web_bundle_into(self, folder: Path) -> dict[str, Any]:
        """Write the model files a browser page runs with onnxruntime-web into `folder`; return the
        manifest's facts, as bundle_into does."""
        raise UserError(f"the web bundle takes an ONNX export, not a {self.kind}", self.path,
                        "export the model folder with `edgelm export MODEL_DIR --format onnx --quant int4`, then bundle that folder")


FORMATS: list[type[Format]] = []  # in order of detection: the first whose detect() says yes decides


def register(cls: type[Format]) -> type[Format]:
    FORMATS.append(cls)
    return cls


def detect(path: str | Path, allow_pickle: bool = False) -> Format:
    """The format of a path; a hub id (ORG/NAME[@REVISION]) is first resolved to its cached snapshot."""
    path = resolve_model(path, allow_pickle)
    for cls in FORMATS:
        if cls.detect(path):
            return cls(path)
    if not path.exists():
        raise UserError("no such file or folder", path, "give a model folder, a .gguf file, an ONNX folder or a bundle")
    raise UserError("unknown kind of artifact", path,
                    "edgelm reads model folders (config.json + safetensors), GGUF files, ONNX folders and bundles")


def open_artifact(path: str | Path, options: LoadOptions = LoadOptions()) -> Artifact:
    return detect(path, options.allow_pickle).open(options)
