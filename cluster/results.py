"""Check results on their way to the leader, and the alert state that moves with leadership.

- `monitor:results`: a Redis stream; every node adds its batches (checks, and the measurements
  an alert rule looks at). The leader reads it through the consumer group `leader`: an entry
  is acknowledged only after the alert engine has taken it and the alert state holding its
  consequences is saved in Redis, so a leader killed in between leaves it pending, and the
  next leader claims it (XAUTOCLAIM) and evaluates it again from the same state.
- `monitor:alert-state`: the leader's alert database and outbox (SQLite pages, only those that
  changed), written after each round and before any mail leaves. A new leader copies them into
  its own files before it evaluates anything: the alerts already announced stay announced (no
  second mail), the mail queued but not yet sent is sent by it (none lost), under the
  Message-ID it was given.
- `monitor:mail:<Message-ID>`: noted just before a message's DATA and after the relay's answer
  (`MailLedger`): a new leader never sends what its predecessor sent or began to send.
- While Redis cannot be reached, a node's batches wait in a `DiskBuffer` and go to the stream
  in their order when it answers again.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from cluster import wire
from cluster.node import PREFIX, ClusterNode, Unreachable, client_options, decoded
from monitor.config import ClusterConfig
from monitor.files import atomic_write
from monitor.model import Batch

log = logging.getLogger(__name__)

STREAM = PREFIX + "results"
GROUP = "leader"
ALERT_STATE = PREFIX + "alert-state"
MAIL = PREFIX + "mail:"  # + Message-ID: how far its delivery went (MailLedger)
# Note that this process sends a message now, unless another process noted it already (then
# its state, node and time).
_BEGIN = """
local token = redis.call('HGET', KEYS[1], 'token')
if token and token ~= ARGV[1] then
  return redis.call('HMGET', KEYS[1], 'state', 'node', 'time')
end
redis.call('HSET', KEYS[1], 'state', 'begun', 'node', ARGV[2], 'token', ARGV[1], 'time', ARGV[3])
redis.call('PEXPIRE', KEYS[1], ARGV[4])
return false
"""
# Forget that this process began a message the relay did not take (deferred): anyone may send it.
_RELEASE = """
if redis.call('HGET', KEYS[1], 'token') == ARGV[1] and redis.call('HGET', KEYS[1], 'state') == 'begun' then
  return redis.call('DEL', KEYS[1])
end
return 0
"""
STREAM_MAX = 1_000_000  # entries kept in the stream (acknowledged or not): days of results
_SEGMENT = 1 << 20  # bytes per buffer file


class DiskBuffer:
    """Lines of text on local disk, in order. Every buffer under `pool` (its own directory by
    default: the check results in `buffer_dir`, the samples in a folder of it) shares
    `max_bytes`: past that the oldest file of lines of any of them goes, and the lines lost are
    counted with their buffer (reported with the heartbeat and by `monitor cluster status`)."""

    def __init__(self, directory: Path, max_bytes: int, pool: Path | None = None) -> None:
        self.directory = Path(directory)
        self.pool = Path(pool) if pool is not None else self.directory
        self.max_bytes = max(max_bytes, 2 * _SEGMENT)
        self.directory.mkdir(parents=True, exist_ok=True)
        # file -> ((size, mtime), lines) when it was counted
        self._counted: dict[Path, tuple[tuple[int, int], int]] = {}
        # Its users call it from worker threads (disk I/O and fsync stay off the event loop),
        # several collectors' batches at once: one writer at a time keeps lines whole and
        # in order.
        self._writing = threading.Lock()

    @property
    def dropped(self) -> int:
        """Lines dropped so far (kept in a file: another buffer of the pool may drop ours)."""
        return _dropped(self.directory)

    def _segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl"))

    def waiting(self) -> bool:
        return bool(self._segments())

    def __len__(self) -> int:
        """Lines waiting (counted again only in files that changed: asked every heartbeat)."""
        counted: dict[Path, tuple[tuple[int, int], int]] = {}
        for path in self._segments():
            try:
                stat = path.stat()
                signature = (stat.st_size, stat.st_mtime_ns)
                known = self._counted.get(path)
                if known is None or known[0] != signature:
                    with path.open("rb") as f:
                        known = (signature, sum(1 for _ in f))
                counted[path] = known
            except OSError:
                continue
        self._counted = counted
        return sum(lines for _, lines in counted.values())

    def append(self, text: str) -> None:
        with self._writing:
            self._append(text)

    def _append(self, text: str) -> None:
        segments = self._segments()
        path = segments[-1] if segments else self.directory / f"{1:012d}.jsonl"
        if path.exists() and path.stat().st_size >= _SEGMENT:
            path = self.directory / f"{int(path.stem) + 1:012d}.jsonl"
        with path.open("a", encoding="utf-8") as f:
            f.write(text.replace("\n", " ") + "\n")
            f.flush()
            os.fsync(f.fileno())
        self._bound()

    def _bound(self) -> None:
        """Drop the least recently written files of the pool (never a buffer's last one)
        while the pool holds more than `max_bytes`."""
        files, total = [], 0
        for directory in {p.parent for p in self.pool.rglob("*.jsonl")}:
            segments = sorted(directory.glob("*.jsonl"))
            for path in segments:
                with contextlib.suppress(OSError):  # taken meanwhile by its reader
                    stat = path.stat()
                    total += stat.st_size
                    if path is not segments[-1]:
                        files.append((stat.st_mtime_ns, path, stat.st_size))
        for _, oldest, size in sorted(files):
            if total <= self.max_bytes:
                break
            try:
                with oldest.open("rb") as f:
                    lost = sum(1 for _ in f)
                oldest.unlink()
            except OSError:
                continue
            total -= size
            dropped = _dropped(oldest.parent) + lost
            atomic_write(oldest.parent / "dropped", str(dropped))
            log.error("cluster buffer %s is full (%d bytes): dropped %d of the oldest entries "
                      "of %s (%d so far)", self.pool, self.max_bytes, lost, oldest.parent, dropped)

    def oldest(self) -> tuple[Path, list[str]] | None:
        """The oldest file of lines, to send and then `remove`."""
        segments = self._segments()
        if not segments:
            return None
        return segments[0], segments[0].read_text(encoding="utf-8").splitlines()

    def remove(self, segment: Path) -> None:
        segment.unlink(missing_ok=True)

    def keep(self, segment: Path, lines: list[str]) -> None:
        """The file's lines replaced by `lines`, under its name (so it stays the oldest) and
        with its modification time (the pool drops the least recently written first)."""
        try:
            written = segment.stat().st_mtime_ns
        except FileNotFoundError:
            written = None
        atomic_write(segment, "".join(line.replace("\n", " ") + "\n" for line in lines))
        if written is not None:
            os.utime(segment, ns=(written, written))


def _dropped(directory: Path) -> int:
    try:
        return int((directory / "dropped").read_text())
    except (OSError, ValueError):
        return 0


def samples_buffer(config: ClusterConfig) -> DiskBuffer:
    """Where a node's samples wait while the one rrdcached cannot be reached (the store's
    backlog), sharing `buffer_max` with the check results."""
    assert config.buffer_dir is not None
    return DiskBuffer(config.buffer_dir / "samples", config.buffer_max, pool=config.buffer_dir)


class ResultStream:
    """A node's end of `monitor:results`: `publish` (buffered while cut off), `replay`, and for
    the leader `take` and `ack`."""

    def __init__(self, node: ClusterNode, buffer: DiskBuffer) -> None:
        self.node = node
        self.buffer = buffer
        self._group_made = False

    def _entry(self, batch: Batch, interval: float) -> str:
        return json.dumps({"node": self.node.name, "interval": interval,
                           "batch": wire.dumps(batch)}, separators=(",", ":"))

    async def publish(self, batch: Batch, interval: float) -> None:
        entry = self._entry(batch, interval)
        if not self.node.cut_off and not await asyncio.to_thread(self.buffer.waiting) \
                and await self._send([entry]):
            return
        # Behind what waits already (the order is kept); written and synced off the loop.
        await asyncio.to_thread(self._buffered, entry)

    def _buffered(self, entry: str | None = None) -> None:
        """(In a thread) `entry` appended, if given, and the buffer's counts for the heartbeat."""
        if entry is not None:
            self.buffer.append(entry)
        self.node.extra["buffered"] = len(self.buffer)
        self.node.extra["dropped"] = self.buffer.dropped

    async def _send(self, entries: Iterable[str]) -> bool:
        try:
            async with self.node.redis.pipeline(transaction=False) as pipe:
                for entry in entries:
                    pipe.xadd(STREAM, {"entry": entry}, maxlen=STREAM_MAX, approximate=True)
                await pipe.execute()
        except Unreachable as exc:
            self.node._missed(exc)
            return False
        return True

    async def replay(self) -> int:
        """Job: send what the buffer holds, oldest first; returns how many went."""
        sent = 0
        while (oldest := await asyncio.to_thread(self.buffer.oldest)) is not None:
            segment, lines = oldest
            if lines and not await self._send(lines):
                break
            await asyncio.to_thread(self.buffer.remove, segment)
            sent += len(lines)
        if sent:
            log.warning("cluster: replayed %d buffered batch(es) to the leader's stream", sent)
        await asyncio.to_thread(self._buffered)
        return sent

    async def take(self, count: int = 500) -> list[tuple[str, str, float, Batch]]:
        """Leader: (id, node, interval, batch) of entries no leader has acknowledged: first
        those a previous leader took and did not finish, then new ones."""
        redis = self.node.redis
        if not self._group_made:
            try:
                await redis.xgroup_create(STREAM, GROUP, id="0", mkstream=True)
            except Exception as exc:  # BUSYGROUP: it exists
                if "BUSYGROUP" not in str(exc):
                    raise
            self._group_made = True
        claim: Any = await redis.xautoclaim(STREAM, GROUP, self.node.name, min_idle_time=0,
                                            start_id="0-0", count=count)
        rows: list[Any] = list(claim[1])  # (next start, [(id, fields)], deleted ids)
        if len(rows) < count:
            fresh = await redis.xreadgroup(GROUP, self.node.name, {STREAM: ">"},
                                           count=count - len(rows))
            stream_entries: Any = fresh or []
            for _, entries in stream_entries:
                rows.extend(entries)
        out = []
        for entry_id, fields in rows:
            try:
                data = json.loads(fields["entry"])
                out.append((entry_id, str(data["node"]), float(data["interval"]),
                            wire.loads(data["batch"])))
            except (ValueError, KeyError, TypeError) as exc:
                log.error("cluster: result %s unreadable (%s); dropped", entry_id, exc)
                await redis.xack(STREAM, GROUP, entry_id)
        return out

    async def ack(self, ids: list[str]) -> None:
        if ids:
            await self.node.redis.xack(STREAM, GROUP, *ids)


def _page_size(image: bytes | memoryview) -> int:
    """The page size an SQLite image declares (header bytes 16-17; 1 means 65536)."""
    size = int.from_bytes(image[16:18], "big")
    return 65536 if size == 1 else size or 4096


def _load_image(path: Path, image: bytes) -> None:
    """Replace the content of the database at `path` (open elsewhere too) by `image`."""
    source = sqlite3.connect(":memory:")
    target = sqlite3.connect(path, timeout=30)
    try:
        # An image of a WAL database says so in its header (bytes 18, 19), and an in-memory
        # database cannot open it that way: read it as a rollback-journal one.
        legacy = bytearray(image)
        legacy[18:20] = b"\x01\x01"
        source.deserialize(bytes(legacy))
        source.backup(target)
    finally:
        source.close()
        target.close()


class AlertStateReplica:
    """The leader's alert database and outbox, copied to Redis and back, page by page.

    `monitor:alert-state` holds who wrote last, a version and each database's page count;
    `monitor:alert-state:<name>` holds its pages (index -> bytes). A save writes only the pages
    that differ from what Redis holds (a new alert touches a few pages, however long the
    history), in one MULTI/EXEC with the new version, so a reader never sees half a save; and
    it reads nothing at all when no database changed since (SQLite's `data_version`)."""

    def __init__(self, node: ClusterNode, paths: dict[str, Path]) -> None:
        self.node = node
        self.paths = paths  # name -> SQLite file
        options = {**client_options(node.config, timeout=max(1.0, node.config.heartbeat)),
                   "decode_responses": False}  # pages are bytes
        self.redis = aioredis.from_url(node.config.redis, **options)
        self._readers: dict[str, sqlite3.Connection] = {}
        self._data_versions: dict[str, int] = {}
        self._held: dict[str, list[bytes]] = {}  # name -> digests of the pages Redis holds
        self._version: int | None = None  # the version Redis holds, if we wrote or read it
        self._lock = asyncio.Lock()  # the round and the outbox save at will: one at a time

    def _reader(self, name: str) -> sqlite3.Connection:
        if name not in self._readers:
            self._readers[name] = sqlite3.connect(self.paths[name], timeout=30,
                                                  check_same_thread=False)
        return self._readers[name]

    def _changes(self, everything: bool) -> dict[str, tuple[list[bytes], dict[int, bytes], int]]:
        """name -> (its page digests, the pages that differ from what Redis holds, its data
        version), for each database that changed since the last save (each one if
        `everything`). Digests, not a copy of the pages: the memory kept is 16 bytes a page."""
        out = {}
        for name in self.paths:
            db = self._reader(name)
            data_version = db.execute("PRAGMA data_version").fetchone()[0]
            if not everything and self._data_versions.get(name) == data_version:
                continue
            with db:  # one read transaction: a consistent image
                db.execute("BEGIN")
                image = memoryview(db.serialize())
            size = _page_size(image)
            held = [] if everything else self._held.get(name, [])
            digests, pages = [], {}
            for index, at in enumerate(range(0, len(image), size)):
                page = image[at:at + size]
                digest = hashlib.sha256(page).digest()[:16]
                digests.append(digest)
                if index >= len(held) or held[index] != digest:
                    pages[index] = bytes(page)
            out[name] = (digests, pages, data_version)
        return out

    async def save(self) -> None:
        async with self._lock:
            await self._save()

    async def _save(self) -> None:
        redis = self.redis
        stored = await redis.hget(ALERT_STATE, "version")
        everything = self._version is None or stored is None or int(stored) != self._version
        changes = await asyncio.to_thread(self._changes, everything)
        if not changes:
            return
        version = (int(stored) if stored is not None else 0) + 1
        meta: dict[str, str | int] = {"node": self.node.name, "version": version}
        async with redis.pipeline(transaction=True) as pipe:
            if everything:  # (and what an older version kept there: whole images)
                pipe.delete(ALERT_STATE)
            for name, (digests, pages, _) in changes.items():
                count, held = len(digests), len(self._held.get(name, []))
                meta[f"{name}:pages"] = count
                if everything:
                    pipe.delete(f"{ALERT_STATE}:{name}")
                elif held > count:  # it shrank
                    pipe.hdel(f"{ALERT_STATE}:{name}", *map(str, range(count, held)))
                if pages:
                    pipe.hset(f"{ALERT_STATE}:{name}", mapping={str(i): p for i, p in pages.items()})
            pipe.hset(ALERT_STATE, mapping={k: v for k, v in meta.items()})
            await pipe.execute()
        self._version = version
        for name, (digests, _, data_version) in changes.items():
            self._held[name] = digests
            self._data_versions[name] = data_version

    async def restore(self) -> bool:
        """Take the state Redis holds if it is not ours (a leader before us wrote it): True
        then. Cheap when it is ours: one read of its version."""
        async with self._lock:
            return await self._restore()

    async def _restore(self) -> bool:
        stored = await self.redis.hget(ALERT_STATE, "version")
        if stored is None or int(stored) == self._version:
            return False  # none yet (the first leader), or what we wrote or read last
        async with self.redis.pipeline(transaction=True) as pipe:
            pipe.hgetall(ALERT_STATE)
            for name in self.paths:
                pipe.hgetall(f"{ALERT_STATE}:{name}")
            raw_meta, *stored_pages = await pipe.execute()
        meta = {k.decode(): v.decode() for k, v in raw_meta.items()}
        images = {}
        for name, pages in zip(self.paths, stored_pages, strict=True):
            count = int(meta.get(f"{name}:pages", 0))
            if count and all(str(i).encode() in pages for i in range(count)):
                images[name] = [pages[str(i).encode()] for i in range(count)]

        def load() -> None:
            for name, image in images.items():
                _load_image(self.paths[name], b"".join(image))
        await asyncio.to_thread(load)
        self._held = {name: [hashlib.sha256(p).digest()[:16] for p in image]
                      for name, image in images.items()}
        self._version, self._data_versions = int(meta["version"]), {}
        log.warning("cluster: took over the alert state of %s (version %s)", meta.get("node"),
                    meta["version"])
        return True

    async def close(self) -> None:
        for db in self._readers.values():
            db.close()
        self._readers.clear()
        await self.redis.aclose()


class MailLedger:
    """`alerts.outbox.DeliveryLedger` in Redis: `monitor:mail:<Message-ID>` (a hash: state
    begun/sent, node, token, time; kept as long as the outbox keeps sent mail). The token is
    this process's: a message this process began and got no answer for may be sent once more
    by it (the outbox's rule for "unconfirmed"), never by another node. `before_pass` is the
    member's: it saves the alert state before any mail leaves (False when not the leader)."""

    def __init__(self, node: ClusterNode, before_pass: Callable[[], Awaitable[bool]],
                 keep: float = 30 * 86400) -> None:
        self.node = node
        self._before_pass = before_pass
        self.token = f"{node.name} {node.started!r}"
        self.keep_ms = int(keep * 1000)

    async def before_pass(self) -> bool:
        return await self._before_pass()

    @staticmethod
    def _key(message_id: str) -> str:
        return f"{MAIL}{message_id}"

    def _why(self, state: str | None, node: str | None, when: str | None) -> str:
        at = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(float(when or 0)))
        if state == "sent":
            return f"sent by {node} at {at}"
        if state == "refused":
            return f"refused for good by the relay, sent by {node} at {at}"
        return (f"begun by {node} at {at}, with no word of the relay's answer since (the relay "
                "most likely has it)")

    async def taken(self, message_id: str) -> str | None:
        try:
            state, node, token, when = (None if v is None else decoded(v) for v in
                                        await self.node.redis.hmget(
                                            self._key(message_id), ["state", "node", "token", "time"]))
        except Unreachable as exc:
            self.node._missed(exc)
            return None  # `begin` cannot note it either: the message waits
        if state is None or (state == "begun" and token == self.token):
            return None
        return self._why(state, node, when)

    async def begin(self, message_id: str) -> str | None:
        try:
            other = await self.node.redis.eval(_BEGIN, 1, self._key(message_id), self.token,
                                               self.node.name, repr(self.node.clock()),
                                               self.keep_ms)
        except Unreachable as exc:
            self.node._missed(exc)
            return f"Redis cannot be reached ({exc}): not sent before it can note it"
        if other is None:
            return None
        state, node, when = (None if v is None else decoded(v) for v in other)
        return self._why(state, node, when)

    async def settle(self, message_id: str, status: str) -> None:
        key = self._key(message_id)
        try:
            if status in ("sent", "refused"):
                async with self.node.redis.pipeline(transaction=True) as pipe:
                    pipe.hset(key, mapping={"state": status, "node": self.node.name,
                                            "token": self.token, "time": repr(self.node.clock())})
                    pipe.pexpire(key, self.keep_ms)
                    await pipe.execute()
            elif status == "deferred":
                await self.node.redis.eval(_RELEASE, 1, key, self.token)
        except Unreachable as exc:  # "begun" stays: no other node sends it again either
            self.node._missed(exc)
