"""The SQLite files of the alert path (alerts.db, outbox.db): opening, damage, full disks.

- A connection per operation (safe from worker threads and from the CLI while the agent runs),
  plus one held open and idle for the object's life: it keeps the -wal and -shm files in place,
  so that on a full disk reads still work (a fresh connection could not create them).
- A damaged file (not a database, malformed) is moved aside with a timestamp and a fresh one is
  started: the agent keeps alerting; `damaged` says what happened, for the agent's mail check.
- `readonly=True` (the CLI's listings) never writes, not even the schema: `monitor alerts`
  works on a full disk.
"""

from __future__ import annotations

import contextlib
import logging
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("monitor.alerts")


class SqliteFile:
    def __init__(self, path: Path, schema: str, *, synchronous: str = "FULL",
                 readonly: bool = False, columns: tuple[tuple[str, str, str], ...] = ()) -> None:
        """`columns`: (table, column, declaration) added to files an older version made."""
        self.path = Path(path)
        self.synchronous = synchronous
        self.readonly = readonly
        self.damaged = ""
        self.columns = columns
        self._keep: sqlite3.Connection | None = None
        if readonly:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._create(schema)
        except sqlite3.OperationalError:
            raise
        except sqlite3.DatabaseError as exc:
            self.damaged = self._move_aside(exc)
            self._create(schema)

    def _create(self, schema: str) -> None:
        with self.connect() as db:
            if db.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("integrity check failed")
            db.executescript(schema)
            for table, column, declaration in self.columns:
                have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
                if column not in have:
                    db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {declaration}")
        self._keep = sqlite3.connect(self.path, check_same_thread=False)
        self._keep.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()

    def _move_aside(self, exc: Exception) -> str:
        aside = self.path.with_name(f"{self.path.name}.damaged-{time.strftime('%Y%m%d-%H%M%S')}")
        for suffix in ("", "-wal", "-shm"):
            part = Path(str(self.path) + suffix)
            if part.exists():
                part.rename(str(aside) + suffix)
        text = (f"{self.path} is damaged ({exc}); moved aside to {aside} and started afresh: "
                "alert states, silences and history (or queued mail) of before are in that "
                "file; keep it for inspection or delete it")
        log.critical("%s", text)
        return text

    def close(self) -> None:
        if self._keep is not None:
            self._keep.close()
            self._keep = None

    @contextlib.contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        if self.readonly:
            db = _open_readonly(self.path)
        else:
            db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            if not self.readonly:
                db.execute("PRAGMA journal_mode=WAL")
                db.execute(f"PRAGMA synchronous={self.synchronous}")
            yield db
        finally:
            db.close()


def _open_readonly(path: Path) -> sqlite3.Connection:
    if not path.exists():
        raise FileNotFoundError(f"{path} does not exist yet (the agent creates it)")
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30, isolation_level=None)
    try:
        db.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        # No room for the -shm file (full disk, agent stopped): read the file as it is.
        db.close()
        return sqlite3.connect(f"file:{path}?immutable=1", uri=True, isolation_level=None)
