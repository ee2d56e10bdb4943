"""The durable outbox against a real aiosmtpd: TLS, AUTH, outages, refusals, kill -9."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections import Counter

import pytest

from alerts.mail import make_message
from alerts.outbox import FAILED, PENDING, SENT, Outbox
from monitor.config import SmtpConfig
from tests.conftest import ROOT
from tests.service_servers import make_cert
from tests.smtp_helpers import Authenticator, Recorder, start_smtp


class Clock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def message(subject: str, to: str = "admin@example.net"):
    return make_message(sender="monitor@example.net", to=[to], subject=subject,
                        body=f"body of {subject}\n")


def smtp(port: int, **kw) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, sender="monitor@example.net", timeout=5, **kw)


async def test_plain_delivery_sets_message_id_and_marks_sent(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        box = Outbox(tmp_path / "outbox.db", smtp(port))
        ids = [box.enqueue(message(f"m{i}")) for i in range(3)]
        assert [e.id for e in box.pending()] == ids
        assert await box.deliver_pending() == 3
        assert await box.deliver_pending() == 0
    finally:
        server.close()
    assert rec.subjects() == ["m0", "m1", "m2"]
    assert all(r.recipients == ["admin@example.net"] for r in rec.received)
    assert len(set(rec.message_ids())) == 3
    assert all(m.startswith("<") and m.endswith("@example.net>") for m in rec.message_ids())
    assert [e.status for e in box.entries()] == [SENT] * 3
    assert box.pending() == []


@pytest.mark.parametrize("implicit", [False, True], ids=["starttls", "tls"])
async def test_tls_and_auth(tmp_path, implicit):
    cert = make_cert(tmp_path)
    rec, auth = Recorder(), Authenticator("monitor", "s3cret")
    server, port = await start_smtp(rec, cert=cert, implicit_tls=implicit, auth=auth)
    try:
        config = smtp(port, security="tls" if implicit else "starttls", username="monitor",
                      password="s3cret", ca_file=cert[0])
        box = Outbox(tmp_path / "outbox.db", config)
        box.enqueue(message("over TLS"))
        assert await box.deliver_pending() == 1
    finally:
        server.close()
    assert rec.subjects() == ["over TLS"]
    assert auth.attempts == 1


async def test_wrong_password_keeps_mail_and_says_what_to_do(tmp_path, caplog):
    cert = make_cert(tmp_path)
    rec = Recorder()
    server, port = await start_smtp(rec, cert=cert, auth=Authenticator("monitor", "right"))
    clock = Clock()
    try:
        box = Outbox(tmp_path / "outbox.db",
                     smtp(port, security="starttls", username="monitor", password="wrong",
                          ca_file=cert[0]), clock)
        box.enqueue(message("held"))
        assert await box.deliver_pending() == 0
    finally:
        server.close()
    assert rec.received == []
    assert [e.status for e in box.entries()] == [PENDING]
    relay = box.relay_state()
    assert relay.failures == 1 and relay.next_attempt > clock.now
    assert "check [smtp] username and password" in relay.last_error


async def test_untrusted_certificate_is_refused(tmp_path):
    cert = make_cert(tmp_path)
    rec = Recorder()
    server, port = await start_smtp(rec, cert=cert)
    try:
        box = Outbox(tmp_path / "outbox.db", smtp(port, security="starttls"))  # no ca_file
        box.enqueue(message("secret"))
        assert await box.deliver_pending() == 0
    finally:
        server.close()
    assert rec.received == []
    assert box.relay_state().failures == 1


async def test_relay_down_for_hours_then_back_delivers_each_once_in_order(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)
    server.close()
    await server.wait_closed()
    clock = Clock()
    box = Outbox(tmp_path / "outbox.db", smtp(port), clock, retry_base=30, retry_max=600)
    subjects = []
    # Three hours of outage: a message every 10 minutes, the delivery job every 30 s.
    for minute in range(0, 180):
        clock.now += 60
        if minute % 10 == 0:
            subjects.append(f"alert {minute:03d}")
            box.enqueue(message(subjects[-1]))
        assert await box.deliver_pending() == 0
    state = box.relay_state()
    assert state.failures >= 5
    assert state.next_attempt - clock.now <= 600  # capped backoff: it keeps trying
    assert len(box.pending()) == len(subjects)

    server, _ = await start_smtp(rec, port=port)
    try:
        while box.pending():
            clock.now += 60
            await box.deliver_pending()
        assert await box.deliver_pending() == 0
    finally:
        server.close()
    assert rec.subjects() == subjects
    assert len(set(rec.message_ids())) == len(subjects)
    assert box.relay_state().failures == 0


async def test_permanent_refusal_is_failed_and_temporary_is_retried(tmp_path):
    rec = Recorder(reject={"BOUNCE": "550 5.7.1 policy says no", "LATER": "451 4.3.0 try later"})
    server, port = await start_smtp(rec)
    clock = Clock()
    try:
        box = Outbox(tmp_path / "outbox.db", smtp(port), clock)
        box.enqueue(message("first"))
        bounce = box.enqueue(message("BOUNCE me"))
        later = box.enqueue(message("LATER please"))
        box.enqueue(message("last"))
        assert await box.deliver_pending() == 2
        failed = box.failed()
        assert [e.id for e in failed] == [bounce]
        assert "550 5.7.1 policy says no" in failed[0].last_error
        (deferred,) = box.pending()
        assert deferred.id == later and deferred.next_attempt > clock.now
        assert "451" in deferred.last_error
        assert await box.deliver_pending() == 0  # not due yet
        rec.reject.pop("LATER")
        clock.now = deferred.next_attempt
        assert await box.deliver_pending() == 1
    finally:
        server.close()
    assert rec.subjects() == ["first", "last", "LATER please"]
    statuses = {e.subject: e.status for e in box.entries()}
    assert statuses == {"first": SENT, "BOUNCE me": FAILED, "LATER please": SENT, "last": SENT}


async def test_refused_recipient_is_permanent(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)

    async def handle_RCPT(server_, session, envelope, address, options):
        if address.startswith("nobody@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    rec.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]
    try:
        box = Outbox(tmp_path / "outbox.db", smtp(port))
        box.enqueue(message("to nobody", to="nobody@example.net"))
        box.enqueue(message("to admin"))
        assert await box.deliver_pending() == 1
    finally:
        server.close()
    assert rec.subjects() == ["to admin"]
    assert "no such user" in box.failed()[0].last_error


async def test_concurrent_deliverers_send_once(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        db = tmp_path / "outbox.db"
        a, b = Outbox(db, smtp(port)), Outbox(db, smtp(port))
        for i in range(5):
            a.enqueue(message(f"m{i}"))
        results = await asyncio.gather(a.deliver_pending(), b.deliver_pending(),
                                       a.deliver_pending())
    finally:
        server.close()
    assert sum(results) == 5
    assert rec.subjects() == [f"m{i}" for i in range(5)]


AGENT_SCRIPT = textwrap.dedent("""
    # A process that accepts alert mail into the outbox and delivers it, like the agent does.
    import asyncio, sys
    from pathlib import Path
    from alerts.mail import make_message
    from alerts.outbox import Outbox
    from monitor.config import SmtpConfig
    box = Outbox(Path(sys.argv[1]), SmtpConfig(host="127.0.0.1", port=int(sys.argv[2]),
                                               sender="monitor@example.net", timeout=30))
    for i in range(int(sys.argv[3])):
        box.enqueue(make_message(sender="monitor@example.net", to=["admin@example.net"],
                                 subject=f"alert {i}", body="down"))
    print(asyncio.run(box.deliver_pending()), flush=True)
""")


async def test_kill_9_while_sending_loses_nothing_and_duplicates_at_most_one(tmp_path):
    rec = Recorder(delay=0.15)
    server, port = await start_smtp(rec)
    db = tmp_path / "outbox.db"
    subjects = [f"alert {i}" for i in range(12)]
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-c", AGENT_SCRIPT, str(db), str(port), str(len(subjects)), cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE)
    try:
        # Kill it while the relay is in the middle of a message (the handler is sleeping).
        while len(rec.received) < 4:
            rec.arrived.clear()
            await asyncio.wait_for(rec.arrived.wait(), 30)
        rec.arrived.clear()
        await asyncio.wait_for(rec.arrived.wait(), 30)
        proc.send_signal(signal.SIGKILL)
        assert await proc.wait() == -signal.SIGKILL
        await asyncio.sleep(rec.delay * 2)  # let the relay finish what it was given
        before = len(rec.received)
        assert 4 <= before < len(subjects)
        rec.delay = 0
        restarted = Outbox(db, smtp(port))
        await restarted.deliver_pending()
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        server.close()
    counts = Counter(rec.message_ids())
    assert len(counts) == len(subjects), "a message was lost"
    duplicates = [m for m, n in counts.items() if n > 1]
    assert len(duplicates) <= 1 and all(counts[m] == 2 for m in duplicates)
    # The first occurrences are in order.
    seen: list[str] = []
    for s in rec.subjects():
        if s not in seen:
            seen.append(s)
    assert seen == subjects
    assert restarted.pending() == []


def test_enqueue_is_durable_across_a_new_process(tmp_path):
    db = tmp_path / "outbox.db"
    box = Outbox(db, smtp(25))
    entry = box.enqueue(message("kept"))
    out = subprocess.run(
        [sys.executable, "-c", "import sys; from pathlib import Path; from alerts.outbox import "
         "Outbox; from monitor.config import SmtpConfig; "
         "print([e.subject for e in Outbox(Path(sys.argv[1]), SmtpConfig()).pending()])", str(db)],
        capture_output=True, text=True, cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip() == "['kept']"
    assert b"Subject: kept" in box.raw_message(entry)


def test_bcc_is_an_envelope_recipient_but_not_a_header(tmp_path):
    box = Outbox(tmp_path / "outbox.db", smtp(25))
    msg = message("hidden")
    msg["Bcc"] = "boss@example.net"
    entry = box.enqueue(msg)
    (pending,) = box.pending()
    assert pending.recipients == ["admin@example.net", "boss@example.net"]
    assert b"boss@" not in box.raw_message(entry)



