"""Mailbox sizes: Maildir trees and mbox files, per mailbox and per domain; Postfix's queue.

Layout: path patterns with `{domain}` and `{user}` placeholders, each one directory level
(default `/var/mail/vhosts/{domain}/{user}`, as Postfix virtual delivery and Dovecot use). A
matched directory with `cur/` or `new/` is a Maildir (Maildir++ subfolders `.Sent`, `.Trash`
... included); a matched regular file is an mbox.

How a Maildir is measured: one size definition for every mailbox, kept from scan to scan,
what its messages take (every folder, Trash included):
1. the file names: Dovecot and most delivery agents put the size in the name
   (`1700000000.M1P2.host,S=2345,W=2401:2,S`), so one directory listing gives every size
   without a `stat()` per message - this is why a scan is faster than `du`;
2. `stat()` for the names without `S=` (Postfix virtual(8) / local(8) deliveries).
Dovecot's `maildirsize` is read for the quota *limit* only (its first line, "<bytes>S,<n>C"):
its running usage drifts (files removed behind Dovecot's back, a second delivery agent) and a
quota rule may leave Trash out, so using it as the size would make a mailbox flip between two
definitions. A mailbox without a limit there gets `default_quota`.
A mailbox that vanishes or cannot be read during the scan is an error for that mailbox only.

History: every scan is written to data_dir/state/mailboxes.json (for digests): the latest scan
of every mailbox (size, messages, quota) and, per local day, the size at that day's last scan,
for HISTORY_DAYS days: a few dozen bytes per mailbox and day, for all mailboxes, not only the
`top` ones that get RRD files.

Naming contract: target "mailboxes"; instance "user@domain" (the `top` biggest only, so a
spool of thousands does not make thousands of RRD files), "domain:<domain>" for every domain,
"" for the totals, "queue:postfix" for the mail queue. Metrics: size_bytes, messages, mailboxes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import logging
import os
import re
import stat as stat_mod
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from monitor.config import Config, MailboxesConfig
from monitor.files import atomic_write
from monitor.model import Batch, CheckResult, Collector, Measurement, State
from monitor.process import run_command
from monitor.text import clean
from monitor.units import format_bytes

log = logging.getLogger(__name__)

TARGET = "mailboxes"
_SIZE_IN_NAME = re.compile(r",S=(\d+)")
_MBOX_CHUNK = 1 << 20


@dataclass(slots=True)
class MailboxSize:
    address: str
    domain: str
    path: str
    kind: str  # "maildir" or "mbox"
    size_bytes: int = 0
    messages: int = 0
    source: str = ""  # "names", "stat", "mbox"
    error: str | None = None
    quota_bytes: int | None = None  # the limit in Dovecot's maildirsize, if any


@dataclass
class DomainTotal:
    domain: str
    size_bytes: int = 0
    messages: int = 0
    mailboxes: int = 0


@dataclass
class ScanResult:
    mailboxes: list[MailboxSize] = field(default_factory=list)  # measured ones
    errors: list[MailboxSize] = field(default_factory=list)
    seconds: float = 0.0

    def domains(self) -> list[DomainTotal]:
        totals: dict[str, DomainTotal] = {}
        for m in self.mailboxes:
            t = totals.setdefault(m.domain, DomainTotal(m.domain))
            t.size_bytes += m.size_bytes
            t.messages += m.messages
            t.mailboxes += 1
        return sorted(totals.values(), key=lambda t: (-t.size_bytes, t.domain))

    def biggest(self, n: int) -> list[MailboxSize]:
        return sorted(self.mailboxes, key=lambda m: (-m.size_bytes, m.address))[:n]


# -- finding mailboxes ----------------------------------------------------------------------


def expand_pattern(pattern: str, default_domain: str) -> Iterator[tuple[str, str, str]]:
    """(path, user, domain) for each match of a pattern like /var/mail/vhosts/{domain}/{user}.

    Placeholders match one non-hidden directory entry; a missing fixed directory matches nothing.
    """
    parts = [p for p in pattern.split("/") if p]

    def walk(base: str, index: int, bound: dict[str, str]) -> Iterator[tuple[str, str, str]]:
        if index == len(parts):
            yield base, bound.get("user", ""), bound.get("domain", default_domain)
            return
        part = parts[index]
        if part in ("{domain}", "{user}"):
            try:
                with os.scandir(base) as it:
                    entries = sorted(e.name for e in it if not e.name.startswith("."))
            except (FileNotFoundError, NotADirectoryError):
                return
            except PermissionError:
                log.warning("mailboxes: cannot list %s (permission denied); its mailboxes are "
                            "not counted - run the agent as a user who can read the spool", base)
                return
            for name in entries:
                yield from walk(os.path.join(base, name), index + 1, {**bound, part[1:-1]: name})
        else:
            yield from walk(os.path.join(base, part), index + 1, bound)

    yield from walk("/", 0, {})


# -- measuring one mailbox ------------------------------------------------------------------


def _folders(root: str) -> list[str]:
    """The Maildir root and its Maildir++ subfolders (".Sent", ".INBOX.Archive", ...)."""
    folders = [root]
    with os.scandir(root) as it:
        for entry in it:
            if entry.name.startswith(".") and entry.name not in (".", "..") and entry.is_dir():
                folders.append(entry.path)
    return folders


_QUOTA_LIMIT = re.compile(rb"^\s*(?:(\d+)S)?")


def read_quota_limit(root: str) -> int | None:
    """The byte limit from the first line of Dovecot's maildirsize ("1073741824S,10000C");
    None without the file or a byte limit (0 is "no limit" there)."""
    try:
        with open(os.path.join(root, "maildirsize"), "rb") as handle:
            first = handle.readline(256)
    except OSError:
        return None
    limit = _QUOTA_LIMIT.match(first)
    if not limit or not limit.group(1):
        return None
    return int(limit.group(1)) or None


_SETTLED = 2.0  # seconds: a directory changed more recently may still change within its mtime


def _count_listing(directory: str, cache: dict | None = None) -> tuple[int, int, bool]:
    """(bytes, messages, stat_needed) for one cur/ or new/ directory.

    Maildir never rewrites a message file: a delivery, an expunge or a flag change adds,
    removes or renames an entry, which changes the directory's mtime. So a directory whose
    (inode, mtime, size) is what the cache saw last time holds the same messages: one stat()
    instead of a listing (and a stat() per message without S=)."""
    st = os.stat(directory)
    key = (st.st_ino, st.st_mtime_ns, st.st_size)
    if cache is not None:
        hit = cache.get(directory)
        if hit is not None and hit[0] == key:
            return hit[1]
    result = _sizes_of(directory)
    if cache is not None and time.time() - st.st_mtime > _SETTLED:
        cache[directory] = (key, result)
    return result


def _load_native_sizes() -> Callable[..., int] | None:
    """maildir_sizes() of collectors/maildir_sizes.c, built by `make deps`; None without it."""
    try:
        library = ctypes.CDLL(str(Path(__file__).with_name("_maildir_sizes.so")))
    except OSError:
        return None
    function = library.maildir_sizes
    function.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint64),
                         ctypes.POINTER(ctypes.c_uint64), ctypes.POINTER(ctypes.c_int)]
    function.restype = ctypes.c_int
    return function


_NATIVE_SIZES = _load_native_sizes()


def _sizes_of(directory: str) -> tuple[int, int, bool]:
    # The whole directory in C when built: ctypes releases the GIL for the call, so no
    # Python runs per message and the scan threads list and stat() in parallel.
    if _NATIVE_SIZES is not None:
        size, files, needed = ctypes.c_uint64(), ctypes.c_uint64(), ctypes.c_int()
        rc = _NATIVE_SIZES(os.fsencode(directory), ctypes.byref(size), ctypes.byref(files),
                           ctypes.byref(needed))
        if rc == 0:
            return size.value, files.value, bool(needed.value)
        if rc < 0:
            raise OSError(-rc, os.strerror(-rc), directory)
        # rc 1: a name the C code leaves to Python (non-ASCII after ",S=", a huge number)
    return _sizes_of_listing(directory)


def _sizes_of_listing(directory: str) -> tuple[int, int, bool]:
    # The same in Python (no C helper built, or a name it leaves to us). One listing
    # through a directory descriptor: each stat() (for names without S=) is then an
    # fstatat() relative to it, issued from C by os.DirEntry, the system calls `du` makes.
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with os.scandir(fd) as listing:
            entries = [entry for entry in listing if not entry.name.startswith(".")]
        if not entries:
            return 0, 0, False
        # One regex pass over all names at once: the per-file cost stays in C.
        sizes = _SIZE_IN_NAME.findall("\n".join(entry.name for entry in entries))
        if len(sizes) == len(entries):
            return sum(map(int, sizes)), len(entries), False
        if not sizes:  # Postfix virtual(8) / local(8) names: every size from stat()
            return (*_stat_sizes(entries), True)
        unsized = [entry for entry in entries if _SIZE_IN_NAME.search(entry.name) is None]
        total, count = _stat_sizes(unsized)
        return total + sum(map(int, sizes)), count + len(sizes), True
    finally:
        os.close(fd)


def _stat_sizes(entries: list[os.DirEntry]) -> tuple[int, int]:
    """(bytes, files) of entries by stat(); one moved (new -> cur) or expunged between the
    listing and its stat() is not counted."""
    try:
        return sum(entry.stat(follow_symlinks=False).st_size for entry in entries), len(entries)
    except FileNotFoundError:
        pass
    total = count = 0
    for entry in entries:
        with contextlib.suppress(FileNotFoundError):
            total += entry.stat(follow_symlinks=False).st_size
            count += 1
    return total, count


def measure_maildir(box: MailboxSize, cache: dict | None = None) -> None:
    folders = _folders(box.path)
    total = count = 0
    stat_used = False
    for folder in folders:
        for sub in ("cur", "new"):
            try:
                size, n, needed = _count_listing(os.path.join(folder, sub), cache)
            except FileNotFoundError:
                if folder == box.path and not os.path.isdir(box.path):
                    raise
                continue  # a folder without new/, or a subfolder deleted meanwhile
            total += size
            count += n
            stat_used |= needed
    box.size_bytes, box.messages = total, count
    box.source = "stat" if stat_used else "names"
    box.quota_bytes = read_quota_limit(box.path)


def measure_mbox(box: MailboxSize, cache: dict[str, tuple[tuple, int]] | None) -> None:
    st = os.stat(box.path)
    box.size_bytes = st.st_size
    box.source = "mbox"
    key = (st.st_ino, st.st_size, st.st_mtime_ns)
    if cache is not None and box.path in cache and cache[box.path][0] == key:
        box.messages = cache[box.path][1]
        return
    count = 0
    tail = b"\n"  # the file's start counts as a line start
    with open(box.path, "rb") as handle:
        while chunk := handle.read(_MBOX_CHUNK):
            data = tail + chunk
            count += data.count(b"\nFrom ")
            # 5 bytes of context: a separator split across two reads is counted exactly once.
            tail = data[-5:]
    box.messages = count
    if cache is not None:
        cache[box.path] = (key, count)


def measure(box: MailboxSize, cache: dict | None = None) -> MailboxSize:
    """Fill in one mailbox's size; any OS error becomes this mailbox's error, nothing raises."""
    try:
        st = os.stat(box.path)
        if stat_mod.S_ISREG(st.st_mode):
            box.kind = "mbox"
            measure_mbox(box, cache)
        elif stat_mod.S_ISDIR(st.st_mode):
            measure_maildir(box, cache)
        else:
            box.error = "neither a Maildir directory nor an mbox file"
    except FileNotFoundError:
        box.error = "vanished during the scan (deleted or renamed)"
    except PermissionError:
        box.error = ("unreadable: permission denied (run the agent as a user who can read the "
                     "mail spool, e.g. in the mail group)")
    except OSError as exc:
        box.error = f"unreadable: {exc.strerror or exc}"
    return box


def _is_mailbox(path: str) -> bool:
    try:
        st = os.stat(path)
    except OSError:
        return True  # let measure() report it
    if stat_mod.S_ISREG(st.st_mode):
        return True
    return os.path.isdir(os.path.join(path, "cur")) or os.path.isdir(os.path.join(path, "new"))


def scan_spools(
    patterns: list[str],
    *,
    default_domain: str = "localhost",
    threads: int = 1,
    cache: dict | None = None,
) -> ScanResult:
    """Find and measure every mailbox of the patterns (blocking; run it in a thread). `cache`
    (kept by the caller between scans) remembers unchanged Maildir directories and mbox
    files, so a steady-state scan reads only what changed."""
    started = time.perf_counter()
    boxes: list[MailboxSize] = []
    seen: set[str] = set()
    for pattern in patterns:
        for path, user, domain in expand_pattern(pattern, default_domain):
            if path in seen:
                continue
            seen.add(path)
            # Directory names are the users': cleaned here, once, so no newline or bidi
            # override reaches a metric name, an alert mail or a digest.
            domain = clean(domain, 200)
            address = clean(f"{user}@{domain}", 200) if user else domain
            boxes.append(MailboxSize(address, domain, path, "maildir"))
    boxes = [b for b in boxes if _is_mailbox(b.path)]

    def one(box: MailboxSize) -> MailboxSize:
        return measure(box, cache)

    if threads > 1 and len(boxes) > 1:
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="mailbox-scan") as pool:
            list(pool.map(one, boxes, chunksize=4))
    else:
        for box in boxes:
            one(box)
    result = ScanResult(seconds=time.perf_counter() - started)
    for box in boxes:
        (result.errors if box.error else result.mailboxes).append(box)
    return result


# -- Postfix queue --------------------------------------------------------------------------


@dataclass
class QueueSummary:
    messages: int = 0
    size_bytes: int = 0
    by_queue: dict[str, int] = field(default_factory=dict)
    oldest_seconds: float = 0.0


def parse_postqueue_json(text: str, now: float) -> QueueSummary:
    """`postqueue -j` prints one JSON object per queued message."""
    summary = QueueSummary()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        try:
            item = json.loads(line)
        except ValueError:
            continue
        summary.messages += 1
        summary.size_bytes += int(item.get("message_size", 0) or 0)
        queue = str(item.get("queue_name", "unknown"))
        summary.by_queue[queue] = summary.by_queue.get(queue, 0) + 1
        arrival = item.get("arrival_time")
        if isinstance(arrival, int | float):
            summary.oldest_seconds = max(summary.oldest_seconds, now - arrival)
    return summary


async def read_postqueue(postqueue: str, timeout: float, now: float) -> QueueSummary:
    out = await run_command([postqueue, "-j"], timeout)
    return await asyncio.to_thread(parse_postqueue_json, out.decode("utf-8", "replace"), now)


# -- history (for digests) --------------------------------------------------------------------

HISTORY_DAYS = 35


def history_path(state_dir: Path) -> Path:
    return Path(state_dir) / "mailboxes.json"


@dataclass
class MailboxHistory:
    """The latest scan of every mailbox and one size per mailbox per local day."""

    scanned_at: float = 0.0
    latest: dict[str, tuple[int, int, int | None]] = field(default_factory=dict)  # size, msgs, quota
    days: dict[str, dict[str, int]] = field(default_factory=dict)  # "YYYY-MM-DD" -> address -> size

    def size_on(self, day: str, address: str) -> int | None:
        return self.days.get(day, {}).get(address)


def load_history(path: Path) -> MailboxHistory:
    """The saved history; missing or unreadable: empty (an unreadable one is logged)."""
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        latest = raw.get("latest", {})
        return MailboxHistory(
            float(latest.get("at", 0.0)),
            {a: (int(v[0]), int(v[1]), None if v[2] is None else int(v[2]))
             for a, v in latest.get("boxes", {}).items()},
            {d: {a: int(v) for a, v in boxes.items()} for d, boxes in raw.get("days", {}).items()})
    except FileNotFoundError:
        return MailboxHistory()
    except (OSError, ValueError, TypeError, AttributeError, IndexError) as exc:
        log.error("mailbox history %s unreadable (%s); it starts afresh", path, exc)
        return MailboxHistory()


def record_scan(path: Path, result: ScanResult, now: float, default_quota: float | None) -> None:
    """Add one scan to the history file (atomically); days older than HISTORY_DAYS go."""
    history = load_history(path)
    fallback = int(default_quota) if default_quota else None
    boxes = {b.address: [b.size_bytes, b.messages, b.quota_bytes or fallback]
             for b in result.mailboxes}
    day = datetime.fromtimestamp(now).date()
    days = {d: v for d, v in history.days.items()
            if d > (day - timedelta(days=HISTORY_DAYS)).isoformat()}
    days[day.isoformat()] = {b.address: b.size_bytes for b in result.mailboxes}
    atomic_write(Path(path), json.dumps({"version": 1, "latest": {"at": now, "boxes": boxes},
                                         "days": dict(sorted(days.items()))},
                                        separators=(",", ":")))


def load_scan_cache(path: Path | None) -> dict:
    """The scan cache a previous run saved: a restarted agent's first scan lists only what
    changed meanwhile. Missing or unreadable: empty (every directory is listed once)."""
    if path is None:
        return {}
    try:
        raw = json.loads(Path(path).read_text(encoding="utf-8"))
        return {p: (tuple(key), tuple(value) if isinstance(value, list) else int(value))
                for p, (key, value) in raw.get("entries", {}).items()}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def save_scan_cache(path: Path, cache: dict) -> None:
    atomic_write(Path(path), json.dumps({"version": 1, "entries": {
        p: [list(key), list(value) if isinstance(value, tuple) else value]
        for p, (key, value) in cache.items()}}, separators=(",", ":")))


# -- the collector --------------------------------------------------------------------------


@dataclass
class MailboxesCollector:
    config: MailboxesConfig
    interval: float
    clock: Callable[[], float] = time.time
    name: str = "mailboxes"
    history_path: Path | None = None  # data_dir/state/mailboxes.json; None: keep no history
    cache_path: Path | None = None  # where the scan cache outlives a restart; None: memory only
    _cache: dict | None = None  # unchanged directories and mbox files (see _count_listing)

    async def collect(self) -> Batch:
        cfg = self.config
        if self._cache is None:
            self._cache = await asyncio.to_thread(load_scan_cache, self.cache_path)
        result = await asyncio.to_thread(
            scan_spools, [str(p) for p in cfg.paths], default_domain=cfg.default_domain,
            threads=cfg.scan_threads, cache=self._cache)
        # Forget mailboxes that are gone: an entry is an mbox, BOX/cur or BOX/.Folder/cur.
        boxes = {b.path for b in result.mailboxes}
        for stale in [p for p in self._cache if p not in boxes and os.path.dirname(p) not in boxes
                      and os.path.dirname(os.path.dirname(p)) not in boxes]:
            del self._cache[stale]
        if self.cache_path is not None:
            try:
                await asyncio.to_thread(save_scan_cache, self.cache_path, self._cache)
            except OSError as exc:
                log.warning("mailboxes: cannot save %s: %s", self.cache_path, exc)
        now = self.clock()
        batch = self.to_batch(result, now)
        if self.history_path is not None:
            try:
                await asyncio.to_thread(record_scan, self.history_path, result, now,
                                        cfg.default_quota)
            except OSError as exc:
                log.warning("mailboxes: cannot save %s: %s", self.history_path, exc)
        if cfg.postfix_queue:
            batch.add(await self.queue_check())
        return batch

    def to_batch(self, result: ScanResult, now: float) -> Batch:
        cfg = self.config
        batch = Batch()

        def gauge(instance: str, metric: str, value: float, unit: str) -> None:
            batch.add(Measurement(TARGET, instance, metric, value, unit=unit, timestamp=now,
                                  minimum=0))

        for box in result.biggest(cfg.top):
            gauge(box.address, "size_bytes", box.size_bytes, "B")
            gauge(box.address, "messages", box.messages, "")
        domains = result.domains()
        for d in domains:
            gauge(f"domain:{d.domain}", "size_bytes", d.size_bytes, "B")
            gauge(f"domain:{d.domain}", "messages", d.messages, "")
            gauge(f"domain:{d.domain}", "mailboxes", d.mailboxes, "")
        total = sum(m.size_bytes for m in result.mailboxes)
        messages = sum(m.messages for m in result.mailboxes)
        gauge("", "size_bytes", total, "B")
        gauge("", "messages", messages, "")
        gauge("", "mailboxes", len(result.mailboxes), "")
        gauge("", "errors", len(result.errors), "")
        gauge("", "scan_seconds", result.seconds, "s")

        for box in result.errors:
            address = clean(box.address, 200)
            batch.add(CheckResult(TARGET, f"mailbox {address}", State.UNKNOWN,
                                  f"mailbox {address} ({clean(box.path, 200)}): "
                                  f"{clean(box.error, 200)}", timestamp=now))
        over = 0
        for box in result.mailboxes:
            state = State.OK
            if cfg.critical_size is not None and box.size_bytes >= cfg.critical_size:
                state, limit = State.CRITICAL, cfg.critical_size
            elif cfg.warn_size is not None and box.size_bytes >= cfg.warn_size:
                state, limit = State.WARNING, cfg.warn_size
            if state is not State.OK:
                over += 1
                address = clean(box.address, 200)
                batch.add(CheckResult(
                    TARGET, f"mailbox {address}", state,
                    f"mailbox {address} holds {format_bytes(box.size_bytes)} in {box.messages} "
                    f"messages (limit {format_bytes(limit)})", timestamp=now))
        summary = (f"{len(result.mailboxes)} mailboxes in {len(domains)} domains hold "
                   f"{format_bytes(total)} in {messages:,} messages (scan {result.seconds:.1f} s)")
        if result.errors:
            summary += f"; {len(result.errors)} could not be read (first: " \
                       f"{clean(result.errors[0].address, 200)}: {clean(result.errors[0].error, 200)})"
        if over:
            summary += f"; {over} over their size limit"
        if not result.mailboxes and not result.errors:
            summary = (f"no mailboxes found under {', '.join(map(str, cfg.paths))}; check [mailboxes] paths")
        state = State.WARNING if (result.errors or not result.mailboxes) else State.OK
        batch.add(CheckResult(TARGET, "mailboxes", state, summary, timestamp=now))
        return batch

    async def queue_check(self) -> CheckResult:
        cfg = self.config
        now = self.clock()
        try:
            q = await read_postqueue(cfg.postqueue, 60.0, now)
        except (OSError, RuntimeError) as exc:
            return CheckResult(TARGET, "postfix queue", State.UNKNOWN,
                               f"cannot read the Postfix queue: {exc}", timestamp=now)
        ms = [Measurement(TARGET, "queue:postfix", "messages", q.messages, timestamp=now, minimum=0),
              Measurement(TARGET, "queue:postfix", "size_bytes", q.size_bytes, unit="B",
                          timestamp=now, minimum=0),
              Measurement(TARGET, "queue:postfix", "deferred_messages", q.by_queue.get("deferred", 0),
                          timestamp=now, minimum=0),
              Measurement(TARGET, "queue:postfix", "oldest_seconds", q.oldest_seconds, unit="s",
                          timestamp=now, minimum=0)]
        state = State.OK
        if cfg.queue_critical is not None and q.messages >= cfg.queue_critical:
            state = State.CRITICAL
        elif cfg.queue_warning is not None and q.messages >= cfg.queue_warning:
            state = State.WARNING
        detail = ", ".join(f"{n} {k}" for k, n in sorted(q.by_queue.items()))
        return CheckResult(TARGET, "postfix queue", state,
                           f"Postfix queue holds {q.messages} message(s), {format_bytes(q.size_bytes)}"
                           + (f" ({detail}; oldest {q.oldest_seconds / 3600:.1f} h)" if detail else ""),
                           tuple(ms), timestamp=now)


def build(config: Config) -> list[Collector]:
    cfg = config.mailboxes
    if not cfg.enabled:
        return []
    # Mailbox sizes change slowly and a scan walks the whole spool: every 15 min at most.
    interval = cfg.interval or max(config.agent.interval, 900.0)
    return [MailboxesCollector(cfg, interval, history_path=history_path(config.state_dir),
                               cache_path=config.state_dir / "mailboxes-scan-cache.json")]


__all__ = ["MailboxSize", "MailboxesCollector", "ScanResult", "build",
           "expand_pattern", "parse_postqueue_json", "scan_spools"]
