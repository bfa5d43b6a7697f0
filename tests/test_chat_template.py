"""The chat template's render worker (edgelm/chat_template.py): one forked process serves every render
under the same bounds a fork per render had; past a bound it is replaced, and it holds nothing of the
parent's open. (The hostile templates themselves are in test_chat.py.)"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from edgelm import chat_template
from edgelm.chat_template import TemplateLimit, render_bounded

PLAIN = "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
HELLO = [{"role": "user", "content": "Hello \ud83d\ude00 é"}]  # lone surrogates, as a terminal's surrogateescape gives


def worker_pid() -> int | None:
    return chat_template._worker.pid if chat_template._worker is not None else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone too
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


def test_one_worker_serves_every_render():
    assert render_bounded(PLAIN, messages=HELLO) == "user: Hello \ud83d\ude00 é\n"
    pid = worker_pid()
    for i in range(20):
        assert render_bounded(PLAIN, messages=[{"role": "user", "content": str(i)}]) == f"user: {i}\n"
    assert worker_pid() == pid and alive(pid)


@pytest.mark.parametrize("template,why", [
    ("{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}", "rendering for more than 2 s"),
    ("{{ 'x'.ljust(1500000000) }}", "more than 128 MB of memory"),
])
def test_a_worker_past_a_bound_is_replaced(template, why):
    render_bounded(PLAIN, messages=HELLO)
    before = worker_pid()
    with pytest.raises(TemplateLimit, match=why):
        render_bounded(template, messages=HELLO)
    assert not alive(before)  # killed (deadline) or ended (memory), and reaped
    assert render_bounded(PLAIN, messages=HELLO) == "user: Hello \ud83d\ude00 é\n"
    assert worker_pid() not in (None, before)


def test_the_sandbox_refusals_keep_the_worker():
    render_bounded(PLAIN, messages=HELLO)
    pid = worker_pid()
    for template in ("{{ 'x' * 10**7 }}", "{{ 2 ** 100000 }}", "{{ raise_exception('no') }}", "{% if %}"):
        with pytest.raises(Exception):
            render_bounded(template, messages=HELLO)
    assert worker_pid() == pid


def test_a_worker_killed_while_idle_is_replaced():
    render_bounded(PLAIN, messages=HELLO)
    pid = worker_pid()
    os.kill(pid, signal.SIGKILL)
    time.sleep(0.1)
    assert render_bounded(PLAIN, messages=HELLO).startswith("user: Hello")
    assert worker_pid() != pid


def test_ctrl_c_is_the_parents():
    render_bounded(PLAIN, messages=HELLO)
    pid = worker_pid()
    os.kill(pid, signal.SIGINT)  # the terminal sends it to the whole process group
    assert render_bounded(PLAIN, messages=HELLO).startswith("user: Hello") and worker_pid() == pid


def test_the_worker_holds_none_of_the_parents_descriptors():
    """A server's connection the parent closes must reach its client as EOF, not stay open in the worker."""
    chat_template._end_worker()
    ours, theirs = socket.socketpair()
    render_bounded(PLAIN, messages=HELLO)  # the worker forks while `ours` is open
    held = {os.readlink(f"/proc/{worker_pid()}/fd/{fd}") for fd in os.listdir(f"/proc/{worker_pid()}/fd")}
    ours.close()
    theirs.settimeout(5)
    assert theirs.recv(1) == b""
    theirs.close()
    assert not any(name.startswith("socket:") for name in held), held


def test_the_worker_ends_with_its_parent(tmp_path):
    script = ("import os, sys\nfrom edgelm import chat_template\nchat_template.render_bounded('x')\n"
              "print(chat_template._worker.pid, flush=True)\nos.kill(os.getpid(), 9)\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    pid = int(done.stdout)
    for _ in range(100):
        if not os.path.exists(f"/proc/{pid}"):
            break
        time.sleep(0.05)
    assert not os.path.exists(f"/proc/{pid}")  # it read EOF on its requests and exited (init reaped it)


def test_chat_template_jinja_wins_over_tokenizer_config_as_transformers_reads_them(tmp_path):
    """Stranger round 12: a folder with both a tokenizer_config.json template and a different chat_template.jinja
    rendered the config's in edgelm (folder, GGUF, ONNX) and genai, the file's in transformers; the ONNX export
    shipped both. transformers' from_pretrained lets the file win: so does edgelm, and the export states it in both."""
    import json
    import shutil
    from pathlib import Path

    from transformers import AutoTokenizer

    from edgelm.export.onnx import write_hf_configs
    from edgelm.models import open_checkpoint
    from edgelm.tokenizer import load_tokenizer

    folder = shutil.copytree(Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope", tmp_path / "model")
    (folder / "chat_template.jinja").write_text("{% for m in messages %}FILE {{ m.content }}\n{% endfor %}"
                                                "{% if add_generation_prompt %}ANSWER:{% endif %}")
    assert json.loads((folder / "tokenizer_config.json").read_text())["chat_template"]  # the other one
    expected = AutoTokenizer.from_pretrained(folder).chat_template
    assert load_tokenizer(folder).chat_template == expected and expected.startswith("{% for m in messages %}FILE")
    out = tmp_path / "onnx"
    out.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(folder / name, out / name)
    write_hf_configs(open_checkpoint(folder), out)
    assert json.loads((out / "tokenizer_config.json").read_text())["chat_template"] == expected  # what onnxruntime-genai reads
