"""Time series in RRD files: the only module that touches rrdtool.

One file per (target, instance), one data source (DS) per metric, created on the first sample.
File and DS names are made from untrusted names (interface aliases, mailbox names) so that nothing
escapes the RRD directory and two different names never share a file; the original names are
kept in `index.json`. Updates arrive in batches (one per collector run) and are written either
directly or, when `[storage] rrdcached` is set, through rrdcached's BATCH protocol.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import rrdtool

from monitor.files import atomic_write, locked
from monitor.model import Kind, Measurement
from monitor.units import parse_duration

log = logging.getLogger(__name__)

_SAFE_CHARS = re.compile(r"[A-Za-z0-9_\-]")
_MAX_NAME = 96
_PENDING_PER_FILE = 100_000  # values kept per file while it cannot be written


def safe_name(name: str) -> str:
    """An injective, path-safe file name component for an untrusted name.

    Letters, digits, "_" and "-" stay; every other byte (including "/", "." and "%") becomes
    %XX, so "a/b" -> "a%2Fb" never meets "a_b", and ".." cannot appear. Long names are cut and
    completed by a hash so they stay unique. The empty name is "@" (which no other name yields).
    """
    if name == "":
        return "@"
    raw = name.encode("utf-8", "surrogateescape")
    out = "".join(chr(b) if _SAFE_CHARS.match(chr(b)) else f"%{b:02X}" for b in raw)
    if len(out) > _MAX_NAME:
        digest = hashlib.sha256(raw).hexdigest()[:16]
        out = f"{out[:_MAX_NAME - 17]}~{digest}"
    return out


def ds_name(metric: str) -> str:
    """A valid RRD data source name (1-19 of [A-Za-z0-9_]) for a metric name."""
    if re.fullmatch(r"[A-Za-z0-9_]{1,19}", metric):
        return metric
    clean = re.sub(r"[^A-Za-z0-9_]", "_", metric)[:12] or "m"
    return f"{clean}_{hashlib.sha256(metric.encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"


@dataclass(frozen=True)
class SeriesInfo:
    """What the index knows of one RRD file."""

    target: str
    instance: str
    path: Path
    step: int
    metrics: dict[str, str]  # metric -> DS name, in DS order
    units: dict[str, str] = field(default_factory=dict)


@dataclass
class Series:
    """Fetched data: timestamps start + i*step for i in range(len(rows)); None is unknown."""

    start: int
    end: int
    step: int
    columns: dict[str, list[float | None]]

    @property
    def timestamps(self) -> list[int]:
        n = len(next(iter(self.columns.values()), []))
        return [self.start + (i + 1) * self.step for i in range(n)]


@dataclass
class WriteReport:
    updates: int = 0
    files_created: int = 0
    skipped: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class _FileState:
    info: SeriesInfo
    last: int | None = None
    warned_old: bool = False


def rra_definitions(step: int, archives: Sequence[str], consolidations: Sequence[str]) -> list[str]:
    """RRA:CF:0.5:STEPS:ROWS for each "RESOLUTION:KEEP" archive and consolidation function."""
    out = []
    for spec in archives:
        resolution_text, _, keep_text = spec.partition(":")
        resolution = step if resolution_text == "step" else parse_duration(resolution_text)
        steps = max(1, round(resolution / step))
        rows = max(2, math.ceil(parse_duration(keep_text) / (steps * step)))
        for cf in consolidations:
            out.append(f"RRA:{cf}:0.5:{steps}:{rows}")
    return out


def _ds_definition(name: str, m: Measurement, step: int) -> str:
    heartbeat = 2 * step
    if m.kind is Kind.GAUGE:
        kind, low = "GAUGE", m.minimum
    elif m.kind is Kind.COUNTER and m.maximum is not None:
        # With a known maximum rate, rrdtool's COUNTER handles 32/64-bit wraps (in doubles, so
        # only approximately near 2**64) and a reset, which looks like a huge wrap, lands above
        # the maximum: unknown, not a spike. Collectors that need exact counter math (SNMP)
        # compute rates themselves and store GAUGEs.
        kind, low = "COUNTER", 0
    else:
        # Without a maximum, a decrease must be a reset: DERIVE with min 0 makes it unknown.
        kind, low = "DERIVE", 0 if m.minimum is None else m.minimum
    fmt = lambda v: "U" if v is None else repr(float(v))  # noqa: E731
    return f"DS:{name}:{kind}:{heartbeat}:{fmt(low)}:{fmt(m.maximum)}"


def _value_text(value: float | None) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "U"
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) < 2**63):
        return str(int(value))
    return repr(float(value))


class RrdStore:
    """Create, update and fetch RRD files under `root`.

    Thread-safe: collector jobs hand batches to `write()` from worker threads.
    """

    def __init__(
        self,
        root: Path,
        *,
        archives: Sequence[str] = ("step:2d", "30m:2w", "2h:9w", "1d:2y"),
        consolidations: Sequence[str] = ("AVERAGE", "MAX"),
        rrdcached: str | None = None,
    ) -> None:
        self.root = Path(root)
        self.archives = list(archives)
        self.consolidations = list(consolidations)
        self.rrdcached = rrdcached
        self._lock = threading.RLock()
        self._files: dict[Path, _FileState] = {}
        # Samples a failed write could not store (full disk, daemon down, corrupt file moved
        # aside): they go in front of the next batch, so nothing accepted is lost.
        self._pending: dict[Path, list[Measurement]] = {}
        self._daemon: _RrdcachedClient | None = _RrdcachedClient(rrdcached) if rrdcached else None
        self._index_dirty = False
        self._originals: dict[Path, list[Measurement]] = {}
        self.root.mkdir(parents=True, exist_ok=True)
        self._load_index()

    # -- index ---------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def _load_index(self) -> None:
        try:
            raw = json.loads(self.index_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("RRD index %s unreadable (%s); it is rebuilt as files are written",
                      self.index_path, exc)
            return
        for rel, entry in raw.get("files", {}).items():
            path = self.root / rel
            if path.exists():
                info = SeriesInfo(entry["target"], entry["instance"], path, int(entry["step"]),
                                  dict(entry["metrics"]), dict(entry.get("units", {})))
                self._files[path] = _FileState(info)

    def _save_index(self) -> None:
        if not self._index_dirty:
            return
        with locked(self.root / ".index.lock"):
            # Another process (a `collect --once` beside `run`) may have added files: merge.
            try:
                existing = json.loads(self.index_path.read_text(encoding="utf-8")).get("files", {})
            except (OSError, ValueError):
                existing = {}
            for state in self._files.values():
                info = state.info
                existing[str(info.path.relative_to(self.root))] = {
                    "target": info.target, "instance": info.instance, "step": info.step,
                    "metrics": info.metrics, "units": info.units,
                }
            atomic_write(self.index_path, json.dumps({"version": 1, "files": existing},
                                                     indent=1, sort_keys=True))
        self._index_dirty = False

    def series(self) -> list[SeriesInfo]:
        """Every known (target, instance) file, including those another process created."""
        with self._lock:
            self._load_index()
            return sorted((s.info for s in self._files.values()),
                          key=lambda i: (i.target, i.instance))

    def path_for(self, target: str, instance: str) -> Path:
        return self.root / safe_name(target) / f"{safe_name(instance)}.rrd"

    def info(self, target: str, instance: str) -> SeriesInfo | None:
        state = self._files.get(self.path_for(target, instance))
        if state is None:
            self._load_index()
            state = self._files.get(self.path_for(target, instance))
        return state.info if state else None

    # -- writing -------------------------------------------------------------------------------

    def write(self, measurements: Iterable[Measurement], step: float) -> WriteReport:
        """Store one batch. Never raises for a single bad file: its problem is in the report."""
        report = WriteReport()
        step = max(1, round(step))
        rows: dict[Path, dict[int, dict[str, float | None]]] = defaultdict(lambda: defaultdict(dict))
        samples: dict[Path, dict[str, Measurement]] = defaultdict(dict)
        originals: dict[Path, list[Measurement]] = defaultdict(list)
        with self._lock:
            retry = [m for kept in self._pending.values() for m in kept]
            self._pending.clear()
        for m in [*retry, *measurements]:
            path = self.path_for(m.target, m.instance)
            value = m.value
            if value is not None and m.kind is not Kind.GAUGE and math.isfinite(value):
                value = round(value)  # rrdtool counters take integers only
            rows[path][int(m.timestamp)][m.metric] = value
            samples[path].setdefault(m.metric, m)
            originals[path].append(m)
        with self._lock:
            self._originals = originals
            batch: list[tuple[_FileState, list[tuple[int, dict[str, float | None]]]]] = []
            for path, by_time in rows.items():
                try:
                    state = self._prepare(path, samples[path], step, min(by_time), report)
                except (rrdtool.OperationalError, OSError) as exc:
                    self._keep(path, f"cannot create ({exc})", report)
                    continue
                fresh = self._drop_old(state, sorted(by_time.items()), report)
                if fresh:
                    batch.append((state, fresh))
            if self._daemon is not None:
                self._write_daemon(batch, report)
            else:
                for state, fresh in batch:
                    self._write_direct(state, fresh, report)
            try:
                self._save_index()
            except OSError as exc:
                report.errors.append(f"{self.index_path}: cannot write index: {exc}")
        for error in report.errors:
            log.error("store: %s", error)
        return report

    def _prepare(
        self, path: Path, samples: dict[str, Measurement], step: int, first: int, report: WriteReport
    ) -> _FileState:
        state = self._files.get(path)
        if state is not None and not path.exists():
            state = None  # deleted or moved aside behind our back: start again
        if state is None:
            any_sample = next(iter(samples.values()))
            metrics = {name: ds_name(name) for name in samples}
            if path.exists():
                state = self._adopt(path, any_sample, metrics, step)
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                rrdtool.create(
                    str(path), "--step", str(step), "--start", str(first - 1), "--no-overwrite",
                    *(_ds_definition(ds, samples[m], step) for m, ds in metrics.items()),
                    *rra_definitions(step, self.archives, self.consolidations),
                )
                info = SeriesInfo(any_sample.target, any_sample.instance, path, step, metrics,
                                  {m: s.unit for m, s in samples.items()})
                state = _FileState(info, last=first - 1)
                report.files_created += 1
            self._files[path] = state
            self._index_dirty = True
        missing = [m for m in samples if m not in state.info.metrics]
        if missing:
            self._flush_daemon(path)
            for metric in missing:
                ds = ds_name(metric)
                rrdtool.tune(str(path), _ds_definition(ds, samples[metric], state.info.step))
                state.info.metrics[metric] = ds
                state.info.units[metric] = samples[metric].unit
            self._index_dirty = True
        return state

    def _adopt(self, path: Path, sample: Measurement, metrics: dict[str, str], step: int) -> _FileState:
        """A file exists that the index does not know (index lost): read its DS list."""
        info = rrdtool.info(str(path))
        names = [k[3:-7] for k in info if k.startswith("ds[") and k.endswith("].index")]
        names.sort(key=lambda n: info[f"ds[{n}].index"])
        by_ds = {ds: m for m, ds in metrics.items()}
        known = {by_ds.get(n, n): n for n in names}
        series = SeriesInfo(sample.target, sample.instance, path, int(info["step"]), known)
        return _FileState(series, last=int(info["last_update"]))

    def _drop_old(
        self, state: _FileState, ordered: list[tuple[int, dict[str, float | None]]], report: WriteReport
    ) -> list[tuple[int, dict[str, float | None]]]:
        if state.last is None:
            try:
                state.last = int(rrdtool.last(str(state.info.path)))
            except rrdtool.OperationalError:
                state.last = 0
        fresh = []
        last = state.last
        for ts, values in ordered:
            if ts <= last:
                report.skipped += 1
                if not state.warned_old:
                    log.warning("store: %s: sample at %d is not newer than the last update (%d); "
                                "skipped (clock went back, or two runs in one second?)",
                                state.info.path, ts, last)
                    state.warned_old = True
                continue
            fresh.append((ts, values))
            last = ts
        return fresh

    def _row_text(self, state: _FileState, ts: int, values: dict[str, float | None]) -> str:
        return ":".join([str(ts), *(_value_text(values.get(m)) for m in state.info.metrics)])

    def _write_direct(
        self, state: _FileState, rows: list[tuple[int, dict[str, float | None]]], report: WriteReport
    ) -> None:
        path = str(state.info.path)
        template = ":".join(state.info.metrics.values())
        lines = [self._row_text(state, ts, values) for ts, values in rows]
        try:
            rrdtool.update(path, "-t", template, *lines)
        except rrdtool.OperationalError as exc:
            self._handle_failure(state, rows, str(exc), report)
            return
        state.last = rows[-1][0]
        report.updates += len(rows)

    def _handle_failure(
        self, state: _FileState, rows: list[tuple[int, dict[str, float | None]]], error: str,
        report: WriteReport,
    ) -> None:
        path = state.info.path
        if self._is_corrupt(path):
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(path, aside)
                report.errors.append(f"{path}: corrupt RRD file ({error}); moved aside to "
                                     f"{aside.name}, a new file starts with the next sample")
            except OSError as exc:
                report.errors.append(f"{path}: corrupt RRD file ({error}) and cannot move it "
                                     f"aside: {exc}")
            self._files.pop(path, None)
            self._index_dirty = True
            self._keep(path, None, report)
        else:
            # Full disk, permissions, a busy daemon: keep the samples and try again next time.
            self._keep(path, f"update failed ({error})", report)

    def _keep(self, path: Path, error: str | None, report: WriteReport) -> None:
        kept = self._pending.setdefault(path, [])
        kept.extend(self._originals.get(path, []))
        del kept[:-_PENDING_PER_FILE]
        if error:
            report.errors.append(f"{path}: {error}; {len(kept)} value(s) kept for the next attempt")

    @staticmethod
    def _is_corrupt(path: Path) -> bool:
        try:
            rrdtool.info(str(path))
            with open(path, "rb") as handle:
                return handle.read(4) != b"RRD\x00"
        except (rrdtool.OperationalError, OSError):
            return path.exists()

    # -- rrdcached -----------------------------------------------------------------------------

    def _write_daemon(
        self, batch: list[tuple[_FileState, list[tuple[int, dict[str, float | None]]]]],
        report: WriteReport,
    ) -> None:
        assert self._daemon is not None
        if not batch:
            return
        commands = []
        for state, rows in batch:
            values = " ".join(self._row_text(state, ts, v) for ts, v in rows)
            commands.append(f"UPDATE {state.info.path} {values}")
        try:
            errors = self._daemon.batch(commands)
        except OSError as exc:
            for state, _ in batch:
                self._keep(state.info.path, None, report)
            report.errors.append(f"rrdcached {self.rrdcached}: {exc}; samples of {len(batch)} "
                                 "file(s) kept for the next attempt")
            return
        for i, (state, rows) in enumerate(batch, 1):
            if i in errors:
                self._handle_failure(state, rows, f"rrdcached: {errors[i]}", report)
            else:
                state.last = rows[-1][0]
                report.updates += len(rows)

    def _flush_daemon(self, path: Path) -> None:
        if self._daemon is not None:
            with contextlib.suppress(OSError):
                self._daemon.command(f"FLUSH {path}")

    def close(self) -> None:
        with self._lock:
            self._save_index()
            if self._daemon is not None:
                self._daemon.close()

    # -- reading -------------------------------------------------------------------------------

    def fetch(
        self,
        target: str,
        instance: str,
        start: float,
        end: float,
        resolution: float | None = None,
        cf: str = "AVERAGE",
    ) -> Series:
        """Data between start and end at (at least) the given resolution; gaps are None."""
        info = self.info(target, instance)
        if info is None:
            raise KeyError(f"no data stored for {target!r} {instance!r}")
        return self.fetch_path(info, start, end, resolution, cf)

    def fetch_path(
        self, info: SeriesInfo, start: float, end: float, resolution: float | None = None,
        cf: str = "AVERAGE",
    ) -> Series:
        args = [str(info.path), cf, "--start", str(int(start)), "--end", str(int(end))]
        if resolution:
            args += ["--resolution", str(int(resolution)), "--align-start"]
        if self.rrdcached:
            args += ["--daemon", self.rrdcached]
        (first, last, step), names, rows = rrdtool.fetch(*args)
        by_ds = {ds: metric for metric, ds in info.metrics.items()}
        columns = {by_ds.get(n, n): [row[i] for row in rows] for i, n in enumerate(names)}
        return Series(first, last, step, columns)


class _RrdcachedClient:
    """rrdcached's line protocol; BATCH sends thousands of updates in one round trip."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._reader = None

    def _connect(self) -> None:
        if self._sock is not None:
            return
        if self.address.startswith("unix:"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(30)
            sock.connect(self.address[5:])
        else:
            host, _, port = self.address.rpartition(":")
            sock = socket.create_connection((host.strip("[]"), int(port)), timeout=30)
        self._sock = sock
        self._reader = sock.makefile("rb")

    def _line(self) -> str:
        assert self._reader is not None
        line = self._reader.readline()
        if not line:
            raise ConnectionError("rrdcached closed the connection")
        return line.decode("utf-8", "replace").rstrip("\n")

    def command(self, text: str) -> str:
        try:
            self._connect()
            assert self._sock is not None
            self._sock.sendall(text.encode("utf-8", "surrogateescape") + b"\n")
            status = self._line()
            count = int(status.split(" ", 1)[0])
            for _ in range(max(count, 0)):
                self._line()
            return status
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"rrdcached: {exc}") from exc

    def batch(self, commands: list[str]) -> dict[int, str]:
        """Send commands in BATCH mode; returns {command number (1-based): error message}."""
        try:
            self._connect()
            assert self._sock is not None
            payload = "BATCH\n" + "\n".join(commands) + "\n.\n"
            self._sock.sendall(payload.encode("utf-8", "surrogateescape"))
            self._line()  # "0 Go ahead.  End with dot '.' on its own line."
            status = self._line()  # "N errors"
            count = int(status.split(" ", 1)[0])
            errors = {}
            for _ in range(max(count, 0)):
                number, _, message = self._line().partition(" ")
                errors[int(number)] = message
            return errors
        except (OSError, ValueError) as exc:
            self.close()
            raise OSError(f"rrdcached: {exc}") from exc

    def close(self) -> None:
        if self._sock is not None:
            with contextlib.suppress(OSError):
                self._sock.close()
        self._sock = None
        self._reader = None
