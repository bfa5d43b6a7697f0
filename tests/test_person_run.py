"""The documentation run as a person runs it: every `edgelm …` line of a fenced shell block in README.md
and docs/*.md, in the order written, twice — in a pseudo-terminal (120×40) and piped — each document in a
fresh folder holding copies of the shipped models; every Python block of the README too. Each must exit 0
(no document says a command fails) with no traceback, and a terminal gets its cursor back.

Hub ids resolve through an offline huggingface_hub cache holding tiny models in the published layouts
(published_layouts.py). A command is changed only where it cannot run quickly as written (SLOWER), and
left out only with a reason (LEFT_OUT): a command added to the docs runs here unchanged, or fails."""

import io
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path

import pexpect
import pytest

from .published_layouts import strip_position_encoding_facts, write_hub_cache, write_tokenformer_neox

REPO = Path(__file__).resolve().parents[1]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
SHIPPED_USED = ("tiny-nope", "tiny-rope")  # the models the documents name, copied: a default output lands beside them
TIMEOUT_S = 300

# doc command → (the arguments appended, why): calibrate's 200 default steps take a minute or more each run
SLOWER = {
    "edgelm calibrate examples/models/tiny-nope --text examples/data/emma.txt --target-length 1024 --out temps.json":
        (["--steps", "2"], "200 steps at length 1024 take minutes on 2 cores; 2 steps run the same code"),
    "edgelm calibrate examples/models/tiny-nope --text TRAIN.txt --target-length 2048 --out temps.json":
        (["--steps", "2"], "200 steps at length 2048 take minutes on 2 cores; 2 steps run the same code"),
    "edgelm serve build/rope-web": (["--port", "0"], "any free port: port 8000 may be taken where the suite runs"),
}
# doc command → why it is not run here
LEFT_OUT: dict[str, str] = {}
# what a document's placeholders stand for, made in its folder before its commands run
PLACEHOLDER_FILES = {"TRAIN.txt": REPO / "examples" / "data" / "emma.txt"}
CHAT_LINE = "edgelm chat "  # interactive: one question from stdin, then /exit (the chat matrix is test_chat.py's)
# runs until Ctrl+C: its page is fetched at the address it prints (the isolation header checked), then SIGINT
SERVE_LINE = "edgelm serve "
SERVED = re.compile(r" at (http://\S+/) ")


def fenced_blocks(doc: Path, language: str) -> list[str]:
    return [body for lang, body in re.findall(r"^```(\w*)\n(.*?)^```", doc.read_text(encoding="utf-8"), re.S | re.M)
            if lang == language]


def doc_commands(doc: Path) -> list[str]:
    """The `edgelm …` lines of the document's sh blocks, without their trailing comments."""
    return [shlex.join(shlex.split(line, comments=True)) for block in fenced_blocks(doc, "sh")
            for line in block.splitlines() if line.strip().startswith("edgelm ")]


def test_the_documents_have_commands_and_each_is_run_or_left_out_with_a_reason():
    commands = [c for doc in DOCS for c in doc_commands(doc)]
    assert len(commands) >= 15  # the extraction still finds the README's blocks
    stale = [c for c in [*SLOWER, *LEFT_OUT] if c not in commands]
    assert not stale, f"listed here but no longer in the docs: {stale}"
    assert all(reason for reason in LEFT_OUT.values())


@pytest.fixture(scope="module")
def hub_home(tmp_path_factory, preset_dir):
    """The hub ids the README exports, as tiny models in their published layouts, in an offline cache."""
    root = tmp_path_factory.mktemp("person-hub")
    write_hub_cache(root / "home", "AntNLP/TinyLlama-NoPE-1.1B", strip_position_encoding_facts(preset_dir("tiny-rope"), root / "nope"))
    write_hub_cache(root / "home", "Haiyang-W/TokenFormer-150M", write_tokenformer_neox(root / "tokenformer"))
    return root / "home"


def workspace(root: Path) -> Path:
    (root / "examples" / "models").mkdir(parents=True)
    for name in SHIPPED_USED:
        shutil.copytree(REPO / "examples" / "models" / name, root / "examples" / "models" / name)
    (root / "examples" / "data").symlink_to(REPO / "examples" / "data")
    for name, source in PLACEHOLDER_FILES.items():
        shutil.copy(source, root / name)
    return root


def environment(hub_home: Path) -> dict:
    return {**os.environ, "HF_HOME": str(hub_home), "HF_HUB_OFFLINE": "1", "COLUMNS": "120", "LINES": "40"}


def argv(command: str) -> list[str]:
    words = shlex.split(command) + SLOWER.get(command, ([], ""))[0]
    return [sys.executable, "-m", "edgelm", *words[1:]]


def run_in_terminal(command: str, cwd: Path, env: dict) -> tuple[int, str]:
    words = argv(command)
    child = pexpect.spawn(words[0], words[1:], cwd=str(cwd), env=env, encoding="utf-8", timeout=TIMEOUT_S, dimensions=(40, 120))
    child.logfile_read = seen = io.StringIO()  # everything the terminal showed, not only what followed the last match
    if command.startswith(CHAT_LINE):
        child.expect("/reset, /exit")
        child.expect("> ")
        child.sendline("Good morning")
        child.expect(r"\d+ tokens?, [\d.]+ tok/s")
        child.expect("> ")
        child.sendline("/exit")
    if command.startswith(SERVE_LINE):
        child.expect(SERVED)
        fetch_isolated(child.match[1])
        child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus if child.exitstatus is not None else -child.signalstatus, seen.getvalue()


def fetch_isolated(url: str) -> None:
    with urllib.request.urlopen(url, timeout=60) as response:
        assert response.status == 200 and response.headers["Cross-Origin-Opener-Policy"] == "same-origin", url


def run_server_piped(command: str, cwd: Path, env: dict) -> tuple[int, str]:
    child = subprocess.Popen(argv(command), cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = child.stdout.readline()
        served = SERVED.search(line)
        if served:
            fetch_isolated(served[1])
    finally:
        child.send_signal(signal.SIGINT)
        out, err = child.communicate(timeout=TIMEOUT_S)
    return child.returncode, line + out + err


def run_piped(command: str, cwd: Path, env: dict) -> tuple[int, str]:
    if command.startswith(SERVE_LINE):
        return run_server_piped(command, cwd, env)
    stdin = "Good morning\n/exit\n" if command.startswith(CHAT_LINE) else ""
    done = subprocess.run(argv(command), cwd=cwd, env=env, input=stdin, capture_output=True, text=True, timeout=TIMEOUT_S)
    return done.returncode, done.stdout + done.stderr


def problems(command: str, code: int, output: str, terminal: bool) -> list[str]:
    found = []
    if code != 0:
        found.append(f"exit {code}")
    if "Traceback" in output or "Error(" in output:
        found.append("a traceback")
    hidden, shown = output.rfind("\x1b[?25l"), output.rfind("\x1b[?25h")
    if terminal and hidden > shown:
        found.append("the cursor left hidden")
    if command.startswith(CHAT_LINE) and "tok/s" not in output:
        found.append("no reply")
    if command.startswith(SERVE_LINE) and not SERVED.search(output):
        found.append("no address served")
    return [f"{command!r}: {', '.join(found)}\n{output[-1500:]}"] if found else []


def web_runtime_missing(commands: list[str]) -> str | None:
    needs_web = any("--target web" in c for c in commands)
    runtime = Path(os.environ.get("EDGELM_WEB_RUNTIME") or REPO / "web" / "node_modules")
    if needs_web and not (runtime / "onnxruntime-web" / "package.json").is_file():
        return f"{runtime} is missing (`make web-runtime`, which `make test` runs)"
    return None


@pytest.mark.parametrize("terminal", [True, False], ids=["terminal", "piped"])
@pytest.mark.parametrize("doc", [d for d in DOCS if doc_commands(d)], ids=lambda d: d.name)
def test_every_documented_command_runs(doc, terminal, hub_home, tmp_path):
    commands = [c for c in doc_commands(doc) if c not in LEFT_OUT]
    missing = web_runtime_missing(commands)
    if missing:
        pytest.skip(missing)
    cwd, env = workspace(tmp_path), environment(hub_home)
    failed = []
    for command in commands:
        code, output = (run_in_terminal if terminal else run_piped)(command, cwd, env)
        failed += problems(command, code, output, terminal)
    assert not failed, "\n\n".join(failed)


def readme_python_blocks() -> list[str]:
    return fenced_blocks(REPO / "README.md", "python")


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The README's build/nope.gguf and build/nope-onnx, which its Python block names as alternatives."""
    root = workspace(tmp_path_factory.mktemp("person-python"))
    for fmt, out in (("gguf", "build/nope.gguf"), ("onnx", "build/nope-onnx")):
        done = subprocess.run([sys.executable, "-m", "edgelm", "-q", "export", "examples/models/tiny-nope", "--format", fmt,
                               "--quant", "int4", "--out", out], cwd=root, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    return root


@pytest.mark.parametrize("model", ["examples/models/tiny-nope", "build/nope.gguf", "build/nope-onnx"])
def test_the_readme_python_block_runs_on_each_artifact_it_names(exported, model):
    """The block as written, and with each artifact its comment offers in place of the model folder."""
    blocks = readme_python_blocks()
    assert blocks
    for block in blocks:
        assert 'edgelm.load("examples/models/tiny-nope")' in block  # the comment's alternatives replace this
        source = block.replace('edgelm.load("examples/models/tiny-nope")', f'edgelm.load("{model}")')
        done = subprocess.run([sys.executable, "-c", source], cwd=exported, capture_output=True, text=True, timeout=TIMEOUT_S)
        assert done.returncode == 0, done.stderr[-2000:]
        perplexity = float(re.search(r"([\d.]+)\s*$", done.stdout)[1])  # the last print; the streamed text ends without a newline
        assert 1 < perplexity < 1000  # the trained model on held-out text: tens to a few hundred
