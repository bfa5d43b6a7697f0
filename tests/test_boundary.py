"""The untrusted boundary (edgelm/artifact_files.py), attacked as a layer: every way into a reader — a
link, an index naming a shard, a hub revision, a zip entry that will not unpack, a FIFO, a device, a
nested JSON — and every output path a user can mistype. Issue 25, findings 1, 2, 3, 5, 6, 7 and 8.

The property tests at the end build artifacts whose entries hypothesis draws (links in and out, hard
links, FIFOs, folders, nested JSON, indexes naming odd shards) and run every command that reads them in
process, asserting: nothing outside the artifact is opened (an audit hook on "open" for Python's reads,
an atime canary for the C libraries'), exit 0 or exit 2 with one line, no traceback, bounded time."""

from __future__ import annotations

import itertools
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from contextlib import contextmanager
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .test_bad_input import assert_user_error, assert_verify_failed

EDGELM = Path(__file__).resolve().parent.parent / "edgelm"


# --- one way to open: a reader that opens a path itself fails here ------------------------------------
READ_CALLS = re.compile(r"(?<![\w.])open\(|\.read_text\(|\.read_bytes\(|json\.loads?\(|safe_open\(|\.from_file\(|onnx\.load\(|"
                        r"GGUFReader\(|shutil\.copy\w*\(|torch\.load\(|InferenceSession\(|gguf_init_from_file\(|Path\([^)]*\)\.open\(")
# module → calls allowed there, and why. Everything else reads through artifact_files.
ALLOWED = {
    "artifact_files.py": "the boundary itself",
    "fileio.py": "fsyncs outputs it wrote",
    "runtime/backend.py": "/proc/meminfo and /proc/self/status (proc_bytes)",
    "quantize/llama_cpp.py": "reads back the GGUF it wrote; json of its own subprocess's line",
    "quantize/onnx.py": "loads back the graph it wrote",
    "quantize/imatrix.py": "reads back the imatrix.gguf it wrote",
    "models/presets.py": "copies edgelm's own assets",
    "models/position_probe.py": "edgelm's own probe text",
}
# calls on paths artifact_files already checked (member/find_member/user_file): the C libraries open them by name
CHECKED_PATH_CALLS = {
    ("models/checkpoint.py", "safe_open("): "shards from member()",
    ("models/checkpoint.py", "torch.load("): "the pickle from find_member()",
    ("tokenizer.py", ".from_file("): "tokenizer.json from find_member()",
    ("runtime/onnx_backend.py", "InferenceSession("): "model file from member()",
    ("runtime/onnx_backend.py", "onnx.load("): "model.onnx from member()",
    ("formats/onnx.py", "onnx.load("): "model_file from member()",
    ("formats/onnx.py", "InferenceSession("): "an ORT-format model_file from member(), described by onnxruntime",
    ("formats/onnx.py", "open("): "external weights from member(), hashed for the certificate's weights_sha256",
    ("formats/onnx.py", "shutil.copy"): "files from member()/find_member()",
    ("formats/gguf.py", "shutil.copy"): "the user's GGUF file itself",
    ("formats/gguf_file.py", "GGUFReader("): "the user's GGUF file itself",
    ("formats/gguf_file.py", "gguf_init_from_file("): "the user's GGUF file itself",
    ("export/onnx.py", "shutil.copy"): "tokenizer files from find_member()",
    ("export/onnx.py", ".read_text("): "edgelm's own probe text",
    ("bundle_files.py", "open("): "writes zip entries into its own fresh folder",
    ("web_serve.py", "open("): "a file the bundle's checked manifest lists, in the bundle's own folder, no link (send_head)",
    ("runtime/prompt_cache.py", "open("): "the --prompt-cache file after check_path (a regular file, no link; its header "
                                          "bounded), and the artifact's own files, sampled for its fingerprint",
    ("bundle.py", "shutil.copy"): "edgelm's web page",
    ("bundle.py", ".read_bytes("): "the --web-runtime the user named: each file a regular one, bounded, its sha256 the pinned package's",
    ("console.py", "open("): "os.devnull, for a standard stream the caller closed",
    ("benchmark.py", ".read_text("): "the CPU's cache sizes from Linux's sysfs, no user's path",
    ("certificate.py", "GGUFReader("): "the GGUF the exporter just wrote, to add the certificate's keys",
    ("certificate.py", "onnx.load("): "the graph the exporter just wrote, to add the certificate to its metadata_props",
}


STRINGS = re.compile(r"\"(?:[^\"\\\\]|\\\\.)*\"|'(?:[^'\\\\]|\\\\.)*'")


def test_no_reader_opens_a_path_itself():
    offenders, used = [], set()
    for path in sorted(EDGELM.rglob("*.py")):
        name = path.relative_to(EDGELM).as_posix()
        if name in ALLOWED:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            code = STRINGS.sub('""', line).split("#")[0]
            for found in READ_CALLS.finditer(code):
                call = found.group(0)
                allowed = [(m, c) for m, c in CHECKED_PATH_CALLS if name == m and call.startswith(c)]
                used.update(allowed)
                if not allowed and not code.lstrip().startswith("def "):
                    offenders.append(f"{name}:{number}: {line.strip()}")
    assert not offenders, "read through edgelm/artifact_files.py:\n" + "\n".join(offenders)
    assert used == set(CHECKED_PATH_CALLS), f"allowed but no longer there: {set(CHECKED_PATH_CALLS) - used}"


# --- fixtures ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def made(preset_dir, tmp_path_factory):
    from edgelm.bundle import make_bundle
    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    root = tmp_path_factory.mktemp("boundary")
    model = preset_dir("tiny-rope")
    gguf = export_gguf(open_checkpoint(model), root / "m.gguf", "f16").path
    onnx = export_onnx(open_checkpoint(model), root / "onnx", "f32").path
    return {"model": model, "gguf": gguf, "onnx": onnx, "bundle": make_bundle(gguf, root / "bundle"),
            "zip": make_bundle(gguf, root / "bundle-zip", zip_it=True)}


@pytest.fixture
def outside(tmp_path):
    """A folder outside every artifact, with a canary whose every read shows in its atime."""
    folder = tmp_path / "outside"
    folder.mkdir()
    canary = folder / "canary.txt"
    canary.write_text("CANARY secret\n")
    os.utime(canary, (0, canary.stat().st_mtime))  # relatime updates an atime older than the mtime on any read
    return canary


def canary_untouched(canary: Path) -> bool:
    return canary.stat().st_atime == 0


def copy_of(source: Path, target: Path) -> Path:
    (shutil.copytree if source.is_dir() else shutil.copyfile)(source, target)
    return target


# --- finding 1: links out of the folder ---------------------------------------------------------------
@pytest.mark.parametrize("name", ["special_tokens_map.json", "tokenizer.json", "chat_template.jinja", "model.onnx", "genai_config.json"])
def test_onnx_folder_links_out_are_refused(run_cli, made, tmp_path, outside, name):
    folder = copy_of(made["onnx"], tmp_path / "onnx")
    if (folder / name).exists():
        (folder / name).unlink()
    (folder / name).symlink_to(outside)
    for command in (["bundle", folder, "--out", tmp_path / "b", "--target", "web"], ["generate", folder, "--prompt", "x"], ["inspect", folder]):
        code, out, err = run_cli(*command)
        reads = command[0] == "bundle" or name in ("model.onnx", "genai_config.json") or command[0] == "generate" and name != "special_tokens_map.json"
        if not reads:
            assert code == 0, err  # a file this command does not read
        else:
            assert_user_error((code, out, err), f"{name} is a link to {outside}, outside the artifact's folder")
    assert canary_untouched(outside) and not (tmp_path / "b").exists()


def test_links_inside_the_folder_are_followed(run_cli, made, tmp_path):
    folder = copy_of(made["model"], tmp_path / "model")
    (folder / "real").mkdir()
    (folder / "config.json").rename(folder / "real" / "config.json")
    (folder / "config.json").symlink_to("real/config.json")
    code, out, err = run_cli("inspect", folder, "--json")
    assert code == 0 and json.loads(out)["family"] == "llama", err


def test_model_folder_file_linked_out_is_refused(run_cli, made, tmp_path, outside):
    for name in ("config.json", "model.safetensors", "tokenizer.model", "tokenizer_config.json"):
        folder = copy_of(made["model"], tmp_path / name)
        (folder / name).unlink()
        (folder / name).symlink_to(outside)
        assert_user_error(run_cli("generate", folder, "--prompt", "x"), "outside the artifact's folder", name)
    assert canary_untouched(outside)


# --- finding 2: a safetensors index ---------------------------------------------------------------------
def _indexed(made, tmp_path, weight_map) -> Path:
    folder = copy_of(made["model"], tmp_path / "indexed")
    (folder / "model.safetensors").rename(folder / "shard-1.safetensors")
    (folder / "model.safetensors.index.json").write_bytes(weight_map if isinstance(weight_map, bytes) else json.dumps(weight_map).encode())
    return folder


@pytest.mark.parametrize("shard", ["../outside/canary.safetensors", "{outside}", "sub/shard-1.safetensors", "", ".."])
def test_index_shards_stay_in_the_folder(run_cli, made, tmp_path, outside, shard):
    shutil.copyfile(made["model"] / "model.safetensors", outside.parent / "canary.safetensors")
    folder = _indexed(made, tmp_path, {"weight_map": {"model.embed_tokens.weight": shard.format(outside=outside.parent / "canary.safetensors")}})
    for command in (["inspect", folder], ["export", folder, "--out", tmp_path / "m.gguf"]):
        assert_user_error(run_cli(*command), "is not a plain file name inside the folder")
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("index", [b'{"weight_map": {"a": "\xff"}}', {"weight_map": ["a"]}, {"weight_map": {"a": 1}},
                                   {"weight_map": {"a": "shard-1.safetensors", "b": 2}}, {"weight_map": {"a": ["x"]}}, [1], {}])
def test_malformed_index_is_one_line(run_cli, made, tmp_path, index):
    folder = _indexed(made, tmp_path, index)
    code, out, err = run_cli("inspect", folder)
    assert_user_error((code, out, err))
    assert "index" in err or "UTF-8" in err


def test_an_index_of_real_shards_loads(run_cli, made, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_of(made["model"], tmp_path / "sharded")
    tensors = load_file(folder / "model.safetensors")
    names = sorted(tensors)
    (folder / "model.safetensors").unlink()
    halves = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2:]}
    for shard, part in halves.items():
        save_file({n: tensors[n] for n in part}, str(folder / shard))
    weight_map = {n: s for s, part in halves.items() for n in part}
    index = folder / "model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": weight_map}))
    code, out, err = run_cli("generate", folder, "--prompt", "It is", "--max-new-tokens", 2)
    assert code == 0, err
    # the index is the contract (stranger 44: a second, different embedding in the other shard was loaded silently)
    moved = names[0]
    index.write_text(json.dumps({"weight_map": weight_map | {moved: "b.safetensors"}}))
    assert_user_error(run_cli("inspect", folder), f"shard a.safetensors holds tensor {moved}, which the index puts in b.safetensors")
    index.write_text(json.dumps({"weight_map": {n: s for n, s in weight_map.items() if n != moved}}))
    assert_user_error(run_cli("export", folder, "--out", tmp_path / "x.gguf"), f"holds tensor {moved}, which the index does not list")
    index.write_text(json.dumps({"weight_map": weight_map | {"lm_head.extra": "b.safetensors"}}))
    assert_user_error(run_cli("generate", folder, "--prompt", "x"), "1 tensors the index lists are in no shard: lm_head.extra")
    index.write_text(json.dumps({"weight_map": weight_map}))
    save_file({n: tensors[n] for n in halves["b.safetensors"]} | {moved: tensors[moved] * 0 + 0.01}, str(folder / "b.safetensors"))
    assert_user_error(run_cli("generate", folder, "--prompt", "x"), f"tensor {moved} is in two shards, a.safetensors and b.safetensors")
    assert not (tmp_path / "x.gguf").exists()


# --- finding 3: hub revisions ---------------------------------------------------------------------------
def edgelm_offline(hf_home: Path, *args) -> tuple[int, str, str]:
    env = {**os.environ, "HF_HOME": str(hf_home), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-m", "edgelm", *map(str, args)], capture_output=True, text=True, env=env, timeout=300)
    return done.returncode, done.stdout, done.stderr


@pytest.fixture(scope="module")
def hub_home(made, tmp_path_factory):
    from .published_layouts import write_hub_cache

    home = tmp_path_factory.mktemp("hf")
    write_hub_cache(home, "edgelm-test/tiny", made["model"])
    return home


def test_hub_revisions_cannot_walk_out(hub_home, tmp_path):
    victim = tmp_path / "victim"
    copy_of(hub_home / "hub" / "models--edgelm-test--tiny" / "snapshots" / "0123456789abcdef0123456789abcdef01234567", victim)
    code, out, err = edgelm_offline(hub_home, "inspect", "edgelm-test/tiny@main", "--json")
    assert code == 0 and json.loads(out)["family"] == "llama", err  # the hub cache's links into blobs/ are followed
    for revision in ("../../../x/ref", f"/{victim}", "main/../../x", ".hidden", "x.lock"):
        code, out, err = edgelm_offline(hub_home, "inspect", f"edgelm-test/tiny@{revision}")
        assert code == 2 and err.count("\n") == 1 and "is not a branch, tag or commit name" in err, err
    refs = hub_home / "hub" / "models--edgelm-test--tiny" / "refs"
    (refs / "evil").write_text("../../../../" + str(victim.relative_to("/")))
    (refs / "up").write_text("../../")
    for revision in ("evil", "up"):
        code, out, err = edgelm_offline(hub_home, "inspect", f"edgelm-test/tiny@{revision}")
        assert code == 2 and err.count("\n") == 1 and f"refs/{revision}" in err, err


def test_a_missing_path_is_not_called_a_hub_model(hub_home, tmp_path, monkeypatch):
    """`build/model.gguf` reads as ORG/NAME; missing, it was reported as a hub model not in the cache."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "build").mkdir()
    for missing in ("build/model.gguf", "elsewhere/model.gguf"):
        code, out, err = edgelm_offline(hub_home, "generate", missing, "--prompt", "Hi")
        assert code == 2 and err.count("\n") == 1 and "no such file or folder" in err, err
    code, out, err = edgelm_offline(hub_home, "generate", "someorg/somemodel", "--prompt", "Hi")
    assert code == 2 and "not in the Hugging Face cache" in err, err


def test_hub_snapshot_link_out_of_blobs_is_refused(hub_home, tmp_path, outside):
    snapshot = next((hub_home / "hub").glob("models--*/snapshots/*"))
    config = snapshot / "config.json"
    target = os.readlink(config)
    config.unlink()
    config.symlink_to(outside)
    try:
        code, out, err = edgelm_offline(hub_home, "inspect", snapshot)
        assert code == 2 and "outside the artifact's folder" in err and err.count("\n") == 1, err
    finally:
        config.unlink()
        config.symlink_to(target)
    assert canary_untouched(outside)


# --- finding 5: verify proves what it prints --------------------------------------------------------------
def _manifest(folder: Path, change) -> None:
    manifest = json.loads((folder / "edgelm.json").read_text())
    change(manifest)
    (folder / "edgelm.json").write_text(json.dumps(manifest))


def _list(folder: Path, manifest: dict, name: str) -> None:
    from edgelm.artifact_files import sha256

    manifest["files"][name] = {"sha256": sha256(folder / name), "bytes": (folder / name).stat().st_size}


def test_verify_prints_what_the_model_says_and_refuses_a_manifest_saying_otherwise(run_cli, made, tmp_path):
    """verify prints the model file's own facts; a manifest stating others (round 12: they were printed by inspect as
    verified, and chat sampled with a forged temperature) is refused."""
    code, out, err = run_cli("verify", copy_of(made["bundle"], tmp_path / "honest"))
    assert code == 0 and "loads and runs (llama, gguf, F16)" in out, (out, err)
    folder = copy_of(made["bundle"], tmp_path / "b")
    _manifest(folder, lambda m: m.update(family="tokenformer", quantization="Q2_K", format="onnx"))
    assert_verify_failed(run_cli("verify", folder), 'the manifest states format "onnx"; the bundled', "make the bundle again")


@pytest.mark.parametrize("payload", [b"hello\n", "zip"])
def test_verify_loads_the_model(run_cli, made, tmp_path, payload):
    folder = copy_of(made["bundle"], tmp_path / "b")
    name = "notes.txt" if payload != "zip" else "inner.zip"
    if payload == "zip":
        shutil.copyfile(made["zip"], folder / name)
    else:
        (folder / name).write_bytes(payload)

    def change(manifest):
        old = manifest["model"]
        (folder / old).unlink()
        del manifest["files"][old]
        _list(folder, manifest, name)
        manifest.update(model=name, family="llama", format="gguf", quantization="Q4_K_M")

    _manifest(folder, change)
    assert_user_error(run_cli("verify", folder), "is of no format edgelm reads")


# a certificate a stranger wrote: every field `verify` prints or computes with is checked before the probe runs
def _ragged(c):
    c["probe"]["top_k_ids"][0].pop()
    c["probe"]["top_k_logits"][0].pop()


HOSTILE_CERTIFICATES = {
    "mean_kld must be a finite number from 0, not nan": lambda c: c.update(mean_kld=float("nan")),  # printed nan, --json wrote NaN
    "perplexity_change must be a finite number from -1, not inf": lambda c: c.update(perplexity_change=float("inf")),
    "mean_kld must be a finite number from 0, not -5": lambda c: c.update(mean_kld=-5),
    "top1_agreement must be a finite number from 0 to 1, not 7": lambda c: c.update(top1_agreement=7),
    "positions is not a count": lambda c: c.update(positions="9\nverify: ok"),  # printed as two lines
    "positions is not a count ": lambda c: c.update(positions=10**30),
    "text is not one line of printable text": lambda c: c.update(text="x\nok: everything matches"),
    "engine_version is not one line of printable text": lambda c: c.update(engine_version="\x1b[2J\x1b[32mok"),  # a terminal escape
    "edgelm_version is not one line of printable text": lambda c: c.update(edgelm_version="x" * 500_000),
    "reference_sha256 is not a sha256": lambda c: c.update(reference_sha256="made by the vendor"),
    "top_k_ids rows differ in length": _ragged,  # was a numpy ValueError traceback
    "certificate_version is not an integer": lambda c: c.update(certificate_version=True),
    "the probe has no prompt of at most 4096 characters": lambda c: c["probe"].update(prompt="hello " * 100_000),
    "past the vocabulary's": lambda c: c["probe"].update(prompt_ids=[2**70]),
}


@pytest.mark.parametrize("why", HOSTILE_CERTIFICATES)
def test_hostile_certificates_are_one_line(run_cli, made, tmp_path, why):
    folder = copy_of(made["onnx"], tmp_path / "onnx")
    _manifest(folder, lambda m: HOSTILE_CERTIFICATES[why](m["parity_certificate"]))
    for extra in ([], ["--json"]):
        assert_user_error(run_cli("verify", folder, *extra), "parity certificate", why.strip())


@pytest.mark.parametrize("key,value,why", [("mean_kld", (float("nan"), "FLOAT64"), "not nan"),
                                           ("text", ("x\nok", "STRING"), "text is not one line"),
                                           ("positions", (1.5, "FLOAT32"), "positions is not a count")])
def test_hostile_gguf_certificate_keys(run_cli, made, tmp_path, key, value, why):
    from gguf import GGUFValueType

    from .gguf_edit import rewrite_gguf
    from edgelm.constants import GGUF_PARITY

    evil = rewrite_gguf(made["gguf"], tmp_path / "evil.gguf", drop_keys={GGUF_PARITY + key},
                        add={GGUF_PARITY + key: (value[0], getattr(GGUFValueType, value[1]))})
    assert_user_error(run_cli("verify", evil), why)


# --- finding 6: zips ------------------------------------------------------------------------------------------
def _rezip(source: Path, target: Path, edit) -> Path:
    """A copy of the zip whose raw bytes `edit` changes (entries stored, so offsets are plain)."""
    with zipfile.ZipFile(source) as original, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as copy:
        for info in original.infolist():
            copy.writestr(info.filename, original.read(info), compress_type=zipfile.ZIP_DEFLATED)
    data = bytearray(target.read_bytes())
    edit(data)
    target.write_bytes(bytes(data))
    return target


def _entry_offsets(path: Path, name: str) -> tuple[int, int]:
    """(local header offset, central directory entry offset) of `name`."""
    data = path.read_bytes()
    with zipfile.ZipFile(path) as archive:
        local, central = archive.getinfo(name).header_offset, archive.start_dir
    while data[central + 46:central + 46 + len(name)] != name.encode():
        central = data.index(b"PK\x01\x02", central + 4)
    return local, central


def _model_entry(made) -> str:
    return json.loads((made["bundle"] / "edgelm.json").read_text())["model"]


@pytest.mark.parametrize("damage", ["crc", "encrypted", "method 99", "deflate"])
def test_zip_read_errors_are_one_line(run_cli, made, tmp_path, monkeypatch, damage):
    name = _model_entry(made)
    probe = _rezip(made["zip"], tmp_path / "probe.zip", lambda data: None)
    local, central = _entry_offsets(probe, name)

    def edit(data: bytearray):
        if damage == "crc":
            for at in (local + 14, central + 16):
                data[at] ^= 0xFF
        elif damage == "encrypted":
            for at in (local + 6, central + 8):
                data[at] |= 0x01
        elif damage == "method 99":
            for at in (local + 8, central + 10):
                data[at:at + 2] = (99).to_bytes(2, "little")
        else:
            start = local + 30 + int.from_bytes(data[local + 26:local + 28], "little") + int.from_bytes(data[local + 28:local + 30], "little")
            data[start:start + 64] = b"\xff" * 64

    bad = _rezip(made["zip"], tmp_path / "bad.zip", edit)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    for command in (["verify", bad], ["generate", bad, "--prompt", "x"]):
        assert_user_error(run_cli(*command), "bad.zip")
    assert list(scratch.iterdir()) == []


def test_zip_bomb_is_refused_before_unpacking(run_cli, made, tmp_path, monkeypatch):
    """The manifest (the attacker's) declares 64 MB of zeros, packed to ~64 kB: refused from the directory."""
    import hashlib

    folder = copy_of(made["bundle"], tmp_path / "b")
    zeros = b"\0" * (64 << 20)
    _manifest(folder, lambda m: m["files"].update({"zeros.bin": {"sha256": hashlib.sha256(b"").hexdigest(), "bytes": len(zeros)}}))
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
        for path in folder.iterdir():
            out.write(path, path.name)
        out.writestr("zeros.bin", zeros)
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", None)
    assert_user_error(run_cli("verify", archive), "zeros.bin would unpack", "times its packed size")
    assert list(scratch.iterdir()) == []


# --- finding 7: unbounded reads -------------------------------------------------------------------------------
@contextmanager
def deadline(seconds: int):
    def stop(*_):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def _special(kind: str, path: Path) -> Path:
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "folder":
        path.mkdir()
    elif kind == "sparse":
        with open(path, "wb") as handle:
            handle.truncate(20 << 30)  # 20 GB, no blocks
    elif kind == "zero":
        path.symlink_to("/dev/zero")
    return path


@pytest.mark.parametrize("kind", ["zero", "fifo", "folder", "sparse"])
def test_option_files_are_bounded(run_cli, made, tmp_path, kind):
    special = _special(kind, tmp_path / "special")
    with deadline(60):
        assert_user_error(run_cli("generate", made["model"], "--prompt", "x", "--head-temperatures", special), "special")
        assert_user_error(run_cli("perplexity", made["model"], "--text", special), "special")


@pytest.mark.parametrize("kind", ["fifo", "folder", "sparse"])
@pytest.mark.parametrize("name", ["config.json", "tokenizer_config.json", "tokenizer.model"])
def test_artifact_files_are_bounded(run_cli, made, tmp_path, kind, name):
    folder = copy_of(made["model"], tmp_path / "model")
    (folder / name).unlink()
    _special(kind, folder / name)
    with deadline(60):
        assert_user_error(run_cli("generate", folder, "--prompt", "x"), name)


NESTED = "[" * 100000 + "]" * 100000
# stranger 53: a 400-digit integer passed every reader and overflowed float() later, a traceback in six places
HUGE_NUMBER = "[" + "9" * 400 + "]"
DOCUMENTS = {"nested": (NESTED, "nests deeper than 64 levels"), "huge number": (HUGE_NUMBER, "holds a whole number of 400 digits")}


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("target,name,command", [
    ("model", "config.json", "inspect"), ("model", "tokenizer_config.json", "generate"), ("onnx", "genai_config.json", "inspect"),
    ("onnx", "edgelm.json", "inspect"), ("onnx", "config.json", "inspect"), ("bundle", "edgelm.json", "verify"),
    ("model", "model.safetensors.index.json", "inspect"), ("temperatures", "t.json", "generate"), ("zip", "edgelm.json", "verify"),
])
def test_nested_json_is_one_line(run_cli, made, tmp_path, target, name, command, document):
    text, said = DOCUMENTS[document]
    if target == "temperatures":
        (tmp_path / name).write_text('{"layers": ' + text + "}")
        argv = ["generate", made["model"], "--prompt", "x", "--head-temperatures", tmp_path / name]
    elif target == "zip":
        folder = copy_of(made["bundle"], tmp_path / "b")
        archive = tmp_path / "nested.zip"
        with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as out:
            for path in folder.iterdir():
                out.writestr(path.name, text if path.name == name else path.read_bytes())
        argv = ["verify", archive]
    else:
        folder = copy_of(made[target], tmp_path / target)
        if name == "model.safetensors.index.json":
            (folder / "model.safetensors").unlink()
        if target == "onnx" and name == "config.json":  # read for Optimum's layout, which has no genai_config.json
            (folder / "genai_config.json").unlink()
        (folder / name).write_text(text)
        argv = {"inspect": ["inspect", folder], "generate": ["generate", folder, "--prompt", "x"], "verify": ["verify", folder]}[command]
    assert_user_error(run_cli(*argv), said)


def test_gguf_stored_config_nested(run_cli, made, tmp_path):
    from gguf import GGUFValueType

    from .gguf_edit import rewrite_gguf
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint
    from edgelm.models.presets import write_preset

    native = export_gguf(open_checkpoint(write_preset("tiny-tokenformer", tmp_path / "tf", seed=1)), tmp_path / "tf.gguf", "f32").path
    for (text, said), key in itertools.product(DOCUMENTS.values(), ("edgelm.config", "edgelm.tokenizer_file.tokenizer_config.json",
                                                                     "edgelm.parity.probe")):
        evil = rewrite_gguf(native, tmp_path / "evil.gguf", drop_keys={key}, add={key: (text, GGUFValueType.STRING)})
        assert_user_error(run_cli({"edgelm.config": "inspect", "edgelm.parity.probe": "verify"}.get(key, "generate"), evil,
                                  *(["--prompt", "x"] if key.endswith(".json") else [])), said)


@pytest.mark.parametrize("fmt", ["gguf", "onnx"])
@pytest.mark.parametrize("change", ["weights rewritten in place", "config replaced"])
def test_an_export_whose_source_changed_meanwhile_writes_nothing(made, tmp_path, fmt, change):
    """Stranger 54: another model's model.safetensors and config.json copied over the folder 2 s into an export gave a GGUF
    of one model's config and the other's weights, certified against the second (exit 0; verify passed). An export now
    compares the files it reads with what it found at the start, before its output is renamed into place."""
    from edgelm.errors import UserError
    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    folder = copy_of(made["model"], tmp_path / "model")
    checkpoint = open_checkpoint(folder)
    if change == "config replaced":  # the same bytes through a new file: another inode
        (folder / "config.json.new").write_bytes((folder / "config.json").read_bytes())
        os.replace(folder / "config.json.new", folder / "config.json")
    else:  # as `dd conv=notrunc` then `touch -d` write (stranger 56): the same file and size, new bytes, the mtime put back
        weights = folder / "model.safetensors"
        before = weights.stat()
        time.sleep(0.05)  # past the clock's granularity, so the change time moves
        with open(weights, "r+b") as file:
            file.seek(-1, os.SEEK_END)
            last = file.read(1)
            file.seek(-1, os.SEEK_END)
            file.write(bytes([last[0] ^ 1]))
        os.utime(weights, ns=(before.st_atime_ns, before.st_mtime_ns))
        assert weights.stat().st_mtime_ns == before.st_mtime_ns and weights.stat().st_size == before.st_size
    out = tmp_path / ("out.gguf" if fmt == "gguf" else "out")
    with pytest.raises(UserError, match="the model's files changed while it was exported"):
        (export_gguf if fmt == "gguf" else export_onnx)(checkpoint, out, "f32")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


@pytest.mark.parametrize("kind", ["file", "folder"])
def test_an_output_whose_folder_is_deleted_meanwhile_is_one_line(tmp_path, kind):
    """Stranger 54: the output's folder deleted during an export was a FileNotFoundError traceback (ONNX) or blamed on
    llama.cpp's quantizer (GGUF): each failure is said as what happened, whatever the writer raised."""
    from edgelm.errors import UserError
    from edgelm.fileio import atomic_output_dir, atomic_output_file

    target = tmp_path / "out" / ("m.gguf" if kind == "file" else "m")
    for raised in (lambda tmp: (tmp / "model.onnx" if kind == "folder" else tmp).write_bytes(b"x"),
                   lambda tmp: (_ for _ in ()).throw(UserError("llama.cpp's quantizer refused", None, "choose another type"))):
        target.parent.mkdir(exist_ok=True)
        with pytest.raises(UserError, match="the output's temporary .* was removed while it was written"):
            with (atomic_output_file if kind == "file" else atomic_output_dir)(target) as tmp:
                shutil.rmtree(target.parent)
                raised(tmp)
        assert not target.parent.exists()


# --- finding 8: output paths ---------------------------------------------------------------------------------------
def test_force_onto_a_link_or_the_wrong_kind(run_cli, made, tmp_path, monkeypatch):
    folder = tmp_path / "real"
    folder.mkdir()
    (tmp_path / "link").symlink_to(folder)
    (tmp_path / "file").write_text("x")
    (tmp_path / "dir").mkdir()
    cases = [(["init", "tiny-rope", tmp_path / "link", "--force"], "symbolic link"),
             (["init", "tiny-rope", tmp_path / "file", "--force"], "the output is a folder but a file is there"),
             (["export", made["model"], "--format", "onnx", "--out", tmp_path / "file", "--force"], "the output is a folder but a file is there"),
             (["export", made["model"], "--format", "onnx", "--out", tmp_path / "link", "--force"], "symbolic link")]
    for argv, line in cases:
        assert_user_error(run_cli(*argv), line)
    assert (tmp_path / "file").read_text() == "x" and (tmp_path / "link").is_symlink() and list(folder.iterdir()) == []
    monkeypatch.chdir(folder)
    for out in ("", ".", ".."):
        for argv in (["init", "tiny-rope", out, "--force"], ["bundle", made["gguf"], "--out", out, "--force"]):
            assert_user_error(run_cli(*argv))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dir", "file", "link", "real"] and list(folder.iterdir()) == []
    # a file output into a folder takes its default name there, as llama.cpp's converter's --outfile DIR (round 8: a
    # stranger's `--out ex/` was told to remove the folder)
    code, _, err = run_cli("export", made["model"], "--quant", "f32", "--no-certificate", "--out", tmp_path / "dir")
    assert code == 0 and [p.name for p in (tmp_path / "dir").iterdir()] == [f"{Path(made['model']).name}-f32.gguf"], err


def test_force_never_replaces_a_device_or_a_pipe(run_cli, made, tmp_path):
    """A stranger's finding: `export … --out /dev/null --force`, run as root, replaced the system's /dev/null
    with a regular file (exit 0); a FIFO likewise. --force replaces files and folders only, for every command
    that writes (export, calibrate, bundle, bundle --zip all go through fileio.refuse_existing)."""
    import stat

    fifo = tmp_path / "pipe.gguf"
    os.mkfifo(fifo)
    (tmp_path / "z.zip").unlink(missing_ok=True)
    os.mkfifo(tmp_path / "z.zip")
    cases = [["export", made["model"], "--quant", "f32", "--no-certificate", "--out", fifo, "--force"],
             ["export", made["model"], "--format", "onnx", "--out", fifo, "--force"],
             ["bundle", made["gguf"], "--out", tmp_path / "z", "--zip", "--force"]]
    if os.geteuid() == 0:  # a device node of our own (only root may make one): the same bytes as /dev/null
        os.mknod(tmp_path / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        cases.append(["export", made["model"], "--quant", "f32", "--no-certificate", "--out", tmp_path / "null", "--force"])
    for argv in cases:
        assert_user_error(run_cli(*argv), "not a file or a folder")
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and stat.S_ISFIFO((tmp_path / "z.zip").lstat().st_mode)
    if os.geteuid() == 0:
        assert stat.S_ISCHR((tmp_path / "null").lstat().st_mode)


def test_bundle_zip_onto_a_read_only_place(run_cli, made, tmp_path, monkeypatch):
    import errno
    import tempfile

    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    monkeypatch.setattr(tempfile, "mkdtemp", read_only)
    assert_user_error(run_cli("bundle", made["gguf"], "--out", tmp_path / "ro" / "b", "--zip"), "Read-only file system")
    assert list(tmp_path.iterdir()) == []


def test_a_failed_export_leaves_no_parent_folders(run_cli, made, tmp_path):
    temperatures = tmp_path / "t.json"
    temperatures.write_text(json.dumps({"layers": [[1e30] * 8] * 4}))  # refused while writing: beyond f16
    assert_user_error(run_cli("export", made["model"], "--head-temperatures", temperatures, "--out", tmp_path / "a" / "b" / "m.gguf"))
    assert [p.name for p in tmp_path.iterdir()] == ["t.json"]


# --- property tests: artifacts drawn by hypothesis, every command that reads them ------------------------------------
CASES = int(os.environ.get("EDGELM_BOUNDARY_EXAMPLES", 10))
TREATMENTS = ["keep", "link inside", "link to canary", "link to a copy outside", "hard link", "fifo", "folder", "dangling link",
              "nested json", "absent"]
# "keep" weighted so that some artifacts stay whole and the commands' success paths run too
DRAWN = st.sampled_from(["keep"] * 3 + ["link inside", "hard link"]) | st.sampled_from(TREATMENTS)
opened: list[str] = []


def _audit(event, args):
    if event == "open" and opened is not None and isinstance(args[0], (str, bytes, os.PathLike)):
        opened.append(os.fsdecode(args[0]))


sys.addaudithook(_audit)


def _treat(folder: Path, name: str, treatment: str, canary: Path, linked: Path) -> None:
    entry = folder / name
    original = folder / f".original-{name}"
    if os.path.lexists(entry):
        entry.rename(original)
    if treatment == "keep":
        original.rename(entry)
    elif treatment == "link inside":
        entry.symlink_to(original.name)
    elif treatment == "link to canary":
        entry.symlink_to(canary)
    elif treatment == "link to a copy outside":
        outside_copy = canary.parent / name
        shutil.copyfile(original, outside_copy)
        os.utime(outside_copy, (0, outside_copy.stat().st_mtime))
        entry.symlink_to(outside_copy)
    elif treatment == "hard link":  # an inode the folder holds: a hard link needs read access to its target to be made
        shutil.copyfile(original, linked / name)
        os.link(linked / name, entry)
    elif treatment == "fifo":
        os.mkfifo(entry)
    elif treatment == "folder":
        entry.mkdir()
    elif treatment == "dangling link":
        entry.symlink_to(folder / "nowhere")
    elif treatment == "nested json":
        entry.write_text("[" * 5000 + "]" * 5000)
    if os.path.lexists(original) and treatment != "link inside":
        original.unlink()


def _check_run(run_cli, argv, canary: Path, artifact: Path, counts: dict) -> None:
    opened.clear()
    with deadline(120):
        code, out, err = run_cli(*argv)
    outside = canary.parent
    reads = [p for p in opened if Path(os.path.realpath(p)).is_relative_to(outside)]
    assert not reads, (argv, reads)
    assert all(f.stat().st_atime == 0 for f in outside.iterdir()), (argv, "a file outside the artifact was read")
    assert "Traceback" not in err, (argv, err)
    # verify fails (exit 1) a bundle that is not what its manifest says; every other refusal is one line, exit 2
    assert code in ((0, 1, 2) if argv[0] == "verify" else (0, 2)), (argv, code, err)
    if code == 1:
        assert len(err.strip().splitlines()) == 1 and err.startswith("verify failed: "), (argv, err)
    if code == 2:
        assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
    counts[f"{argv[0]} exit {code}"] = counts.get(f"{argv[0]} exit {code}", 0) + 1


def property_settings():
    return settings(max_examples=CASES, deadline=None, derandomize=os.environ.get("CI") == "true",
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _workspace(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop")
    (root / "outside").mkdir()
    (root / "linked").mkdir()
    canary = root / "outside" / "canary.txt"
    canary.write_text("CANARY")
    os.utime(canary, (0, canary.stat().st_mtime))
    return root, canary


COUNTS: dict[str, dict] = {}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    for test, counts in COUNTS.items():
        print(f"\n{test}: {sum(counts.values())} command runs: {dict(sorted(counts.items()))}")


SHARD_NAMES = st.sampled_from(["shard.safetensors", "../outside/canary.txt", "/etc/hostname", "sub/shard.safetensors", "", ".",
                               "shard.safetensors/..", "..\\shard.safetensors", "shard.safetensors\0"]) | st.text(max_size=12)


@property_settings()
@given(data=st.data())
def test_model_folders_drawn(run_cli, made, tmp_path_factory, data):
    root, canary = _workspace(tmp_path_factory)
    folder = copy_of(made["model"], root / "model")
    if data.draw(st.booleans(), "sharded"):
        (folder / "model.safetensors").rename(folder / "shard.safetensors")
        from safetensors import safe_open

        with safe_open(str(folder / "shard.safetensors"), framework="pt") as handle:
            names = list(handle.keys())
        shard = data.draw(SHARD_NAMES, "shard name")
        (folder / "model.safetensors.index.json").write_text(json.dumps({"weight_map": {n: shard if i == 0 else "shard.safetensors"
                                                                                         for i, n in enumerate(names)}}))
    for name in sorted(p.name for p in folder.iterdir()):
        _treat(folder, name, data.draw(DRAWN, name), canary, root / "linked")
    counts = COUNTS.setdefault("model folders", {})
    for argv in (["inspect", folder], ["generate", folder, "--prompt", "It is", "--max-new-tokens", 1],
                 ["export", folder, "--out", root / "out.gguf", "--quant", "f32"]):
        _check_run(run_cli, argv, canary, folder, counts)


@property_settings()
@given(data=st.data())
def test_onnx_folders_drawn(run_cli, made, tmp_path_factory, data):
    root, canary = _workspace(tmp_path_factory)
    folder = copy_of(made["onnx"], root / "onnx")
    for name in sorted(p.name for p in folder.iterdir()):
        _treat(folder, name, data.draw(DRAWN, name), canary, root / "linked")
    counts = COUNTS.setdefault("onnx folders", {})
    for argv in (["inspect", folder], ["generate", folder, "--prompt", "It is", "--max-new-tokens", 1],
                 ["bundle", folder, "--out", root / "web", "--target", "web", "--web-runtime", root / "linked"]):
        _check_run(run_cli, argv, canary, folder, counts)


@property_settings()
@given(data=st.data())
def test_bundles_drawn(run_cli, made, tmp_path_factory, data):
    root, canary = _workspace(tmp_path_factory)
    folder = copy_of(made["bundle"], root / "bundle")
    for name in sorted(p.name for p in folder.iterdir()):
        _treat(folder, name, data.draw(DRAWN, name), canary, root / "linked")
    if data.draw(st.booleans(), "zipped"):
        archive = root / "bundle.zip"
        with zipfile.ZipFile(archive, "w", data.draw(st.sampled_from([zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED]), "method")) as out:
            for path in folder.iterdir():
                if path.is_file() and not path.is_symlink():
                    out.write(path, data.draw(st.sampled_from([path.name, "../" + path.name, path.name + "/"]), "entry name"))
        target = archive
    else:
        target = folder
    counts = COUNTS.setdefault("bundles", {})
    for argv in (["verify", target], ["generate", target, "--prompt", "It is", "--max-new-tokens", 1], ["inspect", target]):
        _check_run(run_cli, argv, canary, target, counts)


# --- GGUF float hyperparameters, which llama.cpp trusts ------------------------------------------------------
@pytest.mark.parametrize("key,value", [("attention.layer_norm_rms_epsilon", float("nan")), ("attention.layer_norm_rms_epsilon", -1.0),
                                       ("rope.freq_base", float("inf"))], ids=["eps-nan", "eps-negative", "rope-base-inf"])
def test_gguf_float_hparams_are_checked_before_llama_cpp(made, tmp_path, key, value):
    """A NaN or negative RMSNorm epsilon aborted the whole process inside ggml (GGML_ASSERT(eps >= 0.0f),
    exit 134 and a gdb backtrace) in generate, verify, bench and parity. The value is patched into the
    file's bytes (the key's uint32 type, then the float32), so no writer of ours is involved."""
    import struct
    import subprocess
    import sys

    data = bytearray(made["gguf"].read_bytes())
    name = f"llama.{key}".encode()
    at = data.index(name) + len(name)
    assert struct.unpack_from("<I", data, at)[0] == 6  # GGUF_TYPE_FLOAT32
    struct.pack_into("<f", data, at + 4, value)
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(bytes(data))
    for command in (["generate", str(bad), "--prompt", "Hi", "--max-new-tokens", "2"], ["verify", str(bad)]):
        done = subprocess.run([sys.executable, "-m", "edgelm", *command], capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.returncode, done.stderr[-2000:])
        assert done.stderr.strip().splitlines() == [done.stderr.strip()] and f"llama.{key}" in done.stderr, done.stderr


def test_standard_input_is_bounded(made):
    """`--prompt -` and a piped chat from /dev/zero read until the OOM killer came (16.7 GB); `--file`
    had its limit, a pipe none. Now both read at most their limit and say so in one line."""
    import subprocess
    import sys

    for command in (["generate", str(made["gguf"]), "--prompt", "-", "--max-new-tokens", "2"], ["chat", str(made["gguf"])]):
        with open("/dev/zero", "rb") as zeros:
            done = subprocess.run([sys.executable, "-m", "edgelm", *command], stdin=zeros, capture_output=True, text=True, timeout=300)
        assert done.returncode == 2 and "Traceback" not in done.stderr, (command, done.returncode, done.stderr[-2000:])
        errors = [line for line in done.stderr.strip().splitlines() if "/reset, /exit" not in line]  # chat's banner is on stderr
        assert len(errors) == 1 and "edgelm reads at most" in errors[0], done.stderr


# hub caches: huggingface_hub's layout (models--ORG--NAME/{refs,snapshots,blobs}), with the refs, the
# snapshot folders and the snapshot's links into blobs/ drawn; every command that takes a hub id
HUB_REPO, HUB_COMMIT = "edgelm-test/tiny", "0123456789abcdef0123456789abcdef01234567"
REF_TREATMENTS = ["commit", "commit", "commit and newline", "../../", "walk to victim", "absolute victim", "link to canary",
                  "link to a file holding the commit", "fifo", "folder", "absent", "sparse", "nested json"]
BLOB_TREATMENTS = ["keep", "keep", "keep", "blob links to canary", "link to canary", "absolute link to its blob", "blob missing",
                   "blob is a fifo", "link to the victim's copy", "nested json blob", "link up to blobs/"]
REVISIONS = st.sampled_from([None, "main", HUB_COMMIT, "v1.0", "refs/pr/1", "../../outside/victim", "/outside/victim", "main/../../x",
                             "0" * 40]) | st.from_regex(r"[A-Za-z0-9_./-]{1,12}", fullmatch=True)


@contextmanager
def hub_cache(folder: Path):
    """huggingface_hub in this process reading `folder` as its cache, offline."""
    from huggingface_hub import constants, utils

    # huggingface_hub 2 keeps no session to reset (what a plain `pip install` resolves; CI's install resolves 0.36)
    reset_sessions = getattr(utils, "reset_sessions", lambda: None)

    saved = constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE
    constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = str(folder), True
    reset_sessions()
    try:
        yield
    finally:
        constants.HF_HUB_CACHE, constants.HF_HUB_OFFLINE = saved
        reset_sessions()


def _treat_ref(ref: Path, treatment: str, victim: Path, canary: Path) -> None:
    ref.parent.mkdir(parents=True, exist_ok=True)
    if os.path.lexists(ref):
        ref.unlink()
    text = {"commit": HUB_COMMIT, "commit and newline": HUB_COMMIT + "\n", "../../": "../../",
            "walk to victim": "../../../outside/victim", "absolute victim": str(victim), "nested json": "[" * 5000}.get(treatment)
    if text is not None:
        ref.write_text(text)
    elif treatment == "link to canary":
        ref.symlink_to(canary)
    elif treatment == "link to a file holding the commit":
        (canary.parent / "commit").write_text(HUB_COMMIT)
        ref.symlink_to(canary.parent / "commit")
    elif treatment == "fifo":
        os.mkfifo(ref)
    elif treatment == "folder":
        ref.mkdir()
    elif treatment == "sparse":
        with open(ref, "wb") as handle:
            handle.truncate(100 << 20)


def _treat_snapshot_file(entry: Path, blobs: Path, treatment: str, victim: Path, canary: Path) -> None:
    blob = blobs / os.readlink(entry).rsplit("/", 1)[1]
    if treatment == "blob links to canary":
        blob.unlink()
        blob.symlink_to(canary)
    elif treatment == "link to canary":
        entry.unlink()
        entry.symlink_to(canary)
    elif treatment == "absolute link to its blob":
        entry.unlink()
        entry.symlink_to(blob)
    elif treatment == "blob missing":
        blob.unlink()
    elif treatment == "blob is a fifo":
        blob.unlink()
        os.mkfifo(blob)
    elif treatment == "link to the victim's copy":
        entry.unlink()
        entry.symlink_to(Path("../../../../outside/victim") / entry.name)
    elif treatment == "nested json blob" and entry.suffix == ".json":
        blob.unlink()
        blob.write_text("[" * 5000 + "]" * 5000)
    elif treatment == "link up to blobs/":
        entry.unlink()
        entry.symlink_to("../../blobs")


def _untouched_outside(outside: Path) -> list[str]:
    """Files under `outside` (links not followed) whose atime shows a read."""
    return [str(p) for p in outside.rglob("*") if p.is_file() and not p.is_symlink() and p.stat().st_atime != 0]


@property_settings()
@given(data=st.data())
def test_hub_caches_drawn(run_cli, made, tmp_path_factory, data):
    """No read outside the cache, whatever its refs, snapshot folders and links hold; exit 0 or 2 in one
    line. Outside: a canary and a victim folder holding a whole model a walk out would load."""
    from .published_layouts import write_hub_cache

    root, canary = _workspace(tmp_path_factory)
    victim = copy_of(made["model"], root / "outside" / "victim")
    home = root / "home"
    snapshot = write_hub_cache(home, HUB_REPO, made["model"], HUB_COMMIT)
    repo = snapshot.parent.parent
    revision = data.draw(REVISIONS, "revision")
    for name in ("main", *([revision] if revision and revision != HUB_COMMIT and hub_is_branch(revision) else [])):
        _treat_ref(repo / "refs" / name, data.draw(st.sampled_from(REF_TREATMENTS), f"refs/{name}"), victim, canary)
    for entry in sorted(snapshot.iterdir()):
        _treat_snapshot_file(entry, repo / "blobs", data.draw(st.sampled_from(BLOB_TREATMENTS), entry.name), victim, canary)
    layout = data.draw(st.sampled_from(["as made", "as made", "snapshot links to victim", "snapshots/ links out", "refs/ links out"]), "layout")
    if layout == "snapshot links to victim":
        shutil.rmtree(snapshot)
        snapshot.symlink_to(victim)
    elif layout == "snapshots/ links out":
        moved = root / "outside" / "snapshots"
        (repo / "snapshots").rename(moved)
        (repo / "snapshots").symlink_to(moved)
    elif layout == "refs/ links out":
        (repo / "refs").rename(root / "outside" / "refs")
        (repo / "refs").symlink_to(root / "outside" / "refs")
    for path in (root / "outside").rglob("*"):
        if path.is_file() and not path.is_symlink():
            os.utime(path, (0, path.stat().st_mtime))
    hub_id = HUB_REPO + (f"@{revision}" if revision else "")
    counts = COUNTS.setdefault("hub caches", {})
    with hub_cache(home / "hub"):
        for argv in (["inspect", hub_id], ["generate", hub_id, "--prompt", "It is", "--max-new-tokens", 1],
                     ["export", hub_id, "--out", root / "out.gguf", "--quant", "f32"]):
            opened.clear()
            with deadline(120):
                code, out, err = run_cli(*argv)
            reads = [p for p in opened if Path(os.path.realpath(p)).is_relative_to(root / "outside")]
            assert not reads, (argv, reads)
            assert not _untouched_outside(root / "outside"), (argv, "read outside the cache", _untouched_outside(root / "outside"))
            assert "Traceback" not in err, (argv, err)
            assert code in (0, 2), (argv, code, err)
            if code == 2:
                assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
            counts[f"{argv[0]} exit {code}"] = counts.get(f"{argv[0]} exit {code}", 0) + 1


def hub_is_branch(revision: str) -> bool:
    from edgelm.hub import is_revision

    return is_revision(revision)


@pytest.mark.parametrize("source,why", [("/dev/zero", "holds more than 268,435,456 bytes"), (b"\xff\xfe bad", "standard input is not UTF-8")])
def test_prompt_from_standard_input_is_bounded(run_cli, made, monkeypatch, source, why):
    """`--prompt - < /dev/zero` read until memory ran out (a MemoryError traceback under a 4 GB ulimit);
    bytes that are not UTF-8 came through Python's stdin as surrogates and failed later in a traceback."""
    import io

    raw = open(source, "rb") if isinstance(source, str) else io.BytesIO(source)
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(raw))
    with deadline(60):
        assert_user_error(run_cli("generate", made["gguf"], "--prompt", "-", "--max-new-tokens", 1), why)


@pytest.mark.parametrize("kind", ["folder", "fifo", "sparse"])
def test_hub_ref_of_the_wrong_kind_is_one_line(run_cli, made, tmp_path, kind):
    """Found by test_hub_caches_drawn: refs/main made a folder was an IsADirectoryError traceback (Python's
    file object was made on the descriptor before it was checked to be a regular file)."""
    from .published_layouts import write_hub_cache

    snapshot = write_hub_cache(tmp_path / "home", HUB_REPO, made["model"], HUB_COMMIT)
    ref = snapshot.parent.parent / "refs" / "main"
    ref.unlink()
    _special(kind, ref)
    with hub_cache(tmp_path / "home" / "hub"), deadline(60):
        assert_user_error(run_cli("inspect", HUB_REPO), "refs/main")


def test_an_onnx_context_past_memory_is_refused_as_it_opens(run_cli, made):
    """`chat -c 100000000` on an ONNX folder printed its banner and took a message before refusing."""
    code, out, err = run_cli("chat", made["onnx"], "-c", 100_000_000)
    # a RoPE export: its rotary tables refuse the context first (a graph without them: the KV cache's memory, a catalogue row)
    assert code == 2 and err.startswith("error: ") and len(err.strip().splitlines()) == 1 and out == "", (code, out, err)
    assert "a context of 100,000,000 tokens is past the 4,096 positions of this model's rotary tables" in err, err


def test_a_zipped_bundles_refusals_name_the_zip(made, run_cli):
    """A zip's model runs from a temporary folder, and a refusal about it named that folder
    ("/tmp/edgelm-bundle-…: --allow-pickle applies to …"), gone by the time the line is read: it names the zip."""
    for args, needle in [(("generate", made["zip"], "--prompt", "x", "--allow-pickle"), "--allow-pickle applies"),
                         (("inspect", made["zip"], "--position-encoding", "none"), "carries its position encoding")]:
        code, out, err = run_cli(*args)
        assert code == 2 and err.startswith(f"error: {made['zip']}: ") and needle in err and "edgelm-bundle-" not in err, err


def test_onnxruntime_telemetry_writes_nothing_under_home(made, tmp_path):
    """Stranger finding: every ONNX command let onnxruntime 1.32 and onnxruntime-genai record usage events (a
    device id, the OS, the CPU, error messages) in ~/.cache/Microsoft/DeveloperTools for upload. edgelm sets
    ORT_DISABLE_TELEMETRY before they load. The session runs in onnxruntime, verify's check in genai."""
    import subprocess
    import sys

    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"} | {"HOME": str(home)}
    for command in (["generate", made["onnx"], "--prompt", "It is", "--max-new-tokens", "2"], ["verify", made["onnx"]]):
        done = subprocess.run([sys.executable, "-m", "edgelm", *map(str, command)], capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
    assert sorted(str(p.relative_to(home)) for p in home.rglob("*")) == []


def test_a_quantized_gguf_without_room_for_its_f32_copy_is_refused_first(made, tmp_path, monkeypatch):
    """Stranger 54: llama.cpp's quantizer reads an f32 GGUF written beside the output; on a folder too small for it the
    export failed late with the full-disk line and no size. It is refused before anything is written, with the sizes."""
    import shutil as shutil_module

    from edgelm.errors import WriteFailed
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    usage = shutil_module.disk_usage(tmp_path)
    monkeypatch.setattr("edgelm.export.gguf.shutil.disk_usage", lambda path: usage._replace(free=4_000_000))
    with pytest.raises(WriteFailed, match=r"an f32 copy written beside it first: about [\d.,]+ MB, and .* has 4.0 MB free"):
        export_gguf(open_checkpoint(made["model"]), tmp_path / "out" / "m.gguf", "Q4_K_M")
    assert not (tmp_path / "out").exists()


def test_an_output_a_writer_made_private_gets_the_usual_mode(tmp_path):
    """Stranger 53: `calibrate --write-checkpoint` left model.safetensors 0600 (safetensors' save_file makes its file so),
    a shared model folder unreadable to other users. Every atomic output file gets 0666 less the umask."""
    import torch
    from safetensors.torch import save_file

    from edgelm.fileio import atomic_output_file

    umask = os.umask(0o022)
    try:
        with atomic_output_file(tmp_path / "model.safetensors") as tmp:
            save_file({"a": torch.zeros(2)}, str(tmp))
    finally:
        os.umask(umask)
    assert (tmp_path / "model.safetensors").stat().st_mode & 0o777 == 0o644
