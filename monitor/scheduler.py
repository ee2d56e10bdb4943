"""Runs jobs on a clock: APScheduler underneath, with the policies an agent needs on top.

- a job never runs twice at once; a run that outlasts its interval is logged and counted;
- a job that fails backs off (interval x 2, x 4, ... up to `max_backoff`), and recovers at once;
- `stop()` lets in-flight runs finish (so writes complete) before it returns.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC

from apscheduler.events import EVENT_JOB_MAX_INSTANCES, JobExecutionEvent
from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

log = logging.getLogger(__name__)

_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field: str) -> str:
    """A crontab day-of-week field (0 and 7 are Sunday, 1 is Monday) in day names: APScheduler
    3's from_crontab counts 0 as Monday, so "0 8 * * 1" would fire on Tuesdays."""
    if field == "*" or not re.fullmatch(r"[\d,*/-]+", field):
        return field  # names (mon-fri) mean the same to both
    days = set()
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

JobFunction = Callable[[], Awaitable[object]]


@dataclass
class JobStats:
    runs: int = 0
    failures: int = 0
    consecutive_failures: int = 0
    overruns: int = 0
    skipped_backoff: int = 0
    last_duration: float = 0.0
    last_error: str = ""
    backoff_until: float = 0.0


@dataclass
class _Job:
    name: str
    function: JobFunction
    interval: float | None
    stats: JobStats = field(default_factory=JobStats)


class Scheduler:
    def __init__(self, *, max_backoff: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._scheduler = AsyncIOScheduler(job_defaults={"coalesce": True, "max_instances": 1})
        self._scheduler.add_listener(self._on_max_instances, EVENT_JOB_MAX_INSTANCES)
        self._jobs: dict[str, _Job] = {}
        self._running: set[asyncio.Task] = set()
        self._max_backoff = max_backoff
        self._clock = clock

    def add_interval(self, name: str, interval: float, function: JobFunction, *,
                     jitter: float = 0.0, run_now: bool = True, aligned: bool = False) -> None:
        """`aligned`: runs at a tenth into each interval counted from the epoch, as every
        agent of a cluster does, so a run falls in one cycle (time // interval) with room to
        spare and a takeover leaves no cycle out."""
        job = _Job(name, function, interval)
        self._jobs[name] = job
        start = None
        if aligned:
            from datetime import datetime

            begin = (time.time() // interval + 1) * interval + interval / 10
            start = datetime.fromtimestamp(begin, UTC)
        trigger = IntervalTrigger(seconds=interval, jitter=jitter or None, start_date=start)
        self._scheduler.add_job(
            self._run, trigger, args=[job], id=name, name=name,
            misfire_grace_time=max(1, int(interval)),
            **({"next_run_time": _now()} if run_now else {}),
        )

    def add_cron(self, name: str, expression: str, function: JobFunction) -> None:
        job = _Job(name, function, None)
        self._jobs[name] = job
        self._scheduler.add_job(self._run, cron_trigger(expression), args=[job],
                                id=name, name=name, misfire_grace_time=3600)

    def stats(self) -> dict[str, JobStats]:
        return {name: job.stats for name, job in self._jobs.items()}

    def start(self) -> None:
        self._scheduler.start()

    async def stop(self, timeout: float = 60.0) -> None:
        """Stop starting runs; wait (up to `timeout`) for the ones in flight to finish."""
        # Pause, not shutdown: APScheduler's asyncio executor cancels running jobs on shutdown,
        # which would cut a collector's RRD writes in half.
        if self._scheduler.running:
            self._scheduler.pause()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            # A run handed to the loop just before shutdown registers itself on its first step.
            for _ in range(3):
                await asyncio.sleep(0)
            if not self._running:
                break
            log.info("waiting for %d running job(s) to finish", len(self._running))
            await asyncio.wait(set(self._running), timeout=deadline - loop.time())
        for task in self._running:
            task.cancel()
        if self._scheduler.running:
            self._scheduler.shutdown(wait=False)

    async def _run(self, job: _Job) -> None:
        stats = job.stats
        if self._clock() < stats.backoff_until:
            stats.skipped_backoff += 1
            return
        task = asyncio.current_task()
        if task is not None:
            self._running.add(task)
        started = self._clock()
        try:
            await job.function()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a job's failure must never stop the agent
            stats.failures += 1
            stats.consecutive_failures += 1
            stats.last_error = f"{type(exc).__name__}: {exc}"
            delay = 0.0
            if job.interval:
                delay = min(self._max_backoff, job.interval * 2 ** (stats.consecutive_failures - 1))
                stats.backoff_until = self._clock() + delay
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
            stats.last_duration = self._clock() - started
            if job.interval and stats.last_duration > job.interval:
                log.warning("job %s took %.1f s, longer than its %.0f s interval", job.name,
                            stats.last_duration, job.interval)
            if task is not None:
                self._running.discard(task)

    def _on_max_instances(self, event: JobExecutionEvent) -> None:
        job = self._jobs.get(event.job_id)
        if job is not None:
            job.stats.overruns += 1
            log.warning("job %s is still running from its previous turn; this turn is skipped "
                        "(overrun #%d)", job.name, job.stats.overruns)


def _now():
    from datetime import datetime

    return datetime.now(UTC)
