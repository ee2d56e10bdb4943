"""Drawing one graph PNG from one RRD series (matplotlib, Agg, no pyplot).

Runs inside worker processes: each keeps one RrdStore handle and one figure per size, reused for
every graph, because creating a matplotlib figure costs more than drawing on it. Series are
classified by the naming contract: in_octets+out_octets is traffic (bits/s), response_seconds
is latency (with loss_percent), *_percent is a 0-100 % graph, anything else is generic.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates as mdates
import numpy as np
from dateutil import tz
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from graphs.stats import Stats, scaled, si, summarize
from monitor.files import atomic_write
from monitor.store import RrdStore, SeriesInfo


@dataclass(frozen=True)
class Period:
    name: str
    span: int  # seconds shown
    resolution: int | None  # consolidation asked of the store (None: the base step)
    every: int  # how often the graph is due again
    label: str


PERIODS = {
    "day": Period("day", 86400, None, 0, "last 24 hours"),
    "week": Period("week", 7 * 86400, 1800, 1800, "last 7 days (30 min averages)"),
    "month": Period("month", 31 * 86400, 7200, 7200, "last 31 days (2 h averages)"),
    "year": Period("year", 366 * 86400, 86400, 86400, "last 12 months (daily averages)"),
}

# Colours: a calm palette that still reads when printed in grey; "in" is a filled area (the
# volume you pay for), "out" a line over it, as in MRTG but with softer tones.
IN_COLOR = "#3a9d5d"
OUT_COLOR = "#1d4f91"
LINE_COLORS = ["#1d4f91", "#c2571a", "#3a9d5d", "#7b4fa0", "#a0893a", "#4f8fa0"]
LOSS_COLOR = "#c0392b"
GRID = "#d9dde3"
TEXT = "#2b2f36"
BG = "#fbfbfc"
WIDTH, HEIGHT, DPI = 700, 270, 100
SPARK_W, SPARK_H = 160, 36


def classify(metrics: Iterable[str]) -> str:
    names = set(metrics)
    if {"in_octets", "out_octets"} <= names:
        return "traffic"
    if "response_seconds" in names:
        return "latency"
    if any(m.endswith("_percent") for m in names):
        return "percent"
    return "generic"


def printable(text: str, limit: int = 70) -> str:
    """An untrusted name made safe to draw: no lone surrogates, no mathtext, bounded length."""
    text = text.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    text = "".join(ch if ch.isprintable() else "\ufffd" for ch in text)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def unit_of(metric: str, units: dict[str, str]) -> str:
    if metric.endswith("_percent"):
        return "%"
    if metric.endswith("_seconds"):
        return "s"
    if metric.endswith("_bytes"):
        return "B"
    if metric.endswith("_octets"):
        return "B/s"
    unit = units.get(metric, "")
    return "" if unit in ("", "1") else unit


@dataclass
class Curve:
    label: str
    metric: str
    values: np.ndarray
    unit: str
    stats: Stats
    style: str  # "area", "line", "loss"


def _array(column: list[float | None], factor: float = 1.0) -> np.ndarray:
    out = np.array(column, dtype=float)  # None -> NaN: a gap, never a zero
    return out * factor if factor != 1.0 else out


def curves_for(kind: str, info: SeriesInfo, columns: dict[str, list], step: int) -> list[Curve]:
    if kind == "traffic":
        out = []
        for metric, label, style in (("in_octets", "In", "area"), ("out_octets", "Out", "line")):
            column = columns.get(metric, [])
            octets = summarize(column, step)
            bits = scaled(octets, 8)
            # Totals stay in bytes (what people count transfers in); rates are bits/s.
            stats = Stats(bits.current, bits.average, bits.maximum, bits.p95, octets.total,
                          bits.known, bits.count)
            out.append(Curve(label, metric, _array(column, 8.0), "b/s", stats, style))
        return out
    if kind == "latency":
        out = []
        column = columns.get("response_seconds", [])
        out.append(Curve("Response", "response_seconds", _array(column), "s",
                         summarize(column, step), "line"))
        if "loss_percent" in columns:
            column = columns["loss_percent"]
            out.append(Curve("Loss", "loss_percent", _array(column), "%",
                             summarize(column, step), "loss"))
        return out
    metrics = [m for m in columns if m.endswith("_percent")] if kind == "percent" else list(columns)
    metrics = [m for m in metrics if m not in ("oper_status", "admin_status")][:6]
    return [Curve(m.replace("_", " "), m, _array(columns[m]), unit_of(m, info.units),
                  summarize(columns[m], step), "line") for m in metrics]


def _si_axis(unit: str) -> FuncFormatter:
    return FuncFormatter(lambda v, _pos: si(v, unit, 3))


_LOCATORS = {
    "day": (lambda: mdates.HourLocator(byhour=range(0, 24, 3)), "%H:%M"),
    "week": (lambda: mdates.DayLocator(), "%a %d"),
    "month": (lambda: mdates.DayLocator(bymonthday=[1, 5, 9, 13, 17, 21, 25, 29]), "%d %b"),
    "year": (lambda: mdates.MonthLocator(), "%b"),
}


def _mark_sparse(line, c: Curve) -> None:
    """Few known values (a new series, or samples between gaps) would draw nothing as a line:
    show them as dots, so a fresh install does not look broken."""
    sparse = 0 < c.stats.known <= 60
    line.set_marker("o" if sparse else "None")
    line.set_markersize(2.5 if sparse else 0)


class _Canvas:
    """One figure styled once and kept: a graph only swaps data, limits and texts.

    Clearing axes rebuilds ticks, spines and transforms, which costs more than the drawing, so
    each graph kind has its own canvas whose artists are updated in place.
    """

    def __init__(self, twin: bool) -> None:
        self.fig = Figure(figsize=(WIDTH / DPI, HEIGHT / DPI), dpi=DPI, facecolor=BG)
        ax = self.ax = self.fig.add_axes((0.095, 0.21, 0.85, 0.68))
        ax.set_facecolor("white")
        for side in ("top", "right"):
            ax.spines[side].set_visible(False)
        for side in ("left", "bottom"):
            ax.spines[side].set_color("#9aa1ab")
        ax.grid(True, color=GRID, linewidth=0.7)
        ax.set_axisbelow(True)
        ax.tick_params(colors=TEXT, labelsize=8, length=3)
        ax.yaxis.set_major_locator(MaxNLocator(5))
        self.ax2 = None
        if twin:
            ax2 = self.ax2 = ax.twinx()
            ax2.set_ylim(0, 100)
            ax2.yaxis.set_major_formatter(_si_axis("%"))
            ax2.yaxis.set_major_locator(MaxNLocator(5))
            ax2.tick_params(colors=LOSS_COLOR, labelsize=7, length=2)
            for side in ("top", "left", "bottom"):
                ax2.spines[side].set_visible(False)
        self.lines = [ax.plot([], [], linewidth=1.2)[0] for _ in range(6)]
        self.fills: list = []
        self.title = self.fig.text(0.095, 0.93, "", fontsize=9.5, fontweight="bold", color=TEXT,
                                   parse_math=False)
        self.period = self.fig.text(0.98, 0.93, "", fontsize=8, color="#6b7280", ha="right",
                                    parse_math=False)
        self.keys = []
        self.rows = []
        for i in range(3):
            y = 0.135 - 0.07 * i
            self.keys.append(self.fig.text(0.025, y, "■", fontsize=9, parse_math=False))
            self.rows.append(self.fig.text(0.05, y, "", fontsize=8, color=TEXT,
                                           parse_math=False))
        self.unit: str | None = None
        self.period_name: str | None = None


class Renderer:
    """One per worker process: a store handle and reusable figures."""

    def __init__(self, store: RrdStore) -> None:
        self.store = store
        self.tz = tz.tzlocal()
        self.canvases: dict[str, _Canvas] = {}
        self.spark = Figure(figsize=(SPARK_W / DPI, SPARK_H / DPI), dpi=DPI, facecolor="none")
        self.sax = self.spark.add_axes((0, 0.04, 1, 0.92))
        self.sax.set_axis_off()
        self.spark_lines = [self.sax.plot([], [], linewidth=0.9)[0] for _ in range(6)]
        self.spark_fills: list = []

    def fetch(self, info: SeriesInfo, period: Period, now: int) -> tuple[np.ndarray, dict, int]:
        series = self.store.fetch_path(info, now - period.span, now, period.resolution)
        x = np.array(series.timestamps, dtype=float) / 86400.0  # matplotlib's epoch is 1970
        return x, series.columns, series.step

    def draw(self, info: SeriesInfo, period_name: str, now: int, png: Path,
             spark: Path | None = None) -> dict:
        """Fetch, draw and atomically write one period's PNG (and the sparkline): its legend."""
        period = PERIODS[period_name]
        kind = classify(info.metrics)
        x, columns, step = self.fetch(info, period, now)
        curves = curves_for(kind, info, columns, step)
        atomic_write(png, self._graph(info, period, kind, x, curves, now))
        if spark is not None:
            atomic_write(spark, self._sparkline(kind, x, curves))
        return {"kind": kind, "step": step,
                "rows": [{"label": c.label, "metric": c.metric, "unit": c.unit,
                          **c.stats.as_dict()} for c in curves]}

    @staticmethod
    def _color(kind: str, c: Curve, index: int) -> str:
        if c.style == "area":
            return IN_COLOR
        if c.style == "loss":
            return LOSS_COLOR
        return OUT_COLOR if kind == "traffic" else LINE_COLORS[index % len(LINE_COLORS)]

    def _graph(self, info: SeriesInfo, period: Period, kind: str, x: np.ndarray,
               curves: list[Curve], now: int) -> bytes:
        cv = self.canvases.get(kind)
        if cv is None:
            cv = self.canvases[kind] = _Canvas(twin=kind == "latency")
        ax = cv.ax
        for fill in cv.fills:
            fill.remove()
        cv.fills = []
        for line in cv.lines:
            line.set_visible(False)
        if cv.ax2 is not None:
            cv.ax2.set_visible(False)
        unit = curves[0].unit if curves else ""
        top = 0.0
        lines = iter(cv.lines)
        for i, c in enumerate(curves):
            color = self._color(kind, c, i)
            if c.style == "loss":
                assert cv.ax2 is not None
                cv.ax2.set_visible(True)
                cv.fills.append(cv.ax2.fill_between(x, c.values, 0, color=LOSS_COLOR, alpha=0.25,
                                                    linewidth=0, step="pre"))
                continue
            line = next(lines, None)
            if line is None:
                break
            if c.style == "area":
                cv.fills.append(ax.fill_between(x, c.values, 0, color=IN_COLOR, alpha=0.55,
                                                linewidth=0))
            line.set_data(x, c.values)
            line.set_color(color)
            line.set_linewidth(0.8 if c.style == "area" else 1.2)
            _mark_sparse(line, c)
            line.set_visible(True)
            finite = c.values[np.isfinite(c.values)]
            if finite.size:
                top = max(top, float(finite.max()))
        ax.set_xlim(x[0] if x.size else (now - period.span) / 86400, now / 86400)
        if kind == "percent" or unit == "%":
            ax.set_ylim(0, 100)
        else:
            ax.set_ylim(0, top * 1.08 if top > 0 else 1)
        if cv.period_name != period.name:
            locator, fmt = _LOCATORS[period.name]
            ax.xaxis.set_major_locator(locator())
            ax.xaxis.set_major_formatter(mdates.DateFormatter(fmt, tz=self.tz))
            cv.period_name = period.name
        if cv.unit != unit:
            ax.yaxis.set_major_formatter(_si_axis(unit))
            cv.unit = unit
        cv.title.set_text(printable(f"{info.target} · {info.instance or 'device'}"))
        cv.period.set_text(period.name)
        self._legend(cv, curves, kind)
        buf = io.BytesIO()
        cv.fig.savefig(buf, format="png", dpi=DPI, facecolor=BG,
                       pil_kwargs={"compress_level": 3})
        return buf.getvalue()

    def _legend(self, cv: _Canvas, curves: list[Curve], kind: str) -> None:
        """A colour key only: the figures are in the page's table, as MRTG does it. Glyphs are
        what a matplotlib graph spends most of its time on, so the image carries few."""
        x = 0.095
        for i, (key, row) in enumerate(zip(cv.keys, cv.rows, strict=True)):
            if i >= len(curves):
                key.set_visible(False)
                row.set_visible(False)
                continue
            c = curves[i]
            label = printable(c.label, 20) + (" (right axis)" if c.style == "loss" else "")
            key.set_color(self._color(kind, c, i))
            key.set_position((x, 0.035))
            row.set_position((x + 0.022, 0.035))
            key.set_visible(True)
            row.set_text(label)
            row.set_visible(True)
            x += 0.04 + 0.0125 * len(label)

    def _sparkline(self, kind: str, x: np.ndarray, curves: list[Curve]) -> bytes:
        ax = self.sax
        for fill in self.spark_fills:
            fill.remove()
        self.spark_fills = []
        for line in self.spark_lines:
            line.set_visible(False)
        top = 0.0
        lines = iter(self.spark_lines)
        for i, c in enumerate(curves):
            if c.style == "loss":
                continue
            line = next(lines, None)
            if line is None:
                break
            if c.style == "area":
                self.spark_fills.append(ax.fill_between(x, c.values, 0, color=IN_COLOR,
                                                        alpha=0.6, linewidth=0))
            line.set_data(x, c.values)
            line.set_color(self._color(kind, c, i))
            _mark_sparse(line, c)
            line.set_visible(True)
            finite = c.values[np.isfinite(c.values)]
            if finite.size:
                top = max(top, float(finite.max()))
        if x.size:
            ax.set_xlim(x[0], x[-1])
        ax.set_ylim(0, 100 if kind == "percent" else (top * 1.1 if top > 0 else 1))
        buf = io.BytesIO()
        self.spark.savefig(buf, format="png", dpi=DPI, transparent=True,
                           pil_kwargs={"compress_level": 3})
        return buf.getvalue()


# -- worker process side ----------------------------------------------------------------------
# A ProcessPoolExecutor initializer has nowhere else to keep the per-process renderer: this is
# per-process state of a worker, never touched in the parent.
_renderer: Renderer | None = None


def init_worker(rrd_root: str, rrdcached: str | None) -> None:
    global _renderer
    _renderer = Renderer(RrdStore(Path(rrd_root), rrdcached=rrdcached))


@dataclass(frozen=True)
class Job:
    info: SeriesInfo
    period: str
    now: int
    png: Path
    spark: Path | None = None


def run_job(job: Job) -> tuple[Job, dict | None, str | None]:
    """Worker entry point: only the job (names and paths) goes in, the legend figures out."""
    assert _renderer is not None, "init_worker() was not called"
    try:
        return job, _renderer.draw(job.info, job.period, job.now, job.png, job.spark), None
    except Exception as exc:  # one bad file must not stop the site
        return job, None, f"{job.info.path}: {exc}"


def finite_or_none(v: float | None) -> float | None:
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else v
