"""Mailing-list activity: Mailman 2's post log, Mailman 3's smtp.log, subscriber counts.

Mailman 2 (`/var/lib/mailman/logs/post`) writes one line per delivered post:

    Nov 23 06:25:01 2026 (1234) post to announce from alice@example.net, size=2345, message-id=<a@b>, success
    Nov 23 06:30:12 2026 (1234) post to users from bob@example.org, size=812, message-id=<c@d>, 2 failures

(Mailman 2.2-style logs put the message-id first; both are understood.) Mailman 3
(`/var/log/mailman3/smtp.log` on Debian) writes its `[logging.smtp]` templates, list names being
full addresses:

    Nov 23 06:25:01 2026 (1234) <a@b> smtp to users@lists.example.net for 14 recips, completed in 0.2 seconds
    Nov 23 06:25:01 2026 (1234) <a@b> post to users@lists.example.net from bob@example.org, 641 bytes
    Nov 23 06:25:01 2026 (1234) <c@d> post to users@lists.example.net from x@y.z, 641 bytes, 2 failures
    Nov 23 06:25:01 2026 (1234) <c@d> delivery to x@y failed with code 550, User unknown

Mailman logs its own mails (welcome, moderation and bounce notices) with the same "post to"
template; they come from the list's -bounces, -owner, -request ... address (or the site's
mailman@ address) and are counted as notices, not posts.

Each log is read incrementally: the state file (data_dir/state/lists.json) remembers per log the
file's inode, the byte offset read so far and a fingerprint of its first bytes, and it is written
atomically together with the counts, so a post is counted once whatever happens:
- rotation by rename (logrotate's default): the rest of the old file (found next to it by its
  inode or first bytes, e.g. post.1, or post.1.gz / smtp.log-20261123.gz when logrotate
  compresses at once) is read first, then the new file from the start;
- truncation (copytruncate): the rest of the copy (recognised by its first bytes) is read from
  the old offset, then the truncated file from the start;
- a rotated file that cannot be found is a WARNING for a day (its last posts are not counted);
- a half-written last line waits for the next run.
Counts are kept per list per hour of local time (posts, bytes, distinct senders, posts with
refused recipients and refused recipients, Mailman's notices) for `keep_days` days: a digest
counts the hours that end inside its period, so consecutive digests never count a post twice.

Naming contract: target "lists", instance = list name (Mailman 3: the list's address); metrics
posts_today, bytes_today, senders_today, failures_today, subscribers.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Literal

from collectors.logfollow import CountingCollector, LogPosition, build_counter, follow_log
from monitor.config import Config, ListsConfig
from monitor.files import atomic_write
from monitor.model import Batch, CheckResult, Collector, Measurement, State
from monitor.process import run_command
from monitor.text import clean

log = logging.getLogger(__name__)

TARGET = "lists"
LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
HOUR = 3600
LOSS_SHOWN = 86400.0  # a rotation that lost posts stays a WARNING this long

_STAMP = r"^(?P<ts>[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d \d{4}) \(\d+\) "
MAILMAN2_POST = re.compile(
    _STAMP + r"(?:(?P<mid1>\S+) )?post to (?P<list>\S+) from (?P<sender>.*?), size=(?P<size>\d+), "
    r"(?:message-id=(?P<mid>.*), )?(?:(?P<success>success)|(?P<refused>\d+) failures?)\s*$"
)
MAILMAN3_POST = re.compile(
    _STAMP + r"(?:(?P<mid>.*?) )?post to (?P<list>\S+) from (?P<sender>.*?), (?P<size>\d+) bytes"
    r"(?:, (?P<refused>\d+) failures?)?\s*$"
)
# Mailman 3's other smtp.log templates: understood, not posts.
MAILMAN3_OTHER = re.compile(
    _STAMP + r"(?:.*? )?(?:smtp to \S+ for \d+ recips, completed in [\d.]+ seconds"
    r"|delivery to \S+ failed with code .*)\s*$"
)
# Where Mailman's own mails come from: LIST-bounces@, LIST-owner@ (VERP: LIST-bounces+x=y@),
# the site's mailman@ / mailman-bounces@.
_NOTICE_SENDER = re.compile(
    r"^(?:[^@]*-(?:bounces|owner|request|confirm|join|leave|subscribe|unsubscribe|admin)"
    r"(?:\+[^@]*)?|mailman(?:-bounces|-owner)?)@", re.IGNORECASE)


@dataclass
class ListStats:
    posts: int = 0
    bytes: int = 0
    senders: set[str] = field(default_factory=set)
    failures: int = 0
    refused: int = 0
    notices: int = 0

    def to_json(self) -> dict:
        return {"posts": self.posts, "bytes": self.bytes, "senders": sorted(self.senders),
                "failures": self.failures, "refused": self.refused, "notices": self.notices}

    @classmethod
    def from_json(cls, d: dict) -> ListStats:
        return cls(int(d.get("posts", 0)), int(d.get("bytes", 0)), set(d.get("senders", [])),
                   int(d.get("failures", 0)), int(d.get("refused", 0)), int(d.get("notices", 0)))

    def merge(self, other: ListStats) -> None:
        self.posts += other.posts
        self.bytes += other.bytes
        self.senders |= other.senders
        self.failures += other.failures
        self.refused += other.refused
        self.notices += other.notices


@dataclass
class ListsState:
    """What the collector remembers between runs (and what digests read)."""

    logs: dict[str, LogPosition] = field(default_factory=dict)  # log path -> position
    hours: dict[int, dict[str, ListStats]] = field(default_factory=dict)  # hour start -> list -> stats
    subscribers: dict[str, int] = field(default_factory=dict)
    subscribers_at: float = 0.0
    losses: list[tuple[float, str]] = field(default_factory=list)  # (when, what) rotations that lost lines

    def to_json(self) -> dict:
        return {
            "version": 2,
            "logs": {path: pos.to_json() for path, pos in sorted(self.logs.items())},
            "hours": {str(h): {name: s.to_json() for name, s in lists.items()}
                      for h, lists in sorted(self.hours.items())},
            "subscribers": self.subscribers, "subscribers_at": self.subscribers_at,
            "losses": [list(loss) for loss in self.losses],
        }

    @classmethod
    def from_json(cls, raw: dict) -> ListsState:
        state = cls(
            {path: LogPosition.from_json(f) for path, f in raw.get("logs", {}).items()},
            {int(h): {name: ListStats.from_json(s) for name, s in lists.items()}
             for h, lists in raw.get("hours", {}).items()},
            {k: int(v) for k, v in raw.get("subscribers", {}).items()},
            float(raw.get("subscribers_at", 0.0)),
            [(float(at), str(what)) for at, what in raw.get("losses", [])])
        if raw.get("version", 1) == 1:  # per-day counts: each day's posts go to its first hour
            for day, lists in raw.get("days", {}).items():
                try:
                    hour = int(time.mktime(datetime.fromisoformat(day).timetuple()))
                except ValueError:
                    continue
                state.hours[hour] = {name: ListStats.from_json(s) for name, s in lists.items()}
        return state

    def by_day(self) -> dict[str, dict[str, ListStats]]:
        """Counts per local day "YYYY-MM-DD" per list."""
        out: dict[str, dict[str, ListStats]] = {}
        for hour, lists in self.hours.items():
            day = datetime.fromtimestamp(hour).date().isoformat()
            for name, stats in lists.items():
                out.setdefault(day, {}).setdefault(name, ListStats()).merge(stats)
        return out


def load_state(path: Path) -> ListsState:
    """The saved state; a missing or corrupt file starts afresh (a corrupt one is logged)."""
    try:
        return ListsState.from_json(json.loads(Path(path).read_text(encoding="utf-8")))
    except FileNotFoundError:
        return ListsState()
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.error("lists state %s unreadable (%s); counting starts afresh", path, exc)
        return ListsState()


def save_state(path: Path, state: ListsState) -> None:
    atomic_write(Path(path), json.dumps(state.to_json(), indent=1))


def activity(state: ListsState, start: float, end: float) -> dict[str, ListStats]:
    """Per-list totals over the hours that end within (start, end]: consecutive periods
    count every hour once, and an hour still under way waits for the next period."""
    out: dict[str, ListStats] = {}
    for hour, lists in state.hours.items():
        if start < hour + HOUR <= end:
            for name, stats in lists.items():
                out.setdefault(name, ListStats()).merge(stats)
    return out


def hour_of(when: datetime) -> int:
    """The start (epoch seconds) of the local hour holding a naive local time."""
    return int(time.mktime(when.replace(minute=0, second=0, microsecond=0).timetuple()))


# -- parsing --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Post:
    when: datetime  # local time, as Mailman logs it
    list: str
    sender: str
    size: int
    refused: int
    notice: bool  # one of Mailman's own mails (welcome, moderation, bounce notices)


def parse_line(line: str) -> Post | Literal[True] | None:
    """A Post for a post line of either Mailman; True for another line Mailman writes to its
    smtp log; None for a line in no known format."""
    m = MAILMAN2_POST.match(line) or MAILMAN3_POST.match(line)
    if not m:
        return True if MAILMAN3_OTHER.match(line) else None
    try:
        when = datetime.strptime(" ".join(m["ts"].split()), "%b %d %H:%M:%S %Y")
    except ValueError:
        return None
    sender = clean(m["sender"].lower(), 200)  # the log's text is the senders'
    name = clean(m["list"].lower(), 100)
    return Post(when, name, sender, int(m["size"]), int(m["refused"] or 0),
                bool(_NOTICE_SENDER.match(sender)))


def count_lines(data: bytes, state: ListsState, position: LogPosition) -> int:
    """Add every complete line of `data` to the state; returns how many were list posts."""
    posts = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        position.lines += 1
        parsed = parse_line(raw.decode("utf-8", "replace").rstrip("\r"))
        if parsed is None:
            continue
        position.parsed += 1
        if parsed is True:
            continue
        stats = state.hours.setdefault(hour_of(parsed.when), {}).setdefault(parsed.list,
                                                                            ListStats())
        if parsed.notice:
            stats.notices += 1
            continue
        stats.posts += 1
        stats.bytes += parsed.size
        if parsed.sender:
            stats.senders.add(parsed.sender)
        if parsed.refused:
            stats.failures += 1
            stats.refused += parsed.refused
        posts += 1
    return posts


def follow(path: Path, state: ListsState, now: float | None = None) -> tuple[int, list[str]]:
    """Read what is new in one log into the state; returns (posts counted, notes)."""
    when = time.time() if now is None else now
    position = state.logs.setdefault(str(path), LogPosition())
    result = follow_log(path, position, lambda data: count_lines(data, state, position), when,
                        lost="posts")
    if result.loss:
        state.losses.append((when, result.loss))
    return result.counted, result.notes


def prune(state: ListsState, keep_days: int, now: float) -> None:
    oldest = now - keep_days * 86400
    for hour in [h for h in state.hours if h < oldest]:
        del state.hours[hour]
    state.losses = [(at, what) for at, what in state.losses if at >= now - LOSS_SHOWN]


def configured_logs(cfg: ListsConfig) -> list[Path]:
    return [p for p in (cfg.post_log, cfg.smtp_log) if p is not None]


def read_logs(cfg: ListsConfig, state: ListsState, now: float) -> tuple[int, list[str]]:
    """Follow every configured log that exists; returns (posts counted, problems).
    OSErrors other than a missing file are problems, not exceptions."""
    counted, problems = 0, []
    logs = configured_logs(cfg)
    present = [p for p in logs if p.exists()]
    if logs and not present:
        problems.append("no Mailman log found (" + ", ".join(str(p) for p in logs) + "): set "
                        "[lists] post_log (Mailman 2) or smtp_log (Mailman 3)")
    for path in logs:
        if path not in present and str(path) not in state.logs:
            continue
        try:
            posts, notes = follow(path, state, now)
            counted += posts
            for note in notes:
                log.info("lists: %s: %s", path, note)
        except PermissionError:
            problems.append(f"cannot read {path}: permission denied (run the agent in the "
                            "list group)")
        except OSError as exc:
            problems.append(f"cannot read {path}: {exc.strerror or exc}")
        position = state.logs.get(str(path))
        if position and position.lines and not position.parsed:
            problems.append(f"none of the {position.lines} line(s) of {path} is in a format "
                            "Mailman writes (post log / smtp.log with the default templates)")
    return counted, problems


# -- subscribers ----------------------------------------------------------------------------


async def count_members(list_members: str, name: str, timeout: float) -> int:
    """Subscribers of one Mailman 2 list: `list_members NAME`, one address a line."""
    if not LIST_NAME.match(name):
        raise ValueError(f"refusing list name {name!r} (not a plain list name)")
    out = await run_command([list_members, name], timeout)
    return sum(1 for line in out.splitlines() if line.strip())


def mailman3_lists(url: str, user: str, password: str | None, timeout: float) -> dict[str, int]:
    """list address -> member count from Mailman 3 core's REST API (GET /3.1/lists). Keyed by
    the full address: users@lists.a and users@lists.b are two lists."""
    out: dict[str, int] = {}
    page = 1
    while True:
        request = urllib.request.Request(f"{url.rstrip('/')}/3.1/lists?count=100&page={page}")
        token = base64.b64encode(f"{user}:{password or ''}".encode()).decode("ascii")
        request.add_header("Authorization", f"Basic {token}")
        with urllib.request.urlopen(request, timeout=timeout) as response:
            body = json.loads(response.read(16 << 20))
        entries = body.get("entries", [])
        for entry in entries:
            name = str(entry.get("fqdn_listname") or "").lower()
            if not name and entry.get("list_name") and entry.get("mail_host"):
                name = f"{entry['list_name']}@{entry['mail_host']}".lower()
            if name:
                out[clean(name, 100)] = int(entry.get("member_count", 0))
        total = int(body.get("total_size", len(out)))
        if not entries or page * 100 >= total:
            return out
        page += 1


# -- the collector --------------------------------------------------------------------------


@dataclass
class ListsCollector(CountingCollector[ListsConfig]):
    name: str = "lists"

    async def collect(self) -> Batch:
        cfg = self.config
        now = self.clock()
        midnight = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0,
                                                       microsecond=0)
        batch = Batch()
        state = await asyncio.to_thread(load_state, self.state_path)
        counted, problems = await asyncio.to_thread(read_logs, cfg, state, now)
        prune(state, cfg.keep_days, now)
        problems += [what for _, what in state.losses]
        todays: dict[str, ListStats] = activity(state, midnight.timestamp(),
                                                (midnight + timedelta(days=1)).timestamp())

        names = sorted(set(cfg.lists) | set(todays))
        subscribers: dict[str, int] = {}
        list_members = cfg.list_members
        if list_members and os.access(list_members, os.X_OK):
            # Mailman 2 names only: a Mailman 3 list (list@domain) is counted by its REST API.
            wanted = [n for n in cfg.lists or sorted({n for lists in state.hours.values()
                                                      for n in lists}) if LIST_NAME.match(n)]
            semaphore = asyncio.Semaphore(4)

            async def one(name: str) -> None:
                async with semaphore:
                    try:
                        subscribers[name] = await count_members(list_members, name, cfg.timeout)
                    except (OSError, RuntimeError, ValueError) as exc:
                        shown = clean(name, 100)  # names in the post log are the log's
                        batch.add(CheckResult(TARGET, f"list {shown}", State.UNKNOWN,
                                              f"cannot count the subscribers of {shown}: "
                                              f"{clean(exc, 200)}", timestamp=now))
            await asyncio.gather(*(one(n) for n in wanted))
        elif cfg.list_members and cfg.lists:
            problems.append(f"{cfg.list_members} not found or not executable: no subscriber counts")
        if cfg.mailman3_url:
            try:
                subscribers.update(await asyncio.to_thread(
                    mailman3_lists, cfg.mailman3_url, cfg.mailman3_user, cfg.mailman3_password,
                    cfg.timeout))
            except (OSError, ValueError) as exc:
                problems.append(f"Mailman 3 REST API {cfg.mailman3_url}: {clean(exc, 200)}")
        if subscribers:
            state.subscribers.update(subscribers)
            state.subscribers_at = now
        problems += await self.save(save_state, state)

        for name in sorted(set(names) | set(subscribers)):
            s = todays.get(name, ListStats())
            for metric, value, unit in (("posts_today", s.posts, ""), ("bytes_today", s.bytes, "B"),
                                        ("senders_today", len(s.senders), ""),
                                        ("failures_today", s.failures, "")):
                batch.add(Measurement(TARGET, name, metric, value, unit=unit, timestamp=now,
                                      minimum=0))
            if name in subscribers:
                batch.add(Measurement(TARGET, name, "subscribers", subscribers[name], timestamp=now,
                                      minimum=0))
        total = sum(s.posts for s in todays.values())
        failures = sum(s.failures for s in todays.values())
        summary = (f"{total} post(s) to {len(todays)} list(s) today"
                   + (f", {failures} with refused recipients" if failures else "")
                   + f" ({counted} new in the log)")
        batch.add(self.own_check(TARGET, summary, problems, now))
        return batch


def build(config: Config) -> list[Collector]:
    return build_counter(ListsCollector, config.lists, config, "lists.json")
