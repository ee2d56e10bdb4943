"""The usual level of a series for each hour of the week, and what lies far outside it.

Why not rrdtool's Holt-Winters archives (HWPREDICT/SEASONAL/DEVPREDICT/FAILURES): they must be
in a file from its creation (every existing file would need `rrdtool tune` or a dump/restore
migration), they learn one season (a week at a 5-minute step is a 2016-row season that adapts
slowly, with smoothing constants nobody can explain in an alert mail), and a burst contaminates
the prediction it is judged against. This is the same idea computed from what the store already
keeps (the 2-hour averages of the last 9 weeks), robust and easy to say in a sentence:

- the usual level at time t is the median of the series at t - 1 week, t - 2 weeks, ... t - W
  weeks (the same hour of the same weekday; at least 2 of them known);
- its spread is the median absolute deviation of those values (x 1.4826, a standard deviation
  for normal noise), at least 10 % of the usual level so a flat series has a band at all;
- the expected band is usual +- 3 spreads (never below 0);
- a value is anomalous when it is at least `factor` times the usual level, above the band, and
  above 5 % of the series' highest level of those weeks (so 0.01 after a usual 0.001 is not
  "10x the usual"; a series that was 0 all those weeks has no scale and is never anomalous).
  Only the high side is judged: traffic far below the usual is a holiday or an outage, which
  other checks catch.
The median of several weeks ignores one bad week: last Tuesday's burst does not raise this
Tuesday's expectation. (Weeks are 604,800 s: across a daylight-saving change the same local hour
is one hour off for the weeks that straddle it.)

Pure numpy (and which series have a baseline, from the config), but for `weekly_history`, the
one fetch of those weeks that both the hourly job and the graphs make.
"""

from __future__ import annotations

import fnmatch
import warnings
from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from monitor.config import BaselineConfig, BaselineSeries
from monitor.store import RrdStore, SeriesInfo

WEEK = 7 * 86400
HISTORY_STEP = 7200  # the store's 2-hour archive (2h:9w by default)
MAD_TO_SIGMA = 1.4826
BAND_SPREADS = 3.0
MIN_SPREAD = 0.10  # of the usual level
FLOOR_OF_PEAK = 0.05


@dataclass(frozen=True)
class Band:
    """Per requested time: the usual level and the expected band (NaN: not enough history)."""

    usual: np.ndarray
    low: np.ndarray
    high: np.ndarray
    floor: float  # values below this are never anomalous


def band(history: np.ndarray, start: float, step: float, times: np.ndarray, weeks: int) -> Band:
    """The band at `times` (epoch seconds) from `history`, whose value i covers
    (start + i*step, start + (i+1)*step] (the store's Series layout)."""
    values = np.asarray(history, dtype=float)
    times = np.asarray(times, dtype=float)
    back = times[:, None] - WEEK * np.arange(1, weeks + 1)[None, :]
    index = np.floor((back - start - 1e-9) / step).astype(np.int64)
    inside = (index >= 0) & (index < values.size)
    same_hour = np.where(inside, values[np.clip(index, 0, max(values.size - 1, 0))]
                         if values.size else np.nan, np.nan)
    enough = np.sum(~np.isnan(same_hour), axis=1) >= 2
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row is NaN on purpose
        usual = np.nanmedian(same_hour, axis=1)
        mad = np.nanmedian(np.abs(same_hour - usual[:, None]), axis=1) * MAD_TO_SIGMA
    usual = np.where(enough, usual, np.nan)
    spread = np.maximum(mad, MIN_SPREAD * usual)
    low = np.maximum(usual - BAND_SPREADS * spread, 0.0)
    high = usual + BAND_SPREADS * spread
    known = values[~np.isnan(values)]
    peak = float(known.max()) if known.size else 0.0
    floor = FLOOR_OF_PEAK * peak if peak > 0 else float("inf")  # a series never above 0: no scale
    return Band(usual, low, high, floor)


def weekly_history(store: RrdStore, info: SeriesInfo, metric: str, start: float, end: float,
                   weeks: int) -> tuple[np.ndarray, int, int]:
    """(values, start, step) of the 2-hour averages from `weeks` weeks before `start` to `end`,
    for `band`.

    rrdtool fetch prefers an archive that covers the whole range to a finer one that covers
    part of it: asked for more weeks than the 2-hour archive keeps (weeks = 9 with 2h:9w, a
    week graph with 8 weeks, shorter [storage] archives) it answers with daily averages, and
    "the usual for Tuesday 04:00" becomes Tuesday's average. So the range shrinks a week at a
    time until an archive of 2 hours or finer answers: the band has fewer weeks, not the wrong
    hours (none at all without such an archive)."""
    for back in range(weeks, 0, -1):
        series = store.fetch_path(info, start - back * WEEK - HISTORY_STEP, end, HISTORY_STEP)
        if series.step <= HISTORY_STEP:
            return np.array(series.columns.get(metric, []), dtype=float), series.start, series.step
    return np.array([], dtype=float), int(start), HISTORY_STEP


def anomalous(values: np.ndarray, expected: Band, factor: float) -> np.ndarray:
    """True where a value is far above its usual level (see the module's rules)."""
    values = np.asarray(values, dtype=float)
    with np.errstate(invalid="ignore"):
        return ((values >= factor * expected.usual) & (values > expected.high)
                & (values > expected.floor) & ~np.isnan(expected.usual))


def selection(config: BaselineConfig, info: SeriesInfo, metric: str) -> BaselineSeries | None:
    """The [[baseline.series]] entry for one metric of one file, if it is enabled."""
    for entry in config.series:
        if (fnmatch.fnmatchcase(info.target, entry.target)
                and fnmatch.fnmatchcase(info.instance, entry.instance)
                and fnmatch.fnmatchcase(metric, entry.metric)):
            return entry if entry.enabled else None
    return None


def selected(config: BaselineConfig, series: Iterable[SeriesInfo]
             ) -> list[tuple[SeriesInfo, str, float]]:
    """(file, metric, factor) for every metric with a baseline."""
    out = []
    for info in series:
        for metric in info.metrics:
            entry = selection(config, info, metric)
            if entry is not None:
                out.append((info, metric, entry.factor or config.factor))
    return out
