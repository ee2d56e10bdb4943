"""Draw day/week/month/year graphs and sparklines from fetched series (matplotlib, Agg).

Speed: a plain matplotlib figure costs ~100 ms, ten times `rrdtool graph`. So:
- each `Renderer` keeps one figure; the static part (frame, grid, time axis) is identical for
  every graph of one period in one site run, so it is drawn once per (period, window, number of
  y divisions) and kept as a pixel background; a graph restores it and draws only its data,
  as paths in pixels straight onto Agg (`_Plot`: no artists, no use of the axes' limits). The
  y axis is normalised to 0..1 with round steps, which is what makes the grid part of the
  background;
- labels, titles and legends are drawn by Pillow onto the finished pixels from caches of
  rendered text (matplotlib lays out and rasterises every glyph on each draw, ~8 ms a label);
- PNG encoding uses one "Up" filter computed by numpy plus ISA-L deflate, ~5x faster than
  Pillow's five-filter search at the same size.
The result: ~10-11 ms of CPU per 1440x600 graph including the fetch, its figures, the file,
its share of the sparklines and pages (bench/graphs_bench.py), about what `rrdtool graph` needs
for a 620x200 one and a third of what it needs at the same pixels (--zoom 2).

Names in titles come from devices: they are drawn as plain text (no TeX, no format strings)
with undecodable bytes and control characters replaced.
"""

from __future__ import annotations

import functools
import math
import struct
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import numpy as np
from isal import isal_zlib
from matplotlib import font_manager
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.path import Path as DrawPath
from matplotlib.transforms import IdentityTransform
from PIL import Image, ImageDraw, ImageFont

from graphs import stats
from monitor import seasonal, units
from monitor.files import PUBLIC_MODE, atomic_write
from monitor.model import alert_range
from monitor.store import RrdStore, Series, SeriesInfo
from monitor.text import CONTROL

# -- periods -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Period:
    name: str
    span: int  # seconds shown
    resolution: int | None  # fetch resolution; None = the file's base step
    redraw: int  # seconds between redraws (0: every site run)
    label: str


PERIODS: dict[str, Period] = {
    "day": Period("day", 86400, None, 0, "last 24 hours"),
    "week": Period("week", 7 * 86400, 1800, 1800, "last 7 days"),
    "month": Period("month", 31 * 86400, 7200, 7200, "last 31 days"),
    "year": Period("year", 365 * 86400, 86400, 86400, "last 365 days"),
}

# -- what kind of graph a series gets (the naming contract) -----------------------------------

TRAFFIC, LATENCY, PERCENT, GENERIC = "traffic", "latency", "percent", "generic"

_SUFFIX_UNITS = {"_octets": "B", "_bytes": "B", "_seconds": "s", "_percent": "%", "_bps": "b/s",
                 "_days": "d", "_packets": "pkt/s", "_errors": "/s", "_discards": "/s"}


def classify(metrics: Iterable[str], thresholds: Iterable[str] = ()) -> str:
    """The graph a file gets from its metrics; `thresholds`: the metrics with limits (a
    plugin's perfdata with warn/crit is drawn as its own values, not as the plugin's run time)."""
    names = set(metrics)
    if {"in_octets", "out_octets"} <= names:
        return TRAFFIC
    if "response_seconds" in names and not set(thresholds) - {"response_seconds"}:
        return LATENCY
    if any(m.endswith("_percent") for m in names):
        return PERCENT
    return GENERIC


def unit_of(metric: str, stored: dict[str, str] | None = None) -> str:
    """The unit `metric` is drawn in: its stored unit (a counted one as its rate, "msg" ->
    "msg/h"), else the one its name implies."""
    if stored and stored.get(metric) and stored[metric] not in ("", "%"):
        return units.rate_unit(stored[metric])
    for suffix, unit in _SUFFIX_UNITS.items():
        if metric.endswith(suffix):
            return unit
    return (stored or {}).get(metric, "")


def display(text: str, limit: int = 0) -> str:
    """A device-supplied name made printable: undecodable bytes, control characters, zero-width
    and bidirectional overrides become U+FFFD, optionally cut to `limit` characters."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    if not text.isprintable():  # controls, and bidi overrides that would reorder a row
        text = CONTROL.sub(lambda m: "\ufffd" * len(m.group()), text)
    if limit and len(text) > limit:
        text = text[: limit - 1] + "…"
    return text


format_value = units.format_value  # the one formatter of the site, the mail and messages


# -- graph content -------------------------------------------------------------------------------

PALETTE = ["#1f5fbf", "#d9822b", "#2e9e4f", "#8e44ad", "#c0392b", "#138d90", "#7f8c8d"]
IN_FILL, IN_EDGE, OUT_LINE = units.IN_FILL, units.IN_EDGE, units.OUT_LINE
USUAL_FILL = "#d4dcc4"  # the seasonal baseline's expected band
BAND_SPAN = 8 * 86400  # day and week graphs: an hour-of-the-week band means something there
LATENCY_LINE, LATENCY_FILL, LOSS = "#6a3fb5", "#cbb8ec", "#d62728"
P95_MARK = "#c0392b"
OUTAGES = {"on_battery": "share of each interval on battery (right axis)",
           "session_down": "share of each interval the session was down (right axis)"}
# loss (percent) up to which a latency line has this colour
LOSS_COLORS = ((0.0, "#1a9e3a"), (5.0, "#1f77d0"), (10.0, "#7b3fd0"), (25.0, "#d0459b"),
               (100.0, "#d62728"))
_LOSS_LIMITS = np.array([limit for limit, _ in LOSS_COLORS[:-1]])
_LOSS_RGBA = np.array([to_rgba(color) for _, color in LOSS_COLORS])


@dataclass
class Layer:
    label: str
    values: np.ndarray  # display units (bits/s, seconds, percent, ...)
    style: str  # "area", "line", "bars", "band" (low..values), "loss-line" (coloured by loss)
    color: str
    right: bool = False  # on the secondary 0-100 % axis (packet loss)
    low: np.ndarray | None = None  # a band's lower edge
    loss: np.ndarray | None = None  # a loss-line's loss (percent) per sample


@dataclass
class LegendRow:
    label: str
    color: str
    text: str


@dataclass
class Graph:
    kind: str
    unit: str
    layers: list[Layer]
    legend: list[LegendRow]
    summary: dict[str, dict[str, float | None]]  # label -> stats, for the HTML table
    units: dict[str, str]  # label -> unit of its figures
    floor: float | None = 0.0  # lowest value the axis shows (None: from the data)
    ceiling: float | None = None  # minimum top of the axis (100 for percentages)
    marks: list[tuple[float, str]] = field(default_factory=list)  # (value, colour): dashed lines


def _column(series: Series, metric: str, scale: float = 1.0) -> np.ndarray:
    values = np.array(series.columns.get(metric, []), dtype=float)  # None becomes NaN
    return values * scale if scale != 1.0 else values


def _summary(values: np.ndarray, step: float) -> dict[str, float | None]:
    return stats.summarize(values, step).as_dict()


def _figures(series: Series, metric: str, scale: float = 1.0) -> dict[str, float | None]:
    return _summary(_column(series, metric, scale), series.step)


def _legend_text(s: dict[str, float | None], unit: str, with_p95: bool, total_unit: str = "",
                 speed: float | None = None) -> str:
    def value(key: str) -> str:
        text = f"{format_value(s[key], unit):>11}"
        return text + (f" {of_speed(s[key], speed):>4}" if speed else "")

    parts = [f"now {value('current')}", f"avg {value('average')}", f"max {value('maximum')}"]
    if with_p95:
        parts.append(f"95% {value('p95')}")
    if total_unit:
        parts.append(f"total {format_value(s['total_display'], total_unit):>9}")
    return " ".join(parts)


def of_speed(bits: float | None, speed: float | None) -> str:
    """A rate as a share of the link's speed, as MRTG prints it beside every figure: "48%"."""
    if bits is None or not speed:
        return ""
    return f"{100.0 * bits / speed:.0f}%"


def link_speed(rows: Series) -> float | None:
    """The interface's speed in bit/s (its last known speed_bps of the period), if stored."""
    return stats.current(rows.columns.get("speed_bps", [])) or None


def loss_color(loss: float) -> str:
    """SmokePing's idea: the latency line's colour says how many probes were lost."""
    for limit, color in LOSS_COLORS:
        if loss <= limit:
            return color
    return LOSS_COLORS[-1][1]


WARNING_LINE, CRITICAL_LINE = units.WARNING_LINE, units.CRITICAL_LINE
# A limit further above the highest value than this many times is named in the legend but not
# drawn: including it in the axis would flatten the data into the bottom pixels.
LIMIT_REACH = 3.0


def describe_range(limits: tuple[float, float, bool], unit: str) -> str:
    """A Nagios range as a person says it, in the units convention: "above 2.00 s"."""
    start, end, inside = limits
    low, high = (format_value(v, unit) if math.isfinite(v) else "" for v in (start, end))
    if inside:
        if math.isinf(start):
            return f"at or below {high}"
        return f"at or above {low}" if math.isinf(end) else f"from {low} to {high}"
    if math.isinf(start):
        return f"above {high}"
    return f"below {low}" if math.isinf(end) else f"outside {low} to {high}"


def limit_lines(info: SeriesInfo, drawn: list[tuple[str, str]], unit: str, layers: list[Layer]
                ) -> tuple[list[tuple[float, str]], list[LegendRow]]:
    """The warning (yellow) and critical (red) limits of the drawn metrics ((metric, label)) as
    horizontal lines and one legend row each."""
    if not info.thresholds:
        return [], []
    known = [layer.values[~np.isnan(layer.values)] for layer in layers if not layer.right]
    highest = max((float(np.abs(v).max()) for v in known if v.size), default=0.0)
    marks: list[tuple[float, str]] = []
    rows: list[LegendRow] = []
    for name, which, color in (("Warning", "warning", WARNING_LINE),
                               ("Critical", "critical", CRITICAL_LINE)):
        labels_of: dict[str, list[str]] = {}  # "above 2.00" -> the labels it is for
        for metric, label in drawn:
            limits = alert_range(getattr(info.thresholds.get(metric), which, None))
            if limits is None:
                continue
            edges = [edge for edge in limits[:2] if math.isfinite(edge)]
            shown = [e for e in edges if highest == 0 or abs(e) <= LIMIT_REACH * highest]
            marks.extend((edge, color) for edge in shown if (edge, color) not in marks)
            text = describe_range(limits, unit) + ("" if len(shown) == len(edges)
                                                    else " (off the scale)")
            labels_of.setdefault(text, []).append(display(label, 20))
        if labels_of:
            parts = [text if len(drawn) == 1 else f"{', '.join(labels)} {text}"
                     for text, labels in labels_of.items()]
            rows.append(LegendRow(name, color, display("; ".join(parts), 90)))
    return marks, rows


def with_limits(legend: list[LegendRow], limits: list[LegendRow]) -> list[LegendRow]:
    """The limit rows where the legend's first rows are, so the image always shows them (the
    rows it has no room for are in the page's table)."""
    keep = max(1, _LEGEND_ROWS - len(limits))
    return legend[:keep] + limits + legend[keep:]


def build_graph(info: SeriesInfo, series: Series, rows: Series | None = None) -> Graph:
    """Turn fetched columns into layers (from `series`), legend rows and summary figures (from
    `rows`, the period's finest rows, see stats.period_rows; default `series`), with the
    metrics' warning and critical limits (SeriesInfo.thresholds) as lines."""
    kind = classify(info.metrics, info.thresholds)
    rows = rows or series
    if kind == TRAFFIC:
        layers, legend, summary, units = [], [], {}, {}
        speed = link_speed(rows)
        for label, metric, style, color in (("In", "in_octets", "area", IN_FILL),
                                            ("Out", "out_octets", "line", OUT_LINE)):
            bits = _column(series, metric, 8.0)
            s = _figures(rows, metric, 8.0)
            octets_total = s["total"] / 8.0 if s["total"] is not None else None
            s["total"] = octets_total  # bytes transferred, not bits
            layers.append(Layer(label, bits, style, color))
            legend.append(LegendRow(label, IN_EDGE if style == "area" else color, _legend_text(
                dict(s, total_display=octets_total), "b/s", True, "B", speed)))
            summary[label] = s
            units[label] = "b/s"
        if speed:
            summary["Link speed"] = {"current": speed}
            units["Link speed"] = "b/s"
        for metric in info.metrics:  # errors, discards, status: the table and the port list
            if metric not in ("in_octets", "out_octets", "speed_bps"):
                summary[metric], units[metric] = _figures(rows, metric), unit_of(metric, info.units)
        # The billing line (Cacti, LibreNMS): the higher of the two directions' 95th.
        p95 = max((s["p95"] for s in (summary["In"], summary["Out"]) if s["p95"] is not None),
                  default=None)
        marks = [(p95, P95_MARK)] if p95 else []
        if p95:
            legend.append(LegendRow("95th", P95_MARK, f"    {format_value(p95, 'b/s'):>11}"
                                    + (f" {of_speed(p95, speed):>4}" if speed else "")
                                    + f"  (the higher direction's, {_rows_text(rows.step)})"))
        return Graph(kind, "b/s", layers, legend, summary, units, marks=marks)
    if kind == LATENCY:
        rt = _column(series, "response_seconds")
        s = _figures(rows, "response_seconds")
        s["total"] = None
        loss = _column(series, "loss_percent") if "loss_percent" in info.metrics else None
        layers, legend = [], []
        band = {"rtt_min_seconds", "rtt_max_seconds"} <= info.metrics.keys()
        if band:
            # SmokePing's picture: the spread of the probes as a band, the average on top.
            layers.append(Layer("min-max", _column(series, "rtt_max_seconds"), "band",
                                LATENCY_FILL, low=_column(series, "rtt_min_seconds")))
        if loss is not None:
            layers.append(Layer("Response", rt, "loss-line", LATENCY_LINE, loss=loss))
        else:
            layers.append(Layer("Response", rt, "area", LATENCY_LINE))
        legend.append(LegendRow("Response", LATENCY_LINE,
                                _legend_text(dict(s, total_display=None), "s", True)))
        summary, units = {"Response": s}, {"Response": "s"}
        if band:
            legend.append(LegendRow("min-max", LATENCY_FILL, "fastest to slowest probe of each "
                                    "interval"))
        if loss is not None:
            ls = _figures(rows, "loss_percent")
            ls["total"] = None
            layers.append(Layer("Loss", loss, "bars", LOSS, right=True))
            legend.append(LegendRow("Loss", LOSS, _legend_text(dict(ls, total_display=None), "%", False)))
            summary["Loss"], units["Loss"] = ls, "%"
            legend.append(LegendRow("colour", LOSS_COLORS[0][1], "of the line by loss: green 0 %, "
                                    "blue <= 5 %, purple <= 10 %, pink <= 25 %, red more"))
        for metric in ("rtt_min_seconds", "rtt_max_seconds"):
            if metric in info.metrics:
                summary[metric], units[metric] = _figures(rows, metric), "s"
        marks, limits = limit_lines(info, [("response_seconds", "Response")], "s", layers)
        return Graph(kind, "s", layers, with_limits(legend, limits), summary, units, marks=marks)
    if kind == PERCENT:
        metrics = [m for m in info.metrics if m.endswith("_percent")]
        unit, floor, ceiling = "%", 0.0, 100.0
    else:
        # Mixed units cannot share an axis: draw the largest group of one unit; the page's
        # table still lists every metric.
        groups: dict[str, list[str]] = {}
        for m in info.metrics:
            groups.setdefault(unit_of(m, info.units), []).append(m)
        # (the group of the metrics with limits first: those are what the lines are for)
        unit, metrics = max(groups.items(), key=lambda kv: (
            bool(set(kv[1]) & info.thresholds.keys()), len(kv[1]))) if groups else ("", [])
        floor, ceiling = 0.0, None
    layers, legend, summary, units = [], [], {}, {}
    for i, metric in enumerate(metrics[: len(PALETTE)]):
        values = _column(series, metric)
        s = _figures(rows, metric)
        color = PALETTE[i]
        style = "area" if i == 0 and kind == PERCENT else "line"
        layers.append(Layer(metric, values, style, color))
        legend.append(LegendRow(metric, color, _legend_text(dict(s, total_display=None), unit, False)))
        summary[metric], units[metric] = s, unit
    # A 1/0 outage series (a UPS on battery, a BGP session down) shades its share of each
    # interval on the right-hand 0-100 % axis, as packet loss does: the graph of a UPS's
    # charge or a peer's prefixes shows when the power or the session was out.
    for metric, words in OUTAGES.items():
        if metric in info.metrics and metric not in metrics:
            layers.append(Layer(metric, _column(series, metric, 100.0), "bars", LOSS, right=True))
            legend.append(LegendRow(metric, LOSS, words))
    # Every metric of the file goes into the table, drawn or not.
    for metric in info.metrics:
        if metric not in summary:
            summary[metric], units[metric] = _figures(rows, metric), unit_of(metric, info.units)
    drawn = [(metric, metric) for metric in metrics[: len(PALETTE)]]
    marks, limits = limit_lines(info, drawn, unit, layers)
    return Graph(kind, unit, layers, with_limits(legend, limits), summary, units, floor, ceiling,
                 marks=marks)


# -- axis scaling --------------------------------------------------------------------------------

_NICE = (1.0, 2.0, 2.5, 5.0)
# Values beyond this magnitude are drawn at the axis's edge: its arithmetic would overflow
# (a step of 2.5e308 is infinite). A span below the smallest one is no span at all (its
# logarithm is that of 0 below 5e-324).
_AXIS_REACH, _SMALLEST_SPAN = 1e300, 1e-300


def nice_axis(
    low: float, high: float, floor: float | None, ceiling: float | None
) -> tuple[float, float, int]:
    """(bottom, top, divisions) with 3..6 divisions of a round step (1, 2, 2.5, 5 x 10^k);
    the axis always shows `floor` (below data that is all negative too) and `ceiling`."""
    if floor is not None:
        low, high = min(floor, low), max(floor, high)
    if ceiling is not None:
        high = max(ceiling, high)
    low, high = (min(max(v, -_AXIS_REACH), _AXIS_REACH) for v in (low, high))
    if not (math.isfinite(low) and math.isfinite(high)) or not high - low >= max(
            _SMALLEST_SPAN, 1e-9 * max(abs(low), abs(high))):
        # No span (one value, or float noise around it): one above it, or a millionth of it
        # where one is below the doubles' precision.
        low = low if math.isfinite(low) else 0.0
        high = low + max(1.0, abs(low) / 1e6)
    span = high - low
    best: tuple[float, float, int] | None = None
    exponent = math.floor(math.log10(span / 6.0))
    for e in (exponent, exponent + 1):
        for base in _NICE:
            step = base * 10.0**e
            bottom = math.floor(low / step + 1e-9) * step
            top = math.ceil(high / step - 1e-9) * step
            divisions = round((top - bottom) / step)
            if 3 <= divisions <= 6 and (best is None or top - bottom < best[1] - best[0]):
                best = (bottom, top, divisions)
    if best is None:  # e.g. a span that is 2 steps of the next decade
        step = 10.0 ** (exponent + 1)
        bottom = math.floor(low / step) * step
        divisions = max(3, math.ceil((high - bottom) / step))
        best = (bottom, bottom + divisions * step, divisions)
    return best


def axis(low: float, high: float, floor: float | None, ceiling: float | None, unit: str
         ) -> tuple[float, float, list[str]]:
    """(bottom, top, tick labels) of a y axis: round steps in the unit shown (GiB for bytes,
    Mbit/s for bits, days for long durations), every label in that one unit, with only the
    decimals the step needs ("200 ms", "2.5 Gbit/s", never "200.0 ms")."""
    factor, shown = units.scale_for(max(abs(low), abs(high), abs(ceiling or 0.0)), unit)
    scaled = lambda v: None if v is None else v / factor  # noqa: E731
    bottom, top, divisions = nice_axis(low / factor, high / factor, scaled(floor), scaled(ceiling))
    step = (top - bottom) / divisions
    if not _whole(step):
        # A step below one of the unit shown: the unit of the step's size, if the step is
        # whole in it and the top stays a number of at most four digits ("200 bit/s", not
        # "0.2 kbit/s"; "250 ms", not "0.25 s"; but "2.5 Gbit/s", not "2500 Mbit/s").
        finer, finer_shown = units.scale_for(step * factor, unit)
        if (finer < factor and _whole(step * factor / finer)
                and max(abs(bottom), abs(top)) * factor / finer <= 1000 * (1 + 1e-9)):
            bottom, top, step = (v * factor / finer for v in (bottom, top, step))
            factor, shown = finer, finer_shown
    decimals = next(d for d in range(7) if d == 6 or _whole(step * 10**d))
    labels = [f"{_tick_number(bottom + i * step, decimals)} {shown}".rstrip()
              for i in range(divisions + 1)]
    return bottom * factor, top * factor, labels


def _whole(value: float) -> bool:
    return abs(value - round(value)) <= 1e-6 * max(1.0, abs(value))


def _tick_number(value: float, decimals: int) -> str:
    """A tick's number with the decimals it has, not the step's: "0", "2.5", "5", "7.5"."""
    if abs(value) >= 1e15:  # (no unit prefix goes this far: not a row of 16 digits)
        return f"{value:.3g}"
    text = f"{value:.{decimals}f}"
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return "0" if text == "-0" else text


def y_axis(graph: Graph) -> tuple[float, float, list[str]]:
    """(bottom, top, tick labels) of a graph's left axis: its drawn data and limit lines."""
    left = [layer for layer in graph.layers if not layer.right]
    known = [v for v in (layer.values[~np.isnan(layer.values)] for layer in left) if v.size]
    if graph.marks:  # limit lines are in view (limit_lines left out the far ones)
        known.append(np.array([value for value, _ in graph.marks]))
    low = float(min(v.min() for v in known)) if known else 0.0
    high = float(max(v.max() for v in known)) if known else 0.0
    if graph.kind == TRAFFIC and high <= 0:
        high = 1000.0  # an idle link: 0..1000 bit/s rather than 0..1 bit/s
    return axis(low, high, graph.floor, graph.ceiling, graph.unit)


# -- time axis (local time) ----------------------------------------------------------------------


def _resolved(wall: datetime) -> datetime:
    """A local wall-clock time as an instant: the first of the two where the clock went back,
    the moment the clock jumped where it skipped this time (of the two offsets that could
    apply, the one that lands after the jump)."""
    t = wall.replace(fold=0).astimezone()
    if t.replace(tzinfo=None) == wall:
        return t
    return max(t, wall.replace(fold=1).astimezone())


def time_ticks(period: str, start: float, end: float) -> tuple[list[float], list[str], list[float]]:
    """Major tick positions and labels, and minor positions, at local-time boundaries."""
    wall_start = datetime.fromtimestamp(start)  # local wall-clock time (naive)
    ticks: dict[float, tuple[bool, str]] = {}  # position -> (major, label)

    def walk(first: datetime, advance, label, major) -> None:  # type: ignore[no-untyped-def]
        # The wall-clock times are stepped, each resolved to the UTC offset in force then:
        # stepping resolved times would carry a skipped hour into every later tick (where
        # daylight saving starts at midnight, as in Cairo, Havana or Santiago, a week's day
        # ticks would all fall at 01:00 and lose their labels). A wall time that does not
        # exist lands where the clock jumped to, with the one that does if both are there.
        wall = first
        while True:
            t = _resolved(wall)
            ts = t.timestamp()
            if ts > end:
                break
            if ts >= start and not ticks.get(ts, (False, ""))[0]:
                ticks[ts] = (major(wall), label(t))
            wall = advance(wall)

    if period == "day":
        first = wall_start.replace(minute=0, second=0, microsecond=0)
        walk(first, lambda t: t + timedelta(hours=1), lambda t: t.strftime("%H:%M"),
             lambda t: t.hour % 3 == 0)
    elif period == "week":
        first = wall_start.replace(hour=0, minute=0, second=0, microsecond=0)
        walk(first, lambda t: t + timedelta(hours=6), lambda t: t.strftime("%a %d"),
             lambda t: t.hour == 0)
    elif period == "month":
        first = wall_start.replace(hour=0, minute=0, second=0, microsecond=0)
        walk(first, lambda t: t + timedelta(days=1), lambda t: t.strftime("%d %b"),
             lambda t: t.weekday() == 0)
    else:
        first = wall_start.replace(day=1, hour=0, minute=0, second=0, microsecond=0)

        def next_month(t: datetime) -> datetime:
            y, m = (t.year + 1, 1) if t.month == 12 else (t.year, t.month + 1)
            return t.replace(year=y, month=m)

        walk(first, next_month, lambda t: t.strftime("%b"), lambda t: True)
    majors = [ts for ts in sorted(ticks) if ticks[ts][0]]
    minors = [ts for ts in sorted(ticks) if not ticks[ts][0]]
    return majors, [ticks[ts][1] for ts in majors], minors


# -- drawing -------------------------------------------------------------------------------------

WIDTH, HEIGHT, DPI = 720, 300, 100  # the size a graph is shown at, in CSS pixels
# Graphs are drawn at twice that, so they stay sharp on high-DPI screens (phones, most
# laptops); a 1x screen scales them down smoothly. Geometry below is in CSS pixels.
SCALE = 2
SPARK_WIDTH, SPARK_HEIGHT = 160, 34
_AX_LEFT, _AX_RIGHT, _AX_TOP, _AX_BOTTOM = 78, 52, 30, 88  # pixels
_LEGEND_ROWS = 4
_TICK_CHARS, _LEGEND_CHARS = 16, 120  # the most characters of a tick's unit, a legend line
_LEGEND_COLUMN = (WIDTH - 12) // 2  # pixels: a second legend column starts half-way across
_LEGEND_COLUMN_CHARS = 54  # of the monospace legend font that fit in one such column


def legend_layout(legend: list[LegendRow]) -> list[tuple[int, int, LegendRow, str]]:
    """(column, line, row, text) of each legend row drawn. Up to _LEGEND_ROWS rows stand in
    one column; a graph with more lines (the Postfix graph's six message counters, a Munin
    graph's fields) gets a second column, its rows' runs of spaces closed up to fit half the
    width, so no drawn line is left without its name."""
    rows = legend[: 2 * _LEGEND_ROWS]
    width = min(20, max((len(row.label) for row in rows), default=0)) + 1
    if len(rows) <= _LEGEND_ROWS:
        return [(0, i, row, display(f"{display(row.label, width - 1):<{width}}{row.text}",
                                    _LEGEND_CHARS)) for i, row in enumerate(rows)]
    return [(i // _LEGEND_ROWS, i % _LEGEND_ROWS, row,
             display(f"{display(row.label, width - 1):<{width}}{' '.join(row.text.split())}",
                     _LEGEND_COLUMN_CHARS)) for i, row in enumerate(rows)]


def _steps(start: float, step: float, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """rrdtool's look: each sample is a flat step over the interval it covers, so a lone
    sample between gaps is still visible and a gap stays a gap."""
    n = len(values)
    ends = start + step * np.arange(1, n + 1, dtype=float)
    x = np.empty(2 * n)
    x[0::2] = ends - step
    x[1::2] = ends
    y = np.repeat(values, 2)
    return x, y


class _Plot:
    """Draws one graph's data straight onto the canvas's Agg renderer, in pixels computed here
    from the graph's own window (start..end) and the axes' box: no artist objects (their unit
    conversion, transforms and bookkeeping cost more than Agg's rasterising), and no reliance on
    the axes' current limits, which belong to whichever background was drawn last. Lines and
    fills get what matplotlib's artists would give them (same widths in points, caps, joins,
    antialiasing), and every path is snapped to the pixel grid: steps have only horizontal and
    vertical edges, which matplotlib snaps by itself only in paths under 1,024 vertices."""

    def __init__(self, canvas: FigureCanvasAgg, ax: Axes, start: float, end: float,
                 bottom: float, top: float) -> None:
        self.renderer = canvas.get_renderer()
        self.clip = ax.bbox
        x0, y0, width, height = ax.bbox.bounds
        self.x0, self.x_scale = x0, width / (end - start)
        self.start, self.y0, self.height = start, y0, height
        self.bottom, self.y_scale = bottom, height / (top - bottom)
        self.right_edge = x0 + width

    def x(self, t: np.ndarray) -> np.ndarray:
        return self.x0 + (t - self.start) * self.x_scale

    def y(self, values: np.ndarray | float) -> Any:
        """Pixel heights of values on the left axis (bottom..top), kept within a box's height
        of it: what lies beyond is clipped anyway, and Agg's fixed-point cells overflow on
        coordinates of billions of pixels (a value far off the axis, a band's far edge)."""
        return np.clip(self.y0 + (values - self.bottom) * self.y_scale, self.y0 - self.height,
                       self.y0 + 2 * self.height)

    def y_share(self, share: np.ndarray) -> np.ndarray:
        """Pixel heights of 0..1 on the whole height (the right axis, the sparkline)."""
        return self.y0 + share * self.height

    def stroke(self, x: np.ndarray, y: np.ndarray, color: Any, width: float, *,
               join: str = "round", cap: str = "projecting",
               dashes: tuple[float, list[float]] | None = None,
               codes: np.ndarray | None = None) -> None:
        """A line (points wide) through x, y; NaN breaks it, as it breaks a Line2D."""
        gc = self.renderer.new_gc()
        gc.set_clip_rectangle(self.clip)
        gc.set_antialiased(True)
        gc.set_snap(True)
        gc.set_linewidth(width)
        gc.set_foreground(color)
        gc.set_joinstyle(join)
        gc.set_capstyle(cap)
        if dashes:
            gc.set_dashes(*dashes)
        self.renderer.draw_path(gc, DrawPath(np.column_stack([x, y]), codes), IdentityTransform())
        gc.restore()

    def fill(self, x: np.ndarray, top: np.ndarray, low: np.ndarray | float, color: Any,
             alpha: float) -> None:
        """The area between low and top (pixels) where both are known: one polygon whose
        unknown stretches have no height (a gap draws nothing, its edges stay vertical)."""
        gaps = np.isnan(top) | np.isnan(low)
        if gaps.all():
            return
        if np.ndim(low) == 0:
            top = np.where(gaps, low, top)
            vertices = np.empty((len(x) + 2, 2))
            vertices[1:-1, 0], vertices[1:-1, 1] = x, top
            vertices[0], vertices[-1] = (x[0], low), (x[-1], low)
        else:
            # the band's edges both at its bottom pixel where either is unknown
            top, low = np.where(gaps, self.y0, top), np.where(gaps, self.y0, low)
            vertices = np.column_stack([np.concatenate([x, x[::-1]]),
                                        np.concatenate([top, low[::-1]])])
        gc = self.renderer.new_gc()
        gc.set_clip_rectangle(self.clip)
        gc.set_antialiased(True)
        gc.set_snap(True)
        gc.set_linewidth(0)
        self.renderer.draw_path(gc, DrawPath(vertices), IdentityTransform(), to_rgba(color, alpha))
        gc.restore()


_MOVE_LINE = np.array([DrawPath.MOVETO, DrawPath.LINETO], dtype=DrawPath.code_type)
MARK_DASHES = (0.0, [7.5, 4.5])  # a Line2D's dashes=(5, 3) at linewidth 1.5 (scaled dashes)


class Renderer:
    """One reusable figure and its cached backgrounds; one per worker process."""

    def __init__(self) -> None:
        self.figure = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=SCALE * DPI,
                             facecolor="#ffffff")
        self.canvas = FigureCanvasAgg(self.figure)
        fig = self.figure
        w, h = WIDTH, HEIGHT
        self.ax = fig.add_axes((_AX_LEFT / w, _AX_BOTTOM / h, 1 - (_AX_LEFT + _AX_RIGHT) / w,
                                1 - (_AX_TOP + _AX_BOTTOM) / h))
        ax = self.ax
        ax.set_facecolor("#fcfcfd")
        ax.set_ylim(0, 1)
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#555555")
        ax.tick_params(axis="both", colors="#444444", labelsize=8, length=3)
        ax.tick_params(axis="y", length=0)
        ax.tick_params(axis="x", which="minor", length=2)
        ax.grid(True, which="major", color="#d0d4da", linewidth=0.7, linestyle="-")
        ax.grid(True, which="minor", axis="x", color="#eceef1", linewidth=0.6)
        ax.set_yticklabels([])
        self.right = ax.twinx()
        self.right.set_ylim(0, 1)
        self.right.tick_params(axis="y", colors=LOSS, labelsize=8, length=2)
        for side in ("top", "left", "bottom"):
            self.right.spines[side].set_visible(False)
        self.right.spines["right"].set_color(LOSS)
        self.right.patch.set_visible(False)
        self.fonts = _Fonts(SCALE)
        self._backgrounds: dict[tuple, object] = {}
        self._windows: dict[str, tuple[float, float]] = {}
        self._ticks: dict[str, str] = {}  # tick label -> as drawn (_fitted)
        self.spark = _Sparkline()

    def _fitted(self, tick: str) -> str:
        """A tick label printable and within its margin: a unit from a plugin's perfdata may
        be any text (it is cut, the number stays whole). Cached: ticks repeat."""
        fitted = self._ticks.get(tick)
        if fitted is None:
            number, space, shown = tick.partition(" ")
            shown = display(shown, _TICK_CHARS)
            room = (_AX_LEFT - 7) * SCALE
            while shown and self.fonts.small.getlength(number + space + shown) > room:
                shown = display(shown, len(shown) - 1) if len(shown) > 2 else ""
            if len(self._ticks) > 4096:
                self._ticks.clear()
            fitted = self._ticks[tick] = (number + space + shown).rstrip()
        return fitted

    def _background(self, period: str, start: float, end: float, divisions: int, loss: bool) -> object:
        if self._windows.get(period) != (start, end):
            # A new site run moved this period's window: its backgrounds are stale.
            self._windows[period] = (start, end)
            for stale in [k for k in self._backgrounds if k[0] == period]:
                del self._backgrounds[stale]
        key = (period, divisions, loss)
        # Only the background uses the axes' limits; the data is placed by _Plot from the
        # graph's own window, never from whichever period's limits the axes have now.
        bg = self._backgrounds.get(key)
        if bg is None:
            ax = self.ax
            ax.set_xlim(start, end)
            self.right.set_xlim(start, end)
            majors, labels, minors = time_ticks(period, start, end)
            ax.set_xticks(majors, labels)
            ax.set_xticks(minors, minor=True)
            ax.set_yticks([i / divisions for i in range(divisions + 1)])
            ax.set_yticklabels([])
            self.right.set_visible(loss)
            if loss:
                self.right.set_yticks([0, 0.25, 0.5, 0.75, 1.0], ["0 %", "25 %", "50 %", "75 %", "100 %"])
            self.canvas.draw()
            bg = self.canvas.copy_from_bbox(self.figure.bbox)
            self._backgrounds[key] = bg
        return bg

    def draw(self, graph: Graph, period: Period, start: float, end: float, series_start: float,
             step: float, title: str, subtitle: str) -> bytes:
        """The PNG of one graph."""
        bottom, top, ticks = y_axis(graph)
        # other axes: the tick labels carry the unit, or words do where it is a rate per hour
        # (then the ticks keep the number and its k / M: "1.5k", beside "messages per hour")
        label = _YLABELS.get(graph.kind) or units.axis_label(graph.unit)
        if graph.kind not in _YLABELS and label:
            ticks = [number + shown.removesuffix(graph.unit)
                     for number, _, shown in (t.partition(" ") for t in ticks)]
        ticks = [self._fitted(tick) for tick in ticks]
        divisions = len(ticks) - 1
        has_loss = any(layer.right for layer in graph.layers)
        bg = self._background(period.name, start, end, divisions, has_loss)
        self.canvas.restore_region(bg)
        plot = _Plot(self.canvas, self.ax, start, end, bottom, top)
        base = plot.y(min(max(0.0, bottom), top))
        with np.errstate(invalid="ignore"):
            for layer in graph.layers:
                t, values = _steps(series_start, step, layer.values)
                x = plot.x(t)
                if layer.right:
                    plot.fill(x, plot.y_share(np.clip(values / 100.0, 0, 1)), plot.y0, LOSS, 0.45)
                    continue
                y = plot.y(values)
                if layer.style == "band" and layer.low is not None:
                    plot.fill(x, y, plot.y(np.repeat(layer.low, 2)), layer.color, 0.8)
                elif layer.style == "loss-line" and layer.loss is not None:
                    # segment j joins point j to j + 1: it shows sample (j + 1) // 2; one path
                    # of separate segments per loss colour
                    samples = (np.arange(len(x) - 1) + 1) // 2
                    colors = np.searchsorted(_LOSS_LIMITS, np.nan_to_num(layer.loss[samples],
                                                                         nan=0.0), side="left")
                    for c in np.unique(colors):
                        j = np.flatnonzero(colors == c)
                        ends = np.column_stack([j, j + 1]).ravel()
                        plot.stroke(x[ends], y[ends], _LOSS_RGBA[c], 1.6, cap="butt",
                                    codes=np.tile(_MOVE_LINE, len(j)))
                elif layer.style == "area":
                    plot.fill(x, y, base, layer.color, 0.55 if graph.kind == TRAFFIC else 0.22)
                    plot.stroke(x, y, IN_EDGE if graph.kind == TRAFFIC else layer.color, 1.0,
                                join="miter")
                else:
                    plot.stroke(x, y, layer.color, 1.3, join="miter")
            for value, color in graph.marks:
                mark = plot.y(value)
                plot.stroke(np.array([plot.x0, plot.right_edge]), np.array([mark, mark]), color,
                            1.5, cap="butt", dashes=MARK_DASHES)
        # Text is drawn by Pillow onto the finished pixels: matplotlib lays out and rasterises
        # every glyph on each draw (~8 ms per label), Pillow's FreeType path is ~10x cheaper.
        image = _rgb(self.canvas)
        pen = ImageDraw.Draw(image)  # rectangles only; text goes through the caches
        fonts = self.fonts
        s = SCALE  # CSS pixels -> image pixels
        axis_bottom, axis_height = HEIGHT - _AX_BOTTOM, HEIGHT - _AX_TOP - _AX_BOTTOM
        for i, tick in enumerate(ticks):
            tick_y = axis_bottom - i / divisions * axis_height
            fonts.text(image, ((_AX_LEFT - 5) * s, tick_y * s), tick, fonts.small, "#444444", "rm")
        fonts.text(image, (10 * s, 8 * s), display(title, 70), fonts.title, "#1d2733", "la")
        fonts.text(image, ((WIDTH - 10) * s, 10 * s), subtitle, fonts.small, "#667085", "ra")
        widest = max((fonts.small.getlength(tick) for tick in ticks), default=0)
        if label and 6 * s + 14 * s <= (_AX_LEFT - 5) * s - widest:  # never over a tick label
            rotated = fonts.vertical(label)
            image.paste(rotated, (6 * s, (_AX_TOP * s + (axis_height * s - rotated.height) // 2)))
        legend_top = axis_bottom + 32
        for column, line, row, text in legend_layout(graph.legend):
            row_x, row_y = 12 + column * _LEGEND_COLUMN, legend_top + line * 14
            pen.rectangle((row_x * s, (row_y - 5) * s, (row_x + 10) * s - 1, (row_y + 5) * s - 1),
                          fill=row.color)
            fonts.mono_line(image, ((row_x + 15) * s, row_y * s), text, "#222222")
        return _png(self.canvas)


class _Fonts:
    """The DejaVu fonts matplotlib ships (no system or web fonts needed), loaded for Pillow at
    `scale` times their size in CSS pixels."""

    def __init__(self, scale: int = 1) -> None:
        def load(family: str, size: int, weight: str = "normal") -> ImageFont.FreeTypeFont:
            path = font_manager.findfont(font_manager.FontProperties(family=family, weight=weight))
            return ImageFont.truetype(path, size)

        self.scale = scale
        self.small = load("DejaVu Sans", 11 * scale)
        self.title = load("DejaVu Sans", 14 * scale, "bold")
        self.mono = load("DejaVu Sans Mono", 10 * scale)  # a legend line with % of link speed fits
        self._vertical: dict[str, Image.Image] = {}
        self._texts: dict[tuple, tuple[Image.Image, int, int]] = {}
        self._advance = self.mono.getlength("M")
        ascent, descent = self.mono.getmetrics()
        self._mono_height = ascent + descent
        # The legend's glyphs, each in a cell of its advance plus 4 pixels of room either side
        # (for what overhangs): one row of `_atlas` a glyph, `_glyph_index` says which.
        self._cell = int(self._advance) + 8
        self._glyph_index: dict[str, int] = {}
        self._atlas = np.zeros((0, self._mono_height, self._cell), dtype=np.uint8)
        # Cells of glyphs this many characters apart do not overlap.
        self._stride = math.ceil(self._cell / self._advance)

    def text(self, image: Image.Image, xy: tuple[float, float], text: str,
             font: ImageFont.FreeTypeFont, fill: str, anchor: str) -> None:
        """Draw text through a cache of rendered masks: tick labels, units and titles repeat
        from graph to graph, and rasterising them is most of the cost of a label."""
        key = (id(font), text, anchor)
        cached = self._texts.get(key)
        if cached is None:
            left, top, right, bottom = (int(v) for v in font.getbbox(text, anchor=anchor))
            mask = Image.new("L", (max(1, right - left), max(1, bottom - top)), 0)
            ImageDraw.Draw(mask).text((-left, -top), text, font=font, fill=255, anchor=anchor)
            if len(self._texts) > 4096:
                self._texts.clear()
            cached = self._texts[key] = (mask, left, top)
        mask, left, top = cached
        image.paste(fill, (round(xy[0]) + left, round(xy[1]) + top), mask)

    def mono_line(self, image: Image.Image, xy: tuple[int, int], text: str, fill: str) -> None:
        """A legend line from cached glyphs: in a monospace font every character has its cell,
        so the line is assembled with numpy instead of being laid out and rasterised again."""
        advance, height, cell = self._advance, self._mono_height, self._cell
        for char in set(text) - self._glyph_index.keys():
            glyph = Image.new("L", (cell, height), 0)
            ImageDraw.Draw(glyph).text((4, 0), char, font=self.mono, fill=255, anchor="la")
            self._glyph_index[char] = len(self._atlas)
            self._atlas = np.concatenate([self._atlas, np.asarray(glyph)[None]])
        positions = np.array([i for i, char in enumerate(text) if char != " "], dtype=int)
        glyphs = self._atlas[[self._glyph_index[text[i]] for i in positions]]
        columns = np.rint(positions * advance).astype(int)[:, None] + np.arange(cell)
        line = np.zeros((height, int(len(text) * advance) + cell + 1), dtype=np.uint8)
        # Glyphs `_stride` apart do not overlap: each such set goes in with one indexed
        # maximum, not one numpy call per character.
        for first in range(self._stride):
            at = columns[first::self._stride]
            line[:, at] = np.maximum(line[:, at], glyphs[first::self._stride].transpose(1, 0, 2))
        image.paste(fill, (xy[0] - 4, xy[1] - height // 2), Image.fromarray(line, "L"))

    def vertical(self, text: str) -> Image.Image:
        image = self._vertical.get(text)
        if image is None:
            width = int(self.small.getlength(text)) + 2
            image = Image.new("RGB", (width, 14 * self.scale), "#ffffff")
            ImageDraw.Draw(image).text((1, 7 * self.scale), text, font=self.small, fill="#444444",
                                       anchor="lm")
            image = image.rotate(90, expand=True)
            self._vertical[text] = image
        return image


_YLABELS = {TRAFFIC: "bits per second", LATENCY: "response time", PERCENT: "percent"}


class _Sparkline:
    """A day overview without text for the index pages: 160x34 shown, drawn at 320x68."""

    def __init__(self) -> None:
        # Drawn at twice the size it is shown (crisp on high-DPI screens; a sparkline is cheap).
        self.figure = Figure(figsize=(SPARK_WIDTH / DPI, SPARK_HEIGHT / DPI), dpi=2 * DPI,
                             facecolor="#ffffff")
        self.canvas = FigureCanvasAgg(self.figure)
        ax = self.ax = self.figure.add_axes((0, 0, 1, 1))
        ax.set_axis_off()
        ax.set_ylim(-0.04, 1.08)
        ax.axhline(-0.02, color="#c8ccd2", linewidth=0.8)
        self._bg: object | None = None
        self._window: tuple[float, float] | None = None

    def draw(self, graph: Graph, start: float, end: float, series_start: float, step: float) -> bytes:
        if self._window != (start, end) or self._bg is None:
            self.ax.set_xlim(start, end)
            self.canvas.draw()
            self._bg = self.canvas.copy_from_bbox(self.figure.bbox)
            self._window = (start, end)
        self.canvas.restore_region(self._bg)
        left = [layer for layer in graph.layers if not layer.right]
        known = [v for v in (layer.values[~np.isnan(layer.values)] for layer in left) if v.size]
        top = float(max(v.max() for v in known)) if known else 0.0
        if graph.kind == PERCENT:
            top = max(top, 100.0)
        top = top if top > 0 else 1.0
        plot = _Plot(self.canvas, self.ax, start, end, *self.ax.get_ylim())
        for i, layer in enumerate(left[:2]):
            t, values = _steps(series_start, step, layer.values / top)
            x, y = plot.x(t), plot.y(values)
            if i == 0:
                plot.fill(x, y, plot.y(0.0), layer.color, 0.6)
            if i == 1 or len(left) == 1:
                plot.stroke(x, y, IN_EDGE if (graph.kind == TRAFFIC and i == 0) else layer.color,
                            1.0)
        return _png(self.canvas)


def _rgb(canvas: FigureCanvasAgg) -> Image.Image:
    """The canvas's pixels as a Pillow image over the same memory: text drawn into it lands in
    the canvas (the next graph's `restore_region` repaints the whole figure), and `_png`
    encodes from there, without the three copies a conversion to RGB would make."""
    size = canvas.get_width_height()
    image = Image.frombuffer("RGBA", size, canvas.buffer_rgba(), "raw", "RGBA", 0, 1)
    # Pillow marks an image over a foreign buffer read-only and would copy it on the first
    # paste; matplotlib's buffer is writable and outlives the image.
    image.readonly = 0
    return image


def _encode(rgba: np.ndarray) -> bytes:
    """PNG bytes (8-bit RGBA, opaque) of an (height, width, 4) array, ~5x faster than Pillow's
    encoder at the same size.

    Pillow tries five PNG filters on every row and keeps the best; a graph is mostly rows that
    repeat the row above (background, vertical grid lines), so the "Up" filter alone, computed
    by numpy for the whole image at once, compresses as well and costs a fraction. RGBA, as the
    canvas holds it: dropping the alpha byte would cost a strided copy of every pixel, more
    than compressing its column of zero differences. Deflate by ISA-L (isal, the same zlib
    stream): ~8x faster than zlib at a similar size, which is what makes 2x images affordable.
    """
    height, width, _ = rgba.shape
    rows = rgba.reshape(height, width * 4)
    filtered = _filter_buffer(height, width * 4 + 1)
    filtered[:, 0] = 2  # filter type "Up"
    filtered[0, 1:] = rows[0]
    np.subtract(rows[1:], rows[:-1], out=filtered[1:, 1:])  # uint8 arithmetic wraps, as PNG wants
    header = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return b"".join((b"\x89PNG\r\n\x1a\n", _chunk(b"IHDR", header),
                     _chunk(b"IDAT", isal_zlib.compress(filtered, 1)), _chunk(b"IEND", b"")))


@functools.lru_cache(maxsize=4)
def _filter_buffer(height: int, width: int) -> np.ndarray:
    """The filtered rows' buffer of one image size, reused (a worker encodes one image at a
    time): a fresh 3.5 MB array a graph is that many page faults and zeroed pages again."""
    return np.empty((height, width), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(canvas: FigureCanvasAgg) -> bytes:
    width, height = canvas.get_width_height()
    return _encode(np.asarray(canvas.buffer_rgba()).reshape(height, width, 4))


# -- one instance: fetch, draw, write ------------------------------------------------------------


@dataclass
class Job:
    """What a worker needs for one (target, instance): only plain data crosses processes."""

    info: SeriesInfo
    periods: list[str]
    out_dir: Path
    now: float
    spark: bool = True
    baseline: str = ""  # the metric whose seasonal band is drawn (monitor.seasonal), if any
    weeks: int = 6


@dataclass
class JobResult:
    target: str
    instance: str
    kind: str
    summaries: dict[str, dict] = field(default_factory=dict)  # period -> {label: stats}
    units: dict[str, str] = field(default_factory=dict)
    drawn: list[str] = field(default_factory=list)
    error: str = ""
    seconds: float = 0.0
    cpu: float = 0.0  # CPU seconds of the worker for this job


def window(period: Period, now: float, step: int) -> tuple[int, int, int]:
    """(start, end, resolution) aligned on the resolution, so all graphs of a run share axes."""
    resolution = max(period.resolution or step, step)
    end = int(now) // resolution * resolution
    return end - period.span, end, resolution


def render_job(store: RrdStore, renderer: Renderer, job: Job) -> JobResult:
    """Fetch, draw and atomically write the PNGs of one instance (not yet durable: the caller
    makes them so, monitor.files.sync_filesystem)."""
    started = time.perf_counter()
    cpu = time.process_time()
    info = job.info
    result = JobResult(info.target, info.instance, classify(info.metrics, info.thresholds))
    title = f"{info.target} · {info.instance}" if info.instance else info.target
    try:
        # The week's 5-minute rows are the last of the month's: one fetch for both.
        billing = None
        if {"week", "month"} <= set(job.periods):
            month_start, month_end, _ = window(PERIODS["month"], job.now, info.step)
            week_end = window(PERIODS["week"], job.now, info.step)[1]
            billing = stats.period_rows(store, info, month_start, max(month_end, week_end))
        for name in job.periods:
            period = PERIODS[name]
            start, end, resolution = window(period, job.now, info.step)
            series = store.fetch_path(info, start, end, resolution if period.resolution else None)
            # The figures (95th, peak, total) of a period up to 31 days come from its 5-minute
            # rows, as billing computes them, not from the coarser averages drawn.
            if period.span <= stats.BILLING_SPAN:
                rows = stats.period_rows(store, info, start, end,
                                         billing if period.resolution else series)
            else:
                rows = stats.window(series, start, end)
            graph = build_graph(info, series, rows)
            if job.baseline and period.span <= BAND_SPAN:
                add_usual_band(graph, store, info, job.baseline, job.weeks, series)
            step_text = _step_text(series.step)
            png = renderer.draw(graph, period, start, end, series.start, series.step, title,
                                f"{period.label} · {step_text} averages")
            # Not fsynced one by one (two journal commits an image, more than the drawing on a
            # busy disk): the site build syncs the filesystem once before it records them drawn.
            atomic_write(job.out_dir / f"{name}.png", png, PUBLIC_MODE, durable=False)
            if name == "day" and job.spark:
                atomic_write(job.out_dir / "spark.png",
                             renderer.spark.draw(graph, start, end, series.start, series.step),
                             PUBLIC_MODE, durable=False)
            result.summaries[name] = graph.summary
            result.units = graph.units
            result.drawn.append(name)
    except Exception as exc:  # one bad file must not stop the site
        result.error = f"{type(exc).__name__}: {exc} ({info.path})"
    result.seconds = time.perf_counter() - started
    result.cpu = time.process_time() - cpu
    return result


def add_usual_band(graph: Graph, store: RrdStore, info: SeriesInfo, metric: str, weeks: int,
                   series: Series) -> None:
    """The expected band of `metric` for each hour of the week (monitor.seasonal, from the
    store's 2-hour averages of the weeks before), drawn under the data."""
    if graph.kind == TRAFFIC:
        scale, label = 8.0, {"in_octets": "In", "out_octets": "Out"}.get(metric)
    else:
        scale, label = 1.0, metric
    if label is None or not any(layer.label == label for layer in graph.layers):
        return
    n = len(next(iter(series.columns.values()), []))
    if not n:
        return
    past, start, step = seasonal.weekly_history(store, info, metric, series.start, series.end,
                                                weeks)
    times = series.start + (np.arange(n) + 0.5) * series.step
    expected = seasonal.band(past, start, step, times, weeks)
    if np.isnan(expected.usual).all():
        return
    graph.layers.insert(0, Layer("usual", expected.high * scale, "band", USUAL_FILL,
                                 low=expected.low * scale))
    row = LegendRow("usual", USUAL_FILL, f"{label}: expected for the hour of the week (last "
                                         f"{weeks} weeks)")
    graph.legend.insert(min(len(graph.legend), _LEGEND_ROWS - 1), row)


def _rows_text(step: int) -> str:
    """What the period's figures come from: samples up to the billing step, averages beyond
    (a year's 95th is one of daily averages, and must not claim 5-minute samples)."""
    return f"{_step_text(step)} {'samples' if step <= stats.BILLING_STEP else 'averages'}"


def _step_text(step: int) -> str:
    if step % 86400 == 0:
        return f"{step // 86400}-day" if step > 86400 else "daily"
    if step % 3600 == 0:
        return f"{step // 3600}-hour"
    if step % 60 == 0:
        return f"{step // 60}-min"
    return f"{step}-s"
