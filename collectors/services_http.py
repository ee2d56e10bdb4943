"""http/https: a small HTTP/1.1 client on asyncio streams (status, text, redirects, Host)."""

from __future__ import annotations

import time
from urllib.parse import quote, urljoin, urlsplit

from collectors.services_base import Outcome, Stage, cert_verdict, hostport, secs
from collectors.services_tcp import ProtocolError, close, connect, peer_chain, read_line
from monitor.config import ServiceCheck
from monitor.model import State
from monitor.text import clean

MAX_BODY = 1 << 20
MAX_HEADERS = 200
REDIRECTS = (301, 302, 303, 307, 308)


async def _read_body(reader, headers: dict[str, str]) -> bytes:
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = b""
        while len(body) < MAX_BODY:
            size_line = await read_line(reader)
            try:
                size = int(size_line.split(";", 1)[0].strip(), 16)
            except ValueError:
                raise ProtocolError(f"sent a bad chunk size {clean(size_line, 20)!r}") from None
            if size == 0:
                break
            body += await reader.readexactly(size)
            await reader.readline()
        return body
    if "content-length" in headers:
        try:
            length = int(headers["content-length"])
        except ValueError:
            raise ProtocolError("sent a bad Content-Length") from None
        return await reader.readexactly(min(length, MAX_BODY))
    # No length given: the body ends when the server closes (we asked for Connection: close).
    body = b""
    while len(body) < MAX_BODY and (chunk := await reader.read(MAX_BODY - len(body))):
        body += chunk
    return body


def _other_site(check: ServiceCheck, host_header: str) -> str | None:
    """After a redirect to another site, the name TLS is about (SNI and the certificate check);
    None while on the configured one."""
    return None if host_header == (check.vhost or check.host) else urlsplit(f"//{host_header}").hostname


async def _request(check: ServiceCheck, stage: Stage, verify: bool, host: str, port: int, tls: bool,
                   path: str, host_header: str) -> tuple[int, str, dict[str, str], bytes, list[bytes]]:
    writer = None
    try:
        reader, writer = await connect(check, stage, verify, host, port, tls,
                                       _other_site(check, host_header))
        stage.doing = "HTTP response"
        # After a redirect the path comes from the server: no spaces or controls in our request.
        path = quote(path, safe="/?=&%:@!$'()*+,;~-._[]")
        writer.write(f"{check.method} {path} HTTP/1.1\r\nHost: {host_header}\r\n"
                     "User-Agent: monitor-service-check\r\nAccept: */*\r\nConnection: close\r\n\r\n"
                     .encode())
        await writer.drain()
        status_line = await read_line(reader)
        parts = status_line.split(" ", 2)
        if len(parts) < 2 or not parts[0].startswith("HTTP/") or not parts[1].isdigit():
            raise ProtocolError(f"answered {clean(status_line)!r}, not HTTP")
        headers: dict[str, str] = {}
        for _ in range(MAX_HEADERS):
            line = await read_line(reader)
            if not line:
                break
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        body = b"" if check.method == "HEAD" else await _read_body(reader, headers)
        chain = peer_chain(writer) if tls else []
        return int(parts[1]), (parts[2] if len(parts) > 2 else ""), headers, body, chain
    finally:
        close(writer)


async def probe_http(check: ServiceCheck, stage: Stage, now: float, verify: bool) -> Outcome:
    start = time.monotonic()
    tls = check.tls
    host, port, path = check.host, check.port or (443 if tls else 80), check.path
    default_port = 443 if tls else 80
    host_header = check.vhost or (host if port == default_port else f"{host}:{port}")
    scheme = "https" if tls else "http"
    where = f"{scheme.upper()} {hostport(check.vhost or host, port)}{clean(path, 60)}"
    hops = 0
    first_cert = True
    while True:
        try:
            status, reason, headers, body, chain = await _request(
                check, stage, verify, host, port, tls, path, host_header)
        except ProtocolError as exc:
            return Outcome(State.CRITICAL, f"{where} {exc}", time.monotonic() - start)
        if tls and first_cert:
            stage.cert = cert_verdict(check, chain, now, name=_other_site(check, host_header))
            first_cert = False
        if status in REDIRECTS and "location" in headers and hops < check.follow_redirects:
            hops += 1
            url = urljoin(f"{scheme}://{host_header}{path}", headers["location"])
            parts = urlsplit(url)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                return Outcome(State.CRITICAL, f"{where} redirected to unusable {clean(url)!r}",
                               time.monotonic() - start)
            tls = parts.scheme == "https"
            scheme = parts.scheme
            new_port = parts.port or (443 if tls else 80)
            if parts.hostname != urlsplit(f"//{host_header}").hostname or new_port != port:
                host = parts.hostname
            host_header = parts.netloc
            port = new_port
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            continue
        break
    elapsed = time.monotonic() - start
    via = f" after {hops} redirect{'s' if hops != 1 else ''}" if hops else ""
    wanted = "/".join(str(s) for s in check.expect_status)
    if status not in check.expect_status:
        extra = ""
        if status in REDIRECTS and "location" in headers:
            extra = f" (to {clean(headers['location'], 60)})"
        return Outcome(State.CRITICAL, f"{where} answered {status} {clean(reason, 40)} instead of "
                       f"{wanted}{extra}{via} in {secs(elapsed)}", elapsed)
    if check.expect_text is not None and check.expect_text.encode() not in body:
        return Outcome(State.CRITICAL, f"{where} answered {status} but without the text "
                       f"{clean(check.expect_text, 40)!r}{via} in {secs(elapsed)}", elapsed)
    return Outcome(State.OK, f"{where} answered {status} {clean(reason, 40)}{via} in {secs(elapsed)}"
                   f" ({len(body)} bytes)", elapsed)
