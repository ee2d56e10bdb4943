"""HTTP and HTTPS checks over asyncio streams: status, expected text, redirects, Host header.

A small HTTP/1.1 client is enough here (one GET or HEAD with `Connection: close`), keeps the
check inside the same deadline/abort machinery as the other protocols, and adds no dependency.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass, field
from urllib.parse import quote, urljoin, urlsplit

from collectors.checks.common import (
    AnyConn,
    Closed,
    Env,
    Outcome,
    Progress,
    Session,
    cert_outcome,
    clean,
    connect_error_text,
    connected,
    endpoint,
    limit_text,
    seconds_text,
    with_verify_retry,
)
from monitor.config import ServiceCheck
from monitor.model import Kind, State

BODY_LIMIT = 1 << 20  # expected text is looked for in the first MiB
MAX_HEADERS = 200
REDIRECTS = {301, 302, 303, 307, 308}
USER_AGENT = "monitor-service-check/0.1"


@dataclass
class Response:
    status: int
    reason: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Exchange:
    """The whole redirect chain of one attempt."""

    responses: list[tuple[str, Response]] = field(default_factory=list)
    too_many_redirects: bool = False


async def fetch(conn: AnyConn, method: str, host_header: str, target: str, progress: Progress) -> Response:
    progress.phase = "waiting for the response"
    request = (f"{method} {target} HTTP/1.1\r\nHost: {host_header}\r\nUser-Agent: {USER_AGENT}\r\n"
               "Accept: */*\r\nConnection: close\r\n\r\n")
    await conn.send(request.encode("latin-1"))
    status_line = (await conn.readline()).decode("latin-1").rstrip("\r\n")
    parts = status_line.split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
        raise BadResponse(f"no HTTP status line but {clean(status_line, 60)!r}")
    status, reason = int(parts[1]), parts[2] if len(parts) > 2 else ""
    headers: dict[str, str] = {}
    progress.phase = "reading the headers"
    for _ in range(MAX_HEADERS):
        line = (await conn.readline()).decode("latin-1").rstrip("\r\n")
        if not line:
            break
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = b""
    progress.phase = "reading the body"
    if method != "HEAD" and status not in (204, 304) and status >= 200:
        if "chunked" in headers.get("transfer-encoding", "").lower():
            body = await _chunked(conn)
        elif headers.get("content-length", "").isdigit():
            length = int(headers["content-length"])
            try:
                body = await conn.readexactly(min(length, BODY_LIMIT))
            except asyncio.IncompleteReadError as exc:
                raise BadResponse(f"body cut short after {len(exc.partial)} of {length} bytes") from None
        else:
            body = await conn.read(BODY_LIMIT)
            while body and len(body) < BODY_LIMIT:
                more = await conn.read(BODY_LIMIT - len(body))
                if not more:
                    break
                body += more
    return Response(status, reason, headers, body)


async def _chunked(conn: AnyConn) -> bytes:
    body = b""
    while len(body) < BODY_LIMIT:
        size_line = (await conn.readline()).split(b";")[0].strip()
        try:
            size = int(size_line, 16)
        except ValueError:
            raise BadResponse("garbled chunked encoding") from None
        if size == 0:
            break
        try:
            body += await conn.readexactly(size)
            await conn.readexactly(2)
        except asyncio.IncompleteReadError:
            raise BadResponse("body cut short inside a chunk") from None
    return body


class BadResponse(Exception):
    pass


async def run(check: ServiceCheck, env: Env) -> Outcome:
    scheme = "https" if check.tls else "http"
    start_url = f"{scheme}://{endpoint(check.host, check.port)}{check.path}"
    where = f"{scheme.upper()} {endpoint(check.host, check.port)}"
    progress = Progress()

    async def attempt(session: Session) -> Exchange:
        if check.tls:  # made (once) before the clock starts
            await env.ssl_context(session.verify, check.ca_file)
        progress.started = asyncio.get_running_loop().time()
        exchange = Exchange()
        url = start_url
        for hop in range(check.follow_redirects + 1):
            parts = urlsplit(url)
            host = parts.hostname or check.host
            tls = parts.scheme == "https"
            try:
                port = parts.port or (443 if tls else 80)
            except ValueError:
                raise BadResponse(f"a redirect to a bad URL {clean(url, 80)!r}") from None
            vhost = check.vhost if (check.vhost and host == check.host) else host
            default_port = 443 if tls else 80
            host_header = vhost if port == default_port else f"{vhost}:{port}"
            ctx = await env.ssl_context(session.verify, check.ca_file) if tls else None
            progress.phase = f"connecting to {endpoint(host, port)}" if hop else "connecting"
            tls_name = (check.tls_name or vhost) if host == check.host else host
            async with connected(host, port, ssl_ctx=ctx, server_name=tls_name,
                                 session=session, timeout=check.timeout) as conn:
                # A Location from the server is untrusted: no spaces or controls in our request line.
                target = quote((parts.path or "/") + (f"?{parts.query}" if parts.query else ""),
                               safe="/?=&%:@!$'()*+,;~-._[]")
                response = await fetch(conn, check.method, host_header, target, progress)
            exchange.responses.append((url, response))
            location = response.headers.get("location")
            if response.status not in REDIRECTS or not location or check.follow_redirects == 0:
                return exchange
            if hop == check.follow_redirects:
                exchange.too_many_redirects = True
                return exchange
            url = urljoin(url, location)
            if urlsplit(url).scheme not in ("http", "https"):
                return exchange
        return exchange

    try:
        async with asyncio.timeout(check.timeout):
            exchange, session, verify_error = await with_verify_retry(check, attempt)
    except TimeoutError:
        if progress.phase == "connecting" and check.tls:
            what = f"did not complete the connection and TLS handshake within {limit_text(check.timeout)}"
        elif progress.phase == "connecting":
            what = f"did not accept a connection within {limit_text(check.timeout)}"
        else:
            what = f"gave no complete answer within {limit_text(check.timeout)} ({progress.phase})"
        return Outcome(State.CRITICAL, f"{where} {what}")
    except BadResponse as exc:
        return Outcome(State.CRITICAL, f"{where} sent {exc}")
    except (OSError, Closed, ssl.SSLError) as exc:
        text = connect_error_text(exc, check.host, check.port or 0)
        if isinstance(exc, Closed) and progress.phase != "connecting":
            text = f"closed the connection while {progress.phase}"
        return Outcome(State.CRITICAL, f"{where} {text}")

    seconds = asyncio.get_running_loop().time() - progress.started
    url, response = exchange.responses[-1]
    got = f"{response.status} {clean(response.reason, 40)}".strip()
    hops = len(exchange.responses) - 1
    via = f" after {hops} redirect{'s' if hops > 1 else ''} to {clean(url, 80)}" if hops else ""
    if exchange.too_many_redirects:
        state = State.CRITICAL
        message = (f"{where} still redirects after {check.follow_redirects} redirects "
                   f"(last to {clean(response.headers.get('location'), 80)})")
    elif check.expect_status:
        wanted = " or ".join(str(s) for s in check.expect_status)
        if response.status in check.expect_status:
            state, message = State.OK, f"{where} answered {got}{via} in {seconds_text(seconds)}"
        else:
            state = State.CRITICAL
            message = f"{where} answered {got} instead of {wanted}{via} in {seconds_text(seconds)}"
    else:
        # Nagios' check_http convention: 2xx/3xx fine, 4xx a warning, 5xx critical.
        state = (State.OK if response.status < 400 else State.WARNING if response.status < 500
                 else State.CRITICAL)
        message = f"{where} answered {got}{via} in {seconds_text(seconds)}"
    if (state is State.OK and check.expect_text is not None
            and check.expect_text.encode() not in response.body):
        state = State.CRITICAL
        message += f", but the page does not contain {clean(check.expect_text, 60)!r}"
    metrics: dict[str, tuple[float | None, str, Kind]] = {}
    if check.uses_tls or session.certs:
        cert_state, cert_text, days = cert_outcome(check, session, verify_error, env.clock())
        state = State.worst([state, cert_state])
        message += f" ({cert_text})"
        metrics["cert_expiry_days"] = (days, "d", Kind.GAUGE)
    ok_answer = not exchange.too_many_redirects
    return Outcome(state, message, seconds if ok_answer else None, metrics)
