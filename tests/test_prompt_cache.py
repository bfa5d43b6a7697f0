"""A saved system prompt (`chat --prompt-cache FILE`, runtime/prompt_cache.py) and the NoPE context shift
(runtime/backend.py `_shift_to`).

- A cache loaded from the file gives, at every turn of a chat that fills its context and drops its oldest
  exchanges, the logits of a full prefill of the same prompt, for every backend.
- The file is untrusted: no prompt cache at all (random bytes, another file, a symlink, a folder) is
  refused in one line, exit 2, and left as it is; one for another model or system prompt, truncated,
  with declared sizes past its bytes, arrays of another shape, or llama.cpp state bytes that were
  tampered with, is ignored with a note and written again, and nothing crashes in native code.
- The NoPE shift keeps exactly what attention over the kept positions gives: it equals llama.cpp with
  the dropped cells removed and the others left where they are (no position encoding: positions only
  order the causal mask), an independent engine; it evaluates only the new tokens.
- A person's run: the second start of a chat with --prompt-cache evaluates fewer tokens."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pexpect
import pytest

from edgelm.chat import Conversation
from edgelm.errors import UserError
from edgelm.export.gguf import export_gguf
from edgelm.models import open_checkpoint
from edgelm.runtime.prompt_cache import PromptCache, contents_digest, fingerprint
from tests.test_kv_reuse import BACKENDS, CONTEXT, KINDS, MODELS, REPLY, USER, artifact_path, open_backend, shared_prefix  # noqa: F401

SHIFT_CONTEXT = 256
SYSTEM = "You are Miss Austen, and you answer briefly, in the manner of Persuasion."


def chat_turns(backend, tokenizer, conversation, reference=None):
    """Greedy turns through `backend`; at each, the largest |Δ logit| against a fresh prefill on `reference`
    and the tokens evaluated. Returns (worst, drops, evaluated per turn)."""
    worst, drops, evaluated = 0.0, 0, []
    for user in USER:
        ids, dropped = conversation.prompt_ids(user)
        drops += dropped
        before = backend.evaluated
        logits = backend.prefill(ids)
        evaluated.append(backend.evaluated - before)
        if reference is not None:
            reference.reset()
            expected = reference.prefill(ids)
            worst = max(worst, float(np.abs(logits - expected).max()))
            assert int(np.argmax(logits)) == int(np.argmax(expected))
        reply = []
        for _ in range(REPLY):
            reply.append(int(np.argmax(logits)))
            logits = backend.decode(reply[-1])
        conversation.add_reply(tokenizer.decode(reply).strip())
    return worst, drops, evaluated


@pytest.mark.parametrize("kind", KINDS)
def test_a_loaded_prompt_cache_gives_the_logits_of_a_full_prefill(artifact_path, kind, tmp_path):  # noqa: F811 (the fixture)
    name, fmt, tolerance = BACKENDS[kind]
    path = artifact_path(name, fmt)
    writer = open_backend(path)
    conversation = Conversation(writer.tokenizer, CONTEXT, REPLY, system=SYSTEM)
    preamble = conversation.preamble_ids()
    writer.backend.prefill(preamble)
    file = tmp_path / "system.cache"
    PromptCache(file, path, writer.backend).save()
    writer.close()

    reader, fresh = open_backend(path), open_backend(path)
    conversation = Conversation(reader.tokenizer, CONTEXT, REPLY, system=SYSTEM)  # the writer's tokenizer closed with it
    assert PromptCache(file, path, reader.backend).load(preamble).startswith(f"prompt cache: loaded {len(preamble)} tokens")
    assert reader.backend.cached_ids == preamble and reader.backend.evaluated == 0
    worst, drops, evaluated = chat_turns(reader.backend, reader.tokenizer, conversation, fresh.backend)
    print(f"\n{kind}: {len(preamble)} tokens loaded; largest |Δ logit| {worst:.2e} (tolerance {tolerance:g}); evaluated per turn {evaluated}")
    assert worst <= tolerance
    assert drops >= 1
    first = conversation.tokenizer.encode(conversation.render([{"role": "user", "content": USER[0]}]), add_bos=False, special=True)
    assert evaluated[0] == len(first) - len(preamble)  # the first turn: only its own tokens
    reader.close()
    fresh.close()


# --- the file as untrusted input ---

@pytest.fixture(scope="module")
def gguf_pair(tmp_path_factory):
    """Two GGUFs llama.cpp runs (NoPE and RoPE tiny models) and a prompt cache made for the first."""
    out = tmp_path_factory.mktemp("gguf")
    nope = export_gguf(open_checkpoint(MODELS / "tiny-nope"), out / "nope.gguf", "f16", certificate=False).path
    rope = export_gguf(open_checkpoint(MODELS / "tiny-rope"), out / "rope.gguf", "f16", certificate=False).path
    with open_backend(nope) as artifact:
        conversation = Conversation(artifact.tokenizer, CONTEXT, REPLY, system=SYSTEM)
        artifact.backend.prefill(conversation.preamble_ids())
        PromptCache(out / "nope.cache", nope, artifact.backend).save()
    return nope, rope, out / "nope.cache"


def load_note(model: Path, file: Path, system: str = SYSTEM) -> tuple[str | None, int]:
    with open_backend(model) as artifact:
        preamble = Conversation(artifact.tokenizer, CONTEXT, REPLY, system=system).preamble_ids()
        note = PromptCache(file, model, artifact.backend).load(preamble)
        return note, artifact.backend.position


def load_then_prefill(model: Path, file: Path) -> tuple[str | None, int]:
    """As chat's first turn: the cache loaded (or ignored), then the preamble and a message evaluated after it."""
    with open_backend(model) as artifact:
        preamble = Conversation(artifact.tokenizer, CONTEXT, REPLY, system=SYSTEM).preamble_ids()
        note = PromptCache(file, model, artifact.backend).load(preamble)
        artifact.backend.prefill(preamble + preamble[-4:])
        return note, artifact.backend.position


def copy_to(tmp_path: Path, source: Path, data: bytes | None = None) -> Path:
    target = tmp_path / "cache"
    target.write_bytes(source.read_bytes() if data is None else data)
    return target


def test_the_file_it_wrote_loads(gguf_pair):
    nope, _, cache = gguf_pair
    note, position = load_note(nope, cache)
    assert note.startswith("prompt cache: loaded") and position > 5


@pytest.mark.parametrize("damage, why", [
    ("truncated", "damaged"),
    ("declared sizes past its bytes", "damaged"),
    ("another model", "made for another model"),
    ("another model's, relabelled", "damaged: its contents do not match"),  # stranger 53: the model field alone was changed
    ("another system prompt", "another system prompt"),
    ("arrays of another shape", "not a llama.cpp sequence state"),
])
def test_a_cache_that_does_not_fit_is_ignored_with_a_note(gguf_pair, tmp_path, damage, why):
    nope, rope, cache = gguf_pair
    data, model, system = cache.read_bytes(), nope, SYSTEM
    header = int.from_bytes(data[:8], "little")
    if damage == "truncated":
        data = data[: len(data) * 2 // 3]
    elif damage == "declared sizes past its bytes":  # the header names 2**40 tokens; the bytes are as they were
        text = data[8: 8 + header].decode()
        import json
        parsed = json.loads(text)
        parsed["ids"]["shape"] = [2 ** 40]
        parsed["ids"]["data_offsets"][1] = 2 ** 43
        new = json.dumps(parsed).encode()
        data = len(new).to_bytes(8, "little") + new + data[8 + header:]
    elif damage == "another model":
        model = rope
    elif damage == "another model's, relabelled":  # the cache nope's GGUF wrote, given to rope's with rope's fingerprint
        from safetensors import safe_open
        from safetensors.numpy import save

        model = rope
        with safe_open(str(cache), "numpy") as handle:
            metadata, arrays = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
        data = save(arrays, metadata=metadata | {"model": fingerprint(rope)})
    elif damage == "another system prompt":
        system = "You are Captain Wentworth."
    else:  # our own writer with this model's identity, arrays of the wrong shape: what a forger would make
        from safetensors.numpy import load, save_file
        with open_backend(nope) as artifact:
            identity = PromptCache(tmp_path / "x", nope, artifact.backend)._identity()
        arrays = load(data)
        arrays = {"ids": arrays["ids"], "kv.0": np.zeros((4, 4), np.float16)}
        save_file(arrays, str(tmp_path / "forged"), metadata=identity | {"sha256": contents_digest(arrays, identity)})
        data = (tmp_path / "forged").read_bytes()
    note, position = load_note(model, copy_to(tmp_path, cache, data), system)
    assert why in note and "ignored" in note and "\n" not in note
    assert position == 0  # nothing was loaded


@pytest.mark.parametrize("forgery", ["shape", "dtype", "missing", "extra", "ids", "nan", "inf"])
def test_arrays_unlike_the_backends_cache_are_ignored(tmp_path, forgery):
    """The array backends (torch here; ONNX and the ggml executor share the check, runtime/backend.py
    `load_state`): each array is held to kv_layout before it is used."""
    from safetensors.numpy import load, save_file

    model = MODELS / "tiny-nope"
    with open_backend(model) as artifact:
        preamble = Conversation(artifact.tokenizer, CONTEXT, REPLY, system=SYSTEM).preamble_ids()
        artifact.backend.prefill(preamble)
        cache = PromptCache(tmp_path / "cache", model, artifact.backend)
        cache.save()
        arrays, identity = load((tmp_path / "cache").read_bytes()), cache._identity()
    if forgery == "shape":
        arrays["kv.3"] = arrays["kv.3"][:, :1]
    elif forgery == "dtype":
        arrays["kv.0"] = arrays["kv.0"].astype(np.float16)
    elif forgery == "missing":
        del arrays["kv.7"]
    elif forgery == "extra":
        arrays["kv.99"] = arrays["kv.0"]
    elif forgery in ("nan", "inf"):  # a stranger's: the right shapes, every value NaN (or inf) — it ran, replying newlines
        arrays = {k: (np.full_like(a, float(forgery)) if k != "ids" else a) for k, a in arrays.items()}
    else:
        arrays["ids"] = arrays["ids"].astype(np.int32)
    save_file(arrays, str(tmp_path / "cache"), metadata=identity | {"sha256": contents_digest(arrays, identity)})  # a forger checksums
    note, position = load_note(model, tmp_path / "cache")
    assert "ignored" in note and position == 0
    if forgery in ("nan", "inf"):
        assert "NaN or infinite" in note


def forged_llama_state(cache: Path, mutate) -> bytes:
    from safetensors import safe_open
    from safetensors.numpy import save

    with safe_open(str(cache), "numpy") as handle:
        metadata, arrays = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    arrays["llama_state"] = mutate(arrays["llama_state"].copy(), arrays["ids"])
    identity = {key: metadata[key] for key in ("format", "version", "model", "backend")}
    return save(arrays, metadata=metadata | {"sha256": contents_digest(arrays, identity)})  # a forger's own checksum: llama.cpp reads it


def test_a_llama_state_changed_after_it_was_written_is_ignored(gguf_pair, tmp_path):
    """Stranger finding: NaN written over the K rows of a GGUF prompt cache's llama.cpp state loaded silently
    ("loaded 14 tokens") and the chat replied "the the the"; llama.cpp's state is bytes only llama.cpp parses.
    The contents' SHA-256, written with them, no longer matches: ignored with a note, nothing loaded."""
    from safetensors import safe_open
    from safetensors.numpy import save

    nope, _, cache = gguf_pair
    with safe_open(str(cache), "numpy") as handle:
        metadata, arrays = handle.metadata(), {k: handle.get_tensor(k) for k in handle.keys()}
    state = arrays["llama_state"].copy()
    state[len(state) // 2: len(state) // 2 + 64] = np.frombuffer(np.full(32, np.nan, np.float16).tobytes(), np.uint8)
    note, position = load_note(nope, copy_to(tmp_path, cache, save(arrays | {"llama_state": state}, metadata=metadata)))
    assert "ignored (damaged: its contents do not match the SHA-256 written with them)" in note and position == 0


def test_tampered_llama_state_never_crashes_llama_cpp(gguf_pair, tmp_path):
    """llama.cpp's sequence state with this model's identity, its bytes changed (the header, cell positions,
    layer counts, sizes, cut short, grown): every one is loaded or ignored, and the turn after it runs, in a child
    process that must exit cleanly (a native abort or segfault would kill it). Stranger 35: a cell's position set to
    INT32_MAX was ignored but survived the reset, and every later llama_decode failed (a traceback at each start)."""
    nope, _, cache = gguf_pair
    rng = np.random.default_rng(0)
    forgeries = []
    size = len(forged_llama_state(cache, lambda s, i: s))
    for k in range(44):
        def mutate(state, ids, k=k):
            if k >= 40:  # llama.cpp 0.3.36's sequence state: 16 bytes of header, then 12 per cell, its position first
                state[16 + 12 * (k - 40) * 3: 20 + 12 * (k - 40) * 3] = np.frombuffer(np.int32(2 ** 31 - 1).tobytes(), np.uint8)
                return state
            if k < 24:  # a few bytes of the first 256: counts, positions, types and row sizes
                where = rng.integers(0, min(256, len(state)), size=1 + k % 4)
                state[where] = rng.integers(0, 256, size=len(where))
                return state
            if k < 30:
                return state[: int(rng.integers(1, len(state)))]
            if k < 34:
                return np.concatenate([state, rng.integers(0, 256, size=int(rng.integers(1, 4096)), dtype=np.uint8)])
            state[:4] = np.frombuffer(np.uint32(0xFFFFFFF0 - k).tobytes(), np.uint8)  # cell count
            return state
        path = tmp_path / f"forged{k}"
        path.write_bytes(forged_llama_state(cache, mutate))
        forgeries.append(str(path))
    assert size > 1000
    script = textwrap.dedent(f"""
        import sys
        from tests.test_prompt_cache import load_then_prefill
        from pathlib import Path
        for path in sys.argv[1:]:
            note, position = load_then_prefill(Path({str(nope)!r}), Path(path))
            print(position, note)
        print("done")
    """)
    run = subprocess.run([sys.executable, "-c", script, *forgeries], capture_output=True, text=True, timeout=600,
                         cwd=Path(__file__).resolve().parents[1])
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.rstrip().endswith("done") and "Traceback" not in run.stderr
    assert sum("ignored" in line for line in run.stdout.splitlines()) >= 10


@pytest.mark.parametrize("kind", ["random bytes", "another file", "huge header length", "symlink", "folder", "fifo"])
def test_a_path_that_is_no_prompt_cache_is_refused_and_left_alone(gguf_pair, tmp_path, kind):
    nope, _, cache = gguf_pair
    target = tmp_path / "cache"
    if kind == "random bytes":
        target.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    elif kind == "another file":
        target.write_bytes(nope.read_bytes()[:100000])  # the model itself, named by mistake
    elif kind == "huge header length":
        target.write_bytes((2 ** 62).to_bytes(8, "little") + b"{}")
    elif kind == "symlink":
        target.symlink_to(cache)
    elif kind == "folder":
        target.mkdir()
    else:
        os.mkfifo(target)
    before = target.read_bytes() if target.is_file() and not target.is_symlink() else None
    with open_backend(nope) as artifact:
        with pytest.raises(UserError) as raised:
            PromptCache(target, nope, artifact.backend)
    assert "\n" not in str(raised.value) and "--prompt-cache" in str(raised.value)
    if before is not None:
        assert target.read_bytes() == before
    # the command: one line on stderr, exit 2, no traceback
    run = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(nope), "--prompt-cache", str(target)], input="/exit\n",
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert len([line for line in run.stderr.splitlines() if line.strip()]) == 1 and "--prompt-cache" in run.stderr  # before the banner


def test_the_fingerprint_tells_models_apart_and_reads_only_the_artifacts_files(gguf_pair, tmp_path):
    """Stranger 27: the fingerprint followed every link in a folder: a file outside was read into it, a link to /proc/kmsg
    hung chat. It takes the files the artifact's readers admit (artifact_files.regular_members)."""
    nope, rope, _ = gguf_pair
    assert fingerprint(nope) != fingerprint(rope)
    changed = tmp_path / "changed.gguf"
    data = bytearray(nope.read_bytes())
    data[len(data) // 2] ^= 1  # one bit in the middle of the weights, where a sampled block lies
    changed.write_bytes(bytes(data))
    assert fingerprint(changed) != fingerprint(nope)
    folder = tmp_path / "folder"
    folder.mkdir()
    (folder / "model.onnx").write_bytes(b"graph")
    before = fingerprint(folder)
    outside = tmp_path / "secret.txt"
    outside.write_text("outside")
    (folder / "secret.txt").symlink_to(outside)
    os.mkfifo(folder / "fifo")  # opened, it would block the chat
    (folder / "outside-folder").symlink_to(tmp_path, target_is_directory=True)
    assert fingerprint(folder) == before
    (folder / "inside.onnx").symlink_to(folder / "model.onnx")  # a link inside the folder is one of its files
    assert fingerprint(folder) != before


def test_a_prompt_cache_inside_the_models_folder_is_refused(artifact_path, tmp_path):  # noqa: F811 (the fixture)
    """Stranger 27: `chat FOLDER --prompt-cache FOLDER/cache.bin` wrote into the artifact (exit 0); verify then failed it and
    a bundle refused every later command ("cache.bin is in the bundle but not in its manifest")."""
    folder = artifact_path(*BACKENDS["onnx shared buffer"][:2])
    before = sorted(p.name for p in folder.iterdir())
    run = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(folder), "--prompt-cache", str(folder / "cache.bin")],
                         input="/exit\n", capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "--prompt-cache lies inside the model's folder" in run.stderr, run.stderr
    assert sorted(p.name for p in folder.iterdir()) == before


# --- the NoPE context shift ---

def test_the_nope_shift_equals_attention_over_the_kept_positions(artifact_path, tmp_path):  # noqa: F811 (the fixture)
    """torch and ONNX shifted caches against llama.cpp (f32 GGUF, f32 cache) with the dropped cells removed
    and the kept ones left at their positions, and against each other at every turn; the shift evaluates
    only the new tokens. Measured: 3.8e-6 (torch) and 4.8e-6 (ONNX) from llama.cpp."""
    from edgelm.formats import LoadOptions, open_artifact
    import llama_cpp

    gguf = export_gguf(open_checkpoint(MODELS / "tiny-nope"), tmp_path / "f32.gguf", "f32", certificate=False).path
    reference = open_artifact(gguf, LoadOptions(context_length=512, threads=2, f32_kv_cache=True))
    # a context where the half kept after a drop still holds whole exchanges to shift
    shifted = {kind: open_artifact(artifact_path(*BACKENDS[kind][:2]), LoadOptions(context_length=SHIFT_CONTEXT, threads=2))
               for kind in ("torch", "onnx shared buffer")}
    tokenizer = shifted["torch"].tokenizer
    for artifact in shifted.values():
        assert artifact.backend.position_free
    conversation = Conversation(tokenizer, SHIFT_CONTEXT, REPLY, system=SYSTEM)
    shifts = 0
    for user in USER * 2:
        ids, dropped = conversation.prompt_ids(user)
        results = {}
        for kind, artifact in shifted.items():
            backend = artifact.backend
            backend.context_shift = bool(dropped)  # as chat sets it
            old = list(backend.cached_ids)
            before = backend.evaluated
            results[kind] = backend.prefill(ids)
            assert backend.cached_ids == ids
            if dropped:  # the moved tokens were not evaluated again
                assert backend.evaluated - before < len(ids) - shared_prefix(old, ids) - 8
        if dropped and not shifts:
            # llama.cpp: the same cache, the dropped cells removed, the rest where they were (the first shift
            # only: later ones shift a cache whose tokens saw text a fresh llama.cpp prefill does not have)
            keep, span = shared_prefix(old, ids), None
            for start in range(keep + 1, len(old)):
                if old[start:start + 8] == ids[keep:keep + 8]:
                    span = start
                    break
            run = 0
            while span + run < len(old) and keep + run < len(ids) - 1 and old[span + run] == ids[keep + run]:
                run += 1
            backend = reference.backend
            backend.reset()
            backend.prefill(old[: span + run])
            assert llama_cpp.llama_memory_seq_rm(llama_cpp.llama_get_memory(backend.llm.ctx), 0, keep, span)
            expected = backend._evaluate(ids[keep + run:], last_only=True)[-1]  # positions continue past the gap
            for kind, logits in results.items():
                difference = float(np.abs(logits - expected).max())
                print(f"\n{kind} shifted past {span - keep} tokens: |Δ logit| vs llama.cpp {difference:.2e}")
                assert difference <= 1e-4
        shifts += bool(dropped)
        assert np.abs(results["torch"] - results["onnx shared buffer"]).max() <= 1e-4
        reply = []
        logits = results["torch"]
        for _ in range(REPLY):  # the same greedy tokens into both caches
            reply.append(int(np.argmax(logits)))
            logits = shifted["torch"].backend.decode(reply[-1])
            shifted["onnx shared buffer"].backend.decode(reply[-1])
        conversation.add_reply(tokenizer.decode(reply).strip())
    assert shifts >= 2
    for artifact in (*shifted.values(), reference):
        artifact.close()


@pytest.mark.parametrize("tail", [8, 20])
def test_the_shift_keeps_what_follows_the_dropped_span_and_evaluates_the_rest(tail):
    """A + B + C cached, A + C asked for: C moves down and only the last token is evaluated; a C too short
    to anchor the shift (at most 8 tokens besides the last) is evaluated again as without the shift."""
    backend = open_backend(MODELS / "tiny-nope").backend
    a, b, c = list(range(10, 30)), list(range(100, 140)), list(range(300, 300 + tail))
    backend.prefill(a + b + c)
    backend.context_shift = True
    before = backend.evaluated
    backend.prefill(a + c)
    assert backend.cached_ids == a + c
    assert backend.evaluated - before == (1 if tail > 9 else tail)


def test_a_rope_model_never_shifts():
    """Keys rotated by their position cannot move: with context_shift asked for, a RoPE model still gives
    the logits of a full prefill at every turn, across the drop."""
    chatting, fresh = open_backend(MODELS / "tiny-rope"), open_backend(MODELS / "tiny-rope")
    assert not chatting.backend.position_free
    chatting.backend.context_shift = True
    conversation = Conversation(chatting.tokenizer, CONTEXT, REPLY, system=SYSTEM)
    worst, drops, _ = chat_turns(chatting.backend, chatting.tokenizer, conversation, fresh.backend)
    assert drops >= 1 and worst <= 1e-4


def test_the_python_api_takes_the_prompt_cache(tmp_path):
    import edgelm

    messages = [{"role": "system", "content": SYSTEM}, {"role": "user", "content": USER[0]}]
    evaluated, replies = [], []
    for _ in range(2):  # two starts: the first writes the file, the second loads it
        model = edgelm.load(MODELS / "tiny-nope", context_length=CONTEXT)
        replies.append(model.chat(messages, max_new_tokens=4, temperature=0, prompt_cache=tmp_path / "api.cache"))
        evaluated.append(model.artifact.backend.evaluated)
        model.artifact.close()
    assert replies[0] == replies[1] and evaluated[1] < evaluated[0] - 20


# --- a person's run ---

def test_a_second_start_with_the_prompt_cache_evaluates_fewer_tokens(gguf_pair, tmp_path):
    nope, _, _ = gguf_pair
    file = tmp_path / "chat.cache"
    evaluated = []
    for start in range(2):
        child = pexpect.spawn(sys.executable, ["-m", "edgelm", "chat", str(nope), "--system", SYSTEM, "--prompt-cache", str(file),
                                               "--temperature", "0", "--max-new-tokens", "8"], encoding="utf-8", timeout=120,
                              dimensions=(40, 200))
        child.expect(r"prompt cache: (wrote|loaded) (\d+) tokens .*\((\d+) evaluated\)")
        action, held, at_start = child.match.group(1), int(child.match.group(2)), int(child.match.group(3))
        assert action == ("wrote" if start == 0 else "loaded")
        child.expect("> ")
        child.sendline("Good morning, how do you do?")
        child.expect(r"(\d+) tokens?, [\d.]+ tok/s; (\d+) prompt tokens evaluated")
        evaluated.append(at_start + int(child.match.group(2)))
        child.expect("> ")
        child.sendline("/exit")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
    print(f"\nevaluated before the first token: {evaluated[0]} (first start), {evaluated[1]} (second start, {held} loaded)")
    assert evaluated[1] == evaluated[0] - held and held > 5


def test_context_shift_off_says_why(gguf_pair):
    """The reason first (stranger 45: a NoPE GGUF read "--context-shift needs a model without position encoding (NoPE)")."""
    nope, rope, _ = gguf_pair
    for model, reason in ((nope, "not on llama.cpp's"), (MODELS / "tiny-rope", "this model encodes positions in its cache")):
        run = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(model), "--context-shift"], input="/exit\n",
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 0 and "note: --context-shift is off: " in run.stderr and reason in run.stderr, run.stderr


def test_a_prompt_cache_path_that_names_no_file_is_refused(tmp_path):
    """Stranger rounds 11 and 12: `--prompt-cache ""` was reported as the folder "." and `--prompt-cache dir/` wrote a
    file named `dir`."""
    nope = MODELS / "tiny-nope"
    for given in ("", str(tmp_path / "dir") + "/"):
        run = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(nope), "--prompt-cache", given], input="/exit\n",
                             capture_output=True, text=True, timeout=300)
        assert run.returncode == 2 and f"--prompt-cache {given!r} names no file" in run.stderr, run.stderr
    assert list(tmp_path.iterdir()) == []


def test_nan_from_a_forged_llama_state_names_the_prompt_cache(gguf_pair, tmp_path):
    """Stranger 27: NaN written over K rows of a llama.cpp state, its SHA-256 made again with edgelm's own digest, loads (the
    checksum finds damage, not a forger) and the first turn failed "the model gave NaN … (damaged weights …)", naming no
    cache: the next start loaded it again. The failure names the file the cache came from."""
    nope, _, cache = gguf_pair

    def nan_rows(state, ids):  # llama.cpp's sequence state: a 16-byte header, 12 bytes a cell, v_trans and the layer count
        # (uint32 each), then layer 0's K type (int32), row size (uint64) and its rows: those made NaN (f16 0x7e00)
        start = 16 + 12 * len(ids) + 8
        row = int(np.frombuffer(state[start + 4: start + 12].tobytes(), np.uint64)[0])
        state[start + 12: start + 12 + row * len(ids)] = np.frombuffer(np.full(row * len(ids) // 2, 0x7e00, np.uint16).tobytes(), np.uint8)
        return state

    forged = copy_to(tmp_path, cache, forged_llama_state(cache, nan_rows))
    run = subprocess.run([sys.executable, "-m", "edgelm", "chat", str(nope), "--prompt-cache", str(forged), "--system", SYSTEM,
                          "-c", str(CONTEXT), "--threads", "2", "--temperature", "0", "--max-new-tokens", str(REPLY)], input="Hello there\n/exit\n",
                         capture_output=True, text=True, timeout=300)
    assert "prompt cache: loaded" in run.stderr, run.stderr
    assert run.returncode == 1 and "Traceback" not in run.stderr, run.stderr
    assert f"the system prompt's KV cache is kept in --prompt-cache {forged}" in run.stderr and "delete it" in run.stderr, run.stderr
