"""The renderer at the edges, on files written through the store: series that are all unknown,
a single row, constant (also below zero), huge or vanishingly small, a window without data,
units from a plugin that are long and hostile, and local-time labels across daylight saving
changes (also where the clock jumps at midnight)."""

from __future__ import annotations

import time as time_module
from datetime import datetime
from pathlib import Path

import pytest
from PIL import Image

from graphs import render
from monitor.model import Measurement
from monitor.store import RrdStore
from monitor.text import CONTROL

STEP = 300
NOW = 1_763_880_000  # a multiple of 300


def day_values(pattern: str) -> list[tuple[int, float | None]]:
    """(time, value) of the day before NOW for one shape of series."""
    times = list(range(NOW - 86400 + STEP, NOW + 1, STEP))
    if pattern == "unknown":
        return [(t, None) for t in times]
    if pattern == "one row":
        return [(times[100], 7.0)]
    if pattern == "constant":
        return [(t, 42.0) for t in times]
    if pattern == "constant below zero":
        return [(t, -5.0) for t in times]
    if pattern == "huge":
        return [(t, 1.7e308 if i % 2 else -1.7e308) for i, t in enumerate(times)]
    if pattern == "vanishingly small":
        return [(t, 1e-320) for t in times]
    if pattern == "no data in the window":
        return [(t - 3 * 86400, 1.0) for t in times[:10]]
    raise AssertionError(pattern)


PATTERNS = ["unknown", "one row", "constant", "constant below zero", "huge", "vanishingly small",
            "no data in the window"]


@pytest.mark.parametrize("pattern", PATTERNS)
def test_every_shape_of_series_draws_its_graphs(tmp_path: Path, pattern: str) -> None:
    store = RrdStore(tmp_path / "rrd")
    rows = day_values(pattern)
    # the first sample makes the file (its start), long before the window of "no data"
    batch = [Measurement("host", "sensor", "reading", None, timestamp=rows[0][0] - 86400)]
    batch += [Measurement("host", "sensor", "reading", v, timestamp=t) for t, v in rows]
    assert store.write(batch, STEP).errors == []
    info = store.info("host", "sensor")
    assert info is not None
    renderer = render.Renderer()
    result = render.render_job(store, renderer, render.Job(info, ["day", "week"], tmp_path / "out",
                                                          NOW))
    assert result.error == "", result.error
    assert result.drawn == ["day", "week"]
    for name in ("day.png", "week.png", "spark.png"):
        with Image.open(tmp_path / "out" / name) as image:
            image.load()
            assert image.size in ((2 * render.WIDTH, 2 * render.HEIGHT),
                                  (2 * render.SPARK_WIDTH, 2 * render.SPARK_HEIGHT))


@pytest.mark.parametrize(("low", "high"), [(-5.0, -5.0), (-7.5, -2.0), (-1.7e308, 1.7e308),
                                           (0.0, 1.7e308), (0.0, 1e-320), (1e17, 1e17)])
def test_an_axis_shows_its_floor_and_any_range_without_overflow(low: float, high: float) -> None:
    """Data all below zero still has 0 on its axis (the floor every graph has); ranges beyond
    what the axis's arithmetic holds, or below it, give an axis, never an exception."""
    bottom, top, ticks = render.axis(low, high, 0.0, None, "")
    assert bottom <= max(low, -1e300) and top >= min(high, 1e300) and top >= 0.0 and bottom <= 0.0
    assert 4 <= len(ticks) <= 7 and all(len(tick) < 12 for tick in ticks), ticks


def test_a_hostile_unit_is_drawn_short_and_printable(tmp_path: Path) -> None:
    """A plugin's perfdata unit is any text: the tick labels and legend lines that carry it
    are drawn printable and bounded, each tick's number whole within the margin (the
    renderer keeps what it draws in caches)."""
    store = RrdStore(tmp_path / "rrd")
    unit = "\u202eevil\x1b[31m" + "U" * 5000
    batch = [Measurement("host", "plugin", "value", float(i % 7), unit=unit, timestamp=t)
             for i, t in enumerate(range(NOW - 86400 + STEP, NOW + 1, STEP))]
    assert store.write(batch, STEP).errors == []
    info = store.info("host", "plugin")
    assert info is not None and info.units["value"] == unit
    renderer = render.Renderer()
    result = render.render_job(store, renderer, render.Job(info, ["day"], tmp_path / "out", NOW))
    assert result.error == ""
    drawn = [text for _, text, _ in renderer.fonts._texts]
    ticks = [text for text in drawn if text[:1].isdigit()]
    assert ticks and all("evil" in text and text.endswith("…") for text in ticks), ticks
    room = (render._AX_LEFT - 5) * render.SCALE  # the margin left of the axis
    assert all(renderer.fonts.small.getlength(text) <= room for text in ticks)
    assert all(len(text) <= 80 and not CONTROL.search(text) for text in drawn)
    assert not CONTROL.search("".join(renderer.fonts._glyph_index))


def local_first_instants(start: float, end: float, new_mark) -> list[float]:  # type: ignore[no-untyped-def]
    """Every whole hour (UTC) in start..end at which `new_mark(local time)` changes from the
    hour before: an oracle for tick positions that knows nothing of how ticks are stepped."""
    first = int(start) // 3600 * 3600
    return [float(ts) for ts in range(first, int(end) + 1, 3600) if ts >= start
            and new_mark(datetime.fromtimestamp(ts)) != new_mark(datetime.fromtimestamp(ts - 3600))]


# (zone, period, window end): windows across a change of the clock
DST_CASES = [
    ("Europe/Berlin", "day", datetime(2026, 3, 29, 12).timestamp),  # 02:00 -> 03:00
    ("Europe/Berlin", "day", datetime(2026, 10, 25, 12).timestamp),  # 03:00 -> 02:00
    ("Africa/Cairo", "week", datetime(2024, 4, 30, 12).timestamp),  # Fri 26 Apr 00:00 -> 01:00
    ("Africa/Cairo", "month", datetime(2024, 5, 10, 12).timestamp),
    ("America/Havana", "week", datetime(2026, 3, 11, 12).timestamp),  # Sun 8 Mar 00:00 -> 01:00
    ("America/Santiago", "week", datetime(2026, 9, 9, 12).timestamp),  # Sun 6 Sep 00:00 -> 01:00
    ("America/Santiago", "week", datetime(2026, 4, 7, 12).timestamp),  # Sun 5 Apr 00:00 -> 23:00
]


@pytest.mark.parametrize(("zone", "period", "end_of"), DST_CASES,
                         ids=[f"{z}-{p}-{i}" for i, (z, p, _) in enumerate(DST_CASES)])
def test_time_ticks_across_daylight_saving_changes(monkeypatch, zone: str, period: str,
                                                   end_of) -> None:  # type: ignore[no-untyped-def]
    """Day graphs: a major tick at every local hour divisible by 3, as the clock shows it; week
    and month graphs: one at the first instant of every local day (also a day whose midnight
    the clock skipped), labelled with that day."""
    monkeypatch.setenv("TZ", zone)
    time_module.tzset()
    try:
        end = end_of()
        start = end - render.PERIODS[period].span
        majors, labels, minors = render.time_ticks(period, start, end)
        ticks = sorted(majors + minors)
        assert ticks == sorted(set(ticks))  # one tick per position
        if period == "day":
            assert majors == local_first_instants(start, end, lambda t: t.hour // 3)
            assert labels == [datetime.fromtimestamp(ts).strftime("%H:%M") for ts in majors]
            assert all(datetime.fromtimestamp(ts).hour % 3 == 0 for ts in majors)
        else:
            days = local_first_instants(start, end, lambda t: t.date())
            if period == "week":
                assert majors == days
                assert labels == [datetime.fromtimestamp(ts).strftime("%a %d") for ts in majors]
            else:
                assert ticks == days
                assert all(datetime.fromtimestamp(ts).weekday() == 0 for ts in majors)
    finally:
        monkeypatch.undo()
        time_module.tzset()
