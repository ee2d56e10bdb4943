"""Time series in RRD files: the only module that touches rrdtool.

One file per (target, instance), one data source (DS) per metric, created on the first sample.
File and DS names are made from untrusted names (interface aliases, mailbox names) so that nothing
escapes the RRD directory and two different names never share a file; the original names are
kept in `index.json`. Updates arrive in batches (one per collector run) and are written either
directly or, when `[storage] rrdcached` is set, through rrdcached's BATCH protocol.

With `remote=True` (several agents, [cluster]) the files are not on this machine at all: they
live under rrdcached's base directory (`rrdcached -b DIR -B -R`) on the store host, and every
operation goes through the daemon: CREATE, UPDATE, LAST, INFO and FETCH (which flushes the file's
pending updates first). File names are then relative to that directory. rrdcached has no TUNE:
a metric that appears later on a file is added by making the file again through the daemon,
its history copied in (CREATE -r, rrdtool's prefill); a daemon that cannot (older than 1.6) has
it reported, once, and not stored. The index of files is kept by a
`Catalog` the caller hands in (a JSON file here; Redis in a cluster).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from typing import BinaryIO, Protocol

import rrdtool

from monitor.consolidate import Archive, consolidate, timeline
from monitor.files import atomic_write, locked, safe_name
from monitor.model import Kind, Measurement, Thresholds, measurement_from_row, measurement_row
from monitor.units import parse_duration

log = logging.getLogger(__name__)

_PENDING_PER_FILE = 100_000  # values kept per file while it cannot be written
_CREATE_AHEAD_FROM = 16  # new files in one batch made side by side in threads
_REPLAY_FILES = 8  # backlog files (of about a MiB) replayed per batch written
INDEX_SAVE_INTERVAL = 30.0  # seconds between index saves while files are being created
_DAEMON_LINE = 3900  # the longest row text of one UPDATE sent to rrdcached (its limit: 4096)


def _backlog_line(measurements: list[Measurement], step: int) -> str:
    return json.dumps({"step": step, "samples": [measurement_row(m) for m in measurements]},
                      separators=(",", ":"))


def _backlog_runs(lines: Iterable[str]) -> Iterator[tuple[int, list[Measurement]]]:
    """(step, samples) of a backlog's lines, consecutive lines of one step together."""
    run: list[Measurement] = []
    run_step = 0
    for line in lines:
        try:
            data = json.loads(line)
            step = int(data["step"])
            samples = [measurement_from_row(row) for row in data["samples"]]
        except (ValueError, KeyError, TypeError) as exc:
            log.error("store: a line of the sample backlog is unreadable (%s); skipped", exc)
            continue
        if step != run_step and run:
            yield run_step, run
            run = []
        run_step = step
        run.extend(samples)
    if run:
        yield run_step, run


def _file_signature(path: Path) -> tuple[int, int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size, st.st_ino


def migrate_percent_names(root: Path) -> int:
    """Rename the files and directories that earlier versions named with %XX escapes to the
    =XX names of `safe_name` (the same name with "%" for "=", which those versions always
    escaped: the mapping is one to one), and the index's keys with them. Returns how many were
    renamed. Files keep their content, so no history is lost. Done once per data directory
    (a marker file records it): every store opens through here, the agent's reload too, and a
    scan of tens of thousands of files each time would be paid for nothing."""
    marker = root / ".names-migrated"
    renamed = 0
    if marker.exists():
        return 0
    try:
        targets = [d for d in root.iterdir() if d.is_dir()]
    except FileNotFoundError:
        return 0
    with locked(root / ".index.lock"):
        for directory in targets:
            new_dir = directory.with_name(directory.name.replace("%", "="))
            for path in list(directory.iterdir()):
                new = new_dir / path.name.replace("%", "=")
                if new != path:
                    new_dir.mkdir(exist_ok=True)
                    os.rename(path, new)
                    renamed += 1
            if new_dir != directory:
                with contextlib.suppress(OSError):  # emptied above; not if something new is there
                    directory.rmdir()
        index = root / "index.json"
        try:
            text = index.read_text(encoding="utf-8")
            raw = json.loads(text) if "%" in text else None
        except (OSError, ValueError):
            raw = None
        files = raw.get("files") if isinstance(raw, dict) else None
        if isinstance(raw, dict) and isinstance(files, dict) and any("%" in rel for rel in files):
            raw["files"] = {rel.replace("%", "="): entry for rel, entry in files.items()}
            atomic_write(index, json.dumps(raw, indent=1))
        marker.touch()
    if renamed:
        log.warning("store: renamed %d RRD file(s) under %s from %%XX to =XX names (librrd "
                    "treats %% in file names as a format)", renamed, root)
    return renamed


def ds_name(metric: str) -> str:
    """A valid RRD data source name (1-19 of [A-Za-z0-9_]) for a metric name."""
    if re.fullmatch(r"[A-Za-z0-9_]{1,19}", metric):
        return metric
    clean = re.sub(r"[^A-Za-z0-9_]", "_", metric)[:12] or "m"
    return f"{clean}_{hashlib.sha256(metric.encode('utf-8', 'surrogateescape')).hexdigest()[:6]}"


@dataclass(frozen=True, slots=True)
class SeriesInfo:
    """What the index knows of one RRD file. The store shares `metrics` and `units` between
    the files of one layout (every interface of every switch has the same): read them, never
    change them in place."""

    target: str
    instance: str
    path: Path
    step: int
    metrics: dict[str, str]  # metric -> DS name, in DS order
    units: dict[str, str] = field(default_factory=dict)
    # The latest warning/critical ranges (and min/max) a producer gave per metric (a plugin's
    # perfdata, a check's response-time limits): what graphs draw as limit lines.
    thresholds: dict[str, Thresholds] = field(default_factory=dict)


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


@dataclass(frozen=True, slots=True)
class _Layout:
    """The data sources of a file (metric -> DS name, in DS order), their units, and what the
    write path makes of them: one shared copy for all the files that have the same (48,000
    interface files are a handful of layouts; a copy each was ~1 KiB per file)."""

    metrics: dict[str, str]
    units: dict[str, str]
    names: list[str]  # the metrics in DS order
    row_format: str  # "%d:%s:%s": a row's text from (time, *values in DS order)


class _Layouts:
    """The distinct layouts of one store's files."""

    def __init__(self) -> None:
        self._known: dict[tuple, _Layout] = {}

    def get(self, metrics: Mapping[str, str], units: Mapping[str, str]) -> _Layout:
        key = (tuple(metrics.items()), tuple(units.items()))
        layout = self._known.get(key)
        if layout is None:
            layout = self._known[key] = _Layout(dict(metrics), dict(units), list(metrics),
                                                "%d" + ":%s" * len(metrics))
        return layout


@dataclass(slots=True)
class _FileState:
    info: SeriesInfo
    metric_names: list[str]  # its layout's (shared: never changed in place)
    row_format: str
    last: int | None = None
    warned_old: bool = False
    batch: int = 0  # the last write() that gave this file a quick row
    # This batch's update of the file: its rows as rrdtool text ("T:V:V T:V:V"), and the time of
    # its last update before them (restored if the update fails). Kept here rather than in a
    # tuple per file: allocations that outlive the loop are what set off CPython's GC.
    text: str = ""
    last_before: int | None = None
    # Whether this process compared the units its producer gives with those recorded (once:
    # the first batch that writes the file; see RrdStore._follow_units).
    units_checked: bool = False

    @property
    def path_text(self) -> str:
        return str(self.info.path)  # pathlib keeps it: no second copy per file here

    @classmethod
    def of(cls, info: SeriesInfo, layout: _Layout, last: int | None = None) -> _FileState:
        """The state of a file described by `info`, with its layout's shared metrics and
        units."""
        if info.metrics is not layout.metrics or info.units is not layout.units:
            info = dataclasses.replace(info, metrics=layout.metrics, units=layout.units)
        return cls(info, layout.names, layout.row_format, last)


def rra_definitions(step: int, archives: Sequence[str], consolidations: Sequence[str]) -> list[str]:
    """RRA:CF:0.5:STEPS:ROWS for each "RESOLUTION:KEEP" archive and consolidation function.

    Archives of the same resolution are one (the longest KEEP): with the default 5-minute step,
    "step:2d" and "5m:32d" are a single archive of 32 days. An archive of single samples
    (STEPS 1) gets the first function only: the AVERAGE and the MAX of one sample are the sample.
    """
    rows_for: dict[int, int] = {}
    for spec in archives:
        resolution_text, _, keep_text = spec.partition(":")
        resolution = step if resolution_text == "step" else parse_duration(resolution_text)
        steps = max(1, round(resolution / step))
        rows = max(2, math.ceil(parse_duration(keep_text) / (steps * step)))
        rows_for[steps] = max(rows, rows_for.get(steps, 0))
    return [f"RRA:{cf}:0.5:{steps}:{rows}" for steps, rows in sorted(rows_for.items())
            for cf in (consolidations[:1] if steps == 1 else consolidations)]


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
    elif m.kind is Kind.ABSOLUTE:
        kind, low = "ABSOLUTE", 0 if m.minimum is None else m.minimum
    else:
        # Without a maximum, a decrease must be a reset: DERIVE with min 0 makes it unknown.
        kind, low = "DERIVE", 0 if m.minimum is None else m.minimum
    fmt = lambda v: "U" if v is None else repr(float(v))  # noqa: E731
    return f"DS:{name}:{kind}:{heartbeat}:{fmt(low)}:{fmt(m.maximum)}"


def _value_text(value: float | None) -> str:
    if type(value) is int:
        return str(value)
    if value is None or not math.isfinite(value):
        return "U"
    if float(value).is_integer() and abs(value) < 2**63:
        return str(int(value))
    return repr(float(value))


def _split_rows(text: str, limit: int) -> list[str]:
    """Space-separated rows in parts of at most `limit` characters (a row is never cut)."""
    parts: list[str] = []
    start = 0
    while len(text) - start > limit:
        cut = text.rfind(" ", start, start + limit + 1)
        if cut <= start:  # one row longer than the limit: it goes alone
            cut = text.find(" ", start + 1)
            if cut < 0:
                break
        parts.append(text[start:cut])
        start = cut + 1
    parts.append(text[start:])
    return parts


@dataclass
class MergeReport:
    """What `RrdStore.merge_history` did (or, dry, would do) to one file."""

    path: Path
    created: bool = False
    filled: int = 0  # rows (per data source and archive) that were unknown and now have a value
    replaced: int = 0  # rows that had a value and were given the imported one (force)
    kept: int = 0  # rows that had a value and kept it (no force)
    added_metrics: list[str] = field(default_factory=list)


Key = tuple[str, str]  # (target, instance)
Rows = list[tuple[int, dict[str, float | None]]]
_NO_FILE = _FileState(SeriesInfo("", "", Path(), 0, {}), [], "%d",  # what a file not yet known looks like
                      units_checked=True)
_END = Measurement("", "", "", None, timestamp=math.nan)  # differs from every sample: ends a run


def _number(value: object, kind: Kind) -> float | None:
    """A bool, Decimal or numpy number as the int or float rrdtool reads (None if it is none)."""
    try:
        number = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return round(number) if kind is not Kind.GAUGE and math.isfinite(number) else number


def _ds_names(info: dict) -> list[str]:
    """The data source names of an `rrdtool.info` result, in the file's DS order."""
    index = {k[3:-7]: v for k, v in info.items() if k.startswith("ds[") and k.endswith("].index")}
    return sorted(index, key=index.__getitem__)


def _entry_ok(rel: object, entry: object) -> bool:
    """Whether an index entry is one the store could have written, for a file inside the RRD
    directory: a damaged index (a bad disk, a hand edit, another program's JSON) must neither
    stop the store nor name a file elsewhere."""
    if not isinstance(rel, str) or not isinstance(entry, dict):
        return False
    step, metrics = entry.get("step"), entry.get("metrics")
    units, limits = entry.get("units", {}), entry.get("thresholds", {})
    path = Path(rel)
    return (rel.endswith(".rrd") and not path.is_absolute() and ".." not in path.parts
            and isinstance(entry.get("target"), str) and isinstance(entry.get("instance"), str)
            and type(step) is int and step > 0
            and isinstance(metrics, dict) and isinstance(units, dict) and isinstance(limits, dict)
            and all(isinstance(m, str) and isinstance(ds, str) for m, ds in metrics.items())
            and all(isinstance(u, str) for u in units.values())
            and all(isinstance(v, list) and len(v) <= 4 for v in limits.values()))


class Catalog(Protocol):
    """Where the index of RRD files (relative path -> target, instance, step, metrics in DS
    order, units) is kept, for every process that reads or writes the store."""

    def load(self) -> dict[str, dict]: ...

    def save(self, entries: dict[str, dict]) -> None:
        """Add or replace these entries (other writers' entries stay); OSError if it cannot."""

    def revision(self) -> object:
        """Something that changes whenever any writer saves (None: cannot tell now)."""


class Backlog(Protocol):
    """Where samples wait, on local disk and in order, that the store could not write (its
    rrdcached out of reach): lines of text appended at the end, taken back from the front a
    file of lines at a time. Its owner bounds it (and counts what it drops)."""

    def waiting(self) -> bool: ...

    def append(self, text: str) -> None: ...

    def oldest(self) -> tuple[Path, list[str]] | None: ...

    def remove(self, segment: Path) -> None: ...

    def keep(self, segment: Path, lines: list[str]) -> None:
        """Put `lines` in place of the file's (it stays the oldest: what it holds goes first)."""
        ...


class JsonCatalog:
    """The index as `index.json` in the RRD directory, merged under a lock file (a `collect`
    beside `run` may add files)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.path = root / "index.json"
        # index.json as we last wrote it (mtime, size, inode), and the entries in it of files
        # other processes made: while it is unchanged, a save need not read it back.
        self._signature: tuple[int, int, int] | None = None
        self._foreign: dict[str, dict] = {}

    def load(self) -> dict[str, dict]:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.error("RRD index %s unreadable (%s); it is rebuilt as files are written",
                      self.path, exc)
            return {}
        entries = raw.get("files") if isinstance(raw, dict) else None
        if not isinstance(entries, dict):
            log.error("RRD index %s holds no index of files; it is rebuilt as files are written",
                      self.path)
            return {}
        # Version 1 indexes were saved with sorted keys, which scrambled "metrics" (the DS
        # order): take the order from the files themselves once (the next save is version 2).
        version = raw.get("version", 1)
        stale = type(version) is not int or version < 2
        if not stale:
            return entries  # (each entry is checked where it is used: `_entry_ok`)
        files = {}
        for rel, entry in entries.items():
            if _entry_ok(rel, entry) and (self.root / rel).exists():
                entry = {**entry, "metrics": _ds_order(self.root / rel, dict(entry["metrics"])),
                         "stale": True}
            files[rel] = entry
        return files

    def save(self, entries: dict[str, dict]) -> None:
        with locked(self.root / ".index.lock"):
            # Read back only when the file changed since our last save: at 48,000 files,
            # parsing it held ~130 MiB of dicts for a moment (the agent's peak RSS).
            signature = _file_signature(self.path)
            if signature is not None and signature == self._signature:
                existing = dict(self._foreign)
            else:
                try:
                    raw = json.loads(self.path.read_text(encoding="utf-8"))
                except (OSError, ValueError):
                    raw = None
                found = raw.get("files") if isinstance(raw, dict) else None
                existing = {rel: e for rel, e in found.items()
                            if _entry_ok(rel, e) and (self.root / rel).exists()
                            } if isinstance(found, dict) else {}
            existing.update(entries)
            # Not sort_keys: the order of "metrics" is the file's DS order, which every update
            # relies on (sorted, a second process wrote values into the wrong data sources).
            # Compact: at 48,000 files the indented index took twice as long to write and read.
            atomic_write(self.path, _index_text(existing))
            self._signature = _file_signature(self.path)
            self._foreign = {rel: e for rel, e in existing.items() if rel not in entries}

    def revision(self) -> object:
        return _file_signature(self.path)


def _index_text(files: dict[str, dict], per_piece: int = 1000) -> Iterator[str]:
    """index.json in pieces of `per_piece` entries: at 48,000 files the text whole (and its
    bytes) held ~70 MiB for a moment, which the allocator kept (the agent's peak RSS)."""
    encode = json.JSONEncoder(separators=(",", ":")).encode
    yield '{"version":2,"files":{'
    entries = iter(files.items())
    separator = ""
    while piece := dict(islice(entries, per_piece)):
        yield separator + encode(piece)[1:-1]
        separator = ","
    yield "}}"


def _ds_order(path: Path, metrics: dict[str, str]) -> dict[str, str]:
    """metrics (metric -> DS name) in the DS order of the RRD file itself."""
    try:
        order = {ds: i for i, ds in enumerate(_ds_names(rrdtool.info(str(path))))}
    except rrdtool.OperationalError:
        return metrics
    return dict(sorted(metrics.items(), key=lambda kv: order.get(kv[1], len(order))))


def read_archives(path: Path) -> dict[str, list[Archive]]:
    """Every archive of any RRD file (MRTG's, Munin's, SmokePing's), per data source."""
    with tempfile.TemporaryDirectory(prefix="monitor-read-") as scratch:
        xml = Path(scratch) / "dump.xml"
        rrdtool.dump(str(path), str(xml))
        root = ET.parse(xml).getroot()
    step = int(root.findtext("step", "0"))
    last = int(root.findtext("lastupdate", "0"))
    names = [d.findtext("name", "").strip() for d in root.findall("ds")]
    out: dict[str, list[Archive]] = {name: [] for name in names}
    for rra in root.findall("rra"):
        cf = rra.findtext("cf", "").strip()
        resolution = step * int(rra.findtext("pdp_per_row", "1"))
        rows = rra.findall("database/row")
        end = last - last % resolution
        columns: list[list[tuple[int, int, float | None]]] = [[] for _ in names]
        for i, row in enumerate(rows):
            row_end = end - (len(rows) - 1 - i) * resolution
            for column, cell in zip(columns, row, strict=False):
                value = float(cell.text or "nan")
                column.append((row_end - resolution, row_end,
                               value if math.isfinite(value) else None))
        for name, column in zip(names, columns, strict=True):
            out[name].append(Archive(cf, column))
    return out


class RrdStore:
    """Create, update and fetch RRD files under `root`.

    Thread-safe: collector jobs hand batches to `write()` from worker threads. The write path is
    kept lean (one pass over the samples, every row formatted before one tight loop of rrdtool
    calls, one call per file) because it must keep up with bare `rrdtool.update` (see
    bench/store_bench.py and `_updates`).
    """

    def __init__(
        self,
        root: Path,
        *,
        archives: Sequence[str] = ("step:2d", "5m:32d", "30m:2w", "2h:9w", "1d:2y"),
        consolidations: Sequence[str] = ("AVERAGE", "MAX"),
        rrdcached: str | None = None,
        remote: bool = False,
        catalog: Catalog | None = None,
        backlog: Backlog | None = None,
    ) -> None:
        if remote and not rrdcached:
            raise ValueError("a remote store needs an rrdcached address")
        self.root = Path(root)
        self.remote = remote
        # What every rrdtool call on a file adds: through the daemon, when the files are its.
        self._via: tuple[str, ...] = ("--daemon", rrdcached) if remote and rrdcached else ()
        self._refused: set[tuple[Key, str]] = set()  # metrics a remote file cannot take
        self.archives = list(archives)
        self.consolidations = list(consolidations)
        self.rrdcached = rrdcached
        self._lock = threading.RLock()
        self._files: dict[Key, _FileState] = {}
        self._layouts = _Layouts()
        # Samples a failed write could not store (full disk, daemon down, corrupt file moved
        # aside): they go in front of the next batch, so nothing accepted is lost. With a
        # backlog they wait there instead (on disk: a restart does not lose them), and go
        # before any newer sample once they can be written.
        self._pending: dict[Key, list[Measurement]] = {}
        self.backlog = backlog
        self._unwritten: list[Measurement] = []  # this batch's samples bound for the backlog
        # Files a batch creates are made side by side in a few threads (the binding releases
        # the GIL; a create costs ~1 ms of librrd's CPU, so 48,000 new files one by one held
        # the first cycle on one core): key -> None, or the error its create raised.
        self._creators: ThreadPoolExecutor | None = None
        self._made: dict[Key, Exception | None] = {}
        self._daemon: _RrdcachedClient | None = _RrdcachedClient(rrdcached) if rrdcached else None
        self._index_dirty = False
        self._index_saved_at: float | None = None  # time.monotonic() of the last index save
        self._batch: list[Measurement] = []
        self._by_key: dict[Key, list[Measurement]] | None = None
        self._serial = 0  # counts write() calls
        self._told_damaged = False  # a damaged index entry was logged
        self._changed_layouts: list[_FileState] = []  # files another writer gave more sources
        if not remote:
            self.root.mkdir(parents=True, exist_ok=True)
            migrate_percent_names(self.root)
        self.catalog: Catalog = catalog or JsonCatalog(self.root)
        self._catalog_revision = self.catalog.revision() if remote else None
        self._load_index()

    # -- index ---------------------------------------------------------------------------------

    @property
    def index_path(self) -> Path:
        return self.root / "index.json"

    def _load_index(self) -> None:
        targets: dict[str, str] = {}  # one copy of a device's name for all its files
        damaged = 0
        for rel, entry in self.catalog.load().items():
            try:
                if (entry["target"], entry["instance"]) in self._files:
                    continue  # (known: most entries at every call but the first)
            except (KeyError, TypeError):
                pass  # damaged: _entry_ok says so
            if not _entry_ok(rel, entry):
                damaged += 1  # its file is adopted as it is when next written
                continue
            target = targets.setdefault(entry["target"], entry["target"])
            key = (target, entry["instance"])
            path = self._base / rel
            if self.remote or path.exists():
                if entry.get("stale"):
                    self._index_dirty = True
                limits = {m: Thresholds(*v) for m, v in entry.get("thresholds", {}).items()}
                layout = self._layouts.get(entry["metrics"], entry.get("units", {}))
                info = SeriesInfo(target, key[1], path, int(entry["step"]), layout.metrics,
                                  layout.units, limits)
                self._files[key] = _FileState.of(info, layout)
        if damaged and not self._told_damaged:
            self._told_damaged = True
            log.error("RRD index: %d damaged entries skipped (their files are taken as they are "
                      "when next written)", damaged)

    @property
    def _base(self) -> Path:
        """What file paths are relative to: the RRD directory, or rrdcached's (remote)."""
        return Path() if self.remote else self.root

    def _save_index(self, min_interval: float = 0.0) -> None:
        """Our files into the catalog. `min_interval`: not again within so many seconds of
        the last save (the first cycle of a big site creates files in hundreds of batches,
        and each save merges the whole index: quadratic). A file created meanwhile that a
        crash keeps out of the index is adopted at its next write."""
        if not self._index_dirty:
            return
        now = time.monotonic()
        if self._index_saved_at is not None and now - self._index_saved_at < min_interval:
            return
        self._index_saved_at = now
        entries = {}
        for state in self._files.values():
            info = state.info
            entry = {"target": info.target, "instance": info.instance, "step": info.step,
                     "metrics": info.metrics, "units": info.units}
            if info.thresholds:
                entry["thresholds"] = {m: [t.warning, t.critical, t.low, t.high]
                                       for m, t in info.thresholds.items()}
            entries[str(info.path.relative_to(self._base))] = entry
        self.catalog.save(entries)
        self._index_dirty = False

    def series(self) -> list[SeriesInfo]:
        """Every known (target, instance) file, including those another process created."""
        with self._lock:
            self._load_index()
            return sorted((s.info for s in self._files.values()),
                          key=lambda i: (i.target, i.instance))

    def path_for(self, target: str, instance: str) -> Path:
        return self._base / safe_name(target) / f"{safe_name(instance)}.rrd"

    def info(self, target: str, instance: str) -> SeriesInfo | None:
        with self._lock:
            state = self._files.get((target, instance))
            if state is None:
                self._load_index()
                state = self._files.get((target, instance))
            return state.info if state else None

    # -- writing -------------------------------------------------------------------------------

    def write(self, measurements: Iterable[Measurement], step: float) -> WriteReport:
        """Store one batch. Never raises for a single bad file: its problem is in the report."""
        report = WriteReport()
        step = max(1, round(step))
        with self._lock:
            if self.remote:
                self._follow_catalog()
            backlog = self.backlog
            if backlog is not None and backlog.waiting():
                self._replay(backlog, report)
                if backlog.waiting():  # still behind: these wait behind the rest, in order
                    self._to_backlog(backlog, list(measurements), step)
                    measurements = ()
            unwritten = self._write_batch(measurements, step, report)
            if backlog is not None and unwritten:
                self._to_backlog(backlog, unwritten, step)
        for error in report.errors:
            log.error("store: %s", error)
        return report

    def _follow_catalog(self) -> None:
        """Remote: take the files another node gave more data sources (made again through the
        daemon) as they are now, before writing to them. rrdcached would take an UPDATE with
        too few values and fail only when it writes the file, losing the other rows it holds
        for it. One read of the catalog's revision a batch; the catalog itself when it moved."""
        revision = self.catalog.revision()
        if revision is None or revision == self._catalog_revision:
            return
        self._catalog_revision = revision
        for entry in self.catalog.load().values():
            state = self._files.get((entry["target"], entry["instance"]))
            if state is None:
                continue
            ours, theirs = list(state.info.metrics.items()), list(entry["metrics"].items())
            if len(theirs) > len(ours) and theirs[:len(ours)] == ours:
                self._relayout(state, {**state.info.metrics, **dict(theirs)},
                               {**entry.get("units", {}), **state.info.units})

    def _to_backlog(self, backlog: Backlog, measurements: list[Measurement], step: int) -> None:
        if measurements:
            backlog.append(_backlog_line(measurements, step))

    def _replay(self, backlog: Backlog, report: WriteReport) -> None:
        """Write what waits in the backlog, oldest first (a few of its files per batch, so a
        long outage is caught up over several batches). A file of it none of whose samples
        could be written stays for the next attempt; samples a partly written one could not
        take go to the end (rows already written are skipped when it is tried again)."""
        if self._daemon is not None:
            try:
                self._daemon.command("PING")
            except OSError:
                return  # still away: not worth reading the backlog for
        for _ in range(_REPLAY_FILES):
            oldest = backlog.oldest()
            if oldest is None:
                return
            segment, lines = oldest
            before = report.updates
            unwritten: list[tuple[int, list[Measurement]]] = []
            for step, samples in _backlog_runs(lines):
                kept = self._write_batch(samples, step, report)
                if kept:
                    unwritten.append((step, kept))
            if unwritten and report.updates == before:
                return  # nothing could be written (the daemon still away): try again later
            if unwritten:
                # What the file could not give stays in it, ahead of the newer files: written
                # after them, its samples would be older than their files' rows and dropped.
                backlog.keep(segment, [_backlog_line(kept, step) for step, kept in unwritten])
                return
            backlog.remove(segment)

    def _write_batch(self, measurements: Iterable[Measurement], step: int, report: WriteReport
                     ) -> list[Measurement]:
        """One batch into the files; returns the samples that could not be written when there
        is a backlog (for it; without one they wait in memory)."""
        batch = [m for kept in self._pending.values() for m in kept]
        self._pending.clear()
        batch.extend(measurements)
        self._batch, self._by_key = batch, None
        updates = self._updates(batch, step, report)
        if self._daemon is not None:
            failures = self._send_daemon(updates, report)
        else:
            failures = self._send_direct(updates)
        for state, error in failures:
            state.last = state.last_before
            report.updates -= state.text.count(" ") + 1
            if error:
                self._handle_failure(state, error, report)
        for state in updates:  # not kept until the next batch: ~120 bytes a file
            state.text = ""
        if self._changed_layouts:
            self._read_layouts(self._changed_layouts)
            self._changed_layouts = []
        self._batch, self._by_key = [], None
        try:
            self._save_index(INDEX_SAVE_INTERVAL)
        except OSError as exc:  # a full disk; in a cluster, Redis out of reach
            report.errors.append(f"cannot save the index of RRD files: {exc}; saved with "
                                 "a later batch")
        unwritten, self._unwritten = self._unwritten, []
        return unwritten

    def _updates(self, batch: list[Measurement], step: int, report: WriteReport
                 ) -> list[_FileState]:
        """Each file's new rows as rrdtool text, in one pass over the batch: this loop runs once
        per sample, so it does little. Collectors emit the samples of one (target, instance,
        time) together; such a run is a row. The usual row (every metric of a known file, in
        its DS order, newer than its last update, the file's only row in the batch) becomes
        text at once; a file with any other row (new file or metrics, some metrics only,
        another order, several rows such as kept samples before new ones) has all its rows
        merged in _general, into one update per file."""
        known = self._files
        gauge = Kind.GAUGE
        isfinite = math.isfinite
        self._serial += 1
        serial = self._serial
        updates: list[_FileState] = []
        odd: set[Key] = set()
        unchecked: list[Key] = []  # known files whose units this process has not compared yet
        key: Key = ("", "")
        state = _NO_FILE
        target = instance = None
        timestamp = second_of = math.nan  # before the first row: unequal to every time stamp
        second = 0
        names: list[str] = []
        values: list[float | None] = []
        told: list[Measurement] = []  # samples that came with thresholds (or "none now")
        for m in chain(batch, (_END,)):
            if m.timestamp != timestamp or m.instance != instance or m.target != target:
                if names:
                    if timestamp != second_of:  # one int for the files of one poll, not one each
                        second_of, second = timestamp, int(timestamp)
                    last = state.last
                    if (last is not None and second > last and names == state.metric_names
                            and state.batch != serial and not (odd and key in odd)):
                        text = state.row_format % (second, *values)
                        if "n" in text:  # None, nan, inf: what str() gives is not rrdtool's "U"
                            text = f"{second}:{':'.join(map(_value_text, values))}"
                        state.text, state.last_before, state.last = text, last, second
                        updates.append(state)
                        state.batch = serial
                    else:
                        odd.add(key)
                    if not state.units_checked:
                        unchecked.append(key)
                target, instance, timestamp = m.target, m.instance, m.timestamp
                key = (target, instance)
                state = known.get(key, _NO_FILE)
                names, values = [], []
            names.append(m.metric)
            if m.thresholds is not None:
                told.append(m)
            value = m.value
            if type(value) is not int:
                if type(value) is float:
                    if m.kind is not gauge and isfinite(value):
                        value = round(value)  # rrdtool counters take integers only
                elif value is not None:
                    value = _number(value, m.kind)
            values.append(value)
        if odd:  # a file with an odd row has all its rows merged in _general, quick ones too
            quick, updates = updates, []
            for file in quick:
                if (file.info.target, file.info.instance) in odd:
                    file.last = file.last_before
                else:
                    updates.append(file)
        count = len(updates)
        self._create_ahead(odd, step)
        for key in odd:
            count += self._general(key, known.get(key), step, report, updates)
        self._made.clear()  # (made but not taken: their rows were all too old; adopted later)
        report.updates += count
        for key in chain(unchecked, odd):  # odd: files adopted in this batch too
            self._follow_units(key)
        if told:
            self._note_thresholds(told)
        return updates

    def _follow_units(self, key: Key) -> None:
        """Record the units the producer gives now for a file's metrics: the index records a
        unit when a data source is created, and a unit the code changed since (the mail
        counters' "msg", drawn per hour, were unitless: per second) must reach the files made
        before. Done once per file and process (an upgrade restarts the agent), off the
        per-sample loop. An empty unit never erases one: a sample replayed from an old
        backlog or written by an older node says nothing about the unit."""
        state = self._files.get(key)
        if state is None or state.units_checked:
            return
        state.units_checked = True
        recorded = state.info.units
        changed = {m.metric: m.unit for m in self._measurements_of(key)
                   if m.unit and m.metric in state.info.metrics
                   and recorded.get(m.metric) != m.unit}
        if changed:
            log.info("store: %s: units now %s", state.path_text, ", ".join(
                f"{metric} {unit!r} (was {recorded.get(metric, '')!r})"
                for metric, unit in changed.items()))
            self._relayout(state, dict(state.info.metrics), {**recorded, **changed})
            self._index_dirty = True

    def _note_thresholds(self, told: list[Measurement]) -> None:
        """Keep the latest thresholds of each metric with its file's index entry (an empty
        Thresholds() clears them); the index is written only when one changed."""
        for m in told:
            state = self._files.get((m.target, m.instance))
            if state is None or m.metric not in state.info.metrics:
                continue  # not stored (a failed create): nothing to draw them on
            limits = state.info.thresholds
            if limits.get(m.metric) != (m.thresholds or None):
                if m.thresholds:
                    limits[m.metric] = m.thresholds
                else:
                    del limits[m.metric]
                self._index_dirty = True

    def _general(self, key: Key, state: _FileState | None, step: int, report: WriteReport,
                 updates: list[_FileState]) -> int:
        merged: dict[int, dict[str, float | None]] = {}
        for m in self._measurements_of(key):  # rows within one second become one (RRD's step)
            value = m.value
            if value is not None and type(value) is not int:
                value = _number(value, m.kind)
            merged.setdefault(int(m.timestamp), {})[m.metric] = value
        file_rows = sorted(merged.items())
        if state is None or not state.info.metrics.keys() >= {m for r in merged.values() for m in r}:
            try:
                state = self._prepare(key, step, file_rows[0][0], report)
            except (rrdtool.OperationalError, OSError) as exc:
                self._keep(key, f"{self.path_for(*key)}: cannot create ({exc})", report)
                return 0
        if state.last is None or file_rows[0][0] <= state.last:
            file_rows = self._drop_old(state, file_rows, report)
        if not file_rows:
            return 0
        order = state.info.metrics
        state.text = " ".join([f"{second}:{':'.join([_value_text(row.get(m)) for m in order])}"
                               for second, row in file_rows])
        state.last_before, state.last = state.last, file_rows[-1][0]
        updates.append(state)
        return len(file_rows)

    def _send_direct(self, updates: list[_FileState]) -> list[tuple[_FileState, str]]:
        update = rrdtool.update
        failures = []
        for file in updates:
            try:
                if " " in file.text:
                    update(file.path_text, *file.text.split(" "))
                else:
                    update(file.path_text, file.text)
            except rrdtool.OperationalError as exc:
                failures.append((file, str(exc)))
        return failures

    def _measurements_of(self, key: Key) -> list[Measurement]:
        """This batch's measurements of one file (indexed on first use: creating or keeping
        thousands of files must not scan the batch once per file)."""
        if self._by_key is None:
            self._by_key = {}
            for m in self._batch:
                self._by_key.setdefault((m.target, m.instance), []).append(m)
        return self._by_key.get(key, [])

    def _create(self, path: Path, step: int, first: int, metrics: dict[str, str],
                samples: dict[str, Measurement]) -> None:
        if not self.remote:
            path.parent.mkdir(parents=True, exist_ok=True)
        rrdtool.create(
            *self._via, str(path), "--step", str(step), "--start", str(first - 1),
            "--no-overwrite",
            *(_ds_definition(ds, samples[m], step) for m, ds in metrics.items()),
            *rra_definitions(step, self.archives, self.consolidations),
        )

    def _create_ahead(self, keys: Iterable[Key], step: int) -> None:
        """Create the batch's new files (no state, no file yet) side by side, for _prepare to
        take as made; worth it only for many (a first poll, a new device)."""
        new = [key for key in keys if key not in self._files
               and (self.remote or not self.path_for(*key).exists())]
        if len(new) < _CREATE_AHEAD_FROM:
            return

        def create(key: Key) -> Exception | None:
            samples = self._samples(key)
            first = min(int(m.timestamp) for m in self._measurements_of(key))
            try:
                self._create(self.path_for(*key), step, first,
                             {name: ds_name(name) for name in samples}, samples)
            except (rrdtool.OperationalError, OSError) as exc:
                return exc
            return None

        self._measurements_of(new[0])  # the batch's index, made before the threads share it
        if self._creators is None:
            self._creators = ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1),
                                                thread_name_prefix="rrd-create")
        self._made.update(zip(new, self._creators.map(create, new), strict=True))

    def _samples(self, key: Key) -> dict[str, Measurement]:
        """The first measurement of each metric of one file in this batch (kind, unit, max)."""
        out: dict[str, Measurement] = {}
        for m in self._measurements_of(key):
            out.setdefault(m.metric, m)
        return out

    def _prepare(self, key: Key, step: int, first: int, report: WriteReport,
                 samples: dict[str, Measurement] | None = None) -> _FileState:
        """Create the file, or adopt one the index lost, or add new metrics to it (those of
        `samples`, by default this batch's)."""
        samples = self._samples(key) if samples is None else samples
        path = self.path_for(*key)
        state = self._files.get(key)
        if state is not None and not self.remote and not state.info.path.exists():
            state = None  # deleted or moved aside behind our back: start again
        if state is None:
            metrics = {name: ds_name(name) for name in samples}
            made_ahead = key in self._made
            units = {m: s.unit for m, s in samples.items()}
            if not made_ahead and not self.remote and path.exists():
                state = self._adopt(key, path, metrics, units)
            else:
                try:
                    if made_ahead:
                        if (error := self._made.pop(key)) is not None:
                            raise error
                    else:
                        self._create(path, step, first, metrics, samples)
                except rrdtool.OperationalError as exc:
                    if not (self.remote and "File exists" in str(exc)):
                        raise
                    # Another node made it (or the index lost it): take it as it is.
                    state = self._adopt(key, path, metrics, units)
                else:
                    any_sample = next(iter(samples.values()))
                    layout = self._layouts.get(metrics, units)
                    info = SeriesInfo(any_sample.target, any_sample.instance, path, step,
                                      layout.metrics, layout.units)
                    state = _FileState.of(info, layout, last=first - 1)
                    state.units_checked = True  # made with this batch's units
                    report.files_created += 1
            self._files[key] = state
            self._index_dirty = True
        missing = [m for m in samples if m not in state.info.metrics
                   and (key, m) not in self._refused]
        if missing and self.remote:
            # rrdcached has no TUNE: the file is made again through the daemon with the new
            # data sources, its history copied in by rrdtool's own prefill (CREATE -r).
            try:
                self._add_remote_sources(state, {m: samples[m] for m in missing})
            except OSError as exc:
                for metric in missing:  # said once per metric; its values are not stored
                    self._refused.add((key, metric))
                    report.errors.append(
                        f"{path}: metric {metric!r} is new to this file and rrdcached could not "
                        f"make the file again with it ({exc}); its values are not stored (see "
                        "README, Several machines)")
            else:
                self._index_dirty = True
        elif missing:
            self._flush_daemon(path)
            # The data sources as the file has them: an index entry may be older than its
            # file (saved by a writer that had not seen a new metric yet), and a DS added
            # again is refused as a duplicate at every batch.
            order = _ds_names(rrdtool.info(str(path)))
            names = {ds: m for m, ds in state.info.metrics.items()}
            units = dict(state.info.units)
            try:
                for metric in missing:
                    ds = ds_name(metric)
                    if ds not in order:
                        rrdtool.tune(str(path), _ds_definition(ds, samples[metric], state.info.step))
                        order.append(ds)
                    names[ds] = metric
                    units[metric] = samples[metric].unit
            finally:
                # A new layout (the old one is other files' too), as far as the tunes went.
                metrics = {names.get(ds, ds): ds for ds in order}
                self._relayout(state, metrics, {m: u for m, u in units.items() if m in metrics})
                self._index_dirty = True
        return state

    def _read_layouts(self, states: list[_FileState]) -> None:
        """Take the data sources of files another writer changed as the files have them now,
        each named as that writer's index entry names it (else as we did, else by its DS
        name), with the units of either."""
        entries = self.catalog.load()
        for state in states:
            info = state.info
            try:
                order = _ds_names(rrdtool.info(*self._via, str(info.path)))
            except rrdtool.OperationalError:
                continue  # (gone or damaged meanwhile: the next update says which)
            rel = str(info.path.relative_to(self._base))
            found = entries.get(rel) or {}
            theirs = found if _entry_ok(rel, found) else {"metrics": {}}
            names = {ds: m for m, ds in chain(theirs["metrics"].items(), info.metrics.items())}
            metrics = {names.get(ds, ds): ds for ds in order}
            units = {m: u for m, u in chain(theirs.get("units", {}).items(), info.units.items())
                     if m in metrics}
            log.warning("store: %s: data sources changed by another writer (%s); taken as they "
                        "are now", info.path, ", ".join(order))
            self._relayout(state, metrics, units)
            self._index_dirty = True

    def _relayout(self, state: _FileState, metrics: dict[str, str], units: dict[str, str]) -> None:
        """Give a file these data sources: a layout of its own or another's, never a change
        in place of the one it had (other files share it)."""
        layout = self._layouts.get(metrics, units)
        state.info = dataclasses.replace(state.info, metrics=layout.metrics, units=layout.units)
        state.metric_names, state.row_format = layout.names, layout.row_format

    def _add_remote_sources(self, state: _FileState, samples: dict[str, Measurement]) -> None:
        """Give a file of the daemon's new data sources (metric -> a sample of it): flushed,
        then made again twice through the daemon (a copy, then the file from the copy, its
        DS and RRA definitions as they are, the new DS at the end), each time with the
        history copied in (`CREATE -r`, rrdtool 1.6+). The copy stays beside the file
        (`*.rrd.tune.rrd`, the file as it was before): the daemon cannot delete files."""
        assert self._daemon is not None
        path = state.path_text
        info = rrdtool.info(*self._via, path)
        step = int(info["step"])
        def limit(value: float | None) -> str:  # rrdtool.info gives None for "U"
            return "U" if value is None or math.isnan(value) else repr(float(value))
        sources = [f"DS:{ds}:{info[f'ds[{ds}].type']}:{info[f'ds[{ds}].minimal_heartbeat']}:"
                   f"{limit(info[f'ds[{ds}].min'])}:{limit(info[f'ds[{ds}].max'])}"
                   for ds in _ds_names(info)]
        added = {metric: ds_name(metric) for metric in samples}
        sources += [_ds_definition(ds, samples[m], step) for m, ds in added.items()]
        archives = [f"RRA:{info[f'rra[{i}].cf']}:{info[f'rra[{i}].xff']}:"
                    f"{info[f'rra[{i}].pdp_per_row']}:{info[f'rra[{i}].rows']}"
                    for i in range(len({k.split("]")[0] for k in info if k.startswith("rra[")}))]
        copy = f"{path}.tune.rrd"
        definitions = " ".join(sources + archives)
        for command in (f"FLUSH {path}", f"CREATE {copy} -s {step} -r {path} {definitions}",
                        f"CREATE {path} -s {step} -r {copy} {definitions}"):
            status = self._daemon.command(command)
            if status.startswith("-"):
                raise OSError(status.partition(" ")[2] or status)
        self._relayout(state, {**state.info.metrics, **added},
                       {**state.info.units, **{m: samples[m].unit for m in added}})
        log.warning("store: %s: data source(s) %s added through rrdcached (the file before: %s)",
                    path, ", ".join(added.values()), copy)

    def _adopt(self, key: Key, path: Path, metrics: dict[str, str], units: dict[str, str]
               ) -> _FileState:
        """A file exists that the index does not know (index lost): read its DS list; the
        metrics of this batch (metric -> DS name, and their units) name what they can."""
        info = rrdtool.info(*self._via, str(path))
        by_ds = {ds: m for m, ds in metrics.items()}
        known = {by_ds.get(n, n): n for n in _ds_names(info)}
        layout = self._layouts.get(known, {m: u for m, u in units.items() if m in known})
        series = SeriesInfo(key[0], key[1], path, int(info["step"]), layout.metrics, layout.units)
        return _FileState.of(series, layout, last=int(info["last_update"]))

    def _drop_old(self, state: _FileState, rows: Rows, report: WriteReport) -> Rows:
        if state.last is None:
            try:
                state.last = int(rrdtool.last(*self._via, str(state.info.path)))
            except rrdtool.OperationalError:
                state.last = 0
        fresh = []
        last = state.last
        for ts, values in rows:
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

    def _handle_failure(self, state: _FileState, error: str, report: WriteReport) -> None:
        path = state.info.path
        key = (state.info.target, state.info.instance)
        if "illegal attempt to update" in error:
            # Another writer got a later row in (another node, a `collect` beside `run`, an
            # import that moved the file on): the samples wait, and next time those not newer
            # than the file's last update (asked anew) are skipped and counted, the newer ones
            # written; not all dropped (rrdcached refuses the rest of an UPDATE from the first
            # old row), nor retried for ever in front of every newer one. Rows rrdcached holds
            # for a local file count: flushed first.
            if not self.remote:
                self._flush_daemon(path)
            state.last = None
            self._keep(key, None, report)
        elif self.remote:
            # The daemon's files: it says whether one is gone; a busy or failing daemon keeps
            # the samples for the next batch.
            if "No such file" in error or "data source readings" in error:
                # Gone, or made again with more data sources by another node: the next batch
                # takes the file as it is now.
                self._files.pop(key, None)
                self._index_dirty = True
            self._keep(key, f"{path}: update failed ({error})", report)
        elif not path.exists():
            self._files.pop(key, None)
            self._index_dirty = True
            self._keep(key, f"{path}: vanished ({error})", report)
        elif "data source readings" in error:
            # Another writer gave the file more data sources (an import, a `collect` beside
            # `run` with a new metric): its layout is read again after this batch, and the
            # samples wait for it.
            self._changed_layouts.append(state)
            self._keep(key, None, report)
        elif self._is_corrupt(path):
            aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}")
            try:
                os.replace(path, aside)
                report.errors.append(f"{path}: corrupt RRD file ({error}); moved aside to "
                                     f"{aside.name}, a new file starts with the next batch")
            except OSError as exc:
                report.errors.append(f"{path}: corrupt RRD file ({error}) and cannot move it "
                                     f"aside: {exc}")
            self._files.pop(key, None)
            self._index_dirty = True
            self._keep(key, None, report)
        else:
            # Full disk, permissions, a busy daemon: keep the samples and try again next time.
            self._keep(key, f"{path}: update failed ({error})", report)

    def _keep(self, key: Key, error: str | None, report: WriteReport) -> None:
        if self.backlog is not None:
            kept = self._measurements_of(key)
            self._unwritten.extend(kept)
            if error:
                report.errors.append(f"{error}; {len(kept)} value(s) kept on disk for the next "
                                     "attempt")
            return
        kept = self._pending.setdefault(key, [])
        kept.extend(self._measurements_of(key))
        del kept[:-_PENDING_PER_FILE]
        if error:
            report.errors.append(f"{error}; {len(kept)} value(s) kept for the next attempt")

    @staticmethod
    def _is_corrupt(path: Path) -> bool:
        try:
            rrdtool.info(str(path))
            with open(path, "rb") as handle:
                return handle.read(4) != b"RRD\x00"
        except (rrdtool.OperationalError, OSError):
            return path.exists()

    # -- history from other tools ------------------------------------------------------------

    def merge_history(self, templates: Sequence[Measurement], history: Mapping[str, Sequence[Archive]],
                      step: float, *, force: bool = False, dry_run: bool = False) -> MergeReport:
        """Write another tool's consolidated history into the file of (target, instance), into
        every archive at once: each row gets the average (or max) of the finest imported rows
        that cover it, so the week, month and year graphs and the 95th percentile read it as if
        we had collected it. `templates` are one measurement per metric as the collector makes
        them (target, instance, metric, kind, unit): a missing file is created exactly as the
        collector would create it, so its next samples simply continue the file. Rows that
        already have a value keep it unless `force`; `dry_run` only counts.

        The rows are rewritten through rrdtool dump and restore into a new file that replaces
        the old one; a sample the agent writes meanwhile makes it start again (a few times)."""
        step = max(1, round(step))
        key = (templates[0].target, templates[0].instance)
        samples = {m.metric: m for m in templates}
        ends = [r[1] for archives in history.values() for a in archives for r in a.rows]
        newest = max(ends, default=0)
        with self._lock:
            path = self.path_for(*key)
            state = self._files.get(key)
            report = MergeReport(path)
            if state is None or not state.info.path.exists():
                report.created = not path.exists()
                state = None if report.created else self._prepare(key, step, 0, WriteReport(), samples)
            if state is not None:
                path = state.info.path
                report.added_metrics = [m for m in samples if m not in state.info.metrics]
            if dry_run:
                with tempfile.TemporaryDirectory(prefix="monitor-merge-") as scratch:
                    copy = Path(scratch) / "dry.rrd"
                    if report.created:
                        self._create_scratch(copy, samples, step, newest)
                        metrics = {m: ds_name(m) for m in samples}
                    else:
                        self._flush_daemon(path)
                        metrics = dict(state.info.metrics)  # type: ignore[union-attr]
                        copy.write_bytes(path.read_bytes())
                        if report.added_metrics:
                            for metric in report.added_metrics:
                                rrdtool.tune(str(copy), _ds_definition(
                                    ds_name(metric), samples[metric], state.info.step))  # type: ignore[union-attr]
                                metrics[metric] = ds_name(metric)
                    self._merge_file(copy, metrics, history, force, report, Path(scratch))
                return report
            if report.created or report.added_metrics:
                first = newest + 1 if report.created else int(time.time())
                # The index is saved by close(): once per import, not once per file (a file
                # the index lacks after a crash is adopted by the next write).
                state = self._prepare(key, step, first, WriteReport(), samples)
            assert state is not None
            for _attempt in range(5):
                self._flush_daemon(state.info.path)
                before = rrdtool.last(str(state.info.path))
                attempt = MergeReport(state.info.path, report.created, added_metrics=report.added_metrics)
                with tempfile.TemporaryDirectory(prefix=".merge-", dir=state.info.path.parent) as scratch:
                    new = self._merge_file(state.info.path, state.info.metrics, history, force,
                                           attempt, Path(scratch))
                    if rrdtool.last(str(state.info.path)) != before:
                        continue  # the agent wrote a sample meanwhile: merge again with it
                    os.replace(new, state.info.path)
                state.last = int(rrdtool.last(str(state.info.path)))
                return attempt
            raise OSError(f"{state.info.path}: written to all the time; stop the agent, then import")

    def _create_scratch(self, path: Path, samples: dict[str, Measurement], step: int,
                        newest: int) -> None:
        rrdtool.create(str(path), "--step", str(step), "--start", str(newest),
                       *(_ds_definition(ds_name(m), s, step) for m, s in samples.items()),
                       *rra_definitions(step, self.archives, self.consolidations))

    def _merge_file(self, path: Path, metrics: dict[str, str], history: Mapping[str, Sequence[Archive]],
                    force: bool, report: MergeReport, scratch: Path) -> Path:
        """Fill the rows of `path` (dumped to XML) from `history`; the merged file's path."""
        xml = scratch / "dump.xml"
        rrdtool.dump(str(path), str(xml))
        tree = ET.parse(xml)
        root = tree.getroot()
        step = int(root.findtext("step", "0"))
        last = int(root.findtext("lastupdate", "0"))
        newest = max((r[1] for archives in history.values() for a in archives for r in a.rows),
                     default=0)
        ds_index = {name.strip(): i for i, name in
                    enumerate(d.findtext("name", "") for d in root.findall("ds"))}
        moved = newest > last
        if moved:
            # The history is newer than the file (it has not been written yet, or only long
            # ago): the file starts again at the history's end, its rows kept in place.
            root.find("lastupdate").text = str(newest)  # type: ignore[union-attr]
            for ds in root.findall("ds"):
                ds.find("last_ds").text = "U"  # type: ignore[union-attr]
                ds.find("value").text = "0.0000000000e+00"  # type: ignore[union-attr]
                ds.find("unknown_sec").text = str(newest % step)  # type: ignore[union-attr]
        columns = {metric: ds_index[ds] for metric, ds in metrics.items()
                   if metric in history and ds in ds_index}
        timelines: dict[tuple[str, str], list] = {}
        for rra in root.findall("rra"):
            cf = rra.findtext("cf", "").strip()
            resolution = step * int(rra.findtext("pdp_per_row", "1"))
            database = rra.find("database")
            assert database is not None
            rows = database.findall("row")
            old_end = last - last % resolution
            new_end = max(last, newest) - max(last, newest) % resolution
            ends = [new_end - (len(rows) - 1 - i) * resolution for i in range(len(rows))]
            if moved:
                old = {old_end - (len(rows) - 1 - i) * resolution: row for i, row in enumerate(rows)}
                width = len(rows[0]) if rows else 0
                for row in rows:
                    database.remove(row)
                for end in ends:
                    kept = old.get(end)
                    if kept is None:
                        blank = ET.SubElement(database, "row")
                        for _ in range(width):
                            ET.SubElement(blank, "v").text = "NaN"
                    else:
                        database.append(kept)
                rows = database.findall("row")
                for prep in rra.iter("cdp_prep"):
                    for ds in prep.findall("ds"):
                        for name in ("primary_value", "secondary_value", "value"):
                            ds.find(name).text = "NaN"  # type: ignore[union-attr]
                        ds.find("unknown_datapoints").text = str(newest % resolution // step)  # type: ignore[union-attr]
            for metric, column in columns.items():
                pieces = timelines.get((metric, cf))
                if pieces is None:
                    pieces = timelines[(metric, cf)] = timeline(history[metric], cf)
                values = consolidate(pieces, ends, resolution, cf)
                for row, value in zip(rows, values, strict=True):
                    if value is None:
                        continue
                    cell = row[column]
                    if cell.text is not None and cell.text.strip() not in ("NaN", "nan"):
                        if not force:
                            report.kept += 1
                            continue
                        report.replaced += 1
                    else:
                        report.filled += 1
                    cell.text = f"{value:.10e}"
        tree.write(xml, encoding="utf-8")
        merged = scratch / "merged.rrd"
        done = subprocess.run(["rrdtool", "restore", "--force-overwrite", str(xml), str(merged)],
                              capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise OSError(f"{path}: rrdtool restore failed: {done.stderr.strip()}")
        return merged

    # -- rrdcached -----------------------------------------------------------------------------

    def _send_daemon(self, updates: list[_FileState], report: WriteReport
                     ) -> list[tuple[_FileState, str]]:
        assert self._daemon is not None
        if not updates:
            return []
        # rrdcached reads a command line of at most 4 KiB and drops the connection on a longer
        # one: a file's rows (many after an outage) go as several UPDATEs, in order.
        commands: list[str] = []
        owners: list[_FileState] = []
        for file in updates:
            if len(file.text) <= _DAEMON_LINE:
                commands.append(f"UPDATE {file.path_text} {file.text}")
                owners.append(file)
                continue
            for part in _split_rows(file.text, _DAEMON_LINE - len(file.path_text) - 8):
                commands.append(f"UPDATE {file.path_text} {part}")
                owners.append(file)
        try:
            errors = self._daemon.batch(commands)
        except OSError as exc:
            for file in updates:
                self._keep((file.info.target, file.info.instance), None, report)
            report.errors.append(f"rrdcached {self.rrdcached}: {exc}; samples of {len(updates)} "
                                 "file(s) kept for the next attempt")
            return [(file, "") for file in updates]
        failed: dict[int, tuple[_FileState, str]] = {}
        for number, message in errors.items():
            failed.setdefault(id(owners[number - 1]), (owners[number - 1], f"rrdcached: {message}"))
        return list(failed.values())

    def _flush_daemon(self, path: Path) -> None:
        if self._daemon is not None:
            with contextlib.suppress(OSError):
                self._daemon.command(f"FLUSH {path}")

    def close(self) -> None:
        with self._lock:
            self._save_index()
            if self._daemon is not None:
                self._daemon.close()
            if self._creators is not None:
                self._creators.shutdown()
                self._creators = None

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
        by_column = map(list, zip(*rows, strict=True)) if rows else ([] for _ in names)
        columns = {by_ds.get(n, n): values for n, values in zip(names, by_column, strict=True)}
        return Series(first, last, step, columns)

    def modified(self, info: SeriesInfo) -> tuple[float, int]:
        """When a file last changed (seconds) and a second number that changes with it (its
        size here; 0 remote, where the time of its last update stands for both)."""
        if self.remote:
            try:
                return float(rrdtool.last(*self._via, str(info.path))), 0
            except rrdtool.OperationalError as exc:
                raise OSError(str(exc)) from exc
        st = info.path.stat()
        return st.st_mtime_ns / 1e9, st.st_size

    def last_gauges(self, info: SeriesInfo) -> dict[str, float]:
        """The last value written to each GAUGE of a file, even before rrdtool has
        consolidated any (a file written once fetches as unknown until its next step)."""
        if self.rrdcached and not self.remote:
            with contextlib.suppress(rrdtool.OperationalError):
                rrdtool.flushcached("--daemon", self.rrdcached, str(info.path))
        raw = rrdtool.info(*self._via, str(info.path))
        by_ds = {ds: metric for metric, ds in info.metrics.items()}
        out = {}
        for ds, metric in by_ds.items():
            if raw.get(f"ds[{ds}].type") != "GAUGE":
                continue
            try:
                value = float(raw.get(f"ds[{ds}].last_ds", "U"))
            except ValueError:
                continue  # "U": unknown
            if math.isfinite(value):
                out[metric] = value
        return out


class _RrdcachedClient:
    """rrdcached's line protocol; BATCH sends thousands of updates in one round trip."""

    def __init__(self, address: str) -> None:
        self.address = address
        self._sock: socket.socket | None = None
        self._reader: BinaryIO | None = None

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

    def batch(self, commands: Iterable[str]) -> dict[int, str]:
        """Send commands in BATCH mode; returns {command number (1-based): error message}."""
        try:
            self._connect()
            assert self._sock is not None
            # Sent in chunks as they are made, so rrdcached works through one while the next
            # is formatted.
            chunk = ["BATCH"]
            for text in commands:
                chunk.append(text)
                if len(chunk) >= 1000:
                    chunk.append("")
                    self._sock.sendall("\n".join(chunk).encode("utf-8", "surrogateescape"))
                    chunk = []
            chunk += [".", ""]
            self._sock.sendall("\n".join(chunk).encode("utf-8", "surrogateescape"))
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
