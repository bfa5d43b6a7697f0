"""llama-cpp-python behind the runtime interface: stock llama.cpp runs the file, edgelm only feeds
tokens and reads logits."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from .backend import Backend

GGML_TYPE_F32 = 0


class LlamaCppBackend(Backend):
    def __init__(self, path: Path, context_length: int, threads: int | None = None, gpu_layers: int = 0, f32_kv_cache: bool = False):
        from llama_cpp import Llama

        cache_types = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_kv_cache else {}
        self.llm = Llama(
            model_path=str(path),
            n_ctx=context_length,
            n_batch=min(context_length, 512),
            n_threads=threads or os.cpu_count(),
            n_gpu_layers=gpu_layers,
            logits_all=True,  # perplexity and parity read every position's logits
            verbose=False,
            **cache_types,
        )
        self.context_length = context_length

    def reset(self) -> None:
        self.llm.reset()

    @property
    def position(self) -> int:
        return self.llm.n_tokens

    def forward(self, ids: list[int]) -> np.ndarray:
        start = self.llm.n_tokens
        self.llm.eval(ids)
        return np.array(self.llm.scores[start : self.llm.n_tokens], dtype=np.float32)
