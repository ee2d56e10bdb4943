"""The ways a message leaves the outbox: an SMTP relay, or the local sendmail program.

A `Session` sends one message at a time and says what became of it (`Outcome`); trouble with
the way out as a whole (cannot connect, TLS, AUTH, 421, a timeout before the message went) is
`RouteDown`, and the outbox backs that route off or moves on to a fallback.

SMTP follows RFC 5321's per-stage timeouts: `timeout` for connect, greeting and each command,
`data_timeout` (10 minutes by default, as 4.5.3.2.6 asks) for the answer after the message. No
answer after the whole message went is "maybe delivered" (`unconfirmed`): the outbox sends it
once more with the same Message-ID rather than every time. Recipients are given one RCPT each,
so a relay refusing 1 of 3 is recorded (`Outcome.refused`) while the other two get the mail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Literal, Protocol

import aiosmtplib

from alerts.mail import clean_header
from monitor.config import SmtpRelay


@dataclass(frozen=True)
class Outcome:
    status: Literal["sent", "deferred", "refused", "unconfirmed"]
    text: str = ""
    refused: str = ""  # sent, but these recipients were refused ("addr: 550 ...; ...")


class RouteDown(Exception):
    """The route as a whole cannot be used now. `refused`: it said no (AUTH, 5xx greeting),
    as opposed to not answering; a refusal moves mail to a fallback at once."""

    def __init__(self, text: str, refused: bool = False) -> None:
        super().__init__(text)
        self.refused = refused


# Called just before the message goes (SMTP: before DATA): None to send it, or why not (the
# outbox's ledger could not note that it goes); the message is then deferred, not sent.
BeforeData = Callable[[], Awaitable[str | None]]


class Session(Protocol):
    async def send(self, sender: str, recipients: list[str], raw: bytes,
                   before_data: BeforeData | None = None) -> Outcome: ...

    async def close(self) -> None: ...


async def open_route(relay: SmtpRelay) -> Session:
    if relay.transport == "sendmail":
        if not os.access(relay.sendmail, os.X_OK):
            raise RouteDown(f"{relay.sendmail} is not an executable program; install Postfix or "
                            "exim, or fix [smtp] sendmail")
        return SendmailSession(relay)
    return await SmtpSession.open(relay)


def _by_code(code: int, text: str) -> Outcome:
    return Outcome("refused" if code >= 500 else "deferred", text)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiosmtplib.SMTPResponseException):
        return f"{exc.code} {exc.message}"
    text = str(exc) or type(exc).__name__
    return text if not isinstance(exc, OSError) or not exc.strerror else exc.strerror


_PERIOD = re.compile(rb"(?m)^\.")


class SmtpSession:
    def __init__(self, relay: SmtpRelay, client: aiosmtplib.SMTP) -> None:
        self.relay = relay
        self.client = client
        self.where = relay.where
        self.dead = ""

    @classmethod
    async def open(cls, relay: SmtpRelay) -> SmtpSession:
        context = None
        if relay.security != "none":
            context = ssl.create_default_context(
                cafile=str(relay.ca_file) if relay.ca_file else None)
        client = aiosmtplib.SMTP(
            hostname=relay.host, port=relay.port, timeout=relay.timeout,
            use_tls=relay.security == "tls", start_tls=relay.security == "starttls",
            tls_context=context,
        )
        where = relay.where
        try:
            await client.connect()
        except aiosmtplib.SMTPConnectResponseError as exc:
            raise RouteDown(f"mail relay {where} refused the connection: {_describe(exc)}",
                            refused=exc.code >= 500) from exc
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise RouteDown(f"cannot connect to mail relay {where}: {_describe(exc)}") from exc
        if relay.username:
            try:
                await client.login(relay.username, relay.password or "")
            except aiosmtplib.SMTPAuthenticationError as exc:
                await _quit(client)
                raise RouteDown(
                    f"mail relay {where} refused the login for {relay.username!r}: {exc.code} "
                    f"{exc.message}; check [smtp] username and password", refused=True) from exc
            except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
                await _quit(client)
                raise RouteDown(f"AUTH at mail relay {where} failed: {_describe(exc)}") from exc
        return cls(relay, client)

    async def send(self, sender: str, recipients: list[str], raw: bytes,
                   before_data: BeforeData | None = None) -> Outcome:
        if self.dead:
            raise RouteDown(self.dead)
        c, timeout = self.client, self.relay.timeout
        try:
            try:
                await c.mail(sender, timeout=timeout)
            except aiosmtplib.SMTPSenderRefused as exc:
                return await self._refused(exc.code, f"sender {sender}: {exc.code} {exc.message}")
            refused: list[tuple[str, int, str]] = []
            for rcpt in recipients:
                try:
                    await c.rcpt(rcpt, timeout=timeout)
                except aiosmtplib.SMTPRecipientRefused as exc:
                    if exc.code == 421:
                        raise RouteDown(f"{self.where}: {exc.code} {exc.message}") from exc
                    refused.append((rcpt, exc.code, exc.message))
            text = "; ".join(f"{r}: {code} {message}" for r, code, message in refused)
            if len(refused) == len(recipients):
                return await self._refused(min(code for _, code, _ in refused), text)
            if before_data is not None and (why := await before_data()) is not None:
                await c.rset(timeout=timeout)
                return Outcome("deferred", why)
            start = await c.execute_command(b"DATA", timeout=timeout)
            if start.code != 354:
                return await self._refused(start.code, f"DATA: {start.code} {start.message}")
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            raise RouteDown(f"mail relay {self.where}: {_describe(exc)}") from exc
        assert c.protocol is not None
        payload = raw.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")
        if not payload.endswith(b"\r\n"):
            payload += b"\r\n"
        c.protocol.write(_PERIOD.sub(b"..", payload) + b".\r\n")
        try:
            answer = await c.protocol.read_response(timeout=self.relay.data_timeout)
        except (TimeoutError, aiosmtplib.SMTPException, OSError) as exc:
            # The whole message went and no verdict came: it may well have been delivered.
            self.dead = f"mail relay {self.where} did not answer after the message"
            c.close()
            return Outcome("unconfirmed", f"no answer within {self.relay.data_timeout:.0f} s "
                           f"after the message ({_describe(exc)}); maybe delivered")
        if answer.code == 250:
            return Outcome("sent", refused=text)
        return await self._refused(answer.code, f"after the message: {answer.code} "
                                   f"{answer.message}")

    async def _refused(self, code: int, text: str) -> Outcome:
        if code == 421:
            raise RouteDown(f"{self.where}: {text}")
        with contextlib.suppress(Exception):
            await self.client.rset()
        return _by_code(code, text)

    async def close(self) -> None:
        if not self.dead:
            await _quit(self.client)


async def _quit(client: aiosmtplib.SMTP) -> None:
    with contextlib.suppress(Exception):
        await client.quit()
    client.close()


# sendmail(8) exit codes (sysexits.h): 75 is "try again later"; the others are a refusal.
EX_TEMPFAIL = 75


class SendmailSession:
    def __init__(self, relay: SmtpRelay) -> None:
        self.relay = relay

    async def send(self, sender: str, recipients: list[str], raw: bytes,
                   before_data: BeforeData | None = None) -> Outcome:
        if before_data is not None and (why := await before_data()) is not None:
            return Outcome("deferred", why)
        argv = [self.relay.sendmail, "-oi", "-f", sender, "--", *recipients]
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.DEVNULL,
                stderr=asyncio.subprocess.PIPE)
        except OSError as exc:
            raise RouteDown(f"cannot run {self.relay.sendmail}: {exc.strerror or exc}") from exc
        try:
            unix = raw.replace(b"\r\n", b"\n")  # sendmail reads lines in the local convention
            _, err = await asyncio.wait_for(proc.communicate(unix), self.relay.data_timeout)
        except TimeoutError as exc:
            proc.kill()
            await proc.wait()
            raise RouteDown(f"{self.relay.sendmail} did not finish within "
                            f"{self.relay.data_timeout:.0f} s") from exc
        except asyncio.CancelledError:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            raise
        if proc.returncode == 0:
            return Outcome("sent")
        said = clean_header(err.decode("utf-8", "replace"), limit=300) or "no message"
        text = f"{self.relay.sendmail} exited with status {proc.returncode}: {said}"
        return Outcome("deferred" if proc.returncode == EX_TEMPFAIL else "refused", text)

    async def close(self) -> None:
        return None
