"""SmokePing: a config (its @include files followed) or a Targets file -> [[services]] ping
checks (dns, http where the probe says so), and each target's RRD file
(DATADIR/SECTION/.../NAME.rrd: data sources uptime, loss, median and ping1..pingN, N = the
Database section's "pings", 20 by default) -> our series of that check: median ->
rtt_median_seconds (response_seconds for dns/http), loss (pings lost of N) -> loss_percent.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from importers.plan import Plan, SeriesCopy, included_lines, read_rrd_archives, toml_string
from monitor.consolidate import Archive
from monitor.model import Kind, Measurement
from monitor.text import clean

PING_PROBES = ("FPing", "FPing6", "FPingContinuous", "Ping", "TCPPing", "OpenSSHJunOSPing")
DNS_PROBES = ("DNS", "AnotherDNS", "EchoPingDNS")
HTTP_PROBES = ("Curl", "EchoPingHttp", "EchoPingHttps")
_INCLUDE = re.compile(r"^\s*@include\s+(\S+)\s*$")  # Debian's main config is only these


@dataclass
class Node:
    path: tuple[str, ...]
    line: int
    settings: dict[str, str] = field(default_factory=dict)
    file: Path = Path()


def read_config(path: Path) -> tuple[list[Node], Path | None]:
    """The nodes of a SmokePing config's "*** Targets ***" part (the whole file when it has no
    sections: a config.d/Targets), with inherited probe/lookup, and the General datadir."""
    lines = list(included_lines(path, _INCLUDE))
    nodes: list[Node] = []
    stack: list[Node] = [Node((), 0)]
    datadir: Path | None = None
    section = "" if any(text.startswith("***") for _, _, text in lines) else "Targets"
    for file, number, raw in lines:
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        heading = re.match(r"^\*\*\*\s*(\w+)\s*\*\*\*$", text)
        if heading:
            section = heading[1]
            continue
        setting = re.match(r"^([A-Za-z_]\w*)\s*=\s*(.*)$", text)
        if section == "General" and setting and setting[1] == "datadir":
            datadir = Path(setting[2].strip())
        if section != "Targets":
            continue
        node = re.match(r"^(\++)\s*(\S+)$", text)
        if node:
            depth = len(node[1])
            del stack[depth:]
            parent = stack[-1]
            inherited = {k: v for k, v in parent.settings.items() if k in ("probe", "lookup", "pings")}
            new = Node((*parent.path, node[2]), number, inherited, file)
            stack.append(new)
            nodes.append(new)
            continue
        if setting:
            stack[-1].settings[setting[1]] = setting[2].strip()
    return nodes, datadir


def read_targets(path: Path) -> list[Node]:
    """The nodes of a Targets file or a whole config (see `read_config`)."""
    return read_config(path)[0]


def plan(targets: Path, rrd_dir: Path | None = None) -> Plan:
    result = Plan()
    nodes, configured = read_config(targets)
    datadir = rrd_dir or configured or next(
        (d for d in (targets.parent / "data", targets.parent.parent / "data",
                     Path("/var/lib/smokeping")) if d.is_dir()), targets.parent)
    for node in nodes:
        host = node.settings.get("host")
        if host is None:
            continue  # a section
        where = f"{node.file}:{node.line}: {'/'.join(node.path)}"
        if host.startswith("/") or " " in host:
            result.unmapped.append(f"{where}: a multi-host graph ({clean(host, 60)}): its "
                                   "targets are imported one by one")
            continue
        probe = node.settings.get("probe", "FPing")
        name = ".".join(node.path)
        if probe in PING_PROBES:
            kind, metric = "ping", "rtt_median_seconds"
        elif probe in DNS_PROBES:
            kind, metric = "dns", "response_seconds"
        elif probe in HTTP_PROBES:
            kind, metric = "http", "response_seconds"
        else:
            result.unmapped.append(f"{where}: probe {clean(probe, 30)}: no matching check kind")
            continue
        stanza = [f"# from SmokePing {where} (probe {probe})", "[[services]]",
                  f"name = {toml_string(name)}", f'kind = "{kind}"']
        target = host
        if kind == "dns":
            stanza += [f"server = {toml_string(host)}",
                       f"query = {toml_string(node.settings.get('lookup', 'www.example.com'))}"]
        elif kind == "http":
            url = node.settings.get("urlformat", node.settings.get("url", "http://%host%/"))
            stanza.append(f"url = {toml_string(url.replace('%host%', host))}")
        else:
            stanza.append(f"host = {toml_string(host)}")
        title = node.settings.get("title") or node.settings.get("menu")
        if title:
            stanza.append(f"# {clean(title, 100)}")
        result.stanzas.append("\n".join(stanza) + "\n")
        rrd = datadir.joinpath(*node.path).with_suffix(".rrd")
        if not rrd.exists():
            result.unmapped.append(f"{where}: no history at {rrd}")
            continue
        templates = [Measurement(target, name, metric, None, Kind.GAUGE, "s", 0, 0)]
        if kind == "ping":
            templates.append(Measurement(target, name, "loss_percent", None, Kind.GAUGE, "%", 0, 0))
        else:
            result.notes.append(f"{where}: loss of the {probe} probe not imported (a {kind} "
                                "check has no loss series)")
        result.copies.append(SeriesCopy(templates, [rrd], _reader(rrd, metric, kind == "ping"),
                                        f"SmokePing {name}", "services"))
    return result


def _reader(rrd: Path, metric: str, with_loss: bool) -> Callable[[], dict[str, list[Archive]]]:
    def read() -> dict[str, list[Archive]]:
        archives = read_rrd_archives(rrd)
        pings = len([ds for ds in archives if re.fullmatch(r"ping\d+", ds)]) or 20
        out = {metric: archives.get("median", [])}
        if with_loss:
            out["loss_percent"] = [a.scaled(100.0 / pings) for a in archives.get("loss", [])]
        return out
    return read
