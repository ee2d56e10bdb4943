"""Real mail traffic through a real Postfix and Dovecot on loopback, for the mail-log tests.

`PLAN` is what the test does (messages accepted, refused, deferred, bounced; failed logins);
`expected()` computes from it alone what a mail-log reader must count, so the reader's answer is
checked against the sender's own list, never against the reader. `record()` runs the plan and
returns the logs Postfix and Dovecot wrote; `python -m tests.mail_traffic` records them into
tests/data/postfix/ (mail.log, dovecot.log, plan.json) for the test that reads recorded logs.
"""

from __future__ import annotations

import asyncio
import base64
import imaplib
import json
import smtplib
import ssl
import sys
import time
from collections import Counter
from dataclasses import asdict, dataclass
from email.message import EmailMessage
from pathlib import Path

USER = "probe@example.test"
PASSWORD = "right-password"
LOCAL = "example.test"
DATA = Path(__file__).parent / "data" / "postfix"


@dataclass(frozen=True)
class Send:
    """`count` messages from `login` (SASL user on submission; None: plain SMTP from
    127.0.0.1, which is in mynetworks) to `to`, and what Postfix is to make of them."""

    count: int
    to: str
    login: str | None
    outcome: str  # sent (delivered), deferred, bounced, rejected:<reason>


PLAN = [
    Send(6, USER, USER, "sent"),                              # local mailbox, over LMTP
    Send(5, "someone@relay.test", USER, "sent"),              # outbound, to a working relay
    Send(3, "someone@relay.test", None, "sent"),              # outbound, from a client address
    Send(3, "someone@down.test", USER, "deferred"),           # outbound, relay refuses connections
    Send(2, "nobody@example.test", USER, "bounced"),          # no such mailbox: LMTP 550
    Send(2, "blocked@example.test", None, "rejected:Recipient address rejected: Blocked by policy"),
    Send(1, USER, "", "rejected:Client host rejected: Access denied"),  # submission, no AUTH
]
SASL_FAILURES = 3  # wrong password on submission, each from its own loopback address:
SASL_SOURCE = "127.0.0.{}"  # 127.0.0.10, .11, ... (Dovecot delays repeated failures per address)
LOGIN_FAILURES = 2  # wrong password over IMAPS


def expected(plan: list[Send] = PLAN, sasl_failures: int = SASL_FAILURES,
             login_failures: int = LOGIN_FAILURES) -> dict:
    """What the log must say, from the plan: each bounce makes a notice to its sender, which
    Postfix receives and delivers like any message."""
    accepted = [s for s in plan if not s.outcome.startswith("rejected")]
    bounces = sum(s.count for s in plan if s.outcome == "bounced")

    def who(s: Send) -> str:
        return s.login or "127.0.0.1"

    outbound = Counter()
    domains = Counter({LOCAL: bounces})
    senders = Counter()
    reasons = Counter()
    for s in plan:
        if s.outcome.startswith("rejected:"):
            reasons[s.outcome.split(":", 1)[1]] += s.count
    for s in accepted:
        senders[who(s)] += s.count
        if s.outcome == "sent":
            domain = s.to.rsplit("@", 1)[1]
            domains[domain] += s.count
            if domain != LOCAL:
                outbound[who(s)] += s.count
    return {
        "received": sum(s.count for s in accepted) + bounces,
        "delivered": sum(s.count for s in accepted if s.outcome == "sent") + bounces,
        "deferred": sum(s.count for s in plan if s.outcome == "deferred"),
        "bounced": bounces,
        "rejected": sum(s.count for s in plan if s.outcome.startswith("rejected")),
        "reasons": dict(reasons),
        "outbound": sum(outbound.values()),
        "outbound_by": dict(outbound),
        "senders": dict(senders),
        "domains": dict(domains),
        "sasl_failures": {SASL_SOURCE.format(10 + i): 1 for i in range(sasl_failures)},
        "login_failures": {"127.0.0.1": login_failures},
    }


def _message(to: str, n: int) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = USER
    msg["To"] = to
    msg["Subject"] = f"test {n}"
    msg.set_content(f"message {n} to {to}\n")
    return msg


def _unverified() -> ssl.SSLContext:
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    return context


def _drive(ports: dict[str, int], imaps: int) -> None:
    n = 0
    for send in PLAN:
        for _ in range(send.count):
            n += 1
            if send.login is None:
                client = smtplib.SMTP("127.0.0.1", ports["smtp"], timeout=30)
            else:
                client = smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30)
                client.starttls(context=_unverified())
                if send.login:
                    client.login(send.login, PASSWORD)
            with client:
                try:
                    client.send_message(_message(send.to, n), from_addr=USER, to_addrs=[send.to])
                except smtplib.SMTPRecipientsRefused:
                    assert send.outcome.startswith("rejected"), send
    for i in range(SASL_FAILURES):
        with smtplib.SMTP("127.0.0.1", ports["submission"], timeout=30,
                          source_address=(SASL_SOURCE.format(10 + i), 0)) as client:
            client.starttls(context=_unverified())
            client.ehlo()
            # One AUTH command per attempt (smtplib's login() would try every mechanism).
            token = base64.b64encode(f"\0{USER}\0wrong".encode()).decode()
            code, _ = client.docmd("AUTH", f"PLAIN {token}")
            assert code == 535, code
    for _ in range(LOGIN_FAILURES):
        with imaplib.IMAP4_SSL("127.0.0.1", imaps, ssl_context=_unverified(), timeout=30) as imap:
            try:
                imap.login(USER, "wrong")
            except imaplib.IMAP4.error:
                pass


def _done(log: Path) -> bool:
    """Every accepted message has met its fate (a readiness test, not the reader under test)."""
    text = log.read_text(errors="replace") if log.exists() else ""
    want = expected()
    return (text.count("status=sent") >= want["delivered"]
            and text.count("status=deferred") >= want["deferred"]
            and text.count("status=bounced") >= want["bounced"])


def _logins_logged(log: Path) -> bool:
    text = log.read_text(errors="replace") if log.exists() else ""
    return text.count("(auth failed, ") >= LOGIN_FAILURES


async def record(directory: Path) -> tuple[str, str]:
    """Run the plan through real Postfix and Dovecot; (Postfix's log, Dovecot's log)."""
    from tests import daemons
    from tests import service_servers as srv
    from tests.smtp_helpers import Recorder, start_smtp

    relay, relay_port = await start_smtp(Recorder())
    closed = srv.closed_port()
    cert = srv.make_cert(directory, names=("localhost", "127.0.0.1"))
    log = directory / "mail.log"
    try:
        with daemons.world_dir("monitor-maps-") as maps:
            (maps / "transport").write_text(f"relay.test smtp:[127.0.0.1]:{relay_port}\n"
                                            f"down.test smtp:[127.0.0.1]:{closed}\n")
            (maps / "recipients").write_text("blocked@example.test REJECT Blocked by policy\n")
            main_cf = (f"transport_maps = texthash:{maps}/transport\n"
                       f"smtpd_recipient_restrictions = check_recipient_access "
                       f"texthash:{maps}/recipients\n"
                       "smtpd_error_sleep_time = 0\n")
            with daemons.dovecot(cert, {USER: PASSWORD}) as dovecot, \
                    daemons.postfix(cert, dovecot, main_cf=main_cf, log=log) as ports:
                await asyncio.to_thread(_drive, ports, dovecot.ports["imaps"])
                deadline = time.monotonic() + 90
                dovecot_path = dovecot.directory / "dovecot.log"
                # Dovecot logs a failed login when the login process ends, which may be after
                # our client has gone: wait for its lines too, not only for Postfix's.
                while not (_done(log) and _logins_logged(dovecot_path)):
                    if time.monotonic() > deadline:
                        raise AssertionError("postfix did not finish the plan within 90 s:\n"
                                             + log.read_text(errors="replace")[-3000:])
                    await asyncio.sleep(0.2)
                dovecot_log = dovecot_path.read_text(errors="replace")
    finally:
        relay.close()
    return log.read_text(errors="replace"), dovecot_log


def main() -> None:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        mail_log, dovecot_log = asyncio.run(record(Path(tmp)))
    DATA.mkdir(parents=True, exist_ok=True)
    (DATA / "mail.log").write_text(mail_log)
    (DATA / "dovecot.log").write_text(dovecot_log)
    (DATA / "plan.json").write_text(json.dumps({
        "recorded_at": int(time.time()),  # the syslog stamps carry no year
        "plan": [asdict(s) for s in PLAN], "sasl_failures": SASL_FAILURES,
        "login_failures": LOGIN_FAILURES}, indent=1) + "\n")
    print(f"recorded {len(mail_log.splitlines())} Postfix and {len(dovecot_log.splitlines())} "
          f"Dovecot log lines into {DATA}", file=sys.stderr)


if __name__ == "__main__":
    main()
