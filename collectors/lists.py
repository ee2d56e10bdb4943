"""Mailing-list activity from Mailman 2's post log, and subscriber counts.

Target "lists", instance the list name; metrics posts_today, post_bytes_today, senders_today,
failures_today (GAUGE, the current local day) and subscribers. Per-day totals of the last
`KEEP_DAYS` days are kept in a JSON state file (data_dir/state/lists-<log>.json) that digests
read (`load_activity`).

The log is read incrementally: the state file holds the log's inode and the offset read so
far, written together with the counts (atomically), so a crash never counts a line twice.
A new inode means the log was rotated: the rest of the old file is read from its rotated name
(post.1) if it is there, then the new file from the start. A file shorter than the offset was
truncated (copytruncate): it is read from the start.

Mailman 3: subscriber counts from its REST API (`mailman3_url`); its post activity is not read
(Mailman 3 keeps no post log of this kind).
"""

from __future__ import annotations

import asyncio
import datetime
import hashlib
import json
import logging
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from monitor.config import Config, MailingList
from monitor.model import Batch, CheckResult, Collector, Measurement, State

log = logging.getLogger(__name__)

TARGET = "lists"
KEEP_DAYS = 45
LIST_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")
# Mailman 2.1 SMTP_LOG_* formats (Defaults.py), e.g.
#   Nov 23 06:25:01 2026 (1234) post to announce from alice@example.net, size=2345,
#   message-id=<x@y>, success        (or: "..., 2 failures")
POST_LINE = re.compile(
    r"^(?P<when>[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}|"
    r"[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}) \(\d+\) "
    r"post to (?P<list>\S+) from (?P<sender>.*?), size=(?P<size>\d+)"
    r"(?:, message-id=(?P<msgid>\S*))?, "
    r"(?:(?P<success>success)|(?P<failures>\d+) failures?)\s*$")


def _day(when: str) -> str | None:
    for fmt in ("%b %d %H:%M:%S %Y", "%a %b %d %H:%M:%S %Y"):
        try:
            return datetime.datetime.strptime(" ".join(when.split()), fmt).date().isoformat()
        except ValueError:
            continue
    return None


def state_path(state_dir: Path, post_log: Path) -> Path:
    digest = hashlib.sha1(str(post_log).encode()).hexdigest()[:10]
    return Path(state_dir) / f"lists-{digest}.json"


class PostLog:
    """Incremental reader of one post log; `update()` returns the number of new posts."""

    def __init__(self, path: Path, state_file: Path) -> None:
        self.path = Path(path)
        self.state_file = Path(state_file)
        self.state = self._load()

    def _load(self) -> dict:
        try:
            data = json.loads(self.state_file.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "days" in data:
                return data
        except FileNotFoundError:
            pass
        except (OSError, ValueError) as exc:
            log.error("list state %s unreadable (%s); counting starts afresh", self.state_file, exc)
        return {"log": str(self.path), "inode": None, "offset": 0, "days": {}}

    def _save(self) -> None:
        from monitor.files import atomic_write

        atomic_write(self.state_file, json.dumps(self.state, sort_keys=True))

    @staticmethod
    def _tail(path: Path, offset: int) -> str:
        """The last bytes read so far: if they changed, the file is not the one we read."""
        with open(path, "rb") as handle:
            handle.seek(max(0, offset - 64))
            return handle.read(min(offset, 64)).hex()

    def _read(self, path: Path, offset: int) -> tuple[int, int]:
        """Count complete lines from offset; returns (new offset, posts counted)."""
        posts = 0
        with open(path, "rb") as handle:
            handle.seek(offset)
            data = handle.read()
        end = data.rfind(b"\n") + 1  # a half-written last line waits for the next run
        for raw in data[:end].splitlines():
            posts += self._count(raw.decode("utf-8", "replace"))
        return offset + end, posts

    def _count(self, line: str) -> int:
        m = POST_LINE.match(line)
        if not m:
            return 0
        day = _day(m["when"])
        if day is None:
            return 0
        entry = self.state["days"].setdefault(day, {}).setdefault(
            m["list"].lower(), {"posts": 0, "bytes": 0, "senders": [], "failures": 0})
        entry["posts"] += 1
        entry["bytes"] += int(m["size"])
        sender = m["sender"].strip().lower()
        if sender not in entry["senders"]:
            entry["senders"].append(sender)
        if m["failures"] is not None:
            entry["failures"] += 1
        return 1

    def update(self) -> int:
        """Read what was appended since the last run; raises OSError if the log is unreadable."""
        st = os.stat(self.path)
        posts = 0
        inode, offset = self.state.get("inode"), int(self.state.get("offset", 0))
        if inode is not None and inode != st.st_ino:
            # Rotated: finish the old file under its rotated name, if it is still there.
            for name in (self.path.name + ".1", self.path.name + ".0"):
                old = self.path.with_name(name)
                try:
                    if os.stat(old).st_ino == inode:
                        posts += self._read(old, offset)[1]
                        break
                except OSError:
                    continue
            offset = 0
        elif st.st_size < offset or self._tail(self.path, offset) != self.state.get("tail"):
            offset = 0  # truncated in place (copytruncate), perhaps regrown past the offset
        offset, new = self._read(self.path, offset)
        posts += new
        self.state.update(inode=st.st_ino, offset=offset, tail=self._tail(self.path, offset))
        cutoff = (datetime.date.today() - datetime.timedelta(days=KEEP_DAYS)).isoformat()
        self.state["days"] = {d: v for d, v in self.state["days"].items() if d >= cutoff}
        self._save()
        return posts


def load_activity(state_dir: Path) -> dict[str, dict[str, dict]]:
    """{day: {list: {"posts", "bytes", "senders" (count), "failures"}}} of every post log."""
    out: dict[str, dict[str, dict]] = {}
    for path in sorted(Path(state_dir).glob("lists-*.json")):
        try:
            days = json.loads(path.read_text(encoding="utf-8")).get("days", {})
        except (OSError, ValueError):
            continue
        for day, lists in days.items():
            for name, v in lists.items():
                cur = out.setdefault(day, {}).setdefault(
                    name, {"posts": 0, "bytes": 0, "senders": 0, "failures": 0})
                cur["posts"] += v["posts"]
                cur["bytes"] += v["bytes"]
                cur["senders"] += len(v["senders"])
                cur["failures"] += v["failures"]
    return out


async def count_members(list_members: str, name: str, timeout: float = 60.0) -> int:
    """Subscribers of a Mailman 2 list through `list_members NAME` (one address a line)."""
    if not LIST_NAME.match(name):
        raise ValueError(f"refusing to pass list name {name!r} to list_members")
    proc = await asyncio.create_subprocess_exec(
        list_members, name, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    if proc.returncode != 0:
        raise RuntimeError(f"{list_members} {name} exited {proc.returncode}: "
                           f"{err.decode('utf-8', 'replace').strip()[:200]}")
    return sum(1 for line in out.splitlines() if line.strip())


def mailman3_members(url: str, user: str, password: str | None,
                     timeout: float = 30.0) -> dict[str, int]:
    """{list name: member_count} of every list from Mailman 3's REST API (GET <url>/lists)."""
    import base64
    import urllib.request

    request = urllib.request.Request(url.rstrip("/") + "/lists?count=1000&page=1")
    if password is not None:
        token = base64.b64encode(f"{user}:{password}".encode()).decode()
        request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=timeout) as response:
        data = json.loads(response.read())
    out = {}
    for entry in data.get("entries", []):
        name = str(entry.get("list_name") or entry.get("fqdn_listname", "").split("@")[0])
        if name and "member_count" in entry:
            out[name.lower()] = int(entry["member_count"])
    return out


class ListsCollector:
    """All [[lists]] entries that share one post log."""

    def __init__(self, post_log: Path, lists: list[MailingList], state_dir: Path, *,
                 name: str = "lists", clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.post_log = post_log
        self.lists = lists
        self.interval = min(entry.interval for entry in lists)
        self.reader = PostLog(post_log, state_path(state_dir, post_log))
        self.clock = clock

    def _wanted(self, name: str) -> bool:
        return any(entry.name == "*" or entry.name.lower() == name for entry in self.lists)

    async def collect(self) -> Batch:
        now = self.clock()
        batch = Batch()
        try:
            new = await asyncio.to_thread(self.reader.update)
        except FileNotFoundError:
            new = 0  # Mailman 3 only: there is no post log to read
            if not any(e.mailman3_url for e in self.lists):
                batch.add(CheckResult(TARGET, "lists", State.UNKNOWN,
                                      f"the Mailman post log {self.post_log} does not exist; "
                                      "check [[lists]] post_log", timestamp=now))
                return batch
        except OSError as exc:
            batch.add(CheckResult(TARGET, "lists", State.UNKNOWN,
                                  f"cannot read the Mailman post log {self.post_log}: "
                                  f"{exc.strerror or exc}; check [[lists]] post_log", timestamp=now))
            return batch
        today = datetime.date.fromtimestamp(now).isoformat()
        day = self.reader.state["days"].get(today, {})
        names = {e.name.lower() for e in self.lists if e.name != "*"}
        names |= {n for d in self.reader.state["days"].values() for n in d if self._wanted(n)}
        for name in sorted(names):
            v = day.get(name, {"posts": 0, "bytes": 0, "senders": [], "failures": 0})
            for metric, value, unit in (("posts_today", v["posts"], ""),
                                        ("post_bytes_today", v["bytes"], "B"),
                                        ("senders_today", len(v["senders"]), ""),
                                        ("failures_today", v["failures"], "")):
                batch.add(Measurement(TARGET, name, metric, value, unit=unit, timestamp=now))
        problems = []
        sem = asyncio.Semaphore(4)

        async def members(entry: MailingList, name: str) -> None:
            async with sem:
                try:
                    count = await count_members(entry.list_members, name)
                except (OSError, RuntimeError, ValueError, TimeoutError) as exc:
                    problems.append(f"{name}: subscribers unknown ({exc})")
                    return
            batch.add(Measurement(TARGET, name, "subscribers", count, timestamp=now))

        jobs = []
        for entry in self.lists:
            if not entry.mailman3_url:
                continue
            try:
                counts = await asyncio.to_thread(mailman3_members, entry.mailman3_url,
                                                 entry.mailman3_user, entry.mailman3_password)
            except (OSError, ValueError) as exc:
                problems.append(f"Mailman 3 REST API {entry.mailman3_url}: {exc}")
                continue
            for name, count in sorted(counts.items()):
                if self._wanted(name):
                    batch.add(Measurement(TARGET, name, "subscribers", count, timestamp=now))
                    names.add(name)
        for name in sorted(names):
            entry = next((e for e in self.lists if e.name.lower() == name), None) \
                or next(e for e in self.lists if e.name == "*")
            if (entry.list_members and not entry.mailman3_url
                    and os.access(entry.list_members, os.X_OK)):
                jobs.append(members(entry, name))
        await asyncio.gather(*jobs)
        message = f"{len(names)} list(s); {new} new post(s) in {self.post_log}"
        if problems:
            message += "; " + "; ".join(problems[:5])
        batch.add(CheckResult(TARGET, "lists", State.WARNING if problems else State.OK, message,
                              timestamp=now))
        return batch


def build(config: Config) -> list[Collector]:
    by_log: dict[Path, list[MailingList]] = {}
    for entry in config.lists:
        by_log.setdefault(entry.post_log, []).append(entry)
    return [ListsCollector(path, entries, config.state_dir,
                           name="lists" if i == 0 else f"lists {path}")
            for i, (path, entries) in enumerate(by_log.items())]
