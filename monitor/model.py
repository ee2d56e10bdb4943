"""The small core types every part of the agent shares.

A collector produces a `Batch` of `Measurement`s and `CheckResult`s; the store, the status
book, the alert engine and the digests consume them. Nothing here knows about SNMP, RRD,
HTML or email.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum
from typing import Any, Protocol, runtime_checkable


class Kind(StrEnum):
    """How a value is turned into a rate (if at all) by the store.

    GAUGE: the value itself (temperature, a rate the collector computed).
    COUNTER: an ever-increasing counter that may wrap; the store keeps its rate per second.
    DERIVE: like COUNTER, but a decrease is a reset (unknown), never a wrap.
    ABSOLUTE: a count since the previous reading (the source resets it on every read): the
    store keeps it per second (RRD's ABSOLUTE; Munin plugins declare it).
    """

    GAUGE = "GAUGE"
    COUNTER = "COUNTER"
    DERIVE = "DERIVE"
    ABSOLUTE = "ABSOLUTE"


class State(IntEnum):
    """Nagios' vocabulary; the integer values are the plugin exit codes."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def severity(self) -> int:
        """Ordering for "worst first": CRITICAL > UNKNOWN > WARNING > OK."""
        return {State.OK: 0, State.WARNING: 1, State.UNKNOWN: 2, State.CRITICAL: 3}[self]

    @classmethod
    def worst(cls, states: Iterable[State]) -> State:
        return max(states, key=lambda s: s.severity, default=State.OK)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One value of one metric of one instance of one target at one time.

    target: the monitored thing ("dmz-router", "mail.example.net", "localhost").
    instance: the part of it ("eth0", "/var", "smtp"); "" when the target has no parts.
    metric: the quantity, with its unit in the name ("in_octets", "response_seconds").
    maximum: an upper bound the store may use to reject impossible values (link speed).
    """

    target: str
    instance: str
    metric: str
    value: float | None
    kind: Kind = Kind.GAUGE
    unit: str = ""
    timestamp: float = field(default_factory=time.time)
    minimum: float | None = None
    maximum: float | None = None
    thresholds: Thresholds | None = None  # a plugin's perfdata warn/crit/min/max


@dataclass(frozen=True, slots=True)
class Thresholds:
    """What a Nagios plugin's perfdata says around a value, in the unit the value is stored in:
    the warning and critical ranges as the plugin gave them ("10", "@5:10", "~:3") and the
    minimum and maximum it may take (the store does not bound the series by them)."""

    warning: str | None = None
    critical: str | None = None
    low: float | None = None
    high: float | None = None

    def __bool__(self) -> bool:
        """Whether anything is known (an empty one says "none now", not "not told")."""
        return any(v is not None for v in (self.warning, self.critical, self.low, self.high))


def measurement_row(m: Measurement) -> list[Any]:
    """A measurement as a JSON-able list (for the buffers and streams that carry samples as
    text); `measurement_from_row` reads it back."""
    limits = m.thresholds
    return [m.target, m.instance, m.metric, m.value, m.kind.value, m.unit, m.timestamp, m.minimum,
            m.maximum, None if limits is None else
            [limits.warning, limits.critical, limits.low, limits.high]]


def measurement_from_row(row: list[Any]) -> Measurement:
    """The measurement of `measurement_row`; ValueError/TypeError for anything else."""
    target, instance, metric, value, kind, unit, timestamp, low, high, limits = row
    return Measurement(str(target), str(instance), str(metric),
                       None if value is None else float(value), Kind(kind), str(unit),
                       float(timestamp), low, high, None if limits is None else Thresholds(*limits))


def _finite(text: str) -> float:
    """A range's number: "nan" and "inf" parse as floats but bound nothing ("~" is -inf)."""
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(text)
    return value


def alert_range(text: str | None) -> tuple[float, float, bool] | None:
    """A Nagios range as (start, end, inside): the plugin alerts when the value is outside
    start..end, or with "@" inside it. "10" is above 10 (its implicit start, 0, is given as
    -inf: what a person reads), "10:" below 10, "~:10" above 10, "5:10" outside 5..10,
    "@5:10" within. None if it is no range."""
    if not text:
        return None
    inside = text.startswith("@")
    body = text[1:] if inside else text
    start_text, colon, end_text = body.partition(":")
    if not colon:
        start_text, end_text = "~", start_text
    try:
        start = -math.inf if start_text == "~" else _finite(start_text or "0")
        end = math.inf if end_text == "" else _finite(end_text)
    except ValueError:
        return None
    if start > end or (math.isinf(start) and math.isinf(end)):
        return None
    return start, end, inside


@dataclass(frozen=True, slots=True)
class CheckResult:
    """The verdict of one check: a state, a one-line message for a human, and its evidence."""

    target: str
    check: str
    state: State
    message: str
    measurements: tuple[Measurement, ...] = ()
    timestamp: float = field(default_factory=time.time)

    @property
    def key(self) -> str:
        return f"{self.target}/{self.check}"


@dataclass(slots=True)
class Batch:
    """What one run of one collector produced."""

    measurements: list[Measurement] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)

    def add(self, item: Measurement | CheckResult | Batch) -> None:
        if isinstance(item, Measurement):
            self.measurements.append(item)
        elif isinstance(item, CheckResult):
            self.checks.append(item)
            self.measurements.extend(item.measurements)
        else:
            self.measurements.extend(item.measurements)
            self.checks.extend(item.checks)

    def extend(self, items: Iterable[Measurement | CheckResult | Batch]) -> None:
        for item in items:
            self.add(item)


@runtime_checkable
class Collector(Protocol):
    """What the scheduler runs: one job with a name, an interval and an async collect().

    Each collector module has one entry point, `build(config) -> list[Collector]`, that reads its
    own config section without touching the network. `collect()` must not raise for one bad
    target: a dead device or a closed port is a CheckResult, not an exception. An exception means
    "the whole collector could not run" and is reported (and backed off) by the scheduler.
    """

    name: str
    interval: float

    async def collect(self) -> Batch: ...


@runtime_checkable
class StreamingCollector(Collector, Protocol):
    """A collector of many independent targets (SNMP devices): `batches()` yields each part as
    soon as it is done, so one slow target never holds back the others' data. `collect()` is
    still there (all parts in one batch)."""

    def batches(self) -> AsyncIterator[Batch]: ...


@runtime_checkable
class SharedCollector(Collector, Protocol):
    """A collector whose targets several agents ([cluster]) may share: `work_units()` names each
    unit of work (a device, a service check) with its group; before a run the agent tells it
    which units are this node's with `select()` (None: all of them, the single-machine case),
    and until when their runs may start (`until`, wall-clock time: a poll that would start later
    is left out, its cycle is as good as over)."""

    def work_units(self) -> dict[str, str]: ...

    def select(self, units: set[str] | None, until: float | None = None) -> None: ...

    def unit_of(self, target: str, check: str) -> str | None:
        """The unit of work a check result of this collector belongs to (None: not ours)."""

    def share_state(self, share: SharedState) -> None:
        """Keep what the next run of a unit needs (SNMP counters) where every node finds it."""


class SharedState(Protocol):
    """State of units of work that moves with them between nodes (text, e.g. JSON)."""

    async def get(self, unit: str) -> str | None: ...

    async def put(self, unit: str, text: str) -> None: ...
