"""`monitor import mrtg|munin|smokeping`: print the config stanzas, copy the history.

Stanzas go to standard output (to paste into config.toml); progress, the summary and what
could not be mapped go to standard error. History goes into the store of the config (-c), into
the file the collector of each series writes, created as it would create it.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TextIO
from xml.etree.ElementTree import ParseError

import rrdtool

from importers.plan import Plan, SeriesCopy, screen
from monitor.config import Config, ReadConfig
from monitor.text import clean
from monitor.units import format_bytes


def register(sub: argparse._SubParsersAction, read_config: ReadConfig) -> None:
    p = sub.add_parser(
        "import", help="move from MRTG, Munin or SmokePing: config stanzas and years of history",
        description="Read another tool's config, print the matching config.toml stanzas "
        "([[snmp.devices]], [[services]]) on standard output, and copy each series' history "
        "into this agent's RRD files (the store of -c's config), every archive at once, so the "
        "week, month and year graphs and the 95th percentile carry on. Rows that already have "
        "data keep it unless --force. Progress, a summary and what could not be mapped (and "
        "why) on standard error.")
    kinds = p.add_subparsers(dest="tool", metavar="TOOL", required=True)
    mrtg = kinds.add_parser("mrtg", help="an mrtg.cfg (cfgmaker's) and its .log or .rrd files",
                            description="Interface targets of an MRTG config -> [[snmp.devices]] "
                            "with include lists; their rateup .log or LogFormat: rrdtool history "
                            "-> in_octets/out_octets of each interface.")
    mrtg.add_argument("path", type=Path, metavar="MRTG.CFG")
    mrtg.add_argument("--rrd-dir", type=Path, metavar="DIR",
                      help="where MRTG's .log/.rrd files are (default: its LogDir or WorkDir)")
    munin = kinds.add_parser("munin", help="Munin's RRD directory (/var/lib/munin) or munin.conf",
                             description="if_, if_err_, df, df_inode, load, cpu, memory and "
                             "ping_ series of each Munin node -> the host, disks and ping series "
                             "of this agent (target = the node's name).")
    munin.add_argument("path", type=Path, metavar="DBDIR|MUNIN.CONF")
    smoke = kinds.add_parser("smokeping", help="a SmokePing config (or its Targets) and its RRD "
                             "files", description="Targets -> [[services]] ping (dns, http where "
                             "the probe says so) checks; their median RTT and loss history. "
                             "CONFIG is /etc/smokeping/config (its @include files are read) or "
                             "a Targets file alone.")
    smoke.add_argument("path", type=Path, metavar="CONFIG|TARGETS")
    smoke.add_argument("--rrd-dir", type=Path, metavar="DIR",
                       help="SmokePing's datadir (default: the config's datadir, else next to "
                       "the file, ../data, or /var/lib/smokeping)")
    for tool in (mrtg, munin, smoke):
        tool.add_argument("--dry-run", action="store_true",
                          help="show what would be done; write nothing")
        tool.add_argument("--force", action="store_true",
                          help="imported values replace data already in our files")
        tool.set_defaults(handler=lambda args: cmd_import(read_config(args), args))


def make_plan(args: argparse.Namespace) -> Plan:
    if args.tool == "mrtg":
        from importers import mrtg
        return mrtg.plan(args.path, args.rrd_dir)
    if args.tool == "munin":
        from importers import munin
        return munin.plan(args.path)
    from importers import smokeping
    return smokeping.plan(args.path, args.rrd_dir)


def step_for(copy: SeriesCopy, config: Config) -> float:
    """The step the collector of this series creates its files with."""
    if copy.collector == "snmp":
        devices = {d.name: d for d in config.snmp.devices}
        device = devices.get(copy.target)
        return (device.interval if device and device.interval else None) \
            or config.snmp.interval or config.agent.interval
    if copy.collector == "services":
        checks = {s.name: s for s in config.services}
        check = checks.get(copy.instance)
        return (check.interval if check and check.interval else None) or config.agent.interval
    if copy.collector == "host":
        return config.host.interval or config.agent.interval
    if copy.collector == "disks":
        return config.disks.interval or config.agent.interval
    return config.agent.interval


class Progress:
    """files done / total and bytes on a terminal (one rewritten line); nothing otherwise."""

    def __init__(self, total_files: int, total_bytes: int, stream: TextIO) -> None:
        self.files, self.bytes = 0, 0
        self.total_files, self.total_bytes = total_files, total_bytes
        self.stream = stream
        self.live = stream.isatty()

    def show(self, what: str) -> None:
        if self.live:
            self.stream.write(f"\r\x1b[K[{self.files}/{self.total_files} files, "
                              f"{format_bytes(self.bytes)} of {format_bytes(self.total_bytes)}] "
                              f"{clean(what, 60)}")
            self.stream.flush()

    def done(self, copy: SeriesCopy, size: int) -> None:
        self.files += 1
        self.bytes += size
        self.show(copy.what)

    def end(self) -> None:
        if self.live:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def cmd_import(config: Config, args: argparse.Namespace, out: TextIO | None = None,
               err: TextIO | None = None) -> int:
    from monitor.agent import open_store

    out = out or sys.stdout
    err = err or sys.stderr
    store = open_store(config)
    if store.remote:
        store.close()
        raise ValueError(
            "import rewrites RRD files in place (rrdtool dump and restore), which cannot be done "
            "through an rrdcached over TCP: run it on the store host, with a config of its own "
            "without [cluster] whose [storage] rrd_dir is rrdcached's base directory (-b) and "
            "rrdcached its local socket; the nodes take up the files it creates at their next "
            "write")
    try:
        plan = make_plan(args)
    except OSError as exc:
        store.close()
        raise ValueError(f"import {args.tool}: cannot read {exc.filename or args.path}: "
                         f"{exc.strerror or exc}") from None
    except BaseException:  # a config it cannot take (an Include loop): said by the caller
        store.close()
        raise
    for stanza in plan.stanzas:
        out.write(stanza + "\n")
    out.flush()
    sizes = [c.size for c in plan.copies]
    progress = Progress(len(plan.copies), sum(sizes), err)
    started = time.monotonic()
    totals = {"created": 0, "filled": 0, "kept": 0, "replaced": 0, "files": 0}
    failed: list[str] = []
    empty: list[str] = []
    damaged: list[str] = []  # rows or lines left out of what was imported
    lines: list[str] = []
    try:
        for copy, size in zip(plan.copies, sizes, strict=True):
            progress.show(copy.what)
            try:
                history, left_out = screen(copy.read(), copy.ceiling)
                damaged += [f"{copy.what}: {w}" for w in (*copy.warnings, *left_out)]
                history = {m: a for m, a in history.items()
                           if any(v is not None for archive in a for _, _, v in archive.rows)}
                if not history:
                    empty.append(f"{copy.what}: no data yet in "
                                 f"{', '.join(map(str, copy.sources))}")
                    continue
                report = store.merge_history(copy.templates, history, step_for(copy, config),
                                             force=args.force, dry_run=args.dry_run)
            # rrdtool's own error: a damaged file (cut short, written on another architecture).
            except (OSError, ValueError, ParseError, rrdtool.OperationalError) as exc:
                failed.append(f"{copy.what}: {exc}")
                continue
            finally:
                progress.done(copy, size)
            totals["files"] += 1
            totals["created"] += report.created
            for name in ("filled", "kept", "replaced"):
                totals[name] += getattr(report, name)
            verb = "would " if args.dry_run else ""
            action = f"{verb}create" if report.created else f"{verb}merge into"
            lines.append(f"{copy.what} -> {copy.target} {copy.instance or '(device)'}: "
                         f"{action} {report.path.name}, {report.filled} rows filled"
                         + (f", {report.replaced} replaced" if report.replaced else "")
                         + (f", {report.kept} kept (ours; --force replaces)" if report.kept else ""))
    finally:
        progress.end()
        store.close()
    elapsed = time.monotonic() - started
    mode = "dry run, nothing written: " if args.dry_run else ""
    err.write(f"import {args.tool}: {mode}{totals['files']} of {len(plan.copies)} series "
              f"({format_bytes(sum(sizes))} read in {elapsed:.1f} s), {totals['created']} new "
              f"file(s), {totals['filled']} rows filled, {totals['kept']} kept, "
              f"{totals['replaced']} replaced; {len(plan.stanzas)} config stanza(s) on stdout\n")
    # Names in these lines come from the other tool's files: one clean line each.
    for line in lines:
        err.write(f"  {clean(line, 400)}\n")
    for note in plan.notes:
        err.write(f"note: {clean(note, 400)}\n")
    if damaged:
        err.write(f"left out of what was imported ({len(damaged)}):\n")
        for line in damaged:
            err.write(f"  {clean(line, 400)}\n")
    problems = plan.unmapped + empty + failed
    if problems:
        err.write(f"not imported ({len(problems)}):\n")
        for problem in problems:
            err.write(f"  {clean(problem, 400)}\n")
    return 1 if failed else 0
