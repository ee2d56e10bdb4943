"""The `monitor` command: the one place where config, collectors, store and jobs are wired."""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.agent import Agent
from monitor.config import Config, ConfigError, default_config_path, load_config
from monitor.eventloop import run as run_loop
from monitor.journal import SYSLOG_SOCKET, JournalFormatter, stderr_is_journal, syslog_handler
from monitor.model import State
from monitor.registry import COLLECTORS
from monitor.sdnotify import Notifier
from monitor.units import format_duration, parse_duration

log = logging.getLogger("monitor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Network and service monitoring agent: collects SNMP traffic, UPS, BGP and "
        "device health, service checks, disk health and reports into RRD files, draws graphs "
        "and emails alerts and digests.",
        epilog="Config: --config, else $MONITOR_CONFIG, else ./config.toml, else "
        "/etc/monitor/config.toml. The commented config.toml documents every key.",
    )
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    parser.add_argument("--syslog", action="store_true",
                        help="log to syslog (facility daemon) instead of standard error")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run the agent in the foreground (the daemon)",
                       description="Run every enabled collector on its interval until stopped "
                       "(SIGTERM/SIGINT finish running jobs first; SIGHUP reloads the config).")
    p.add_argument("--for", dest="duration", metavar="DURATION",
                   help='stop cleanly after this long, e.g. "90s" or "10m"')
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser("collect", help="run collectors once, write RRD files, exit",
                       description="Run every enabled collector (or one) once and store the "
                       "results. Exits 1 if any collector failed.")
    p.add_argument("--once", action="store_true",
                   help="accepted and ignored: collect always runs once (`run` is the daemon)")
    p.add_argument("--only", metavar="NAME", choices=sorted(COLLECTORS),
                   help="only this collector: " + ", ".join(sorted(COLLECTORS)))
    p.set_defaults(handler=cmd_collect)

    p = sub.add_parser("check-config", help="validate the config and summarise what is monitored",
                       description="Load and validate the config; print what is monitored, or "
                       "the first error with file, line and key (exit code 2).")
    p.add_argument("--json", action="store_true",
                   help='print the summary (or {"ok": false, "error": ...}) as JSON')
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("init-config", help="write the commented reference config, without the demo",
                       description="Write this version's commented config.toml (the reference of "
                       "every key) with the demo's devices, services and backups commented out and "
                       "data_dir = /var/lib/monitor, to PATH (mode 0640; an existing file is kept "
                       "unless --force) or to standard output.")
    p.add_argument("path", nargs="?", type=Path, metavar="PATH",
                   help="where to write it, e.g. /etc/monitor/config.toml (default: stdout)")
    p.add_argument("--force", action="store_true", help="replace an existing file")
    p.set_defaults(handler=cmd_init_config)

    p = sub.add_parser("discover", help="walk an SNMP device and print a [[snmp.devices]] stanza",
                       description="Walk the system group and IF-MIB of HOST and print a "
                       "ready-to-paste [[snmp.devices]] stanza for config.toml, with every "
                       "interface (name, alias, speed, status) as a comment, and what else the "
                       "agent will read there (UPS-MIB/APC, BGP peers, sensors, CPU, memory, "
                       "storage). Progress on stderr.")
    p.add_argument("host", metavar="HOST", help="address or name of the device")
    p.add_argument("--name", help="device name in the stanza (default: its sysName)")
    p.add_argument("--port", type=int, default=161, help="UDP port (default 161)")
    p.add_argument("--snmp-version", "--version", dest="snmp_version", choices=["1", "2c", "3"],
                   default="2c", help="SNMP version (default 2c; --version is an alias here)")
    p.add_argument("--community", default="public", help="v1/v2c community (default public)")
    p.add_argument("--timeout", type=float, default=2.0, help="seconds per try (default 2)")
    p.add_argument("--retries", type=int, default=2, help="retries after the first try (default 2)")
    p.add_argument("--user", help="v3 user name")
    p.add_argument("--auth-protocol", default="none",
                   choices=["none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"])
    p.add_argument("--auth-key", help="v3 auth pass phrase (or $SNMP_AUTH_KEY)")
    p.add_argument("--priv-protocol", default="none",
                   choices=["none", "des", "aes", "aes128", "aes192", "aes256", "aes192c", "aes256c"])
    p.add_argument("--priv-key", help="v3 privacy pass phrase (or $SNMP_PRIV_KEY)")
    p.add_argument("--context", default="", help="v3 context name")
    p.set_defaults(handler=cmd_discover)

    # Alerts: `alerts`, `silence add|list|remove`, `smtp-sink` (handlers in alerts/commands.py).
    from alerts.commands import register as register_alert_commands
    register_alert_commands(sub, read_config)
    # Graphs and the web site: `graph`, `serve` (handlers in graphs/commands.py).
    from graphs.commands import register as register_graph_commands
    register_graph_commands(sub, read_config)
    # Moving from other tools: `import mrtg|munin|smokeping` (importers/commands.py).
    from importers.commands import register as register_import_commands
    register_import_commands(sub, read_config)
    # Several machines: `cluster status` (cluster/commands.py).
    from cluster.commands import register as register_cluster_commands
    register_cluster_commands(sub, read_config)

    # Reports: `digest NAME [--dry-run]`, `backup-run NAME -- CMD ARGS...`.
    p = sub.add_parser("digest", help="build a [[digests]] mail now and send it (or print it)",
                       description="Build digest NAME for its last complete period (from the "
                       "previous scheduled time to the latest one, as the agent sends it) and "
                       "hand it to the outbox (sent at once when the relay answers, retried "
                       "otherwise). --dry-run prints the MIME message instead of sending it.")
    p.add_argument("name", metavar="NAME", help="the name of a [[digests]] table")
    p.add_argument("--dry-run", action="store_true", help="print the message; send nothing")
    p.add_argument("--last", metavar="DURATION",
                   help='cover the last DURATION up to now instead of the last complete period, '
                   'e.g. "3h" (what has happened since this morning\'s digest)')
    p.set_defaults(handler=cmd_digest)

    p = sub.add_parser("backup-run", help="run a backup command and record its result (for cron)",
                       description="Run CMD ARGS... (no shell), pass its output and exit status "
                       "through, and record start, duration, exit status and the output's last "
                       "lines for the [[backups]] job NAME (kind = \"wrapper\"). Example crontab "
                       "line: 30 2 * * * monitor backup-run nightly -- /usr/local/bin/backup.sh",
                       usage="monitor backup-run NAME -- CMD [ARGS...]")
    p.add_argument("name", metavar="NAME", help="the name of a [[backups]] job")
    p.add_argument("argv", nargs=argparse.REMAINDER, metavar="-- CMD ARGS...")
    p.set_defaults(handler=cmd_backup_run)

    p = sub.add_parser("services", help="run the service checks once and print their results",
                       description="Run the [[services]] checks of the config (or the named ones) "
                       "once and print the state and message of each; nothing is stored. The exit "
                       "code is the worst state, as a Nagios plugin's: 0 OK, 1 WARNING, "
                       "2 CRITICAL, 3 UNKNOWN.")
    p.add_argument("names", nargs="*", metavar="NAME", help="only these services (default: all)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(handler=cmd_services)

    p = sub.add_parser("status", help="print the current check states; exit code of the worst",
                       description="Print the current state of every check (or those matching "
                       "PATTERN) from the agent's status file, worst first, after a summary line. "
                       "The exit code is that of the worst state, as a Nagios plugin's (0 OK, "
                       "1 WARNING, 2 CRITICAL, 3 UNKNOWN), so another monitor can check this one. "
                       "A check not reported for 3 intervals counts as UNKNOWN (is the agent "
                       "running?); no matching check at all is UNKNOWN too.")
    p.add_argument("pattern", nargs="?", metavar="PATTERN",
                   help='shell glob on the target, the check or "TARGET CHECK" (default: all)')
    p.add_argument("--json", action="store_true", help="print the states as JSON")
    p.set_defaults(handler=cmd_status)
    accept_global_options_after_commands(parser)
    return parser


def accept_global_options_after_commands(parser: argparse.ArgumentParser,
                                         options: list[argparse.Action] | None = None) -> None:
    """Let -c/-v/-q/--syslog follow the subcommand too (`monitor check-config -c x.toml`): every
    subparser, nested ones included, gets a copy of each whose default is SUPPRESS, so that an
    option given before the subcommand is not reset by the subparser."""
    if options is None:
        options = [a for a in parser._actions
                   if {"-c", "-v", "-q", "--syslog"} & set(a.option_strings)]
    for sub in (s for a in parser._actions if isinstance(a, argparse._SubParsersAction)
                for s in a.choices.values()):
        taken = {o for a in sub._actions for o in a.option_strings}
        for option in options:
            if taken.isdisjoint(option.option_strings):
                sub._add_action(copy.copy(option)).default = argparse.SUPPRESS
        accept_global_options_after_commands(sub, options)


def setup_logging(verbose: int, quiet: bool, syslog: str | None = None) -> None:
    """Standard error (time-stamped; for the journal with priorities instead), or the syslog
    socket `syslog` (falling back to standard error, with a warning, if it is not there)."""
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )
    root = logging.getLogger()
    root.setLevel(level)  # basicConfig leaves it alone if a handler was there already
    if syslog:
        try:
            handler = syslog_handler(syslog)
        except OSError as exc:
            log.warning("cannot log to syslog at %s (%s); logging to standard error", syslog,
                        exc.strerror or exc)
        else:
            for old in root.handlers[:]:
                root.removeHandler(old)
            root.addHandler(handler)
    elif stderr_is_journal(sys.stderr):  # journald stamps lines itself and reads <N> as the level
        for existing in root.handlers:
            existing.setFormatter(JournalFormatter())
    if verbose < 2:
        for noisy in ("apscheduler", "asyncio", "matplotlib", "PIL"):
            logging.getLogger(noisy).setLevel(logging.WARNING)


def read_config(args: argparse.Namespace) -> Config:
    config = load_config(args.config or default_config_path())
    for warning in config.warnings:
        log.warning("%s", warning)
    return config


def cmd_digest(args: argparse.Namespace) -> int:
    from alerts.digest import run_digest

    config = read_config(args)
    last = parse_duration(args.last) if args.last else None
    run_loop(run_digest(config, args.name, dry_run=args.dry_run, last=last))
    return 0


def cmd_backup_run(args: argparse.Namespace) -> int:
    from collectors.backups import run_wrapped

    argv = args.argv[1:] if args.argv[:1] == ["--"] else args.argv
    if not argv:
        raise ValueError("backup-run needs the command after --, e.g. "
                         "monitor backup-run nightly -- /usr/local/bin/backup.sh")
    config = read_config(args)
    jobs = {j.name: j for j in config.backups}
    job = jobs.get(args.name)
    if job is None:
        raise ValueError(f"no [[backups]] job named {args.name!r} "
                         f"(jobs: {', '.join(jobs) or 'none configured'})")
    if job.kind != "wrapper":
        log.warning("backup job %s has kind = %r; its check reads that source, not this run's "
                    "record (set kind = \"wrapper\")", job.name, job.kind)
    return run_wrapped(job.name, argv, config.state_dir)


def cmd_check_config(args: argparse.Namespace) -> int:
    if not args.json:
        config = read_config(args)
        print(f"{config.source}: OK")
        print(summarise(config))
        return 0
    import json

    from monitor.registry import build_collectors
    try:
        config = read_config(args)
    except ConfigError as exc:
        print(json.dumps({"ok": False, "error": str(exc)}, indent=1))
        return 2
    print(json.dumps({
        "ok": True, "source": str(config.source), "warnings": config.warnings,
        "data_dir": str(config.agent.data_dir), "rrd_dir": str(config.rrd_dir),
        "html_dir": str(config.html_dir), "rrdcached": config.storage.rrdcached,
        "interval": config.agent.interval,
        "jobs": [{"name": c.name, "interval": c.interval} for c in build_collectors(config)],
        "snmp_devices": [{"name": d.name, "host": d.host, "port": d.port, "version": d.version}
                         for d in config.snmp.devices],
        "services": [{"name": s.name, "kind": s.kind} for s in config.services],
        "alert_rules": [r.name for r in config.alerts.rules],
        "digests": [d.name for d in config.digests], "contact_groups": sorted(config.contacts),
    }, indent=1))
    return 0


def cmd_init_config(args: argparse.Namespace) -> int:
    from monitor.files import atomic_write
    from monitor.reference import installed_config, reference_text

    text = installed_config(reference_text())
    if args.path is None:
        sys.stdout.write(text)
        return 0
    if args.path.exists() and not args.force:
        raise ValueError(f"{args.path} exists; keeping it (--force replaces it)")
    atomic_write(args.path, text, 0o640)  # secrets may be added to it later
    print(f"wrote {args.path}; edit it, then check it with `monitor -c {args.path} check-config`")
    return 0


def summarise(config: Config) -> str:
    from monitor.registry import build_collectors

    lines = [
        f"data directory: {config.agent.data_dir}",
        f"RRD files:      {config.rrd_dir}"
        + (f" (through rrdcached {config.storage.rrdcached})" if config.storage.rrdcached else ""),
        f"web pages:      {config.html_dir}",
        f"default interval {format_duration(config.agent.interval)}",
    ]
    collectors = build_collectors(config)
    lines.append(f"jobs: {len(collectors)}")
    for c in collectors:
        lines.append(f"  {c.name:<12} every {format_duration(c.interval)}")
    lines.append(f"SNMP devices: {len(config.snmp.devices)}"
                 + "".join(f"\n  {d.name} {d.host}:{d.port} v{d.version}" for d in config.snmp.devices))
    if config.ups:
        lines.append(f"UPS (NUT): {len(config.ups)}"
                     + "".join(f"\n  {u.name} {u.ups}@{u.host}:{u.port}" for u in config.ups))
    lines.append(f"services: {len(config.services)}"
                 + "".join(f"\n  {s.name} ({s.kind})" for s in config.services))
    if config.blocklists.enabled:
        lines.append(f"block lists: {len(config.blocklists.addresses)} address(es) or range(s) in "
                     f"{len(config.blocklists.lists)} list(s)")
    if config.baseline.enabled:
        lines.append(f"baselines: {len(config.baseline.series)} pattern(s), every "
                     f"{format_duration(config.baseline.interval)}")
    lines.append(f"alert rules: {len(config.alerts.rules)}; digests: {len(config.digests)}; "
                 f"contact groups: {', '.join(config.contacts) or 'none'}")
    return "\n".join(lines)


def cmd_collect(args: argparse.Namespace) -> int:
    config = read_config(args)

    async def go() -> bool:
        agent = Agent(config, only=args.only)
        try:
            return await agent.collect_once()
        finally:
            await agent.close()

    ok = run_loop(go())
    print(f"RRD files in {config.rrd_dir}")
    return 0 if ok else 1


def cmd_discover(args: argparse.Namespace) -> int:
    import os

    from collectors.snmp_client import SnmpError
    from collectors.snmp_discover import run_discover

    if args.snmp_version == "3" and not args.user:
        raise ValueError("--snmp-version 3 needs --user (and --auth-protocol/--auth-key, "
                         "--priv-protocol/--priv-key as configured on the device)")
    auth_key = args.auth_key or os.environ.get("SNMP_AUTH_KEY")
    priv_key = args.priv_key or os.environ.get("SNMP_PRIV_KEY")
    try:
        text = run_loop(run_discover(args, auth_key, priv_key))
    except SnmpError as exc:
        print(f"monitor discover: {exc}", file=sys.stderr)
        return 1
    sys.stdout.write(text)
    return 0


def cmd_services(args: argparse.Namespace) -> int:
    from collectors.services import run_once

    config = read_config(args)
    known = {s.name for s in config.services}
    unknown = [n for n in args.names if n not in known]
    if unknown:
        raise ValueError(f"no service named {', '.join(map(repr, unknown))} in {config.source}; "
                         f"known: {', '.join(sorted(known)) or 'none'}")
    results = run_loop(run_once(config, args.names or None))
    if args.json:
        import json
        print(json.dumps([{"target": r.target, "check": r.check, "state": r.state.name,
                           "message": r.message, "time": r.timestamp,
                           "metrics": {m.metric: m.value for m in r.measurements}}
                          for r in results], indent=1))
    else:
        for r in results:
            print(f"{r.state.name:<8} {r.check}: {r.message}")
    return max((r.state for r in results), key=lambda s: s.severity, default=State.OK).value


def cmd_status(args: argparse.Namespace) -> int:
    import json
    import time

    from monitor.status import StatusBook

    config = read_config(args)
    now = time.time()
    path = config.state_dir / "status.json"
    try:
        path.open("rb").close()
    except FileNotFoundError:
        pass
    except PermissionError:  # as a Nagios plugin: UNKNOWN, and why
        print(f"UNKNOWN: cannot read {path}: permission denied; run as the user the agent runs "
              "as (sudo -u monitor monitor status)")
        return State.UNKNOWN.value
    checks = [c for c in StatusBook(path).all()
              if args.pattern is None or c.matches(args.pattern)]
    states = [State.UNKNOWN if c.stale(now) else c.state for c in checks]
    worst = State.worst(states) if checks else State.UNKNOWN
    if args.json:
        print(json.dumps({"state": worst.name, "exit_code": worst.value, "checks": [
            {"target": c.target, "check": c.check, "state": c.state.name, "message": c.message,
             "since": c.since, "last": c.last, "stale": c.stale(now)} for c in checks]}, indent=1))
        return worst.value
    counts = ", ".join(f"{states.count(s)} {s.name}" for s in State if states.count(s))
    where = f" matching {args.pattern!r}" if args.pattern else ""
    print(f"{worst.name}: {counts or 'no checks'}{where}"
          + ("" if checks else f" in {config.state_dir / 'status.json'}"))
    for c, state in zip(checks, states, strict=True):
        age = f"stale: last reported {format_duration(now - c.last)} ago" if c.stale(now) else \
            f"since {format_duration(now - c.since)}"
        print(f"{state.name:<8} {c.target} {c.check}: {c.message} ({age})")
    return worst.value


def cmd_run(args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration) if args.duration else None
    config = read_config(args)
    return run_loop(run_agent(config, args, duration))


async def run_agent(config: Config, args: argparse.Namespace, duration: float | None) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    reload = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    loop.add_signal_handler(signal.SIGHUP, reload.set)

    agent = Agent(config)
    agent.schedule()
    agent.scheduler.start()
    notifier = Notifier()  # systemd's Type=notify; does nothing outside systemd
    watchdog = asyncio.ensure_future(notifier.keep_alive())
    log.info("monitor %s started: %s", __version__, agent.describe_jobs() or "no jobs configured")
    notifier.ready(f"running: {agent.describe_jobs() or 'no jobs configured'}")
    log.info("data in %s (RRD files in %s)", config.agent.data_dir, config.rrd_dir)
    log.info("stop with Ctrl-C%s", f"; stopping by itself in {format_duration(duration)}"
             if duration else "")
    deadline = loop.time() + duration if duration else None
    while not stop.is_set():
        timeout = None if deadline is None else max(0.0, deadline - loop.time())
        waiters = [asyncio.ensure_future(stop.wait()), asyncio.ensure_future(reload.wait())]
        done, pending = await asyncio.wait(waiters, timeout=timeout,
                                           return_when=asyncio.FIRST_COMPLETED)
        for w in pending:
            w.cancel()
        if not done:
            log.info("ran for %s; stopping", format_duration(duration or 0))
            break
        if reload.is_set():
            reload.clear()
            notifier.reloading()
            agent = await reload_agent(agent, args)
            notifier.ready(f"running: {agent.describe_jobs() or 'no jobs configured'}")
    log.info("stopping: finishing running jobs")
    notifier.stopping()
    await agent.close()
    watchdog.cancel()
    notifier.close()
    log.info("stopped")
    return 0


async def reload_agent(agent: Agent, args: argparse.Namespace) -> Agent:
    """SIGHUP: load the config again; keep the running one if the new one is invalid."""
    try:
        config = read_config(args)
    except ConfigError as exc:
        log.error("reload refused, keeping the running config: %s", exc)
        return agent
    await agent.close()
    new = Agent(config)
    new.schedule()
    new.scheduler.start()
    log.info("config reloaded: %s", new.describe_jobs() or "no jobs configured")
    return new


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    setup_logging(args.verbose, args.quiet, SYSLOG_SOCKET if args.syslog else None)
    try:
        return args.handler(args)
    except (ConfigError, ValueError) as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
