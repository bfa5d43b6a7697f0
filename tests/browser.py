"""A web bundle in a real browser: Debian's headless Chromium, driven by Playwright (its Python package
drives the installed browser; nothing is downloaded), the folder served on loopback by `edgelm serve`'s
server (cross-origin isolated) or as any static server would serve it."""

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
def served_plain(folder: Path):
    """http://127.0.0.1:PORT serving `folder` as any static server does (`python -m http.server`): no
    cross-origin isolation headers."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def run_page(folder: Path, backend: str, prompt: str, max_new_tokens: int, screenshot: Path | None = None,
             timeout_s: float = 300, isolated: bool = True) -> dict:
    """Open the bundle's page with auto=1 and return what it leaves in window.edgelmResult: the backend it
    ran on and why, its WASM threads and whether the page was cross-origin isolated, the prompt's ids, the
    generated ids and text, load and first-token times, decode tok/s (or {"error": …}). The folder is
    served by `edgelm serve`'s server (isolated), or by a plain static server."""
    from playwright.sync_api import sync_playwright

    from edgelm.web_serve import serving

    query = urlencode({"auto": 1, "backend": backend, "prompt": prompt, "max": max_new_tokens})
    with (serving(folder) if isolated else served_plain(folder)) as url, sync_playwright() as playwright:
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
