"""Line-protocol checks: tcp (connect, optional send/expect), smtp, imap, pop3, ssh, ftp.

Each speaks just enough of its protocol to prove the service answers like itself: the greeting,
EHLO for SMTP, STARTTLS/STLS/AUTH TLS when asked, then a polite QUIT/LOGOUT. Implicit TLS
variants (smtps 465, imaps 993, pop3s 995, ftps 990) use `tls = true`.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

from collectors.checks.common import (
    AnyConn,
    Closed,
    Env,
    Outcome,
    Progress,
    Session,
    cert_outcome,
    clean,
    connect,
    connect_error_text,
    endpoint,
    limit_text,
    seconds_text,
    with_verify_retry,
)
from monitor.config import ServiceCheck
from monitor.model import Kind, State

MAX_REPLY_LINES = 100


@dataclass
class Answer:
    """What the dialogue established: ok, what was expected vs. what came, the greeting text."""

    ok: bool
    got: str
    wanted: str
    text: str
    seconds: float
    note: str = ""


def label(check: ServiceCheck) -> str:
    name = {"tcp": "TCP", "smtp": "SMTP", "imap": "IMAP", "pop3": "POP3", "ssh": "SSH", "ftp": "FTP"}
    base = name[check.kind]
    if check.tls:
        base = "TLS" if check.kind == "tcp" else base + "S"
    return base


async def read_reply(conn: AnyConn) -> tuple[str, str]:
    """An SMTP/FTP style reply ("250-..." continued, "250 ..." last): (code, text of all lines)."""
    lines: list[str] = []
    for _ in range(MAX_REPLY_LINES):
        raw = (await conn.readline()).decode("utf-8", "replace").rstrip("\r\n")
        lines.append(raw[4:] if len(raw) > 3 else "")
        if len(raw) < 4 or raw[3] != "-":
            return raw[:3], "\n".join(lines) if len(lines) > 1 else (raw[4:] if len(raw) > 4 else raw)
    return lines[-1][:3], "\n".join(lines)


def _first_line(text: str) -> str:
    return text.split("\n", 1)[0]


async def run(check: ServiceCheck, env: Env) -> Outcome:
    host, port = check.host, check.port
    assert port is not None
    where = f"{label(check)} {endpoint(host, port)}"
    progress = Progress()

    async def attempt(session: Session) -> Answer:
        progress.phase = "connecting"
        ctx = await env.ssl_context(session.verify, check.ca_file) if check.uses_tls else None
        progress.started = asyncio.get_running_loop().time()
        if not check.tls:
            ctx = None  # STARTTLS: the context is for later
        conn = await connect(host, port, ssl_ctx=ctx, server_name=check.tls_name or host,
                             session=session, timeout=check.timeout, upgradable=check.starttls)
        try:
            answer = await DIALOGUES[check.kind](check, env, conn, session, progress)
        except BaseException:
            conn.abort()
            raise
        await conn.close()
        return answer

    try:
        async with asyncio.timeout(check.timeout):
            answer, session, verify_error = await with_verify_retry(check, attempt)
    except TimeoutError:
        if progress.phase == "connecting" and check.tls:
            what = f"did not complete the connection and TLS handshake within {limit_text(check.timeout)}"
        elif progress.phase == "connecting":
            what = f"did not accept a connection within {limit_text(check.timeout)}"
        else:
            what = f"accepted the connection but gave no answer within {limit_text(check.timeout)} " \
                   f"({progress.phase})"
        return Outcome(State.CRITICAL, f"{where} {what}")
    except ssl.SSLCertVerificationError as exc:  # only when the retry without verification failed too
        return Outcome(State.CRITICAL, f"{where} {connect_error_text(exc, host, port)}")
    except (OSError, Closed, ssl.SSLError, EOFError) as exc:
        text = connect_error_text(exc, host, port)
        if progress.phase != "connecting" and isinstance(exc, Closed):
            text = f"closed the connection while {progress.phase}"
        return Outcome(State.CRITICAL, f"{where} {text}")

    seconds = answer.seconds
    if answer.ok:
        state = State.OK
        message = f"{where} answered {answer.got} in {seconds_text(seconds)}"
    else:
        state = State.CRITICAL
        message = f"{where} answered {answer.got} instead of {answer.wanted} in {seconds_text(seconds)}"
    metrics: dict[str, tuple[float | None, str, Kind]] = {}
    notes = [answer.note] if answer.note else []
    if check.uses_tls and session.certs:
        cert_state, cert_text, days = cert_outcome(check, session, verify_error, env.clock())
        state = State.worst([state, cert_state])
        notes.append(cert_text)
        metrics["cert_expiry_days"] = (days, "d", Kind.GAUGE)
    elif check.uses_tls and answer.ok:
        state = State.CRITICAL
        notes.append("no TLS certificate received")
    if notes:
        message += f" ({'; '.join(notes)})"
    if answer.text:
        message += f": {clean(_first_line(answer.text))}"
    return Outcome(state, message, seconds if answer.ok else None, metrics)


def _elapsed(progress: Progress) -> float:
    return asyncio.get_running_loop().time() - progress.started


async def _tcp(check: ServiceCheck, env: Env, conn: AnyConn, session: Session, progress: Progress) -> Answer:
    if check.send:
        progress.phase = "sending"
        await conn.send(check.send.encode())
    if not check.expect:
        return Answer(True, "the connection", "", "", _elapsed(progress))
    progress.phase = f"waiting for {clean(check.expect, 40)!r}"
    seen = b""
    wanted = check.expect.encode()
    while wanted not in seen and len(seen) < 65536:
        chunk = await conn.read(4096)
        if not chunk:
            break
        seen += chunk
    text = seen.decode("utf-8", "replace").strip()
    ok = wanted in seen
    return Answer(ok, f"{clean(check.expect, 40)!r}" if ok else "without the expected text",
                  repr(clean(check.expect, 40)), text, _elapsed(progress))


def _expect_note(check: ServiceCheck, text: str) -> bool:
    return not check.expect or check.expect in text


async def _smtp_like(check: ServiceCheck, env: Env, conn: AnyConn, session: Session, progress: Progress,
                     protocol: str) -> Answer:
    progress.phase = "waiting for the greeting"
    code, greeting = await read_reply(conn)
    if code != "220":
        return Answer(False, clean(code) or "garbage", "220", greeting, _elapsed(progress))
    if not _expect_note(check, greeting):
        return Answer(False, "220 without the expected text", repr(clean(check.expect, 40)),
                      greeting, _elapsed(progress))
    note = ""
    if protocol == "smtp":
        ehlo = check.ehlo or env.hostname
        progress.phase = "waiting for the EHLO reply"
        await conn.send(f"EHLO {ehlo}\r\n".encode())
        code, text = await read_reply(conn)
        if code != "250":
            return Answer(False, f"EHLO with {clean(code)}", "250", text, _elapsed(progress))
        if check.starttls:
            if "STARTTLS" not in text.upper().split():
                return Answer(False, "EHLO without STARTTLS", "STARTTLS", greeting, _elapsed(progress))
            progress.phase = "waiting for the STARTTLS reply"
            await conn.send(b"STARTTLS\r\n")
            code, text = await read_reply(conn)
            if code != "220":
                return Answer(False, f"STARTTLS with {clean(code)}", "220", text, _elapsed(progress))
            progress.phase = "in the TLS handshake"
            await conn.start_tls(await env.ssl_context(session.verify, check.ca_file),
                                 check.tls_name or check.host, session, check.timeout)
            progress.phase = "waiting for the EHLO reply after STARTTLS"
            await conn.send(f"EHLO {ehlo}\r\n".encode())
            code, text = await read_reply(conn)
            if code != "250":
                return Answer(False, f"EHLO after STARTTLS with {clean(code)}", "250", text,
                              _elapsed(progress))
            note = "STARTTLS ok"
    elif check.starttls:  # ftp: AUTH TLS (RFC 4217)
        progress.phase = "waiting for the AUTH TLS reply"
        await conn.send(b"AUTH TLS\r\n")
        code, text = await read_reply(conn)
        if code != "234":
            return Answer(False, f"AUTH TLS with {clean(code)}", "234", text, _elapsed(progress))
        progress.phase = "in the TLS handshake"
        await conn.start_tls(await env.ssl_context(session.verify, check.ca_file),
                             check.tls_name or check.host, session, check.timeout)
        note = "AUTH TLS ok"
    seconds = _elapsed(progress)
    await _goodbye(conn, b"QUIT\r\n")
    return Answer(True, "220", "220", greeting, seconds, note)


async def _smtp(check, env, conn, session, progress) -> Answer:
    return await _smtp_like(check, env, conn, session, progress, "smtp")


async def _ftp(check, env, conn, session, progress) -> Answer:
    return await _smtp_like(check, env, conn, session, progress, "ftp")


async def _goodbye(conn: AnyConn, command: bytes) -> None:
    """Say goodbye and read one reply, without letting a slow goodbye count or fail the check."""
    try:
        async with asyncio.timeout(0.5):
            await conn.send(command)
            await conn.readline()
    except (TimeoutError, OSError, Closed, ssl.SSLError):
        pass


async def _imap(check, env, conn, session, progress) -> Answer:
    progress.phase = "waiting for the greeting"
    greeting = clean(await conn.readline(), 4096)
    if not (greeting.startswith("* OK") or greeting.startswith("* PREAUTH")):
        got = " ".join(greeting.split()[:2])
        return Answer(False, repr(got) if got else "nothing", "'* OK'", greeting, _elapsed(progress))
    if not _expect_note(check, greeting):
        return Answer(False, "'* OK' without the expected text", repr(clean(check.expect, 40)),
                      greeting, _elapsed(progress))
    note = ""
    if check.starttls:
        progress.phase = "waiting for the STARTTLS reply"
        await conn.send(b"m1 STARTTLS\r\n")
        line = await _tagged(conn, b"m1 ")
        if not line.upper().startswith("M1 OK"):
            return Answer(False, f"STARTTLS with {clean(line, 40)!r}", "'m1 OK'", greeting,
                          _elapsed(progress))
        progress.phase = "in the TLS handshake"
        await conn.start_tls(await env.ssl_context(session.verify, check.ca_file),
                             check.tls_name or check.host, session, check.timeout)
        note = "STARTTLS ok"
    seconds = _elapsed(progress)
    await _goodbye(conn, b"m2 LOGOUT\r\n")
    return Answer(True, "'* OK'", "'* OK'", greeting[2:].strip(), seconds, note)


async def _tagged(conn: AnyConn, tag: bytes) -> str:
    """The tagged IMAP reply, skipping untagged lines ("* CAPABILITY ...")."""
    for _ in range(MAX_REPLY_LINES):
        line = await conn.readline()
        if line.upper().startswith(tag.upper()):
            return clean(line, 200)
    return ""


async def _pop3(check, env, conn, session, progress) -> Answer:
    progress.phase = "waiting for the greeting"
    greeting = clean(await conn.readline(), 4096)
    if not greeting.startswith("+OK"):
        got = clean(greeting.split()[0], 20) if greeting.split() else ""
        return Answer(False, repr(got) if got else "nothing", "'+OK'", greeting, _elapsed(progress))
    if not _expect_note(check, greeting):
        return Answer(False, "'+OK' without the expected text", repr(clean(check.expect, 40)),
                      greeting, _elapsed(progress))
    note = ""
    if check.starttls:
        progress.phase = "waiting for the STLS reply"
        await conn.send(b"STLS\r\n")
        line = clean(await conn.readline(), 200)
        if not line.startswith("+OK"):
            return Answer(False, f"STLS with {clean(line, 40)!r}", "'+OK'", greeting, _elapsed(progress))
        progress.phase = "in the TLS handshake"
        await conn.start_tls(await env.ssl_context(session.verify, check.ca_file),
                             check.tls_name or check.host, session, check.timeout)
        note = "STLS ok"
    seconds = _elapsed(progress)
    await _goodbye(conn, b"QUIT\r\n")
    return Answer(True, "'+OK'", "'+OK'", greeting[3:].strip(), seconds, note)


async def _ssh(check, env, conn, session, progress) -> Answer:
    progress.phase = "waiting for the SSH banner"
    # RFC 4253 lets a server send other lines before its identification string.
    for _ in range(20):
        line = clean(await conn.readline(), 255)
        if line.startswith("SSH-"):
            break
    else:
        return Answer(False, "no SSH banner", "'SSH-2.0-...'", line, _elapsed(progress))
    seconds = _elapsed(progress)
    version = line.split("-", 2)[1] if line.count("-") >= 2 else "?"
    # Our own identification, so the server logs a clean disconnect rather than garbage.
    conn.send_nowait(b"SSH-2.0-monitor_check\r\n")
    if version not in ("2.0", "1.99"):
        return Answer(False, f"protocol {clean(version, 10)}", "2.0", line, seconds)
    if not _expect_note(check, line):
        return Answer(False, "a banner without the expected text", repr(clean(check.expect, 40)),
                      line, seconds)
    return Answer(True, f"SSH-{version}", "SSH-2.0", line, seconds)


DIALOGUES = {"tcp": _tcp, "smtp": _smtp, "imap": _imap, "pop3": _pop3, "ssh": _ssh, "ftp": _ftp}
