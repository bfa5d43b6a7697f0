"""llama.cpp's own quantizer (`llama_model_quantize`, through llama-cpp-python), in a process of its own.

The export that calls it has imported torch and the model families (~0.25 GB resident); the quantizer
holds about the largest tensor in f32 (1.1B's embedding: 262 MB) plus its quantized copy. In one
process the two added up to 0.62–0.65 GB (1.1B → Q4_K_M); apart, neither process passes 0.37 GB (the
waiting exporter and the quantizer together still reach ~0.62). The quantizer's process imports only
llama-cpp-python, as llama.cpp's own `llama-quantize` runs apart from its converter.

    python -m edgelm.quantize.llama_cpp SOURCE.gguf TARGET.gguf FILE_TYPE [IMATRIX.gguf|""] [{"types": …, "metadata": …}]
    → TARGET.gguf; on stdout a line `PROGRESS n total` as llama.cpp starts each tensor (its own
      "[  n/total]" log line, as llama-quantize prints it), then {tensor name: GGML type name} as JSON

With an importance matrix (llama.cpp's imatrix.gguf, quantize/imatrix.py), the process hands it to
`llama_model_quantize` as llama-quantize does: each entry's in_sum2 / counts, as an array of
`llama_model_imatrix_data` ended by a NULL name (`llama_model_quantize_params.imatrix`). With
{tensor name: GGML type name} (quantize/mixed.py's choice), each tensor gets its type through
`llama_model_quantize_params.tt_overrides` (an anchored pattern per tensor, ended by a NULL pattern),
as llama-quantize's `--tensor-type NAME=TYPE` hands them over; metadata keys through `kv_overrides`, as its
`--override-kv` and its own record of the imatrix.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserError

REFUSED = 3  # the exit status for "llama_model_quantize returned an error"
PROGRESS = "PROGRESS"  # the child's stdout lines that report a tensor started
LLAMA_TENSOR_LINE = re.compile(rb"^\[\s*(\d+)/\s*(\d+)\]")  # llama_model_quantize_impl's "[%4d/%4d] name - ..."
LLAMA_LOG_ERROR = 3  # ggml_log_level


def quantize_gguf(source: Path, target: Path, file_type: int, type_name: str, imatrix: Path | None = None,
                  tensor_types: dict[str, str] | None = None, metadata: dict[str, str | int] | None = None,
                  on_tensor: Callable[[int, int], None] | None = None) -> dict[str, str]:
    """Write `target`, `source` (an f32 GGUF of an arch llama.cpp knows) quantized to `file_type`,
    weighing rounding errors by `imatrix` (an imatrix.gguf) when given, `tensor_types` ({tensor name:
    GGML type name}) overriding llama.cpp's choice for those tensors, `metadata` ({key: string of at most
    127 bytes, or integer}) added to the file's (llama-quantize's --override-kv); `on_tensor(n, total)` as
    llama.cpp starts the n-th tensor (this step is most of a 1.1B export: 4 of its 5 minutes on 2 cores);
    returns the GGML type name of each tensor, as gguf-py reads them from `target`."""
    _give_back_freed_heap()
    types = [json.dumps({"types": tensor_types or {}, "metadata": metadata or {}})] if tensor_types or metadata else []
    command = [sys.executable, "-m", __name__, str(source), str(target), str(file_type), str(imatrix or ""), *types]
    lines = []
    with tempfile.TemporaryFile("w+", errors="replace") as stderr:  # a file, not a pipe: nothing to drain while stdout is read
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=stderr, text=True, errors="replace")
        try:
            for line in process.stdout:
                words = line.split()
                if len(words) == 3 and words[0] == PROGRESS:
                    if on_tensor:
                        on_tensor(int(words[1]), int(words[2]))
                else:
                    lines.append(line)
            returncode = process.wait()
        except BaseException:  # Ctrl-C, SIGTERM (cli's Terminated): the quantizer goes with the export, as subprocess.run does it
            process.kill()
            process.wait()
            raise
        finally:
            process.stdout.close()
        stderr.seek(0)
        errors = stderr.read()
    if returncode == 0:
        return json.loads(lines[-1])  # the last line: llama.cpp may print before it
    if returncode == REFUSED:
        raise UserError(f"llama.cpp's quantizer refused to make {type_name}", None,
                        "choose another --gguf-type (Q4_K_M is the usual int4), or check the disk has room")
    last = (errors.strip().splitlines() or [f"exit status {returncode}"])[-1]
    raise UserError(f"llama.cpp's quantizer stopped before making {type_name} ({last})", None,
                    "check the disk has room and memory is free, then export again")


def _give_back_freed_heap() -> None:
    """glibc keeps the heap pages of the tensors the export just wrote and freed (0–100 MB measured on
    1.1B); `malloc_trim` returns them before the quantizer's process starts. Elsewhere, nothing to do."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (AttributeError, OSError, TypeError):  # not glibc (macOS, musl: no malloc_trim; Windows: no CDLL(None))
        pass


def _imatrix_array(path: str, llama_cpp):
    """llama-quantize's `load_imatrix` + its array: {name: in_sum2 / counts} as the C struct array the
    quantizer reads, NULL-terminated. Returns the array and the buffers it points into (keep both)."""
    from .imatrix import read_gguf_mean_squares  # gguf-py and numpy only: no torch here

    entries = {name: np.ascontiguousarray(values, dtype=np.float32) for name, values in read_gguf_mean_squares(Path(path)).items()}
    array = (llama_cpp.llama_model_imatrix_data * (len(entries) + 1))()
    names = []
    for slot, (name, values) in zip(array, entries.items()):
        names.append(name.encode())
        slot.name = names[-1]
        slot.data = values.ctypes.data_as(ctypes.POINTER(ctypes.c_float))
        slot.size = values.size
    array[len(entries)].name = None
    return array, (entries, names)


def _overrides_array(tensor_types: dict[str, str], llama_cpp):
    """{tensor name: type name} as llama.cpp's NULL-terminated `llama_model_tensor_override` array:
    each pattern matches that one name (std::regex_search, so anchored and escaped)."""
    from gguf import GGMLQuantizationType

    array = (llama_cpp.llama_model_tensor_override * (len(tensor_types) + 1))()
    patterns = [("^" + re.escape(name) + "$").encode() for name in tensor_types]
    for slot, pattern, type_name in zip(array, patterns, tensor_types.values()):
        slot.pattern = pattern
        slot.type = int(GGMLQuantizationType[type_name])
    array[len(tensor_types)].pattern = None
    return array, patterns


def _kv_overrides_array(metadata: dict[str, str | int], llama_cpp):
    """{key: value} as llama.cpp's `llama_model_kv_override` array, ended by an empty key; llama_model_quantize
    writes a string as it is and an integer as uint32 (llama-quant.cpp)."""
    array = (llama_cpp.llama_model_kv_override * (len(metadata) + 1))()
    for slot, (key, value) in zip(array, metadata.items()):
        slot.key = key.encode()
        if isinstance(value, str):
            slot.tag, slot.value.val_str = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_STR, value.encode()[:127]
        else:
            slot.tag, slot.value.val_i64 = llama_cpp.LLAMA_KV_OVERRIDE_TYPE_INT, value
    return array


def _main(source: str, target: str, file_type: str, imatrix: str = "", settings: str = "") -> int:
    import llama_cpp

    @llama_cpp.llama_log_callback
    def log(level: int, text: bytes, _user_data) -> None:
        """llama.cpp's line per tensor becomes a PROGRESS line; its errors go to stderr, the rest nowhere (the
        export prints its own summary)."""
        started = LLAMA_TENSOR_LINE.match(text)
        if started:
            print(PROGRESS, int(started[1]), int(started[2]), flush=True)
        elif level == LLAMA_LOG_ERROR:
            sys.stderr.write(text.decode("utf-8", "replace"))

    llama_cpp.llama_log_set(log, ctypes.c_void_p(0))
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = int(file_type)
    params.nthread = os.cpu_count() or 1
    if imatrix:
        array, keep = _imatrix_array(imatrix, llama_cpp)
        params.imatrix = ctypes.cast(array, ctypes.POINTER(llama_cpp.llama_model_imatrix_data))
    given = json.loads(settings) if settings else {}
    if given.get("types"):
        overrides, _patterns = _overrides_array(given["types"], llama_cpp)
        params.tt_overrides = ctypes.cast(overrides, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    if given.get("metadata"):
        kv = _kv_overrides_array(given["metadata"], llama_cpp)
        params.kv_overrides = ctypes.cast(kv, ctypes.POINTER(llama_cpp.llama_model_kv_override))
    if llama_cpp.llama_model_quantize(source.encode(), target.encode(), params) != 0:
        return REFUSED
    from gguf import GGUFReader  # read here too: its parse of a 32k-token vocabulary holds ~70 MB

    print(json.dumps({t.name: t.tensor_type.name for t in GGUFReader(target).tensors}))
    return 0


if __name__ == "__main__":
    sys.exit(_main(*sys.argv[1:]))
