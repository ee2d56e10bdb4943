"""One store for several nodes: RRD files created, updated and read through one rrdcached over
TCP (its base directory is the only place the files exist), their index in Redis. Real
rrdcached and redis-server on loopback; a month of history written through `monitor.store`."""

from __future__ import annotations

import math
import os
import subprocess
import time

import numpy as np
import pytest

from cluster.catalog import RedisCatalog
from cluster.commands import format_status
from cluster.results import DiskBuffer
from monitor.config import ClusterConfig
from monitor.files import safe_name
from monitor.model import Measurement
from monitor.store import JsonCatalog, RrdStore
from tests import longhistory
from tests.conftest import MONITOR, ROOT
from tests.daemons import free_port, redis_server, rrdcached_tcp

DAYS = 30


@pytest.fixture
def shared(tmp_path):
    with redis_server(tmp_path) as redis_port, rrdcached_tcp(tmp_path / "rrd-host") as rrd_port:
        config = ClusterConfig(redis=f"redis://127.0.0.1:{redis_port}/0", node="x")

        def store(node: str) -> RrdStore:
            return RrdStore(tmp_path / node, rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                            catalog=RedisCatalog(config))
        yield store, tmp_path / "rrd-host"


def test_two_nodes_write_one_store_the_leader_reads_it_all(shared):
    store, host_dir = shared
    pop1, pop2 = store("pop1"), store("pop2")
    longhistory.feed(pop1, days=DAYS, targets={longhistory.ROUTER})
    longhistory.feed(pop2, days=DAYS, targets={longhistory.WEB, longhistory.DB})
    pop1.close()
    pop2.close()
    # The files are the daemon's; the nodes' own directories hold none.
    assert sorted(p.name for p in (host_dir / "core-router").glob("*.rrd")) == [
        "@.rrd", "Gi0=2F0=2F1.rrd", "Gi0=2F0=2F10.rrd", "Gi0=2F0=2F2.rrd"]
    assert not list(host_dir.parent.joinpath("pop1").rglob("*.rrd"))

    leader = store("leader")
    listed = {(s.target, s.instance) for s in leader.series()}
    assert listed == {(c.target, c.instance) for c in longhistory.columns(days=DAYS)}
    end = longhistory.END
    for target, instance, metric in [(longhistory.ROUTER, longhistory.UPLINK, "in_octets"),
                                     (longhistory.WEB, "ping", "rtt_max_seconds"),
                                     (longhistory.DB, "fs:/var", "used_percent")]:
        want = longhistory.rows(longhistory.column(target, instance, metric, days=DAYS),
                                end - 86400, end, days=DAYS)
        got = leader.fetch(target, instance, end - 86400, end, resolution=300)
        assert got.step == 300
        values = np.array([math.nan if v is None else v
                           for t, v in zip(got.timestamps, got.columns[metric], strict=True)
                           if end - 86400 < t <= end])
        np.testing.assert_allclose(values, want, rtol=1e-9, equal_nan=True)
    modified, _ = leader.modified(leader.info(longhistory.DB, "fs:/var"))
    assert modified == end


def test_a_fresh_value_is_read_back_through_the_daemon_and_a_late_metric_is_added(shared):
    store, host_dir = shared
    node = store("pop1")
    now = int(time.time()) // 60 * 60
    for i in range(3):
        report = node.write([Measurement("sw1", "Gi0/1", "in_octets", 100.0 + i,
                                         timestamp=now - 120 + 60 * i, minimum=0)], 60)
        assert not report.errors
    # A second node that meets the same series adopts the file the first one made, and adds
    # the metric it has more: the file is made again through the daemon, history kept.
    other = store("pop2")
    late = [Measurement("sw1", "Gi0/1", "in_octets", 200.0, timestamp=now + 60, minimum=0),
            Measurement("sw1", "Gi0/1", "out_octets", 5.0, timestamp=now + 60, minimum=0)]
    report = other.write(late, 60)
    assert report.updates == 1 and not report.errors, report.errors
    assert not other.write([Measurement("sw1", "Gi0/1", "in_octets", 201.0, timestamp=now + 120,
                                        minimum=0),
                            Measurement("sw1", "Gi0/1", "out_octets", 6.0, timestamp=now + 120,
                                        minimum=0)], 60).errors
    assert (host_dir / "sw1" / "Gi0=2F1.rrd.tune.rrd").exists()  # the file as it was
    # The first node knew the file with one data source: it takes it as it is now (from the
    # index) before it writes, rather than giving rrdcached a row of the wrong width.
    first = node.write([Measurement("sw1", "Gi0/1", "in_octets", 202.0, timestamp=now + 180,
                                    minimum=0)], 60)
    assert first.updates == 1 and not first.errors, first.errors
    again = node.write([Measurement("sw1", "Gi0/1", "in_octets", 203.0, timestamp=now + 240,
                                    minimum=0)], 60)
    assert not again.errors, again.errors
    # No flush was asked for: FETCH through the daemon flushes first, so the rows are there.
    reader = store("leader")
    got = reader.fetch("sw1", "Gi0/1", now - 300, now + 240)
    # (the first sample only starts the file: its step is less than half known)
    assert [v for v in got.columns["in_octets"] if v is not None] == [
        101.0, 102.0, 200.0, 201.0, 202.0, 203.0]
    assert [v for v in got.columns["out_octets"] if v is not None] == [5.0, 6.0]
    assert reader.last_gauges(reader.info("sw1", "Gi0/1"))["in_octets"] == 203.0


def test_samples_wait_on_disk_while_rrdcached_is_away_the_oldest_dropped_past_the_bound(tmp_path):
    """A node whose rrdcached cannot be reached keeps its samples in the buffer on disk; past
    `buffer_max` the oldest go and are counted; restarted, it writes the rest in order once the
    daemon answers."""
    rrd_port = free_port()  # nothing listens there yet
    buffer_dir = tmp_path / "cluster-buffer"

    def node_store() -> RrdStore:
        return RrdStore(tmp_path / "pop", rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                        catalog=JsonCatalog(tmp_path / "pop"),
                        backlog=DiskBuffer(buffer_dir / "samples", 0, pool=buffer_dir))
    metrics = [f"metric_{i:02d}" for i in range(40)]
    start = int(time.time() // 60) * 60 - 900 * 60
    rows = 900
    store = node_store()
    for row in range(rows):
        report = store.write([Measurement("pop-router", "uplink", m, float(row), unit="x",
                                          timestamp=start + row * 60) for m in metrics], 60)
        assert report.updates == 0
    store.close()  # as good as kill -9: nothing is in memory but the file handles
    samples = DiskBuffer(buffer_dir / "samples", 0, pool=buffer_dir)
    dropped = samples.dropped
    assert 0 < dropped < rows and len(samples) == rows - dropped
    assert sum(p.stat().st_size for p in buffer_dir.rglob("*.jsonl")) <= samples.max_bytes
    assert "sample batch(es) dropped" in format_status({
        "leader": None, "lease_seconds": None, "owners": {}, "stream": {
            "length": 0, "lag": 0, "pending": 0},
        "nodes": [{"node": "pop", "alive": True, "groups": [], "heartbeat_age_seconds": 1.0,
                   "buffered": 0, "dropped": 0, "samples_buffered": len(samples),
                   "samples_dropped": dropped}]})

    with rrdcached_tcp(tmp_path / "rrd-host", port=rrd_port):
        store = node_store()
        store.write([Measurement("pop-router", "uplink", m, float(rows), unit="x",
                                 timestamp=start + rows * 60) for m in metrics], 60)
        while samples.waiting():  # a few of its files per batch
            store.write([], 60)
        series = store.fetch("pop-router", "uplink", start, start + rows * 60 + 60)
        store.close()
    stored = {t: v for t, v in zip(series.timestamps, series.columns["metric_07"], strict=True)
              if v is not None}
    # Exactly the newest rows survived, each with its value, and the one taken after them (the
    # first row of a new file opens its first step: RRD stores no value for it).
    assert stored == {start + row * 60: float(row) for row in range(dropped + 1, rows + 1)}
    assert samples.dropped == dropped and not samples.waiting()


def test_graph_and_digest_commands_read_the_cluster_store(tmp_path):
    """`monitor graph` and `monitor digest` on any node of a cluster draw from the one
    rrdcached's files and their index in Redis, as the leader's site does (the node's own RRD
    directory has none)."""
    with redis_server(tmp_path) as redis_port, rrdcached_tcp(tmp_path / "rrd-host") as rrd_port:
        pop = RrdStore(tmp_path / "pop", rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                       catalog=RedisCatalog(ClusterConfig(redis=f"redis://127.0.0.1:{redis_port}/0")))
        now = int(time.time() // 60) * 60
        for ts in range(now - 7200, now + 1, 60):
            pop.write([Measurement("db1", "fs:/var", "used_percent", 73.0, unit="%", timestamp=ts),
                       Measurement("db1", "fs:/var", "free_bytes", 2e9, unit="B", timestamp=ts)],
                      60)
        pop.close()
        config = tmp_path / "core.toml"
        config.write_text(f"""
[agent]
data_dir = "{tmp_path / 'core'}"
hostname = "core"
[storage]
rrdcached = "127.0.0.1:{rrd_port}"
[cluster]
redis = "redis://127.0.0.1:{redis_port}/0"
node = "core"
[smtp]
host = "127.0.0.1"
port = 9
from = "monitor@example.net"
[contacts]
admins = ["admin@example.net"]
[[digests]]
name = "now"
recipients = ["admins"]
sections = ["disks"]
graphs = false
""")
        config.chmod(0o600)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        digest = subprocess.run([*MONITOR, "--config", str(config), "digest", "now", "--dry-run",
                                 "--last", "1h"], capture_output=True, text=True, timeout=120,
                                env=env)
        graph = subprocess.run([*MONITOR, "--config", str(config), "graph", "--all"],
                               capture_output=True, text=True, timeout=300, env=env)
    assert digest.returncode == 0, digest.stderr
    assert "/var (db1)" in digest.stdout and "73%" in digest.stdout, digest.stdout[-2000:]
    assert graph.returncode == 0, graph.stderr
    day = tmp_path / "core" / "html" / "db1" / safe_name("fs:/var") / "day.png"
    assert day.read_bytes().startswith(b"\x89PNG")
    assert not list((tmp_path / "core").rglob("*.rrd"))


def test_a_partly_replayed_buffer_file_keeps_its_rest_ahead_of_newer_ones(tmp_path, monkeypatch):
    """Replaying after an outage, one file of the buffer is written only in part (here one
    device's file cannot be created on the store host at that moment): what it kept must go
    before the newer files, or those make the device's file newer than the kept samples and
    rrdtool drops them as too old."""
    import cluster.results

    monkeypatch.setattr(cluster.results, "_SEGMENT", 64)  # one batch per buffer file
    rrd_port = free_port()  # nothing listens there yet
    buffer_dir = tmp_path / "cluster-buffer"
    host = tmp_path / "rrd-host"

    def node_store() -> RrdStore:
        return RrdStore(tmp_path / "pop", rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                        catalog=JsonCatalog(tmp_path / "pop"),
                        backlog=DiskBuffer(buffer_dir / "samples", 10 << 20, pool=buffer_dir))
    start = int(time.time() // 60) * 60 - 60 * 60
    store = node_store()
    for row in range(4):
        store.write([Measurement(device, "uplink", "in", float(row), unit="x",
                                 timestamp=start + row * 60) for device in ("r1", "r2")], 60)
    samples = DiskBuffer(buffer_dir / "samples", 10 << 20, pool=buffer_dir)
    assert len(list((buffer_dir / "samples").glob("*.jsonl"))) == 4
    host.mkdir()
    (host / safe_name("r2")).write_text("a file where the device's directory should be")
    with rrdcached_tcp(host, port=rrd_port):
        report = store.write([], 60)  # r1's rows go in; r2's first file stays
        assert any("r2" in error for error in report.errors)
        (host / safe_name("r2")).unlink()
        while samples.waiting():
            store.write([], 60)
        series = {d: store.fetch(d, "uplink", start - 60, start + 4 * 60) for d in ("r1", "r2")}
        store.close()
    for device, got in series.items():
        stored = {t: v for t, v in zip(got.timestamps, got.columns["in"], strict=True)
                  if v is not None}
        # (the first sample opens the file's first step: RRD stores no value for it)
        assert stored == {start + row * 60: float(row) for row in range(1, 4)}, device
