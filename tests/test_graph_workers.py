"""`monitor graph`'s worker processes end with it, however it ends (SIGTERM, kill -9)."""

from __future__ import annotations

import contextlib
import signal
import subprocess
import time

import psutil
import pytest

from monitor.model import Kind, Measurement
from monitor.store import RrdStore
from tests.conftest import MONITOR
from tests.test_graphs import graph_config

STEP = 60
T0 = 1_763_880_000


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL])
def test_workers_end_with_monitor_graph(tmp_path, write_config, how):
    store = RrdStore(tmp_path / "data" / "rrd")
    for i in range(30):  # enough graphs (300 x 4) to keep two workers busy for seconds
        store.write([Measurement("sw", f"port{n}", "in_octets", 1000.0 * i + n, Kind.GAUGE, "B/s",
                                 T0 + i * STEP) for n in range(300)], STEP)
    store.close()
    config = graph_config(write_config, tmp_path / "data", workers=2)
    proc = subprocess.Popen([*MONITOR, "--config", str(config), "graph", "--all"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        parent = psutil.Process(proc.pid)
        deadline = time.monotonic() + 60
        workers: list[psutil.Process] = []
        while time.monotonic() < deadline and proc.poll() is None:
            # the workers are the forkserver's children: grandchildren of `monitor graph`
            workers = [p for p in parent.children(recursive=True) if p.ppid() != proc.pid]
            if len(workers) >= 2 and (tmp_path / "data" / "html" / "sw").exists():
                break
            time.sleep(0.05)
        assert proc.poll() is None and len(workers) >= 2, "the workers never started"
        everyone = parent.children(recursive=True)
        proc.send_signal(how)
        proc.wait(timeout=30)
        _, alive = psutil.wait_procs(everyone, timeout=15)
        assert alive == [], [(p.pid, p.name()) for p in alive]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        for leftover in everyone if "everyone" in locals() else []:  # ours: never leave them
            with contextlib.suppress(psutil.Error):
                leftover.kill()
