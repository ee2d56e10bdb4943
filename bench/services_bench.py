#!/usr/bin/env python3
"""Benchmark: one cycle of 1,000 TCP+banner service checks vs. Nagios' check_tcp per target.

A helper process listens on 1,000 loopback ports and greets every connection with an SMTP-like
banner. Our collector checks all of them in one cycle (connect, read the banner, match the
expected text) with the agent's default concurrency; the reference runs Debian's
`/usr/lib/nagios/plugins/check_tcp -H 127.0.0.1 -p PORT -e TEXT` once per target, one after the
other, as Nagios schedules one plugin process per check. Prints both wall times and the ratio.

    .venv/bin/python bench/services_bench.py [--targets 1000] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import select
import socket
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.checks.common import Env
from collectors.services import ServicesCollector
from monitor.config import parse_config
from monitor.model import State

CHECK_TCP = "/usr/lib/nagios/plugins/check_tcp"
BANNER = b"220 bench.test ESMTP ready\r\n"
EXPECT = "220 bench.test"


def raise_fd_limit(wanted: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(wanted, hard), hard))


def serve(count: int) -> None:
    """The helper process: `count` listeners that greet every connection with BANNER and keep it
    open until the client leaves. A bare epoll loop, as cheap as a C daemon's, so that the
    servers steal as little as possible of the two cores from the side being measured.
    Prints the ports; serves until its stdin closes."""
    listeners: dict[int, socket.socket] = {}
    for _ in range(count):
        sock = socket.create_server(("127.0.0.1", 0), backlog=1024)
        sock.setblocking(False)
        listeners[sock.fileno()] = sock
    poller = select.epoll()
    for fd in listeners:
        poller.register(fd, select.EPOLLIN)
    poller.register(sys.stdin.fileno(), select.EPOLLIN)
    print(" ".join(str(s.getsockname()[1]) for s in listeners.values()), flush=True)
    conns: dict[int, socket.socket] = {}
    while True:
        for fd, _ in poller.poll():
            if fd in listeners:
                while True:
                    try:
                        conn, _ = listeners[fd].accept()
                    except BlockingIOError:
                        break
                    conn.setblocking(False)
                    try:
                        conn.send(BANNER)
                    except OSError:
                        conn.close()
                        continue
                    conns[conn.fileno()] = conn
                    poller.register(conn.fileno(), select.EPOLLIN)
            elif fd in conns:
                try:
                    data = conns[fd].recv(4096)
                except OSError:
                    data = b""
                if not data:
                    poller.unregister(fd)
                    conns.pop(fd).close()
            else:
                return  # stdin closed: the benchmark is over


def progress(text: str) -> None:
    if sys.stderr.isatty():
        print(f"\r{text}\033[K", end="", file=sys.stderr, flush=True)
    else:
        print(text, file=sys.stderr, flush=True)


async def our_cycle(ports: list[int], concurrency: int) -> tuple[float, int]:
    body = "".join(f'[[services]]\nname = "bench{i}"\nkind = "tcp"\nhost = "127.0.0.1"\nport = {p}\n'
                   f'expect = "{EXPECT}"\ntimeout = "10s"\n' for i, p in enumerate(ports))
    config = parse_config(f'[agent]\nhostname = "bench"\nconcurrency = {concurrency}\n{body}')
    collector = ServicesCollector(config.services, 60, Env("bench"), concurrency)
    await collector.collect()  # warm-up
    best = float("inf")
    ok = 0
    for _ in range(3):
        started = time.perf_counter()
        batch = await collector.collect()
        best = min(best, time.perf_counter() - started)
        ok = sum(c.state is State.OK for c in batch.checks)
    return best, ok


async def bare_floor(ports: list[int], concurrency: int) -> float:
    """What asyncio itself costs for the same work (socket, connect, one recv, close; no
    parsing, messages or results): the floor under any asyncio collector on this machine."""
    loop = asyncio.get_running_loop()
    pending = iter(ports)

    async def worker() -> None:
        for port in pending:
            sock = socket.socket()
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, ("127.0.0.1", port))
                await loop.sock_recv(sock, 4096)
            finally:
                sock.close()

    best = float("inf")
    for _ in range(3):
        pending = iter(ports)
        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        best = min(best, time.perf_counter() - started)
    return best


def check_tcp_run(ports: list[int]) -> tuple[float, int]:
    ok = 0
    started = time.perf_counter()
    for i, port in enumerate(ports):
        result = subprocess.run([CHECK_TCP, "-H", "127.0.0.1", "-p", str(port), "-e", EXPECT, "-t", "10"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        ok += result.returncode == 0
        if (i + 1) % 100 == 0:
            progress(f"check_tcp: {i + 1}/{len(ports)} targets, {time.perf_counter() - started:.1f} s")
    elapsed = time.perf_counter() - started
    if sys.stderr.isatty():
        print(file=sys.stderr)
    return elapsed, ok


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--targets", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=64, help="agent.concurrency (default 64)")
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    raise_fd_limit(4 * args.targets + 1024)
    if args.serve:
        serve(args.serve)
        return 0
    if not os.access(CHECK_TCP, os.X_OK):
        print(f"{CHECK_TCP} is missing: apt-get install monitoring-plugins-basic", file=sys.stderr)
        return 2
    helper = subprocess.Popen([sys.executable, __file__, "--serve", str(args.targets)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert helper.stdout is not None
        ports = [int(p) for p in helper.stdout.readline().split()]
        progress(f"{len(ports)} loopback listeners ready; running our collector (best of 3 cycles)")
        ours, ours_ok = asyncio.run(our_cycle(ports, args.concurrency))
        floor = asyncio.run(bare_floor(ports, args.concurrency))
        progress(f"ours: {ours:.2f} s; running check_tcp once per target, sequentially")
        theirs, theirs_ok = check_tcp_run(ports)
    finally:
        if helper.stdin:
            helper.stdin.close()
        helper.wait(timeout=30)
    print(f"targets: {len(ports)} TCP+banner checks on 127.0.0.1 (expect {EXPECT!r})")
    print(f"ours (one cycle, concurrency {args.concurrency}): {ours:.3f} s, {ours_ok} OK")
    print(f"bare asyncio connect+recv+close, same targets (the floor): {floor:.3f} s")
    print(f"check_tcp x {len(ports)} (sequential): {theirs:.3f} s, {theirs_ok} OK "
          f"({theirs / len(ports) * 1000:.1f} ms per plugin run)")
    ratio = theirs / ours if ours else float("inf")
    print(f"ratio: {ratio:.1f}x faster (target >= 20x); cycle {'within' if ours <= 3 else 'OVER'} 3 s")
    return 0 if ours_ok == theirs_ok == len(ports) else 1


if __name__ == "__main__":
    sys.exit(main())
