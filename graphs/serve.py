"""`monitor serve`: html_dir over HTTP for a quick look (production: nginx, see README).

Read-only (GET and HEAD only), nothing outside html_dir: `..` segments are dropped by
http.server and anything that resolves (through a symlink) outside the directory is a 404.
"""

from __future__ import annotations

import io
import logging
import os
import socket
import threading
from collections.abc import Callable
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

log = logging.getLogger(__name__)


class _Handler(SimpleHTTPRequestHandler):
    root: str = ""

    def send_head(self) -> io.BytesIO | BinaryIO | None:
        real = os.path.realpath(self.translate_path(self.path))
        if real != self.root and not real.startswith(self.root + os.sep):
            self.send_error(404, "Not found")  # a symlink pointing out of html_dir
            return None
        return super().send_head()

    def list_directory(self, path: str | os.PathLike[str]) -> io.BytesIO | None:
        self.send_error(404, "No listing; start at index.html")
        return None

    def end_headers(self) -> None:
        # Pages reload themselves; a cached PNG would show yesterday's graph.
        self.send_header("Cache-Control", "no-cache")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        hook = getattr(self.server, "on_request", None)
        if hook is not None:
            hook(self.path, int(code) if str(code).isdigit() else 0)
        super().log_request(code, size)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("%s %s", self.address_string(), format % args)


class _Server6(ThreadingHTTPServer):
    address_family = socket.AF_INET6


def make_server(
    html_dir: Path, bind: str = "127.0.0.1", port: int = 8080,
    on_request: Callable[[str, int], None] | None = None,
) -> ThreadingHTTPServer:
    """A server bound (port 0: any free port) but not yet serving; `server_address` tells where.
    `on_request(path, status)` sees every answered request (tests check for broken images)."""
    root = os.path.realpath(html_dir)
    handler = type("Handler", (_Handler,), {"root": root})
    server_class = _Server6 if ":" in bind else ThreadingHTTPServer
    server = server_class((bind, port), partial(handler, directory=root))
    server.daemon_threads = True
    server.on_request = on_request  # type: ignore[attr-defined]
    return server


def url_of(server: ThreadingHTTPServer) -> str:
    host, port = server.server_address[:2]
    host = str(host)
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


def serve_in_thread(server: ThreadingHTTPServer) -> threading.Thread:
    thread = threading.Thread(target=server.serve_forever, name="monitor-serve", daemon=True)
    thread.start()
    return thread
