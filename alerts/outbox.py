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
- In the agent, delivery is its own task (`start()`/`stop()`), never part of a collector's or the
  alert job's run: a stuck relay delays mail, not collection, and a stop or reload cancels a
  hanging SMTP session at once (what was not confirmed stays queued). New mail wakes the task
  for an attempt at once, whatever the back-off; between probes of a relay that is down it
  waits at most `retry_max` (60 s), so queued mail leaves within a minute of the relay's return.
"""

from __future__ import annotations

import asyncio
import contextlib
import email.policy
import email.utils
import fcntl
import json
import logging
import sqlite3
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from email.message import EmailMessage
from pathlib import Path

import aiosmtplib

from alerts.db import SqliteFile
from alerts.mail import recipients_of
from monitor.config import SmtpConfig

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
    done_at REAL
);
CREATE INDEX IF NOT EXISTS outbox_status ON outbox(status, id);
CREATE INDEX IF NOT EXISTS outbox_message_id ON outbox(message_id);
CREATE TABLE IF NOT EXISTS relay (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    failures INTEGER NOT NULL,
    next_attempt REAL NOT NULL,
    last_error TEXT NOT NULL
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


@dataclass(frozen=True)
class RelayState:
    failures: int
    next_attempt: float
    last_error: str


class RelayUnavailable(Exception):
    """The relay as a whole is not usable now (connect, TLS, AUTH, 421, timeout)."""


class Outbox:
    def __init__(
        self,
        db_path: Path,
        smtp: SmtpConfig,
        clock: Callable[[], float] = time.time,
        *,
        retry_base: float = 30.0,
        retry_max: float = 60.0,
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
        self.file = SqliteFile(self.db_path, _SCHEMA, readonly=readonly)
        self._connect = self.file.connect

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
                 "next_attempt, last_error, done_at FROM outbox")
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

    def relay_state(self) -> RelayState:
        with self._connect() as db:
            row = db.execute("SELECT failures, next_attempt, last_error FROM relay").fetchone()
        return RelayState(*row) if row else RelayState(0, 0.0, "")

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

    def _due(self, now: float) -> list[tuple[int, str, str, str, bytes, int]]:
        with self._connect() as db:
            return db.execute(
                "SELECT id, message_id, sender, recipients, raw, attempts FROM outbox "
                "WHERE status = ? AND next_attempt <= ? ORDER BY id", (PENDING, now)).fetchall()

    def _mark(self, entry_id: int, status: str, attempts: int, next_attempt: float,
              error: str) -> None:
        with self._connect() as db:
            db.execute(
                "UPDATE outbox SET status = ?, attempts = ?, next_attempt = ?, last_error = ?, "
                "done_at = ? WHERE id = ?",
                (status, attempts, next_attempt, error,
                 self.clock() if status != PENDING else None, entry_id))

    def _set_relay(self, failures: int, next_attempt: float, error: str) -> None:
        with self._connect() as db:
            db.execute("INSERT OR REPLACE INTO relay (id, failures, next_attempt, last_error) "
                       "VALUES (1, ?, ?, ?)", (failures, next_attempt, error))

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
        now = self.clock()
        relay = await asyncio.to_thread(self.relay_state)
        if now < relay.next_attempt and not urgent:
            return 0
        due = await asyncio.to_thread(self._due, now)
        if not due:
            return 0
        sent = 0
        client: aiosmtplib.SMTP | None = None
        try:
            try:
                client = await self._open()
            except RelayUnavailable as exc:
                await self._relay_failed(relay, str(exc), len(due))
                return 0
            for entry_id, message_id, sender, recipients_json, raw, attempts in due:
                recipients = json.loads(recipients_json)
                try:
                    errors, _ = await client.sendmail(sender, recipients, bytes(raw))
                except aiosmtplib.SMTPRecipientsRefused as exc:
                    codes = [e.code for e in exc.recipients]
                    text = "; ".join(f"{e.recipient}: {e.code} {e.message}" for e in exc.recipients)
                    if 421 in codes:
                        raise RelayUnavailable(text) from exc
                    await self._refused(entry_id, message_id, attempts, min(codes), text)
                    await _reset(client)
                    continue
                except (aiosmtplib.SMTPSenderRefused, aiosmtplib.SMTPDataError) as exc:
                    if exc.code == 421:
                        raise RelayUnavailable(f"{exc.code} {exc.message}") from exc
                    await self._refused(entry_id, message_id, attempts, exc.code,
                                        f"{exc.code} {exc.message}")
                    await _reset(client)
                    continue
                except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                    raise RelayUnavailable(_describe(exc)) from exc
                note = ""
                if errors:
                    note = "some recipients refused: " + "; ".join(
                        f"{r}: {e.code} {e.message}" for r, e in errors.items())
                    log.error("mail %s (%s): %s", entry_id, message_id, note)
                await asyncio.to_thread(self._mark, entry_id, SENT, attempts + 1, 0.0, note)
                sent += 1
                log.debug("mail %s (%s) delivered to %s", entry_id, message_id, recipients)
        except RelayUnavailable as exc:
            await self._relay_failed(relay, str(exc), len(due) - sent)
            return sent
        finally:
            if client is not None:
                with contextlib.suppress(Exception):
                    await client.quit()
        if relay.failures:
            log.info("mail relay %s:%d works again; %d queued message(s) sent",
                     self.smtp.host, self.smtp.port, sent)
            await asyncio.to_thread(self._set_relay, 0, 0.0, "")
        return sent

    async def _open(self) -> aiosmtplib.SMTP:
        smtp = self.smtp
        context = None
        if smtp.security != "none":
            context = ssl.create_default_context(cafile=str(smtp.ca_file) if smtp.ca_file else None)
        client = aiosmtplib.SMTP(
            hostname=smtp.host, port=smtp.port, timeout=smtp.timeout,
            use_tls=smtp.security == "tls",
            start_tls=smtp.security == "starttls",
            tls_context=context,
        )
        where = f"{smtp.host}:{smtp.port}"
        try:
            await client.connect()
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise RelayUnavailable(f"cannot connect to mail relay {where}: {_describe(exc)}") from exc
        if smtp.username:
            try:
                await client.login(smtp.username, smtp.password or "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                with contextlib.suppress(Exception):
                    await client.quit()
                raise RelayUnavailable(
                    f"mail relay {where} refused the login for {smtp.username!r}: {exc.code} "
                    f"{exc.message}; check [smtp] username and password") from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                with contextlib.suppress(Exception):
                    await client.quit()
                raise RelayUnavailable(f"AUTH at mail relay {where} failed: {_describe(exc)}") from exc
        return client

    async def _relay_failed(self, relay: RelayState, error: str, waiting: int) -> None:
        failures = relay.failures + 1
        delay = self._backoff(failures)
        await asyncio.to_thread(self._set_relay, failures, self.clock() + delay, error)
        log.error("mail relay unavailable (%s); %d message(s) wait, next attempt in %.0f s",
                  error, waiting, delay)

    async def _refused(self, entry_id: int, message_id: str, attempts: int, code: int,
                       text: str) -> None:
        if code >= 500:
            await asyncio.to_thread(self._mark, entry_id, FAILED, attempts + 1, 0.0, text)
            log.error("mail %s (%s) permanently refused by the relay: %s; see `monitor alerts`",
                      entry_id, message_id, text)
        else:
            delay = self._backoff(attempts + 1)
            await asyncio.to_thread(self._mark, entry_id, PENDING, attempts + 1,
                                    self.clock() + delay, text)
            log.warning("mail %s (%s) deferred by the relay: %s; retry in %.0f s",
                        entry_id, message_id, text, delay)


async def _reset(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        await client.rset()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    text = str(exc) or type(exc).__name__
    return text if not isinstance(exc, OSError) or not exc.strerror else exc.strerror


def outbox_path(state_dir: Path) -> Path:
    return Path(state_dir) / "outbox.db"


__all__ = ["FAILED", "PENDING", "SENT", "Outbox", "OutboxEntry", "RelayState", "outbox_path"]
