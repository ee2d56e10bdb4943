"""Graph site throughput vs `rrdtool graph` on the same RRD files, same run.

Targets (issues 6 and 12):
- site throughput (fetch + draw + PNG written, all cores) >= 1.5x single-process `rrdtool graph`
  images/s (rrdtool.graph, the Python binding of the same C library the CLI uses);
- a cold `monitor graph --all` (process start, workers, pages included) no slower than
  `rrdtool graph` drawing the same images in one process;
- the full site for 1,000 interfaces x 4 periods (plus sparklines and pages) in <= 60 s;
- an incremental cycle (new data everywhere, only day graphs due) in <= 20 s.

Data: the long-history generator's (tests/longhistory.py: 420 days of 5-minute samples through
the store, with curves, growth, gaps, a reboot, a down port, a lossy ping); its three router
ports are cloned (file copies, the store's index made by writing through the store) to reach
--interfaces traffic files. Prints figures and ratios.
Run: .venv/bin/python bench/graphs_bench.py [--interfaces N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rrdtool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from graphs import render
from graphs.render import PERIODS, window
from graphs.site import SiteBuilder
from monitor.model import Kind, Measurement
from monitor.status import StatusBook
from monitor.store import RrdStore
from tests import longhistory

STEP = longhistory.STEP
PORTS = (longhistory.UPLINK, longhistory.CUSTOMER, longhistory.DOWN_PORT)


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def make_files(root: Path, count: int, now: int) -> tuple[RrdStore, list[tuple[str, str]]]:
    """The generator's files (history up to `now`: the cold `monitor graph` runs on the real
    clock) plus `count` traffic files cloned from its router ports."""
    store = longhistory.write(root, end=now)
    sources = [store.info(longhistory.ROUTER, port) for port in PORTS]
    names = [(f"router{i // 48:02d}", f"ge-0/0/{i % 48}") for i in range(count)]
    first = now - longhistory.DAYS * 86400
    # The store creates each clone's file (so its index knows it, with the source's metrics in
    # the source's DS order) ...
    store.write([Measurement(*name, metric, 0.0, Kind.GAUGE, "", first)
                 for i, name in enumerate(names) for metric in sources[i % 3].metrics], STEP)
    store.close()
    # ... and a copy of the source replaces it (same DS and archive layout).
    for i, name in enumerate(names):
        shutil.copyfile(sources[i % 3].path, store.path_for(*name))
    return RrdStore(root), names


def rrdtool_images(
    store: RrdStore, names: list[tuple[str, str]], out: Path, now: int, zoom: int = 1
) -> tuple[int, float, float]:
    """The reference: the same graph content drawn by rrdtool, one process; `zoom` 2 draws
    the pixels of our 2x images (rrdtool's --zoom)."""
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
                "--width", "620", "--height", "200", "--zoom", str(zoom),
                "--title", f"{name[0]} {name[1]} {period.label}",
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


def cold_monitor_graph(root: Path, cores: int) -> tuple[float, str]:
    """`monitor graph --all` in a fresh process on data_dir `root`: (seconds, its summary)."""
    config = root / "config.toml"
    config.write_text(f'[agent]\ndata_dir = "{root}"\ninterval = "5m"\n[host]\nenabled = false\n'
                      f'[disks]\nenabled = false\n[web]\nworkers = {cores}\n')
    config.chmod(0o600)
    started = time.perf_counter()
    run = subprocess.run([sys.executable, "-m", "monitor", "--config", str(config), "graph", "--all"],
                         capture_output=True, text=True, cwd=Path(__file__).resolve().parent.parent)
    seconds = time.perf_counter() - started
    assert run.returncode == 0, run.stderr[-2000:]
    return seconds, run.stdout.strip().splitlines()[-1]


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
        progress(f"writing the long history ({longhistory.DAYS} days of 5-min data) and "
                 f"{args.interfaces} clones...")
        started = time.perf_counter()
        store, names = make_files(root / "rrd", args.interfaces, now)
        files = store.series()
        progress(f"files ready in {time.perf_counter() - started:.1f} s")

        sample = names[: args.reference_sample]
        progress(f"rrdtool graph: {len(sample)} interfaces x 4 periods, one process...")
        ref_images, ref_seconds, ref_cpu = rrdtool_images(store, sample, root / "rrdtool", now)
        ref_rate = ref_images / ref_seconds
        progress(f"rrdtool graph --zoom 2 (our images' pixels): {len(sample)} interfaces x 4 "
                 "periods, one process...")
        zoom_images, zoom_seconds, zoom_cpu = rrdtool_images(store, sample, root / "rrdtool2",
                                                             now, zoom=2)
        zoom_rate = zoom_images / zoom_seconds

        progress(f"cold `monitor graph --all`: {len(files)} files x 4 periods...")
        cold_seconds, cold_summary = cold_monitor_graph(root, cores)
        cold_images = len(files) * len(PERIODS)

        status = StatusBook(root / "state" / "status.json")
        clock = [float(now)]
        builder = SiteBuilder(store, status, root / "html-warm", root / "state" / "warm.json",
                              workers=cores, slack=30, clock=lambda: clock[0])
        try:
            builder._executor().submit(int).result()  # start the pool (a `run` keeps it alive)
            progress(f"our site, full, warm pool: {len(files)} files x 4 periods on {cores} worker(s)...")
            cpu_main = time.process_time()
            full = builder.build(full=True)
            assert not full.errors, full.errors[:3]
            # The workers' CPU (fetch, draw, encode, write) plus this process's (pages, state).
            full_cpu = time.process_time() - cpu_main + full.render_cpu
            full_rate = full.graphs / full.seconds

            progress("new data in every file; incremental cycle one minute later...")
            store.write([Measurement(info.target, info.instance, metric, 1.0, Kind.GAUGE, "",
                                     now + STEP) for info in files for metric in info.metrics], STEP)
            clock[0] = now + 60
            incremental = builder.build()
            assert not incremental.errors, incremental.errors[:3]
        finally:
            builder.close()
            store.close()

    ratio = full_rate / ref_rate
    ref_same = cold_images / ref_rate
    print(f"rrdtool graph (1 process):      {ref_images:5d} images in {ref_seconds:6.1f} s = "
          f"{ref_rate:6.1f} images/s ({1000 / ref_rate:.1f} ms each; {1000 * ref_cpu / ref_images:.1f} ms "
          "CPU each)")
    print(f"rrdtool graph --zoom 2:         {zoom_images:5d} images in {zoom_seconds:6.1f} s = "
          f"{zoom_rate:6.1f} images/s ({1000 * zoom_cpu / zoom_images:.1f} ms CPU each; the pixel "
          f"count of ours, {2 * render.WIDTH}x{2 * render.HEIGHT})")
    print(f"our site, full ({cores} workers):     {full.graphs:5d} images in {full.seconds:6.1f} s = "
          f"{full_rate:6.1f} images/s (+ {full.instances} sparklines, {full.pages} pages; "
          f"{1000 * full_cpu / full.graphs:.1f} ms CPU per image, all included)")
    print(f"CPU-bound estimate on {cores} idle core(s): full site ~{full_cpu / cores:.0f} s; "
          f"CPU ratio rrdtool/ours per image {ref_cpu / ref_images / (full_cpu / full.graphs):.2f}")
    print(f"ratio ours/rrdtool images/s:    {ratio:.2f}x (target >= 1.5x) "
          f"{'OK' if ratio >= 1.5 else 'MISSED'}; vs rrdtool --zoom 2: {full_rate / zoom_rate:.2f}x")
    print(f"CPU per image, rrdtool --zoom 2 / ours: {zoom_cpu / zoom_images / (full_cpu / full.graphs):.2f}")
    print(f"cold `monitor graph --all`:     {cold_images:5d} images in {cold_seconds:6.1f} s, process "
          f"start and pages included ({cold_summary.split(':')[0]})")
    print(f"rrdtool graph, same images:     {cold_images:5d} images in {ref_same:6.1f} s (at its rate "
          f"above); ratio rrdtool/ours {ref_same / cold_seconds:.2f}x (target >= 1.0x) "
          f"{'OK' if cold_seconds <= ref_same else 'MISSED'}")
    print(f"full site, {len(names)} interfaces:     {full.seconds:.1f} s (target <= 60 s) "
          f"{'OK' if full.seconds <= 60 else 'MISSED'}")
    print(f"incremental day-only cycle:     {incremental.graphs} images in {incremental.seconds:.1f} s "
          f"(target <= 20 s) {'OK' if incremental.seconds <= 20 else 'MISSED'}")
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
