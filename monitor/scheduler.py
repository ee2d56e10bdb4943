"""Runs jobs on a clock: APScheduler's triggers (intervals with jitter, crontab expressions)
decide when, a timer task per job runs them, with the policies an agent needs:

- a job never runs twice at once; a turn that comes while it still runs is skipped, logged
  and counted (an overrun);
- turns missed while the process slept come as one (coalesced), or not at all when the last
  of them is older than the job's grace time;
- a job that fails backs off (interval x 2, x 4, ... up to `max_backoff`), and recovers at once;
- `stop()` lets in-flight runs finish (so writes complete) before it returns.

Time comes from a `Clock` (wall time for the triggers, monotonic time for durations, and the
sleeping): the system's by default, a hand-driven one in tests.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Protocol

from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field: str) -> str:
    """A crontab day-of-week field (0 and 7 are Sunday, 1 is Monday) in day names: APScheduler
    3's from_crontab counts 0 as Monday, so "0 8 * * 1" would fire on Tuesdays."""
    if field == "*" or not re.fullmatch(r"[\d,*/-]+", field):
        return field  # names (mon-fri) mean the same to both
    days: set[int] = set()
    for part in field.split(","):
        span, _, step = part.partition("/")
        if span == "*":
            low, high = 0, 6
        elif "-" in span:
            low, high = (int(x) for x in span.split("-", 1))
        else:
            low = high = int(span)
            high = 7 if step else high
        if not 0 <= low <= high <= 7 or (step and int(step) < 1):
            return field  # let APScheduler say what is wrong
        days.update(d % 7 for d in range(low, high + 1, int(step or 1)))
    return ",".join(_DAY_NAMES[d] for d in sorted(days))


def cron_trigger(expression: str) -> CronTrigger:
    """The trigger of a crontab expression (minute hour day month day-of-week), crontab's
    meaning of the day numbers kept; local time."""
    fields = expression.split()
    if len(fields) == 5:
        fields[4] = _crontab_days(fields[4])
    return CronTrigger.from_crontab(" ".join(fields))


class Clock(Protocol):
    """Where the scheduler gets its time and its sleep."""

    def time(self) -> float:
        """Wall-clock seconds since the epoch (what cron expressions and intervals follow)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps (durations, back-off)."""
        ...

    async def sleep(self, seconds: float) -> None: ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)


# The longest single sleep: a timer looks at the wall clock at least this often, so a
# suspend/resume or a clock step delays a turn by at most this much.
MAX_NAP = 60.0

JobFunction = Callable[[], Awaitable[object]]


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    overruns: int = 0
    skipped_backoff: int = 0
    missed: int = 0
    last_duration: float = 0.0
    last_error: str = ""
    backoff_until: float = 0.0


@dataclass
class _Job:
    name: str
    function: JobFunction
    interval: float | None
    trigger: BaseTrigger
    grace: float  # seconds a turn may come late and still run
    first: datetime | None = None  # the first turn, when it is not the trigger's
    jitter: float = 0.0  # seconds each turn may come after its due time, at random
    stats: JobStats = field(default_factory=JobStats)
    run: asyncio.Task[None] | None = None


class Scheduler:
    def __init__(self, *, max_backoff: float = 3600.0, clock: Clock | None = None) -> None:
        self._jobs: dict[str, _Job] = {}
        self._timers: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()
        self._max_backoff = max_backoff
        self._clock: Clock = clock or SystemClock()
        self._started = False
        self._random = random.Random()

    def add_interval(self, name: str, interval: float, function: JobFunction, *,
                     jitter: float = 0.0, run_now: bool = True, aligned: bool = False) -> None:
        """`aligned`: runs at a tenth into each interval counted from the epoch, as every
        agent of a cluster does, so a run falls in one cycle (time // interval) with room to
        spare and a takeover leaves no cycle out."""
        now = self._now()
        start = now
        if aligned:
            begin = (self._clock.time() // interval + 1) * interval + interval / 10
            start = datetime.fromtimestamp(begin, UTC)
        # The jitter is added to each turn's wait, not given to the trigger: APScheduler counts
        # the next turn from the jittered one, so the interval would grow by jitter / 2.
        trigger = IntervalTrigger(seconds=interval, start_date=start)
        self._add(_Job(name, function, interval, trigger, max(1.0, float(int(interval))),
                       first=now if run_now else None if aligned
                       else trigger.get_next_fire_time(now, now), jitter=jitter))

    def add_cron(self, name: str, expression: str, function: JobFunction, *,
                 first: float | None = None) -> None:
        """`first`: a turn at this time (epoch seconds) too, before the expression's own (a
        turn the process missed while it was restarting)."""
        self._add(_Job(name, function, None, cron_trigger(expression), 3600.0,
                       first=None if first is None else datetime.fromtimestamp(first, UTC)))

    def stats(self) -> dict[str, JobStats]:
        return {name: job.stats for name, job in self._jobs.items()}

    def start(self) -> None:
        """Start the jobs' timers (on the running event loop)."""
        self._started = True
        for job in self._jobs.values():
            self._start_timer(job)

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop starting runs; wait (up to `timeout`) for the ones in flight to finish."""
        self._started = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._running:
            log.info("waiting for %d running job(s) to finish", len(self._running))
            deadline = asyncio.ensure_future(self._clock.sleep(timeout))
            try:
                while self._running and not deadline.done():
                    await asyncio.wait({*self._running, deadline},
                                       return_when=asyncio.FIRST_COMPLETED)
            finally:
                deadline.cancel()
        for task in list(self._running):
            task.cancel()

    def _add(self, job: _Job) -> None:
        self._jobs[job.name] = job
        if self._started:
            self._start_timer(job)

    def _start_timer(self, job: _Job) -> None:
        self._timers.append(asyncio.get_running_loop().create_task(self._timer(job),
                                                                   name=f"timer {job.name}"))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock.time(), UTC)

    async def _timer(self, job: _Job) -> None:
        if job.first is not None:  # a turn at once, before the trigger's own
            while (wait := (job.first - self._now()).total_seconds()) > 0:
                await self._clock.sleep(min(wait, MAX_NAP))
            now = self._now()
            self._turn(job, (now - job.first).total_seconds())
            # Then the trigger's schedule from its start: counted on from the first turn, an
            # aligned job would keep that turn's phase (APScheduler adds the interval to the
            # turn it is given), and so run wherever in its cycle the agent happened to start.
            due = job.trigger.get_next_fire_time(None, now)
            if due is not None and due <= job.first:
                due = job.trigger.get_next_fire_time(due, now)
        else:
            due = job.trigger.get_next_fire_time(None, self._now())
        while due is not None:
            turn = due + timedelta(seconds=self._random.uniform(0, job.jitter)) if job.jitter \
                else due
            while (wait := (turn - self._now()).total_seconds()) > 0:
                await self._clock.sleep(min(wait, MAX_NAP))
            now = self._now()
            # Turns missed meanwhile (a suspend, a long stall) come as one: the latest.
            while (following := job.trigger.get_next_fire_time(due, now)) is not None \
                    and following <= now:
                due = following
            self._turn(job, (now - max(due, turn)).total_seconds())  # (due: a caught-up turn)
            due = job.trigger.get_next_fire_time(due, now)

    def _turn(self, job: _Job, late: float) -> None:
        stats = job.stats
        if job.run is not None and not job.run.done():
            stats.overruns += 1
            log.warning("job %s is still running from its previous turn; this turn is skipped "
                        "(overrun #%d)", job.name, stats.overruns)
        elif late > job.grace:
            stats.missed += 1
            log.warning("job %s: its turn is %.0f s late (the process was stopped or the clock "
                        "stepped); skipped", job.name, late)
        elif self._clock.monotonic() < stats.backoff_until:
            stats.skipped_backoff += 1
        else:
            self._start_run(job, job.function)

    def run_soon(self, name: str, function: JobFunction | None = None) -> bool:
        """Start a run of job `name` now, outside its schedule (of `function` instead of the
        job's own, if given), unless one is running or the job backs off after a failure; True
        if it started. The job's schedule stays as it was."""
        job = self._jobs.get(name)
        if job is None or not self._started or (job.run is not None and not job.run.done()) \
                or self._clock.monotonic() < job.stats.backoff_until:
            return False
        self._start_run(job, function or job.function)
        return True

    def _start_run(self, job: _Job, function: JobFunction) -> None:
        job.run = asyncio.get_running_loop().create_task(self._run(job, function),
                                                         name=f"job {job.name}")
        self._running.add(job.run)
        job.run.add_done_callback(self._running.discard)

    async def _run(self, job: _Job, function: JobFunction) -> None:
        stats = job.stats
        started = self._clock.monotonic()
        try:
            await function()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure must never stop the agent
            stats.failures += 1
            stats.consecutive_failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            delay = 0.0
            if job.interval:
                delay = min(self._max_backoff, job.interval * 2 ** (stats.consecutive_failures - 1))
                stats.backoff_until = self._clock.monotonic() + delay
            log.error("job %s failed (%s); %s", job.name, stats.last_error,
                      f"next attempt in {delay:.0f} s or later" if delay else "will run again")
            log.debug("job %s traceback", job.name, exc_info=True)
        else:
            if stats.consecutive_failures:
                log.info("job %s works again after %d failure(s)", job.name,
                         stats.consecutive_failures)
            stats.consecutive_failures = 0
            stats.backoff_until = 0.0
        finally:
            stats.runs += 1
            stats.last_duration = self._clock.monotonic() - started
            if job.interval and stats.last_duration > job.interval:
                log.warning("job %s took %.1f s, longer than its %.0f s interval", job.name,
                            stats.last_duration, job.interval)
