"""A clock that moves only when the test says so, for monitor.scheduler.Clock users: no test
waits on wall time, and every turn of a job happens at a time the test can name."""

from __future__ import annotations

import asyncio
import heapq
import itertools

START = 1_800_000_000.0  # 2027-01-15 08:00 UTC: a whole second, exact in datetime and float


async def settle() -> None:
    """Let every task that can run, run, until each waits again (on this clock or I/O)."""
    for _ in range(50):
        await asyncio.sleep(0)


class ManualClock:
    def __init__(self, start: float = START) -> None:
        self.now = start
        self._sleepers: list[tuple[float, int, asyncio.Future[None]]] = []
        self._order = itertools.count()

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        future = asyncio.get_running_loop().create_future()
        heapq.heappush(self._sleepers, (self.now + max(0.0, seconds), next(self._order), future))
        await future

    async def advance(self, seconds: float) -> None:
        """Time goes on by `seconds`: each sleeper wakes at its own time, in order, and what it
        starts runs before the clock moves on."""
        end = self.now + seconds
        await settle()
        while self._sleepers and self._sleepers[0][0] <= end:
            when, _, future = heapq.heappop(self._sleepers)
            self.now = max(self.now, when)
            if not future.done():
                future.set_result(None)
                await settle()
        self.now = end
        await settle()

    async def jump(self, seconds: float) -> None:
        """Time passes at once (a suspend, a clock step): whoever was due meanwhile wakes late,
        at the new time."""
        self.now += seconds
        while self._sleepers and self._sleepers[0][0] <= self.now:
            _, _, future = heapq.heappop(self._sleepers)
            if not future.done():
                future.set_result(None)
        await settle()
