"""Disk usage checks vs the Nagios reference, same mounts, same run.

Reference: monitoring-plugins' check_disk (what most admins run today), one process per check
of all local file systems, against our collect_usage() over the same mount table with its
time-bounded statvfs threads. Also: SMART interpretation of the recorded smartctl outputs and
/proc/mdstat parsing per second (CPU cost per run, no reference). Prints figures and ratios.
Run: .venv/bin/python bench/disks_bench.py
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from collectors.fsusage import BoundedStatvfs, UsageThresholds, collect_usage  # noqa: E402
from collectors.mdstat import array_check, parse_mdstat  # noqa: E402
from collectors.smart import SmartDevice, SmartLimits, interpret  # noqa: E402
from monitor.config import DEFAULT_EXCLUDED_FS_TYPES  # noqa: E402

ROUNDS = 200
CHECK_DISK = "/usr/lib/nagios/plugins/check_disk"


def progress(text: str) -> None:
    print(f"  {text}", file=sys.stderr, flush=True)


def ours(rounds: int, exclude_fs_types: list[str], include: list[str]) -> tuple[float, int]:
    statvfs = BoundedStatvfs(5.0)

    async def run() -> int:
        n = 0
        for _ in range(rounds):
            checks = await collect_usage("bench", Path("/proc/self/mounts"), include, [],
                                         exclude_fs_types, UsageThresholds(), statvfs)
            n = len(checks)
        return n

    start = time.perf_counter()
    n = asyncio.run(run())
    return time.perf_counter() - start, n


def reference(rounds: int, everything: bool) -> tuple[float, list[str]]:
    if everything:  # every mount check_disk considers (it skips size-0 pseudo file systems)
        argv = [CHECK_DISK, "-w", "15%", "-c", "5%", "-A"]
    else:  # local file systems, pseudo types excluded as far as check_disk allows
        argv = [CHECK_DISK, "-w", "15%", "-c", "5%", "-l", "-A",
                *[a for t in ("tmpfs", "devtmpfs", "overlay", "squashfs", "proc", "sysfs", "cgroup",
                              "cgroup2", "devpts") for a in ("-X", t)]]
    out = subprocess.run(argv, capture_output=True, text=True, check=False).stdout
    # Perfdata "/mount=USEDB;warn;crit;0;size" names the mount points it checked.
    checked = [item.split("=", 1)[0] for item in out.split("|", 1)[-1].split() if "=" in item]
    start = time.perf_counter()
    for _ in range(rounds):
        subprocess.run(argv, capture_output=True, check=False)
    return time.perf_counter() - start, checked


def smart_rate(seconds: float = 1.0) -> float:
    docs = [(json.loads(p.read_text()), p.name) for p in sorted((ROOT / "tests/data/smart").glob("*.json"))]
    device, limits = SmartDevice("/dev/sda"), SmartLimits()
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for doc, _ in docs:
            interpret("bench", device, doc["smartctl"]["exit_status"], doc, "", {}, limits, 0.0)
            n += 1
    return n / (time.perf_counter() - start)


def mdstat_rate(seconds: float = 1.0) -> float:
    texts = [p.read_text() for p in sorted((ROOT / "tests/data/mdstat").glob("*.txt"))]
    n, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for text in texts:
            for a in parse_mdstat(text):
                array_check("bench", a, 0.0)
            n += 1
    return n / (time.perf_counter() - start)


def main() -> None:
    if not Path(CHECK_DISK).exists():
        t_ours, mounts = ours(ROUNDS, DEFAULT_EXCLUDED_FS_TYPES, [])
        print(f"usage: ours {1000 * t_ours / ROUNDS:.2f} ms per run ({mounts} mounts); reference "
              "check_disk not installed (apt-get install monitoring-plugins-basic)")
    else:
        for label, everything in (("local file systems", False), ("all mounts check_disk -A sees", True)):
            progress(f"check_disk x {ROUNDS} ({label})")
            t_ref, checked = reference(ROUNDS, everything)
            progress(f"collect_usage x {ROUNDS} on the same {len(checked)} mount(s)")
            t_ours, mounts = ours(ROUNDS, [], checked)
            print(f"usage, {label} ({mounts} mounts): ours {1000 * t_ours / ROUNDS:.2f} ms per run, "
                  f"check_disk {1000 * t_ref / ROUNDS:.2f} ms; ratio ours/check_disk "
                  f"{t_ours / t_ref:.2f} (below 1 = faster)")
    progress("SMART and mdstat interpretation")
    print(f"SMART interpretation: {smart_rate():,.0f} smartctl outputs/s (CPU only; smartctl itself "
          "takes ~10-100 ms per disk)")
    print(f"mdstat: {mdstat_rate():,.0f} files parsed and checked/s")


if __name__ == "__main__":
    main()
