"""The Python API, mirroring the CLI: `edgelm.load(path).generate(prompt)`."""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from dataclasses import fields, replace
from pathlib import Path

from .artifact_files import on_disk
from .errors import UserError
from .formats import Artifact, LoadOptions, open_artifact
from .numbers import LOOKUP_NGRAM, check_flag
from .runtime.generate import Piece
from .runtime.generate import generate as run
from .runtime.sampling import SamplingOptions

log = logging.getLogger("edgelm")


class Model:
    """A model folder, .gguf file or ONNX folder, ready to generate."""

    def __init__(self, artifact: Artifact, options: LoadOptions | None = None):
        self.artifact = artifact
        self.tokenizer = artifact.tokenizer
        self.options = options or LoadOptions()
        # the backends are not thread-safe (two threads in one llama.cpp context aborted the process): every
        # call into the backend holds this; a whole call (generate, chat, perplexity) holds it to its end, so
        # threads sharing a model are served one after another
        self._lock = threading.RLock()
        self._closed = False
        self._chat_dropped: tuple[str | None, list[dict]] = (None, [])  # chat(): the system prompt and the messages dropped last
        self._on_disk = on_disk(artifact.path)  # what perplexity's second opening must find there

    def close(self) -> None:
        """Free the engine's memory (a llama.cpp context, an onnxruntime session, ggml's buffers) now rather than
        when the model is collected; a closed model refuses every call. `with edgelm.load(…) as model:` closes it."""
        with self._lock:
            self._owner = object()  # a stream still open has lost its cache
            if not self._closed:
                self._closed = True
                self.artifact.close()

    def __repr__(self) -> str:  # what a notebook shows (stranger 45: the default <edgelm.api.Model object at 0x…>)
        closed = ", closed" if self._closed else ""
        return f"<edgelm.Model {str(self.artifact.path)!r} on {self.artifact.engine}, context {self.artifact.backend.context_length:,}{closed}>"

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def recommended_sampling(self) -> dict:
        """The sampling the model's files recommend, filled as `edgelm chat` fills it (temperature, top_k, top_p, …):
        `chat` and `generate` are greedy unless given sampling options; `model.chat(messages, **model.recommended_sampling)`
        samples as the CLI's chat does."""
        from .chat import chat_sampling

        return chat_sampling(self.artifact.format.stated_sampling(), {})[0]

    def _backend(self):
        """The backend, or RuntimeError once closed (its native memory is freed: a call into it would crash)."""
        if self._closed:
            raise RuntimeError("this model is closed: load it again")
        return self.artifact.backend

    def stream(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, draft: int | None = None,
               lookup_ngram: int = LOOKUP_NGRAM, stop: tuple[str, ...] | None = (), **sampling) -> Iterator[Piece]:
        """Pieces of text as they are produced (see SamplingOptions for temperature, top_k, top_p, seed, ignore_eos);
        `truncate` keeps the end of a prompt longer than the context; `stop`: texts to stop before, as
        `--stop`. `draft`: tokens prompt-lookup decoding drafts from n-grams (up to `lookup_ngram` long) of
        the text so far and verifies in one step (0: off; None: the backend's default, docs/benchmarks.md);
        greedy output is the same either way. One generation runs at a time (see `_exclusive`)."""
        check_flag("truncate", truncate)
        _refuse_unknown("stream", sampling)
        return self._exclusive(run(self._backend(), self.tokenizer, prompt, max_new_tokens, SamplingOptions(**sampling),
                                   _stops(stop), truncate=truncate, draft=draft, lookup_ngram=lookup_ngram))

    def generate(self, prompt: str, max_new_tokens: int = 64, truncate: bool = False, draft: int | None = None,
                 lookup_ngram: int = LOOKUP_NGRAM, stop: tuple[str, ...] | None = (), **sampling) -> str:
        _refuse_unknown("generate", sampling)
        with self._lock:  # another thread's call waits for this one, rather than take its cache halfway
            return "".join(piece.text for piece in self.stream(prompt, max_new_tokens, truncate, draft, lookup_ngram, stop, **sampling))

    def _exclusive(self, pieces: Iterator[Piece]) -> Iterator[Piece]:
        """The model has one KV cache: a stream left part read while another generation (or perplexity) runs
        would go on from the other's cache, silently another text (a stranger's finding). Each generation
        takes the cache when it is started; a stream that lost it raises at its next piece. The check and
        each step are one, under the model's lock: another thread's stream cannot step between them."""
        with self._lock:
            self._owner = owner = object()

        def guarded() -> Iterator[Piece]:
            while True:
                with self._lock:
                    self._backend()  # closed meanwhile: say so, not "ran another generation"
                    if self._owner is not owner:
                        raise RuntimeError("this stream's model ran another generation since it started; a model streams one "
                                           "generation at a time: read a stream to its end before starting the next, or load "
                                           "the model twice")
                    piece = next(pieces, None)
                if piece is None:
                    return
                yield piece

        return guarded()

    def chat(self, messages: list[dict], max_new_tokens: int = 128, stream: bool = False, stop: tuple[str, ...] | None = (),
             draft: int | None = None, lookup_ngram: int = LOOKUP_NGRAM, prompt_cache: str | Path | None = None,
             context_shift: bool = False, chat_template_kwargs: dict | None = None, **sampling) -> str | Iterator[Piece]:
        """The assistant's reply to `messages` ([{"role": "system" | "user" | "assistant" | "tool", "content": …}, …],
        ending with the user's turn or a tool's result; a content may be OpenAI's text parts, joined by newlines as
        llama-server joins them), rendered with the model's chat template as `edgelm chat` renders it;
        the oldest exchanges are dropped when the conversation and `max_new_tokens` outgrow the context, down to half
        of it, and stay dropped in the next call whose messages go on from these (as `edgelm chat` keeps its history), so
        the calls after a drop evaluate only their new tokens.
        `stream=True` gives the pieces as they come; `stop`: texts to stop before (repeatable in the CLI);
        sampling as SamplingOptions (temperature, top_k, top_p, min_p, repetition_penalty, seed); `draft`,
        `lookup_ngram`: prompt-lookup decoding, as in `stream`. `prompt_cache`: a file keeping the KV cache
        after the system prompt (`chat --prompt-cache`), loaded where the backend does not hold it yet, else
        written; `context_shift`: a NoPE model's cache is shifted past the old exchanges this call drops
        (`chat --context-shift`; not exactly a fresh prefill). `chat_template_kwargs`: the template's other variables,
        as transformers' apply_chat_template(**kwargs) and llama-server take them ({"enable_thinking": False})."""
        from .chat import Conversation, check_messages

        check_flag("stream", stream)
        check_flag("context_shift", context_shift)

        if not isinstance(messages, (list, tuple)):
            raise TypeError(f'messages is a list of dicts {{"role": str, "content": str}}, not {type(messages).__name__}')
        messages = [_text_content(m) for m in messages]
        # an assistant's tool call may have no content (OpenAI's and transformers' form: content None beside tool_calls);
        # other keys (tool_calls, name, tool_call_id) reach the template as they are
        if not all(isinstance(m, dict) and isinstance(m.get("role"), str) and (isinstance(m.get("content"), str) or
                   m.get("content") is None and m["role"] == "assistant" and "tool_calls" in m) for m in messages):
            raise TypeError('messages are dicts {"role": str, "content": str} (an assistant\'s with "tool_calls" may have content None)')
        # the roles published templates render (Llama 3.x's ipython, OpenAI's developer)
        roles = ("system", "developer", "user", "assistant", "tool", "ipython")
        if unknown := next((f"message {i}'s role is {m['role'][:40]!r}" for i, m in enumerate(messages) if m["role"] not in roles), None):
            raise ValueError(f"{unknown}, not one of {', '.join(roles)}")
        if not messages or messages[-1]["role"] not in ("user", "tool", "ipython"):
            raise ValueError("the reply answers the user's turn or a tool's result, so the last message is one of them" +
                             (f", not the {messages[-1]['role']}'s" if messages else ": the list is empty"))
        _refuse_unknown("chat", sampling, " (a chat template's variable goes in chat_template_kwargs={...})")
        check_messages(messages)
        system = messages[0]["content"] if messages[0]["role"] == "system" else None
        backend = self._backend()
        conversation = Conversation(self.tokenizer, backend.context_length, max_new_tokens, system,
                                    template_kwargs={} if chat_template_kwargs is None else chat_template_kwargs)
        history = messages[1 if system is not None else 0:-1]
        with self._lock:
            # the messages the last call dropped to fit, where this history goes on from them, stay dropped, as `edgelm
            # chat` keeps its history trimmed: the context fills seldom and the turns after reuse the cache (stranger 40:
            # each call dropped afresh to half the room, so the kept window moved and every call re-evaluated ~200 tokens)
            dropped_system, dropped = self._chat_dropped
            skip = len(dropped) if dropped_system == system and len(history) > len(dropped) and history[:len(dropped)] == dropped else 0
            conversation.turns = history[skip:]
            if prompt_cache is not None:
                from .runtime.prompt_cache import check_path, start_from

                path = check_path(prompt_cache)  # also where the cache is held already (a bad path passed from the second call)
                log.info(start_from(path, self.artifact.path, backend, conversation.preamble_ids()))
            turn = conversation.turn(messages[-1]["content"], backend, max_new_tokens, SamplingOptions(**sampling), _stops(stop),
                                     draft, lookup_ngram, context_shift, messages[-1]["role"])
            kept = len(turn.turns) - 1  # of the history, beside the new message
            self._chat_dropped = (system, [dict(m) for m in history[:len(history) - kept]])
            pieces = self._exclusive(iter(turn))
            return pieces if stream else "".join(piece.text for piece in pieces)

    def perplexity(self, text: str, ctx: int = 256, stride: int | None = None) -> float:
        """Sliding-window perplexity, as `edgelm perplexity`. The loaded model scores where it keeps every
        position's logits and its context holds a window; otherwise (llama.cpp opened for generation, or a
        window past the loaded context) a second opening of the file with every position's logits and a
        context of one window, as the command opens it, closed afterwards: every format gives a number for
        the same call (a window past the context was a number on torch and ONNX, a ValueError on the ggml
        executor and a UserError on llama.cpp, a stranger's finding)."""
        from .evaluate import check_windows, perplexity

        self._backend()  # closed: refused before the tokenizer, which may be the closed engine's
        ids = self.tokenizer.encode(text)
        check_windows(len(ids), ctx, stride)  # before a second opening of the file with a context of ctx
        window = min(ctx, len(ids))  # a text shorter than ctx is one window of its length
        with self._lock:
            self._owner = object()  # it resets the cache: a stream still open has lost it
            if self._backend().all_logits and window <= self.artifact.backend.context_length:
                return perplexity(self.artifact.backend, ids, ctx, stride).perplexity
        if on_disk(self.artifact.path) != self._on_disk:  # a second opening of another file scored another model (stranger 50)
            raise UserError("changed on disk since edgelm.load opened it (replaced, removed or written to); perplexity opens it again "
                            "to keep every position's logits", self.artifact.path, "load it again")
        with open_artifact(self.artifact.path, replace(self.options, all_logits=True, context_length=window)) as scorer:
            return perplexity(scorer.backend, ids, ctx, stride).perplexity


def _text_content(message):
    """OpenAI's content parts ([{"type": "text", "text": …}, …]) as one text, joined by newlines, as llama-server gives them
    to a template that does not ask for typed content (common/chat.cpp, concat_typed_text); a part of another type (an image)
    is refused, as llama-server refuses it: these models read text."""
    if not isinstance(message, dict) or not isinstance(content := message.get("content"), list):
        return message
    if not all(isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str) for part in content):
        kinds = sorted({str(part.get("type"))[:40] if isinstance(part, dict) else type(part).__name__ for part in content} - {"text"})
        raise TypeError(f"a message's content parts are {{\"type\": \"text\", \"text\": str}}: these models read text, "
                        f"not {', '.join(kinds) or 'text parts without a text'}")
    return {**message, "content": "\n".join(part["text"] for part in content)}


def _stops(stop: str | tuple[str, ...] | list[str] | None) -> tuple:
    """stop= as the texts to stop at: one text is one stop string (tuple("\n\n") made two one-character ones);
    None is none, as llama-cpp-python and OpenAI's request objects pass it (stranger 50: "stop must be a list of
    non-empty texts, not (None,)"); what is neither a text nor a collection of them is refused by the same check as
    a bad entry (stop=5 was Python's "'int' object is not iterable")."""
    if stop is None:
        return ()
    if isinstance(stop, str):
        return (stop,)
    try:
        return tuple(stop)
    except TypeError:
        return (stop,)


SAMPLING_OPTIONS = tuple(f.name for f in fields(SamplingOptions))
LOAD_OPTIONS = tuple(f.name for f in fields(LoadOptions))
# OpenAI's and llama-cpp-python's names for edgelm's arguments: what their users type first
OTHER_NAMES = {"max_tokens": "max_new_tokens", "repeat_penalty": "repetition_penalty", "frequency_penalty": "repetition_penalty"}


def _refuse_unknown(call: str, sampling: dict, otherwise: str = "") -> None:
    """A keyword the call does not take, named with what it may be instead (a stranger's generate(max_tokens=3) met
    "SamplingOptions.__init__() got an unexpected keyword argument")."""
    if unknown := sorted(set(sampling) - set(SAMPLING_OPTIONS)):
        name = unknown[0]
        hint = f" (OpenAI's or llama-cpp-python's name; edgelm's is {OTHER_NAMES[name]})" if name in OTHER_NAMES else \
            " (an option of edgelm.load)" if name in LOAD_OPTIONS else otherwise
        raise TypeError(f"{call}() takes no argument {name}{hint}; its sampling options are {', '.join(SAMPLING_OPTIONS)}")


# llama-cpp-python's `Llama(...)` names for LoadOptions' fields: what its users type first (a stranger's n_ctx= met
# "LoadOptions.__init__() got an unexpected keyword argument")
LLAMA_CPP_NAMES = {"n_ctx": "context_length", "n_threads": "threads", "n_gpu_layers": "gpu_layers"}


def load(path: str | Path, **options) -> Model:
    """Open a model folder, .gguf file or ONNX folder; options as LoadOptions (device, threads, provider,
    context_length: the KV cache's tokens, default the model's training context up to 4096, …)."""
    if unknown := [name for name in options if name not in LOAD_OPTIONS]:
        named = [f"{name} (llama-cpp-python's name; edgelm's is {LLAMA_CPP_NAMES[name]})" if name in LLAMA_CPP_NAMES else name
                 for name in unknown]
        raise TypeError(f"edgelm.load() takes no option {', '.join(named)}; its options are {', '.join(LOAD_OPTIONS)}")
    options = LoadOptions(**options)
    return Model(open_artifact(path, options), options)
