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


@dataclass(frozen=True, slots=True)
class InterfaceSample:
    """One interface in one poll. `counters` maps a metric name (in_octets, ...) to its value."""

    counters: dict[str, Counter]
    speed_bps: float | None = None
    discontinuity: int | None = None  # ifCounterDiscontinuityTime (TimeTicks), if the agent has it


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
            rates: dict[str, float | None] = {}
            for metric, counter in new.counters.items():
                before = old.counters.get(metric)
                delta = None if before is None else counter_delta(before, counter)
                if delta is None:
                    rates[metric] = None
                    continue
                rate = delta / elapsed
                limit = rate_limit(new.speed_bps)
                # faster than the wire: a counter reset, not traffic
                too_fast = limit is not None and rate > limit * self.speed_tolerance
                rates[metric] = None if too_fast else rate
            out[identity] = rates
        return Rates(out)

    @staticmethod
    def _unknown(sample: DeviceSample, reason: str, rebooted: bool = False) -> Rates:
        return Rates({name: dict.fromkeys(i.counters) for name, i in sample.interfaces.items()},
                     reason, rebooted)
