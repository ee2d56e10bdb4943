"""The durable outbox: every alert and digest mail goes through here.

`enqueue()` writes the whole message into SQLite (WAL, synchronous=FULL) and returns only once it
is on disk: from then on it is delivered even if the relay is down for hours or the agent is
killed. `deliver_pending()` sends what is due over one SMTP connection, marks each message sent
right after the relay accepted it, and stops at the first sign that the relay is unwell.

Guarantees and their limits:
- Exactly once, except the one message in flight when the process dies between the relay's
  "250 OK" and our commit: it is sent again after the restart, with the same Message-ID (set at
  enqueue time), so a human or a mail filter can recognise the duplicate.
- In order: the relay-level failures (cannot connect, TLS, AUTH, 421, timeouts) back off the
  whole queue, so after an outage messages leave in the order they were accepted. A message the
  relay refuses temporarily (4xx) backs off alone; a permanent refusal (5xx) is marked failed,
  logged, and listed by `monitor alerts`; the rest of the queue carries on.
- One deliverer at a time per outbox file (an flock), so the agent's job, a digest run and a
  manual command never send the same message twice.
- Several agents taking turns with one outbox (a cluster's leaders, each with a copy of it) share
  a `DeliveryLedger`: before a pass it may save the state the mail comes from (False: this agent
  sends nothing now); each message is noted as begun just before DATA and as sent after the
  relay's answer, and a message another agent noted is never sent again: sent (or refused for
  good), it is marked so here; begun by an agent that stopped before the relay answered, it is
  marked sent "unconfirmed" (the relay most likely has it) and logged, rather than sent twice.
  A message the relay deferred is free again for whoever sends next.
- In the agent, delivery is its own task (`start()`/`stop()`), never part of a collector's or the
  alert job's run: a stuck relay delays mail, not collection, and a stop or reload cancels a
  hanging SMTP session at once (what was not confirmed stays queued). New mail wakes the task
  for an attempt at once, whatever the back-off; between probes of a relay that is down it
  waits at most `retry_max` (50 s), so queued mail leaves within a minute of the relay's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import fcntl
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path
from typing import Protocol

from alerts.db import SqliteFile
from alerts.mail import recipients_of
from alerts.transport import Outcome, RouteDown, open_route
from monitor.config import SmtpConfig
from monitor.units import format_duration

log = logging.getLogger("monitor.outbox")

PENDING, SENT, FAILED = "pending", "sent", "failed"
# Our subjects are at most 200 characters: no folding needed, and folding a subject can leave
# a leading space on some phones' lock screens. 998 is SMTP's hard line limit.
_WIRE = email.policy.SMTP.clone(max_line_length=998)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    message_id TEXT NOT NULL,
    sender TEXT NOT NULL,
    recipients TEXT NOT NULL,          -- JSON list
    subject TEXT NOT NULL,
    raw BLOB NOT NULL,                 -- the message as it goes on the wire
    created REAL NOT NULL,
    status TEXT NOT NULL DEFAULT 'pending',
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    done_at REAL,
    unconfirmed INTEGER NOT NULL DEFAULT 0,  -- times the relay never answered after the message
    refused TEXT NOT NULL DEFAULT '',  -- sent, but these recipients were refused
    route TEXT NOT NULL DEFAULT ''     -- the relay (or sendmail) that took it
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status, id);
CREATE INDEX IF NOT EXISTS outbox_message_id ON outbox(message_id);
CREATE TABLE IF NOT EXISTS routes (
    name TEXT PRIMARY KEY,             -- "0 host:port" (the primary), "1 ..." (fallbacks)
    failures INTEGER NOT NULL,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL,
    down_since REAL NOT NULL,
    refused INTEGER NOT NULL           -- it said no (AUTH, 5xx), rather than not answering
);
"""


@dataclass(frozen=True)
class OutboxEntry:
    id: int
    message_id: str
    recipients: list[str]
    subject: str
    created: float
    status: str
    attempts: int
    next_attempt: float
    last_error: str
    done_at: float | None
    unconfirmed: int = 0
    refused: str = ""
    route: str = ""


@dataclass(frozen=True)
class RelayState:
    failures: int
    next_attempt: float
    last_error: str
    down_since: float = 0.0
    refused: bool = False


class DeliveryLedger(Protocol):
    """What the agents sharing an outbox know of each message's delivery (see above)."""

    async def before_pass(self) -> bool:
        """Whether this agent may send now (having saved what the next one needs, if so)."""
        ...

    async def taken(self, message_id: str) -> str | None:
        """Why this agent must not send the message (sent or begun by another), or None."""
        ...

    async def begin(self, message_id: str) -> str | None:
        """Note that this agent sends the message now; None, or why it cannot (then it waits)."""
        ...

    async def settle(self, message_id: str, status: str) -> None:
        """What became of a message this agent sent (an `Outcome` status): "sent" or
        "refused" (for good), nobody sends it again; "deferred" (or the way out failed before
        it went), another agent may; "unconfirmed", it stays begun."""
        ...


class Outbox:
    def __init__(
        self,
        db_path: Path,
        smtp: SmtpConfig,
        clock: Callable[[], float] = time.time,
        *,
        retry_base: float = 30.0,
        retry_max: float = 50.0,
        readonly: bool = False,
    ) -> None:
        self.db_path = Path(db_path)
        self.smtp = smtp
        self.clock = clock
        self.retry_base = retry_base
        self.retry_max = retry_max
        self._lock = asyncio.Lock()
        self._task: asyncio.Task | None = None
        self._wake = asyncio.Event()
        self._urgent = False
        self._stopped = False
        self.file = SqliteFile(self.db_path, _SCHEMA, readonly=readonly, columns=(
            ("outbox", "unconfirmed", "INTEGER NOT NULL DEFAULT 0"),
            ("outbox", "refused", "TEXT NOT NULL DEFAULT ''"),
            ("outbox", "route", "TEXT NOT NULL DEFAULT ''")))
        self.routes = [smtp, *smtp.fallback]
        self._refused_by_primary: set[int] = set()  # message ids the primary said no to
        self._connect = self.file.connect
        self.ledger: DeliveryLedger | None = None

    def share(self, ledger: DeliveryLedger) -> None:
        """From now on, deliver in turns with the other agents of `ledger` (a cluster)."""
        self.ledger = ledger

    def close(self) -> None:
        self.file.close()

    def enqueue(self, message: EmailMessage) -> int:
        """Accept a message for delivery; durable when this returns. Returns its outbox id.

        A Message-ID the outbox holds already is not taken again (the id of the first is
        returned): handing a message over twice, as after a crash, sends it once.

        Sets Message-ID (if absent) and Date (if absent) now, so that a resend after a crash is
        byte-identical and recognisable as a duplicate.
        """
        if message["Message-ID"] is None:
            domain = self.smtp.sender.rpartition("@")[2] or "localhost"
            message["Message-ID"] = email.utils.make_msgid("monitor", domain=domain)
        if message["Date"] is None:
            message["Date"] = email.utils.formatdate(self.clock(), localtime=True)
        recipients = recipients_of(message)
        if not recipients:
            raise ValueError("message has no recipients (To/Cc/Bcc)")
        # Bcc must not travel in the headers.
        del_bcc = message.get_all("Bcc") is not None
        if del_bcc:
            del message["Bcc"]
        raw = message.as_bytes(policy=_WIRE)
        now = self.clock()
        with self._connect() as db:
            db.execute("BEGIN IMMEDIATE")
            known = db.execute("SELECT id FROM outbox WHERE message_id = ?",
                               (str(message["Message-ID"]),)).fetchone()
            if known is not None:  # handed over before a crash: it is queued (or sent) already
                db.execute("COMMIT")
                return known[0]
            cur = db.execute(
                "INSERT INTO outbox (message_id, sender, recipients, subject, raw, created, "
                "next_attempt) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (str(message["Message-ID"]), self.smtp.sender, json.dumps(recipients),
                 str(message["Subject"] or ""), raw, now, now),
            )
            db.execute("COMMIT")
            assert cur.lastrowid is not None
            return cur.lastrowid

    def entries(self, status: str | None = None, limit: int = 1000) -> list[OutboxEntry]:
        query = ("SELECT id, message_id, recipients, subject, created, status, attempts, "
                 "next_attempt, last_error, done_at, unconfirmed, refused, route FROM outbox")
        args: tuple = ()
        if status:
            query += " WHERE status = ?"
            args = (status,)
        query += " ORDER BY id DESC LIMIT ?"
        with self._connect() as db:
            rows = db.execute(query, (*args, limit)).fetchall()
        return [OutboxEntry(r[0], r[1], json.loads(r[2]), *r[3:]) for r in reversed(rows)]

    def pending(self) -> list[OutboxEntry]:
        return self.entries(PENDING)

    def failed(self, limit: int = 50) -> list[OutboxEntry]:
        return self.entries(FAILED, limit)

    def relay_state(self, index: int = 0) -> RelayState:
        """The state of the primary relay (or of fallback `index`)."""
        with self._connect() as db:
            row = db.execute("SELECT failures, next_attempt, last_error, down_since, refused "
                             "FROM routes WHERE name = ?", (self._route_name(index),)).fetchone()
        return RelayState(row[0], row[1], row[2], row[3], bool(row[4])) if row else RelayState(
            0, 0.0, "")

    def _route_name(self, index: int) -> str:
        return f"{index} {self.routes[index].where}"

    def _set_route(self, index: int, state: RelayState) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO routes (name, failures, next_attempt, last_error, "
                       "down_since, refused) VALUES (?, ?, ?, ?, ?, ?)",
                       (self._route_name(index), state.failures, state.next_attempt,
                        state.last_error, state.down_since, int(state.refused)))

    def raw_message(self, entry_id: int) -> bytes:
        with self._connect() as db:
            row = db.execute("SELECT raw FROM outbox WHERE id = ?", (entry_id,)).fetchone()
        if row is None:
            raise KeyError(entry_id)
        return bytes(row[0])

    def purge(self, older_than: float) -> int:
        """Forget sent messages older than `older_than` seconds (failed ones stay listed)."""
        with self._connect() as db:
            cur = db.execute("DELETE FROM outbox WHERE status = ? AND done_at < ?",
                             (SENT, self.clock() - older_than))
            return cur.rowcount

    def _due(self, now: float) -> list[tuple[int, str, str, str, bytes, int, int]]:
        with self._connect() as db:
            return db.execute(
                "SELECT id, message_id, sender, recipients, raw, attempts, unconfirmed FROM outbox "
                "WHERE status = ? AND next_attempt <= ? ORDER BY id", (PENDING, now)).fetchall()

    def _mark(self, entry_id: int, status: str, attempts: int, next_attempt: float,
              error: str, **more: object) -> None:
        extra = "".join(f", {name} = ?" for name in more)
        with self._connect() as db:
            db.execute(
                "UPDATE outbox SET status = ?, attempts = ?, next_attempt = ?, last_error = ?, "
                f"done_at = ?{extra} WHERE id = ?",
                (status, attempts, next_attempt, error,
                 self.clock() if status != PENDING else None, *more.values(), entry_id))

    def _backoff(self, failures: int) -> float:
        return min(self.retry_max, self.retry_base * 2 ** max(0, failures - 1))

    # -- delivery --------------------------------------------------------------------------

    def start(self, poll: float = 30.0) -> None:
        """Deliver from a task of its own from now on (the agent; needs a running loop)."""
        if self._task is None and not self._stopped:
            self._task = asyncio.get_running_loop().create_task(self._run(poll),
                                                                  name="outbox delivery")

    async def stop(self) -> None:
        """Cancel the delivery task, even in the middle of an SMTP session; from now on mail is
        only queued (a collector run that ends during a shutdown must not start a session)."""
        task, self._stopped = self._task, True
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self, poll: float) -> None:
        while True:
            urgent, self._urgent = self._urgent, False
            self._wake.clear()
            try:
                await self._deliver_locked(urgent)
                wait = await asyncio.to_thread(self._next_wait, poll)
            except (sqlite3.Error, OSError) as exc:
                log.error("mail delivery from %s failed: %s; trying again in %.0f s",
                          self.db_path, exc, poll)
                wait = poll
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _next_wait(self, poll: float) -> float:
        """Seconds until something is due (at most `poll`: another process may enqueue)."""
        with self._connect() as db:
            row = db.execute("SELECT MIN(next_attempt) FROM outbox WHERE status = ?",
                             (PENDING,)).fetchone()
        if row[0] is None:
            return poll
        due = max(row[0], self.relay_state().next_attempt)
        return min(poll, max(0.5, due - self.clock()))

    async def deliver_pending(self, new_mail: bool = False) -> int:
        """Send every due message; returns how many the relay accepted. Never raises for SMTP
        trouble: that is recorded (relay backoff, per-message retry or failure) and logged.

        `new_mail`: something was just queued; the relay is tried at once, even while it is
        backed off. With the delivery task running (the agent), this only wakes it (returns 0)."""
        if self._stopped:
            return 0
        if self._task is not None:
            self._urgent = self._urgent or new_mail
            self._wake.set()
            return 0
        return await self._deliver_locked(new_mail)

    async def _deliver_locked(self, urgent: bool) -> int:
        async with self._lock:
            lock_file = self.db_path.with_name(self.db_path.name + ".deliver.lock")
            handle = open(lock_file, "a")  # noqa: SIM115 - held across awaits
            try:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    log.debug("another process is delivering from %s", self.db_path)
                    return 0
                return await self._deliver(urgent)
            finally:
                handle.close()

    async def _deliver(self, urgent: bool) -> int:
        """One pass: the primary first; what it could not take goes to the fallbacks, in order,
        if the primary refused it or has been down `fallback_after`."""
        if self.ledger is not None and not await self.ledger.before_pass():
            return 0
        now = self.clock()
        due = await asyncio.to_thread(self._due, now)
        if self.ledger is not None:
            due = [row for row in due if not await self._taken_elsewhere(row)]
        sent = 0
        for index in range(len(self.routes)):
            if not due:
                break
            if index > 0 and not await asyncio.to_thread(self._primary_given_up, due):
                break
            state = await asyncio.to_thread(self.relay_state, index)
            if now < state.next_attempt and not urgent:
                continue
            taken, due = await self._deliver_via(index, state, due)
            sent += taken
        return sent

    async def _taken_elsewhere(self, row: tuple) -> bool:
        """Whether another agent of the ledger has sent or begun sending this message (then it
        is marked sent here, and not sent again)."""
        assert self.ledger is not None
        entry_id, message_id, *_, attempts, unconfirmed = row
        why = await self.ledger.taken(message_id)
        if why is None:
            return False
        begun = why.startswith("begun")
        await asyncio.to_thread(self._mark, entry_id, FAILED if why.startswith("refused") else SENT,
                                attempts, 0.0, why, unconfirmed=unconfirmed + begun)
        (log.error if begun else log.info)("mail %s (%s) %s; not sent again", entry_id,
                                           message_id, why)
        return True

    def _primary_given_up(self, due: list) -> bool:
        primary = self.relay_state(0)
        refused_here = any(row[0] in self._refused_by_primary for row in due)
        return refused_here or primary.refused or (
            primary.failures > 0 and self.clock() - primary.down_since >= self.smtp.fallback_after)

    async def _deliver_via(self, index: int, state: RelayState, due: list) -> tuple[int, list]:
        """Send `due` over route `index`; returns (sent, what is left for the next route)."""
        route = self.routes[index]
        last = index == len(self.routes) - 1
        try:
            session = await open_route(route)
        except RouteDown as exc:
            await self._route_failed(index, state, exc, len(due))
            return 0, due
        sent, left = 0, list[tuple[int, str, str, str, bytes, int, int]]()
        try:
            for position, row in enumerate(due):
                entry_id, message_id, sender, recipients_json, raw = row[:5]
                begin = None
                if self.ledger is not None:
                    begin = functools.partial(self.ledger.begin, message_id)
                try:
                    outcome = await session.send(sender, json.loads(recipients_json), bytes(raw),
                                                 before_data=begin)
                except RouteDown as exc:
                    if self.ledger is not None:
                        await self.ledger.settle(message_id, "deferred")
                    await self._route_failed(index, state, exc, len(due) - position)
                    return sent, left + due[position:]
                if outcome.status == "refused" and not last:
                    if self.ledger is not None:
                        await self.ledger.settle(message_id, "deferred")
                    self._refused_by_primary.add(entry_id)
                    left.append(row)
                    log.warning("mail %s (%s) refused by %s: %s; trying the next way out",
                                entry_id, message_id, route.where, outcome.text)
                    continue
                sent += await self._record(index, row, outcome)
                if outcome.status == "unconfirmed":
                    # The session is unusable; the rest waits for the next pass.
                    await self._route_failed(index, state, RouteDown(outcome.text),
                                             len(due) - position - 1)
                    return sent, left + due[position + 1:]
        finally:
            await session.close()
        if state.failures or state.refused:
            log.info("mail relay %s works again; %d queued message(s) sent", route.where, sent)
            await asyncio.to_thread(self._set_route, index, RelayState(0, 0.0, ""))
        return sent, left

    async def _record(self, index: int, row: tuple, outcome: Outcome) -> int:
        entry_id, message_id, _, recipients_json, _, attempts, unconfirmed = row
        where = self.routes[index].where
        if self.ledger is not None:
            await self.ledger.settle(message_id, outcome.status)
        if outcome.status == "sent":
            if outcome.refused:
                log.error("mail %s (%s) delivered via %s, but some recipients were refused: %s",
                          entry_id, message_id, where, outcome.refused)
            await asyncio.to_thread(self._mark, entry_id, SENT, attempts + 1, 0.0, "",
                                    refused=outcome.refused, route=where)
            log.debug("mail %s (%s) delivered via %s to %s", entry_id, message_id, where,
                      recipients_json)
            return 1
        if outcome.status == "unconfirmed":
            if unconfirmed >= 1:
                # Twice without a verdict: most likely delivered twice already; stop here.
                await asyncio.to_thread(self._mark, entry_id, SENT, attempts + 1, 0.0,
                                        outcome.text, unconfirmed=unconfirmed + 1, route=where)
                log.error("mail %s (%s): %s, for the second time; not sent again",
                          entry_id, message_id, outcome.text)
                return 1
            await asyncio.to_thread(self._mark, entry_id, PENDING, attempts + 1, 0.0,
                                    outcome.text, unconfirmed=1)
            log.warning("mail %s (%s): %s; sending it once more, with the same Message-ID",
                        entry_id, message_id, outcome.text)
            return 0
        if outcome.status == "refused":
            await asyncio.to_thread(self._mark, entry_id, FAILED, attempts + 1, 0.0, outcome.text)
            log.error("mail %s (%s) permanently refused by %s: %s; see `monitor alerts`",
                      entry_id, message_id, where, outcome.text)
            return 0
        delay = self._backoff(attempts + 1)
        await asyncio.to_thread(self._mark, entry_id, PENDING, attempts + 1,
                                self.clock() + delay, outcome.text)
        log.warning("mail %s (%s) deferred by %s: %s; retry in %.0f s", entry_id, message_id,
                    where, outcome.text, delay)
        return 0

    async def _route_failed(self, index: int, state: RelayState, exc: RouteDown,
                            waiting: int) -> None:
        failures = state.failures + 1
        delay = self._backoff(failures)
        down_since = state.down_since if state.failures else self.clock()
        await asyncio.to_thread(self._set_route, index, RelayState(
            failures, self.clock() + delay, str(exc), down_since, exc.refused))
        log.error("mail relay unavailable (%s); %d message(s) wait, next attempt in %.0f s",
                  exc, waiting, delay)

    # -- the agent's own check ----------------------------------------------------------------

    def health(self) -> tuple[int, str]:
        """(severity 0 OK / 1 WARNING / 2 CRITICAL, message) of the mail path, for the agent's
        `mail` check: how long the oldest mail waits, what the relay said, what it refused."""
        now = self.clock()
        day = now - 86400
        with self._connect() as db:
            waiting, oldest = db.execute("SELECT COUNT(*), MIN(created) FROM outbox WHERE "
                                         "status = ?", (PENDING,)).fetchone()
            failed = db.execute("SELECT COUNT(*), MAX(last_error) FROM outbox WHERE status = ? "
                                "AND done_at >= ?", (FAILED, day)).fetchone()
            partial = db.execute("SELECT COUNT(*), MAX(refused) FROM outbox WHERE status = ? "
                                 "AND refused != '' AND done_at >= ?", (SENT, day)).fetchone()
            via = db.execute("SELECT route, COUNT(*) FROM outbox WHERE status = ? AND "
                             "done_at >= ? GROUP BY route", (SENT, now - 3600)).fetchall()
        primary = self.relay_state(0)
        problems: list[tuple[int, str]] = []
        if waiting:
            waited = now - oldest
            level = (2 if waited >= self.smtp.critical_after
                     else 1 if waited >= self.smtp.warn_after else 0)
            why = f"; {primary.last_error}" if primary.failures else ""
            problems.append((level, f"{waiting} mail(s) waiting, the oldest for "
                             f"{format_duration(waited)}{why}"))
        if primary.refused:
            problems.append((2, f"the relay refuses mail: {primary.last_error}"))
        if failed[0]:
            problems.append((2, f"{failed[0]} mail(s) refused in the last 24h (see `monitor "
                             f"alerts`): {failed[1]}"))
        if partial[0]:
            problems.append((1, f"{partial[0]} mail(s) in the last 24h reached only some "
                             f"recipients: {partial[1]}"))
        fallbacks = [f"{n} via {r}" for r, n in via if r and r != self.routes[0].where]
        if fallbacks:
            problems.append((1, f"mail went out by a fallback: {', '.join(fallbacks)} in the "
                             "last hour"))
        if self.file.damaged:
            problems.append((2, self.file.damaged))
        worst = max((level for level, _ in problems), default=0)
        shown = [text for level, text in problems if level] or [
            f"mail goes out via {self.routes[0].where}"
            + (f"; {waiting} mail(s) on their way" if waiting else "")]
        return worst, "; ".join(shown)


def outbox_path(state_dir: Path) -> Path:
    return Path(state_dir) / "outbox.db"


__all__ = ["FAILED", "PENDING", "SENT", "DeliveryLedger", "Outbox", "OutboxEntry", "RelayState",
           "outbox_path"]
