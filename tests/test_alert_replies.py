"""Ack by replying to the alert mail: a real Dovecot IMAP server started by the test."""

from __future__ import annotations

import imaplib
import shutil
import subprocess
import tempfile
import textwrap
import time
from pathlib import Path

import pytest

from alerts.mail import make_message
from alerts.service import AlertService
from monitor.model import Batch, State
from tests.smtp_helpers import Recorder, free_port, start_smtp
from tests.test_alerts import SERVICE_RULE, Clock, check, make_config

DOVECOT = Path("/usr/sbin/dovecot")


@pytest.fixture
def dovecot(tmp_path):
    """Dovecot on a free loopback port, its config and state under tmp_path; the mail store and
    the password file in a directory the dovecot user can reach (tmp_path's are root's only)."""
    if not DOVECOT.exists():
        pytest.skip("dovecot is not installed (apt-get install dovecot-imapd)")
    port = free_port()
    home = tmp_path / "dovecot"
    home.mkdir()
    # Short (unix socket paths are limited to 108 bytes) and reachable by the dovecot user.
    reachable = Path(tempfile.mkdtemp(prefix="monitor-imap-"))
    reachable.chmod(0o755)
    store = reachable / "mail"
    store.mkdir()
    shutil.chown(store, "dovecot", "dovecot")
    (reachable / "passwd").write_text("replies:{PLAIN}imap-secret\n")
    (home / "dovecot.conf").write_text(textwrap.dedent(f"""
        protocols = imap
        listen = 127.0.0.1
        base_dir = {reachable}/run
        state_dir = {reachable}/state
        instance_name = monitor-test-{port}
        ssl = no
        disable_plaintext_auth = no
        auth_mechanisms = plain login
        log_path = {home}/dovecot.log
        mail_location = maildir:{store}/%u
        default_internal_user = dovecot
        default_login_user = dovenull
        first_valid_uid = 1
        passdb {{
          driver = passwd-file
          args = scheme=PLAIN username_format=%u {reachable}/passwd
        }}
        userdb {{
          driver = static
          args = uid=dovecot gid=dovecot home={store}/%u
        }}
        service imap-login {{
          chroot =
          inet_listener imap {{
            address = 127.0.0.1
            port = {port}
          }}
          inet_listener imaps {{
            port = 0
          }}
        }}
        service anvil {{
          chroot =
        }}
    """))
    proc = subprocess.Popen([str(DOVECOT), "-F", "-c", str(home / "dovecot.conf")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        for _ in range(100):
            try:
                imaplib.IMAP4("127.0.0.1", port, timeout=5).logout()
                break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"dovecot did not start: {proc.stderr.read().decode()}")
                time.sleep(0.05)
        yield port
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(reachable, ignore_errors=True)


def deliver(port: int, msg) -> None:
    """Put a message into the replies mailbox, as the MTA would."""
    imap = imaplib.IMAP4("127.0.0.1", port, timeout=10)
    imap.login("replies", "imap-secret")
    imap.append("INBOX", None, None, msg.as_bytes())
    imap.logout()


def reply(to_mail, sender: str, first: str):
    original = to_mail.message
    quoted = "\n".join(f"> {line}" for line in original.get_content().splitlines())
    msg = make_message(sender=sender, to=["monitor@example.net"],
                       subject=f"Re: {original['Subject']}",
                       body=f"{first}\n\nOn Tuesday the monitor wrote:\n{quoted}\n",
                       headers={"In-Reply-To": str(original["Message-ID"])})
    del msg["Auto-Submitted"]  # a human's reply
    return msg


def replies_config(tmp_path: Path, smtp_port: int, imap_port: int, options: str = ""):
    """The alert test config with one service rule and [alerts.replies] on the test Dovecot."""
    secret = tmp_path / "imap.secret"
    secret.write_text("imap-secret\n")
    return make_config(tmp_path, smtp_port, SERVICE_RULE.format(options=options), f"""
        [alerts.replies]
        server = "127.0.0.1"
        port = {imap_port}
        security = "none"
        user = "replies"
        password_file = "{secret}"
    """, group_window="0s")


async def test_ack_and_silence_by_replying_to_the_alert_mail(tmp_path, dovecot):
    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        config = replies_config(tmp_path, port, dovecot, 'repeat = "10m"')
        clock = Clock()
        svc = AlertService(config, clock=clock)
        await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL,
                                                   clock.now)]))
        await svc.consume("s", Batch(checks=[check("www.example.net", State.CRITICAL,
                                                   clock.now)]))
        smtp_mail, http_mail = rec.received
        assert "monitor-token: " in smtp_mail.message.get_content()
        deliver(dovecot, reply(smtp_mail, "stranger@evil.example", "ack mine now"))
        forged = reply(smtp_mail, "admin@example.net", "ack no token")
        forged.set_content("ack no token\n")
        deliver(dovecot, forged)
        deliver(dovecot, reply(smtp_mail, "admin@example.net", "ack rebooting the box"))
        deliver(dovecot, reply(http_mail, "admin@example.net", "silence 2h deploy"))
        await svc.read_replies()
        state = next(s for s in svc.states.values() if s.target == "mail.example.net")
        assert state.ack_by == "admin@example.net" and state.ack_comment == "rebooting the box"
        subjects = rec.subjects()[2:]
        assert any(s.startswith("[ACK] mail.example.net smtp: acknowledged by "
                                "admin@example.net: rebooting the box") for s in subjects)
        confirmations = [r for r in rec.received[2:] if r.recipients == ["admin@example.net"]
                         and str(r.message["Subject"]).startswith("Re:")]
        texts = [c.message.get_content() for c in confirmations]
        assert any("acknowledged by admin@example.net: rebooting the box" in t for t in texts)
        assert any("silenced for 2h by admin@example.net" in t and "www.example.net smtp" in t
                   for t in texts)
        (silence,) = svc.store.silences()
        assert silence.pattern == "www.example.net smtp" and silence.author == "admin@example.net"
        # Nothing from the stranger or without a token; everything read once only.
        assert not any("stranger" in str(r.recipients) for r in rec.received)
        before = len(rec.received)
        await svc.read_replies()
        assert len(rec.received) == before
        # The ack holds: no repeat of the acknowledged problem an hour later.
        for _ in range(6):
            clock.now += 600
            await svc.tick()
        assert not any("still mail.example.net" in s for s in rec.subjects())
    finally:
        server.close()


async def test_a_reply_the_store_cannot_take_now_is_read_again_later(tmp_path, dovecot,
                                                                    monkeypatch):
    """alerts.db busy past its timeout (the agent and `monitor ack` at once) or a full disk:
    the reply stays unseen and acts at the next poll, rather than being marked read and lost."""
    import sqlite3

    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        config = replies_config(tmp_path, port, dovecot)
        clock = Clock()
        svc = AlertService(config, clock=clock)
        await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL,
                                                   clock.now)]))
        (mail,) = rec.received
        deliver(dovecot, reply(mail, "admin@example.net", "ack on it"))
        add_ack = svc.store.add_ack

        def busy(*args, **kwargs):
            raise sqlite3.OperationalError("database is locked")
        monkeypatch.setattr(svc.store, "add_ack", busy)
        await svc.read_replies()
        monkeypatch.setattr(svc.store, "add_ack", add_ack)
        await svc.read_replies()
        state = next(iter(svc.states.values()))
        assert state.ack_by == "admin@example.net" and state.ack_comment == "on it"
    finally:
        server.close()


def test_the_reply_key_is_not_the_nonce_every_message_id_shows(tmp_path):
    """Every alert Message-ID carries the store's nonce: a token made from it must not act."""
    from alerts.state import AlertStore, reply_token

    store = AlertStore(tmp_path / "alerts.db")
    key = "rule\x00host\x00check"
    assert store.reply_key and store.reply_key != store.nonce
    assert reply_token(store.nonce, key, 0.0) != reply_token(store.reply_key, key, 0.0)
    assert AlertStore(tmp_path / "alerts.db").reply_key == store.reply_key  # kept across restarts


def test_a_token_acts_on_its_own_episode_only(tmp_path):
    from alerts.state import reply_token

    assert reply_token("k", "rule\x00host\x00check", 1000.0) != \
        reply_token("k", "rule\x00host\x00check", 90000.0)


REPLIES_OFFLINE = """
    [alerts.replies]
    server = "127.0.0.1"
    port = 9
    security = "none"
    user = "replies"
    password_file = "{secret}"
    {extra}
"""


async def _alert_and_reader(tmp_path, extra: str):
    """An alert mailed through a real SMTP sink, and the reader that acts on replies to it."""
    rec = Recorder()
    server, port = await start_smtp(rec)
    secret = tmp_path / "imap.secret"
    secret.write_text("imap-secret\n")
    config = make_config(tmp_path, port, SERVICE_RULE.format(options=""),
                         REPLIES_OFFLINE.format(secret=secret, extra=extra), group_window="0s")
    clock = Clock()
    svc = AlertService(config, clock=clock)
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    server.close()
    (mail,) = rec.received
    return svc, mail, clock


async def test_a_token_from_an_earlier_episode_does_not_ack_the_new_problem(tmp_path):
    svc, old_mail, clock = await _alert_and_reader(tmp_path, "")
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.OK, clock.now + 60)]))
    clock.now += 3600
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    action = svc.replies.act(reply(old_mail, "admin@example.net", "ack old news"))
    assert action.command == "" and "no valid monitor-token" in action.note


def _with_results(msg, *headers: str):
    for h in headers:  # top to bottom, as in the mail's text
        msg["Authentication-Results"] = h
    return msg


async def test_with_authserv_id_a_forged_contact_from_does_not_act(tmp_path):
    svc, mail, _ = await _alert_and_reader(tmp_path, 'authserv_id = "mx.example.net"')
    forged = [
        reply(mail, "admin@example.net", "ack no results at all"),
        _with_results(reply(mail, "admin@example.net", "ack results from elsewhere"),
                      "mx.evil.example; dmarc=pass header.from=example.net"),
        # The forger's own header sits below ours; ours says fail.
        _with_results(reply(mail, "admin@example.net", "ack forged below"),
                      "mx.example.net; dmarc=fail (p=reject) header.from=example.net",
                      "mx.example.net; dmarc=pass header.from=example.net"),
        _with_results(reply(mail, "admin@example.net", "ack other domain passed"),
                      "mx.example.net; dmarc=pass header.from=evil.example"),
    ]
    for msg in forged:
        action = svc.replies.act(msg)
        assert action.command == "" and "forged From" in action.note, first_line_of(msg)
    genuine = _with_results(reply(mail, "admin@example.net", "ack on it"),
                            "MX.example.net 1; spf=pass smtp.mailfrom=example.net;"
                            " dkim=pass (2048-bit key) header.d=example.net;"
                            " dmarc=pass (policy=reject) header.from=example.net")
    action = svc.replies.act(genuine)
    assert action.command == "ack" and action.alerts == ("mail.example.net smtp",)


def first_line_of(msg) -> str:
    return msg.get_content().splitlines()[0]
