"""A GGUF file: edgelm's own exports and any other that stock llama.cpp runs (llama.cpp's converter,
files from the hub). llama.cpp runs every architecture it knows, with the vocabulary and chat template
inside the file; edgelm's ggml executor runs the architectures only edgelm writes (tokenformer) on
ggml's kernels, from the file's arch keys and tensors, with the tokenizer files edgelm stored."""

from __future__ import annotations

import shutil
from collections import Counter
from pathlib import Path
from typing import Any

from ..artifact_files import read_prefix
from ..constants import (LLAMA_MAX_LAYERS, GGUF_TOKEN_TYPE_BYTE, NO_BYTE_PIECES, GGUF_CONTEXT_LIMIT, GGUF_FAMILY, GGUF_HEAD_TEMPERATURES, GGUF_HEAD_TEMPERATURES_BAKED, GGUF_POSITION_ENCODING, GGUF_VERSION,
                         PARITY_CERTIFICATE, llama_cpp_archs)
from ..errors import UserError
from .base import Artifact, Format, LoadOptions, recorded_training_length, register

MAGIC = b"GGUF"


# llama.cpp's limits (src/llama-hparams.h) and its rope scaling names (llama-model.cpp LLAMA_ROPE_SCALING_TYPES)
LLAMA_MAX_EXPERTS = 1024
LLAMA_ROPE_SCALING = ("none", "linear", "yarn", "longrope")


def refuse_what_llama_cpp_asserts(gguf) -> None:
    """The hyperparameters llama.cpp checks with GGML_ASSERT while it loads a file (llama-model.cpp,
    load_hparams, llama-cpp-python 0.3.36's vendored copy): an assert aborts the whole process (exit 134,
    no message), where edgelm says what is wrong in one line. A stranger's file with block_count 0, or an
    expert_count without experts, killed verify, generate and chat."""
    def count(key: str, default: int = 0) -> int:
        value = gguf.hparam(key, default)
        if isinstance(value, (list, tuple)) and key == "expert_used_count":  # per layer
            value = max(value, default=0)
        if type(value) is not int or value < 0:
            bad(f"{key} is {value!r}, not a whole number")
        return value

    def bad(what: str):
        raise UserError(f"{gguf.arch}.{what} (llama.cpp would abort on it)", gguf.path, "the file is damaged: export it again")

    if gguf.field("tokenizer.ggml.model") == "llama" and not (gguf.int32_array("tokenizer.ggml.token_type") == GGUF_TOKEN_TYPE_BYTE).any():
        raise UserError(f"its {NO_BYTE_PIECES.replace('tokenizer', '(llama) vocabulary')}", gguf.path,
                        "export the model again with a tokenizer trained with byte_fallback, or export it to ONNX")
    refuse_what_llama_cpp_vocab_asserts(gguf)
    if gguf.hparam("block_count") is None:  # not an arch llama.cpp knows, or a file without it: llama.cpp refuses it cleanly
        return
    layers = count("block_count")
    if not 0 < layers <= LLAMA_MAX_LAYERS:
        bad(f"block_count is {layers}, not from 1 to {LLAMA_MAX_LAYERS}")
    if count("nextn_predict_layers") > layers:
        bad(f"nextn_predict_layers is past block_count {layers}")
    experts, used = count("expert_count"), count("expert_used_count")
    groups, groups_used = count("expert_group_count"), count("expert_group_used_count")
    if experts > LLAMA_MAX_EXPERTS or used > experts:
        bad(f"expert_count {experts} and expert_used_count {used}: at most {LLAMA_MAX_EXPERTS} experts, using at most as many")
    if experts and (not used or groups >= experts or groups > 1 and (experts % groups or not 0 < groups_used < groups)):
        bad(f"expert_count {experts} with expert_used_count {used}, expert_group_count {groups}, expert_group_used_count {groups_used}")
    if not experts and groups:
        bad(f"expert_group_count is {groups} without experts")
    refuse_rotary_llama_cpp_asserts(gguf, bad)
    scaling = gguf.hparam("rope.scaling.type", "linear")
    if scaling not in LLAMA_ROPE_SCALING:
        bad(f"rope.scaling.type is {str(scaling)[:40]!r}, not one of {', '.join(LLAMA_ROPE_SCALING)}")


# The archs whose graph builder asserts n_embd_head == n_rot (GGML_ASSERT, exit 134) in llama-cpp-python 0.3.36's vendored
# llama.cpp: each arch's llama_model_* class (llama-model.cpp) whose graph (src/models/*.cpp) holds the assert; llama, deci,
# falcon and llama-embed throw at load instead (load_hparams: "invalid n_rot"), which is one line already
LLAMA_FULL_ROTARY_ARCHS = frozenset((
    "apertus arcee arctic baichuan chameleon codeshell cogvlm cohere2moe dbrx deci deepseek dots1 dream ernie4_5 ernie4_5-moe "
    "exaone exaone-moe falcon granite granite_swa graniteswitch grok grovemoe hunyuan-moe hunyuan_vl hy_v3 internlm2 jais2 "
    "llada llada-moe maincoder minimax-01 minimax-m2 minimax-m3 mistral3 nemotron olmo olmoe orion paddleocr pangu-embedded "
    "plamo pockettts qwen2 qwen2moe qwen2vl qwen3 qwen3moe qwen3vl qwen3vlmoe rnd1 seed_oss smollm3 starcoder2 talkie xverse").split())


def refuse_rotary_llama_cpp_asserts(gguf, bad) -> None:
    """rope.dimension_count as ggml's rope kernel asserts it (ggml-cpu ops.cpp: n_dims even, at most the head's width) and
    the arch's graph builder may (LLAMA_FULL_ROTARY_ARCHS: equal to it); 0 made llama.cpp's decode spin without end. A
    stranger's gptneox file of 17, 66 or 1000 and a granite one of 99 aborted generate and verify (stranger 47)."""
    rotary = gguf.hparam("rope.dimension_count")
    if rotary is None:
        return
    heads = gguf.hparam("attention.head_count")
    heads = heads[0] if isinstance(heads, (list, tuple)) and heads else heads  # llama.cpp's default head width: block 0's
    width = gguf.hparam("attention.key_length")
    if width is None and type(heads) is int and heads > 0 and type(gguf.hparam("embedding_length")) is int:
        width = gguf.hparam("embedding_length") // heads
    if type(rotary) is not int or rotary <= 0 or rotary % 2 or (type(width) is int and rotary > width):
        bad(f"rope.dimension_count is {rotary!r}, not an even number from 2 to the head width {width}")
    if gguf.arch in LLAMA_FULL_ROTARY_ARCHS and type(width) is int and rotary != width:
        bad(f"rope.dimension_count is {rotary}; the {gguf.arch} arch rotates the whole head of {width}")


# the tokenizer models llama.cpp knows (llama-vocab.cpp, llama_vocab::impl::load, llama-cpp-python 0.3.36's vendored
# copy), and for those whose tokenizer asserts that a special token it adds exists (SPM, BPE, WPM, UGM): their
# default (bos, eos, sep) ids, None where there is none, and the ones they add by default (a BPE vocabulary's
# default depends on its pre-tokenizer, so it counts as adding bos)
LLAMA_VOCAB_MODELS = ("llama", "bert", "gpt2", "hybriddna", "whitespace", "t5", "rwkv", "test", "plamo2", "gemma4")
LLAMA_VOCAB_SPECIALS = {
    "llama": ((1, 2, None), ("bos",)), "bert": ((101, None, 102), ("bos", "sep")), "t5": ((None, 1, None), ("eos",)),
    "gpt2": ((11, 11, None), ("bos",)), "hybriddna": ((11, 11, None), ("bos",)), "whitespace": ((11, 11, None), ("bos",)),
    "gemma4": ((None, None, None), ("bos",)),
}


def refuse_what_llama_cpp_vocab_asserts(gguf) -> None:
    """The vocabularies llama.cpp loads and then aborts on (GGML_ASSERT, exit 134) when it first tokenizes or
    even while it loads (llama-vocab.cpp): no vocabulary at all (`tokenizer.ggml.model` "none"/"no_vocab": the
    tokenizer is never built), two tokens with the same text (`id_to_token.size() == token_to_id.size()`; an empty
    token counts as "[EMPTY_<id>]"), a bos, eos or sep token it is to add that the file leaves without an id in
    the vocabulary, an RWKV vocabulary without an unknown token. A stranger's file of each killed generate, chat and
    verify. A model llama.cpp does not know, or a key of the wrong type, llama.cpp refuses in its own words."""
    model = gguf.field("tokenizer.ggml.model")
    if model in ("none", "no_vocab"):
        raise UserError(f"it has no vocabulary (tokenizer.ggml.model is {model!r}): edgelm runs text through a model's own tokenizer",
                        gguf.path, "use a GGUF that carries its vocabulary (llama.cpp's converter writes it)")
    tokens = gguf.string_array("tokenizer.ggml.tokens")
    if model not in LLAMA_VOCAB_MODELS or tokens is None:
        return

    def bad(what: str):
        raise UserError(f"its vocabulary {what} (llama.cpp would abort on it)", gguf.path, "the file is damaged: export it again")

    texts = Counter(token or f"[EMPTY_{i}]".encode() for i, token in enumerate(tokens))
    if len(texts) != len(tokens):
        repeated, times = texts.most_common(1)[0]
        bad(f"holds the token {repeated.decode('utf-8', 'replace')[:40]!r} {times} times")
    defaults, added = LLAMA_VOCAB_SPECIALS.get(model, ((None, None, None), ()))
    in_vocab = lambda token_id: type(token_id) is int and 0 <= token_id < len(tokens)  # noqa: E731
    for role, default in zip(("bos", "eos", "sep"), defaults):
        adds = gguf.field(f"tokenizer.ggml.add_{role}_token", role in added)
        given = gguf.field(f"tokenizer.ggml.{'seperator' if role == 'sep' else role}_token_id")  # llama.cpp's spelling
        if model in LLAMA_VOCAB_SPECIALS and adds is True and not in_vocab(given) and not in_vocab(default):
            bad(f"has no {role} token (tokenizer.ggml.add_{role}_token is true)")
    # RWKV's tokenizer gives a character it lacks the unknown token, which it has no default for: without one in the
    # vocabulary, the id -1 went on and llama.cpp died of an uncaught std::out_of_range (stranger 25)
    if model == "rwkv" and not in_vocab(gguf.field("tokenizer.ggml.unknown_token_id")):
        bad("has no unknown token (tokenizer.ggml.unknown_token_id), which an RWKV tokenizer gives a character it lacks")


@register
class GGUF(Format):
    kind = "gguf"
    noun = "a GGUF file"
    honoured = frozenset({"f32_kv_cache", "gpu_layers"})
    option_fixes = {"provider": "drop --provider; --gpu-layers N offloads a GGUF to a GPU",
                    "device": "llama.cpp runs this file: drop --device; --gpu-layers N offloads N layers to a GPU (llama.cpp's -ngl)"}
    bundled_as_is = True  # bundle_into copies the file

    @classmethod
    def detect(cls, path: Path) -> bool:
        return path.is_file() and (path.suffix == ".gguf" or read_prefix(path, 4) == MAGIC)

    def __init__(self, path: Path):
        from .gguf_file import open_gguf

        super().__init__(path)
        self.gguf = open_gguf(path)
        if not self.runs_on_ggml_executor:
            refuse_what_llama_cpp_asserts(self.gguf)

    @property
    def runs_on_llama_cpp(self) -> bool:
        return self.gguf.arch in llama_cpp_archs()

    @property
    def runs_on_ggml_executor(self) -> bool:
        from ..runtime.ggml_archs import ARCH_GRAPHS

        return self.gguf.arch in ARCH_GRAPHS

    @property
    def raw_engine(self) -> str | None:
        return "llama-cpp-python" if self.runs_on_llama_cpp else None

    def _edgelm_model(self):
        """(family, spec) for a file edgelm wrote, else None; a file neither edgelm nor llama.cpp can run is
        refused. Rebuilding the spec imports torch and the families: the llama.cpp path does not need it."""
        if self.gguf.written_by_edgelm:
            from .gguf_native import edgelm_model

            return edgelm_model(self.gguf)
        self._check_runnable()
        return None

    def _check_runnable(self) -> None:
        if not self.runs_on_llama_cpp and not self.runs_on_ggml_executor:
            raise UserError(f"neither llama.cpp nor edgelm's ggml executor knows arch {self.gguf.arch!r}", self.path,
                            "run it with a llama.cpp build that has that architecture, or export its source model with `edgelm export`")

    def context_length(self) -> int:
        """`{arch}.context_length`, which edgelm writes from the spec's max_positions."""
        value = self.gguf.hparam("context_length", 2048)
        if type(value) is not int or not 0 < value <= GGUF_CONTEXT_LIMIT:
            raise UserError(f"{self.gguf.arch}.context_length is {value!r}, not a whole number from 1 to {GGUF_CONTEXT_LIMIT}", self.path,
                            "the file is damaged: export it again")
        return value

    def llama_cpp_cache_bytes(self, context: int, f32: bool) -> int:
        """The KV cache llama.cpp allocates for `context` positions, from the same keys it sizes it by: per
        layer, context × kv heads × (key + value length), f16 unless f32 is asked for. A key that is no
        whole number counts 0: llama.cpp refuses such a file before it allocates."""
        def whole(key: str, default=0):
            value = self.gguf.hparam(key, default)
            if isinstance(value, (list, tuple)):  # per-layer head counts
                return [v for v in value if type(v) is int and v >= 0]
            return value if type(value) is int and value >= 0 else 0

        layers, heads = whole("block_count"), whole("attention.head_count")
        heads = max(heads, default=0) if isinstance(heads, list) else heads
        width = whole("embedding_length")
        key_length = whole("attention.key_length", width // heads if heads else 0)
        value_length = whole("attention.value_length", key_length)
        kv_heads = whole("attention.head_count_kv", heads)
        per_position = sum(kv_heads) if isinstance(kv_heads, list) else layers * kv_heads
        return context * per_position * (key_length + value_length) * (4 if f32 else 2)

    def open(self, options: LoadOptions) -> Artifact:
        self.check_options(options)
        if self.gguf.has_tensor("position_embd.weight"):  # llama.cpp: one row per trained position
            options.refuse_past_learned_positions(self.context_length(), self.path)
        context = options.context_for(self.context_length())
        details = {"family": self.gguf.field(GGUF_FAMILY), "arch": self.gguf.arch,
                   "position_encoding": self.gguf.field(GGUF_POSITION_ENCODING)}
        # the executor's own archs first; anything else goes to llama.cpp, whose list of archs (gguf-py's,
        # ~50 ms to import) is read only when it refuses the file, to say why in one line
        if not self.runs_on_ggml_executor:
            from llama_cpp import __version__ as llama_cpp_version

            from ..runtime.backend import CONTEXT_OPTIONS, refuse_cache_past_memory
            from ..runtime.llama_cpp_backend import LlamaCppBackend, LlamaCppTokenizer

            # before llama.cpp allocates: a file declaring 2^24 positions spent 60 s allocating, then failed
            refuse_cache_past_memory(self.llama_cpp_cache_bytes(context, options.f32_kv_cache), context, self.path,
                                     "the context asked for" if options.context_length else f"{self.gguf.arch}.context_length")
            try:
                backend = LlamaCppBackend(self.path, context, options.threads, options.gpu_layers, options.f32_kv_cache, options.all_logits)
            except ValueError as exc:  # llama-cpp-python's "Failed to load model from file" / "Failed to create llama_context"
                if "llama_context" in str(exc):  # the model loaded; its context did not (-c 10^7: 176 GB of attention buffers)
                    raise UserError(f"llama.cpp could not allocate a context of {context:,} tokens (its KV cache and compute "
                                    "buffers) on this machine", self.path, f"ask for a shorter context ({CONTEXT_OPTIONS})") from None
                self._check_runnable()
                raise UserError("llama.cpp could not load this GGUF", self.path,
                                "the file is damaged or needs a newer llama.cpp: export it again or update llama-cpp-python") from None
            tokenizer = LlamaCppTokenizer(backend.llm, self.path, bool(self.gguf.field("tokenizer.ggml.add_bos_token", False)),
                                          self.gguf.field("tokenizer.chat_template"))
            engine = "llama.cpp"
            details["engine_version"] = f"llama-cpp-python {llama_cpp_version}"
        else:
            from ..ggml_python import ggml

            from ..runtime.ggml_executor import GGMLBackend
            from .gguf_file import gguf_tokenizer

            # the arch's keys first: a llama file relabelled tokenformer is that, not a file lacking edgelm's tokenizer
            backend = GGMLBackend(self.gguf, context, options.threads, options.f32_kv_cache, gpu=options.gpu_layers > 0 or options.resolved_device() == "cuda")
            try:
                tokenizer = gguf_tokenizer(self.gguf)
            except BaseException:
                backend.close()
                raise
            engine = f"edgelm ggml executor ({backend.device})"
            details["engine_version"] = f"ggml-python {ggml.__version__}"
        backend.context_length = context
        return Artifact(self.path, self, engine, tokenizer, backend, details)

    def recorded_position_encoding(self) -> str | None:
        return self.gguf.field(GGUF_POSITION_ENCODING)  # text or None: field() refuses another type

    def training_length(self) -> int | None:
        from ..artifact_files import parse_json
        from ..constants import GGUF_CONFIG

        recorded = self.gguf.field(GGUF_CONFIG)  # text or None: field() refuses another type
        return None if recorded is None else recorded_training_length(parse_json(recorded, self.path, GGUF_CONFIG))

    def recorded_temperatures(self) -> list[list[float]] | None:
        """The λ edgelm folded into the weights at export, stored flat: one row per layer (block_count). None for
        another tool's file; a value that is no table of numbers is refused when the reference checks it."""
        flat, layers = self.gguf.field(GGUF_HEAD_TEMPERATURES), self.gguf.hparam("block_count")
        if flat is None or type(layers) is not int or layers <= 0 or len(flat) % layers:
            return flat
        heads = len(flat) // layers
        return [list(flat[i * heads:(i + 1) * heads]) for i in range(layers)]

    def honoured_options(self) -> frozenset:
        """llama.cpp's options, and --device where edgelm's ggml executor runs the file."""
        return self.honoured | ({"device"} if self.runs_on_ggml_executor else set())

    def describe(self, options: LoadOptions) -> dict[str, Any]:
        self.check_options(options)
        gguf, model = self.gguf, self._edgelm_model()
        facts = {
            "format": self.kind,
            "family": model[0].name if model else None,
            "arch": gguf.arch,
            "engine": "llama.cpp" if self.runs_on_llama_cpp else "edgelm ggml executor",
            "written_by": f"edgelm {gguf.field(GGUF_VERSION)}" if gguf.written_by_edgelm else "another tool",
            "file_type": self._quantization(),  # llama.cpp's name (Q4_K_M), not general.file_type's number (15)
            "parameters": int(sum(t.n_elements for t in gguf.reader.tensors)),
            "tensor_types": dict(Counter(t.tensor_type.name for t in gguf.reader.tensors)),
            "tokenizer_model": gguf.field("tokenizer.ggml.model"),
            "chat_template": gguf.field("tokenizer.chat_template") is not None,
        }
        if model is None:
            return facts | {"context_length": gguf.hparam("context_length"), "hidden_size": gguf.hparam("embedding_length"),
                            "layers": gguf.hparam("block_count"), "heads": gguf.hparam("attention.head_count"),
                            "kv_heads": gguf.hparam("attention.head_count_kv")}
        spec = model[1]
        temperatures = gguf.field(GGUF_HEAD_TEMPERATURES) or [1.0]
        return facts | {
            "vocab_size": spec.vocab_size,
            "hidden_size": spec.hidden_size,
            "layers": spec.num_layers,
            "heads": spec.num_heads,
            "kv_heads": spec.num_kv_heads,
            "context_length": spec.max_positions,
            "position_encoding": spec.position_encoding,
            "rotary_dims": spec.rotated_dims,
            "rope_scaling": spec.positions.scaling_summary(),
            "head_temperatures": {"baked_into_weights": bool(gguf.field(GGUF_HEAD_TEMPERATURES_BAKED, False)),
                                  "min": min(temperatures), "max": max(temperatures)},
        }

    def stated_sampling(self) -> dict[str, Any]:
        from ..constants import GGUF_SAMPLING_KEYS
        from ..numbers import stated_sampling

        found, problem = stated_sampling({name: self.gguf.field(key) for name, key in GGUF_SAMPLING_KEYS.items()})
        if problem:
            raise UserError(f"its general.sampling.* keys: {problem}", self.path, "fix the key (gguf-py's gguf_set_metadata.py) or drop it")
        return found

    def certificate(self) -> dict[str, Any] | None:
        from ..certificate import read_from_gguf

        return read_from_gguf(self.gguf)

    def weights_sha256(self) -> str:
        import hashlib

        import numpy as np

        digest = hashlib.sha256()
        for tensor in self.gguf.reader.tensors:  # the memory map's bytes, as llama.cpp reads them
            digest.update(f"{tensor.name}\0{int(tensor.tensor_type)}\0{[int(d) for d in tensor.shape]}\0".encode())
            digest.update(np.ascontiguousarray(tensor.data).view(np.uint8))
        return digest.hexdigest()

    def settings_sha256(self) -> str:
        """Over every metadata key and value (as read: the certificate's rewrite keeps them) but the
        certificate's own edgelm.parity.* keys and the header's counts."""
        import hashlib
        import json

        from ..constants import GGUF_PARITY

        digest = hashlib.sha256()
        for key, found in self.gguf.reader.fields.items():
            if key.startswith("GGUF.") or key.startswith(GGUF_PARITY):
                continue
            value = found.contents()
            digest.update(json.dumps([key, [int(t) for t in found.types], value.hex() if isinstance(value, bytes) else value],
                                     ensure_ascii=False).encode("utf-8", "surrogatepass"))
        return digest.hexdigest()

    def weight_bytes(self) -> int:
        tensors = {t.name: int(t.n_bytes) for t in self.gguf.reader.tensors}
        if "output.weight" in tensors:  # untied: token_embd is only gathered
            tensors.pop("token_embd.weight", None)
        return sum(tensors.values())

    def mobile_refusal(self) -> str | None:
        if self.runs_on_llama_cpp:
            return None
        return f"arch {self.gguf.arch!r} runs only on edgelm's ggml executor; no llama.cpp on a phone knows it"

    def _quantization(self) -> str:
        from gguf import LlamaFileType

        file_type = self.gguf.field("general.file_type")
        return LlamaFileType(file_type).name.removeprefix("MOSTLY_") if file_type in LlamaFileType._value2member_map_ else "unknown"

    def identity(self) -> dict[str, Any]:
        return {"format": self.kind, "family": self.gguf.field(GGUF_FAMILY) or self.gguf.arch, "quantization": self._quantization()}

    def bundled_facts(self) -> dict[str, Any]:
        """As an ONNX bundle's manifest states them, the position encoding and the λ folded in among them (a GGUF bundle's
        manifest left both out: an app could not tell a NoPE model without parsing the file, stranger 51)."""
        temperatures = self.checked_temperatures()
        return {"format": "gguf", "family": self.gguf.field(GGUF_FAMILY), "quantization": self._quantization(),
                "context_length": self.context_length(), "arch": self.gguf.arch, "position_encoding": self.recorded_position_encoding(),
                "head_temperatures": None if temperatures is None else {"layers": temperatures, "baked_into_weights": True},
                PARITY_CERTIFICATE: self.certificate()}

    def bundle_into(self, folder: Path) -> dict[str, Any]:
        self._check_runnable()
        shutil.copyfile(self.path, folder / self.path.name)
        return self.bundled_facts() | {"model": self.path.name}
