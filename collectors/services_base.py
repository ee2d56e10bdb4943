"""What every service probe shares: its outcome, safe text from untrusted peers, TLS contexts
and the certificate verdict (days to expiry, host name, chain)."""

from __future__ import annotations

import _ssl
import asyncio
import base64
import contextlib
import datetime
import ipaddress
import os
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, TypeVar
from urllib.parse import unquote, urlsplit

from monitor.config import ServiceCheck
from monitor.model import State, Thresholds
from monitor.text import clean

if TYPE_CHECKING:
    from cryptography import x509

C = TypeVar("C")  # what a connect_to connection is (streams, a socket)


def hostport(host: str, port: int | None) -> str:
    """"mail.example.net:25", "[2001:db8::25]:25" for the messages."""
    host = clean(host, 60)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# http/https checks are labelled by their site (services_http.site_label), dns and ping by
# their target: these are the kinds whose label is the check's host and port.
LABELS = {"tcp": "TCP", "smtp": "SMTP", "imap": "IMAP", "pop3": "POP3", "ssh": "SSH", "ftp": "FTP",
          "roundtrip": "MAIL ROUND TRIP"}


def label(check: ServiceCheck) -> str:
    name = LABELS.get(check.kind, check.kind.upper())
    if check.tls and check.kind != "roundtrip":
        name += "S" if check.kind in ("smtp", "imap", "pop3", "ftp") else "+TLS"
    return f"{name} {hostport(check.host, check.port)}"


def plain_credentials(check: ServiceCheck) -> str:
    """SASL PLAIN (RFC 4616): NUL, user, NUL, password, in base64."""
    assert check.username is not None and check.password is not None
    return base64.b64encode(f"\0{check.username}\0{check.password}".encode()).decode()


def _logins(check: ServiceCheck) -> list[tuple[str, str]]:
    """Every (user, password) the check may send: its own, and those of an http check's URL and
    proxy URL (user:password@, percent-encoded there)."""
    logins = [(check.username, check.password)] if check.password and check.username is not None else []
    for url in (check.url, check.proxy):
        parts = urlsplit(url or "")
        if parts.password:
            logins.append((unquote(parts.username or ""), unquote(parts.password)))
    return logins


def hide_password(check: ServiceCheck, text: str) -> str:
    """A server that echoes what it got must not put the password into our messages: as typed
    and as sent (SASL PLAIN, LOGIN's base64, HTTP basic auth). Used on the raw reply, before
    `clean` cuts it (after, a password at the cut would survive as a prefix): see `said`."""
    secrets = {form for user, password in _logins(check)
               for form in (password, base64.b64encode(f"\0{user}\0{password}".encode()).decode(),
                            base64.b64encode(password.encode()).decode(),
                            base64.b64encode(f"{user}:{password}".encode()).decode())}
    # Longest first: base64("probe:s3cret") holds base64("s3cret") when the user is 3n long.
    for secret in sorted(secrets, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def said(check: ServiceCheck, text: str, limit: int = 80) -> str:
    """What a peer said, for a message: the password hidden in the raw text, then cleaned."""
    return clean(hide_password(check, text), limit)


def secs(value: float) -> str:
    return f"{value:.3f} s" if value < 0.1 else f"{value:.2f} s"


# The stage of an http check matching its expect_regex: the server has answered; a timeout
# then is the pattern's (it backtracks without end over this page), not the server's.
MATCHING = "expect_regex match"

# Implicit TLS through aiosmtplib (a round trip's submission): one call makes the handshake and
# reads the greeting, so a stall there is one of the two.
TLS_AND_GREETING = "TLS handshake and greeting"

# What a timeout message says for each stage a probe can be waiting in (else "sent no <stage>").
WAITING = {"connect": "did not accept the connection",
           "greeting": "accepted the connection but sent no greeting",
           "TLS handshake": "accepted the connection but the TLS handshake did not complete",
           TLS_AND_GREETING: "accepted the connection but the TLS handshake or the greeting "
                             "after it did not complete",
           "answer": "sent no answer", "exit": "did not finish",
           "delivery": "accepted the probe mail but it did not arrive in the mailbox"}


def error_text(exc: BaseException, check: ServiceCheck | None = None) -> str:
    """Why a connection failed, in the words of the one-line messages. With the check, its
    texts are `said` (an error may quote a peer: a DNS server's answer, a server's bytes)."""

    def say(text: str) -> str:
        return said(check, text) if check is not None else clean(text)

    if isinstance(exc, ConnectionRefusedError):
        return "refused the connection"
    if isinstance(exc, socket.gaierror):
        return f"cannot be resolved ({say(exc.strerror or str(exc))})"
    if isinstance(exc, ConnectionResetError | asyncio.IncompleteReadError | BrokenPipeError):
        return "closed the connection early"
    if isinstance(exc, ssl.SSLError):
        return f"failed the TLS handshake ({say(exc.reason or str(exc))})"
    if isinstance(exc, OSError):
        return f"cannot be reached ({say(exc.strerror or str(exc))})"
    return f"failed: {say(str(exc) or type(exc).__name__)}"


@dataclass
class Outcome:
    """What a probe found. `metrics`: metric -> (value, unit), stored with response_seconds;
    `thresholds`: a plugin's perfdata warn/crit/min/max of those metrics that had any.

    `response` is the measured time (None: nothing answered, so no response time exists).
    """

    state: State
    message: str
    response: float | None = None
    metrics: dict[str, tuple[float | None, str]] = field(default_factory=dict)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)  # a plugin's, per metric


class TlsContexts:
    """The TLS client contexts of one collector, one per (CA file, verify).

    Making a context loads the system's CA store: milliseconds of CPU that would block the event
    loop (and every other check) if done per connection on it, so each is made once, in a thread.
    """

    def __init__(self) -> None:
        self._made: dict[tuple[str | None, bool, str | None, str | None], ssl.SSLContext] = {}

    async def prepare(self, checks: list[ServiceCheck]) -> None:
        """Make the contexts these checks will ask for, before their timeouts run: a slow CA
        store load is then never blamed on a server. One that cannot be made (a bad ca_file)
        is left for its check to report."""
        wanted = {self._key(c, c.verify): c for c in checks if c.tls or c.starttls}
        for key, check in wanted.items():
            if key not in self._made:
                with contextlib.suppress(OSError, ssl.SSLError):
                    await self.get(check, check.verify)

    @staticmethod
    def _key(check: ServiceCheck, verify: bool) -> tuple[str | None, bool, str | None, str | None]:
        return (str(check.ca_file) if check.ca_file else None, verify,
                str(check.client_cert) if check.client_cert else None,
                str(check.client_key) if check.client_key else None)

    async def get(self, check: ServiceCheck, verify: bool) -> ssl.SSLContext:
        key = self._key(check, verify)
        context = self._made.get(key)
        if context is None:
            context = await asyncio.to_thread(tls_context, check, verify)
            context = self._made.setdefault(key, context)
        return context


class Stage:
    """Where a probe is, so a timeout can say what did not happen ("sent no greeting"), and
    the TLS contexts it shares with the other checks of its cycle."""

    def __init__(self, contexts: TlsContexts) -> None:
        self.doing = "connect"
        self.got = b""  # what a tcp check has received so far (for "sent no 'x' (got ...)")
        self.note = ""  # more for a timeout message: where an http check was ("(after 1 redirect...)")
        self.cert: Outcome | None = None
        self.contexts = contexts


async def look_up(check: ServiceCheck, stage: Stage, host: str, port: int,
                  kind: socket.SocketKind = socket.SOCK_STREAM) -> list[tuple[int, tuple]]:
    """(family, socket address) of `host` in the system resolver's order (/etc/hosts, then
    DNS); an IP literal as it is. The lookup is a stage of its own: one that stalls is reported
    as the name lookup's, never as a server that did not answer."""
    for family in (socket.AF_INET, socket.AF_INET6):  # (inet_pton: a tenth of ip_address's CPU)
        try:
            socket.inet_pton(family, host)
            return [(family, (host, port))]
        except OSError:
            continue
    stage.doing = f"name lookup of {said(check, host, 60)}"
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=kind)
    stage.doing = "connect"
    return list(dict.fromkeys((int(family), sockaddr) for family, _, _, _, sockaddr in infos))


async def connect_to(check: ServiceCheck, stage: Stage, host: str, port: int,
                     connect: Callable[[int, tuple], Awaitable[C]]) -> C:
    """`connect(family, address)` to each address of `host` in turn (as asyncio does) until one
    takes: the name lookup and the connection as two stages. A refusal or an unreachable
    network is the kernel's answer at once; the first address's error is the one reported."""
    failure: OSError | None = None
    for family, address in await look_up(check, stage, host, port):
        try:
            return await connect(family, address)
        except OSError as exc:
            failure = failure or exc
    assert failure is not None  # getaddrinfo gives an address or raises
    raise failure


async def open_socket(family: int, address: tuple) -> socket.socket:
    """A socket connected to a numeric address, for a library that takes one (aiosmtplib).
    Not loop.sock_connect: uvloop's looks the address up again in libuv's thread pool, where
    stalled name lookups may be queued."""
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        try:
            sock.connect(address)
            return sock
        except (BlockingIOError, InterruptedError):
            pass
        loop = asyncio.get_running_loop()
        writable = loop.create_future()

        def ready() -> None:
            if not writable.done():
                writable.set_result(None)

        loop.add_writer(sock, ready)
        try:
            await writable
        finally:
            loop.remove_writer(sock)
        error = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if error:
            raise OSError(error, os.strerror(error))  # (ECONNREFUSED: ConnectionRefusedError)
    except BaseException:
        sock.close()
        raise
    return sock


def peer_chain(link: asyncio.BaseTransport | asyncio.StreamWriter | None) -> list[bytes]:
    """The certificates the server sent (DER), its own first; [] without TLS. `link`: a stream
    writer or a transport (aiohttp's, aiosmtplib's), anything with get_extra_info.

    The rest of the chain matters because an intermediate that expires before the server's own
    certificate breaks the service just the same. Python 3.13 has get_unverified_chain() on
    SSL objects; 3.11-3.12 only on the underlying _ssl socket (certificate objects, not DER).
    """
    obj = link.get_extra_info("ssl_object") if link is not None else None
    if obj is None:
        return []
    leaf = obj.getpeercert(binary_form=True)
    chain_of = (getattr(obj, "get_unverified_chain", None)
                or getattr(getattr(obj, "_sslobj", None), "get_unverified_chain", None))
    sent = [cert if isinstance(cert, bytes) else cert.public_bytes(_ssl.ENCODING_DER)
            for cert in (chain_of() if chain_of is not None else None) or []]
    if leaf is None:
        return sent
    return [leaf, *(der for der in sent if der != leaf)]


def tls_context(check: ServiceCheck, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(check.ca_file) if check.ca_file else None)
    # Host names are matched by `cert_verdict`, so a wrong name and an expiry are both reported.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    if check.client_cert is not None:  # https: a client certificate for sites that ask for one
        context.load_cert_chain(str(check.client_cert),
                                str(check.client_key) if check.client_key else None)
    return context


def server_name(check: ServiceCheck) -> str:
    return check.server_name or check.vhost or check.host


def _names_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def hostname_matches(cert: x509.Certificate, name: str) -> bool:
    """RFC 6125: subjectAltName DNS/IP entries (the common name only when there is no SAN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if address is not None:
            return address in san.get_values_for_type(x509.IPAddress)
        return any(_names_match(p, name) for p in san.get_values_for_type(x509.DNSName))
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(isinstance(cn, str) and _names_match(cn, name) for cn in cns)


def _expiry(cert: x509.Certificate, now: float) -> tuple[float, str]:
    expires = cert.not_valid_after_utc
    return (expires.timestamp() - now) / 86400, expires.astimezone(datetime.UTC).strftime("%Y-%m-%d")


def _expiry_problem(check: ServiceCheck, what: str, days: float, when: str
                    ) -> tuple[State, str] | None:
    if days < 0:
        return State.CRITICAL, f"{what} expired {-days:.0f} days ago ({when})"
    if days < check.cert_critical_days:
        return State.CRITICAL, f"{what} expires in {days:.1f} days ({when})"
    if days < check.cert_warning_days:
        return State.WARNING, f"{what} expires in {days:.0f} days ({when})"
    return None


def cert_verdict(check: ServiceCheck, chain: list[bytes], now: float,
                 verify_error: str | None = None, name: str | None = None) -> Outcome:
    """The certificate part of a TLS check: the host name, the chain error OpenSSL gave when the
    handshake refused it, and expiry of every certificate the server sent: an intermediate that
    runs out first breaks the service as surely as the server's own. The metric
    cert_expiry_days is the earliest expiry of them all. `name` is the site the session was for
    (after a redirect to another site, that site), by default the check's server_name."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    if not chain:
        return Outcome(State.CRITICAL, "sent no certificate")
    cert = x509.load_der_x509_certificate(chain[0])
    days, when = _expiry(cert, now)
    problems = [p for p in [_expiry_problem(check, "certificate", days, when)] if p]
    name = name or server_name(check)
    if check.verify_hostname and not hostname_matches(cert, name):
        problems.append((State.CRITICAL, f"certificate is not valid for {clean(name)}"))
    if verify_error and days >= 0:
        problems.append((State.CRITICAL, f"certificate not trusted: {clean(verify_error)}"))
    earliest = days
    for der in chain[1:]:
        try:
            issuer = x509.load_der_x509_certificate(der)
        except ValueError:
            continue  # what does not parse is the chain check's business, not the expiry's
        issuer_days, issuer_when = _expiry(issuer, now)
        if issuer_days >= days:
            continue  # the server's own certificate runs out first: that is the news
        earliest = min(earliest, issuer_days)
        names = issuer.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        subject = str(names[0].value) if names else issuer.subject.rfc4514_string()
        problem = _expiry_problem(check, f"chain certificate {clean(subject, 60)!r}",
                                  issuer_days, issuer_when)
        if problem:
            problems.append(problem)
    metrics: dict[str, tuple[float | None, str]] = {"cert_expiry_days": (round(earliest, 3), "d")}
    if not problems:
        chain_note = f", its chain for {earliest:.0f}" if earliest < days else ""
        return Outcome(State.OK, f"certificate valid for {days:.0f} days{chain_note}",
                       metrics=metrics)
    state = State.worst(s for s, _ in problems)
    return Outcome(state, "; ".join(m for _, m in problems), metrics=metrics)


def untrusted(cert: Outcome, reason: str) -> Outcome:
    """The verdict of a certificate the handshake refused, with its expiry still measured."""
    if cert.state == State.OK or "expired" not in cert.message:
        cert.state = State.CRITICAL
        cert.message = (f"certificate not trusted: {clean(reason)}; "
                        + cert.message.replace("certificate valid for", "certificate expires in"))
    return cert


def tls_verdict(check: ServiceCheck, chain: list[bytes], now: float, rejected: str | None,
                name: str | None = None) -> Outcome:
    """The one TLS judgement of every check: cert_verdict, and when the handshake refused the
    chain (`rejected`: OpenSSL's reason; the session was then made again without verifying, to
    see the certificates), "not trusted" with the expiry still told."""
    cert = cert_verdict(check, chain, now, name=name)
    return untrusted(cert, rejected) if rejected is not None else cert


def certificates(verdicts: list[tuple[str, Outcome]]) -> Outcome | None:
    """One certificate verdict for a check that met several TLS servers ((name, verdict): the
    sites of a redirect chain, the submission and IMAP servers of a round trip): the first
    one's, with any other's problem added (named), and the earliest expiry of them all."""
    if not verdicts:
        return None
    (_, first), *others = verdicts
    cert = Outcome(first.state, first.message, metrics=dict(first.metrics))
    for name, other in others:
        if other.state != State.OK:
            cert.message += f"; {name}: {other.message}"
            cert.state = State.worst([cert.state, other.state])
        days = other.metrics.get("cert_expiry_days", (None, ""))[0]
        mine = cert.metrics.get("cert_expiry_days", (None, ""))[0]
        if days is not None and (mine is None or days < mine):
            cert.metrics["cert_expiry_days"] = (days, "d")
    return cert
