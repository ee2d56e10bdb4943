"""The digest's "power and upstream" section, from real RRD files: a power cut of half an hour
and a BGP session that went down and flapped, among quiet ones; a real UPS recording's power
cut through the SNMP collector into the digest's problems and power sections."""

from __future__ import annotations

from pathlib import Path

from alerts.digest import DigestBuilder, render_text
from monitor.config import parse_config
from monitor.model import Measurement
from monitor.status import StatusBook
from monitor.store import RrdStore

END = 1_800_000_000 - 1_800_000_000 % 300


def power_digest(tmp_path: Path, schedule: str = "0 7 * * *", sections: str = '"power"'):
    """A config with one digest of the power section only (or of `sections`)."""
    return parse_config(f"""
[agent]
data_dir = "{tmp_path}"
[contacts]
admins = ["admin@example.net"]
[[digests]]
name = "power"
schedule = "{schedule}"
sections = [{sections}]
""")


def test_power_and_upstream_section(tmp_path: Path):
    config = power_digest(tmp_path)
    store = RrdStore(config.rrd_dir)
    rows = []
    start = END - 86400
    for i, ts in enumerate(range(start, END + 1, 300)):
        cut = 100 <= i < 106  # 30 minutes on battery
        rows += [
            Measurement("rack-ups", "ups", "on_battery", 1.0 if cut else 0.0, timestamp=ts),
            Measurement("rack-ups", "ups", "battery_charge_percent", 100 - 10 * (i - 99) if cut else 100,
                        timestamp=ts),
            Measurement("spare-ups", "ups", "on_battery", 0.0, timestamp=ts),
            Measurement("edge1", "bgp 192.0.2.1", "bgp_state", 3 if 200 <= i < 203 else 6, timestamp=ts),
            Measurement("edge1", "bgp 192.0.2.1", "session_flaps", 2 if i == 200 else 0, timestamp=ts),
            Measurement("edge1", "bgp 198.51.100.7", "bgp_state", 6, timestamp=ts),
        ]
    assert not store.write(rows, 300).errors
    builder = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "status.json"))
    report = builder.build(config.digests[0], (start, END))
    store.close()
    [section] = report.sections
    assert section.rows == [
        ["edge1 bgp 192.0.2.1", "1", "15m", "longest down 15m, 2 flap(s)"],
        ["rack-ups on battery", "1", "30m", "longest 30m, lowest charge 40 %"],
    ] or section.rows == [
        ["rack-ups on battery", "1", "30m", "longest 30m, lowest charge 40 %"],
        ["edge1 bgp 192.0.2.1", "1", "15m", "longest down 15m, 2 flap(s)"],
    ]
    assert section.notes == ["2 UPS / BGP session(s) without events."]
    text = render_text(report)
    assert "Power and upstream" in text and "rack-ups on battery" in text


def weekly_of_minute_polls(tmp_path: Path, values) -> list[list[str]]:
    """The power section of a weekly digest over one peer polled every minute, whose
    measurements at each poll time are `values(ts, start)` ({metric: value})."""
    config = power_digest(tmp_path, "0 8 * * 1")
    store = RrdStore(config.rrd_dir)
    start = END - 7 * 86400
    rows = [Measurement("edge1", "bgp 192.0.2.1", metric, value, timestamp=ts)
            for ts in range(start - 3600, END + 1, 60) for metric, value in values(ts, start).items()]
    assert not store.write(rows, 60).errors
    builder = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "status.json"))
    report = builder.build(config.digests[0], (start, END))
    store.close()
    [section] = report.sections
    return section.rows


def test_flaps_are_counted_whole_from_consolidated_rows(tmp_path: Path):
    """Polled every minute, read by a weekly digest from 5-minute (or coarser) rows: a row's
    value is the mean of its polls' counts, so the flaps are that mean times its polls."""
    def values(ts: int, start: int) -> dict[str, float]:
        flapped = {start + 3 * 86400: 2, start + 5 * 86400 + 120: 1}
        return {"bgp_state": 6, "session_flaps": flapped.get(ts, 0)}

    assert weekly_of_minute_polls(tmp_path, values) == [
        ["edge1 bgp 192.0.2.1", "0", "0s", "longest down 0s, 3 flap(s)"]]


def test_a_minute_down_is_a_minute_in_a_weekly_digest(tmp_path: Path):
    """Polled every minute, read by a weekly digest from coarser rows: a session down for one
    minute was down for a minute (the row's mean of session_down), not for the whole row."""
    def values(ts: int, start: int) -> dict[str, float]:
        down = ts == start + 3 * 86400
        return {"bgp_state": 3 if down else 6, "session_down": 1.0 if down else 0.0}

    assert weekly_of_minute_polls(tmp_path, values) == [
        ["edge1 bgp 192.0.2.1", "1", "1m", "longest down 1m"]]


def real_power_cut(store: RrdStore, status: StatusBook, start: float) -> None:
    """A real Eaton's recording polled through the SNMP collector every 5 minutes from `start`:
    on line, on battery for three polls (15 minutes), back with a battery to replace."""
    import asyncio
    import dataclasses

    from collectors.snmp import SnmpCollector
    from monitor.config import SnmpDevice
    from tests.conftest import DATA
    from tests.test_snmp import Clock, serving

    clock = Clock(start)
    with serving(DATA / "health", "ups-eaton-t0") as port:
        device = SnmpDevice(name="rack-ups", host="127.0.0.1", port=port, community="ups-eaton-t0",
                            timeout=2.0, retries=1)
        collector = SnmpCollector([device], 300, clock=clock)
        try:
            for phase in (0, 0, 1, 1, 1, 3, 3):
                collector.replace_device(dataclasses.replace(device, community=f"ups-eaton-t{phase}"))
                batch = asyncio.run(collector.collect())
                assert not store.write(batch.measurements, 300).errors
                status.update(batch.checks)
                clock.now += 300
        finally:
            collector.close()


def test_a_real_ups_power_cut_reaches_the_digest(tmp_path: Path):
    """The digest's problems say the battery needs replacing now and its power section has
    the cut with its duration."""
    config = power_digest(tmp_path, sections='"problems", "power"')
    store = RrdStore(config.rrd_dir)
    status = StatusBook(tmp_path / "status.json")
    real_power_cut(store, status, END - 3600)
    builder = DigestBuilder(config, store=store, status=status)
    report = builder.build(config.digests[0], (END - 7200, END))
    store.close()
    problems, power = report.sections
    # (the replayed recordings' sysUpTime does not follow the test's clock: "rack-ups snmp"
    # says the device restarted, which is right for what it was shown)
    [ups] = [row for row in problems.rows if row[2] == "rack-ups ups"]
    assert ups[0] == "WARNING"
    assert ups[3].startswith("UPS battery needs replacing, runtime 18h12m (EATON 93E 80")
    [cut] = power.rows
    assert cut[:3] == ["rack-ups on battery", "1", "15m"]
    assert cut[3].startswith("longest 15m, lowest charge ")
    text = render_text(report)
    assert "rack-ups on battery" in text and "UPS battery needs replacing" in text


def test_the_ups_graph_shades_the_time_on_battery(tmp_path: Path):
    """The device page's UPS graph (charge and load) shades each interval's share on battery
    on its right-hand axis, so the cut shows where the charge fell."""
    from graphs.render import build_graph

    store = RrdStore(tmp_path / "rrd")
    real_power_cut(store, StatusBook(tmp_path / "status.json"), END - 3600)
    [info] = [i for i in store.series() if i.instance == "ups"]
    series = store.fetch_path(info, END - 3600, END)
    store.close()
    graph = build_graph(info, series)
    [shade] = [layer for layer in graph.layers if layer.right]
    assert shade.label == "on_battery"
    on = [v for v in shade.values if v == v]  # known rows (NaN != NaN)
    assert sum(1 for v in on if v == 100.0) == 3 and sum(on) == 300.0
    assert [layer.label for layer in graph.layers if not layer.right] == [
        "battery_charge_percent", "load_percent"]
