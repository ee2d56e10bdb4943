"""The `monitor` command: the one place where config, collectors, store and jobs are wired."""

from __future__ import annotations

import argparse
import asyncio
import logging
import signal
import sys
from collections.abc import Sequence
from pathlib import Path

from monitor import __version__
from monitor.agent import Agent
from monitor.config import Config, ConfigError, default_config_path, load_config
from monitor.eventloop import run as run_loop
from monitor.model import State
from monitor.registry import COLLECTORS
from monitor.units import format_duration, parse_duration

log = logging.getLogger("monitor")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="monitor",
        description="Network and service monitoring agent: collects SNMP traffic, service checks, "
        "disk health and reports into RRD files, draws graphs and emails alerts and digests.",
        epilog="Config: --config, else $MONITOR_CONFIG, else ./config.toml, else "
        "/etc/monitor/config.toml. The commented config.toml documents every key.",
    )
    parser.add_argument("--version", action="version", version=f"monitor {__version__}")
    parser.add_argument("-c", "--config", type=Path, help="config file (TOML)")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
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
    p.add_argument("--once", action="store_true", default=True, help="run once (the default)")
    p.add_argument("--only", metavar="NAME", choices=sorted(COLLECTORS),
                   help="only this collector: " + ", ".join(sorted(COLLECTORS)))
    p.set_defaults(handler=cmd_collect)

    p = sub.add_parser("check-config", help="validate the config and summarise what is monitored")
    p.set_defaults(handler=cmd_check_config)

    p = sub.add_parser("discover", help="walk an SNMP device and print a [[snmp.devices]] stanza",
                       description="Walk the system group and IF-MIB of HOST and print a "
                       "ready-to-paste [[snmp.devices]] stanza for config.toml, with every "
                       "interface (name, alias, speed, status) as a comment. Progress on stderr.")
    p.add_argument("host", metavar="HOST", help="address or name of the device")
    p.add_argument("--name", help="device name in the stanza (default: its sysName)")
    p.add_argument("--port", type=int, default=161, help="UDP port (default 161)")
    p.add_argument("--version", dest="snmp_version", choices=["1", "2c", "3"], default="2c",
                   help="SNMP version (default 2c)")
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

    # Reports: `digest NAME [--dry-run]`, `backup-run NAME -- CMD ARGS...`.
    p = sub.add_parser("digest", help="build a [[digests]] mail now and send it (or print it)",
                       description="Build digest NAME from the current data and hand it to the "
                       "outbox (sent at once when the relay answers, retried otherwise). "
                       "--dry-run prints the MIME message instead of sending it.")
    p.add_argument("name", metavar="NAME", help="the name of a [[digests]] table")
    p.add_argument("--dry-run", action="store_true", help="print the message; send nothing")
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
    p.set_defaults(handler=cmd_services)
    return parser


def setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else logging.DEBUG if verbose > 1 else logging.INFO
    logging.basicConfig(
        level=level, stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(message)s", datefmt="%Y-%m-%d %H:%M:%S",
    )
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
    run_loop(run_digest(config, args.name, dry_run=args.dry_run))
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
    config = read_config(args)
    print(f"{config.source}: OK")
    print(summarise(config))
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
    lines.append(f"services: {len(config.services)}"
                 + "".join(f"\n  {s.name} ({s.kind})" for s in config.services))
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
        raise ValueError("--version 3 needs --user (and --auth-protocol/--auth-key, "
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
    for r in results:
        print(f"{r.state.name:<8} {r.check}: {r.message}")
    return max((r.state for r in results), key=lambda s: s.severity, default=State.OK).value


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
    log.info("monitor %s started: %s", __version__, agent.describe_jobs() or "no jobs configured")
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
            agent = await reload_agent(agent, args)
    log.info("stopping: finishing running jobs")
    await agent.close()
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
    setup_logging(args.verbose, args.quiet)
    try:
        return args.handler(args)
    except (ConfigError, ValueError) as exc:
        print(f"monitor: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
