"""Files from the internet that were made to hurt: nothing is written outside the output, and each is
refused with one line and exit 2."""

import pytest
from gguf import GGUFValueType

from edgelm.export.gguf import export_gguf
from edgelm.models import open_checkpoint

from .gguf_edit import rewrite_gguf
from .test_bad_input import assert_user_error


@pytest.fixture(scope="module")
def gguf_file(tmp_path_factory):
    from edgelm.models.presets import write_preset

    root = tmp_path_factory.mktemp("hostile")
    folder = write_preset("tiny-tokenformer", root / "tiny-tokenformer", seed=1)  # runs on edgelm's own executor
    return export_gguf(open_checkpoint(folder), root / "model.gguf", "f32").path


ESCAPES = ["../escaped.txt", "{victim}", "sub/tokenizer.json", "tokenizer.json/../../escaped.txt"]
# every name against generate; the commands that open a GGUF the same way against one of them
CASES = [(name, "generate") for name in ESCAPES] + [(ESCAPES[0], "perplexity"), (ESCAPES[1], "bench")]


@pytest.mark.parametrize("name,command", CASES)
def test_gguf_tokenizer_file_names_cannot_escape(run_cli, gguf_file, tmp_path, name, command):
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    name = name.format(victim=victim)
    evil = rewrite_gguf(gguf_file, tmp_path / "evil.gguf",
                        add={f"edgelm.tokenizer_file.{name}": (list(b"overwritten"), GGUFValueType.ARRAY, GGUFValueType.UINT8)})
    text = tmp_path / "text.txt"
    text.write_text("It is a truth universally acknowledged. " * 4)
    args = {"generate": ["--prompt", "x"], "perplexity": ["--text", text], "bench": ["--new-tokens", 1, "--prompt-tokens", 2]}[command]
    assert_user_error(run_cli(command, evil, *args), "names a tokenizer file edgelm does not know", "evil.gguf")
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["evil.gguf", "text.txt", "victim.txt"]
    assert not (tmp_path.parent / "escaped.txt").exists()


def test_gguf_tokenizer_file_of_wrong_type(run_cli, gguf_file, tmp_path):
    evil = rewrite_gguf(gguf_file, tmp_path / "evil.gguf", drop_keys={"edgelm.tokenizer_file.tokenizer.json"},
                        add={"edgelm.tokenizer_file.tokenizer.json": ("not bytes", GGUFValueType.STRING)})
    assert_user_error(run_cli("generate", evil, "--prompt", "x"), "is not an array of bytes")


def test_rewritten_gguf_still_runs(run_cli, gguf_file, tmp_path):
    """The editing helper itself: a copy with nothing changed generates as the original does."""
    copy = rewrite_gguf(gguf_file, tmp_path / "copy.gguf")
    original = run_cli("generate", gguf_file, "--prompt", "It is", "--max-new-tokens", 5, "--json")
    copied = run_cli("generate", copy, "--prompt", "It is", "--max-new-tokens", 5, "--json")
    assert original[0] == copied[0] == 0, (original, copied)
    assert original[1] == copied[1]
