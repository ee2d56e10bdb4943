"""Legend figures of one fetched column: functions over `list[float | None]` (or numpy arrays).

None (and NaN) is "unknown" and is skipped, never counted as zero: an hour without data
lowers neither the average nor the total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from monitor.store import Series

if TYPE_CHECKING:
    from monitor.store import RrdStore, SeriesInfo

Values = Sequence[float | None] | np.ndarray


def known(values: Values) -> np.ndarray:
    """The known values, in order (None and NaN dropped), as floats."""
    array = np.asarray(values, dtype=float)  # None becomes NaN
    return array[~np.isnan(array)]


def current(values: Values) -> float | None:
    """The last known value."""
    k = known(values)
    return float(k[-1]) if k.size else None


def average(values: Values) -> float | None:
    k = known(values)
    return float(k.sum()) / k.size if k.size else None


def maximum(values: Values) -> float | None:
    k = known(values)
    return float(k.max()) if k.size else None


def percentile(values: Values, pct: float = 95.0) -> float | None:
    """Nearest-rank percentile, the way transit is billed: sort the samples, drop the top
    (100 - pct) %, take the highest remaining one (always a measured value, never interpolated)."""
    k = known(values)
    if not k.size:
        return None
    rank = max(1, math.ceil(pct / 100.0 * k.size))
    return float(np.partition(k, rank - 1)[rank - 1])


def total(values: Values, step: float) -> float | None:
    """Rate x time summed over the known samples (octets/s -> octets transferred)."""
    k = known(values)
    return float(k.sum()) * step if k.size else None


@dataclass(frozen=True)
class Summary:
    current: float | None
    average: float | None
    maximum: float | None
    p95: float | None
    total: float | None

    def as_dict(self) -> dict[str, float | None]:
        return dict(self.__dict__)  # dataclasses.asdict's deep copy costs more than the figures


def summarize(values: Values, step: float) -> Summary:
    k = known(values)  # once: the legend of a month of 5-minute rows has 8,928 per line
    return Summary(current(k), average(k), maximum(k), percentile(k, 95.0), total(k, step))


# -- a period's figures from an RRD file -------------------------------------------------------

BILLING_SPAN = 31 * 86400  # periods up to this long get their figures from base-step rows


def window(series: Series, start: float, end: float) -> Series:
    """The rows of `series` for start < t <= end (rrdtool's fetch adds one past each edge)."""
    rows = len(next(iter(series.columns.values()), []))
    # Row i is at series.start + (i + 1) * step.
    first = min(rows, max(0, math.floor((start - series.start) / series.step)))
    last = min(rows, max(first, math.floor((end - series.start) / series.step)))
    return Series(series.start + first * series.step, series.start + last * series.step,
                  series.step, {m: v[first:last] for m, v in series.columns.items()})


BILLING_STEP = 300  # transit is billed on 5-minute samples


def period_rows(store: RrdStore, info: SeriesInfo, start: float, end: float,
                fetched: Series | None = None) -> Series:
    """The file's rows for start < t <= end (every sample for a day or two, 5-minute rows
    for longer periods, the base step where that is coarser) where the
    archives keep them (31+ days by default), else the finest archive that covers the period.
    The site's legends and tables and the digests take their figures (`summarize`: the billing
    95th, the peak of 5-minute samples, the total) from these rows, so both show the same
    numbers for the same period. `fetched`: the same fetch or a longer one, already made (the
    day graph's; the month's 5-minute rows for the week), used when it has the step wanted."""
    # A day has every sample (the default archives keep 2 days at the base step); longer
    # periods the 5-minute rows (a 1-minute step would make a month 44,640 rows).
    resolution = info.step if end - start <= 2 * 86400 else max(info.step, BILLING_STEP)
    if fetched is None or fetched.step != resolution:
        fetched = store.fetch_path(info, start, end, resolution)
    return window(fetched, start, end)
