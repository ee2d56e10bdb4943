"""Units follow the code for files made before: the index records a unit when a data source is
created, and an agent upgraded from a version whose mail counters had no unit (drawn per
second) must draw them per hour like a fresh install."""

from __future__ import annotations

from collectors.maillog import COUNT_UNITS, COUNTS, TARGET
from graphs import render
from graphs.render import PERIODS
from monitor.model import Kind, Measurement
from monitor.store import RrdStore

STEP = 300
END = 1_796_173_200  # a whole hour


def counters(instance: str, n: int, at: int, units: dict[str, str]) -> list[Measurement]:
    return [Measurement(TARGET, instance, metric, float(3 * n), Kind.DERIVE,
                        unit=units.get(metric, ""), timestamp=at, minimum=0)
            for metric in COUNTS if metric != "login_failures"]


def test_an_upgraded_agent_gives_files_made_before_the_units_of_its_code(tmp_path):
    root = tmp_path / "rrd"
    old = RrdStore(root)  # the version before: counters without a unit
    for n, at in enumerate(range(END - 86400, END + 1, STEP)):
        old.write(counters("postfix", n, at, {}) + counters("relay", n, at, {}), STEP)
    old.close()
    assert RrdStore(root).info(TARGET, "postfix").units["received"] == ""

    upgraded = RrdStore(root)
    n = 86400 // STEP
    upgraded.write(counters("postfix", n + 1, END + STEP, COUNT_UNITS)
                   + counters("relay", n + 1, END + STEP, {}), STEP)
    want = {m: COUNT_UNITS[m] for m in COUNTS if m != "login_failures"}
    assert upgraded.info(TARGET, "postfix").units == want
    # The other file of the same layout keeps its own (its producer still gives none).
    assert set(upgraded.info(TARGET, "relay").units.values()) == {""}
    upgraded.write(counters("postfix", n + 2, END + 2 * STEP, COUNT_UNITS), STEP)
    upgraded.close()

    reopened = RrdStore(root)  # recorded in the index: the graphs' process reads it
    info = reopened.info(TARGET, "postfix")
    assert info.units == want
    start, stop, _ = render.window(PERIODS["day"], END + 2 * STEP, info.step)
    rows = render.stats.period_rows(reopened, info, start, stop)
    graph = render.build_graph(info, reopened.fetch_path(info, start, stop), rows)
    assert graph.unit == "msg/h" and graph.units["sasl_failures"] == "failures/h"
    # A sample without a unit (replayed from an old backlog, an older cluster node) says
    # nothing about it: the unit stays.
    reopened.write(counters("postfix", n + 3, END + 3 * STEP, {}), STEP)
    assert reopened.info(TARGET, "postfix").units == want
    reopened.close()
    assert RrdStore(root).info(TARGET, "postfix").units == want


def test_an_adopted_file_gets_its_units_back(tmp_path):
    """The index lost (deleted, a crash before its first save): the file is adopted from
    rrdtool's own description, which has no units; the producer's give them back."""
    root = tmp_path / "rrd"
    store = RrdStore(root)
    store.write(counters("postfix", 0, END, COUNT_UNITS), STEP)
    store.close()
    store.index_path.unlink()
    again = RrdStore(root)
    again.write(counters("postfix", 1, END + STEP, COUNT_UNITS), STEP)
    assert again.info(TARGET, "postfix").units["received"] == "msg"
    again.close()
