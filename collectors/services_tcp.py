"""TCP and the line protocols on top of it: tcp (send/expect), smtp, imap, pop3, ssh, ftp, with
implicit TLS (tls = true) or STARTTLS/STLS, and the certificate verdict on every TLS session.

Every dialog runs on asyncio streams (on uvloop where the agent has it). Each probe is one short
conversation that ends politely (QUIT/LOGOUT) and always closes its socket; the caller bounds
the whole of it with the check's timeout. The connection and the TLS handshake are separate
stages, so a server that accepts and stalls the handshake is reported as such.
"""

from __future__ import annotations

import asyncio
import ssl
import time

from collectors.services_base import (
    Outcome,
    Stage,
    cert_verdict,
    connect_to,
    label,
    peer_chain,
    plain_credentials,
    said,
    secs,
    server_name,
)
from monitor.config import ServiceCheck
from monitor.model import State
from monitor.text import clean

MAX_LINES = 100
LINE_LIMIT = 65536  # one line of a peer's answer
KEEP = 65536  # bytes read at a time while looking for `expect`
HEAD = 4096  # the start of an answer, kept for the messages
# A multi-line SMTP/FTP reply (a "220-" greeting of thousands of lines is legal) is read to its
# end, up to this many bytes in all.
MAX_REPLY = 1 << 20


class CertRejected(Exception):
    """The TLS handshake refused the peer's certificate (the probe is rerun without verifying
    so the report can still say when it expires)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class ProtocolError(Exception):
    """The peer answered, but not what the protocol says: the message is the on-call line."""


async def connect(check: ServiceCheck, stage: Stage, verify: bool, host: str | None = None,
                  port: int | None = None, tls: bool | None = None, sni: str | None = None
                  ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to the check's (or the given) host and port (name lookup and connection as
    stages of their own: connect_to); with TLS, the handshake made as a stage of its own
    after the connection is up."""
    tls = check.tls if tls is None else tls
    port = port or check.port
    assert port is not None  # validate() gives every tcp-like check its port
    reader, writer = await connect_to(
        check, stage, host or check.host, port,
        lambda family, address: asyncio.open_connection(address[0], port, limit=LINE_LIMIT))
    if tls:
        try:
            await start_tls(writer, check, verify, stage, sni)
        except BaseException:
            close(writer)
            raise
    return reader, writer


async def start_tls(writer: asyncio.StreamWriter, check: ServiceCheck, verify: bool,
                    stage: Stage, sni: str | None = None) -> None:
    context = await stage.contexts.get(check, verify)
    stage.doing = "TLS handshake"
    try:
        await writer.start_tls(context, server_hostname=sni or server_name(check))
    except ssl.SSLCertVerificationError as exc:
        raise CertRejected(exc.verify_message or str(exc)) from None


def close(writer: asyncio.StreamWriter | None) -> None:
    """Drop the connection now: no waiting on a peer that may never answer (fds stay flat)."""
    if writer is not None:
        writer.transport.abort()


async def read_line(reader: asyncio.StreamReader) -> str:
    try:
        line = await reader.readline()
    except ValueError:
        raise ProtocolError("sent a line longer than 64 KiB") from None
    if not line:
        raise ConnectionResetError("closed the connection")
    return line.decode("utf-8", "replace").rstrip("\r\n")


async def read_reply(check: ServiceCheck, reader: asyncio.StreamReader, protocol: str, what: str
                     ) -> tuple[str, list[str]]:
    """An SMTP/FTP reply: (code, lines), all its "250-" continuation lines read (MAX_REPLY bytes
    at most). A line that is no reply ("SSH-2.0-..." from the wrong server) is judged at once,
    as `protocol` and `what` ("greeting") name it, not waited on until the timeout."""
    lines: list[str] = []
    size = 0
    while True:
        line = await read_line(reader)
        if not (line[:3].isdigit() and line[3:4] in ("", " ", "-")):
            raise ProtocolError(f"answered {said(check, line, 60)!r} instead of an {protocol} {what} "
                                "in {t}")
        if lines and line[:3] != lines[0][:3]:
            raise ProtocolError(f"answered {said(check, line, 60)!r} within a {lines[0][:3]} reply "
                                f"(its {what}) in {{t}}")
        size += len(line)
        if size > MAX_REPLY:
            raise ProtocolError(f"sent a {what} longer than {MAX_REPLY >> 10} KiB")
        lines.append(line)
        if line[3:4] != "-":
            return line[:3], lines


async def command(writer: asyncio.StreamWriter, text: str) -> None:
    writer.write(text.encode() + b"\r\n")
    await writer.drain()


async def probe_text(check: ServiceCheck, stage: Stage, now: float, verify: bool) -> Outcome:
    """Run the conversation of check.kind; raises ProtocolError with the one-line verdict."""
    start = time.monotonic()
    writer = None
    name = label(check)
    try:
        reader, writer = await connect(check, stage, verify)
        connected = time.monotonic() - start
        stage.doing = "greeting"
        detail = await DIALOGS[check.kind](check, stage, reader, writer, verify)
        elapsed = time.monotonic() - start
        if check.tls or check.starttls:
            stage.cert = cert_verdict(check, peer_chain(writer), now)
        if check.kind == "tcp" and not detail:
            detail = f"accepted the connection in {secs(connected)}"
        return Outcome(State.OK, f"{name} {detail.replace('{t}', secs(elapsed))}", elapsed)
    except ProtocolError as exc:
        elapsed = time.monotonic() - start
        return Outcome(State.CRITICAL, f"{name} {str(exc).replace('{t}', secs(elapsed))}", elapsed)
    finally:
        close(writer)


def _expect_code(check: ServiceCheck, code: str, lines: list[str], want: str, what: str) -> None:
    if code != want:
        raise ProtocolError(f"answered {said(check, lines[-1] if lines else code)!r} instead of {want} "
                            f"{what} in {{t}}")


async def _tcp(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, verify: bool) -> str:
    if check.send is not None:
        stage.doing = "answer"
        writer.write(check.send.encode())
        await writer.drain()
    if check.expect is None:
        return ""
    stage.doing = repr(clean(check.expect))
    want = check.expect.encode()
    head = seen = b""
    while want:
        chunk = await reader.read(KEEP)
        if not chunk:
            raise ProtocolError(f"closed the connection without sending {clean(check.expect)!r}"
                                f" (got {clean(head)!r})")
        # The start of the answer for the messages (only a message needs it cleaned: kept raw
        # until then); `want` looked for in what came since the last look (plus the bytes it
        # may start in), so a peer that floods costs reading, not searching all of it again.
        head = stage.got = head if len(head) >= HEAD else (head + chunk)[:HEAD]
        seen = seen[-(len(want) - 1):] + chunk if len(want) > 1 else chunk
        if want in seen:
            break
    first = head.split(b"\n", 1)[0]
    return f"answered {clean(first)!r} in {{t}}"


async def _smtp(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, verify: bool) -> str:
    code, lines = await read_reply(check, reader, "SMTP", "greeting")
    if code != "220":
        raise ProtocolError(f"answered {code} instead of 220 in {{t}}: {said(check, lines[-1])!r}")
    banner = said(check, lines[0][4:], 60)
    stage.doing = "EHLO reply"
    await command(writer, f"EHLO {check.helo or 'monitor.invalid'}")
    code, ehlo = await read_reply(check, reader, "SMTP", "reply to EHLO")
    _expect_code(check, code, ehlo, "250", "to EHLO")
    if check.starttls:
        if not any(line[4:].upper().startswith("STARTTLS") for line in ehlo):
            raise ProtocolError("does not offer STARTTLS")
        stage.doing = "STARTTLS reply"
        await command(writer, "STARTTLS")
        code, lines = await read_reply(check, reader, "SMTP", "reply to STARTTLS")
        _expect_code(check, code, lines, "220", "to STARTTLS")
        await start_tls(writer, check, verify, stage)
        stage.doing = "EHLO reply after STARTTLS"
        await command(writer, f"EHLO {check.helo or 'monitor.invalid'}")
        code, ehlo = await read_reply(check, reader, "SMTP", "reply to EHLO after STARTTLS")
        _expect_code(check, code, ehlo, "250", "to EHLO after STARTTLS")
    if check.username:
        await _smtp_login(check, stage, reader, writer, ehlo)
    await command(writer, "QUIT")
    return (f"answered 220{' and STARTTLS' if check.starttls else ''}{_logged_in(check)} in {{t}}"
            f" ({banner})")


def _logged_in(check: ServiceCheck) -> str:
    return f", logged in as {clean(check.username, 40)!r}" if check.username else ""


async def _smtp_login(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter, ehlo: list[str]) -> None:
    mechanisms = {m.upper() for line in ehlo if line[4:9].upper() in ("AUTH ", "AUTH=")
                  for m in line[9:].split()}
    if "PLAIN" not in mechanisms:
        offered = said(check, " ".join(sorted(mechanisms)), 40) or "none"
        raise ProtocolError(f"offers no AUTH PLAIN (AUTH {offered}) to log in with")
    stage.doing = "AUTH reply"
    await command(writer, f"AUTH PLAIN {plain_credentials(check)}")
    code, lines = await read_reply(check, reader, "SMTP", "reply to AUTH")
    if code != "235":
        raise ProtocolError(f"refused the login of {clean(check.username, 40)!r}: "
                            f"{said(check, lines[-1])!r} in {{t}}")


async def _imap(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, verify: bool) -> str:
    line = await read_line(reader)
    if not line.upper().startswith(("* OK", "* PREAUTH")):
        raise ProtocolError(f"greeted {said(check, line)!r} instead of * OK in {{t}}")
    if check.starttls:
        stage.doing = "STARTTLS reply"
        await command(writer, "m1 STARTTLS")
        for _ in range(MAX_LINES):
            reply = await read_line(reader)
            if reply.startswith("m1 "):
                break
        if not reply.upper().startswith("M1 OK"):
            raise ProtocolError(f"refused STARTTLS: {said(check, reply)!r}")
        await start_tls(writer, check, verify, stage)
    if check.username:
        await imap_login(check, stage, reader, writer)
    await command(writer, "m9 LOGOUT")
    return (f"answered * OK{' and STARTTLS' if check.starttls else ''}{_logged_in(check)} in {{t}} "
            f"({said(check, line[4:], 60)})")


async def imap_tagged(reader: asyncio.StreamReader, tag: str) -> tuple[str, list[str]]:
    """The tagged reply to command `tag` and the untagged lines before it (MAX_REPLY bytes)."""
    untagged: list[str] = []
    size = 0
    while True:
        line = await read_line(reader)
        if line.startswith(f"{tag} "):
            return line, untagged
        size += len(line)
        if size > MAX_REPLY:
            raise ProtocolError(f"sent more than {MAX_REPLY >> 10} KiB before its reply to {tag}")
        untagged.append(line)


async def imap_login(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
    """AUTHENTICATE PLAIN (RFC 3501/4959 without SASL-IR: every server has it, no quoting)."""
    stage.doing = "AUTHENTICATE reply"
    await command(writer, "m2 AUTHENTICATE PLAIN")
    line = await read_line(reader)
    if line.startswith("+"):
        await command(writer, plain_credentials(check))
        line, _ = await imap_tagged(reader, "m2")
    if not line.upper().startswith("M2 OK"):
        raise ProtocolError(f"refused the login of {clean(check.username, 40)!r}: "
                            f"{said(check, line[3:])!r} in {{t}}")


async def _pop3(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter, verify: bool) -> str:
    line = await read_line(reader)
    if not line.startswith("+OK"):
        raise ProtocolError(f"greeted {said(check, line)!r} instead of +OK in {{t}}")
    if check.starttls:
        stage.doing = "STLS reply"
        await command(writer, "STLS")
        reply = await read_line(reader)
        if not reply.startswith("+OK"):
            raise ProtocolError(f"refused STLS: {said(check, reply)!r}")
        await start_tls(writer, check, verify, stage)
    if check.username:
        stage.doing = "USER reply"
        await command(writer, f"USER {check.username}")
        reply = await read_line(reader)
        if reply.startswith("+OK"):
            stage.doing = "PASS reply"
            await command(writer, f"PASS {check.password}")
            reply = await read_line(reader)
        if not reply.startswith("+OK"):
            raise ProtocolError(f"refused the login of {clean(check.username, 40)!r}: "
                                f"{said(check, reply)!r} in {{t}}")
    await command(writer, "QUIT")
    return (f"answered +OK{' and STLS' if check.starttls else ''}{_logged_in(check)} in {{t}} "
            f"({said(check, line[3:], 60)})")


async def _ssh(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, verify: bool) -> str:
    # RFC 4253: a server may send other lines before its identification string.
    for _ in range(20):
        line = await read_line(reader)
        if line.startswith("SSH-"):
            break
    else:
        raise ProtocolError("sent no SSH identification")
    if not line.startswith(("SSH-2.0-", "SSH-1.99-")):
        raise ProtocolError(f"speaks {clean(line, 40)!r}, not SSH 2.0")
    return f"answered {clean(line, 60)} in {{t}}"


async def _ftp(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
               writer: asyncio.StreamWriter, verify: bool) -> str:
    code, lines = await read_reply(check, reader, "FTP", "greeting")
    if code != "220":
        raise ProtocolError(f"answered {code} instead of 220 in {{t}}: {clean(lines[-1])!r}")
    await command(writer, "QUIT")
    return f"answered 220 in {{t}} ({clean(lines[0][4:], 60)})"


DIALOGS = {"tcp": _tcp, "smtp": _smtp, "imap": _imap, "pop3": _pop3, "ssh": _ssh, "ftp": _ftp}
