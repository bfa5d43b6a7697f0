"""Importance matrices: llama.cpp's per-input-channel activation statistics (quantize/calibration.py
collects them from the torch reference). Its quantizers weigh each column's rounding error by
in_sum2 / counts.

Written as llama.cpp's imatrix.gguf (`general.type = imatrix`, `<tensor>.in_sum2` f32 [channels, 1],
`<tensor>.counts` f32 [1, 1], `imatrix.datasets` / `imatrix.chunk_count` / `imatrix.chunk_size`), with
the GGUF tensor names of the model's export, so `llama-quantize --imatrix` reads ours too.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

GENERAL_TYPE = "general.type"
DATASETS, CHUNK_COUNT, CHUNK_SIZE = "imatrix.datasets", "imatrix.chunk_count", "imatrix.chunk_size"
# what llama-quantize records in a file it quantized with an imatrix (tools/quantize/quantize.cpp, through --override-kv)
QUANTIZE_DATASET, QUANTIZE_ENTRIES, QUANTIZE_CHUNKS = ("quantize.imatrix.dataset", "quantize.imatrix.entries_count",
                                                       "quantize.imatrix.chunks_count")
SUMS, COUNTS = ".in_sum2", ".counts"



@dataclass
class ImportanceMatrix:
    """Per weight (by the module's tensor name): the sum over token rows of each input channel's
    squared activation, and the number of rows."""

    sums: dict[str, np.ndarray] = field(default_factory=dict)  # float64 [channels]
    counts: dict[str, int] = field(default_factory=dict)
    datasets: list[str] = field(default_factory=list)
    chunk_count: int = 0
    chunk_size: int = 0
    # not in the file: which weights multiply a norm's output directly (weight → norm module name), so
    # a per-channel scale can fold exactly into that norm (quantize/awq.py)
    fed_by: dict[str, str] = field(default_factory=dict)

    def mean_squares(self, name: str) -> np.ndarray:
        """in_sum2 / counts, what llama.cpp's quantizer weighs each column by."""
        return (self.sums[name] / max(self.counts[name], 1)).astype(np.float32)

    def add(self, name: str, sums: np.ndarray, rows: int) -> None:
        if name in self.sums:
            self.sums[name] += sums
            self.counts[name] += rows
        else:
            self.sums[name], self.counts[name] = sums, rows


def quantize_keys(imatrix: ImportanceMatrix, entries: int) -> dict[str, str | int]:
    """The keys llama-quantize adds to a file quantized with `imatrix` of `entries` weights, so gguf-dump shows it was
    calibrated and on what: its first dataset (llama.cpp records one), entries and chunks. Its quantize.imatrix.file,
    the path of the matrix given, is left out: edgelm's matrix lives in a temporary file."""
    return {QUANTIZE_DATASET: imatrix.datasets[0] if imatrix.datasets else "", QUANTIZE_ENTRIES: entries,
            QUANTIZE_CHUNKS: imatrix.chunk_count}


def write_gguf(imatrix: ImportanceMatrix, gguf_names: dict[str, str], path: Path) -> list[str]:
    """Write llama.cpp's imatrix.gguf at `path`, each entry under its GGUF tensor name
    (`gguf_names`: module tensor name → GGUF name; entries without one are left out, in name order as
    llama-imatrix sorts them). Returns the GGUF names written."""
    from gguf import GGUFWriter

    writer = GGUFWriter(str(path), arch=None)  # llama-imatrix writes no general.architecture
    writer.add_string(GENERAL_TYPE, "imatrix")
    writer.add_array(DATASETS, imatrix.datasets)
    writer.add_uint32(CHUNK_COUNT, imatrix.chunk_count)
    writer.add_uint32(CHUNK_SIZE, imatrix.chunk_size)
    written = sorted((gguf_names[n], n) for n in imatrix.sums if n in gguf_names)
    for gguf_name, name in written:  # 2-D as llama-imatrix makes them: ne [channels, matrices], [1, matrices]
        writer.add_tensor(gguf_name + SUMS, imatrix.sums[name].astype(np.float32)[None])
        writer.add_tensor(gguf_name + COUNTS, np.array([[imatrix.counts[name]]], dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return [g for g, _ in written]


def read_gguf_mean_squares(path: Path) -> dict[str, np.ndarray]:
    """{GGUF tensor name: in_sum2 / counts} from an imatrix.gguf, as llama-quantize loads it
    (tools/quantize/quantize.cpp, load_imatrix): read with gguf-py, entry by entry."""
    from gguf import GGUFReader

    reader = GGUFReader(path)
    tensors = {t.name: np.asarray(t.data, dtype=np.float32).reshape(-1) for t in reader.tensors}
    out = {}
    for name, sums in tensors.items():
        if name.endswith(SUMS):
            base = name.removesuffix(SUMS)
            count = float(tensors[base + COUNTS][0])
            out[base] = sums / count if count > 0 else np.ones_like(sums)
    return out
