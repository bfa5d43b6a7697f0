"""`edgelm chat` as a person holds it: six turns in a pseudo-terminal, for every shipped family as a model
folder, a GGUF and an ONNX export. Each turn's prompt ids (printed by `--verbose-prompt`) must equal
transformers' own `apply_chat_template(tokenize=True)` over the same messages: the system prompt, what was
typed, and the replies as the terminal showed them."""

import re
import sys
from pathlib import Path

import pexpect
import pytest

from .conftest import TINY

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models"
SYSTEM = "You are Miss Austen."
TURNS = ["Good morning.", "How do you do?", "Tell me about Bath.", "And the weather there?", "Who is Captain Wentworth?",
         "Thank you, goodbye."]
NEW_TOKENS = 8
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
STATS = r"(\d+) tokens?, [\d.]+ tok/s"


@pytest.fixture(scope="session")
def chat_artifact(tmp_path_factory):
    """The shipped model folder, or its export made once per session (GGUF f16 and ONNX int4: the
    quickest of each format to write, 1 s and 11 s for tiny-rope on a loaded 2-core machine)."""
    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    root = tmp_path_factory.mktemp("chat-matrix")
    made: dict[tuple[str, str], Path] = {}

    def get(name: str, form: str) -> Path:
        if form == "folder":
            return SHIPPED / name
        if (name, form) not in made:
            source = open_checkpoint(SHIPPED / name)
            if form == "gguf":
                made[name, form] = export_gguf(source, root / f"{name}.gguf", "f16").path
            else:
                made[name, form] = export_onnx(source, root / f"{name}-onnx", "int4").path
        return made[name, form]

    return get


def transformers_ids(tokenizer, messages: list[dict]) -> list[int]:
    ids = tokenizer.apply_chat_template(messages, tokenize=True, add_generation_prompt=True, return_dict=False)
    return list(ids)


def one_turn(child, user: str) -> tuple[list[int], str]:
    """Type `user`; the prompt ids edgelm printed and the reply the terminal showed."""
    child.expect_exact("> ")
    child.sendline(user)
    child.expect(STATS)
    shown = ANSI.sub("", child.before).replace("\r\n", "\n")
    head, _, rest = shown.partition("prompt: ")
    assert user in head, shown  # the terminal's echo of what was typed
    count, _, rest = rest.partition(" tokens\n")
    lines = rest.split("\n")
    listed = lines[: int(count)]
    ids = [int(line.split(" -> ", 1)[0]) for line in listed]
    assert len(ids) == int(count) and all(" -> " in line for line in listed), shown
    reply = "\n".join(lines[int(count):])
    assert reply.endswith("\n"), shown  # the line break before the statistics
    return ids, reply[:-1]


@pytest.mark.parametrize("name,form", [pytest.param(name, form, id=f"{name}-{form}")
                                       for name in TINY for form in ("folder", "gguf", "onnx")])
def test_six_turns_in_a_terminal_prompt_the_model_as_transformers_renders_the_chat(chat_artifact, name, form):
    from transformers import AutoTokenizer

    path = chat_artifact(name, form)
    reference = AutoTokenizer.from_pretrained(SHIPPED / name)
    child = pexpect.spawn(sys.executable, ["-m", "edgelm", "chat", str(path), "--system", SYSTEM, "--verbose-prompt",
                                           "--max-new-tokens", str(NEW_TOKENS), "--temperature", "0", "--threads", "2"],
                          encoding="utf-8", timeout=120, dimensions=(40, 200))
    child.expect("/reset, /exit")
    messages = [{"role": "system", "content": SYSTEM}]
    seen = []
    for turn, user in enumerate(TURNS, 1):
        messages.append({"role": "user", "content": user})
        try:
            ids, reply = one_turn(child, user)
        except pexpect.EOF:
            child.close()
            pytest.fail(f"edgelm chat ended at turn {turn} (exit {child.exitstatus}, signal {child.signalstatus}): "
                        f"{ANSI.sub('', child.before)[-300:]!r}")
        expected = transformers_ids(reference, messages)
        seen.append(len(ids))
        assert ids == expected, f"turn {turn}: edgelm {len(ids)} ids, transformers {len(expected)}\n{ids}\n{expected}"
        messages.append({"role": "assistant", "content": reply.strip()})  # as edgelm keeps it
    assert seen == sorted(seen) and seen[0] < seen[-1]  # the history grew, nothing was dropped
    print(f"{name} {form}: prompt ids per turn {seen}, each equal to transformers'")  # shown with -s
    child.sendline("/exit")
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 0, child.before
