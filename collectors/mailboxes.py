"""Mailbox sizes: Maildir trees (and mbox files), per mailbox and per domain.

Target "mailboxes"; instances "user@domain" (the `top` biggest mailboxes) and "domain:<domain>"
(every domain's total); metrics size_bytes and messages. One check, "mailboxes", says how many
mailboxes were scanned and which could not be read.

Speed matters on a spool of millions of files, so a mailbox costs as few system calls as
possible: Dovecot's `maildirsize` (when present and fresh) answers without listing anything;
otherwise the directories are listed with os.scandir and the size is read from the `S=` part of
each Maildir file name (Dovecot and Courier write it), so only files without one are stat()ed.
A mailbox that vanishes or turns unreadable during the scan is an error for that mailbox only.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from monitor.config import Config, MailboxesConfig
from monitor.model import Batch, CheckResult, Collector, Measurement, State

TARGET = "mailboxes"
# Dovecot recalculates maildirsize once it grows past this; a bigger file is stale by definition.
MAILDIRSIZE_LIMIT = 5120


@dataclass
class MailboxUsage:
    user: str
    domain: str
    path: Path
    size_bytes: int = 0
    messages: int = 0
    source: str = "scan"  # "maildirsize", "scan" or "mbox"
    error: str | None = None

    @property
    def address(self) -> str:
        return f"{self.user}@{self.domain}"


@dataclass
class ScanResult:
    mailboxes: list[MailboxUsage] = field(default_factory=list)
    root_error: str | None = None

    @property
    def errors(self) -> list[MailboxUsage]:
        return [m for m in self.mailboxes if m.error]

    def domains(self) -> dict[str, tuple[int, int]]:
        out: dict[str, tuple[int, int]] = {}
        for m in self.mailboxes:
            if m.error:
                continue
            size, count = out.get(m.domain, (0, 0))
            out[m.domain] = (size + m.size_bytes, count + m.messages)
        return out

    def top(self, n: int) -> list[MailboxUsage]:
        ok = [m for m in self.mailboxes if not m.error]
        return sorted(ok, key=lambda m: (-m.size_bytes, m.address))[:n]


def find_mailboxes(root: Path, layout: str, domain: str = "") -> Iterator[tuple[str, str, Path]]:
    """(user, domain, path) for every directory matching the layout under root."""
    parts = layout.split("/")

    def walk(base: Path, i: int, found: dict[str, str]) -> Iterator[tuple[str, str, Path]]:
        if i == len(parts):
            yield found["user"], found.get("domain", domain), base
            return
        part = parts[i]
        if part in ("{user}", "{domain}"):
            try:
                entries = sorted(os.scandir(base), key=lambda e: e.name)
            except OSError:
                if i == 0:
                    raise
                return
            for entry in entries:
                if entry.name.startswith(".") or not entry.is_dir():
                    continue
                yield from walk(Path(entry.path), i + 1, {**found, part[1:-1]: entry.name})
        else:
            yield from walk(base / part, i + 1, found)

    yield from walk(root, 0, {})


def read_maildirsize(path: Path, max_age: float, now: float) -> tuple[int, int] | None:
    """(bytes, messages) from Dovecot/Courier's maildirsize, or None when absent or stale."""
    try:
        with open(path, "rb") as handle:
            st = os.fstat(handle.fileno())
            if st.st_size > MAILDIRSIZE_LIMIT or now - st.st_mtime > max_age:
                return None
            lines = handle.read().decode("ascii", "replace").splitlines()
    except OSError:
        return None
    size = count = 0
    # Line 1 is the quota definition; every other line is a "bytes messages" delta.
    for line in lines[1:]:
        fields = line.split()
        if len(fields) < 2:
            continue
        try:
            size += int(fields[0])
            count += int(fields[1])
        except ValueError:
            return None
    if size < 0 or count < 0:
        return None
    return size, count


def _size_from_name(name: str) -> int | None:
    """The S=<bytes> field of a Maildir file name ("1700000000.M1P2.host,S=2345,W=2400:2,S")."""
    base = name.split(":", 1)[0]
    at = base.find(",S=")
    if at < 0:
        return None
    digits = base[at + 3:].split(",", 1)[0]
    return int(digits) if digits.isdigit() else None


# The S= field (flags after ":2," are letters, so no "=" can match there).
_S_FIELD = re.compile(r",S=(\d+)")


def _folder_usage(directory: str) -> tuple[int, int]:
    """(bytes, messages) of one cur/ or new/ directory.

    The names are parsed all at once (one regex over the joined listing, in C) rather than one
    by one: on a million-message spool the per-name Python work, not the disk, is the cost.
    """
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return 0, 0
    if not names:
        return 0, 0
    joined = "\n".join(names)
    if joined[0] == "." or "\n." in joined:  # rare: dot files are not messages
        names = [n for n in names if n[0] != "."]
        joined = "\n".join(names)
    sizes = _S_FIELD.findall(joined)
    size = sum(map(int, sizes))
    if len(sizes) != len(names):
        # Names without an S= field (delivered by another MDA): stat those.
        size = 0 if len(sizes) > len(names) else size
        for name in names if len(sizes) > len(names) else [n for n in names if ",S=" not in n]:
            s = _size_from_name(name)
            if s is None:
                try:
                    s = os.lstat(os.path.join(directory, name)).st_size
                except FileNotFoundError:
                    continue  # expunged between listing and stat
            size += s
    return size, len(names)


def scan_maildir(path: Path) -> tuple[int, int]:
    """(bytes, messages) of a Maildir (INBOX cur/new plus Maildir++ ".Folder" subfolders).

    Raises OSError when the mailbox itself cannot be read; a folder vanishing mid-scan (a user
    deleting it) is skipped.
    """
    size = count = 0
    base = str(path)
    folders = [base]
    for name in os.listdir(base):
        if name[0] == "." and name not in (".", "..") and os.path.isdir(os.path.join(base, name)):
            folders.append(os.path.join(base, name))
    for folder in folders:
        for sub in ("cur", "new"):
            s, c = _folder_usage(os.path.join(folder, sub))
            size += s
            count += c
    return size, count


def scan_mbox(path: Path) -> tuple[int, int]:
    """(bytes, messages) of an mbox file: messages start with a "From " line."""
    count = 0
    size = 0
    tail = b"\n"
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            size += len(chunk)
            data = tail + chunk
            count += data.count(b"\nFrom ")
            tail = data[-5:]
    return size, count


def measure(mailbox: MailboxUsage, max_age: float, now: float) -> MailboxUsage:
    try:
        if mailbox.source == "mbox":
            mailbox.size_bytes, mailbox.messages = scan_mbox(mailbox.path)
            return mailbox
        quick = read_maildirsize(mailbox.path / "maildirsize", max_age, now)
        if quick is not None:
            mailbox.size_bytes, mailbox.messages = quick
            mailbox.source = "maildirsize"
        else:
            mailbox.size_bytes, mailbox.messages = scan_maildir(mailbox.path)
    except OSError as exc:
        mailbox.error = exc.strerror or str(exc)
    return mailbox


def scan(settings: MailboxesConfig, now: float | None = None) -> ScanResult:
    """Every mailbox under the configured root (and mbox directory), measured by `workers`
    threads (os.scandir releases the GIL, so listing directories runs in parallel)."""
    now = time.time() if now is None else now
    result = ScanResult()
    todo: list[MailboxUsage] = []
    try:
        for user, domain, path in find_mailboxes(settings.root, settings.layout, settings.domain):
            todo.append(MailboxUsage(user, domain, path))
    except OSError as exc:
        result.root_error = f"cannot list {settings.root}: {exc.strerror or exc}"
    if settings.mbox_dir is not None:
        try:
            for entry in sorted(os.scandir(settings.mbox_dir), key=lambda e: e.name):
                if not entry.name.startswith(".") and entry.is_file(follow_symlinks=False):
                    todo.append(MailboxUsage(entry.name, settings.domain or "localhost",
                                             Path(entry.path), source="mbox"))
        except OSError as exc:
            result.root_error = f"cannot list {settings.mbox_dir}: {exc.strerror or exc}"
    with ThreadPoolExecutor(max_workers=settings.workers) as pool:
        result.mailboxes = list(pool.map(
            lambda m: measure(m, settings.maildirsize_max_age, now), todo, chunksize=16))
    return result


def postqueue_size(argv: list[str], timeout: float = 30.0) -> tuple[int, int]:
    """(messages, bytes) in the Postfix queue from `postqueue -j` (one JSON object a line)."""
    out = subprocess.run(argv, capture_output=True, timeout=timeout, check=True).stdout
    count = size = 0
    for line in out.splitlines():
        if line.strip():
            item = json.loads(line)
            count += 1
            size += int(item.get("message_size", 0))
    return count, size


def snapshot_path(state_dir: Path) -> Path:
    return Path(state_dir) / "mailboxes.json"


def save_snapshot(path: Path, result: ScanResult, now: float) -> None:
    """Every mailbox of the last scan (the RRD files keep only the top N), for digests."""
    from monitor.files import atomic_write

    data = {"at": now,
            "mailboxes": [[m.address, m.size_bytes, m.messages] for m in result.mailboxes
                          if not m.error],
            "domains": {d: list(v) for d, v in result.domains().items()},
            "errors": {m.address: m.error for m in result.errors}}
    atomic_write(path, json.dumps(data))


def load_snapshot(state_dir: Path) -> dict | None:
    try:
        return json.loads(snapshot_path(state_dir).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


class MailboxesCollector:
    def __init__(self, settings: MailboxesConfig, *, state_dir: Path | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.time) -> None:
        self.name = "mailboxes"
        self.settings = settings
        self.state_dir = state_dir
        self.interval = interval or settings.interval
        self.clock = clock

    async def collect(self) -> Batch:
        now = self.clock()
        result = await asyncio.to_thread(scan, self.settings, now)
        batch = Batch()

        def gauge(instance: str, metric: str, value: float, unit: str) -> None:
            batch.add(Measurement(TARGET, instance, metric, value, unit=unit, timestamp=now))

        for m in result.top(self.settings.top):
            gauge(m.address, "size_bytes", m.size_bytes, "B")
            gauge(m.address, "messages", m.messages, "")
        for domain, (size, count) in sorted(result.domains().items()):
            gauge(f"domain:{domain}", "size_bytes", size, "B")
            gauge(f"domain:{domain}", "messages", count, "")
        if self.state_dir is not None and not result.root_error:
            try:
                await asyncio.to_thread(save_snapshot, snapshot_path(self.state_dir), result, now)
            except OSError as exc:
                batch.add(CheckResult(TARGET, "mailboxes snapshot", State.WARNING,
                                      f"cannot save {snapshot_path(self.state_dir)}: {exc}",
                                      timestamp=now))
        errors = result.errors
        total = len(result.mailboxes)
        if result.root_error:
            state, message = State.CRITICAL, (f"{result.root_error}; check [mailboxes] root "
                                              "and the agent's read permission")
        elif errors:
            shown = "; ".join(f"{m.address}: {m.error}" for m in errors[:5])
            more = f" (and {len(errors) - 5} more)" if len(errors) > 5 else ""
            state, message = State.WARNING, (f"{len(errors)} of {total} mailboxes could not be "
                                             f"read: {shown}{more}")
        else:
            fast = sum(1 for m in result.mailboxes if m.source == "maildirsize")
            state, message = State.OK, (f"{total} mailboxes in {len(result.domains())} domain(s) "
                                        f"scanned ({fast} from maildirsize)")
        if self.settings.postqueue:
            try:
                count, size = await asyncio.to_thread(postqueue_size, self.settings.postqueue)
                gauge("queue", "messages", count, "")
                gauge("queue", "size_bytes", size, "B")
            except (OSError, subprocess.SubprocessError, ValueError) as exc:
                message += f"; postqueue failed: {exc}"
                state = State.worst([state, State.WARNING])
        batch.add(CheckResult(TARGET, "mailboxes", state, message, timestamp=now))
        return batch


def build(config: Config) -> list[Collector]:
    if not config.mailboxes.enabled:
        return []
    return [MailboxesCollector(config.mailboxes, state_dir=config.state_dir)]
