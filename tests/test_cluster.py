"""Several agents as one cluster, for real: a redis-server on loopback and three `monitor run`
processes with different node names, sharing service checks against counting TCP servers.

A cycle is `time // interval` (the agents run aligned to it). The servers record when each
check connected; each check must be run exactly once per cycle with three nodes, after one is
killed with SIGKILL (from the second cycle on: a takeover of at most two intervals) and after
it comes back. Never more than once, at any time.
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.ownership import assign, owner
from tests.conftest import MONITOR, ROOT
from tests.daemons import redis_server

INTERVAL = 3.0


class CountingServers:
    """TCP listeners on loopback that accept, note (port, time) and hang up."""

    def __init__(self, count: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.ports: list[int] = []
        self.hits: list[tuple[int, float]] = []
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            sock.listen(64)
            sock.setblocking(False)
            self.selector.register(sock, selectors.EVENT_READ)
            self.ports.append(sock.getsockname()[1])
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self._stop:
            for key, _ in self.selector.select(0.2):
                with contextlib.suppress(OSError):
                    conn, _ = key.fileobj.accept()  # type: ignore[union-attr]
                    self.hits.append((key.fileobj.getsockname()[1], time.time()))  # type: ignore[union-attr]
                    conn.close()

    def per_cycle(self) -> dict[int, Counter[int]]:
        """cycle -> {port: connections}."""
        out: dict[int, Counter[int]] = {}
        for port, when in list(self.hits):
            out.setdefault(int(when // INTERVAL), Counter())[port] += 1
        return out

    def close(self) -> None:
        self._stop = True
        self.thread.join(5)
        for key in list(self.selector.get_map().values()):
            key.fileobj.close()  # type: ignore[union-attr]


def cluster_config(tmp: Path, node: str, redis_port: int, body: str) -> Path:
    data = tmp / node
    data.mkdir(exist_ok=True)
    path = tmp / f"{node}.toml"
    path.write_text(f"""
[agent]
data_dir = "{data}"
interval = "{INTERVAL:g}s"
jitter = "0s"

[web]
interval = "0s"

[cluster]
redis = "redis://127.0.0.1:{redis_port}/0"
node = "{node}"
heartbeat = "0.3s"
lease = "1.5s"
{body}""")
    path.chmod(0o600)
    return path


@contextlib.contextmanager
def agent(config: Path, log: Path) -> Iterator[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("ab") as out:
        proc = subprocess.Popen([*MONITOR, "--config", str(config), "-v", "run"], cwd=config.parent,
                                stdout=out, stderr=subprocess.STDOUT, env=env,
                                start_new_session=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_until(predicate, what: str, limit: float = 60.0) -> None:
    """Wait for a condition of the world (not an assertion on how long it took)."""
    deadline = time.monotonic() + limit
    while not predicate():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def wait_cycles(n: int) -> int:
    """Sleep until `n` cycles after the current one have begun; returns that cycle."""
    target = int(time.time() // INTERVAL) + n
    time.sleep(max(0.0, target * INTERVAL - time.time() + 0.05))
    return target


def live(client: redis.Redis) -> set[str]:
    names = client.smembers("monitor:nodes")
    return {n for n in names if client.exists(f"monitor:node:{n}")}


def test_rendezvous_moves_only_the_lost_nodes_share():
    units = {f"dev{i}": "default" for i in range(300)}
    three = assign(units, {"a": ["default"], "b": ["default"], "c": ["default"]})
    two = assign(units, {"a": ["default"], "b": ["default"]})
    assert {three[u] for u in units} == {"a", "b", "c"}
    assert all(two[u] == three[u] for u in units if three[u] != "c")
    assert all(two[u] in ("a", "b") for u in units)
    # Groups: a unit goes only to a node of its group; none when no live node serves it.
    grouped = assign({"x": "pop2", "y": "default"}, {"a": ["default"], "p": ["pop2"]})
    assert grouped == {"x": "p", "y": "a"}
    assert assign({"x": "pop3"}, {"a": ["default"]}) == {"x": None}
    assert owner("x", []) is None


def test_each_check_once_per_cycle_with_three_nodes_a_kill_and_a_return(tmp_path):
    servers = CountingServers(12)
    checks = "".join(f'\n[[services]]\nname = "svc{i}"\nkind = "tcp"\nhost = "127.0.0.1"\n'
                     f'port = {port}\ntimeout = "1s"\n' for i, port in enumerate(servers.ports))
    names = ["node-a", "node-b", "node-c"]
    with redis_server(tmp_path) as port, contextlib.ExitStack() as stack:
        client = redis.Redis(port=port, decode_responses=True)
        configs = {n: cluster_config(tmp_path, n, port, checks) for n in names}
        procs = {n: stack.enter_context(agent(configs[n], tmp_path / f"{n}.log")) for n in names}
        wait_until(lambda: live(client) == set(names), "three heartbeats")
        # The node to kill is the one that owns the most checks.
        shares = Counter(assign({f"svc{i}": "default" for i in range(12)},
                                {n: ["default"] for n in names}).values())
        victim = shares.most_common(1)[0][0]
        first = wait_cycles(2)
        wait_cycles(3)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        killed = int(time.time() // INTERVAL)
        wait_cycles(4)
        back = stack.enter_context(agent(configs[victim], tmp_path / f"{victim}.log"))
        wait_until(lambda: victim in live(client), "the node's return")
        returned = int(time.time() // INTERVAL)
        last = wait_cycles(4) - 1
        owners = {k: json.loads(v)["node"] for k, v in client.hgetall("monitor:owners").items()}
        assert back.poll() is None
    servers.close()
    logs = {n: (tmp_path / f"{n}.log").read_text(errors="replace") for n in names}
    counts = servers.per_cycle()
    every = set(servers.ports)
    for cycle in range(first, last + 1):
        seen = counts.get(cycle, Counter())
        assert max(seen.values(), default=0) <= 1, (cycle, seen, logs)
        if cycle in (killed, killed + 1):
            continue  # the takeover: at most two intervals
        assert set(seen) == every, (cycle, killed, returned, sorted(every - set(seen)))
    # The returned node has its share back (it owns those checks again).
    assert victim in set(owners.values())
    assert "Traceback" not in "".join(logs.values())
