"""Seasonal baselines on a generated year written through monitor.store: a weekly pattern with
day-to-day noise, holidays and monthly backup surges, and an injected burst. The burst is
flagged; the normal hours are not (the false-positive count over the year is printed and
bounded)."""

from __future__ import annotations

import numpy as np

from alerts.baseline import check_hour, judge_hours
from monitor import seasonal
from monitor.config import BaselineConfig, BaselineSeries
from monitor.model import Kind, Measurement, State
from monitor.seasonal import selected
from monitor.store import RrdStore
from tests.longhistory import END, _shape

STEP = 300
DAYS = 365
DAY = 86400
ROUTER, PORT = "dmz-router", "eth1"
START = END - DAYS * DAY
# Tuesday 03:00-06:00 (UTC) of the 40th week: a hijacked server relaying spam for 3 hours.
_MIDNIGHT = (START // DAY + 1) * DAY  # 1970-01-01 was a Thursday: weekday (Monday 0) = days + 3
BURST_START = _MIDNIGHT + 40 * 7 * DAY + ((1 - (_MIDNIGHT // DAY + 3) % 7) % 7) * DAY + 3 * 3600
BURST_HOURS = 3


def traffic(ts: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Bytes/s out of a DMZ port: the diurnal and weekly curve of tests.longhistory, 15 %
    sample noise, a day-to-day level that wanders by 15 %, eight weekday holidays at half the
    traffic, and a backup at 02:00 on the 1st of each month at 2.5x."""
    level = 2e6 * _shape(ts, int(ts[-1]))
    days = (ts - ts[0]) // DAY
    daily = np.exp(0.15 * rng.standard_normal(int(days.max()) + 1))[days]
    holidays = rng.choice(np.arange(int(days.max()) + 1), 8, replace=False)
    holiday = np.where(np.isin(days, holidays), 0.5, 1.0)
    noise = np.clip(1 + 0.15 * rng.standard_normal(ts.size), 0.2, None)
    first_of_month = (np.array([np.datetime64(int(t), "s").astype(object).day for t in ts[::288]])
                      == 1)[days]
    backup = np.where(first_of_month & ((ts % DAY) // 3600 == 2), 2.5, 1.0)
    return level * daily * holiday * noise * backup


def test_a_year_with_a_weekly_pattern_flags_the_burst_and_almost_nothing_else(tmp_path):
    rng = np.random.default_rng(20)
    ts = np.arange(START + STEP, END + 1, STEP, dtype=np.int64)
    values = traffic(ts, rng)
    burst = (ts > BURST_START) & (ts <= BURST_START + BURST_HOURS * 3600)
    values = np.where(burst, values * 8, values)
    store = RrdStore(tmp_path / "rrd")
    config = BaselineConfig(enabled=True)
    flagged: list[int] = []
    inside = judged = 0
    checks = {}
    for day in range(DAYS):
        part = slice(day * 288, (day + 1) * 288)
        store.write([Measurement(ROUTER, PORT, "out_octets", float(v), Kind.GAUGE, "B/s", int(t),
                                 minimum=0) for t, v in zip(ts[part], values[part], strict=True)],
                    STEP)
        ((info, metric, factor),) = selected(config, store.series())
        ends = np.arange(ts[part][0] - STEP + 3600, ts[part][-1] + 1, 3600)
        hours = judge_hours(store, info, metric, ends, config.weeks, factor)
        flagged += [int(e) for e in hours.ends[hours.anomalous]]
        # The hourly job's checks, on the day they are made (5-minute rows are kept 32 days).
        for at in (BURST_START + BURST_HOURS * 3600 + 60, BURST_START + 7 * DAY + 3600):
            if ts[part][0] <= at <= ts[part][-1] + STEP:
                checks[at] = check_hour(store, config, at)
        known = ~np.isnan(hours.expected.usual) & ~np.isnan(hours.values)
        judged += int(known.sum())
        inside += int((known & (hours.values >= hours.expected.low)
                       & (hours.values <= hours.expected.high)).sum())
    burst_ends = {BURST_START + (i + 1) * 3600 for i in range(BURST_HOURS)}
    false_positives = sorted(set(flagged) - burst_ends)
    print(f"\nbaseline over {DAYS} days: {judged} hours judged, {len(false_positives)} false "
          f"positive(s) ({100 * len(false_positives) / judged:.2f} %), burst hours flagged "
          f"{len(burst_ends & set(flagged))}/{BURST_HOURS}, {100 * inside / judged:.1f} % of "
          "hours inside the band")
    assert burst_ends <= set(flagged)
    assert len(false_positives) <= 3
    assert judged > (DAYS - 6 * 7 - 2) * 24  # after the first weeks every hour has a baseline
    assert inside / judged > 0.9

    # The check of the burst's last hour, as the hourly job makes it.
    (result,) = checks[BURST_START + BURST_HOURS * 3600 + 60]
    print(result.message)
    assert result.state is State.WARNING
    assert result.check == "baseline eth1 out_octets" and result.target == ROUTER
    assert result.message.startswith("dmz-router eth1 out_octets is ")
    assert "x the usual for Tuesday 05:00: " in result.message
    (calm,) = checks[BURST_START + 7 * DAY + 3600]
    assert calm.state is State.OK and "for Tuesday 03:00" in calm.message


def test_band_rules():
    week = seasonal.WEEK
    history = np.array([10.0, 12.0, 11.0, 50.0])  # four weeks of one slot; one bad week
    band = seasonal.band(history, 0, week, np.array([4 * week + 1.0]), weeks=4)
    assert band.usual[0] == 11.5  # the median ignores the bad week
    assert seasonal.anomalous(np.array([30.0, 50.0]), band, 4.0).tolist() == [False, True]
    few = seasonal.band(history[:1], 0, week, np.array([1 * week + 1.0]), weeks=4)
    assert np.isnan(few.usual[0])  # one week is not enough
    flat = seasonal.band(np.zeros(4), 0, week, np.array([4 * week + 1.0]), weeks=4)
    assert not seasonal.anomalous(np.array([1e-3]), flat, 4.0)[0]  # below the floor of a flat 0


def test_selection_patterns():
    from monitor.store import SeriesInfo

    config = BaselineConfig(series=[
        BaselineSeries("*_octets", target="dmz-router", instance="ppp*", enabled=False),
        BaselineSeries("out_octets", factor=6.0), BaselineSeries("in_octets")])
    ppp = SeriesInfo("dmz-router", "ppp0", None, 300, {"in_octets": "a", "out_octets": "b"})
    eth = SeriesInfo("dmz-router", "eth1", None, 300, {"in_octets": "a", "out_octets": "b",
                                                      "in_errors": "c"})
    assert [(i.instance, m, f) for i, m, f in selected(config, [ppp, eth])] == [
        ("eth1", "in_octets", 4.0), ("eth1", "out_octets", 6.0)]


def test_week_graph_draws_the_usual_band(tmp_path):
    """Seven weeks of traffic with last night's burst: the week graph has the band under the
    data, the burst above it."""
    from graphs.render import PERIODS, Job, Renderer, build_graph, render_job, window

    rng = np.random.default_rng(3)
    end = END
    ts = np.arange(end - 7 * 7 * DAY + STEP, end + 1, STEP, dtype=np.int64)
    values = traffic(ts, rng)
    burst = (ts > end - 20 * 3600) & (ts <= end - 17 * 3600)
    values = np.where(burst, values * 8, values)
    store = RrdStore(tmp_path / "rrd")
    for begin in range(0, ts.size, 2016):
        part = slice(begin, begin + 2016)
        store.write([Measurement(ROUTER, PORT, name, float(v * share), Kind.GAUGE, "B/s", int(t),
                                 minimum=0) for t, v in zip(ts[part], values[part], strict=True)
                     for name, share in (("out_octets", 1.0), ("in_octets", 0.3))], STEP)
    (info,) = store.series()
    result = render_job(store, Renderer(), Job(info, ["day", "week"], tmp_path / "png", end,
                                               baseline="out_octets", weeks=6))
    assert result.error == "" and result.drawn == ["day", "week"]
    assert (tmp_path / "png" / "week.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The graph itself: the band is the first layer, the burst is above it.
    from graphs.render import add_usual_band

    start, stop, resolution = window(PERIODS["week"], end, STEP)
    series = store.fetch_path(info, start, stop, resolution)
    graph = build_graph(info, series)
    add_usual_band(graph, store, info, "out_octets", 6, series)
    usual = graph.layers[0]
    assert usual.label == "usual" and usual.style == "band"
    out = next(layer for layer in graph.layers if layer.label == "Out")
    over = out.values > usual.values
    assert over[-40:-33].any() and over[:-48].mean() < 0.2
    assert any(row.label == "usual" for row in graph.legend[:4])


async def test_agent_schedules_the_baseline_job_and_consumes_its_checks(tmp_path):
    """[baseline] on: the agent runs the hourly job off the loop and its checks land in the
    status book like a collector's."""
    from monitor.agent import Agent
    from monitor.config import parse_config

    config = parse_config('[host]\nenabled = false\n[disks]\nenabled = false\n'
                          '[baseline]\nenabled = true\n', base_dir=tmp_path)
    config.agent.data_dir = tmp_path
    config.storage.rrd_dir = tmp_path / "rrd"
    config.web.interval = 0
    agent = Agent(config)
    agent.store.write([Measurement(ROUTER, PORT, "out_octets", 1e6, Kind.GAUGE, "B/s",
                                   END - 600 + i * STEP, minimum=0) for i in range(3)], STEP)
    agent.schedule()
    try:
        assert "baseline" in agent.scheduler.stats()
        from alerts.baseline import BaselineJob

        await agent._baseline(BaselineJob(agent.store, config.baseline))()  # what the job runs
        (status,) = [s for s in agent.status.all() if s.check.startswith("baseline ")]
        assert status.check == "baseline eth1 out_octets" and status.state is State.OK
    finally:
        await agent.close()


def _weeks_of_traffic(tmp_path, weeks: int) -> RrdStore:
    """`weeks` weeks of the daily shape (growing), written a week at a time."""
    ts = np.arange(END - weeks * 7 * DAY + STEP, END + 1, STEP, dtype=np.int64)
    values = 2e6 * _shape(ts, int(ts[-1]))
    store = RrdStore(tmp_path / "rrd")
    for part in range(0, ts.size, 288 * 7):
        store.write([Measurement(ROUTER, PORT, "out_octets", float(v), Kind.GAUGE, "B/s", int(t),
                                 minimum=0) for t, v in zip(ts[part:part + 288 * 7],
                                                            values[part:part + 288 * 7], strict=True)],
                    STEP)
    return store


def test_nine_weeks_of_baseline_still_compare_the_hour_of_the_week(tmp_path):
    """weeks = 9 (the most the config takes) asks for more than the 2-hour archive keeps
    (2h:9w): rrdtool fetch then answers from the daily archive, which covers it all. The
    usual level must stay that of the hour (a quiet 04:00 is not the day's average)."""
    weeks = 9
    store = _weeks_of_traffic(tmp_path, weeks + 1)
    ((info, metric, factor),) = selected(BaselineConfig(enabled=True), store.series())
    day = END - END % DAY - 2 * DAY
    quiet, busy = (judge_hours(store, info, metric, np.array([day + hour * 3600]), weeks, factor)
                   for hour in (4, 20))
    # The series grows by 80 % over the 10 weeks: the usual (a median of earlier weeks) lags.
    for hours in (quiet, busy):
        assert 0.6 * hours.values[0] < hours.expected.usual[0] <= hours.values[0]
    assert busy.expected.usual[0] > 2 * quiet.expected.usual[0]


def test_the_week_graphs_band_with_eight_weeks_follows_the_hours(tmp_path):
    """The week graph's band with weeks = 8 reaches 9 weeks back, past the 2-hour archive
    (2h:9w): from the daily archive rrdtool would give, each day's band would be flat."""
    from graphs.render import PERIODS, add_usual_band, build_graph, window

    weeks = 8
    store = _weeks_of_traffic(tmp_path, weeks + 2)
    (info,) = store.series()
    start, stop, resolution = window(PERIODS["week"], END, STEP)
    series = store.fetch_path(info, start, stop, resolution)
    graph = build_graph(info, series)
    add_usual_band(graph, store, info, "out_octets", weeks, series)
    usual = graph.layers[0]
    assert usual.label == "usual"
    last_day = usual.values[-288 // (series.step // STEP):]
    assert np.nanmax(last_day) > 2 * np.nanmin(last_day)


def test_the_hour_is_named_in_local_time_where_hours_start_at_half_past(tmp_path, monkeypatch):
    """India (UTC+5:30), Newfoundland, central Australia: the judged hour (whole UTC hours,
    as the store's rows are) starts at hh:30 local time, and the check must say so."""
    import time

    store = RrdStore(tmp_path / "rrd")
    store.write([Measurement(ROUTER, PORT, "out_octets", 1e6, Kind.GAUGE, "B/s",
                             END - 3000 + i * STEP, minimum=0) for i in range(10)], STEP)
    monkeypatch.setenv("TZ", "Asia/Kolkata")
    time.tzset()
    try:
        (check,) = check_hour(store, BaselineConfig(enabled=True), END - END % 3600 + 60)
    finally:
        monkeypatch.undo()
        time.tzset()
    local = time.gmtime(END - END % 3600 - 3600 + 5.5 * 3600)
    assert time.strftime("%A %H:%M", local) in check.message and ":30" in check.message


def test_an_hour_mostly_missing_is_not_judged_on_its_few_samples(tmp_path):
    """The poller was away for 50 minutes of the hour (an agent restart, a device that did not
    answer): 10 minutes of a burst are not that hour's average. Less than half an hour known:
    no verdict; half or more: judged as before."""
    ts = np.arange(END - 4 * 7 * DAY + STEP, END - 3600 + 1, STEP, dtype=np.int64)
    store = RrdStore(tmp_path / "rrd")
    quiet = [Measurement(ROUTER, PORT, "out_octets", 1e6, Kind.GAUGE, "B/s", int(t), minimum=0)
             for t in ts]
    store.write(quiet, STEP)
    # The last hour: 50 minutes unknown (the heartbeat lapses), then 10 minutes at 10x.
    store.write([Measurement(ROUTER, PORT, "out_octets", None, Kind.GAUGE, "B/s", END - 3600 + 600,
                             minimum=0)], STEP)
    store.write([Measurement(ROUTER, PORT, "out_octets", 1e7, Kind.GAUGE, "B/s", t, minimum=0)
                 for t in (END - 300, END)], STEP)
    ((info, metric, factor),) = selected(BaselineConfig(enabled=True), store.series())
    hours = judge_hours(store, info, metric, np.array([END]), 6, factor)
    assert np.isnan(hours.values[0]) and not hours.anomalous[0]
    store.write([Measurement(ROUTER, PORT, "out_octets", 1e7, Kind.GAUGE, "B/s", t, minimum=0)
                 for t in range(END + STEP, END + 3600 + 1, STEP)], STEP)
    hours = judge_hours(store, info, metric, np.array([END + 3600]), 6, factor)
    assert hours.values[0] == 1e7 and hours.anomalous[0]


def test_outbound_mail_far_above_the_usual_for_the_hour_of_the_week(tmp_path):
    """Five weeks of the mail-log collector's outbound counter (DERIVE, unit msg: busy
    weekdays, quiet nights and weekends), then a hijacked account's spam run on a Tuesday
    night: the default [baseline] series for it says so, in messages per hour."""
    from collectors.maillog import COUNT_UNITS, TARGET

    rng = np.random.default_rng(7)
    thursday = END - END % (7 * DAY)  # weeks since the epoch start on a Thursday, 00:00 UTC
    hour_end = thursday - 2 * DAY + 4 * 3600  # Tuesday 04:00: the hour from 03:00 is judged
    ts = np.arange(hour_end - 5 * 7 * DAY, hour_end + 1, STEP, dtype=np.int64)
    hour_of_day, weekday = (ts % DAY) // 3600, ((ts // DAY) + 3) % 7
    per_hour = np.where((hour_of_day >= 8) & (hour_of_day < 19) & (weekday < 5), 120.0, 12.0)
    per_hour[ts > hour_end - 3600] = 2400.0  # the spam run
    total = np.cumsum(rng.poisson(per_hour * STEP / 3600))
    store = RrdStore(tmp_path / "rrd")
    for begin in range(0, ts.size, 2016):
        store.write([Measurement(TARGET, "postfix", "outbound", float(n), Kind.DERIVE,
                                 COUNT_UNITS["outbound"], int(t), minimum=0)
                     for t, n in zip(ts[begin:begin + 2016], total[begin:begin + 2016],
                                     strict=True)], STEP)
    config = BaselineConfig(enabled=True)
    (calm,) = check_hour(store, config, hour_end - 3600 + 60)
    assert calm.state is State.OK and calm.message.startswith("mail postfix outbound: ")
    (spam,) = check_hour(store, config, hour_end + 60)
    print(spam.message)
    assert spam.state is State.WARNING and spam.check == "baseline postfix outbound"
    assert spam.message.startswith("mail postfix outbound is ")
    assert "x the usual for Tuesday 03:00: 2.4" in spam.message and "kmsg/h (usual 1" in spam.message
    # The Postfix graph draws the band of outbound under its lines, the spam run above it.
    from graphs.render import PERIODS, add_usual_band, build_graph, window

    info = store.info(TARGET, "postfix")
    start, stop, resolution = window(PERIODS["day"], hour_end, STEP)
    series = store.fetch_path(info, start, stop, resolution)
    graph = build_graph(info, series)
    add_usual_band(graph, store, info, "outbound", config.weeks, series)
    usual = graph.layers[0]
    assert usual.label == "usual" and graph.unit == "msg/h"
    outbound = next(layer for layer in graph.layers if layer.label == "outbound")
    # (5-minute counts of a few mails are noisy around a band of hourly levels: the spam run
    # is 10x above it, nothing else is.)
    far_above = outbound.values > 10 * usual.values
    stamps = np.array(series.timestamps)[: far_above.size]
    spam_rows = (stamps > hour_end - 3600) & (stamps <= hour_end)
    assert spam_rows.sum() == 12 and far_above[spam_rows].all()
    assert not far_above[~spam_rows].any()
