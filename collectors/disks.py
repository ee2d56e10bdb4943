"""Disk health: file system usage and inodes, disk I/O, SMART and Linux md RAID.

Target: the agent's host name. Instances (see the naming contract in the README):
"fs:<mount point>" (used_bytes, free_bytes, size_bytes, used_percent, inodes_used, inodes_free,
inodes_used_percent), "io:<device>" (read_bytes, write_bytes, read_ops, write_ops as DERIVE,
busy_percent), "smart:<device>" and "md:<array>". Checks: "disk <mount point>",
"smart <device>" (plus one "smart" check for smartctl itself), "raid <array>" and one "disks"
check that says what is watched, or which part could not run.

Each part is its own module (fsusage, smart, mdstat); this one wires them to the config and
runs them side by side, so a slow smartctl or a hung NFS mount delays nothing else.
"""

from __future__ import annotations

import asyncio
import fnmatch
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from collectors.fsusage import BoundedStatvfs, UsageThresholds, collect_usage
from collectors.mdstat import array_check, parse_mdstat
from collectors.smart import SmartCollector, SmartDevice, SmartLimits
from monitor.config import Config, DisksConfig
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, State


def io_measurements(target: str, counters: dict[str, Any], exclude: list[str],
                    whole_disks: set[str] | None, now: float) -> list[Measurement]:
    """Per-device counters as DERIVE (the store turns them into rates per second).

    busy_percent is the device's busy time in centiseconds: its rate per second is the percent
    of time the device was busy (like iostat's %util).
    """
    out = []
    for name, io in sorted(counters.items()):
        if any(fnmatch.fnmatchcase(name, p) for p in exclude):
            continue
        if whole_disks is not None and name not in whole_disks:
            continue
        instance = f"io:{name}"

        def derive(metric: str, value: float, unit: str, instance: str = instance) -> Measurement:
            return Measurement(target, instance, metric, value, Kind.DERIVE, unit, now)

        out += [derive("read_bytes", io.read_bytes, "B"), derive("write_bytes", io.write_bytes, "B"),
                derive("read_ops", io.read_count, ""), derive("write_ops", io.write_count, "")]
        busy = getattr(io, "busy_time", None)  # milliseconds; Linux and FreeBSD only
        if busy is not None:
            out.append(derive("busy_percent", busy / 10, "%"))
    return out


def _whole_disks(sys_block: Path) -> set[str] | None:
    """Names under /sys/block (whole disks, not partitions); None when unknown."""
    try:
        return {p.name.replace("!", "/") for p in sys_block.iterdir()}
    except OSError:
        return None


@dataclass
class DisksCollector:
    target: str
    interval: float
    config: DisksConfig
    state_dir: Path
    name: str = "disks"
    io_counters: Callable[[], dict[str, Any]] | None = None
    sys_block: Path = Path("/sys/block")
    clock: Callable[[], float] = time.time

    def __post_init__(self) -> None:
        c = self.config
        self.limits = UsageThresholds(c.usage_warning, c.usage_critical, c.inodes_warning,
                                      c.inodes_critical)
        # Lives as long as the collector, so a call stuck on a hung mount is remembered.
        self.statvfs = BoundedStatvfs(c.statvfs_timeout)
        self.smart: SmartCollector | None = None
        if c.smart != "off" and c.smart != []:
            devices = None if c.smart == "auto" else [SmartDevice.parse(d) for d in c.smart]
            self.smart = SmartCollector(
                self.target, c.smartctl, devices, self.state_dir / "smart.json",
                SmartLimits(c.smart_temperature_warning, c.smart_temperature_critical,
                            c.smart_wear_warning, c.smart_growth_hold),
                timeout=c.smart_timeout, rescan=c.smart_rescan, clock=self.clock,
            )

    async def collect(self) -> Batch:
        c = self.config
        parts: list[Any] = [collect_usage(self.target, c.mounts, c.include, c.exclude,
                                          c.exclude_fs_types, self.limits, self.statvfs, self.clock),
                            asyncio.to_thread(self.raid)]
        if c.io:
            parts.append(asyncio.to_thread(self.io))
        if self.smart is not None:
            parts.append(self.smart.collect())
        batch = Batch()
        problems: list[CheckResult] = []
        for part in await asyncio.gather(*parts, return_exceptions=True):
            if isinstance(part, BaseException):
                # One part failing (a bug, an odd file) must not cost the others' results.
                problems.append(CheckResult(self.target, "disks", State.UNKNOWN,
                                            f"part of the disks collector failed: {part!r}"))
                continue
            for item in part:
                if isinstance(item, CheckResult) and item.check == "disks":
                    problems.append(item)
                else:
                    batch.add(item)
        batch.add(self.summary(batch, problems))
        return batch

    def summary(self, batch: Batch, problems: list[CheckResult]) -> CheckResult:
        """One "disks" check: what was looked at, or what kept a part from running.

        Always sent, so a problem reported in an earlier run (an unreadable mount table)
        returns to OK once it is gone.
        """
        if problems:
            return CheckResult(self.target, "disks", State.worst(p.state for p in problems),
                               "; ".join(p.message for p in problems), timestamp=self.clock())
        kinds: dict[str, set[str]] = {}
        for m in batch.measurements:
            kind, _, name = m.instance.partition(":")
            kinds.setdefault(kind, set()).add(name)
        counts = [f"{len(kinds.get(k, ()))} {label}" for k, label in (
            ("fs", "file system(s)"), ("io", "disk(s) with I/O counters"),
            ("smart", "SMART disk(s)"), ("md", "md array(s)"))]
        return CheckResult(self.target, "disks", State.OK, "watching " + ", ".join(counts),
                           timestamp=self.clock())

    def io(self) -> list[Measurement]:
        counters = (self.io_counters or (lambda: psutil.disk_io_counters(perdisk=True)))() or {}
        whole = None if self.config.io_partitions else _whole_disks(self.sys_block)
        return io_measurements(self.target, counters, self.config.io_exclude, whole, self.clock())

    def raid(self) -> list[CheckResult]:
        try:
            text = Path(self.config.mdstat).read_text(encoding="utf-8", errors="replace")
        except FileNotFoundError:
            return []  # no md driver loaded: no software RAID on this machine
        except OSError as exc:
            return [CheckResult(self.target, "disks", State.UNKNOWN,
                                f"cannot read {self.config.mdstat}: {exc.strerror}",
                                timestamp=self.clock())]
        now = self.clock()
        return [array_check(self.target, a, now) for a in parse_mdstat(text)]


def build(config: Config) -> list[Collector]:
    if not config.disks.enabled:
        return []
    interval = config.disks.interval or config.agent.interval
    return [DisksCollector(config.agent.hostname, interval, config.disks, config.state_dir)]
