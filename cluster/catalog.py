"""The index of RRD files in Redis (`monitor:index`: relative path -> JSON entry), shared by
every node that writes through the one rrdcached and by the leader that draws the site."""

from __future__ import annotations

import json

import redis
from redis.exceptions import RedisError

from cluster.node import client_options, decoded
from monitor.config import ClusterConfig

INDEX = "monitor:index"
REVISION = "monitor:index-revision"  # counts the saves: a node reads the index when it moved


class RedisCatalog:
    """`monitor.store.Catalog` in Redis. Synchronous: the store runs in worker threads."""

    def __init__(self, config: ClusterConfig) -> None:
        self.redis = redis.Redis.from_url(
            config.redis, **client_options(config, timeout=max(1.0, config.heartbeat)))

    def load(self) -> dict[str, dict]:
        try:
            raw = self.redis.hgetall(INDEX)
        except RedisError:
            return {}  # cut off: the files known so far are still known
        out = {}
        for rel, text in raw.items():
            try:
                entry = json.loads(text)
            except ValueError:
                continue
            if isinstance(entry, dict) and {"target", "instance", "step", "metrics"} <= entry.keys():
                out[decoded(rel)] = entry
        return out

    def save(self, entries: dict[str, dict]) -> None:
        if not entries:
            return
        try:
            with self.redis.pipeline(transaction=True) as pipe:
                pipe.hset(INDEX, mapping={rel: json.dumps(e) for rel, e in entries.items()})
                pipe.incr(REVISION)
                pipe.execute()
        except RedisError as exc:
            raise OSError(f"Redis: {exc}") from exc

    def revision(self) -> object:
        try:
            return self.redis.get(REVISION) or 0
        except RedisError:
            return None  # cut off: what we know is all we can go by
