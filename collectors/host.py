"""This machine's health through psutil: CPU, load, memory, swap, network interfaces, uptime.

Target: the agent's host name. Instances: "" for the system as a whole, "nic:NAME" for each
network interface. CPU time and interface counters are stored as counters (rates per second).
"""

from __future__ import annotations

import asyncio
import os
import time
from dataclasses import dataclass

import psutil

from monitor.config import Config
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, State
from monitor.units import format_duration


@dataclass
class HostCollector:
    target: str
    interval: float
    name: str = "host"

    async def collect(self) -> Batch:
        return await asyncio.to_thread(self.sample)

    def sample(self) -> Batch:
        now = time.time()
        batch = Batch()

        def gauge(metric: str, value: float, unit: str, instance: str = "") -> Measurement:
            m = Measurement(self.target, instance, metric, value, Kind.GAUGE, unit, now)
            batch.add(m)
            return m

        def counter(metric: str, value: float, unit: str, instance: str = "") -> None:
            batch.add(Measurement(self.target, instance, metric, value, Kind.DERIVE, unit, now))

        # CPU time in centiseconds: its rate per second reads as "percent of one CPU".
        cpu = psutil.cpu_times()
        for part in ("user", "system", "idle", "iowait", "steal", "nice", "irq", "softirq"):
            if hasattr(cpu, part):
                counter(f"cpu_{part}_percent", getattr(cpu, part) * 100, "%")
        gauge("cpu_count", psutil.cpu_count() or 1, "")
        load1, load5, load15 = os.getloadavg()
        gauge("load1", load1, "")
        gauge("load5", load5, "")
        gauge("load15", load15, "")
        mem = psutil.virtual_memory()
        gauge("memory_total_bytes", mem.total, "B")
        gauge("memory_available_bytes", mem.available, "B")
        gauge("memory_used_bytes", mem.total - mem.available, "B")
        swap = psutil.swap_memory()
        gauge("swap_total_bytes", swap.total, "B")
        gauge("swap_used_bytes", swap.used, "B")
        uptime = now - psutil.boot_time()
        gauge("uptime_seconds", uptime, "s")
        gauge("processes", len(psutil.pids()), "")
        for nic, io in psutil.net_io_counters(pernic=True).items():
            instance = f"nic:{nic}"
            counter("in_octets", io.bytes_recv, "B", instance)
            counter("out_octets", io.bytes_sent, "B", instance)
            counter("in_packets", io.packets_recv, "", instance)
            counter("out_packets", io.packets_sent, "", instance)
            counter("in_errors", io.errin, "", instance)
            counter("out_errors", io.errout, "", instance)
            counter("in_discards", io.dropin, "", instance)
            counter("out_discards", io.dropout, "", instance)
        used_pct = 100.0 * (mem.total - mem.available) / mem.total if mem.total else 0.0
        batch.checks.append(CheckResult(
            self.target, "host", State.OK,
            f"load {load1:.2f}, memory {used_pct:.0f}% used, up {format_duration(uptime)}",
            timestamp=now,
        ))
        return batch


def build(config: Config) -> list[Collector]:
    if not config.host.enabled:
        return []
    interval = config.host.interval or config.agent.interval
    return [HostCollector(config.agent.hostname, interval)]
