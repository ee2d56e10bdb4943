"""Prometheus exposition of the agent's current check states and latest values.

Fed at the store/status boundary: the exporter is a sink of the agent, so it sees the same
batches the store writes, and reads check states from the status book; it knows nothing of
collectors. `[export] textfile` is rewritten atomically after every batch for node_exporter's
textfile collector (no time stamps: that collector refuses them); `[export] listen` serves the
same on /metrics with prometheus_client's HTTP server (its own thread).

Names follow Prometheus' conventions: `monitor_check_state{target,check}` is the Nagios code
(0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN); every metric is `monitor_<metric>{target,instance}`,
with "octets" read as "bytes", `_per_second` for a per-second rate the collector computed,
and counters (COUNTER/DERIVE, the raw ever-growing values) ending in `_total`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from monitor.config import ExportConfig, listen_address
from monitor.files import PUBLIC_MODE, atomic_write
from monitor.model import Batch, Kind, Measurement
from monitor.status import StatusBook
from monitor.text import clean

log = logging.getLogger("monitor")

MISSED = 3  # a value not reported for this many intervals is dropped, like a stale check


def label(value: str) -> str:
    """Names come from devices: no control or bidi characters (the format escapes the rest)."""
    return clean(value, 200)


def metric_name(m: Measurement) -> str:
    name = re.sub(r"[^a-zA-Z0-9_]+", "_", m.metric).strip("_") or "value"
    name = re.sub(r"octets\b|octets(?=_)", "bytes", name)
    if m.kind is Kind.GAUGE and m.unit.endswith("/s") and not name.endswith("_per_second"):
        name += "_per_second"
    return "monitor_" + name


class PrometheusExporter:
    def __init__(self, config: ExportConfig, status: StatusBook,
                 intervals: dict[str, float]) -> None:
        self.config = config
        self.status = status
        self.intervals = intervals  # collector name -> interval, for dropping stale values
        self._lock = threading.Lock()
        # (target, instance, metric) -> (latest measurement, its collector's interval)
        self._latest: dict[tuple[str, str, str], tuple[Measurement, float, float]] = {}
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        self._server: WSGIServer | None = None

    def serve(self) -> None:
        """Start the /metrics endpoint (`monitor run` only: a `collect` beside the running
        daemon must not fight it for the port)."""
        if self.config.listen and self._server is None:
            host, port = listen_address(self.config.listen)
            try:
                self._server, _ = start_http_server(port, host, registry=self.registry)
            except OSError as exc:
                raise ValueError(f"[export] listen = {self.config.listen!r}: cannot listen "
                                 f"there: {exc.strerror or exc}") from None

    async def consume(self, collector: str, batch: Batch) -> None:
        interval = self.intervals.get(collector, 300.0)
        with self._lock:
            for m in batch.measurements:
                if m.value is not None:
                    self._latest[(m.target, m.instance, m.metric)] = (m, m.value, interval)
        if self.config.textfile:
            await asyncio.to_thread(self.write_textfile, Path(self.config.textfile))

    def write_textfile(self, path: Path) -> None:
        try:  # PUBLIC_MODE: node_exporter runs as its own user
            atomic_write(path, generate_latest(self.registry), PUBLIC_MODE)
        except OSError as exc:
            log.error("[export] textfile %s: cannot write it: %s", path, exc.strerror or exc)

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: the current families, built fresh."""
        now = time.time()
        state = GaugeMetricFamily("monitor_check_state", "Check state as a Nagios plugin exit "
                                  "code: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN",
                                  labels=["target", "check"])
        since = GaugeMetricFamily("monitor_check_state_since_timestamp_seconds",
                                  "Since when the check has been in its current state",
                                  labels=["target", "check"])
        for check in self.status.all():
            if not check.stale(now, MISSED):
                labels = [label(check.target), label(check.check)]
                state.add_metric(labels, int(check.state))
                since.add_metric(labels, check.since)
        yield state
        yield since
        families: dict[tuple[str, bool], GaugeMetricFamily | CounterMetricFamily] = {}
        with self._lock:
            for key, (m, value, interval) in list(self._latest.items()):
                if now - m.timestamp > MISSED * max(interval, 60.0):
                    del self._latest[key]
                    continue
                counter = m.kind in (Kind.COUNTER, Kind.DERIVE)  # ABSOLUTE counts restart
                name = metric_name(m)
                family = families.get((name, counter))
                if family is None:
                    kind = CounterMetricFamily if counter else GaugeMetricFamily
                    doc = f"{m.metric} ({m.kind.value}{', ' + m.unit if m.unit else ''})"
                    family = families[(name, counter)] = kind(name, doc,
                                                              labels=["target", "instance"])
                family.add_metric([label(m.target), label(m.instance)], value)
        yield from families.values()

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
