"""The Munin collector with Debian's munin-plugins-core and a real munin-node on loopback:
fields stored with their DS types, warning/critical levels as checks, and plugins and nodes
that stall, flood, lie or print garbage harming only themselves."""

from __future__ import annotations

import asyncio
from pathlib import Path

import psutil
import pytest
import rrdtool

from collectors.munin import (
    PLUGIN_ENV,
    MuninCollector,
    NodeSession,
    outside,
    parse,
    read_plugin_conf,
    run_plugin,
)
from monitor.config import ConfigError, MuninSource, parse_config
from monitor.model import Kind, State
from monitor.store import RrdStore
from tests.daemons import munin_node, unbound

PLUGINS = Path("/usr/share/munin/plugins")
T0 = 1_800_000_000.0

pytestmark = pytest.mark.skipif(not (PLUGINS / "load").exists(),
                                reason="munin-plugins-core is not installed (see the Makefile)")


def script(directory: Path, name: str, body: str) -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def checks(batch) -> dict[str, object]:
    return {c.check: c for c in batch.checks}


def collector(tmp_path: Path, clock=None, **keys) -> MuninCollector:
    # Not this machine's /etc/munin/plugin-conf.d unless a test says so.
    keys.setdefault("plugin_conf", tmp_path / "no-plugin-conf.d")
    source = MuninSource(name="here", **keys)
    source.validate()
    return MuninCollector(source, "localhost", tmp_path / "plugstate",
                          **({"clock": clock} if clock else {}))


async def test_debian_plugins_become_series_of_their_declared_types(tmp_path: Path):
    # Wildcard plugins read their argument from their name, as /etc/munin/plugins' links do.
    (tmp_path / "if_lo").symlink_to(PLUGINS / "if_")
    plugins = [PLUGINS / "load", PLUGINS / "cpu", PLUGINS / "memory", PLUGINS / "df",
               tmp_path / "if_lo"]
    times = iter([T0, T0 + 300])
    c = collector(tmp_path, clock=lambda: next(times), plugins=plugins)
    store = RrdStore(tmp_path / "rrd")
    first = await c.collect()
    assert store.write(first.measurements, 300).errors == []
    state = checks(first)
    assert {f"munin {p.name}" for p in plugins} <= state.keys()
    assert all(state[f"munin {p.name}"].state is State.OK for p in plugins), first.checks
    assert state["munin load"].message.startswith("Load average: load ")
    assert state["munin [here]"].state is State.OK
    kinds = {(m.instance, m.metric): m.kind for m in first.measurements}
    assert kinds[("load", "load")] is Kind.GAUGE
    assert kinds[("cpu", "user")] is Kind.DERIVE and kinds[("if_lo", "down")] is Kind.DERIVE
    assert kinds[("memory", "apps")] is Kind.GAUGE
    assert {m.unit for m in first.measurements if m.instance == "memory"} == {"B"}
    assert {m.unit for m in first.measurements if m.instance == "df"} == {"%"}
    # The RRD files have the plugins' DS types and minimums.
    info = rrdtool.info(str(store.info("localhost", "cpu").path))
    ds = {k.split("[")[1].split("]")[0]: v for k, v in info.items() if k.endswith("].type")}
    assert set(ds.values()) == {"DERIVE"} and "user" in ds
    assert info["ds[user].min"] == 0.0
    # The second reading has rates: the check shows them per second.
    second = await c.collect()
    assert "/s" in checks(second)["munin cpu"].message
    assert all(m.timestamp == T0 + 300 for m in second.measurements)


def test_levels_are_read_as_munin_reads_them():
    assert outside(11, "10") == "above 10" and outside(9, "10") is None
    assert outside(11, ":10") == "above 10"
    assert outside(4, "5:") == "below 5" and outside(-1, "5:") == "below 5"
    assert outside(-3, "10") is None  # a bare number is a maximum only (not Nagios' 0..10)
    assert outside(3, "5:10") == "below 5" and outside(12, "5:10") == "above 10"
    assert outside(7, "5:10") is None


async def test_warning_and_critical_levels_become_the_graphs_check(tmp_path: Path):
    # The plugin prints what the test writes to its state file; env comes from the config.
    counter = tmp_path / "value"
    plugin = script(tmp_path, "queue", """\
if [ "$1" = config ]; then
  echo "graph_title Mail queue"
  echo "graph_vlabel mails"
  echo "active.label active"
  echo "active.warning $LEVEL"
  echo "active.critical 100"
  echo "rate.label delivered"
  echo "rate.type DERIVE"
  echo "rate.min 0"
  echo "rate.critical 5"
  exit 0
fi
read active delivered < "$VALUES"
echo "active.value $active"
echo "active.extinfo oldest mail from example.net"
echo "rate.value $delivered"
""")
    times = iter([T0, T0 + 100, T0 + 200, T0 + 300])
    c = collector(tmp_path, clock=lambda: next(times), plugins=[plugin],
                  env={"LEVEL": "10:50", "VALUES": str(counter)})
    readings = []
    for active, delivered in (("20", "1000"), ("60", "1100"), ("5", "2100"), ("150", "1")):
        counter.write_text(f"{active} {delivered}\n")
        readings.append(checks(await c.collect())["munin queue"])
    assert [r.state for r in readings] == [State.OK, State.WARNING, State.CRITICAL, State.CRITICAL]
    assert readings[1].message == ("Mail queue: active 60.0 above 50 (warning): oldest mail from "
                                   "example.net")
    # 1000 delivered in 100 s: 10/s, above the rate's critical 5; the active count is low.
    assert "delivered 10.0 /s above 5 (critical)" in readings[2].message
    assert "active 5.00 below 10 (warning)" in readings[2].message
    # A counter that went down is a reset: no rate for that reading, not a huge one.
    assert "delivered" not in readings[3].message and "active 150 above 100" in readings[3].message


async def test_hostile_plugins_harm_only_themselves(tmp_path: Path):
    hostile = [
        script(tmp_path, "stall", "sleep 60\n"),
        # Endless output: bounded in memory, killed at its time budget.
        script(tmp_path, "flood", 'exec yes "flood.value 1"\n'),
        script(tmp_path, "garbage", "head -c 3000 /dev/urandom; echo\n"
               "echo '../../etc.value 1'; echo 'x.value 1e999'; echo 'graph_title \x1b[31mred'\n"
               "printf 'y.label \\342\\200\\256evil\\n'; echo 'y.value 12'\n"),
        script(tmp_path, "fails", "echo 'cannot read /proc/thing' >&2; exit 3\n"),
        script(tmp_path, "silent", "exit 0\n"),
        script(tmp_path, "sprawl", 'i=0; while [ $i -lt 300 ]; do echo "f$i.value $i"; i=$((i+1)); done\n'),
        tmp_path / "missing",
    ]
    not_executable = tmp_path / "plain"
    not_executable.write_text("#!/bin/sh\necho x.value 1\n")
    c = collector(tmp_path, plugins=[PLUGINS / "load", *hostile, not_executable], timeout=2)
    batch = await c.collect()
    state = checks(batch)
    assert state["munin load"].state is State.OK
    for name in ("stall", "flood"):
        assert state[f"munin {name}"].state is State.UNKNOWN
        assert "did not finish within 2 s and was killed" in state[f"munin {name}"].message
    assert "exited with 3: cannot read /proc/thing" in state["munin fails"].message
    assert state["munin silent"].state is State.UNKNOWN
    assert "printed no values" in state["munin silent"].message
    assert "does not exist" in state["munin missing"].message
    assert "is not executable" in state["munin plain"].message
    # Garbage: what could be a field is kept; names that could form paths and non-numbers not.
    garbage = {(m.metric, m.value) for m in batch.measurements if m.instance == "garbage"}
    assert ("y", 12.0) in garbage and ("x", None) in garbage
    assert not any("etc" in metric for metric, _ in garbage)
    assert "not understood" in state["munin garbage"].message
    assert all(ch.isprintable() and "\u202e" not in ch for c_ in batch.checks for ch in c_.message)
    # A plugin with hundreds of fields: its graph keeps its first 50.
    assert len([m for m in batch.measurements if m.instance == "sprawl"]) == 50
    assert state["munin [here]"].state is State.WARNING
    assert "6 failed" in state["munin [here]"].message
    # Nothing of theirs is left running (each ran in a process group that was killed).
    left = [p.cmdline() for p in psutil.Process().children(recursive=True)
            if "flood.value" in " ".join(p.cmdline()) or p.name() == "sleep"]
    assert left == []


async def test_a_directory_of_plugins_as_etc_munin_plugins_has_them(tmp_path: Path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "load").symlink_to(PLUGINS / "load")
    (plugins / "uptime").symlink_to(PLUGINS / "uptime")
    (plugins / "load.dpkg-old").symlink_to(PLUGINS / "load")  # munin-node skips these too
    (plugins / "README").write_text("not a plugin")
    batch = await collector(tmp_path, directory=plugins).collect()
    assert {c.check for c in batch.checks} == {"munin load", "munin uptime", "munin [here]"}
    assert all(c.state is State.OK for c in batch.checks), batch.checks


async def test_a_plugin_without_its_shebang_harms_only_itself(tmp_path: Path):
    """An executable file that is no program (a script someone saved without its #! line:
    exec fails with ENOEXEC) is that plugin's UNKNOWN, not the end of every plugin's reading."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "load").symlink_to(PLUGINS / "load")
    broken = plugins / "queue"
    broken.write_text('echo "queue.value 1"\n')
    broken.chmod(0o755)
    state = checks(await collector(tmp_path, directory=plugins).collect())
    assert state["munin load"].state is State.OK
    assert state["munin queue"].state is State.UNKNOWN
    assert state["munin queue"].message == (f"queue: plugin {broken} is not a program (a script "
                                            "needs its #! line)")
    assert state["munin [here]"].message == "2 plugin(s), 1 failed"


async def test_a_real_munin_node(tmp_path: Path):
    with munin_node(tmp_path) as port:
        source = MuninSource(name="node", node=f"127.0.0.1:{port}",
                             only=["load", "memory", "cpu", "no_such_plugin"], timeout=10)
        source.validate()
        c = MuninCollector(source, "127.0.0.1", tmp_path / "state")
        batch = await c.collect()
        # Without `only`: the plugins the node lists (this machine's /etc/munin/plugins).
        session = await NodeSession.open(f"127.0.0.1:{port}", 10)
        listed = await session.plugins()
        session.close()
    state = checks(batch)
    assert state["munin load"].state is State.OK and state["munin memory"].state is State.OK
    assert state["munin cpu"].state is State.OK
    assert state["munin no_such_plugin"].state is State.UNKNOWN
    assert "Unknown service" in state["munin no_such_plugin"].message
    assert state["munin [node]"].state is State.WARNING
    kinds = {(m.instance, m.metric): m.kind for m in batch.measurements}
    assert kinds[("cpu", "idle")] is Kind.DERIVE and kinds[("load", "load")] is Kind.GAUGE
    assert {"load", "memory", "cpu"} <= set(listed)


async def hostile_node(handler) -> tuple[asyncio.Server, int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


async def node_collect(port: int, tmp_path: Path, **keys) -> dict[str, object]:
    source = MuninSource(name="liar", node=f"127.0.0.1:{port}", **keys)
    source.validate()
    return checks(await MuninCollector(source, "liar", tmp_path).collect())


async def test_hostile_munin_nodes(tmp_path: Path):
    async def not_munin(reader, writer):
        writer.write(b"SSH-2.0-OpenSSH_9.2\r\n")
        await writer.drain()
        await reader.read()

    async def stalls_after_greeting(reader, writer):
        writer.write(b"# munin node at liar\n")
        await writer.drain()
        await reader.read()

    async def floods(reader, writer):
        writer.write(b"# munin node at liar\n")
        await reader.readline()
        writer.write(b"cap multigraph\n")
        await reader.readline()
        try:
            while True:  # a config answer that never ends
                writer.write(b"graph_title x\n" * 1000)
                await writer.drain()
        except (ConnectionError, OSError):
            pass

    async def lies_in_list(reader, writer):
        writer.write(b"# munin node at liar\n")
        commands = []
        while line := await reader.readline():
            commands.append(line)
            if line.startswith(b"cap"):
                writer.write(b"cap multigraph\n")
            elif line.startswith(b"list"):
                writer.write(b"load ../../etc/passwd bad\x07name load\r\n")
            elif line.startswith(b"config"):
                writer.write(b"graph_title Load\nload.label load\nload.critical 1\n.\n")
            elif line.startswith(b"fetch"):
                writer.write(b"load.value 5\n.\n")
            await writer.drain()
        lied.extend(commands)

    lied: list[bytes] = []
    for handler, expect in ((not_munin, "not a munin-node"),
                            (stalls_after_greeting, "no answer to 'cap multigraph' within 0.5 s"),
                            (floods, "longer than")):
        server, port = await hostile_node(handler)
        async with server:
            state = await node_collect(port, tmp_path, timeout=0.5)
        assert expect in state["munin [liar]"].message, state["munin [liar]"].message
        assert state["munin [liar]"].state in (State.CRITICAL, State.WARNING)
    server, port = await hostile_node(lies_in_list)
    async with server:
        state = await node_collect(port, tmp_path, timeout=2)
        await asyncio.sleep(0.05)
    assert state["munin load"].state is State.CRITICAL  # 5 above its critical 1
    # Names that are no plugin names never go into a command line.
    sent = b"".join(lied)
    assert b"passwd" not in sent and b"\x07" not in sent
    # A node refusing connections: the node's check says so, nothing else breaks.
    server, port = await hostile_node(not_munin)
    server.close()
    await server.wait_closed()
    state = await node_collect(port, tmp_path, timeout=1)
    assert state["munin [liar]"].state is State.CRITICAL


def test_parse_multigraph_sections_and_timestamps():
    parsed = parse("diskstats", ["multigraph diskstats_iops", "vda.value 5",
                                 "multigraph diskstats_iops.vda", "rdio.value 1800000000:3",
                                 "rdio.type DERIVE", "multigraph ../x", "evil.value 1"])
    assert set(parsed.graphs) == {"diskstats", "diskstats_iops", "diskstats_iops.vda"}
    rdio = parsed.graphs["diskstats_iops.vda"].fields["rdio"]
    assert (rdio.value, rdio.when, rdio.kind) == (3.0, 1_800_000_000.0, Kind.DERIVE)
    assert "evil" not in str(parsed.graphs)


def test_config_errors_name_the_key():
    def error(text: str) -> str:
        with pytest.raises(ConfigError) as info:
            parse_config(text, "config.toml")
        return str(info.value)

    both = error('[[munin]]\nname = "x"\nnode = "127.0.0.1:4949"\nplugins = ["/bin/true"]\n')
    assert "config.toml" in both and "node" in both and "not both" in both
    port = error('[[munin]]\nname = "x"\nnode = "127.0.0.1"\n')
    assert '"host:port" like "127.0.0.1:4949"' in port
    env = error('[[munin]]\nname = "x"\ndirectory = "/etc/munin/plugins"\nenv = { "a b" = "1" }\n')
    assert "env" in env


async def test_readings_are_stored_as_the_rates_munin_would_draw(tmp_path: Path):
    """Eight hours of five-minute readings of a plugin with one field of each type, through the store: what
    comes back is each type's rate (DERIVE and COUNTER per second, ABSOLUTE per second of the
    count since the previous reading) and the GAUGE as printed; a DERIVE reset is a gap."""
    step = 300
    start = 1_800_000_000 // step * step
    values = tmp_path / "values"
    plugin = script(tmp_path, "mix", """\
if [ "$1" = config ]; then
  echo "graph_title Mixed types"
  echo "queue.label queue"
  echo "sent.label sent"; echo "sent.type DERIVE"; echo "sent.min 0"
  echo "octets.label octets"; echo "octets.type COUNTER"; echo "octets.max 1000000"
  echo "hits.label hits"; echo "hits.type ABSOLUTE"
  exit 0
fi
read queue sent octets hits < "$VALUES"
printf 'queue.value %s\\nsent.value %s\\noctets.value %s\\nhits.value %s\\n' $queue $sent $octets $hits
""")
    now = [float(start)]
    c = collector(tmp_path, clock=lambda: now[0], plugins=[plugin], env={"VALUES": str(values)})
    store = RrdStore(tmp_path / "rrd")
    reset = start + 50 * step
    sent = 0
    for i in range(97):
        t = start + i * step
        sent = 0 if t == reset else sent + 3 * step  # 3/s, and once a reset to 0
        values.write_text(f"{i % 7} {sent} {i * 600 * step} {2 * step}\n")
        now[0] = t
        batch = await c.collect()
        assert store.write(batch.measurements, step).errors == []
    series = store.fetch("localhost", "mix", start + step, start + 96 * step)
    rows = dict(zip(series.timestamps, zip(*(series.columns[m] for m in
                                              ("queue", "sent", "octets", "hits")), strict=True),
                    strict=True))
    for i in range(2, 97):
        t = start + i * step
        queue, sent_rate, octets_rate, hits_rate = rows[t]
        assert queue == i % 7
        assert octets_rate == pytest.approx(600) and hits_rate == pytest.approx(2)
        assert sent_rate is None if t == reset else sent_rate == pytest.approx(3), (i, sent_rate)
    store.close()


def ds_types(store: RrdStore, target: str, instance: str) -> dict[str, str]:
    info = rrdtool.info(str(store.info(target, instance).path))
    return {k.split("[")[1].split("]")[0]: v for k, v in info.items() if k.endswith("].type")}


async def test_debian_counter_and_absolute_plugins_with_a_real_unbound(tmp_path: Path):
    """if_err_ declares COUNTER fields, unbound_munin_ ABSOLUTE ones (asking a real unbound
    through unbound-control, configured by env as plugin-conf.d would)."""
    if not Path("/usr/sbin/unbound-control").exists():
        pytest.skip("unbound-control is not installed (package unbound)")
    import dns.message
    import dns.query

    (tmp_path / "if_err_lo").symlink_to(PLUGINS / "if_err_")
    (tmp_path / "unbound_munin_hits").symlink_to(PLUGINS / "unbound_munin_")
    control = tmp_path / "unbound/control.sock"
    remote_control = ["statistics-cumulative: no", "local-data: 'x.test. A 192.0.2.1'",
                      "remote-control:", "control-enable: yes",
                      f"control-interface: {control}", "control-use-cert: no"]
    with unbound(tmp_path / "unbound", remote_control, interfaces=["127.0.0.1"]) as port:
        for _ in range(7):
            dns.query.udp(dns.message.make_query("x.test.", "A"), "127.0.0.1", port=port, timeout=5)
        times = iter([T0, T0 + 300])
        c = collector(tmp_path, clock=lambda: next(times), timeout=20,
                      plugins=[tmp_path / "if_err_lo", tmp_path / "unbound_munin_hits"],
                      env={"unbound_conf": str(tmp_path / "unbound/unbound.conf"),
                           "unbound_control": "/usr/sbin/unbound-control"})
        store = RrdStore(tmp_path / "rrd")
        first = await c.collect()
        assert store.write(first.measurements, 300).errors == []
        second = await c.collect()
        assert store.write(second.measurements, 300).errors == []
    state = checks(first)
    assert state["munin if_err_lo"].state is State.OK, state["munin if_err_lo"].message
    assert state["munin unbound_munin_hits"].state is State.OK, state["munin unbound_munin_hits"]
    kinds = {(m.instance, m.metric): m.kind for m in first.measurements}
    assert kinds[("if_err_lo", "rcvd")] is Kind.COUNTER
    assert kinds[("unbound_munin_hits", "t_n_queries")] is Kind.ABSOLUTE
    values = {(m.instance, m.metric): m.value for m in first.measurements}
    # The readiness probe's query and the test's seven: unbound counted them, statistics reset.
    assert values[("unbound_munin_hits", "t_n_queries")] >= 7
    # COUNTER fields without a .max (if_err_ gives none) are kept as DERIVE with min 0: the same
    # rate, and a reset (a reboot) is a gap instead of a 2**64 spike (see store._ds_definition).
    assert set(ds_types(store, "localhost", "if_err_lo").values()) == {"DERIVE"}
    info = rrdtool.info(str(store.info("localhost", "if_err_lo").path))
    assert info["ds[rcvd].min"] == 0.0
    assert set(ds_types(store, "localhost", "unbound_munin_hits").values()) == {"ABSOLUTE"}
    # The second reading's checks judge rates per second: loopback has no errors.
    assert "/s" in checks(second)["munin if_err_lo"].message
    store.close()


def write_conf(directory: Path, files: dict[str, str]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (directory / name).write_text(text)
    return directory


def test_plugin_conf_d_is_read_as_munin_node_reads_it(tmp_path: Path):
    conf = read_plugin_conf(write_conf(tmp_path / "plugin-conf.d", {
        "00-first": "[if_*]\nuser root\nenv.speed 100  # a comment\nenv.hash a\\#b\n"
                    "[if_err_*]\nuser nobody\nenv.speed 10\n",
        "10-local": "[if_err_eth0]\nenv.speed\t1000\ntimeout 30\n[*_queue]\nenv.spool /x\n"
                    "[if_eth0]\nenv.hash c\n",
        "50-broken": "env.orphan 1\n[load]\nwarning 5\nenv.load_warning 5\ntimeout soon\n",
        "munin-node.dpkg-old": "[load]\nenv.load_warning 99\n",  # skipped, as munin-node does
    }))
    # The exact section first, then the most specific wildcard: if_err_* before if_*.
    eth0 = conf.settings("if_err_eth0")
    assert eth0.env == {"speed": "1000", "hash": "a#b"}
    assert (eth0.user, eth0.timeout) == ("nobody", 30)
    assert conf.settings("if_eth0").env == {"hash": "c", "speed": "100"}
    assert conf.settings("if_eth0").user == "root"
    assert conf.settings("mail_queue").env == {"spool": "/x"}
    assert conf.settings("load").env == {"load_warning": "5"}
    assert conf.settings("cpu") == type(eth0)()
    assert conf.problems == [
        f"{tmp_path}/plugin-conf.d/50-broken:1: a setting before the first [PLUGIN] section",
        f"{tmp_path}/plugin-conf.d/50-broken:3: unknown setting 'warning' (env.warning 5?)",
        f"{tmp_path}/plugin-conf.d/50-broken:5: timeout 'soon' is not a number of seconds (up to 600)"]
    assert read_plugin_conf(tmp_path / "nowhere").sections == {}


@pytest.mark.skipif(not Path("/etc/munin/plugin-conf.d/munin-node").exists(),
                    reason="munin-node is not installed (see the Makefile)")
async def test_debians_own_plugin_conf_gives_df_its_levels(tmp_path: Path):
    conf = read_plugin_conf(Path("/etc/munin/plugin-conf.d"))
    assert conf.problems == []
    df = conf.settings("df")
    assert (df.env["warning"], df.env["critical"]) == ("92", "98")
    assert conf.settings("if_eth0").user == "root" and conf.settings("if_err_eth0").user == "nobody"
    # The real df plugin prints those levels for each file system it graphs.
    config, fetch = await run_plugin(PLUGINS / "df", {**PLUGIN_ENV, "MUNIN_LIBDIR": "/usr/share/munin",
                                                      **df.env}, 20)
    fields = parse("df", fetch, parse("df", config)).graphs["df"].fields.values()
    assert fields and all((f.warning, f.critical) == ("92", "98") for f in fields)


async def test_levels_from_plugin_conf_d_judge_a_real_plugin(tmp_path: Path):
    """`load` prints load.critical from $load_critical (plugin.sh's print_critical): set in a
    plugin-conf.d file, the level makes the check; a table's env wins over the file."""
    conf = write_conf(tmp_path / "plugin-conf.d", {"munin-node": "[load]\nenv.load_critical 1000:\n"
                                                                 "[uptime]\nenv.uptime_warning 1000000000:\n"
                                                                 "[bad\nenv.x 1\n"})
    c = collector(tmp_path, plugins=[PLUGINS / "load", PLUGINS / "uptime"], plugin_conf=conf)
    state = checks(await c.collect())
    assert state["munin load"].state is State.CRITICAL
    assert "below 1000 (critical)" in state["munin load"].message
    assert state["munin uptime"].state is State.WARNING
    # The broken line is the table's warning, named by file and line; the rest was read.
    assert state["munin [here]"].state is State.WARNING
    assert state["munin [here]"].message == (
        f"2 plugin(s); plugin-conf.d: {conf}/munin-node:5: '[bad' is no [PLUGIN] section and no "
        "NAME VALUE setting")
    overridden = collector(tmp_path, plugins=[PLUGINS / "load"], plugin_conf=conf,
                           env={"load_critical": "0:"})
    assert checks(await overridden.collect())["munin load"].state is State.OK
