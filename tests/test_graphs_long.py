"""Graphs on a long, realistic history (tests/longhistory.py: 420 days written through the store).

A graph must not depend on what was drawn before it in the same process: every graph of the site
drawn in one warm renderer is compared, pixel for pixel, with the same graph drawn alone.
"""

from __future__ import annotations

import itertools
import math
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alerts.digest import DigestBuilder
from graphs import render
from graphs.render import PERIODS, Job
from graphs.site import SiteBuilder
from monitor.config import Digest, parse_config
from monitor.model import CheckResult, State
from monitor.status import StatusBook
from monitor.store import safe_name
from monitor.units import format_bits_per_second, format_bytes
from tests import longhistory


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory):
    store = longhistory.copy(tmp_path_factory.mktemp("long") / "rrd")
    yield store
    store.close()


def pixels(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))


def test_every_graph_drawn_warm_equals_the_same_graph_drawn_alone(history, tmp_path):
    series = history.series()
    assert len(series) >= 7
    warm = render.Renderer()
    for info in series:  # the site's order: each instance's day, week, month, year in turn
        out = tmp_path.joinpath("warm", info.path.parent.name, info.path.stem)
        result = render.render_job(history, warm, Job(info, list(PERIODS), out, longhistory.END))
        assert not result.error, result.error
    differing = []
    for info in series:
        for name in PERIODS:
            alone = tmp_path.joinpath("alone", info.path.parent.name, info.path.stem)
            result = render.render_job(history, render.Renderer(),
                                       Job(info, [name], alone, longhistory.END, spark=False))
            assert not result.error, result.error
            warm_png = tmp_path.joinpath("warm", info.path.parent.name, info.path.stem) / f"{name}.png"
            if not np.array_equal(pixels(warm_png), pixels(alone / f"{name}.png")):
                differing.append(f"{info.target} {info.instance} {name}")
    assert differing == []


def nearest_rank(values: np.ndarray, pct: float) -> float:
    known = np.sort(values[~np.isnan(values)])
    return float(known[math.ceil(pct / 100 * known.size) - 1])


@pytest.mark.parametrize("instance", [longhistory.CUSTOMER, longhistory.UPLINK])
def test_95th_peak_and_total_of_every_period_up_to_a_month_are_billing_figures(
        history, tmp_path, instance):
    """Site legends/tables and the digest, against an independent computation from the
    5-minute rows that were written (the bursty port is where 2-hour averages lie most)."""
    info = history.info(longhistory.ROUTER, instance)
    result = render.render_job(history, render.Renderer(),
                               Job(info, ["day", "week", "month"], tmp_path, longhistory.END))
    assert not result.error, result.error
    status = StatusBook(tmp_path / "status.json")
    for name in ("day", "week", "month"):
        start, end, _ = render.window(PERIODS[name], longhistory.END, info.step)
        figures = {}
        for label, metric in (("In", "in_octets"), ("Out", "out_octets")):
            octets = longhistory.rows(longhistory.column(longhistory.ROUTER, instance, metric),
                                      start, end)
            figures[label] = (nearest_rank(octets, 95) * 8, float(np.nanmax(octets)) * 8,
                              math.fsum(octets[~np.isnan(octets)]) * longhistory.STEP)
            site = result.summaries[name][label]
            assert (site["p95"], site["maximum"], site["total"]) == pytest.approx(
                figures[label], rel=1e-9), (name, label)
        builder = DigestBuilder(parse_config(""), store=history, status=status,
                                clock=lambda end=end: end)
        report = builder.build(Digest(name="d", sections=["traffic"]), window=(start, end))
        section = report.sections[0]
        row = next(r for r in section.rows if r[0] == f"{longhistory.ROUTER} {instance}")
        bits, octets = format_bits_per_second, format_bytes
        assert row[1:] == [octets(figures["In"][2]), octets(figures["Out"][2]),
                           bits(figures["In"][1]), bits(figures["Out"][1]),
                           bits(figures["In"][0]), bits(figures["Out"][0])], name


def build_site(store, tmp_path: Path, status: StatusBook | None = None, alerts_db: Path | None = None,
               uplinks: tuple[str, ...] = (), port_index=None):
    status = status or StatusBook(tmp_path / "state" / "status.json")
    builder = SiteBuilder(store, status, tmp_path / "html", tmp_path / "state" / "graphs.json",
                          workers=1, inline_below=10**6, clock=lambda: longhistory.END,
                          alerts_db=alerts_db, uplinks=uplinks, port_index=port_index)
    try:
        report = builder.build(full=True)
    finally:
        builder.close()
    assert not report.errors, report.errors
    return tmp_path / "html"


def test_one_unit_convention_on_pages_and_problems_counted_once(history, tmp_path):
    from alerts.engine import AlertState, Status
    from alerts.state import AlertStore

    status = StatusBook(tmp_path / "state" / "status.json")
    end = longhistory.END
    status.update([CheckResult(longhistory.ROUTER, f"if {longhistory.DOWN_PORT}", State.CRITICAL,
                               "down", timestamp=end),
                   CheckResult(longhistory.WEB, "ping", State.WARNING, "loss 20 %", timestamp=end)])
    db = tmp_path / "state" / "alerts.db"
    AlertStore(db).save([AlertState(f"down/{longhistory.ROUTER}/if {longhistory.DOWN_PORT}", "down",
                                    longhistory.ROUTER, f"if {longhistory.DOWN_PORT}",
                                    status=Status.FIRING, severity=State.CRITICAL, since=end - 600,
                                    message="down")])
    html = build_site(history, tmp_path, status, db)
    index = (html / "index.html").read_text()
    assert "Problems (2)" in index  # the port (its check and its alert) and the ping check
    router = html / safe_name(longhistory.ROUTER)
    device = (router / "@" / "index.html").read_text()
    assert re.search(r"\b\d+ days\b", device) and " Ms" not in device  # uptime as a duration
    uplink = (router / safe_name(longhistory.UPLINK) / "index.html").read_text()
    assert "Mbit/s" in uplink and ("GiB" in uplink or "TiB" in uplink)
    assert not re.search(r"\d (?:[kMGT]b/s|[kMGT]B)\b", uplink)  # no SI bytes, no "Mb/s"


def plot_colors(path: Path) -> set[tuple[int, int, int]]:
    """The colours inside the plot area (not the legend, which repeats them as swatches)."""
    s = render.SCALE  # the geometry is in CSS pixels, the image has SCALE times as many
    top, bottom = render._AX_TOP * s, (render.HEIGHT - render._AX_BOTTOM) * s
    area = pixels(path)[top:bottom, render._AX_LEFT * s:(render.WIDTH - render._AX_RIGHT) * s]
    return {tuple(int(c) for c in p) for p in area.reshape(-1, 3)}


def rgb(color: str) -> tuple[int, int, int]:
    return tuple(int(color[i:i + 2], 16) for i in (1, 3, 5))


def drawn(color: str, colors: set[tuple[int, int, int]]) -> bool:
    """Some pixel has about this colour (lines are antialiased)."""
    want = np.array(rgb(color))
    return bool((np.abs(np.array(sorted(colors)) - want).max(axis=1) <= 24).any())


def test_traffic_shows_link_share_and_the_95th_line_latency_the_smokeping_way(history, tmp_path):
    uplink = history.info(longhistory.ROUTER, longhistory.UPLINK)
    result = render.render_job(history, render.Renderer(), Job(uplink, ["week"], tmp_path / "up",
                                                               longhistory.END))
    assert not result.error
    start, end, _ = render.window(PERIODS["week"], longhistory.END, uplink.step)
    rows = render.stats.period_rows(history, uplink, start, end)
    graph = render.build_graph(uplink, history.fetch_path(uplink, start, end, 1800), rows)
    speed = longhistory.SPEED[longhistory.UPLINK]
    in_p95 = graph.summary["In"]["p95"]
    assert f"{100 * in_p95 / speed:.0f}%" in graph.legend[0].text  # MRTG: % of the link
    assert graph.marks == [(max(in_p95, graph.summary["Out"]["p95"]), render.P95_MARK)]
    assert drawn(render.P95_MARK, plot_colors(tmp_path / "up" / "week.png"))

    ping = history.info(longhistory.WEB, "ping")
    result = render.render_job(history, render.Renderer(), Job(ping, ["day"], tmp_path / "ping",
                                                               longhistory.END))
    assert not result.error
    colors = plot_colors(tmp_path / "ping" / "day.png")
    assert drawn(render.LOSS_COLORS[0][1], colors)  # no loss: green
    assert drawn(render.LOSS_COLORS[-1][1], colors)  # a lost interval: red
    assert drawn(render.LATENCY_FILL, colors)  # the min-max band
    assert "rtt_min_seconds" in result.summaries["day"] and "Loss" in result.summaries["day"]


def port_rows(page: str) -> list[list[str]]:
    table = page.split('<table class="ports">')[1].split("</table>")[0]
    return [[re.sub(r"<[^>]+>", "", cell).strip() for cell in re.findall(r"<td[^>]*>(.*?)</td>", row)]
            for row in table.split("<tr")[2:]]


def test_device_page_port_table_sorted_naturally_uplinks_first(history, tmp_path):
    from collectors.snmp import PortInfo

    customer_port = PortInfo(longhistory.CUSTOMER, "", "cust <b>42</b> (a) b", "ethernetCsmacd",
                             100e6, "cust", "", "", "", "02:00:00:00:00:02", ("192.0.2.9/30",))
    html = build_site(history, tmp_path / "a",
                      port_index=lambda: {longhistory.ROUTER: {longhistory.CUSTOMER: customer_port}})
    page = (html / safe_name(longhistory.ROUTER) / "index.html").read_text()
    rows = port_rows(page)
    assert [r[0] for r in rows] == ["Gi0/0/1", "Gi0/0/2", "Gi0/0/10"]  # not 1, 10, 2
    uplink, customer, down = rows
    assert customer[1] == "cust &lt;b&gt;42&lt;/b&gt; (a) b cust"  # the alias, escaped; its group
    assert customer[2] == "192.0.2.9/3002:00:00:00:00:02" and uplink[1:3] == ["", ""]
    assert uplink[3] == "up" and down[3] == "down"
    assert uplink[4] == "1.00 Gbit/s" and customer[4] == "100 Mbit/s"
    assert re.fullmatch(r"\d+%", uplink[7]) and down[5] == "0 bit/s"
    assert re.fullmatch(r"[\d.]+ (?:m)?/s|0 /s", uplink[8]), uplink  # errors per second

    html = build_site(history, tmp_path / "b", uplinks=(f"* {longhistory.DOWN_PORT}",))
    rows = port_rows((html / safe_name(longhistory.ROUTER) / "index.html").read_text())
    assert [r[0] for r in rows] == ["Gi0/0/10 uplink", "Gi0/0/1", "Gi0/0/2"]


ROUND_TICK = re.compile(r"-?(0|[1-9]\d*)(\.\d*[1-9])?")  # no "0.0", "1.0", "2.50", "007"


def assert_round_ticks(ticks: list[str]) -> None:
    """Tick labels as rrdtool writes them: one unit, round numbers without spurious decimals,
    evenly spaced by a round step (1, 2, 2.5 or 5 times a power of ten)."""
    numbers, shown = zip(*(tick.partition(" ")[::2] for tick in ticks), strict=True)
    assert len(set(shown)) == 1, ticks
    assert all(ROUND_TICK.fullmatch(n) for n in numbers), ticks
    values = [float(n) for n in numbers]
    steps = {round(b - a, 9) for a, b in itertools.pairwise(values)}
    assert len(steps) == 1, ticks
    step = steps.pop()
    mantissa = step / 10 ** math.floor(math.log10(step))
    assert any(math.isclose(mantissa, m) for m in (1, 2, 2.5, 5)), ticks


def test_a_down_ports_graphs_have_round_tick_labels(history):
    """The port down for 30 days: its day and week graphs are all zero, its month starts with a
    day of traffic; every period's ticks are round (not "0.0 kbit/s ... 1.0 kbit/s")."""
    info = history.info(longhistory.ROUTER, longhistory.DOWN_PORT)
    for name, period in PERIODS.items():
        start, end, resolution = render.window(period, longhistory.END, info.step)
        series = history.fetch_path(info, start, end, resolution if period.resolution else None)
        ticks = render.y_axis(render.build_graph(info, series, render.stats.window(series, start, end)))[2]
        assert_round_ticks(ticks)
        if name == "day":
            assert ticks[0] == "0 bit/s" and ticks[-1] == "1000 bit/s", ticks


@pytest.mark.parametrize(("low", "high", "floor", "unit"), [
    (0.0, 0.0, 0.0, ""), (2.0, 2.0, 0.0, ""), (17.0, 17.0, None, ""), (-3.0, -3.0, None, ""),
    (0.0, 1000.0, 0.0, "b/s"), (0.0, 87e6, 0.0, "b/s"), (0.0, 2.2e9, 0.0, "b/s"),
    (0.0, 0.18, 0.0, "s"), (0.0, 1.3, 0.0, "s"), (0.0, 4e6, 0.0, "s"), (0.0, 0.9, 0.0, "%"),
    (0.0, 3.3 * 2**30, 0.0, "B"), (0.0, 0.55 * 2**30, 0.0, "B"), (0.0, 7.4, 0.0, ""),
    (0.0, 0.03, 0.0, "/s"), (0.0, 1.2e-5, 0.0, "s"), (12.5, 13.1, None, "%"),
])
def test_tick_labels_are_round_for_any_range(low, high, floor, unit):
    bottom, top, ticks = render.axis(low, high, floor, None, unit)
    assert_round_ticks(ticks)
    assert bottom <= low and top >= high


def test_state_metrics_show_words_and_only_traffic_has_a_total(history, tmp_path):
    """The numbers under a down port's graphs: oper_status as IF-MIB's word ("down", not
    "2.00"), a period with both states "mixed"; every non-traffic row's total is "-"."""
    html = build_site(history, tmp_path)
    page = (html / safe_name(longhistory.ROUTER) / safe_name(longhistory.DOWN_PORT) /
            "index.html").read_text()
    tables = [t.split("</table>")[0] for t in page.split('<table class="figures">')[1:]]
    assert len(tables) == len(PERIODS)
    for period, table in zip(PERIODS, tables, strict=True):
        rows = {re.sub(r"<[^>]+>", "", row.split("</th>")[0]).strip():
                [re.sub(r"<[^>]+>", "", c).strip() for c in re.findall(r"<td[^>]*>(.*?)</td>", row)]
                for row in table.split("<tr>")[1:]}
        current, average, maximum, p95, total = rows["oper_status"]
        assert p95 == "down" and total == "-"
        assert current == "down" and maximum == "down", (period, rows["oper_status"])
        if period in ("month", "year"):  # up until 30 days ago
            assert average == "mixed"
        for label, cells in rows.items():
            if label not in ("In", "Out"):
                assert cells[4] == "-", (period, label, cells)
            assert all(cells), (period, label, cells)
    assert "1.00<" not in page and "2.00<" not in page


def test_state_words_are_if_mibs():
    from monitor.units import OPER_STATUS, format_metric

    assert [format_metric(v, "oper_status") for v in (1, 2, 3, 5, 6, 7)] == [
        "up", "down", "testing", "dormant", "notPresent", "lowerLayerDown"]
    assert format_metric(None, "oper_status") == "-" and format_metric(1.5, "admin_status") == "mixed"
    assert format_metric(9, "oper_status") == "state 9" and OPER_STATUS[4] == "unknown"
    assert format_metric(1.0, "in_errors", "/s") == "1.00 /s"


def test_the_95th_line_says_what_it_is_computed_from(history):
    """The billing line's legend names its rows: the month's 5-minute samples, the year's
    daily averages (never "5-minute samples" where there are none)."""
    from graphs.render import PERIODS, build_graph, window
    from graphs.stats import period_rows
    from graphs.stats import window as rows_of

    store = history
    info = store.info(longhistory.ROUTER, longhistory.UPLINK)
    said = {}
    for name in ("month", "year"):
        start, end, resolution = window(PERIODS[name], longhistory.END, info.step)
        series = store.fetch_path(info, start, end, resolution)
        rows = (period_rows(store, info, start, end, series) if name == "month"
                else rows_of(series, start, end))
        (line,) = [row.text for row in build_graph(info, series, rows).legend if row.label == "95th"]
        said[name] = line
    assert "5-min samples" in said["month"] and "daily averages" in said["year"], said
