"""Which results a rule looks at, and what it thinks of one: a `Reading`.

A `Rule` wraps one `[[alerts.rules]]` table with its patterns compiled. `judge_check()` and
`judge_value()` turn a check result or a value into a Reading: the state the rule assigns
(OK, or the problem's severity), with the evidence a human needs (value, threshold, message).
Both are pure; the recovery hysteresis needs the alert's current severity, which the caller
passes in. Rate-of-change rules need the previous value, which the caller keeps.
"""

from __future__ import annotations

import fnmatch
import math
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

from monitor.config import AlertRule
from monitor.model import CheckResult, Measurement, State

SEP = "\x1f"  # in alert keys: never in a config name, harmless if a device name has it

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">": operator.gt, ">=": operator.ge, "<": operator.lt, "<=": operator.le,
    "==": operator.eq, "!=": operator.ne,
}
_WORDS = {">": "above", ">=": "at or above", "<": "below", "<=": "at or below",
          "==": "equal to", "!=": "not"}


@dataclass(frozen=True)
class Comparison:
    op: str
    limit: float

    @classmethod
    def parse(cls, text: str) -> Comparison:
        match = re.fullmatch(r"\s*(>=|<=|>|<|==|!=)\s*(\S+)\s*", text)
        if not match:
            raise ValueError(f'expected a comparison like "> 90", got {text!r}')
        return cls(match.group(1), float(match.group(2)))

    def test(self, value: float, hysteresis: float = 0.0) -> bool:
        """True if `value` is on the bad side; `hysteresis` moves the limit toward the good
        side (used while the alert is already at this level, so that it recovers only once the
        value is clearly back)."""
        limit = self.limit
        if self.op in (">", ">="):
            limit -= hysteresis
        elif self.op in ("<", "<="):
            limit += hysteresis
        return _OPS[self.op](value, limit)

    def __str__(self) -> str:
        return f"{self.op} {_num(self.limit)}"

    def words(self) -> str:
        return f"{_WORDS[self.op]} {_num(self.limit)}"


@dataclass(frozen=True)
class Reading:
    """What a rule thinks of one observation of one thing (an alert's input)."""

    key: str
    rule: str
    target: str
    label: str
    state: State  # OK, or the severity of the problem
    message: str
    value: float | None = None
    threshold: str = ""
    at: float = 0.0
    fresh: bool = True  # real data arrived (False: a "no data" verdict made by the clock)


def _glob(pattern: str) -> re.Pattern[str]:
    return re.compile(fnmatch.translate(pattern), re.DOTALL)


def _num(value: float) -> str:
    if abs(value) >= 1e5:
        return f"{value:,.0f}"
    if value == int(value):
        return str(int(value))
    return f"{value:.3g}" if abs(value) < 1e-3 else f"{value:.3f}".rstrip("0").rstrip(".")


def alert_key(rule: str, target: str, label: str) -> str:
    return SEP.join((rule, target, label))


class Rule:
    def __init__(self, config: AlertRule) -> None:
        self.config = config
        self.name = config.name
        self.condition = config.condition or "state"
        self._target = _glob(config.target)
        self._instance = _glob(config.instance)
        self._check = _glob(config.check) if config.check is not None else None
        self._metric = _glob(config.metric) if config.metric is not None else None
        self.warning = Comparison.parse(config.warning) if config.warning else None
        self.critical = Comparison.parse(config.critical) if config.critical else None
        self.problem_states = {State[s] for s in config.states}
        # Dependencies: (parent rule, target pattern or None)
        self.depends_on: list[tuple[str, re.Pattern[str] | None]] = []
        for dep in config.depends_on:
            parent, _, pattern = dep.partition(":")
            self.depends_on.append((parent, _glob(pattern) if pattern else None))

    @property
    def on_checks(self) -> bool:
        return self._check is not None

    def matches_check(self, result: CheckResult) -> bool:
        return (self._check is not None and self._check.match(result.check) is not None
                and self._target.match(result.target) is not None)

    def matches_measurement(self, m: Measurement) -> bool:
        return (self._metric is not None and self._metric.match(m.metric) is not None
                and self._target.match(m.target) is not None
                and self._instance.match(m.instance) is not None)

    # -- verdicts ----------------------------------------------------------------------------

    def judge_check(self, result: CheckResult) -> Reading:
        state = result.state if result.state in self.problem_states else State.OK
        if state is not State.OK and self.config.severity:
            state = State[self.config.severity]
        return Reading(
            key=alert_key(self.name, result.target, result.check), rule=self.name,
            target=result.target, label=result.check, state=state,
            message=self.config.summary or result.message,
            threshold=f"check state {result.state.name}", at=result.timestamp,
        )

    def label_for(self, m: Measurement) -> str:
        return f"{m.instance} {m.metric}" if m.instance else m.metric

    def judge_value(self, m: Measurement, value: float, current: State = State.OK) -> Reading:
        """`value` is the measurement's value (threshold) or its rate (rate rules);
        `current` is the alert's current severity, for the hysteresis."""
        state, hit = State.OK, None
        for level, comparison in ((State.CRITICAL, self.critical), (State.WARNING, self.warning)):
            if comparison is None:
                continue
            at_level = current.severity >= level.severity and current is not State.OK
            if comparison.test(value, self.config.hysteresis if at_level else 0.0):
                state, hit = level, comparison
                break
        if state is not State.OK and self.config.severity:
            state = State[self.config.severity]
        unit = f" {m.unit}" if m.unit else ""
        what = self.label_for(m)
        if self.condition == "rate":
            suffix = f"{unit} per {_per(self.config.rate_per)}"
            shown = f"{what} changes by {_num(value)}{suffix}"
        else:
            suffix = unit
            shown = f"{what} is {_num(value)}{unit}"
        levels = self._levels(suffix)
        message = shown if hit is None else f"{shown}, {state.name.lower()} {hit.words()}{suffix}"
        return Reading(
            key=alert_key(self.name, m.target, what), rule=self.name, target=m.target,
            label=what, state=state, message=self.config.summary or message, value=value,
            threshold=levels, at=m.timestamp,
        )

    def _levels(self, unit: str) -> str:
        parts = []
        if self.warning:
            parts.append(f"warning {self.warning}{unit}")
        if self.critical:
            parts.append(f"critical {self.critical}{unit}")
        return ", ".join(parts)

    def nodata_reading(self, key: str, target: str, label: str, silent_for: float,
                       now: float) -> Reading:
        from monitor.units import format_duration

        severity = State[self.config.severity] if self.config.severity else State.CRITICAL
        assert self.config.nodata is not None
        late = silent_for >= self.config.nodata
        return Reading(
            key=key, rule=self.name, target=target, label=label,
            state=severity if late else State.OK,
            message=self.config.summary or f"no data for {format_duration(silent_for)}",
            threshold=f"no data for {format_duration(self.config.nodata)}", at=now, fresh=False,
        )


def _per(seconds: float) -> str:
    from monitor.units import format_duration

    return {3600.0: "hour", 60.0: "minute", 1.0: "second", 86400.0: "day"}.get(
        seconds, format_duration(seconds))


def usable(value: float | None) -> bool:
    return value is not None and not math.isnan(value) and not math.isinf(value)
