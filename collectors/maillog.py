"""Mail-log statistics ([maillog]): what pflogsumm tells from Postfix's log, counted as it is
written, and Dovecot's failed logins.

Lines are syslog's (traditional "Dec  2 00:34:40 host postfix/smtpd[123]: ..." or Debian 12
rsyslog's RFC 3339 "2026-12-02T00:34:40.123456+00:00 host postfix/smtpd[123]: ...") or
Dovecot's own log_path ("Dec 02 00:34:57 imap-login: Info: ..."). Counted per local hour:

- received: a message entering the queue (qmgr's first "from=" for a queue id; a deferred
  message that comes back to the active queue is not counted again), with its size;
- delivered / deferred / bounced (expired counts as bounced): one per recipient, as Postfix
  logs "status=";
- outbound: delivered recipients outside `local_domains` (no local_domains: delivered by the
  smtp client), per sender: the SASL user, else the client address that handed the message to
  smtpd ("uid N" for local submissions);
- received per sender, delivered per recipient domain;
- rejected, by reason ("Recipient address rejected: User unknown in virtual mailbox table";
  addresses inside brackets become "[address]" so one reason is one row);
- SASL authentication failures per client address, Dovecot login failures (imap/pop3/
  submission/managesieve "auth failed, N attempts") per remote address.
The log is followed with collectors.logfollow (rotation, compression and truncation survived,
nothing counted twice), or, with `journal = true`, the journal is read with journalctl
(short-iso-precise, the mail units' entries after the cursor of the last one read). Positions,
the queue ids still in the queue and the hourly counts are in
data_dir/state/maillog.json, written atomically. A flood of distinct senders, domains or
addresses is bounded: past MAX_KEYS per hour they are counted as "(others)".

Naming contract: target "mail"; instance "postfix": metrics received, delivered, deferred,
bounced, rejected, outbound (unit "msg", DERIVE: the store keeps the rate per second, which the
graphs draw per hour; an hour's average times 3600 is the hour's count), received_bytes;
sasl_failures (unit "failures", per hour as well); instance "dovecot": login_failures (unit
"failures": failed attempts); instance "sender <who>": outbound_last_hour
(GAUGE, the busiest senders of the last 60 minutes). Check "maillog" (target "mail").
"""

from __future__ import annotations

import asyncio
import functools
import json
import logging
import re
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from collectors.logfollow import CountingCollector, LogPosition, build_counter, follow_log
from monitor.config import Config, MailLogConfig
from monitor.files import atomic_write
from monitor.model import Batch, Collector, Kind, Measurement
from monitor.process import run_command
from monitor.text import clean

log = logging.getLogger(__name__)

TARGET = "mail"
HOUR = 3600
MAX_KEYS = 500  # distinct senders/domains/reasons/addresses kept per hour and counter
OTHERS = "(others)"
QUEUE_KEEP = 6 * 86400.0  # a queue id not seen again for this long has left (or been lost)
LOSS_SHOWN = 86400.0
TOP_SENDER_SERIES = 10
COUNTS = ("received", "delivered", "deferred", "bounced", "rejected", "outbound",
          "received_bytes", "sasl_failures", "login_failures")
# The unit of what each counter counts (the store keeps its rate per second).
COUNT_UNITS = {**dict.fromkeys(("received", "delivered", "deferred", "bounced", "rejected", "outbound"),
                               "msg"), "received_bytes": "B",
               **dict.fromkeys(("sasl_failures", "login_failures"), "failures")}
TABLES = ("senders", "outbound_by", "domains", "reasons", "sasl_clients", "login_clients")

_STAMP = re.compile(
    r"^(?:(?P<iso>\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.\d+)?(?P<tz>Z|[+-]\d\d:?\d\d)?"
    r"|(?P<bsd>[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d)) +(?P<rest>.*)$")
_POSTFIX = re.compile(r"^(?:\S+ )?postfix(?:-[\w.-]+)?/(?P<prog>[\w/.-]+)\[\d+\]: (?P<msg>.*)$")
_QID = r"(?P<qid>[0-9A-Za-z]{6,20})"
_CLIENT = re.compile(_QID + r": client=[^\[\s]*\[(?P<ip>[^\]]+)\]"
                     r"(?:.*?\bsasl_username=(?P<user>[^,\s]+))?")
_PICKUP = re.compile(_QID + r": uid=(?P<uid>\d+) from=")
# An address as Postfix logs it: a quoted local part may hold anything (">", ", status=sent"),
# and the sender chooses it; the field ends at the first ">" outside quotes.
_ADDRESS = r'(?:"(?:[^"\\]|\\.)*"|[^>"])*'
_STATUS = re.compile(_QID + r": to=<(?P<to>" + _ADDRESS + r")>,(?: orig_to=<" + _ADDRESS
                     + r">,)?.*? status=(?P<status>sent|deferred|bounced|expired)\b")
_QUEUED = re.compile(_QID + r": from=<(?P<sender>" + _ADDRESS + r")>, size=(?P<size>\d+), nrcpt=\d+")
_REMOVED = re.compile(_QID + r": removed$")
_REJECT = re.compile(r"^(?:NOQUEUE|[0-9A-Za-z]{6,20}): (?:milter-)?reject: (?P<what>.*)$")
_SASL_FAILED = re.compile(r"^warning: [^\[\s]*\[(?P<ip>[^\]]+)\]: SASL \S+ authentication failed")
_DOVECOT_FAILED = re.compile(
    r"\b(?:imap|pop3|submission|managesieve)-login: (?:Info: )?.*?\(auth failed, (?P<n>\d+) "
    r"attempts?.*?\brip=[0-9A-Fa-f:.]+")
# The client's address is the line's last rip=: the user name the client gave comes before it
# (user=<x, rip=192.0.2.99>) and would otherwise name an address of the attacker's choosing.
_RIP = re.compile(r"\brip=([0-9A-Fa-f:.]+)")
_DOVECOT = re.compile(r"\b(?:dovecot|(?:imap|pop3|submission|managesieve|lmtp)-login|auth)"
                      r"(?:\[\d+\])?: ")
_BRACKETED_ADDRESS = re.compile(r"\[[0-9A-Fa-f:.]+\]")


def reject_reason(what: str) -> str:
    """ "RCPT from host[1.2.3.4]: 554 5.7.1 <a@b>: Recipient address rejected: Blocked; from=..."
    -> "Recipient address rejected: Blocked"."""
    text = what.split("; from=<", 1)[0]
    head, sep, tail = text.partition(": ")
    text = tail if sep and " from " in f" {head}" else text
    text = re.sub(r"^\d{3}(?: \d\.\d{1,3}\.\d{1,3})? ", "", text)
    text = re.sub(r"^<[^>]*>: ", "", text)
    return clean(_BRACKETED_ADDRESS.sub("[address]", text), 100) or "(no reason given)"


@dataclass
class HourCounts:
    """One local hour of one mail system."""

    counts: Counter = field(default_factory=Counter)  # COUNTS
    tables: dict[str, Counter] = field(default_factory=lambda: {t: Counter() for t in TABLES})

    def bump(self, table: str, key: str, n: int = 1) -> None:
        counter = self.tables[table]
        if key not in counter and len(counter) >= MAX_KEYS:
            key = OTHERS
        counter[key] += n

    def merge(self, other: HourCounts) -> None:
        self.counts.update(other.counts)
        for name in TABLES:
            for key, n in other.tables[name].items():
                self.bump(name, key, n)

    def to_json(self) -> dict:
        return {"counts": dict(self.counts),
                **{name: dict(self.tables[name]) for name in TABLES if self.tables[name]}}

    @classmethod
    def from_json(cls, raw: dict) -> HourCounts:
        out = cls(Counter({k: int(v) for k, v in raw.get("counts", {}).items()}))
        for name in TABLES:
            out.tables[name].update({str(k): int(v) for k, v in raw.get(name, {}).items()})
        return out


@dataclass
class Queued:
    """What is known of a queue id between the lines that name it."""

    sender: str = ""  # SASL user, client address or "uid N"
    received: bool = False
    seen: float = 0.0


@dataclass
class MailLogState:
    logs: dict[str, LogPosition] = field(default_factory=dict)
    hours: dict[int, HourCounts] = field(default_factory=dict)
    queue: dict[str, Queued] = field(default_factory=dict)
    totals: Counter = field(default_factory=Counter)  # ever-increasing, for the DERIVE series
    losses: list[tuple[float, str]] = field(default_factory=list)
    journal_cursor: str = ""  # where reading the journal goes on

    def to_json(self) -> dict:
        return {"version": 1,
                "logs": {p: pos.to_json() for p, pos in sorted(self.logs.items())},
                "hours": {str(h): c.to_json() for h, c in sorted(self.hours.items())},
                "queue": {q: [e.sender, e.received, e.seen] for q, e in self.queue.items()},
                "totals": dict(self.totals), "losses": [list(x) for x in self.losses],
                "journal_cursor": self.journal_cursor}

    @classmethod
    def from_json(cls, raw: dict) -> MailLogState:
        return cls({p: LogPosition.from_json(f) for p, f in raw.get("logs", {}).items()},
                   {int(h): HourCounts.from_json(c) for h, c in raw.get("hours", {}).items()},
                   {q: Queued(str(e[0]), bool(e[1]), float(e[2]))
                    for q, e in raw.get("queue", {}).items()},
                   Counter({k: int(v) for k, v in raw.get("totals", {}).items()}),
                   [(float(at), str(what)) for at, what in raw.get("losses", [])],
                   str(raw.get("journal_cursor", "")))


def load_state(path: Path) -> MailLogState:
    try:
        return MailLogState.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return MailLogState()
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        log.error("mail log state %s unreadable (%s); counting starts afresh", path, exc)
        return MailLogState()


def save_state(path: Path, state: MailLogState) -> None:
    atomic_write(Path(path), json.dumps(state.to_json(), separators=(",", ":")))


def hours_between(state: MailLogState, start: float, end: float) -> list[tuple[int, HourCounts]]:
    """The hours that start within [start, end), oldest first (the current one too: the mail
    page and the check show the hour under way)."""
    return sorted((h, c) for h, c in state.hours.items() if start <= h < end)


def summary(state: MailLogState, start: float, end: float) -> HourCounts:
    """The hours that end within (start, end], merged: consecutive periods count each once."""
    out = HourCounts()
    for hour, counts in state.hours.items():
        if start < hour + HOUR <= end:
            out.merge(counts)
    return out


def by_day(state: MailLogState, start: float, end: float) -> list[tuple[float, Counter]]:
    """The counts (COUNTS) of the hours that end within (start, end], as `summary` takes them,
    per local day (its midnight), oldest first: pflogsumm's per-day summary."""
    days: dict[float, Counter] = {}
    for hour, counts in state.hours.items():
        if start < hour + HOUR <= end:
            midnight = datetime.fromtimestamp(hour).replace(hour=0, minute=0, second=0,
                                                            microsecond=0).timestamp()
            days.setdefault(midnight, Counter()).update(counts.counts)
    return sorted(days.items())


# -- parsing --------------------------------------------------------------------------------


def line_time(match: re.Match[str], now: float) -> float | None:
    """Epoch seconds of a syslog stamp; a stamp without a year is in the year that puts it
    at most a day after `now`."""
    try:
        if match["iso"]:
            when = datetime.fromisoformat(match["iso"] + (match["tz"] or "").replace("Z", "+00:00"))
            return when.timestamp()
        current = datetime.fromtimestamp(now)
        text = " ".join(match["bsd"].split())
        when = datetime.strptime(f"{current.year} {text}", "%Y %b %d %H:%M:%S")
        if when.timestamp() > now + 86400:
            when = when.replace(year=current.year - 1)
        return when.timestamp()
    except ValueError:
        return None


def _domain(address: str) -> str:
    return address.rsplit("@", 1)[1].lower() if "@" in address else "(local)"


class Counting:
    """Adds log lines to a state; `local_domains` tells inbound from outbound."""

    def __init__(self, state: MailLogState, local_domains: Iterable[str], now: float) -> None:
        self.state = state
        self.local = set(local_domains)
        self.now = now

    def hour(self, ts: float) -> HourCounts:
        start = int(time.mktime(datetime.fromtimestamp(ts).replace(
            minute=0, second=0, microsecond=0).timetuple()))
        return self.state.hours.setdefault(start, HourCounts())

    def count(self, hour: HourCounts, name: str, n: int = 1) -> None:
        hour.counts[name] += n
        self.state.totals[name] += n

    def line(self, text: str) -> bool:
        """Count one line; True if it is Postfix's or Dovecot's."""
        stamp = _STAMP.match(text)
        if not stamp:
            return False
        rest = stamp["rest"]
        postfix = _POSTFIX.match(rest)
        if postfix is None:
            failed = _DOVECOT_FAILED.search(rest)
            if failed:
                ts = line_time(stamp, self.now)
                if ts is None:
                    return False
                hour = self.hour(ts)
                n = int(failed["n"])
                self.count(hour, "login_failures", n)
                hour.bump("login_clients", clean(_RIP.findall(rest)[-1], 60), n)
                return True
            return _DOVECOT.search(rest) is not None
        ts = line_time(stamp, self.now)
        if ts is None:
            return False
        self.postfix(postfix["prog"], postfix["msg"], ts)
        return True

    def postfix(self, prog: str, msg: str, ts: float) -> None:
        state = self.state
        if m := _STATUS.match(msg):
            hour = self.hour(ts)
            status = {"sent": "delivered", "expired": "bounced"}.get(m["status"], m["status"])
            self.count(hour, status)
            if status == "delivered":
                domain = _domain(m["to"])
                hour.bump("domains", clean(domain, 100))
                outbound = (domain not in self.local if self.local
                            else prog.rsplit("/", 1)[-1] == "smtp")
                if outbound:
                    self.count(hour, "outbound")
                    entry = state.queue.get(m["qid"])
                    hour.bump("outbound_by", entry.sender if entry and entry.sender else "(unknown)")
            self._touch(m["qid"], ts)
        elif m := _QUEUED.match(msg):
            entry = self._touch(m["qid"], ts)
            if not entry.received:
                entry.received = True
                hour = self.hour(ts)
                self.count(hour, "received")
                self.count(hour, "received_bytes", int(m["size"]))
                if entry.sender:
                    hour.bump("senders", entry.sender)
        elif m := _CLIENT.match(msg):
            self._touch(m["qid"], ts).sender = clean(m["user"] or m["ip"], 100)
        elif m := _PICKUP.match(msg):
            self._touch(m["qid"], ts).sender = f"uid {m['uid']}"
        elif m := _REMOVED.match(msg):
            state.queue.pop(m["qid"], None)
        elif m := _REJECT.match(msg):
            hour = self.hour(ts)
            self.count(hour, "rejected")
            hour.bump("reasons", reject_reason(m["what"]))
        elif m := _SASL_FAILED.match(msg):
            hour = self.hour(ts)
            self.count(hour, "sasl_failures")
            hour.bump("sasl_clients", clean(m["ip"], 60))

    def _touch(self, qid: str, ts: float) -> Queued:
        entry = self.state.queue.setdefault(qid, Queued())
        entry.seen = max(entry.seen, ts)
        return entry

    def data(self, data: bytes, position: LogPosition) -> int:
        """Every complete line of a chunk; returns how many were Postfix's or Dovecot's."""
        known = 0
        for raw in data.split(b"\n"):
            if not raw.strip():
                continue
            position.lines += 1
            if self.line(raw.decode("utf-8", "replace").rstrip("\r")):
                known += 1
        position.parsed += known
        return known


def prune(state: MailLogState, keep_days: int, now: float) -> None:
    oldest = now - keep_days * 86400
    for hour in [h for h in state.hours if h < oldest]:
        del state.hours[hour]
    for qid in [q for q, e in state.queue.items() if e.seen < now - QUEUE_KEEP]:
        del state.queue[qid]
    state.losses = [(at, what) for at, what in state.losses if at >= now - LOSS_SHOWN]


CURSOR_LINE = "-- cursor: "
FIRST_READ = 86400.0  # a journal read for the first time: its last day


def journal_command(cfg: MailLogConfig, cursor: str, now: float) -> list[str]:
    """journalctl for the mail units' entries after `cursor` (or of the last day)."""
    argv = [str(cfg.journalctl), "--no-pager", "--quiet", "--output=short-iso-precise",
            "--show-cursor"]
    if cfg.journal_directory is not None:
        argv.append(f"--directory={cfg.journal_directory}")
    argv.append(f"--after-cursor={cursor}" if cursor else f"--since=@{int(now - FIRST_READ)}")
    return argv + [f"_SYSTEMD_UNIT={unit}" for unit in cfg.journal_units]


def count_journal(output: bytes, state: MailLogState, cfg: MailLogConfig, now: float) -> int:
    """Count journalctl's lines and move the cursor past them. Without a cursor line (no new
    entries) the cursor stays."""
    counting = Counting(state, cfg.local_domains, now)
    text = output.decode("utf-8", "replace")
    body, sep, cursor = text.rpartition("\n" + CURSOR_LINE)
    if not sep and text.startswith(CURSOR_LINE):
        body, cursor = "", text[len(CURSOR_LINE):]
    elif not sep:
        return 0  # no cursor: journalctl printed nothing (or was cut off); read again next run
    known = sum(1 for line in body.splitlines() if line.strip() and counting.line(line))
    state.journal_cursor = cursor.strip()
    return known


def read_logs(cfg: MailLogConfig, state: MailLogState, now: float) -> tuple[int, list[str]]:
    """Follow the configured logs into the state; returns (lines counted, problems)."""
    counting = Counting(state, cfg.local_domains, now)
    counted, problems = 0, []
    for path in [p for p in (cfg.log, cfg.dovecot_log) if p is not None and not cfg.journal]:
        if not path.exists() and str(path) not in state.logs:
            problems.append(f"{path} does not exist (set [maillog] log to Postfix's log)")
            continue
        position = state.logs.setdefault(str(path), LogPosition())
        try:
            result = follow_log(path, position, functools.partial(counting.data, position=position),
                                now, lost="mail log lines")
        except PermissionError:
            problems.append(f"cannot read {path}: permission denied (run the agent in the adm "
                            "group)")
            continue
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror or exc}")
            continue
        counted += result.counted
        for note in result.notes:
            log.info("maillog: %s: %s", path, note)
        if result.loss:
            state.losses.append((now, result.loss))
        if position.lines and not position.parsed:
            problems.append(f"none of the {position.lines} line(s) of {path} is from Postfix or "
                            "Dovecot")
    return counted, problems


async def read_journal(cfg: MailLogConfig, state: MailLogState, now: float) -> tuple[int, list[str]]:
    """Count the journal's mail entries after the state's cursor; returns (entries counted,
    problems)."""
    try:
        out = await run_command(journal_command(cfg, state.journal_cursor, now), cfg.timeout)
        return await asyncio.to_thread(count_journal, out, state, cfg, now), []
    except (OSError, RuntimeError) as exc:
        return 0, [f"cannot read the journal: {clean(exc, 300)}"]


# -- the collector --------------------------------------------------------------------------


def _hour_start(now: float) -> float:
    return datetime.fromtimestamp(now).replace(minute=0, second=0, microsecond=0).timestamp()


def last_hour_senders(state: MailLogState, now: float) -> dict[str, float]:
    """Outbound mail per sender over the last 60 minutes, estimated from the hourly counts (the
    hour under way plus the share of the previous hour still inside the window, as a sliding
    window rate limiter counts), for the busiest senders of either hour. A sender that went
    quiet decays to 0 in the hour after, so an alert on it recovers."""
    start = _hour_start(now)
    current = state.hours.get(int(start), HourCounts()).tables["outbound_by"]
    previous = state.hours.get(int(start - HOUR), HourCounts()).tables["outbound_by"]
    share = 1.0 - min(max(now - start, 0.0), HOUR) / HOUR
    senders = ({s for s, _ in current.most_common(TOP_SENDER_SERIES)}
               | {s for s, _ in previous.most_common(TOP_SENDER_SERIES)})
    return {s: current[s] + previous[s] * share for s in sorted(senders)}


@dataclass
class MailLogCollector(CountingCollector[MailLogConfig]):
    name: str = "maillog"

    async def collect(self) -> Batch:
        now = self.clock()
        state = await asyncio.to_thread(load_state, self.state_path)
        counted, problems = await asyncio.to_thread(read_logs, self.config, state, now)
        if self.config.journal:
            from_journal, trouble = await read_journal(self.config, state, now)
            counted += from_journal
            problems += trouble
        prune(state, self.config.keep_days, now)
        problems += [what for _, what in state.losses]
        problems += await self.save(save_state, state)
        batch = Batch()
        for metric in COUNTS:
            instance = "dovecot" if metric == "login_failures" else "postfix"
            batch.add(Measurement(TARGET, instance, metric, float(state.totals[metric]),
                                  Kind.DERIVE, unit=COUNT_UNITS.get(metric, ""),
                                  timestamp=now, minimum=0))
        for sender, n in last_hour_senders(state, now).items():
            batch.add(Measurement(TARGET, f"sender {sender}", "outbound_last_hour", n,
                                  timestamp=now, minimum=0))
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        today = HourCounts()
        for _, counts in hours_between(state, midnight.timestamp(),
                                       (midnight + timedelta(days=1)).timestamp()):
            today.merge(counts)
        c = today.counts
        summary = (f"today: {c['received']} received, {c['delivered']} delivered "
                   f"({c['outbound']} outbound), {c['deferred']} deferred, {c['bounced']} bounced, "
                   f"{c['rejected']} rejected, {c['sasl_failures']} SASL and "
                   f"{c['login_failures']} login failure(s) ({counted} new log line(s))")
        batch.add(self.own_check(TARGET, summary, problems, now))
        return batch


def build(config: Config) -> list[Collector]:
    return build_counter(MailLogCollector, config.maillog, config, "maillog.json")
