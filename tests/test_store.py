"""The RRD store against real rrdtool files (and a real rrdcached)."""

from pathlib import Path

import pytest

from monitor.model import Kind, Measurement
from monitor.store import RrdStore, ds_name, safe_name

T0 = 1_700_000_040  # a multiple of 60, so samples sit on step boundaries and read back exactly
STEP = 60


def m(metric, value, ts, kind=Kind.GAUGE, target="router", instance="eth0", unit="", **kw):
    return Measurement(target, instance, metric, value, kind, unit, ts, **kw)


def values(store, metric, start, end, target="router", instance="eth0", **kw):
    series = store.fetch(target, instance, start, end, **kw)
    return dict(zip(series.timestamps, series.columns[metric], strict=True))


def test_round_trip_gauge(tmp_path: Path):
    store = RrdStore(tmp_path)
    for i in range(5):
        report = store.write([m("temperature", 20 + i, T0 + i * STEP)], STEP)
        assert report.errors == []
    got = values(store, "temperature", T0, T0 + 4 * STEP)
    assert [got[T0 + i * STEP] for i in range(1, 5)] == [21, 22, 23, 24]
    info = store.info("router", "eth0")
    assert info.step == STEP and info.metrics == {"temperature": "temperature"}


def test_gaps_are_none(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("t", 1, T0)], STEP)
    store.write([m("t", 1, T0 + STEP)], STEP)
    store.write([m("t", 1, T0 + 10 * STEP)], STEP)  # a pause longer than the heartbeat
    got = values(store, "t", T0, T0 + 10 * STEP)
    assert got[T0 + STEP] == 1
    assert got[T0 + 5 * STEP] is None


def test_counter_32bit_wrap_and_reset_is_unknown(tmp_path: Path):
    store = RrdStore(tmp_path)
    speed = 100e6 / 8  # octets per second of a 100 Mbit/s link
    samples = [2**32 - 600, 600, 1800, 5, 65]  # wrap (+1200), +1200, reset, +60
    for i, v in enumerate(samples):
        store.write([m("in_octets", v, T0 + i * STEP, Kind.COUNTER, maximum=speed)], STEP)
    got = values(store, "in_octets", T0, T0 + 4 * STEP)
    # rrdtool adds 2**32 - 1 on a wrap: one octet off, no spike (the SNMP collector does
    # exact integer counter math itself and stores rates)
    assert got[T0 + STEP] == pytest.approx(20.0, rel=1e-3)
    assert got[T0 + 2 * STEP] == pytest.approx(20.0)
    assert got[T0 + 3 * STEP] is None  # a reset looks like a wrap far above the link speed
    assert got[T0 + 4 * STEP] == pytest.approx(1.0)


def test_counter_without_maximum_never_spikes_on_reset(tmp_path: Path):
    store = RrdStore(tmp_path)
    for i, v in enumerate([1000, 7000, 100, 6100]):
        store.write([m("packets", v, T0 + i * STEP, Kind.COUNTER)], STEP)
    got = values(store, "packets", T0, T0 + 3 * STEP)
    assert got[T0 + STEP] == pytest.approx(100.0)
    assert got[T0 + 2 * STEP] is None
    assert got[T0 + 3 * STEP] == pytest.approx(100.0)


def test_64bit_wrap_is_not_a_spike(tmp_path: Path):
    store = RrdStore(tmp_path)
    speed = 10e9 / 8
    for i, v in enumerate([2**64 - 6000, 6000]):
        store.write([m("in_octets", v, T0 + i * STEP, Kind.COUNTER, maximum=speed)], STEP)
    # rrdtool computes in doubles, so near 2**64 it is only roughly right: but never a spike
    assert 0 < values(store, "in_octets", T0, T0 + STEP)[T0 + STEP] < 1000


def test_new_metric_added_to_existing_file(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0)], STEP)
    store.write([m("a", 2, T0 + STEP), m("b_metric_with_a_long_name", 3, T0 + STEP)], STEP)
    store.write([m("a", 2, T0 + 2 * STEP), m("b_metric_with_a_long_name", 5, T0 + 2 * STEP)], STEP)
    got = values(store, "b_metric_with_a_long_name", T0, T0 + 2 * STEP)
    assert got[T0 + 2 * STEP] == 5
    assert ds_name("b_metric_with_a_long_name") != "b_metric_with_a_long_name"
    assert len(ds_name("b_metric_with_a_long_name")) <= 19


def test_files_of_one_layout_share_it_and_a_new_metric_touches_one_file(tmp_path: Path):
    """The metrics and units of files with the same data sources are one shared mapping (a
    copy each was most of the store's memory at 48,000 files); a metric added to one file
    gives that file a layout of its own, the others keep theirs, also after a restart."""
    store = RrdStore(tmp_path, archives=["step:1h"])
    ports = [f"ge-0/0/{i}" for i in range(3)]
    store.write([m(x, 1, T0, instance=p, unit="B/s") for p in ports for x in ("in", "out")], STEP)
    infos = [store.info("router", p) for p in ports]
    assert infos[0].metrics is infos[1].metrics is infos[2].metrics
    store.write([m(x, 2, T0 + STEP, instance=p, unit="B/s") for p in ports for x in ("in", "out")]
                + [m("errors", 3, T0 + STEP, instance=ports[0], unit="/s")], STEP)
    assert list(store.info("router", ports[0]).metrics) == ["in", "out", "errors"]
    assert store.info("router", ports[0]).units["errors"] == "/s"
    for port in ports[1:]:
        assert list(store.info("router", port).metrics) == ["in", "out"]
    store.write([m(x, 4, T0 + 2 * STEP, instance=ports[0]) for x in ("in", "out", "errors")]
                + [m(x, 5, T0 + 2 * STEP, instance=p) for p in ports[1:] for x in ("in", "out")],
                STEP)
    assert values(store, "errors", T0, T0 + 2 * STEP, instance=ports[0])[T0 + 2 * STEP] == 4
    assert values(store, "out", T0, T0 + 2 * STEP, instance=ports[2])[T0 + 2 * STEP] == 5
    store.close()
    again = RrdStore(tmp_path, archives=["step:1h"])
    infos = [again.info("router", p) for p in ports]
    assert infos[1].metrics is infos[2].metrics is not infos[0].metrics
    assert infos[0].units == {"in": "B/s", "out": "B/s", "errors": "/s"}


def test_old_timestamp_skipped_with_one_warning(tmp_path: Path, caplog):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0 + STEP)], STEP)
    for _ in range(3):
        report = store.write([m("a", 1, T0)], STEP)
        assert report.skipped == 1 and report.errors == []
    assert len([r for r in caplog.records if "not newer" in r.message]) == 1


HOSTILE = ["../../etc/passwd", "a/b", "a_b", "a%2Fb", "", ".", "..", "<script>alert(1)</script>",
           "%n%s", "x" * 500, "caf\udce9", "sp ace\nnew:line", "ünïcødé"]


def test_hostile_names_stay_inside_and_never_collide(tmp_path: Path):
    root = tmp_path / "rrd"
    store = RrdStore(root)
    batch = [m("v", i, T0, target=name, instance=name) for i, name in enumerate(HOSTILE)]
    assert store.write(batch, STEP).errors == []
    paths = {store.path_for(n, n) for n in HOSTILE}
    assert len(paths) == len(HOSTILE)
    for path in paths:
        assert path.resolve().is_relative_to(root.resolve())
        assert path.exists() and len(path.name) < 120
    # the index keeps the original names, so pages show them (escaped) and fetch finds them
    reopened = RrdStore(root)
    assert {(s.target, s.instance) for s in reopened.series()} == {(n, n) for n in HOSTILE}
    assert safe_name("a/b") != safe_name("a_b")
    assert "/" not in safe_name("../x") and not safe_name("..").startswith(".")


def test_corrupt_file_is_moved_aside_and_others_carry_on(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0, instance="bad"), m("a", 1, T0, instance="good")], STEP)
    bad = store.path_for("router", "bad")
    bad.write_bytes(b"this is not an RRD file at all" * 100)
    report = store.write([m("a", 2, T0 + STEP, instance="bad"), m("a", 2, T0 + STEP, instance="good")],
                         STEP)
    assert len(report.errors) == 1 and "corrupt" in report.errors[0]
    assert list(tmp_path.glob("router/bad.rrd.corrupt-*"))
    assert values(store, "a", T0, T0 + STEP, instance="good")[T0 + STEP] == 2
    # the sample the corrupt file could not take is written into the fresh file next time
    report = store.write([m("a", 3, T0 + 2 * STEP, instance="bad")], STEP)
    assert report.errors == []
    got = values(store, "a", T0 + STEP, T0 + 2 * STEP, instance="bad")
    assert got[T0 + 2 * STEP] == 3


def test_truncated_file_is_reported_and_survived(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0)], STEP)
    path = store.path_for("router", "eth0")
    path.write_bytes(path.read_bytes()[:300])
    report = store.write([m("a", 2, T0 + STEP)], STEP)
    assert report.errors
    assert store.write([m("a", 3, T0 + 2 * STEP)], STEP).errors == []


def test_unwritable_directory_keeps_samples(tmp_path: Path):
    root = tmp_path / "rrd"
    store = RrdStore(root)
    blocker = root / "router"
    blocker.write_text("a file where a directory should be")
    report = store.write([m("a", 1, T0)], STEP)
    assert report.errors and "kept for the next attempt" in report.errors[0]
    blocker.unlink()
    assert store.write([m("a", 2, T0 + STEP)], STEP).errors == []
    got = values(store, "a", T0, T0 + STEP)
    assert got[T0 + STEP] == 2
    assert store.info("router", "eth0") is not None


def test_a_first_poll_creates_its_files_side_by_side_and_one_failure_stays_its_own(tmp_path: Path):
    """A batch with many new files (a first poll) has them made in threads: each file has its
    own data sources and rows, and a file that cannot be made (a file where its directory
    should be) keeps its samples without harming the others."""
    root = tmp_path / "rrd"
    store = RrdStore(root)
    (root / "switch07").parent.mkdir(parents=True, exist_ok=True)
    (root / "switch07").write_text("a file where a directory should be")
    batch = [m(metric, float(10 * port + k), ts, target=f"switch{port % 8:02d}",
               instance=f"ge-0/0/{port}")
             for ts in (T0, T0 + STEP) for port in range(48)
             for k, metric in enumerate(("in_octets", "out_octets") if port % 2 else ("temp",))]
    report = store.write(batch, STEP)
    assert report.files_created == 42  # 48 ports, 6 of them on switch07
    assert len(report.errors) == 6 and all("switch07" in e for e in report.errors)
    for port in range(48):
        if port % 8 == 7:
            assert store.info(f"switch{port % 8:02d}", f"ge-0/0/{port}") is None
            continue
        names = ("in_octets", "out_octets") if port % 2 else ("temp",)
        info = store.info(f"switch{port % 8:02d}", f"ge-0/0/{port}")
        assert info is not None and list(info.metrics) == list(names)
        for k, name in enumerate(names):
            got = values(store, name, T0, T0 + STEP, target=f"switch{port % 8:02d}",
                         instance=f"ge-0/0/{port}")
            assert got[T0 + STEP] == 10 * port + k
    (root / "switch07").unlink()
    assert store.write([], STEP).errors == []  # the kept samples go in now
    assert store.info("switch07", "ge-0/0/7") is not None
    store.close()


def test_index_lost_files_are_adopted(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0)], STEP)
    (tmp_path / "index.json").unlink()
    again = RrdStore(tmp_path)
    assert again.write([m("a", 2, T0 + STEP)], STEP).errors == []
    assert values(again, "a", T0, T0 + STEP)[T0 + STEP] == 2


def test_archives_follow_config(tmp_path: Path):
    import rrdtool

    store = RrdStore(tmp_path, archives=["step:1d", "1h:1w"], consolidations=["AVERAGE"])
    store.write([m("a", 1, T0)], STEP)
    info = rrdtool.info(str(store.path_for("router", "eth0")))
    assert info["rra[0].rows"] == 1440 and info["rra[1].pdp_per_row"] == 60
    assert info["rra[1].rows"] == 168
    assert "rra[2].cf" not in info


def test_through_rrdcached(tmp_path: Path, rrdcached: str):
    store = RrdStore(tmp_path / "rrd", rrdcached=rrdcached)
    for i in range(4):
        report = store.write([m("in_octets", 1000 * i, T0 + i * STEP, Kind.COUNTER, maximum=1e9),
                              m("t", i, T0 + i * STEP, instance="temp")], STEP)
        assert report.errors == []
    # fetch flushes the daemon first, so what was sent is read back
    got = values(store, "in_octets", T0, T0 + 3 * STEP)
    assert got[T0 + 3 * STEP] == pytest.approx(1000 / 60)
    assert values(store, "t", T0, T0 + 3 * STEP, instance="temp")[T0 + 3 * STEP] == 3
    store.close()


def test_rrdcached_down_keeps_samples(tmp_path: Path):
    store = RrdStore(tmp_path, rrdcached=f"unix:{tmp_path}/no-such.sock")
    report = store.write([m("a", 1, T0)], STEP)
    assert report.errors and "kept for the next attempt" in report.errors[0]
    assert store._pending


# -- how a batch becomes rows: the quick path and everything it hands to the general one --------


def test_rows_of_every_shape_land_in_the_right_data_sources(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0), m("b", 2, T0), m("a", 1, T0, instance="eth1")], STEP)
    t1, t2, t3, t4 = (T0 + i * STEP for i in range(1, 5))
    report = store.write([
        m("b", 20, t1), m("a", 10, t1),                 # another order than the file's DS order
        m("a", 11, t2, instance="eth1"), m("a", 30, t2), m("b", 40, t2),  # other file between
        m("a", 50, t3),                                  # only some metrics
        m("b", 60, t4), m("a", 70, t4, instance="eth1"), m("a", 61, t4),  # a row split in two
    ], STEP)
    assert report.errors == [] and report.updates == 6
    a = values(store, "a", T0, t4)
    b = values(store, "b", T0, t4)
    assert [a[t] for t in (t1, t2, t3, t4)] == [10, 30, 50, 61]
    assert [b[t] for t in (t1, t2, t3, t4)] == [20, 40, None, 60]
    eth1 = values(store, "a", T0, t4, instance="eth1")  # two full rows: one update, both kept
    assert (eth1[t2], eth1[t4]) == (11, 70)


def test_quick_rows_then_a_new_metric_in_one_batch(tmp_path: Path):
    store = RrdStore(tmp_path)
    store.write([m("a", 1, T0)], STEP)
    t1, t2 = T0 + STEP, T0 + 2 * STEP
    report = store.write([m("a", 2, t1), m("a", 3, t2), m("c", 9, t2)], STEP)
    assert report.errors == [] and report.updates == 2 and report.skipped == 0
    assert values(store, "a", T0, t2)[t1] == 2
    assert values(store, "a", T0, t2)[t2] == 3
    assert values(store, "c", T0, t2)[t2] == 9


def test_unknown_and_odd_values(tmp_path: Path):
    from decimal import Decimal

    store = RrdStore(tmp_path)
    t = [T0 + i * STEP for i in range(4)]
    for i, (g, c) in enumerate([(1.5, 0), (None, 600.4), (float("nan"), 1200), (True, Decimal(1800))]):
        report = store.write([m("g", g, t[i]), m("c", c, t[i], Kind.COUNTER, maximum=1e6)], STEP)
        assert report.errors == []
    g = values(store, "g", T0, t[3])
    c = values(store, "c", T0, t[3])
    assert [g[x] for x in t[1:]] == [None, None, 1.0]
    assert [c[x] for x in t[1:]] == [pytest.approx(10.0), pytest.approx(10.0), pytest.approx(10.0)]


def test_rrdcached_errors_are_matched_to_their_files_across_chunks(tmp_path: Path, rrdcached: str):
    files = 2500  # more UPDATE lines than one chunk of the BATCH
    RrdStore(tmp_path / "rrd").write([m("a", 1, T0, instance=f"if{i}") for i in range(files)], STEP)
    broken = [7, 1500, 2499]
    for i in broken:  # not a file before rrdcached ever saw them: it refuses their UPDATE lines
        path = RrdStore(tmp_path / "rrd").path_for("router", f"if{i}")
        path.unlink()
        path.mkdir()
    store = RrdStore(tmp_path / "rrd", rrdcached=rrdcached)
    report = store.write([m("a", 2, T0 + STEP, instance=f"if{i}") for i in range(files)], STEP)
    assert report.updates == files - len(broken)
    assert len(report.errors) == len(broken)
    for i in broken:  # each error names its own file
        assert any(f"/if{i}.rrd: corrupt RRD file (rrdcached: Not a regular file: " in error
                   and f"/if{i}.rrd); moved aside" in error for error in report.errors)
    report = store.write([m("a", 3, T0 + 2 * STEP, instance=f"if{i}") for i in range(files)], STEP)
    assert report.errors == [] and report.files_created == len(broken)
    assert report.updates == files + len(broken)  # the kept samples went in first
    got = values(store, "a", T0, T0 + 2 * STEP, instance="if1500")
    assert got[T0 + 2 * STEP] == 3
    assert values(store, "a", T0, T0 + 2 * STEP, instance="if8")[T0 + 2 * STEP] == 3
    store.close()
