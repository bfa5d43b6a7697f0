"""The defaults and options llama.cpp and Optimum users expect: threads as the engines choose them (and
the same on both sides of `bench --compare`), a context size, a prompt from a file or a pipe, chat with
stop strings and a repetition penalty (and from Python), llama.cpp's quant names, ONNX int4 block size and
accuracy level, a note where --gpu-layers finds no GPU."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .test_bad_input import assert_user_error

MODEL = Path(__file__).resolve().parents[1] / "examples" / "models" / "tiny-rope"
PROMPT = "It is a truth universally acknowledged"


@pytest.fixture(scope="module")
def gguf(tmp_path_factory):
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    return export_gguf(open_checkpoint(MODEL), tmp_path_factory.mktemp("gguf") / "tiny-rope-f16.gguf", "f16").path


def _cpuinfo_cores() -> int | None:
    """Distinct (physical id, core id) pairs of the CPUs this process may use, from /proc/cpuinfo: another
    source than the sysfs thread-sibling lists default_threads() reads."""
    try:
        blocks = Path("/proc/cpuinfo").read_text().strip().split("\n\n")
    except OSError:
        return None
    cores = set()
    for block in blocks:
        fields = dict(line.split(":", 1) for line in block.splitlines() if ":" in line)
        fields = {k.strip(): v.strip() for k, v in fields.items()}
        if "core id" not in fields:
            return None
        if int(fields["processor"]) in os.sched_getaffinity(0):
            cores.add((fields.get("physical id"), fields["core id"]))
    return len(cores)


@pytest.mark.parametrize("busy", [0, 1], ids=["quiet", "busy"])
def test_default_threads_are_the_physical_cores_other_work_leaves_in_every_engine(gguf, tmp_path, monkeypatch, busy):
    """The physical cores on a quiet machine; on a busy one the cores the load average leaves (this process's own
    share of it aside), at least one: a stranger's chat on 2 CPUs at load 3 ran 19 tok/s at 2 threads, 3,264 at 1."""
    import time

    from edgelm.export.onnx import export_onnx
    from edgelm.formats import open_artifact
    from edgelm.models import open_checkpoint
    from edgelm.runtime.backend import default_threads, physical_cores

    cores = _cpuinfo_cores()
    if cores is None:
        pytest.skip("/proc/cpuinfo names no cores here")
    assert physical_cores() == cores <= os.cpu_count()
    monkeypatch.setattr(time, "process_time", lambda: 60.0)  # a long-lived process: one CPU of the load is its own
    monkeypatch.setattr(os, "getloadavg", lambda: (float(busy * cores) + 1.0, 0.0, 0.0))
    expected = 1 if busy else cores
    assert default_threads() == expected
    with open_artifact(gguf) as artifact:
        assert artifact.engine == "llama.cpp"
        assert (artifact.backend.llm.n_threads, artifact.backend.llm.n_threads_batch) == (expected, expected)
    onnx = export_onnx(open_checkpoint(MODEL), tmp_path / "onnx", "f32", certificate=False).path
    with open_artifact(onnx) as artifact:
        assert artifact.backend.session.get_session_options().intra_op_num_threads == expected


@pytest.mark.parametrize("threads", [None, 1])
def test_bench_compare_times_both_engines_on_the_same_threads(run_cli, gguf, monkeypatch, threads):
    """Every llama.cpp context bench opens (edgelm's backend, llama-cpp-python's own loop) gets one count
    for decode and for prompt batches: before, edgelm took every logical CPU and the raw engine half."""
    import llama_cpp

    from edgelm.runtime.backend import physical_cores

    seen = []

    class Recorded(llama_cpp.Llama):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            seen.append((self.n_threads, self.n_threads_batch))

    monkeypatch.setattr(llama_cpp, "Llama", Recorded)
    extra = ["--threads", str(threads)] if threads else []
    code, out, err = run_cli("bench", gguf, "--prompt-tokens", 8, "--new-tokens", 4, "--compare", "--json", *extra)
    assert code == 0, err
    report = json.loads(out)
    want = threads or physical_cores()  # not the load's count: two benches back to back time the same threads
    assert report["threads"] == want and report["raw_engine"] == "llama-cpp-python"
    assert seen == [(want, want), (want, want)]


def _long_context_gguf(gguf: Path, target: Path) -> Path:
    from gguf import GGUFValueType

    from .gguf_edit import rewrite_gguf

    return rewrite_gguf(gguf, target, add={"llama.context_length": (131072, GGUFValueType.UINT32)}, drop_keys=("llama.context_length",))


def test_context_defaults_to_the_training_context_up_to_4096(run_cli, gguf, tmp_path, caplog, capsys):
    import edgelm
    from edgelm.formats import open_artifact

    long = _long_context_gguf(gguf, tmp_path / "long.gguf")
    with open_artifact(long) as artifact:
        assert artifact.backend.context_length == 4096 and artifact.backend.llm.n_ctx() == 4096  # before: 131,072 allocated
    with open_artifact(gguf) as artifact:
        assert artifact.backend.llm.n_ctx() == 4096  # the training context, when it is below the cap
    model = edgelm.load(long, context_length=8192)
    assert model.artifact.backend.llm.n_ctx() == 8192
    model.artifact.close()
    with caplog.at_level("INFO", logger="edgelm"):
        assert edgelm.load(MODEL, context_length=5000).artifact.backend.context_length == 5000
    assert "above the 4096 positions the model declares" in caplog.text
    capsys.readouterr()  # the note, printed by the handler an earlier command installed
    long_prompt = " ".join([PROMPT] * 8)
    assert_user_error(run_cli("generate", long, "--prompt", long_prompt, "-c", 32), "the context holds 32")
    code, out, err = run_cli("generate", long, "--prompt", long_prompt, "--ctx-size", 32, "--truncate", "--max-new-tokens", 4, "--json")
    assert code == 0 and len(json.loads(out)["tokens"]) == 4, err


def _edgelm(*args, stdin: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgelm", *map(str, args)], input=stdin, capture_output=True, text=True, timeout=300)


def test_prompt_from_a_file_from_standard_input_and_from_a_pipe(tmp_path):
    (tmp_path / "prompt.txt").write_text(PROMPT, encoding="utf-8")
    gen = ["generate", MODEL, "--max-new-tokens", 6, "--json"]
    # `-f /dev/stdin` as llama.cpp reads it (round 8: "not a regular file" for a pipe), and `--file -`
    runs = [_edgelm(*gen, "--prompt", PROMPT, stdin=""), _edgelm(*gen, "--file", tmp_path / "prompt.txt", stdin=""),
            _edgelm(*gen, "-f", tmp_path / "prompt.txt"), _edgelm(*gen, "--prompt", "-", stdin=PROMPT), _edgelm(*gen, stdin=PROMPT),
            _edgelm(*gen, "-f", "/dev/stdin", stdin=PROMPT), _edgelm(*gen, "--file", "-", stdin=PROMPT)]
    assert all(run.returncode == 0 for run in runs), [run.stderr for run in runs]
    results = [json.loads(run.stdout) for run in runs]
    assert all(r["prompt"] == PROMPT and r["tokens"] == results[0]["tokens"] for r in results), results
    # one trailing newline, as `echo` and an editor's saved file end, is dropped as llama.cpp's -f drops it (stranger 45); a
    # second is the text's own
    (tmp_path / "saved.txt").write_text(PROMPT + "\n", encoding="utf-8")
    ended = [_edgelm(*gen, "-f", tmp_path / "saved.txt"), _edgelm(*gen, stdin=PROMPT + "\n"), _edgelm(*gen, stdin=PROMPT + "\n\n")]
    assert [json.loads(run.stdout)["prompt"] for run in ended] == [PROMPT, PROMPT, PROMPT + "\n"], [run.stderr for run in ended]
    assert json.loads(ended[0].stdout)["tokens"] == results[0]["tokens"]
    both = _edgelm(*gen, "--prompt", PROMPT, "--file", tmp_path / "prompt.txt")
    assert both.returncode == 2 and "--prompt and --file both give the prompt" in both.stderr
    empty = _edgelm(*gen, stdin="")  # round 8: a closed or empty stdin was "the prompt is empty after tokenization"
    assert empty.returncode == 2 and "no prompt: standard input is empty" in empty.stderr, empty.stderr
    missing = _edgelm(*gen, "--file", tmp_path / "none.txt")
    assert missing.returncode == 2 and "text file not found" in missing.stderr and "--file" in missing.stderr


def _chat_reply(*options: str, said: str = "Good morning, how do you do?") -> str:
    """The first reply of a piped `edgelm chat`, greedy."""
    run = _edgelm("chat", MODEL, "--temperature", 0, "--max-new-tokens", 16, *options, stdin=said + "\n")
    assert run.returncode == 0, run.stderr
    assert "tok/s" not in run.stdout and "tok/s" in run.stderr  # counts go to standard error, as llama-cli's timings
    assert "> " not in run.stdout  # piped, the prompt goes to standard error: the replies alone on stdout
    return run.stdout.removesuffix("\n").removesuffix("\n")  # the reply's end of line, then the one at end of input


def test_chat_has_stop_strings_and_a_repetition_penalty():
    reply = _chat_reply()
    words = reply.split()
    stop = " ".join(words[3:5])  # two words: several tokens, so the stop string spans tokens
    stopped = _chat_reply("--stop", stop)
    assert stopped == reply[: reply.index(stop)] and stop not in stopped, (reply, stopped)
    assert _chat_reply("--repetition-penalty", "1.5") != reply
    run = _edgelm("chat", MODEL, "--repetition-penalty", 0, stdin="hi\n")
    assert run.returncode == 2 and "'--repeat-penalty': must be a finite number above 0, not 0" in run.stderr


def test_python_chat_renders_as_transformers_and_answers_as_the_cli():
    from transformers import AutoTokenizer

    import edgelm

    model = edgelm.load(MODEL)
    said = "Good morning, how do you do?"
    assert model.chat([{"role": "user", "content": said}], max_new_tokens=16, temperature=0) == _chat_reply(said=said)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "How?"}]
    rendered = AutoTokenizer.from_pretrained(MODEL).apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    reply = model.chat(messages, max_new_tokens=12)
    assert reply == model.generate(rendered, max_new_tokens=12) and reply
    pieces = list(model.chat(messages, max_new_tokens=12, stream=True))
    assert "".join(p.text for p in pieces) == reply
    assert model.chat(messages, max_new_tokens=12, stop=[reply[3:9]]) == reply[: reply.index(reply[3:9])]
    for bad in ([], [{"role": "assistant", "content": "Hi."}]):
        with pytest.raises(ValueError):
            model.chat(bad)
    for bad in ([{"role": "user"}], [{"role": "user", "content": b"hi"}]):  # a wrong type: TypeError (round 12b: ValueError)
        with pytest.raises(TypeError, match="messages are dicts"):
            model.chat(bad)


def _gguf_types(path: Path) -> tuple:
    from gguf import GGUFReader

    reader = GGUFReader(str(path))
    return reader.fields["general.file_type"].contents(), sorted((t.name, t.tensor_type.name) for t in reader.tensors)


def test_quant_takes_llama_cpp_type_names(run_cli, tmp_path):
    """llama-quantize's names (from gguf-py's LlamaFileType) in any case, as --gguf-type gives them."""
    for quant, gguf_type in (("q4_k_m", "Q4_K_M"), ("Q8_0", "Q8_0"), ("q5_k_s", "Q5_K_S")):
        assert run_cli("export", MODEL, "--quant", quant, "--out", tmp_path / f"{quant}.gguf")[0] == 0
        assert run_cli("export", MODEL, "--quant", "f16", "--gguf-type", gguf_type, "--out", tmp_path / f"{gguf_type}-t.gguf")[0] == 0
        assert _gguf_types(tmp_path / f"{quant}.gguf") == _gguf_types(tmp_path / f"{gguf_type}-t.gguf")
    import shutil

    copy = shutil.copytree(MODEL, tmp_path / "models" / "tiny-rope")
    assert run_cli("export", copy, "--quant", "Q4_K_M")[0] == 0  # the default name says the type
    assert (copy.parent / "tiny-rope-q4_k_m.gguf").is_file()
    assert_user_error(run_cli("export", MODEL, "--quant", "q4_k_x", "--out", tmp_path / "x.gguf"), "unknown --quant 'q4_k_x'", "Q4_K_M")
    assert_user_error(run_cli("export", MODEL, "--quant", "Q8_0", "--gguf-type", "Q4_0", "--out", tmp_path / "x.gguf"), "name two types")
    assert_user_error(run_cli("export", MODEL, "--format", "onnx", "--quant", "q4_k_m", "--out", tmp_path / "x"),
                      "unknown --quant 'q4_k_m' for ONNX", "--format gguf")


def test_onnx_int4_block_size_and_accuracy_level(run_cli, tmp_path):
    import onnx

    def matmul_nbits(folder: Path) -> set:
        graph = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph
        return {(a["block_size"], a["accuracy_level"]) for a in
                ({x.name: onnx.helper.get_attribute_value(x) for x in n.attribute} for n in graph.node if n.op_type == "MatMulNBits")}

    assert run_cli("export", MODEL, "--format", "onnx", "--quant", "int4", "--out", tmp_path / "default")[0] == 0
    code, _, err = run_cli("export", MODEL, "--format", "onnx", "--quant", "int4", "--int4-block-size", 128, "--int4-accuracy-level", 1,
                           "--out", tmp_path / "b128")
    assert code == 0 and "block 128" in err and "accuracy_level 1" in err, err
    assert matmul_nbits(tmp_path / "default") == {(32, 4)} and matmul_nbits(tmp_path / "b128") == {(128, 1)}
    manifest = json.loads((tmp_path / "b128" / "edgelm.json").read_text())["int4_options"]
    assert (manifest["block_size"], manifest["accuracy_level"]) == (128, 1)
    code, out, err = run_cli("generate", tmp_path / "b128", "--prompt", PROMPT, "--max-new-tokens", 4, "--json")
    assert code == 0 and len(json.loads(out)["tokens"]) == 4, err
    onnx_export = ["export", MODEL, "--format", "onnx", "--out", tmp_path / "x"]
    assert_user_error(run_cli(*onnx_export, "--quant", "int4", "--int4-block-size", 48), "--int4-block-size 48", "16, 32, 64, 128, 256")
    assert_user_error(run_cli(*onnx_export, "--quant", "int4", "--int4-accuracy-level", 5), "--int4-accuracy-level 5", "4 (int8)")
    assert_user_error(run_cli(*onnx_export, "--quant", "int8", "--int4-block-size", 64), "refine --quant int4")
    assert_user_error(run_cli("export", MODEL, "--quant", "int4", "--int4-accuracy-level", 1, "--out", tmp_path / "x.gguf"),
                      "apply to --format onnx only")


def test_gpu_layers_without_a_gpu_build_says_it_runs_on_the_cpu(run_cli, gguf):
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        pytest.skip("this llama-cpp-python build offloads to a GPU")
    code, out, err = run_cli("generate", gguf, "--prompt", PROMPT, "--max-new-tokens", 2, "--gpu-layers", 99)
    assert code == 0 and "note: --gpu-layers 99: this llama-cpp-python build has no GPU backend" in err, err
    code, out, err = run_cli("generate", gguf, "--prompt", PROMPT, "--max-new-tokens", 2)
    assert code == 0 and "gpu-layers" not in err


@pytest.fixture(scope="module")
def onnx_folder(tmp_path_factory):
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    return export_onnx(open_checkpoint(MODEL), tmp_path_factory.mktemp("onnx") / "onnx", "f32").path


@pytest.mark.parametrize("artifact,args,needles", [
    ("onnx", ("parity", "{path}", "--reference", MODEL, "--tokens", 4, "--f32-kv-cache"), ("--f32-kv-cache", "fixed at export")),
    ("onnx", ("generate", "{path}", "--prompt", PROMPT, "--gpu-layers", 2), ("--gpu-layers", "--provider cuda")),
    ("gguf", ("generate", "{path}", "--prompt", PROMPT, "--provider", "xnnpack"), ("--provider", "--gpu-layers N")),
    ("gguf", ("perplexity", "{path}", "--provider", "cuda"), ("--provider",)),
    ("model", ("generate", "{path}", "--prompt", PROMPT, "--gpu-layers", 1), ("--gpu-layers", "--device cuda")),
    ("model", ("generate", "{path}", "--prompt", PROMPT, "--provider", "cuda"), ("--provider", "--device cuda")),
    ("onnx", ("generate", "{path}", "--prompt", PROMPT, "--allow-pickle"), ("--allow-pickle applies to a model folder", "drop --allow-pickle")),
    ("gguf", ("perplexity", "{path}", "--allow-pickle"), ("--allow-pickle applies to a model folder", "not to a GGUF file", "drop --allow-pickle")),
    # inspect passes the same gate as every command that runs the artifact (it accepted these and said nothing)
    ("onnx", ("inspect", "{path}", "--allow-pickle"), ("--allow-pickle applies to a model folder", "not to an ONNX folder")),
    ("gguf", ("inspect", "{path}", "--allow-pickle"), ("--allow-pickle applies to a model folder", "drop --allow-pickle")),
    ("gguf", ("inspect", "{path}", "--position-encoding", "none"), ("a GGUF file carries its position encoding", "drop --position-encoding")),
    ("onnx", ("inspect", "{path}", "--head-temperatures", MODEL), ("an ONNX folder carries its position encoding",)),
])
def test_an_option_the_artifacts_engine_has_no_use_for_is_refused(run_cli, gguf, onnx_folder, artifact, args, needles):
    """`parity --f32-kv-cache` on an ONNX folder ran the graph's own cache and said nothing; --gpu-layers and
    --provider were as silently dropped by the engines without them, --allow-pickle by every exported
    artifact, and `inspect` took --allow-pickle, --position-encoding and --head-temperatures on any artifact.
    Each is one line naming the file."""
    path = {"onnx": onnx_folder, "gguf": gguf, "model": MODEL}[artifact]
    result = run_cli(*[str(path) if a == "{path}" else a for a in args])
    assert_user_error(result, *needles, str(path))


def test_an_explicit_device_on_an_engine_without_one_is_refused(run_cli, gguf, onnx_folder, monkeypatch):
    """On a GPU machine `--device cuda` ran an ONNX folder and a llama.cpp GGUF on the CPU and said nothing
    (torch's view of the GPU stands in for one here); now one line names the option their engine takes."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    result = run_cli("generate", onnx_folder, "--prompt", PROMPT, "--max-new-tokens", 2, "--device", "cuda")
    assert_user_error(result, "--device applies to a model folder", "--provider cuda", str(onnx_folder))
    result = run_cli("perplexity", gguf, "--device", "cuda")
    assert_user_error(result, "--device", "llama.cpp runs this file", "--gpu-layers N", str(gguf))


def test_device_auto_runs_every_engine_on_a_gpu_machine(run_cli, gguf, onnx_folder, monkeypatch):
    """auto is cuda wherever torch sees a GPU: an ONNX folder and a GGUF llama.cpp runs take it as asking
    for nothing (their GPU options are --provider and --gpu-layers), as parity's default --device auto."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    for path, engine in [(onnx_folder, "onnxruntime (cpu)"), (gguf, "llama.cpp")]:
        code, out, err = run_cli("generate", path, "--prompt", PROMPT, "--max-new-tokens", 2, "--device", "auto", "--json")
        assert code == 0 and json.loads(out)["engine"] == engine, err


def test_device_reaches_the_engines_that_take_it(run_cli, preset_dir, tmp_path):
    """A model folder (torch) and a GGUF edgelm's ggml executor runs take --device cuda: not refused by the
    table, they ask torch for the GPU this machine lacks."""
    import torch

    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA GPU")
    tokenformer = export_gguf(open_checkpoint(preset_dir("tiny-tokenformer")), tmp_path / "tf.gguf", "f32", certificate=False).path
    for path in [MODEL, tokenformer]:
        assert_user_error(run_cli("generate", path, "--prompt", PROMPT, "--device", "cuda"), "torch sees no CUDA GPU")


def test_parity_and_perplexity_read_only_the_head_of_a_huge_text(run_cli, gguf, tmp_path, monkeypatch):
    """parity (--tokens) and perplexity (--max-tokens) read and encoded the whole --text before cutting it to
    the window: a 2 GiB text (here sparse: NULs after the novel's opening) was refused past 256 MB and
    would have cost its whole encoding. Now only its head is read, and the numbers are the plain text's."""
    from edgelm import cli, tokenizer

    plain, huge = tmp_path / "plain.txt", tmp_path / "huge.txt"
    plain.write_bytes(cli.HELD_OUT_TEXT.read_bytes())
    huge.write_bytes(cli.HELD_OUT_TEXT.read_bytes())
    os.truncate(huge, 2 << 30)
    sizes = []
    real = tokenizer.read_text_head
    monkeypatch.setattr(tokenizer, "read_text_head", lambda path, size, what: sizes.append(size) or real(path, size, what))
    for args in [("perplexity", gguf, "--max-tokens", 200, "--json"),
                 ("parity", gguf, "--reference", MODEL, "--tokens", 64, "--device", "cpu", "--json")]:
        (code, out, err), (huge_code, huge_out, huge_err) = [run_cli(*args, "--text", text) for text in (plain, huge)]
        assert code == huge_code == 0, (err, huge_err)
        assert json.loads(out) == json.loads(huge_out)
    assert sizes and max(sizes) <= 64 << 10, sizes  # bytes read of the 2 GiB


@pytest.mark.parametrize("model", ["tiny-nope", "tiny-rope", "tiny-ngen4", "tiny-tokenformer"])
def test_the_head_of_a_text_encodes_as_the_whole(model, tmp_path):
    """leading_ids (parity, perplexity --max-tokens, calibration, the certificate) gives the first ids of
    encoding the whole file, for every shipped text and tokenizer, whatever the count; and where the head
    is cut inside a character of several bytes."""
    from edgelm.tokenizer import leading_ids, load_tokenizer

    tok = load_tokenizer(MODEL.parent / model)
    mixed = tmp_path / "mixed.txt"
    mixed.write_text("Café crème, naïve — 日本語のテキスト 🙂🙂 ½ Ωmega\n" * 3000, encoding="utf-8")
    for text in sorted((Path(__file__).resolve().parents[1] / "edgelm" / "assets" / "text").glob("*.txt")) + [mixed]:
        whole = tok.encode(text.read_text(encoding="utf-8"))
        for count in (1, 2, 3, 129, 257, 1024, 4096, len(whole), len(whole) + 10):
            assert leading_ids(tok, text, count) == whole[:count], (text.name, count)


def test_bench_reports_the_whole_commands_peak_rss_too(gguf):
    """bench reported 72 MB of peak RSS, measured before its roofline copy made the process larger: now the model's
    run and the whole command's peak, each labelled, the copy's two arrays (four times the last-level cache, at least
    128 MiB each) in the latter. Started by a process holding more than the whole bench (this one, below), it reported
    that process's peak too: Linux's ru_maxrss survives fork and exec, so its own is read from /proc's VmHWM."""
    from edgelm.benchmark import _last_level_cache_mb

    copy = 2 * max(128, 4 * _last_level_cache_mb()) << 20
    fat = bytearray(copy + (1 << 30))
    fat[::4096] = b"\1" * len(range(0, len(fat), 4096))  # touched: resident
    result = _edgelm("bench", str(gguf), "--prompt-tokens", "8", "--new-tokens", "4", "--threads", "1", "--json")
    del fat
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert copy + (1 << 30) > report["command_peak_rss_bytes"] >= copy > report["peak_rss_bytes"] > 0, report


def test_an_onnx_kv_cache_type_edgelm_does_not_run_is_named(run_cli, onnx_folder, monkeypatch):
    """A graph whose KV inputs are of a type edgelm has no buffers for (here: float32 made unknown) was a
    KeyError inside the backend, reported as 'onnxruntime cannot load model.onnx'."""
    from edgelm.runtime import onnx_backend

    monkeypatch.setattr(onnx_backend, "CACHE_DTYPES", {"tensor(float16)": np.float16})
    assert_user_error(run_cli("generate", onnx_folder, "--prompt", PROMPT), "the graph's KV cache is tensor(float); edgelm runs tensor(float16)")


def test_threads_applies_to_a_model_folder(run_cli, monkeypatch):
    """--threads was silently ignored by the torch backend (a model folder): it now sets torch's threads
    while the model computes, and leaves the process's setting as it was."""
    import torch

    from edgelm.models import CausalLM

    before = torch.get_num_threads()
    threads = 1 if before != 1 else 2
    seen, real = [], CausalLM.forward
    monkeypatch.setattr(CausalLM, "forward", lambda self, *a, **k: seen.append(torch.get_num_threads()) or real(self, *a, **k))
    code, _, err = run_cli("generate", MODEL, "--prompt", PROMPT, "--max-new-tokens", 2, "--threads", threads)
    assert code == 0, err
    assert seen and set(seen) == {threads} and torch.get_num_threads() == before, (seen, before)


@pytest.mark.parametrize("name,value", [("context_length", -5), ("context_length", 2.5), ("context_length", True), ("context_length", 0),
                                        ("context_length", 1), ("threads", 0), ("threads", 1.5), ("gpu_layers", -1)])
def test_python_load_refuses_counts_that_are_no_whole_number_in_range(gguf, name, value):
    """Stranger finding: edgelm.load(…, context_length=-5) on a TokenFormer GGUF aborted in ggml (exit 134),
    2.5 on a model folder decoded forever, True 'held True tokens', -5 on a llama.cpp GGUF blamed the file."""
    import edgelm

    error = ValueError if type(value) is int else TypeError  # a wrong type is a TypeError, as the README says (stranger 22)
    with pytest.raises(error, match=f"{name} must be a whole number from"):
        edgelm.load(gguf, **{name: value})
    with pytest.raises(error, match=f"{name} must be a whole number from"):
        edgelm.load(MODEL, **{name: value})


@pytest.mark.parametrize("option", [{"draft": "3"}, {"draft": 1.5}, {"lookup_ngram": 2.0}, {"max_new_tokens": "3"}, {"seed": "1"},
                                    {"top_k": 2.5}, {"draft": True}])
def test_python_generate_calls_a_count_of_the_wrong_type_a_type_error(option):
    """Stranger 22: these were ValueErrors, while temperature="0.5" was a TypeError and the README promises TypeError."""
    import edgelm

    with edgelm.load(MODEL) as model, pytest.raises(TypeError, match=f"{next(iter(option))} must be a whole number from"):
        model.generate("Hello", **({"max_new_tokens": 2} | option))


@pytest.mark.parametrize("name,value,words", [("threads", 10**6, "threads must be at most the"), ("device", "tpu", "device must be one of auto, cpu, cuda")])
def test_python_load_refuses_more_threads_than_cpus_and_unknown_devices(gguf, name, value, words):
    """Stranger finding: threads=10**6 on an ONNX folder grew to 8 GB and never opened (the CLI caps --threads);
    device="tpu" was torch's own error from deep in Module.to."""
    import edgelm

    with pytest.raises(ValueError, match=words):
        edgelm.load(MODEL, **{name: value})


def test_generate_says_when_the_context_ends_the_reply(run_cli):
    """Stranger finding: generate -c 16 --max-new-tokens 100 stopped after 13 tokens with exit 0 and no word."""
    code, out, err = run_cli("generate", MODEL, "--prompt", "Hello", "--max-new-tokens", 100, "-c", 16, "--json")
    assert code == 0, err
    produced = len(json.loads(out)["tokens"])  # no eos from this model in 13 tokens: the context ended the reply
    assert err.strip() == f"note: the 16-token context leaves room for {produced} new tokens after the {16 - produced}-token prompt, not 100: " \
                          "the reply ends there at the latest"
    code, out, err = run_cli("generate", MODEL, "--prompt", "Hello", "--max-new-tokens", 4, "-c", 16)
    assert code == 0 and err == "", err
    # the Python API says it too, as a warning Python prints without any logging set up (stranger 45: an INFO record, unseen)
    script = f"import edgelm\nwith edgelm.load({str(MODEL)!r}, context_length=16) as m: m.generate('Hello', max_new_tokens=100)"
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "the 16-token context leaves room for" in done.stderr, done.stderr


def test_bench_compare_says_when_there_is_no_raw_engine(run_cli):
    """Stranger finding: --compare on a model folder or a TokenFormer GGUF printed no raw row and no word."""
    code, out, err = run_cli("bench", MODEL, "--compare", "--prompt-tokens", 8, "--new-tokens", 2, "--threads", 1, "--json")
    assert code == 0, err
    assert json.loads(out)["raw_engine"] is None
    assert "note: --compare: no engine but edgelm's runs a model folder (torch (cpu)); only edgelm was timed" in err, err


def test_python_stop_takes_one_text_or_several_and_refuses_an_empty_one():
    """Stranger finding: generate(stop=[""]) returned '' where the CLI refuses --stop ""; and a str was split into
    one-character stop strings (tuple(", a"))."""
    import edgelm

    model = edgelm.load(MODEL)
    whole = model.generate(PROMPT, max_new_tokens=12)
    cut = next(i for i in range(2, len(whole)) if whole[i] == " " and whole[:i].strip())  # a two-character stop inside the reply
    stop = whole[cut - 1:cut + 1]
    assert model.generate(PROMPT, max_new_tokens=12, stop=stop) == whole[:whole.find(stop)]
    assert model.generate(PROMPT, max_new_tokens=12, stop=[stop]) == whole[:whole.find(stop)]
    for bad in ([""], ["x", ""], [3], 5):  # stop=5 was Python's "'int' object is not iterable"
        with pytest.raises(ValueError, match="stop must be a list of non-empty texts"):
            model.generate(PROMPT, max_new_tokens=4, stop=bad)
    # None is no stop, as llama-cpp-python's and OpenAI's request objects pass it (stranger 50: refused as (None,))
    assert model.generate(PROMPT, max_new_tokens=12, stop=None) == whole
    assert model.chat([{"role": "user", "content": "Hello"}], max_new_tokens=4, stop=None) == \
        model.chat([{"role": "user", "content": "Hello"}], max_new_tokens=4)


def test_python_chat_names_what_messages_must_be():
    """Stranger finding: chat(None) and chat("hello") were Python's "'NoneType' object is not iterable" and a
    ValueError about dicts for a text."""
    import edgelm

    model = edgelm.load(MODEL)
    for bad in (None, "hello", {"role": "user", "content": "hi"}):
        with pytest.raises(TypeError, match=r'messages is a list of dicts \{"role": str, "content": str\}, not '):
            model.chat(bad, max_new_tokens=2)


@pytest.mark.parametrize("name,fmt", [("tiny-rope", "gguf"), ("tiny-tokenformer", "gguf"), ("tiny-rope", "folder")])
def test_threads_sharing_one_model_are_served_one_after_another(name, fmt, tmp_path):
    """Stranger finding: four threads calling generate() on one loaded GGUF aborted the process in llama.cpp
    (GGML_ASSERT, exit 134); on edgelm's executor one thread silently got another text. Each thread now gets
    the text the same call gives alone; a stream another thread's call overtook raises, never mixes."""
    import threading

    import edgelm
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    folder = MODEL.parent / name
    path = folder if fmt == "folder" else export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    model = edgelm.load(path)
    alone = model.generate(PROMPT, max_new_tokens=12, temperature=0)
    got = []

    def work():
        try:
            got.append(model.generate(PROMPT, max_new_tokens=12, temperature=0))
        except Exception as exc:  # noqa: BLE001 - what a thread met is the result
            got.append(repr(exc))

    for _ in range(2):
        threads = [threading.Thread(target=work) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert got == [alone] * 8, got
    stream = model.stream(PROMPT, max_new_tokens=12, temperature=0)
    next(stream)
    other = threading.Thread(target=work)
    other.start()
    other.join()
    with pytest.raises(RuntimeError, match="ran another generation since it started"):
        list(stream)


@pytest.mark.parametrize("name,fmt", [("tiny-rope", "gguf"), ("tiny-tokenformer", "gguf"), ("tiny-rope", "folder")])
def test_a_model_closes_and_then_refuses_every_call(name, fmt, tmp_path):
    """Stranger finding (round 7): a Model had no close() and no `with`: its engine's memory stayed until the object
    was collected. Once closed, every call (a stream already open too) raises instead of calling into freed memory;
    edgelm.UserError is what a bad path raises, exported beside load."""
    import edgelm
    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    assert {"load", "UserError"} <= set(dir(edgelm)) and "os" not in dir(edgelm)
    with pytest.raises(edgelm.UserError, match="no such file or folder"):
        edgelm.load(tmp_path / "nowhere")
    folder = MODEL.parent / name
    path = folder if fmt == "folder" else export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    with edgelm.load(path) as model:
        assert model.generate(PROMPT, max_new_tokens=2, temperature=0)
        stream = model.stream(PROMPT, max_new_tokens=8, temperature=0)
        next(stream)
    for call in (lambda: model.generate(PROMPT, max_new_tokens=2), lambda: list(stream), lambda: model.perplexity(PROMPT * 4, ctx=8),
                 lambda: model.chat([{"role": "user", "content": "hi"}], max_new_tokens=2)):
        with pytest.raises(RuntimeError, match="this model is closed: load it again"):
            call()
    model.close()  # a second close does nothing


def test_llama_cpp_option_names_and_type_names_are_taken(run_cli):
    """What llama.cpp's users type (stranger round 7: "No such option" for -n, --temp, -t, -s, --repeat-penalty; MOSTLY_Q4_K_M, as
    gguf-py's LlamaFileType spells it and the README promised, refused; --provider CPU and --kv-cache INT8 refused for their case)."""
    from edgelm.export.gguf import resolve_type
    from edgelm.runtime.onnx_backend import PROVIDERS

    long = run_cli("generate", MODEL, "--prompt", PROMPT, "--max-new-tokens", 6, "--temperature", 0.8, "--seed", 3, "--threads", 1,
                   "--repetition-penalty", 1.2, "--json")
    short = run_cli("generate", MODEL, "-p", PROMPT, "-n", 6, "--temp", 0.8, "-s", 3, "-t", 1, "--repeat-penalty", 1.2, "--json")
    assert long[0] == short[0] == 0 and json.loads(long[1])["tokens"] == json.loads(short[1])["tokens"], (long, short)
    assert run_cli("generate", MODEL, "--n-predict", 2, "--prompt", PROMPT)[0] == 0
    assert resolve_type("f16", "MOSTLY_Q4_K_M") == resolve_type("int4", "q4_k_m") == "Q4_K_M" and resolve_type("f16", "ALL_F32") == "F32"
    # round 8: --quant took the names without the prefix only
    assert resolve_type("MOSTLY_Q4_0", None) == "Q4_0" and resolve_type("mostly_q4_k_m", "Q4_K_M") == "Q4_K_M"
    assert resolve_type("ALL_F32", None) == "F32"
    assert PROVIDERS.get("CPU".lower()) == "CPUExecutionProvider"


def test_calibrate_takes_llama_cpp_type_names(run_cli, tmp_path):
    """Stranger finding (round 8): `--quant q4_k_m --calibrate` (the type --quant int4 makes) was refused with "apply
    to --quant int4", while `--quant int4 --gguf-type Q4_K_S --calibrate` ran. For GGUF any quantized type takes the
    importance matrix; ONNX calibrates int4."""
    code, out, err = run_cli("export", MODEL, "--quant", "q4_k_s", "--calibrate", "--out", tmp_path / "c.gguf", "--no-certificate", "--json")
    assert code == 0 and json.loads(out)["file_type"] == "Q4_K_S" and "importance matrix" in " ".join(json.loads(out)["notes"]), (out, err)
    code, _, err = run_cli("export", MODEL, "--quant", "f16", "--calibrate", "--out", tmp_path / "f.gguf")
    assert code == 2 and "apply to a quantized type" in err, err
    code, _, err = run_cli("export", MODEL, "--format", "onnx", "--quant", "int8", "--calibrate", "--out", tmp_path / "o")
    assert code == 2 and "apply to --quant int4" in err, err


def test_quiet_after_the_command(run_cli):
    """Stranger finding (round 8): `edgelm generate … -q` was "No such option: -q": --quiet is the program's option,
    and it is taken after the command too; a -q that is an option's value (`--prompt -q`) stays that value."""
    loud = run_cli("generate", MODEL, "-p", PROMPT, "-n", 2, "-c", 5000)
    quiet = run_cli("generate", MODEL, "-p", PROMPT, "-n", 2, "-c", 5000, "-q")
    assert loud[0] == quiet[0] == 0 and "note: a context of 5000 tokens" in loud[2] and quiet[2] == "", (loud, quiet)
    code, out, err = run_cli("generate", MODEL, "-n", 2, "--prompt", "-q", "--json")
    assert code == 0 and json.loads(out)["prompt"] == "-q", (out, err)


def test_a_byte_order_mark_is_not_text(run_cli, tmp_path):
    """Stranger finding (round 8): a prompt file saved by Windows' Notepad begins with a UTF-8 byte-order mark, which
    generate echoed and continued from and perplexity counted as tokens."""
    plain, marked = tmp_path / "plain.txt", tmp_path / "marked.txt"
    plain.write_text(PROMPT)
    marked.write_bytes(b"\xef\xbb\xbf" + PROMPT.encode())
    results = [run_cli("generate", MODEL, "--file", path, "-n", 3, "--json") for path in (plain, marked)]
    assert results[0][0] == results[1][0] == 0 and json.loads(results[0][1]) == json.loads(results[1][1]), results
    assert json.loads(results[1][1])["prompt"] == PROMPT


def test_bench_says_when_other_work_shares_its_cores(run_cli, monkeypatch):
    """Stranger finding (round 7): on a busy 2-core machine bench's decode read 2 and 1,459 tok/s in two runs, with no
    word; the load average taken before timing is reported, and a note says when it exceeds the cores left free."""
    import os

    monkeypatch.setattr(os, "getloadavg", lambda: (5.0, 5.0, 5.0))
    code, out, err = run_cli("bench", MODEL, "--prompt-tokens", 8, "--new-tokens", 2, "--threads", 1, "--json")
    assert code == 0 and json.loads(out)["load_average"] == 5.0 and "note: the load average was 5.0 on" in err, (out, err)
    monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))
    code, out, err = run_cli("bench", MODEL, "--prompt-tokens", 8, "--new-tokens", 2, "--threads", 1, "--json")
    assert code == 0 and "load average" not in err, err


def test_ignore_eos_bans_every_end_token_the_engine_knows(tmp_path):
    """Stranger round 12b: on a GGUF whose end token was config.json's (written as its eot), --ignore-eos still stopped
    there: llama.cpp's own end-of-generation set is banned, as its --ignore-eos does."""
    import shutil

    from edgelm.export.gguf import export_gguf
    from edgelm.models import open_checkpoint

    folder = shutil.copytree(MODEL, tmp_path / "model")
    first = json.loads(_edgelm("generate", folder, "-p", PROMPT, "-n", 1, "--json").stdout)["tokens"][0]
    (folder / "generation_config.json").write_text(json.dumps({"eos_token_id": first}))  # the reply's first token ends it
    gguf = export_gguf(open_checkpoint(folder), tmp_path / "m.gguf", "f16", certificate=False).path
    for path in (folder, gguf):
        ended = json.loads(_edgelm("generate", path, "-p", PROMPT, "-n", 6, "--json").stdout)
        assert ended["tokens"] == [], (path, ended)
        run = _edgelm("generate", path, "-p", PROMPT, "-n", 6, "--json", "--ignore-eos")
        assert run.returncode == 0 and len(json.loads(run.stdout)["tokens"]) == 6 and first not in json.loads(run.stdout)["tokens"], run


@pytest.mark.parametrize("where,name", [("load", "allow_pickle"), ("load", "f32_kv_cache"), ("load", "all_logits"),
                                        ("generate", "truncate"), ("generate", "ignore_eos"), ("chat", "stream"), ("chat", "context_shift")])
def test_python_switches_take_true_or_false_only(tmp_path, where, name):
    """Stranger 24: edgelm.load(folder, allow_pickle='false') unpickled the checkpoint (a string is truthy whatever it
    says: a value from a config file or an environment variable); truncate='yes' ran. Every switch is one check."""
    import shutil

    import torch

    import edgelm

    if where == "load":
        folder = tmp_path / "m"  # the shipped model's weights as a pickle: refused unless allow_pickle is True itself
        shutil.copytree(MODEL, folder)
        from safetensors.torch import load_file

        torch.save(load_file(folder / "model.safetensors"), folder / "pytorch_model.bin")
        (folder / "model.safetensors").unlink()
        with pytest.raises(TypeError, match=f"{name} must be True or False, not str 'false'"):
            edgelm.load(folder, **{name: "false"})
        return
    with edgelm.load(MODEL) as model, pytest.raises(TypeError, match=f"{name} must be True or False, not str 'false'"):
        if where == "generate":
            model.generate("Hello", max_new_tokens=2, **{name: "false"})
        else:
            model.chat([{"role": "user", "content": "Hello"}], max_new_tokens=2, **{name: "false"})


@pytest.mark.parametrize("call,name,words", [("generate", "max_tokens", "edgelm's is max_new_tokens"), ("stream", "repeat_penalty", "edgelm's is repetition_penalty"),
                                             ("generate", "threads", "an option of edgelm.load"), ("chat", "max_tokens", "edgelm's is max_new_tokens"),
                                             ("chat", "enable_thinking", "chat_template_kwargs")])
def test_python_calls_name_an_argument_they_do_not_take(call, name, words):
    """Stranger 23: generate('Hi', max_tokens=3), what an OpenAI user types, met "SamplingOptions.__init__() got an unexpected
    keyword argument 'max_tokens'": neither the call nor the name to use."""
    import edgelm

    with edgelm.load(MODEL) as model, pytest.raises(TypeError, match=rf"{call}\(\) takes no argument {name} \(.*{words}"):
        if call == "chat":
            model.chat([{"role": "user", "content": "Hello"}], **{name: 3})
        else:
            getattr(model, call)("Hello", **{name: 3})


def test_what_a_person_reads_names_what_is_there(run_cli, tmp_path):
    """Stranger 45: a llama export's summary said "(F32: norms and biases)" of a model without biases; inspect printed a
    raw {bid} placeholder; repr(edgelm.load(…)) was <edgelm.api.Model object at 0x…>."""
    import edgelm

    code, out, err = run_cli("export", MODEL, "--quant", "q8_0", "--out", tmp_path / "m.gguf", "--no-certificate")
    assert code == 0 and "(F32: norms)" in out, (out, err)
    code, out, err = run_cli("inspect", MODEL.parent / "tiny-nope", "--json")
    assert code == 0 and json.loads(out)["head_temperature_source"] == "checkpoint tensors model.layers.*.self_attn.scale_param", out
    model = edgelm.load(tmp_path / "m.gguf")
    assert repr(model) == f"<edgelm.Model {str(tmp_path / 'm.gguf')!r} on llama.cpp, context 4,096>"
    model.close()
    assert repr(model).endswith(", closed>")


def test_export_defaults_are_each_formats_own(run_cli, tmp_path):
    """--quant unset: f16 for GGUF, as llama.cpp's converter writes; f32 for ONNX, as Optimum exports (stranger 45: an f16
    ONNX default, which ONNX Runtime's CPU provider runs with casts, decoded 4.5× slower than int4). Named by it, beside
    the model folder."""
    import shutil

    model = shutil.copytree(MODEL, tmp_path / "tiny-rope")
    for fmt, name in (("gguf", "tiny-rope-f16.gguf"), ("onnx", "tiny-rope-f32-onnx")):
        code, out, err = run_cli("export", model, "--format", fmt, "--no-certificate")
        assert code == 0 and (tmp_path / name).exists(), (out, err)
    assert json.loads((tmp_path / "tiny-rope-f32-onnx" / "edgelm.json").read_text())["quantization"] == "f32"
