"""Legend figures of one series: current, average, maximum, 95th percentile, total (pure).

Unknown values (None or NaN) are gaps: they count for nothing, neither as zero nor as a sample.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Stats:
    current: float | None  # the last known value
    average: float | None  # mean of the known values
    maximum: float | None
    p95: float | None  # nearest-rank 95th percentile, as ISPs bill it
    total: float | None  # integral over time (value * step summed); a rate gives an amount
    known: int  # how many values were known
    count: int  # how many values there were

    def as_dict(self) -> dict:
        return asdict(self)


def _known(values: Sequence[float | None]) -> list[float]:
    return [v for v in values if v is not None and not math.isnan(v)]


def percentile(values: Sequence[float | None], q: float = 95.0) -> float | None:
    """Nearest-rank percentile: the smallest value with at least q % of samples at or below."""
    known = sorted(_known(values))
    if not known:
        return None
    rank = max(1, math.ceil(q / 100.0 * len(known)))
    return known[rank - 1]


def summarize(values: Sequence[float | None], step: float) -> Stats:
    known = _known(values)
    if not known:
        return Stats(None, None, None, None, None, 0, len(values))
    current = next(v for v in reversed(values) if v is not None and not math.isnan(v))
    total = math.fsum(known) * step
    return Stats(current, math.fsum(known) / len(known), max(known), percentile(known),
                 total, len(known), len(values))


def scaled(stats: Stats, factor: float) -> Stats:
    """The same figures in another unit (octets/s -> bits/s: factor 8)."""
    f = lambda v: None if v is None else v * factor  # noqa: E731
    return Stats(f(stats.current), f(stats.average), f(stats.maximum), f(stats.p95),
                 f(stats.total), stats.known, stats.count)


_PREFIXES = [(1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"), (1.0, ""), (1e-3, "m"), (1e-6, "µ")]


def si(value: float | None, unit: str = "", digits: int = 3) -> str:
    """12345678 b/s -> "12.3 Mb/s"; 0.0123 s -> "12.3 ms"; None -> "-"."""
    if value is None or math.isnan(value):
        return "-"
    if value == 0:
        return f"0 {unit}".strip()
    magnitude = abs(value)
    # Percentages and unitless counts below one keep their plain form: "0.5 %", not "500 m%".
    small_ok = unit in ("s",)
    factor, prefix = next(
        (f, p) for f, p in _PREFIXES if magnitude >= f * 0.9995 or (f == 1.0 and not small_ok)
    ) if magnitude >= 1e-6 * 0.9995 or not small_ok else _PREFIXES[-1]
    if unit == "%":
        factor, prefix = 1.0, ""
    scaled_value = value / factor
    text = f"{scaled_value:.{digits}g}"
    if "e" in text:
        text = f"{scaled_value:.1f}"
    return f"{text} {prefix}{unit}".strip()
