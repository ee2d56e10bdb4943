"""Munin plugins as a collector: a [[munin]] table runs plugins here (`PLUGIN config`, then
`PLUGIN`, as munin-node does) or asks a munin-node over TCP (its text protocol: `list`,
`config PLUGIN`, `fetch PLUGIN`, each answer ended by a "." line).

Each graph of a plugin is one instance of the target: its fields are metrics stored with the DS
type they declare (GAUGE, DERIVE, COUNTER, ABSOLUTE) and their min/max, and the graph is one
check, judged by the fields' warning/critical levels as Munin reads them ("MAX", "MIN:",
"MIN:MAX": outside is a problem; DERIVE/COUNTER/ABSOLUTE fields on their rate per second).
A plugin that is missing, fails, stalls, floods or prints garbage is an UNKNOWN check of its
own (within its time budget and output bound); the other plugins go on.
"""

from __future__ import annotations

import asyncio
import math
import os
import pwd
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from collectors.services_exec import MAX_OUTPUT, MAX_PLUGIN_METRICS, PLUGIN_ENV, admit, cannot_run, run
from monitor.config import Config, MuninSource, listen_address
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, State
from monitor.store import safe_name
from monitor.text import clean
from monitor.units import format_value

FIELD_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")
PLUGIN_NAME = re.compile(r"[\w.:-]{1,100}")  # also what goes into a munin-node command line
_NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?"
_LEVEL = re.compile(rf"({_NUMBER})?(?::({_NUMBER})?)?")
_KINDS = {k.value: k for k in Kind}
MAX_GRAPHS = 20  # per plugin (multigraph plugins)
MAX_PLUGINS = 500  # per [[munin]] table
MAX_ANSWER_LINES = 5000  # of one munin-node answer
LINE_LIMIT = 8192  # bytes of one munin-node line
CONCURRENCY = 4  # local plugins run at once
# munin-node's default ignore_file patterns: editor and package manager leftovers.
_IGNORED = re.compile(r"[#~]$|DEADJOE$|\.bak$|%$|\.dpkg-(tmp|new|old|dist)$|\.rpm(save|new)$|\.pod$")
MUNIN_LIBDIR = "/usr/share/munin"  # plugin.sh, which most shell plugins source


class PluginFailed(Exception):
    """A plugin (or the node's answer for it) gave nothing usable; the message says why."""


@dataclass
class Field:
    name: str
    label: str = ""
    kind: Kind = Kind.GAUGE
    minimum: float | None = None
    maximum: float | None = None
    warning: str | None = None
    critical: str | None = None
    value: float | None = None
    when: float | None = None  # "FIELD.value EPOCH:VALUE"
    extinfo: str = ""
    has_value: bool = False


@dataclass
class Graph:
    name: str
    title: str = ""
    vlabel: str = ""
    fields: dict[str, Field] = field(default_factory=dict)


@dataclass
class Parsed:
    graphs: dict[str, Graph] = field(default_factory=dict)
    ignored: int = 0  # lines in no known form


def _number(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def parse(plugin: str, lines: Iterable[str], out: Parsed | None = None) -> Parsed:
    """Add `config` or fetch output (lines) of `plugin` to `out`. Unknown lines are counted,
    never fatal; names that could not be a Munin graph or field name are dropped."""
    out = out or Parsed()
    graph: Graph | None = out.graphs.setdefault(plugin, Graph(plugin))
    for raw in lines:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, value = (*re.split(r"\s+", line, maxsplit=1), "")[:2]
        if key == "multigraph":
            graph = None
            if PLUGIN_NAME.fullmatch(value) and (value in out.graphs or len(out.graphs) < MAX_GRAPHS):
                graph = out.graphs.setdefault(value, Graph(value))
            continue
        if graph is None:
            continue
        if key.startswith("graph_"):
            if key == "graph_title":
                graph.title = clean(value, 100)
            elif key == "graph_vlabel":
                graph.vlabel = clean(value, 60)
            continue
        name, dot, attribute = key.partition(".")
        if not dot or not FIELD_NAME.fullmatch(name):
            out.ignored += 1
            continue
        if name not in graph.fields:
            if len(graph.fields) >= MAX_PLUGIN_METRICS:
                out.ignored += 1
                continue
            graph.fields[name] = Field(name)
        _set(graph.fields[name], attribute, value)
    return out


def _set(f: Field, attribute: str, value: str) -> None:
    if attribute == "value":
        stamp, colon, number = value.partition(":")
        f.when = _number(stamp) if colon else None
        f.value = None if (number if colon else value) == "U" else _number(number if colon else value)
        f.has_value = True
    elif attribute == "label":
        f.label = clean(value, 60)
    elif attribute == "type":
        f.kind = _KINDS.get(value.upper(), Kind.GAUGE)
    elif attribute in ("min", "max"):
        setattr(f, "minimum" if attribute == "min" else "maximum", _number(value))
    elif attribute in ("warning", "critical"):
        setattr(f, attribute, value if value and _LEVEL.fullmatch(value) else None)
    elif attribute == "extinfo":
        f.extinfo = clean(value, 120)


def outside(value: float, level: str) -> str | None:
    """Munin's reading of a warning/critical level: "10" and ":10" are maxima, "5:" a minimum,
    "5:10" a range; what a value outside it is ("above 10"), or None inside."""
    low, colon, high = level.partition(":")
    if not colon:
        low, high = "", low
    if low and value < float(low):
        return f"below {low}"
    if high and value > float(high):
        return f"above {high}"
    return None


def _unit(graph: Graph, kind: Kind) -> str:
    """What the stored values are in: rates per second for the counting types (whatever the
    plugin counts), "%" or "B" for gauges whose vertical label says so."""
    if kind is not Kind.GAUGE:
        return "/s"
    vlabel = graph.vlabel.lower()
    return "%" if vlabel in ("%", "percent") else "B" if vlabel.startswith("bytes") else ""


# -- running plugins here -----------------------------------------------------------------


def plugins_of(source: MuninSource) -> list[Path]:
    """The listed plugins, then every executable file of the directory (munin-node's rule),
    at most MAX_PLUGINS."""
    found = list(source.plugins)
    if source.directory is not None:
        try:
            entries = sorted(os.scandir(source.directory), key=lambda e: e.name)
        except OSError:
            entries = []
        found += [Path(e.path) for e in entries
                  if not e.name.startswith(".") and not _IGNORED.search(e.name)
                  and e.is_file() and os.access(e.path, os.X_OK)]
    return list(dict.fromkeys(found))[:MAX_PLUGINS]


async def run_plugin(path: Path, env: dict[str, str], timeout: float) -> tuple[list[str], list[str]]:
    """(config lines, fetch lines) of one plugin, both runs within `timeout`."""
    name = path.name
    try:
        async with asyncio.timeout(timeout):
            outputs = []
            for argv in ([str(path), "config"], [str(path)]):
                code, out, err = await run(argv, env=env)
                if code != 0:
                    text = clean(err.strip().splitlines()[-1] if err.strip() else out, 120)
                    raise PluginFailed(f"{name} {' '.join(argv[1:]) or 'fetch'} exited with {code}"
                                       + (f": {text}" if text else ""))
                outputs.append(out.splitlines())
    except TimeoutError:
        raise PluginFailed(f"{name} did not finish within {timeout:g} s and was killed") from None
    except OSError as exc:  # no such file, not executable, no #! line: this plugin's problem
        raise PluginFailed(f"plugin {cannot_run(str(path), exc)}") from None
    return outputs[0], outputs[1]


# -- plugin-conf.d ------------------------------------------------------------------------


@dataclass
class PluginSettings:
    """What munin-node's plugin-conf.d says of one plugin: `env.NAME VALUE`, `timeout`, and the
    `user` it would run as (which the agent cannot be: it runs plugins as its own user)."""

    env: dict[str, str] = field(default_factory=dict)
    timeout: float | None = None
    user: str | None = None


@dataclass
class PluginConf:
    sections: dict[str, PluginSettings] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # "FILE:LINE: what", munin-node's errors

    def settings(self, plugin: str) -> PluginSettings:
        """munin-node's rule: the plugin's own section, then the wildcard sections ("if_*",
        "*_mysql") that match it, most specific (last in sorted order) first; a setting never
        replaces one already given."""
        out = PluginSettings()
        exact = self.sections.get(plugin)
        wild = [s for name, s in sorted(self.sections.items(), reverse=True)
                if _wildcard_matches(name, plugin)]
        for section in ([exact] if exact else []) + wild:
            for key, value in section.env.items():
                out.env.setdefault(key, value)
            out.timeout = out.timeout if out.timeout is not None else section.timeout
            out.user = out.user or section.user
        return out


def _wildcard_matches(section: str, plugin: str) -> bool:
    if section.endswith("*"):
        return plugin.startswith(section[:-1])
    return section.startswith("*") and plugin.endswith(section[1:])


def agent_user() -> str:
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:  # a uid without a passwd entry (a container)
        return str(os.getuid())


_CONF_FILE = re.compile(r"[-\w.:]+")  # munin-node skips files with other characters
MAX_CONF_BYTES = 1 << 20


def read_plugin_conf(directory: Path) -> PluginConf:
    """Every file of `directory` (e.g. /etc/munin/plugin-conf.d) in name order, read as
    munin-node reads them: `[SECTION]` lines, then `env.NAME VALUE`, `user NAME`, `timeout N`
    (group, command and the other keys munin-node knows are read and have no effect here), "#"
    starts a comment unless escaped. A directory that does not exist holds no settings; a line
    munin-node would refuse is a problem (named by file and line) and is skipped."""
    conf = PluginConf()
    try:
        names = sorted(e.name for e in os.scandir(directory) if e.is_file())
    except FileNotFoundError:
        return conf
    except OSError as exc:
        conf.problems.append(f"{directory}: {exc.strerror or exc}")
        return conf
    for name in names:
        if name.startswith(".") or not _CONF_FILE.fullmatch(name) or _IGNORED.search(name):
            continue
        path = directory / name
        try:
            with open(path, "rb") as handle:
                text = handle.read(MAX_CONF_BYTES).decode("utf-8", "replace")
        except OSError as exc:
            conf.problems.append(f"{path}: {exc.strerror or exc}")
            continue
        _parse_plugin_conf(conf, path, text)
    return conf


def _parse_plugin_conf(conf: PluginConf, path: Path, text: str) -> None:
    section: PluginSettings | None = None
    for number, raw in enumerate(text.splitlines(), 1):
        line = re.sub(r"(?<!\\)#.*", "", raw).replace("\\#", "#").strip()
        if not line:
            continue
        header = re.fullmatch(r"\[([^\]]+)\]", line)
        if header:
            section = conf.sections.setdefault(header[1].strip(), PluginSettings())
            continue
        key, value = (*re.split(r"\s+", line, maxsplit=1), "")[:2]
        problem = None
        if section is None:
            problem = "a setting before the first [PLUGIN] section"
        elif not value:
            problem = f"{key!r} is no [PLUGIN] section and no NAME VALUE setting"
        elif key.startswith("env."):
            if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", key[4:]) and "\0" not in value:
                section.env[key[4:]] = value
            else:
                problem = f"not an environment variable name: {key[4:]!r}"
        elif key == "user":
            section.user = value
        elif key == "timeout":
            seconds = _number(value)
            if seconds is None or not 0 < seconds <= 600:
                problem = f"timeout {value!r} is not a number of seconds (up to 600)"
            else:
                section.timeout = seconds
        elif key not in ("group", "command", "host_name", "update_rate"):
            problem = f"unknown setting {key!r} (env.{key} {value}?)"
        if problem:
            conf.problems.append(f"{path}:{number}: {clean(problem, 100)}")


# -- asking a munin-node ------------------------------------------------------------------


class NodeError(Exception):
    """The node's connection is unusable (closed, stalled, not Munin's protocol)."""


class NodeSession:
    """One connection to a munin-node; each answer within `timeout`, bounded in size."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 timeout: float) -> None:
        self.reader, self.writer, self.timeout = reader, writer, timeout

    @classmethod
    async def open(cls, address: str, timeout: float) -> NodeSession:
        host, port = listen_address(address, "node")
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT)
        except TimeoutError:
            raise NodeError(f"no connection within {timeout:g} s") from None
        session = cls(reader, writer, timeout)
        banner = await session._answer(None, multi=False)
        if not banner[0].startswith("# munin node at "):
            session.close()
            raise NodeError(f"not a munin-node (it said {clean(banner[0], 60)!r})")
        await session._answer("cap multigraph", multi=False)
        return session

    async def plugins(self) -> list[str]:
        return (await self._answer("list", multi=False))[0].split()

    async def plugin(self, name: str) -> tuple[list[str], list[str]]:
        config = await self._answer(f"config {name}")
        fetch = await self._answer(f"fetch {name}")
        for line in (*config[:1], *fetch[:1]):
            if line.startswith(("# Unknown service", "# Timed out", "# Bad exit")):
                raise PluginFailed(f"munin-node: {clean(line[2:], 100)}")
        return config, fetch

    async def _answer(self, command: str | None, multi: bool = True) -> list[str]:
        if command is not None:
            self.writer.write(command.encode() + b"\n")
        lines: list[str] = []
        size = 0
        try:
            async with asyncio.timeout(self.timeout):
                await self.writer.drain()
                while True:
                    raw = await self.reader.readline()
                    if not raw.endswith(b"\n"):
                        raise NodeError("closed the connection")
                    line = raw.decode("utf-8", "replace").rstrip("\r\n")
                    if not multi:
                        return [line]
                    if line == ".":
                        return lines
                    size += len(raw)
                    if size > MAX_OUTPUT or len(lines) >= MAX_ANSWER_LINES:
                        raise NodeError(f"answer to {command!r} is longer than {MAX_OUTPUT} bytes")
                    lines.append(line)
        except TimeoutError:
            raise NodeError(f"no answer to {command or 'the greeting'!r} within "
                            f"{self.timeout:g} s") from None
        except ValueError:  # a line beyond the reader's limit
            raise NodeError(f"a line longer than {LINE_LIMIT} bytes") from None
        except OSError as exc:
            raise NodeError(exc.strerror or str(exc)) from None

    def close(self) -> None:
        self.writer.close()


# -- the collector ------------------------------------------------------------------------


@dataclass
class MuninCollector:
    source: MuninSource
    target: str
    plugstate: Path  # MUNIN_PLUGSTATE: where plugins keep their own state
    clock: Callable[[], float] = time.time
    name: str = ""
    interval: float = 0.0
    # (graph, field) -> (value, time) of the previous reading: rates for the checks
    _previous: dict[tuple[str, str], tuple[float, float]] = field(default_factory=dict)
    _known: dict[str, set[str]] = field(default_factory=dict)  # graph -> fields stored

    def __post_init__(self) -> None:
        self.name = self.name or f"munin {self.source.name}"
        self.interval = self.interval or self.source.interval

    async def collect(self) -> Batch:
        batch = Batch()
        now = self.clock()
        if self.source.node is not None:
            results, summary = await self._ask_node()
        else:
            results, summary = await self._run_local()
        failed = 0
        for plugin, outcome in results:
            if isinstance(outcome, PluginFailed):
                batch.add(CheckResult(self.target, f"munin {plugin}", State.UNKNOWN,
                                      f"{plugin}: {outcome}", timestamp=now))
                failed += 1
            else:
                failed += not self._add_graphs(batch, plugin, outcome, now)
        state = summary[0] if summary else State.WARNING if failed else State.OK
        message = summary[1] if summary else (
            f"{len(results)} plugin(s), {failed} failed" if failed else f"{len(results)} plugin(s)")
        # (Brackets: no plugin or graph name has them, so this check is never a graph's.)
        batch.add(CheckResult(self.target, f"munin [{self.source.name}]", state, message,
                              timestamp=now))
        return batch

    def _env(self) -> dict[str, str]:
        return {**PLUGIN_ENV, "MUNIN_LIBDIR": MUNIN_LIBDIR, "MUNIN_PLUGSTATE": str(self.plugstate),
                "MUNIN_CAP_MULTIGRAPH": "1", **self.source.env}

    async def _run_local(self) -> tuple[list[tuple[str, Parsed | PluginFailed]], tuple[State, str] | None]:
        plugins = await asyncio.to_thread(plugins_of, self.source)
        conf = await asyncio.to_thread(read_plugin_conf, self.source.plugin_conf)
        await asyncio.to_thread(self.plugstate.mkdir, 0o750, True, True)
        semaphore = asyncio.Semaphore(CONCURRENCY)
        env = self._env()

        async def one(path: Path) -> tuple[str, Parsed | PluginFailed]:
            name = clean(path.name, 100)
            if not PLUGIN_NAME.fullmatch(path.name):
                return name, PluginFailed("not a plugin name (letters, digits, _ . : -)")
            settings = conf.settings(path.name)
            statefile = self.plugstate / f"{path.name}-{safe_name(self.target)}"
            # The table's env is the agent's own config: it wins over plugin-conf.d's.
            plugin_env = {**env, **settings.env, **self.source.env,
                          "MUNIN_STATEFILE": str(statefile)}
            async with semaphore:
                try:
                    config, fetch = await run_plugin(path, plugin_env,
                                                     settings.timeout or self.source.timeout)
                except PluginFailed as exc:
                    if settings.user and settings.user != agent_user():
                        exc.args = (f"{exc} (plugin-conf.d runs it as {clean(settings.user, 32)}; "
                                    f"here it ran as {agent_user()})",)
                    return name, exc
            return name, parse(name, fetch, parse(name, config))

        results = list(await asyncio.gather(*(one(p) for p in plugins)))
        if not plugins:
            where = self.source.directory or "plugins"
            return results, (State.UNKNOWN, f"no plugins found ({clean(str(where), 100)})")
        if conf.problems:
            failed = sum(isinstance(o, PluginFailed) for _, o in results)
            more = f" and {len(conf.problems) - 1} more" if len(conf.problems) > 1 else ""
            return results, (State.WARNING, f"{len(results)} plugin(s)"
                             + (f", {failed} failed" if failed else "")
                             + f"; plugin-conf.d: {clean(conf.problems[0], 200)}{more}")
        return results, None

    async def _ask_node(self) -> tuple[list[tuple[str, Parsed | PluginFailed]], tuple[State, str] | None]:
        node = self.source.node or ""
        results: list[tuple[str, Parsed | PluginFailed]] = []
        names: list[str] = []
        try:
            session = await NodeSession.open(node, self.source.timeout)
        except (NodeError, OSError) as exc:
            text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            return results, (State.CRITICAL, f"munin-node {node}: {clean(text, 120)}")
        try:
            listed = self.source.only or await session.plugins()
            names = [n for n in listed if PLUGIN_NAME.fullmatch(n)][:MAX_PLUGINS]
            for name in names:
                try:
                    config, fetch = await session.plugin(name)
                except PluginFailed as exc:
                    results.append((name, exc))
                else:
                    results.append((name, parse(name, fetch, parse(name, config))))
        except NodeError as exc:
            done = len(results)
            if done < len(names):  # the plugin it was answering for
                results.append((names[done], PluginFailed(f"munin-node: {exc}")))
            return results, (State.WARNING, f"munin-node {node}: {clean(str(exc), 120)} "
                                            f"(after {done} plugin(s))")
        finally:
            session.close()
        failed = sum(isinstance(o, PluginFailed) for _, o in results)
        return results, (State.WARNING if failed else State.OK,
                         f"munin-node {node}: {len(results)} plugin(s)"
                         + (f", {failed} failed" if failed else ""))

    def _add_graphs(self, batch: Batch, plugin: str, parsed: Parsed, now: float) -> bool:
        """The graphs' series and checks; False if the plugin printed no value at all."""
        graphs = [g for g in parsed.graphs.values() if any(f.has_value for f in g.fields.values())]
        if not graphs:
            batch.add(CheckResult(self.target, f"munin {plugin}", State.UNKNOWN,
                                  f"{plugin} printed no values" + (
                                      f" ({parsed.ignored} line(s) not understood)"
                                      if parsed.ignored else ""), timestamp=now))
            return False
        for graph in graphs:
            with_values = [f for f in graph.fields.values() if f.has_value]
            known = self._known.setdefault(graph.name, set())
            dropped = admit([f.name for f in with_values], known)
            problems: list[tuple[State, str]] = []
            readings: list[str] = []
            for f in with_values:
                if f.name in dropped:
                    continue
                when = f.when if f.when is not None else now
                batch.add(Measurement(self.target, graph.name, f.name, f.value, f.kind,
                                      _unit(graph, f.kind), when, f.minimum, f.maximum))
                judged = self._judged(graph.name, f, when)
                label = f.label or f.name
                if judged is None:
                    continue
                shown = format_value(judged, _unit(graph, f.kind))
                readings.append(f"{label} {shown}")
                for state, level in ((State.CRITICAL, f.critical), (State.WARNING, f.warning)):
                    where = outside(judged, level) if level else None
                    if where:
                        problems.append((state, f"{label} {shown} {where} ({state.name.lower()})"
                                                + (f": {f.extinfo}" if f.extinfo else "")))
                        break
            title = graph.title or graph.name
            if problems:
                state = State.worst(s for s, _ in problems)
                text = "; ".join(t for _, t in sorted(problems, key=lambda p: -p[0].severity))
            else:
                state, text = State.OK, ", ".join(readings[:6]) or "no rate yet"
            notes = []
            if dropped:
                notes.append(f"{len(dropped)} field(s) not stored: it has its {MAX_PLUGIN_METRICS}")
            if parsed.ignored:
                notes.append(f"{parsed.ignored} line(s) not understood")
            text += f" ({'; '.join(notes)})" if notes else ""
            batch.add(CheckResult(self.target, f"munin {graph.name}", state,
                                  clean(f"{title}: {text}", 300), timestamp=now))
        return True

    def _judged(self, graph: str, f: Field, when: float) -> float | None:
        """The value Munin's levels apply to: a GAUGE's value, the others' rate per second
        since the previous reading (None on the first one, or after a reset)."""
        if f.value is None or f.kind is Kind.GAUGE:
            return f.value
        key = (graph, f.name)
        before = self._previous.get(key)
        self._previous[key] = (f.value, when)
        if before is None or when <= before[1]:
            return None
        elapsed = when - before[1]
        if f.kind is Kind.ABSOLUTE:
            return f.value / elapsed
        if f.value < before[0]:
            return None  # a reset (or a counter wrap): unknown for one reading, as RRD does
        return (f.value - before[0]) / elapsed


def build(config: Config) -> list[Collector]:
    out: list[Collector] = []
    for source in config.munin:
        target = source.target or (listen_address(source.node, "node")[0] if source.node
                                   else config.agent.hostname)
        out.append(MuninCollector(source, target,
                                  config.state_dir / "munin" / safe_name(source.name)))
    return out
