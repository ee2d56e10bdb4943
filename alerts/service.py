"""The alert sink the agent runs: batches in, engine steps, persisted states, grouped mail out.

    batch -> rules (match, judge) -> engine.step (pure) -> AlertStore.save (states, history,
    queue: one transaction) -> Notifier.flush (one mail per group window) -> Outbox -> relay

`consume()` is an agent sink (every CheckResult and Measurement of every collector passes
through it). `tick()` is its own scheduled job: "no data" verdicts, `for` timers, repeats,
escalations and the group windows. `deliver()` is the outbox delivery job. Evaluation runs in a
worker thread (SQLite commits and pattern matching stay off the event loop), one batch at a time.

Held-back problems (silenced, in a maintenance window, suppressed by a dependency) are announced
at their next fresh reading if they are still there, never from the clock alone: when the DMZ
router comes back, the services behind it are checked again before anyone hears about them.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import replace

from alerts.engine import (
    AlertState,
    Event,
    Kind,
    Quiet,
    Status,
    acknowledge,
    step,
    tick,
    withdraw,
)
from alerts.notify import Notifier
from alerts.outbox import Outbox, outbox_path
from alerts.replies import ReplyReader
from alerts.rules import SEP, Reading, Rule, alert_key, usable
from alerts.state import AlertStore, Silence, alerts_db_path
from monitor.config import Config, MaintenanceWindow
from monitor.files import load_state, save_state
from monitor.model import Batch, CheckResult, State
from monitor.model import Kind as MetricKind
from monitor.scheduler import cron_trigger

log = logging.getLogger("monitor.alerts")

KEEP_SENT = 30 * 86400.0
KEEP_HISTORY = 400 * 86400.0


class MaintenanceSchedule:
    """Recurring windows: a cron start and a duration."""

    def __init__(self, windows: list[MaintenanceWindow]) -> None:
        # crontab's day numbers (1 = Monday), not APScheduler's (0 = Monday)
        self.windows = [(w, cron_trigger(w.cron)) for w in windows]

    def active(self, rule: str, target: str, label: str, now: float) -> MaintenanceWindow | None:
        for window, trigger in self.windows:
            if not any(_matches(p, rule, target, label) for p in window.match):
                continue
            start_from = datetime.datetime.fromtimestamp(now - window.duration).astimezone()
            start = trigger.get_next_fire_time(None, start_from)
            if start is not None and start.timestamp() <= now:
                return window
        return None


def _matches(pattern: str, rule: str, target: str, label: str) -> bool:
    return Silence(0, pattern, "", 0, 0).matches(rule, target, label)


def _ordered(rules: list[Rule]) -> list[Rule]:
    """Parents before the rules that depend on them (config validation refuses cycles)."""
    by_name = {r.name: r for r in rules}
    out: list[Rule] = []
    seen: set[str] = set()

    def visit(rule: Rule) -> None:
        if rule.name in seen:
            return
        seen.add(rule.name)
        for parent, _ in rule.depends_on:
            if parent in by_name:
                visit(by_name[parent])
        out.append(rule)

    for r in rules:
        visit(r)
    return out


class AlertService:
    def __init__(self, config: Config, *, clock: Callable[[], float] = time.time,
                 outbox: Outbox | None = None) -> None:
        self.config = config
        self.clock = clock
        self.rules = _ordered([Rule(r) for r in config.alerts.rules])
        self.by_name = {r.name: r for r in self.rules}
        self.store = AlertStore(alerts_db_path(config.state_dir), clock)
        self.states: dict[str, AlertState] = self.store.load_states()
        self._retire_removed_rules()
        self._problems: dict[str, set[str]] = {}
        for s in self.states.values():
            self._index(s)
        self.outbox = outbox or Outbox(outbox_path(config.state_dir), config.smtp, clock)
        self.notifier = Notifier(self.store, self.outbox, config, clock)
        self.maintenance = MaintenanceSchedule(config.alerts.maintenance)
        self.replies: ReplyReader | None = None
        if config.alerts.replies is not None:
            self.replies = ReplyReader(config, self.store, self.outbox)
        # Rate rules: the last value and time per alert key, kept on disk (state/alert-rates.json)
        # so a restart or the next `collect --once` from cron has a rate from its first reading.
        self.rates_path = config.state_dir / "alert-rates.json"
        self._rates = self._load_rates()
        self._rates_changed = False
        # What the engine decided but SQLite has not stored yet (disk full, I/O error): retried
        # before every later save, so nothing is announced, forgotten or taken back before the
        # state change and the mail it causes are durable together.
        self._unsaved_states: dict[str, AlertState] = {}
        self._unsaved_events: list[Event] = []
        self._unsaved_acks: list[int] = []
        self.save_error = ""
        self.flush_error = ""
        self._lock = asyncio.Lock()
        self.started = clock()

    def _load_rates(self) -> dict[str, tuple[float, float]]:
        """The rate rules' last readings of an earlier run, for the rules still configured."""
        rate_rules = {r.name for r in self.rules if r.condition == "rate"}
        try:
            data = load_state(self.rates_path)
            if data is None:
                return {}
            return {str(key): (float(value), float(at)) for key, (value, at) in data["rates"].items()
                    if key.split(SEP, 1)[0] in rate_rules}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("ignoring unreadable rate memory %s (rates start afresh): %s",
                        self.rates_path, exc)
            return {}

    def _save_rates(self) -> None:
        if not self._rates_changed:
            return
        try:
            save_state(self.rates_path, {"format": 1, "rates": self._rates})
        except OSError as exc:
            log.error("cannot save the rate rules' last readings to %s: %s", self.rates_path, exc)
            return
        self._rates_changed = False

    def _retire_removed_rules(self) -> None:
        """States of rules no longer configured are dropped; each problem they had announced
        gets its recovery mail ("rule removed"), in the same transaction. Alerts are keyed by
        rule name, target and label: renaming a rule is removing it and adding a new one."""
        gone = [s for s in self.states.values() if s.rule not in self.by_name]
        if not gone:
            return
        now = self.clock()
        events = [Event(Kind.RESOLVED, s.key, s.rule, s.target, s.label, State.OK,
                        f"resolved: rule {s.rule!r} removed from the config (was: {s.message})",
                        s.value, s.threshold, s.since, now,
                        tuple(s.notified_groups) or tuple(self.config.contacts)[:1])
                  for s in gone if s.notified]
        queue = [(group, e) for e in events for group in e.groups]
        self.store.save([], events, queue, forget=[s.key for s in gone])
        for s in gone:
            del self.states[s.key]
        log.info("forgot %d alert state(s) of rules no longer configured (%d recovery mail(s) "
                 "owed: rule removed)", len(gone), len(events))

    # -- the three entry points ----------------------------------------------------------------

    async def consume(self, job_name: str, batch: Batch, deliver: bool = True) -> None:
        """Agent sink: evaluate every rule on a batch, then send what is due (or, without
        `deliver`, only hand it to the outbox)."""
        if self.rules and (batch.checks or batch.measurements):
            async with self._lock:
                await asyncio.to_thread(self.evaluate, batch)
        await self.flush(deliver)

    def relevant(self, batch: Batch) -> Batch:
        """The part of a batch the rules look at: its checks, and the measurements a rule on
        values matches (what another node's alert engine needs of it)."""
        value_rules = [r for r in self.rules if not r.on_checks]
        return Batch(checks=list(batch.checks),
                     measurements=[m for m in batch.measurements
                                   if any(r.matches_measurement(m) for r in value_rules)])

    def reload_states(self) -> None:
        """Read the alert states again (the database was replaced: a new cluster leader)."""
        self.states = self.store.load_states()
        self._problems = {}
        for s in self.states.values():
            self._index(s)

    async def tick(self) -> None:
        """Scheduled job: no-data verdicts, timers, group windows, housekeeping."""
        async with self._lock:
            await asyncio.to_thread(self.evaluate_clock)
        await self.flush()
        await asyncio.to_thread(self._housekeeping)

    def _housekeeping(self) -> None:
        # Sent mail is kept a while for `monitor alerts` and duplicate checks; refused mail
        # stays listed until someone looks. History feeds digests (a year is plenty).
        try:
            self.outbox.purge(KEEP_SENT)
            self.store.prune_history(KEEP_HISTORY)
        except (sqlite3.Error, OSError) as exc:  # a full disk: tried again next tick
            log.warning("alert housekeeping postponed: %s", exc)

    async def read_replies(self) -> None:
        """Scheduled job: acks and silences by reply to an alert mail; applied at once."""
        assert self.replies is not None
        actions = await asyncio.to_thread(self.replies.poll)
        if any(a.command for a in actions):
            await self.tick()
            await self.outbox.deliver_pending(new_mail=True)

    def mail_check(self) -> CheckResult:
        """The agent's own `mail` check: can it tell anyone? (worker thread: reads SQLite)"""
        level, text = self.outbox.health()
        problems = [text] if level else []
        if self.save_error:
            level = 2
            problems.append(f"alert state cannot be saved to {self.store.path}: "
                            f"{self.save_error}; alerts wait in memory")
        if self.flush_error:
            level = 2
            problems.append(f"alert mail cannot be handed to the outbox: {self.flush_error}")
        if self.store.file.damaged:
            level = 2
            problems.append(self.store.file.damaged)
        state = (State.OK, State.WARNING, State.CRITICAL)[level]
        return CheckResult("agent", "mail", state, "; ".join(problems) or text,
                           timestamp=self.clock())

    def close(self) -> None:
        self.store.close()
        self.outbox.close()

    async def flush(self, deliver: bool = True) -> None:
        # Under the lock: two flushes at once would both take the same due group and mail it twice.
        async with self._lock:
            try:
                queued = await asyncio.to_thread(self.notifier.flush, hold=self._hold)
            except (sqlite3.Error, OSError) as exc:
                # A full disk: the events stay queued and the next flush tries again (raising
                # would back the whole alert job off, for up to an hour).
                log.error("alert mail cannot be handed to the outbox yet: %s; retried at the "
                          "next evaluation", exc)
                self.flush_error = str(exc)
                return
            self.flush_error = ""
        if queued and deliver:
            await self.outbox.deliver_pending(new_mail=True)

    async def deliver(self) -> int:
        return await self.outbox.deliver_pending()

    # -- evaluation (worker thread) -------------------------------------------------------------

    def evaluate(self, batch: Batch) -> list[Event]:
        now = self.clock()
        silences = self.store.silences()
        changed: dict[str, AlertState] = {}
        events: list[Event] = []
        self._apply_acks(now, changed, events)
        for rule in self.rules:
            for reading in self._readings(rule, batch):
                self._apply(rule, reading, now, silences, changed, events)
        self._save(changed, events)
        self._save_rates()
        return events

    def _readings(self, rule: Rule, batch: Batch) -> Iterator[Reading]:
        if rule.on_checks:
            for result in batch.checks:
                if rule.matches_check(result):
                    reading = rule.judge_check(result)
                    yield replace(reading, state=State.OK) if rule.condition == "nodata" else reading
            return
        for m in batch.measurements:
            if not rule.matches_measurement(m) or not usable(m.value):
                continue
            assert m.value is not None
            if rule.condition == "nodata":
                label = rule.label_for(m)
                yield Reading(alert_key(rule.name, m.target, label), rule.name, m.target, label,
                              State.OK, "data arrives again", at=m.timestamp)
                continue
            key = alert_key(rule.name, m.target, rule.label_for(m))
            prev = self.states.get(key)
            current = prev.severity if prev is not None and prev.problem else State.OK
            if rule.condition == "rate":
                last = self._rates.get(key)
                self._rates[key] = (m.value, m.timestamp)
                self._rates_changed = True
                if last is None or m.timestamp <= last[1]:
                    continue
                if m.kind is not MetricKind.GAUGE and m.value < last[0]:
                    continue  # a counter that went back was reset (a reboot): no rate
                value = (m.value - last[0]) / (m.timestamp - last[1]) * rule.config.rate_per
                yield rule.judge_value(m, value, current)
            else:
                yield rule.judge_value(m, m.value, current)

    def evaluate_clock(self) -> list[Event]:
        now = self.clock()
        silences = self.store.silences()
        changed: dict[str, AlertState] = {}
        events: list[Event] = []
        self._apply_acks(now, changed, events)
        for rule in self.rules:
            states = [s for s in self.states.values() if s.rule == rule.name]
            for s in states:
                if rule.condition == "nodata":
                    assert rule.config.nodata is not None
                    silent = now - s.last_seen
                    # After a restart, give the collectors one nodata period to report first.
                    if silent >= rule.config.nodata and now - self.started >= rule.config.nodata:
                        reading = rule.nodata_reading(s.key, s.target, s.label, silent, now)
                        self._apply(rule, reading, now, silences, changed, events)
                        continue
                # Only what time alone decides; held-back problems wait for a fresh reading.
                if s.status is Status.PENDING or (s.status is Status.FIRING and s.notified):
                    quiet = self._quiet(rule, s.key, s.target, s.label, now, silences)
                    new, evs = tick(rule.config, s, now, quiet)
                    self._remember(s, new, changed)
                    events += evs
        self._save(changed, events)
        return events

    def _hold(self, events: list[Event]) -> list[Event]:
        """Decided as the mail leaves (worker thread, under the lock): a problem whose parent
        rule has a problem by now is not mailed, nor are the ups and downs of an alert that is
        flapping by now (its flapping notice is). A held first announcement is withdrawn: it
        is announced later if the problem outlasts the parent's, or the flapping."""
        now = self.clock()
        held: list[Event] = []
        changed: dict[str, AlertState] = {}
        for e in events:
            rule = self.by_name.get(e.rule)
            s = self.states.get(e.key)
            if rule is None or e.kind not in (Kind.FIRING, Kind.REPEAT, Kind.ESCALATED,
                                              Kind.IMPROVED, Kind.RESOLVED):
                continue
            if s is not None and s.flapping:
                reason = "flapping"  # the flapping notice tells it; its ups and downs do not
            elif e.kind is Kind.RESOLVED:
                continue
            else:
                reason = self._quiet(rule, e.key, e.target, e.label, now, []).suppressed
            if not reason:
                continue
            held.append(e)
            if s is not None and s.notified and e.kind is Kind.FIRING and s.announced == e.at:
                self._remember(s, withdraw(s, reason), changed)
            log.info("alert %s %s %s held back as its mail left: %s", e.kind.value, e.target,
                     e.label, reason)
        if changed:
            self._save(changed, [])
            if self._unsaved_states:  # not durable: send it rather than risk silence
                return []
        return held

    def _apply_acks(self, now: float, changed: dict[str, AlertState],
                    events: list[Event]) -> None:
        """Acknowledgements asked for by `monitor ack` (or a reply to a mail) since last time."""
        for ack in self.store.pending_acks():
            for s in list(self.states.values()):
                rule = self.by_name.get(s.rule)
                if rule is not None and s.problem and ack.matches(s):
                    new, evs = acknowledge(rule.config, s, ack.author, ack.comment, ack.until, now)
                    self._remember(s, new, changed)
                    events += evs
            self._unsaved_acks.append(ack.id)

    def _apply(self, rule: Rule, reading: Reading, now: float, silences: list[Silence],
               changed: dict[str, AlertState], events: list[Event]) -> None:
        prev = self.states.get(reading.key)
        if prev is None and reading.state is State.OK and rule.condition != "nodata":
            return  # states are created by the first problem (nodata: by the first data)
        quiet = self._quiet(rule, reading.key, reading.target, reading.label, now, silences)
        new, evs = step(rule.config, prev, reading, now, quiet)
        self._remember(prev, new, changed)
        events += evs

    def _remember(self, prev: AlertState | None, new: AlertState,
                  changed: dict[str, AlertState]) -> None:
        if new != prev:
            self.states[new.key] = new
            changed[new.key] = new
            self._index(new)

    def _index(self, s: AlertState) -> None:
        keys = self._problems.setdefault(s.rule, set())
        if s.problem:
            keys.add(s.key)
        else:
            keys.discard(s.key)

    def _quiet(self, rule: Rule, key: str, target: str, label: str, now: float,
               silences: list[Silence]) -> Quiet:
        silenced = ""
        for silence in silences:
            if silence.until > now and silence.matches(rule.name, target, label):
                until = time.strftime("%Y-%m-%d %H:%M", time.localtime(silence.until))
                silenced = f"silence #{silence.id} until {until}: {silence.reason}"
                break
        if not silenced:
            window = self.maintenance.active(rule.name, target, label, now)
            if window is not None:
                silenced = f"maintenance window {window.name}" + (
                    f": {window.reason}" if window.reason else "")
        suppressed = ""
        for parent, pattern in rule.depends_on:
            for parent_key in self._problems.get(parent, ()):
                p = self.states[parent_key]
                if parent_key != key and (pattern is None or pattern.match(p.target)):
                    suppressed = f"depends on {parent}: {p.target} {p.label} is {p.status.value}"
                    break
            if suppressed:
                break
        return Quiet(silenced=silenced, suppressed=suppressed)

    def _save(self, changed: dict[str, AlertState], events: list[Event]) -> None:
        self._unsaved_states.update(changed)
        self._unsaved_events += events
        if not self._unsaved_states and not self._unsaved_events and not self._unsaved_acks:
            return
        events = self._unsaved_events
        queue = [(group, e) for e in events for group in e.groups]
        try:
            self.store.save(self._unsaved_states.values(), events, queue,
                            acks_applied=self._unsaved_acks)
        except (sqlite3.Error, OSError) as exc:
            if not self.save_error:
                log.error("cannot save alert state to %s: %s; %d event(s) wait in memory and are "
                          "saved (and mailed) as soon as it works again", self.store.path, exc,
                          len(events))
            self.save_error = str(exc)
            return
        if self.save_error:
            log.info("alert state saved again to %s (%d event(s) that waited)", self.store.path,
                     len(events))
        self.save_error = ""
        self._unsaved_states, self._unsaved_events, self._unsaved_acks = {}, [], []
        for e in events:
            log.log(logging.INFO if e.kind.value == "resolved" else logging.WARNING,
                    "alert %s: %s %s %s: %s", e.kind.value, e.severity.name, e.target, e.label,
                    e.message)
