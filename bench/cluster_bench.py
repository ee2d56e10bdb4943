"""Three nodes against one node, same total work, same run: 100 devices x 48 interfaces (the
SNMP collector's 8 values per interface each cycle) written through one rrdcached over TCP by
the remote store ([cluster]), with the index in one Redis.

Single: one process writes every device's batch per cycle. Cluster: three processes (one per
node) each write their rendezvous share of the devices at the same time. Prints the cycle time
(all writers done) and the RRD updates/s of each, and the ratio.
Run: .venv/bin/python bench/cluster_bench.py
"""

from __future__ import annotations

import multiprocessing
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from cluster.catalog import RedisCatalog
from cluster.ownership import assign
from monitor.config import ClusterConfig
from monitor.model import Measurement
from monitor.store import RrdStore
from tests.daemons import redis_server, rrdcached_tcp

DEVICES, PORTS, STEP, CYCLES = 100, 48, 300, 12
METRICS = ("in_octets", "out_octets", "in_errors", "out_errors", "in_discards", "out_discards",
           "oper_status", "speed_bps")
T0 = 1_700_000_100 // STEP * STEP


def cycle_batch(devices: list[str], ts: int) -> list[Measurement]:
    return [Measurement(d, f"Gi0/{p}", m, float(ts % 977 + p), timestamp=ts, minimum=0)
            for d in devices for p in range(PORTS) for m in METRICS]


def writer(devices: list[str], rrd: str, redis_url: str, root: str, start: multiprocessing.Barrier,
           done: multiprocessing.Queue, first: int) -> None:
    store = RrdStore(Path(root), rrdcached=rrd, remote=True,
                     catalog=RedisCatalog(ClusterConfig(redis=redis_url)))
    store.write(cycle_batch(devices, first), STEP)  # creates the files: not timed
    for n in range(1, CYCLES + 1):
        start.wait()
        began = time.perf_counter()
        report = store.write(cycle_batch(devices, first + n * STEP), STEP)
        assert not report.errors, report.errors[:3]
        done.put((n, time.perf_counter() - began, report.updates))
    store.close()


def run(shares: list[list[str]], rrd: str, redis_url: str, tmp: Path, first: int
        ) -> tuple[float, float]:
    """(median cycle seconds, updates per second) with one writer process per share."""
    context = multiprocessing.get_context("spawn")
    start, done = context.Barrier(len(shares) + 1), context.Queue()
    procs = [context.Process(target=writer, args=(share, rrd, redis_url, str(tmp / f"w{i}"),
                                                  start, done, first))
             for i, share in enumerate(shares)]
    for p in procs:
        p.start()
    cycles = []
    updates = 0
    for _ in range(CYCLES):
        start.wait()
        began = time.perf_counter()
        for _ in shares:
            _, _, n = done.get(timeout=600)
            updates += n
        cycles.append(time.perf_counter() - began)
    for p in procs:
        p.join()
    cycles.sort()
    return cycles[len(cycles) // 2], updates / sum(cycles)


def main() -> int:
    devices = [f"router{i:03d}" for i in range(DEVICES)]
    with tempfile.TemporaryDirectory(prefix="cluster-bench-") as name:
        tmp = Path(name)
        with redis_server(tmp) as redis_port, rrdcached_tcp(tmp / "rrd-host") as rrd_port:
            rrd, url = f"127.0.0.1:{rrd_port}", f"redis://127.0.0.1:{redis_port}/0"
            one, one_rate = run([devices], rrd, url, tmp / "single", T0)
            owners = assign({d: "default" for d in devices},
                            {n: ["default"] for n in ("node-a", "node-b", "node-c")})
            shares = [[d for d in devices if owners[d] == n] for n in ("node-a", "node-b", "node-c")]
            # The same files, later cycles: the cluster writes on where the single node stopped.
            three, three_rate = run(shares, rrd, url, tmp / "cluster",
                                    T0 + (CYCLES + 1) * STEP)
    rows = DEVICES * PORTS
    print(f"workload: {DEVICES} devices x {PORTS} interfaces = {rows} RRD rows per cycle "
          f"({rows * len(METRICS)} values), {CYCLES} cycles, one rrdcached over TCP")
    print(f"single node:  cycle {one:.3f} s, {one_rate:,.0f} RRD updates/s")
    print(f"three nodes:  cycle {three:.3f} s, {three_rate:,.0f} RRD updates/s "
          f"(shares {', '.join(str(len(s)) for s in shares)} devices)")
    print(f"ratio (three / single): cycle time {three / one:.2f}x, updates/s "
          f"{three_rate / one_rate:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
