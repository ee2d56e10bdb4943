"""Service checks (`[[services]]`): ports, protocols, TLS certificates, DNS, ping, Nagios plugins.

`build()` groups the checks by interval into one collector per interval. A collector runs all
its checks at once, at most `agent.concurrency` at a time; every check has its own deadline, so
a server that accepts and never answers costs one timeout and never stalls the cycle.

Naming contract: CheckResult(target=<host checked>, check=<service name>); measurements have
target=<host>, instance=<service name>, metric response_seconds (plus loss_percent and
rtt_{min,avg,max}_seconds for ping, cert_expiry_days for TLS, perfdata metrics for plugins).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from collectors.checks import banner, dnscheck, http, ping, plugin
from collectors.checks.common import Env, Outcome, clean, limit_text, seconds_text
from monitor.config import Config, ServiceCheck
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, State
from monitor.units import format_duration

log = logging.getLogger("monitor.services")

RUNNERS: dict[str, Callable[[ServiceCheck, Env], Awaitable[Outcome]]] = {
    "tcp": banner.run, "smtp": banner.run, "imap": banner.run, "pop3": banner.run,
    "ssh": banner.run, "ftp": banner.run, "http": http.run, "https": http.run,
    "dns": dnscheck.run, "ping": ping.run, "plugin": plugin.run,
}

EXPECTED_METRICS: dict[str, tuple[tuple[str, str], ...]] = {
    "ping": (("loss_percent", "%"), ("rtt_min_seconds", "s"), ("rtt_avg_seconds", "s"),
             ("rtt_max_seconds", "s")),
}


def apply_thresholds(check: ServiceCheck, outcome: Outcome) -> Outcome:
    """Response-time thresholds turn a working but slow service into WARNING or CRITICAL."""
    seconds = outcome.response_seconds
    if seconds is None or outcome.state is not State.OK:
        return outcome
    if check.critical_time is not None and seconds > check.critical_time:
        outcome.state = State.CRITICAL
        outcome.message += f" - slower than the critical limit {limit_text(check.critical_time)}"
    elif check.warning_time is not None and seconds > check.warning_time:
        outcome.state = State.WARNING
        outcome.message += f" - slower than the warning limit {limit_text(check.warning_time)}"
    return outcome


@dataclass
class ServicesCollector:
    """All service checks that share one interval."""

    checks: list[ServiceCheck]
    interval: float
    env: Env
    concurrency: int = 64
    name: str = "services"
    clock: Callable[[], float] = time.time
    _runners: dict = field(default_factory=lambda: dict(RUNNERS))

    def target_of(self, check: ServiceCheck) -> str:
        return check.host or self.env.hostname

    async def collect(self) -> Batch:
        # `concurrency` workers pull from one iterator: the bound without a task and a semaphore
        # waiter per check (a third of the CPU time of 1,000 quick checks otherwise).
        results: list[CheckResult | None] = [None] * len(self.checks)
        pending = iter(enumerate(self.checks))

        async def worker() -> None:
            for index, check in pending:
                results[index] = await self.run_check(check)

        await asyncio.gather(*(worker() for _ in range(min(self.concurrency, len(self.checks)))))
        batch = Batch()
        batch.extend(r for r in results if r is not None)
        return batch

    async def run_check(self, check: ServiceCheck) -> CheckResult:
        target = self.target_of(check)
        try:
            outcome = await self._runners[check.kind](check, self.env)
        except Exception as exc:  # a bug in one check must not hide the others
            log.exception("service check %s failed unexpectedly", check.name)
            outcome = Outcome(State.UNKNOWN, f"{check.kind} check of {clean(target)} could not run: "
                              f"{clean(str(exc)) or type(exc).__name__}")
        outcome = apply_thresholds(check, outcome)
        now = self.clock()
        measurements = [Measurement(target, check.name, "response_seconds", outcome.response_seconds,
                                    Kind.GAUGE, "s", now)]
        # The same series every run, unknown when the check could not measure them: graphs show
        # a gap for the minutes the service was down, not a file that lacks the series.
        expected = EXPECTED_METRICS.get(check.kind, ())
        if check.uses_tls:
            expected = (*expected, ("cert_expiry_days", "d"))
        for metric, unit in expected:
            outcome.metrics.setdefault(metric, (None, unit, Kind.GAUGE))
        for metric, (value, unit, kind) in outcome.metrics.items():
            measurements.append(Measurement(target, check.name, metric, value, kind, unit, now))
        return CheckResult(target, check.name, outcome.state, outcome.message, tuple(measurements), now)


def build(config: Config, *, ping_path: str = "ping", clock: Callable[[], float] = time.time
          ) -> list[Collector]:
    groups: dict[float, list[ServiceCheck]] = {}
    for check in config.services:
        groups.setdefault(check.interval or config.agent.interval, []).append(check)
    env = Env(hostname=config.agent.hostname or "localhost", ping_path=ping_path, clock=clock)
    collectors: list[Collector] = []
    for interval, checks in sorted(groups.items()):
        name = "services" if interval == config.agent.interval else f"services@{format_duration(interval)}"
        collectors.append(ServicesCollector(checks, interval, env, config.agent.concurrency, name, clock))
    return collectors


async def run_once(config: Config, names: list[str] | None = None) -> list[CheckResult]:
    """Every (or the named) service check once, in config order: `monitor services`."""
    results: list[CheckResult] = []
    for collector in build(config):
        assert isinstance(collector, ServicesCollector)
        collector.checks = [c for c in collector.checks if names is None or c.name in names]
        results.extend((await collector.collect()).checks)
    order = {s.name: i for i, s in enumerate(config.services)}
    return sorted(results, key=lambda r: order[r.check])


__all__ = ["ServicesCollector", "apply_thresholds", "build", "run_once", "seconds_text"]
