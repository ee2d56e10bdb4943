"""What an agent does as a member of a cluster, beside polling its share: its jobs (heartbeat,
lease, replay of the buffer, the leader's round) and where its check results go.

The agent hands over its alert service and status book; this module never looks inside them
beyond their public methods.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from alerts.outbox import outbox_path
from alerts.service import AlertService
from alerts.state import alerts_db_path
from cluster.node import ClusterNode
from cluster.results import AlertStateReplica, DiskBuffer, ResultStream
from monitor.config import Config
from monitor.model import Batch
from monitor.scheduler import Scheduler
from monitor.status import StatusBook

log = logging.getLogger(__name__)

Job = Callable[[], Awaitable[object]]


class ClusterMember:
    def __init__(self, config: Config, alerts: AlertService, status: StatusBook) -> None:
        cluster = config.cluster
        assert cluster is not None and cluster.buffer_dir is not None
        self.config = cluster
        self.node = ClusterNode(cluster)
        self.buffer = DiskBuffer(cluster.buffer_dir, cluster.buffer_max)
        self.results = ResultStream(self.node, self.buffer)
        self.replica = AlertStateReplica(self.node, {
            "alerts": alerts_db_path(config.state_dir), "outbox": outbox_path(config.state_dir)})
        self.alerts = alerts
        self.status = status
        self._led = False  # whether the last round ran as the leader
        self._alert_state_changed = False

    def schedule(self, scheduler: Scheduler) -> None:
        beat = self.config.heartbeat
        scheduler.add_interval("cluster heartbeat", beat, self.node.beat)
        scheduler.add_interval("cluster lease", self.config.lease / 3, self.node.renew_lease)
        scheduler.add_interval("cluster replay", beat, self.results.replay, run_now=False)
        scheduler.add_interval("cluster leader", beat, self.lead, run_now=False)

    def leader_only(self, job: Job) -> Callable[[], Awaitable[None]]:
        """A job run on the leader only; what it changes in the alert state is saved for the
        next leader at the end of the leader's round."""
        async def run() -> None:
            if self.node.leading:
                await job()
                self._alert_state_changed = True
        return run

    async def publish(self, batch: Batch, interval: float) -> None:
        """A node's batch, for the leader's alert engine and status book."""
        part = self.alerts.relevant(batch)
        if part.checks or part.measurements:
            await self.results.publish(part, interval)

    async def lead(self) -> None:
        """Job: while this node leads, take the stream's results into the status book and the
        alert engine, save the alert state, acknowledge, then send the mail that is due."""
        if not self.node.leading:
            self._led = False
            return
        if not self._led:
            # Before anything is evaluated: the state of the leader before us.
            if await self.replica.restore():
                self.alerts.reload_states()
            self._led = True
        taken = await self.results.take()
        for _, node, interval, batch in taken:
            if node != self.node.name:  # our own results are in the book already
                self.status.update(batch.checks, interval)
            await self.alerts.consume("cluster", batch, deliver=False)
        if taken:
            await asyncio.to_thread(self.status.save)
        if taken or self._alert_state_changed:
            await self.replica.save()
            self._alert_state_changed = False
        await self.results.ack([entry_id for entry_id, *_ in taken])
        if await self.alerts.deliver():
            await self.replica.save()  # sent: the next leader must not send it again

    async def close(self) -> None:
        if self.node.leading:
            try:
                await self.replica.save()
            except Exception:
                log.exception("cluster: the alert state could not be saved for the next leader")
        await self.node.close()
