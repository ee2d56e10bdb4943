"""Munin: the RRD files of munin-update (DBDIR/DOMAIN/HOST-PLUGIN-FIELD-T.rrd, one data source
named "42" each, T = g/d/c/a for GAUGE/DERIVE/COUNTER/ABSOLUTE) -> the series our host, disks
and ping collectors write. Target = the Munin node's name; labels (df's mount points) come from
Munin's `datafile` next to the domains.

Munin stores what we store, per second and in the same units (bytes/s of if_, jiffies/s of cpu,
which is our "percent of one CPU"), so values are copied unchanged; memory_used_bytes is Munin's
apps + page_tables + swap_cache (ours is total - MemAvailable: close, not equal).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path

from importers.plan import Plan, SeriesCopy, read_rrd_archives, toml_string
from monitor.consolidate import Archive, combine
from monitor.model import Kind, Measurement
from monitor.text import clean

CPU_FIELDS = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
# plugin (or its prefix) -> {munin field: (our metric, kind, unit)}
IF_FIELDS = {"down": ("in_octets", Kind.DERIVE, "B"), "up": ("out_octets", Kind.DERIVE, "B")}
IF_ERR_FIELDS = {"rcvd": ("in_errors", Kind.DERIVE, ""), "trans": ("out_errors", Kind.DERIVE, ""),
                 "rxdrop": ("in_discards", Kind.DERIVE, ""), "txdrop": ("out_discards", Kind.DERIVE, "")}
MEMORY_USED = ("apps", "page_tables", "swap_cache")
_FILE = re.compile(r"^(?P<host>.+)-(?P<plugin>[^-]+)-(?P<field>[A-Za-z0-9_]+)-(?P<type>[gdca])\.rrd$")


def dbdir_of(path: Path) -> Path:
    """The directory of Munin's RRD files: the path itself, or munin.conf's dbdir."""
    if path.is_dir():
        return path
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        match = re.match(r"^\s*dbdir\s+(\S+)", line)
        if match:
            return Path(match[1])
    return Path("/var/lib/munin")


def read_labels(dbdir: Path) -> dict[tuple[str, str, str], str]:
    """(host, plugin, field) -> label, from Munin's datafile ("dom;host:plugin.field.label x")."""
    labels: dict[tuple[str, str, str], str] = {}
    try:
        text = (dbdir / "datafile").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return labels
    for line in text.splitlines():
        match = re.match(r"^[^;]+;(?P<host>[^:]+):(?P<plugin>[^.]+)\.(?P<field>[^.]+)\.label (?P<v>.*)$",
                         line)
        if match:
            labels[(match["host"], match["plugin"], match["field"])] = match["v"].strip()
    return labels


def plan(path: Path) -> Plan:
    dbdir = dbdir_of(path)
    labels = read_labels(dbdir)
    result = Plan()
    # (host, plugin) -> {field: file}
    found: dict[tuple[str, str], dict[str, Path]] = {}
    for file in sorted(dbdir.glob("*/*.rrd")):
        match = _FILE.match(file.name)
        if match is None:
            result.unmapped.append(f"{file}: not a Munin RRD file name (HOST-PLUGIN-FIELD-T.rrd)")
            continue
        found.setdefault((match["host"], match["plugin"]), {})[match["field"]] = file
    if not found:
        result.unmapped.append(f"{dbdir}: no Munin RRD files (DOMAIN/HOST-PLUGIN-FIELD-T.rrd)")
    pinged: dict[str, list[str]] = {}
    for (host, plugin), fields in sorted(found.items()):
        copies = _copies(host, plugin, fields, labels, result)
        result.copies += copies
        if plugin.startswith("ping_") and copies:
            pinged.setdefault(host, []).append(copies[0].target)
    hosts = sorted({host for host, _ in found})
    if hosts:
        result.notes.append("Munin nodes imported as targets " + ", ".join(hosts) + " (the host "
                            "collector names this machine after [agent] hostname)")
    for host, targets in sorted(pinged.items()):
        for target in targets:
            result.stanzas.append(f"# from Munin {host}: ping_{target}\n[[services]]\n"
                                  f"name = {toml_string(f'ping-{target}')}\nkind = \"ping\"\n"
                                  f"host = {toml_string(target)}\n")
    return result


def _copies(host: str, plugin: str, fields: dict[str, Path], labels: dict[tuple[str, str, str], str],
            result: Plan) -> list[SeriesCopy]:
    def one(instance: str, mapping: dict[str, tuple[str, Kind, str]], collector: str,
            target: str = host, maximum: float | None = None) -> list[SeriesCopy]:
        used = {f: m for f, m in mapping.items() if f in fields}
        for field in sorted(set(fields) - set(mapping)):
            result.unmapped.append(f"Munin {host} {plugin}.{field}: no matching series here")
        if not used:
            return []
        templates = [Measurement(target, instance, metric, None, kind, unit, 0, 0, maximum)
                     for metric, kind, unit in used.values()]
        files = [fields[f] for f in used]
        by_metric = {metric: fields[f] for f, (metric, _, _) in used.items()}
        return [SeriesCopy(templates, files, _reader(by_metric), f"Munin {host} {plugin}",
                           collector)]

    if plugin == "cpu":
        return one("", {f: (f"cpu_{f}_percent", Kind.DERIVE, "%") for f in CPU_FIELDS}, "host")
    if plugin == "load":
        return one("", {"load": ("load5", Kind.GAUGE, "")}, "host")
    if plugin.startswith("if_err_"):
        return one(f"nic:{plugin[7:]}", IF_ERR_FIELDS, "host")
    if plugin.startswith("if_"):
        return one(f"nic:{plugin[3:]}", IF_FIELDS, "host")
    if plugin.startswith("ping_"):
        # Munin cleans the plugin name (ping_192_0_2_1); the "ping" field's label is the host.
        pinged = labels.get((host, plugin, "ping"), plugin[5:])
        if not re.fullmatch(r"[A-Za-z0-9_.:-]+", pinged):
            result.unmapped.append(f"Munin {host} {plugin}: pinged host {clean(pinged, 60)!r} "
                                   "is not a host name")
            return []
        return one(f"ping-{pinged}", {"ping": ("rtt_avg_seconds", Kind.GAUGE, "s"),
                                      "packetloss": ("loss_percent", Kind.GAUGE, "%")},
                   "services", target=pinged)
    if plugin in ("df", "df_inode"):
        metric = "used_percent" if plugin == "df" else "inodes_used_percent"
        copies = []
        for field, file in sorted(fields.items()):
            mount = labels.get((host, plugin, field))
            if not mount or not mount.startswith("/"):
                result.unmapped.append(f"Munin {host} {plugin}.{field}: its mount point is not "
                                       "in Munin's datafile (label)")
                continue
            template = Measurement(host, f"fs:{mount}", metric, None, Kind.GAUGE, "%", 0, 0, 100)
            copies.append(SeriesCopy([template], [file], _reader({metric: file}),
                                     f"Munin {host} {plugin} {clean(mount, 40)}", "disks"))
        return copies
    if plugin == "memory":
        copies = one("", {"swap": ("swap_used_bytes", Kind.GAUGE, "B")}, "host") if "swap" in fields else []
        result.unmapped[:] = [u for u in result.unmapped if not u.startswith(f"Munin {host} memory.")]
        if all(f in fields for f in MEMORY_USED):
            template = Measurement(host, "", "memory_used_bytes", None, Kind.GAUGE, "B", 0, 0)
            files = [fields[f] for f in MEMORY_USED]

            def used() -> dict[str, list[Archive]]:
                return {"memory_used_bytes": combine([read_rrd_archives(f)["42"] for f in files])}

            copies.append(SeriesCopy([template], files, used, f"Munin {host} memory (apps + "
                                     "page_tables + swap_cache -> memory_used_bytes)", "host"))
        rest = sorted(set(fields) - {"swap", *MEMORY_USED})
        if rest:
            result.unmapped.append(f"Munin {host} memory: {', '.join(rest)}: no matching series "
                                   "here (memory_used_bytes is apps + page_tables + swap_cache)")
        return copies
    result.unmapped.append(f"Munin {host} {plugin}: a plugin this agent has no series for "
                           f"({len(fields)} field(s))")
    return []


def _reader(by_metric: dict[str, Path]) -> Callable[[], dict[str, list[Archive]]]:
    def read() -> dict[str, list[Archive]]:
        return {metric: read_rrd_archives(path).get("42", []) for metric, path in by_metric.items()}
    return read
