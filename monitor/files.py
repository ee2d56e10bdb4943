"""Small file helpers shared by the store, the status book, the site writer and the collectors
that keep state (atomic writes, modes, locks, path-safe names for untrusted names)."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

# State (check states, histories, indexes): the agent's user and group only.
STATE_MODE = 0o640
# Pages and graphs: a web server running as another user serves them.
PUBLIC_MODE = 0o644

_SAFE_CHARS = re.compile(r"[A-Za-z0-9_\-]")
_MAX_NAME = 96


def atomic_write(path: Path, data: bytes | str | Iterable[str], mode: int = STATE_MODE, *,
                 durable: bool = True) -> None:
    """Write a file so that readers see either the old or the new content, never a part.

    The temporary file lives in the same directory (same filesystem); its data reach the disk
    (fsync) before it is renamed over the target, and the rename is made durable after, so a
    crash leaves the old file or the new one, never an empty one. On error it is removed and
    the old file stays as it was. The file gets `mode` whatever the umask: STATE_MODE by
    default, PUBLIC_MODE for what a web server serves; directories it creates get the matching
    search bits (0750, 0755). `durable=False` skips the two fsyncs (tens of milliseconds each on
    a busy disk): readers still never see a part, but a power loss may leave the old content
    or an empty file; for state rewritten every poll whose reader checks it. `data` may be
    pieces of text, written as they come (a big file need not be in memory whole).
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    pieces = [data] if isinstance(data, bytes) else (piece.encode("utf-8") for piece in data)
    make_dirs(path.parent, directory_mode(mode))
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name[:40]}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            for piece in pieces:
                handle.write(piece)
            handle.flush()
            os.fchmod(handle.fileno(), mode)
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        sync_directory(path.parent)


def save_state(path: Path, data: object) -> None:
    """A producer's state (counters, rate memory) as compact JSON, written atomically with
    mode 0600: what a restart or the next `collect --once` from cron carries on from. Not
    fsynced: it is rewritten at every poll (1,000 devices: 2,000 fsyncs a cycle), and its
    readers check it (a damaged or stale state only costs one interval of rates)."""
    atomic_write(path, json.dumps(data, separators=(",", ":")), mode=0o600, durable=False)


def load_state(path: Path) -> Any:
    """What `save_state` wrote; None when there is none. Raises OSError or ValueError (a damaged
    file): the caller says whose state it was and starts afresh."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    return json.loads(text)


def directory_mode(file_mode: int) -> int:
    """The mode of a directory holding files of `file_mode`: search (x) where read (r) is."""
    return 0o700 | file_mode | ((file_mode & 0o444) >> 2)


def make_dirs(directory: Path, mode: int) -> None:
    """Create `directory` and missing parents with exactly `mode` (not the umask's idea of it);
    existing directories are left as they are."""
    missing = []
    while not directory.is_dir():
        missing.append(directory)
        if directory.parent == directory:
            break
        directory = directory.parent
    for new in reversed(missing):
        try:
            new.mkdir()
        except FileExistsError:  # another writer was quicker; its mode stands
            continue
        os.chmod(new, mode)


def sync_filesystem(path: Path) -> None:
    """Make everything written to `path`'s filesystem durable with one call (Linux syncfs: one
    journal commit), where many files were written with `durable=False`: a site build's
    thousands of graphs and pages, before the state that says they were drawn. Elsewhere, or
    where syncfs is missing, a plain sync()."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        if not hasattr(libc, "syncfs") or libc.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def sync_directory(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on `path` (created if needed) for the duration of the block."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def safe_name(name: str) -> str:
    """An injective, path-safe file name component for an untrusted name.

    Letters, digits, "_" and "-" stay; every other byte (including "/", "." and "=") becomes
    =XX, so "a/b" -> "a=2Fb" never meets "a_b", and ".." cannot appear. Long names are cut and
    completed by a hash so they stay unique. The empty name is "@" (which no other name yields).
    Never "%": librrd (1.7.2) passes file names through printf-style formatting in its error
    paths, where "%s" or "%n" in a name garbles the message or crashes the process.
    """
    if name == "":
        return "@"
    raw = name.encode("utf-8", "surrogateescape")
    out = "".join(chr(b) if _SAFE_CHARS.match(chr(b)) else f"={b:02X}" for b in raw)
    if len(out) > _MAX_NAME:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        out = f"{out[:_MAX_NAME - 17]}~{digest}"
    return out
