"""roundtrip: the number a mail provider lives by. A probe mail is submitted over SMTP with
AUTH (aiosmtplib), looked for over IMAPS with the same test account until it arrives, and
deleted; the result is the delivery time (metric delivery_seconds), from the submission's
"250 queued" to the mail showing in the INBOX.

Each probe carries a header X-Monitor-Probe with a tag of the check and a token of the run, so
probes of earlier runs that arrived late are deleted too and never pile up in the mailbox.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import re
import ssl
import time
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from collectors.services_base import (
    TLS_AND_GREETING,
    Outcome,
    Stage,
    certificates,
    connect_to,
    hostport,
    label,
    open_socket,
    peer_chain,
    said,
    secs,
    server_name,
    tls_verdict,
)
from collectors.services_tcp import (
    CertRejected,
    ProtocolError,
    close,
    command,
    connect,
    imap_login,
    imap_tagged,
    read_line,
)
from monitor.config import ServiceCheck
from monitor.model import State
from monitor.text import clean

POLL = 0.2  # seconds between two looks into the mailbox


def _probe_mail(check: ServiceCheck, header: str) -> EmailMessage:
    message = EmailMessage()
    message["From"] = check.username
    message["To"] = check.rcpt_to
    message["Subject"] = f"monitor round trip {header}"
    message["Date"] = formatdate(localtime=False)
    # The domain given: make_msgid's default asks the resolver for this host's name (getfqdn),
    # blocking the event loop for as long as the resolver stalls.
    message["Message-ID"] = make_msgid("monitor-probe", domain=(check.rcpt_to or "").rpartition("@")[2])
    message["X-Monitor-Probe"] = header
    message.set_content("A probe of the mail service by the monitoring agent; it deletes this "
                        "message itself as soon as it has arrived.\n")
    return message


@contextlib.contextmanager
def _smtp_errors(check: ServiceCheck, stage: Stage) -> Iterator[None]:
    """aiosmtplib's errors in the words of the other checks' messages."""
    try:
        yield
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise ProtocolError(f"refused the login of {clean(check.username, 40)!r}: "
                            f"'{exc.code} {said(check, exc.message)}' in {{t}}") from None
    except aiosmtplib.SMTPResponseException as exc:
        raise ProtocolError(f"answered '{exc.code} {said(check, exc.message)}' to the {stage.doing} "
                            "in {t}") from None
    except aiosmtplib.SMTPException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise CertRejected(cause.verify_message or str(cause)) from None
        if isinstance(cause, OSError):
            raise cause from None
        raise ProtocolError(f"failed at the {stage.doing}: {said(check, str(exc))}") from None


async def _smtp_connect(check: ServiceCheck, stage: Stage, verify: bool) -> aiosmtplib.SMTP:
    context = await stage.contexts.get(check, verify)
    assert check.port is not None  # validate() gives it the submission port
    # Our connection (the name lookup and the connect as stages of their own), handed to
    # aiosmtplib; `hostname` is then the TLS name (SNI) only: server_name, as for every check.
    sock = await connect_to(check, stage, check.host, check.port, open_socket)
    smtp = aiosmtplib.SMTP(sock=sock, hostname=server_name(check), use_tls=check.tls,
                           start_tls=False, tls_context=context,
                           local_hostname=check.helo or "monitor.invalid", timeout=check.timeout)
    stage.doing = TLS_AND_GREETING if check.tls else "greeting"
    try:
        with _smtp_errors(check, stage):
            await smtp.connect()
            if check.starttls:  # by hand: the SNI is server_name, as for the other checks
                stage.doing = "STARTTLS reply"
                await smtp.starttls(server_hostname=server_name(check))
    except BaseException:
        smtp.close()
        sock.close()  # (smtp.close() closes it only once aiosmtplib has made its transport)
        raise
    return smtp


async def _submit(check: ServiceCheck, stage: Stage, now: float, message: EmailMessage) -> Outcome:
    """Submit the probe (AUTH, then the mail); the verdict on the submission server's
    certificate. A certificate the handshake refuses is looked at over a second connection
    without verifying: no mail has gone yet then, so the probe is still submitted once."""
    rejected = None
    try:
        smtp = await _smtp_connect(check, stage, check.verify)
    except CertRejected as exc:
        rejected = exc.reason
        smtp = await _smtp_connect(check, stage, False)
    try:
        verdict = tls_verdict(check, peer_chain(smtp.transport), now, rejected)
        with _smtp_errors(check, stage):
            stage.doing = "AUTH reply"
            if not smtp.server_auth_methods:
                await smtp.ehlo()
            # One attempt, not aiosmtplib's login() trying every mechanism: each failure costs a
            # server's error delay and a line in its log.
            assert check.username is not None and check.password is not None  # the config's rule
            if "plain" in smtp.server_auth_methods:
                await smtp.auth_plain(check.username, check.password)
            elif "login" in smtp.server_auth_methods:
                await smtp.auth_login(check.username, check.password)
            else:
                offered = said(check, " ".join(smtp.server_auth_methods), 40) or "none"
                raise ProtocolError(f"offers no AUTH PLAIN or LOGIN (AUTH {offered}) to log in with")
            stage.doing = "answer to the submission"
            await smtp.send_message(message)
            await smtp.quit()
    finally:
        smtp.close()
    return verdict


def imap_name(check: ServiceCheck) -> str:
    """The name the IMAP server's certificate must carry (and its SNI): the submission
    server's when both are the same host, else imap_host."""
    return server_name(check) if check.imap_host in (None, check.host) else check.imap_host


async def _imap_connect(check: ServiceCheck, stage: Stage, now: float
                        ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, Outcome]:
    """The IMAPS connection and the verdict on its certificate, judged as any other TLS
    server's (a refused one looked at again without verifying)."""
    assert check.imap_host is not None
    where = functools.partial(connect, check, stage, host=check.imap_host, port=check.imap_port,
                              tls=True, sni=imap_name(check))
    rejected = None
    try:
        reader, writer = await where(check.verify)
    except CertRejected as exc:
        rejected = exc.reason
        reader, writer = await where(False)
    return reader, writer, tls_verdict(check, peer_chain(writer), now, rejected,
                                       name=imap_name(check))


def _search_uids(lines: list[str]) -> set[int]:
    """The UIDs of untagged "* SEARCH 3 4" lines. They go back into our STORE command: only
    numbers are taken, so a server that answers "1:*" cannot have us delete its whole INBOX."""
    return {int(uid) for line in lines if line.upper().startswith("* SEARCH")
            for uid in line.split()[2:] if re.fullmatch(r"[1-9][0-9]{0,9}", uid)}


async def _find_and_delete(check: ServiceCheck, stage: Stage, reader: asyncio.StreamReader,
                           writer: asyncio.StreamWriter, tag: str, token: str) -> tuple[float, int]:
    """Wait (looking every POLL seconds) for the probe with `token`, then delete it with every
    late probe of this check; (when it was seen, how many late ones went with it)."""
    stage.doing = "IMAP greeting"
    greeting = await read_line(reader)
    if not greeting.upper().startswith("* OK"):
        raise ProtocolError(f"(IMAP) greeted {said(check, greeting)!r} instead of * OK in {{t}}")
    await imap_login(check, stage, reader, writer)
    stage.doing = "SELECT reply"
    await command(writer, "m3 SELECT INBOX")
    reply, _ = await imap_tagged(reader, "m3")
    if not reply.upper().startswith("M3 OK"):
        raise ProtocolError(f"(IMAP) refused to open the INBOX: {said(check, reply[3:])!r} in {{t}}")
    stage.doing = "delivery"
    number = 0
    while True:
        number += 1
        await command(writer, f'u{number} UID SEARCH HEADER X-Monitor-Probe "{tag}"')
        reply, untagged = await imap_tagged(reader, f"u{number}")
        seen = time.monotonic()
        if not reply.upper().startswith(f"U{number} OK"):
            raise ProtocolError(f"(IMAP) refused the search: {said(check, reply)!r} in {{t}}")
        uids = _search_uids(untagged)
        if uids:
            await command(writer, f'u{number}t UID SEARCH HEADER X-Monitor-Probe "{token}"')
            _, mine = await imap_tagged(reader, f"u{number}t")
            if this_run := _search_uids(mine):
                uids |= this_run  # (it may have arrived between the two searches)
                break
        await asyncio.sleep(POLL)
    stage.doing = "delete"
    await command(writer, f"d1 UID STORE {','.join(map(str, sorted(uids)))} +FLAGS.SILENT (\\Deleted)")
    await imap_tagged(reader, "d1")
    await command(writer, "d2 EXPUNGE")
    await imap_tagged(reader, "d2")
    await command(writer, "m9 LOGOUT")
    return seen, len(uids) - 1


async def probe_roundtrip(check: ServiceCheck, stage: Stage, now: float) -> Outcome:
    """One probe mail per run, whatever the certificates: both servers' are judged here (a
    refused one never makes the caller run the whole round trip again)."""
    start = time.monotonic()
    name = label(check)
    tag = "p" + hashlib.sha256(check.name.encode()).hexdigest()[:12]
    token = uuid.uuid4().hex
    imaps = f"IMAPS {hostport(check.imap_host or check.host, check.imap_port)}"
    writer = None
    try:
        smtp_cert = await _submit(check, stage, now, _probe_mail(check, f"{tag}-{token}"))
        stage.cert = smtp_cert
        submitted = time.monotonic()
        stage.doing = "connect"
        reader, writer, imap_cert = await _imap_connect(check, stage, now)
        stage.cert = certificates([(name, smtp_cert), (imaps, imap_cert)])
        seen, late = await _find_and_delete(check, stage, reader, writer, tag, token)
    except ProtocolError as exc:
        elapsed = time.monotonic() - start
        return Outcome(State.CRITICAL, f"{name} {str(exc).replace('{t}', secs(elapsed))}", elapsed)
    finally:
        close(writer)
    delivery = seen - submitted
    late_note = f"; deleted {late} probe{'s' if late > 1 else ''} of earlier runs" if late else ""
    return Outcome(State.OK, f"{name} delivered a probe to {clean(check.rcpt_to, 60)} in "
                   f"{secs(delivery)} (submitted in {secs(submitted - start)}, found over IMAPS "
                   f"{hostport(check.imap_host or check.host, check.imap_port)}){late_note}",
                   time.monotonic() - start, {"delivery_seconds": (round(delivery, 6), "s")})
