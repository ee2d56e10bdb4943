"""The static site: which graphs are due, rendering them in worker processes, writing pages.

Layout under html_dir (every name from monitor.store.safe_name, links percent-quoted, so an
untrusted name is neither a path nor markup):

    index.html                      every target, problems first, with a day sparkline
    problems.html                   non-OK checks and firing alerts (alert mails link here)
    <target>/index.html             the target's checks and instances
    <target>/<instance>/index.html  the four periods with their summary tables
    <target>/<instance>/{day,week,month,year,spark}.png

Reads data only through RrdStore (series, fetch) and check states through StatusBook. Graphs
are redrawn only when their period is due and the RRD file changed since the last drawing; the
bookkeeping is in data_dir/state/graphs.json.
"""

from __future__ import annotations

import json
import logging
import multiprocessing
import os
import time
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import jinja2

from graphs.render import PERIODS, Job, classify, init_worker, run_job
from graphs.stats import si
from monitor.files import atomic_write
from monitor.model import State
from monitor.status import CheckStatus, StatusBook
from monitor.store import RrdStore, SeriesInfo, safe_name

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


def _env() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("graphs", "templates"),
        autoescape=True,  # every device string goes through here: names, aliases, messages
        undefined=jinja2.StrictUndefined,
        trim_blocks=True, lstrip_blocks=True,
    )
    env.filters["si"] = si
    env.filters["when"] = lambda ts: time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""
    env.filters["text"] = display
    return env


def display(name: str) -> str:
    """Names that came through surrogateescape (non-UTF-8 bytes) shown with U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def ago(seconds: float) -> str:
    seconds = max(0, int(seconds))
    for size, unit in ((86400, "d"), (3600, "h"), (60, "min")):
        if seconds >= size:
            return f"{seconds // size} {unit}"
    return f"{seconds} s"


@dataclass
class InstanceView:
    info: SeriesInfo
    kind: str
    dir: str  # link to its folder, relative to the target page
    check: CheckStatus | None
    legends: dict[str, dict | None] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.info.instance


@dataclass
class TargetView:
    name: str
    dir: str  # link to its folder, relative to the site root
    checks: list[CheckStatus]
    instances: list[InstanceView]

    @property
    def state(self) -> State | None:
        return State.worst(c.state for c in self.checks) if self.checks else None

    @property
    def since(self) -> float | None:
        worst = self.state
        times = [c.since for c in self.checks if c.state == worst]
        return max(times) if times else None

    @property
    def sort_key(self) -> tuple:
        return (-(self.state.severity if self.state is not None else -1), self.name)

    @property
    def spark(self) -> InstanceView | None:
        """The instance whose sparkline stands for the target: its worst, else the first."""
        for inst in sorted(self.instances, key=lambda i: -(i.check.state.severity if i.check else -1)):
            return inst
        return None


def match_check(instance: str, checks: list[CheckStatus]) -> CheckStatus | None:
    """The check about one instance, by the naming contract (service name, "if <name>", ...)."""
    by_name = {c.check: c for c in checks}
    for candidate in (instance, f"if {instance}"):
        if candidate in by_name:
            return by_name[candidate]
    _, sep, rest = instance.partition(":")
    if sep and rest:
        for c in checks:
            if c.check.endswith(" " + rest):
                return c
    return None


@dataclass
class BuildReport:
    drawn: int = 0
    skipped: int = 0
    pages: int = 0
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


class Site:
    def __init__(
        self,
        *,
        html_dir: Path,
        state_dir: Path,
        store: RrdStore,
        status: StatusBook,
        title: str = "Network monitor",
        refresh: float = 300.0,
        alerts_db: Path | None = None,
        workers: int | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.html_dir = Path(html_dir)
        self.state_path = Path(state_dir) / "graphs.json"
        self.store = store
        self.status = status
        self.title = title
        self.refresh = int(refresh)
        self.alerts_db = alerts_db
        # workers=0 draws in this process (tests, tiny sites); otherwise a pool on all cores.
        self.workers = (os.cpu_count() or 1) if workers is None else workers
        self.clock = clock
        self._pool: Executor | None = None
        self._env = _env()

    # -- bookkeeping ---------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        try:
            return json.loads(self.state_path.read_text(encoding="utf-8")).get("graphs", {})
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("graph state %s unreadable (%s): every graph is redrawn", self.state_path, exc)
            return {}

    def _save_state(self, state: dict[str, dict]) -> None:
        atomic_write(self.state_path, json.dumps({"version": 1, "graphs": state}))

    @staticmethod
    def folder(info: SeriesInfo) -> Path:
        return Path(safe_name(info.target)) / safe_name(info.instance)

    def plan(self, series: list[SeriesInfo], state: dict[str, dict], now: int,
             periods: tuple[str, ...] = tuple(PERIODS)) -> list[Job]:
        """The graphs that are due: period interval elapsed and RRD changed (or PNG missing)."""
        jobs = []
        for info in series:
            try:
                mtime = info.path.stat().st_mtime_ns
            except OSError:
                continue
            folder = self.html_dir / self.folder(info)
            for name in periods:
                period = PERIODS[name]
                png = folder / f"{name}.png"
                entry = state.get(str(png.relative_to(self.html_dir)))
                if entry is not None and png.exists():
                    if entry.get("mtime") == mtime:
                        continue  # nothing new to draw
                    if now - entry.get("drawn", 0) < period.every:
                        continue  # not due yet
                jobs.append(Job(info, name, now, png, folder / "spark.png" if name == "day" else None))
        return jobs

    # -- rendering -----------------------------------------------------------------------------

    def _executor(self) -> Executor:
        if self._pool is None:
            # spawn: the parent runs threads (scheduler, asyncio) that fork would copy mid-state.
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=multiprocessing.get_context("spawn"),
                initializer=init_worker,
                initargs=(str(self.store.root), self.store.rrdcached),
            )
        return self._pool

    def render(self, jobs: list[Job], state: dict[str, dict], report: BuildReport,
               progress: Progress | None = None) -> None:
        if not jobs:
            return
        if self.workers == 0:
            init_worker(str(self.store.root), self.store.rrdcached)
            results = map(run_job, jobs)
        else:
            chunk = max(1, min(16, len(jobs) // (self.workers * 4)))
            results = self._executor().map(run_job, jobs, chunksize=chunk)
        for done, (job, legend, error) in enumerate(results, 1):
            if error:
                report.errors.append(error)
            else:
                report.drawn += 1
                state[str(job.png.relative_to(self.html_dir))] = {
                    "drawn": job.now, "mtime": job.info.path.stat().st_mtime_ns, "legend": legend}
            if progress:
                progress(done, len(jobs))

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- pages ---------------------------------------------------------------------------------

    def views(self, series: list[SeriesInfo], state: dict[str, dict]) -> list[TargetView]:
        checks_by_target: dict[str, list[CheckStatus]] = {}
        for c in self.status.all():
            checks_by_target.setdefault(c.target, []).append(c)
        by_target: dict[str, list[SeriesInfo]] = {}
        for info in series:
            by_target.setdefault(info.target, []).append(info)
        targets = []
        for name in sorted(set(checks_by_target) | set(by_target)):
            checks = checks_by_target.get(name, [])
            instances = []
            for info in by_target.get(name, []):
                rel = self.folder(info)
                legends = {p: (state.get(str(rel / f"{p}.png")) or {}).get("legend") for p in PERIODS}
                instances.append(InstanceView(info, classify(info.metrics),
                                              quote(safe_name(info.instance)),
                                              match_check(info.instance, checks), legends))
            targets.append(TargetView(name, quote(safe_name(name)), checks, instances))
        targets.sort(key=lambda t: t.sort_key)
        return targets

    def _page(self, rel: Path, template: str, root: str, now: float, **context) -> None:
        html = self._env.get_template(template).render(
            title=self.title, refresh=self.refresh, root=root, now=now, ago=ago, State=State,
            generated=time.strftime("%Y-%m-%d %H:%M:%S %Z", time.localtime(now)), **context)
        atomic_write(self.html_dir / rel, html)

    def write_pages(self, targets: list[TargetView], now: float) -> int:
        problems = [c for t in targets for c in t.checks if c.state is not State.OK]
        problems.sort(key=lambda c: (-c.state.severity, c.target, c.check))
        alerts = self._alerts()
        pages = 0
        self._page(Path("index.html"), "index.html.j2", "", now, targets=targets,
                   problems=problems, alerts=alerts)
        self._page(Path("problems.html"), "problems.html.j2", "", now, problems=problems,
                   alerts=alerts, target_dirs={t.name: t.dir for t in targets})
        pages += 2
        for t in targets:
            self._page(Path(safe_name(t.name)) / "index.html", "target.html.j2", "../", now,
                       target=t)
            pages += 1
            for inst in t.instances:
                self._page(Path(safe_name(t.name)) / safe_name(inst.name) / "index.html",
                           "instance.html.j2", "../../", now, target=t, inst=inst, periods=PERIODS)
                pages += 1
        return pages

    def _alerts(self) -> list:
        if self.alerts_db is None or not self.alerts_db.exists():
            return []
        try:
            from alerts.state import AlertStore

            states = [s for s in AlertStore(self.alerts_db).load_states().values() if s.problem]
        except Exception as exc:  # the site must still be written without the alert list
            log.warning("cannot read alerts from %s: %s", self.alerts_db, exc)
            return []
        return sorted(states, key=lambda s: (-s.severity.severity, s.target, s.label))

    # -- one cycle -----------------------------------------------------------------------------

    def build(self, progress: Progress | None = None,
              periods: tuple[str, ...] = tuple(PERIODS)) -> BuildReport:
        started = time.monotonic()
        now = int(self.clock())
        report = BuildReport()
        series = self.store.series()
        state = self._load_state()
        jobs = self.plan(series, state, now, periods)
        report.skipped = len(series) * len(periods) - len(jobs)
        self.render(jobs, state, report, progress)
        if jobs:
            self._save_state(state)
        report.pages = self.write_pages(self.views(series, state), now)
        report.seconds = time.monotonic() - started
        for error in report.errors[:5]:
            log.error("graph: %s", error)
        return report


def site_from_config(config, store: RrdStore | None = None, status: StatusBook | None = None,
                     workers: int | None = None) -> Site:
    from alerts.state import alerts_db_path
    from monitor.agent import open_store

    return Site(
        html_dir=config.html_dir, state_dir=config.state_dir,
        store=store or open_store(config),
        status=status or StatusBook(config.state_dir / "status.json"),
        title=config.web.title, refresh=config.web.refresh,
        alerts_db=alerts_db_path(config.state_dir), workers=workers,
    )
