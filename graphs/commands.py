"""`monitor graph` and `monitor serve` (registered by monitor.cli)."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import TextIO

from monitor.config import Config, ReadConfig

log = logging.getLogger("monitor")


def register(sub: argparse._SubParsersAction, read_config: ReadConfig) -> None:
    p = sub.add_parser("graph", help="draw the graphs and write the static web site",
                       description="Draw the graphs that are due (day graphs whenever their data "
                       "changed, week every 30 min, month every 2 h, year daily) on all cores and "
                       "write every page to html_dir. --all redraws everything.")
    p.add_argument("--all", action="store_true", help="redraw every graph now")
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: all cores)")
    p.set_defaults(handler=lambda args: cmd_graph(read_config(args), args))

    p = sub.add_parser("serve", help="serve the web site read-only over HTTP for a quick look",
                       description="Serve html_dir over HTTP (GET only, nothing outside "
                       "html_dir). For production use nginx (see README).")
    p.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080; 0 picks one)")
    p.set_defaults(handler=lambda args: cmd_serve(read_config(args), args))


class ProgressLine:
    """A progress line on a terminal; a log line every few seconds otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.tty = stream.isatty()
        self.started = time.monotonic()
        self.last = 0.0

    def __call__(self, done: int, total: int) -> None:
        now = time.monotonic()
        rate = done / max(now - self.started, 1e-6)
        if self.tty:
            if now - self.last >= 0.2 or done == total:
                self.stream.write(f"\rgraphs: {done}/{total} drawn ({rate:.0f}/s)  ")
                if done == total:
                    self.stream.write("\n")
                self.stream.flush()
                self.last = now
        elif now - self.last >= 5 or done == total:
            log.info("graphs: %d/%d drawn (%.0f/s)", done, total, rate)
            self.last = now


def cmd_graph(config: Config, args: argparse.Namespace) -> int:
    from graphs.site import site_from_config

    # A handful of graphs is drawn in this process: starting workers would cost more.
    site = site_from_config(config, workers=args.workers, inline_below=24)
    try:
        report = site.build(full=args.all, progress=ProgressLine())
    finally:
        site.close()
    index = Path(config.html_dir).resolve() / "index.html"
    print(f"drew {report.graphs} graph(s) ({report.skipped} unchanged or not due), wrote "
          f"{report.pages} page(s) in {report.seconds:.1f} s: {index.as_uri()}")
    if report.errors:
        print(f"{len(report.errors)} graph(s) failed; first: {report.errors[0]}", file=sys.stderr)
        return 1
    return 0


def cmd_serve(config: Config, args: argparse.Namespace) -> int:
    from graphs.serve import make_server

    try:
        server = make_server(config.html_dir, args.bind, args.port)
    except OSError as exc:
        raise ValueError(f"cannot listen on {args.bind}:{args.port}: {exc}; pick another "
                         "--port or stop what uses it") from exc
    host, port = str(server.server_address[0]), server.server_address[1]
    shown = f"[{host}]" if ":" in str(host) else host
    print(f"serving {config.html_dir} on http://{shown}:{port}/ (read-only; Ctrl-C stops)",
          flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
