"""ONNX Runtime behind the runtime interface, for the folders `edgelm export --format onnx` writes.

The KV cache stays in ONNX Runtime's own OrtValues between calls (`run_with_ort_values`): a decode step
hands the previous step's present tensors straight back as the next past, without a round trip
through numpy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ..errors import UserError
from .backend import Backend

PROVIDERS = {
    "cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "xnnpack": "XnnpackExecutionProvider",
    "coreml": "CoreMLExecutionProvider", "nnapi": "NnapiExecutionProvider", "qnn": "QNNExecutionProvider",
    "webgpu": "WebGpuExecutionProvider", "dml": "DmlExecutionProvider", "openvino": "OpenVINOExecutionProvider",
}


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
    def __init__(self, folder: Path, genai: dict, threads: int | None = None, provider: str = "cpu"):
        import onnxruntime as ort

        decoder = genai["model"]["decoder"]
        self.session = session_for(folder / decoder["filename"], threads, provider)
        self.layers = decoder["num_hidden_layers"]
        self.kv_heads, self.head_size = decoder["num_key_value_heads"], decoder["head_size"]
        self.context_length = genai["model"]["context_length"]
        self.input_names = {i.name for i in self.session.get_inputs()}
        self.output_names = [o.name for o in self.session.get_outputs()]
        self._ort = ort
        self.reset()

    def reset(self) -> None:
        empty = np.zeros((1, self.kv_heads, 0, self.head_size), dtype=np.float32)
        self.past = [self._ort.OrtValue.ortvalue_from_numpy(empty) for _ in range(2 * self.layers)]
        self._position = 0

    @property
    def position(self) -> int:
        return self._position

    def forward(self, ids: list[int]) -> np.ndarray:
        ort = self._ort
        start, n = self._position, len(ids)
        feeds = {
            "input_ids": ort.OrtValue.ortvalue_from_numpy(np.array([ids], dtype=np.int64)),
            "attention_mask": ort.OrtValue.ortvalue_from_numpy(np.ones((1, start + n), dtype=np.int64)),
        }
        if "position_ids" in self.input_names:
            feeds["position_ids"] = ort.OrtValue.ortvalue_from_numpy(np.arange(start, start + n, dtype=np.int64)[None])
        for i in range(self.layers):
            feeds[f"past_key_values.{i}.key"], feeds[f"past_key_values.{i}.value"] = self.past[2 * i], self.past[2 * i + 1]
        outputs = self.session.run_with_ort_values(self.output_names, feeds)
        self.past = list(outputs[1:])
        self._position = start + n
        return outputs[0].numpy()[0].astype(np.float32)


def read_onnx_folder(folder: Path) -> tuple[dict, dict]:
    """genai_config.json and edgelm.json of an ONNX folder, validated."""
    found = {}
    for name in ("genai_config.json", "edgelm.json"):
        path = folder / name
        if not path.is_file():
            raise UserError(f"{name} is missing", folder, "export the model again with `edgelm export --format onnx`")
        try:
            found[name] = json.loads(path.read_text())
        except json.JSONDecodeError as exc:
            raise UserError(f"{name} is not valid JSON ({exc})", path, "export the model again") from None
    model = folder / found["genai_config.json"].get("model", {}).get("decoder", {}).get("filename", "model.onnx")
    if not model.is_file():
        raise UserError("model.onnx is missing", folder, "export the model again with `edgelm export --format onnx`")
    return found["genai_config.json"], found["edgelm.json"]
