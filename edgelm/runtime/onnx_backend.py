"""ONNX Runtime behind the runtime interface, for the folders `edgelm export --format onnx` writes.

The KV cache is one preallocated OrtValue per layer and side, bound once with IO binding as both
`past_key_values.{i}.*` and `present.{i}.*` (the graph's GroupQueryAttention writes the new positions
into it in place), so a decode step copies no cache and its cost does not grow with the buffer. The
buffers start at the model's context length and double when a longer sequence needs room.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ..constants import GENAI_CONFIG, ONNX_MANIFEST, ONNX_MODEL_FILE
from ..errors import UserError
from .backend import Backend

PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider", "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider", "dml": "DmlExecutionProvider", "openvino": "OpenVINOExecutionProvider",
}

CACHE_DTYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(int8)": np.int8}


def session_for(model: Path, threads: int | None, provider: str):
    import onnxruntime as ort

    name = PROVIDERS.get(provider, provider)
    available = ort.get_available_providers()
    if name not in available:
        short = [k for k, v in PROVIDERS.items() if v in available]
        raise UserError(f"provider {provider!r} is not in this onnxruntime build", model,
                        f"this build has {', '.join(short)}; install the onnxruntime package built for {provider}")
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or os.cpu_count() or 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(model), options, providers=[name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"])


class OnnxBackend(Backend):
    def __init__(self, model: Path, genai: dict, manifest: dict, threads: int | None = None, provider: str = "cpu"):
        import onnxruntime as ort

        decoder = genai["model"]["decoder"]
        self.folder = model.parent
        self.session = session_for(model, threads, provider)
        self.layers = decoder["num_hidden_layers"]
        self.kv_heads, self.head_size = decoder["num_key_value_heads"], decoder["head_size"]
        self.context_length = genai["model"]["context_length"]
        self.rotary_positions = manifest.get("rotary_table_positions", 0)  # 0: no rotary, no limit
        # (past input, present output) names per buffer, from the patterns genai_config.json declares
        names = {**decoder["inputs"], **decoder["outputs"]}
        self.buffer_names = [(names[f"past_{side}_names"] % i, names[f"present_{side}_names"] % i)
                             for i in range(self.layers) for side in ("key", "value")]
        self.input_names, self.logits_name = (names["input_ids"], names["attention_mask"]), names["logits"]
        past_type = {i.name: i.type for i in self.session.get_inputs()}[self.buffer_names[0][0]]
        self.cache_dtype = CACHE_DTYPES[past_type]
        self._ort = ort
        self.buffers: list = []
        self.binding = self.session.io_binding()
        self.reset()

    def close(self) -> None:
        self.binding = self.buffers = self.session = None

    def reset(self) -> None:
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    def _reserve(self, length: int) -> None:
        """Buffers of at least `length` positions, keeping the first `position` ones, each bound once as
        both past input and present output."""
        capacity = self.buffers[0].shape()[2] if self.buffers else 0
        if length <= capacity:
            return
        capacity = max(length, 2 * capacity, self.context_length)
        grown = []
        self.binding.clear_binding_outputs()
        self.binding.bind_output(self.logits_name)  # output 0; forward rebinds it in place
        for i, (past, present) in enumerate(self.buffer_names):
            array = np.zeros((1, self.kv_heads, capacity, self.head_size), self.cache_dtype)
            if self.buffers and self._position:
                array[:, :, : self._position] = self.buffers[i].numpy()[:, :, : self._position]
            grown.append(self._ort.OrtValue.ortvalue_from_numpy(array))
            self.binding.bind_ortvalue_input(past, grown[-1])
            self.binding.bind_ortvalue_output(present, grown[-1])
        self.buffers = grown

    def forward(self, ids: list[int]) -> np.ndarray:
        start, n = self._position, len(ids)
        if self.rotary_positions and start + n > self.rotary_positions:
            raise UserError(f"position {start + n} is past the {self.rotary_positions} positions of this model's rotary "
                            "tables", self.folder, "use a shorter text or context")
        self._reserve(start + n)
        ids_name, mask_name = self.input_names
        self.binding.bind_cpu_input(ids_name, np.array([ids], dtype=np.int64))
        self.binding.bind_cpu_input(mask_name, np.ones((1, start + n), dtype=np.int64))
        self.binding.bind_output(self.logits_name)  # unallocated again: its shape follows the ids
        self.session.run_with_iobinding(self.binding)
        self._position = start + n
        return self.binding.get_outputs()[0].numpy()[0].astype(np.float32, copy=False)


def _plain_name(value: Any, key: str, path: Path) -> str:
    """A file name from a config a stranger wrote: a plain base name, or refused."""
    if not isinstance(value, str) or not value or value != Path(value).name or value in (".", ".."):
        raise UserError(f"{key} {value!r} is not a plain file name inside the folder", path,
                        "refused: a model file must lie in the folder itself; export it again")
    return value


def read_onnx_folder(folder: Path) -> tuple[dict, dict, Path]:
    """genai_config.json (validated), edgelm.json ({} where another tool made the folder) and the
    graph's path, which never leaves the folder."""
    genai_path = folder / GENAI_CONFIG
    if not genai_path.is_file():
        raise UserError(f"{GENAI_CONFIG} is missing", folder, "export the model again with `edgelm export --format onnx`")
    genai = _read_json(genai_path)
    manifest = _read_json(folder / ONNX_MANIFEST) if (folder / ONNX_MANIFEST).is_file() else {}
    try:
        decoder = genai["model"]["decoder"]
        for key in ("num_hidden_layers", "num_key_value_heads", "head_size"):
            if not isinstance(decoder[key], int) or isinstance(decoder[key], bool) or decoder[key] <= 0:
                raise TypeError(f"model.decoder.{key} is {decoder[key]!r}, not a positive integer")
        if not isinstance(genai["model"]["context_length"], int) or genai["model"]["context_length"] <= 0:
            raise TypeError(f"model.context_length is {genai['model']['context_length']!r}, not a positive integer")
        filename = _plain_name(decoder.get("filename", ONNX_MODEL_FILE), "model.decoder.filename", genai_path)
        names = {**decoder.get("inputs", {}), **decoder.get("outputs", {})}
        if not all(isinstance(v, str) for v in names.values()):
            raise TypeError("model.decoder.inputs/outputs hold names that are not strings")
    except (KeyError, TypeError, AttributeError) as exc:
        raise UserError(f"{GENAI_CONFIG} is not a decoder description edgelm can run ({exc.__class__.__name__}: {exc})", genai_path,
                        "export the model again") from None
    if not isinstance(manifest, dict):
        raise UserError(f"{ONNX_MANIFEST} is not a JSON object", folder / ONNX_MANIFEST, "export the model again")
    model = folder / filename
    if not model.is_file():
        raise UserError(f"{filename} is missing", folder, "export the model again with `edgelm export --format onnx`")
    return genai, manifest, model


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise UserError(f"{path.name} is not valid JSON ({exc})", path, "export the model again") from None
