"""One agent's membership of the cluster: heartbeat, claims on its share of the work, the
leader's lease. Every Redis key starts with `monitor:`.

- `monitor:node:<name>`: the node's heartbeat (JSON: groups, when it started, what it buffers),
  with a time to live of three heartbeats: a node that stops (kill -9, a cut link) drops out of
  the live set by itself, and its units go to the others: what it had not run of the current
  cycle at once (the others run their collectors again when a beat finds it gone), the rest
  from the next cycle. A node that joins takes its share from the cycle after the one it
  started in (`started`): the others may have run that one already.
- `monitor:nodes`: every node ever seen (for `monitor cluster status`; dead ones show as such).
- `monitor:claim:<job>:<unit>:<cycle>`: set with NX by the node that runs a unit in a cycle
  (cycle = time // interval). Two nodes that briefly disagree on the live set (one has not
  seen a heartbeat expire yet), or a node whose run comes late, cannot both run a unit in a
  cycle: the second claim fails. A claim holds only for polls that start before the last tenth
  of its cycle (`Claim.until`): a run that falls behind leaves the rest to the next cycle's
  owner rather than poll in that cycle too.
- `monitor:owners`: unit -> the node that last claimed it and when (status, and the leader's
  "poller unreachable" verdicts).
- `monitor:seen`: node -> the time of its last heartbeat, kept after it lapses.
- `monitor:leader`: the leader's name, with the lease as its time to live; renewed by its
  holder only (a Lua compare-and-expire), taken by anyone once it lapses.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from cluster.ownership import assign
from monitor.config import ClusterConfig
from monitor.files import load_state, save_state

log = logging.getLogger(__name__)

PREFIX = "monitor:"
NODES = PREFIX + "nodes"
OWNERS = PREFIX + "owners"
SEEN = PREFIX + "seen"  # node -> the time of its last heartbeat (kept when the node is gone)
LEADER = PREFIX + "leader"
MISSED_BEATS = 3  # a node is dead after this many heartbeats without one
# A unit's poll starts in the first nine tenths of its cycle or not at all (in that cycle): a
# run that falls this far behind would poll in the next cycle, which its owner polls too.
LAST_START = 0.9

# Renew the lease if we hold it, take it if nobody does; 1 if we hold it afterwards.
_ACQUIRE = """
local holder = redis.call('GET', KEYS[1])
if holder == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not holder then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

Unreachable = (RedisError, OSError)


@dataclass(frozen=True)
class Peer:
    """A live node as its heartbeat tells: the groups it serves, when it started."""

    groups: list[str]
    started: float


@dataclass(frozen=True)
class Claim:
    """What a node runs of a job in one cycle: the units it claimed, and the time after which
    none of their polls may start any more (the cycle is then as good as over)."""

    units: set[str]
    cycle: int
    until: float


def decoded(value: bytes | str) -> str:
    """A reply of our clients (decode_responses: always str; redis-py types it bytes | str)."""
    return value.decode() if isinstance(value, bytes) else value


def node_key(name: str) -> str:
    return f"{PREFIX}node:{name}"


def client_options(config: ClusterConfig, timeout: float) -> dict[str, Any]:
    """redis-py options for the cluster's Redis: password and CA from the config, and no
    retries of its own (a node cut off from Redis must find out at once, and carry on)."""
    options: dict[str, Any] = {"decode_responses": True, "socket_timeout": timeout,
                               "socket_connect_timeout": timeout,
                               "retry": Retry(NoBackoff(), 0), "retry_on_timeout": False}
    if config.password is not None:
        options["password"] = config.password
    if config.tls_ca_file is not None:
        options["ssl_ca_certs"] = str(config.tls_ca_file)
    return options


def connect(config: ClusterConfig, timeout: float) -> aioredis.Redis:
    """An asyncio Redis client for the cluster's URL."""
    return aioredis.from_url(config.redis, **client_options(config, timeout))


class ClusterNode:
    """This agent in the cluster. The agent runs `beat` and `renew_lease` as jobs, asks `claim`
    before each run of a shared collector and `leading` before each leader-only job; when a
    beat finds a node gone, the agent runs its shared collectors again at once, to take over
    what the gone node had not run of the current cycle."""

    def __init__(self, config: ClusterConfig, *, clock: Callable[[], float] = time.time,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        assert config.node is not None
        self.config = config
        self.name = config.node
        self.groups = list(config.groups)
        self.clock = clock
        self.monotonic = monotonic
        self.redis = connect(config, timeout=max(1.0, config.heartbeat))
        self.started = clock()  # set again at the first heartbeat: when the others see it
        self._announced = False
        self.cut_off_since: float | None = None  # when Redis stopped answering
        # The live set as last read: while Redis cannot be reached, the node keeps to the share
        # it had (the others, seeing its heartbeat lapse, take it over only when it is gone).
        self._live: dict[str, Peer] = {self.name: Peer(self.groups, self.started)}
        self._lease_until = 0.0  # monotonic; the lease is ours until then
        # job -> [cycle, units]: what this node last ran, on its disk. Cut off from Redis it
        # has no claims to ask; a node started again in the cycle its predecessor ran must not
        # run that cycle a second time.
        self._ran_path = None if config.buffer_dir is None else config.buffer_dir / "claims.json"
        self._ran: dict[str, tuple[int, list[str]]] = {}
        if self._ran_path is not None:
            try:
                ran = load_state(self._ran_path) or {}
                self._ran = {str(job): (int(cycle), [str(u) for u in units])
                             for job, (cycle, units) in ran.items()}
            except (OSError, ValueError, TypeError, AttributeError) as exc:
                log.warning("cluster: ignoring unreadable %s: %s", self._ran_path, exc)
        self.extra: dict[str, object] = {}  # more to publish with the heartbeat (the buffer)

    # -- reachability ----------------------------------------------------------------------------

    def _reached(self) -> None:
        if self.cut_off_since is not None:
            log.warning("cluster: Redis answers again (cut off for %.0f s)",
                        self.clock() - self.cut_off_since)
        self.cut_off_since = None

    def _missed(self, exc: BaseException) -> None:
        if self.cut_off_since is None:
            self.cut_off_since = self.clock()
            log.error("cluster: Redis %s cannot be reached (%s); polling this node's share "
                      "and buffering until it can", self.config.redis, exc)

    @property
    def cut_off(self) -> bool:
        return self.cut_off_since is not None

    # -- heartbeat and live set ------------------------------------------------------------------

    @property
    def ttl(self) -> float:
        return MISSED_BEATS * self.config.heartbeat

    async def beat(self) -> set[str]:
        """Job: tell the others this node is alive (and what it buffers); the nodes whose
        heartbeat lapsed since the last beat (their share of this cycle is to be taken over)."""
        if not self._announced:
            # A node joins when the others can see it: the cycle of its first heartbeat is the
            # one it takes no share of (its aligned turns begin by the next at the latest).
            self._announced, self.started = True, self.clock()
            self._live = {self.name: Peer(self.groups, self.started)}
        info = {"groups": self.groups, "started": self.started, "time": self.clock(),
                "leader": self.leading, **self.extra}
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                pipe.set(node_key(self.name), json.dumps(info), px=int(self.ttl * 1000))
                pipe.sadd(NODES, self.name)
                pipe.hset(SEEN, self.name, str(info["time"]))
                await pipe.execute()
            live = await self.live_nodes()
        except Unreachable as exc:
            self._missed(exc)
            return set()
        self._reached()
        gone = self._live.keys() - live.keys()
        self._live = live
        return gone

    async def live_nodes(self) -> dict[str, Peer]:
        """The nodes whose heartbeat has not lapsed (this one included)."""
        names = sorted(decoded(n) for n in await self.redis.smembers(NODES))
        values = await self.redis.mget([node_key(n) for n in names]) if names else []
        live = {self.name: Peer(self.groups, self.started)}
        for name, value in zip(names, values, strict=True):
            if value is None or name == self.name:
                continue
            try:
                info = json.loads(value)
                groups, started = info["groups"], float(info.get("started", 0.0))
            except (ValueError, KeyError, TypeError, AttributeError):
                continue
            if isinstance(groups, list):
                live[name] = Peer([str(g) for g in groups], started)
        return live

    def _mine(self, units: Mapping[str, str], live: Mapping[str, Peer], begins: float) -> set[str]:
        """The units this node owns in the cycle that `begins` then. A node that started in
        that cycle owns only what nobody else can run in it: the others may have run its
        share already, and its first run may come too late."""
        newcomers = {name for name, peer in live.items() if peer.started >= begins}
        owners = assign(units, {name: peer.groups for name, peer in live.items()}, newcomers)
        return {u for u, node in owners.items() if node == self.name}

    async def claim(self, job: str, units: Mapping[str, str], interval: float) -> Claim:
        """The units (unit -> group) this node runs in the current cycle of `job`: those it owns
        among the live nodes and could claim (none of them already run in this cycle). Cut off
        from Redis, it runs the share it had."""
        now = self.clock()
        cycle = int(now // interval)
        until = (cycle + LAST_START) * interval
        if now >= until:
            return Claim(set(), cycle, until)  # too late for this cycle; the next one's owner
        try:
            live = await self.live_nodes()
        except Unreachable as exc:
            self._missed(exc)
            return await self._ran_now(job, cycle, until,
                                       self._mine(units, self._live, cycle * interval))
        self._live = live
        mine = sorted(self._mine(units, live, cycle * interval))
        if not mine:
            self._reached()
            return Claim(set(), cycle, until)
        ttl = int(3 * interval * 1000)
        try:
            async with self.redis.pipeline(transaction=False) as pipe:
                for unit in mine:
                    pipe.set(f"{PREFIX}claim:{job}:{unit}:{cycle}", self.name, nx=True, px=ttl)
                claimed = {u for u, ok in zip(mine, await pipe.execute(), strict=True) if ok}
                if claimed:
                    when = json.dumps({"node": self.name, "time": self.clock()})
                    await self.redis.hset(OWNERS, mapping={f"{job}/{u}": when for u in claimed})
        except Unreachable as exc:
            self._missed(exc)
            return await self._ran_now(job, cycle, until, set(mine))
        self._reached()
        return await self._ran_now(job, cycle, until, claimed)

    async def _ran_now(self, job: str, cycle: int, until: float, units: set[str]) -> Claim:
        """The claim of `units`, less those this node (or its predecessor, before a restart)
        ran in this cycle already; noted on disk."""
        last_cycle, last_units = self._ran.get(job, (None, []))
        if last_cycle == cycle:
            units = units - set(last_units)
        if units and self._ran_path is not None:
            self._ran[job] = (cycle, sorted(units | set(last_units) if last_cycle == cycle
                                            else units))
            try:
                await asyncio.to_thread(save_state, self._ran_path, self._ran)
            except OSError as exc:
                log.error("cluster: cannot note what this node ran in %s: %s", self._ran_path, exc)
        return Claim(units, cycle, until)

    def shared_state(self, job: str, keep: float) -> RedisState:
        """Where `job`'s units keep what moves with them (kept `keep` seconds after the last
        write)."""
        return RedisState(self, f"{PREFIX}state:{job}:", keep)

    async def stranded(self, units: Mapping[str, Mapping[str, str]]
                       ) -> dict[tuple[str, str], tuple[str, float]]:
        """(job, unit) -> (node, last heard of) for the units (job -> unit -> group) last run
        by a node that is gone, in a group no live node serves: nobody polls them now."""
        live = await self.live_nodes()
        served = {g for peer in live.values() for g in peer.groups}
        owners = await self.redis.hgetall(OWNERS)
        seen = await self.redis.hgetall(SEEN)
        out = {}
        for job, of_job in units.items():
            for unit, group in of_job.items():
                if group in served:
                    continue
                try:
                    node = str(json.loads(owners[f"{job}/{unit}"])["node"])
                except (KeyError, ValueError, TypeError):
                    continue  # never polled by anyone: nothing to say about it
                if node not in live:
                    out[(job, unit)] = (node, float(seen.get(node) or 0.0))
        return out

    # -- leadership ------------------------------------------------------------------------------

    @property
    def leading(self) -> bool:
        """Whether this node holds the lease now (it stops believing so when the lease it last
        renewed runs out, whether or not Redis answers)."""
        return self.monotonic() < self._lease_until

    async def renew_lease(self) -> bool:
        """Job (every third of the lease): keep or take the leadership if it is free."""
        lease = self.config.lease
        asked = self.monotonic()
        was = self.leading
        try:
            held = bool(await self.redis.eval(_ACQUIRE, 1, LEADER, self.name, int(lease * 1000)))
        except Unreachable as exc:
            self._missed(exc)
            return self.leading
        self._lease_until = asked + lease if held else 0.0
        if held and not was:
            log.warning("cluster: %s is the leader now (alerts, site, digests)", self.name)
        elif was and not held:
            log.warning("cluster: %s lost the leadership", self.name)
        return held

    async def close(self) -> None:
        """Leave: give up the lease and the heartbeat, so the others need not wait them out."""
        try:
            if self.leading:
                await self.redis.eval(_RELEASE, 1, LEADER, self.name)
            await self.redis.delete(node_key(self.name))
        except Unreachable:
            pass
        finally:
            self._lease_until = 0.0
            await self.redis.aclose()


class RedisState:
    """`monitor.model.SharedState` in Redis: one key per unit. Cut off from Redis, a node
    keeps its own state (in memory and its state files) and shares it again once it can."""

    def __init__(self, node: ClusterNode, prefix: str, keep: float) -> None:
        self.node, self.prefix, self.keep_ms = node, prefix, int(keep * 1000)

    async def get(self, unit: str) -> str | None:
        if self.node.cut_off:
            return None
        try:
            value = await self.node.redis.get(self.prefix + unit)
            return None if value is None else decoded(value)
        except Unreachable as exc:
            self.node._missed(exc)
            return None

    async def put(self, unit: str, text: str) -> None:
        if self.node.cut_off:
            return
        try:
            await self.node.redis.set(self.prefix + unit, text, px=self.keep_ms)
        except Unreachable as exc:
            self.node._missed(exc)
