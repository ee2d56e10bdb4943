"""The scheduler's policies on APScheduler's triggers, driven by a hand-moved clock: no overlap,
overrun counting, back-off, coalesced and missed turns, cron turns, stop() and in-flight runs.
Every turn happens at a time the test names; nothing waits on wall time."""

from __future__ import annotations

import asyncio
from datetime import datetime

from monitor.scheduler import Scheduler
from tests.clock import START, ManualClock


async def test_a_slow_job_never_overlaps_itself_and_stop_waits_for_it():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    running = most = 0

    async def slow() -> None:  # 35 s of work every 10 s
        nonlocal running, most
        running += 1
        most = max(most, running)
        await clock.sleep(35)
        running -= 1

    scheduler.add_interval("slow", 10, slow)
    scheduler.start()
    await clock.advance(125)
    stats = scheduler.stats()["slow"]
    # Runs start at 0, 40, 80 and 120 s; the turns at 10-30, 50-70 and 90-110 s are overruns.
    assert most == 1 and running == 1
    assert (stats.runs, stats.overruns) == (3, 9)
    stopping = asyncio.create_task(scheduler.stop())
    await clock.advance(30)  # the run that began at 120 s ends at 155 s
    await stopping
    assert running == 0 and scheduler.stats()["slow"].runs == 4  # stop() waited for it
    await clock.advance(100)
    assert scheduler.stats()["slow"].runs == 4  # and nothing starts after the stop


async def test_failing_job_backs_off_and_recovers():
    clock = ManualClock()
    scheduler = Scheduler(max_backoff=40, clock=clock)
    calls: list[float] = []

    async def flaky() -> None:
        calls.append(clock.now - START)
        if len(calls) <= 3:
            raise RuntimeError("device unreachable")

    scheduler.add_interval("flaky", 10, flaky)
    scheduler.start()
    await clock.advance(95)
    await scheduler.stop()
    stats = scheduler.stats()["flaky"]
    # Fails at 0 (next try after 10 s), 10 (20 s), 30 (40 s: max_backoff); works at 70 and on.
    assert calls == [0, 10, 30, 70, 80, 90]
    assert stats.skipped_backoff == 4  # the turns at 20, 40, 50 and 60 s
    assert stats.failures == 3 and stats.consecutive_failures == 0  # it recovered
    assert "device unreachable" in stats.last_error


async def test_turns_missed_during_a_suspend_come_as_one():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    runs: list[float] = []

    async def job() -> None:
        runs.append(clock.now - START)

    scheduler.add_interval("poll", 60, job)
    scheduler.start()
    await clock.advance(90)
    assert runs == [0, 60]
    await clock.jump(3600)  # suspended for an hour
    assert runs == [0, 60, 3690]  # once, not sixty times
    await clock.advance(60)
    assert runs == [0, 60, 3690, 3720]  # back on the interval's grid
    await scheduler.stop()
    assert scheduler.stats()["poll"].missed == 0


async def test_an_aligned_job_runs_at_once_then_a_tenth_into_each_interval():
    clock = ManualClock(START + 7.7)
    scheduler = Scheduler(clock=clock)
    runs: list[float] = []

    async def job() -> None:
        runs.append(round(clock.now - START, 3))

    scheduler.add_interval("snmp", 10, job, aligned=True)
    scheduler.add_interval("host", 10, job)  # not aligned: from its start
    scheduler.start()
    await clock.advance(40)
    # The first turn at once, then on the cycles' grid, not 10 s after wherever it started.
    assert sorted(runs) == [7.7, 7.7, 11, 17.7, 21, 27.7, 31, 37.7, 41, 47.7]
    await scheduler.stop()


async def test_jitter_spreads_turns_without_stretching_the_interval():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    runs: list[float] = []

    async def job() -> None:
        runs.append(clock.now - START)

    scheduler.add_interval("poll", 300, job, jitter=30)
    scheduler.start()
    await clock.advance(300 * 200 + 31)
    await scheduler.stop()
    # Each turn within its slot's first 30 s (APScheduler's own jitter drifts: each turn is
    # counted from the jittered one before, ~15 s later every turn).
    assert len(runs) == 201
    assert all(0 <= t - 300 * k <= 30 for k, t in enumerate(runs)), runs[:10]
    assert len({round(t - 300 * k) for k, t in enumerate(runs)}) > 5  # spread, not fixed


async def test_run_now_false_waits_one_interval():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    runs: list[float] = []

    async def job() -> None:
        runs.append(clock.now - START)

    scheduler.add_interval("site", 300, job, run_now=False)
    scheduler.start()
    await clock.advance(299)
    assert runs == []
    await clock.advance(302)
    assert runs == [300, 600]
    await scheduler.stop()


async def test_cron_turns_at_local_time_and_a_turn_hours_late_is_skipped():
    six_fifty = datetime(2027, 3, 1, 6, 50).timestamp()  # a Monday, local time as cron reads it
    clock = ManualClock(six_fifty)
    scheduler = Scheduler(clock=clock)
    runs: list[datetime] = []

    async def digest() -> None:
        runs.append(datetime.fromtimestamp(clock.now))

    scheduler.add_cron("digest", "0 7 * * 1", digest)  # Mondays 07:00 (crontab's 1)
    scheduler.start()
    await clock.advance(3600)
    assert runs == [datetime(2027, 3, 1, 7, 0)]
    # Asleep from Sunday evening to Monday 09:30 of the next week: the 07:00 turn is more than
    # its hour of grace late and is not run at 09:30.
    # (Jumps over the days with nothing due: the timer's one-minute naps would be ten thousand.)
    await clock.jump(datetime(2027, 3, 7, 20, 0).timestamp() - clock.now)
    assert len(runs) == 1
    await clock.jump(datetime(2027, 3, 8, 9, 30).timestamp() - clock.now)
    assert len(runs) == 1 and scheduler.stats()["digest"].missed == 1
    await clock.jump(datetime(2027, 3, 15, 6, 58).timestamp() - clock.now)
    await clock.advance(300)
    assert runs[1:] == [datetime(2027, 3, 15, 7, 0)]
    await scheduler.stop()


async def test_stop_cancels_a_run_that_outlasts_its_timeout():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    cancelled = asyncio.Event()

    async def hung() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    scheduler.add_interval("hung", 10, hung)
    scheduler.start()
    await clock.advance(1)
    stopping = asyncio.create_task(scheduler.stop(timeout=30))
    await clock.advance(29)
    assert not stopping.done()
    await clock.advance(2)
    await stopping
    assert cancelled.is_set()


async def test_a_job_added_after_start_runs_too():
    clock = ManualClock()
    scheduler = Scheduler(clock=clock)
    runs: list[float] = []
    scheduler.start()

    async def job() -> None:
        runs.append(clock.now - START)

    scheduler.add_interval("late", 5, job)
    await clock.advance(11)
    assert runs == [0, 5, 10]
    await scheduler.stop()
