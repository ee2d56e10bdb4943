"""roundtrip: the number a mail provider lives by. A probe mail is submitted over SMTP with
AUTH (aiosmtplib), looked for over IMAPS with the same test account until it arrives, and
deleted; the result is the delivery time (metric delivery_seconds), from the submission's
"250 queued" to the mail showing in the INBOX.

Each probe carries a header X-Monitor-Probe with a tag of the check and a token of the run, so
probes of earlier runs that arrived late are deleted too and never pile up in the mailbox.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
import time
import uuid
from email.message import EmailMessage
from email.utils import formatdate, make_msgid

import aiosmtplib

from collectors.services_base import Outcome, Stage, cert_verdict, hostport, label, secs
from collectors.services_tcp import (
    CertRejected,
    ProtocolError,
    close,
    command,
    connect,
    hide_password,
    imap_login,
    imap_tagged,
    peer_chain,
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
    message["Message-ID"] = make_msgid("monitor-probe")
    message["X-Monitor-Probe"] = header
    message.set_content("A probe of the mail service by the monitoring agent; it deletes this "
                        "message itself as soon as it has arrived.\n")
    return message


async def _submit(check: ServiceCheck, stage: Stage, verify: bool, now: float,
                  message: EmailMessage) -> None:
    context = await stage.contexts.get(check, verify)
    smtp = aiosmtplib.SMTP(hostname=check.host, port=check.port, use_tls=check.tls,
                           start_tls=check.starttls, tls_context=context,
                           local_hostname=check.helo or "monitor.invalid", timeout=check.timeout)
    stage.doing = "connect"
    try:
        await smtp.connect()
        stage.cert = cert_verdict(check, peer_chain(smtp.transport), now)
        stage.doing = "AUTH reply"
        if not smtp.server_auth_methods:
            await smtp.ehlo()
        # One attempt, not aiosmtplib's login() trying every mechanism: each failure costs a
        # server's error delay and a line in its log.
        assert check.username is not None and check.password is not None  # the config requires them
        if "plain" in smtp.server_auth_methods:
            await smtp.auth_plain(check.username, check.password)
        elif "login" in smtp.server_auth_methods:
            await smtp.auth_login(check.username, check.password)
        else:
            raise ProtocolError(f"offers no AUTH PLAIN or LOGIN (AUTH "
                                f"{clean(' '.join(smtp.server_auth_methods), 40) or 'none'}) to "
                                "log in with")
        stage.doing = "answer to the submission"
        await smtp.send_message(message)
        await smtp.quit()
    except aiosmtplib.SMTPAuthenticationError as exc:
        raise ProtocolError(f"refused the login of {clean(check.username, 40)!r}: "
                            f"'{exc.code} {clean(exc.message)}' in {{t}}") from None
    except aiosmtplib.SMTPResponseException as exc:
        raise ProtocolError(f"answered '{exc.code} {clean(exc.message)}' to the {stage.doing} "
                            "in {t}") from None
    except aiosmtplib.SMTPException as exc:
        cause = exc.__cause__ or exc.__context__
        if isinstance(cause, ssl.SSLCertVerificationError):
            raise CertRejected(cause.verify_message or str(cause)) from None
        if isinstance(cause, OSError):
            raise cause from None
        raise ProtocolError(f"failed at the {stage.doing}: {clean(str(exc))}") from None
    finally:
        smtp.close()


async def _find_and_delete(check: ServiceCheck, stage: Stage, verify: bool, tag: str,
                           token: str) -> tuple[float, int]:
    """Wait (looking every POLL seconds) for the probe with `token`, then delete it with every
    late probe of this check; (when it was seen, how many late ones went with it)."""
    assert check.imap_host is not None
    writer = None
    try:
        stage.doing = "connect"
        reader, writer = await connect(check, stage, verify, check.imap_host, check.imap_port,
                                       tls=True, sni=check.imap_host)
        stage.doing = "IMAP greeting"
        greeting = await read_line(reader)
        if not greeting.upper().startswith("* OK"):
            raise ProtocolError(f"(IMAP) greeted {clean(greeting)!r} instead of * OK in {{t}}")
        await imap_login(check, stage, reader, writer)
        stage.doing = "SELECT reply"
        await command(writer, "m3 SELECT INBOX")
        reply, _ = await imap_tagged(reader, "m3")
        if not reply.upper().startswith("M3 OK"):
            raise ProtocolError(f"(IMAP) refused to open the INBOX: {clean(reply[3:])!r} in {{t}}")
        stage.doing = "delivery"
        number = 0
        while True:
            number += 1
            await command(writer, f'u{number} UID SEARCH HEADER X-Monitor-Probe "{tag}"')
            reply, untagged = await imap_tagged(reader, f"u{number}")
            seen = time.monotonic()
            if not reply.upper().startswith(f"U{number} OK"):
                raise ProtocolError(f"(IMAP) refused the search: {clean(reply)!r} in {{t}}")
            uids = [uid for line in untagged if line.upper().startswith("* SEARCH")
                    for uid in line.split()[2:]]
            if uids:
                await command(writer, f'u{number}t UID SEARCH HEADER X-Monitor-Probe "{token}"')
                _, mine = await imap_tagged(reader, f"u{number}t")
                if any(line.split()[2:] for line in mine if line.upper().startswith("* SEARCH")):
                    break
            await asyncio.sleep(POLL)
        stage.doing = "delete"
        await command(writer, f"d1 UID STORE {','.join(uids)} +FLAGS.SILENT (\\Deleted)")
        await imap_tagged(reader, "d1")
        await command(writer, "d2 EXPUNGE")
        await imap_tagged(reader, "d2")
        await command(writer, "m9 LOGOUT")
        return seen, len(uids) - 1
    finally:
        close(writer)


async def probe_roundtrip(check: ServiceCheck, stage: Stage, now: float, verify: bool) -> Outcome:
    start = time.monotonic()
    name = label(check)
    tag = "p" + hashlib.sha256(check.name.encode()).hexdigest()[:12]
    token = uuid.uuid4().hex
    try:
        await _submit(check, stage, verify, now, _probe_mail(check, f"{tag}-{token}"))
        submitted = time.monotonic()
        seen, late = await _find_and_delete(check, stage, verify, tag, token)
    except ProtocolError as exc:
        elapsed = time.monotonic() - start
        return Outcome(State.CRITICAL, hide_password(
            check, f"{name} {str(exc).replace('{t}', secs(elapsed))}"), elapsed)
    delivery = seen - submitted
    late_note = f"; deleted {late} probe{'s' if late > 1 else ''} of earlier runs" if late else ""
    return Outcome(State.OK, f"{name} delivered a probe to {clean(check.rcpt_to, 60)} in "
                   f"{secs(delivery)} (submitted in {secs(submitted - start)}, found over IMAPS "
                   f"{hostport(check.imap_host or check.host, check.imap_port)}){late_note}",
                   time.monotonic() - start, {"delivery_seconds": (round(delivery, 6), "s")})
