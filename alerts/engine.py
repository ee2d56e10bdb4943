"""The alert state machine: a pure function from (rule, state, reading, now) to (state, events).

    OK --problem--> PENDING --retries reached and `for` elapsed--> FIRING
    PENDING --good--> OK (nothing was said, nothing to take back)
    FIRING --`recover_after` good readings in a row--> RESOLVED (behaves like OK afterwards)

Notifications are decided here too, from the state alone, so that a restart (state loaded from
SQLite) carries on exactly where it was:

- "firing" once per problem episode, when it is FIRING and not quiet (silenced, in a
  maintenance window, or suppressed because a rule it depends on has a problem); a problem that
  becomes audible later (silence ends, parent recovers) is announced then. Again when it gets
  worse (WARNING -> CRITICAL).
- "resolved" for every problem that was announced, and only for those.
- "repeat" every `repeat` while it stays FIRING; "escalated" once, to `escalate_to`, after
  `escalate_after` of FIRING.
- Flapping (Nagios' method): the last 21 readings, state changes weighted from 0.75 (oldest) to
  1.25 (newest), as a percentage of the 20 possible changes. At or above `flap_high` it starts
  flapping: one "flapping" notice, then silence; below `flap_low` it stops: one "flapping
  stopped" notice, followed by whatever is then true (firing or resolved).

Nothing here does I/O or reads a clock: `now` and the quiet reasons are arguments.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from enum import StrEnum

from alerts.rules import Reading
from monitor.config import AlertRule
from monitor.model import State

HISTORY = 21
_CODE = {State.OK: "O", State.WARNING: "W", State.CRITICAL: "C", State.UNKNOWN: "U"}


class Status(StrEnum):
    OK = "OK"
    PENDING = "PENDING"
    FIRING = "FIRING"
    RESOLVED = "RESOLVED"


class Kind(StrEnum):
    FIRING = "firing"
    RESOLVED = "resolved"
    REPEAT = "repeat"
    ESCALATED = "escalated"
    FLAPPING = "flapping"
    FLAPPING_STOPPED = "flapping_stopped"
    IMPROVED = "improved"  # still a problem, less severe than announced (CRITICAL -> WARNING)
    ACKNOWLEDGED = "acknowledged"  # someone is on it: repeats and escalation stop




def _known_fields(cls: type, data: dict) -> dict:
    """What a dataclass of this version knows of saved data (another version may have saved
    more fields): a queued event or a state must not stop the agent after an upgrade."""
    known = {f.name for f in dataclasses.fields(cls)}
    return {k: v for k, v in data.items() if k in known}
@dataclass
class AlertState:
    key: str
    rule: str
    target: str
    label: str
    status: Status = Status.OK
    severity: State = State.OK
    soft: int = 0  # consecutive problem readings (Nagios' soft state count)
    good: int = 0  # consecutive good readings while FIRING
    since: float = 0.0  # start of the current problem episode (first bad reading)
    firing_since: float | None = None
    changed: float = 0.0  # last status change
    message: str = ""
    value: float | None = None
    threshold: str = ""
    history: str = ""  # the last HISTORY reading states, one letter each, oldest first
    flapping: bool = False
    flap_notified: bool = False  # the "flapping" notice went out (so "stopped" will too)
    notified: bool = False  # the current episode was announced
    notified_severity: State = State.OK
    last_notified: float = 0.0
    escalated: bool = False
    last_seen: float = 0.0  # last time real data arrived
    quiet: str = ""  # why it is not being announced right now (for `monitor alerts`)
    notified_groups: list[str] = dataclasses.field(default_factory=list)  # owed a recovery
    announced: float = 0.0  # when the episode's first "firing" was decided
    # Acknowledged (`monitor ack`, a reply to the mail): no repeats or escalation until it
    # recovers (or `ack_until`, if set); later mails say who and why.
    ack_by: str = ""
    ack_comment: str = ""
    ack_until: float = 0.0

    def acked(self, now: float) -> bool:
        return bool(self.ack_by) and (not self.ack_until or now < self.ack_until)

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["status"] = self.status.value
        data["severity"] = int(self.severity)
        data["notified_severity"] = int(self.notified_severity)
        return data

    @classmethod
    def from_json(cls, data: dict) -> AlertState:
        data = dict(data)
        data["status"] = Status(data["status"])
        data["severity"] = State(data["severity"])
        data["notified_severity"] = State(data["notified_severity"])
        return cls(**_known_fields(cls, data))

    @property
    def problem(self) -> bool:
        return self.status in (Status.PENDING, Status.FIRING)


@dataclass(frozen=True)
class Event:
    kind: Kind
    key: str
    rule: str
    target: str
    label: str
    severity: State
    message: str
    value: float | None
    threshold: str
    since: float
    at: float
    groups: tuple[str, ...]
    flap_percent: float | None = None
    ack: str = ""  # "who: why" of an acknowledgement, for the mails that follow it

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["kind"] = self.kind.value
        data["severity"] = int(self.severity)
        data["groups"] = list(self.groups)
        return data

    @classmethod
    def from_json(cls, data: dict) -> Event:
        data = dict(data)
        data["kind"] = Kind(data["kind"])
        data["severity"] = State(data["severity"])
        data["groups"] = tuple(data["groups"])
        return cls(**_known_fields(cls, data))


@dataclass(frozen=True)
class Quiet:
    """Why an alert must not be announced now (empty strings: it may)."""

    silenced: str = ""
    suppressed: str = ""

    @property
    def reason(self) -> str:
        return self.silenced or self.suppressed


LOUD = Quiet()


def flap_percent(history: str) -> float:
    """Nagios' weighted percent state change over the history (oldest first)."""
    changes = 0.0
    n = HISTORY - 1
    # Align to the newest end so the newest change always gets the highest weight.
    offset = HISTORY - len(history)
    for i in range(1, len(history)):
        if history[i] != history[i - 1]:
            x = i + offset  # 1..20
            changes += (x - 1) * 0.5 / (n - 1) + 0.75
    return changes * 100.0 / n


def step(rule: AlertRule, prev: AlertState | None, reading: Reading, now: float,
         quiet: Quiet = LOUD) -> tuple[AlertState, list[Event]]:
    """Apply one reading to an alert; returns the new state and what to announce."""
    s = dataclasses.replace(prev) if prev is not None else AlertState(
        reading.key, reading.rule, reading.target, reading.label, changed=now)
    s.message, s.value, s.threshold = reading.message, reading.value, reading.threshold
    if reading.fresh:
        s.last_seen = max(s.last_seen, reading.at)
    s.history = (s.history + _CODE[reading.state])[-HISTORY:]

    if reading.state is not State.OK:
        s.good = 0
        if s.status in (Status.OK, Status.RESOLVED):
            s.status, s.since, s.changed, s.soft = Status.PENDING, now, now, 0
            s.firing_since = None
        s.soft += 1
        s.severity = reading.state
    else:
        s.soft = 0
        if s.status is Status.PENDING:
            s.status, s.changed, s.severity = Status.OK, now, State.OK
        elif s.status is Status.FIRING:
            s.good += 1
            if s.good >= rule.recover_after:
                s.status, s.changed, s.severity, s.good = Status.RESOLVED, now, State.OK, 0
    events = _flap(rule, s, now, quiet)
    s, more = tick(rule, s, now, quiet)
    return s, events + more


def tick(rule: AlertRule, prev: AlertState, now: float,
         quiet: Quiet = LOUD) -> tuple[AlertState, list[Event]]:
    """What the passing of time alone does: `for` elapsing, repeats, escalation, and the
    announcements held back by a silence, a dependency or flapping that has since ended."""
    s = dataclasses.replace(prev)
    if (s.status is Status.PENDING and s.soft >= rule.retries
            and now - s.since >= rule.pending):
        s.status, s.changed, s.firing_since = Status.FIRING, now, now
    s.quiet = quiet.reason
    events: list[Event] = []
    if s.flapping:
        s.quiet = s.quiet or "flapping"
        return s, events
    loud = not quiet.reason
    acked = s.acked(now)
    if s.status is Status.FIRING:
        if not s.notified:
            if loud:
                events.append(_event(Kind.FIRING, s, now, rule.notify))
                s.notified, s.notified_severity, s.last_notified = True, s.severity, now
                s.announced = now
        elif loud and s.severity.severity > s.notified_severity.severity:
            events.append(_event(Kind.FIRING, s, now, _groups(rule, s)))
            s.notified_severity, s.last_notified = s.severity, now
        elif loud and s.severity.severity < s.notified_severity.severity:
            events.append(_event(Kind.IMPROVED, s, now, _groups(rule, s)))
            s.notified_severity, s.last_notified = s.severity, now
        elif loud and not acked and rule.repeat and now - s.last_notified >= rule.repeat:
            events.append(_event(Kind.REPEAT, s, now, _groups(rule, s)))
            s.last_notified = now
        if (loud and not acked and s.notified and not s.escalated
                and rule.escalate_after is not None and s.firing_since is not None
                and now - s.firing_since >= rule.escalate_after):
            events.append(_event(Kind.ESCALATED, s, now, tuple(rule.escalate_to)))
            s.escalated = True
    elif s.notified and s.status in (Status.OK, Status.RESOLVED):
        # Every announced problem gets its recovery, silenced or not.
        events.append(_event(Kind.RESOLVED, s, now, _groups(rule, s)))
        s.notified, s.escalated, s.notified_severity = False, False, State.OK
        s.ack_by, s.ack_comment, s.ack_until = "", "", 0.0  # sticky until it recovers
    for e in events:
        if e.kind is Kind.RESOLVED:
            s.notified_groups = []
        else:
            s.notified_groups += [g for g in e.groups if g not in s.notified_groups]
    return s, events


def withdraw(prev: AlertState, reason: str) -> AlertState:
    """The episode's first "firing" was held back as its mail left (a rule it depends on has
    a problem now): it was never announced, so it owes no recovery, and it is announced at a
    fresh reading once it is no longer held back."""
    return dataclasses.replace(prev, notified=False, notified_severity=State.OK,
                               notified_groups=[], escalated=False, quiet=reason)


def acknowledge(rule: AlertRule, prev: AlertState, author: str, comment: str, until: float,
                now: float) -> tuple[AlertState, list[Event]]:
    """Someone is on it (Nagios' sticky ack): no repeats or escalation until it recovers (or
    `until`). The groups that heard of the problem hear who took it."""
    s = dataclasses.replace(prev, ack_by=author, ack_comment=comment, ack_until=until)
    if not s.notified:
        return s, []
    return s, [_event(Kind.ACKNOWLEDGED, s, now, tuple(s.notified_groups) or tuple(rule.notify))]


def _flap(rule: AlertRule, s: AlertState, now: float, quiet: Quiet) -> list[Event]:
    percent = flap_percent(s.history) if rule.flap_detection else 0.0
    if not s.flapping and rule.flap_detection and percent >= rule.flap_high:
        s.flapping = True
        # Only what reached a hard state is worth a notice (soft toggling below `retries`
        # was never going to page anyone).
        hard = s.notified or s.status is Status.FIRING or (
            s.status is Status.PENDING and s.soft >= rule.retries)
        if not quiet.reason and hard:
            s.flap_notified = True
            return [_event(Kind.FLAPPING, s, now, _groups(rule, s), percent)]
    elif s.flapping and (percent < rule.flap_low or not rule.flap_detection):
        s.flapping = False
        if s.flap_notified:
            s.flap_notified = False
            return [_event(Kind.FLAPPING_STOPPED, s, now, _groups(rule, s), percent)]
    return []


def _groups(rule: AlertRule, s: AlertState) -> tuple[str, ...]:
    groups = list(rule.notify)
    if s.escalated:
        groups += [g for g in rule.escalate_to if g not in groups]
    return tuple(groups)


def _event(kind: Kind, s: AlertState, now: float, groups: list[str] | tuple[str, ...],
           percent: float | None = None) -> Event:
    ack = f"{s.ack_by}: {s.ack_comment}" if s.ack_by and s.ack_comment else s.ack_by
    return Event(kind, s.key, s.rule, s.target, s.label, s.severity, s.message, s.value,
                 s.threshold, s.since, now, tuple(groups), percent, ack)


__all__ = ["HISTORY", "LOUD", "AlertState", "Event", "Kind", "Quiet", "Status", "acknowledge",
           "flap_percent", "step", "tick", "withdraw"]
