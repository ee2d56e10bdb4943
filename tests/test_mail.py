"""Header safety: strings from devices can never add a header to alert mail."""

from __future__ import annotations

import email
import email.policy

import pytest

from alerts.mail import check_address, clean_header, make_message
from alerts.outbox import Outbox
from monitor.config import SmtpConfig
from tests.smtp_helpers import Recorder, start_smtp

ATTACKS = [
    "eth0\r\nBcc: victim@evil.example",
    "eth0\nBcc: victim@evil.example",
    "eth0\rBcc: victim@evil.example",
    "Gi0/1\r\n\r\nfake body",
    "ge-0/0/0\x00\x0bX-Injected: 1",
    "port\u2028Bcc: victim@evil.example",
    "port\x85Bcc: victim@evil.example",
    "=?utf-8?q?a=0D=0ABcc=3A_victim=40evil.example?=",
]


@pytest.mark.parametrize("attack", ATTACKS)
def test_clean_header_is_one_line(attack):
    text = clean_header(attack)
    assert not any(c in text for c in "\r\n\x00\x0b\x85\u2028")


@pytest.mark.parametrize("attack", ATTACKS)
def test_device_string_never_adds_a_header(attack):
    msg = make_message(sender="monitor@example.net", to=["admin@example.net"],
                       subject=f"[CRITICAL] router if {attack}: down",
                       body=f"interface {attack}\nbanner: {attack}\n.\n",
                       headers={"X-Monitor-Target": attack})
    parsed = email.message_from_bytes(msg.as_bytes(policy=email.policy.SMTP),
                                      policy=email.policy.default)
    assert parsed.get_all("Bcc") is None
    assert parsed.get_all("X-Injected") is None
    assert sorted(set(parsed.keys())) == sorted(
        {"From", "To", "Subject", "Date", "Auto-Submitted", "X-Monitor-Target", "Content-Type",
         "Content-Transfer-Encoding", "MIME-Version"})
    assert "\n" not in str(parsed["Subject"]) and "\r" not in str(parsed["Subject"])
    assert "victim@evil.example" not in [a.addr_spec for a in parsed["To"].addresses]


def test_modern_policy_is_the_backstop():
    msg = make_message(sender="monitor@example.net", to=["admin@example.net"], subject="x", body="")
    with pytest.raises(ValueError):
        msg["X-Raw"] = "a\r\nBcc: victim@evil.example"


@pytest.mark.parametrize("bad", ["a@b\r\nBcc: c@d", "admin@example.net, other@example.net",
                                 "no-at-sign", "", "<a@b> evil@c"])
def test_config_addresses_are_single_mailboxes(bad):
    with pytest.raises(ValueError):
        check_address(bad)


def test_bad_header_name_is_refused():
    with pytest.raises(ValueError):
        make_message(sender="m@example.net", to=["a@example.net"], subject="s", body="",
                     headers={"X-A\r\nBcc": "x"})


async def test_injection_attempts_over_the_wire(tmp_path):
    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        box = Outbox(tmp_path / "outbox.db", SmtpConfig(host="127.0.0.1", port=port,
                                                        sender="monitor@example.net"))
        for attack in ATTACKS:
            box.enqueue(make_message(sender="monitor@example.net", to=["admin@example.net"],
                                     subject=f"[WARNING] {attack}", body=f"{attack}\r\n.\r\nQUIT\r\n"))
        assert await box.deliver_pending() == len(ATTACKS)
    finally:
        server.close()
    assert len(rec.received) == len(ATTACKS)
    for r in rec.received:
        assert r.recipients == ["admin@example.net"]
        assert r.message.get_all("Bcc") is None and r.message.get_all("X-Injected") is None
        # The lone "." in the body was dot-stuffed, not the end of the message.
        assert "QUIT" in r.message.get_content()


def test_long_and_unicode_subjects_fold_safely():
    subject = "[CRITICAL] " + "größe " * 100
    msg = make_message(sender="monitor@example.net", to=["admin@example.net"], subject=subject,
                       body="ü")
    raw = msg.as_bytes(policy=email.policy.SMTP)
    assert all(len(line) <= 998 for line in raw.split(b"\r\n"))
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert str(parsed["Subject"]).startswith("[CRITICAL] größe")
