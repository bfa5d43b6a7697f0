"""Serve a web bundle (`edgelm bundle --target web`) the way its page runs fastest: cross-origin isolated.

onnxruntime-web's WASM backend runs on several threads only in a cross-origin isolated page
(`self.crossOriginIsolated`: SharedArrayBuffer is allowed), which takes two response headers a plain static
server does not send: `Cross-Origin-Opener-Policy: same-origin` and `Cross-Origin-Embedder-Policy:
require-corp`. This server sends them (and `Cross-Origin-Resource-Policy: same-origin`, which require-corp
asks of every subresource), serves .mjs as JavaScript and .wasm as application/wasm (WebAssembly's
streaming compile refuses any other type), and answers byte ranges (`Range: bytes=a-b`) so a client can
fetch a large external-data file in pieces. Only the bundle's own files are served, read-only, and only
the ones its manifest lists (and the manifest).
"""

from __future__ import annotations

import functools
import http.server
import ipaddress
import re
import socket
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from .bundle_files import check_manifest
from .constants import BUNDLE_MANIFEST
from .errors import UserError

ISOLATION_HEADERS = {
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Embedder-Policy": "require-corp",
    "Cross-Origin-Resource-Policy": "same-origin",
}
MIME_TYPES = {
    ".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8", ".mjs": "text/javascript; charset=utf-8",
    ".wasm": "application/wasm", ".json": "application/json", ".onnx": "application/octet-stream",
    ".data": "application/octet-stream", ".ort": "application/octet-stream", ".png": "image/png",
}
# one range: each bound read as at most 18 digits (below 2**63; Python's int() refuses strings past 4,300 digits, which
# was a traceback in the handler and a dropped connection); a longer last byte is past any file: the end (RFC 9110
# §14.1.2 clamps a last byte past the end; bytes=0-99999999999999999999 had the whole file, 200, bytes=0-860 a 206)
_RANGE = re.compile(r"bytes=(\d{0,18})-(\d{0,18})(\d*)$")
# what a page served to this machine only may be asked for as: a browser sends the Host it resolved, so a page from
# another site whose name was made to resolve to 127.0.0.1 (DNS rebinding) asks with that site's name and is refused
LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
_HOST = re.compile(r"(?P<name>\[::1\]|[a-z0-9-]+(?:\.[a-z0-9-]+)*)(?::\d{1,5})?")
_BLOCK = 1 << 20


REQUEST_TIMEOUT_S = 30


class BundleHandler(http.server.SimpleHTTPRequestHandler):
    """A static handler for one bundle folder: isolation headers on every answer, the bundle's MIME
    types, single byte ranges, no directory listings and nothing outside the folder's top level."""

    extensions_map = {**http.server.SimpleHTTPRequestHandler.extensions_map, **MIME_TYPES}
    quiet = True
    # seconds a connection may wait on the client: one that sent half a request (or `GET /` without HTTP/1.x, which
    # waits for headers) held its thread for ever (a stranger's slowloris finding); socketserver closes it on timeout
    timeout = REQUEST_TIMEOUT_S
    files: frozenset[str] = frozenset()  # the names it serves: the manifest's files and the manifest

    def end_headers(self) -> None:
        for name, value in ISOLATION_HEADERS.items():
            self.send_header(name, value)
        self.send_header("Cache-Control", "no-cache")  # a bundle made again under the same name is not served stale
        self.send_header("X-Content-Type-Options", "nosniff")  # each file as the type it is served as, never sniffed
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        if not self.quiet:
            super().log_message(format, *args)

    def list_directory(self, path) -> None:  # a bundle is a page, not a file index
        self.send_error(404, "no listing")

    def send_head(self):
        # a request's target in absolute form (http://host:port/path), which RFC 9112 §3.2.2 says a server must take: its
        # host, not the Host header's, names the server; a stranger's `GET http://127.0.0.1:PORT/edgelm.json` was a 404
        try:
            target = urlsplit(self.path) if self.path.lower().startswith(("http://", "https://")) else None
        except ValueError:  # `http://[::1/x`: "Invalid IPv6 URL" was a traceback and a dropped connection (stranger 27)
            self.send_error(400, "not a valid request target")
            return None
        named = self.headers.get_all("Host") or []
        if target is not None:
            self.path, named = urlunsplit(("", "", target.path or "/", target.query, "")), [target.netloc]
        if not named and self.request_version == "HTTP/1.0":  # Host is HTTP/1.1's (RFC 9112 §3.2); a browser always sends
            named = ["localhost"]  # one, so a page elsewhere cannot use its absence to pass the loopback check below
        if len(named) != 1:  # RFC 9112 §3.2: none in an HTTP/1.1 request, or more than one, is a 400
            self.send_error(400, "a request names its server in one Host header")
            return None
        if self.server.loopback and not _names_loopback(named[0]):
            self.send_error(403, "this server answers requests to localhost only")
            return None
        url_path = self.path.split("?", 1)[0].split("#", 1)[0]
        path = Path(self.translate_path(self.path))
        if path == Path(self.directory):
            path = path / "index.html"
        elif url_path.endswith("/"):  # /index.html/ names a folder: there is none
            self.send_error(404, "not a file of this bundle")
            return None
        # the name first, the file system after: a 300-character name made is_dir() raise ENAMETOOLONG (a traceback
        # and a dropped connection, a stranger's finding); only the manifest's names ever reach the disk
        if path.parent != Path(self.directory) or path.name not in self.files or not path.is_file() or path.is_symlink():
            self.send_error(404, "not a file of this bundle")
            return None
        size = path.stat().st_size
        wanted = _RANGE.match(self.headers.get("Range", "").strip())
        start, end = 0, size - 1
        # RFC 9110 §14.2: a range the server cannot parse, or whose last byte comes before its first, is
        # ignored (the whole file, 200); one that starts past the end is unsatisfiable (416)
        if wanted and (wanted[1] or wanted[2]) and not (wanted[1] and wanted[2] and int(wanted[2]) < int(wanted[1])):
            if wanted[1]:
                start, end = int(wanted[1]), min(int(wanted[2]) if wanted[2] and not wanted[3] else size - 1, size - 1)
            else:  # bytes=-N: the last N
                start = 0 if wanted[3] else max(size - int(wanted[2]), 0)
            if start > end or start >= size:
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{size}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        else:
            self.send_response(200)
        self.send_header("Content-Type", self.guess_type(str(path)))
        self.send_header("Content-Length", str(end - start + 1))
        self.send_header("Accept-Ranges", "bytes")
        self.send_header("Last-Modified", self.date_time_string(int(path.stat().st_mtime)))
        self.end_headers()
        handle = open(path, "rb")  # noqa: SIM115  (send_head's contract: the open file, which the base class closes)
        handle.seek(start)
        self._left = end - start + 1
        return handle

    def copyfile(self, source, outputfile) -> None:
        left = self._left
        while left > 0:
            block = source.read(min(_BLOCK, left))
            if not block:
                break
            outputfile.write(block)
            left -= len(block)


def _names_loopback(host: str) -> bool:
    """Whether a Host header's value (RFC 9110 §7.2: a name and an optional port) names this machine: localhost, a
    name under .localhost (RFC 6761), 127.0.0.1 or [::1]. Anything else is refused whole, not parsed leniently:
    127.0.0.1:80@evil.com, localhost:evil and a..localhost were taken for localhost."""
    found = _HOST.fullmatch(host.strip().lower())
    return found is not None and (found["name"] in LOOPBACK_HOSTS or found["name"].endswith(".localhost"))


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def server_bind(self) -> None:
        super().server_bind()
        # bound to this machine alone (127.0.0.0/8, ::1): requests must name it
        self.loopback = ipaddress.ip_address(self.server_address[0]).is_loopback

    def handle_error(self, request, client_address) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):  # a tab closed mid-download: not an error of the server
            return
        super().handle_error(request, client_address)


def web_bundle_folder(bundle: Path) -> tuple[Path, frozenset[str]]:
    """The folder to serve and the names in it to serve: a web bundle's, checked for its manifest, its page and its
    runtime (edgelm's own files; not the model files' hashes: that is `edgelm verify`)."""
    from .artifact_files import find_member, read_json_object
    from .bundle_files import MAX_MANIFEST_BYTES

    bundle = Path(bundle)
    if not bundle.is_dir():
        zipped = bundle.suffix == ".zip" and bundle.is_file()
        raise UserError("not a web bundle folder", bundle,
                        "unzip it first (`edgelm serve` serves a folder)" if zipped else "give the folder `edgelm bundle --target web --out DIR` wrote")
    # the manifest as every reader of an artifact takes a file: a link out of the folder, a FIFO or a
    # device is refused in one line (a link to /etc/passwd was opened and parsed)
    manifest_path = find_member(bundle, BUNDLE_MANIFEST, what="the manifest")
    if manifest_path is None:
        raise UserError(f"no {BUNDLE_MANIFEST} manifest", bundle, "give the folder `edgelm bundle --target web --out DIR` wrote")
    manifest = read_json_object(manifest_path, MAX_MANIFEST_BYTES, what="the manifest")  # the bound verify reads it under
    if manifest.get("target") != "web":
        target = manifest.get("target")
        what = f"a {target} bundle, not a web page" if isinstance(target, str) else "not a web bundle (its edgelm.json names no target: an export?)"
        raise UserError(what, bundle, "make one with `edgelm bundle ONNX_FOLDER --target web --out DIR`")
    check_manifest(manifest, manifest_path)
    if "index.html" not in manifest["files"]:
        raise UserError("the web bundle lists no index.html", manifest_path, "make the bundle again with `edgelm bundle --target web`")
    from .bundle import BUNDLE_TARGETS  # the page and runtime edgelm writes, as verify checks them: a stranger's page
    BUNDLE_TARGETS["web"].check_files(bundle, manifest)  # listed with its own sha256 was served (stranger 44)
    return bundle.resolve(), frozenset(manifest["files"]) | {BUNDLE_MANIFEST}


def make_server(bundle: Path, host: str = "127.0.0.1", port: int = 8000, quiet: bool = True) -> http.server.ThreadingHTTPServer:
    """A server for the bundle, bound (port 0: any free port; `server.server_port` says which)."""
    folder, files = web_bundle_folder(bundle)
    handler = functools.partial(type("Handler", (BundleHandler,), {"quiet": quiet, "files": files}), directory=str(folder))
    server_class = type("Server", (_Server,), {"address_family": socket.AF_INET6 if ":" in host else socket.AF_INET})
    try:
        server = server_class((host, port), handler)
    except OSError as exc:
        raise UserError(f"cannot listen on {host}:{port} ({exc.strerror or exc})", None,
                        "pick another --port (0 picks a free one) or --host") from None
    return server


def server_url(server: http.server.ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    shown = "127.0.0.1" if host in ("0.0.0.0", "", "::") else f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def every_interface(server: http.server.ThreadingHTTPServer) -> bool:
    """Bound to every interface (--host 0.0.0.0, '' or ::): other machines on the network reach it."""
    return ipaddress.ip_address(server.server_address[0]).is_unspecified


@contextmanager
def serving(bundle: Path, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """The bundle served in a background thread for the block; yields its URL."""
    server = make_server(bundle, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server_url(server).rstrip("/")
    finally:
        server.shutdown()
        server.server_close()
