"""File system usage per mount point: bytes and inodes through statvfs, never blocked by a hung mount.

A statvfs on a dead NFS server can block for minutes (or forever on a "hard" mount). Each call
therefore runs on a daemon worker thread and is awaited for at most `timeout` seconds; while a
call on a mount point is still blocked, that mount point is not tried again (so a hung mount
costs at most one stuck thread, not one more per run) and is reported UNKNOWN until the call
returns.
"""

from __future__ import annotations

import asyncio
import fnmatch
import os
import queue
import re
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from monitor.model import CheckResult, Measurement, State
from monitor.text import clean
from monitor.units import format_bytes, format_duration


@dataclass(frozen=True, slots=True)
class Mount:
    device: str
    mountpoint: str
    fstype: str


_OCTAL = re.compile(r"\\([0-7]{3})")


def _unescape(field_text: str) -> str:
    # The kernel writes space, tab, newline and backslash in mount table fields as \040 etc.
    return _OCTAL.sub(lambda m: chr(int(m.group(1), 8)), field_text)


def parse_mounts(text: str) -> list[Mount]:
    """Mount table lines (/proc/self/mounts format) -> mounts; later mounts hide earlier ones."""
    by_point: dict[str, Mount] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        mount = Mount(_unescape(parts[0]), _unescape(parts[1]), parts[2])
        by_point.pop(mount.mountpoint, None)
        by_point[mount.mountpoint] = mount
    return list(by_point.values())


def bind_mounts_of_parts(mountinfo: str) -> set[str]:
    """Mount points (from /proc/PID/mountinfo text) that show a directory of a file system whose
    whole (or a part holding that directory) is mounted elsewhere: bind mounts, such as the ones
    systemd makes for a hardened unit (ProtectSystem=, StateDirectory=, ReadWritePaths=). Their
    usage is the other mount's, so they are no disks of their own. Btrfs subvolumes mounted side
    by side (roots /@ and /@home) are not parts of each other and stay."""
    roots: dict[str, list[tuple[str, str]]] = {}  # device "major:minor" -> [(root, mount point)]
    for line in mountinfo.splitlines():
        parts = line.split()
        if len(parts) >= 5:
            roots.setdefault(parts[2], []).append((_unescape(parts[3]), _unescape(parts[4])))
    inside = set()
    for mounts in roots.values():
        for root, point in mounts:
            if any(other != root and root.startswith(other.rstrip("/") + "/") for other, _ in mounts):
                inside.add(point)
    return inside


def select_mounts(mounts: Iterable[Mount], include: list[str], exclude: list[str],
                  exclude_fs_types: list[str]) -> list[Mount]:
    """Mounts to check: matching `include` (empty: all), not `exclude`, not an excluded fs type."""
    out = []
    for m in mounts:
        if any(fnmatch.fnmatchcase(m.fstype, p) for p in exclude_fs_types):
            continue
        if include and not any(fnmatch.fnmatchcase(m.mountpoint, p) for p in include):
            continue
        if any(fnmatch.fnmatchcase(m.mountpoint, p) for p in exclude):
            continue
        out.append(m)
    return out


class StatvfsTimeout(Exception):
    """statvfs did not return in time; `first` is False while an earlier call is still blocked."""

    def __init__(self, path: str, waited: float, first: bool) -> None:
        self.path, self.waited, self.first = path, waited, first
        if first:
            text = f"statvfs of {path} did not return within {waited:g} s (hung NFS?)"
        else:
            text = (f"statvfs of {path} has still not returned after {format_duration(waited)} "
                    "(hung NFS?); not retried until it does")
        super().__init__(text)


@dataclass
class _Call:
    started: float
    finished: threading.Event = field(default_factory=threading.Event)


class _DaemonWorkers:
    """Reusable daemon threads, one more whenever none is idle.

    Not concurrent.futures: its threads are joined at interpreter exit, so one statvfs stuck
    on a dead NFS server would hang the agent's shutdown. A stuck worker simply never comes
    back; the others carry on. Idle workers stay bounded by the most calls ever in flight at
    once (about the number of mount points).
    """

    def __init__(self) -> None:
        self._jobs: queue.SimpleQueue[Callable[[], None]] = queue.SimpleQueue()
        self._idle = 0
        self._lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> None:
        with self._lock:
            spawn = self._idle == 0
            if not spawn:
                self._idle -= 1
        self._jobs.put(job)
        if spawn:
            threading.Thread(target=self._work, name="statvfs", daemon=True).start()

    def _work(self) -> None:
        while True:
            self._jobs.get()()
            with self._lock:
                self._idle += 1


class BoundedStatvfs:
    """statvfs with a time limit and at most one outstanding (possibly stuck) call per path.

    `statvfs` and `clock` are parameters so a test can stand in a call that blocks; the real
    os.statvfs is used everywhere else.
    """

    def __init__(self, timeout: float, statvfs: Callable[[str], os.statvfs_result] = os.statvfs,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.timeout = timeout
        self._statvfs = statvfs
        self._clock = clock
        self._calls: dict[str, _Call] = {}
        self._lock = threading.Lock()
        self._workers = _DaemonWorkers()

    def blocked(self) -> list[str]:
        """Paths whose statvfs is still running in a stuck thread."""
        with self._lock:
            return [p for p, c in self._calls.items() if not c.finished.is_set()]

    async def __call__(self, path: str) -> os.statvfs_result:
        loop = asyncio.get_running_loop()
        with self._lock:
            previous = self._calls.get(path)
            if previous is not None and not previous.finished.is_set():
                raise StatvfsTimeout(path, self._clock() - previous.started, first=False)
            call = _Call(self._clock())
            self._calls[path] = call
        done = loop.create_future()
        outcome: list = []

        def wake() -> None:
            if not done.done():
                done.set_result(None)

        def work() -> None:
            try:
                outcome.append(self._statvfs(path))
            except BaseException as exc:  # handed to the awaiting coroutine
                outcome.append(exc)
            call.finished.set()
            try:
                loop.call_soon_threadsafe(wake)
            except RuntimeError:
                pass  # the event loop is gone (agent stopped); nobody waits for this any more

        # Our own daemon workers, not asyncio.to_thread: a stuck call must not hold a slot of
        # the loop's shared executor that other collectors need.
        self._workers.submit(work)
        timer = loop.call_later(self.timeout, wake)
        try:
            await done
        finally:
            timer.cancel()
        if not call.finished.is_set():
            raise StatvfsTimeout(path, self.timeout, first=True)
        with self._lock:
            if self._calls.get(path) is call:
                del self._calls[path]
        result = outcome[0]
        if isinstance(result, BaseException):
            raise result
        return result


@dataclass(frozen=True)
class UsageThresholds:
    usage_warning: float = 85.0
    usage_critical: float = 95.0
    inodes_warning: float = 85.0
    inodes_critical: float = 95.0


def usage_state(percent: float, warning: float, critical: float) -> State:
    """CRITICAL at or above `critical` percent, WARNING at or above `warning`, else OK."""
    if percent >= critical:
        return State.CRITICAL
    if percent >= warning:
        return State.WARNING
    return State.OK


def usage_check(target: str, mount: Mount, st: os.statvfs_result, limits: UsageThresholds,
                now: float) -> CheckResult:
    """The check and measurements for one file system, the way df counts.

    used = blocks - free blocks; free = blocks available to ordinary users; used_percent is
    used / (used + available), so the blocks reserved for root count as unavailable (df's Use%).
    """
    instance = f"fs:{mount.mountpoint}"
    frsize = st.f_frsize or st.f_bsize
    size = st.f_blocks * frsize
    used = (st.f_blocks - st.f_bfree) * frsize
    avail = st.f_bavail * frsize
    usable = used + avail
    used_pct = 100.0 * used / usable if usable else 0.0

    def m(metric: str, value: float, unit: str, maximum: float | None = None) -> Measurement:
        return Measurement(target, instance, metric, value, unit=unit, timestamp=now,
                           minimum=0, maximum=maximum)

    ms = [m("used_bytes", used, "B"), m("free_bytes", avail, "B"), m("size_bytes", size, "B"),
          m("used_percent", used_pct, "%", 100)]
    state = bytes_state = usage_state(used_pct, limits.usage_warning, limits.usage_critical)
    inode_state = State.OK
    parts = [f"{used_pct:.1f}% used ({format_bytes(used)} of {format_bytes(usable)}, "
             f"{format_bytes(avail)} free)"]
    # Some file systems (btrfs, vfat, many network ones) have no fixed inode table: f_files 0.
    if st.f_files:
        inodes_used = st.f_files - st.f_ffree
        inodes_usable = inodes_used + st.f_favail
        inodes_pct = 100.0 * inodes_used / inodes_usable if inodes_usable else 0.0
        ms += [m("inodes_used", inodes_used, ""), m("inodes_free", st.f_favail, ""),
               m("inodes_used_percent", inodes_pct, "%", 100)]
        inode_state = usage_state(inodes_pct, limits.inodes_warning, limits.inodes_critical)
        parts.append(f"inodes {inodes_pct:.1f}% used ({st.f_favail} free)")
        if inode_state.severity > state.severity:
            state = inode_state
    if bytes_state is not State.OK:
        parts.append(f"space warns at {limits.usage_warning:g}%, critical at {limits.usage_critical:g}%")
    if inode_state is not State.OK:
        parts.append(f"inodes warn at {limits.inodes_warning:g}%, critical at {limits.inodes_critical:g}%")
    shown = clean(mount.mountpoint, 200)  # \012 and \033 in the mount table are real bytes
    message = f"{shown} ({clean(mount.fstype)}): " + ", ".join(parts)
    return CheckResult(target, f"disk {shown}", state, message, tuple(ms), now)


async def collect_usage(target: str, mounts_file: Path, include: list[str], exclude: list[str],
                        exclude_fs_types: list[str], limits: UsageThresholds,
                        statvfs: BoundedStatvfs, clock: Callable[[], float] = time.time,
                        ) -> list[CheckResult]:
    """One check per selected mount point, all statvfs calls running at the same time."""
    try:
        text = await asyncio.to_thread(Path(mounts_file).read_text, encoding="utf-8",
                                       errors="surrogateescape")
    except OSError as exc:
        return [CheckResult(target, "disks", State.UNKNOWN,
                            f"cannot read the mount table {mounts_file}: {exc.strerror}; "
                            "set [disks] mounts to the right file", timestamp=clock())]
    mounts = parse_mounts(text)
    if Path(mounts_file).parent.parent == Path("/proc"):  # /proc/self/mounts: the same in detail
        try:
            info = await asyncio.to_thread(Path(mounts_file).with_name("mountinfo").read_text,
                                           encoding="utf-8", errors="surrogateescape")
        except OSError:
            info = ""
        parts = bind_mounts_of_parts(info)
        mounts = [m for m in mounts if m.mountpoint not in parts]
    selected = select_mounts(mounts, include, exclude, exclude_fs_types)

    async def one(mount: Mount) -> CheckResult:
        shown = clean(mount.mountpoint, 200)
        try:
            st = await statvfs(mount.mountpoint)
        except StatvfsTimeout as exc:
            return CheckResult(target, f"disk {shown}", State.UNKNOWN, clean(exc, 300),
                               timestamp=clock())
        except OSError as exc:
            return CheckResult(target, f"disk {shown}", State.UNKNOWN,
                               f"statvfs of {shown} failed: {exc.strerror or exc}",
                               timestamp=clock())
        return usage_check(target, mount, st, limits, clock())

    return list(await asyncio.gather(*(one(m) for m in selected)))
