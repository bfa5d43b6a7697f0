"""Chat turns: the conversation rendered with the model's chat template (jinja2, in the sandbox and
with the globals transformers' `apply_chat_template` provides), trimmed to fit the context."""

from __future__ import annotations

import os
import select
import signal
import time
from dataclasses import dataclass, field
from datetime import datetime

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
# over 100,000). One C call allocates at once ('x'.ljust(1500000000), '%01500000000d' % 1, replace,
# center, indent, wordwrap, join, format, …), a loop allocates nothing while it spins, and jinja2
# evaluates constant expressions while it compiles (`{{ '%01500000000d' % 1 }}` took 104 s in
# from_string), so the template is compiled and rendered in a forked child under an address-space limit
# (RLIMIT_AS) and a wall-clock deadline: every way a call allocates or spins is bounded by the kernel, not
# by a list of methods. The sandbox's own checks below (output size, string/list products, powers) stay
# as the first, clearer refusals.
TEMPLATE_MAX_CHARS = 1_000_000
TEMPLATE_MAX_EXPONENT = 1_000
TEMPLATE_SECONDS = 2.0
TEMPLATE_MEMORY = 128 * 2**20  # bytes of address space the child may add to what it inherits


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


def _render(template, variables: dict) -> str:
    parts, size = [], 0
    for chunk in template.generate(**variables):
        size += len(chunk)
        if size > TEMPLATE_MAX_CHARS:
            raise TemplateLimit(f"more than {TEMPLATE_MAX_CHARS:,} characters of output")
        parts.append(chunk)
    return "".join(parts)


def _address_space() -> int | None:
    """This process's mapped bytes (VmSize), where /proc says (Linux); macOS does not enforce RLIMIT_AS."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
    except (OSError, StopIteration, ValueError):
        return None


def _child(source: str, variables: dict, write_fd: int) -> None:
    """In the forked child: compile and render under the memory limit, send b"ok\0text", b"limit\0why",
    b"syntax\0why" or b"error\0why", and exit."""
    import resource

    from jinja2 import TemplateSyntaxError

    try:
        mapped = _address_space()
        if mapped is not None:
            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            limit = mapped + TEMPLATE_MEMORY
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        payload = b"ok\0" + _render(_compile(source), variables).encode("utf-8", "surrogatepass")
    except TemplateSyntaxError as exc:
        payload = b"syntax\0" + str(exc)[:500].encode("utf-8", "replace")
    except TemplateLimit as exc:
        payload = b"limit\0" + str(exc).encode()
    except MemoryError:
        payload = b"limit\0" + f"more than {TEMPLATE_MEMORY // 2**20} MB of memory".encode()
    except BaseException as exc:  # the template's raise_exception, undefined names, Ctrl-C: never past _exit
        payload = b"error\0" + str(exc)[:500].encode("utf-8", "replace")
    try:
        with open(write_fd, "wb") as pipe:
            pipe.write(payload)
    finally:
        os._exit(0)


def render_bounded(source: str, **variables) -> str:
    """The template's text, or TemplateLimit past TEMPLATE_MAX_CHARS, TEMPLATE_MEMORY or TEMPLATE_SECONDS,
    jinja2's TemplateSyntaxError, or ValueError with the template's own error. Where there is no fork
    (Windows), in this process with the sandbox's checks only."""
    if not hasattr(os, "fork"):
        return _render(_compile(source), variables)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _child(source, variables, write_fd)
    os.close(write_fd)
    chunks, deadline = [], time.monotonic() + TEMPLATE_SECONDS
    try:
        with open(read_fd, "rb", buffering=0) as pipe:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([pipe], [], [], left)[0]:
                    raise TemplateLimit(f"rendering for more than {TEMPLATE_SECONDS:g} s")
                chunk = pipe.read(1 << 20)
                if not chunk:
                    break
                chunks.append(chunk)
    finally:  # done, timed out or Ctrl-C: the child never outlives this call
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        os.waitpid(pid, 0)
    kind, _, body = b"".join(chunks).partition(b"\0")
    if kind == b"ok":
        return body.decode("utf-8", "surrogatepass")
    if kind == b"limit":
        raise TemplateLimit(body.decode())
    if kind == b"syntax":
        from jinja2 import TemplateSyntaxError

        raise TemplateSyntaxError(body.decode(), 0)
    raise ValueError(body.decode() if kind == b"error" else "the rendering process died")


def _compile(source: str):
    environment = _bounded_environment()
    environment.globals["raise_exception"] = _raise
    # transformers' apply_chat_template gives templates the local time (chat_template_utils.py), and so does
    # llama.cpp's --jinja: Llama 3.x's template prints "Today Date: " from it, else a fixed 26 Jul 2024
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(str(format))
    return environment.from_string(source)


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
        # rendered once before the first turn, so a template that loses the conversation fails at start
        if PROBE_MESSAGE not in self.render([{"role": "user", "content": PROBE_MESSAGE}]):
            raise UserError(f"the chat template renders nothing of the conversation (a user message {PROBE_MESSAGE!r} is not in "
                            "its output)", None, "fix chat_template in tokenizer_config.json")

    def render(self, turns: list[dict]) -> str:
        messages = ([{"role": "system", "content": self.system}] if self.system else []) + turns
        special = {name: self.tokenizer.config.get(name) for name in ("bos_token", "eos_token")}
        special = {k: (v.get("content") if isinstance(v, dict) else v) or "" for k, v in special.items()}
        from jinja2 import TemplateSyntaxError

        try:
            return render_bounded(self.template_source, messages=messages, add_generation_prompt=True, **special)
        except TemplateSyntaxError as exc:
            raise UserError(f"the chat template does not compile ({exc.message})", None, "fix chat_template in tokenizer_config.json") from None
        except TemplateLimit as exc:
            raise UserError(f"the chat template was stopped: {exc}", None, "fix chat_template in tokenizer_config.json") from None
        except Exception as exc:  # the template's own raise_exception, undefined names, …
            raise UserError(f"the chat template failed to render ({exc})", None, "fix chat_template, or start without --system") from None

    def preamble_ids(self) -> list[int]:
        """The tokens every first turn begins with, whatever the user writes: the template's opening and the
        system prompt (the common prefix of two renders with different user messages). What a prompt cache
        (runtime/prompt_cache.py) holds."""
        first, second = (self.tokenizer.encode(self.render([{"role": "user", "content": text}]), add_bos=False, special=True)
                         for text in (PROBE_MESSAGE, "Quartz"))
        shared = 0
        while shared < min(len(first), len(second)) and first[shared] == second[shared]:
            shared += 1
        return first[:shared]

    def prompt_ids(self, user: str) -> tuple[list[int], int]:
        """Token ids for the history plus this user turn, and how many old turns were dropped to fit."""
        self.turns.append({"role": "user", "content": user})
        dropped, room = 0, self.context_length - self.reply_budget
        while True:
            # the rendered template is text in which special tokens are tokens, and it prints its own bos:
            # as transformers' apply_chat_template(tokenize=True) and llama.cpp's chat encode it
            ids = self.tokenizer.encode(self.render(self.turns), add_bos=False, special=True)
            if len(ids) <= room or len(self.turns) <= 1:
                return ids, dropped
            # once something must go, free half the room, as llama.cpp's context shift discards half the
            # history: what follows the system prompt moved and is evaluated again, so this happens seldom
            # and the turns after it reuse the cache
            room = (self.context_length - self.reply_budget) // 2
            self.turns = self.turns[2:] if len(self.turns) > 2 else self.turns[1:]  # oldest exchange first
            dropped += 1

    def add_reply(self, text: str) -> None:
        self.turns.append({"role": "assistant", "content": text})

    def reset(self) -> None:
        self.turns = []
