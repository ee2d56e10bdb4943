"""The SNMP collector against real agents on loopback: snmpsim recordings and net-snmp's snmpd.

Each recording exists once per poll (NAME-t0, NAME-t1, ...; snmpsim serves a recording under
the community of its name). A test polls t0, switches the device to t1 (keeping its counter
history) and polls again with a fake clock 60 s later, writes the batches into real RRD files and
reads the rates back with RrdStore.fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from collectors.snmp import SnmpCollector, read_port_index
from collectors.snmp_client import CommunityClient, Endpoint, SnmpError
from monitor.config import ConfigError, SnmpDevice, SnmpV3Config, parse_config
from monitor.model import Batch, State
from monitor.store import RrdStore
from tests.conftest import DATA, ROOT
from tests.daemons import stop

SNMP_DATA = DATA / "snmp"
T0 = 1_800_000_000 - 1_800_000_000 % 60
STEP = 60


def free_udp_port() -> int:
    # snmpsim cannot bind port 0 and report it: find a free port, then hand it over.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def wait_for_agent(port: int, community: str, proc: subprocess.Popen, what: str) -> None:
    client = CommunityClient(Endpoint(what, "127.0.0.1", port, timeout=0.3, retries=0), community)
    try:
        for _ in range(100):
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace")[-2000:] if proc.stderr else ""
                raise RuntimeError(f"{what} exited with {proc.returncode}: {err}")
            try:
                await client.get([(1, 3, 6, 1, 2, 1, 1, 3, 0)])
                return
            except SnmpError:
                await asyncio.sleep(0.1)
        raise RuntimeError(f"{what} did not answer on 127.0.0.1:{port}")
    finally:
        client.close()


def start_snmpsim(data: Path, cache: Path, community: str, v3: Sequence[str] = ()
                  ) -> tuple[subprocess.Popen, int]:
    """snmpsim serving the recordings in `data` on a free loopback port, once it answers
    `community`. As root it runs as nobody, who must reach `cache` (and `data`). `v3`: its
    engine's options (--v3-engine-id=..., --v3-user=...), for SNMPv3 too."""
    port = free_udp_port()
    argv = [sys.executable, str(ROOT / "scripts" / "run_snmpsim.py"), *v3,
            f"--data-dir={data}", f"--cache-dir={cache}",
            f"--agent-udpv4-endpoint=127.0.0.1:{port}", "--max-var-binds=2000",
            "--logging-method=null"]
    if os.geteuid() == 0:
        argv += ["--process-user=nobody", "--process-group=nogroup"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        asyncio.run(wait_for_agent(port, community, proc, "snmpsim"))
    except RuntimeError:
        stop(proc)
        raise
    return proc, port


@contextlib.contextmanager
def serving(data_dir: Path, community: str) -> Iterator[int]:
    """snmpsim serving the recordings of `data_dir` on a free loopback port (`community`: one
    of them, asked until it answers)."""
    # Not under pytest's tmp_path: as root snmpsim runs as nobody, who must reach its cache.
    tmp = Path(tempfile.mkdtemp(prefix="monitor-snmpsim-"))
    cache = tmp / "cache"
    cache.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(cache, 0o777)
    try:
        proc, port = start_snmpsim(data_dir, cache, community)
        try:
            yield port
        finally:
            stop(proc)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def snmpsim():
    with serving(SNMP_DATA, "router-t0") as port:
        yield port


SNMPD_USER, AUTH_KEY, PRIV_KEY = "monv3", "auth-pass-256", "priv-pass-aes"


@contextlib.contextmanager
def net_snmpd(directory: Path, conf: str, port: int | None = None) -> Iterator[int]:
    """net-snmp's snmpd with `conf` and its persistent state (its boot counter: a restart in the
    same directory is a reboot) in `directory`, on `port` (default a free one), once it answers
    the community monitor-ro (`conf` must allow it)."""
    if not Path("/usr/sbin/snmpd").exists():
        pytest.skip("net-snmp snmpd not installed (apt-get install snmpd)")
    port = port or free_udp_port()
    (directory / "snmpd.conf").write_text(conf)
    env = {**os.environ, "MIBS": "", "MIBDIRS": str(directory)}  # no MIB parsing noise
    proc = subprocess.Popen(
        ["/usr/sbin/snmpd", "-f", "-Lf", str(directory / "snmpd.log"), "-C", "-c",
         f"{directory / 'snmpd.conf'},{directory / 'persist' / 'snmpd.conf'}",
         f"--persistentDir={directory / 'persist'}",
         "-p", str(directory / "snmpd.pid"), f"udp:127.0.0.1:{port}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    try:
        asyncio.run(wait_for_agent(port, "monitor-ro", proc, "snmpd"))
        yield port
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def snmpd(tmp_path_factory):
    conf = ("rocommunity monitor-ro 127.0.0.1\n"
            f"createUser {SNMPD_USER} SHA-256 {AUTH_KEY} AES {PRIV_KEY}\n"
            f"rouser {SNMPD_USER} priv\n")
    with net_snmpd(tmp_path_factory.mktemp("snmpd"), conf) as port:
        yield port


@pytest.fixture
def silent_port():
    """A UDP port where something listens and never answers: a dead device."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        yield s.getsockname()[1]


class Clock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def device(name: str, port: int, community: str, **kw) -> SnmpDevice:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("retries", 1)
    return SnmpDevice(name=name, host="127.0.0.1", port=port, community=community, **kw)


class Run:
    """Poll a collector through phases with a fake clock; keep every batch in a real RRD store."""

    def __init__(self, tmp_path: Path, devices: list[SnmpDevice]) -> None:
        self.clock = Clock()
        self.collector = SnmpCollector(devices, STEP, concurrency=8, clock=self.clock)
        self.store = RrdStore(tmp_path / "rrd")

    def poll(self, phase: int, **communities: str) -> Batch:
        for name, community in communities.items():
            dev = self.collector.pollers[name].device
            self.collector.replace_device(dataclasses.replace(dev, community=community))
        self.clock.now = T0 + phase * STEP
        batch = asyncio.run(self.collector.collect())
        report = self.store.write(batch.measurements, STEP)
        assert not report.errors
        return batch

    def rate(self, target: str, instance: str, metric: str, phase: int) -> float | None:
        t = T0 + phase * STEP
        series = self.store.fetch(target, instance, t - STEP, t)
        ts = series.timestamps
        return series.columns[metric][ts.index(t)]

    def close(self) -> None:
        self.collector.close()
        self.store.close()


def check(batch: Batch, target: str, name: str):
    found = [c for c in batch.checks if c.target == target and c.check == name]
    assert found, f"no check {target}/{name} in {[c.key for c in batch.checks]}"
    return found[0]


def test_dmz_router_rates_from_rrd(snmpsim, tmp_path):
    run = Run(tmp_path, [device("dmz-router", snmpsim, "router-t0")])
    first = run.poll(0)
    assert check(first, "dmz-router", "snmp").state is State.OK
    second = run.poll(1, **{"dmz-router": "router-t1"})
    assert run.rate("dmz-router", "eth0", "in_octets", 1) == pytest.approx(10_000)
    assert run.rate("dmz-router", "eth0", "out_octets", 1) == pytest.approx(20_000)
    assert run.rate("dmz-router", "eth0", "in_ucast_packets", 1) == pytest.approx(100)
    assert run.rate("dmz-router", "eth1", "in_octets", 1) == pytest.approx(1000)
    assert run.rate("dmz-router", "eth0", "oper_status", 1) == 1
    assert run.rate("dmz-router", "eth0", "speed_bps", 1) == 1e9
    assert run.rate("dmz-router", "", "uptime_seconds", 1) == pytest.approx(1060)
    # The first poll has no rate; only the second does.
    assert run.rate("dmz-router", "eth0", "in_octets", 0) is None
    eth0 = check(second, "dmz-router", "if eth0")
    assert eth0.state is State.OK and "uplink to ISP <transit>" in eth0.message
    assert "80 kbit/s" in eth0.message  # 10,000 B/s in
    # eth2 is down and was never seen up: shown, not alarmed.
    eth2 = check(second, "dmz-router", "if eth2")
    assert eth2.state is State.OK and "down" in eth2.message and "never seen up" in eth2.message
    # eth3 is administratively down: not polled by default.
    assert not [c for c in second.checks if c.check == "if eth3"]
    assert run.store.info("dmz-router", "eth3") is None
    run.close()


def test_switch_48_ports(snmpsim, tmp_path):
    dev = device("access-sw1", snmpsim, "switch-t0", alert_down=["Gi0/4[78]"], exclude=["Gi0/1"])
    run = Run(tmp_path, [dev])
    run.poll(0)
    batch = run.poll(1, **{"access-sw1": "switch-t1"})
    ports = {c.check for c in batch.checks if c.check.startswith("if ")}
    assert len(ports) == 47  # 48 minus the excluded Gi0/1
    for p in (2, 17, 48):
        assert run.rate("access-sw1", f"Gi0/{p}", "in_octets", 1) == pytest.approx(p * 100)
    assert run.rate("access-sw1", "Gi0/48", "speed_bps", 1) == 1e10
    # Down ports alert only where alert_down says so (Gi0/48), others are informational.
    assert check(batch, "access-sw1", "if Gi0/48").state is State.CRITICAL
    assert check(batch, "access-sw1", "if Gi0/4").state is State.OK
    run.close()


def test_v1_only_device_uses_32bit_counters(snmpsim, tmp_path):
    run = Run(tmp_path, [device("old-switch", snmpsim, "v1-t0", version="1")])
    run.poll(0)
    batch = run.poll(1, **{"old-switch": "v1-t1"})
    assert check(batch, "old-switch", "snmp").state is State.OK
    # No ifXTable: the identity falls back to ifDescr.
    assert run.rate("old-switch", "port1", "in_octets", 1) == pytest.approx(200)
    assert run.rate("old-switch", "port2", "in_octets", 1) == pytest.approx(10)
    run.close()


def test_ifindex_renumbering_keeps_series(snmpsim, tmp_path):
    run = Run(tmp_path, [device("renum", snmpsim, "renumber-t0")])
    run.poll(0)
    run.poll(1, renum="renumber-t1")
    assert run.rate("renum", "eth0", "in_octets", 1) == pytest.approx(100)
    assert run.rate("renum", "eth1", "in_octets", 1) == pytest.approx(1000)
    run.close()


@pytest.mark.parametrize("recording", ["wrap64", "wrap32"])
def test_counter_wraps_are_exact(snmpsim, tmp_path, recording):
    run = Run(tmp_path, [device("wr", snmpsim, f"{recording}-t0")])
    run.poll(0)
    run.poll(1, wr=f"{recording}-t1")
    assert run.rate("wr", "wan", "in_octets", 1) == pytest.approx(100)
    assert run.rate("wr", "wan", "out_octets", 1) == pytest.approx(200)
    run.close()


def test_reboot_gives_unknown_not_a_spike(snmpsim, tmp_path):
    run = Run(tmp_path, [device("rb", snmpsim, "reboot-t0")])
    run.poll(0)
    batch = run.poll(1, rb="reboot-t1")
    assert check(batch, "rb", "snmp").state is State.WARNING
    assert "restarted" in check(batch, "rb", "snmp").message
    assert run.rate("rb", "eth0", "in_octets", 1) is None
    run.poll(2, rb="reboot-t2")
    assert run.rate("rb", "eth0", "in_octets", 2) == pytest.approx(100)
    run.close()


def test_uptime_wrap_after_497_days_is_not_a_reboot(snmpsim, tmp_path):
    run = Run(tmp_path, [device("old", snmpsim, "uptimewrap-t0")])
    run.poll(0)
    batch = run.poll(1, old="uptimewrap-t1")
    assert check(batch, "old", "snmp").state is State.OK
    assert run.rate("old", "eth0", "in_octets", 1) == pytest.approx(100)
    run.close()


def test_dead_device_is_critical_and_others_unaffected(snmpsim, silent_port, tmp_path):
    dead = device("dmz-router", silent_port, "public", timeout=0.3, retries=1)
    run = Run(tmp_path, [dead, device("sw", snmpsim, "switch-t0")])
    batch = run.poll(0)
    result = check(batch, "dmz-router", "snmp")
    assert result.state is State.CRITICAL
    assert result.message == (f"no SNMP response from dmz-router 127.0.0.1:{silent_port} "
                              "(0.3 s x 1 retries): wrong community, or host down?")
    assert check(batch, "sw", "snmp").state is State.OK
    assert check(batch, "sw", "if Gi0/2").state is State.OK
    run.close()


def test_snmpd_v2c_and_v3(snmpd, tmp_path):
    v3 = SnmpV3Config(user=SNMPD_USER, auth_protocol="sha256", auth_key=AUTH_KEY,
                      priv_protocol="aes128", priv_key=PRIV_KEY)
    devices = [
        device("v2c", snmpd, "monitor-ro", include=["lo"], skip_types=[]),
        SnmpDevice(name="v3", host="127.0.0.1", port=snmpd, version="3", v3=v3, include=["lo"],
                   skip_types=[]),
        SnmpDevice(name="badcomm", host="127.0.0.1", port=snmpd, community="nope", timeout=0.3,
                   retries=0),
        SnmpDevice(name="baduser", host="127.0.0.1", port=snmpd, version="3",
                   v3=dataclasses.replace(v3, user="intruder")),
    ]
    collector = SnmpCollector(devices, STEP, concurrency=8)
    # Same agent, same user, wrong key: a collector of its own (it would otherwise share the
    # device name's engine state).
    badauth = SnmpCollector([SnmpDevice(name="badauth", host="127.0.0.1", port=snmpd, version="3",
                             v3=dataclasses.replace(v3, auth_key="wrong-auth-key"))], STEP)
    bad = asyncio.run(badauth.collect())
    badauth.close()
    assert "authentication failed" in check(bad, "badauth", "snmp").message

    async def twice() -> tuple[Batch, Batch]:
        first = await collector.collect()
        # lo reports 10 Mbit/s: the polls' own traffic over 50 ms would exceed it (dropped).
        await asyncio.sleep(1.0)
        return first, await collector.collect()

    first, second = asyncio.run(twice())
    collector.close()
    for name in ("v2c", "v3"):
        assert check(second, name, "snmp").state is State.OK, check(second, name, "snmp").message
        assert check(second, name, "if lo").state is State.OK
        rates = {m.metric: m.value for m in second.measurements
                 if m.target == name and m.instance == "lo"}
        assert rates["in_octets"] is not None and rates["in_octets"] >= 0
        assert rates["oper_status"] == 1
    assert "wrong community" in check(first, "badcomm", "snmp").message
    assert "unknown user name" in check(first, "baduser", "snmp").message
    assert "intruder" in check(first, "baduser", "snmp").message


def test_discover_prints_a_stanza_that_loads(snmpsim, tmp_path):
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(snmpsim),
         "--community", "router-t0", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    stanza = out.stdout
    assert "[[snmp.devices]]" in stanza
    assert "eth0" in stanza and "uplink to ISP <transit>" in stanza and "admin down" in stanza
    parsed = tomllib.loads(stanza)["snmp"]["devices"][0]
    assert parsed["name"] == "dmz-router" and parsed["port"] == snmpsim
    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n' + stanza, base_dir=tmp_path)
    assert config.snmp.devices[0].community == "router-t0"
    assert "walking" in out.stderr


def test_discover_dead_device_says_so(silent_port):
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(silent_port),
         "--timeout", "0.2", "--retries", "0"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 1
    assert "no SNMP response" in out.stderr and "wrong community" in out.stderr


def test_config_validation_of_v3(tmp_path):
    base = '[[snmp.devices]]\nname = "r"\nhost = "192.0.2.1"\nversion = "3"\n'
    with pytest.raises(ConfigError, match="v3: SNMP version 3 needs"):
        parse_config(base, base_dir=tmp_path)
    with pytest.raises(ConfigError, match="auth_key"):
        parse_config(base + '[snmp.devices.v3]\nuser = "m"\nauth_protocol = "sha256"\n',
                     base_dir=tmp_path)
    with pytest.raises(ConfigError, match="at least 8"):
        parse_config(base + '[snmp.devices.v3]\nuser = "m"\nauth_protocol = "sha"\n'
                     'auth_key = "short"\n', base_dir=tmp_path)
    ok = parse_config(base + '[snmp.devices.v3]\nuser = "m"\nauth_protocol = "sha256"\n'
                      'auth_key = "long-enough"\npriv_protocol = "aes256c"\n'
                      'priv_key = "long-enough-too"\n', base_dir=tmp_path)
    assert ok.snmp.devices[0].v3.priv_protocol == "aes256c"


def test_shipped_config_has_the_demo_router():
    from monitor.config import load_config

    config = load_config(ROOT / "config.toml")
    demo = [d for d in config.snmp.devices if d.name == "dmz-router"]
    assert demo and demo[0].port == 16100


@pytest.mark.skipif(shutil.which("snmpbulkwalk") is None, reason="net-snmp tools missing")
def test_codec_agrees_with_net_snmp(snmpd):
    """Our walk of the whole interface table equals snmpbulkwalk's."""
    from collectors.snmp_client import walk_columns

    column = (1, 3, 6, 1, 2, 1, 2, 2, 1, 10)
    out = subprocess.run(["snmpbulkwalk", "-v2c", "-c", "monitor-ro", "-On", "-Oqv",
                          f"127.0.0.1:{snmpd}", ".".join(map(str, column))],
                         capture_output=True, text=True, timeout=20, check=True)
    theirs = [int(v) for v in out.stdout.split()]

    async def ours() -> list[int]:
        client = CommunityClient(Endpoint("snmpd", "127.0.0.1", snmpd), "monitor-ro")
        try:
            tables = (await walk_columns(client, [column], max_repetitions=2)).tables
        finally:
            client.close()
        return list(tables[column].values())

    mine = asyncio.run(ours())
    assert len(mine) == len(theirs)
    assert all(0 <= b - a < 10**7 for a, b in zip(theirs, mine, strict=True))  # counters move on


@pytest.mark.parametrize("recording, low_only, high", [
    ("mixed-c2950", ["Fa0/1", "Fa0/24", "Gi0/1"], "Vl1"),
    ("mixed-c3750", ["StackPort1"], "Gi1/0/1"),
])
def test_mixed_64_and_32_bit_interfaces_all_get_traffic(snmpsim, tmp_path, recording, low_only,
                                                        high):
    """Real Catalyst recordings where only some interfaces have ifHC* counters: every interface
    gets its traffic, from the 64-bit columns where it has them and the 32-bit ones elsewhere."""
    run = Run(tmp_path, [device("cat", snmpsim, f"{recording}-t0", include_admin_down=True)])
    run.poll(0)  # learns which interfaces lack 64-bit counters
    run.poll(1, cat=f"{recording}-t1")
    for name in [*low_only, high]:
        assert run.rate("cat", name, "in_octets", 1) == pytest.approx(100), name
        assert run.rate("cat", name, "out_octets", 1) == pytest.approx(200), name
    poller = run.collector.pollers["cat"]
    assert poller.low_needed is not None and "in_octets" in poller.low_needed
    run.close()


def poll_once(tmp_path: Path, dev: SnmpDevice, at: float) -> Batch:
    """One run of a fresh collector (as `monitor collect --once` from cron would make)."""
    collector = SnmpCollector([dev], STEP, clock=Clock(at), state_dir=tmp_path / "state" / "snmp")
    try:
        return asyncio.run(collector.collect())
    finally:
        collector.close()


def rate_of(batch: Batch, instance: str, metric: str = "in_octets") -> float | None:
    values = [m.value for m in batch.measurements if m.instance == instance and m.metric == metric]
    assert values, f"no {metric} of {instance}"
    return values[0]


def test_counter_state_survives_the_process(snmpsim, tmp_path):
    """cron-style runs: each a new process; the second one has rates from the first's state."""
    poll_once(tmp_path, device("edge", snmpsim, "router-t0"), T0)
    files = list((tmp_path / "state" / "snmp").iterdir())
    assert len(files) == 1 and files[0].suffix == ".json"
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"
    second = poll_once(tmp_path, device("edge", snmpsim, "router-t1"), T0 + STEP)
    assert rate_of(second, "eth0") == pytest.approx(10_000)
    assert check(second, "edge", "snmp").state is State.OK


def test_foreign_or_stale_counter_state_never_makes_a_spike(snmpsim, tmp_path):
    poll_once(tmp_path, device("edge", snmpsim, "renumber-t0"), T0)
    # Another device now answers under the same name and address (sysName differs; its eth0
    # and uptime would make a believable 133 Mbit/s): its counters are not the saved ones.
    other = poll_once(tmp_path, device("edge", snmpsim, "router-t1"), T0 + STEP)
    assert rate_of(other, "eth0") is None
    assert check(other, "edge", "snmp").state is State.OK
    # A state from long ago (the same device) is a gap, not a burst.
    poll_once(tmp_path, device("edge", snmpsim, "router-t0"), T0)
    stale = poll_once(tmp_path, device("edge", snmpsim, "router-t1"), T0 + 3600)
    assert rate_of(stale, "eth0") is None
    # A state file of another host (the device was re-pointed) is not used either.
    poll_once(tmp_path, device("edge", snmpsim, "router-t0"), T0)
    moved = dataclasses.replace(device("edge", snmpsim, "router-t1"), host="localhost")
    assert rate_of(poll_once(tmp_path, moved, T0 + STEP), "eth0") is None
    # A damaged state file is ignored (and replaced), not a crash.
    for path in (tmp_path / "state" / "snmp").iterdir():
        path.write_text("{not json")
    assert check(poll_once(tmp_path, device("edge", snmpsim, "router-t0"), T0), "edge",
                 "snmp").state is State.OK


def test_collect_once_twice_stores_traffic_from_the_second_run(snmpd, tmp_path):
    """Two `collect --once` agents (cron, or a SIGHUP reload: a new Agent on the same data_dir)
    against snmpd's live counters: the second run has rates."""
    from monitor.agent import Agent

    text = (f'[agent]\ndata_dir = "{tmp_path}"\ninterval = "1m"\n[host]\nenabled = false\n'
            '[disks]\nenabled = false\n'
            f'[[snmp.devices]]\nname = "box"\nhost = "127.0.0.1"\nport = {snmpd}\n'
            'community = "monitor-ro"\ninclude = ["lo"]\nskip_types = []\n')

    async def run() -> Batch:
        agent = Agent(parse_config(text, base_dir=tmp_path), only="snmp")
        try:
            return await agent.run_collector(agent.collectors[0])
        finally:
            await agent.close()

    first = asyncio.run(run())
    assert rate_of(first, "lo") is None  # nothing to compare with yet
    second = asyncio.run(run())
    assert rate_of(second, "lo") is not None and rate_of(second, "lo") >= 0


def test_v3_security_level_too_low_says_which_is_needed(snmpd):
    """snmpd allows the user only with privacy (rouser ... priv): asking with auth only gets
    authorizationError, which must say what to configure."""
    v3 = SnmpV3Config(user=SNMPD_USER, auth_protocol="sha256", auth_key=AUTH_KEY)
    collector = SnmpCollector([SnmpDevice(name="core", host="127.0.0.1", port=snmpd, version="3",
                                          v3=v3, timeout=1.0, retries=0)], STEP)
    batch = asyncio.run(collector.collect())
    collector.close()
    message = check(batch, "core", "snmp").message
    assert "security level authNoPriv" in message and "needs authPriv" in message, message
    assert "priv_protocol" in message


def test_words_for_odd_devices(snmpsim, tmp_path):
    """No sysName: discover names the device by its host. ifOperStatus missing or invalid: the
    check says so in words, not "status None" / "status 0"."""
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(snmpsim),
         "--community", "odd", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert tomllib.loads(out.stdout)["snmp"]["devices"][0]["name"] == "127.0.0.1"
    assert "noSuch" not in out.stdout
    run = Run(tmp_path, [device("odd", snmpsim, "odd")])
    batch = run.poll(0)
    run.close()
    eth1, eth2 = check(batch, "odd", "if eth1").message, check(batch, "odd", "if eth2").message
    assert "status 0 (not a valid ifOperStatus)" in eth1 and "None" not in eth2
    assert "no ifOperStatus" in eth2


def test_quiet_defaults_down_only_matters_after_up_and_loopbacks_are_skipped(snmpsim, tmp_path):
    run = Run(tmp_path, [device("flap", snmpsim, "flap-t0")])
    first = run.poll(0)
    ports = {c.check for c in first.checks if c.check.startswith("if ")}
    assert ports == {"if eth0", "if eth1", "if vlan10"}  # lo: softwareLoopback, skipped
    assert check(first, "flap", "if eth1").state is State.OK  # never up: not a problem
    second = run.poll(1, flap="flap-t1")
    eth0 = check(second, "flap", "if eth0")
    assert eth0.state is State.CRITICAL and "was up before" in eth0.message
    assert check(second, "flap", "if eth1").state is State.OK
    run.close()
    # alert_down names a port to watch even before it was ever up; skip_types is configurable.
    run = Run(tmp_path / "2", [device("flap", snmpsim, "flap-t0", alert_down=["eth1"],
                                      skip_types=["l2vlan"])])
    batch = run.poll(0)
    assert check(batch, "flap", "if eth1").state is State.CRITICAL
    assert {c.check for c in batch.checks if c.check.startswith("if ")} == {"if eth0", "if eth1",
                                                                            "if lo"}
    run.close()
    with pytest.raises(ConfigError, match=r"skip_types.*'loopback'"):
        parse_config('[[snmp.devices]]\nname = "r"\nhost = "192.0.2.1"\nskip_types = ["loopback"]\n',
                     base_dir=tmp_path)


def test_port_index_has_groups_macs_and_addresses(snmpsim, tmp_path):
    """LibreNMS-style descriptions become the port's group; MAC and IP-MIB addresses are
    there too, in the index the site and digests read."""
    from collectors.snmp import PortDescription, parse_port_description, read_port_index

    poll_once(tmp_path, device("flap", snmpsim, "flap-t0"), T0)
    ports = read_port_index(tmp_path / "state")["flap"]
    eth0 = ports["eth0"]
    assert (eth0.group, eth0.description, eth0.circuit) == ("transit", "ExampleNet", "CID-42")
    assert eth0.mac == "02:00:00:00:00:01" and eth0.type == "ethernetCsmacd"
    assert eth0.addresses == ("192.0.2.1/30", "2001:db8::1/64")
    assert eth0.alias == "Transit: ExampleNet [10G] {CID-42}" and eth0.speed_bps == 1e9
    assert (ports["eth1"].group, ports["eth1"].notes) == ("cust", "rack 4")
    assert ports["vlan10"].group == "core" and ports["vlan10"].type == "l2vlan"
    assert "lo" not in ports
    assert parse_port_description("uplink to ISP") is None
    assert parse_port_description("Peering: DE-CIX [100G]") == PortDescription("peering", "DE-CIX")


def test_site_port_table_reads_the_port_index_not_the_check_message(snmpsim, tmp_path):
    """An ifAlias with ") " and HTML in it reaches the device page whole and escaped, with the
    port's group, MAC and address, from the collector's port index (two real polls)."""
    import html

    from graphs.site import site_from_config
    from monitor.status import StatusBook
    from tests.data.snmp.make_recordings import EVIL_ALIAS

    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n[web]\nworkers = 1\n')
    store, status = RrdStore(config.rrd_dir), StatusBook(config.state_dir / "status.json")
    for phase in (0, 1):
        batch = poll_once(tmp_path, device("evil", snmpsim, f"evilalias-t{phase}"),
                          T0 + phase * STEP)
        assert not store.write(batch.measurements, STEP).errors
        status.update(batch.checks)
    builder = site_from_config(config, store, status, inline_below=10**6)
    builder.clock = lambda: T0 + STEP
    try:
        assert not builder.build(full=True).errors
    finally:
        builder.close()
        store.close()
    page = (config.html_dir / "evil" / "index.html").read_text()
    table = page.split('<table class="ports">')[1].split("</table>")[0]
    assert html.escape(EVIL_ALIAS, quote=False) in table and "<script>" not in table
    assert '<span class="tag">cust</span>' in table
    assert "198.51.100.7/24" in table and "02:00:00:00:be:01" in table


def test_discover_lists_macs_addresses_groups_and_skipped_types(snmpsim):
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(snmpsim),
         "--community", "flap-t0", "--timeout", "1"],
        capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    eth0 = next(line for line in out.stdout.splitlines() if line.startswith("#   eth0 "))
    assert "02:00:00:00:00:01" in eth0 and "192.0.2.1/30" in eth0 and "2001:db8::1/64" in eth0
    assert "transit" in eth0
    lo = next(line for line in out.stdout.splitlines() if line.startswith("#   lo "))
    assert "skipped (softwareLoopback)" in lo


def test_utilisation_alerting_without_a_rule():
    """In or out above utilisation_warning/_critical percent of the link for utilisation_for."""
    from collectors.snmp import DevicePoller, Interface
    from collectors.snmp_counters import InterfaceSample

    dev = SnmpDevice(name="edge", host="192.0.2.1", utilisation_for=600.0,
                     utilisation_interfaces=["wan*"])
    poller = DevicePoller(dev, 300)
    wan = Interface(1, "wan0", "wan0", "", "", 1e9, 1, 1, InterfaceSample({}))
    lan = Interface(2, "lan0", "lan0", "", "", 1e9, 1, 1, InterfaceSample({}))
    full = 0.97e9 / 8  # bytes per second: 97 % of 1 Gbit/s
    states = [poller.interface_check(wan, {"in_octets": full, "out_octets": 0}, t).state
              for t in (0, 300, 600, 900)]
    assert states == [State.OK, State.OK, State.CRITICAL, State.CRITICAL]
    message = poller.interface_check(wan, {"in_octets": full, "out_octets": 0}, 900).message
    assert "97 % of the link, above 95 % for 15m" in message, message
    # Back to 85 %: WARNING only once that lasted utilisation_for (its timer ran since t=0).
    assert poller.interface_check(wan, {"in_octets": 0.85e9 / 8, "out_octets": 0}, 1200).state \
        is State.WARNING
    assert poller.interface_check(wan, {"in_octets": 1e6, "out_octets": 0}, 1500).state is State.OK
    assert not poller.busy_since
    # Interfaces not in utilisation_interfaces are never judged by load.
    assert poller.interface_check(lan, {"in_octets": full, "out_octets": full}, 5000).state \
        is State.OK


def test_another_device_at_a_name_drops_the_old_ones_inventory(snmpsim, tmp_path):
    """Another device answering under a name (sysName and sysObjectID tell): the old one's
    counters, MACs, addresses, ports, known interfaces and utilisation timers are dropped, in
    memory and in the state file, so nothing of it shows (or alarms) as the new device's."""
    clock = Clock(T0)
    state_dir = tmp_path / "state" / "snmp"
    collector = SnmpCollector([device("edge", snmpsim, "flap-t0")], STEP, clock=clock,
                              state_dir=state_dir)
    poller = collector.pollers["edge"]
    try:
        asyncio.run(collector.collect())
        collector.replace_device(device("edge", snmpsim, "flap-t1"))
        clock.now = T0 + STEP
        before = asyncio.run(collector.collect())
        assert check(before, "edge", "if eth0").state is State.CRITICAL  # was up, went down
        assert poller.known.get("eth0") is True
        assert poller.ports["eth0"].mac == "02:00:00:00:00:01"
        assert any(mac for mac, _ in poller.inventory.values())
        # (the recordings carry no traffic: a utilisation timer as a busy link would leave it)
        poller.busy_since["vlan10"] = {"WARNING": T0}
        # The address now answers as another device (access-sw1), without a MAC table.
        collector.replace_device(device("edge", snmpsim, "switch-t0"))
        clock.now = T0 + 2 * STEP
        after = asyncio.run(collector.collect())
    finally:
        collector.close()
    assert check(after, "edge", "snmp").state is State.OK
    old = {"eth0", "eth1", "lo", "vlan10"}
    assert not old & set(poller.known) and not old & set(poller.ports)
    assert not old & set(poller.busy_since) and not old & set(poller.state.last.interfaces)
    assert "02:00:00:00:00:01" not in {mac for mac, _ in poller.inventory.values()}
    assert not [c for c in after.checks if c.check in {f"if {n}" for n in old}]
    assert all(m.value is None for m in after.measurements if m.metric == "in_octets")
    saved = read_port_index(tmp_path / "state")["edge"]
    assert "Gi0/1" in saved and not old & set(saved)


def test_names_are_made_once_per_collector_and_bounded():
    """The devices of a collector share its DeviceTexts (no module-level cache); what a device
    sends is cleaned as `text` cleans it, and junk beyond the bound empties the cache."""
    from collectors.snmp import DeviceTexts, PortDescription, text

    collector = SnmpCollector([SnmpDevice(name=n, host="127.0.0.1") for n in ("a", "b")], STEP)
    first, second = collector.pollers.values()
    assert first.texts is second.texts is collector.texts
    texts = DeviceTexts(size=4)
    name = texts(b"ge-0/0/1\x1b[31m")
    assert name == text(b"ge-0/0/1\x1b[31m") and texts(b"ge-0/0/1\x1b[31m") is name
    assert texts(None) == "" and texts(b"x" * 300) == text(b"x" * 300)
    for i in range(10):
        texts(b"junk%d" % i)
    assert len(texts._texts) <= 4
    assert texts.port_description("Transit: ExampleNet [10G] {CID-42}") == PortDescription(
        "transit", "ExampleNet", "", "CID-42")
