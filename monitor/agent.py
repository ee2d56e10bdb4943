"""The running agent: collectors on the scheduler, their batches into the sinks.

This is where the parts meet: collectors produce batches; the store, the status book (and the
alert engine and site jobs, when configured) consume them. Only this module and the CLI import
from every package.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from alerts.service import AlertService
from monitor.config import Config
from monitor.model import (
    Batch,
    CheckResult,
    Collector,
    Measurement,
    SharedCollector,
    State,
    StreamingCollector,
)
from monitor.registry import build_collectors
from monitor.scheduler import Scheduler
from monitor.status import StatusBook
from monitor.store import Backlog, Catalog, RrdStore
from monitor.units import format_duration

if TYPE_CHECKING:
    from alerts.baseline import BaselineJob
    from cluster.member import ClusterMember
    from graphs.site import SiteBuilder
    from monitor.export import PrometheusExporter

log = logging.getLogger("monitor")

MAIL_INTERVAL = 30.0  # how often the outbox looks for mail other processes queued

Sink = Callable[[str, Batch], Awaitable[None]]


def open_store(config: Config) -> RrdStore:
    """The config's store. In a cluster with an rrdcached over TCP the files are the daemon's
    (every node writes and the leader reads through it), their index is in Redis, and the
    samples the daemon cannot take wait in the node's buffer."""
    rrdcached = config.storage.rrdcached
    remote = config.cluster is not None and rrdcached is not None and not rrdcached.startswith("unix:")
    catalog: Catalog | None = None
    backlog: Backlog | None = None
    if remote:
        assert config.cluster is not None
        from cluster.catalog import RedisCatalog
        from cluster.results import samples_buffer
        catalog = RedisCatalog(config.cluster)
        # Samples the daemon cannot take (the link down) wait on this node's disk.
        backlog = samples_buffer(config.cluster)
    return RrdStore(
        config.rrd_dir,
        archives=config.storage.archives,
        consolidations=config.storage.consolidations,
        rrdcached=rrdcached,
        remote=remote,
        catalog=catalog,
        backlog=backlog,
    )


@dataclass(frozen=True)
class _SelfCheck:
    """The source of the agent's own checks, where `consume` expects a collector."""

    name: str
    interval: float


class Agent:
    def __init__(self, config: Config, *, only: str | None = None,
                 min_run_limit: float = 30.0) -> None:
        self.config = config
        # A run is cut off after max(3 intervals, min_run_limit) seconds.
        self.min_run_limit = min_run_limit
        self.store = open_store(config)
        self.status = StatusBook(config.state_dir / "status.json")
        self.collectors: list[Collector] = build_collectors(config, only)
        self.sinks: list[Sink] = []
        # Alerts: every batch passes the rules; alert (and digest) mail leaves via the outbox.
        self.alerts = AlertService(config)
        # [cluster]: this agent shares the devices and checks with others, sends its check
        # results to the leader, and runs the alerts, the site and the digests only while it
        # is the leader itself.
        self.cluster: ClusterMember | None = None
        if config.cluster is None:
            self.sinks.append(self.alerts.consume)
        else:
            from cluster.member import ClusterMember
            shared = [c for c in self.collectors if isinstance(c, SharedCollector)]
            self.cluster = ClusterMember(config, self.alerts, self.status, shared)
            for collector in shared:
                # A day: long after any rate could be computed from it (three intervals).
                collector.share_state(self.cluster.node.shared_state(collector.name, 86400))
        self.scheduler = Scheduler(max_backoff=config.agent.max_backoff)
        self.site: SiteBuilder | None = None
        # Prometheus: the latest values and check states as a textfile and/or on /metrics.
        self.exporter: PrometheusExporter | None = None
        if config.export.textfile or config.export.listen:
            from monitor.export import PrometheusExporter
            self.exporter = PrometheusExporter(config.export, self.status,
                                               {c.name: c.interval for c in self.collectors})
            self.sinks.append(self.exporter.consume)

    def schedule(self) -> None:
        if self.exporter is not None:
            self.exporter.serve()
        cluster = self.cluster
        if cluster is not None:
            cluster.schedule(self.scheduler, self._take_over)
        for collector in self.collectors:
            self.scheduler.add_interval(
                collector.name, collector.interval, self._job(collector),
                jitter=0 if cluster else min(self.config.agent.jitter, collector.interval / 10),
                aligned=cluster is not None,
                # A node that joins owns nothing of its first cycle: a run at once would only
                # hold up its first aligned turn on a slow start.
                run_now=cluster is None or not isinstance(collector, SharedCollector),
            )
        # Alerts: "no data" verdicts, timers and group windows. Mail leaves from a task of its
        # own: a stuck relay must not hold up a collector's job, a stop or a reload.
        self.scheduler.add_interval("alerts", self.config.alerts.interval,
                                    self._leader_only(self._alerts_job), run_now=False)
        if cluster is None:  # in a cluster the leader delivers in its round
            self.alerts.outbox.start(MAIL_INTERVAL)
        if self.config.alerts.replies is not None:
            self.scheduler.add_interval("replies", self.config.alerts.replies.interval,
                                        self._leader_only(self.alerts.read_replies),
                                        run_now=False)
        # The web site: its own job; drawing happens in worker processes, off the event loop.
        site_interval = self.config.web.interval
        if site_interval is None:
            site_interval = self.config.agent.interval
        if site_interval > 0:
            from graphs.site import site_from_config
            self.site = site_from_config(self.config, self.store, self.status)
            self.scheduler.add_interval("site", site_interval, self._leader_only(self._build_site),
                                        run_now=False)
        # Seasonal baselines: the last complete hour of each selected series against its usual
        # level for that hour of the week, as checks the alert rules see.
        if self.config.baseline.enabled:
            from alerts.baseline import BaselineJob
            job = BaselineJob(self.store, self.config.baseline)
            self.scheduler.add_interval(job.name, job.interval,
                                        self._leader_only(self._baseline(job)),
                                        run_now=False)
        # Digests: each [[digests]] at its cron schedule, mailed through the same outbox.
        from alerts.digest import schedule_digests
        schedule_digests(self.config, self.scheduler, self.store, self.status, self.alerts.outbox,
                         guard=self._leader_only)

    def _leader_only(self, job: Callable[[], Awaitable[object]]) -> Callable[[], Awaitable[object]]:
        """A job that, in a cluster, runs on the leader only (alone: every agent runs it)."""
        if self.cluster is None:
            return job
        return self.cluster.leader_only(job)

    async def _alerts_job(self) -> None:
        await self.alerts.tick()
        # The mail path is reported like any other check (status.json, the site, alert rules).
        mail = await asyncio.to_thread(self.alerts.mail_check)
        await self.consume(_SelfCheck("alerts", self.config.alerts.interval), Batch(checks=[mail]))

    def _baseline(self, job: BaselineJob) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            checks = await asyncio.to_thread(job.run)  # rrdtool fetches and numpy: off the loop
            await self.consume(_SelfCheck(job.name, job.interval), Batch(checks=checks))
        return run

    def _job(self, collector: Collector) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await self.run_collector(collector)
        return run

    def _take_over(self, collector: SharedCollector) -> Callable[[], Awaitable[None]]:
        async def run() -> None:
            await self.run_collector(collector, taking_over=True)
        return run

    def _own_label(self, collector: Collector) -> str:
        """The agent's own check of a collector; in a cluster, each node's apart."""
        if self.cluster is None:
            return f"collector {collector.name}"
        return f"collector {collector.name} on {self.cluster.node.name}"

    async def run_collector(self, collector: Collector, *, taking_over: bool = False) -> Batch:
        """One run of `collector`; in a cluster, of the units this node claims in the current
        cycle (`taking_over`: a run again in the cycle, after a node was found gone, which does
        nothing unless the gone node left units of it unclaimed)."""
        if self.cluster is not None and isinstance(collector, SharedCollector):
            claim = await self.cluster.node.claim(collector.name, collector.work_units(),
                                                  collector.interval)
            if taking_over and not claim.units:
                return Batch()
            if taking_over:
                log.info("%s: taking over %d unit(s) of this cycle: %s", collector.name,
                         len(claim.units), ", ".join(sorted(claim.units)))
            collector.select(claim.units, until=claim.until)
        started = time.monotonic()
        # A run may overrun its interval (logged and counted), but one that hangs for several
        # intervals is cut off, or its job would never run again.
        limit = max(3 * collector.interval, self.min_run_limit)
        # A streaming collector's parts are stored and checked as they come; only the summary
        # waits for the end (and a cut-off run keeps the parts it delivered).
        consumed = Batch()

        async def produce() -> Batch:
            if not isinstance(collector, StreamingCollector):
                return await collector.collect()
            async for part in collector.batches():
                await self.consume(collector, part)
                consumed.add(part)
            return Batch()

        try:
            batch = await asyncio.wait_for(produce(), timeout=limit)
        except TimeoutError:
            failure = CheckResult("agent", self._own_label(collector), State.UNKNOWN,
                                  f"collector {collector.name} did not finish within {limit:.0f} s "
                                  "and was stopped; check the targets it polls")
            await self.consume(collector, Batch(checks=[failure]))
            raise
        except Exception as exc:
            failure = CheckResult("agent", self._own_label(collector), State.UNKNOWN,
                                  f"collector {collector.name} could not run: {exc}")
            await self.consume(collector, Batch(checks=[failure]))
            raise
        elapsed = time.monotonic() - started
        consumed.add(batch)
        problems = [c for c in consumed.checks if c.state is not State.OK]
        summary = (f"{len(consumed.measurements)} value(s), {len(consumed.checks)} check(s)"
                   f"{f', {len(problems)} not OK' if problems else ''} in {elapsed:.2f} s")
        ran = CheckResult("agent", self._own_label(collector), State.OK,
                          f"collector {collector.name} ran: {summary}")
        # The agent's heartbeat: a digest tells "the check failed" from "the agent did not run".
        heartbeat = Measurement("agent", self._own_label(collector), "run_seconds", elapsed,
                                unit="s", timestamp=time.time(), minimum=0)
        batch.add(ran)
        batch.add(heartbeat)
        await self.consume(collector, batch)
        log.info("%s: %s", collector.name, summary)
        consumed.add(ran)
        consumed.add(heartbeat)
        return consumed

    async def consume(self, collector: Collector | _SelfCheck, batch: Batch) -> None:
        """Hand a batch to every sink; a failing sink is logged and the others still run."""
        if batch.measurements:
            report = await asyncio.to_thread(self.store.write, batch.measurements, collector.interval)
            if report.errors:
                log.error("%s: %d store error(s); first: %s", collector.name, len(report.errors),
                          report.errors[0])
        changes = self.status.update(batch.checks, collector.interval)
        for stale in self.status.expire(time.time()):
            log.info("%s %s: no longer reported; dropped from the current states",
                     stale.target, stale.check)
        for old, new in changes:
            log.log(logging.INFO if new.state is State.OK else logging.WARNING,
                    "%s %s: %s%s: %s", new.target, new.check,
                    f"{old.state.name} -> " if old else "", new.state.name, new.message)
        try:
            await asyncio.to_thread(self.status.save)
        except OSError as exc:
            log.error("cannot save check states to %s: %s", self.status.path, exc)
        if self.cluster is not None:
            await self.cluster.publish(batch, collector.interval)
        for sink in self.sinks:
            try:
                await sink(collector.name, batch)
            except Exception:
                log.exception("%s: a sink failed on this batch", collector.name)

    async def collect_once(self) -> bool:
        """Run every collector once, concurrently; True if all of them ran."""
        async def one(collector: Collector) -> bool:
            try:
                await self.run_collector(collector)
                return True
            except Exception as exc:
                log.error("%s failed: %s", collector.name, exc)
                return False
        results = await asyncio.gather(*(one(c) for c in self.collectors))
        return all(results)

    def describe_jobs(self) -> str:
        return ", ".join(f"{c.name} every {format_duration(c.interval)}" for c in self.collectors)

    async def _build_site(self) -> None:
        assert self.site is not None
        report = await asyncio.to_thread(self.site.build)
        log.info("site: drew %d graph(s), wrote %d page(s) in %.1f s%s", report.graphs,
                 report.pages, report.seconds,
                 f"; {len(report.errors)} graph(s) failed" if report.errors else "")

    async def close(self) -> None:
        await self.alerts.outbox.stop()  # first: a relay that hangs must not delay the rest
        if self.site is not None:
            self.site.abandon()  # redrawn at the next start: no reason to hold the stop
        await self.scheduler.stop()
        for collector in self.collectors:
            # Collectors that hold sockets or engines (SNMP) release them, so a SIGHUP reload
            # does not leak one set per reload.
            close = getattr(collector, "close", None)
            if callable(close):
                try:
                    close()
                except Exception:
                    log.exception("%s: closing failed", collector.name)
        if self.site is not None:
            await asyncio.to_thread(self.site.close)
        await asyncio.to_thread(self.store.close)
        if self.exporter is not None:
            await asyncio.to_thread(self.exporter.close)
        self.alerts.close()
        if self.cluster is not None:
            await self.cluster.close()
