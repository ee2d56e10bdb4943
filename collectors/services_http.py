"""http/https checks on aiohttp: status, a text or pattern in the body, redirects followed hop by
hop (each TLS site's certificate and chain judged by cert_verdict), vhost and SNI, basic auth
(username with password_file/password_env, or from the URL), a proxy, POST with a body and
client certificates.

Redirects are followed here, not by aiohttp, because each hop is its own verdict: the site it
names decides the TLS name, a failure names the server that failed, and credentials go to the
configured site only. A body is read up to max_body (1 MiB) whatever its framing (length,
chunked, until close, compressed), in pieces the loop hands out between other tasks; the
caller's timeout bounds the whole check.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from types import SimpleNamespace
from urllib.parse import quote, unquote, urljoin, urlsplit

import aiohttp
import regex
from aiohappyeyeballs import AddrInfoType
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.connector import Connection
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from collectors.services_base import (
    MATCHING,
    Outcome,
    Stage,
    certificates,
    error_text,
    hostport,
    peer_chain,
    said,
    secs,
    server_name,
    tls_verdict,
)
from monitor.config import ServiceCheck, address_and_port
from monitor.model import State
from monitor.text import clean

READ_SIZE = 1 << 16
REDIRECTS = (301, 302, 303, 307, 308)
USER_AGENT = "monitor-service-check"
# What may stay as it is in a request path taken from a Location header; the rest is quoted, so
# no space or control character from a server reaches our request line.
PATH_SAFE = "/?=&%:@!$'()*+,;~-._[]"


def _bracketed(host: str) -> str:
    return f"[{host}]" if ":" in host else host


@dataclass
class Hop:
    """One request of a check: the address it connects to and the site it is for (the Host
    header, and for TLS the SNI and the name the certificate must carry)."""

    tls: bool
    host: str
    port: int
    path: str
    site: str  # authority: "www.example.net", "[::1]:8080"
    method: str = "GET"

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    @property
    def site_name(self) -> str:
        return urlsplit(f"//{self.site}").hostname or self.host

    def url(self) -> URL:
        default = 443 if self.tls else 80
        port = "" if self.port == default else f":{self.port}"
        return URL(f"{self.scheme}://{_bracketed(self.host)}{port}{quote(self.path, safe=PATH_SAFE)}",
                   encoded=True)

    def label(self) -> str:
        return f"{self.scheme.upper()} {hostport(self.site_name, self.port)}"

    def where(self, check: ServiceCheck) -> str:
        """The site and path, for a message. After a redirect both are the server's words (its
        Location header): said, like everything a peer says."""
        return (f"{self.scheme.upper()} {hostport(said(check, self.site_name, 60), self.port)}"
                f"{said(check, self.path, 60)}")


def _authority(host: str, port: int, tls: bool) -> str:
    return _bracketed(host) if port == (443 if tls else 80) else f"{_bracketed(host)}:{port}"


def first_hop(check: ServiceCheck) -> Hop:
    port = check.port or (443 if check.tls else 80)
    return Hop(check.tls, check.host, port, check.path,
               check.vhost or _authority(check.host, port, check.tls), check.method)


def site_label(check: ServiceCheck) -> str:
    """ "HTTPS www.example.net:443": the site a check is for, as its messages begin."""
    return first_hop(check).label()


def next_hop(hop: Hop, location: str, status: int = 302) -> Hop | str:
    """The hop a Location header leads to, or the URL it named when that is no HTTP(S) URL.
    As browsers do, a POST answered 301, 302 or 303 goes on as a GET (307/308 keep it)."""
    url = urljoin(f"{hop.scheme}://{hop.site}{hop.path}", location)
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        return url
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return url
    hostname = parts.hostname
    tls = parts.scheme == "https"
    port = port or (443 if tls else 80)
    if not parts.netloc.isascii():  # an international name in a Location: its xn-- form
        try:
            hostname = hostname.encode("idna").decode("ascii")
        except UnicodeError:
            return url
        parts = parts._replace(netloc=_authority(hostname, port, tls))
    # Still the same site: keep the address (host may be one web server of several).
    same = parts.hostname == hop.site_name and port == hop.port
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    site = parts.netloc.rpartition("@")[2]
    method = hop.method if status in (307, 308) or hop.method == "HEAD" else "GET"
    return Hop(tls, hop.host if same else hostname, port, path, site, method)


def basic_auth(url: str | None) -> str | None:
    """The Authorization header value for user:password@ in a URL (percent-encoded there)."""
    parts = urlsplit(url or "")
    if parts.username is None:
        return None
    return _basic(unquote(parts.username), unquote(parts.password or ""))


def _basic(username: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{username}:{password}".encode()).decode("ascii")


def site_login(check: ServiceCheck) -> str | None:
    """The check's basic auth for its own site: username with the password of password_file /
    password_env (the loader's secret), or user:password@ in the URL."""
    if check.username is not None:
        return _basic(check.username, check.password or "")
    return basic_auth(check.url)


def _without_userinfo(url: str) -> str:
    parts = urlsplit(url)
    return parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()


def failure_text(check: ServiceCheck, exc: BaseException) -> str | None:
    """What went wrong, for the errors aiohttp raises (None: not one of them). Their texts
    quote what the server (or proxy, or DNS server) sent: said."""
    if isinstance(exc, aiohttp.ClientProxyConnectionError):
        return f"cannot be reached through the proxy (the proxy {error_text(exc.os_error, check)})"
    if isinstance(exc, aiohttp.ClientHttpProxyError):
        return (f"cannot be reached through the proxy (it answered {exc.status} "
                f"{said(check, str(exc.message), 40)})")
    if isinstance(exc, aiohttp.ClientConnectorError):
        return error_text(exc.os_error, check)
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "closed the connection without an answer"
    if isinstance(exc, aiohttp.ClientPayloadError):
        cause = exc.__cause__ or exc
        return f"sent a broken body ({said(check, str(getattr(cause, 'message', None) or cause), 60)})"
    if isinstance(exc, aiohttp.ClientResponseError | HttpProcessingError):
        return f"sent a malformed HTTP answer ({said(check, str(exc.message), 100)})"
    if isinstance(exc, aiohttp.ClientError | OSError | asyncio.IncompleteReadError | ssl.SSLError):
        return error_text(exc, check)
    return None


class Response(aiohttp.ClientResponse):
    """A response that keeps the certificates its connection's server sent (a short answer has
    handed the connection back before the caller could look at it)."""

    chain: list[bytes] = []

    async def start(self, connection: Connection) -> aiohttp.ClientResponse:
        self.chain = peer_chain(connection.transport)
        return await super().start(connection)


@dataclass
class Answer:
    status: int
    reason: str
    location: str | None
    body: bytes
    complete: bool  # the body was read to its end (not cut at max_body nor left open)
    chain: list[bytes]


def _on(event: str) -> Callable[[aiohttp.ClientSession, SimpleNamespace, object], Awaitable[None]]:
    """A tracing callback: the probe (the request's trace context) notes the event's time."""

    async def note(session: aiohttp.ClientSession, context: SimpleNamespace, params: object) -> None:
        context.trace_request_ctx.phase(event, getattr(params, "host", ""))

    return note


class ServerResolver(AbstractResolver):
    """Addresses (A, AAAA) of a name from one DNS server: a check's `resolver`, instead of the
    system's. Its time is the check's: the check's timeout cancels a lookup that stalls."""

    def __init__(self, server: str) -> None:
        import dns.asyncresolver

        self.resolver = dns.asyncresolver.Resolver(configure=False)
        address, self.resolver.port = address_and_port(server, 53)
        self.resolver.nameservers = [address]

    async def resolve(self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
                      ) -> list[ResolveResult]:
        import dns.exception
        import dns.resolver

        kinds = {socket.AF_INET: ["A"], socket.AF_INET6: ["AAAA"]}.get(family, ["A", "AAAA"])
        answers = await asyncio.gather(*(self.resolver.resolve(host, kind, lifetime=3600)
                                         for kind in kinds), return_exceptions=True)
        found: list[ResolveResult] = []
        failure: BaseException | None = None
        for kind, answer in zip(kinds, answers, strict=True):
            if isinstance(answer, (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer)):
                continue
            if isinstance(answer, BaseException):
                failure = failure or answer
                continue
            inet = socket.AF_INET if kind == "A" else socket.AF_INET6
            found.extend(ResolveResult(hostname=host, host=record.address, port=port, family=inet,
                                       proto=0, flags=socket.AI_NUMERICHOST) for record in answer)
        # One family's failure (a server that fails AAAA queries) costs nothing while the
        # other answered: only without any address is it the check's error.
        if not found and isinstance(failure, dns.exception.DNSException):
            raise socket.gaierror(socket.EAI_AGAIN, f"DNS server {self.resolver.nameservers[0]}"
                                  f": {failure}") from None
        if not found and failure is not None:
            raise failure
        if not found:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return found

    async def close(self) -> None:
        return None


def _tracing() -> aiohttp.TraceConfig:
    """The request's phases (name resolution, connection with TLS, wait for the answer), and
    when the connection is up: from then on a timeout means the server sent no answer."""
    trace = aiohttp.TraceConfig()
    trace.on_dns_resolvehost_start.append(_on("dns_start"))
    trace.on_dns_resolvehost_end.append(_on("dns_end"))
    trace.on_connection_create_start.append(_on("connect_start"))
    trace.on_connection_create_end.append(_on("connect_end"))
    trace.on_request_headers_sent.append(_on("sent"))
    trace.on_request_end.append(_on("answered"))
    trace.freeze()
    return trace


TRACING = _tracing()


class Probe:
    """One check's requests: its aiohttp session (no pooling: each hop is a new connection, as
    a first visitor's would be) and the stage a timeout reports."""

    def __init__(self, check: ServiceCheck, stage: Stage) -> None:
        self.check = check
        self.stage = stage
        self.sockets: list[socket.socket] = []
        self.at = ""  # after a redirect: where the check is now, for a timeout's message
        self.want = check.expect_text.encode() if check.expect_text is not None else None
        # Seconds per phase, summed over the hops (as blackbox_exporter's phases).
        self.phases = {"dns_seconds": 0.0, "connect_seconds": 0.0, "first_byte_seconds": 0.0}
        self._began: dict[str, float] = {}

    def phase(self, event: str, host: str = "") -> None:
        now = time.monotonic()
        began = self._began
        if event == "dns_start":
            # A stall from here on is the name lookup's, not the web server's.
            self.stage.doing = f"name lookup of {said(self.check, host, 60)}"
        elif event == "dns_end" and "dns_start" in began:
            self.stage.doing = "connect"
            self.phases["dns_seconds"] += now - began["dns_start"]
            # The name resolution is part of the connection's time: not counted twice.
            began["connect_start"] = began.get("connect_start", now) + now - began["dns_start"]
        elif event == "connect_end" and "connect_start" in began:
            self.phases["connect_seconds"] += now - began.pop("connect_start")
            self.stage.doing = "HTTP response"
        elif event == "answered" and "sent" in began:
            self.phases["first_byte_seconds"] += now - began.pop("sent")
        began[event] = now

    def _socket(self, addr_info: AddrInfoType) -> socket.socket:
        family, type_, proto, _, _ = addr_info
        sock = socket.socket(family, type_, proto)
        self.sockets.append(sock)
        return sock

    def connected(self) -> bool:
        """Whether a TCP connection of this check is established (so a stall is past it)."""
        for sock in self.sockets:
            try:
                sock.getpeername()
                return True
            except OSError:
                continue
        return False

    def session(self) -> aiohttp.ClientSession:
        resolver = ServerResolver(self.check.resolver) if self.check.resolver else None
        connector = aiohttp.TCPConnector(force_close=True, use_dns_cache=False, limit=0,
                                         socket_factory=self._socket, resolver=resolver)
        return aiohttp.ClientSession(
            connector=connector, response_class=Response, cookie_jar=aiohttp.DummyCookieJar(),
            trace_configs=[TRACING],
            trust_env=False, timeout=aiohttp.ClientTimeout(total=None), auto_decompress=True,
            headers={"User-Agent": USER_AGENT})

    async def request(self, session: aiohttp.ClientSession, hop: Hop, context: ssl.SSLContext | None,
                      sni: str, auth: str | None) -> Answer:
        check, stage = self.check, self.stage
        stage.doing = "connect"
        stage.note = f" ({self.at})" if self.at else ""
        del self.sockets[:]
        data = check.body.encode() if check.body is not None and hop.method == "POST" else None
        headers = {"Host": hop.site}
        if auth is not None:
            headers["Authorization"] = auth
        if data is not None:
            headers["Content-Type"] = check.content_type or "application/x-www-form-urlencoded"
        proxy = proxy_headers = None
        if check.proxy is not None:
            proxy = _without_userinfo(check.proxy)
            login = basic_auth(check.proxy)
            proxy_headers = {"Proxy-Authorization": login} if login else None
        try:
            async with session.request(
                    hop.method, hop.url(), headers=headers, data=data, allow_redirects=False,
                    proxy=proxy, proxy_headers=proxy_headers, ssl=context if context is not None else True,
                    server_hostname=sni if hop.tls else None, trace_request_ctx=self) as response:
                assert isinstance(response, Response)
                body, complete = b"", True
                if hop.method != "HEAD":
                    body, complete = await self.read_body(response)
                return Answer(response.status, response.reason or "",
                              response.headers.get("Location"), body, complete, response.chain)
        except asyncio.CancelledError:
            if stage.doing == "connect" and hop.tls and self.connected():
                stage.doing = "TLS handshake"
            raise

    async def read_body(self, response: aiohttp.ClientResponse) -> tuple[bytes, bool]:
        """Up to max_body bytes of the (decompressed) body, and whether that was all of it.

        Reading stops early once expect_text is seen. A body that only ends when the server
        closes (no length, not chunked) is not waited for without expect_text/expect_regex: a
        server that keeps such a connection open would otherwise cost the whole timeout."""
        stage, content, want, limit = self.stage, response.content, self.want, self.check.max_body
        stage.doing = "end of the HTTP body"
        until_close = ("Content-Length" not in response.headers
                       and "chunked" not in response.headers.get("Transfer-Encoding", "").lower())
        if until_close and want is None and self.check.expect_regex is None:
            return content.read_nowait(limit), content.at_eof()
        body = bytearray()
        while len(body) < limit:
            chunk = await content.read(min(READ_SIZE, limit - len(body)))
            if not chunk:
                return bytes(body), True
            seen = len(body)
            body += chunk
            stage.note = f" (got {len(body)} bytes{', ' + self.at if self.at else ''})"
            if want is not None and want in body[max(0, seen - len(want) + 1):]:
                return bytes(body), content.at_eof()
        return bytes(body), content.at_eof()

    async def hop(self, session: aiohttp.ClientSession, hop: Hop, first: Hop, now: float,
                  verify: bool) -> tuple[Answer, Outcome | None]:
        """One request and, over TLS, the verdict on the certificate of the site it was for."""
        check, contexts = self.check, self.stage.contexts
        own_site = hop.site == first.site
        sni = server_name(check) if own_site else hop.site_name
        auth = site_login(check) if own_site else None
        # Credentials (basic auth, a client certificate) go to the configured site only, never
        # to a site a redirect points at.
        tls_check = check if own_site else dataclasses.replace(check, client_cert=None,
                                                               client_key=None)
        context = await contexts.get(tls_check, verify) if hop.tls else None
        reason = None
        try:
            answer = await self.request(session, hop, context, sni, auth)
        except aiohttp.ClientConnectorCertificateError as exc:
            # Ask again without verifying, to learn when the rejected certificate expires.
            error = exc.certificate_error
            reason = getattr(error, "verify_message", None) or str(error)
            answer = await self.request(session, hop, await contexts.get(tls_check, False), sni,
                                        auth)
        if not hop.tls:
            return answer, None
        return answer, tls_verdict(check, answer.chain, now, reason,
                                   name=None if own_site else hop.site_name)


async def probe_http(check: ServiceCheck, stage: Stage, now: float, verify: bool) -> Outcome:
    start = time.monotonic()
    first = hop = first_hop(check)
    where = first.where(check)
    probe = Probe(check, stage)
    verdicts: list[tuple[str, Outcome]] = []  # (site name, its certificate's verdict)
    sites: set[str] = set()
    hops = 0

    def via() -> str:
        return f" after {hops} redirect{'s' if hops != 1 else ''}" if hops else ""

    async with probe.session() as session:
        while True:
            try:
                answer, cert = await probe.hop(session, hop, first, now, verify)
            except Exception as exc:
                text = failure_text(check, exc)
                if text is None:
                    raise
                at = f"{via()}: {hop.where(check)}" if hops else ""
                return Outcome(State.CRITICAL, f"{where}{at} {text} after "
                               f"{secs(time.monotonic() - start)}")
            if cert is not None and hop.site not in sites:
                sites.add(hop.site)
                verdicts.append((said(check, hop.site_name, 60), cert))
                stage.cert = certificates(verdicts)
            if answer.status in REDIRECTS and answer.location and hops < check.follow_redirects:
                target = next_hop(hop, answer.location, answer.status)
                if isinstance(target, str):
                    at = f"{via()}: {hop.where(check)}" if hops else ""
                    return Outcome(State.CRITICAL, f"{where}{at} redirected to unusable "
                                   f"{said(check, target)!r}", time.monotonic() - start)
                hops += 1
                hop = target
                probe.at = f"{via().strip()}, at {hop.where(check)}"
                continue
            break
    elapsed = time.monotonic() - start
    outcome = await judge(check, stage, answer, where, via(), elapsed)
    outcome.metrics.update((name, (round(value, 6), "s")) for name, value in probe.phases.items())
    return outcome


def _matches(pattern: str, body: bytes, timeout: float) -> bool:
    # regex, not re: it lets go of the GIL while it matches (re holds it, so a pattern that
    # backtracks for minutes over a page froze the whole agent, thread or not), and it gives
    # up at its timeout, so the thread is never held past the check.
    return regex.search(pattern, body.decode("utf-8", "replace"), timeout=timeout) is not None


async def judge(check: ServiceCheck, stage: Stage, answer: Answer, where: str, via: str,
                elapsed: float) -> Outcome:
    status = answer.status
    wanted = "/".join(str(s) for s in check.expect_status)
    if status not in check.expect_status:
        extra = (f" (to {said(check, answer.location, 60)})"
                 if status in REDIRECTS and answer.location else "")
        return Outcome(State.CRITICAL, f"{where} answered {status} {said(check, answer.reason, 40)} "
                       f"instead of {wanted}{extra}{via} in {secs(elapsed)}", elapsed)
    within = "" if answer.complete else f" in its first {len(answer.body)} bytes"
    if check.expect_text is not None and check.expect_text.encode() not in answer.body:
        return Outcome(State.CRITICAL, f"{where} answered {status} but without the text "
                       f"{clean(check.expect_text, 40)!r}{within}{via} in {secs(elapsed)}", elapsed)
    # A pattern over a megabyte of someone else's page: CPU off the event loop, for what is
    # left of the check's time (run_check reports a pattern that needs longer).
    if check.expect_regex is not None:
        stage.doing, stage.note = MATCHING, f" ({len(answer.body)} bytes{via})"
        if not await asyncio.to_thread(_matches, check.expect_regex, answer.body,
                                       max(0.001, check.timeout - elapsed)):
            return Outcome(State.CRITICAL, f"{where} answered {status} but nothing matched "
                           f"{clean(check.expect_regex, 40)!r}{within}{via} in {secs(elapsed)}",
                           elapsed)
    size = f"{len(answer.body)} bytes" + ("" if answer.complete else ", more not read")
    return Outcome(State.OK, f"{where} answered {status} {said(check, answer.reason, 40)}{via} in "
                   f"{secs(elapsed)} ({size})", elapsed)
