"""Legend figures of one fetched column: pure functions over `list[float | None]`.

None (and NaN) is "unknown" and is skipped, never counted as zero: an hour without data
lowers neither the average nor the total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

from monitor.store import Series

if TYPE_CHECKING:
    from monitor.store import RrdStore, SeriesInfo

Values = Sequence[float | None]


def known(values: Values) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def current(values: Values) -> float | None:
    """The last known value."""
    for v in reversed(values):
        if v is not None and not math.isnan(v):
            return v
    return None


def average(values: Values) -> float | None:
    k = known(values)
    return math.fsum(k) / len(k) if k else None


def maximum(values: Values) -> float | None:
    k = known(values)
    return max(k) if k else None


def percentile(values: Values, pct: float = 95.0) -> float | None:
    """Nearest-rank percentile, the way transit is billed: sort the samples, drop the top
    (100 - pct) %, take the highest remaining one (always a measured value, never interpolated)."""
    k = sorted(known(values))
    if not k:
        return None
    rank = max(1, math.ceil(pct / 100.0 * len(k)))
    return k[rank - 1]


def total(values: Values, step: float) -> float | None:
    """Rate x time summed over the known samples (octets/s -> octets transferred)."""
    k = known(values)
    return math.fsum(k) * step if k else None


@dataclass(frozen=True)
class Summary:
    current: float | None
    average: float | None
    maximum: float | None
    p95: float | None
    total: float | None

    def as_dict(self) -> dict[str, float | None]:
        return asdict(self)


def summarize(values: Values, step: float) -> Summary:
    return Summary(current(values), average(values), maximum(values), percentile(values, 95.0),
                   total(values, step))


# -- a period's figures from an RRD file -------------------------------------------------------

BILLING_SPAN = 31 * 86400  # periods up to this long get their figures from base-step rows


def window(series: Series, start: float, end: float) -> Series:
    """The rows of `series` for start < t <= end (rrdtool's fetch adds one past each edge)."""
    stamps = series.timestamps
    first = next((i for i, t in enumerate(stamps) if t > start), len(stamps))
    last = next((i for i in range(len(stamps) - 1, -1, -1) if stamps[i] <= end), -1) + 1
    last = max(first, last)
    return Series(series.start + first * series.step, series.start + last * series.step,
                  series.step, {m: v[first:last] for m, v in series.columns.items()})


def period_rows(store: RrdStore, info: SeriesInfo, start: float, end: float,
                fetched: Series | None = None) -> Series:
    """The file's finest rows for start < t <= end: its base-step (5-minute) samples where the
    archives keep them (31+ days by default), else the finest archive that covers the period.
    The site's legends and tables and the digests take their figures (`summarize`: the billing
    95th, the peak of 5-minute samples, the total) from these rows, so both show the same
    numbers for the same period. `fetched`: the same fetch, already made (the day graph's)."""
    return window(fetched or store.fetch_path(info, start, end), start, end)
