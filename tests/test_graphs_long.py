"""Graphs on a long, realistic history (tests/longhistory.py: 420 days written through the store).

A graph must not depend on what was drawn before it in the same process: every graph of the site
drawn in one warm renderer is compared, pixel for pixel, with the same graph drawn alone.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from graphs import render
from graphs.render import PERIODS, Job
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
