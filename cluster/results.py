"""Check results on their way to the leader, and the alert state that moves with leadership.

- `monitor:results`: a Redis stream; every node adds its batches (checks, and the measurements
  an alert rule looks at). The leader reads it through the consumer group `leader`: an entry
  is acknowledged only after the alert engine has taken it and the alert state holding its
  consequences is saved in Redis, so a leader killed in between leaves it pending, and the
  next leader claims it (XAUTOCLAIM) and evaluates it again from the same state.
- `monitor:alert-state`: the leader's alert database and outbox (SQLite images), written after
  each round. A new leader copies them into its own files before it evaluates anything: the
  alerts already announced stay announced (no second mail), the mail queued but not yet
  sent is sent by it (none lost), under the Message-ID it was given.
- While Redis cannot be reached, a node's batches wait in a `DiskBuffer` and go to the stream
  in their order when it answers again.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from cluster import wire
from cluster.node import PREFIX, ClusterNode, Unreachable
from monitor.config import ClusterConfig
from monitor.files import atomic_write
from monitor.model import Batch

log = logging.getLogger(__name__)

STREAM = PREFIX + "results"
GROUP = "leader"
ALERT_STATE = PREFIX + "alert-state"
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
        if not self.node.cut_off and not self.buffer.waiting() and await self._send([entry]):
            return
        self.buffer.append(entry)  # behind what waits already: the order is kept
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
        while (oldest := self.buffer.oldest()) is not None:
            segment, lines = oldest
            if lines and not await self._send(lines):
                break
            self.buffer.remove(segment)
            sent += len(lines)
        if sent:
            log.warning("cluster: replayed %d buffered batch(es) to the leader's stream", sent)
        self.node.extra["buffered"] = len(self.buffer)
        self.node.extra["dropped"] = self.buffer.dropped
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


def _image(path: Path) -> bytes:
    db = sqlite3.connect(path)
    try:
        return db.serialize()
    finally:
        db.close()


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
    """The leader's alert database and outbox, copied to Redis and back."""

    def __init__(self, node: ClusterNode, paths: dict[str, Path]) -> None:
        self.node = node
        self.paths = paths  # name -> SQLite file

    async def save(self) -> None:
        images = await asyncio.to_thread(lambda: {n: _image(p) for n, p in self.paths.items()})
        redis = self.node.redis
        await redis.hset(ALERT_STATE, mapping={"node": self.node.name, **{
            n: base64.b64encode(image).decode() for n, image in images.items()}})

    async def restore(self) -> bool:
        """Take the last leader's state, if there is one (True) or this node is the first."""
        raw = await self.node.redis.hgetall(ALERT_STATE)
        if not raw or raw.get("node") == self.node.name:
            return False  # none yet, or our own (we led last): ours is as new
        images = {n: base64.b64decode(raw[n]) for n in self.paths if n in raw}

        def load() -> None:
            for name, image in images.items():
                _load_image(self.paths[name], image)
        await asyncio.to_thread(load)
        log.warning("cluster: took over the alert state of %s", raw.get("node"))
        return True
