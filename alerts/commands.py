"""The alert subcommands: `monitor alerts`, `monitor silence ...`, `monitor smtp-sink`."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import getpass
import json
import signal
import sqlite3
import time
from collections.abc import Callable
from pathlib import Path

from alerts.engine import Status
from alerts.outbox import Outbox, outbox_path
from alerts.state import Ack, AlertStore, Silence, alert_id, alerts_db_path
from monitor.config import Config, ReadConfig
from monitor.eventloop import run as run_loop
from monitor.status import StatusBook
from monitor.units import format_duration, parse_duration

LONG_SILENCE = 7 * 86400.0


def register(sub: argparse._SubParsersAction, read_config: ReadConfig) -> None:
    def with_config(function: Callable[[Config, argparse.Namespace], int]
                    ) -> Callable[[argparse.Namespace], int]:
        def handler(args: argparse.Namespace) -> int:
            config = read_config(args)
            try:
                return function(config, args)
            except (sqlite3.Error, OSError) as exc:
                # ValueError would be caught by main(); this says where and what to do.
                raise ValueError(f"cannot use the alert state in {config.state_dir}: {exc}; run "
                                 "as the user the agent runs as, or fix data_dir") from exc
        return handler

    p = sub.add_parser("alerts", help="current alerts, silences, mail waiting or refused",
                       description="List alerts that are pending, firing or flapping (with why "
                       "they are quiet, if they are), active silences, mail waiting in the "
                       "outbox and mail the relay refused, and recent alert events.")
    p.add_argument("--history", metavar="DURATION", default="24h",
                   help='show alert events of this period (default "24h"; "0" for none)')
    p.add_argument("--json", action="store_true", help="print all of it as one JSON object")
    p.set_defaults(handler=with_config(cmd_alerts))

    p = sub.add_parser("silence", help="silence alerts for a while (add, list, remove)",
                       description="Silences keep matching alerts quiet (state is still "
                       "tracked; a problem still there when the silence ends is announced). "
                       "PATTERN is a shell glob matched against the target, the rule name, "
                       '"TARGET CHECK" and "RULE:TARGET".')
    ss = p.add_subparsers(dest="silence_command", metavar="ACTION", required=True)
    a = ss.add_parser("add", help="add a silence")
    a.add_argument("pattern", metavar="PATTERN", help='e.g. "mail.example.net" or "dmz-*"')
    a.add_argument("--for", dest="duration", required=True, metavar="DURATION",
                   help='how long, e.g. "2h"')
    a.add_argument("--reason", required=True, help="why (shown in `monitor alerts`)")
    a.add_argument("--force", action="store_true",
                   help=f"add it even if PATTERN matches no alert or check now, or it is longer "
                   f"than {format_duration(LONG_SILENCE)}")
    a.set_defaults(handler=with_config(cmd_silence_add))
    a = ss.add_parser("list", help="list active silences")
    a.add_argument("--all", action="store_true", help="include expired ones")
    a.set_defaults(handler=with_config(cmd_silence_list))
    a = ss.add_parser("remove", help="end a silence now")
    a.add_argument("id", type=int, metavar="ID")
    a.set_defaults(handler=with_config(cmd_silence_remove))

    p = sub.add_parser("ack", help="acknowledge a problem: no repeats or escalation until it "
                       "recovers", description="Acknowledge the problems matching ID (the #id "
                       "`monitor alerts` shows) or PATTERN (as for `monitor silence`): repeats "
                       "and escalation stop until the problem recovers (or --until ends); the "
                       "contact groups that were told get one mail saying who and why, and "
                       "later mails and the site's problems page show it. The running agent "
                       "applies it at its next evaluation.")
    p.add_argument("pattern", metavar="ID|PATTERN")
    p.add_argument("--comment", default="", help="why, or what is being done (shown in mails)")
    p.add_argument("--until", metavar="DURATION", help='end the acknowledgement after this long '
                   '(e.g. "4h"; default: when the problem recovers)')
    p.set_defaults(handler=with_config(cmd_ack))

    p = sub.add_parser("smtp-sink", help="run a local SMTP server that stores mail as files",
                       description="A stand-in relay for the demo and for testing: accepts "
                       "every message and stores it as a .eml file; relays nothing.")
    p.add_argument("--bind", default="127.0.0.1", help="address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=2525, help="port (default 2525)")
    p.add_argument("--maildir", type=Path, help="folder for the messages (default "
                   "<data_dir>/mail)")
    p.set_defaults(handler=with_config(cmd_smtp_sink))


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def cmd_alerts(config: Config, args: argparse.Namespace) -> int:
    now = time.time()
    if not alerts_db_path(config.state_dir).exists():
        print(f"Alerts: none yet (no {alerts_db_path(config.state_dir)}: the agent has not run "
              "with this data_dir).")
        return 0
    # Read-only: works on a full disk, and never creates or changes the agent's files.
    store = AlertStore(alerts_db_path(config.state_dir), readonly=True)
    states = [s for s in store.load_states().values() if s.problem or s.flapping]
    states.sort(key=lambda s: (-s.severity.severity, s.target, s.label))
    if getattr(args, "json", False):
        print(json.dumps(alerts_json(config, store, states, now, parse_duration(args.history)),
                         indent=1))
        return 0
    print(f"Alerts ({len(states)} active):" if states else "Alerts: none active.")
    for s in states:
        what = s.status.value if s.status is not Status.FIRING else s.severity.name
        flags = []
        if s.flapping:
            flags.append("flapping")
        if s.quiet and s.quiet != "flapping":
            flags.append(f"quiet: {s.quiet}")
        elif s.status is Status.FIRING and not s.notified and not s.flapping:
            flags.append("not announced yet")
        if s.ack_by:
            flags.append(f"acknowledged by {s.ack_by}" + (f": {s.ack_comment}" if s.ack_comment
                                                          else ""))
        print(f"  {what:<9} #{alert_id(s.key)} {s.target} {s.label}: {s.message}")
        print(f"            since {_when(s.since)} ({format_duration(now - s.since)}), rule "
              f"{s.rule}{'; ' + '; '.join(flags) if flags else ''}")
    silences = store.silences()
    if silences:
        print(f"\nSilences ({len(silences)}):")
        for si in silences:
            print(f"  #{si.id} {si.pattern!r} until {_when(si.until)}: {si.reason}")
    outbox = Outbox(outbox_path(config.state_dir), config.smtp, readonly=True)
    pending = outbox.pending()
    print(f"\nOutbox: {len(pending)} message(s) waiting")
    for index, route in enumerate(outbox.routes):
        relay = outbox.relay_state(index)
        if relay.failures:
            print(f"  {'relay' if index == 0 else 'fallback'} {route.where} "
                  f"{'refuses' if relay.refused else 'unavailable'} since "
                  f"{_when(relay.down_since)} ({relay.last_error}); next attempt "
                  f"{_when(relay.next_attempt)}")
    for e in pending[:10]:
        print(f"  #{e.id} {_when(e.created)} {e.subject}"
              + (f" ({e.attempts} attempt(s): {e.last_error})" if e.last_error else ""))
    failed = outbox.failed(20)
    if failed:
        print(f"\nRefused by the relay ({len(failed)}; check the addresses in [contacts] and "
              f"the relay's policy):")
        for e in failed:
            print(f"  #{e.id} {_when(e.created)} to {', '.join(e.recipients)}: {e.subject}\n"
                  f"      {e.last_error}")
    recent = [e for e in outbox.entries("sent", 200) if (e.done_at or 0) >= now - 86400]
    partial = [e for e in recent if e.refused]
    if partial:
        print(f"\nDelivered, but some recipients refused ({len(partial)} in the last 24h):")
        for e in partial:
            print(f"  #{e.id} {_when(e.created)} {e.subject}\n      refused: {e.refused}")
    unsure = [e for e in recent if e.unconfirmed]
    if unsure:
        print(f"\nSent without the relay's confirmation ({len(unsure)} in the last 24h; maybe "
              "delivered twice, with the same Message-ID):")
        for e in unsure:
            print(f"  #{e.id} {_when(e.created)} {e.subject}: {e.last_error}")
    period = parse_duration(args.history)
    if period:
        history = store.history(now - period)
        print(f"\nEvents in the last {format_duration(period)}: {len(history)}")
        for h in history[-20:]:
            print(f"  {_when(h.at)} {h.kind:<16} {h.severity:<8} {h.target} {h.label}: {h.message}")
    return 0


def alerts_json(config: Config, store: AlertStore, states: list, now: float,
                period: float) -> dict:
    """What `monitor alerts` prints, for scripts: times are Unix seconds, states by name."""
    mail: dict = {"pending": [], "refused": [], "relay": None}
    if outbox_path(config.state_dir).exists():  # else the agent has not mailed anything yet
        outbox = Outbox(outbox_path(config.state_dir), config.smtp, readonly=True)
        mail = {"pending": [dataclasses.asdict(e) for e in outbox.pending()],
                "refused": [dataclasses.asdict(e) for e in outbox.failed(20)],
                "relay": dataclasses.asdict(outbox.relay_state())}
    return {
        "alerts": [{"rule": s.rule, "target": s.target, "label": s.label,
                    "status": s.status.value, "severity": s.severity.name, "message": s.message,
                    "since": s.since, "flapping": s.flapping, "quiet": s.quiet,
                    "notified": s.notified} for s in states],
        "silences": [dataclasses.asdict(si) for si in store.silences()],
        "outbox": mail,
        "history": [dataclasses.asdict(h) for h in store.history(now - period)] if period else [],
    }


def _author() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return ""


def _known_things(config: Config, store: AlertStore) -> list[tuple[str, str, str]]:
    """(rule, target, label) of every alert and every check the agent knows of."""
    things = [(s.rule, s.target, s.label) for s in store.load_states().values()]
    status = config.state_dir / "status.json"
    if status.exists():
        things += [("", c.target, c.check) for c in StatusBook(status).all()]
    return things


def cmd_ack(config: Config, args: argparse.Namespace) -> int:
    until = parse_duration(args.until) if args.until else 0.0
    store = AlertStore(alerts_db_path(config.state_dir))
    probe = Ack(0, args.pattern, "", "", 0, 0)
    problems = [s for s in store.load_states().values() if s.problem and probe.matches(s)]
    if not problems:
        print(f"no current problem matches {args.pattern!r} (see `monitor alerts`)")
        return 1
    ack = store.add_ack(args.pattern, _author(), args.comment,
                        time.time() + until if until else 0.0)
    for s in problems:
        print(f"acknowledged #{alert_id(s.key)} {s.target} {s.label}: {s.message}")
    print(f"by {ack.author or '?'}"
          + (f" ({ack.comment})" if ack.comment else "")
          + (f" until {_when(ack.until)}" if ack.until else " until it recovers"))
    return 0


def cmd_silence_add(config: Config, args: argparse.Namespace) -> int:
    duration = parse_duration(args.duration)
    if duration <= 0:
        raise ValueError("--for must be a positive duration, e.g. 2h")
    store = AlertStore(alerts_db_path(config.state_dir))
    if not args.force:
        if duration > LONG_SILENCE:
            raise ValueError(f"a silence of {format_duration(duration)} is longer than "
                             f"{format_duration(LONG_SILENCE)}: problems would go unheard for "
                             "that long; add --force if you mean it")
        probe = Silence(0, args.pattern, "", 0, 0)
        if not any(probe.matches(*thing) for thing in _known_things(config, store)):
            raise ValueError(f"{args.pattern!r} matches no alert and no check now (a typo?); "
                             "see `monitor alerts`, or add --force to silence it anyway")
    author = _author()
    silence = store.add_silence(args.pattern, duration, args.reason, author)
    print(f"silence #{silence.id}: {silence.pattern!r} until {_when(silence.until)} "
          f"({args.reason}); end it early with `monitor silence remove {silence.id}`")
    return 0


def cmd_silence_list(config: Config, args: argparse.Namespace) -> int:
    store = AlertStore(alerts_db_path(config.state_dir))
    silences = store.silences(include_expired=args.all)
    if not silences:
        print("no active silences")
    now = time.time()
    for s in silences:
        state = "expired" if s.until <= now else f"{format_duration(s.until - now)} left"
        print(f"#{s.id} {s.pattern!r} until {_when(s.until)} ({state}) by {s.author or '?'}: "
              f"{s.reason}")
    for w in config.alerts.maintenance:
        print(f"maintenance window {w.name}: cron {w.cron!r} for {format_duration(w.duration)}, "
              f"matching {', '.join(w.match)}")
    return 0


def cmd_silence_remove(config: Config, args: argparse.Namespace) -> int:
    store = AlertStore(alerts_db_path(config.state_dir))
    if not store.remove_silence(args.id):
        print(f"no active silence #{args.id} (see `monitor silence list --all`)")
        return 1
    print(f"silence #{args.id} ended")
    return 0


def cmd_smtp_sink(config: Config, args: argparse.Namespace) -> int:
    from alerts.smtpsink import serve

    maildir = args.maildir or config.agent.data_dir / "mail"

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await serve(maildir, args.bind, args.port, stop=stop)

    run_loop(run())
    return 0
