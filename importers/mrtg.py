"""MRTG: an mrtg.cfg as cfgmaker writes it -> [[snmp.devices]] stanzas, and each interface
target's history (rateup `.log` or `LogFormat: rrdtool` files) -> our RRD file of that interface.

MRTG keeps bytes per second (in and out, average and maximum per interval), as our SNMP
collector does (in_octets/out_octets, B/s; `Options[]: bits` only changes MRTG's graphs). The
interface identity is the ifName where the config names it (`#ifName` targets, or the
"Name: '...'" comment cfgmaker writes above each target), so the imported history lands in the
file the SNMP collector writes with its default identity = "ifName".
"""

from __future__ import annotations

import html
import logging
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from importers.plan import Plan, SeriesCopy, included_lines, read_rrd_archives, toml_string
from monitor.consolidate import Archive, Interval
from monitor.model import Kind, Measurement
from monitor.text import clean

log = logging.getLogger(__name__)

# MRTG's interface OIDs (by name, as Target[] expressions use them) -> our metric.
OID_METRICS = {
    "ifInOctets": "in_octets", "ifHCInOctets": "in_octets",
    "ifOutOctets": "out_octets", "ifHCOutOctets": "out_octets",
    "ifInUcastPkts": "in_ucast_packets", "ifHCInUcastPkts": "in_ucast_packets",
    "ifOutUcastPkts": "out_ucast_packets", "ifHCOutUcastPkts": "out_ucast_packets",
    "ifInErrors": "in_errors", "ifOutErrors": "out_errors",
    "ifInDiscards": "in_discards", "ifOutDiscards": "out_discards",
    "1.3.6.1.2.1.2.2.1.10": "in_octets", "1.3.6.1.2.1.2.2.1.16": "out_octets",
    "1.3.6.1.2.1.31.1.1.1.6": "in_octets", "1.3.6.1.2.1.31.1.1.1.10": "out_octets",
    "1.3.6.1.2.1.2.2.1.14": "in_errors", "1.3.6.1.2.1.2.2.1.20": "out_errors",
    "1.3.6.1.2.1.2.2.1.13": "in_discards", "1.3.6.1.2.1.2.2.1.19": "out_discards",
}
_LINE = re.compile(r"^(?P<key>[A-Za-z][\w-]*)(?:\[(?P<target>[^\]]+)\])?\s*:\s?(?P<value>.*)$")
# In a reference (#name, \\descr) and a community, MRTG takes "\\ ", "\\:", "\\&" and "\\@" as
# the character itself: cfgmaker writes `#Port\\ 1` for an ifName "Port 1".
_ESCAPE = re.compile(r"\\([\s:&@])")
# After the community: host[:port[:timeout[:retries[:backoff[:version]]]]][|conversion]
_HOST = re.compile(r"^(?P<host>\[[^\]]+\]|[^:|\s]+)(?P<options>(?::[^:|\s]*)*)(?:\|\w+)?$")
_INTERFACE_COMMENT = re.compile(
    r"^### Interface (?P<index>\d+) >> Descr: '(?P<descr>.*?)' \| Name: '(?P<name>.*?)'")
_SYSTEM_COMMENT = re.compile(r"^# System: (?P<name>.+)$")
_INCLUDE = re.compile(r"^Include\s*:\s*(.+?)\s*$")
# A row of the table cfgmaker writes into PageTop[]: <td>ifName:</td> <td>Gi0/1</td>
_PAGETOP_ROW = re.compile(r"<td>\s*(?P<label>[^<]*?)\s*:?\s*</td>\s*<td>(?P<value>.*?)</td>",
                          re.S | re.I)


@dataclass
class MrtgTarget:
    """One Target[] of the config, with what cfgmaker's comments say about it."""

    name: str
    expression: str
    line: int
    file: Path
    options: set[str] = field(default_factory=set)
    keys: dict[str, str] = field(default_factory=dict)  # Title, MaxBytes, SnmpOptions, ...
    if_name: str = ""  # from cfgmaker's "### Interface N >> Descr: '..' | Name: '..'"
    if_descr: str = ""
    if_index: int | None = None
    system: str = ""  # from cfgmaker's "# System: NAME"
    description: str = ""  # the Description row of cfgmaker's PageTop (ifDescr ifAlias ...)

    @property
    def where(self) -> str:
        return f"{self.file}:{self.line}: Target[{self.name}]"


@dataclass
class MrtgConfig:
    targets: list[MrtgTarget]
    workdir: Path | None
    logdir: Path | None
    logformat: str
    commented_out: int


def read_config(path: Path) -> MrtgConfig:
    """Parse an mrtg.cfg (and its Include: files) the way MRTG reads it."""
    glob: dict[str, str] = {}
    targets: dict[str, MrtgTarget] = {}
    defaults: dict[str, str] = {}
    counts = {"commented": 0}

    pending: tuple[str, str | None, Path, int, list[str]] | None = None
    comment: dict[str, str] = {}
    system = {"name": "", "host": ""}  # cfgmaker's "# System:" and the host it heads

    def finish() -> None:
        if pending is None:
            return
        key, target, file, number, parts = pending
        value = "\n".join(parts).strip()
        target = None if target is None else target.lower()  # as MRTG does (file names too)
        lower = key.lower()
        if target is None:
            glob[lower] = value
        elif target in ("_", "^", "$"):
            if target == "_":
                defaults[lower] = value
        else:
            entry = targets.get(target)
            if lower == "target":
                # Defaults (Options[_]) apply to the targets that follow them, as in MRTG.
                host = re.search(r"@(\[[^\]]+\]|[^:|\s]+)", value)
                host_text = host[1] if host else ""
                system["host"] = system["host"] or host_text
                # Keys above the Target[] line (MRTG takes them in any order) are kept.
                entry = targets[target] = MrtgTarget(
                    target, value, number, file, keys={**defaults, **(entry.keys if entry else {})},
                    system=system["name"] if host_text == system["host"] else "")
                if comment:
                    entry.if_name, entry.if_descr = comment["name"], comment["descr"]
                    entry.if_index = int(comment["index"])
                comment.clear()
            elif entry is None:
                entry = targets[target] = MrtgTarget(target, "", number, file)
            entry.keys[lower] = value

    for file, number, text in included_lines(path, _INCLUDE):
        if text[:1] in (" ", "\t") and pending is not None and text.strip():
            pending[4].append(text.strip())
            continue
        if text.startswith("#"):
            interface = _INTERFACE_COMMENT.match(text)
            found = _SYSTEM_COMMENT.match(text)
            if interface or found:  # cfgmaker's heading of what follows: the line above is done
                finish()
                pending = None
            if interface:
                comment = interface.groupdict()
            if found:
                system = {"name": found["name"].strip(), "host": ""}
            if re.match(r"^#\s*Target\[", text):
                counts["commented"] += 1
            continue
        finish()
        pending = None
        match = _LINE.match(text)
        if match:
            pending = (match["key"], match["target"], file, number, [match["value"]])
    finish()
    out = []
    for target in targets.values():
        if not target.expression:
            continue
        target.options = {o.strip().lower() for o in re.split(r"[,\s]+", target.keys.get("options", ""))
                          if o.strip()}
        if target.keys.get("nohc", "").strip().lower() == "yes":  # cfgmaker: no 64-bit counters
            target.options.add("nohc")
        rows = pagetop_rows(target.keys.get("pagetop", ""))
        target.if_name = target.if_name or rows.get("ifname", "")
        target.description = rows.get("description", "")
        out.append(target)
    workdir = glob.get("workdir")
    logdir = glob.get("logdir")
    # (MRTG's Interval does not matter: the history goes into files of our collector's step.)
    return MrtgConfig(out, Path(workdir) if workdir else None, Path(logdir) if logdir else None,
                      glob.get("logformat", "rateup").strip().lower(), counts["commented"])


def pagetop_rows(text: str) -> dict[str, str]:
    """The label: value rows of a PageTop[] (cfgmaker's table), labels in lower case, values
    as plain text (tags dropped, HTML entities undone)."""
    rows = {}
    for row in _PAGETOP_ROW.finditer(text):
        value = html.unescape(re.sub(r"<[^>]*>", "", row["value"]))
        rows[row["label"].strip().lower()] = " ".join(value.split())
    return rows


@dataclass(frozen=True)
class Interface:
    """What a Target[] polls, when it is an interface's traffic (or errors, discards)."""

    device: str
    host: str
    port: int
    community: str
    version: str
    identity: str  # our interface identity (ifName, or what the device option says)
    metrics: tuple[str, str]  # (in, out) after a reversing "-"


def parse_target(target: MrtgTarget) -> Interface:
    """The interface a target polls; ValueError says why it is not one we can map."""
    expression = target.expression.strip()
    if "`" in expression:
        raise ValueError("an external script (`...`): its numbers mean what the script says")
    # The same text with each escaped character hidden (same length): where the separators are.
    masked = _ESCAPE.sub("\0\0", expression)
    if re.search(r"\s", masked):
        raise ValueError("an expression over several targets (a sum or difference): no single "
                         "interface holds it")
    colon = masked.find(":")
    at = masked.find("@", colon + 1)
    match = _HOST.match(expression[at + 1:]) if 0 < colon < at else None
    if not match:
        raise ValueError(f"not a Target form MRTG documents: {clean(expression, 80)!r}")
    community = _ESCAPE.sub(r"\1", expression[colon + 1:at])
    host = match["host"].strip("[]")
    options = match["options"].split(":")[1:]
    port = int(options[0]) if options and options[0].isdigit() else 161
    version = {"2": "2c", "3": "3"}.get(options[4] if len(options) > 4 else "", "1")
    reverse = masked.startswith("-")
    ref = expression[1 if reverse else 0:colon]
    metrics: tuple[str, str] = ("in_octets", "out_octets")
    interface_ref = ref
    split = masked.find("&", 0, colon)
    if split >= 0:
        first, second = expression[1 if reverse else 0:split], expression[split + 1:colon]
        found = []
        for oid_ref in (first, second):
            # The OID, then ".INDEX" or a reference (#name, \descr, /ip, !mac) that may hold dots.
            oid = re.match(r"^([A-Za-z][A-Za-z0-9]*|[0-9.]+?)(?=[#\\/!%]|\.\d+$)", oid_ref)
            metric = OID_METRICS.get(oid[1]) if oid else None
            if metric is None:
                raise ValueError(f"explicit OIDs {clean(ref, 60)!r}: not interface counters this "
                                 "agent stores (ifIn/OutOctets, ifIn/OutErrors, ifIn/OutDiscards)")
            found.append((metric, oid_ref[len(oid[1]):]))  # type: ignore[index]
        if found[0][1] != found[1][1]:
            raise ValueError(f"explicit OIDs {clean(ref, 60)!r} of two different interfaces")
        metrics = (found[0][0], found[1][0])
        interface_ref = found[0][1].lstrip(".") if found[0][1][:1] == "." else found[0][1]
    if reverse:
        metrics = (metrics[1], metrics[0])
    identity = _identity(target, interface_ref)
    device = target.system or host
    return Interface(device, host, port, community, version, identity, metrics)


def _identity(target: MrtgTarget, ref: str) -> str:
    """Our identity (ifName) of an MRTG interface reference."""
    if ref.startswith("#"):  # as MRTG reads it: escapes undone, trailing blanks dropped
        return re.sub(r"[\0- ]+$", "", _ESCAPE.sub(r"\1", ref[1:]))
    if target.if_name:  # cfgmaker's comment or PageTop: the ifName of a \descr, /ip, !mac or index
        return target.if_name
    if ref.isdigit():
        raise ValueError(f"interface index {ref} without cfgmaker's \"### Interface {ref} >> "
                         "... Name: '...'\" comment: its ifName is unknown (run cfgmaker "
                         "--ifref=name, or `monitor discover`, to name it)")
    kind = {"\\": "description (ifDescr)", "/": "IP address", "!": "Ethernet address",
            "%": "interface type"}.get(ref[:1], "reference")
    key = _ESCAPE.sub(r"\1", ref[1:])
    raise ValueError(f"interface by {kind} {clean(key, 40)!r}: its "
                     "ifName is unknown without cfgmaker's comment above the target (or the "
                     "ifName row of its PageTop)")


# -- history ------------------------------------------------------------------------------------


# rateup keeps 2 + 600 + 600 + 600 + 732 lines (and a few of rounding): a file far longer is
# not rateup's (or is damaged), and is read only this far.
MAX_LOG_LINES = 10_000


def read_log(path: Path, warnings: list[str] | None = None) -> tuple[list[Archive], list[Archive]]:
    """A rateup .log -> (in, out), each [AVERAGE, MAX]. Line i (newest first) holds the rates
    from the time of line i+1 to its own; negative values are rateup's unknown. Lines that
    are not five numbers are skipped and counted in `warnings`; ValueError for a file that is
    not a rateup log at all."""
    rows: list[tuple[int, float, float, float, float]] = []
    unreadable = 0
    with path.open(encoding="ascii", errors="replace") as handle:
        first = handle.readline(1000).split()  # the counters of the last run
        if len(first) != 3 or not first[0].isdigit():
            raise ValueError(f"{path}: not a rateup log (its first line is not \"TIME IN OUT\")")
        for _ in range(MAX_LOG_LINES):
            text = handle.readline(1000)  # rateup's lines are 100 characters at most
            if not text:
                break
            fields = text.split()
            try:
                values = [float(f) for f in fields[1:]]
                if len(fields) != 5 or not all(map(math.isfinite, values)):
                    raise ValueError
                rows.append((int(fields[0]), *values))  # type: ignore[arg-type]
            except ValueError:
                unreadable += 1
        if handle.read(1) and warnings is not None:
            warnings.append(f"{path}: more than {MAX_LOG_LINES:,} lines (rateup writes about "
                            "2,540): the rest not read")
    if unreadable and warnings is not None:
        warnings.append(f"{path}: {unreadable} line(s) that are not rateup's \"TIME IN OUT "
                        "MAXIN MAXOUT\" skipped")
    rows.sort(reverse=True)
    # A new log is rateup's 2533 lines of zeros; what is still zero at its old end is that
    # filler, not traffic (an unused port reads as unknown there rather than as idle).
    while rows and not any(rows[-1][1:]):
        rows.pop()
    columns: list[list[Interval]] = [[], [], [], []]
    for i, (end, *values) in enumerate(rows):
        if i + 1 < len(rows):
            start = rows[i + 1][0]
        elif i > 0:
            start = end - (rows[i - 1][0] - end)
        else:
            start = end - 300
        if start >= end:
            continue
        for column, value in zip(columns, values, strict=True):
            column.append((start, end, None if value < 0 else value))
    average_in, average_out, max_in, max_out = columns
    return ([Archive("AVERAGE", average_in), Archive("MAX", max_in)],
            [Archive("AVERAGE", average_out), Archive("MAX", max_out)])


def read_rrd(path: Path, warnings: list[str] | None = None) -> tuple[list[Archive], list[Archive]]:
    """MRTG's own RRD file (LogFormat: rrdtool): ds0 is in, ds1 is out."""
    archives = read_rrd_archives(path)
    return archives.get("ds0", []), archives.get("ds1", [])


DeviceKey = tuple[str, str, int, str, str]  # (device, host, port, version, community)


def plan(config_path: Path, rrd_dir: Path | None = None) -> Plan:
    """The stanzas and copies for every interface target of an MRTG config."""
    config = read_config(config_path)
    result = Plan()
    by_device: dict[DeviceKey, list[tuple[MrtgTarget, Interface]]] = {}
    for target in config.targets:
        try:
            interface = parse_target(target)
        except ValueError as exc:
            result.unmapped.append(f"{target.where}: {exc}")
            continue
        if "gauge" in target.options or "absolute" in target.options:
            result.unmapped.append(f"{target.where}: Options[] gauge/absolute: not counters "
                                   "of an interface")
            continue
        key = (interface.device, interface.host, interface.port, interface.version,
               interface.community)
        by_device.setdefault(key, []).append((target, interface))
    if config.commented_out:
        result.notes.append(f"{config.commented_out} target(s) commented out in the config "
                            "(cfgmaker does that for interfaces that were down): not imported")
    directory = rrd_dir or config.logdir or config.workdir or config_path.parent
    names = _device_names(list(by_device))
    for key, items in by_device.items():
        name = names[key]
        _device, host, port, version, _community = key
        result.stanzas.append(_stanza(name, host, port, version, items, config_path))
        for target, interface in items:
            copy = _copy(name, target, interface, directory, config.logformat)
            if isinstance(copy, str):
                result.unmapped.append(copy)
            else:
                result.copies.append(copy)
    return result


def _device_names(keys: list[DeviceKey]) -> dict[DeviceKey, str]:
    """A distinct device name per (device, host, port, version, community): the device's own
    name where it is the only one so named, else with its host (factory-default switches all
    say sysName "switch"), its port, and at last a number."""
    out: dict[DeviceKey, str] = {}
    taken: set[str] = set()
    for key in keys:
        device, host, port = key[:3]
        alike = sum(1 for k in keys if k[0] == device)
        candidates = [device] if alike == 1 else []
        candidates += [f"{device}-{host}" if host != device else device,
                       f"{device}-{host}-{port}"]
        name = next((c for c in candidates if c not in taken), None)
        number = 2
        while name is None or name in taken:
            name, number = f"{device}-{host}-{port}-{number}", number + 1
        taken.add(name)
        out[key] = name
    return out


def _stanza(name: str, host: str, port: int, version: str,
            items: list[tuple[MrtgTarget, Interface]], source: Path) -> str:
    first = items[0][0]
    lines = [f"# from MRTG {source}: " + ", ".join(t.name for t, _ in items),
             "[[snmp.devices]]", f"name = {toml_string(name)}", f"host = {toml_string(host)}"]
    if port != 161:
        lines.append(f"port = {port}")
    lines.append(f'version = "{version}"')
    if version != "3":
        lines.append(f"community_file = {toml_string(f'/etc/monitor/{_file_part(name)}.community')}"
                     "  # put MRTG's community there (chmod 600)")
    include = sorted({i.identity for _, i in items})
    lines.append("include = [" + ", ".join(toml_string(i) for i in include) + "]")
    for target, interface in items:
        title = html.unescape(target.keys.get("title", ""))
        notes = [clean(title, 100)]
        if target.description and target.description not in title:
            notes.append(clean(target.description, 100))
        if "maxbytes" in target.keys:
            notes.append(f"MaxBytes {clean(target.keys['maxbytes'], 20)}")
        notes += [o for o in sorted(target.options) if o in ("bits", "nohc", "growright")]
        if any(notes):
            lines.append(f"# {clean(interface.identity, 60)}: " + "; ".join(n for n in notes if n))
    if version == "3":  # a sub-table: after the device's own keys
        options = first.keys.get("snmpoptions", "")
        lines.append("[snmp.devices.v3]  # from MRTG's SnmpOptions[]; put the keys in the files")
        user = re.search(r"username\s*=>\s*'([^']*)'", options)
        lines.append(f"user = {toml_string(user[1] if user else 'CHANGE-ME')}")
        context = re.search(r"contextname\s*=>\s*'([^']*)'", options)
        if context:
            lines.append(f"context = {toml_string(context[1])}")
        for kind in ("auth", "priv"):
            protocol = re.search(kind + r"protocol\s*=>\s*'([^']*)'", options)
            if protocol:
                lines.append(f"{kind}_protocol = {toml_string(protocol[1].lower())}")
                lines.append(f"{kind}_key_file = "
                             f"{toml_string(f'/etc/monitor/{_file_part(name)}.{kind}')}")
    return "\n".join(lines) + "\n"


def _file_part(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


def _copy(device: str, target: MrtgTarget, interface: Interface, directory: Path,
          logformat: str) -> SeriesCopy | str:
    base = target.keys.get("directory", "")
    folder = directory / base if base else directory
    stem = target.name  # lower case, as MRTG names the files
    rrd, log_file = folder / f"{stem}.rrd", folder / f"{stem}.log"
    if logformat == "rrdtool" or (rrd.exists() and not log_file.exists()):
        source, reader = rrd, read_rrd
    else:
        source, reader = log_file, read_log
    if not source.exists():
        return f"{target.where}: no history at {source}"
    metric_in, metric_out = interface.metrics
    unit = "B/s" if "octets" in metric_in else "/s"
    templates = [Measurement(device, interface.identity, metric, None, Kind.GAUGE, unit, 0, 0)
                 for metric in (metric_in, metric_out)]
    warnings: list[str] = []

    def read() -> dict[str, list[Archive]]:
        incoming, outgoing = reader(source, warnings)
        return {metric_in: incoming, metric_out: outgoing}

    return SeriesCopy(templates, [source], read, f"MRTG target {target.name}",
                      ceiling=_ceiling(target), warnings=warnings)


def _ceiling(target: MrtgTarget) -> float | None:
    """Above what a value cannot be this interface's (a damaged or hand-edited file): rateup
    never logs a rate above AbsMaxBytes (or MaxBytes); ten times that leaves room for a link
    that was faster before its MaxBytes was lowered."""
    limits = []
    for key in ("absmaxbytes", "maxbytes"):
        try:
            limits.append(float(target.keys.get(key, "").strip()))
        except ValueError:
            continue
    known = [limit for limit in limits if 0 < limit < math.inf]
    return 10 * max(known) if known else None
