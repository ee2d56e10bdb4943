"""The static HTML site: which graphs are due, drawing them in worker processes, the pages.

Layout under html_dir (every directory name is `monitor.store.safe_name` of a device-supplied
name, so nothing escapes html_dir; fixed file names inside cannot collide with them because
safe names never contain a dot):

    index.html  problems.html
    <target>/index.html
    <target>/<instance>/index.html  day.png week.png month.png year.png spark.png

Incremental: a period is redrawn when it is due (day every run, week every 30 min, month every
2 h, year daily) and its RRD file changed since that period was last drawn; a graph whose data
stopped changing is still redrawn hourly so a dead device's gap shows. What was drawn when, and
the legend figures of each drawing (for the pages' tables), live in data_dir/state/graphs.json.

Drawing runs in a process pool on all cores; workers fetch, draw and write the PNGs themselves,
so only small job descriptions and legend figures cross process boundaries.
"""

from __future__ import annotations

import contextlib
import fnmatch
import functools
import gc
import json
import logging
import multiprocessing
import os
import re
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import jinja2

from graphs import render
from graphs.render import PERIODS, Job, JobResult
from monitor import __version__
from monitor.config import BaselineConfig, Config
from monitor.files import PUBLIC_MODE, atomic_write, sync_filesystem
from monitor.model import State
from monitor.process import exit_with
from monitor.seasonal import selected
from monitor.status import CheckStatus, StatusBook
from monitor.store import RrdStore, SeriesInfo, safe_name
from monitor.units import (
    OPER_STATUS,
    format_age,
    format_bytes,
    format_duration,
    format_metric,
    format_state,
    format_value,
)

if TYPE_CHECKING:
    from collectors.snmp import PortIndex, PortInfo

log = logging.getLogger(__name__)

STATE_VERSION = 1
LABEL_LIMIT = 80  # characters of a name shown in lists (the title attribute has all of it)
STALE_REDRAW = 3600  # unchanged data is still redrawn this often, so a growing gap shows
MAIL_DAYS = 14  # mail.html's per-day table: the last two weeks

Progress = Callable[[int, int], None]


# -- worker side ---------------------------------------------------------------------------------

_worker: dict[str, Any] = {}  # per worker process: its store handle and renderer (never shared)


def _worker_init(rrd_root: str, rrdcached: str | None, remote: bool, owner: int) -> None:
    exit_with(owner)  # a killed `monitor graph` or agent takes its workers with it
    _worker["store"] = RrdStore(Path(rrd_root), rrdcached=rrdcached, remote=remote)
    _worker["renderer"] = render.Renderer()
    # A fetch makes tens of thousands of tuples and floats (a month of 5-minute rows): with
    # the default thresholds the collector runs every 700 of them and walks matplotlib's
    # hundreds of thousands of long-lived objects each time it reaches the old generation,
    # a third of a graph's fetch cost. The long-lived ones are frozen out of its walks, and it
    # runs less often (drawing makes few reference cycles).
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def _work(jobs: list[Job]) -> list[JobResult]:
    return [render.render_job(_worker["store"], _worker["renderer"], job) for job in jobs]


# -- what is due ---------------------------------------------------------------------------------


def data_stamp(store: RrdStore, info: SeriesInfo) -> list[int]:
    """Changes whenever the RRD file is updated (rrdtool rewrites it in place)."""
    try:
        changed, size = store.modified(info)
    except OSError:
        return [0, 0]
    return [round(changed * 1e9), size]


def due_periods(entry: dict, stamp: list[int], now: float, out_dir: Path, slack: float,
                always: bool = False) -> list[str]:
    """The periods of one instance that need drawing now."""
    due = []
    drawn = entry.get("drawn", {})
    stamps = entry.get("stamps", {})
    for name, period in PERIODS.items():
        last = drawn.get(name)
        if always or last is None or not (out_dir / f"{name}.png").exists():
            due.append(name)
            continue
        age = now - last
        if age + slack < period.redraw:
            continue
        if stamps.get(name) != stamp or age + slack >= max(period.redraw, STALE_REDRAW):
            due.append(name)
    return due


# -- the builder ---------------------------------------------------------------------------------


@dataclass
class BuildReport:
    instances: int = 0
    graphs: int = 0  # PNGs drawn (sparklines not counted)
    skipped: int = 0  # periods not due or unchanged
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0
    pages: int = 0
    render_cpu: float = 0.0  # CPU seconds the drawing took, summed over the workers


class SiteBuilder:
    """Builds html_dir from the store and the status book; keeps its worker pool between runs."""

    def __init__(
        self,
        store: RrdStore,
        status: StatusBook,
        html_dir: Path,
        state_path: Path,
        *,
        title: str = "Network monitor",
        refresh: float = 300.0,
        workers: int | None = None,
        slack: float = 30.0,
        clock: Callable[[], float] = time.time,
        inline_below: int = 0,
        alerts_db: Path | None = None,
        uplinks: Sequence[str] = (),
        port_index: Callable[[], PortIndex] | None = None,
        baseline: BaselineConfig | None = None,
        mail_state: Path | None = None,
    ) -> None:
        self.store = store
        self.status = status
        self.html_dir = Path(html_dir)
        self.state_path = Path(state_path)
        self.title = title
        self.refresh = max(10, int(refresh))
        self.workers = workers or os.cpu_count() or 1
        self.slack = slack
        self.clock = clock
        # A one-shot `monitor graph` with a handful of graphs draws them itself: starting
        # worker processes (each importing matplotlib) would cost more than the drawing.
        self.inline_below = inline_below
        self.alerts_db = alerts_db
        self.uplinks = list(uplinks)
        # The SNMP collector's port index (aliases, groups, MAC and IP addresses), read at
        # every build: it changes only when a device is polled.
        self.port_index = port_index
        self.baseline = baseline  # draw the seasonal band of the series it selects
        self.mail_state = mail_state  # the mail-log collector's counts, for mail.html
        self._pool: ProcessPoolExecutor | None = None
        self._abandoned = threading.Event()
        self._env = jinja2.Environment(
            loader=jinja2.PackageLoader("graphs", "templates"),
            autoescape=jinja2.select_autoescape(enabled_extensions=("html", "j2"), default=True,
                                                default_for_string=True),
            undefined=jinja2.StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )

    # -- pool ----------------------------------------------------------------------------------

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:
            # forkserver: workers never inherit the agent's threads (scheduler, asyncio).
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["graphs.forkserver"])
            self._pool = ProcessPoolExecutor(
                max_workers=self.workers, mp_context=context, initializer=_worker_init,
                initargs=(str(self.store.root), self.store.rrdcached, self.store.remote,
                          os.getpid()))
        return self._pool

    def abandon(self) -> None:
        """From another thread: let a running build stop drawing at its next chunk (an agent
        that stops should not wait for a site it redraws at its next start), and a build that
        starts afterwards draw nothing (one already on its way to its thread). For good: the
        builder belongs to an agent that is stopping. Graphs not drawn stay due; the pages are
        written with what is there."""
        self._abandoned.set()

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    # -- state ---------------------------------------------------------------------------------

    def _load_state(self) -> dict[str, dict]:
        try:
            raw = json.loads(self.state_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("graph state %s unreadable (%s); every graph is redrawn", self.state_path, exc)
            return {}
        if raw.get("version") != STATE_VERSION:
            return {}
        return raw.get("entries", {})

    def _save_state(self, entries: dict[str, dict]) -> None:
        atomic_write(self.state_path, json.dumps({"version": STATE_VERSION, "entries": entries}))

    # -- building ------------------------------------------------------------------------------

    def build(self, *, full: bool = False, progress: Progress | None = None) -> BuildReport:
        """Draw what is due, write every page. `full` redraws every graph."""
        started = time.perf_counter()
        now = self.clock()
        report = BuildReport()
        series = self.store.series()
        entries = self._load_state()
        jobs: list[Job] = []
        stamps: dict[str, list[int]] = {}
        for info in series:
            rel = _rel(info)
            stamp = data_stamp(self.store, info)
            stamps[rel] = stamp
            out_dir = self.html_dir / rel
            periods = due_periods(entries.get(rel, {}), stamp, now, out_dir, self.slack, full)
            if periods:
                jobs.append(Job(info, periods, out_dir, now, baseline=self._band_metric(info),
                                weeks=self.baseline.weeks if self.baseline else 6))
        report.instances = len(series)
        report.skipped = len(series) * len(PERIODS) - sum(len(job.periods) for job in jobs)
        results = self._render(jobs, progress)
        for job, result in zip(jobs, results, strict=True):
            rel = _rel(job.info)
            entry = entries.setdefault(rel, {})
            entry["kind"] = result.kind
            report.render_cpu += result.cpu
            if result.error:
                report.errors.append(f"{job.info.target} {job.info.instance}: {result.error}")
            for name in result.drawn:
                entry.setdefault("drawn", {})[name] = now
                entry.setdefault("stamps", {})[name] = stamps[rel]
                entry.setdefault("summaries", {})[name] = result.summaries[name]
                report.graphs += 1
            if result.units:
                entry["units"] = result.units
        known = {_rel(info) for info in series}
        gone = [rel for rel in entries if rel not in known]
        entries = {rel: e for rel, e in entries.items() if rel in known}
        report.pages, target_dirs = self._write_pages(series, entries, now)
        # Graphs and pages were written without an fsync each: one sync makes them durable
        # before the state says they were drawn (a power loss cannot leave an empty image that
        # the state would not redraw).
        sync_filesystem(self.html_dir)
        self._save_state(entries)
        self._remove_pages(gone, target_dirs)
        report.seconds = time.perf_counter() - started
        for error in report.errors[:5]:
            log.error("graph: %s", error)
        return report

    def _band_metric(self, info: SeriesInfo) -> str:
        """The one metric of a file whose expected band is drawn: out before in (a hijacked
        server shows in what it sends), else the first one with a baseline."""
        if self.baseline is None:
            return ""
        metrics = [m for _, m, _ in selected(self.baseline, [info])]
        return next((m for m in ("out_octets", "in_octets") if m in metrics),
                    metrics[0] if metrics else "")

    def _render(self, jobs: list[Job], progress: Progress | None) -> list[JobResult]:
        total = sum(len(job.periods) for job in jobs)
        if progress:
            progress(0, total)
        if not jobs:
            return []
        # Inline only when asked (`monitor graph` with a few due graphs, tests): in the agent,
        # drawing in this process would hold the GIL and delay the event loop, and with it the
        # response times the service checks measure.
        if self._pool is None and total <= self.inline_below:
            renderer = render.Renderer()
            results = []
            done = 0
            for job in jobs:
                results.append(render.render_job(self.store, renderer, job))
                done += len(job.periods)
                if progress:
                    progress(done, total)
            return results
        # Chunks amortise the inter-process round trip; small enough to spread over all cores.
        size = max(1, min(16, len(jobs) // (self.workers * 4)))
        chunks = [jobs[i:i + size] for i in range(0, len(jobs), size)]
        # Chunks go out a few at a time (enough to keep every worker busy), so an abandoned
        # build stops sending: a chunk already with a worker cannot be called back.
        window = 2 * self.workers
        futures: dict[int, Future] = {}
        done = 0
        results = []
        for i, chunk in enumerate(chunks):
            while len(futures) < min(i + window, len(chunks)) and not self._abandoned.is_set():
                # _executor(): a new pool when a dead worker made us close the last one
                futures[len(futures)] = self._executor().submit(_work, chunks[len(futures)])
            future = futures.get(i)
            if future is None:  # abandoned before it was sent: nothing drawn, still due
                results.extend(JobResult(j.info.target, j.info.instance,
                                         render.classify(j.info.metrics, j.info.thresholds))
                               for j in chunk)
                continue
            try:
                results.extend(future.result())
            except Exception as exc:  # a worker died (out of memory, killed): report, go on
                log.error("graph worker failed: %s", exc)
                self.close()
                results.extend(JobResult(j.info.target, j.info.instance,
                                         render.classify(j.info.metrics, j.info.thresholds),
                                         error=f"worker failed: {exc}") for j in chunk)
            done += sum(len(job.periods) for job in chunk)
            if progress:
                progress(done, total)
        return results

    # -- pages ---------------------------------------------------------------------------------

    def _write_pages(self, series: Sequence[SeriesInfo], entries: dict[str, dict], now: float
                     ) -> tuple[int, set[str]]:
        """Every page; returns how many, and the directories of the targets on the site."""
        checks = self.status.all()
        model = _SiteModel(series, checks, entries, now, self.uplinks,
                           self.port_index() if self.port_index else {})
        firing = self._alerts()
        alerts = model.alert_rows(firing, now)
        # An alert of a check's rule is the same problem as the check (its label is the check's
        # name): counted once.
        problems = ({(c.target, c.check) for c in checks if c.state is not State.OK}
                    | {(a.target, a.label) for a in firing})
        mail = self._mail_model(now, checks)
        common = {
            "mail_page": mail is not None,
            "site_title": render.display(self.title), "refresh": self.refresh,
            "refresh_text": format_duration(self.refresh), "generated": _local(now),
            "version": __version__, "problem_count": len(problems),
            "tz": datetime.fromtimestamp(now).astimezone().strftime("%Z, UTC%z"),
        }
        pages = 0

        def write(path: Path, template: str, root: str, **context: Any) -> None:
            nonlocal pages
            html = self._env.get_template(template).render(**common, root=root, **context)
            atomic_write(path, html, PUBLIC_MODE, durable=False)  # synced with the graphs
            pages += 1

        write(self.html_dir / "index.html", "index.html.j2", "", targets=model.targets,
              counts=model.counts, series_count=len(series))
        write(self.html_dir / "problems.html", "problems.html.j2", "", problems=model.problems,
              alerts=alerts)
        if mail is not None:
            write(self.html_dir / "mail.html", "mail.html.j2", "", **mail)
        for target in model.targets:
            write(self.html_dir / target.fsdir / "index.html", "target.html.j2", "../", target=target)
            for item in target.graphed:
                write(self.html_dir / target.fsdir / item.fsdir / "index.html", "instance.html.j2",
                      "../../", item=item, periods=model.periods(item))
        return pages, {target.fsdir for target in model.targets}

    def _mail_model(self, now: float, checks: Sequence[CheckStatus]) -> dict[str, Any] | None:
        """mail.html: pflogsumm's tables for the last 24 hours (hour by hour, the busiest
        senders, domains, reject reasons and failing clients), the last 14 days day by day, the
        mail graphs and the block-list checks. None when [maillog] is off."""
        if self.mail_state is None:
            return None
        from collectors.maillog import TABLES, HourCounts, by_day, hours_between, load_state

        hour = 3600
        start = (int(now) // hour - 23) * hour
        state = load_state(self.mail_state)
        hours = hours_between(state, start, start + 24 * hour)
        today = datetime.fromtimestamp(now).replace(hour=0, minute=0, second=0, microsecond=0)
        days = by_day(state, (today - timedelta(days=MAIL_DAYS - 1)).timestamp(), now + hour)
        total = HourCounts()
        for _, counts in hours:
            total.merge(counts)
        columns = ["received", "delivered", "outbound", "deferred", "bounced", "rejected",
                   "sasl_failures", "login_failures"]
        titles = dict(zip(TABLES, ("Senders (messages received)", "Outbound senders",
                                   "Recipient domains (delivered)", "Reject reasons",
                                   "SASL authentication failures by client",
                                   "Dovecot login failures by client"), strict=True))
        graphs = [{"label": label, "url": f"mail/{safe_name(instance)}/index.html",
                   "png": f"mail/{safe_name(instance)}/day.png"}
                  for instance, label in (("postfix", "Postfix"), ("dovecot", "Dovecot"))
                  if (self.html_dir / "mail" / safe_name(instance) / "day.png").exists()]
        return {
            "columns": [c.replace("_", " ") for c in columns],
            "totals": [total.counts[c] for c in columns],
            "received_bytes": format_bytes(total.counts["received_bytes"]),
            "hours": [{"hour": datetime.fromtimestamp(h).strftime("%a %H:00"),
                       "counts": [c.counts[name] for name in columns]} for h, c in hours],
            "days_shown": MAIL_DAYS,
            "days": [{"day": datetime.fromtimestamp(d).strftime("%a %d %b"),
                      "counts": [c[name] for name in columns]} for d, c in days],
            "tables": [{"title": titles[name],
                        "rows": [(render.display(key, LABEL_LIMIT), n)
                                 for key, n in total.tables[name].most_common(10)]}
                       for name in TABLES],
            "graphs": graphs,
            "blocklists": [{"state": c.state.name, "target": render.display(c.target, 60),
                            "message": render.display(c.message, 600)}
                           for c in sorted(checks, key=lambda c: (-c.state.severity, c.target))
                           if c.check in ("blocklists", "dnsbl")],
        }

    def _remove_pages(self, gone: Sequence[str], target_dirs: set[str]) -> None:
        """The graphs and page of each series no longer stored (its RRD file was deleted), and
        the page of a target left with nothing. Only what the site wrote is removed; the names
        are safe_name()s, so nothing outside html_dir is reached."""
        for rel in gone:
            directory = self.html_dir / rel
            for name in ("index.html", "spark.png", *(f"{period}.png" for period in PERIODS)):
                (directory / name).unlink(missing_ok=True)
            with contextlib.suppress(OSError):  # not empty: someone put something there
                directory.rmdir()
            target = directory.parent
            if target.name not in target_dirs:
                (target / "index.html").unlink(missing_ok=True)
                with contextlib.suppress(OSError):
                    target.rmdir()
            log.info("site: removed the pages of %s (no data stored any more)", rel)

    def _alerts(self) -> list:
        """Firing alerts from the alert engine's database (alert mails link to this page)."""
        if self.alerts_db is None or not self.alerts_db.exists():
            return []
        try:
            from alerts.state import AlertStore

            return [s for s in AlertStore(self.alerts_db, readonly=True).load_states().values()
                    if s.problem]
        except Exception as exc:  # the pages must still be written without the alert list
            log.warning("cannot read alerts from %s: %s", self.alerts_db, exc)
            return []


def site_from_config(
    config: Config, store: RrdStore | None = None, status: StatusBook | None = None, *,
    workers: int | None = None, inline_below: int = 0,
) -> SiteBuilder:
    """The site of a config, drawing from the agent's store and status book (or its own, for
    the one-shot `monitor graph`: in a cluster, the files of the one rrdcached and their index
    in Redis, as the leader's)."""
    if store is None:
        from monitor.agent import open_store
        store = open_store(config)
    if status is None:
        status = StatusBook(config.state_dir / "status.json")
    from alerts.state import alerts_db_path
    from collectors.snmp import read_port_index

    return SiteBuilder(store, status, config.html_dir, config.state_dir / "graphs.json",
                       title=config.web.title, refresh=config.web.refresh,
                       workers=workers or config.web.workers, slack=config.agent.interval / 2,
                       inline_below=inline_below, alerts_db=alerts_db_path(config.state_dir),
                       uplinks=config.web.uplinks,
                       port_index=functools.partial(read_port_index, config.state_dir),
                       baseline=config.baseline if config.baseline.enabled else None,
                       mail_state=config.state_dir / "maillog.json" if config.maillog.enabled
                       else None)


# -- page model ----------------------------------------------------------------------------------


def _rel(info: SeriesInfo) -> str:
    return f"{safe_name(info.target)}/{safe_name(info.instance)}"


def _instances_of(check: str) -> list[str]:
    """The graphed instance a check is about, by the naming contract: a service's check is named
    like its instance ("ups", "bgp 192.0.2.1"); "if Gi0/1" -> "Gi0/1", "backup nightly" ->
    "nightly", "disk /var" -> "fs:/var", "storage /var" -> "storage:/var", "fan X" -> "sensor X";
    a device-wide check ("snmp", "host") belongs to the device's "" instance."""
    out = [check]
    kind, _, rest = check.partition(" ")
    if rest:  # "if Gi0/1", "backup nightly", "list announce": the rest names the instance
        out.append(rest)
    if kind == "disk" and rest:
        out.insert(0, "fs:" + rest)
    if kind == "storage" and rest:  # SNMP hrStorage: "storage /var" -> "storage:/var"
        out.insert(0, "storage:" + rest)
    if kind in ("fan", "temperature") and rest:  # a fan's or sensor's readings
        out.insert(0, "sensor " + rest)
    if check in ("snmp", "host"):
        out.append("")
    return out


def natural_key(name: str) -> tuple:
    """Sort key that orders the numbers in names by value: Gi0/0/2 before Gi0/0/10."""
    return tuple((0, int(part), "") if part.isdigit() else (1, 0, part.casefold())
                 for part in re.split(r"(\d+)", name) if part)


def _port_row(info: SeriesInfo, item: Item, entry: dict, uplinks: Sequence[str],
              port: PortInfo | None) -> dict:
    """One line of a device's port table, from the day graph's figures (current values) and
    the port index (alias, group, MAC and IP addresses)."""
    day = entry["summaries"]["day"]

    def now(label: str) -> float | None:
        return (day.get(label) or {}).get("current")

    speed = now("Link speed")
    rin, rout = now("In"), now("Out")
    oper, admin = now("oper_status"), now("admin_status")
    status = "admin down" if admin == 2 else format_state(oper, OPER_STATUS) \
        if oper is not None else ""

    def per_second(*labels: str) -> str:
        values = [value for label in labels if (value := now(label)) is not None]
        return render.format_value(sum(values), "/s") if values else ""

    busiest = max((r for r in (rin, rout) if r is not None), default=None)
    return {
        "name": info.instance, "label": item.label, "url": f"{item.dir}/index.html",
        "alias": render.display(port.alias, LABEL_LIMIT) if port else "",
        "alias_full": render.display(port.alias) if port else "",
        "group": render.display(port.group) if port else "",
        "mac": render.display(port.mac) if port else "",
        "addresses": [render.display(a) for a in port.addresses] if port else [],
        "status": status, "state": item.state,
        "speed": render.format_value(speed, "b/s") if speed else "",
        "in": render.format_value(rin, "b/s"), "out": render.format_value(rout, "b/s"),
        "utilisation": render.of_speed(busiest, speed),
        "errors": per_second("in_errors", "out_errors"),
        "discards": per_second("in_discards", "out_discards"),
        "uplink": any(fnmatch.fnmatchcase(f"{info.target} {info.instance}", p) for p in uplinks),
    }


def _local(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M")


def _severity(state: str) -> int:
    return State[state].severity if state else -1


@dataclass
class Item:
    label: str
    title: str
    target_label: str
    dir: str = ""  # safe_name(instance), URL-quoted for links
    fsdir: str = ""  # safe_name(instance), the directory
    url: str = ""  # from the index
    spark: str = ""
    has_graph: bool = False
    rel: str = ""
    state: str = ""
    message: str = ""
    since_text: str = ""
    since_full: str = ""
    age: str = ""
    target_url: str = ""


@dataclass
class Target:
    label: str
    dir: str  # URL-quoted for links
    fsdir: str  # safe_name(target), the directory
    url: str
    state: str = ""
    message: str = ""
    since_text: str = ""
    since_full: str = ""
    age: str = ""
    items: list[Item] = field(default_factory=list)
    graphed: list[Item] = field(default_factory=list)
    checks: list[Item] = field(default_factory=list)
    ports: list[dict] = field(default_factory=list)  # the port table of a device


def _apply_check(obj: Item | Target, check: CheckStatus, now: float) -> None:
    obj.state = check.state.name
    obj.message = render.display(check.message)
    obj.since_text = _local(check.since)
    obj.since_full = datetime.fromtimestamp(check.since).astimezone().isoformat(timespec="seconds")
    obj.age = format_age(now - check.since)


class _SiteModel:
    """Everything the templates show, as display-safe strings and URL-quoted relative links."""

    def __init__(self, series: Sequence[SeriesInfo], checks: Sequence[CheckStatus],
                 entries: dict[str, dict], now: float, uplinks: Sequence[str] = (),
                 port_index: PortIndex | None = None) -> None:
        self.entries = entries
        targets: dict[str, Target] = {}

        def target_for(name: str) -> Target:
            if name not in targets:
                d = quote(safe_name(name), safe="=@")
                targets[name] = Target(render.display(name, LABEL_LIMIT), d, safe_name(name),
                                       f"{d}/index.html")
            return targets[name]

        by_instance: dict[tuple[str, str], Item] = {}
        for info in series:
            target = target_for(info.target)
            label = render.display(info.instance, LABEL_LIMIT) if info.instance else "(device)"
            full = render.display(info.instance) if info.instance else "(device)"
            d = quote(safe_name(info.instance), safe="=@")
            item = Item(label, f"{render.display(info.target)} · {full}", target.label, d,
                        safe_name(info.instance),
                        f"{target.dir}/{d}/index.html", f"{target.dir}/{d}/spark.png",
                        "day" in entries.get(_rel(info), {}).get("drawn", {}), _rel(info))
            target.items.append(item)
            target.graphed.append(item)
            by_instance[(info.target, info.instance)] = item

        self.problems: list[Item] = []
        for check in checks:
            target = target_for(check.target)
            graphed = next((by_instance[(check.target, i)] for i in _instances_of(check.check)
                            if (check.target, i) in by_instance), None)
            row = Item(render.display(check.check), f"{target.label} · {render.display(check.check)}",
                       target.label)
            _apply_check(row, check, now)
            if graphed is not None:
                row.url = graphed.dir + "/index.html"
                if _severity(row.state) > _severity(graphed.state):
                    _apply_check(graphed, check, now)
            else:
                target.items.append(row)
            target.checks.append(row)
            if _severity(row.state) > _severity(target.state):
                _apply_check(target, check, now)
            if check.state is not State.OK:
                problem = Item(row.label, row.title, target.label, url=f"{target.dir}/{row.url}"
                               if row.url else "")
                _apply_check(problem, check, now)
                problem.target_url = target.url
                self.problems.append(problem)

        def order(obj: Item | Target) -> tuple:
            return (-_severity(obj.state), obj.label)

        for target in targets.values():
            target.items.sort(key=order)
            target.graphed.sort(key=order)
            target.checks.sort(key=order)
        for info in series:
            entry = entries.get(_rel(info), {})
            if entry.get("kind") == render.TRAFFIC and "day" in entry.get("summaries", {}):
                item = by_instance[(info.target, info.instance)]
                port = (port_index or {}).get(info.target, {}).get(info.instance)
                targets[info.target].ports.append(_port_row(info, item, entry, uplinks, port))
        for target in targets.values():
            target.ports.sort(key=lambda row: (not row["uplink"], natural_key(row["name"])))
        self.targets = sorted(targets.values(), key=order)
        self.by_name = targets
        self.problems.sort(key=lambda p: (-_severity(p.state), p.target_label, p.label))
        counts: dict[str, int] = {}
        for check in checks:
            counts[check.state.name] = counts.get(check.state.name, 0) + 1
        self.counts = [(s.name, counts[s.name]) for s in sorted(State, key=lambda s: -s.severity)
                       if counts.get(s.name)]

    def alert_rows(self, alerts: Sequence[Any], now: float) -> list[dict]:
        rows = []
        for a in sorted(alerts, key=lambda a: (-a.severity.severity, a.target, a.label)):
            target = self.by_name.get(a.target)
            rows.append({
                "state": a.severity.name, "status": render.display(str(a.status.value)),
                "target_label": render.display(a.target, LABEL_LIMIT),
                "target_url": target.url if target else "", "label": render.display(a.label, LABEL_LIMIT),
                "rule": render.display(a.rule), "message": render.display(a.message),
                "ack": render.display(f"acknowledged by {a.ack_by}" + (
                    f": {a.ack_comment}" if a.ack_comment else "")) if a.ack_by else "",
                "since_text": _local(a.since), "age": format_age(now - a.since),
                "since_full": datetime.fromtimestamp(a.since).astimezone().isoformat(timespec="seconds"),
            })
        return rows

    def periods(self, item: Item) -> list[dict]:
        entry = self.entries.get(item.rel, {})
        units = entry.get("units", {})
        out = []
        for name, period in PERIODS.items():
            summary = entry.get("summaries", {}).get(name)
            table = []
            for label, s in (summary or {}).items():
                unit = units.get(label, "")
                total_unit = "B" if unit == "b/s" else ""
                table.append({
                    "label": render.display(label),
                    **{key: format_metric(s.get(key), label, unit)
                       for key in ("current", "average", "maximum", "p95")},
                    # only traffic has a total (bytes moved); "-" as for any figure not known
                    "total": format_value(s.get("total") if total_unit else None, total_unit),
                })
            out.append({"name": name, "heading": period.label.capitalize(), "png": f"{name}.png",
                        "drawn": summary is not None, "table": table})
        return out


