"""Graphs and site vs `rrdtool graph`, on the same RRD files, in one run.

Targets (issue 6): site throughput (fetch + draw + PNG written, all cores) at least 0.5x of
single-process `rrdtool graph` images/s; the full site for 1,000 interfaces x 4 periods within
60 s; an incremental cycle (day graphs only) within 20 s.

    .venv/bin/python bench/graphs_bench.py                  # 50 interfaces, extrapolated to 1000
    .venv/bin/python bench/graphs_bench.py --interfaces 1000  # the real size (slow on 2 cores)
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import rrdtool  # the reference only; graphs/ itself never imports it

from graphs.site import Site
from monitor.model import Kind, Measurement
from monitor.status import StatusBook
from monitor.store import RrdStore

STEP = 300


def populate(store: RrdStore, interfaces: int, now: int, hours: int) -> None:
    rows = hours * 3600 // STEP
    batch: list[Measurement] = []
    for i in range(rows):
        ts = now - (rows - 1 - i) * STEP
        phase = math.sin(2 * math.pi * (ts % 86400) / 86400)
        for n in range(interfaces):
            base = 1e6 * (1 + n % 17) * (1.2 + phase)
            batch.append(Measurement(f"sw{n // 48}", f"ge-0/0/{n % 48}", "in_octets", base,
                                     Kind.GAUGE, "B/s", ts))
            batch.append(Measurement(f"sw{n // 48}", f"ge-0/0/{n % 48}", "out_octets", base / 3,
                                     Kind.GAUGE, "B/s", ts))
        if len(batch) > 200_000:
            store.write(batch, STEP)
            batch = []
    if batch:
        store.write(batch, STEP)


def rrdtool_day(path: Path, out: Path) -> None:
    f = str(path)
    rrdtool.graph(
        str(out), "--width", "700", "--height", "250", "--start", "-1d", "--end", "now",
        "--vertical-label", "bits/s",
        f"DEF:i={f}:in_octets:AVERAGE", f"DEF:o={f}:out_octets:AVERAGE",
        "CDEF:ib=i,8,*", "CDEF:ob=o,8,*",
        "VDEF:i95=ib,95,PERCENT", "VDEF:o95=ob,95,PERCENT",
        "AREA:ib#3a9d5d:In ", "GPRINT:ib:LAST:now %6.2lf %sb/s", "GPRINT:ib:AVERAGE:avg %6.2lf %sb/s",
        "GPRINT:ib:MAX:max %6.2lf %sb/s", "GPRINT:i95:95th %6.2lf %sb/s\\l",
        "LINE1:ob#1d4f91:Out", "GPRINT:ob:LAST:now %6.2lf %sb/s", "GPRINT:ob:AVERAGE:avg %6.2lf %sb/s",
        "GPRINT:ob:MAX:max %6.2lf %sb/s", "GPRINT:o95:95th %6.2lf %sb/s\\l",
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--interfaces", type=int, default=50)
    parser.add_argument("--hours", type=int, default=30, help="history written per interface")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1)
    args = parser.parse_args()
    n = args.interfaces
    with tempfile.TemporaryDirectory(prefix="graphs-bench-") as tmp:
        root = Path(tmp)
        store = RrdStore(root / "rrd")
        now = int(time.time()) // STEP * STEP
        started = time.perf_counter()
        populate(store, n, now, args.hours)
        print(f"{n} interfaces, {args.hours} h of 5-min data written in "
              f"{time.perf_counter() - started:.1f} s; {args.workers} worker(s), "
              f"{os.cpu_count()} core(s) (shared machine: figures are noisy)")
        series = store.series()

        # Reference: rrdtool graph, one process, day graphs of the same files.
        sample = series[: min(len(series), 100)]
        out = root / "ref"
        out.mkdir()
        started = time.perf_counter()
        for i, info in enumerate(sample):
            rrdtool_day(info.path, out / f"{i}.png")
        ref_rate = len(sample) / (time.perf_counter() - started)
        print(f"rrdtool graph (1 process):   {ref_rate:7.1f} images/s ({len(sample)} day graphs)")

        # Ours: the full site (every period + sparklines + pages), all cores.
        site = Site(html_dir=root / "html", state_dir=root / "state", store=store,
                    status=StatusBook(root / "state" / "status.json"), workers=args.workers,
                    clock=lambda: now)
        try:
            site._executor().submit(int).result()  # start the workers outside the timing
            report = site.build()
            full = report.seconds
            rate = report.drawn / full
            print(f"site, full build:            {rate:7.1f} images/s ({report.drawn} graphs, "
                  f"{report.pages} pages in {full:.1f} s)")
            print(f"  throughput ratio vs rrdtool: {rate / ref_rate:.2f}x (target >= 0.5x)")
            full_1000 = full * 1000 / n
            print(f"  full site, 1000 interfaces x 4 periods: {full_1000:.1f} s"
                  f"{f' (extrapolated from {n})' if n != 1000 else ''} (target <= 60 s)")

            # Incremental: one new sample per interface, 5 min later: only day graphs are due.
            later = now + STEP
            batch = []
            for info in series:
                for metric in ("in_octets", "out_octets"):
                    batch.append(Measurement(info.target, info.instance, metric, 1e6, Kind.GAUGE,
                                             "B/s", later))
            store.write(batch, STEP)
            site.clock = lambda: later
            report = site.build()
            inc_1000 = report.seconds * 1000 / n
            print(f"site, incremental cycle:     {report.drawn} day graphs + {report.pages} pages "
                  f"in {report.seconds:.1f} s -> 1000 interfaces: {inc_1000:.1f} s"
                  f"{' (extrapolated)' if n != 1000 else ''} (target <= 20 s)")
            if report.errors:
                print(f"errors: {report.errors[:3]}")
        finally:
            site.close()


if __name__ == "__main__":
    main()
