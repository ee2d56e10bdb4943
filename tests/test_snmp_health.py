"""UPS, BGP and device health over SNMP, against real device recordings served by snmpsim
(tests/data/health, see SOURCES.md there) and net-snmp's snmpd; the default link-error rule.

Each recording exists once per poll (NAME-t0, NAME-t1, ...): a test polls t0, switches the
device's community to t1 and polls again, as tests/test_snmp.py does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from collectors.snmp import SnmpCollector
from collectors.snmp_bgp import BgpWatch, Peer
from collectors.snmp_health import ErrorWatch
from monitor.config import SnmpDevice
from monitor.model import Batch, State
from tests.conftest import DATA, ROOT
from tests.test_snmp import Clock, free_udp_port, snmpd, stop, wait_for_agent  # noqa: F401

HEALTH_DATA = DATA / "health"
T0 = 1_800_000_000


@pytest.fixture(scope="module")
def recordings():
    tmp = Path(tempfile.mkdtemp(prefix="monitor-snmpsim-health-"))
    cache = tmp / "cache"
    cache.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(cache, 0o777)
    port = free_udp_port()
    argv = [sys.executable, str(ROOT / "scripts" / "run_snmpsim.py"),
            f"--data-dir={HEALTH_DATA}", f"--cache-dir={cache}",
            f"--agent-udpv4-endpoint=127.0.0.1:{port}", "--logging-method=null"]
    if os.geteuid() == 0:
        argv += ["--process-user=nobody", "--process-group=nogroup"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(wait_for_agent(port, "ups-eaton-t0", proc, "snmpsim"))
    except RuntimeError:
        stop(proc)
        raise
    yield port
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


class Device:
    """One recorded device polled through its phases with a fake clock."""

    def __init__(self, port: int, recording: str, **kw) -> None:
        self.recording = recording
        self.clock = Clock(T0)
        dev = SnmpDevice(name=recording, host="127.0.0.1", port=port, community=f"{recording}-t0",
                         timeout=2.0, retries=1, **kw)
        self.collector = SnmpCollector([dev], 300, clock=self.clock)

    def poll(self, phase: int, seconds: float = 300) -> Batch:
        poller = self.collector.pollers[self.recording]
        if phase:
            self.collector.replace_device(dataclasses.replace(
                poller.device, community=f"{self.recording}-t{phase}"))
            self.clock.now += seconds
        return asyncio.run(self.collector.collect())

    def close(self) -> None:
        self.collector.close()


def checks(batch: Batch) -> dict[str, tuple[State, str]]:
    return {c.check: (c.state, c.message) for c in batch.checks}


def values(batch: Batch, instance: str) -> dict[str, float | None]:
    return {m.metric: m.value for m in batch.measurements if m.instance == instance}


def test_probe(recordings):
    for name in ("ups-eaton", "apc-smt750", "bgp-ios", "bgp-junos", "cisco-c3560", "juniper-mx960",
                 "arista-7150s", "routeros-rb750"):
        d = Device(recordings, name)
        b = d.poll(0)
        print(name, d.collector.pollers[name].health.found.text())
        for k, v in checks(b).items():
            print("   ", k, v)
        print("   ", sorted({(m.instance, m.metric, m.value) for m in b.measurements if not m.instance.startswith(("Gi", "Fa", "eth", "vmac", "LOOP"))})[:40])
        d.close()
