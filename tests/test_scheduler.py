"""The scheduler's policies on a real APScheduler: no overlap, overrun counting, back-off."""

import asyncio
import itertools

from monitor.scheduler import Scheduler


async def test_a_slow_job_never_overlaps_itself():
    scheduler = Scheduler()
    running = 0
    most = 0

    async def slow() -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.35)
        running -= 1

    scheduler.add_interval("slow", 0.1, slow)
    scheduler.start()
    await asyncio.sleep(1.2)
    await scheduler.stop()
    stats = scheduler.stats()["slow"]
    assert most == 1
    assert stats.runs >= 2
    assert stats.overruns >= 1
    assert running == 0  # stop() waited for the run in flight


async def test_failing_job_backs_off_and_recovers():
    scheduler = Scheduler(max_backoff=0.4)
    calls = []

    async def flaky() -> None:
        calls.append(asyncio.get_running_loop().time())
        if len(calls) <= 3:
            raise RuntimeError("device unreachable")

    scheduler.add_interval("flaky", 0.05, flaky)
    scheduler.start()
    await asyncio.sleep(1.5)
    await scheduler.stop()
    stats = scheduler.stats()["flaky"]
    assert stats.failures == 3
    assert stats.skipped_backoff > 0
    assert stats.consecutive_failures == 0  # it recovered
    assert "device unreachable" in stats.last_error
    gaps = [b - a for a, b in itertools.pairwise(calls)][:3]
    assert gaps[1] > gaps[0]  # waits grow: 0.05, 0.1, 0.2 (+ scheduling slack)
