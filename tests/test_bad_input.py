"""Each user mistake gives one clear line on stderr and exit code 2, never a traceback.

The cases are rows of bad_input_catalogue.CASES; the tests here are those a row cannot say."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from .bad_input_catalogue import CASES


@pytest.fixture
def model(preset_dir, tmp_path):
    """A private copy of tiny-rope that a test may damage."""
    folder = tmp_path / "model"
    shutil.copytree(preset_dir("tiny-rope"), folder)
    return folder


SHIPPED = Path(__file__).resolve().parent.parent / "examples" / "models"


def assert_user_error(result, *needles):
    code, out, err = result
    assert code == 2, (code, out, err)
    assert "Traceback" not in err and err.startswith("error: "), err
    assert len(err.strip().splitlines()) == 1, err
    for needle in needles:
        assert needle in err, (needle, err)


def assert_verify_failed(result, *needles):
    """A bundle that is not what its manifest says fails verify (exit 1), as a changed weight of a bare GGUF does
    (stranger 22: the same changed byte was exit 1 bare and exit 2 bundled); commands that run it refuse it (exit 2)."""
    code, out, err = result
    assert code == 1 and err.startswith("verify failed: ") and len(err.strip().splitlines()) == 1, (code, out, err)
    assert "Traceback" not in err and all(needle in err for needle in needles), err


@pytest.fixture(scope="session")
def originals(preset_dir, tmp_path_factory):
    """What the catalogue's placeholders copy from, each made once per test session when first asked for."""
    root = tmp_path_factory.mktemp("catalogue")
    made: dict[str, Path] = {}

    def make(key: str) -> Path:
        from edgelm.bundle import make_bundle
        from edgelm.export.gguf import export_gguf
        from edgelm.export.onnx import export_onnx
        from edgelm.models import open_checkpoint

        presets = {"model": "tiny-rope", "nope": "tiny-nope", "tokenformer": "tiny-tokenformer"}
        if key in presets:
            return preset_dir(presets[key])
        if key == "gguf":  # edgelm's own executor reads every metadata key of a TokenFormer GGUF
            return export_gguf(open_checkpoint(get("tokenformer")), root / "model.gguf", "f32").path
        if key == "llama_gguf":  # llama.cpp runs it
            return export_gguf(open_checkpoint(get("model")), root / "llama.gguf", "f16").path
        if key == "onnx":
            return export_onnx(open_checkpoint(get("model")), root / "onnx", "f32").path
        if key == "bundle":
            return make_bundle(get("onnx"), root / "bundle")
        if key == "zip":
            return make_bundle(get("onnx"), root / "bundle-zip", zip_it=True)
        raise KeyError(key)

    def get(key: str) -> Path:
        if key not in made:
            made[key] = make(key)
        return made[key]

    return get


class Workspace(dict):
    """A case's placeholders: each input a private copy made when the case first names it."""

    def __init__(self, root: Path, originals):
        super().__init__()
        self.root, self.originals = root, originals
        scratch = root / "scratch"
        scratch.mkdir()
        (scratch / "text.txt").write_text("It is a truth universally acknowledged, that a single man. " * 20)
        self.update(tmp=str(scratch), text=str(scratch / "text.txt"))

    def __missing__(self, key: str) -> str:
        source = self.originals(key)
        copy = self.root / "inputs" / source.name
        copy.parent.mkdir(exist_ok=True)
        (shutil.copytree if source.is_dir() else shutil.copyfile)(source, copy)
        self[key] = str(copy)
        return self[key]


@pytest.mark.parametrize("row", CASES, ids=[c.name for c in CASES])
def test_catalogue(run_cli, originals, tmp_path, row):
    workspace = Workspace(tmp_path, originals)
    argv = [arg.format_map(workspace) for arg in row.argv]  # copies the inputs the command names
    if row.damage:
        row.damage(workspace)
    scratch_before = sorted(p.name for p in Path(workspace["tmp"]).rglob("*"))
    result = run_cli(*argv)
    assert sorted(p.name for p in Path(workspace["tmp"]).rglob("*")) == scratch_before, "a failed command left files"
    assert_user_error(result, row.line)


def test_catalogue_size():
    """The hostile-inputs issue asks for at least 80 distinct cases."""
    names = [c.name for c in CASES]
    assert len(set(names)) == len(names) >= 80, len(set(names))


def test_pickle_refused_unless_allowed(run_cli, model):
    tensors = load_file(model / "model.safetensors")
    (model / "model.safetensors").unlink()
    torch.save(tensors, model / "pytorch_model.bin")
    assert_user_error(run_cli("inspect", model), "pickle checkpoint refused", "--allow-pickle")
    code, out, err = run_cli("inspect", model, "--allow-pickle", "--json")
    assert code == 0, err
    assert json.loads(out)["family"] == "llama"


class _RunsCode:
    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def test_a_pickle_with_code_is_one_line_without_torchs_advice(run_cli, model):
    """torch's refusal was several lines and advised weights_only=False; the line keeps only its reason."""
    (model / "model.safetensors").unlink()
    torch.save({"x": _RunsCode()}, model / "pytorch_model.bin")
    code, out, err = run_cli("inspect", model, "--allow-pickle")
    assert_user_error((code, out, err), "cannot load pickle checkpoint", "posix.system", "convert it to safetensors")
    assert "weights_only" not in err and "pwned" not in out


def test_genai_config_without_decoder_inputs_bundles_for_the_web(tmp_path):
    """decoder.inputs is optional (onnxruntime-genai defaults the names): the web bundle read it with [] and crashed."""
    from edgelm.export.onnx import export_onnx
    from edgelm.formats.onnx import OnnxFolder
    from edgelm.models import open_checkpoint

    folder = export_onnx(open_checkpoint(SHIPPED / "tiny-rope"), tmp_path / "onnx", "f32").path
    genai = json.loads((folder / "genai_config.json").read_text())
    del genai["model"]["decoder"]["inputs"]
    (folder / "genai_config.json").write_text(json.dumps(genai))
    (tmp_path / "web").mkdir()
    assert OnnxFolder(folder).web_bundle_into(tmp_path / "web")["model"] == "model.onnx"


def test_threads_past_the_cpu_count_are_clamped(run_cli, tmp_path):
    """--threads 10000 hung onnxruntime; it now runs with one thread per CPU, and says so."""
    import json
    import os

    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    folder = export_onnx(open_checkpoint(SHIPPED / "tiny-rope"), tmp_path / "onnx", "int4").path
    code, out, err = run_cli("generate", folder, "--prompt", "It is", "--max-new-tokens", 3, "--threads", 10000, "--json")
    assert code == 0 and len(json.loads(out)["tokens"]) == 3
    assert f"--threads 10000 is more than the {os.cpu_count()} CPUs here; using {os.cpu_count()}" in err


def test_output_under_a_file_is_one_line(run_cli, tmp_path):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for command in (["export", SHIPPED / "tiny-rope", "--out", blocker / "m.gguf"],
                    ["export", SHIPPED / "tiny-rope", "--format", "onnx", "--out", blocker / "m-onnx"],
                    ["init", "tiny-rope", blocker / "sub" / "x"]):
        assert_user_error(run_cli(*command), f"{blocker} is a file, not a folder")


def test_a_full_disk_while_writing_leaves_nothing(tmp_path, monkeypatch):
    import errno

    from edgelm import fileio
    from edgelm.errors import UserError

    def full(path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(fileio, "_fsync_tree", full)
    with pytest.raises(UserError, match="No space left on device"):
        with fileio.atomic_output_file(tmp_path / "out.bin") as tmp:
            tmp.write_bytes(b"data")
    assert list(tmp_path.iterdir()) == []


def _past_a_file_size_limit(*args):
    """edgelm ARGS under a 2 MB file size limit (ulimit -f, SIGXFSZ ignored, as a shell with `trap '' XFSZ` runs
    it): the short writes of a full disk, without a small disk."""
    import resource
    import signal
    import subprocess
    import sys

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (2 << 20, 2 << 20))

    return subprocess.run([sys.executable, "-m", "edgelm", *map(str, args)], capture_output=True, text=True, preexec_fn=limited, timeout=300)


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_output_past_a_file_size_limit_is_one_line_and_exit_1(tmp_path, fmt):
    """Stranger finding (round 8): a GGUF export onto a full disk was a traceback — gguf-py writes tensors with
    numpy's tofile, whose short write carries no errno — and the ONNX export's one line exited 2, where README
    gives output that cannot be written exit 1."""
    out = tmp_path / ("m.gguf" if fmt == "gguf" else "m-onnx")
    done = _past_a_file_size_limit("export", SHIPPED / "tiny-rope", "--format", fmt, "--quant", "f32", "--out", out, "--json")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and lines[-1].startswith(f"error: {out}: writing the output failed ("), done.stderr
    assert "Traceback" not in done.stderr and json.loads(done.stdout)["exit_code"] == 1, done.stdout
    assert list(tmp_path.iterdir()) == []


def test_a_checkpoint_past_a_file_size_limit_is_kept_whole(tmp_path):
    """Stranger finding (round 8): calibrate --write-checkpoint onto a full disk was safetensors' SafetensorError
    traceback ("I/O error: No space left on device (os error 28)"); the checkpoint stayed whole, and still does."""
    import shutil

    model = tmp_path / "m"
    shutil.copytree(SHIPPED / "tiny-nope", model)
    before = (model / "model.safetensors").read_bytes()
    done = _past_a_file_size_limit("calibrate", model, "--text", SHIPPED.parent / "data" / "emma.txt", "--target-length", 512,
                                   "--steps", 1, "--write-checkpoint", "--out", tmp_path / "t.json")
    assert done.returncode == 1 and done.stderr.strip().splitlines()[-1].startswith(
        f"error: {model / 'model.safetensors'}: writing the output failed (File too large)"), done.stderr
    assert (model / "model.safetensors").read_bytes() == before and sorted(p.name for p in model.iterdir()) == sorted(
        p.name for p in (SHIPPED / "tiny-nope").iterdir())


def test_a_bundle_zip_with_no_room_to_unpack_blames_the_room(run_cli, originals, monkeypatch):
    """Stranger finding (round 8): a 7.6 MB bundle zip with TMPDIR on a 1 MB disk read "would unpack to 0.0 GB (0.0 GB
    free where it unpacks) — refused: make the bundle again": sizes rounded to nothing, and the bundle blamed."""
    import collections

    from edgelm import bundle_files

    usage = collections.namedtuple("usage", "total used free")
    monkeypatch.setattr(bundle_files.shutil, "disk_usage", lambda path: usage(1 << 20, 0, 1 << 20))
    code, _, err = run_cli("generate", originals("zip"), "--prompt", "x")
    assert code == 1 and "MB and " in err and "has 1.0 MB free — free some space there, or point TMPDIR at a larger disk" in err, err
    assert "make the bundle again" not in err and len(err.strip().splitlines()) == 1


def test_a_zip_bundle_is_written_where_asked(run_cli, originals, tmp_path):
    """Stranger finding (round 8): `bundle --out b.ZIP` wrote b.zip, a path not asked for (and `--out app.v2 --zip`
    app.zip): OUT.zip as the help says, OUT itself when it ends in .zip in any case."""
    for out, zip_option, written in (("b.ZIP", [], "b.ZIP"), ("app.v2", ["--zip"], "app.v2.zip")):
        code, stdout, err = run_cli("bundle", originals("llama_gguf"), "--out", tmp_path / out, *zip_option)
        assert code == 0 and stdout.strip() == f"wrote {tmp_path / written}", (stdout, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app.v2.zip", "b.ZIP"]


def test_a_mobile_bundle_keeps_the_graph_facts(run_cli, originals, tmp_path):
    """Stranger finding (round 8): a mobile bundle's manifest dropped the export's kv_cache and rotary_table_positions,
    so an app could not tell an int8 cache, and edgelm's runtime, which reads the bundle's manifest, ran a context
    past the rotary tables the export refuses; a TokenFormer GGUF bundled with --allow-desktop-only said nothing of it."""
    from edgelm.artifact_files import read_json_object

    manifest = read_json_object(originals("bundle") / "edgelm.json")
    assert manifest["kv_cache"] == "float" and manifest["rotary_table_positions"] == 4096
    assert_user_error(run_cli("generate", originals("bundle"), "--prompt", "x", "-c", 5000), "past the 4,096 positions of this model's rotary tables")
    code, _, err = run_cli("bundle", originals("gguf"), "--out", tmp_path / "tf", "--allow-desktop-only")
    assert code == 0, err
    assert "ggml executor" in read_json_object(tmp_path / "tf" / "edgelm.json")["desktop_only"]


def test_no_usable_temporary_folder_is_one_line(run_cli, tmp_path, monkeypatch):
    """Stranger finding (round 9): calibrate with /tmp and /var/tmp full was a traceback: torch's optimizer asks
    tempfile for a folder, which raises FileNotFoundError("No usable temporary directory found in …"). Raised here
    where it was met (AdamW), as tempfile raises it."""
    import errno

    import torch

    def no_folder(*args, **kwargs):
        raise FileNotFoundError(errno.ENOENT, "No usable temporary directory found in ['/tmp', '/var/tmp', '/usr/tmp']")

    monkeypatch.setattr(torch.optim, "AdamW", no_folder)
    code, _, err = run_cli("calibrate", SHIPPED / "tiny-nope", "--text", SHIPPED.parent / "data" / "emma.txt", "--target-length", 512,
                           "--steps", 1, "--out", tmp_path / "t.json")
    assert code == 1 and err.strip().splitlines()[-1].startswith("error: no usable temporary folder"), err
    assert "Traceback" not in err and list(tmp_path.iterdir()) == []


def test_long_names_are_one_line(run_cli, originals, tmp_path):
    """Stranger finding (round 9): names past the file system's 255 bytes were tracebacks (`bundle --zip --out <255>`
    became 259 bytes with .zip; `inspect <300>`), and `edgelm.load` raised a bare OSError; a 255-byte --prompt-cache
    failed on its longer hidden temporary name."""
    import edgelm

    assert_user_error(run_cli("bundle", originals("llama_gguf"), "--zip", "--out", tmp_path / ("a" * 255)), "the output's name is 259 bytes")
    assert_user_error(run_cli("inspect", tmp_path / ("a" * 300)), "the model's name is 300 bytes")
    # stranger 44: export --out, a hub revision past PATH_MAX and a hub name past the hub's 96 characters were tracebacks;
    # a path met where no command checks it first (serve's bundle) is refused by the CLI's one handler
    model = originals("model")
    assert_user_error(run_cli("export", model, "--out", tmp_path / ("x" * 300 + ".gguf")), "the output's name is 305 bytes")
    assert_user_error(run_cli("export", model, "--out", tmp_path / ("d/" * 2100 + "x.gguf")), "the output's path is")
    assert_user_error(run_cli("inspect", "a/b@" + "m" * 4100), "is not a branch, tag or commit name")
    assert_user_error(run_cli("inspect", "a/" + "x" * 97), "not a valid hub id")
    assert_user_error(run_cli("serve", tmp_path / ("s" * 300)), "the name is too long for the file system")
    with pytest.raises(edgelm.UserError, match="the model's name is 300 bytes"):
        edgelm.load(str(tmp_path / ("a" * 300)))
    import subprocess
    import sys

    cache = tmp_path / ("c" * 255)
    done = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(originals("llama_gguf")), "-n", "1", "--prompt-cache", str(cache)],
                          input="x\n", capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and cache.is_file(), done.stderr


def test_non_utf8_paths_are_one_line(run_cli, tmp_path, originals):
    """Stranger finding (round 8): a model, GGUF or ONNX folder whose path held a byte that is not UTF-8 (Linux allows
    it) was a UnicodeEncodeError or pybind11 traceback, or "the file is damaged"; an output path likewise. llama.cpp,
    onnxruntime and safetensors take UTF-8 paths: every such input and output is refused in one line."""
    import os
    import shutil

    bad = os.fsdecode(b"bad\xff")
    model, gguf, onnx = tmp_path / bad, tmp_path / f"{bad}.gguf", tmp_path / f"{bad}-onnx"
    shutil.copytree(SHIPPED / "tiny-rope", model)
    shutil.copy(originals("llama_gguf"), gguf)
    shutil.copytree(originals("onnx"), onnx)
    before = sorted(p.name for p in tmp_path.iterdir())
    for command in (["generate", gguf, "--prompt", "x"], ["generate", onnx, "--prompt", "x"], ["verify", gguf],
                    ["export", model, "--out", tmp_path / "ok.gguf"], ["inspect", model]):
        assert_user_error(run_cli(*command), "model's path ", "bad\\xff", "is not UTF-8 text")
    for command in (["export", SHIPPED / "tiny-rope", "--out", tmp_path / f"{bad}-out.gguf"],
                    ["export", SHIPPED / "tiny-rope", "--format", "onnx", "--out", tmp_path / bad / "sub" / "out"],
                    ["bundle", originals("llama_gguf"), "--out", tmp_path / f"{bad}-bundle"]):
        assert_user_error(run_cli(*command), "output's path ", "bad\\xff", "is not UTF-8 text")
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # a path a mistake names is shown with the same escapes (round 9: `bad\udcff` in one line, `b'bad\xff'` in another)
    bad_json = tmp_path / f"{bad}.json"
    bad_json.write_text('{"layers": [[1.0]]}')
    assert_user_error(run_cli("inspect", SHIPPED / "tiny-rope", "--head-temperatures", bad_json), "bad\\xff.json")
    bad_json.unlink()
    # round 9: a text whose name is not UTF-8 is read (Python opens any name): its name, escaped, goes into the imatrix;
    # an ONNX folder holding a file with such a name is verified (its settings hash takes the name's bytes)
    text = tmp_path / f"{bad}.txt"
    text.write_text((SHIPPED.parent / "data" / "emma.txt").read_text()[:20000])
    code, _, err = run_cli("export", SHIPPED / "tiny-rope", "--quant", "int4", "--calibration", text, "--no-certificate", "--out", tmp_path / "c.gguf")
    assert code == 0, err
    odd = tmp_path / "odd-onnx"
    shutil.copytree(originals("onnx"), odd)
    (odd / bad).write_text("x")
    code, out, err = run_cli("verify", odd)
    assert code in (0, 1) and "Traceback" not in err and "loads and runs" in out, (code, out, err)


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
def test_the_longest_output_names_the_file_system_takes_are_written(run_cli, tmp_path, fmt):
    """Stranger finding (round 8): a 220-byte GGUF name was a mkstemp traceback and 230–245 bytes "cannot write here
    (File name too long)", though the file system takes 255: the hidden working files beside the output repeated its
    whole name. They keep at most fileio.HIDDEN_STEM_BYTES of it."""
    out = tmp_path / ("N" * (250 - len(fmt)) + "." + fmt)
    code, _, err = run_cli("export", SHIPPED / "tiny-rope", "--format", fmt, "--quant", "int4", "--out", out)
    assert code == 0, err
    assert [p.name for p in tmp_path.iterdir()] == [out.name]


def test_force_replaces_an_output_folder_not_any_folder(run_cli, tmp_path):
    """Stranger finding (round 8): `export --out DIR --force` (and bundle, init) replaced any folder, a git repository
    and notes included. --force now replaces an empty folder or one holding what edgelm's folder outputs hold."""
    victim = tmp_path / "victim"
    (victim / "project" / ".git").mkdir(parents=True)
    (victim / "project" / "notes.txt").write_text("mine")
    for command in (["export", SHIPPED / "tiny-rope", "--format", "onnx", "--out", victim, "--force"],
                    ["init", "tiny-rope", victim, "--force"]):
        assert_user_error(run_cli(*command), "holds what no edgelm output holds (project/)", "remove it yourself or choose another path")
    assert (victim / "project" / "notes.txt").read_text() == "mine"
    # round 9: a folder passed as a model's by holding a config.json, and a model folder's clone with its .git and notes
    app, clone = tmp_path / "app", tmp_path / "clone"
    app.mkdir()
    (app / "config.json").write_text('{"port": 80}')
    (app / "main.py").write_text("print(1)")
    shutil.copytree(SHIPPED / "tiny-rope", clone)
    (clone / ".git").mkdir()
    (clone / "my_notes.txt").write_text("mine")
    assert_user_error(run_cli("init", "tiny-rope", app, "--force"), "(main.py)")
    assert_user_error(run_cli("init", "tiny-rope", clone, "--force"), "(.git/, my_notes.txt)")
    assert (app / "main.py").exists() and (clone / "my_notes.txt").exists()
    out = tmp_path / "out"
    for _ in range(2):  # an ONNX export replaces itself; an empty folder is replaced
        code, _, err = run_cli("export", SHIPPED / "tiny-rope", "--format", "onnx", "--quant", "int4", "--out", out, "--force")
        assert code == 0, err
    (tmp_path / "empty").mkdir()
    assert run_cli("init", "tiny-rope", tmp_path / "empty", "--force")[0] == 0


def test_two_writes_to_one_new_output_do_not_both_win(tmp_path):
    """Stranger finding (round 8): two exports to one new path without --force both passed the check that it did not
    exist, both said "wrote", and the second replaced the first. The output now lands only where nothing came in
    the meantime (a hard link for a file, rename for a folder); the later one is refused in one line."""
    from edgelm.errors import UserError
    from edgelm.fileio import atomic_output_dir, atomic_output_file

    for atomic, make in ((atomic_output_file, lambda p: p.write_text("first")), (atomic_output_dir, lambda p: (p.mkdir(), (p / "f").write_text("first")))):
        target = tmp_path / atomic.__name__
        with pytest.raises(UserError, match="output already exists: it was written while this command worked"):
            with atomic(target) as tmp:
                (tmp / "f" if tmp.is_dir() else tmp).write_text("second")
                make(target)  # the other run finishes first
        assert (target / "f" if target.is_dir() else target).read_text() == "first"
        assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


class _Thing:
    pass


def test_a_stop_python_drops_still_keeps_the_output_from_being_written(tmp_path, capfd):
    """Ctrl-C while a weakref callback runs: Python drops the KeyboardInterrupt raised there and the code goes on
    (a stranger's late Ctrl-C in an export: output written, exit 0, "Exception ignored in …" on stderr). The atomic
    output raises it again instead of renaming into place, and nothing is printed for the dropped one."""
    import os
    import signal
    import sys
    import time
    import weakref

    from edgelm import cli
    from edgelm.fileio import atomic_output_file

    target = tmp_path / "out.bin"
    previous = signal.signal(signal.SIGINT, cli._interrupt)
    hook, sys.unraisablehook = sys.unraisablehook, cli._unraisable(sys.unraisablehook)
    went_on = False
    try:
        with pytest.raises(KeyboardInterrupt):
            with atomic_output_file(target) as tmp:
                tmp.write_bytes(b"half")
                thing = _Thing()
                ref = weakref.ref(thing, lambda _: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.05)))
                del thing  # the callback runs, Ctrl-C arrives inside it and is dropped by the interpreter
                went_on = True
    finally:
        signal.signal(signal.SIGINT, previous)
        sys.unraisablehook = hook
    assert went_on and ref() is None  # the block did go on: the stop was dropped, as the stranger saw
    assert not target.exists() and not list(tmp_path.iterdir())
    assert "Exception ignored" not in capfd.readouterr().err


def test_a_killed_run_s_leftovers_go_with_the_next_write_to_the_same_target(tmp_path):
    """Stranger finding (round 7): a SIGKILLed export left `.k.gguf.partial-*` (3.7 MB), `.X.gguf.f32-*.gguf` (21 MB)
    or `.X.partial-*/` beside the output, hidden, and a later export to the same --out left them there. The next write
    to that target removes them, unless a running write holds its lock (then they are that run's); others' files stay."""
    import fcntl
    import os

    from edgelm.fileio import atomic_output_file

    target = tmp_path / "m.gguf"
    leftovers = [tmp_path / ".m.gguf.partial-k1", tmp_path / ".m.gguf.f32-k2.gguf", tmp_path / "..m.gguf.partial-k1.certified-k3",
                 tmp_path / ".m.gguf.partial-k4.lock"]
    for path in leftovers:
        path.write_bytes(b"x" * 100)
    (tmp_path / ".m.gguf.partial-k5").mkdir()
    others = [tmp_path / ".other.gguf.partial-1", tmp_path / "m.gguf.partial-visible"]
    for path in others:
        path.write_bytes(b"mine")
    running = tmp_path / ".m.gguf.partial-run.lock"
    running.write_bytes(b"")
    held = os.open(running, os.O_RDONLY)
    fcntl.flock(held, fcntl.LOCK_EX)  # another export to this target, still running
    try:
        with atomic_output_file(target) as tmp:
            tmp.write_bytes(b"one")
        assert all(p.exists() for p in leftovers)  # the running one's, perhaps: left alone
    finally:
        os.close(held)
    running.unlink()
    with atomic_output_file(target, force=True) as tmp:
        tmp.write_bytes(b"two")
    assert target.read_bytes() == b"two"
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in [target, *others])


def test_error_lines_show_paths_not_their_repr():
    """An OSError made from a Path prints it as PosixPath('…'); the one line shows the path itself."""
    from edgelm.errors import UserError

    error = OSError(2, "No such file or directory", Path("/gone/it's here"))
    assert "PosixPath" in str(error)
    line = UserError(f"cannot read it ({error})", Path("/model"), "fix it").line()
    assert line == "/model: cannot read it ([Errno 2] No such file or directory: \"/gone/it's here\") — fix it"
