"""`monitor cluster status`: nodes, groups, heartbeats, who polls what, the leader, the stream's
lag and what each node buffers, read from Redis."""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from typing import Any

from monitor.config import Config, ReadConfig
from monitor.eventloop import run as run_loop
from monitor.text import clean
from monitor.units import format_duration


def register(sub: argparse._SubParsersAction, read_config: ReadConfig) -> None:
    p = sub.add_parser("cluster", help="the agents of a [cluster]: `cluster status`",
                       description="Commands about the agents that share the work through "
                       "Redis ([cluster] in the config).")
    what = p.add_subparsers(dest="cluster_command", metavar="COMMAND", required=True)
    s = what.add_parser("status", help="nodes, heartbeats, owners, leader, stream lag, buffers",
                        description="Show every node seen (alive or not, its groups, its last "
                        "heartbeat, what it buffers while cut off), who polled each device and "
                        "check last, the leader and its lease, and how many check results the "
                        "leader has yet to take. Exit 1 if Redis cannot be reached.")
    s.add_argument("--json", action="store_true", help="print it as JSON")
    s.set_defaults(handler=lambda args: cmd_status(read_config(args), args))


async def read_status(config: Config, now: float | None = None) -> dict[str, Any]:
    """The cluster as Redis knows it (raises OSError/RedisError if it cannot be reached)."""
    from cluster.node import LEADER, NODES, OWNERS, connect, decoded, node_key
    from cluster.results import GROUP, STREAM

    assert config.cluster is not None
    now = time.time() if now is None else now
    redis = connect(config.cluster, timeout=5.0)
    try:
        names = sorted(decoded(n) for n in await redis.smembers(NODES))
        beats = await redis.mget([node_key(n) for n in names]) if names else []
        ttls = [await redis.pttl(node_key(n)) for n in names]
        leader = await redis.get(LEADER)
        lease_ms = await redis.pttl(LEADER) if leader else -2
        owners_raw = await redis.hgetall(OWNERS)
        length = await redis.xlen(STREAM)
        groups = await redis.xinfo_groups(STREAM) if length else []
    finally:
        await redis.aclose()
    nodes = []
    for name, beat, ttl in zip(names, beats, ttls, strict=True):
        info: dict[str, Any] = {}
        if beat is not None:
            try:
                info = json.loads(beat)
            except ValueError:
                info = {}
        nodes.append({"node": name, "alive": beat is not None, "groups": info.get("groups", []),
                      "heartbeat_age_seconds": (now - info["time"]) if "time" in info else None,
                      "expires_in_seconds": ttl / 1000 if ttl and ttl > 0 else None,
                      "started": info.get("started"), "buffered": info.get("buffered", 0),
                      "dropped": info.get("dropped", 0),
                      "samples_buffered": info.get("samples_buffered", 0),
                      "samples_dropped": info.get("samples_dropped", 0)})
    owners = {}
    for unit, text in sorted(owners_raw.items()):
        try:
            entry = json.loads(text)
            owners[unit] = {"node": str(entry["node"]), "age_seconds": now - float(entry["time"])}
        except (ValueError, KeyError, TypeError):
            continue
    group = next((g for g in groups if g.get("name") == GROUP), None)
    stream = {"length": length,
              "pending": group["pending"] if group else 0,
              "lag": group.get("lag") if group else length}
    return {"nodes": nodes, "leader": leader,
            "lease_seconds": lease_ms / 1000 if leader and lease_ms > 0 else None,
            "owners": owners, "stream": stream}


def format_status(status: dict[str, Any]) -> str:
    lines = []
    leader = status["leader"]
    lease = status["lease_seconds"]
    lines.append(f"leader: {clean(leader) if leader else 'none'}"
                 + (f" (lease {lease:.1f} s left)" if lease is not None else ""))
    counts = Counter(o["node"] for o in status["owners"].values())
    lines.append("nodes:")
    for n in status["nodes"]:
        age = n["heartbeat_age_seconds"]
        beat = f"heartbeat {format_duration(max(0.0, age))} ago" if age is not None else "no heartbeat"
        state = "alive" if n["alive"] else "GONE"
        buffered = f", {n['buffered']} result batch(es) buffered" if n["buffered"] else ""
        buffered += f", {n['dropped']} dropped (buffer full)" if n["dropped"] else ""
        if n["samples_buffered"]:
            buffered += f", {n['samples_buffered']} sample batch(es) buffered"
        if n["samples_dropped"]:
            buffered += f", {n['samples_dropped']} sample batch(es) dropped (buffer full)"
        lines.append(f"  {clean(n['node'])}: {state}, groups {', '.join(map(clean, n['groups'])) or '?'}, "
                     f"{beat}, polls {counts.get(n['node'], 0)} unit(s){buffered}")
    stream = status["stream"]
    lines.append(f"results stream: {stream['length']} entries, {stream['lag'] or 0} not yet "
                 f"read by the leader, {stream['pending']} read and not yet acknowledged")
    lines.append("owners (who last polled each device and check):")
    for unit, owner in status["owners"].items():
        lines.append(f"  {clean(unit)}: {clean(owner['node'])}, "
                     f"{format_duration(max(0.0, owner['age_seconds']))} ago")
    return "\n".join(lines)


def cmd_status(config: Config, args: argparse.Namespace) -> int:
    if config.cluster is None:
        raise ValueError(f"{config.source}: no [cluster] section: this agent works alone")
    from cluster.node import Unreachable  # Redis' client only where a cluster is used

    try:
        status = run_loop(read_status(config))
    except Unreachable as exc:
        print(f"monitor: Redis {config.cluster.redis} cannot be reached: {exc}", file=sys.stderr)
        return 1
    print(json.dumps(status, indent=1) if args.json else format_status(status))
    return 0
