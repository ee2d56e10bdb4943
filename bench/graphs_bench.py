"""Graph site throughput vs `rrdtool graph` on the same RRD files, same run.

Targets (issue 6):
- site throughput (fetch + draw + PNG written, all cores) >= 0.5x single-process `rrdtool graph`
  images/s (rrdtool.graph, the Python binding of the same C library the CLI uses);
- the full site for 1,000 interfaces x 4 periods (plus sparklines and pages) in <= 60 s;
- an incremental cycle (new data everywhere, only day graphs due) in <= 20 s.

Data: 1,000 traffic RRD files (5-min step, the store's default archives), each holding a year
of data (one file is filled through the store, then copied). Prints figures and ratios.
Run: .venv/bin/python bench/graphs_bench.py [--interfaces N]
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import rrdtool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from graphs.render import PERIODS, window
from graphs.site import SiteBuilder
from monitor.model import Kind, Measurement
from monitor.status import StatusBook
from monitor.store import RrdStore

STEP = 300


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def traffic(target: str, instance: str, ts: int, i: int) -> list[Measurement]:
    hour = (ts % 86400) / 3600
    base = 4e6 * (1.1 + math.sin((hour - 9) / 24 * 2 * math.pi)) * (1 + 0.15 * math.sin(i * 0.7))
    return [Measurement(target, instance, "in_octets", base, Kind.GAUGE, "B", ts),
            Measurement(target, instance, "out_octets", base * 0.4, Kind.GAUGE, "B", ts)]


def make_files(root: Path, count: int, now: int) -> tuple[RrdStore, list[tuple[str, str]]]:
    store = RrdStore(root)
    names = [(f"router{i // 48:02d}", f"ge-0/0/{i % 48}") for i in range(count)]
    # One file with a year of 5-minute samples, written through the store...
    template = ("template", "year")
    first = now - 366 * 86400
    chunk: list[Measurement] = []
    for i, ts in enumerate(range(first, now + 1, STEP)):
        chunk.extend(traffic(*template, ts, i))
        if len(chunk) >= 40_000:
            store.write(chunk, STEP)
            chunk = []
    store.write(chunk, STEP)
    # ... then every interface's file is created by the store (so the index knows it) and
    # replaced by a copy of the template (same DS and archive layout).
    store.write([m for n in names for m in traffic(*n, first, 0)], STEP)
    source = store.path_for(*template)
    for name in names:
        shutil.copyfile(source, store.path_for(*name))
    store.close()
    source.unlink()
    return RrdStore(root), names


def rrdtool_images(
    store: RrdStore, names: list[tuple[str, str]], out: Path, now: int
) -> tuple[int, float, float]:
    """The reference: the same graph content drawn by rrdtool, one process."""
    out.mkdir(parents=True, exist_ok=True)
    count = 0
    started = time.perf_counter()
    cpu = time.process_time()
    for n, name in enumerate(names):
        info = store.info(*name)
        assert info is not None
        path = str(info.path)
        for period in PERIODS.values():
            start, end, _ = window(period, now, info.step)
            rrdtool.graph(
                str(out / f"{n}-{period.name}.png"), "--start", str(start), "--end", str(end),
                "--width", "620", "--height", "200", "--title", f"{name[0]} {name[1]} {period.label}",
                "--vertical-label", "bits per second", "--lower-limit", "0", "--imgformat", "PNG",
                f"DEF:i={path}:in_octets:AVERAGE", f"DEF:o={path}:out_octets:AVERAGE",
                "CDEF:ib=i,8,*", "CDEF:ob=o,8,*",
                "VDEF:icur=ib,LAST", "VDEF:iavg=ib,AVERAGE", "VDEF:imax=ib,MAXIMUM",
                "VDEF:ip95=ib,95,PERCENT", "VDEF:itot=i,TOTAL",
                "VDEF:ocur=ob,LAST", "VDEF:oavg=ob,AVERAGE", "VDEF:omax=ob,MAXIMUM",
                "VDEF:op95=ob,95,PERCENT", "VDEF:otot=o,TOTAL",
                "AREA:ib#57b85a:In ", "GPRINT:icur:now %6.2lf %sb/s", "GPRINT:iavg:avg %6.2lf %sb/s",
                "GPRINT:imax:max %6.2lf %sb/s", "GPRINT:ip95:95%% %6.2lf %sb/s",
                "GPRINT:itot:total %6.2lf %sB\\n",
                "LINE1:ob#1c3fa8:Out", "GPRINT:ocur:now %6.2lf %sb/s", "GPRINT:oavg:avg %6.2lf %sb/s",
                "GPRINT:omax:max %6.2lf %sb/s", "GPRINT:op95:95%% %6.2lf %sb/s",
                "GPRINT:otot:total %6.2lf %sB\\n",
            )
            count += 1
    return count, time.perf_counter() - started, time.process_time() - cpu


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--interfaces", type=int, default=1000)
    parser.add_argument("--reference-sample", type=int, default=250,
                        help="interfaces drawn by rrdtool for its images/s (x 4 periods)")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0]
    print(f"graphs bench: {args.interfaces} interfaces x 4 periods, {cores} core(s), "
          f"load average {load:.1f} at start (a shared machine makes every figure noisy)")
    with tempfile.TemporaryDirectory(prefix="graphs-bench-") as tmp:
        root = Path(tmp)
        now = int(time.time()) // STEP * STEP
        progress("writing RRD files (a year of 5-min data each)...")
        started = time.perf_counter()
        store, names = make_files(root / "rrd", args.interfaces, now)
        progress(f"files ready in {time.perf_counter() - started:.1f} s")

        sample = names[: args.reference_sample]
        progress(f"rrdtool graph: {len(sample)} interfaces x 4 periods, one process...")
        ref_images, ref_seconds, ref_cpu = rrdtool_images(store, sample, root / "rrdtool", now)
        ref_rate = ref_images / ref_seconds

        status = StatusBook(root / "state" / "status.json")
        clock = [float(now)]
        builder = SiteBuilder(store, status, root / "html", root / "state" / "graphs.json",
                              workers=cores, slack=30, clock=lambda: clock[0])
        try:
            builder._executor().submit(int).result()  # start the pool (a `run` keeps it alive)
            progress(f"our site, full: {len(names)} interfaces x 4 periods on {cores} worker(s)...")
            cpu_main = time.process_time()
            full = builder.build(full=True)
            assert not full.errors, full.errors[:3]
            # The workers' CPU (fetch, draw, encode, write) plus this process's (pages, state).
            full_cpu = time.process_time() - cpu_main + full.render_cpu
            full_rate = full.graphs / full.seconds

            progress("new data in every file; incremental cycle one minute later...")
            store.write([m for n in names for m in traffic(*n, now + STEP, 1)], STEP)
            clock[0] = now + 60
            incremental = builder.build()
            assert not incremental.errors, incremental.errors[:3]
        finally:
            builder.close()
            store.close()

    ratio = full_rate / ref_rate
    print(f"rrdtool graph (1 process):      {ref_images:5d} images in {ref_seconds:6.1f} s = "
          f"{ref_rate:6.1f} images/s ({1000 / ref_rate:.1f} ms each; {1000 * ref_cpu / ref_images:.1f} ms "
          "CPU each)")
    print(f"our site, full ({cores} workers):     {full.graphs:5d} images in {full.seconds:6.1f} s = "
          f"{full_rate:6.1f} images/s (+ {full.instances} sparklines, {full.pages} pages; "
          f"{1000 * full_cpu / full.graphs:.1f} ms CPU per image, all included)")
    print(f"CPU-bound estimate on {cores} idle core(s): full site ~{full_cpu / cores:.0f} s; "
          f"CPU ratio rrdtool/ours per image {ref_cpu / ref_images / (full_cpu / full.graphs):.2f}")
    print(f"ratio ours/rrdtool images/s:    {ratio:.2f}x (target >= 0.5x) "
          f"{'OK' if ratio >= 0.5 else 'MISSED'}")
    print(f"full site, {len(names)} interfaces:     {full.seconds:.1f} s (target <= 60 s) "
          f"{'OK' if full.seconds <= 60 else 'MISSED'}")
    print(f"incremental day-only cycle:     {incremental.graphs} images in {incremental.seconds:.1f} s "
          f"(target <= 20 s) {'OK' if incremental.seconds <= 20 else 'MISSED'}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
