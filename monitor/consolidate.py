"""Consolidated history from another tool, re-consolidated onto our archives' rows.

Other tools keep what we keep: averages and maxima over intervals that grow with age (MRTG's
rateup log, the RRA rows of MRTG's, Munin's and SmokePing's RRD files). An `Archive` is one such
list of (start, end, value) intervals for one consolidation function. `timeline` merges a
metric's archives into one sequence of disjoint intervals, taking at each moment the finest
archive that covers it (a 5-minute row where one exists, the day row only before that), and
`consolidate` turns that into the value of each row of one of our archives: the time-weighted
average, or the largest value, of what overlaps the row, if at least half of the row is known
(rrdtool's default xff). Nothing here knows about rrdtool; `monitor.store` writes the rows.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

Interval = tuple[int, int, float | None]  # (start, end, value) for the time start < t <= end


@dataclass(frozen=True, slots=True)
class Archive:
    """Rows another tool consolidated with `cf` ("AVERAGE" or "MAX"); None is unknown."""

    cf: str
    rows: Sequence[Interval]

    @property
    def resolution(self) -> int:
        """The typical row length (the median one: rateup's first row is shorter)."""
        lengths = sorted(end - start for start, end, _ in self.rows)
        return lengths[len(lengths) // 2] if lengths else 0

    def scaled(self, factor: float) -> Archive:
        """The same rows in another unit (SmokePing's lost pings out of 20 -> percent)."""
        return Archive(self.cf, [(s, e, None if v is None else v * factor) for s, e, v in self.rows])


def combine(archives: Sequence[Sequence[Archive]], how: str = "sum") -> list[Archive]:
    """Several series as one (Munin's memory "apps" + "slab" ...): archives matched by CF and
    resolution, rows by their end; a row is unknown where any part is unknown."""
    out = []
    for first in archives[0]:
        matching = [next((a for a in series if a.cf == first.cf
                          and a.resolution == first.resolution), None) for series in archives[1:]]
        if any(m is None for m in matching):
            continue
        by_end = [{end: value for _, end, value in m.rows} for m in matching]  # type: ignore[union-attr]
        rows: list[Interval] = []
        for start, end, value in first.rows:
            values = [value, *(b.get(end) for b in by_end)]
            known = None if any(v is None for v in values) else values
            rows.append((start, end, None if known is None else (
                sum(known) if how == "sum" else max(known))))  # type: ignore[arg-type]
        out.append(Archive(first.cf, rows))
    return out


def timeline(archives: Iterable[Archive], cf: str = "AVERAGE") -> list[Interval]:
    """Disjoint intervals in time order: each moment from the finest archive covering it, of
    consolidation `cf` or else AVERAGE (the MAX of a 5-minute row is its average, and a max
    of averages beats no max at all); `cf`'s own archive first at the same resolution.

    Each archive is taken as one span (its first start to its last end; unknown rows inside it
    stay unknown, as rrdtool's fetch keeps to the finest archive too); a coarser archive only
    fills the time outside the finer archives' spans."""
    taken: list[tuple[int, int]] = []  # spans already covered, disjoint, sorted
    pieces: list[Interval] = []
    usable = [a for a in archives if a.rows and a.cf in (cf, "AVERAGE")]
    for archive in sorted(usable, key=lambda a: (a.resolution, a.cf != cf)):
        rows = sorted(archive.rows)
        for start, end, value in rows:
            for part_start, part_end in _uncovered(start, end, taken):
                pieces.append((part_start, part_end, value))
        taken = _add_span(taken, rows[0][0], rows[-1][1])
    pieces.sort()
    return pieces


def _uncovered(start: int, end: int, taken: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for span_start, span_end in taken:
        if span_end <= start or span_start >= end:
            continue
        if span_start > start:
            out.append((start, span_start))
        start = max(start, span_end)
        if start >= end:
            return out
    if start < end:
        out.append((start, end))
    return out


def _add_span(taken: list[tuple[int, int]], start: int, end: int) -> list[tuple[int, int]]:
    spans = sorted([*taken, (start, end)])
    merged = [spans[0]]
    for s, e in spans[1:]:
        if s <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], e))
        else:
            merged.append((s, e))
    return merged


def consolidate(pieces: Sequence[Interval], row_ends: Sequence[int], resolution: int, cf: str,
                xff: float = 0.5) -> list[float | None]:
    """The value of each row (end - resolution, end] from the timeline `pieces`."""
    starts = [p[0] for p in pieces]
    out: list[float | None] = []
    for row_end in row_ends:
        row_start = row_end - resolution
        i = max(0, bisect_right(starts, row_start) - 1)
        known = 0.0
        weighted = 0.0
        biggest, smallest = -math.inf, math.inf
        while i < len(pieces) and pieces[i][0] < row_end:
            start, end, value = pieces[i]
            overlap = min(end, row_end) - max(start, row_start)
            if overlap > 0 and value is not None and math.isfinite(value):
                known += overlap
                weighted += value * overlap
                biggest = max(biggest, value)
                smallest = min(smallest, value)
            i += 1
        if known < resolution * (1 - xff) or known <= 0:
            out.append(None)
        elif cf == "MAX":
            out.append(biggest)
        elif cf == "MIN":
            out.append(smallest)
        else:
            out.append(weighted / known)
    return out
