"""`monitor import munin` and `monitor import smokeping` on files in those tools' exact layouts.

Munin: Debian's munin-update polls Debian's munin-node (its own plugins: cpu, load, memory, df,
df_inode, if_, if_err_, ping_) on loopback, with a temporary configuration, 10 times 5 minutes
apart on a fake clock (Perl's time(), which munin-update stamps the values with), so 45 minutes of
real Munin history is imported and compared row by row. The longer history test uses files
made in exactly its layout (DBDIR/DOMAIN/HOST-PLUGIN-FIELD-T.rrd, one data source "42",
AVERAGE, MIN and MAX at 5 min x 576, 30 min x 432, 2 h x 540, 1 day x 450, checked against the
real files) with 12 days of 5-minute updates (a real munin-update would need 3,456 runs), and
its `datafile` with the df labels. SmokePing: its
documented Database layout (step 300, uptime, loss, median, ping1..ping20; AVERAGE 1 x 1008,
AVERAGE/MIN/MAX 12 x 4320 and 144 x 720) under DATADIR/SECTION/NAME.rrd, and a real Targets file.
The imported rows must equal the other tool's own rows in every archive.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest
import rrdtool

from importers import smokeping
from importers.commands import cmd_import, register
from monitor.config import parse_config
from monitor.store import RrdStore
from tests.conftest import DATA
from tests.test_import_mrtg import FAKE_CLOCK

END = 1_700_000_000 - 1_700_000_000 % 86400  # in the past: rows after now are left out
DAYS = 12
MUNIN_RRAS = [f"RRA:{cf}:0.5:{steps}:{rows}" for steps, rows in ((1, 576), (6, 432), (24, 540), (288, 450))
              for cf in ("AVERAGE", "MIN", "MAX")]
SMOKEPING_RRAS = ["RRA:AVERAGE:0.5:1:1008", *(f"RRA:{cf}:0.5:{steps}:{rows}"
                                               for steps, rows in ((12, 4320), (144, 720))
                                               for cf in ("AVERAGE", "MAX", "MIN"))]


def value(t: int, scale: float) -> float:
    return scale * (1.5 + math.sin(t / 7200.0) + 0.5 * math.sin(t / 86400.0 * 2 * math.pi))


def fill(path, ds: list[str], rras: list[str], values, days: int = DAYS) -> None:
    start = END - days * 86400
    rrdtool.create(str(path), "--step", "300", "--start", str(start), *ds, *rras)
    rows = [f"{t}:{':'.join(values(t))}" for t in range(start + 300, END + 1, 300)]
    for i in range(0, len(rows), 2000):
        rrdtool.update(str(path), *rows[i:i + 2000])


def run(tool: str, path, config, *extra: str) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), lambda args: None)  # type: ignore[arg-type, return-value]
    args = parser.parse_args(["import", tool, str(path), *extra])
    out, err = io.StringIO(), io.StringIO()
    return cmd_import(config, args, out, err), out.getvalue(), err.getvalue()


def our_config(tmp_path):
    path = tmp_path / "config.toml"
    path.write_text(f'[agent]\ndata_dir = "{tmp_path / "ours"}"\n')
    return parse_config(path.read_text(), path)


def same_rows(store: RrdStore, target: str, instance: str, metric: str, theirs_path, ds: str,
              scale: float = 1.0) -> int:
    """Our rows equal theirs (times scale) at 5 min, 30 min, 2 h and 1 day, AVERAGE and MAX."""
    compared = 0
    for resolution in (300, 1800, 7200, 86400):
        for cf in ("AVERAGE", "MAX"):
            span = 2 * 86400 if resolution == 300 else 9 * 86400 if resolution == 1800 else 40 * 86400
            start = END - span
            try:
                (first, _, step), names, rows = rrdtool.fetch(str(theirs_path), cf, "-s", str(start),
                                                              "-e", str(END), "-r", str(resolution))
            except rrdtool.OperationalError:
                continue
            theirs = {first + (i + 1) * step: row[names.index(ds)] for i, row in enumerate(rows)}
            ours = store.fetch(target, instance, start, END, resolution, cf)
            mine = dict(zip(ours.timestamps, ours.columns[metric], strict=True))
            for t, v in theirs.items():
                # (Their first row of each resolution holds a partial first 5 minutes.)
                if v is None or step != resolution or t <= END - DAYS * 86400 + 86400:
                    continue
                assert mine.get(t) == pytest.approx(v * scale, rel=1e-6), (resolution, cf, t)
                compared += 1
    return compared


def test_munin_node_series_land_in_the_host_disks_and_ping_series(tmp_path):
    dbdir = tmp_path / "munin"
    domain = dbdir / "example.net"
    domain.mkdir(parents=True)
    host = "web-1.example.net"  # a dash in the host name: the file name is split from the right
    files = {
        "cpu-user-d": 1.0, "cpu-system-d": 0.3, "cpu-idle-d": 3.0, "load-load-g": 0.01,
        "if_eth0-down-d": 5e5, "if_eth0-up-d": 1e5, "if_err_eth0-rcvd-d": 0.01,
        "df-_dev_sda1-g": 20.0, "df_inode-_dev_sda1-g": 5.0, "memory-apps-g": 1e9,
        "memory-page_tables-g": 1e7, "memory-swap_cache-g": 1e6, "memory-swap-g": 1e8,
        "memory-committed-g": 2e9, "ping_gw.example.net-ping-g": 0.001,
        "ping_gw.example.net-packetloss-g": 1.0, "postfix_mailqueue-active-g": 3.0,
    }
    for name, scale in files.items():
        kind = {"d": "DERIVE", "g": "GAUGE"}[name[-1]]
        low = "0" if kind == "DERIVE" else "U"
        if kind == "DERIVE":  # counters: their rate is value(t, scale)
            total = {"sum": 0.0}

            def counter(t, scale=scale, total=total):
                total["sum"] += value(t, scale) * 300
                return [str(int(total["sum"]))]
            fill(domain / f"{host}-{name}.rrd", [f"DS:42:{kind}:600:{low}:U"], MUNIN_RRAS, counter)
        else:
            fill(domain / f"{host}-{name}.rrd", [f"DS:42:{kind}:600:{low}:U"], MUNIN_RRAS,
                 lambda t, scale=scale: [repr(value(t, scale))])
    (dbdir / "datafile").write_text(
        "version 2.0.67\n"
        f"example.net;{host}:df._dev_sda1.label /\n"
        f"example.net;{host}:df_inode._dev_sda1.label /\n")
    config = our_config(tmp_path)
    code, out, err = run("munin", dbdir, config)
    assert code == 0, err
    assert 'kind = "ping"' in out and 'host = "gw.example.net"' in out
    assert "postfix_mailqueue: a plugin this agent has no series for" in err
    assert "memory: committed: no matching series" in err
    store = RrdStore(config.rrd_dir)
    assert same_rows(store, host, "", "cpu_user_percent", domain / f"{host}-cpu-user-d.rrd", "42") > 1000
    assert same_rows(store, host, "", "load5", domain / f"{host}-load-load-g.rrd", "42")
    assert same_rows(store, host, "nic:eth0", "in_octets", domain / f"{host}-if_eth0-down-d.rrd", "42")
    assert same_rows(store, host, "nic:eth0", "out_octets", domain / f"{host}-if_eth0-up-d.rrd", "42")
    assert same_rows(store, host, "fs:/", "used_percent", domain / f"{host}-df-_dev_sda1-g.rrd", "42")
    assert same_rows(store, "gw.example.net", "ping-gw.example.net", "loss_percent",
                     domain / f"{host}-ping_gw.example.net-packetloss-g.rrd", "42")
    # memory_used_bytes: apps + page_tables + swap_cache, row by row
    used = store.fetch(host, "", END - 86400, END, 1800)
    apps = rrdtool.fetch(str(domain / f"{host}-memory-apps-g.rrd"), "AVERAGE", "-s", str(END - 86400),
                         "-e", str(END), "-r", "1800")[2]
    assert used.columns["memory_used_bytes"][5] == pytest.approx(apps[5][0] * 1.011, rel=1e-3)
    # Our files are the collector's: the host collector's DERIVE counters continue them.
    info = rrdtool.info(str(store.info(host, "nic:eth0").path))
    assert info["ds[in_octets].type"] == "DERIVE" and info["step"] == 300


TARGETS = """*** Targets ***

probe = FPing

menu = Top
title = Network Latency Grapher
remark = Welcome to the SmokePing website of Example ISP.

+ Uplinks
menu = Uplinks
title = Our transit

++ transit1
menu = Transit 1
title = Transit 1 gateway
host = 192.0.2.1

++ dns1
probe = DNS
lookup = www.example.net
menu = Resolver
title = Our resolver
host = 192.0.2.53

++ web
probe = Curl
menu = Web
title = Web site
host = www.example.net
urlformat = https://%host%/health

++ both
menu = Both
title = Two graphs in one
host = /Uplinks/transit1 /Uplinks/dns1

++ odd
probe = Radius
host = 192.0.2.9
"""


def test_smokeping_targets_become_checks_with_median_and_loss_history(tmp_path):
    etc = tmp_path / "etc" / "config.d"
    etc.mkdir(parents=True)
    (etc / "Targets").write_text(TARGETS)
    data = tmp_path / "data" / "Uplinks"
    data.mkdir(parents=True)
    ds = ["DS:uptime:GAUGE:600:0:U", "DS:loss:GAUGE:600:0:20", "DS:median:GAUGE:600:0:180",
          *(f"DS:ping{i}:GAUGE:600:0:180" for i in range(1, 21))]

    def sample(t: int) -> list[str]:
        lost = int(t / 300) % 7 % 3  # 0..2 of 20 pings lost
        median = value(t, 0.004)
        return ["U", str(lost), repr(median), *(repr(median * (0.9 + i / 100)) for i in range(20 - lost)),
                *("U" for _ in range(lost))]
    for name in ("transit1", "dns1", "web"):
        fill(data / f"{name}.rrd", ds, SMOKEPING_RRAS, sample, days=10)
    nodes = smokeping.read_targets(etc / "Targets")
    assert [n.path for n in nodes][:2] == [("Uplinks",), ("Uplinks", "transit1")]
    config = our_config(tmp_path)
    code, out, err = run("smokeping", etc / "Targets", config, "--rrd-dir", str(tmp_path / "data"))
    assert code == 0, err
    parsed = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n{out}', tmp_path / "c.toml")
    checks = {s.name: s for s in parsed.services}
    assert (checks["Uplinks.transit1"].kind, checks["Uplinks.transit1"].host) == ("ping", "192.0.2.1")
    assert (checks["Uplinks.dns1"].kind, checks["Uplinks.dns1"].query) == ("dns", "www.example.net")
    assert checks["Uplinks.web"].kind == "http" and checks["Uplinks.web"].host == "www.example.net"
    assert "multi-host graph" in err and "probe Radius" in err
    store = RrdStore(config.rrd_dir)
    rrd = data / "transit1.rrd"
    assert same_rows(store, "192.0.2.1", "Uplinks.transit1", "rtt_median_seconds", rrd, "median") > 500
    assert same_rows(store, "192.0.2.1", "Uplinks.transit1", "loss_percent", rrd, "loss", 5.0) > 500
    assert same_rows(store, "192.0.2.53", "Uplinks.dns1", "response_seconds", data / "dns1.rrd", "median")
    # Dry run and no --force: nothing changes the second time.
    code, _, err = run("smokeping", etc / "Targets", config, "--rrd-dir", str(tmp_path / "data"), "--dry-run")
    assert code == 0 and " 0 rows filled" in err and "dry run" in err


MUNIN_UPDATE = Path("/usr/share/munin/munin-update")
MUNIN_RUNS = 10  # 45 minutes of 5-minute polls
MUNIN_T0 = END - 86400


@pytest.fixture(scope="module")
def munin_dbdir():
    """A real munin-update run against a real munin-node on a free loopback port."""
    if not MUNIN_UPDATE.exists() or not Path("/usr/sbin/munin-node").exists():
        pytest.skip("Debian's munin and munin-node are not installed")
    as_root = os.geteuid() == 0
    if as_root:
        try:
            munin = pwd.getpwnam("munin")
        except KeyError:
            pytest.skip("no munin user (munin-update refuses to run as root)")
    tmp = Path(tempfile.mkdtemp(prefix="monitor-munin-"))  # the munin user must reach it
    os.chmod(tmp, 0o755)
    plugins, plugin_conf = tmp / "conf" / "plugins", tmp / "conf" / "plugin-conf.d"
    plugins.mkdir(parents=True)
    plugin_conf.mkdir()
    for name, plugin in (("cpu", "cpu"), ("load", "load"), ("memory", "memory"), ("df", "df"),
                         ("df_inode", "df_inode"), ("if_lo", "if_"), ("if_err_lo", "if_err_"),
                         ("ping_127.0.0.1", "ping_")):
        (plugins / name).symlink_to(f"/usr/share/munin/plugins/{plugin}")
    (plugin_conf / "munin-node").write_text("[*]\nuser root\n" if as_root else "")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    user = "user root\ngroup root\n" if as_root else ""
    (tmp / "munin-node.conf").write_text(
        f"log_level 4\nlog_file {tmp}/munin-node.log\npid_file {tmp}/munin-node.pid\n"
        f"background 0\nsetsid 0\n{user}allow ^127\\.0\\.0\\.1$\nhost 127.0.0.1\n"
        f"port {port}\nhost_name web1.example.net\n")
    # munin-node has no option for its plugin directory: point Munin's own default at ours.
    node = subprocess.Popen(
        ["perl", "-e", '$0 = "munin-node"; require Munin::Common::Defaults; '
         f'$Munin::Common::Defaults::MUNIN_CONFDIR = "{tmp}/conf"; '
         f'@ARGV = ("--config", "{tmp}/munin-node.conf", "--foreground"); '
         'do "/usr/sbin/munin-node"; die $@ if $@; exit main::main();'],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert node.poll() is None, node.stderr.read().decode()  # type: ignore[union-attr]
                time.sleep(0.1)
        for name in ("db", "log", "run", "html"):
            (tmp / name).mkdir()
            if as_root:
                os.chown(tmp / name, munin.pw_uid, munin.pw_gid)
        conf = tmp / "munin.conf"
        conf.write_text(f"dbdir {tmp}/db\nhtmldir {tmp}/html\nlogdir {tmp}/log\nrundir {tmp}/run\n"
                        f"\n[example.net;web1.example.net]\n    address 127.0.0.1\n    port {port}\n"
                        "    use_node_name no\n")
        conf.chmod(0o644)
        (tmp / "FakeClock.pm").write_text(FAKE_CLOCK)
        (tmp / "FakeClock.pm").chmod(0o644)
        argv = ["perl", f"-I{tmp}", "-MFakeClock", str(MUNIN_UPDATE), "--config_file", str(conf)]
        if as_root:
            argv = ["runuser", "-u", "munin", "--", *argv]
        for run in range(MUNIN_RUNS):
            done = subprocess.run(argv, capture_output=True, timeout=120, text=True,
                                  env={**os.environ, "FAKE_TIME": str(MUNIN_T0 + run * 300)})
            assert done.returncode == 0, done.stdout + done.stderr
        yield tmp / "db", conf
    finally:
        node.terminate()
        node.wait(10)
        shutil.rmtree(tmp, ignore_errors=True)


def test_real_munin_update_files_are_mapped(munin_dbdir, tmp_path):
    from importers import munin

    dbdir, conf = munin_dbdir
    files = {p.name for p in (dbdir / "example.net").glob("*.rrd")}
    assert "web1.example.net-if_lo-down-d.rrd" in files and "web1.example.net-load-load-g.rrd" in files
    # Our synthetic files above are in exactly this layout.
    info = rrdtool.info(str(dbdir / "example.net" / "web1.example.net-load-load-g.rrd"))
    rras = [f"RRA:{info[f'rra[{i}].cf']}:0.5:{info[f'rra[{i}].pdp_per_row']}:{info[f'rra[{i}].rows']}"
            for i in range(len(MUNIN_RRAS))]
    assert rras == MUNIN_RRAS and info["ds[42].type"] == "GAUGE" and info["step"] == 300
    plan = munin.plan(conf)  # munin.conf -> its dbdir
    series = {(c.target, c.instance, m.metric) for c in plan.copies for m in c.templates}
    host = "web1.example.net"
    for expected in ((host, "", "cpu_user_percent"), (host, "", "load5"),
                     (host, "", "memory_used_bytes"), (host, "", "swap_used_bytes"),
                     (host, "nic:lo", "in_octets"), (host, "nic:lo", "out_errors"),
                     ("127.0.0.1", "ping-127.0.0.1", "loss_percent")):
        assert expected in series, expected
    if any("-df-" in name for name in files):  # the mount points depend on the machine
        assert any(i.startswith("fs:/") and m == "used_percent" for _, i, m in series)
    assert any('host = "127.0.0.1"' in s for s in plan.stanzas)  # from the label, not ping_127_0_0_1
    config = our_config(tmp_path)
    code, _, err = run("munin", conf, config)
    assert code == 0, err
    # Munin's own rows (its 5-minute and 30-minute archives, average and max) are ours.
    store = RrdStore(config.rrd_dir)
    end = MUNIN_T0 + (MUNIN_RUNS - 1) * 300
    compared = 0
    for name, instance, metric in (("load-load-g", "", "load5"), ("if_lo-down-d", "nic:lo", "in_octets"),
                                   ("cpu-user-d", "", "cpu_user_percent"),
                                   ("memory-swap-g", "", "swap_used_bytes")):
        path = dbdir / "example.net" / f"{host}-{name}.rrd"
        # (Our 5-minute archive is of averages alone: the max of one sample is the sample.)
        for resolution, cf in ((300, "AVERAGE"), (1800, "AVERAGE"), (1800, "MAX")):
            (first, _, step), _, rows = rrdtool.fetch(str(path), cf, "-s", str(MUNIN_T0 - 1800),
                                                      "-e", str(end), "-r", str(resolution))
            ours = store.fetch(host, instance, MUNIN_T0 - 1800, end, resolution, cf)
            mine = dict(zip(ours.timestamps, ours.columns[metric], strict=True))
            for i, (theirs,) in enumerate(rows):
                if theirs is not None and step == resolution:
                    assert mine.get(first + (i + 1) * step) == pytest.approx(theirs), (name, cf, i)
                    compared += 1
    assert compared > 30, compared


def test_smokepings_own_shipped_configs_become_checks(tmp_path):
    """The Targets of Debian's smokeping 2.7.3 package (config.d/Targets) and SmokePing's own
    example config (examples/config.multiple-probes, a whole config with Probes and Targets),
    copied unchanged into tests/data/smokeping/."""
    config = our_config(tmp_path)
    expected = {
        "config.multiple-probes": {("network.myhost1", "ping", "myhost1.example"),
                                   ("network.myhost2", "ping", "myhost2.example"),
                                   ("services.DNS.dns1", "dns", "dns1.example"),
                                   ("services.DNS.dns2", "dns", "dns2.example"),
                                   # its HTTP section names no probe: FPing, from the top
                                   ("services.HTTP.www1", "ping", "www1.example"),
                                   ("services.HTTP.www2", "ping", "www2.example")},
        "Targets.debian": {("Local.LocalMachine", "ping", "localhost")},
    }
    for name, checks in expected.items():
        code, out, err = run("smokeping", DATA / "smokeping" / name, config,
                             "--rrd-dir", str(tmp_path / "none"), "--dry-run")
        assert code == 0, err
        loaded = parse_config(f'[agent]\ndata_dir = "{tmp_path / "ours"}"\n' + out,
                              tmp_path / "imported.toml")
        got = {(s.name, s.kind, s.host or s.server) for s in loaded.services}
        assert got == checks, name
        assert "no history at" in err  # said, not silently skipped


def test_a_damaged_munin_file_is_reported_and_the_others_still_imported(tmp_path):
    """A truncated RRD file (a disk that filled up, a copy cut short) or one written on another
    architecture makes rrdtool raise its own error, not OSError: that one series is "not
    imported", with the reason, and the import carries on with the rest."""
    domain = tmp_path / "munin" / "example.net"
    domain.mkdir(parents=True)
    host = "db.example.net"
    fill(domain / f"{host}-load-load-g.rrd", ["DS:42:GAUGE:600:U:U"], MUNIN_RRAS,
         lambda t: [repr(value(t, 0.5))], days=3)
    good = (domain / f"{host}-load-load-g.rrd").read_bytes()
    (domain / f"{host}-cpu-user-d.rrd").write_bytes(good[:1000])  # cut short
    # A node added just before the move: its file has no row yet.
    rrdtool.create(str(domain / "new.example.net-load-load-g.rrd"), "--step", "300", "--start",
                   str(END - 300), "DS:42:GAUGE:600:U:U", *MUNIN_RRAS)
    config = our_config(tmp_path)
    code, _out, err = run("munin", tmp_path / "munin", config)
    assert code == 1
    assert f"Munin {host} cpu: " in err and "not imported" in err
    assert "Munin new.example.net load: no data yet in" in err
    assert "1 of 3 series" in err
    store = RrdStore(config.rrd_dir)
    assert any(v is not None for v in store.fetch(host, "", END - 86400, END, 1800).columns["load5"])


def test_debians_main_smokeping_config_is_read_through_its_includes(tmp_path):
    """Debian's /etc/smokeping/config is only @include lines (config.d/General, ..., Targets);
    its datadir is in General. Given that file, the import must find the targets and the RRD
    files where SmokePing keeps them, not report nothing at all."""
    etc = tmp_path / "etc" / "smokeping"
    (etc / "config.d").mkdir(parents=True)
    data = tmp_path / "lib" / "smokeping"
    (data / "Local").mkdir(parents=True)
    (etc / "config.d" / "General").write_text(
        f"*** General ***\n\nowner = Root\ndatadir = {data}\npiddir = /run/smokeping\n")
    (etc / "config.d" / "Probes").write_text("*** Probes ***\n\n+ FPing\nbinary = /usr/bin/fping\n")
    (etc / "config.d" / "Targets").write_text((DATA / "smokeping" / "Targets.debian").read_text())
    (etc / "config").write_text("".join(f"@include {etc}/config.d/{part}\n"
                                        for part in ("General", "Probes", "Targets")))
    ds = ["DS:uptime:GAUGE:600:0:U", "DS:loss:GAUGE:600:0:20", "DS:median:GAUGE:600:0:180"]
    fill(data / "Local" / "LocalMachine.rrd", ds, SMOKEPING_RRAS,
         lambda t: ["U", "0", repr(value(t, 0.001))], days=3)
    config = our_config(tmp_path)
    code, out, err = run("smokeping", etc / "config", config, "--dry-run")
    assert code == 0, err
    assert 'name = "Local.LocalMachine"' in out and "config.d/Targets:" in out
    assert "no history at" not in err and "1 of 1 series" in err
