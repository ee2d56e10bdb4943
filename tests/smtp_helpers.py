"""Real aiosmtpd servers on 127.0.0.1 port 0 for the alert and outbox tests.

`start_smtp()` runs aiosmtpd's SMTP protocol in the test's own event loop (so the port is
really 0 and nothing is left behind), optionally with STARTTLS or implicit TLS on a certificate
made with `cryptography`, and with AUTH checked against one user.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import warnings
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Received:
    sender: str
    recipients: list[str]
    raw: bytes

    @property
    def message(self) -> EmailMessage:
        return email.message_from_bytes(self.raw, policy=email.policy.default)  # type: ignore


@dataclass
class Recorder:
    """An aiosmtpd handler that keeps every message; `reject` maps a subject word to a reply."""

    received: list[Received] = field(default_factory=list)
    reject: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle_DATA(self, server, session, envelope) -> str:
        raw = envelope.original_content or envelope.content
        if self.delay:
            self.arrived.set()
            await asyncio.sleep(self.delay)
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        for word, reply in self.reject.items():
            if word in str(msg["Subject"]):
                return reply
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw))
        self.arrived.set()
        return "250 OK"

    def subjects(self) -> list[str]:
        return [str(r.message["Subject"]) for r in self.received]

    def message_ids(self) -> list[str]:
        return [str(r.message["Message-ID"]) for r in self.received]


class Authenticator:
    def __init__(self, user: str, password: str) -> None:
        self.user, self.password = user.encode(), password.encode()
        self.attempts = 0

    def __call__(self, server, session, envelope, mechanism, auth_data) -> AuthResult:
        self.attempts += 1
        ok = (isinstance(auth_data, LoginPassword) and auth_data.login == self.user
              and auth_data.password == self.password)
        return AuthResult(success=ok, handled=False)


async def start_smtp(
    handler: Recorder,
    *,
    cert: tuple[Path, Path] | None = None,
    implicit_tls: bool = False,
    auth: Authenticator | None = None,
    port: int = 0,
) -> tuple[asyncio.AbstractServer, int]:
    """Serve SMTP on 127.0.0.1; STARTTLS offered (and required) when `cert` is given, unless
    `implicit_tls`. Returns (server, port); close with server.close()."""
    context = None
    if cert is not None:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(*map(str, cert))

    def factory() -> SMTP:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # AUTH without STARTTLS: implicit TLS
            return make()

    def make() -> SMTP:
        return SMTP(
            handler, hostname="localhost",
            tls_context=None if implicit_tls else context,
            require_starttls=context is not None and not implicit_tls,
            authenticator=auth, auth_required=auth is not None,
            # aiosmtpd only knows STARTTLS as "TLS"; under implicit TLS the wire is TLS anyway.
            auth_require_tls=context is not None and not implicit_tls,
        )

    loop = asyncio.get_running_loop()
    server = await loop.create_server(factory, "127.0.0.1", port,
                                      ssl=context if implicit_tls else None)
    return server, server.sockets[0].getsockname()[1]


def free_port() -> int:
    """A loopback port nothing listens on (for a relay that is down, or one started later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
