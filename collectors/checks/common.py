"""What every service check shares: outcomes, safe text, connections with deadlines, TLS.

A check function is `async def run(check, env) -> Outcome`. It never raises for a service that is
down: refused, reset, timed out and garbled answers are outcomes. `collectors.services` turns
outcomes into CheckResults and applies the response-time thresholds.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from monitor.config import ServiceCheck
from monitor.model import Kind, State

# How much of a greeting or plugin output goes into a one-line message.
MESSAGE_TEXT_LIMIT = 120
# Longest line we buffer from a server: a banner is short; anything longer is cut.
LINE_LIMIT = 8192
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")

T = TypeVar("T")


def clean(text: str | bytes | None, limit: int = MESSAGE_TEXT_LIMIT) -> str:
    """Untrusted server text made safe for a one-line message: no control characters, short."""
    if text is None:
        return ""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    if len(text) <= limit and text.isprintable() and "  " not in text:
        return text.strip()  # the usual case, cheaply (isprintable() is False for all of _CONTROL)
    text = " ".join(_CONTROL.sub(" ", text).split())
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def seconds_text(value: float) -> str:
    """0.0123 -> "0.012 s", 1.5 -> "1.5 s": enough digits to see a loopback answer move."""
    if value < 0.01:
        return f"{value:.4f} s"
    if value < 1:
        return f"{value:.3f} s"
    return f"{value:.2f} s" if value < 10 else f"{value:.1f} s"


def limit_text(value: float) -> str:
    return f"{value:g} s"


@dataclass
class Outcome:
    """What one check found. `metrics`: extra measurements, metric -> (value, unit, kind)."""

    state: State
    message: str
    response_seconds: float | None = None
    metrics: dict[str, tuple[float | None, str, Kind]] = field(default_factory=dict)


@dataclass
class Env:
    """What a check may touch besides its own config: parameters, so tests can point them."""

    hostname: str
    ping_path: str = "ping"
    clock: Callable[[], float] = time.time
    _contexts: dict[tuple[bool, str | None], ssl.SSLContext] = field(default_factory=dict)

    async def ssl_context(self, verify: bool, ca_file: Path | None) -> ssl.SSLContext:
        """One client context per (verify, CA file), made once in a thread: loading the
        system's CA store takes tens of milliseconds that the event loop should not wait."""
        key = (verify, str(ca_file) if ca_file else None)
        ctx = self._contexts.get(key)
        if ctx is None:
            ctx = await asyncio.to_thread(self._make_context, verify, ca_file)
            self._contexts.setdefault(key, ctx)
        return ctx

    @staticmethod
    def _make_context(verify: bool, ca_file: Path | None) -> ssl.SSLContext:
        if verify:
            return ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        return ctx


class Closed(Exception):
    """The server closed the connection before it said what we waited for."""


@dataclass
class Progress:
    """Where a dialogue is, so a timeout can say what the server failed to do."""

    phase: str = "connecting"
    started: float = 0.0  # loop.time() when the attempt began


@dataclass
class Session:
    """TLS facts gathered during one attempt: (server name, DER certificate) per TLS connection."""

    verify: bool
    certs: list[tuple[str, bytes]] = field(default_factory=list)


class Conn:
    """A stream connection (TLS, or plain that may be upgraded with STARTTLS) that always
    closes: aborted on failure, a brief graceful close otherwise."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    @classmethod
    async def open(cls, host: str, port: int, *, ssl_ctx: ssl.SSLContext | None = None,
                   server_name: str | None = None, session: Session | None = None,
                   timeout: float = 10.0) -> Conn:
        kwargs: dict = {}
        if ssl_ctx is not None:
            kwargs = {"ssl": ssl_ctx, "server_hostname": server_name or host,
                      "ssl_handshake_timeout": timeout, "ssl_shutdown_timeout": 1.0}
        reader, writer = await asyncio.open_connection(host, port, limit=LINE_LIMIT, **kwargs)
        conn = cls(reader, writer)
        if ssl_ctx is not None and session is not None:
            conn.record_cert(server_name or host, session)
        return conn

    def record_cert(self, name: str, session: Session) -> None:
        obj = self.writer.get_extra_info("ssl_object")
        der = obj.getpeercert(binary_form=True) if obj is not None else None
        if der:
            session.certs.append((name, der))

    async def start_tls(self, ssl_ctx: ssl.SSLContext, server_name: str, session: Session,
                        timeout: float) -> None:
        await self.writer.start_tls(ssl_ctx, server_hostname=server_name, ssl_handshake_timeout=timeout)
        self.record_cert(server_name, session)

    async def readline(self) -> bytes:
        try:
            return await self.reader.readuntil(b"\n")
        except asyncio.IncompleteReadError as exc:
            if not exc.partial:
                raise Closed() from None
            return exc.partial
        except asyncio.LimitOverrunError as exc:
            # An endless line: take what is buffered and carry on; the message is cut anyway.
            return await self.reader.read(max(exc.consumed, 1))

    async def read(self, limit: int) -> bytes:
        return await self.reader.read(limit)

    async def readexactly(self, count: int) -> bytes:
        return await self.reader.readexactly(count)

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    def send_nowait(self, data: bytes) -> None:
        self.writer.write(data)

    def abort(self) -> None:
        self.writer.transport.abort()

    async def close(self) -> None:
        self.writer.close()
        try:
            async with asyncio.timeout(0.5):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            self.abort()


class PlainConn:
    """A plain TCP connection on a bare non-blocking socket and the loop's sock_* calls.

    Most checks at scale are plain port and banner checks; skipping the transport, protocol and
    stream objects roughly halves their CPU cost (see bench/services_bench.py). Same reading
    interface as Conn; no STARTTLS (checks that need it use Conn).
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = b""
        self.eof = False
        self.loop = asyncio.get_running_loop()

    @classmethod
    async def open(cls, host: str, port: int) -> PlainConn:
        loop = asyncio.get_running_loop()
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        try:
            socket.inet_pton(family, host)
            infos = [(family, (host, port))]
        except OSError:
            infos = [(i[0], i[4]) for i in await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)]
        error: OSError | None = None
        for family, address in infos:  # every address in turn, as open_connection does
            sock = socket.socket(family, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await loop.sock_connect(sock, address)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                error = exc
                continue
            return cls(sock)
        assert error is not None
        raise error

    async def _fill(self, limit: int = 4096) -> bool:
        if self.eof:
            return False
        data = await self.loop.sock_recv(self.sock, limit)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def readline(self) -> bytes:
        while True:
            end = self.buffer.find(b"\n")
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1:]
                return line
            if len(self.buffer) >= LINE_LIMIT or not await self._fill():
                line, self.buffer = self.buffer[:LINE_LIMIT], self.buffer[LINE_LIMIT:]
                if not line:
                    raise Closed()
                return line

    async def read(self, limit: int) -> bytes:
        if not self.buffer:
            await self._fill(min(limit, 65536))
        data, self.buffer = self.buffer[:limit], self.buffer[limit:]
        return data

    async def readexactly(self, count: int) -> bytes:
        while len(self.buffer) < count:
            if not await self._fill(min(count - len(self.buffer), 65536)):
                partial, self.buffer = self.buffer, b""
                raise asyncio.IncompleteReadError(partial, count)
        data, self.buffer = self.buffer[:count], self.buffer[count:]
        return data

    async def send(self, data: bytes) -> None:
        await self.loop.sock_sendall(self.sock, data)

    def send_nowait(self, data: bytes) -> None:
        with contextlib.suppress(OSError):
            self.sock.send(data)

    async def start_tls(self, *args, **kwargs) -> None:
        raise RuntimeError("a plain connection cannot start TLS; open it with upgradable=True")

    def abort(self) -> None:
        self.sock.close()

    async def close(self) -> None:
        self.sock.close()


AnyConn = Conn | PlainConn


async def connect(host: str, port: int, *, ssl_ctx: ssl.SSLContext | None = None,
                  upgradable: bool = False, **kwargs) -> AnyConn:
    """A plain connection when nothing needs TLS, else a stream one. The caller must close or
    abort it on every path (see `connected`)."""
    if ssl_ctx is None and not upgradable:
        return await PlainConn.open(host, port)
    return await Conn.open(host, port, ssl_ctx=ssl_ctx, **kwargs)


@contextlib.asynccontextmanager
async def connected(host: str, port: int, **kwargs):
    """`async with connected(...) as conn`: closed on every path, aborted on failure."""
    conn = await connect(host, port, **kwargs)
    try:
        yield conn
    except BaseException:
        conn.abort()
        raise
    else:
        await conn.close()


async def with_verify_retry(check: ServiceCheck, attempt: Callable[[Session], Awaitable[T]]
                            ) -> tuple[T, Session, str | None]:
    """Run `attempt` with a verifying TLS context; if the certificate is refused, run it again
    without verification so the check still reports the protocol answer and the certificate's
    expiry, along with why it is not trusted."""
    session = Session(verify=check.verify)
    if not check.uses_tls or not check.verify:
        return await attempt(session), session, None
    try:
        return await attempt(session), session, None
    except ssl.SSLCertVerificationError as exc:
        error = clean(exc.verify_message or str(exc))
    session = Session(verify=False)
    return await attempt(session), session, error


def cert_outcome(check: ServiceCheck, session: Session, verify_error: str | None,
                 now: float) -> tuple[State, str, float | None]:
    """(state, text, days left of the earliest-expiring certificate) for a TLS check."""
    from cryptography import x509

    earliest: float | None = None
    earliest_name = ""
    for name, der in session.certs:
        try:
            cert = x509.load_der_x509_certificate(der)
        except ValueError:
            return State.CRITICAL, f"certificate from {clean(name)} cannot be parsed", None
        days = (cert.not_valid_after_utc.timestamp() - now) / 86400
        if earliest is None or days < earliest:
            earliest, earliest_name = days, name
    if earliest is None:
        return State.CRITICAL, "no TLS certificate received", None
    until = dt.datetime.fromtimestamp(now + earliest * 86400, dt.UTC).strftime("%Y-%m-%d")
    if earliest < 0:
        state = State.CRITICAL
        text = f"certificate for {clean(earliest_name)} expired {-earliest:.0f} days ago ({until})"
    else:
        text = f"certificate for {clean(earliest_name)} expires in {earliest:.0f} days ({until})"
        state = (State.CRITICAL if earliest < check.cert_critical_days
                 else State.WARNING if earliest < check.cert_warning_days else State.OK)
        if state is State.OK:
            text = f"certificate valid {earliest:.0f} more days"
    if verify_error and earliest >= 0:
        state = State.CRITICAL
        text = f"certificate not trusted ({verify_error}); {text}"
    return state, text, earliest


def connect_error_text(exc: BaseException, host: str, port: int) -> str:
    """Why a connection failed, in words that suggest where to look."""
    if isinstance(exc, ConnectionRefusedError):
        return "refused the connection (nothing listening, or a firewall rejects it)"
    if isinstance(exc, socket.gaierror):
        return f"cannot be resolved ({clean(exc.strerror or str(exc))}); check the name and DNS"
    if isinstance(exc, ConnectionResetError):
        return "reset the connection"
    if isinstance(exc, Closed):
        return "closed the connection without an answer"
    if isinstance(exc, ssl.SSLError):
        return f"failed the TLS handshake ({clean(exc.reason or str(exc))})"
    if isinstance(exc, OSError):
        return f"cannot be reached ({clean(exc.strerror or str(exc))})"
    return f"failed: {clean(str(exc)) or type(exc).__name__}"


def endpoint(host: str, port: int | None) -> str:
    host = clean(host)
    if port is None:
        return host
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
