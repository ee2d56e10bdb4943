"""What reading UPS, BGP and health MIBs adds to an SNMP poll, measured in the same run.

    .venv/bin/python bench/health_bench.py [--polls 30]

Against net-snmp's snmpd on loopback (a Linux box: HOST-RESOURCES and UCD, no UPS, no BGP) and
snmpsim serving the real Juniper MX960 recording of tests/data/health (jnxOperatingTable: 68
sensors, PSUs and fans): the wall time of `--polls` polls of one device with `health = false`
(interfaces only, the reference) and with `health = true`, the first poll (the survey of every
table) apart. Prints each time and the ratio. No target was set for it in the issue; the
figure says what the feature costs.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from collectors.snmp import SnmpCollector  # noqa: E402
from monitor.config import SnmpDevice  # noqa: E402
from tests.daemons import free_port  # noqa: E402
from tests.test_snmp import serving, stop, wait_for_agent  # noqa: E402


def timed(device: SnmpDevice, polls: int) -> tuple[float, float]:
    """(first poll, mean of the later ones) in seconds."""
    collector = SnmpCollector([device], 300)
    clock = [1_800_000_000.0]
    collector.clock = lambda: clock[0]
    try:
        start = time.perf_counter()
        asyncio.run(collector.collect())
        first = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(polls):
            clock[0] += 300
            asyncio.run(collector.collect())
        return first, (time.perf_counter() - start) / polls
    finally:
        collector.close()


def compare(name: str, device: SnmpDevice, polls: int) -> None:
    off_first, off = timed(dataclasses.replace(device, health=False), polls)
    on_first, on = timed(device, polls)
    print(f"{name}: interfaces only {off * 1000:.1f} ms/poll (first {off_first * 1000:.0f} ms); "
          f"with health {on * 1000:.1f} ms/poll (first {on_first * 1000:.0f} ms); "
          f"ratio {on / off:.2f}x (first poll {on_first / off_first:.2f}x)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--polls", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port(__import__("socket").SOCK_DGRAM)
        conf = Path(tmp) / "snmpd.conf"
        conf.write_text("rocommunity bench 127.0.0.1\n")
        proc = subprocess.Popen(["/usr/sbin/snmpd", "-f", "-Lf", f"{tmp}/log", "-C", "-c", str(conf),
                                 f"--persistentDir={tmp}", f"udp:127.0.0.1:{port}"],
                                env={**os.environ, "MIBS": ""}, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        try:
            asyncio.run(wait_for_agent(port, "bench", proc, "snmpd"))
            compare("net-snmp snmpd (Linux, lo only)", SnmpDevice(
                name="linux", host="127.0.0.1", port=port, community="bench", include=["lo"],
                skip_types=[]), args.polls)
        finally:
            stop(proc)
    with serving(ROOT / "tests" / "data" / "health", "juniper-mx960-t0") as port:
        compare("snmpsim Juniper MX960 recording", SnmpDevice(
            name="mx960", host="127.0.0.1", port=port, community="juniper-mx960-t0"), args.polls)


if __name__ == "__main__":
    main()
