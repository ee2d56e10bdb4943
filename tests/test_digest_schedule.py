"""Digests on the agent's scheduler, on a hand-moved clock, with rows written as the agent writes
them: a collector polling every 5 minutes at its own phase (137 s past each 5 minutes, as an
agent started then does) stores its samples and its heartbeat through monitor.store at each
poll, so the RRD row that ends at a digest's scheduled time (07:00) only exists after the first
poll after 07:00. Every scheduled digest must still count that row, its mail must still speak
of the scheduled period, and consecutive digests must tile time: each one's figures equal an
independent integral of what was polled over exactly its period. A restart of the agent between
07:00 and the poll that writes the row (the digest was waiting) must not lose that digest."""

from __future__ import annotations

import asyncio
import email.utils
import itertools
import json
import logging
import os
import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from alerts.digest import (
    DigestBuilder,
    collectors_behind,
    fmt_time,
    load_sent,
    missed_period,
    period_of,
    schedule_digests,
    wait_for_rows,
)
from alerts.outbox import Outbox, outbox_path
from monitor.config import parse_config
from monitor.model import Measurement
from monitor.scheduler import Scheduler
from monitor.status import StatusBook
from monitor.store import RrdStore
from tests.clock import ManualClock
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_digest_periods import config_text as periods_config

STEP = 300
PHASE = 137


def config_text(tmp_path: Path, port: int) -> str:
    return periods_config(tmp_path, tmp_path / "no-list.log", ["traffic", "services"], more=f"""
[smtp]
host = "127.0.0.1"
port = {port}
from = "monitor@example.net"
""")


class Poller:
    """The agent's 5-minute collector: each run stores traffic, a service's answer and the
    run's heartbeat (agent "collector snmp" run_seconds) at the run's time, as the agent does."""

    def __init__(self, store: RrdStore, clock: ManualClock) -> None:
        self.store, self.clock = store, clock
        self.rng = random.Random(13)
        self.polls: list[tuple[float, float]] = []  # (time, in_octets rate)

    async def run(self) -> None:
        t = self.clock.time()
        rate = float(self.rng.randrange(1000, 90_000))
        self.polls.append((t, rate))
        assert not self.store.write([
            Measurement("dmz-router", "eth0", "in_octets", rate, timestamp=t),
            Measurement("dmz-router", "eth0", "out_octets", rate / 2, timestamp=t),
            Measurement("mail.example.net", "smtp", "response_seconds", 0.02, timestamp=t),
            Measurement("agent", "collector snmp", "run_seconds", 0.3, timestamp=t)], STEP).errors

    def octets(self, start: float, end: float) -> float:
        """What the polled rates add up to over (start, end]: each poll's rate holds from the
        poll before it (rrdtool's GAUGE), independent of how rrdtool cuts rows."""
        total = 0.0
        for (before, _), (at, rate) in itertools.pairwise(self.polls):
            low, high = max(start, before), min(end, at)
            if high > low:
                total += rate * (high - low)
        return total


async def until_parked(scheduler: Scheduler, clock: ManualClock) -> None:
    """Wait (in real time) until every running job waits on the clock again or is done: a
    digest builds in worker threads and talks SMTP, which the hand-moved clock does not wait
    for."""
    for _ in range(20_000):
        running = sum(1 for task in scheduler._running if not task.done())
        parked = sum(1 for _, _, future in clock._sleepers if not future.done())
        if not running or parked >= running + len(scheduler._timers):
            return
        await asyncio.sleep(0.005)
    raise AssertionError("a job neither finished nor waited on the clock")


async def test_scheduled_digests_count_the_row_ending_at_their_time_and_tile_time(
        tmp_path: Path, caplog: pytest.LogCaptureFixture):
    caplog.set_level(logging.DEBUG, logger="monitor.digest")
    recorder = Recorder()
    server, port = await start_smtp(recorder)
    config = parse_config(config_text(tmp_path, port))
    sunday = datetime(2026, 11, 1, 6, 0)
    assert sunday.weekday() == 6
    clock = ManualClock(sunday.timestamp() + PHASE)
    store = RrdStore(tmp_path / "data" / "rrd", archives=config.storage.archives)
    status = StatusBook(config.state_dir / "status.json")
    outbox = Outbox(outbox_path(config.state_dir), config.smtp, clock=clock.time)
    poller = Poller(store, clock)

    def agent() -> Scheduler:
        scheduler = Scheduler(clock=clock)
        scheduler.add_interval("snmp", STEP, poller.run)
        schedule_digests(config, scheduler, store, status, outbox, clock=clock)
        scheduler.start()
        return scheduler

    async def run_until(when: datetime, scheduler: Scheduler) -> None:
        while clock.time() < when.timestamp():
            await clock.advance(min(60.0, when.timestamp() - clock.time()))
            await until_parked(scheduler, clock)

    restart_day = datetime(2026, 11, 4, 7, 0)  # a Wednesday
    try:
        scheduler = agent()
        # The agent stops at 07:00:05 while the daily digest waits for the row up to 07:00 (the
        # collector's next poll is due at 07:02:17), and starts again at 07:03:07.
        await run_until(restart_day + timedelta(seconds=5), scheduler)
        assert recorder.subjects()[-1].endswith("2026-11-03")  # Wednesday's is not out yet
        stopping = asyncio.create_task(scheduler.stop(timeout=1))
        await clock.advance(2)
        await stopping
        await clock.jump(180)
        scheduler = agent()  # sends the missed digest at once, once the row is in
        await run_until(datetime(2026, 11, 9, 8, 30), scheduler)
        await scheduler.stop()
    finally:
        store.close()
        outbox.close()
        server.close()

    counted = [(r.args[0], r.args[3]) for r in caplog.records
               if r.getMessage().startswith("digest ") and " counted " in r.getMessage()]
    mails = [r.message for r in recorder.received]
    assert [m["X-Monitor-Digest"] for m in mails] == [name for name, _ in counted]
    expected = {"daily": [period_of("0 7 * * *", datetime(2026, 11, d, 7).timestamp())
                          for d in range(1, 10)],
                "weekly": [period_of("0 8 * * 1", datetime(2026, 11, d, 8).timestamp())
                           for d in (2, 9)]}
    first_poll = poller.polls[0][0]
    for name, periods in expected.items():
        sent = [(m, json.loads(figures)) for m, (n, figures) in zip(mails, counted, strict=True)
                if n == name]
        # One mail per scheduled time, none twice (the restart's included), none missing.
        assert len(sent) == len(periods), name
        assert all(a[1] == b[0] for a, b in itertools.pairwise(periods))
        for (message, figures), (start, end) in zip(sent, periods, strict=True):
            # The mail speaks of its scheduled period, whenever it was built.
            assert email.utils.parsedate_to_datetime(message["Date"]).timestamp() == end
            body = message.get_body(("plain",)).get_content()
            assert f"{fmt_time(start)} - {fmt_time(end)}" in body
            assert ("Sent late" in body) == (name == "daily" and end == restart_day.timestamp())
            if start < first_poll + STEP:
                continue  # a period from before the agent's first poll
            rows = (end - start) / STEP
            assert figures["services: smtp (mail.example.net) samples"] == rows, (name, end)
            assert figures["services: smtp (mail.example.net) answered"] == rows
            assert figures["traffic: dmz-router eth0 in"] == pytest.approx(
                poller.octets(start, end), rel=1e-9), (name, fmt_time(end))
            assert figures["traffic: dmz-router eth0 out"] == pytest.approx(
                poller.octets(start, end) / 2, rel=1e-9)
            assert "written at the agent's next poll" not in body  # nothing left out
    # The schedule remembers what it sent: a restart now catches nothing up twice.
    assert load_sent(config.state_dir) == {"daily": expected["daily"][-1][1],
                                           "weekly": expected["weekly"][-1][1]}


def test_a_missed_digest_is_caught_up_only_when_one_was_sent_before_and_it_is_recent():
    config = parse_config(config_text(Path("/nonexistent"), 25))
    daily = next(d for d in config.digests if d.name == "daily")
    seven = datetime(2026, 11, 4, 7).timestamp()
    yesterday = seven - 86400
    assert missed_period(daily, yesterday, seven + 180) == (yesterday, seven)
    assert missed_period(daily, seven, seven + 180) is None  # sent before the restart
    assert missed_period(daily, None, seven + 180) is None  # a first start sends nothing
    assert missed_period(daily, yesterday - 3 * 86400, seven + 11 * 3600) == (yesterday, seven)
    assert missed_period(daily, yesterday, seven + 13 * 3600) is None  # tomorrow's is nearer


async def test_a_collector_that_never_comes_back_holds_the_digest_a_bounded_time(tmp_path: Path):
    """The collector's last poll was at 06:57:17; it never polls again. The digest waits two of
    its intervals and a minute past 07:00, then goes out without the row."""
    seven = datetime(2026, 11, 4, 7).timestamp()
    clock = ManualClock(seven - 86400 - 2 * STEP + PHASE)
    store = RrdStore(tmp_path / "data" / "rrd", archives=["step:40d"])
    poller = Poller(store, clock)
    while clock.time() < seven:
        await poller.run()
        clock.now += STEP
    for info in store.series():  # as the agent leaves them: last changed at the last poll
        os.utime(info.path, (poller.polls[-1][0],) * 2)
    waiting = asyncio.create_task(wait_for_rows(store, seven, clock))
    for _ in range(200):
        await asyncio.sleep(0.01)
        await clock.advance(10)
        if waiting.done():
            break
    (behind,) = await waiting
    assert behind.instance == "collector snmp"
    assert seven + 2 * STEP + 60 <= clock.time() <= seven + 2 * STEP + 60 + 20
    config = parse_config(config_text(tmp_path, 25))
    daily = next(d for d in config.digests if d.name == "daily")
    report = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "s.json"),
                           clock=clock.time).build(daily)
    store.close()
    traffic = next(s for s in report.sections if s.key == "traffic")
    # Everything up to 06:55; the row up to 07:00 is not there (under 1 % of the day: no note).
    assert traffic.totals["dmz-router eth0 in"] == pytest.approx(
        poller.octets(seven - 86400, seven - STEP), rel=1e-9)


async def test_rows_rrdcached_still_holds_count_as_written(tmp_path: Path, rrdcached: str):
    """Through rrdcached (which writes files an hour late here) the poll after 07:00 is seen at
    once: the look at each heartbeat goes through the daemon, which flushes that file first."""
    seven = datetime(2026, 11, 4, 7).timestamp()
    clock = ManualClock(seven - 3600 + PHASE)
    store = RrdStore(tmp_path / "rrd", archives=["step:40d"], rrdcached=rrdcached)
    poller = Poller(store, clock)
    try:
        while clock.time() < seven:
            await poller.run()
            clock.now += STEP
        assert [info.instance for info in collectors_behind(store, seven)] == ["collector snmp"]
        await poller.run()  # 07:02:17
        assert collectors_behind(store, seven) == []
        assert await wait_for_rows(store, seven, clock) == []
    finally:
        store.close()
