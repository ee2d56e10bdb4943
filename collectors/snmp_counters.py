"""Interface counter math: raw SNMP counters of two polls in, exact rates per second out.

Pure and synchronous (no I/O, no clock): the collector feeds it one `DeviceSample` per poll and
gets rates back. Everything that MRTG, Munin and Cacti are known to get wrong is decided here:

- interfaces are matched between polls by identity (ifName by default), never by ifIndex, so a
  renumbering after a reboot keeps each series continuous and never splices two interfaces;
- a 32- or 64-bit counter that went down wrapped exactly once (the delta is exact);
- an agent reboot (sysUpTime went back, and not by its own 2^32 wrap after ~497 days, or grew
  much less than the wall clock) or a changed ifCounterDiscontinuityTime makes the step unknown;
- a rate above the link speed is impossible (a reset that looked like a wrap): unknown;
- a poller pause longer than `max_gap_intervals` intervals is a gap, not a burst.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

UPTIME_WRAP = 2**32  # sysUpTime is TimeTicks (hundredths of a second) in 32 bits: ~497 days
# How far the agent's uptime may disagree with the poller's clock before we call it a reboot:
# replies are delayed, agents cache uptime, clocks drift.
UPTIME_SLACK_SECONDS = 10.0
UPTIME_SLACK_FRACTION = 0.25

@dataclass(frozen=True, slots=True)
class Counter:
    """A raw counter value and its width in bits (32 for Counter32, 64 for Counter64)."""

    value: int
    bits: int = 64


class Counters(Mapping[str, Counter]):
    """An interface's counters of one poll, metric name -> Counter, kept compact: the names
    (a tuple the collector shares between the interfaces that have the same columns), the
    values in an array of unsigned 64-bit integers, and which of them are 64-bit counters as
    the bits of one integer. The last poll of every interface stays in memory: a dict of
    Counter objects was ~1.3 KiB an interface, this is ~0.3 KiB."""

    __slots__ = ("names", "numbers", "wide")

    def __init__(self, names: tuple[str, ...], values: Iterable[int], wide: int) -> None:
        self.names = names
        self.numbers = array("Q", values)
        self.wide = wide  # bit i set: names[i] is a 64-bit counter, else a 32-bit one

    @classmethod
    def of(cls, counters: Mapping[str, Counter]) -> Counters:
        """Counters from any mapping; ValueError for a width other than 32 and 64 bits or a
        value that does not fit it (a damaged state file)."""
        if isinstance(counters, Counters):
            return counters
        if any(c.bits not in (32, 64) or not 0 <= c.value < 1 << c.bits for c in counters.values()):
            raise ValueError(f"not a 32- or 64-bit counter: {counters!r}"[:200])
        return cls(tuple(counters), (c.value for c in counters.values()),
                   sum(1 << i for i, c in enumerate(counters.values()) if c.bits == 64))

    def __getitem__(self, metric: str) -> Counter:
        try:
            i = self.names.index(metric)
        except ValueError:
            raise KeyError(metric) from None
        return Counter(self.numbers[i], 64 if self.wide >> i & 1 else 32)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def saved(self) -> dict[str, list[int]]:
        """metric -> [value, bits], as state files keep them."""
        wide = self.wide
        return {metric: [value, 64 if wide >> i & 1 else 32]
                for i, (metric, value) in enumerate(zip(self.names, self.numbers, strict=True))}

    def __repr__(self) -> str:
        return f"Counters({dict(self.items())!r})"


@dataclass(frozen=True, slots=True)
class InterfaceSample:
    """One interface in one poll. `counters` maps a metric name (in_octets, ...) to its value
    (a dict is taken as Counters)."""

    counters: Counters
    speed_bps: float | None = None
    discontinuity: int | None = None  # ifCounterDiscontinuityTime (TimeTicks), if the agent has it

    def __post_init__(self) -> None:
        if type(self.counters) is not Counters:
            object.__setattr__(self, "counters", Counters.of(self.counters))


@dataclass(frozen=True, slots=True)
class DeviceSample:
    """One poll of one device: when (poller clock, seconds), the agent's uptime, the interfaces."""

    time: float
    uptime_ticks: int | None
    interfaces: dict[str, InterfaceSample]


@dataclass(frozen=True, slots=True)
class Rates:
    """What one poll yields: per interface identity, metric -> rate per second (None: unknown).

    `reason` says why everything is unknown ("first poll", "agent rebooted", ...), "" otherwise.
    """

    interfaces: dict[str, dict[str, float | None]]
    reason: str = ""
    rebooted: bool = False


def counter_delta(old: Counter, new: Counter) -> int | None:
    """new - old for a counter that may have wrapped once; None if the widths differ."""
    if old.bits != new.bits:
        return None  # the agent switched between ifHC* and 32-bit columns: not comparable
    if new.value >= old.value:
        return new.value - old.value
    return new.value + (1 << new.bits) - old.value


def uptime_verdict(old_ticks: int, new_ticks: int, elapsed: float) -> str:
    """"ok", "wrapped" (sysUpTime's own 2^32 wrap, not a reboot) or "rebooted"."""
    delta = (new_ticks - old_ticks) % UPTIME_WRAP
    wrapped = new_ticks < old_ticks
    slack = UPTIME_SLACK_SECONDS + UPTIME_SLACK_FRACTION * elapsed
    if abs(delta / 100.0 - elapsed) > slack:
        # Went back (and not just around the 2^32 circle), or grew by much less (or more) than
        # the time that passed: the agent restarted in between.
        return "rebooted"
    return "wrapped" if wrapped else "ok"


def rate_limit(speed_bps: float | None) -> float | None:
    """The highest believable rate per second of a metric on a link of this speed (None: any)."""
    if not speed_bps or speed_bps <= 0:
        return None
    # Octets: at most line rate. Packets: at least one byte each on the wire, so a packet rate
    # above bytes-at-line-rate is a reset that looked like a wrap. The same bound for both.
    return speed_bps / 8.0


@dataclass
class CounterState:
    """The last poll of one device, and the rule that turns the next poll into rates."""

    interval: float
    max_gap_intervals: float = 2.0
    speed_tolerance: float = 1.05  # shapers and rounding let a link run a hair above nominal
    last: DeviceSample | None = None

    def update(self, sample: DeviceSample) -> Rates:
        """Rates between the previous poll and `sample`, then remember `sample`."""
        previous, self.last = self.last, sample
        if previous is None:
            return self._unknown(sample, "first poll: rates start with the next one")
        elapsed = sample.time - previous.time
        if elapsed <= 0:
            return self._unknown(sample, "the poller's clock went back")
        if elapsed > self.max_gap_intervals * self.interval:
            return self._unknown(sample, f"{elapsed:.0f} s since the last poll (more than "
                                         f"{self.max_gap_intervals:g} intervals): a gap, not a burst")
        rebooted = False
        if previous.uptime_ticks is not None and sample.uptime_ticks is not None:
            rebooted = uptime_verdict(previous.uptime_ticks, sample.uptime_ticks, elapsed) == "rebooted"
        if rebooted:
            return self._unknown(sample, "the agent restarted (sysUpTime went back)", rebooted=True)

        out: dict[str, dict[str, float | None]] = {}
        for identity, new in sample.interfaces.items():
            old = previous.interfaces.get(identity)
            if old is None:
                out[identity] = dict.fromkeys(new.counters)
                continue
            if (old.discontinuity is not None and new.discontinuity is not None
                    and old.discontinuity != new.discontinuity):
                out[identity] = dict.fromkeys(new.counters)
                continue
            limit = rate_limit(new.speed_bps)
            # faster than the wire: a counter reset, not traffic
            top = math.inf if limit is None else limit * self.speed_tolerance
            out[identity] = _rates(old.counters, new.counters, elapsed, top)
        return Rates(out)

    @staticmethod
    def _unknown(sample: DeviceSample, reason: str, rebooted: bool = False) -> Rates:
        return Rates({name: dict.fromkeys(i.counters) for name, i in sample.interfaces.items()},
                     reason, rebooted)


def _rates(old: Counters, new: Counters, elapsed: float, top: float) -> dict[str, float | None]:
    """metric -> rate per second between two polls of an interface (None: unknown, or above
    `top`). Once per interface and poll: the usual case (the same columns both times) goes
    through the arrays side by side."""
    rates: dict[str, float | None] = {}
    if old.names != new.names:
        for metric, counter in new.items():
            before = old.get(metric)
            delta = None if before is None else counter_delta(before, counter)
            rate = None if delta is None else delta / elapsed
            rates[metric] = None if rate is None or rate > top else rate
        return rates
    same_width = old.wide == new.wide
    wide = new.wide
    pairs = zip(new.names, old.numbers, new.numbers, strict=True)
    for i, (metric, was, value) in enumerate(pairs):
        if not same_width and (old.wide ^ wide) >> i & 1:
            rates[metric] = None  # the agent switched between ifHC* and 32-bit columns
            continue
        delta = value - was
        if delta < 0:  # wrapped once
            delta += 1 << (64 if wide >> i & 1 else 32)
        rate = delta / elapsed
        rates[metric] = None if rate > top else rate
    return rates
