"""One calibration pass: the torch reference over a text, collecting llama.cpp's importance matrix.

For every weight a matmul multiplies an activation by — each Linear's, and each Pattention's key and
value parameter tokens — the pass sums the squares of the activation's channels (the dimension the
matmul contracts) and counts the token rows: what llama.cpp's `llama-imatrix` collects from its own
graph (tools/imatrix/imatrix.cpp: `acc[j] += x[j] * x[j]`, `counts += rows`).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from ..artifact_files import user_file
from ..constants import TRAINING_TEXTS
from ..errors import UserError
from ..models import CausalLM
from ..tokenizer import leading_ids
from .imatrix import ImportanceMatrix

# the built-in calibration text: the training novels' openings (persuasion, the sixth, is held out for evaluation)
DEFAULT_TEXTS = TRAINING_TEXTS
CHUNKS, CHUNK_TOKENS = 16, 256  # 4096 tokens: seconds on a laptop CPU for the shipped tiny models

_MATMULS = {F.linear, torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__}


class _Recorder(TorchFunctionMode):
    """Sees every matmul while the model runs. A matmul whose second operand is a parameter of the
    innermost running module (or a view of one, as Pattention's `K_p.t()`) adds its first operand's
    squared channels to that parameter's entry. The innermost module names the weight, so a tied
    tensor (an LM head sharing the embedding) is recorded under the module that multiplies by it."""

    def __init__(self, model: nn.Module, imatrix: ImportanceMatrix):
        super().__init__()
        self.imatrix = imatrix
        self.running: list[tuple[str, nn.Module]] = []
        self.fed_by: dict[str, str] = {}  # weight name → the norm module whose output it multiplies
        self.norm_outputs: dict[int, tuple[str, torch.Tensor]] = {}  # this forward's, held so ids stay unique
        self.hooks = []
        for name, module in model.named_modules():
            if any(True for _ in module.parameters(recurse=False)):
                self.hooks.append(module.register_forward_pre_hook(lambda m, a, name=name: self.running.append((name, m))))
                self.hooks.append(module.register_forward_hook(self._leave))

    def _leave(self, module, args, output) -> None:  # a forward hook that returns something replaces the output
        name, _ = self.running.pop()
        if isinstance(output, torch.Tensor) and all(p.dim() == 1 for p in module.parameters(recurse=False)):
            self.norm_outputs[id(output)] = (name, output)  # a norm's (affine) output

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _MATMULS and self.running and len(args) >= 2 and isinstance(args[1], torch.Tensor):
            prefix, module = self.running[-1]
            storage = args[1].untyped_storage().data_ptr()
            for pname, param in module.named_parameters(recurse=False):
                if param.dim() == 2 and param.untyped_storage().data_ptr() == storage:
                    weight = f"{prefix}.{pname}" if prefix else pname
                    rows = args[0].detach().reshape(-1, args[0].shape[-1]).double()
                    self.imatrix.add(weight, rows.square().sum(0).numpy(), rows.shape[0])
                    norm = self.norm_outputs.get(id(args[0]))
                    if norm is not None and norm[1] is args[0]:
                        self.fed_by[weight] = norm[0]
        return func(*args, **(kwargs or {}))

    def close(self) -> None:
        for hook in self.hooks:
            hook.remove()


@torch.no_grad()
def collect(model: CausalLM, chunks: Sequence[Sequence[int]], datasets: Iterable[str]) -> ImportanceMatrix:
    """Run `model` over each chunk of token ids (one forward each, from position 0, as llama-imatrix
    evaluates its chunks) and collect the importance matrix."""
    # names, stored as UTF-8 strings: a file name whose bytes are not UTF-8 (a stranger's --calibration) with them escaped
    names = [os.fsencode(name).decode("utf-8", "backslashreplace") for name in datasets]
    imatrix = ImportanceMatrix(datasets=names, chunk_count=len(chunks), chunk_size=len(chunks[0]) if chunks else 0)
    recorder = _Recorder(model, imatrix)
    try:
        with recorder:
            for chunk in chunks:
                model(torch.tensor([list(chunk)]))
                recorder.norm_outputs.clear()
    finally:
        recorder.close()
    imatrix.fed_by = recorder.fed_by
    return imatrix


def calibration_chunks(tokenizer, texts: Sequence[Path], chunks: int = CHUNKS, size: int = CHUNK_TOKENS) -> list[list[int]]:
    """`chunks` windows of `size` tokens, dealt round-robin over `texts` (consecutive windows from the
    start of each), so several training texts all contribute."""
    per_text = [len(range(i, chunks, len(texts))) for i in range(len(texts))]
    windows: list[list[list[int]]] = []
    for path, count in zip(texts, per_text):
        if not count:  # more texts than chunks
            continue
        ids = leading_ids(tokenizer, user_file(path, "--calibration", None, "calibration text"), size * count, "the calibration text")
        found = [ids[i * size:(i + 1) * size] for i in range(min(count, len(ids) // size))]
        if not found:
            raise UserError(f"the calibration text has {len(ids)} tokens", path, f"give a text of at least {size} tokens")
        windows.append(found)
    ordered = [w[i] for i in range(max(map(len, windows))) for w in windows if i < len(w)]
    return ordered[:chunks]
