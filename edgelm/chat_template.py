"""A chat template a stranger wrote, rendered within bounds on memory and time.

Beyond what jinja2's sandbox blocks (attribute escapes, ranges over 100,000), one C call allocates at
once ('x'.ljust(1500000000), '%01500000000d' % 1, replace, center, indent, wordwrap, join, format, …), a
loop allocates nothing while it spins, and jinja2 evaluates constant expressions while it compiles
(`{{ '%01500000000d' % 1 }}` took 104 s in from_string). So templates are compiled and rendered in a
forked worker process under an address-space limit (RLIMIT_AS, TEMPLATE_MEMORY over what it inherited)
and a per-render deadline (TEMPLATE_SECONDS): every way a call allocates or spins is bounded by the
kernel, not by a list of methods. The sandbox's own checks (output size, string/list products, powers)
stay as the first, clearer refusals.

The worker is forked once, at the first render, and serves renders over a pipe, keeping the compiled
templates: a render costs a round trip (~1 ms) where a fork per render cost ~60-90 ms in a process
with torch and llama.cpp loaded. A render past its deadline gets the worker killed; one that ran out
of memory ends it (its heap is in no known state): either way the next render forks a fresh one.
Requests go to the worker pickled (the parent's own data, read by its own child); replies come back
as bytes, never unpickled, since the worker runs the stranger's template. Where there is no `fork`
(Windows) the template renders in this process with the sandbox's checks only; macOS does not enforce
RLIMIT_AS, so there the deadline alone bounds it.
"""

from __future__ import annotations

import atexit
import os
import pickle
import select
import signal
import struct
import threading
import time
from datetime import datetime

from .stops import ENDING

TEMPLATE_GLOBALS = ("raise_exception", "strftime_now")  # what the sandbox gives a template beside jinja's own names

TEMPLATE_MAX_CHARS = 1_000_000
TEMPLATE_MAX_EXPONENT = 1_000
TEMPLATE_SECONDS = 2.0
TEMPLATE_MEMORY = 128 * 2**20  # bytes of address space the worker may add to what it inherits
COMPILED_KEPT = 8  # templates the worker keeps compiled (a chat uses one)
_LENGTH = struct.Struct("<Q")
MAX_REPLY_BYTES = 4 * TEMPLATE_MAX_CHARS + 64  # the longest output, UTF-8 encoded, and its kind


class TemplateLimit(Exception):
    """A chat template ran past one of the bounds above."""


def _raise(message: str):
    raise ValueError(message)


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

    environment = BoundedEnvironment(trim_blocks=True, lstrip_blocks=True)
    environment.globals["raise_exception"] = _raise
    # transformers' apply_chat_template gives templates the local time (chat_template_utils.py), and so does
    # llama.cpp's --jinja: Llama 3.x's template prints "Today Date: " from it, else a fixed 26 Jul 2024
    environment.globals["strftime_now"] = lambda format: datetime.now().strftime(str(format))
    return environment


def _render(template, variables: dict) -> str:
    parts, size = [], 0
    for chunk in template.generate(**variables):
        size += len(chunk)
        if size > TEMPLATE_MAX_CHARS:
            raise TemplateLimit(f"more than {TEMPLATE_MAX_CHARS:,} characters of output")
        parts.append(chunk)
    return "".join(parts)


def _address_space() -> int | None:
    """This process's mapped bytes (VmSize), where /proc says (Linux)."""
    from .runtime.backend import proc_bytes

    return proc_bytes("/proc/self/status", "VmSize")


# --- the worker (the forked child) -----------------------------------------------------------------------

def _read_exactly(fd: int, size: int) -> bytes | None:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _answer(environment, compiled: dict, source: str, variables: dict) -> tuple[bytes, bool]:
    """(b"ok\\0text" | b"limit\\0why" | b"memory\\0why" | b"syntax\\0why" | b"error\\0why", whether the worker
    must end)."""
    from jinja2 import TemplateSyntaxError

    try:
        template = compiled.get(source)
        if template is None:
            template = compiled[source] = environment.from_string(source)
            while len(compiled) > COMPILED_KEPT:
                compiled.pop(next(iter(compiled)))
        return b"ok\0" + _render(template, variables).encode("utf-8", "surrogatepass"), False
    except TemplateSyntaxError as exc:
        return b"syntax\0" + str(exc)[:500].encode("utf-8", "replace"), False
    except TemplateLimit as exc:
        return b"limit\0" + str(exc).encode(), False
    except MemoryError:  # the heap is in no known state: answer, then end
        return b"memory\0" + f"more than {TEMPLATE_MEMORY // 2**20} MB of memory".encode(), True
    except Exception as exc:  # the template's raise_exception, undefined names, …
        return b"error\0" + str(exc)[:500].encode("utf-8", "replace"), False


def _serve(requests: int, replies: int) -> None:
    """The worker's loop: until the parent closes its end (or dies), render each request under the memory
    limit. Never returns: the forked copy of the parent's stack must not run on."""
    try:
        import resource

        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle: it kills the worker
        for number in ENDING:  # not the parent's handler (cli.main's), which unwinds a stack it forked; one ignored stays so
            if callable(signal.getsignal(number)):
                signal.signal(number, signal.SIG_DFL)
        # the parent's other descriptors (model files, a server's sockets) are not the worker's to hold open:
        # a connection the parent closes must close
        low, high = sorted((requests, replies))
        for start, stop in ((3, low), (low + 1, high), (high + 1, os.sysconf("SC_OPEN_MAX"))):
            os.closerange(start, stop)
        mapped = _address_space()
        if mapped is not None:
            hard = resource.getrlimit(resource.RLIMIT_AS)[1]
            limit = mapped + TEMPLATE_MEMORY
            resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
        environment, compiled = _bounded_environment(), {}
        while True:
            header = _read_exactly(requests, _LENGTH.size)
            if header is None:
                break
            body = _read_exactly(requests, _LENGTH.unpack(header)[0])
            if body is None:
                break
            source, variables = pickle.loads(body)  # the parent's own request, not a file's bytes
            payload, end = _answer(environment, compiled, source, variables)
            _write_all(replies, _LENGTH.pack(len(payload)) + payload)
            if end:
                break
    except BaseException:  # a MemoryError outside a render, a broken pipe: the parent sees the worker gone
        pass
    finally:
        os._exit(0)


# --- the parent's side --------------------------------------------------------------------------------

class _Worker:
    def __init__(self) -> None:
        import jinja2.sandbox  # noqa: F401  imported before the fork, so the worker's first render does not import

        requests_read, self.requests = os.pipe()
        self.replies, replies_write = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            os.close(self.requests)
            os.close(self.replies)
            _serve(requests_read, replies_write)
        os.close(requests_read)
        os.close(replies_write)
        self.owner = os.getpid()

    def render(self, source: str, variables: dict, seconds: float) -> bytes:
        """The worker's reply, or TemplateLimit when none came within `seconds`, ChildProcessError when it
        ended without one (the caller then ends it)."""
        request = pickle.dumps((source, variables), protocol=pickle.HIGHEST_PROTOCOL)
        deadline = time.monotonic() + seconds
        try:
            _write_all(self.requests, _LENGTH.pack(len(request)) + request)
        except BrokenPipeError:
            raise ChildProcessError("the rendering process ended") from None
        size = _LENGTH.unpack(self._read(_LENGTH.size, deadline))[0]
        if size > MAX_REPLY_BYTES:
            raise ChildProcessError(f"the rendering process answered {size:,} bytes")
        return self._read(size, deadline)

    def _read(self, size: int, deadline: float) -> bytes:
        data = b""
        while len(data) < size:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self.replies], [], [], left)[0]:
                raise TemplateLimit(f"rendering for more than {TEMPLATE_SECONDS:g} s")
            chunk = os.read(self.replies, min(size - len(data), 1 << 20))
            if not chunk:
                raise ChildProcessError("the rendering process ended")
            data += chunk
        return data

    def end(self) -> None:
        """Kill and reap the worker (idle, stuck or gone) and close the pipes."""
        for fd in (self.requests, self.replies):
            os.close(fd)
        try:
            os.kill(self.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            os.waitpid(self.pid, 0)
        except ChildProcessError:
            pass


_worker: _Worker | None = None
_lock = threading.Lock()  # one render at a time on the one pipe (a server may render from several threads)


def _end_worker() -> None:
    global _worker
    if _worker is not None and _worker.owner == os.getpid():
        _worker.end()
    _worker = None


atexit.register(_end_worker)


def _in_worker(source: str, variables: dict) -> bytes:
    global _worker
    with _lock:
        for attempt in (1, 2):
            fresh = _worker is None or _worker.owner != os.getpid()  # a forked copy of this process starts its own
            if fresh:
                _worker = None
                try:
                    _worker = _Worker()
                except OSError as exc:
                    raise TemplateLimit(f"the rendering process could not start ({exc.strerror})") from None
            try:
                reply = _worker.render(source, variables, TEMPLATE_SECONDS)
            except ChildProcessError:
                _end_worker()
                if fresh or attempt == 2:
                    raise
                continue  # a worker that ended while idle (killed from outside): once more with a fresh one
            except BaseException:  # past the deadline, Ctrl-C: this worker is done; the next render forks another
                _end_worker()
                raise
            if reply.startswith(b"memory\0"):
                _end_worker()  # it ends itself after a MemoryError: reap it now
            return reply


def render_bounded(source: str, **variables) -> str:
    """The template's text, or TemplateLimit past TEMPLATE_MAX_CHARS, TEMPLATE_MEMORY or TEMPLATE_SECONDS,
    jinja2's TemplateSyntaxError, or ValueError with the template's own error. Where there is no fork
    (Windows), in this process with the sandbox's checks only."""
    if not hasattr(os, "fork"):
        return _render(_bounded_environment().from_string(source), variables)
    try:
        reply = _in_worker(source, variables)
    except ChildProcessError:
        raise ValueError("the rendering process died") from None
    kind, _, body = reply.partition(b"\0")
    if kind == b"ok":
        return body.decode("utf-8", "surrogatepass")
    if kind in (b"limit", b"memory"):
        raise TemplateLimit(body.decode())
    if kind == b"syntax":
        from jinja2 import TemplateSyntaxError

        raise TemplateSyntaxError(body.decode(), 0)
    raise ValueError(body.decode())
