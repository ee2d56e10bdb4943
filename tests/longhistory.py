"""A realistic long history, written through `monitor.store` the way the collectors write it.

420 days of 5-minute samples ending at `END` for a router (an uplink with diurnal and weekly
curves and a year of growth, a bursty customer port, a port that went down a month ago, the
device's uptime with a reboot), a ping check with loss episodes and rtt_min/avg/max, an HTTP
check and a filling disk. The poller missed 8 hours a day and a half before the end and three
days 200 days before it (every series has those gaps). Values are a deterministic function of
time (seeded noise), so the tests can recompute what was written (`rows`).

Used by the graph tests (tests/test_graphs_long.py) and bench/graphs_bench.py.
"""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from monitor.files import locked
from monitor.model import Kind, Measurement
from monitor.store import RrdStore

STEP = 300
DAYS = 420
END = 1_764_000_000 // STEP * STEP  # 2025-11-24 (fixed: images and figures are reproducible)
ROUTER, WEB, DB = "core-router", "www.example.net", "db1"
UPLINK, CUSTOMER, DOWN_PORT = "Gi0/0/1", "Gi0/0/2", "Gi0/0/10"
GAPS = ((END - 36 * 3600, END - 28 * 3600), (END - 200 * 86400, END - 197 * 86400))
REBOOT = END - 100 * 86400 + 7 * 3600  # the router restarted here (uptime went back)
PORT_DOWN = END - 30 * 86400  # DOWN_PORT is down (oper_status 2, no traffic) since then
SPEED = {UPLINK: 1e9, CUSTOMER: 100e6, DOWN_PORT: 1e9}


@dataclass(frozen=True)
class Column:
    target: str
    instance: str
    metric: str
    unit: str
    values: np.ndarray  # NaN: not measured (a gap, a lost probe)


def times(end: int = END, days: int = DAYS) -> np.ndarray:
    return np.arange(end - days * 86400 + STEP, end + 1, STEP, dtype=np.int64)


def _shape(ts: np.ndarray, end: int, peak_hour: float = 20.0) -> np.ndarray:
    """0.15..1: a diurnal curve peaking at peak_hour UTC, 30 % lower at weekends, growing
    by 80 % over the history."""
    hours = (ts % 86400) / 3600.0
    diurnal = 0.575 + 0.425 * np.cos((hours - peak_hour) / 24.0 * 2 * np.pi)
    weekday = (ts // 86400 + 4) % 7  # 0 = Monday (1970-01-01 was a Thursday)
    weekly = np.where(weekday >= 5, 0.7, 1.0)
    growth = 1.0 + 0.8 * (ts - ts[0]) / max(1, end - ts[0])
    return np.clip(diurnal * weekly * growth / 1.8, 0.15, 1.0)


def columns(end: int = END, days: int = DAYS) -> list[Column]:
    """Every column written, as numpy arrays over `times(end, days)`."""
    ts = times(end, days)
    rng = np.random.default_rng(12)
    noise = lambda scale: 1.0 + scale * rng.standard_normal(ts.size)  # noqa: E731
    out: list[Column] = []

    def add(target: str, instance: str, metric: str, unit: str, values: np.ndarray) -> None:
        out.append(Column(target, instance, metric, unit, np.asarray(values, dtype=float)))

    uplink = _shape(ts, end) * 0.6 * SPEED[UPLINK] / 8  # bytes/s, 60 % of the link at peak
    add(ROUTER, UPLINK, "in_octets", "B/s", uplink * noise(0.05))
    add(ROUTER, UPLINK, "out_octets", "B/s", uplink * 0.35 * noise(0.08))
    add(ROUTER, UPLINK, "in_errors", "/s", np.where(rng.random(ts.size) < 0.01, 0.3, 0.0))
    add(ROUTER, UPLINK, "in_discards", "/s", np.where(rng.random(ts.size) < 0.02, 1.5, 0.0))
    bursts = np.where(rng.random(ts.size) < 0.04, 6.0, 1.0)  # short bursts: the 95th matters
    customer = _shape(ts, end, 14.0) * 0.1 * SPEED[CUSTOMER] / 8 * bursts
    add(ROUTER, CUSTOMER, "in_octets", "B/s", np.minimum(customer * noise(0.1), SPEED[CUSTOMER] / 8))
    add(ROUTER, CUSTOMER, "out_octets", "B/s", customer * 0.2 * noise(0.1))
    down = ts >= PORT_DOWN
    small = _shape(ts, end) * 2e6
    add(ROUTER, DOWN_PORT, "in_octets", "B/s", np.where(down, 0.0, small))
    add(ROUTER, DOWN_PORT, "out_octets", "B/s", np.where(down, 0.0, small * 0.5))
    add(ROUTER, DOWN_PORT, "oper_status", "", np.where(down, 2.0, 1.0))
    for port in (UPLINK, CUSTOMER):
        add(ROUTER, port, "oper_status", "", np.ones(ts.size))
    for port, speed in SPEED.items():
        add(ROUTER, port, "speed_bps", "bit/s", np.full(ts.size, speed))
    boot = np.where(ts >= REBOOT, REBOOT, ts[0] - 86400 * 500)
    add(ROUTER, "", "uptime_seconds", "s", (ts - boot).astype(float))

    loss = np.where(rng.random(ts.size) < 0.03, rng.choice([10.0, 20.0, 50.0, 100.0], ts.size), 0.0)
    rtt = 0.012 + 0.008 * _shape(ts, end) + 0.002 * np.abs(rng.standard_normal(ts.size))
    lost = loss >= 100.0
    add(WEB, "ping", "response_seconds", "s", np.where(lost, np.nan, rtt))
    add(WEB, "ping", "loss_percent", "%", loss)
    add(WEB, "ping", "rtt_min_seconds", "s", np.where(lost, np.nan, rtt * 0.8))
    add(WEB, "ping", "rtt_avg_seconds", "s", np.where(lost, np.nan, rtt))
    add(WEB, "ping", "rtt_max_seconds", "s", np.where(lost, np.nan, rtt * 1.6))
    add(WEB, "http", "response_seconds", "s", 0.08 + 0.15 * _shape(ts, end) * noise(0.2).clip(0.2))
    add(DB, "fs:/var", "used_percent", "%", 40 + 45 * (ts - ts[0]) / (end - ts[0]))

    in_gap = np.zeros(ts.size, dtype=bool)
    for first, last in GAPS:
        in_gap |= (ts > first) & (ts <= last)
    # A file's metrics side by side, as a collector emits them (one row per file and time).
    out.sort(key=lambda c: (c.target, c.instance))
    return [Column(c.target, c.instance, c.metric, c.unit, np.where(in_gap, np.nan, c.values))
            for c in out]


def write(root: Path, end: int = END, days: int = DAYS) -> RrdStore:
    """Write the history into an RRD directory through the store (batches of a few days, as
    a collector's runs would arrive, merged for speed) and return the store."""
    store = RrdStore(root)
    feed(store, end, days)
    store.close()
    return RrdStore(root)


def feed(store: RrdStore, end: int = END, days: int = DAYS,
         targets: set[str] | None = None) -> None:
    """Write the history (of these targets only, if given) into a store, a week per batch."""
    ts = times(end, days)
    cols = [c for c in columns(end, days) if targets is None or c.target in targets]
    chunk = 2016  # one week of rows per write()
    for begin in range(0, ts.size, chunk):
        batch: list[Measurement] = []
        part = slice(begin, begin + chunk)
        values = [(c, c.values[part].tolist()) for c in cols]
        for i, second in enumerate(ts[part].tolist()):
            for c, vals in values:
                v = vals[i]
                if v == v:  # a gap is no sample at all (NaN != NaN)
                    batch.append(Measurement(c.target, c.instance, c.metric, v, Kind.GAUGE,
                                             c.unit, second, minimum=0))
        store.write(batch, STEP)


CACHE = Path(__file__).resolve().parent.parent / ".cache"


def copy(dest: Path) -> RrdStore:
    """The default history in `dest` (an RRD directory that must not exist yet). Writing it
    takes ~20 s of CPU, so it is written once into .cache/ (keyed by this module's and the
    store's source, under a lock that parallel test workers share) and copied from there."""
    import monitor.store

    key = hashlib.sha256(Path(__file__).read_bytes() + Path(monitor.store.__file__).read_bytes())
    cached = CACHE / f"longhistory-{key.hexdigest()[:12]}"
    with locked(CACHE / "longhistory.lock"):
        if not (cached / "index.json").exists():
            shutil.rmtree(cached, ignore_errors=True)
            partial = cached.with_name(cached.name + ".partial")
            shutil.rmtree(partial, ignore_errors=True)
            write(partial).close()
            partial.rename(cached)
    shutil.copytree(cached, dest)
    return RrdStore(dest)


def rows(column: Column, start: int, end: int, end_of_history: int = END,
         days: int = DAYS) -> np.ndarray:
    """The 5-minute values the RRD file holds for start < t <= end: NaN where nothing was
    written, and for the first sample after a gap (longer than the heartbeat, 2 steps)."""
    ts = times(end_of_history, days)
    values = column.values.copy()
    for _, last in GAPS:
        values[ts == last + STEP] = np.nan
    return values[(ts > start) & (ts <= end)]


def column(target: str, instance: str, metric: str, end: int = END, days: int = DAYS) -> Column:
    return next(c for c in columns(end, days)
                if (c.target, c.instance, c.metric) == (target, instance, metric))
