"""Alert persistence: states, silences, history and the grouping queue in one SQLite file.

`data_dir/state/alerts.db` survives restarts: the engine carries on where it was (pending
timers, flapping history, which problems were announced and so owe a recovery mail). The
history table is what digests read for "alerts of the period". Every method opens its own
short connection, so the store can be used from worker threads and by the CLI while the agent
runs.
"""

from __future__ import annotations

import fnmatch
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from alerts.db import SqliteFile
from alerts.engine import AlertState, Event

_SCHEMA = """
CREATE TABLE IF NOT EXISTS states (
    key TEXT PRIMARY KEY,
    rule TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    at REAL NOT NULL,
    kind TEXT NOT NULL,
    rule TEXT NOT NULL,
    target TEXT NOT NULL,
    label TEXT NOT NULL,
    severity TEXT NOT NULL,
    message TEXT NOT NULL,
    since REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS history_at ON history(at);
CREATE TABLE IF NOT EXISTS silences (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pattern TEXT NOT NULL,
    reason TEXT NOT NULL,
    created REAL NOT NULL,
    until REAL NOT NULL,
    author TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS queue (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    grp TEXT NOT NULL,
    created REAL NOT NULL,
    event TEXT NOT NULL,
    mail TEXT                          -- the Message-ID of the mail that carries it, once chosen
);
CREATE TABLE IF NOT EXISTS acks (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    pattern TEXT NOT NULL,             -- an alert id (see `monitor alerts`) or a silence pattern
    author TEXT NOT NULL,
    comment TEXT NOT NULL,
    created REAL NOT NULL,
    until REAL NOT NULL,               -- 0: until the problem recovers
    applied INTEGER NOT NULL DEFAULT 0 -- the agent has taken it into its states
);
CREATE TABLE IF NOT EXISTS meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
"""


@dataclass(frozen=True)
class Silence:
    id: int
    pattern: str
    reason: str
    created: float
    until: float
    author: str = ""

    def matches(self, rule: str, target: str, label: str) -> bool:
        """A pattern (shell glob) silences an alert if it matches its target, its rule name,
        "target label" or "rule:target"."""
        p = self.pattern
        return any(fnmatch.fnmatchcase(text, p)
                   for text in (target, rule, f"{target} {label}", f"{rule}:{target}"))


@dataclass(frozen=True)
class Ack:
    id: int
    pattern: str
    author: str
    comment: str
    created: float
    until: float

    def matches(self, state: AlertState) -> bool:
        return self.pattern.lower() == alert_id(state.key) or Silence(
            0, self.pattern, "", 0, 0).matches(state.rule, state.target, state.label)


def alert_id(key: str) -> str:
    """A short id for an alert, stable across restarts (shown by `monitor alerts`)."""
    return hashlib.sha1(key.encode()).hexdigest()[:6]



def reply_token(secret: str, key: str, since: float) -> str:
    """What a reply must quote to act on an alert: its id and a MAC only this agent makes.

    The MAC covers the problem episode (`since`, its first bad reading) too, so a token quoted
    from last month's mail about the same check cannot acknowledge today's new problem."""
    message = f"{key}\n{since:.3f}".encode()
    mac = hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()[:10]
    return f"{alert_id(key)}.{mac}"


def glob_literal(text: str) -> str:
    """A silence pattern that matches exactly `text` (device names may hold *, ? or [)."""
    return re.sub(r"([*?\[])", r"[\1]", text)


@dataclass(frozen=True)
class HistoryEntry:
    id: int
    at: float
    kind: str
    rule: str
    target: str
    label: str
    severity: str
    message: str
    since: float


class AlertStore:
    def __init__(self, path: Path, clock=time.time, *, readonly: bool = False) -> None:
        self.path = Path(path)
        self.clock = clock
        # FULL: a state change counts as announced only once it is on disk.
        self.file = SqliteFile(self.path, _SCHEMA, readonly=readonly,
                               columns=(("queue", "mail", "TEXT"),))
        self._connect = self.file.connect
        # Part of every alert Message-ID: a fresh file (moved aside when damaged) restarts the
        # queue's ids, and must not make Message-IDs the outbox has seen already.
        self.nonce = "" if readonly else self._meta("nonce", uuid.uuid4().hex[:12])
        # The key of the reply tokens: never shown in a mail (the nonce is, in every Message-ID).
        self.reply_key = "" if readonly else self._meta("reply_key", secrets.token_hex(32))

    def _meta(self, name: str, initial: str) -> str:
        with self._connect() as db:
            db.execute("INSERT OR IGNORE INTO meta (key, value) VALUES (?, ?)", (name, initial))
            return db.execute("SELECT value FROM meta WHERE key = ?", (name,)).fetchone()[0]

    def close(self) -> None:
        self.file.close()

    # -- states ----------------------------------------------------------------------------

    def load_states(self) -> dict[str, AlertState]:
        with self._connect() as db:
            rows = db.execute("SELECT data FROM states").fetchall()
        states = {}
        for (data,) in rows:
            s = AlertState.from_json(json.loads(data))
            states[s.key] = s
        return states

    def save(self, states: Iterable[AlertState], events: Iterable[Event] = (),
             queue: Iterable[tuple[str, Event]] = (), forget: Iterable[str] = (),
             acks_applied: Iterable[int] = ()) -> None:
        """Store changed states, their events in the history and the grouping queue, and drop
        the `forget` keys, in one transaction (so a crash never keeps a state without the mail
        it owes, or vice versa)."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            db.executemany("DELETE FROM states WHERE key = ?", [(k,) for k in forget])
            db.executemany("UPDATE acks SET applied = 1 WHERE id = ?", [(i,) for i in acks_applied])
            db.executemany("INSERT OR REPLACE INTO states (key, rule, data) VALUES (?, ?, ?)",
                           [(s.key, s.rule, json.dumps(s.to_json())) for s in states])
            db.executemany(
                "INSERT INTO history (at, kind, rule, target, label, severity, message, since) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(e.at, e.kind.value, e.rule, e.target, e.label, e.severity.name, e.message,
                  e.since) for e in events])
            db.executemany("INSERT INTO queue (grp, created, event) VALUES (?, ?, ?)",
                           [(g, e.at, json.dumps(e.to_json())) for g, e in queue])
            db.execute("COMMIT")

    # -- grouping queue ----------------------------------------------------------------------

    def due_groups(self, window: float, now: float) -> list[str]:
        """Groups whose oldest queued event has waited `window`."""
        with self._connect() as db:
            rows = db.execute("SELECT grp FROM queue GROUP BY grp HAVING MIN(created) <= ? "
                              "ORDER BY MIN(id)", (now - window,)).fetchall()
        return [r[0] for r in rows]

    def claim(self, group: str, message_id: str) -> tuple[str, list[tuple[int, Event]]]:
        """The events of `group` that the next mail carries, and that mail's Message-ID.

        The choice is saved before the mail is handed to the outbox: after a crash in between,
        the same events go out under the same Message-ID (the outbox takes a Message-ID once),
        never twice under two. Events queued later wait for the next mail."""
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute("SELECT mail FROM queue WHERE grp = ? AND mail IS NOT NULL "
                             "ORDER BY id LIMIT 1", (group,)).fetchone()
            if row is not None:
                message_id = row[0]
            else:
                db.execute("UPDATE queue SET mail = ? WHERE grp = ? AND mail IS NULL",
                           (message_id, group))
            rows = db.execute("SELECT id, event FROM queue WHERE mail = ? ORDER BY id",
                              (message_id,)).fetchall()
            db.execute("COMMIT")
        return message_id, [(i, Event.from_json(json.loads(e))) for i, e in rows]

    def dequeue(self, message_id: str) -> None:
        """The mail is in the outbox: its events leave the queue."""
        with self._connect() as db:
            db.execute("DELETE FROM queue WHERE mail = ?", (message_id,))

    # -- silences ----------------------------------------------------------------------------

    def add_silence(self, pattern: str, duration: float, reason: str, author: str = "") -> Silence:
        now = self.clock()
        with self._connect() as db:
            cur = db.execute("INSERT INTO silences (pattern, reason, created, until, author) "
                             "VALUES (?, ?, ?, ?, ?)", (pattern, reason, now, now + duration, author))
            assert cur.lastrowid is not None
            return Silence(cur.lastrowid, pattern, reason, now, now + duration, author)

    def silences(self, include_expired: bool = False) -> list[Silence]:
        query = "SELECT id, pattern, reason, created, until, author FROM silences"
        args: tuple = ()
        if not include_expired:
            query += " WHERE until > ?"
            args = (self.clock(),)
        with self._connect() as db:
            return [Silence(*row) for row in db.execute(query + " ORDER BY id", args)]

    def remove_silence(self, silence_id: int) -> bool:
        """End a silence now (kept in the table as expired, for the record)."""
        with self._connect() as db:
            cur = db.execute("UPDATE silences SET until = ? WHERE id = ? AND until > ?",
                             (self.clock(), silence_id, self.clock()))
            return cur.rowcount > 0

    # -- acknowledgements --------------------------------------------------------------------

    def add_ack(self, pattern: str, author: str, comment: str, until: float = 0.0) -> Ack:
        """Ask the agent to acknowledge the problems matching `pattern` (applied at its next
        evaluation, or at its start)."""
        now = self.clock()
        with self._connect() as db:
            cur = db.execute("INSERT INTO acks (pattern, author, comment, created, until) "
                             "VALUES (?, ?, ?, ?, ?)", (pattern, author, comment, now, until))
            assert cur.lastrowid is not None
            return Ack(cur.lastrowid, pattern, author, comment, now, until)

    def pending_acks(self) -> list[Ack]:
        with self._connect() as db:
            rows = db.execute("SELECT id, pattern, author, comment, created, until FROM acks "
                              "WHERE applied = 0 ORDER BY id").fetchall()
        return [Ack(*row) for row in rows]

    # -- history -----------------------------------------------------------------------------

    def history(self, since: float, until: float | None = None) -> list[HistoryEntry]:
        """Alert events between two times, oldest first (for digests and `monitor alerts`)."""
        with self._connect() as db:
            rows = db.execute(
                "SELECT id, at, kind, rule, target, label, severity, message, since FROM history "
                "WHERE at >= ? AND at < ? ORDER BY id", (since, until or float("inf"))).fetchall()
        return [HistoryEntry(*row) for row in rows]

    def prune_history(self, older_than: float) -> int:
        with self._connect() as db:
            return db.execute("DELETE FROM history WHERE at < ?",
                              (self.clock() - older_than,)).rowcount


def alerts_db_path(state_dir: Path) -> Path:
    return Path(state_dir) / "alerts.db"
