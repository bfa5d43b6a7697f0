"""Chat turns: the conversation rendered with the model's chat template (jinja2, in the sandbox and
with the globals transformers' `apply_chat_template` provides), trimmed to fit the context."""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

from .errors import UserError
from .tokenizer import Tokenizer

# Used when neither the tokenizer config nor the GGUF carries a template (roles spelled out, not
# `| capitalize`d, as in the shipped tokenizers: onnxruntime-genai's template engine lacks that filter).
PLAIN_TEMPLATE = (
    "{% for m in messages %}{% if m['role'] == 'user' %}User{% elif m['role'] == 'assistant' %}Assistant"
    "{% else %}System{% endif %}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}Assistant:{% endif %}"
)


def _raise(message: str):
    raise ValueError(message)


# Bounds on a template a stranger wrote, beyond what jinja2's sandbox blocks (attribute escapes, ranges
# over 100,000): its rendered size, the size of one string or list product, the size of a power, and
# its time (nested loops produce nothing to measure, so a timer).
TEMPLATE_MAX_CHARS = 1_000_000
TEMPLATE_MAX_EXPONENT = 1_000
TEMPLATE_SECONDS = 2.0


class TemplateLimit(Exception):
    """A chat template ran past one of the bounds above."""


def _bounded_environment():
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class BoundedEnvironment(ImmutableSandboxedEnvironment):
        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):
            if operator == "**" and isinstance(right, (int, float)) and abs(right) > TEMPLATE_MAX_EXPONENT:
                raise TemplateLimit(f"a power with exponent {right}")
            if operator == "*":
                for sequence, count in ((left, right), (right, left)):
                    if isinstance(sequence, (str, list, tuple)) and isinstance(count, int) and len(sequence) * count > TEMPLATE_MAX_CHARS:
                        raise TemplateLimit(f"a product of {len(sequence) * count:,} items")
            return super().call_binop(context, operator, left, right)

    return BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)


@contextmanager
def _time_limit(seconds: float):
    """SIGALRM after `seconds`, where there is one (Unix, main thread); elsewhere no timer."""
    if not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread():
        yield
        return

    def expire(signum, frame):
        raise TemplateLimit(f"rendering for more than {seconds:g} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def render_bounded(template, **variables) -> str:
    """The template's text, refused (TemplateLimit) past TEMPLATE_MAX_CHARS or TEMPLATE_SECONDS."""
    parts, size = [], 0
    with _time_limit(TEMPLATE_SECONDS):
        for chunk in template.generate(**variables):
            size += len(chunk)
            if size > TEMPLATE_MAX_CHARS:
                raise TemplateLimit(f"more than {TEMPLATE_MAX_CHARS:,} characters of output")
            parts.append(chunk)
    return "".join(parts)


def compile_template(source: str):
    from jinja2 import TemplateError

    environment = _bounded_environment()
    environment.globals["raise_exception"] = _raise
    try:
        return environment.from_string(source)
    except TemplateError as exc:
        raise UserError(f"the chat template does not compile ({exc})", None, "fix chat_template in tokenizer_config.json") from None


PROBE_MESSAGE = "Hello there"


@dataclass
class Conversation:
    tokenizer: Tokenizer
    context_length: int
    reply_budget: int
    system: str | None = None
    turns: list[dict] = field(default_factory=list)  # user/assistant messages, oldest first

    def __post_init__(self) -> None:
        source = self.tokenizer.chat_template
        if isinstance(source, list):  # transformers' named templates: [{"name": "default", "template": …}, …]
            source = next((t.get("template") for t in source if isinstance(t, dict) and t.get("name") == "default"), None)
        if source is not None and not isinstance(source, str):
            raise UserError(f"chat_template is a {type(source).__name__}, not a template text", None,
                            "fix chat_template in tokenizer_config.json")
        self.template_source = source or PLAIN_TEMPLATE
        self.template = compile_template(self.template_source)
        # rendered once before the first turn, so a template that loses the conversation fails at start
        if PROBE_MESSAGE not in self.render([{"role": "user", "content": PROBE_MESSAGE}]):
            raise UserError(f"the chat template renders nothing of the conversation (a user message {PROBE_MESSAGE!r} is not in "
                            "its output)", None, "fix chat_template in tokenizer_config.json")

    def render(self, turns: list[dict]) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
        special = {name: self.tokenizer.config.get(name) for name in ("bos_token", "eos_token")}
        special = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k, v in special.items()}
        try:
            return render_bounded(self.template, messages=messages, add_generation_prompt=True, **special)
        except TemplateLimit as exc:
            raise UserError(f"the chat template was stopped: {exc}", None, "fix chat_template in tokenizer_config.json") from None
        except Exception as exc:  # the template's own raise_exception, undefined names, …
            raise UserError(f"the chat template failed to render ({exc})", None, "fix chat_template, or start without --system") from None

    def prompt_ids(self, user: str) -> tuple[list[int], int]:
        """Token ids for the history plus this user turn, and how many old turns were dropped to fit."""
        self.turns.append({"role": "user", "content": user})
        dropped = 0
        while True:
            # the rendered template is text in which special tokens are tokens, and it prints its own bos:
            # as transformers' apply_chat_template(tokenize=True) and llama.cpp's chat encode it
            ids = self.tokenizer.encode(self.render(self.turns), add_bos=False, special=True)
            if len(ids) + self.reply_budget <= self.context_length or len(self.turns) <= 1:
                return ids, dropped
            self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[1:]  # oldest exchange first
            dropped += 1

    def add_reply(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns = []
