"""A plugin's warning and critical limits (perfdata warn/crit) drawn on its graph: the real
check_load run by the services collector, a day of its samples written through the store, the
graph drawn by the site's renderer."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from collectors import services
from graphs import render
from graphs.render import Job
from monitor.config import ServiceCheck
from monitor.model import Measurement, Thresholds, alert_range
from monitor.store import RrdStore
from monitor.units import CRITICAL_LINE, WARNING_LINE

CHECK_LOAD = Path("/usr/lib/nagios/plugins/check_load")
STEP = 300
END = 1_764_000_000 // STEP * STEP


def rows_with(color: str, path: Path) -> list[int]:
    """The pixel rows of the plot area where a line of about this colour runs across."""
    with Image.open(path) as image:
        pixels = np.asarray(image.convert("RGB")).astype(int)
    s = render.SCALE  # the geometry is in CSS pixels, the image has SCALE times as many
    area = pixels[render._AX_TOP * s:(render.HEIGHT - render._AX_BOTTOM) * s,
                  render._AX_LEFT * s:(render.WIDTH - render._AX_RIGHT) * s]
    want = np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)])
    near = (np.abs(area - want).max(axis=2) <= 40).sum(axis=1)
    return [render._AX_TOP * s + y for y in np.nonzero(near > area.shape[1] // 3)[0]]


def one_run(check: ServiceCheck) -> list[Measurement]:
    collector = services.ServicesCollector("services", STEP, [check], clock=lambda: END - 86400)
    (result,) = asyncio.run(collector.collect()).checks
    return list(result.measurements)


@pytest.mark.skipif(not CHECK_LOAD.exists(), reason="monitoring-plugins is not installed")
def test_plugin_limits_are_lines_on_its_graph_and_in_its_legend(tmp_path):
    check = ServiceCheck(name="load", kind="plugin", timeout=10,
                         command=[str(CHECK_LOAD), "-w", "2,2,2", "-c", "4,4,4"])
    check.validate()
    first = one_run(check)
    limits = {m.metric: m.thresholds for m in first}
    assert limits["load1"] == Thresholds("2", "4", 0, None)
    assert limits["response_seconds"] == Thresholds()  # none configured: "none now"
    # A day of it (values as the machine's load would go, the plugin's limits as it gave them).
    store = RrdStore(tmp_path / "rrd")
    for i in range(288):
        at = END - 86400 + i * STEP
        store.write([dataclasses.replace(m, timestamp=at, value=(
            0.5 + 1.5 * (i % 96) / 96 if m.metric.startswith("load") else m.value)) for m in first],
            STEP)
    info = store.info("localhost", "load")
    assert info is not None and info.thresholds["load5"] == Thresholds("2", "4", 0, None)
    store.close()
    # The limits are part of the store's index: another process (the site) sees them.
    info = RrdStore(tmp_path / "rrd").info("localhost", "load")
    assert info is not None and "load1" in info.thresholds

    series = RrdStore(tmp_path / "rrd").fetch_path(info, END - 86400, END)
    graph = render.build_graph(info, series)
    assert graph.kind == render.GENERIC  # the plugin's values, not its run time
    assert (2.0, WARNING_LINE) in graph.marks and (4.0, CRITICAL_LINE) in graph.marks
    legend = {row.label: row for row in graph.legend[:render._LEGEND_ROWS]}
    assert legend["Warning"].text == "load1, load5, load15 above 2.00"
    assert legend["Critical"].text == "load1, load5, load15 above 4.00"
    assert legend["Warning"].color == WARNING_LINE and legend["Critical"].color == CRITICAL_LINE

    result = render.render_job(RrdStore(tmp_path / "rrd"), render.Renderer(),
                               Job(info, ["day"], tmp_path / "out", END))
    assert not result.error, result.error
    yellow, red = rows_with(WARNING_LINE, tmp_path / "out" / "day.png"), rows_with(
        CRITICAL_LINE, tmp_path / "out" / "day.png")
    assert yellow and red, (yellow, red)
    assert max(red) < min(yellow)  # 4 is above 2: its line higher up the image


def test_limits_of_response_time_and_far_ones():
    check = ServiceCheck(name="web", kind="tcp", host="127.0.0.1", port=80, warning=0.5,
                         critical=2.0)
    check.validate()
    assert services.response_limits(check) == Thresholds("0.5", "2")
    info = render.SeriesInfo("www", "web", Path("x.rrd"), 60, {"response_seconds": "r"},
                             {"response_seconds": "s"}, {"response_seconds": Thresholds("0.5", "2")})
    values = [0.1, 0.2, 0.3]
    series = render.Series(0, 180, 60, {"response_seconds": values})
    graph = render.build_graph(info, series)
    assert graph.kind == render.LATENCY
    # 0.5 s is within reach of 0.3 s and drawn; 2 s would flatten the data: named only.
    assert graph.marks == [(0.5, WARNING_LINE)]
    texts = {row.label: row.text for row in graph.legend}
    assert texts["Warning"] == "above 500 ms"
    assert texts["Critical"] == "above 2.00 s (off the scale)"
    assert [row.label for row in graph.legend][:3] == ["Response", "Warning", "Critical"]


def test_nagios_ranges_as_people_say_them():
    def said(text: str, unit: str = "") -> str:
        limits = alert_range(text)
        assert limits is not None
        return render.describe_range(limits, unit)

    assert said("10") == "above 10.0"
    assert said("10:") == "below 10.0"
    assert said("~:0.2", "s") == "above 200 ms"
    assert said("5:10") == "outside 5.00 to 10.0"
    assert said("@5:10") == "from 5.00 to 10.0"
    assert said("@~:3") == "at or below 3.00"
    assert alert_range("x") is None and alert_range("9:1") is None
    # A plugin's perfdata is its own words: "nan" and "inf" parse as floats but are no limit.
    assert alert_range("nan") is None and alert_range("nan:5") is None
    assert alert_range("inf") is None and alert_range("@-inf:inf") is None
