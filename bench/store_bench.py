"""Store write throughput vs bare rrdtool.update on the same 5,000 RRD files, same run.

Targets (issue 2): direct path >= 0.85x bare rrdtool.update; through rrdcached (BATCH protocol)
>= 200,000 updates/s. Prints both figures and ratios. Run: .venv/bin/python bench/store_bench.py
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import rrdtool

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from monitor.model import Kind, Measurement
from monitor.store import RrdStore

FILES = 5000
ROUNDS = 10
STEP = 60
T0 = 1_700_000_040


def batch(ts: int, round_no: int) -> list[Measurement]:
    out = []
    for i in range(FILES):
        target, instance = f"router{i // 50}", f"ge-0/0/{i % 50}"
        v = (round_no + 1) * 1000 + i
        out.append(Measurement(target, instance, "in_octets", v, Kind.COUNTER, "B", ts, maximum=1.25e8))
        out.append(Measurement(target, instance, "out_octets", v * 2, Kind.COUNTER, "B", ts, maximum=1.25e8))
    return out


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def bench_direct(root: Path) -> tuple[float, float]:
    store = RrdStore(root / "ours")
    store.write(batch(T0, 0), STEP)  # creates the files
    paths = [store.path_for(f"router{i // 50}", f"ge-0/0/{i % 50}") for i in range(FILES)]
    bare_root = root / "bare"
    shutil.copytree(root / "ours", bare_root)
    bare = [str(bare_root / p.relative_to(root / "ours")) for p in paths]

    # Both sides start from values in memory: ours from the measurements a collector hands
    # over, bare from (path, in, out) tuples it formats into rrdtool's "ts:in:out" itself.
    # The order alternates per round so that neither side always gets the warmer cache.
    ours = bare_time = 0.0
    for r in range(1, ROUNDS + 1):
        ts = T0 + r * STEP
        measurements = batch(ts, r)
        values = [((r + 1) * 1000 + i, ((r + 1) * 1000 + i) * 2) for i in range(FILES)]
        for side in ((0, 1) if r % 2 else (1, 0)):
            started = time.perf_counter()
            if side == 0:
                report = store.write(measurements, STEP)
                ours += time.perf_counter() - started
                assert not report.errors and report.updates == FILES, report
            else:
                for path, (a, b) in zip(bare, values, strict=True):
                    rrdtool.update(path, f"{ts}:{a}:{b}")
                bare_time += time.perf_counter() - started
        progress(f"direct round {r}/{ROUNDS}")
    n = FILES * ROUNDS
    return n / ours, n / bare_time


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_rrdcached(root: Path) -> tuple[float, float, float]:
    """Updates per second through rrdcached: of wall time, of this process' CPU, and of the
    CPU of both (this process and the daemon): on a shared machine the wall figure measures
    the other processes too."""
    sock = root / "rrdcached.sock"
    journal = root / "journal"
    journal.mkdir()
    proc = subprocess.Popen(
        ["rrdcached", "-g", "-l", f"unix:{sock}", "-p", str(root / "pid"), "-j", str(journal),
         "-w", "3600", "-z", "1", "-f", "7200", "-F", "-t", "4"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        while not sock.exists():
            time.sleep(0.02)
        store = RrdStore(root / "cached", rrdcached=f"unix:{sock}")
        store.write(batch(T0, 0), STEP)
        rounds = 40
        elapsed = ours = daemon = 0.0
        for r in range(1, rounds + 1):
            measurements = batch(T0 + r * STEP, r)
            started, cpu, daemon_cpu = time.perf_counter(), time.process_time(), cpu_seconds(proc.pid)
            report = store.write(measurements, STEP)
            elapsed += time.perf_counter() - started
            ours += time.process_time() - cpu
            daemon += cpu_seconds(proc.pid) - daemon_cpu
            assert not report.errors and report.updates == FILES, report.errors[:3]
            if r % 10 == 0:
                progress(f"rrdcached round {r}/{rounds}")
        store.close()
        n = FILES * rounds
        return n / elapsed, n / ours, n / (ours + daemon)
    finally:
        proc.terminate()
        proc.wait()


def main() -> int:
    with tempfile.TemporaryDirectory(prefix="store-bench-") as tmp:
        root = Path(tmp)
        ours, bare = bench_direct(root)
        cached, cached_cpu, both_cpu = bench_rrdcached(root)
    print(f"(load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
    print(f"store direct:   {ours:10,.0f} updates/s")
    print(f"bare rrdtool:   {bare:10,.0f} updates/s")
    print(f"ratio direct/bare: {ours / bare:.2f}x (target >= 0.85x)")
    print(f"store via rrdcached: {cached:10,.0f} updates/s (target >= 200,000/s; "
          f"{2 * cached:,.0f} values/s); {cached / bare:.1f}x bare rrdtool.update")
    print(f"  per CPU second: {cached_cpu:10,.0f} updates/s of this process' CPU, "
          f"{both_cpu:,.0f} updates/s of this process' and rrdcached's together "
          f"({both_cpu / 200_000:.2f}x the target)")
    print("(an update is one row of one file: a timestamp and its 2 values, as rrdtool counts)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
