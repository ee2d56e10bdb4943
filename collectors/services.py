"""Service checks ([[services]]): is SMTP, IMAP, POP3, the web, DNS or SSH answering, how fast,
and are their certificates still good.

`build` makes one collector per interval; a collector runs all its checks at once, at most
agent.concurrency at a time, each bounded by its own timeout, so a server that accepts and never
answers costs that check its timeout and nothing else. Every check gives one CheckResult
(target = host checked, check = service name) and measurements (instance = service name):
response_seconds, plus cert_expiry_days for TLS, loss_percent and rtt_*_seconds for ping and the
plugin's perfdata for plugins. The probes per protocol family live in services_*.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from collectors.services_base import (
    MATCHING,
    WAITING,
    Outcome,
    Stage,
    TlsContexts,
    error_text,
    hostport,
    label,
    secs,
    untrusted,
)
from collectors.services_dns import compare_serials, probe_dns
from collectors.services_exec import (
    SPREAD,
    PingSeries,
    bound_metrics,
    plugin_timeout_message,
    probe_ping,
    probe_plugin,
    spread_wait,
)
from collectors.services_http import probe_http, site_label
from collectors.services_roundtrip import probe_roundtrip
from collectors.services_tcp import CertRejected, probe_text
from monitor.config import Config, ServiceCheck
from monitor.model import (
    Batch,
    CheckResult,
    Collector,
    Kind,
    Measurement,
    SharedState,
    State,
    Thresholds,
)
from monitor.text import clean
from monitor.units import format_duration

log = logging.getLogger(__name__)


def _where(check: ServiceCheck, target: str) -> str:
    if check.kind in ("http", "https"):
        return site_label(check)
    if check.kind == "dns":
        return f"DNS {hostport(target, check.port or 53)}"
    if check.kind == "ping":
        return f"PING {clean(target, 60)}"
    if check.kind == "plugin":
        return f"plugin {clean(check.command[0], 60)}"
    return label(check)


async def _probe(check: ServiceCheck, target: str, stage: Stage, now: float, verify: bool) -> Outcome:
    if check.kind in ("http", "https"):
        return await probe_http(check, stage, now, verify)
    if check.kind == "dns":
        return await probe_dns(check, target, stage)
    if check.kind == "ping":
        return await probe_ping(check, stage)
    if check.kind == "plugin":
        return await probe_plugin(check, stage)
    if check.kind == "roundtrip":
        return await probe_roundtrip(check, stage, now)
    return await probe_text(check, stage, now, verify)


async def run_check(check: ServiceCheck, target: str, now: float, contexts: TlsContexts) -> Outcome:
    """One check to one target, never longer than its timeout and never raising. `contexts` are
    the collector's TLS contexts."""
    stage = Stage(contexts)
    start = time.monotonic()
    verify_error = None
    try:
        async with asyncio.timeout(check.timeout):
            try:
                outcome = await _probe(check, target, stage, now, check.verify)
            except CertRejected as exc:
                # Ask again without verifying, to learn when the rejected certificate expires.
                verify_error = exc.reason
                stage = Stage(contexts)
                outcome = await _probe(check, target, stage, now, False)
    except TimeoutError:
        if check.kind == "plugin":
            return Outcome(State.CRITICAL, plugin_timeout_message(check))
        if stage.doing == MATCHING:  # the server answered: the check cannot judge the page
            return Outcome(State.UNKNOWN, f"{_where(check, target)} answered, but expect_regex "
                           f"{clean(check.expect_regex or '', 40)!r} did not finish matching "
                           f"within {secs(check.timeout)}{stage.note}: does it backtrack without "
                           "end? Simplify the pattern")
        if stage.doing.startswith("name lookup of "):  # http: the DNS stage, not the server
            return Outcome(State.CRITICAL, f"{_where(check, target)}: {stage.doing} timed out "
                           f"after {secs(check.timeout)}{stage.note}")
        what = WAITING.get(stage.doing, f"sent no {stage.doing}")
        return Outcome(State.CRITICAL, f"{_where(check, target)} {what} within {secs(check.timeout)}"
                       f"{f' (got {clean(stage.got)!r})' if stage.got else ''}{stage.note}")
    except Exception as exc:  # a dead peer is a result, not a collector failure
        text = error_text(exc)
        if stage.doing == "TLS handshake" and "TLS handshake" not in text:
            text += " during the TLS handshake"
        return Outcome(State.CRITICAL, f"{_where(check, target)} {text} after "
                       f"{secs(time.monotonic() - start)}")
    cert = stage.cert
    if verify_error is not None and cert is not None:
        cert = untrusted(cert, verify_error)
    outcome = thresholds(check, outcome)
    if cert is not None:
        outcome.metrics.update(cert.metrics)
        if cert.state.severity > outcome.state.severity:
            outcome.state = cert.state
        outcome.message += f"; {cert.message}"
    return outcome


def thresholds(check: ServiceCheck, outcome: Outcome) -> Outcome:
    """The response-time thresholds, on an outcome that is otherwise OK."""
    if outcome.state != State.OK or outcome.response is None:
        return outcome
    for state, limit in ((State.CRITICAL, check.critical), (State.WARNING, check.warning)):
        if limit is not None and outcome.response > limit:
            outcome.state = state
            outcome.message += f" (slower than {secs(limit)})"
            break
    return outcome


def targets(check: ServiceCheck) -> list[str]:
    """A dns check with servers = [primary, secondary] checks each; the rest check `host`."""
    return list(check.servers) if check.kind == "dns" and check.servers else [check.host]


def response_limits(check: ServiceCheck) -> Thresholds:
    """The check's response-time limits as thresholds of response_seconds ("2" is above 2 s),
    for the graphs; empty without any."""
    warning, critical = (None if limit is None else f"{limit:g}"
                         for limit in (check.warning, check.critical))
    return Thresholds(warning, critical)


def to_result(check: ServiceCheck, target: str, outcome: Outcome, now: float) -> CheckResult:
    response = None if outcome.response is None else round(outcome.response, 6)
    limits = response_limits(check)
    if not outcome.metrics:  # most checks: response_seconds alone
        measurements: tuple[Measurement, ...] = (
            Measurement(target, check.name, "response_seconds", response, Kind.GAUGE, "s", now,
                        thresholds=limits),)
    else:
        metrics = dict(outcome.metrics)
        metrics["response_seconds"] = (response, "s")
        # A plugin's metrics each say what their thresholds are now (empty: none any more).
        told = dict(outcome.thresholds, response_seconds=limits)
        default = Thresholds() if check.kind == "plugin" else None
        measurements = tuple(
            Measurement(target, check.name, metric, value,
                        Kind.COUNTER if unit == "c" else Kind.GAUGE, unit, now,
                        thresholds=told.get(metric, default))
            for metric, (value, unit) in metrics.items())
    return CheckResult(target, check.name, outcome.state, outcome.message, measurements, now)


@dataclass
class ServicesCollector:
    name: str
    interval: float
    checks: list[ServiceCheck]
    concurrency: int = 64
    clock: Callable[[], float] = time.time

    contexts: TlsContexts = field(default_factory=TlsContexts)
    # The metrics each plugin check has stored so far, to bound them (services_exec).
    plugin_metrics: dict[str, set[str]] = field(default_factory=dict)
    selected: set[str] | None = None  # [cluster]: the checks this node runs now
    until: float | None = None  # [cluster]: no check starts after this time (its cycle's end)

    def work_units(self) -> dict[str, str]:
        return {check.name: check.group for check in self.checks}

    def select(self, units: set[str] | None, until: float | None = None) -> None:
        self.selected, self.until = units, until

    def unit_of(self, target: str, check: str) -> str | None:
        return check if any(c.name == check for c in self.checks) else None

    def share_state(self, share: SharedState) -> None:
        """Service checks keep no state across runs that another node would need."""
    # The ping series running over this interval, per ping check, and the clock they are
    # spread by (a test's controlled one).
    pings: dict[str, PingSeries] = field(default_factory=dict)
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep
    monotonic: Callable[[], float] = time.monotonic

    async def ping(self, check: ServiceCheck, now: float) -> Outcome:
        """SmokePing's way: the pings of a check go out spread over the interval, in a series
        that no cycle waits for; a cycle reports the series of the interval just past and
        starts the next. The first cycle (no series yet) sends its pings back to back."""
        last = self.pings.pop(check.name, None)
        spacing = SPREAD * self.interval / check.count  # each ping in the middle of its slot
        self.pings[check.name] = PingSeries(check, spacing, spread_wait(check, self.interval),
                                            spacing / 2, self.sleep, self.monotonic).start()
        if last is None:
            return await run_check(check, check.host, now, self.contexts)
        return thresholds(check, last.finish())

    def close(self) -> None:
        """Stop the ping series (an agent's reload or exit): their processes are killed."""
        for series in self.pings.values():
            series.finish()
        self.pings.clear()

    async def collect(self) -> Batch:
        # `concurrency` workers take jobs from one iterator, so a cycle of 1,000 checks is 64
        # tasks, not 1,000. A cancelled cycle (the agent's run cut-off) cancels every worker,
        # and each probe closes its socket on the way out.
        checks = [c for c in self.checks if self.selected is None or c.name in self.selected]
        jobs = [(c, t) for c in checks for t in targets(c)]
        results: list[CheckResult | None] = [None] * len(jobs)
        pending = iter(enumerate(jobs))

        late: list[str] = []

        async def worker() -> None:
            for index, (check, target) in pending:
                now = self.clock()
                if self.until is not None and now >= self.until:
                    late.append(check.name)  # the next cycle's owner runs it
                    continue
                if check.kind == "ping":
                    outcome = await self.ping(check, now)
                else:
                    outcome = await run_check(check, target, now, self.contexts)
                if check.kind == "plugin":
                    outcome = bound_metrics(outcome, self.plugin_metrics.setdefault(check.name, set()))
                results[index] = to_result(check, target, outcome, now)

        await self.contexts.prepare(checks)
        async with asyncio.TaskGroup() as group:
            for _ in range(min(self.concurrency, len(jobs))):
                group.create_task(worker())
        if late:
            log.warning("%s: %d check(s) not run, their cycle was over before they could start: "
                        "%s", self.name, len(late), ", ".join(sorted(set(late))))
        batch = Batch()
        first = 0
        for check in checks:  # a check's targets are adjacent jobs
            count = len(targets(check))
            done = [r for r in results[first:first + count] if r is not None]
            batch.extend(compare_serials(check, done) if check.kind == "dns" else done)
            first += count
        return batch


def build(config: Config) -> list[Collector]:
    groups: dict[float, list[ServiceCheck]] = {}
    for check in config.services:
        groups.setdefault(check.interval or config.agent.interval, []).append(check)
    out: list[Collector] = []
    for interval, checks in sorted(groups.items()):
        name = ("services" if interval == config.agent.interval
                else f"services-{format_duration(interval)}")
        out.append(ServicesCollector(name, interval, checks, config.agent.concurrency))
    return out


async def run_once(config: Config, names: list[str] | None = None) -> list[CheckResult]:
    """Every (or each named) service check once, in config order: `monitor services`."""
    results: list[CheckResult] = []
    for collector in build(config):
        assert isinstance(collector, ServicesCollector)
        collector.checks = [c for c in collector.checks if names is None or c.name in names]
        results.extend((await collector.collect()).checks)
        collector.close()  # once: no ping series for a next cycle
    order = {s.name: i for i, s in enumerate(config.services)}
    return sorted(results, key=lambda r: order[r.check])
