"""Acknowledge from the phone: replies to alert mails, read from an IMAP mailbox.

Each alert mail (with `[alerts.replies]` configured) ends with a `monitor-token:` line, one
token per problem: the alert's id and a MAC keyed by this agent's alerts.db. A reply acts when

- its sender is an address of a `[contacts]` group (the token proves it answers our mail; the
  sender check keeps a forwarded mail from acting for a stranger); with `authserv_id` set, our
  own mail server must also vouch for that From: domain (dmarc=pass in its
  Authentication-Results), so a forged From: is not enough,
- its first line starts with "ack" (the rest of the line is the comment) or "silence DURATION"
  (the rest is the reason), and
- it quotes at least one valid token of the problem's current episode (mail clients quote the
  body they reply to; a token from an earlier episode of the same check does not act).

The ack or silence goes into alerts.db as if `monitor ack`/`monitor silence add` had been typed
(the running agent applies acks at its next evaluation), and the sender gets a confirmation.
Every message looked at is marked \\Seen, acted on or not; automatic mail (vacation replies,
bounces: Auto-Submitted, our own sender) is never acted on. Runs in a worker thread (imaplib).
"""

from __future__ import annotations

import email
import email.policy
import email.utils
import hmac
import imaplib
import logging
import re
import sqlite3
import ssl
from dataclasses import dataclass
from email.message import EmailMessage

from alerts.mail import clean_header, make_message
from alerts.outbox import Outbox
from alerts.state import AlertStore, alert_id, glob_literal, reply_token
from monitor.config import Config
from monitor.units import format_duration, parse_duration

log = logging.getLogger("monitor.alerts")

_TOKEN = re.compile(r"\b([0-9a-f]{6})\.([0-9a-f]{10})\b")
_COMMAND = re.compile(r"^\s*(ack|silence)\b[:,]?\s*(.*)$", re.I)


@dataclass(frozen=True)
class Action:
    sender: str
    command: str  # "ack", "silence" or "" (ignored: why)
    alerts: tuple[str, ...]  # "target label" of the alerts acted on
    note: str


def first_line(msg: EmailMessage) -> str:
    """The reply's own first line (above any quote)."""
    part = msg.get_body(preferencelist=("plain",))
    text = part.get_content() if part is not None else ""
    for line in str(text).splitlines():
        if line.strip() and not line.lstrip().startswith(">"):
            return line.strip()
    return ""


def dmarc_passed(msg: EmailMessage, authserv_id: str, sender: str) -> bool:
    """Whether our own mail server vouches for the From: domain (RFC 8601 / DMARC).

    Only the topmost Authentication-Results header counts: it is the one the last hop (the
    receiving server named by `authserv_id`) added; anything below it came with the mail and
    may be the sender's own invention."""
    headers = msg.get_all("Authentication-Results") or []
    if not headers:
        return False
    top = re.sub(r"\([^)]*\)", " ", str(headers[0]))  # RFC 5322 comments
    server, _, results = top.partition(";")
    if [w.lower() for w in server.split()[:1]] != [authserv_id.lower()]:
        return False
    domain = sender.rpartition("@")[2].lower()
    for result in results.split(";"):
        words = result.split()
        if words[:1] == ["dmarc=pass"] and f"header.from={domain}" in (w.lower() for w in words):
            return True
    return False


class ReplyReader:
    def __init__(self, config: Config, store: AlertStore, outbox: Outbox) -> None:
        assert config.alerts.replies is not None
        self.config = config
        self.replies = config.alerts.replies
        self.store = store
        self.outbox = outbox
        self.contacts = {a.lower() for group in config.contacts.values() for a in group}

    def _connect(self) -> imaplib.IMAP4:
        r = self.replies
        context = ssl.create_default_context(cafile=str(r.ca_file) if r.ca_file else None)
        assert r.port is not None
        if r.security == "tls":
            imap: imaplib.IMAP4 = imaplib.IMAP4_SSL(r.server, r.port, ssl_context=context,
                                                    timeout=r.timeout)
        else:
            imap = imaplib.IMAP4(r.server, r.port, timeout=r.timeout)
            if r.security == "starttls":
                imap.starttls(ssl_context=context)
        imap.login(r.user, r.password or "")
        return imap

    def poll(self) -> list[Action]:
        """Read the unseen messages once; act on the replies among them (worker thread)."""
        actions = []
        imap = self._connect()
        try:
            status, _ = imap.select(self.replies.mailbox)
            if status != "OK":
                raise OSError(f"IMAP mailbox {self.replies.mailbox!r} cannot be opened")
            _, found = imap.uid("SEARCH", "UNSEEN")
            for uid in (found[0] or b"").decode("ascii", "replace").split():
                _, data = imap.uid("FETCH", uid, "(BODY.PEEK[])")
                raw = next((item[1] for item in data if isinstance(item, tuple)), b"")
                msg = email.message_from_bytes(raw, policy=email.policy.default)
                try:
                    actions.append(self.act(msg))
                except (sqlite3.Error, OSError) as exc:
                    # alerts.db busy or the disk full: the ack must not be lost with the mail
                    # marked read; it stays unseen and acts at the next poll.
                    log.error("reply %s left unread, tried again at the next poll: cannot "
                              "record it: %s", uid, exc)
                    continue
                except Exception as exc:  # a mail that cannot be read (a bogus charset)
                    log.warning("reply %s ignored: %s", uid, clean_header(str(exc), limit=200))
                imap.uid("STORE", uid, "+FLAGS", "(\\Seen)")
        finally:
            try:
                imap.logout()
            except (imaplib.IMAP4.error, OSError):
                pass
        return actions

    def act(self, msg: EmailMessage) -> Action:
        sender = email.utils.parseaddr(str(msg.get("From", "")))[1].lower()
        if str(msg.get("Auto-Submitted", "no")).lower() != "no" or \
                sender == self.config.smtp.sender.lower():
            return self._ignored(sender, "automatic mail")
        if sender not in self.contacts:
            return self._ignored(sender, "the sender is in no [contacts] group")
        authserv_id = self.config.alerts.replies.authserv_id if self.config.alerts.replies else None
        if authserv_id and not dmarc_passed(msg, authserv_id, sender):
            return self._ignored(sender, f"{authserv_id}'s Authentication-Results do not show "
                                 "dmarc=pass for the sender's domain (a forged From:?)")
        match = _COMMAND.match(first_line(msg))
        if match is None:
            return self._ignored(sender, 'the first line is neither "ack" nor "silence DURATION"')
        states = self.store.load_states()
        by_id = {alert_id(key): s for key, s in states.items()}
        text = msg.get_body(preferencelist=("plain",))
        quoted = str(text.get_content()) if text is not None else ""
        targets = []
        for short, mac in _TOKEN.findall(quoted):
            s = by_id.get(short)
            if s is not None and hmac.compare_digest(reply_token(self.store.reply_key, s.key, s.since),
                                                     f"{short}.{mac}"):
                targets.append(s)
        if not targets:
            return self._ignored(sender, "it quotes no valid monitor-token of a current alert")
        command, rest = match.group(1).lower(), clean_header(match.group(2), limit=300)
        names = tuple(dict.fromkeys(f"{s.target} {s.label}" for s in targets))
        if command == "ack":
            for s in targets:
                self.store.add_ack(alert_id(s.key), sender, rest)
            note = f"acknowledged by {sender}" + (f": {rest}" if rest else "")
        else:
            duration_text, _, reason = rest.partition(" ")
            try:
                duration = parse_duration(duration_text)
            except ValueError:
                duration = 0.0
            if not 0 < duration <= 7 * 86400:
                return self._ignored(sender, f"silence needs a duration up to 7d, like "
                                     f'"silence 2h" (got {duration_text!r})')
            for name in names:
                self.store.add_silence(glob_literal(name), duration, reason or "by reply", sender)
            note = f"silenced for {format_duration(duration)} by {sender}"
        self._confirm(msg, sender, f"{note}:\n" + "".join(f"  {n}\n" for n in names))
        log.info("reply from %s: %s %s", sender, command, ", ".join(names))
        return Action(sender, command, names, note)

    def _ignored(self, sender: str, why: str) -> Action:
        log.warning("reply from %s ignored: %s", clean_header(sender) or "?", why)
        return Action(sender, "", (), why)

    def _confirm(self, msg: EmailMessage, sender: str, text: str) -> None:
        subject = clean_header(str(msg.get("Subject", "")))
        headers = {}
        if msg.get("Message-ID"):
            headers = {"In-Reply-To": str(msg["Message-ID"]),
                       "References": f"{msg.get('References', '')} {msg['Message-ID']}".strip()}
        self.outbox.enqueue(make_message(
            sender=self.config.smtp.sender, to=[sender],
            subject=subject if subject.lower().startswith("re:") else f"Re: {subject}",
            body=f"Done: {text}\nSee `monitor alerts` for the current state.\n", headers=headers))
