"""The pure alert state machine: table-driven cases and an exhaustive walk of short histories."""

from __future__ import annotations

import itertools
import json

import pytest

from alerts.engine import LOUD, AlertState, Event, Kind, Quiet, Status, flap_percent, step, tick
from alerts.rules import Reading
from monitor.config import AlertRule
from monitor.model import State

O, W, C, U = State.OK, State.WARNING, State.CRITICAL, State.UNKNOWN  # noqa: E741


def rule(**kw) -> AlertRule:
    r = AlertRule(name="r", check="*", **kw)
    r.validate()
    return r


def reading(state: State, at: float = 0.0) -> Reading:
    return Reading(key="k", rule="r", target="mail.example.net", label="smtp", state=state,
                   message="no answer" if state else "answered", at=at)


def run(r: AlertRule, states, step_seconds: float = 60.0, quiet=None):
    """Feed readings one a step apart; returns [(state, [event kinds])] per step."""
    s, out = None, []
    for i, st in enumerate(states):
        q = quiet(i) if quiet else LOUD
        s, events = step(r, s, reading(st, i * step_seconds), i * step_seconds, q)
        out.append((s, events))
    return out


def kinds(out) -> list[list[str]]:
    return [[e.kind.value for e in events] for _, events in out]


def flat(out) -> list[str]:
    return [k for ks in kinds(out) for k in ks]


# ---------------------------------------------------------------------------------------------
# Table-driven cases: (rule options, readings, expected event kinds per reading)

CASES = [
    ("fire and resolve", {}, [C, O], [["firing"], ["resolved"]]),
    ("ok stays quiet", {}, [O, O, O], [[], [], []]),
    ("soft until retries", {"retries": 3}, [C, C, O, C, C, C, C],
     [[], [], [], [], [], ["firing"], []]),
    ("soft problem never announced", {"retries": 2}, [C, O, C, O], [[], [], [], []]),
    ("recovery hysteresis", {"recover_after": 2}, [C, O, C, O, O],
     [["firing"], [], [], [], ["resolved"]]),
    ("worse and better are announced", {"flap_detection": False}, [W, C, W, C, O],
     [["firing"], ["firing"], ["improved"], ["firing"], ["resolved"]]),
    ("unknown is a problem", {}, [U, O], [["firing"], ["resolved"]]),
    ("severity override", {"severity": "WARNING"}, [C, O], [["firing"], ["resolved"]]),
]


@pytest.mark.parametrize(("options", "states", "expected"),
                         [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_cases(options, states, expected):
    assert kinds(run(rule(**options), states)) == expected


def test_for_duration_keeps_it_pending():
    r = rule(**{"pending": 300.0})
    out = run(r, [C] * 7)  # one a minute
    assert kinds(out) == [[], [], [], [], [], ["firing"], []]
    assert [s.status for s, _ in out][:5] == [Status.PENDING] * 5
    assert out[5][0].firing_since == 300


def test_for_elapses_on_a_tick_without_new_readings():
    r = rule(pending=300.0)
    s, events = step(r, None, reading(C), 0)
    assert events == [] and s.status is Status.PENDING
    s, events = tick(r, s, 299)
    assert events == []
    s, events = tick(r, s, 300)
    assert [e.kind for e in events] == [Kind.FIRING] and s.status is Status.FIRING


def test_firing_event_carries_what_a_human_needs():
    r = rule(notify=["admins", "hotline"])
    _, (event,) = step(r, None, reading(C, 100), 100)
    assert (event.target, event.label, event.severity, event.message, event.since) == (
        "mail.example.net", "smtp", C, "no answer", 100)
    assert event.groups == ("admins", "hotline")


def test_repeat_while_firing():
    r = rule(repeat=3600.0)
    out = run(r, [C] * 19 + [O], step_seconds=600)  # every 10 min for ~3 h
    assert flat(out) == ["firing", "repeat", "repeat", "repeat", "resolved"]
    repeats = [i for i, ks in enumerate(kinds(out)) if "repeat" in ks]
    assert repeats == [6, 12, 18]


def test_escalation_after_n_minutes_and_recovery_to_both():
    r = rule(escalate_after=1800.0, escalate_to=["boss"])
    out = run(r, [C] * 5 + [O], step_seconds=600)
    events = [e for _, es in out for e in es]
    assert [(e.kind.value, e.groups) for e in events] == [
        ("firing", ("admins",)), ("escalated", ("boss",)), ("resolved", ("admins", "boss"))]
    assert [i for i, ks in enumerate(kinds(out)) if "escalated" in ks] == [3]


def test_flapping_gives_one_notice_each_way():
    r = rule()
    states = [C, O] * 15 + [O] * 25
    out = run(r, states)
    assert flat(out).count("flapping") == 1
    assert flat(out).count("flapping_stopped") == 1
    # Before the flapping started, a few real transitions were announced; after it, silence
    # until it stops, then the truth (here: it flapped into a problem that was never
    # announced, and is now fine: nothing more to say).
    seq = flat(out)
    start = seq.index("flapping")
    assert seq[:start] == ["firing", "resolved"] * 3
    assert seq[start + 1:] == ["flapping_stopped"]
    assert not out[-1][0].notified
    assert len(seq) == 8  # instead of 30 firing/resolved mails


def test_flapping_that_starts_while_announced_ends_with_the_recovery():
    out = run(rule(recover_after=2), [C, O] * 7 + [O] * 25)
    assert flat(out) == ["firing", "flapping", "flapping_stopped", "resolved"]


def test_flapping_stops_while_firing_announces_the_problem():
    r = rule(retries=1)
    out = run(r, [C, O] * 12 + [C] * 25)
    seq = flat(out)
    assert seq[-2:] == ["flapping_stopped", "firing"]
    final = out[-1][0]
    assert final.status is Status.FIRING and final.notified


def test_flap_percent_follows_nagios_weights():
    assert flap_percent("O" * 21) == 0
    assert flap_percent("OC" * 10 + "O") == pytest.approx(100)
    # One change, newest: weight 1.25 of 20 -> 6.25 %; oldest: 0.75 -> 3.75 %.
    assert flap_percent("O" * 20 + "C") == pytest.approx(6.25)
    assert flap_percent("O" + "C" * 20) == pytest.approx(3.75)
    assert flap_percent("OC") == pytest.approx(6.25)


def test_flap_detection_off():
    out = run(rule(flap_detection=False), [C, O] * 15)
    assert flat(out) == ["firing", "resolved"] * 15


def test_silence_holds_back_then_announces():
    r = rule()
    silenced = Quiet(silenced="silence #1 (router swap)")
    s, events = step(r, None, reading(C), 0, silenced)
    assert events == [] and s.status is Status.FIRING and s.quiet.startswith("silence")
    s, events = step(r, s, reading(C, 60), 60, silenced)
    assert events == []
    s, events = tick(r, s, 120, LOUD)  # the silence expired, still broken
    assert [e.kind for e in events] == [Kind.FIRING]
    s, events = step(r, s, reading(O, 180), 180, silenced)  # recovery goes out regardless
    assert [e.kind for e in events] == [Kind.RESOLVED]


def test_silenced_problem_that_recovers_is_never_mentioned():
    q = Quiet(silenced="maintenance window nightly")
    out = run(rule(), [C, C, O, O], quiet=lambda i: q)
    assert flat(out) == []


def test_dependency_suppression_is_like_a_silence():
    q = Quiet(suppressed="depends on router-down (dmz-router)")
    out = run(rule(), [C, C, C, O], quiet=lambda i: q if i < 2 else LOUD)
    assert kinds(out) == [[], [], ["firing"], ["resolved"]]


def test_state_survives_a_json_round_trip():
    r = rule(repeat=3600.0, escalate_after=600.0, escalate_to=["boss"])
    out = run(r, [W, C, C, O, C])
    for s, events in out:
        assert AlertState.from_json(json.loads(json.dumps(s.to_json()))) == s
        for e in events:
            assert Event.from_json(json.loads(json.dumps(e.to_json()))) == e


def test_restart_in_the_middle_changes_nothing():
    r = rule(retries=2, recover_after=2)
    states = [C, C, C, O, O, C, O, O]
    straight = flat(run(r, states))
    s, seq = None, []
    for i, st in enumerate(states):
        if s is not None:
            s = AlertState.from_json(json.loads(json.dumps(s.to_json())))
        s, events = step(r, s, reading(st, i * 60), i * 60)
        seq += [e.kind.value for e in events]
    assert seq == straight


# ---------------------------------------------------------------------------------------------
# Exhaustive: every history of up to 6 readings over OK/WARNING/CRITICAL, for several rules,
# followed by a long calm; invariants that must hold for all of them.

RULES = [dict(retries=r, recover_after=a) for r in (1, 2, 3) for a in (1, 2)]


def check_invariants(r: AlertRule, states: list[State]) -> None:
    tail = [O] * 22
    out = run(r, list(states) + tail)
    open_ = False
    notified_severity = O
    for i, (s, events) in enumerate(out):
        recent = (list(states) + tail)[: i + 1]
        for e in events:
            if e.kind is Kind.FIRING:
                if open_:
                    assert e.severity.severity > notified_severity.severity, (states, i)
                else:
                    # announced only after `retries` bad readings in a row (or later, once
                    # flapping stopped, while the problem is still there)
                    assert all(x is not O for x in recent[-r.retries:]), (states, i)
                open_ = True
                notified_severity = e.severity
            elif e.kind is Kind.RESOLVED:
                assert open_, ("resolved without a problem", states, i)
                assert recent[-1] is O, (states, i)
                open_ = False
            elif e.kind is Kind.IMPROVED:
                assert open_ and e.severity.severity < notified_severity.severity, (states, i)
                assert e.severity is not O
                notified_severity = e.severity
            elif e.kind is Kind.REPEAT:
                assert open_
        assert s.notified == open_, (states, i)
        assert s.status is not Status.FIRING or s.severity is not State.OK  # firing = a problem
    # After the calm: every announced problem was taken back, nothing is left flapping.
    final = out[-1][0]
    assert not open_, states
    assert final.status in (Status.OK, Status.RESOLVED) and not final.flapping
    kinds_ = flat(out)
    assert kinds_.count("flapping") == kinds_.count("flapping_stopped")


@pytest.mark.parametrize("options", RULES, ids=[f"retries{o['retries']}-recover{o['recover_after']}"
                                                 for o in RULES])
def test_exhaustive_short_histories(options):
    r = rule(**options)
    count = 0
    for length in range(1, 7):
        for states in itertools.product((O, W, C), repeat=length):
            check_invariants(r, list(states))
            count += 1
    assert count == sum(3**n for n in range(1, 7))


def test_exhaustive_with_quiet_periods():
    """Every pattern of silence over a fixed troubled history: recoveries only for what was
    announced, and every problem still there when the silence ends is announced."""
    r = rule()
    states = [C, C, O, C, C, O, O, O]
    for mask in itertools.product((False, True), repeat=len(states)):
        quiet = lambda i, m=mask: Quiet(silenced="s") if i < len(m) and m[i] else LOUD  # noqa: E731
        out = run(r, states + [O] * 3, quiet=quiet)
        open_ = False
        for i, (s, events) in enumerate(out):
            for e in events:
                if e.kind is Kind.FIRING:
                    assert not (i < len(mask) and mask[i])
                    open_ = True
                elif e.kind is Kind.RESOLVED:
                    assert open_
                    open_ = False
            if s.status is Status.FIRING and not (i < len(mask) and mask[i]):
                assert s.notified, (mask, i)
        assert not open_


def test_saved_events_and_states_of_a_newer_version_still_load():
    event = Event(Kind.FIRING, "r/h/x", "r", "h", "x", State.CRITICAL, "down", None, "state",
                  1.0, 2.0, ("admins",))
    saved = {**event.to_json(), "added_later": True}
    assert Event.from_json(saved) == event
    state = AlertState("r/h/x", "r", "h", "x")
    assert AlertState.from_json({**state.to_json(), "added_later": 1}) == state


def test_maintenance_window_days_have_crontab_meaning():
    """`0 2 * * 1` is Monday 02:00 as in crontab (APScheduler 3 alone would take Tuesday)."""
    import datetime

    from alerts.service import MaintenanceSchedule
    from monitor.config import MaintenanceWindow

    schedule = MaintenanceSchedule([MaintenanceWindow("backup", "0 2 * * 1", 3600.0)])
    monday = datetime.datetime(2026, 11, 30, 2, 30).astimezone().timestamp()  # a Monday
    assert schedule.active("r", "t", "c", monday) is not None
    assert schedule.active("r", "t", "c", monday + 86400) is None
