"""The mail path seen from the on-call side: the agent's own `mail` check, fallbacks and
sendmail, slow relays after DATA, and recipients refused one by one. Real relays throughout."""

from __future__ import annotations

import argparse
import asyncio
import email
import email.policy
import json
import stat

import pytest

from alerts.commands import cmd_alerts
from alerts.mail import make_message
from alerts.outbox import FAILED, PENDING, SENT, Outbox
from monitor.agent import Agent
from monitor.config import SmtpConfig, SmtpRelay
from monitor.model import Batch, CheckResult, State
from tests.service_servers import make_cert
from tests.smtp_helpers import Authenticator, Received, Recorder, free_port, start_smtp
from tests.test_alerts import T0, Clock, make_config


def message(subject: str, to=("admin@example.net",)):
    return make_message(sender="monitor@example.net", to=list(to), subject=subject,
                        body="down\n")


def fake_sendmail(tmp_path):
    """A sendmail(8) stand-in: files the message and its arguments, exits 0."""
    spool = tmp_path / "sendmail-spool"
    spool.mkdir()
    program = tmp_path / "sendmail"
    program.write_text(f"#!/bin/sh\nn=$(ls {spool} | wc -l)\nprintf '%s\\n' \"$@\" > "
                       f"{spool}/$n.args\ncat > {spool}/$n.eml\n")
    program.chmod(program.stat().st_mode | stat.S_IEXEC)
    return program, spool


RULE = """
    [[alerts.rules]]
    name = "service-down"
    check = "smtp"
"""


def mail_status(agent: Agent):
    return {(s.target, s.check): s for s in agent.status.all()}[("agent", "mail")]


async def test_stuck_mail_is_a_check_warning_then_critical_in_status_json(tmp_path):
    config = make_config(tmp_path, free_port(), RULE, group_window="0s")
    agent = Agent(config)
    clock = Clock()
    agent.alerts.clock = agent.alerts.outbox.clock = agent.alerts.notifier.clock = clock
    try:
        await agent.consume(_Source(), Batch(checks=[CheckResult("d2", "smtp", State.CRITICAL, "no answer",
                                                             timestamp=T0)]))
        await agent._alerts_job()
        assert mail_status(agent).state is State.OK
        clock.now += 6 * 60
        await agent._alerts_job()
        status = mail_status(agent)
        assert status.state is State.WARNING
        assert "1 mail(s) waiting, the oldest for 6m" in status.message
        assert "cannot connect" in status.message
        clock.now += 30 * 60
        await agent._alerts_job()
    finally:
        await agent.close()
    saved = json.loads((config.state_dir / "status.json").read_text())
    (mail,) = [c for c in saved["checks"] if (c["target"], c["check"]) == ("agent", "mail")]
    assert mail["state"] == State.CRITICAL.value and "oldest for 36m" in mail["message"]


class _Source:
    name, interval = "services", 60.0


async def test_refused_login_goes_critical_and_the_sendmail_fallback_carries_the_mail(tmp_path):
    cert = make_cert(tmp_path)
    rec = Recorder()
    server, port = await start_smtp(rec, cert=cert, auth=Authenticator("monitor", "right"))
    program, spool = fake_sendmail(tmp_path)
    config = SmtpConfig(host="127.0.0.1", port=port, sender="monitor@example.net", timeout=5,
                        security="starttls", ca_file=cert[0], username="monitor",
                        password="wrong", fallback=[SmtpRelay(transport="sendmail",
                                                              sendmail=str(program))])
    try:
        box = Outbox(tmp_path / "outbox.db", config)
        box.enqueue(message("to the phone", to=["admin@example.net", "boss@example.net"]))
        assert await box.deliver_pending(new_mail=True) == 1
    finally:
        server.close()
    assert rec.received == []
    args = (spool / "0.args").read_text().split()
    assert args == ["-oi", "-f", "monitor@example.net", "--", "admin@example.net",
                    "boss@example.net"]
    sent = email.message_from_bytes((spool / "0.eml").read_bytes(), policy=email.policy.default)
    assert str(sent["Subject"]) == "to the phone"
    (entry,) = box.entries()
    assert entry.status == SENT and entry.route == str(program)
    level, text = box.health()
    assert level == 2 and "refuses mail" in text and "refused the login" in text
    assert f"via {program}" in text


async def test_fallback_relay_takes_over_once_the_primary_is_down_long_enough(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)
    clock = Clock()
    config = SmtpConfig(host="127.0.0.1", port=free_port(), sender="monitor@example.net",
                        timeout=5, fallback_after=300,
                        fallback=[SmtpRelay(host="127.0.0.1", port=port, timeout=5)])
    try:
        box = Outbox(tmp_path / "outbox.db", config, clock)
        box.enqueue(message("first"))
        assert await box.deliver_pending(new_mail=True) == 0  # primary down for 0 s only
        assert rec.received == []
        clock.now += 301
        assert await box.deliver_pending() == 1
    finally:
        server.close()
    assert rec.subjects() == ["first"]
    assert box.entries()[0].route == f"127.0.0.1:{port}"


class SlowAfterData(Recorder):
    """Takes the message, then thinks longer than the client waits (content scanning)."""

    async def handle_DATA(self, server, session, envelope) -> str:
        raw = envelope.original_content or envelope.content
        self.received.append(Received(envelope.mail_from, list(envelope.rcpt_tos), raw))
        await asyncio.sleep(self.delay)
        return "250 OK"


async def test_no_answer_after_data_is_maybe_delivered_and_sent_once_more_only(tmp_path):
    rec = SlowAfterData(delay=3.0)
    server, port = await start_smtp(rec)
    clock = Clock()
    config = SmtpConfig(host="127.0.0.1", port=port, sender="monitor@example.net", timeout=5,
                        data_timeout=0.3)
    try:
        box = Outbox(tmp_path / "outbox.db", config, clock)
        box.enqueue(message("scanned slowly"))
        for _ in range(5):  # the delivery task's passes over a few minutes
            await box.deliver_pending(new_mail=True)
            clock.now += 60
    finally:
        server.close()
    ids = rec.message_ids()
    assert len(ids) == 2 and ids[0] == ids[1]  # once more, same Message-ID; then no more
    (entry,) = box.entries()
    assert entry.status == SENT and entry.unconfirmed == 2
    assert "maybe delivered" in entry.last_error


async def test_a_refused_recipient_of_three_is_shown_in_alerts_and_the_check(tmp_path, capsys):
    rec = Recorder()
    server, port = await start_smtp(rec)

    async def handle_RCPT(server_, session, envelope, address, options):
        if address.startswith("gone@"):
            return "550 5.1.1 no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    rec.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]
    config = make_config(tmp_path, port, RULE)
    try:
        box = Outbox(config.state_dir / "outbox.db", config.smtp)
        box.enqueue(message("to three", to=["admin@example.net", "gone@example.net",
                                            "boss@example.net"]))
        assert await box.deliver_pending(new_mail=True) == 1
    finally:
        server.close()
    assert rec.received[0].recipients == ["admin@example.net", "boss@example.net"]
    (entry,) = box.entries()
    assert entry.status == SENT and "gone@example.net: 550 5.1.1 no such user" in entry.refused
    level, text = box.health()
    assert level == 1 and "reached only some recipients" in text and "gone@example.net" in text
    from alerts.state import AlertStore, alerts_db_path
    AlertStore(alerts_db_path(config.state_dir)).close()
    assert cmd_alerts(config, argparse.Namespace(history="0")) == 0
    out = capsys.readouterr().out
    assert "Delivered, but some recipients refused (1 in the last 24h)" in out
    assert "gone@example.net: 550 5.1.1 no such user" in out


@pytest.mark.parametrize("code,status", [(75, PENDING), (67, FAILED)])
async def test_sendmail_exit_status_is_deferral_or_refusal(tmp_path, code, status):
    program = tmp_path / "sendmail"
    program.write_text(f"#!/bin/sh\ncat >/dev/null\necho 'user unknown' >&2\nexit {code}\n")
    program.chmod(0o755)
    config = SmtpConfig(transport="sendmail", sendmail=str(program),
                        sender="monitor@example.net")
    box = Outbox(tmp_path / "outbox.db", config)
    box.enqueue(message("local"))
    assert await box.deliver_pending(new_mail=True) == 0
    (entry,) = box.entries()
    assert entry.status == status
    assert f"exited with status {code}: user unknown" in entry.last_error


async def test_recipients_deferred_one_by_one(tmp_path):
    """4xx for some recipients: the others get it (and the deferral is shown); 4xx for all: the
    message waits for a retry."""
    rec = Recorder()
    server, port = await start_smtp(rec)

    async def handle_RCPT(server_, session, envelope, address, options):
        if address.startswith(("full@", "later@")):
            return "452 4.2.2 mailbox full"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    rec.handle_RCPT = handle_RCPT  # type: ignore[attr-defined]
    config = SmtpConfig(host="127.0.0.1", port=port, sender="monitor@example.net", timeout=5)
    try:
        box = Outbox(tmp_path / "outbox.db", config)
        box.enqueue(message("some", to=["admin@example.net", "full@example.net"]))
        box.enqueue(message("none", to=["later@example.net"]))
        assert await box.deliver_pending(new_mail=True) == 1
    finally:
        server.close()
    some, none = box.entries()
    assert some.status == SENT and "full@example.net: 452 4.2.2 mailbox full" in some.refused
    assert none.status == PENDING and "452" in none.last_error
    assert rec.subjects() == ["some"]
