"""What an agent does as a member of a cluster, beside polling its share: its jobs (heartbeat,
lease, replay of the buffer, the leader's round) and where its check results go.

The agent hands over its alert service and status book; this module never looks inside them
beyond their public methods.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from alerts.outbox import outbox_path
from alerts.service import AlertService
from alerts.state import alerts_db_path
from cluster.node import ClusterNode, Unreachable
from cluster.results import AlertStateReplica, DiskBuffer, MailLedger, ResultStream, samples_buffer
from monitor.config import Config
from monitor.model import Batch, CheckResult, SharedCollector, State
from monitor.scheduler import Scheduler
from monitor.status import StatusBook

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class ClusterMember:
    def __init__(self, config: Config, alerts: AlertService, status: StatusBook,
                 shared: list[SharedCollector]) -> None:
        cluster = config.cluster
        assert cluster is not None and cluster.buffer_dir is not None
        self.config = cluster
        self.node = ClusterNode(cluster)
        self.buffer = DiskBuffer(cluster.buffer_dir, cluster.buffer_max)
        self.results = ResultStream(self.node, self.buffer)
        self.samples = samples_buffer(cluster)  # the store's backlog (see agent.open_store)
        self.replica = AlertStateReplica(self.node, {
            "alerts": alerts_db_path(config.state_dir), "outbox": outbox_path(config.state_dir)})
        self.alerts = alerts
        # Mail leaves only from the leader, after the state it comes from is in Redis, and
        # never twice: the ledger notes each message's delivery there.
        alerts.outbox.share(MailLedger(self.node, self._before_mail))
        self.status = status
        self.shared = shared  # the collectors whose units the nodes share
        self._unreachable: set[str] = set()  # pollers the leader has reported unreachable
        self._scheduler: Scheduler | None = None
        self._takeover_run: Callable[[SharedCollector], Job] | None = None
        # collector -> (it, the cycle): takeovers due that could not start yet (it was running)
        self._takeovers: dict[str, tuple[SharedCollector, int]] = {}
        self._taking_over = asyncio.Lock()

    def schedule(self, scheduler: Scheduler, take_over: Callable[[SharedCollector], Job]) -> None:
        """The member's jobs on `scheduler`; `take_over(collector)` is a run of a shared
        collector that polls what a gone node left of the current cycle."""
        beat = self.config.heartbeat
        self._scheduler, self._takeover_run = scheduler, take_over
        scheduler.add_interval("cluster heartbeat", beat, self.heartbeat)
        scheduler.add_interval("cluster lease", self.config.lease / 3, self.node.renew_lease)
        scheduler.add_interval("cluster replay", beat, self.replay, run_now=False)
        scheduler.add_interval("cluster leader", beat, self.lead, run_now=False)

    async def heartbeat(self) -> None:
        """Job: the heartbeat. When it finds a node gone in the first half of a cycle, each
        shared collector runs again at once, for the units the gone node had not run in this
        cycle (nobody claimed them): the takeover leaves no cycle out. A collector still busy
        with its turn runs at a later beat of that half. (Later in the cycle the gone node has
        run its part, unless it died before; a run then could hold up the next cycle's turn.)"""
        gone = await self.node.beat()
        now = time.time()
        if gone:
            log.warning("cluster: %s gone; taking over what it had not run of this cycle",
                        ", ".join(sorted(gone)))
            self._takeovers = {c.name: (c, int(now // c.interval)) for c in self.shared}
        for name, (collector, cycle) in list(self._takeovers.items()):
            if now >= (cycle + 0.5) * collector.interval or self._scheduler is None \
                    or self._takeover_run is None \
                    or self._scheduler.run_soon(name, self._takeover_run(collector)):
                del self._takeovers[name]

    async def replay(self) -> None:
        """Job: the buffered check results to the stream; and what the heartbeat says of both
        buffers (the store replays the samples itself, with its next batch)."""
        await self.results.replay()
        self.node.extra["samples_buffered"] = await asyncio.to_thread(len, self.samples)
        self.node.extra["samples_dropped"] = self.samples.dropped

    def leader_only(self, job: Job) -> Callable[[], Awaitable[None]]:
        """A job run on the leader only, from the last leader's alert state; what it changes
        there is saved for the next leader before any mail leaves, and at the leader's round."""
        async def run() -> None:
            if self.node.leading and await self._take_over_state():
                await job()
        return run

    async def _take_over_state(self) -> bool:
        """Whether this node leads, with the alert state of the leader before it (taken when
        Redis holds a newer one than ours: before anything is evaluated or sent). False while
        Redis cannot say (nothing may run from a stale state)."""
        async with self._taking_over:
            if not self.node.leading:
                return False
            try:
                if await self.replica.restore():
                    self.alerts.reload_states()
            except Unreachable as exc:
                self.node._missed(exc)
                return False
            return True

    async def _before_mail(self) -> bool:
        """The outbox's question before it sends: only the leader sends, and only once the
        alert state and outbox that the mail comes from are in Redis."""
        if not await self._take_over_state():
            return False
        try:
            await self.replica.save()
        except Unreachable as exc:
            self.node._missed(exc)
            return False
        return True

    async def publish(self, batch: Batch, interval: float) -> None:
        """A node's batch, for the leader's alert engine and status book."""
        part = self.alerts.relevant(batch)
        if part.checks or part.measurements:
            await self.results.publish(part, interval)

    async def lead(self) -> None:
        """Job: while this node leads, take the stream's results into the status book and the
        alert engine, save the alert state, acknowledge, then send the mail that is due."""
        try:
            await self._round()
        except Unreachable as exc:  # the lease runs out by itself if this goes on
            self.node._missed(exc)

    async def _round(self) -> None:
        if not await self._take_over_state():
            return
        taken = await self.results.take()
        for _, node, interval, batch in taken:
            if node != self.node.name:  # our own results are in the book already
                self.status.update(batch.checks, interval)
            await self.alerts.consume("cluster", batch, deliver=False)
        await self._cover_unreachable()
        if taken:
            await asyncio.to_thread(self.status.save)
        await self.replica.save()  # only what changed, if anything did
        await self.results.ack([entry_id for entry_id, *_ in taken])
        await self.alerts.deliver()

    async def _cover_unreachable(self) -> None:
        """The devices and checks of a poller that is gone, which no other node can take
        over (its group has no other live node), are UNKNOWN "poller X unreachable since ..."
        in the status book (not CRITICAL, and not alerts: those stay as they were); the
        poller itself is one check, "poller X", that alert rules can page on."""
        stranded = await self.node.stranded({c.name: c.work_units() for c in self.shared})
        now = time.time()
        behind: dict[str, tuple[float, int]] = {}
        covered = []
        for status in self.status.all():
            for collector in self.shared:
                unit = collector.unit_of(status.target, status.check)
                if unit is None or (collector.name, unit) not in stranded:
                    continue
                node, since = stranded[(collector.name, unit)]
                when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since))
                covered.append((CheckResult(status.target, status.check, State.UNKNOWN,
                                            f"poller {node} unreachable since {when}",
                                            timestamp=now), status.interval))
                behind[node] = (since, behind.get(node, (since, 0))[1] + 1)
                break
        for result, interval in covered:
            self.status.update([result], interval)
        verdicts = []
        for node, (since, count) in sorted(behind.items()):
            when = time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(since))
            verdicts.append(CheckResult("cluster", f"poller {node}", State.CRITICAL,
                                        f"poller {node} unreachable since {when}: the "
                                        f"{count} check(s) behind it are UNKNOWN", timestamp=now))
        for node in sorted(self._unreachable - behind.keys()):
            verdicts.append(CheckResult("cluster", f"poller {node}", State.OK,
                                        f"poller {node} reachable again", timestamp=now))
        self._unreachable = set(behind)
        if verdicts:
            self.status.update(verdicts, self.config.heartbeat)
            await self.alerts.consume("cluster", Batch(checks=verdicts), deliver=False)
            await asyncio.to_thread(self.status.save)

    async def close(self) -> None:
        if self.node.leading:
            try:
                await self.replica.save()
            except Exception:
                log.exception("cluster: the alert state could not be saved for the next leader")
        await self.replica.close()
        await self.node.close()
