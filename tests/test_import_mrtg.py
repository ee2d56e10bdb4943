"""`monitor import mrtg` against the real thing: Debian's cfgmaker writes the config from an
snmpsim device, Debian's mrtg (perl, rateup, RRDs) polls it over a simulated period, and the
import must give back MRTG's own figures (average and max per interval) from our RRD files.

The device's interface counters are snmpsim `writecache` values that the test SETs before each
run; MRTG's clock is Perl's time() overridden by a tiny module (MRTG hands that time on to
rateup and RRDs::update), so 2 hours of 5-minute polls take a few seconds, and 75 days of
stretches of polls with jumps between them (rateup carries the last rate over a jump) put
real rateup lines into every section of its log.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from importers import mrtg
from importers.commands import cmd_import, register
from monitor.config import parse_config
from monitor.store import RrdStore
from tests.conftest import DATA
from tests.rateup_logs import synthetic_log
from tests.test_snmp import start_snmpsim, stop

pytestmark = pytest.mark.skipif(not Path("/usr/bin/mrtg").exists() or not Path("/usr/bin/cfgmaker").exists(),
                                reason="Debian's mrtg is not installed (apt-get install mrtg librrds-perl)")

# Midnight UTC (MRTG's and our rows line up), in the past: rows dated after now are left out.
T0 = 1_700_000_000 - 1_700_000_000 % 86400
RUNS = 25  # 2 hours of 5-minute polls
IN_OID, OUT_OID = "1.3.6.1.2.1.2.2.1.10", "1.3.6.1.2.1.2.2.1.16"
UPTIME_OID = "1.3.6.1.2.1.1.3.0"
FAKE_CLOCK = """package FakeClock;
BEGIN { *CORE::GLOBAL::time = sub () { defined $ENV{FAKE_TIME} ? $ENV{FAKE_TIME} : CORE::time() }; }
1;
"""


# A Windows-style ifDescr, with spaces: cfgmaker --ifref=descr writes it escaped ("\\ ").
LONG_DESCR = "Intel(R) PRO/1000 MT Network Connection"


def rates(run: int) -> dict[int, tuple[int, int]]:
    """Bytes per second (in, out) of ifIndex 1 and 2 between run-1 and run."""
    return {1: (1000 * (1 + run % 7), 400 * (1 + run % 5)), 2: (50 * (run % 3), 10 * run)}


def recording(directory: Path) -> None:
    """The DMZ router's real recording with writable 32-bit octet counters (no ifHC: noHC)."""
    keep = []
    for line in (DATA / "snmp" / "router-t0.snmprec").read_text().splitlines():
        oid = line.split("|", 1)[0]
        if oid.rsplit(".", 1)[0] in (IN_OID, OUT_OID, "1.3.6.1.2.1.31.1.1.1.6",
                                     "1.3.6.1.2.1.31.1.1.1.10"):
            continue
        keep.append(line)
    keep = [f"1.3.6.1.2.1.2.2.1.2.2|4|{LONG_DESCR}" if line.startswith("1.3.6.1.2.1.2.2.1.2.2|")
            else line for line in keep if not line.startswith(f"{UPTIME_OID}|")]
    keep.append(f"{UPTIME_OID}|67:writecache|value=100000")  # our collector checks for reboots
    for index in (1, 2, 3, 4):
        keep += [f"{IN_OID}.{index}|65:writecache|value=0", f"{OUT_OID}.{index}|65:writecache|value=0"]
    keep.sort(key=lambda line: tuple(int(p) for p in line.split("|", 1)[0].split(".")))
    (directory / "mrtg.snmprec").write_text("\n".join(keep) + "\n")


# snmpsim's SNMPv3 engine: one user, SHA and AES (its context name "mrtg" is the recording).
V3_ENGINE_ID = "8000000001020304"
V3_USER, V3_AUTH, V3_PRIV = "mrtgv3", "authpass123", "privpass123"
V3_ENGINE = (f"--v3-engine-id={V3_ENGINE_ID}", f"--v3-user={V3_USER}", f"--v3-auth-key={V3_AUTH}",
             "--v3-auth-proto=SHA", f"--v3-priv-key={V3_PRIV}", "--v3-priv-proto=AES")


class CounterSetter:
    """SNMP SETs of Counter32 values into snmpsim's writecache (one engine for all runs)."""

    async def __aenter__(self) -> CounterSetter:
        from pysnmp.hlapi.v3arch import asyncio as hlapi

        self.hlapi = hlapi
        self.engine = hlapi.SnmpEngine()
        return self

    async def set(self, port: int, values: dict[str, int], uptime: int | None = None) -> None:
        """Counter32 values; sysUpTime too (in hundredths of a second) when `uptime` is given."""
        h = self.hlapi
        target = await h.UdpTransportTarget.create(("127.0.0.1", port), timeout=2, retries=2)
        ticks = [] if uptime is None else [h.ObjectType(h.ObjectIdentity(UPTIME_OID), h.TimeTicks(uptime))]
        error, status, _, _ = await h.set_cmd(
            self.engine, h.CommunityData("mrtg"), target, h.ContextData(),
            *(h.ObjectType(h.ObjectIdentity(oid), h.Counter32(value % 2**32))
              for oid, value in values.items()), *ticks)
        assert error is None and not status, (error, status)

    async def __aexit__(self, *exc: object) -> None:
        self.engine.close_dispatcher()


@pytest.fixture(scope="module")
def device():
    tmp = Path(tempfile.mkdtemp(prefix="monitor-mrtgsim-"))  # snmpsim runs as nobody as root
    data, cache = tmp / "data", tmp / "cache"
    data.mkdir()
    cache.mkdir()
    recording(data)
    for path in (tmp, data, cache):
        os.chmod(path, 0o777)
    proc, port = start_snmpsim(data, cache, "mrtg", V3_ENGINE)
    yield port
    stop(proc)
    shutil.rmtree(tmp, ignore_errors=True)


def run_mrtg(port: int, tmp: Path, logformat: str, times: list[int] | None = None,
             ifref: str = "name", options: str = "bits,growright") -> tuple[Path, Path]:
    """cfgmaker's config for the device, then a poll by mrtg at each of `times` (default:
    RUNS polls 5 minutes apart from T0); the last one also draws the graphs and writes the
    HTML page (with rateup's figures). (config, work dir)"""
    work = tmp / "mrtg"
    work.mkdir()
    (tmp / "FakeClock.pm").write_text(FAKE_CLOCK)
    config = tmp / "mrtg.cfg"
    env = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    subprocess.run(["cfgmaker", f"--ifref={ifref}", "--global", f"WorkDir: {work}",
                    "--global", f"Options[_]: {options}", "--global", f"LogFormat: {logformat}",
                    f"--output={config}", f"mrtg@127.0.0.1:{port}"],
                   check=True, capture_output=True, env=env)
    times = times or [T0 + run * 300 for run in range(RUNS)]
    asyncio.run(poll_runs(port, tmp, config, env, times))
    return config, work


async def poll_runs(port: int, tmp: Path, config: Path, env: dict[str, str], times: list[int]
                    ) -> None:
    counters = {1: [0, 0], 2: [0, 0]}
    async with CounterSetter() as setter:
        for run, now in enumerate(times):
            if run:
                for index, (rate_in, rate_out) in rates(run).items():
                    counters[index][0] += rate_in * (now - times[run - 1])
                    counters[index][1] += rate_out * (now - times[run - 1])
            await setter.set(port, {f"{oid}.{index}": counters[index][side] for index in counters
                                    for side, oid in enumerate((IN_OID, OUT_OID))})
            last = run == len(times) - 1
            proc = await asyncio.create_subprocess_exec(
                "perl", f"-I{tmp}", "-MFakeClock", "/usr/bin/mrtg", *([] if last else ["--log-only"]),
                "--lock-file", str(tmp / "mrtg.lock"), "--confcache-file", str(tmp / "mrtg.ok"),
                str(config), env={**env, "FAKE_TIME": str(now)},
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
            output, _ = await proc.communicate()
            assert proc.returncode == 0, output.decode(errors="replace")


def import_args(path: Path, *extra: str):
    import argparse

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), lambda args: None)  # type: ignore[arg-type, return-value]
    return parser.parse_args(["import", "mrtg", str(path), *extra])


def our_config(tmp: Path):
    path = tmp / "config.toml"
    path.write_text(f'[agent]\ndata_dir = "{tmp / "ours"}"\n')
    return parse_config(path.read_text(), path)


def run_import(config, path: Path, *extra: str) -> tuple[int, str, str]:
    import io

    out, err = io.StringIO(), io.StringIO()
    code = cmd_import(config, import_args(path, *extra), out, err)
    return code, out.getvalue(), err.getvalue()


def log_rows(path: Path) -> list[tuple[int, float, float, float, float]]:
    lines = path.read_text().splitlines()[1:]
    return [(int(f[0]), *map(float, f[1:5])) for f in (line.split() for line in lines)]  # type: ignore[misc]


def test_cfgmaker_config_becomes_snmp_stanzas_and_rateup_logs_our_history(device, tmp_path):
    config_path, work = run_mrtg(device, tmp_path, "rateup")
    config = our_config(tmp_path)
    code, out, err = run_import(config, config_path, "--dry-run")
    assert code == 0, err
    assert "dry run, nothing written" in err and "would create eth0.rrd" in err
    assert not (tmp_path / "ours" / "rrd" / "dmz-router").exists()
    # The stanza is valid config for this agent, names the imported interfaces, and keeps the
    # community out of the file.
    assert 'include = ["eth0", "eth1"]' in out and "mrtg" not in out.split("community_file")[0][-40:]
    community = tmp_path / "dmz-router.community"
    community.write_text("mrtg\n")
    stanza = out.replace("/etc/monitor/dmz-router.community", str(community))
    parsed = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n{stanza}', tmp_path / "c.toml")
    (dev,) = parsed.snmp.devices
    assert (dev.name, dev.host, dev.port, dev.community, dev.include) == \
        ("dmz-router", "127.0.0.1", device, "mrtg", ["eth0", "eth1"])
    assert "2 target(s) commented out" in err  # eth2/eth3 were down: cfgmaker left them out

    code, out, err = run_import(config, config_path)
    assert code == 0, err
    store = RrdStore(config.rrd_dir)
    for target_file, instance in (("127.0.0.1_eth0.log", "eth0"), ("127.0.0.1_eth1.log", "eth1")):
        rows = [r for r in log_rows(work / target_file) if r[0] > T0]
        assert len(rows) == RUNS - 1
        fetched = store.fetch("dmz-router", instance, T0, T0 + (RUNS - 1) * 300)
        ours = dict(zip(fetched.timestamps, zip(fetched.columns["in_octets"],
                                                fetched.columns["out_octets"], strict=True),
                        strict=True))
        for end, avg_in, avg_out, max_in, max_out in rows:
            assert ours[end] == (pytest.approx(avg_in), pytest.approx(avg_out)), end
            assert (max_in, max_out) == (avg_in, avg_out)  # one poll per 5-minute row
        # The 30-minute rows (week graph) and their maxima, as MRTG would consolidate them.
        week = store.fetch("dmz-router", instance, T0, T0 + 7200, resolution=1800)
        week_max = store.fetch("dmz-router", instance, T0, T0 + 7200, resolution=1800, cf="MAX")
        by_time = {r[0]: r for r in rows}
        for i, end in enumerate(week.timestamps[:4]):
            inside = [by_time[t] for t in range(end - 1500, end + 1, 300)]
            assert week.columns["in_octets"][i] == pytest.approx(sum(r[1] for r in inside) / 6)
            assert week_max.columns["in_octets"][i] == pytest.approx(max(r[3] for r in inside))
    # Again: our rows are kept, nothing is overwritten without --force.
    code, _, err = run_import(config, config_path)
    assert code == 0 and " 0 rows filled" in err and "kept (ours; --force replaces)" in err
    code, _, err = run_import(config, config_path, "--force")
    assert code == 0 and "replaced" in err


def test_mrtg_rrdtool_files_give_the_same_rows_in_every_archive(device, tmp_path):
    import rrdtool

    config_path, work = run_mrtg(device, tmp_path, "rrdtool")
    assert (work / "127.0.0.1_eth0.rrd").exists() and not (work / "127.0.0.1_eth0.log").exists()
    config = our_config(tmp_path)
    code, _, err = run_import(config, config_path)
    assert code == 0, err
    store = RrdStore(config.rrd_dir)
    end = T0 + (RUNS - 1) * 300
    for resolution in (300, 1800, 7200):
        for cf in ("AVERAGE", "MAX"):
            (start, _, step), _names, theirs = rrdtool.fetch(
                str(work / "127.0.0.1_eth0.rrd"), cf, "--start", str(T0), "--end", str(end),
                "-r", str(resolution))
            assert step == resolution
            ours = store.fetch("dmz-router", "eth0", T0, end, resolution, cf)
            assert ours.step == resolution and ours.start == start
            known = [(a, b) for a, b in zip(theirs, zip(ours.columns["in_octets"], ours.columns["out_octets"],
                                                         strict=True), strict=False) if a[0] is not None]
            assert known, (resolution, cf)
            for (their_in, their_out), (our_in, our_out) in known:
                assert (our_in, our_out) == (pytest.approx(their_in), pytest.approx(their_out))


# Four stretches of 35 minutes of 5-minute polls over 75 days: at the end the first lies in
# rateup's day lines, the second in its 2-hour, the third in its 30-minute and the last in its
# 5-minute lines (rateup carries the last rate over each jump).
PHASES = (0, 40 * 86400, 70 * 86400, 75 * 86400)
GRAPHS = {"d": 300, "w": 1800, "m": 7200, "y": 86400}  # MRTG's graphs: 400 columns of these


def phased_times() -> list[int]:
    return [T0 + offset + i * 300 for offset in PHASES for i in range(-1, 7)]


def mrtg_figures(page: Path) -> dict[tuple[str, str], int]:
    """The figures under each graph of MRTG's page (its own comments: "<!-- maxin d 6840 -->")."""
    return {(name, graph): int(value) for name, graph, value in
            re.findall(r"<!-- (maxin|maxout|avin|avout) ([dwmy]) (\d+) -->", page.read_text())}


def our_figures(store: RrdStore, device: str, instance: str, now: int) -> dict[tuple[str, str], float]:
    """The same figures from our file, the way rateup computes them: over the graph's 400
    columns, the largest average and the mean of the columns with any traffic (in, out, or
    their maxima)."""
    out = {}
    for graph, step in GRAPHS.items():
        end = now - now % step
        by_time: dict[int, list[float]] = {}
        for cf in ("AVERAGE", "MAX"):
            fetched = store.fetch(device, instance, end - 400 * step, end, step, cf)
            for i, t in enumerate(fetched.timestamps):
                by_time.setdefault(t, []).extend(
                    fetched.columns[m][i] or 0.0 for m in ("in_octets", "out_octets"))
        columns = [by_time.get(t, [0.0] * 4) for t in range(end, end - 400 * step, -step)]
        sampled = [c for c in columns if any(c)]
        for side, name in enumerate(("in", "out")):
            out[(f"max{name}", graph)] = max(c[side] for c in columns)
            out[(f"av{name}", graph)] = sum(c[side] for c in sampled) / len(sampled)
    return out


def test_mrtgs_own_figures_of_every_graph_come_back_from_our_files(device, tmp_path):
    """75 days of real MRTG (cfgmaker --ifref=descr, one ifDescr with spaces, so escaped): the
    Max and Average that MRTG's page shows under its day, week, month and year graphs are what
    our files give for the same periods (within rateup's cut to whole bytes), every line
    of rateup's log, 5-minute to 1-day, is the row of ours at its resolution (average and
    max; so is any 95th of them), and our SNMP collector then carries on in the same files."""
    from collectors.snmp import SnmpCollector
    from tests.test_snmp import Clock

    times = phased_times()
    now = times[-1]
    config_path, work = run_mrtg(device, tmp_path, "rateup", times=times, ifref="descr",
                                 options="growright")
    assert "Target[127.0.0.1_Intel(R)_PRO_1000_MT_Network_Connection]: " \
        "\\Intel(R)\\ PRO/1000\\ MT\\ Network\\ Connection:mrtg@" in config_path.read_text()
    config = our_config(tmp_path)
    code, out, err = run_import(config, config_path)
    assert code == 0, err
    assert 'include = ["eth0", "eth1"]' in out, out  # by ifName, from cfgmaker's comments
    store = RrdStore(config.rrd_dir)
    compared = {300: 0, 1800: 0, 7200: 0, 86400: 0}
    # Where each of our archives (5 min for 32 days, 30 min for 2 weeks, 2 h for 9 weeks, 1 day
    # for 2 years) reaches back to, with a day to spare.
    ours_back = {300: now - 31 * 86400, 1800: now - 13 * 86400, 7200: now - 62 * 86400,
                 86400: T0 - 86400}
    for copy in mrtg.plan(config_path).copies:
        log = copy.sources[0]
        theirs = mrtg_figures(log.with_suffix(".html"))
        assert len(theirs) == 16, theirs
        ours = our_figures(store, "dmz-router", copy.instance, now)
        # rateup keeps whole bytes: a max cut down to one (long long), an average rounded.
        for key, value in theirs.items():
            assert ours[key] == pytest.approx(value, abs=1), (copy.instance, key)
        lines = log_rows(log)
        fetched = {}
        for resolution, start in ours_back.items():
            for cf in ("AVERAGE", "MAX"):
                series = store.fetch("dmz-router", copy.instance, start, now, resolution, cf)
                assert series.step == resolution
                fetched[(resolution, cf)] = dict(zip(series.timestamps, zip(
                    series.columns["in_octets"], series.columns["out_octets"], strict=True),
                    strict=True))
        for (t, avg_in, avg_out, max_in, max_out), older in itertools.pairwise(lines):
            resolution = t - older[0]
            if t <= max(T0, ours_back.get(resolution, now)) or t % resolution:
                continue  # before the first poll, a section's partial first line, or older
                # than our archive of that resolution keeps (the next coarser one has it)
            average, peak = fetched[(resolution, "AVERAGE")], fetched[(resolution, "MAX")]
            assert average[t] == (pytest.approx(avg_in), pytest.approx(avg_out)), (resolution, t)
            assert peak[t] == (pytest.approx(max_in), pytest.approx(max_out)), (resolution, t)
            compared[resolution] += 1
    assert all(compared.values()), compared  # every section of rateup's log was compared

    # Our collector continues the imported files: MRTG's rows, then ours, in one series.
    community = tmp_path / "dmz-router.community"
    community.write_text("mrtg\n")
    stanza = out.replace("/etc/monitor/dmz-router.community", str(community))
    (dev,) = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n{stanza}', tmp_path / "c.toml").snmp.devices
    clock = Clock(now + 300)
    collector = SnmpCollector([dev], 300, clock=clock)
    try:
        asyncio.run(set_counters(device, {f"{IN_OID}.1": 123_456_789, f"{OUT_OID}.1": 0}, 10**7))
        asyncio.run(collector.collect())
        clock.now = now + 600
        asyncio.run(set_counters(device, {f"{IN_OID}.1": 123_456_789 + 300 * 4321,
                                          f"{OUT_OID}.1": 300 * 1234}, 10**7 + 300 * 100))
        batch = asyncio.run(collector.collect())
    finally:
        collector.close()
    assert not store.write(batch.measurements, 300).errors
    series = store.fetch("dmz-router", "eth0", now - 1800, now + 600, 300)
    rows = dict(zip(series.timestamps, series.columns["in_octets"], strict=True))
    mrtg_rows = {line[0]: line[1] for line in log_rows(work / "127.0.0.1_eth0.log")}
    assert [rows[t] for t in range(now - 1500, now + 1, 300)] == \
        [pytest.approx(mrtg_rows[t]) for t in range(now - 1500, now + 1, 300)]
    assert rows[now + 600] == pytest.approx(4321)


async def set_counters(port: int, values: dict[str, int], uptime: int) -> None:
    async with CounterSetter() as setter:
        await setter.set(port, values, uptime)


def test_cfgmakers_snmpv3_config_becomes_a_v3_device_our_collector_polls(device, tmp_path):
    """cfgmaker over SNMPv3 (user, SHA, AES, context): its Target[] and SnmpOptions[] become a
    [snmp.devices.v3] stanza with the keys as file hints (never inline); with the pass
    phrases put in those files, our collector polls the same device over SNMPv3."""
    from collectors.snmp import SnmpCollector
    from tests.test_snmp import Clock

    work = tmp_path / "mrtg"
    work.mkdir()
    config_path = tmp_path / "mrtg.cfg"
    subprocess.run(["cfgmaker", "--enablesnmpv3", f"--username={V3_USER}", "--authprotocol=sha",
                    f"--authpassword={V3_AUTH}", "--privprotocol=aes", f"--privpassword={V3_PRIV}",
                    f"--contextengineid={V3_ENGINE_ID}", "--contextname=mrtg", "--global",
                    f"WorkDir: {work}", f"--output={config_path}",
                    f"{V3_USER}@127.0.0.1:{device}::::3"],
                   check=True, capture_output=True, env={**os.environ, "LANG": "C"})
    text = config_path.read_text()
    assert f"#eth0:{V3_USER}@127.0.0.1:{device}::::3" in text and "SnmpOptions[" in text, text
    plan = mrtg.plan(config_path)
    (stanza,) = plan.stanzas
    assert V3_AUTH not in stanza and V3_PRIV not in stanza and "community" not in stanza, stanza
    keys = {}
    for kind, secret in (("auth", V3_AUTH), ("priv", V3_PRIV)):
        keys[kind] = tmp_path / f"dmz-router.{kind}"
        keys[kind].write_text(secret + "\n")
        stanza = stanza.replace(f"/etc/monitor/dmz-router.{kind}", str(keys[kind]))
    (dev,) = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n{stanza}', tmp_path / "c.toml").snmp.devices
    assert (dev.version, dev.v3.user, dev.v3.auth_protocol, dev.v3.priv_protocol, dev.v3.context,
            dev.include) == ("3", V3_USER, "sha", "aes", "mrtg", ["eth0", "eth1"])
    collector = SnmpCollector([dev], 300, clock=Clock(T0))
    try:
        batch = asyncio.run(collector.collect())
    finally:
        collector.close()
    checks = {c.check: c for c in batch.checks}
    assert checks["if eth0"].message.startswith("eth0 (uplink to ISP <transit>) up"), checks


def test_target_forms_and_what_cannot_be_mapped(tmp_path):
    (tmp_path / "work").mkdir()
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"""WorkDir: {tmp_path / 'work'}
Options[_]: bits
# System: core1
### Interface 3 >> Descr: 'GigabitEthernet0/3' | Name: 'Gi0/3' | Ip: '' | Eth: '' ###
Target[core1_3]: 3:pub\\@lic@core1.example.net:::::2
Title[core1_3]: Uplink
Target[core1_gi04]: -#Gi0/4:public@core1.example.net:::::2
Target[core1_err]: ifInErrors#Gi0/5&ifOutErrors#Gi0/5:public@core1.example.net:::::2
Target[sum]: #Gi0/1:public@core1.example.net + #Gi0/2:public@core1.example.net
Target[script]: `/usr/local/bin/temperature`
Target[byip]: /192.0.2.1:public@edge1
Target[v3]: #ge-0/0/0:user@edge2:::::3
SnmpOptions[v3]: username=>'mon', authprotocol=>'sha', authpassword=>'x', privprotocol=>'aes'
""")
    config = mrtg.read_config(cfg)
    by_name = {t.name: t for t in config.targets}
    first = mrtg.parse_target(by_name["core1_3"])
    assert (first.device, first.identity, first.community, first.version) == \
        ("core1", "Gi0/3", "pub@lic", "2c")
    assert mrtg.parse_target(by_name["core1_gi04"]).metrics == ("out_octets", "in_octets")
    assert mrtg.parse_target(by_name["core1_err"]).metrics == ("in_errors", "out_errors")
    assert by_name["core1_3"].options == {"bits"}
    plan = mrtg.plan(cfg)
    unmapped = "\n".join(plan.unmapped)
    assert "several targets" in unmapped and "external script" in unmapped
    assert "IP address '192.0.2.1'" in unmapped
    assert "no history at" in unmapped  # nothing under WorkDir
    stanzas = "\n".join(plan.stanzas)
    assert 'user = "mon"' in stanzas and 'priv_protocol = "aes"' in stanzas and "'x'" not in stanzas
    assert "pub@lic" not in stanzas  # communities stay out of the printed config


def test_two_years_of_rateup_log_fill_every_archive_and_the_95th(tmp_path):
    work = tmp_path / "mrtg"
    work.mkdir()
    now = T0
    rows = synthetic_log(work / "core1_gi0_1.log", now)
    # rateup itself reads it as a log of its own: it carries the history on when it next runs.
    subprocess.run(["rateup", str(work) + "/", "core1_gi0_1", str(now + 300), "-Z", "u",
                    str(123456789 + 300 * 1000), str(23456789 + 300 * 100), "125000000"],
                   check=True, capture_output=True)
    after = log_rows(work / "core1_gi0_1.log")
    assert {r[0]: r[1] for r in after}[rows[-1][0]] == rows[-1][1]  # the oldest day kept
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"WorkDir: {work}\nTarget[core1_gi0_1]: #Gi0/1:public@core1.example.net:::::2\n"
                   "MaxBytes[core1_gi0_1]: 125000000\n")
    config = our_config(tmp_path)
    code, _, err = run_import(config, cfg)
    assert code == 0, err
    store = RrdStore(config.rrd_dir)
    lines = log_rows(work / "core1_gi0_1.log")
    for resolution, span in ((1800, 9 * 86400), (7200, 40 * 86400), (86400, 700 * 86400)):
        ours = store.fetch("core1.example.net", "Gi0/1", now - span, now, resolution)
        ours_max = store.fetch("core1.example.net", "Gi0/1", now - span, now, resolution, "MAX")
        average = dict(zip(ours.timestamps, ours.columns["in_octets"], strict=True))
        peak = dict(zip(ours_max.timestamps, ours_max.columns["in_octets"], strict=True))
        theirs = [(t, a, m) for t, a, _, m, _ in lines
                  if now - span < t <= now - 3 * resolution and t % resolution == 0]
        finer_until = {1800: rows[601][0], 7200: rows[1201][0], 86400: rows[1801][0]}[resolution]
        section = [r for r in theirs if r[0] < finer_until - resolution]  # this resolution only
        assert len(section) > 5, resolution
        for t, a, m in section:
            assert average[t] == pytest.approx(a), (resolution, t)
            assert peak[t] == pytest.approx(m), (resolution, t)
    # The 95th percentile of the month before last, as the billing graph computes it from our
    # 5-minute rows, is the one of MRTG's 2-hour rows of that month.
    start, end = now - 60 * 86400, now - 30 * 86400
    fetched = store.fetch("core1.example.net", "Gi0/1", start, end, 300)
    ours = sorted(v for v in fetched.columns["in_octets"] if v is not None)
    theirs = sorted(a for t, a, _, _, _ in lines if start < t <= end and t % 7200 == 0)
    assert ours[int(len(ours) * 0.95)] == pytest.approx(theirs[int(len(theirs) * 0.95)], rel=1e-3)


def test_progress_on_a_terminal_and_hostile_names_stay_one_line(tmp_path):
    import pty

    work = tmp_path / "work"
    work.mkdir()
    synthetic_log(work / "evil.log", T0)
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"WorkDir: {work}\n# System: rtr\u202e1\x1b[2J\n"
                   "Target[evil]: #../../etc/pass\x07wd:public@192.0.2.7\n")
    config = our_config(tmp_path)
    master, slave = pty.openpty()
    err = os.fdopen(slave, "w")
    out = __import__("io").StringIO()
    code = cmd_import(config, import_args(cfg), out, err)
    err.close()
    terminal = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        terminal += chunk
    os.close(master)
    assert code == 0, terminal
    shown = terminal.decode()
    assert "[0/1 files, 0 B of" in shown and "[1/1 files," in shown  # files done / total, bytes
    assert "\x07" not in shown and "\u202e" not in shown and "\x1b[2J" not in shown
    # The name cannot leave the RRD directory; the stanza keeps it, escaped as TOML.
    files = list((tmp_path / "ours").rglob("*.rrd"))
    assert len(files) == 1 and (tmp_path / "ours" / "rrd") in files[0].parents
    assert 'include = ["../../etc/pass\\u0007wd"]' in out.getvalue()
    assert "\u202e" not in out.getvalue() and 'name = "rtr\\u202e1\\u001b[2J"' in out.getvalue()


def test_two_devices_with_the_same_sysname_stay_two_devices(tmp_path):
    """Factory-default switches all answer sysName "switch": cfgmaker's "# System:" comments
    then name two hosts alike. They must stay two [[snmp.devices]] with two names (the config
    rejects duplicate names) and two targets (one file each, not one history over the other)."""
    work = tmp_path / "work"
    work.mkdir()
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"""WorkDir: {work}

# System: switch
### Interface 1 >> Descr: 'port1' | Name: 'p1' | Ip: '' | Eth: '' ###

Target[a_1]: 1:public@192.0.2.1:::::2

# System: switch
### Interface 1 >> Descr: 'port1' | Name: 'p1' | Ip: '' | Eth: '' ###

Target[b_1]: 1:public@192.0.2.2:::::2
""")
    for name in ("a_1", "b_1"):
        (work / f"{name}.log").write_text("1700000000 0 0\n1700000000 10 20 30 40\n"
                                          "1699999700 10 20 30 40\n")
    plan = mrtg.plan(cfg)
    names = [line for stanza in plan.stanzas for line in stanza.splitlines()
             if line.startswith("name = ")]
    assert len(names) == 2 and len(set(names)) == 2, names
    assert len({copy.target for copy in plan.copies}) == 2


def test_a_target_line_right_before_the_next_interface_comment_keeps_its_own_comment(tmp_path):
    """Without blank lines between cfgmaker's blocks (a hand-trimmed config), the comment of
    the next interface must not be taken for the target above it, nor lost for its own."""
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text("""WorkDir: /nonexistent
# System: core1
### Interface 1 >> Descr: 'port1' | Name: 'p1' | Ip: '' | Eth: '' ###
Target[core1_1]: 1:public@192.0.2.1:::::2
### Interface 2 >> Descr: 'port2' | Name: 'p2' | Ip: '' | Eth: '' ###
Target[core1_2]: 2:public@192.0.2.1:::::2
# System: core2
### Interface 1 >> Descr: 'port1' | Name: 'q1' | Ip: '' | Eth: '' ###
Target[core2_1]: 1:public@192.0.2.2:::::2
""")
    parsed = {t.name: mrtg.parse_target(t) for t in mrtg.read_config(cfg).targets}
    assert {name: (i.device, i.identity) for name, i in parsed.items()} == {
        "core1_1": ("core1", "p1"), "core1_2": ("core1", "p2"), "core2_1": ("core2", "q1")}


def test_explicit_oids_of_an_interface_whose_reference_has_dots(tmp_path):
    """MRTG documents explicit OIDs with any interface reference: a VLAN sub-interface's name
    (Gi0/5.100, eth0.100) or an IP address (ifInErrors/192.0.2.1) has dots in it."""
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text("""WorkDir: /nonexistent
Target[vlan]: ifInOctets#Gi0/5.100&ifOutOctets#Gi0/5.100:public@192.0.2.1:::::2

### Interface 7 >> Descr: 'eth1' | Name: 'eth1' | Ip: '192.0.2.7' | Eth: '' ###
Target[byip]: ifInErrors/192.0.2.7&ifOutErrors/192.0.2.7:public@192.0.2.1:::::2
""")
    parsed = {t.name: mrtg.parse_target(t) for t in mrtg.read_config(cfg).targets}
    assert (parsed["vlan"].identity, parsed["vlan"].metrics) == ("Gi0/5.100", ("in_octets", "out_octets"))
    assert (parsed["byip"].identity, parsed["byip"].metrics) == ("eth1", ("in_errors", "out_errors"))


def test_in_a_cluster_with_rrdcached_over_tcp_the_import_says_where_to_run(tmp_path):
    """The files are rrdcached's on another host: dump and restore cannot reach them. The
    import must say so before it reads or writes anything, not fail file by file."""
    from tests.smtp_helpers import free_port

    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text("WorkDir: /nonexistent\n")
    path = tmp_path / "config.toml"
    port = free_port()  # nothing listens there: neither Redis nor rrdcached
    path.write_text(f'[agent]\ndata_dir = "{tmp_path / "ours"}"\n'
                    f'[storage]\nrrdcached = "127.0.0.1:{port}"\n'
                    f'[cluster]\nredis = "redis://127.0.0.1:{port}/0"\n')
    config = parse_config(path.read_text(), path)
    with pytest.raises(ValueError, match="run it on the store host"):
        run_import(config, cfg)


def test_an_include_loop_is_an_error_that_names_the_line(tmp_path):
    (tmp_path / "a.cfg").write_text("WorkDir: /nonexistent\nInclude: b.cfg\n")
    (tmp_path / "b.cfg").write_text("# the other half\nInclude: a.cfg\n")
    with pytest.raises(ValueError, match=r"b\.cfg:2: .*a\.cfg is included again"):
        mrtg.read_config(tmp_path / "a.cfg")


def test_keys_written_before_their_target_line_still_apply(tmp_path):
    """MRTG takes a target's keys in any order: Directory[] above Target[] still says where its
    log is (and Options[] gauge still keeps it out)."""
    work = tmp_path / "work"
    (work / "core").mkdir(parents=True)
    (work / "core" / "up.log").write_text("1700000000 0 0\n1700000000 10 20 30 40\n"
                                          "1699999700 10 20 30 40\n")
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"""WorkDir: {work}
Directory[up]: core
Options[temp]: gauge
Target[up]: #Gi0/1:public@192.0.2.1:::::2
Target[temp]: #Gi0/2:public@192.0.2.1:::::2
""")
    plan = mrtg.plan(cfg)
    assert [c.sources for c in plan.copies] == [[work / "core" / "up.log"]]
    assert any("gauge" in u for u in plan.unmapped)


def test_damaged_and_hostile_logs_are_reported_and_the_rest_imported(tmp_path):
    """Logs no rateup wrote: absurd values (a bit flip, a hand edit), lines of garbage and
    control characters, rows dated in the future (a clock that was ahead: our file would
    refuse the collector's samples until then), a binary file, one far longer than rateup's.
    Each is said in one clean line; what is sound is imported; nothing crashes."""
    import dataclasses
    import time

    work = tmp_path / "work"
    work.mkdir()
    now = int(time.time()) // 86400 * 86400 - 86400
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text(f"WorkDir: {work}\n" + "".join(
        f"Target[{name}]: #Gi0/{i}:public@192.0.2.1:::::2\nMaxBytes[{name}]: 125000000\n"
        for i, name in enumerate(("good", "huge", "garbage", "future", "binary", "long"), 1)))
    good = synthetic_log(work / "good.log", now)
    lines = (work / "good.log").read_text().splitlines(keepends=True)
    bad = list(lines)
    bad[10] = f"{good[9][0]} {'9' * 40} 5 {'9' * 40} 5\n"  # 1e39 B/s
    bad[11] = f"{good[10][0]} 1e300 5 1e300 5\n"
    (work / "huge.log").write_text("".join(bad))
    garbage = list(lines)
    garbage[20:20] = ["\x1b[2J\x07 rm -rf /\n", "nan nan nan nan nan\n", "1 2 3\n",
                      f"{good[30][0]} inf 1 inf 1\n", "\u202e" * 50 + "\n"]
    (work / "garbage.log").write_text("".join(garbage))
    synthetic_log(work / "future.log", now + 3 * 86400)  # its last 2 days are in the future
    (work / "binary.log").write_bytes(bytes(range(256)) * 64)
    (work / "long.log").write_text("".join(lines) + "".join(
        f"{good[-1][0] - i * 86400} 1 1 1 1\n" for i in range(1, 20_000)))
    config = our_config(tmp_path)
    code, _, err = run_import(config, cfg)
    assert code == 1, err  # the binary file could not be read
    assert all(line.isprintable() for line in err.splitlines()), err
    assert "binary.log: not a rateup log" in err
    assert "MRTG target huge: 4 value(s) above 1.25e+09 (10 x MaxBytes) left out" in err
    assert "garbage.log: 5 line(s) that are not rateup's" in err
    assert "MRTG target future: " in err and "dated after now left out" in err
    assert "long.log: more than 10,000 lines" in err
    assert "5 of 6 series" in err
    store = RrdStore(config.rrd_dir)
    for instance in ("Gi0/1", "Gi0/2", "Gi0/3", "Gi0/6"):
        fetched = store.fetch("192.0.2.1", instance, now - 86400, now, 300)
        known = [v for v in fetched.columns["in_octets"] if v is not None]
        assert len(known) > 250 and max(known) < 1.25e8, instance
    # The file of the log that was ahead takes our collector's next sample.
    info = store.info("192.0.2.1", "Gi0/4")
    assert info is not None and rrdtool_last(info.path) <= time.time()
    template = mrtg.plan(cfg).copies[3].templates[0]
    report = store.write([dataclasses.replace(template, value=10.0, timestamp=int(time.time()))], 300)
    assert not report.errors, report.errors


def rrdtool_last(path: Path) -> int:
    import rrdtool

    return int(rrdtool.last(str(path)))


def test_escaped_references_pagetop_names_nohc_and_v3_context(tmp_path):
    """cfgmaker escapes spaces, colons and & in references (`#Port\\ 1`, `#eth0\\:1`) and spaces
    and @ in communities; a hand-kept config may have lost the "### Interface" comments, but
    cfgmaker's PageTop still has the ifName row; noHC[] is a key of its own."""
    cfg = tmp_path / "mrtg.cfg"
    cfg.write_text("""WorkDir: /nonexistent
Target[a]: #Port\\ 1:public@192.0.2.1:::::2
Target[b]: #eth0\\:1:public@192.0.2.1:::::2
Target[c]: -\\Intel(R)\\ PRO/1000\\ MT:pub\\ lic@192.0.2.1:::::2
PageTop[c]: <h1>Traffic Analysis for Intel(R) PRO/1000 MT -- srv</h1>
        <div id="sysdetails">
            <table>
                <tr>
                    <td>Description:</td>
                    <td>Intel(R) PRO/1000 MT Uplink &amp; backup</td>
                </tr>
                <tr>
                    <td>ifName:</td>
                    <td>eth7</td>
                </tr>
            </table>
        </div>
noHC[c]: yes
Target[d]: ifInErrors#Port\\ 1&ifOutErrors#Port\\ 1:public@192.0.2.1:::::2
Target[v3]: #ge-0/0/0:user@edge2:::::3
SnmpOptions[v3]: username=>'mon',contextname=>'vrf-a',authprotocol=>'sha'
""")
    parsed = {t.name: mrtg.parse_target(t) for t in mrtg.read_config(cfg).targets}
    assert {n: (i.identity, i.metrics[0]) for n, i in parsed.items()} == {
        "a": ("Port 1", "in_octets"), "b": ("eth0:1", "in_octets"), "c": ("eth7", "out_octets"),
        "d": ("Port 1", "in_errors"), "v3": ("ge-0/0/0", "in_octets")}
    assert parsed["c"].community == "pub lic"
    plan = mrtg.plan(cfg)
    stanzas = "\n".join(plan.stanzas)
    # (Another community is another [[snmp.devices]], even on the same host.)
    assert 'include = ["Port 1", "eth0:1"]' in stanzas and 'include = ["eth7"]' in stanzas
    assert "# eth7: " in stanzas and "Uplink & backup" in stanzas and "nohc" in stanzas
    assert 'context = "vrf-a"' in stanzas and 'user = "mon"' in stanzas
