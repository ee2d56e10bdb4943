"""Turning alert events into mail an on-call person can act on, one mail per group window.

Events wait in the store's queue per contact group; when the oldest has waited `group_window`
(`[alerts] group_window`), all of that group's events leave as ONE message through the outbox.
200 alerts in a minute are one mail, not 200.

Subjects are written for a phone's lock screen: severity first, then the thing, then what is
wrong: `[CRITICAL] mail.example.net smtp: no answer in 10 s (for 5m)`. Bodies are plain text:
what, since when, current value, threshold, rule, and a link into the static site.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
import uuid
from collections.abc import Callable, Sequence
from email.message import EmailMessage
from urllib.parse import quote

from alerts.engine import Event, Kind
from alerts.mail import make_message
from alerts.outbox import Outbox
from alerts.rules import _num
from alerts.state import AlertStore, glob_literal, reply_token
from monitor.config import Config
from monitor.model import State
from monitor.store import safe_name
from monitor.units import format_duration

log = logging.getLogger("monitor.alerts")

MAX_DETAILED = 60  # events shown in full in one mail; the rest are one line each
_PROBLEM = (Kind.FIRING, Kind.REPEAT, Kind.ESCALATED, Kind.IMPROVED)


def site_link(base_url: str) -> str:
    """Where the mail points: the site's problems page (the graphs part writes it)."""
    return f"{base_url.rstrip('/')}/problems.html" if base_url else ""


def _when(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(ts))


def _ago(seconds: float) -> str:
    # Whole seconds under a minute, whole minutes above: "22ms" is noise on a phone.
    return format_duration(max(0.0, round(seconds / 60) * 60 if seconds >= 60 else round(seconds)))


def one_line(e: Event, now: float) -> str:
    """The subject of a mail about this one event."""
    thing = f"{e.target} {e.label}"
    lasted = now - e.since
    if e.kind is Kind.RESOLVED:
        lasted = e.at - e.since
        return f"[OK] {thing}: recovered after {_ago(lasted)} ({e.message})"
    if e.kind is Kind.FLAPPING:
        pct = f"{e.flap_percent:.0f}%" if e.flap_percent is not None else "many"
        return f"[FLAPPING] {thing}: changing state often ({pct} of recent checks); " \
               "notifications paused"
    if e.kind is Kind.ACKNOWLEDGED:
        return f"[ACK] {thing}: acknowledged by {e.ack} ({e.severity.name}: {e.message})"
    if e.kind is Kind.FLAPPING_STOPPED:
        return f"[STABLE] {thing}: stopped flapping, now {e.severity.name}"
    prefix = {Kind.REPEAT: "still ", Kind.ESCALATED: "ESCALATED, ",
              Kind.IMPROVED: "improved, "}.get(e.kind, "")
    duration = f" (for {_ago(lasted)})" if lasted >= 60 else ""
    return f"[{e.severity.name}] {prefix}{thing}: {e.message}{duration}"


def _net(events: Sequence[Event]) -> list[Event]:
    """The events that still say something: a problem that recovered within the same mail
    counts as its recovery only."""
    resolved_at = {e.key: e.at for e in events if e.kind is Kind.RESOLVED}
    return [e for e in events
            if not (e.kind in _PROBLEM and resolved_at.get(e.key, -1.0) >= e.at)]


def subject_for(events: Sequence[Event], now: float) -> str:
    net = _net(events)
    if len(net) == 1:
        return one_line(net[0], now)
    problems = [e for e in net if e.kind in _PROBLEM]
    recovered = [e for e in net if e.kind is Kind.RESOLVED]
    acked = [e for e in net if e.kind is Kind.ACKNOWLEDGED]
    flapping = len(net) - len(problems) - len(recovered) - len(acked)
    if problems:
        tag = State.worst(e.severity for e in problems).name
    else:
        tag = "OK" if recovered else "ACK" if acked and not flapping else "FLAPPING"
    parts = []
    if problems:
        parts.append(f"{len(problems)} problem{'s' if len(problems) != 1 else ''}")
    if recovered:
        parts.append(f"{len(recovered)} recovered")
    if acked:
        parts.append(f"{len(acked)} acknowledged")
    if flapping:
        parts.append(f"{flapping} flapping notice{'s' if flapping != 1 else ''}")
    names: list[str] = []
    for e in sorted(net, key=_order):
        name = f"{e.target} {e.label}"
        if name not in names:
            names.append(name)
    shown = ", ".join(names[:3]) + (f" +{len(names) - 3} more" if len(names) > 3 else "")
    return f"[{tag}] {', '.join(parts)}: {shown}"


def _natural(text: str) -> list:
    """Numbers in names compare as numbers: 127.0.1.2 before 127.0.1.10 before .100."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]


def _order(e: Event) -> tuple:
    rank = 0 if e.kind in _PROBLEM else 1 if e.kind in (Kind.FLAPPING, Kind.FLAPPING_STOPPED) else 2
    return (rank, -e.severity.severity, _natural(e.target), _natural(e.label), e.at)


def body_for(events: Sequence[Event], now: float, *, base_url: str = "", hostname: str = "",
             token: Callable[[Event], str] | None = None) -> str:
    ordered = sorted(events, key=_order)
    lines: list[str] = []
    link = site_link(base_url)
    for i, e in enumerate(ordered):
        if i == MAX_DETAILED:
            lines.append(f"... and {len(ordered) - MAX_DETAILED} more:")
        if i >= MAX_DETAILED:
            lines.append(f"  {one_line(e, now)}")
            continue
        lines.append(one_line(e, now))
        lines.append(f"  what:      {e.message}")
        if e.kind is Kind.RESOLVED:
            lines.append(f"  problem:   since {_when(e.since)}, recovered {_when(e.at)} "
                         f"after {_ago(e.at - e.since)}")
        else:
            lines.append(f"  since:     {_when(e.since)} ({_ago(now - e.since)} ago)")
        if e.value is not None:
            lines.append(f"  value:     {_num(e.value)}")
        if e.threshold:
            lines.append(f"  threshold: {e.threshold}")
        lines.append(f"  rule:      {e.rule}")
        page = problem_page(base_url, e.target)
        if page:
            lines.append(f"  page:      {page}")
        if e.kind is Kind.ESCALATED:
            lines.append("  escalated: not resolved in time; this group is now informed too")
        if e.kind is Kind.IMPROVED:
            lines.append("  improved:  less severe than announced; still a problem")
        if e.ack:
            lines.append(f"  acked:     {e.ack}")
        lines.append("")
    lines.append("--")
    if link:
        lines.append(f"Current state and graphs: {link}")
    problems = [e for e in ordered if e.kind in _PROBLEM]
    if problems:
        # That alert only (not the whole host): "TARGET LABEL", glob characters escaped.
        pattern = glob_literal(f"{problems[0].target} {problems[0].label}")
        lines.append(f"Silence: monitor silence add {_shell_word(pattern)} --for 2h --reason '...'")
        lines.append(f"Acknowledge: monitor ack {_shell_word(pattern)} --comment '...'")
    if token is not None and problems:
        tokens = " ".join(dict.fromkeys(token(e) for e in problems))
        lines.append('Reply "ack" (the rest of the line is the comment) or "silence 2h" to act '
                     "on the problems above; keep this line in the reply:")
        lines.append(f"monitor-token: {tokens}")
    lines.append("All alerts: monitor alerts")
    if hostname:
        lines.append(f"Sent by the monitor on {hostname}.")
    return "\n".join(lines) + "\n"


def _shell_word(text: str) -> str:
    return "'" + text.replace("'", "'\"'\"'") + "'"  # a shell word, whatever the name


def problem_page(base_url: str, target: str) -> str:
    """The site's page of the target a problem is about (the graphs part writes one for every
    target with a check or a graph)."""
    if not base_url:
        return ""
    return f"{base_url.rstrip('/')}/{quote(safe_name(target))}/index.html"


def thread_id(e: Event, domain: str) -> str:
    """The Message-ID every mail of one problem episode refers to (In-Reply-To, References):
    a phone's mail client shows firing, repeats, escalation and recovery as one conversation."""
    digest = hashlib.sha1(e.key.encode()).hexdigest()[:12]
    return f"<problem.{digest}.{int(e.since)}@{domain}>"


def compose(events: Sequence[Event], *, sender: str, to: Sequence[str], group: str, now: float,
            base_url: str = "", hostname: str = "",
            token: Callable[[Event], str] | None = None) -> EmailMessage:
    domain = sender.rpartition("@")[2] or "localhost"
    threads = list(dict.fromkeys(thread_id(e, domain) for e in sorted(events, key=_order)))
    return make_message(
        sender=sender, to=to, subject=subject_for(events, now),
        body=body_for(events, now, base_url=base_url, hostname=hostname, token=token), date=now,
        headers={"X-Monitor-Group": group, "X-Monitor-Events": str(len(events)),
                 "In-Reply-To": threads[0], "References": " ".join(threads[:20])},
    )


class Notifier:
    """Moves due groups from the queue into the outbox (synchronous: run it in a thread)."""

    def __init__(self, store: AlertStore, outbox: Outbox, config: Config,
                 clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.outbox = outbox
        self.config = config
        self.clock = clock

    def flush(self, now: float | None = None, force: bool = False,
              hold: Callable[[list[Event]], list[Event]] | None = None) -> int:
        """Send every group whose window is over (all of them if `force`); returns mails queued.

        `hold(events)` returns those that must not go out after all (decided as the mail
        leaves: a parent's problem may have arrived during the group window)."""
        now = self.clock() if now is None else now
        window = -1.0 if force else self.config.alerts.group_window
        token = None
        if self.config.alerts.replies is not None:
            reply_key = self.store.reply_key
            token = lambda e: reply_token(reply_key, e.key, e.since)  # noqa: E731
        sent = 0
        for group in self.store.due_groups(window, now):
            domain = self.config.smtp.sender.rpartition("@")[2] or "localhost"
            fresh = f"<alert.{self.store.nonce}.{uuid.uuid4().hex[:16]}@{domain}>"
            message_id, items = self.store.claim(group, fresh)
            if not items:
                continue
            events = [e for _, e in items]
            held = hold(events) if hold is not None else []
            events = [e for e in events if e not in held]
            if not events:
                self.store.dequeue(message_id)
                continue
            addresses = self.config.contacts.get(group)
            if not addresses:
                log.error("alert mail for contact group %r dropped: the group is no longer in "
                          "[contacts] (%d event(s): %s)", group, len(events),
                          subject_for(events, now))
                self.store.dequeue(message_id)
                continue
            msg = compose(events, sender=self.config.smtp.sender, to=addresses, group=group,
                          now=now, base_url=self.config.web.base_url,
                          hostname=self.config.agent.hostname, token=token)
            msg["Message-ID"] = message_id
            # Outbox first, queue second: a crash in between finds the mail in the outbox under
            # its Message-ID (enqueue takes it once), so it is neither lost nor sent twice.
            entry = self.outbox.enqueue(msg)
            self.store.dequeue(message_id)
            sent += 1
            log.info("alert mail #%d to %s: %s", entry, group, msg["Subject"])
        return sent
