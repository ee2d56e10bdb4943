"""`monitor serve`: html_dir over HTTP, read-only, for a quick look (nginx for production).

Only GET and HEAD; nothing outside html_dir is served (paths resolved, symlinks included);
no directory listings.
"""

from __future__ import annotations

import functools
import logging
import os
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

log = logging.getLogger(__name__)


class SiteHandler(SimpleHTTPRequestHandler):
    server_version = "monitor-site"
    sys_version = ""

    def translate_path(self, path: str) -> str:
        candidate = Path(super().translate_path(path))
        root = Path(self.directory).resolve()
        try:
            resolved = candidate.resolve()
        except (OSError, RuntimeError):
            return str(root / ".missing")
        if resolved != root and root not in resolved.parents:
            return str(root / ".missing")  # a 404, whatever the path tried
        return str(resolved)

    def list_directory(self, path: str | os.PathLike[str]):
        self.send_error(403, "No directory listings")
        return None

    def end_headers(self) -> None:
        # The pages refresh themselves; a cache must not hold a stale graph much longer.
        self.send_header("Cache-Control", "max-age=60")
        self.send_header("X-Content-Type-Options", "nosniff")
        super().end_headers()

    def log_message(self, format: str, *args) -> None:
        log.debug("%s %s", self.address_string(), format % args)


def make_server(html_dir: Path, bind: str = "127.0.0.1", port: int = 8080) -> ThreadingHTTPServer:
    html_dir = Path(html_dir)
    html_dir.mkdir(parents=True, exist_ok=True)
    handler = functools.partial(SiteHandler, directory=str(html_dir))
    server = ThreadingHTTPServer((bind, port), handler)
    server.daemon_threads = True
    return server
