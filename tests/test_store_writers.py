"""Two writers of one RRD directory (`monitor collect` beside `monitor run`, `monitor import`
while the agent runs) and damaged indexes, against real rrdtool files: what one writer does to
a file never stops the other from storing its newer samples, and an index that is not what the
store wrote never stops the store nor names a file outside its directory."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from monitor.model import Measurement
from monitor.store import RrdStore, ds_name

T0 = 1_700_000_040  # a multiple of 60
STEP = 60
LONG = "mailbox_quota_used_bytes"  # a metric whose DS name is not the metric's name


def sample(metric: str, value: float, ts: int, unit: str = "B") -> Measurement:
    return Measurement("h", "fs:/", metric, value, unit=unit, timestamp=ts)


def stored(store: RrdStore, metric: str, start: int, end: int) -> dict[int, float | None]:
    series = store.fetch("h", "fs:/", start, end)
    return dict(zip(series.timestamps, series.columns[metric], strict=True))


def test_a_row_another_writer_got_in_first_does_not_stop_our_newer_ones(tmp_path: Path) -> None:
    """The agent's sample is older than the row another process wrote meanwhile: that one
    sample is skipped, every later one is stored (it was retried in front of each newer
    sample, which made the file unwritable for the agent from then on)."""
    agent = RrdStore(tmp_path)
    assert agent.write([sample("used_bytes", 1.0, T0)], STEP).errors == []
    other = RrdStore(tmp_path)  # `monitor collect` beside `monitor run`
    assert other.write([sample("used_bytes", 2.0, T0 + 2 * STEP)], STEP).errors == []
    other.close()
    agent.write([sample("used_bytes", 3.0, T0 + STEP)], STEP)  # older than the file now
    for i in range(3, 6):
        report = agent.write([sample("used_bytes", float(i + 1), T0 + i * STEP)], STEP)
        assert report.errors == [], report.errors
    got = stored(agent, "used_bytes", T0, T0 + 5 * STEP)
    assert [got[T0 + i * STEP] for i in range(2, 6)] == [2.0, 4.0, 5.0, 6.0]
    agent.close()


def test_a_metric_another_writer_added_does_not_stop_ours(tmp_path: Path) -> None:
    """Another process adds a metric to a file (an import, a newer `collect`): the agent takes
    the file's data sources as they are now, named and with units as the other writer's index
    entry has them, and goes on storing its own metrics; nothing it accepted is lost."""
    agent = RrdStore(tmp_path)
    assert agent.write([sample("used_bytes", 1.0, T0)], STEP).errors == []
    other = RrdStore(tmp_path)
    report = other.write([sample("used_bytes", 2.0, T0 + STEP), sample(LONG, 9.0, T0 + STEP)],
                         STEP)
    assert report.errors == []
    other.close()
    for i in range(2, 6):
        agent.write([sample("used_bytes", float(i + 1), T0 + i * STEP)], STEP)
    got = stored(agent, "used_bytes", T0, T0 + 5 * STEP)
    assert [got[T0 + i * STEP] for i in range(2, 6)] == [3.0, 4.0, 5.0, 6.0]
    info = agent.info("h", "fs:/")
    assert info is not None
    assert info.metrics == {"used_bytes": "used_bytes", LONG: ds_name(LONG)}
    assert info.units == {"used_bytes": "B", LONG: "B"}
    assert stored(agent, LONG, T0, T0 + 5 * STEP)[T0 + STEP] == 9.0
    agent.close()
    saved = json.loads((tmp_path / "index.json").read_text())["files"]["h/fs=3A=2F.rrd"]
    assert saved["metrics"] == {"used_bytes": "used_bytes", LONG: ds_name(LONG)}


def entry(**changes: object) -> dict:
    good = {"target": "h", "instance": "fs:/", "step": STEP, "metrics": {"used_bytes": "used_bytes"},
            "units": {"used_bytes": "B"}}
    return {**good, **changes}


DAMAGED = {
    "a list": "[]",
    "files a list": '{"version": 2, "files": []}',
    "version a word": '{"version": "two", "files": {}}',
    "entry a number": json.dumps({"version": 2, "files": {"h/fs=3A=2F.rrd": 5}}),
    "no target": json.dumps({"version": 2, "files": {"h/fs=3A=2F.rrd": {"step": 60}}}),
    "metrics a list": json.dumps({"version": 2, "files": {"h/fs=3A=2F.rrd": entry(metrics=[1])}}),
    "step a word": json.dumps({"version": 2, "files": {"h/fs=3A=2F.rrd": entry(step="60")}}),
    "bad thresholds": json.dumps({"version": 2, "files": {
        "h/fs=3A=2F.rrd": entry(thresholds={"used_bytes": [1, 2, 3, 4, 5]})}}),
}


@pytest.mark.parametrize("text", DAMAGED.values(), ids=DAMAGED.keys())
def test_a_damaged_index_is_rebuilt_not_fatal(tmp_path: Path, text: str) -> None:
    """JSON that is not the index the store writes: the store opens, writes and reads, its
    file adopted with the batch's names and units, and the next save is a good index."""
    store = RrdStore(tmp_path)
    store.write([sample("used_bytes", 1.0, T0), sample(LONG, 2.0, T0)], STEP)
    store.close()
    (tmp_path / "index.json").write_text(text)
    again = RrdStore(tmp_path)
    assert [s.instance for s in again.series()] in ([], ["fs:/"])
    report = again.write([sample("used_bytes", 3.0, T0 + STEP), sample(LONG, 4.0, T0 + STEP)], STEP)
    assert report.errors == [], report.errors
    assert stored(again, LONG, T0, T0 + STEP)[T0 + STEP] == 4.0
    info = again.info("h", "fs:/")
    assert info is not None and info.units == {"used_bytes": "B", LONG: "B"}
    again.close()
    saved = json.loads((tmp_path / "index.json").read_text())
    assert list(saved["files"]) == ["h/fs=3A=2F.rrd"]
    assert list(saved["files"]["h/fs=3A=2F.rrd"]["metrics"]) == ["used_bytes", LONG]


def test_an_index_cut_short_loses_no_names_or_units(tmp_path: Path) -> None:
    """An index cut in the middle of its pieces (a copy stopped, a disk full under another
    tool): unreadable, so files are adopted as they are written, with their units."""
    store = RrdStore(tmp_path)
    store.write([sample("used_bytes", 1.0, T0, unit="B"), sample(LONG, 2.0, T0)], STEP)
    store.close()
    index = tmp_path / "index.json"
    index.write_bytes(index.read_bytes()[: len(index.read_bytes()) // 2])
    again = RrdStore(tmp_path)
    assert again.write([sample("used_bytes", 3.0, T0 + STEP), sample(LONG, 4.0, T0 + STEP)],
                       STEP).errors == []
    info = again.info("h", "fs:/")
    assert info is not None
    assert info.metrics == {"used_bytes": "used_bytes", LONG: ds_name(LONG)}
    assert info.units == {"used_bytes": "B", LONG: "B"}


def test_an_index_entry_naming_a_file_outside_is_ignored(tmp_path: Path) -> None:
    """An entry whose path leaves the RRD directory (absolute, or with ..): never a file the
    store writes to or moves aside as corrupt."""
    root = tmp_path / "rrd"
    outside = tmp_path / "precious.rrd"
    outside.write_text("not an RRD file, and not the store's")
    root.mkdir()
    (root / "index.json").write_text(json.dumps({"version": 2, "files": {
        str(outside): entry(),
        "../precious.rrd": entry(instance="other"),
    }}))
    store = RrdStore(root)
    assert store.series() == []
    store.write([sample("used_bytes", 1.0, T0),
                 Measurement("h", "other", "used_bytes", 1.0, unit="B", timestamp=T0)], STEP)
    store.write([sample("used_bytes", 2.0, T0 + STEP)], STEP)
    store.close()
    assert outside.read_text() == "not an RRD file, and not the store's"
    assert not list(tmp_path.glob("precious.rrd.corrupt-*"))
    assert store.info("h", "fs:/").path == root / "h" / "fs=3A=2F.rrd"  # type: ignore[union-attr]


def test_two_nodes_a_row_the_other_got_in_first_costs_only_the_older_rows(tmp_path: Path) -> None:
    """Cluster: two nodes write one file through rrdcached (a takeover overlap); one node's
    update carries a row older than the other's and rows newer than it (kept samples, a
    replayed backlog). rrdcached refuses the UPDATE from the old row on: only rows not newer
    than the file's last update are dropped (counted), the newer ones are stored."""
    from cluster.catalog import RedisCatalog
    from monitor.config import ClusterConfig
    from tests.daemons import redis_server, rrdcached_tcp

    with redis_server(tmp_path) as redis_port, rrdcached_tcp(tmp_path / "rrd-host") as rrd_port:
        config = ClusterConfig(redis=f"redis://127.0.0.1:{redis_port}/0", node="x")

        def node(name: str) -> RrdStore:
            return RrdStore(tmp_path / name, rrdcached=f"127.0.0.1:{rrd_port}", remote=True,
                            catalog=RedisCatalog(config))

        first, second = node("pop1"), node("pop2")
        assert first.write([sample("used_bytes", 1.0, T0)], STEP).errors == []
        assert second.write([sample("used_bytes", 2.0, T0 + 2 * STEP)], STEP).errors == []
        first.write([sample("used_bytes", 3.0, T0 + STEP), sample("used_bytes", 4.0, T0 + 3 * STEP)],
                    STEP)
        report = first.write([sample("used_bytes", 5.0, T0 + 4 * STEP)], STEP)
        assert report.errors == [] and report.skipped == 1, report
        got = stored(first, "used_bytes", T0, T0 + 4 * STEP)
        assert [got[T0 + i * STEP] for i in range(2, 5)] == [2.0, 4.0, 5.0]
        first.close()
        second.close()


def test_an_index_entry_older_than_its_file_does_not_stop_it(tmp_path: Path) -> None:
    """A well-formed entry that lacks a data source the file has (saved by a writer that had
    not seen it yet, then the agent restarted): the metric is taken as the file has it, not
    added again (rrdtool refused that as a duplicate at every batch: nothing stored)."""
    store = RrdStore(tmp_path)
    assert store.write([sample("used_bytes", 1.0, T0), sample(LONG, 2.0, T0)], STEP).errors == []
    store.close()
    index = tmp_path / "index.json"
    saved = json.loads(index.read_text())
    saved["files"]["h/fs=3A=2F.rrd"]["metrics"] = {"used_bytes": "used_bytes"}
    index.write_text(json.dumps(saved))
    again = RrdStore(tmp_path)
    for i in (1, 2):
        report = again.write([sample("used_bytes", 1.0 + i, T0 + i * STEP),
                              sample(LONG, 2.0 + i, T0 + i * STEP)], STEP)
        assert report.errors == [], report.errors
    assert stored(again, LONG, T0, T0 + 2 * STEP)[T0 + 2 * STEP] == 4.0
    assert stored(again, "used_bytes", T0, T0 + 2 * STEP)[T0 + 2 * STEP] == 3.0
    again.close()
