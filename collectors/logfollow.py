"""Following a log file across runs: read what is new since the last time, exactly once,
whatever logrotate did in between. Used by every collector that counts log lines (Mailman's post
and smtp logs, Postfix's and Dovecot's mail log).

A `LogPosition` (kept by the caller in its state file, saved atomically with its counts)
remembers the file's inode, the byte offset read so far and a fingerprint of its first bytes:
- rotation by rename (logrotate's default): the rest of the old file (found next to it by its
  inode or first bytes, e.g. mail.log.1, or mail.log.1.gz / post-20261123.gz when logrotate
  compresses at once) is read first, then the new file from the start;
- truncation (copytruncate): the rest of the copy (recognised by its first bytes) is read from
  the old offset, then the truncated file from the start;
- a rotated file that cannot be found is reported as a loss (the caller shows it for a while);
- a half-written last line waits for the next run.

The log-counting collectors (collectors.lists, collectors.maillog) share the rest of a run's
frame here too: how they are built from their config section, how their state is saved, and
their own check.
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import io
import os
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Generic, Protocol, TypeVar

from monitor.config import Config, Duration
from monitor.model import CheckResult, Collector, State

_HEAD = 256
_READ_LIMIT = 64 << 20  # per run and log; the rest is read next time


@dataclass
class LogPosition:
    """How far one log has been read, and how much of it could be parsed."""

    inode: int | None = None
    device: int | None = None
    offset: int = 0
    head_len: int = 0
    head_sha: str = ""
    lines: int = 0  # complete non-empty lines read, ever
    parsed: int = 0  # of those, lines in a format the reader understands
    read_at: float = 0.0  # when the file was last read

    def to_json(self) -> dict:
        return {"inode": self.inode, "device": self.device, "offset": self.offset,
                "head_len": self.head_len, "head_sha": self.head_sha, "lines": self.lines,
                "parsed": self.parsed, "read_at": self.read_at}

    @classmethod
    def from_json(cls, f: dict) -> LogPosition:
        return cls(f.get("inode"), f.get("device"), int(f.get("offset", 0)),
                   int(f.get("head_len", 0)), f.get("head_sha", ""), int(f.get("lines", 0)),
                   int(f.get("parsed", 0)), float(f.get("read_at", 0.0)))


def _open(path: Path) -> io.BufferedIOBase:
    return gzip.open(path, "rb") if path.name.endswith(".gz") else open(path, "rb")


def _head(path: Path, length: int) -> bytes:
    with _open(path) as handle:
        return handle.read(length)


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_complete(path: Path, offset: int) -> tuple[bytes, int]:
    """Complete lines from offset on (at most _READ_LIMIT bytes); returns (data, new offset)."""
    with _open(path) as handle:
        handle.seek(offset)
        data = handle.read(_READ_LIMIT)
    end = data.rfind(b"\n")
    if end < 0:
        return b"", offset
    return data[: end + 1], offset + end + 1


def _rotated_candidates(path: Path) -> list[Path]:
    """Where logrotate puts the previous file: post.1 (.gz), post.0, post-1, dateext
    post-20261123 (.gz), newest first."""
    out = [path.with_name(path.name + suffix)
           for suffix in (".1", ".0", "-1", ".1.gz", ".0.gz", "-1.gz")]
    try:
        out += sorted((p for p in path.parent.iterdir()
                       if p.name.startswith(path.name + "-") and p not in out),
                      key=lambda p: p.name.removesuffix(".gz"), reverse=True)[:4]
    except OSError:
        pass
    return out


def _same_file(position: LogPosition, st: os.stat_result) -> bool:
    return st.st_ino == position.inode and (position.device is None
                                            or st.st_dev == position.device)


def _head_matches(path: Path, position: LogPosition) -> bool:
    if not position.head_len:
        return True
    try:
        return _sha(_head(path, position.head_len)) == position.head_sha
    except (OSError, EOFError, zlib.error):
        return False


def _previous_file(path: Path, position: LogPosition) -> Path | None:
    """The rotated or copied previous file: same inode (renamed), or same first bytes and at
    least as long (copied, or compressed: gzip gives a new inode)."""
    for candidate in _rotated_candidates(path):
        try:
            cst = os.stat(candidate)
        except OSError:
            continue
        compressed = candidate.name.endswith(".gz")
        if not compressed and _same_file(position, cst):
            return candidate
        if (compressed or cst.st_size >= position.offset) and _head_matches(candidate, position):
            return candidate
    return None


@dataclass
class Followed:
    """What one call of `follow_log` did."""

    counted: int = 0  # what the consumer returned, summed
    notes: list[str] = field(default_factory=list)  # rotations and truncations seen
    loss: str = ""  # a rotation whose previous file was not found: what was lost


def follow_log(path: Path, position: LogPosition, consume: Callable[[bytes], int], now: float,
               lost: str = "lines") -> Followed:
    """Hand every complete line written to `path` since `position` to `consume` (which counts
    them into the caller's state and updates position.lines/parsed) and move `position` on.
    `lost` names what the lines are, for the loss message ("posts", "mail log lines")."""
    out = Followed()
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    if position.inode is not None:
        rotated = st is None or not _same_file(position, st)
        # Same inode but shorter, or other first bytes: truncated (and maybe written again).
        truncated = not rotated and st is not None and (
            st.st_size < position.offset or not _head_matches(path, position))
        if rotated or truncated:
            what = "rotated" if rotated else "truncated"
            old = _previous_file(path, position)
            if old is not None:
                try:
                    # To its end, a piece at a time: the old file is read only now (a busy
                    # server, or an agent stopped for a while, may have left much of it).
                    offset = position.offset
                    while (piece := _read_complete(old, offset))[1] != offset:
                        out.counted += consume(piece[0])
                        offset = piece[1]
                    out.notes.append(f"{what}; read the rest of {old.name}")
                except (OSError, EOFError, zlib.error) as exc:
                    reason = f"{old.name} is unreadable ({exc})"
                    old = None
            else:
                reason = "the previous file was not found next to it"
            if old is None:
                since = (time.strftime(" (%Y-%m-%d %H:%M)", time.localtime(position.read_at))
                         if position.read_at else "")
                out.loss = (f"{path.name} was {what} and {reason}: {lost} logged after the last "
                            f"read{since} and before the rotation are not counted (rotate with "
                            "delaycompress, or read the log more often)")
                out.notes.append(out.loss)
            position.inode = None
            position.offset = 0
            position.head_len = 0
    if st is None:
        return out
    if position.inode is None:
        position.inode, position.device, position.offset = st.st_ino, st.st_dev, 0
    data, position.offset = _read_complete(path, position.offset)
    out.counted += consume(data)
    position.read_at = now
    head = _head(path, _HEAD)
    position.head_len, position.head_sha = len(head), _sha(head)
    return out


# -- the frame of a log-counting collector --------------------------------------------------


class CountedSection(Protocol):
    """A config section of a log-counting collector ([lists], [maillog])."""

    enabled: bool
    interval: Duration | None


Section = TypeVar("Section", bound=CountedSection)
CountState = TypeVar("CountState")


@dataclass
class CountingCollector(Generic[Section]):
    """What a log-counting collector is made of: its config section, how often it runs, and
    its state file (positions and counts, saved atomically together). Subclasses name
    themselves and add `collect`."""

    config: Section
    interval: float
    state_path: Path
    clock: Callable[[], float] = time.time
    name: str = ""  # the collector's, and its own check's

    async def save(self, save: Callable[[Path, CountState], None], state: CountState) -> list[str]:
        """Save the state with `save` (off the loop); returns the problem if it could not be.
        Unsaved, the counts stay in memory only and the next run reads the same lines again
        from the saved positions: nothing is lost or counted twice."""
        try:
            await asyncio.to_thread(save, self.state_path, state)
        except OSError as exc:
            return [f"cannot save {self.state_path}: {exc.strerror or exc}"]
        return []

    def own_check(self, target: str, summary: str, problems: list[str], now: float) -> CheckResult:
        """The collector's own check (named as the collector): OK with its summary, or WARNING
        with the problems (unreadable logs, rotations that lost lines, an unsaved state) ahead
        of it."""
        return CheckResult(target, self.name, State.WARNING if problems else State.OK,
                           "; ".join([*problems, summary]), timestamp=now)


def build_counter(make: Callable[[Section, float, Path], Collector], section: Section,
                  config: Config, state_file: str) -> list[Collector]:
    """The one collector of an enabled section: its own interval, else the agent's; its state
    (positions and counts) in state_dir/state_file."""
    if not section.enabled:
        return []
    return [make(section, section.interval or config.agent.interval,
                 config.state_dir / state_file)]
