"""Whatever a user points a command at — a model folder or a .gguf file — opened as a tokenizer plus
a generation backend behind the one runtime interface."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..tokenizer import Tokenizer
from .backend import Backend


@dataclass(frozen=True)
class LoadOptions:
    position_encoding: str | None = None  # model folders only
    head_temperatures: Path | None = None  # model folders only
    allow_pickle: bool = False
    device: str = "cpu"  # torch reference and native GGUF executor
    threads: int | None = None  # llama.cpp
    gpu_layers: int = 0  # llama.cpp offload, where the build has a GPU
    f32_kv_cache: bool = False  # llama.cpp: its default f16 cache alone costs ~1e-3 in logits
    context_length: int | None = None  # default: the model's
    provider: str = "cpu"  # onnxruntime execution provider


@dataclass
class Artifact:
    path: Path
    kind: str
    engine: str
    tokenizer: Tokenizer
    backend: Backend
    details: dict[str, Any]


def _open_checkpoint(path: Path, options: LoadOptions) -> Artifact:
    from ..models import open_checkpoint
    from ..tokenizer import load_tokenizer
    from .torch_backend import TorchBackend

    checkpoint = open_checkpoint(
        path, position_encoding=options.position_encoding, head_temperatures=options.head_temperatures, allow_pickle=options.allow_pickle
    )
    backend = TorchBackend(checkpoint.load_model(options.device))
    details = {"family": checkpoint.spec.family, "position_encoding": checkpoint.spec.position_encoding}
    return Artifact(path, "model folder", f"torch ({options.device})", load_tokenizer(path), backend, details)


def _open_gguf(path: Path, options: LoadOptions) -> Artifact:
    from ..export.gguf import LLAMA_CPP_ARCHS
    from .gguf_file import gguf_tokenizer, load_gguf_model, open_gguf
    from .torch_backend import TorchBackend

    if options.position_encoding or options.head_temperatures:
        raise UserError("a GGUF file carries its position encoding and temperatures inside", path,
                        "drop --position-encoding/--head-temperatures, or export again with them")
    gguf = open_gguf(path)
    family, spec = gguf.edgelm_model()
    context = options.context_length or spec.max_positions
    details = {"family": family.name, "arch": gguf.arch, "position_encoding": spec.position_encoding}
    if gguf.arch in LLAMA_CPP_ARCHS:
        from .llama_cpp_backend import LlamaCppBackend

        backend = LlamaCppBackend(path, context, options.threads, options.gpu_layers, options.f32_kv_cache)
        engine = "llama.cpp"
    else:
        backend = TorchBackend(load_gguf_model(gguf, options.device))
        engine = f"edgelm native GGUF executor ({options.device})"
    backend.context_length = context
    return Artifact(path, "gguf", engine, gguf_tokenizer(gguf), backend, details)


def _open_onnx(path: Path, options: LoadOptions) -> Artifact:
    from ..tokenizer import load_tokenizer
    from .onnx_backend import OnnxBackend, read_onnx_folder

    if options.position_encoding or options.head_temperatures:
        raise UserError("an ONNX folder carries its position encoding and temperatures inside", path,
                        "drop --position-encoding/--head-temperatures, or export again with them")
    genai, manifest = read_onnx_folder(path)
    try:
        backend = OnnxBackend(path, genai, manifest, options.threads, options.provider)
    except UserError:
        raise
    except Exception as exc:  # onnxruntime raises its own types for a damaged graph
        raise UserError(f"onnxruntime cannot load model.onnx ({str(exc).splitlines()[0][:200]})", path, "export the model again") from None
    if options.context_length:
        backend.context_length = options.context_length
    details = {k: manifest.get(k) for k in ("family", "position_encoding", "quantization")}
    return Artifact(path, "onnx folder", f"onnxruntime ({options.provider})", load_tokenizer(path), backend, details)


def is_onnx_folder(path: Path) -> bool:
    return path.is_dir() and ((path / "genai_config.json").exists() or (path / "model.onnx").exists())


def open_artifact(path: str | Path, options: LoadOptions = LoadOptions()) -> Artifact:
    path = Path(path)
    if is_onnx_folder(path):
        return _open_onnx(path, options)
    if path.is_dir():
        return _open_checkpoint(path, options)
    if path.suffix == ".gguf":
        return _open_gguf(path, options)
    if not path.exists():
        raise UserError("no such file or folder", path, "give a model folder or a .gguf file")
    raise UserError("unknown kind of artifact", path, "edgelm reads model folders (config.json + safetensors), .gguf files and ONNX folders")
