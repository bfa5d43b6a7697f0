"""A web bundle in a real browser: Debian's headless Chromium, driven by Playwright (its Python package
drives the installed browser; nothing is downloaded), the folder served on loopback as any static server
would serve it."""

from __future__ import annotations

import functools
import http.server
import shutil
import threading
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlencode

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
# headless WebGPU (SwiftShader where no GPU exists); no background traffic to hosts this machine cannot reach
CHROMIUM_ARGS = ["--no-sandbox", "--enable-unsafe-webgpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


@contextmanager
def served(folder: Path):
    """http://127.0.0.1:PORT serving `folder` (.mjs as JavaScript and .wasm as application/wasm, as the
    page's module imports and WebAssembly's streaming compile require)."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def run_page(folder: Path, backend: str, prompt: str, max_new_tokens: int, screenshot: Path | None = None,
             timeout_s: float = 300) -> dict:
    """Open the bundle's page with auto=1 and return what it leaves in window.edgelmResult: the backend it
    ran on and why, the prompt's ids, the generated ids and text, decode tok/s (or {"error": …})."""
    from playwright.sync_api import sync_playwright

    query = urlencode({"auto": 1, "backend": backend, "prompt": prompt, "max": max_new_tokens})
    with served(folder) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 960, "height": 600})
            page.goto(f"{url}/index.html?{query}")
            page.wait_for_function("window.edgelmResult !== null", timeout=timeout_s * 1000)
            result = page.evaluate("window.edgelmResult")
            if screenshot:
                page.screenshot(path=str(screenshot))
        finally:
            browser.close()
    return result
