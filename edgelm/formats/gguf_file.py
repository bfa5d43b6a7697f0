"""Reading .gguf files: a validated header (llama.cpp alone only says "Failed to load model") and the
tokenizer files edgelm stores in its own. No torch here: running a GGUF needs only this; gguf_native.py
rebuilds edgelm's model description for `inspect`."""

from __future__ import annotations

import base64
import ctypes
import math
import struct
import tempfile
import weakref
from pathlib import Path
from typing import Any

import numpy as np

from ..artifact_files import MAX_TEMPLATE_BYTES, MAX_TOKENIZER_BYTES, open_regular, read_prefix
from ..constants import (GGUF_CONFIG, GGUF_END_TOKEN_KEYS, GGUF_FAMILY, GGUF_HEAD_TEMPERATURES, GGUF_HEAD_TEMPERATURES_BAKED,
                         GGUF_POSITION_ENCODING, GGUF_TOKENIZER_FILE, GGUF_TOKENIZER_FILE_BASE64, GGUF_VERSION, TOKENIZER_FILES)
from ..errors import UserError
from ..ggml_python import ggml
from ..tokenizer import Tokenizer, load_tokenizer


# ggml's C parser reports failures through ggml's log, on stderr; edgelm reports them in its own one line
_SILENT_LOG = ggml.ggml_log_callback(lambda level, text, user_data: None)
ggml.ggml_log_set(_SILENT_LOG, None)
_SCALARS = {
    ggml.GGUF_TYPE_UINT8: ggml.gguf_get_val_u8, ggml.GGUF_TYPE_INT8: ggml.gguf_get_val_i8,
    ggml.GGUF_TYPE_UINT16: ggml.gguf_get_val_u16, ggml.GGUF_TYPE_INT16: ggml.gguf_get_val_i16,
    ggml.GGUF_TYPE_UINT32: ggml.gguf_get_val_u32, ggml.GGUF_TYPE_INT32: ggml.gguf_get_val_i32,
    ggml.GGUF_TYPE_UINT64: ggml.gguf_get_val_u64, ggml.GGUF_TYPE_INT64: ggml.gguf_get_val_i64,
    ggml.GGUF_TYPE_FLOAT32: ggml.gguf_get_val_f32, ggml.GGUF_TYPE_FLOAT64: ggml.gguf_get_val_f64,
    ggml.GGUF_TYPE_BOOL: ggml.gguf_get_val_bool,
}
_INTEGER_ARRAYS = {ggml.GGUF_TYPE_UINT8: "<u1", ggml.GGUF_TYPE_INT8: "<i1", ggml.GGUF_TYPE_UINT16: "<u2", ggml.GGUF_TYPE_INT16: "<i2",
                   ggml.GGUF_TYPE_UINT32: "<u4", ggml.GGUF_TYPE_INT32: "<i4", ggml.GGUF_TYPE_UINT64: "<u8", ggml.GGUF_TYPE_INT64: "<i8"}
MAX_LAYER_VALUES = 1 << 16  # a per-block array longer than any model's blocks is read as none


class GGUFFile:
    """A GGUF's header as ggml's own C parser reads it (the parser llama.cpp runs on the same file) for
    the scalar and string keys a run needs, and gguf-py's GGUFReader, built on first use, for tensors and
    arrays: GGUFReader parses every array element by element, 1.4 s for a 32,000-token vocabulary that
    running the file in llama.cpp never reads from Python."""

    def __init__(self, path: Path, header):
        self.path, self._header, self._reader = path, header, None
        weakref.finalize(self, ggml.gguf_free, header)

    def has_tensor(self, name: str) -> bool:
        return ggml.gguf_find_tensor(self._header, name.encode()) >= 0

    @property
    def reader(self):
        """gguf-py's GGUFReader over the file (imported here: gguf-py and its yaml cost ~70 ms of every
        start that only runs the file)."""
        if self._reader is None:
            from gguf import GGUFReader

            try:
                self._reader = GGUFReader(str(self.path))
            except Exception as exc:  # gguf-py raises ValueError, struct errors, IndexError… on bad files
                raise UserError(f"not a valid GGUF file ({exc})", self.path, "the file is truncated or damaged: export it again") from None
        return self._reader

    def field(self, key: str, default: Any = None) -> Any:
        found = ggml.gguf_find_key(self._header, key.encode())
        if found < 0:
            return default
        kind = ggml.gguf_get_kv_type(self._header, found)
        if (declared := _DECLARED_TYPES.get(key)) is not None and \
                (kind, ggml.gguf_get_arr_type(self._header, found) if kind == ggml.GGUF_TYPE_ARRAY else None) != declared:
            raise UserError(f"metadata key {key!r} does not hold the {_TYPE_NAMES[declared]} edgelm and llama.cpp read there", self.path,
                            "the file is damaged: export it again")
        if kind == ggml.GGUF_TYPE_STRING:
            try:
                return ggml.gguf_get_val_str(self._header, found).decode("utf-8")
            except UnicodeDecodeError:
                raise UserError(f"metadata key {key!r} is not UTF-8 text", self.path, "the file is damaged: export it again") from None
        if kind in _SCALARS:
            value = _SCALARS[kind](self._header, found)
            return value if kind in (ggml.GGUF_TYPE_FLOAT32, ggml.GGUF_TYPE_FLOAT64, ggml.GGUF_TYPE_BOOL) else int(value)
        return self.reader.fields[key].contents()  # an array

    def int32_array(self, key: str) -> np.ndarray:
        """An INT32 array key (a vocabulary's token types) read through ggml's C parser, which holds it already:
        `field` goes through gguf-py's GGUFReader, which parses the whole file and builds a Python list of every
        element (a Llama 3 vocabulary: 128,256) on each opening of a file that is only to be run. Empty: no such
        key, or not an INT32 array."""
        found = ggml.gguf_find_key(self._header, key.encode())
        count = 0 if found < 0 or ggml.gguf_get_kv_type(self._header, found) != ggml.GGUF_TYPE_ARRAY \
            or ggml.gguf_get_arr_type(self._header, found) != ggml.GGUF_TYPE_INT32 else ggml.gguf_get_arr_n(self._header, found)
        if not count:
            return np.zeros(0, dtype=np.int32)
        data = ctypes.cast(ggml.gguf_get_arr_data(self._header, found), ctypes.POINTER(ctypes.c_int32))
        return np.ctypeslib.as_array(data, (count,)).copy()

    def layer_counts(self, key: str) -> int | list[int] | None:
        """An architecture key that is a whole number or an array of them (one per block), read through ggml's C parser;
        None where it is absent, or another type (or a negative number) anywhere."""
        found = ggml.gguf_find_key(self._header, f"{self.arch}.{key}".encode())
        if found < 0:
            return None
        kind = ggml.gguf_get_kv_type(self._header, found)
        if kind != ggml.GGUF_TYPE_ARRAY:
            value = self.hparam(key)
            return value if type(value) is int and value >= 0 else None
        dtype = _INTEGER_ARRAYS.get(ggml.gguf_get_arr_type(self._header, found))
        count = ggml.gguf_get_arr_n(self._header, found)
        if dtype is None or not 0 < count <= MAX_LAYER_VALUES:
            return None
        data = ctypes.cast(ggml.gguf_get_arr_data(self._header, found), ctypes.POINTER(ctypes.c_uint8))
        values = np.frombuffer(np.ctypeslib.as_array(data, (count * np.dtype(dtype).itemsize,)).copy(), dtype=dtype)
        return None if (values < 0).any() else [int(v) for v in values]

    def string_array(self, key: str) -> list[bytes] | None:
        """A STRING array key (a vocabulary's tokens) as bytes, read through ggml's C parser; None: no such key,
        or not a string array."""
        found = ggml.gguf_find_key(self._header, key.encode())
        if found < 0 or ggml.gguf_get_kv_type(self._header, found) != ggml.GGUF_TYPE_ARRAY \
                or ggml.gguf_get_arr_type(self._header, found) != ggml.GGUF_TYPE_STRING:
            return None
        return [ggml.gguf_get_arr_str(self._header, found, i) for i in range(ggml.gguf_get_arr_n(self._header, found))]

    @property
    def arch(self) -> str:
        return self.field("general.architecture")

    def hparam(self, key: str, default: Any = None) -> Any:
        """An architecture key, `{arch}.{key}` (llama.cpp's LLM_KV names)."""
        return self.field(f"{self.arch}.{key}", default)

    @property
    def written_by_edgelm(self) -> bool:
        return ggml.gguf_find_key(self._header, GGUF_FAMILY.encode()) >= 0


# a string key's length without a copy: ggml-python's gguf_get_val_str returns a Python bytes of it (`cdll[name]`
# is a function object of our own, so ggml-python's keeps its restype)
_STRING_AT = next(cdll for cdll in ggml.lib._libraries if hasattr(cdll, "gguf_get_val_str"))["gguf_get_val_str"]
_STRING_AT.argtypes, _STRING_AT.restype = [ctypes.c_void_p, ctypes.c_int64], ctypes.c_void_p
_STRLEN = ctypes.CDLL(None).strlen
_STRLEN.argtypes, _STRLEN.restype = [ctypes.c_void_p], ctypes.c_size_t


# the type of each key of edgelm's own that export/gguf.py writes, and of the general and tokenizer keys whose type
# llama.cpp's loader requires (GGUFMeta's get_key refuses another) and edgelm's readers use as such (the tokenizer files'
# keys, the certificate's and the arch hyperparameters are checked where they are read): one with another type is
# refused for every reader at once, where each caller had taken its type on trust (stranger 35: edgelm.config holding a
# number was a traceback from `inspect`; stranger 37: general.file_type as an array, from `inspect` and `bundle`)
_TEXT = (ggml.GGUF_TYPE_STRING, None)
_DECLARED_TYPES = {GGUF_VERSION: _TEXT, GGUF_FAMILY: _TEXT, GGUF_POSITION_ENCODING: _TEXT, GGUF_CONFIG: _TEXT,
                   GGUF_HEAD_TEMPERATURES: (ggml.GGUF_TYPE_ARRAY, ggml.GGUF_TYPE_FLOAT32),
                   GGUF_HEAD_TEMPERATURES_BAKED: (ggml.GGUF_TYPE_BOOL, None),
                   "general.architecture": _TEXT, "general.file_type": (ggml.GGUF_TYPE_UINT32, None),
                   "tokenizer.chat_template": _TEXT}
_TYPE_NAMES = {_TEXT: "text", (ggml.GGUF_TYPE_BOOL, None): "boolean", (ggml.GGUF_TYPE_UINT32, None): "uint32",
               (ggml.GGUF_TYPE_ARRAY, ggml.GGUF_TYPE_FLOAT32): "float32 array"}


def _string_limit(key: str) -> int:
    """The longest text a string key may hold: the limits edgelm puts on the same things as files."""
    if key.startswith(GGUF_TOKENIZER_FILE):
        return MAX_TOKENIZER_BYTES
    if key.startswith(GGUF_TOKENIZER_FILE_BASE64):
        return MAX_TOKENIZER_BYTES * 4 // 3 + 4
    return MAX_TEMPLATE_BYTES  # a chat template, a name, a license, edgelm's config and certificate: a few kB


# the metadata and tensor descriptions before the data: a 262k-token vocabulary with its merges takes ~30 MB, and
# edgelm's own GGUFs add the tokenizer files they store (at most MAX_TOKENIZER_BYTES)
MAX_METADATA_BYTES = MAX_TOKENIZER_BYTES + (64 << 20)


def _refuse_oversized_metadata(header, path: Path) -> None:
    """Metadata past MAX_METADATA_BYTES in all, or a string key past its limit, refused before llama.cpp or Python
    copies it: a 600 MB tokenizer.chat_template took `generate`, which never renders it, to 3.7 GB (llama-cpp-python
    reads every key into a dict) and a MemoryError traceback. A key's name and an array's text entries (a 700 MB one
    in tokenizer.ggml.tokens) are bounded by the size of the whole metadata."""
    if (metadata := ggml.gguf_get_data_offset(header)) > MAX_METADATA_BYTES:
        raise UserError(f"its metadata takes {metadata:,} bytes before the tensors' data; edgelm reads at most {MAX_METADATA_BYTES:,}",
                        path, "no model needs that much (a 262k-token vocabulary takes ~30 MB): re-download or export it again")
    for i in range(ggml.gguf_get_n_kv(header)):
        if ggml.gguf_get_kv_type(header, i) != ggml.GGUF_TYPE_STRING:
            continue
        key = ggml.gguf_get_key(header, i).decode("utf-8", errors="replace")
        length, limit = _STRLEN(_STRING_AT(header, i)), _string_limit(key)
        if length > limit:
            raise UserError(f"metadata key {key[:80]!r} holds {length:,} bytes of text; edgelm reads at most {limit:,} there", path,
                            "no model needs that much text there: re-download or export it again")


# Strings in metadata arrays, all arrays together: gguf-py's reader (inspect, verify) parses them one by one (stranger
# 47: 1,000,000 empty strings, 8 MB of file, took inspect to 1.9 GB and 23 s). A vocabulary with its merges is a few
# hundred thousand (Llama 3's published tokenizer: 128,256 tokens and ~280,000 merges; not counted here)
MAX_ARRAY_STRINGS = 1 << 20
# ggml's parser looks each new key and tensor name up among those before it (a duplicate check): n² in C, where no
# signal reaches Python — a stranger's 3M-key file (98 MB) ran past 11 minutes and ignored Ctrl-C. A model's GGUF
# holds tens of keys (a vocabulary is one array key) and hundreds to thousands of tensors.
MAX_KEYS = 4096
TRAILING_SLACK = 1 << 16  # bytes a GGUF may hold after its last tensor's data (its writer pads to the alignment)
MAX_TENSORS = 65536


def _refuse_counts(path: Path) -> None:
    """The header's key and tensor counts (GGUF: magic, uint32 version, uint64 tensor count, uint64 key count, little
    endian), read before ggml parses what they count."""
    head = read_prefix(path, 24)
    if len(head) < 24:
        return  # ggml's parser refuses it in its own words
    tensors, keys = struct.unpack_from("<QQ", head, 8)
    if keys > MAX_KEYS or tensors > MAX_TENSORS:
        raise UserError(f"its header declares {keys:,} metadata keys and {tensors:,} tensors; edgelm reads at most {MAX_KEYS:,} "
                        f"and {MAX_TENSORS:,}", path, "no model has that many: re-download or export it again")


# GGUF value types (gguf-py's GGUFValueType) → bytes of a scalar; 8 is a string (uint64 length, bytes), 9 an array
_UINT32 = 4
_SCALAR_BYTES = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}


def _tensor_shapes(path: Path) -> dict[str, list[int]] | None:
    """Each tensor's shape (ggml's order) from the header; None where the scan ends before the table (a file ggml's
    parser refuses in its own words). A tensor declaring a dimension of 0 after its first, refused before ggml parses the tensor table: ggml's overflow
    check divides INT64_MAX by each of ne[1..3] (gguf.cpp), and a stranger's `token_embd.weight` of [d, 0] killed every
    command with SIGFPE, llama.cpp's own loader as well. The metadata is stepped over as gguf-py reads it (GGUF v2+:
    little-endian uint64 lengths and counts), up to the bound on metadata, past which the file is refused (stranger 28 put
    the table past the scan's reach behind a 320 MB key); a file that ends first is ggml's parser's to refuse."""
    import mmap

    with open_regular(path, path.name) as handle:
        try:
            data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        except ValueError:  # an empty file
            return None
    shapes = {}
    with data:
        def take(fmt: str, at: int) -> tuple[Any, int]:
            size = struct.calcsize(fmt)
            if at + size > 24 + MAX_METADATA_BYTES:  # the scan must reach every tensor's description, or ggml is not called
                raise UserError(f"its metadata takes more than {MAX_METADATA_BYTES:,} bytes before the tensors' data; edgelm reads at "
                                f"most {MAX_METADATA_BYTES:,}", path,
                                "no model needs that much (a 262k-token vocabulary takes ~30 MB): re-download or export it again")
            if at + size > len(data):
                raise EOFError
            return struct.unpack_from(fmt, data, at)[0], at + size

        strings = 0

        def skip_value(kind: int, at: int) -> int:
            nonlocal strings
            if kind in _SCALAR_BYTES:
                return at + _SCALAR_BYTES[kind]
            if kind == 8:
                length, at = take("<Q", at)
                return at + length
            if kind != 9:
                raise EOFError
            inner, at = take("<I", at)
            count, at = take("<Q", at)
            if inner in _SCALAR_BYTES:
                return at + count * _SCALAR_BYTES[inner]
            if inner != 8 or count > (len(data) - at) // 8:
                raise EOFError
            strings += count
            if strings > MAX_ARRAY_STRINGS:
                raise UserError(f"its metadata arrays hold more than {MAX_ARRAY_STRINGS:,} strings; edgelm reads at most that many",
                                path, "no model needs that many (Llama 3's vocabulary and merges: ~410,000): re-download or export it again")
            for _ in range(count):  # a vocabulary: ~0.1 s for 128k tokens
                length, at = take("<Q", at)
                at += length
            return at

        try:
            magic, at = take("<I", 0)
            version, at = take("<I", at)
            if magic != 0x46554747 or version < 2:  # "GGUF"
                return None
            tensors, at = take("<Q", at)
            keys, at = take("<Q", at)
            for _ in range(keys):
                length, at = take("<Q", at)
                key = bytes(data[at:at + min(length, 64)])
                kind, at = take("<I", at + length)
                # ggml's parser reads it with a typed getter that asserts (gguf.cpp): a uint64 or a text one was SIGABRT in
                # every command (stranger 47)
                if key == b"general.alignment" and kind != _UINT32:
                    raise UserError("general.alignment is not a uint32 (ggml would abort on it)", path, "the file is damaged: export it again")
                at = skip_value(kind, at)
            for _ in range(tensors):
                length, at = take("<Q", at)
                name = bytes(data[at:at + min(length, 200)]).decode("utf-8", errors="replace")
                dims, at = take("<I", at + length)
                if dims > 4:
                    return None
                shape = []
                for _ in range(dims):
                    ne, at = take("<q", at)
                    shape.append(ne)
                if 0 in shape:  # no model holds an empty tensor
                    raise UserError(f"not a valid GGUF file (tensor {name} has shape {shape}: a dimension of 0)", path,
                                    "the file is damaged: export it again")
                shapes[name] = shape
                at += 12  # its type (uint32) and data offset (uint64)
        except EOFError:
            return None
    return shapes


# llama.cpp reads these keys as one value for every block or one per block (llama-model-loader's get_key_or_arr) and
# builds block N's graph from block N's value, but creates (and checks) each block's tensors at block 0's: a
# head_count_kv of [2, 2, 3, 2] loaded and then killed the process in ggml's GGML_ASSERT(a->ne[0] == b->ne[0])
# (stranger 44). Each tensor's rows are a fixed multiple of its block's value (head width, gate halves), so block N
# must stand to block 0 as their values do. Rows are ggml's ne[1] (a weight's outputs), ffn_down's ne[0] its inputs.
_PER_LAYER_TENSORS = (  # (tensor, axis, its rows' count from (heads, kv heads, feed-forward length))
    ("attn_q.weight", 1, lambda heads, kv, ff: heads),
    ("attn_k.weight", 1, lambda heads, kv, ff: kv),
    ("attn_v.weight", 1, lambda heads, kv, ff: kv),
    ("attn_qkv.weight", 1, lambda heads, kv, ff: heads + 2 * kv),
    ("ffn_gate.weight", 1, lambda heads, kv, ff: ff),
    ("ffn_up.weight", 1, lambda heads, kv, ff: ff),
    ("ffn_down.weight", 0, lambda heads, kv, ff: ff),
)
_PER_LAYER_KEYS = ("attention.head_count", "attention.head_count_kv", "feed_forward_length")


def _refuse_layer_counts_against_shapes(gguf: GGUFFile, shapes: dict[str, list[int]]) -> None:
    """Per-block head counts and feed-forward lengths that the blocks' tensors do not have, refused before an engine
    builds a graph from them (see _PER_LAYER_TENSORS); a file whose keys are one value each is llama.cpp's loader's to
    check against its tensors, which it does."""
    layers = gguf.hparam("block_count")
    values = {key: gguf.layer_counts(key) for key in _PER_LAYER_KEYS}
    if type(layers) is not int or not any(isinstance(v, list) for v in values.values()):
        return
    for key, value in values.items():
        if isinstance(value, list) and len(value) != layers:
            raise UserError(f"{gguf.arch}.{key} has {len(value)} values for {layers} blocks", gguf.path, "the file is damaged: export it again")
    per_block = [tuple(v[i] if isinstance(v, list) else v if type(v) is int else None for v in values.values()) for i in range(layers)]
    for tensor, axis, rows in _PER_LAYER_TENSORS:
        found = [(i, shapes[f"blk.{i}.{tensor}"][axis]) for i in range(layers) if len(shapes.get(f"blk.{i}.{tensor}", ())) > axis]
        if not found or any(None in per_block[i] for i, _ in found):
            continue
        first, first_rows = found[0]
        for i, have in found:  # have / rows(i) == first_rows / rows(first), in whole numbers
            if have * rows(*per_block[first]) != first_rows * rows(*per_block[i]):
                raise UserError(f"blk.{i}.{tensor} has {have} rows along axis {axis}, which does not fit block {i}'s "
                                f"{', '.join(f'{k} {v}' for k, v in zip(_PER_LAYER_KEYS, per_block[i]))} (block {first}: {first_rows} "
                                f"for {', '.join(map(str, per_block[first]))})", gguf.path,
                                "the file's per-block counts and tensors disagree; it is damaged or not for llama.cpp: export it again")


def open_gguf(path: str | Path) -> GGUFFile:
    path = Path(path)
    if not path.is_file():
        raise UserError("no such file", path, "give the path of a .gguf file")
    _refuse_counts(path)
    shapes = _tensor_shapes(path)
    header = ggml.gguf_init_from_file(str(path).encode(), ggml.gguf_init_params(no_alloc=True, ctx=None))
    if not header:
        raise UserError("not a valid GGUF file (ggml's parser refused its header)", path, "the file is truncated or damaged: export it again")
    gguf = GGUFFile(path, header)
    _refuse_oversized_metadata(header, path)
    size, data = path.stat().st_size, ggml.gguf_get_data_offset(header)
    end = data
    for i in range(ggml.gguf_get_n_tensors(header)):  # every tensor's data must lie inside the file
        end = max(end, tensor_end := data + ggml.gguf_get_tensor_offset(header, i) + ggml.gguf_get_tensor_size(header, i))
        if tensor_end > size:
            name = ggml.gguf_get_tensor_name(header, i).decode("utf-8", errors="replace")
            raise UserError(f"not a valid GGUF file (tensor {name} runs past the end of the file)", path,
                            "the file is truncated or damaged: export it again")
    # and nothing long after them: a sparse 20 GB tail ran as the model does, and `verify`'s sha256 of the file read it
    # for 50 s (a terabyte: most of an hour). GGUF writers pad the last tensor to the alignment, no more
    if size > end + max(TRAILING_SLACK, ggml.gguf_get_alignment(header)):
        raise UserError(f"not a valid GGUF file ({size - end:,} bytes after its last tensor)", path,
                        "the file was changed after it was written: export or download it again")
    if not isinstance(gguf.arch, str):
        raise UserError("not a valid GGUF file (no general.architecture text)", path, "the file is damaged: export it again")
    _refuse_bad_float_hparams(gguf)
    if shapes is not None:
        _refuse_layer_counts_against_shapes(gguf, shapes)
    return gguf


def _refuse_bad_float_hparams(gguf: GGUFFile) -> None:
    """Every float hyperparameter (`{arch}.*`) finite, and every norm epsilon ≥ 0, before an engine reads
    them: llama.cpp builds its graph with a NaN or negative RMSNorm epsilon and aborts the process in
    ggml's `GGML_ASSERT(eps >= 0.0f)`; a NaN rope base or scale runs NaN logits, and so does a rope base of 0 or
    below (ggml's rotation angles are base^(-2i/d))."""
    prefix = f"{gguf.arch}."
    for i in range(ggml.gguf_get_n_kv(gguf._header)):
        if ggml.gguf_get_kv_type(gguf._header, i) not in (ggml.GGUF_TYPE_FLOAT32, ggml.GGUF_TYPE_FLOAT64):
            continue
        key = ggml.gguf_get_key(gguf._header, i).decode("utf-8", errors="replace")
        if not key.startswith(prefix):
            continue
        value = _SCALARS[ggml.gguf_get_kv_type(gguf._header, i)](gguf._header, i)
        floor = " ≥ 0" if "epsilon" in key and value < 0 else " > 0" if key.endswith("rope.freq_base") and value <= 0 else ""
        if not math.isfinite(value) or floor:
            raise UserError(f"{key} is {value!r}, not a finite number{floor}", gguf.path, "the file is damaged: export it again")


def stored_tokenizer_files(gguf: GGUFFile) -> dict[str, bytes]:
    """The source tokenizer files edgelm stored in the file (edgelm.tokenizer_file[_base64].<name>), by
    name. A name is a key a stranger wrote: only the plain file names of TOKENIZER_FILES are accepted, so
    no name can lead a write outside the folder the files are unpacked into. Files edgelm wrote before
    storing strings hold uint8 arrays; those are read too."""
    from gguf import GGUFValueType

    found = {}
    for key, field in gguf.reader.fields.items():
        prefix = next((p for p in (GGUF_TOKENIZER_FILE_BASE64, GGUF_TOKENIZER_FILE) if key.startswith(p)), None)
        if prefix is None:
            continue
        name = key.removeprefix(prefix)
        if name not in TOKENIZER_FILES:
            raise UserError(f"metadata key {key!r} names a tokenizer file edgelm does not know (it reads {', '.join(TOKENIZER_FILES)})",
                            gguf.path, "refused: the file is damaged or was made to write elsewhere; export it again with edgelm")
        try:
            if field.types == [GGUFValueType.STRING]:
                text = field.contents()
                found[name] = base64.b64decode(text, validate=True) if prefix == GGUF_TOKENIZER_FILE_BASE64 else text.encode("utf-8")
            elif field.types == [GGUFValueType.ARRAY, GGUFValueType.UINT8] and prefix == GGUF_TOKENIZER_FILE:
                found[name] = bytes(field.contents())
            else:
                raise ValueError("wrong type")
        except (ValueError, UnicodeDecodeError):  # binascii.Error is a ValueError
            raise UserError(f"metadata key {key!r} is not a text, base64 text or byte array file", gguf.path,
                            "export the model again with edgelm") from None
    return found


def gguf_tokenizer(gguf: GGUFFile) -> Tokenizer:
    """The source tokenizer edgelm stored in the file, unpacked into a private temporary folder."""
    files = stored_tokenizer_files(gguf)
    if not files:
        raise UserError("this GGUF carries no edgelm tokenizer files", gguf.path, "export it again with edgelm")
    with tempfile.TemporaryDirectory() as folder:
        for name, data in files.items():
            (Path(folder) / name).write_bytes(data)
        try:
            tokenizer = load_tokenizer(folder)
        except UserError as exc:  # named by the GGUF, not by a temporary folder that is gone when the line prints
            raise UserError(f"its stored {exc.path.name + ': ' if exc.path else ''}{exc.what}", gguf.path, exc.fix) from None
    tokenizer.template_file = gguf.path if tokenizer.chat_template is not None else None  # not the temporary folder
    # the ids besides eos a reply ends at, which the export states as llama.cpp's end-of-turn and end-of-message ids
    tokenizer.end_ids |= {i for key in GGUF_END_TOKEN_KEYS
                          if type(i := gguf.field(key)) is int and 0 <= i <= tokenizer.highest_id}
    return tokenizer
