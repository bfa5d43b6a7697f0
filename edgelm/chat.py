"""Chat turns: the conversation rendered with the model's chat template (jinja2, in the sandbox and
with the globals transformers' `apply_chat_template` provides, bounded in memory and time by
chat_template.py), trimmed to fit the context."""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .artifact_files import MAX_TEMPLATE_BYTES, read_text
from .constants import SAMPLING_DEFAULTS
from .chat_template import TEMPLATE_GLOBALS, TEMPLATE_MAX_CHARS, TemplateLimit, render_bounded
from .errors import UserError
from .numbers import LOOKUP_NGRAM
from .tokenizer import Tokenizer, unicode_text

if TYPE_CHECKING:
    from .runtime.backend import Backend
    from .runtime.generate import Piece
    from .runtime.sampling import SamplingOptions

# Used when neither the tokenizer config nor the GGUF carries a template (roles spelled out, not
# `| capitalize`d, as in the shipped tokenizers: onnxruntime-genai's template engine lacks that filter).
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User{% elif m['role'] == 'assistant' %}Assistant"
    "{% else %}System{% endif %}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


# llama.cpp's fallback where a model has no template (llama_chat_apply_template's chatml), used where the vocabulary has
# ChatML's markers: a Qwen-like model without a template then ends its reply at <|im_end|> as it was trained to
CHATML_TEMPLATE = (
    "{% for m in messages %}{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
CHATML_MARKERS = ("<|im_start|>", "<|im_end|>")

CHAT_COMMANDS = ("/exit", "/reset", "/help", "/?")
CHAT_HELP = "/reset clears the history, /exit (or Ctrl-D) leaves, Ctrl-C stops a reply; start a message with // to send one beginning with /"
SAMPLING_NAMES = ("temperature", "top_k", "top_p", "min_p", "repetition_penalty")


def read_chat_line(line: str) -> tuple[str, str]:
    """What a typed line asks: ("send", the message), ("exit", ""), ("reset", "") or ("say", a note for the user). A
    command word, alone or with more after it, is never sent as a message (llama-cli's commands have the same shape;
    `/reset now` went to the model as text); `//…` sends a message that begins with `/`."""
    if line.lstrip().startswith("//"):
        return "send", line.lstrip()[1:]
    # a `/` alone is a command word too, and commands are known in any case (stranger 42: `/` went to the model as a
    # message and `/EXIT` was an unknown command)
    command = re.fullmatch(r"(/[A-Za-z?]*)(\s.*)?", line.strip(), re.DOTALL)
    if command is None:
        return "send", line
    word, rest = command[1].lower(), (command[2] or "").strip()
    if word in CHAT_COMMANDS and rest:
        return "say", f"{word} takes nothing after it ({CHAT_HELP})"
    if word in ("/exit", "/reset"):
        return word[1:], ""
    return "say", CHAT_HELP if word in ("/help", "/?") else f"unknown command {word}: {CHAT_HELP}"


def chat_sampling(recommended: dict, given: dict) -> tuple[dict, str]:
    """The sampling a chat uses and a phrase saying so: what the model's files recommend (generation_config.json, a
    GGUF's general.sampling.*, genai_config's search), else edgelm's chat defaults, as llama.cpp's chat takes a GGUF's;
    what is given wins."""
    values = SAMPLING_DEFAULTS | recommended | given
    # each value with where it came from, and none that cannot act: greedy picks the top token whatever top_k, top_p and
    # min_p say (stranger 42: `--temp 0` read "temperature 0, top_k 40, top_p 0.95 (as given)")
    shown = [name for name in SAMPLING_NAMES if name in values and not (values["temperature"] == 0 and name in ("top_k", "top_p", "min_p"))]
    groups = []
    for source, names in (("as given", given), ("as the model recommends", recommended), ("edgelm's defaults", SAMPLING_DEFAULTS)):
        mine = [name for name in shown if name in names]
        shown = [name for name in shown if name not in names]
        if mine:
            groups.append(", ".join(f"{name} {values[name]:g}" for name in mine) + f" ({source})")
    return values, ("sampling greedy: " if values["temperature"] == 0 else "sampling ") + "; ".join(groups)


def fallback_template(tokenizer: Tokenizer) -> tuple[str, str]:
    """The template for a model that carries none, and how the chat names it: ChatML where the vocabulary has its
    markers, as llama.cpp falls back to it; else plain User:/Assistant: lines."""
    if all(tokenizer.lookup(marker) is not None for marker in CHATML_MARKERS):
        return CHATML_TEMPLATE, "ChatML (the model has no template; its vocabulary has ChatML's markers)"
    return PLAIN_TEMPLATE, "a plain User:/Assistant: template (the model has none)"


PROBE_MESSAGE = "Hello there"
TEMPLATE_VARIABLES = ("messages", "add_generation_prompt", "bos_token", "eos_token")  # what render passes itself
MAX_TEMPLATE_VARIABLES_BYTES = 1 << 20


def check_template_variables(variables) -> dict:
    """chat_template_kwargs as a template can take them: names a template reads (none that edgelm, chat_template.py's
    sandbox or jinja sets: `self` clashed with jinja's own argument, and the template was blamed) to JSON data at most
    1 MB as JSON and MAX_JSON_DEPTH deep (a lambda or a 10,000-deep list failed inside the renderer, blamed on the
    template). TypeError / ValueError, as for any other argument."""

    from jinja2.defaults import DEFAULT_NAMESPACE


    if not isinstance(variables, dict):
        raise TypeError(f"the chat template's variables are a dict of names to values, as {{\"enable_thinking\": False}}, "
                        f"not {type(variables).__name__}")
    reserved = {*TEMPLATE_VARIABLES, *DEFAULT_NAMESPACE, *TEMPLATE_GLOBALS, "self"}
    for name in variables:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            raise ValueError(f"the chat template's variable {str(name)[:40]!r} is not a name a template reads")
        if name in reserved:
            raise ValueError(f"the chat template's variable {name} is set by edgelm or jinja, not by chat_template_kwargs")
    check_json_data(variables, "the chat template's variables", MAX_TEMPLATE_VARIABLES_BYTES)
    return variables


def check_json_data(value, what: str, limit: int) -> None:
    """`value` as JSON data a template can take, at most `limit` bytes as JSON and MAX_JSON_DEPTH deep: TypeError for what is
    not JSON data (a lambda, NaN), ValueError for what is too large or too deep (it failed inside the renderer, blamed
    on the model's template)."""
    import json

    from .artifact_files import parse_json

    try:
        text = json.dumps(value, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"{what}: not JSON data ({str(exc)[:120]})") from None
    try:
        parse_json(text, None, what, limit)  # its size and depth bounds
    except UserError as exc:
        raise ValueError(exc.what) from None


def check_messages(messages: list[dict]) -> None:
    """A conversation given in Python as a template can render it: JSON data (a tool call's arguments nested 100,000
    deep failed inside the renderer), no larger than a rendered chat may be (a 10 MB message stopped the template,
    and the model's template was blamed)."""
    check_json_data(messages, "the conversation", TEMPLATE_MAX_CHARS)


# where a template lives: a folder's tokenizer_config.json or chat_template.jinja, a GGUF's key; each error names the file
FIX_TEMPLATE = "fix the model's chat template (tokenizer_config.json or chat_template.jinja; in a GGUF, tokenizer.chat_template)"


@dataclass
class Conversation:
    tokenizer: Tokenizer
    context_length: int
    reply_budget: int
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # user/assistant (and tool) messages, oldest first
    # variables the template reads besides the conversation, as transformers' apply_chat_template(**kwargs) and
    # llama-server's chat_template_kwargs pass them (Qwen3's enable_thinking)
    template_kwargs: dict = field(default_factory=dict)
    # a template file in place of the model's (`chat --chat-template-file`, llama.cpp's flag; checked by user_file)
    template_file: Path | None = None

    def __post_init__(self) -> None:
        if self.system is not None:
            unicode_text(self.system)
        check_template_variables(self.template_kwargs)
        source = self.tokenizer.chat_template if self.template_file is None else read_text(self.template_file, MAX_TEMPLATE_BYTES,
                                                                                           "--chat-template-file")
        self.where = self.template_file or self.tokenizer.template_file  # the file an error in the template names
        # what to fix: the file given in place of the model's, else the model's own (stranger 43: a broken
        # --chat-template-file was blamed on the model's files)
        self.fix = FIX_TEMPLATE if self.template_file is None else "fix the template file given with --chat-template-file"
        if isinstance(source, list):  # transformers' named templates: [{"name": "default", "template": …}, …]
            source = next((t["template"] for t in source if t["name"] == "default"), None)
        if source is not None and len(source.encode("utf-8", "surrogatepass")) > MAX_TEMPLATE_BYTES:
            # a folder's template file is refused at this size when it is read; a GGUF's key here
            raise UserError(f"the chat template is {len(source):,} characters; edgelm renders at most {MAX_TEMPLATE_BYTES:,} bytes of "
                            "template (published ones are a few kB)", self.where, self.fix)
        given = (source, f"the chat template of {self.template_file}" if self.template_file else "the model's chat template")
        self.template_source, self.template_name = given if source else fallback_template(self.tokenizer)
        # rendered once before the first turn, so a template that loses the conversation fails at start
        if PROBE_MESSAGE not in self.render([{"role": "user", "content": PROBE_MESSAGE}]):
            raise UserError(f"the chat template renders nothing of the conversation (a user message {PROBE_MESSAGE!r} is not in "
                            "its output)", self.where, self.fix)
        # a chat whose every message must be refused is refused at its start (a stranger's finding: `-c 2` with
        # 128 tokens kept for the reply, or a system prompt longer than the context, started and then blamed
        # each message; with --prompt-cache the system prompt overflowed the cache: a traceback)
        self._preamble = self._shared_opening()
        preamble = len(self._preamble)
        if preamble + self.reply_budget >= self.context_length:
            what = f"the system prompt and the template's opening take {preamble:,} tokens, " if self.system else ""
            raise UserError(f"no message fits: {what}the reply keeps {self.reply_budget:,} and the context holds "
                            f"{self.context_length:,}", None,
                            "give a larger context (-c)" + (", fewer --max-new-tokens or a shorter --system" if self.system
                                                              else " or fewer --max-new-tokens"))

    def render(self, turns: list[dict]) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
        special = {name: self.tokenizer.config.get(name) for name in ("bos_token", "eos_token")}
        special = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k, v in special.items()}
        from jinja2 import TemplateSyntaxError

        where = self.where if self.template_source not in (PLAIN_TEMPLATE, CHATML_TEMPLATE) else None
        try:
            return render_bounded(self.template_source, **self.template_kwargs, messages=messages, add_generation_prompt=True, **special)
        except TemplateSyntaxError as exc:
            raise UserError(f"the chat template does not compile ({exc.message})", where, self.fix) from None
        except TemplateLimit as exc:
            given = sum(len(m["content"]) for m in messages if isinstance(m.get("content"), str))
            if 2 * given > TEMPLATE_MAX_CHARS:  # the output holds every message: then the messages, not the template, are too long
                raise UserError(f"the conversation's messages hold {given:,} characters, and a rendered chat holds at most "
                                f"{TEMPLATE_MAX_CHARS:,}", None, "send a shorter message (/reset clears the history)") from None
            raise UserError(f"the chat template was stopped: {exc}", where, self.fix) from None
        except Exception as exc:  # the template's own raise_exception, undefined names, …
            # a template may refuse a system message (raise_exception('System role not supported')): only then is --system the way out
            raise UserError(f"the chat template failed to render ({exc})", where,
                            self.fix + (", or start without --system" if self.system else "")) from None

    def preamble_ids(self) -> list[int]:
        """The tokens every first turn begins with, whatever the user writes: the template's opening and the
        system prompt. What a prompt cache (runtime/prompt_cache.py) holds; found once, at the start."""
        return list(self._preamble)

    def _shared_opening(self) -> list[int]:
        """The common prefix of two renders with different user messages."""
        first, second = (self.tokenizer.encode(self.render([{"role": "user", "content": text}]), add_bos=False, special=True)
                         for text in (PROBE_MESSAGE, "Quartz"))
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return first[:shared]

    def prompt_ids(self, user: str, role: str = "user") -> tuple[list[int], int]:
        """Token ids for the history plus this user turn (or a tool's result, `role` "tool"), and how many old
        turns were dropped to fit; the history becomes what they hold. A turn refused (not UTF-8 text; too long
        for the context with the reply's room, even alone) leaves the history as it was, so a chat can go on."""
        self.turns, ids, dropped = self.fit(user, role)
        return ids, dropped

    def fit(self, user: str, role: str = "user") -> tuple[list[dict], list[int], int]:
        """prompt_ids without changing the history: the turns the prompt holds (the history less what was dropped,
        and the message), its ids, and how many exchanges were dropped."""
        turns = [*self.turns, {"role": role, "content": unicode_text(user)}]
        room = self.context_length - self.reply_budget

        def encoded(start: int) -> list[int]:
            # the rendered template is text in which special tokens are tokens, and it prints its own bos:
            # as transformers' apply_chat_template(tokenize=True) and llama.cpp's chat encode it
            return self.tokenizer.encode(self.render(turns[start:]), add_bos=False, special=True)

        if len(ids := encoded(0)) <= room:
            return turns, ids, 0
        # once something must go, free half the room, as llama.cpp's context shift discards half the history: what
        # follows the system prompt moved and is evaluated again, so this happens seldom and the turns after it reuse
        # the cache. Oldest exchange first, down to the message alone, which may take all the room (a stranger's
        # finding: after two exchanges a 3,011-token message was refused in a 4,096 context, held to the half-room
        # target meant for history). The fewest drops that fit, found by bisection: each try renders and encodes the
        # rest, and one drop at a time cost a 400-exchange history 14 s (stranger 40).
        starts = [*range(2, len(turns) - 1, 2), len(turns) - 1]
        low, high = 0, len(starts) - 1
        found = {}
        while low < high:
            middle = (low + high) // 2
            found[middle] = encoded(starts[middle])
            if len(found[middle]) <= room // 2:
                high = middle
            else:
                low = middle + 1
        ids = found[low] if low in found else encoded(starts[low])
        if len(ids) <= room // 2 or starts[low] == len(turns) - 1 and len(ids) <= room:
            return turns[starts[low]:], ids, low + 1
        raise UserError(f"this message takes {len(ids):,} tokens with the chat template; the {self.context_length:,}-token "
                        f"context keeps {self.reply_budget:,} for the reply", None,
                        "send a shorter message, or a larger context (-c) or fewer --max-new-tokens")

    def add_reply(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def turn(self, user: str, backend: Backend, max_new_tokens: int, sampling: SamplingOptions, stop: tuple[str, ...] = (),
             draft: int | None = None, lookup_ngram: int = LOOKUP_NGRAM, context_shift: bool = False, role: str = "user") -> Turn:
        """The next turn, `user`'s message (`role`'s) on this history: rendered, trimmed to fit and tokenized now (a
        message refused here leaves the history as it was); iterating it streams the reply, and only then does the
        turn join the history: a turn stopped before its reply began (a Ctrl-C while --verbose-prompt lists it,
        stranger 48) leaves the history as it was, the exchanges dropped for it included."""
        turns, ids, dropped = self.fit(user, role)
        return Turn(self, turns, ids, dropped, backend, max_new_tokens, sampling, stop, draft, lookup_ngram, context_shift)

    def reset(self) -> None:
        self.turns = []


@dataclass
class Turn:
    """One reply, streamed on the cache the backend holds (runtime/backend.py: only what the cache does not
    share with the prompt is evaluated), and what it cost, as `edgelm chat` reports it after each turn.
    The reply joins the history when the stream ends, also when the caller stops it early (Ctrl-C): what
    was said stays said. A refusal part way (runtime's UserError) puts the history back as it was."""

    conversation: Conversation
    turns: list[dict]  # the history this turn's prompt holds (less the exchanges dropped to fit, with the message)
    ids: list[int]
    dropped: int  # oldest exchanges dropped to fit the context
    backend: Backend
    max_new_tokens: int
    sampling: SamplingOptions
    stop: tuple[str, ...]
    draft: int | None
    lookup_ngram: int
    context_shift: bool  # shift a NoPE cache past what was dropped instead of evaluating it again
    started: bool = False  # the reply's stream began: from here the turn joins the history, whatever stops it
    evaluated: int | None = None  # prompt tokens run through the model, known once the first piece is out
    tokens: int = 0
    drafted: int = 0  # prompt-lookup tokens verified, and taken, this turn
    accepted: int = 0

    def __iter__(self) -> Iterator[Piece]:
        from .runtime.generate import generate_from_ids

        backend, reply, refused, history = self.backend, [], False, self.conversation.turns
        evaluated, drafted, accepted = backend.evaluated, backend.drafted, backend.accepted
        try:
            self.conversation.turns, self.started = list(self.turns), True
            backend.context_shift = self.context_shift and backend.position_free and bool(self.dropped)  # only past what was dropped
            for piece in generate_from_ids(backend, self.conversation.tokenizer, self.ids, self.max_new_tokens, self.sampling,
                                           self.stop, self.draft, self.lookup_ngram):
                if self.evaluated is None:  # the prompt's evaluation is done once the first piece is out
                    self.evaluated = backend.evaluated - evaluated
                self.tokens += piece.token is not None
                reply.append(piece.text)
                yield piece
        except UserError:
            refused = True
            self.conversation.turns = history
            raise
        finally:
            backend.context_shift = False
            self.drafted, self.accepted = backend.drafted - drafted, backend.accepted - accepted
            if not refused:
                self.conversation.add_reply("".join(reply).strip())
