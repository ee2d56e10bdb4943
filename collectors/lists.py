"""Mailing-list activity: Mailman 2's post log, subscriber counts, optionally Mailman 3.

The post log (`/var/lib/mailman/logs/post`) gets one line per delivered post:

    Nov 23 06:25:01 2026 (1234) post to announce from alice@example.net, size=2345, message-id=<a@b>, success
    Nov 23 06:30:12 2026 (1234) post to users from bob@example.org, size=812, message-id=<c@d>, 2 failures

(Mailman 2.2-style logs put the message-id first; both are understood.) The log is read
incrementally: the state file (data_dir/state/lists.json) remembers the file's inode, the byte
offset read so far and a fingerprint of its first bytes, and it is written atomically together
with the counts, so a post is counted once whatever happens:
- rotation by rename (logrotate's default): the rest of the old file (found next to it by its
  inode, e.g. post.1) is read first, then the new file from the start;
- truncation (copytruncate): the rest of the copy (post.1, recognised by its first bytes) is
  read from the old offset, then the truncated file from the start;
- a half-written last line waits for the next run.
Counts are kept per list per day (the log's own dates): posts, bytes, distinct senders, posts
with refused recipients (failures) and refused recipients, for `keep_days` days.

Naming contract: target "lists", instance = list name; metrics posts_today, bytes_today,
senders_today, failures_today, subscribers.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import logging
import os
import re
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from pathlib import Path

from monitor.config import Config, ListsConfig
from monitor.files import atomic_write
from monitor.model import Batch, CheckResult, Collector, Measurement, State
from monitor.process import run_command
from monitor.text import clean

log = logging.getLogger(__name__)

TARGET = "lists"
LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}$")
_HEAD = 256
_READ_LIMIT = 64 << 20  # per run; the rest is read next time

POST_LINE = re.compile(
    r"^(?P<ts>[A-Z][a-z]{2} [ \d]?\d \d\d:\d\d:\d\d \d{4}) \(\d+\) "
    r"(?:(?P<mid1>\S+) )?post to (?P<list>\S+) from (?P<sender>.*?), size=(?P<size>\d+), "
    r"(?:message-id=(?P<mid>.*), )?(?:(?P<success>success)|(?P<refused>\d+) failures?)\s*$"
)


@dataclass
class DayStats:
    posts: int = 0
    bytes: int = 0
    senders: set[str] = field(default_factory=set)
    failures: int = 0
    refused: int = 0

    def to_json(self) -> dict:
        return {"posts": self.posts, "bytes": self.bytes, "senders": sorted(self.senders),
                "failures": self.failures, "refused": self.refused}

    @classmethod
    def from_json(cls, d: dict) -> DayStats:
        return cls(int(d.get("posts", 0)), int(d.get("bytes", 0)), set(d.get("senders", [])),
                   int(d.get("failures", 0)), int(d.get("refused", 0)))

    def merge(self, other: DayStats) -> None:
        self.posts += other.posts
        self.bytes += other.bytes
        self.senders |= other.senders
        self.failures += other.failures
        self.refused += other.refused


@dataclass
class ListsState:
    """What the collector remembers between runs (and what digests read)."""

    inode: int | None = None
    device: int | None = None
    offset: int = 0
    head_len: int = 0
    head_sha: str = ""
    days: dict[str, dict[str, DayStats]] = field(default_factory=dict)  # day -> list -> stats
    subscribers: dict[str, int] = field(default_factory=dict)
    subscribers_at: float = 0.0
    unparsed: int = 0

    def to_json(self) -> dict:
        return {
            "version": 1,
            "file": {"inode": self.inode, "device": self.device, "offset": self.offset,
                     "head_len": self.head_len, "head_sha": self.head_sha},
            "days": {d: {name: s.to_json() for name, s in lists.items()}
                     for d, lists in sorted(self.days.items())},
            "subscribers": self.subscribers, "subscribers_at": self.subscribers_at,
            "unparsed": self.unparsed,
        }

    @classmethod
    def from_json(cls, raw: dict) -> ListsState:
        f = raw.get("file", {})
        return cls(
            f.get("inode"), f.get("device"), int(f.get("offset", 0)), int(f.get("head_len", 0)),
            f.get("head_sha", ""),
            {d: {name: DayStats.from_json(s) for name, s in lists.items()}
             for d, lists in raw.get("days", {}).items()},
            {k: int(v) for k, v in raw.get("subscribers", {}).items()},
            float(raw.get("subscribers_at", 0.0)), int(raw.get("unparsed", 0)))


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


def activity(state: ListsState, first_day: date, last_day: date) -> dict[str, DayStats]:
    """Per-list totals over the days first_day..last_day (inclusive); for digests."""
    out: dict[str, DayStats] = {}
    for day, lists in state.days.items():
        try:
            d = date.fromisoformat(day)
        except ValueError:
            continue
        if first_day <= d <= last_day:
            for name, stats in lists.items():
                out.setdefault(name, DayStats()).merge(stats)
    return out


# -- parsing --------------------------------------------------------------------------------


def parse_line(line: str) -> tuple[str, str, str, int, int] | None:
    """(day "YYYY-MM-DD", list, sender, size, refused) for a post line, else None."""
    m = POST_LINE.match(line)
    if not m:
        return None
    try:
        when = datetime.strptime(" ".join(m["ts"].split()), "%b %d %H:%M:%S %Y")
    except ValueError:
        return None
    refused = int(m["refused"]) if m["refused"] else 0
    return when.date().isoformat(), m["list"].lower(), m["sender"].strip().lower(), int(m["size"]), refused


def count_lines(data: bytes, state: ListsState) -> int:
    """Add every complete post line of `data` to the state; returns how many were posts."""
    posts = 0
    for raw in data.split(b"\n"):
        if not raw.strip():
            continue
        parsed = parse_line(raw.decode("utf-8", "replace").rstrip("\r"))
        if parsed is None:
            if b" post to " in raw:
                state.unparsed += 1
            continue
        day, name, sender, size, refused = parsed
        stats = state.days.setdefault(day, {}).setdefault(name, DayStats())
        stats.posts += 1
        stats.bytes += size
        if sender:
            stats.senders.add(sender)
        if refused:
            stats.failures += 1
            stats.refused += refused
        posts += 1
    return posts


def _head(path: Path, length: int) -> bytes:
    with open(path, "rb") as handle:
        return handle.read(length)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_complete(path: Path, offset: int) -> tuple[bytes, int]:
    """Complete lines from offset on (at most _READ_LIMIT bytes); returns (data, new offset)."""
    with open(path, "rb") as handle:
        handle.seek(offset)
        data = handle.read(_READ_LIMIT)
    end = data.rfind(b"\n")
    if end < 0:
        return b"", offset
    return data[: end + 1], offset + end + 1


def _rotated_candidates(path: Path) -> list[Path]:
    out = []
    for suffix in (".1", ".0", "-1"):
        out.append(path.with_name(path.name + suffix))
    try:
        # dateext rotation: post-20261123
        out += sorted((p for p in path.parent.iterdir()
                       if p.name.startswith(path.name + "-") and not p.name.endswith(".gz")),
                      reverse=True)
    except OSError:
        pass
    return out


def _same_file(state: ListsState, st: os.stat_result) -> bool:
    return st.st_ino == state.inode and (state.device is None or st.st_dev == state.device)


def _head_matches(path: Path, state: ListsState) -> bool:
    if not state.head_len:
        return True
    try:
        return _sha(_head(path, state.head_len)) == state.head_sha
    except OSError:
        return False


def follow(path: Path, state: ListsState) -> tuple[int, list[str]]:
    """Read what is new in the post log into the state; returns (posts counted, notes)."""
    notes: list[str] = []
    posts = 0
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if state.inode is not None:
        rotated = st is None or not _same_file(state, st)
        # Same inode but shorter, or other first bytes: truncated (and maybe written again).
        truncated = not rotated and st is not None and (
            st.st_size < state.offset or not _head_matches(path, state))
        if rotated or truncated:
            # Finish the previous file first: renamed (same inode) or copied (same first bytes).
            old = None
            for candidate in _rotated_candidates(path):
                try:
                    cst = os.stat(candidate)
                except OSError:
                    continue
                # Renamed: same inode. Copied (copytruncate): same first bytes, at least as long.
                if _same_file(state, cst) or (cst.st_size >= state.offset
                                              and _head_matches(candidate, state)):
                    old = candidate
                    break
            if old is not None:
                data, _ = _read_complete(old, state.offset)
                posts += count_lines(data, state)
                notes.append(f"{'rotated' if rotated else 'truncated'}; read the rest of {old.name}")
            else:
                notes.append(f"log {'rotated' if rotated else 'truncated'} and the previous file "
                             "was not found next to it; posts logged just before may be missing")
            state.inode = None
            state.offset = 0
            state.head_len = 0
    if st is None:
        return posts, notes
    if state.inode is None:
        state.inode, state.device, state.offset = st.st_ino, st.st_dev, 0
    data, state.offset = _read_complete(path, state.offset)
    posts += count_lines(data, state)
    head = _head(path, _HEAD)
    state.head_len, state.head_sha = len(head), _sha(head)
    return posts, notes


def prune(state: ListsState, keep_days: int, today: date) -> None:
    oldest = (today - timedelta(days=keep_days)).isoformat()
    for day in [d for d in state.days if d < oldest]:
        del state.days[day]


# -- subscribers ----------------------------------------------------------------------------


async def count_members(list_members: str, name: str, timeout: float) -> int:
    """Subscribers of one Mailman 2 list: `list_members NAME`, one address a line."""
    if not LIST_NAME.match(name):
        raise ValueError(f"refusing list name {name!r} (not a plain list name)")
    out = await run_command([list_members, name], timeout)
    return sum(1 for line in out.splitlines() if line.strip())


def mailman3_lists(url: str, user: str, password: str | None, timeout: float) -> dict[str, int]:
    """list name -> member count from Mailman 3 core's REST API (GET /3.1/lists)."""
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
            name = str(entry.get("list_name") or entry.get("fqdn_listname", "")).lower()
            if name:
                out[name] = int(entry.get("member_count", 0))
        total = int(body.get("total_size", len(out)))
        if not entries or page * 100 >= total:
            return out
        page += 1


# -- the collector --------------------------------------------------------------------------


@dataclass
class ListsCollector:
    config: ListsConfig
    interval: float
    state_path: Path
    clock: Callable[[], float] = time.time
    name: str = "lists"

    async def collect(self) -> Batch:
        cfg = self.config
        now = self.clock()
        today = datetime.fromtimestamp(now).date()
        batch = Batch()
        state = await asyncio.to_thread(load_state, self.state_path)
        problems: list[str] = []
        counted = 0
        if cfg.post_log is not None:
            try:
                counted, notes = await asyncio.to_thread(follow, cfg.post_log, state)
                for note in notes:
                    log.info("lists: %s: %s", cfg.post_log, note)
                if not cfg.post_log.exists():
                    problems.append(f"post log {cfg.post_log} does not exist (is Mailman 2 "
                                    "installed? set [lists] post_log, or leave it out)")
            except PermissionError:
                problems.append(f"cannot read {cfg.post_log}: permission denied (run the agent "
                                "in the list group)")
            except OSError as exc:
                problems.append(f"cannot read {cfg.post_log}: {exc.strerror or exc}")
        prune(state, cfg.keep_days, today)

        names = sorted(set(cfg.lists) | set(state.days.get(today.isoformat(), {})))
        subscribers: dict[str, int] = {}
        if cfg.list_members and os.access(cfg.list_members, os.X_OK):
            wanted = cfg.lists or sorted({n for lists in state.days.values() for n in lists})
            semaphore = asyncio.Semaphore(4)

            async def one(name: str) -> None:
                async with semaphore:
                    try:
                        subscribers[name] = await count_members(cfg.list_members, name, cfg.timeout)
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
                problems.append(f"Mailman 3 REST API {cfg.mailman3_url}: {exc}")
        if subscribers:
            state.subscribers.update(subscribers)
            state.subscribers_at = now
        try:
            await asyncio.to_thread(save_state, self.state_path, state)
        except OSError as exc:
            # The counts stay in memory only: the next run reads the same lines again.
            problems.append(f"cannot save {self.state_path}: {exc.strerror or exc}")

        todays = state.days.get(today.isoformat(), {})
        for name in sorted(set(names) | set(subscribers)):
            s = todays.get(name, DayStats())
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
        message = (f"{total} post(s) to {len(todays)} list(s) today"
                   + (f", {failures} with refused recipients" if failures else "")
                   + f" ({counted} new in the log)")
        if problems:
            message = "; ".join(problems) + "; " + message
        batch.add(CheckResult(TARGET, "lists", State.WARNING if problems else State.OK, message,
                              timestamp=now))
        return batch


def build(config: Config) -> list[Collector]:
    cfg = config.lists
    if not cfg.enabled:
        return []
    return [ListsCollector(cfg, cfg.interval or config.agent.interval,
                           config.state_dir / "lists.json")]
