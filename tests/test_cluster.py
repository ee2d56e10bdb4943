"""Several agents as one cluster, for real: a redis-server on loopback and three `monitor run`
processes with different node names, sharing service checks against counting TCP servers.

A cycle is `time // interval` (the agents run aligned to it). The servers record when each
check connected; each check must be run exactly once per cycle with three nodes, after one is
killed with SIGKILL (from the second cycle on: a takeover of at most two intervals) and after
it comes back. Never more than once, at any time.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import selectors
import signal
import socket
import struct
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from cluster.catalog import RedisCatalog
from cluster.node import ClusterNode
from cluster.ownership import assign, owner
from monitor.config import ClusterConfig
from monitor.store import RrdStore
from tests.conftest import DATA, MONITOR, ROOT
from tests.daemons import free_port, redis_server, rrdcached_tcp, snmpsim

INTERVAL = 3.0


def connected_at(conn: socket.socket) -> float:
    """When the peer of an accepted TCP connection connected, by the kernel (tcp_info's
    time since the last data received, which is the handshake for a peer that sent none): a
    test process slowed down by a busy machine would note its own, later, time."""
    info = conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    (since_ms,) = struct.unpack_from("I", info, 52)  # tcpi_last_data_recv
    return time.time() - since_ms / 1000.0


class CountingServers:
    """TCP listeners on loopback that accept, note (port, when the peer connected) and hang
    up."""

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
                    self.hits.append((key.fileobj.getsockname()[1], connected_at(conn)))  # type: ignore[union-attr]
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
hostname = "{node}"

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


def cluster_status(config: Path, *options: str) -> str:
    out = subprocess.run([*MONITOR, "--config", str(config), "cluster", "status", *options],
                         capture_output=True, text=True, timeout=60,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.returncode == 0, out.stderr
    return out.stdout


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


def claims(client: redis.Redis, job: str, units: list[str], cycle: int) -> dict[str, str | None]:
    """unit -> the node that claimed it in `cycle` (None: nobody, or too long ago)."""
    return dict(zip(units, client.mget([f"monitor:claim:{job}:{u}:{cycle}" for u in units]),
                    strict=True))


def wait_for_cycle(done, what: str) -> int:
    """Wait for a cycle (the current one or the one before) of which `done(cycle)` holds;
    returns it. The agents start slowly on a busy machine: a condition, not a count of cycles."""
    found: list[int] = []

    def check() -> bool:
        now = int(time.time() // INTERVAL)
        found[:] = [c for c in (now - 1, now) if done(c)][:1]
        return bool(found)
    wait_until(check, what, limit=120.0)
    return found[0]


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
    # A node that joins in a cycle gets units of it only where no other node serves the group.
    joined = assign(units, {"a": ["default"], "b": ["default"], "c": ["default", "pop2"]},
                    newcomers={"c"})
    assert joined == two
    assert assign({"x": "pop2"}, {"a": ["default"], "c": ["pop2"]}, newcomers={"c"}) == {"x": "c"}


async def test_claims_one_node_per_unit_and_cycle_whatever_the_timing(tmp_path):
    """Two real nodes on one redis-server and a hand-set clock: nodes that disagree on who is
    alive, a run that comes late, a node that joins in the middle of a cycle."""
    units = {f"dev{i}": "default" for i in range(40)}
    now = [999 * INTERVAL]

    def node(name: str, port: int) -> ClusterNode:
        return ClusterNode(ClusterConfig(redis=f"redis://127.0.0.1:{port}/0", node=name,
                                         heartbeat=10), clock=lambda: now[0])
    with redis_server(tmp_path) as port:
        a = node("a", port)
        await a.beat()
        now[0] = 1000 * INTERVAL + 0.3
        # b starts in this cycle: a owns everything of it (a may have run it already), b none.
        b = node("b", port)
        assert await b.beat() == set()
        first_a, first_b = await a.claim("snmp", units, INTERVAL), await b.claim("snmp", units,
                                                                                 INTERVAL)
        assert first_a.units == set(units) and first_b.units == set()
        assert first_a.until == (1000 + 0.9) * INTERVAL
        # The next cycle is shared; a claims again (its view of b lapsed, say): what b took
        # is not a's, and b claiming once more gets nothing new.
        now[0] += INTERVAL
        shared_b = await b.claim("snmp", units, INTERVAL)
        assert 0 < len(shared_b.units) < len(units)
        await b.redis.delete("monitor:node:b")  # b's heartbeat lapses, in a's eyes
        late_a = await a.claim("snmp", units, INTERVAL)
        assert late_a.units == set(units) - shared_b.units
        assert (await b.claim("snmp", units, INTERVAL)).units == set()
        # A run that comes in the last tenth of its cycle claims nothing: its polls would fall
        # in the next cycle, which that cycle's owner polls.
        now[0] = 1002 * INTERVAL + 0.95 * INTERVAL
        assert (await a.claim("snmp", units, INTERVAL)).units == set()
        now[0] = 1003 * INTERVAL + 0.3
        assert (await a.claim("snmp", units, INTERVAL)).units == set(units)
        # a's beat tells that b is gone (the agent then runs its collectors again).
        await b.beat()
        await a.beat()
        await b.redis.delete("monitor:node:b")
        assert await a.beat() == {"b"}
        await a.close()
        await b.close()


async def test_cut_off_a_node_started_again_does_not_run_its_predecessors_cycle(tmp_path):
    units = {f"dev{i}": "default" for i in range(5)}
    now = [1000 * INTERVAL + 0.3]
    config = ClusterConfig(redis=f"redis://127.0.0.1:{free_port()}/0", node="pop",  # nobody
                           heartbeat=0.3, buffer_dir=tmp_path / "buffer")
    first = ClusterNode(config, clock=lambda: now[0])
    assert (await first.claim("snmp", units, INTERVAL)).units == set(units)
    await first.close()  # killed, say, and started again in the same cycle
    again = ClusterNode(config, clock=lambda: now[0])
    assert (await again.claim("snmp", units, INTERVAL)).units == set()
    now[0] += INTERVAL
    assert (await again.claim("snmp", units, INTERVAL)).units == set(units)
    await again.close()


@pytest.mark.timeout(300)
def test_each_check_once_per_cycle_with_three_nodes_a_kill_and_a_return(tmp_path):
    servers = CountingServers(12)
    units = [f"svc{i}" for i in range(12)]
    checks = "".join(f'\n[[services]]\nname = "svc{i}"\nkind = "tcp"\nhost = "127.0.0.1"\n'
                     f'port = {port}\ntimeout = "1s"\n' for i, port in enumerate(servers.ports))
    names = ["node-a", "node-b", "node-c"]
    with redis_server(tmp_path) as port, contextlib.ExitStack() as stack:
        client = redis.Redis(port=port, decode_responses=True)
        configs = {n: cluster_config(tmp_path, n, port, checks) for n in names}
        procs = {n: stack.enter_context(agent(configs[n], tmp_path / f"{n}.log")) for n in names}
        wait_until(lambda: live(client) == set(names), "three heartbeats")
        # The node to kill is the one that owns the most checks.
        shares = Counter(assign(dict.fromkeys(units, "default"),
                                {n: ["default"] for n in names}).values())
        victim = shares.most_common(1)[0][0]
        # From the cycle after the first that the three nodes shared out (each its own part).
        first = wait_for_cycle(lambda c: set(claims(client, "services", units, c).values())
                               == set(shares), "a cycle shared by the three nodes") + 1
        wait_cycles(first - int(time.time() // INTERVAL) + 2)
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        killed = int(time.time() // INTERVAL)
        wait_for_cycle(lambda c: c > killed + 1 and None not in claims(
            client, "services", units, c).values(), "a cycle without the killed node")
        wait_cycles(1)
        back = stack.enter_context(agent(configs[victim], tmp_path / f"{victim}.log"))
        wait_until(lambda: victim in live(client), "the node's return")
        returned = int(time.time() // INTERVAL)
        # Its share back: it ran its part of a cycle (and the others the rest), twice.
        again = wait_for_cycle(lambda c: set(claims(client, "services", units, c).values())
                               == set(shares), "a cycle shared by the three nodes again")
        last = wait_cycles(again + 2 - int(time.time() // INTERVAL)) - 1
        owners = {k: json.loads(v)["node"] for k, v in client.hgetall("monitor:owners").items()}
        assert back.poll() is None
        status = json.loads(cluster_status(configs["node-a"], "--json"))
        text = cluster_status(configs["node-b"])
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
    # `monitor cluster status` tells the same.
    assert {n["node"] for n in status["nodes"] if n["alive"]} == set(names)
    assert status["leader"] in names and len(status["owners"]) == 12
    assert {o["node"] for o in status["owners"].values()} == set(names)
    assert f"leader: {status['leader']}" in text and "node-a: alive, groups default" in text
    assert "Traceback" not in "".join(logs.values())


def live_recordings(devices: int) -> tuple[dict[str, str], dict[str, int]]:
    """snmpsim recordings of `devices` routers whose 64-bit octet counters grow at a known rate
    (snmpsim's numeric variation: rate x the clock) and whose sysUpTime runs, and for each the
    in_octets rate of eth0 in bytes/s."""
    recordings = {}
    base = (DATA / "snmp" / "router-t0.snmprec").read_text().splitlines()
    rates = {}
    for k in range(devices):
        rate = 1000 * (k + 1)
        lines = []
        for line in base:
            oid, tag, _ = line.split("|", 2)
            if oid == "1.3.6.1.2.1.1.3.0":
                line = f"{oid}|67:numeric|rate=100,initial=100000"
            elif oid.startswith("1.3.6.1.2.1.31.1.1.1.6."):  # ifHCInOctets
                line = f"{oid}|{tag}:numeric|rate={rate * int(oid.rsplit('.', 1)[1])},atime=1"
            elif oid.startswith("1.3.6.1.2.1.31.1.1.1.10."):  # ifHCOutOctets
                line = f"{oid}|{tag}:numeric|rate={rate // 2},atime=1"
            lines.append(line)
        recordings[f"live-{k}"] = "\n".join(lines) + "\n"
        rates[f"live-{k}"] = rate
    return recordings, rates


@pytest.mark.timeout(300)
def test_snmp_counters_move_with_the_device_no_spike_across_a_takeover(tmp_path):
    recordings, rates = live_recordings(6)
    names = ["node-a", "node-b", "node-c"]
    with snmpsim(recordings, "live-0") as snmp_port, redis_server(tmp_path) as port, \
            rrdcached_tcp(tmp_path / "rrd-host") as rrd_port, contextlib.ExitStack() as stack:
        devices = "".join(f'\n[[snmp.devices]]\nname = "{d}"\nhost = "127.0.0.1"\n'
                          f'port = {snmp_port}\ncommunity = "{d}"\ntimeout = "1s"\nretries = 0\n'
                          for d in rates)
        body = f'\n[storage]\nrrdcached = "127.0.0.1:{rrd_port}"\n{devices}'
        client = redis.Redis(port=port, decode_responses=True)
        configs = {n: cluster_config(tmp_path, n, port, body) for n in names}
        procs = {n: stack.enter_context(agent(configs[n], tmp_path / f"{n}.log")) for n in names}
        wait_until(lambda: live(client) == set(names), "three heartbeats")
        owners = assign({d: "default" for d in rates}, {n: ["default"] for n in names})
        victim = Counter(owners.values()).most_common(1)[0][0]
        moved = sorted(d for d, n in owners.items() if n == victim)
        devices = sorted(rates)
        sharing = set(owners.values())
        survivors = set(assign({d: "default" for d in rates},
                               {n: ["default"] for n in names if n != victim}).values())

        def polled(cycle: int, by: set[str]) -> bool:
            """Every device claimed in `cycle` by the nodes `by`, and its counters of a poll in
            that cycle in Redis (what the next poll's rate starts from)."""
            states = client.mget([f"monitor:state:snmp:{d}" for d in devices])
            return set(claims(client, "snmp", devices, cycle).values()) == by and all(
                text is not None and json.loads(text)["time"] >= cycle * INTERVAL
                for text in states)
        # The rows are looked at from the cycle after the first that the three nodes shared
        # (each device's rate then starts from the counters of the poll before).
        first = wait_for_cycle(lambda c: polled(c, sharing), "a cycle shared by three") + 1
        wait_cycles(first - int(time.time() // INTERVAL) + 2)
        # Once the victim polled its devices in this cycle: the next poll of each, by another
        # node (in this cycle still if the victim's heartbeat lapses in it, else in the next),
        # has the victim's counters at hand.
        killed = wait_for_cycle(lambda c: c == int(time.time() // INTERVAL)
                                and polled(c, sharing), "the victim's poll of a cycle")
        procs[victim].send_signal(signal.SIGKILL)
        procs[victim].wait()
        wait_for_cycle(lambda c: c > killed and polled(c, survivors),
                       "a cycle polled by the two others")
        last = wait_cycles(3)
        for n in names:
            if n != victim:
                procs[n].send_signal(signal.SIGTERM)
                procs[n].wait(30)
        store = RrdStore(tmp_path / "reader", rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                         catalog=RedisCatalog(ClusterConfig(redis=f"redis://127.0.0.1:{port}/0")))
        series = {d: store.fetch(d, "eth0", first * INTERVAL, last * INTERVAL) for d in rates}
    logs = "".join((tmp_path / f"{n}.log").read_text(errors="replace") for n in names)
    assert moved and "Traceback" not in logs
    for device, got in series.items():
        values = [v for t, v in zip(got.timestamps, got.columns["in_octets"], strict=True)
                  if first * INTERVAL < t <= (last - 1) * INTERVAL]
        known = [v for v in values if v is not None]
        # Never a spike: each rate is the device's, up to the wobble of when in its walk a busy
        # poller reads the clock (one interval measured short, the next as much long), which
        # the mean cancels. Counters from the wrong poll would be off by whole intervals.
        rate = rates[device]
        assert known and all(abs(v - rate) <= 0.5 * rate for v in known), (device, values)
        assert abs(sum(known) / len(known) - rate) <= 0.05 * rate, (device, values)
        # The victim's devices are polled by another node in the cycle its heartbeat lapses
        # in (the others run again for what it left unclaimed) or, if it had run that cycle,
        # in the next, each with the counters the dead node left in Redis: a rate at once and
        # no unknown row at all (a node without them would start with an unknown one; a skipped
        # cycle, two polls more than the DS heartbeat of two steps apart, makes two).
        gaps = "".join("u" if v is None else "k" for v in values)
        assert "u" not in gaps, (device, device in moved, killed - first, gaps)


class SmtpSink:
    """tests/smtp_helpers' recording SMTP server (or `recorder`, a Recorder of the test's own),
    on a thread of its own (the agents are other processes; the test waits synchronously)."""

    def __init__(self, recorder: object = None) -> None:
        import asyncio

        from tests.smtp_helpers import Recorder, start_smtp

        self.recorder = recorder if isinstance(recorder, Recorder) else Recorder()
        self.loop = asyncio.new_event_loop()
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(self.loop)
            self.server, self.port = self.loop.run_until_complete(start_smtp(self.recorder))
            started.set()
            self.loop.run_forever()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        started.wait(10)

    def subjects(self) -> list[str]:
        return list(self.recorder.subjects())

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.server.close)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


class Switch:
    """A TCP port the test opens (the service is up) and closes (connection refused)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.sock: socket.socket | None = None

    def up(self) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", self.port))
        self.sock.listen(64)

    def down(self) -> None:
        assert self.sock is not None
        self.sock.close()
        self.sock = None


def tcp_checks(names: list[str], port: int) -> str:
    """[[services]] tcp checks of 127.0.0.1:`port`, one per name."""
    return "".join(f'\n[[services]]\nname = "{name}"\nkind = "tcp"\nhost = "127.0.0.1"\n'
                   f'port = {port}\ntimeout = "1s"\n' for name in names)


def alerting_config(smtp_port: int, checks: str) -> str:
    """Alert mail at once to a sink, by one rule on the checks named `checks`."""
    return f"""
[smtp]
host = "127.0.0.1"
port = {smtp_port}
security = "none"
from = "monitor@example.net"

[contacts]
ops = ["ops@example.net"]

[alerts]
group_window = "0s"
interval = "1s"

[[alerts.rules]]
name = "watched"
check = "{checks}"
notify = ["ops"]
flap_detection = false
"""


@pytest.mark.timeout(300)
def test_leader_killed_no_result_lost_no_alert_mail_lost_or_twice(tmp_path):
    sink = SmtpSink()
    service = Switch()
    service.up()
    names = ["node-a", "node-b", "node-c"]
    body = alerting_config(sink.port, "flap") + tcp_checks(["flap"], service.port) \
        + tcp_checks([f"steady{i}" for i in range(5)], service.port)

    def mails() -> list[str]:
        return [s for s in sink.subjects() if "flap" in s]

    with redis_server(tmp_path) as port, contextlib.ExitStack() as stack:
        client = redis.Redis(port=port, decode_responses=True)
        configs = {n: cluster_config(tmp_path, n, port, body) for n in names}
        procs = {n: stack.enter_context(agent(configs[n], tmp_path / f"{n}.log")) for n in names}
        wait_until(lambda: live(client) == set(names) and client.get("monitor:leader"),
                   "three heartbeats and a leader")
        wait_cycles(2)
        service.down()
        wait_until(lambda: len(mails()) == 1, "the problem mail")
        service.up()
        wait_until(lambda: len(mails()) == 2, "the recovery mail")
        leader = client.get("monitor:leader")
        procs[leader].send_signal(signal.SIGKILL)
        procs[leader].wait()
        service.down()  # a problem while the leadership changes hands
        wait_until(lambda: client.get("monitor:leader") not in (None, leader), "a new leader")
        successor = client.get("monitor:leader")
        wait_until(lambda: len(mails()) == 3, "the problem mail from the new leader")
        service.up()
        wait_until(lambda: len(mails()) == 4, "its recovery mail")
        wait_cycles(3)  # time for a duplicate to show up, if one were coming

        def all_taken() -> bool:
            (group,) = client.xinfo_groups("monitor:results")
            return group["pending"] == 0 and group["lag"] == 0
        # Every result any node sent (the dead leader's unfinished ones too) was taken and
        # acknowledged by a leader.
        wait_until(all_taken, "the leader to take every result")
        stack.close()
    sink.close()
    logs = "".join((tmp_path / f"{n}.log").read_text(errors="replace") for n in names)
    subjects = mails()
    assert len(subjects) == 4, subjects
    assert len(set(sink.recorder.message_ids())) == len(sink.recorder.message_ids())
    assert ["RESOLVED" in s or "OK" in s for s in subjects] == [False, True, False, True], subjects
    assert successor != leader
    assert "Traceback" not in logs


class Cable:
    """A TCP relay from a port of its own to `upstream` that the test can cut (every
    connection dropped, new ones refused) and mend: a remote POP's link."""

    def __init__(self, upstream: int) -> None:
        self.upstream = upstream
        self.port = free_port()
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.mend()

    def mend(self) -> None:
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", self.port))
        self.listener.listen(64)
        threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                near, _ = listener.accept()
            except OSError:
                return
            try:
                far = socket.create_connection(("127.0.0.1", self.upstream))
            except OSError:
                near.close()
                continue
            with self.lock:
                self.links += [near, far]
            for a, b in ((near, far), (far, near)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def cut(self) -> None:
        assert self.listener is not None
        with contextlib.suppress(OSError):  # wakes the accepting thread (close alone does not)
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()
        with self.lock:
            for s in self.links:
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)
                s.close()
            self.links = []


CUT = 120.0  # the POP is cut off this long


@pytest.mark.timeout(480)
def test_a_cut_off_pop_keeps_polling_buffers_and_replays_everything(tmp_path):
    """Cut off for two minutes, and killed (SIGKILL) and started again half-way through: what
    it buffered survives on its disk, and every result and sample reaches the leader and the
    one rrdcached afterwards."""
    sink = SmtpSink()
    servers = CountingServers(3)
    with redis_server(tmp_path) as port, rrdcached_tcp(tmp_path / "rrd-host") as rrd_port, \
            contextlib.ExitStack() as stack:
        redis_cable, rrd_cable = Cable(port), Cable(rrd_port)
        checks = "".join(f'\n[[services]]\nname = "pop2-svc{i}"\nkind = "tcp"\n'
                         f'host = "127.0.0.1"\nport = {p}\ntimeout = "1s"\ngroup = "pop2"\n'
                         for i, p in enumerate(servers.ports))
        alerting = alerting_config(sink.port, "p*")
        central = cluster_config(tmp_path, "core", port, f'\n[storage]\nrrdcached = '
                                 f'"127.0.0.1:{rrd_port}"\n{alerting}{checks}')
        pop = cluster_config(tmp_path, "pop2-poller", redis_cable.port,
                             f'groups = ["pop2"]\n\n[storage]\nrrdcached = '
                             f'"127.0.0.1:{rrd_cable.port}"\n{alerting}{checks}')
        client = redis.Redis(port=port, decode_responses=True)
        stack.enter_context(agent(central, tmp_path / "core.log"))
        wait_until(lambda: client.get("monitor:leader") == "core", "the core node leading")
        pop_agent = stack.enter_context(agent(pop, tmp_path / "pop2-poller.log"))
        wait_until(lambda: "pop2-poller" in live(client), "the POP's heartbeat")
        wait_cycles(2)
        redis_cable.cut()
        rrd_cable.cut()
        cut_at = time.time()
        wait_until(lambda: any("poller pop2-poller" in s for s in sink.subjects()),
                   "the one alert for the poller")
        unknown = json.loads((tmp_path / "core" / "state" / "status.json").read_text())
        time.sleep(max(0.0, cut_at + CUT / 2 - time.time()))
        pop_agent.kill()  # SIGKILL: what it buffered is on its disk, or lost
        pop_agent.wait()
        killed_at = time.time()
        stack.enter_context(agent(pop, tmp_path / "pop2-poller.log"))
        wait_until(lambda: any(when > killed_at for _, when in servers.hits), "polling again")
        back_at = max(when for _, when in servers.hits)
        time.sleep(max(0.0, cut_at + CUT - time.time()))
        redis_cable.mend()
        rrd_cable.mend()
        mended_at = time.time()
        wait_until(lambda: client.xlen("monitor:results") and not client.xinfo_groups(
            "monitor:results")[0]["lag"] and "pop2-poller" in live(client)
            and (tmp_path / "pop2-poller" / "cluster-buffer").is_dir()
            and not list((tmp_path / "pop2-poller" / "cluster-buffer").rglob("*.jsonl")),
            "the buffer (results and samples) replayed and read")
        wait_until(lambda: sum("poller pop2-poller" in s for s in sink.subjects()) == 2,
                   "the poller's recovery mail")
        wait_cycles(2)
        entries = client.xrange("monitor:results")
        subjects = sink.subjects()  # before the POP stops (it is gone then, and said so)
        stack.close()
        store = RrdStore(tmp_path / "reader", rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                         catalog=RedisCatalog(ClusterConfig(redis=f"redis://127.0.0.1:{port}/0")))
        series = store.fetch("127.0.0.1", "pop2-svc0", cut_at, mended_at)
    sink.close()
    servers.close()
    logs = "".join((tmp_path / f"{n}.log").read_text(errors="replace")
                   for n in ("core", "pop2-poller"))
    assert "Traceback" not in logs
    # While it was cut off the POP kept polling: every cycle of the cut has its connection
    # (from the one after the cycle in which the link broke, which the node spends finding
    # out; but for those in which it was down and starting again), never two.
    restart = range(int(killed_at // INTERVAL), int(back_at // INTERVAL) + 1)
    cycles = [c for c in range(int(cut_at // INTERVAL) + 2, int(mended_at // INTERVAL))
              if c not in restart]
    # (Cut off, the restarted node has no claims to ask, but it knows from its disk what its
    # predecessor ran in the cycle it starts in.)
    counts = servers.per_cycle()
    assert all(max(c.values()) == 1 for c in counts.values()), counts
    assert all(counts.get(c, Counter()) == Counter(servers.ports) for c in cycles), counts
    # The leader showed its checks UNKNOWN, "poller ... unreachable since", not CRITICAL.
    pop_checks = [c for c in unknown["checks"] if c["check"].startswith("pop2-svc")]
    assert len(pop_checks) == 3 and all(c["state"] == 3 and "poller pop2-poller unreachable "
                                        "since" in c["message"] for c in pop_checks), pop_checks
    # One alert for the poller (and its recovery), none for the checks behind it.
    assert len(subjects) == 2, subjects
    assert "[CRITICAL] cluster poller pop2-poller: poller pop2-poller unreachable" in subjects[0]
    assert subjects[1].startswith("[OK] cluster poller pop2-poller"), subjects
    # Every result it took during the cut reached the leader's stream, in order.
    taken = []
    for _, fields in entries:
        entry = json.loads(fields["entry"])
        if entry["node"] == "pop2-poller":
            batch = json.loads(entry["batch"])
            taken += [c[4] for c in batch["checks"] if c[1] == "pop2-svc0"]
    assert taken == sorted(taken)
    during = [t for t in taken if cut_at < t < mended_at]
    assert {int(t // INTERVAL) for t in during} >= set(cycles)
    # And the RRD file through the one rrdcached holds every sample it took then, those it took
    # before the restart too (RRD has no value for the first after the gap: a DS heartbeat of
    # two steps).
    stored = [t for t, v in zip(series.timestamps, series.columns["response_seconds"],
                                strict=True) if v is not None]
    in_step = [t for before, t in itertools.pairwise(taken)
                 if cut_at + INTERVAL < t < mended_at - INTERVAL and t - before < 2 * INTERVAL]
    assert in_step and all(any(int(t) <= row < int(t) + INTERVAL for row in stored)
                             for t in in_step), (stored, in_step)
    assert any(t < killed_at for t in in_step) and any(t > back_at for t in in_step)
