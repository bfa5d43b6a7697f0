"""Activation-aware int4 for ONNX (AWQ, Lin et al. 2023) from the importance matrix: scale each input
channel j of the weights that read a norm's output by s_j = rms_j^α (rms_j² = in_sum2 / counts, the
statistics llama.cpp's quantizer weighs by), and divide the norm's weight (and bias) by s_j. The model
computes exactly the same function; round-to-nearest int4 then spends its levels where activations
are large. The same kind of fold as the head temperatures (export/temperatures.py)."""

from __future__ import annotations

import numpy as np
import torch

from .imatrix import ImportanceMatrix

ALPHA = 0.5  # AWQ's grid search lands near 0.5 for most layers of llama-family models


def norm_folds(imatrix: ImportanceMatrix, norm_params: dict[str, list[str]], tied: set[str],
               alpha: float = ALPHA) -> dict[str, tuple[int, torch.Tensor]]:
    """{tensor name: (axis, scale)}: for every norm module (`norm_params`: module name → its 1-D
    parameter names) whose output only weights not `tied` (shared with an embedding) multiply,
    those weights' input columns (axis 1 of [out, in]) times s and the norm's parameters divided."""
    readers: dict[str, list[str]] = {}
    for weight, norm in imatrix.fed_by.items():
        readers.setdefault(norm, []).append(weight)
    folds = {}
    for norm, weights in readers.items():
        if norm not in norm_params or not norm_params[norm] or tied & set(weights):
            continue
        s = imatrix.mean_squares(weights[0]).astype(np.float64) ** (alpha / 2)
        s = np.maximum(s, s.max() * 1e-4)
        s = torch.from_numpy(s / np.exp(np.log(s).mean())).float()  # geometric mean 1: weights keep their scale
        for weight in weights:
            folds[weight] = (1, s)
        for param in norm_params[norm]:
            folds[param] = (0, 1 / s)
    return folds
