"""Graphs on a long, realistic history (tests/longhistory.py: 420 days written through the store).

A graph must not depend on what was drawn before it in the same process: every graph of the site
drawn in one warm renderer is compared, pixel for pixel, with the same graph drawn alone.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from alerts.digest import DigestBuilder
from graphs import render
from graphs.render import PERIODS, Job
from monitor.config import Digest, parse_config
from monitor.status import StatusBook
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
        report = builder.build(Digest(name="d", sections=["traffic"], period=end - start))
        section = report.sections[0]
        row = next(r for r in section.rows if r[0] == f"{longhistory.ROUTER} {instance}")
        bits, octets = format_bits_per_second, format_bytes
        assert row[1:] == [octets(figures["In"][2]), octets(figures["Out"][2]),
                           bits(figures["In"][1]), bits(figures["Out"][1]),
                           bits(figures["In"][0]), bits(figures["Out"][0])], name
