"""Benchmark: HTTP and HTTPS checks against a real nginx on loopback.

Our services collector (one cycle, agent.concurrency at a time: status, body, certificate and
chain verdict) against Debian's check_http for the same checks run 64 at a time (`xargs -P 64`,
as a scheduler with parallel plugins does; https with --sni and -C 21,7 so it judges the
certificate too), in the same run against the same nginx. Prints wall time, CPU and the ratios.

    .venv/bin/python bench/http_bench.py [--checks 200] [--concurrency 64]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from collectors.services import ServicesCollector
from monitor.config import ServiceCheck
from monitor.model import State
from tests.http_servers import start_nginx

CHECK_HTTP = "/usr/lib/nagios/plugins/check_http"


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def ours(checks: list[ServiceCheck], concurrency: int) -> tuple[float, float, int]:
    """Best of 3 cycles: (wall, CPU of one cycle, checks OK)."""
    collector = ServicesCollector("services", 60, checks, concurrency)

    async def cycle() -> tuple[float, int]:
        start = time.perf_counter()
        batch = await collector.collect()
        return time.perf_counter() - start, sum(c.state == State.OK for c in batch.checks)

    asyncio.run(cycle())  # warm-up: imports, TLS contexts
    cpu = time.process_time()
    wall, ok = min((asyncio.run(cycle()) for _ in range(3)), key=lambda r: r[0])
    return wall, (time.process_time() - cpu) / 3, ok


def plugins(argv: list[str], count: int) -> tuple[float, float, int]:
    """check_http `count` times under xargs -P 64: (wall, CPU, checks OK)."""
    lines = "".join(f"{i}\n" for i in range(count))
    script = f'{" ".join(argv)} >/dev/null && echo ok'
    cpu, start = children_cpu(), time.perf_counter()
    out = subprocess.run(["xargs", "-P", "64", "-I", "{}", "sh", "-c", script], input=lines,
                         capture_output=True, text=True).stdout
    return time.perf_counter() - start, children_cpu() - cpu, out.count("ok")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checks", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=64, help="agent.concurrency (default 64)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as directory:
        nginx = start_nginx(Path(directory))
        try:
            kinds = {
                "http": (dict(port=nginx.http, path="/host", expect_text="host"),
                         [CHECK_HTTP, "-I", "127.0.0.1", "-p", str(nginx.http), "-u", "/host",
                          "-s", "host", "-t", "10"]),
                "https": (dict(port=nginx.https, server_name="www.example.net", ca_file=nginx.ca,
                               expect_text="www site", vhost="www.example.net"),
                          [CHECK_HTTP, "-I", "127.0.0.1", "-H", "www.example.net", "-p",
                           str(nginx.https), "-S", "--sni", "-C", "21,7",
                           "--continue-after-certificate", "-s", "'www site'", "-t", "10"]),
            }
            worst = 0
            for kind, (keys, argv) in kinds.items():
                checks = []
                for i in range(args.checks):
                    check = ServiceCheck(name=f"{kind}{i}", kind=kind, host="127.0.0.1",
                                         timeout=10.0, **keys)
                    check.validate()
                    checks.append(check)
                wall, cpu, ok = ours(checks, args.concurrency)
                their_wall, their_cpu, their_ok = plugins(argv, args.checks)
                print(f"{kind}: ours {args.checks} checks (concurrency {args.concurrency}): "
                      f"{wall:.2f} s wall (best of 3), {cpu:.2f} s CPU, {ok} OK | check_http "
                      f"under xargs -P 64: {their_wall:.2f} s wall, {their_cpu:.2f} s CPU, "
                      f"{their_ok} OK | ours {their_wall / wall:.1f}x less wall, "
                      f"{their_cpu / cpu:.1f}x less CPU")
                worst = max(worst, args.checks - ok)
            return 0 if worst == 0 else 1
        finally:
            nginx.process.kill()
            nginx.process.wait()


if __name__ == "__main__":
    sys.exit(main())
