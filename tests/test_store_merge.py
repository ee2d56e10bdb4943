"""RrdStore.merge_history: another tool's consolidated rows into every archive of our files."""

from __future__ import annotations

import rrdtool

from monitor.consolidate import Archive, timeline
from monitor.model import Kind, Measurement
from monitor.store import RrdStore

END = 1_800_000_000 - 1_800_000_000 % 86400


def by_time(store: RrdStore, metric: str, start: int, end: int) -> dict[int, float | None]:
    fetched = store.fetch("rtr", "eth0", start, end)
    return dict(zip(fetched.timestamps, fetched.columns[metric], strict=True))


def template(metric: str = "in_octets") -> list[Measurement]:
    return [Measurement("rtr", "eth0", metric, None, Kind.GAUGE, "B/s", 0, 0)]


def test_history_newer_than_the_file_moves_it_on_and_keeps_its_rows(tmp_path):
    store = RrdStore(tmp_path)
    old = END - 10 * 86400
    store.write([Measurement("rtr", "eth0", "in_octets", v, Kind.GAUGE, "B/s", old + i * 300, 0)
                 for i, v in enumerate((5.0, 6.0, 7.0))], 300)
    rows = [(END - (i + 1) * 300, END - i * 300, 100.0 + i) for i in range(12)]
    report = store.merge_history(template(), {"in_octets": [Archive("AVERAGE", rows)]}, 300)
    assert not report.created and report.filled > 0 and report.kept == 0
    assert rrdtool.last(str(store.info("rtr", "eth0").path)) == END
    ours = by_time(store, "in_octets", END - 3600, END)
    assert [ours[END - i * 300] for i in range(12)] == [100.0 + i for i in range(12)]
    before = by_time(store, "in_octets", old - 300, old + 900)
    assert [v for v in before.values() if v is not None] == [6.0, 7.0]
    # The agent's next sample continues the file.
    report = store.write([Measurement("rtr", "eth0", "in_octets", 1.0, Kind.GAUGE, "B/s", END + 300, 0)],
                         300)
    assert report.updates == 1 and not report.errors


def test_a_new_metric_is_added_and_unknown_rows_are_filled_not_overwritten(tmp_path):
    store = RrdStore(tmp_path)
    store.write([Measurement("rtr", "eth0", "out_octets", 1.0, Kind.GAUGE, "B/s", END - 300 * k, 0)
                 for k in (2, 1, 0)], 300)
    rows = [(END - (i + 1) * 300, END - i * 300, 9.0) for i in range(6)]
    dry = store.merge_history(template(), {"in_octets": [Archive("AVERAGE", rows)]}, 300, dry_run=True)
    assert dry.added_metrics == ["in_octets"] and "in_octets" not in store.info("rtr", "eth0").metrics
    store.merge_history(template(), {"in_octets": [Archive("AVERAGE", rows)]}, 300)
    ours = by_time(store, "in_octets", END - 1800, END)
    assert [ours[END - i * 300] for i in range(6)] == [9.0] * 6
    theirs = by_time(store, "out_octets", END - 1800, END)
    assert (theirs[END], theirs[END - 300]) == (1.0, 1.0)
    again = store.merge_history(template("out_octets"),
                                {"out_octets": [Archive("AVERAGE", rows)]}, 300)
    assert again.kept >= 2  # our out_octets rows stay
    theirs = by_time(store, "out_octets", END - 1800, END)
    assert (theirs[END], theirs[END - 300], theirs[END - 900]) == (1.0, 1.0, 9.0)


def test_timeline_takes_the_finest_archive_and_max_falls_back_to_averages():
    day = Archive("AVERAGE", [(0, 86400, 10.0)])
    five = Archive("AVERAGE", [(86400 - 600, 86400 - 300, 1.0), (86400 - 300, 86400, 3.0)])
    pieces = timeline([day, five])
    assert pieces[-2:] == [(86400 - 600, 86400 - 300, 1.0), (86400 - 300, 86400, 3.0)]
    assert pieces[0] == (0, 86400 - 600, 10.0)
    assert timeline([day, five], "MAX")[-1] == (86400 - 300, 86400, 3.0)
