"""The [baseline] job: each hour, the last complete hour of every selected series against its
usual level for that hour of the week (monitor.seasonal), as a check per series.

    store (2-hour averages of the last weeks, 5-minute rows of the hour) -> seasonal.band ->
    CheckResult(target, "baseline <instance> <metric>", WARNING when far above the usual)

The checks go through the agent like any collector's, so alert rules, the status file and the
site see them (the default rule "traffic-unusual" mails them). Which series: the first
[[baseline.series]] whose target, instance and metric patterns match; `enabled = false` there
leaves a noisy one out. The same band is drawn on the graphs (graphs.render).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from monitor import seasonal
from monitor.config import BaselineConfig
from monitor.model import CheckResult, State
from monitor.store import RrdStore, SeriesInfo
from monitor.text import clean
from monitor.units import format_value, rate_unit

HOUR = 3600


def shown(value: float, metric: str, unit: str) -> str:
    """An hour's average in words a human reads: traffic in bits/s, counts per hour."""
    if metric.endswith("_octets"):
        return format_value(value * 8, "b/s")
    if not unit:  # a count stored as its rate (mail delivered): per hour
        return f"{value * HOUR:.0f} per hour"
    return format_value(value, rate_unit(unit))  # messages: per hour too


@dataclass(frozen=True)
class Hours:
    """Hours ending at `ends`: their averages, the usual level and band, and the verdicts."""

    ends: np.ndarray
    values: np.ndarray  # NaN: no data that hour
    expected: seasonal.Band
    anomalous: np.ndarray


def judge_hours(store: RrdStore, info: SeriesInfo, metric: str, ends: np.ndarray, weeks: int,
                factor: float) -> Hours:
    """Consecutive hours ending at `ends` (whole hours, ascending) against their usual level:
    one fetch of their 5-minute rows, one of the weeks before them."""
    first, last = float(ends[0]) - HOUR, float(ends[-1])
    rows = store.fetch_path(info, first, last)
    column = np.array(rows.columns.get(metric, []), dtype=float)
    stamps = np.array(rows.timestamps, dtype=float)[: column.size]
    which = np.ceil((stamps - first) / HOUR).astype(np.int64) - 1  # sample at t: hour (t-1h, t]
    values = np.full(len(ends), np.nan)
    with np.errstate(invalid="ignore"):
        for i in range(len(ends)):
            sample = column[(which == i) & ~np.isnan(column)]
            # At least half the hour known (rrdtool's xff): ten minutes after a restart or an
            # outage are not the hour's average, and a burst in them is not "8x the usual".
            if sample.size and sample.size * rows.step >= HOUR / 2:
                values[i] = sample.mean()
    past, start, step = seasonal.weekly_history(store, info, metric, first, first, weeks)
    expected = seasonal.band(past, start, step, np.asarray(ends, dtype=float) - HOUR / 2, weeks)
    return Hours(np.asarray(ends), values, expected, seasonal.anomalous(values, expected, factor))


def check_hour(store: RrdStore, config: BaselineConfig, now: float) -> list[CheckResult]:
    """One check per selected series for the last complete hour before `now`."""
    hour_end = int(now) // HOUR * HOUR
    # %M, not "00": where the local offset is not whole hours (India), the hour starts at hh:30.
    when = datetime.fromtimestamp(hour_end - HOUR).strftime("%A %H:%M")
    out = []
    for info, metric, factor in seasonal.selected(config, store.series()):
        name = f"baseline {info.instance} {metric}".replace("  ", " ")
        what = clean(f"{info.target} {info.instance} {metric}".replace("  ", " "), 200)
        unit = info.units.get(metric, "")
        try:
            hours = judge_hours(store, info, metric, np.array([hour_end]), config.weeks, factor)
        except Exception as exc:  # a corrupt file: this series only
            out.append(CheckResult(info.target, name, State.UNKNOWN,
                                   f"{what}: cannot read its history ({clean(exc, 200)})",
                                   timestamp=now))
            continue
        value, usual = float(hours.values[0]), float(hours.expected.usual[0])
        if np.isnan(usual) or np.isnan(value):
            message = (f"{what}: no usual level for {when} yet (needs 2 of the last "
                       f"{config.weeks} weeks)" if np.isnan(usual)
                       else f"{what}: less than half of the hour from {when} was measured")
            out.append(CheckResult(info.target, name, State.OK, message, timestamp=now))
            continue
        band = (f"usual {shown(usual, metric, unit)}, expected up to "
                f"{shown(float(hours.expected.high[0]), metric, unit)}")
        if hours.anomalous[0]:
            times = f"{value / usual:.1f}x" if usual > 0 else "far above"
            message = (f"{what} is {times} the usual for {when}: "
                       f"{shown(value, metric, unit)} ({band})")
            state = State.WARNING
        else:
            message = f"{what}: {shown(value, metric, unit)} for {when} ({band})"
            state = State.OK
        out.append(CheckResult(info.target, name, state, message, timestamp=now))
    return out


@dataclass
class BaselineJob:
    """What the agent schedules: `run()` in a worker thread, its checks consumed as a batch."""

    store: RrdStore
    config: BaselineConfig
    name: str = "baseline"

    @property
    def interval(self) -> float:
        return self.config.interval

    def run(self, now: float | None = None) -> list[CheckResult]:
        return check_hour(self.store, self.config, time.time() if now is None else now)
