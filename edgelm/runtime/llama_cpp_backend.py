"""llama-cpp-python behind the runtime interface: stock llama.cpp runs the file, edgelm only feeds
tokens and reads logits. The `Llama` object owns the native model and context; `close()` frees them.
The same object tokenizes, with the vocabulary inside the GGUF (`LlamaCppTokenizer`)."""

from __future__ import annotations

import ctypes
import logging
from pathlib import Path

import numpy as np

from .. import descriptor2
from ..tokenizer import Tokenizer
from .backend import Backend, StateMismatch, default_threads

GGML_TYPE_F32 = 0
log = logging.getLogger("edgelm")
llama_log = logging.getLogger("edgelm.llama_cpp")
_quiet_log = None  # the callback, kept referenced while llama.cpp may call it


def _route_llama_cpp_log() -> None:
    """llama.cpp's log lines go to the `edgelm.llama_cpp` logger at debug level, not to stderr. edgelm reports
    what matters in its own line (a load failure, a context above the model's); llama-cpp-python's callback
    maps ggml's levels as they were before ggml added DEBUG (its WARN lands on ERROR), so with verbose=False
    llama.cpp's warnings were printed ("n_ctx_seq (256) > n_ctx_train (1)") and its errors dropped."""
    global _quiet_log
    import llama_cpp

    if _quiet_log is None:
        _quiet_log = llama_cpp.llama_log_callback(lambda level, text, _user_data: llama_log.debug(text.decode("utf-8", "replace").rstrip("\n")))
        llama_cpp.llama_log_set(_quiet_log, ctypes.c_void_p(0))


class LlamaCppBackend(Backend):
    def __init__(self, path: Path, context_length: int, threads: int | None = None, gpu_layers: int = 0,
                 f32_kv_cache: bool = False, all_logits: bool = False):
        """`all_logits`: keep every position's logits (parity, perplexity); otherwise llama.cpp computes
        only the last one, as chat and generation need."""
        import llama_cpp
        from llama_cpp import Llama

        super().__init__()
        _route_llama_cpp_log()
        if gpu_layers and not llama_cpp.llama_supports_gpu_offload():
            log.info(f"--gpu-layers {gpu_layers}: this llama-cpp-python build has no GPU backend, so every layer runs on the CPU "
                     "(install it built for one, e.g. CMAKE_ARGS=-DGGML_CUDA=on)")
        cache_types = {"type_k": GGML_TYPE_F32, "type_v": GGML_TYPE_F32} if f32_kv_cache else {}
        with descriptor2.alone():  # Llama() points descriptor 2 at /dev/null and back while it loads (verbose=False)
            self.llm = Llama(
                model_path=str(path),
                n_ctx=context_length,
                n_batch=min(context_length, 512),
                n_threads=threads or default_threads(),
                n_threads_batch=threads or default_threads(),  # llama-cpp-python's default: every logical CPU
                n_gpu_layers=gpu_layers,
                logits_all=all_logits,
                verbose=False,
                **cache_types,
            )
        self.all_logits = all_logits
        self.context_length = context_length
        # rows for several positions without logits_all (prompt lookup's verify step): a batch of our own that
        # asks llama_decode for each token's logits, as llama.cpp's speculative examples set batch.logits[i]
        self.batch = llama_cpp.llama_batch_init(self.llm.n_batch, 0, 1)
        self.f32_kv_cache = f32_kv_cache

    def _truncate(self, length: int) -> int:
        import llama_cpp

        # seq_id -1: every sequence; False where the cache cannot be cut there (a recurrent model's state)
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        if not length or not llama_cpp.llama_memory_seq_rm(memory, -1, length, -1):
            # every cell, whatever its position: seq_rm up to "-1" ends below INT32_MAX, and a forged prompt cache's cell
            # there survived a reset, so every later llama_decode failed (stranger 35)
            llama_cpp.llama_memory_clear(memory, False)
            self.llm.reset()
            return 0
        self.llm.n_tokens = length  # where llama-cpp-python's eval appends next
        return length

    def _evaluate(self, ids: list[int], last_only: bool) -> np.ndarray:
        import llama_cpp

        if not self.all_logits and not last_only and len(ids) > 1:
            return np.concatenate([self._rows(ids[i:i + self.llm.n_batch]) for i in range(0, len(ids), self.llm.n_batch)])
        start = self.llm.n_tokens
        self.llm.eval(ids)
        if self.all_logits:
            return np.array(self.llm.scores[self.llm.n_tokens - 1 if last_only else start : self.llm.n_tokens], dtype=np.float32)
        # without logits_all llama-cpp-python stores no scores; the context holds the last token's row
        row = llama_cpp.llama_get_logits_ith(self.llm.ctx, -1)
        return np.ctypeslib.as_array(row, shape=(1, self.llm.n_vocab())).astype(np.float32)

    def _rows(self, ids: list[int]) -> np.ndarray:
        """Every row's logits for at most n_batch tokens appended in one llama_decode, where the `Llama`
        (opened without logits_all) would compute only the last; its token count follows, as its eval's does."""
        import llama_cpp

        start, n, batch = self.llm.n_tokens, len(ids), self.batch
        for i, token in enumerate(ids):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, start + i, 1, True
            batch.seq_id[i][0] = 0
        batch.n_tokens = n
        llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(self.llm.ctx), -1, start, -1)  # as Llama.eval: nothing stale past it
        status = llama_cpp.llama_decode(self.llm.ctx, batch)
        if status != 0:
            raise RuntimeError(f"llama_decode returned {status}")
        logits = np.ctypeslib.as_array(llama_cpp.llama_get_logits(self.llm.ctx), shape=(n, self.llm.n_vocab())).astype(np.float32)
        self.llm.input_ids[start:start + n] = ids
        self.llm.n_tokens += n
        return logits

    def close(self) -> None:
        import llama_cpp

        if self.batch is not None:
            llama_cpp.llama_batch_free(self.batch)
            self.batch = None
        self.llm.edgelm_closed = True  # the tokenizer shares it: llama-cpp-python's tokenize on a closed Llama segfaults
        self.llm.close()

    # The cache saved and loaded as llama.cpp's own sequence state (llama_state_seq_get_data/set_data,
    # what llama-cli's --prompt-cache writes for a whole context). Not shifted: llama.cpp's K-shift
    # (llama_memory_seq_add) re-rotates keys, and on the no-rotary granite arch edgelm writes for NoPE
    # llama-cpp-python 0.3.36 aborts in it (GGML_ASSERT(buffer)), so a full context is evaluated again.

    def kv_cache_type(self) -> str:
        return "float32" if self.f32_kv_cache else "float16"

    def state_signature(self) -> str:
        import llama_cpp

        return f"llama.cpp sequence state, llama-cpp-python {llama_cpp.__version__}, {'f32' if self.f32_kv_cache else 'f16'} cache"

    def state_bytes_per_position(self) -> int:
        import llama_cpp

        model = self.llm.model
        width = max(llama_cpp.llama_model_n_embd(model), 1) * 2  # K and V rows are at most the model's width each (GQA: less)
        return 64 + llama_cpp.llama_model_n_layer(model) * 2 * width * (4 if self.f32_kv_cache else 2)

    def save_state(self) -> dict[str, np.ndarray]:
        import llama_cpp

        size = llama_cpp.llama_state_seq_get_size(self.llm.ctx, 0)
        state = np.zeros(size, np.uint8)
        written = llama_cpp.llama_state_seq_get_data(self.llm.ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), size, 0)
        return {"ids": np.array(self.cached_ids, dtype=np.int64), "llama_state": state[:written]}

    def load_state(self, arrays: dict[str, np.ndarray]) -> None:
        import llama_cpp

        ids, state = arrays.get("ids"), arrays.get("llama_state")
        if set(arrays) != {"ids", "llama_state"} or ids.dtype != np.int64 or ids.ndim != 1 or state.dtype != np.uint8 or state.ndim != 1:
            raise StateMismatch("it is not a llama.cpp sequence state")
        if not 0 < len(ids) < self.context_length or (ids < 0).any() or (ids >= self.llm.n_vocab()).any():
            raise StateMismatch("its token ids do not fit this model's vocabulary and context")
        # llama.cpp reads the bytes with bounds checks of its own; its size is held to what that many tokens take first
        if len(state) > 1024 + len(ids) * self.state_bytes_per_position():
            raise StateMismatch(f"its {len(state):,}-byte state is larger than {len(ids)} tokens take")
        self.reset()
        state = np.ascontiguousarray(state)
        read = llama_cpp.llama_state_seq_set_data(self.llm.ctx, state.ctypes.data_as(ctypes.POINTER(ctypes.c_uint8)), len(state), 0)
        memory = llama_cpp.llama_get_memory(self.llm.ctx)
        if read != len(state) or llama_cpp.llama_memory_seq_pos_min(memory, 0) != 0 or \
                llama_cpp.llama_memory_seq_pos_max(memory, 0) != len(ids) - 1:
            self.reset()
            raise StateMismatch("llama.cpp did not take its state for the tokens it names")
        self.llm.n_tokens = len(ids)
        self.llm.input_ids[: len(ids)] = ids
        self.cached_ids = [int(i) for i in ids]


class LlamaCppTokenizer(Tokenizer):
    """The vocabulary llama.cpp reads from the GGUF itself, so any GGUF llama.cpp runs tokenizes as it
    does there; special tokens, bos and the chat template come from the file's tokenizer.* keys."""

    kind = "llama.cpp (the GGUF's own vocabulary)"

    def __init__(self, llm, path: Path, add_bos: bool, chat_template: str | None):
        self.llm = llm
        self.vocab_size = llm.n_vocab()
        bos, eos = _token_or_none(llm.token_bos()), _token_or_none(llm.token_eos())
        # their texts, which chat templates print ({{ bos_token }}, {{ eos_token }}) as llama.cpp's --jinja passes them
        special = {name: llm.detokenize([token], special=True).decode("utf-8", errors="replace")
                   for name, token in (("bos_token", bos), ("eos_token", eos)) if token is not None}
        super().__init__(path, {"add_bos_token": add_bos, "chat_template": chat_template, **special})
        self.template_file = path if chat_template is not None else None  # its tokenizer.chat_template key
        self.bos_id, self.eos_id = bos, eos
        self._ends_reply: dict[int, bool] = {}
        self._control: dict[int, bool] = {}

    def ends_reply(self, token):
        # llama.cpp's own end-of-generation set for this file (eos, eot, eom and the texts it knows), which its
        # create_chat_completion stops at; asked once a token id (a ctypes call each generated token before)
        if (ends := self._ends_reply.get(token)) is None:
            import llama_cpp

            ends = self._ends_reply[token] = bool(llama_cpp.llama_vocab_is_eog(self._open()._model.vocab, token))
        return ends

    def is_control(self, token):
        # the file's token types CONTROL and UNKNOWN, which llama.cpp's detokenize(special=false) leaves out; asked once a token id
        if (control := self._control.get(token)) is None:
            import llama_cpp

            attributes = llama_cpp.llama_vocab_get_attr(self._open()._model.vocab, token)
            control = self._control[token] = bool(attributes & (llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_UNKNOWN))
        return control

    def every_end_id(self):
        # the GGUF's eot/eom keys and the texts llama.cpp knows end a generation too (--ignore-eos on a GGUF whose
        # end token was config.json's, written as its eot, still stopped there: a stranger's finding)
        return super().every_end_id() | {token for token in range(self.vocab_size) if self.ends_reply(token)}

    def _open(self):
        """The Llama, or RuntimeError once its model is closed: llama-cpp-python reads freed memory (a segfault)."""
        if getattr(self.llm, "edgelm_closed", False):
            raise RuntimeError("this model is closed: load it again")
        return self.llm

    def encode_text(self, text, special=True):
        return self._open().tokenize(text.encode("utf-8"), add_bos=False, special=special)

    def decode(self, ids):
        # special tokens' text kept, as transformers' decode and edgelm's other tokenizers keep it (a Qwen3 reply's
        # <think> marked special vanished on the GGUF alone, a stranger's finding)
        return self._open().detokenize(ids, special=True).decode("utf-8", errors="replace")

    def lookup(self, token):
        ids = self.llm.tokenize(token.encode("utf-8"), add_bos=False, special=True)
        return ids[0] if len(ids) == 1 else None


def _token_or_none(token: int) -> int | None:
    return None if token < 0 else token
