"""Digests: the daily/weekly report mail ([[digests]]), built from what the agent already knows.

Sources: the status book (current problems), the alert history (alerts of the period, when the
alerts database exists), the RRD store (traffic, response times, certificate expiry, disks,
mailbox growth), the lists collector's state file (list activity) and the backup checks.
Each section is built independently: a section whose data is missing says so in one line, a
section that fails says why, and the rest of the digest still goes out.

The mail is multipart/alternative: plain text first (for mutt and phones), then HTML rendered
by Jinja2 with autoescaping (mailbox, list and interface names are untrusted) inside a
multipart/related with small PNG sparklines referenced by Content-ID. It is handed to the
alerts outbox like every other mail, so a relay outage delays it but never loses it.
"""

from __future__ import annotations

import asyncio
import bisect
import io
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from email.message import EmailMessage
from email.utils import make_msgid
from pathlib import Path
from typing import Any, TextIO

from apscheduler.triggers.cron import CronTrigger
from jinja2 import Environment

from alerts.mail import make_message
from alerts.outbox import Outbox, outbox_path
from alerts.state import AlertStore, alerts_db_path
from graphs import stats
from monitor.config import Config, Digest
from monitor.files import atomic_write
from monitor.model import State
from monitor.scheduler import Clock, Scheduler, SystemClock, cron_trigger
from monitor.scheduler import JobFunction as Job
from monitor.status import StatusBook
from monitor.store import RrdStore, Series, SeriesInfo
from monitor.text import clean
from monitor.units import (
    IN_EDGE,
    IN_FILL,
    OUT_LINE,
    format_age,
    format_bits_per_second,
    format_bytes,
    format_duration,
)

log = logging.getLogger("monitor.digest")

MAX_TRAFFIC = 12
MAX_SERVICES = 30
PROBLEM_SECTIONS = {"problems", "backups"}  # the sections whose rows are verdicts
GRAPHED_MAILBOXES = 5  # the top rows of the mailbox section get a growth graph
NAME_WIDTH = 60  # an interface, mailbox or list name longer than this is cut in tables


@dataclass
class Image:
    cid: str
    png: bytes
    alt: str


@dataclass
class Section:
    key: str
    title: str
    headers: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    images: list[Image | None] = field(default_factory=list)  # one per row (or empty)
    notes: list[str] = field(default_factory=list)
    empty: str = ""
    problems: int = 0  # what this section shows as not OK (the subject counts these)
    totals: dict[str, float] = field(default_factory=dict)  # the section's numbers, unformatted

    @property
    def is_empty(self) -> bool:
        return not self.rows and not self.notes


@dataclass
class Report:
    digest: Digest
    hostname: str
    start: float
    end: float
    sections: list[Section]
    notice: str = ""  # said under the period (a digest sent late)

    @property
    def problems(self) -> int:
        """Problems the digest's own sections show (a mailbox digest counts no backup failure)."""
        return sum(s.problems for s in self.sections)

    @property
    def images(self) -> list[Image]:
        return [img for s in self.sections for img in s.images if img is not None]


# -- small formatting helpers ---------------------------------------------------------------


def fmt_time(ts: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts))


def fmt_clock(ts: float) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts))


def merge_spans(spans: Sequence[tuple[float, float]]) -> list[tuple[float, float]]:
    """(from, to) spans merged where they touch or overlap, in order."""
    merged: list[tuple[float, float]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def _hour_start(ts: float) -> float:
    return datetime.fromtimestamp(ts).replace(minute=0, second=0, microsecond=0).timestamp()


def counted_hours(start: float, end: float, what: str) -> tuple[str, str]:
    """The log sections (lists, mail) count whole local hours, those that end within
    (start, end]: (the note that says which, the empty text when none does)."""
    first, last = _hour_start(start), _hour_start(end)
    if last <= start:
        return "", (f"No complete hour in this period: {what} are counted per hour, and "
                    f"{fmt_time(first)}-{time.strftime('%H:%M', time.localtime(first + 3600))} "
                    "is counted once it has ended.")
    return f"Whole hours from {fmt_time(first)} to {fmt_time(last)}", ""


@dataclass(frozen=True)
class Unwritten:
    """The rows of a period rrdtool has not written yet. It writes the row (t - step, t] at
    the first update after t: after the agent's last poll, the rest of the period waits for
    the next one (a digest built just after its period, a short demo run, a stopped agent)."""

    none_yet: bool  # not even the period's first row
    note: str  # "" when what is missing is under 1 % of the period (and at most one row)


def unwritten_rows(start: float, end: float, last_update: float, step: float) -> Unwritten:
    written = math.floor(last_update / step) * step  # the end of the last row written
    first = (math.floor(start / step) + 1) * step  # the end of the period's first row
    row = f"{format_duration(step)} row"
    if written < first:
        return Unwritten(True, f"The last poll ({fmt_clock(last_update)}) came before the "
                               f"period's first {row} ended ({fmt_clock(first)}): rrdtool writes "
                               "a row at the first poll after it ends.")
    if written >= end or end - written < max(step, 0.01 * (end - start)):
        return Unwritten(False, "")
    return Unwritten(False, f"Figures up to {fmt_clock(written)}, the last complete {row}: the "
                            f"{format_duration(end - written)} after it are written at the "
                            "agent's next poll.")


def sparkline(values: Sequence[float | None], alt: str, *, second: Sequence[float | None] | None = None,
              percent: bool = False) -> Image | None:
    """A 240x48 PNG of a series (and a second one), or None when there is nothing to draw."""
    if not any(v is not None for v in values):
        return None
    from matplotlib.figure import Figure  # imported late: digests without graphs skip it

    fig = Figure(figsize=(2.4, 0.48), dpi=100)
    ax = fig.add_axes((0, 0, 1, 1))
    xs = list(range(len(values)))
    nan = float("nan")
    ax.fill_between(xs, [nan if v is None else v for v in values], color=IN_FILL, linewidth=0)
    ax.plot(xs, [nan if v is None else v for v in values], color=IN_EDGE, linewidth=1)
    if second is not None:  # the site's in/out colours (monitor.units)
        ax.plot(range(len(second)), [nan if v is None else v for v in second], color=OUT_LINE,
                linewidth=1)
    ax.set_xlim(0, max(1, len(values) - 1))
    if percent:
        ax.set_ylim(0, 100)
    else:
        ax.set_ylim(bottom=0)
    ax.axis("off")
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", transparent=False, facecolor="white")
    return Image(make_msgid("graph", domain="monitor")[1:-1], buffer.getvalue(), clean(alt, NAME_WIDTH))


# -- the period -----------------------------------------------------------------------------


def _latest_fire(trigger: CronTrigger, at: datetime) -> datetime:
    """The last time the cron trigger fires at or before `at`."""
    lookback = timedelta(hours=1)
    while True:
        fire = trigger.get_next_fire_time(None, at - lookback)
        if fire is not None and fire <= at:
            break
        if lookback > timedelta(days=800):
            raise ValueError("the schedule never fires")
        lookback *= 2
    while True:
        following = trigger.get_next_fire_time(None, fire + timedelta(seconds=1))
        if following is None or following > at:
            return fire
        fire = following


def period_of(schedule: str, now: float) -> tuple[float, float]:
    """(start, end) of the digest period that ends last at or before `now`: from one scheduled
    time to the next (daily at 07:00: yesterday 07:00 to today 07:00). Consecutive digests
    tile time: each one starts where the previous one ended. Every section counts what
    happened at start <= t < end (RRD rows by their end: start < t <= end)."""
    trigger = cron_trigger(schedule)
    end = _latest_fire(trigger, datetime.fromtimestamp(now, trigger.timezone))
    start = _latest_fire(trigger, end - timedelta(seconds=1))
    return start.timestamp(), end.timestamp()


# -- building -------------------------------------------------------------------------------


class DigestBuilder:
    def __init__(self, config: Config, *, store: RrdStore, status: StatusBook,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.store = store
        self.status = status
        self.clock = clock

    def build(self, digest: Digest, window: tuple[float, float] | None = None) -> Report:
        """The digest of its last complete scheduled period, or of `window` (start, end)."""
        start, end = window or period_of(digest.schedule, self.clock())
        self._series = self.store.series()
        sections = []
        for key in digest.sections:
            method = getattr(self, f"section_{key}")
            try:
                sections.append(method(digest, start, end))
            except Exception as exc:  # one broken source must not cost the whole digest
                log.exception("digest %s: section %s failed", digest.name, key)
                sections.append(Section(key, key.title(), notes=[f"This section could not be "
                                                                  f"built: {exc}"]))
        return Report(digest, self.config.agent.hostname, start, end, sections)

    def _fetch(self, info: SeriesInfo, start: float, end: float, cf: str = "AVERAGE") -> Series | None:
        try:
            return self.store.fetch_path(info, start, end, cf=cf)
        except Exception as exc:  # a corrupt RRD file: skip this series only
            log.warning("digest: cannot read %s: %s", info.path, exc)
            return None

    def _last_update(self, info: SeriesInfo) -> float:
        """When the file was last updated (inf when that cannot be told: every row counts as
        written). Asked after a fetch, which through rrdcached flushes the file first."""
        try:
            return self.store.modified(info)[0]
        except OSError:
            return math.inf

    def _latest(self, info: SeriesInfo, end: float, metric: str, window: float = 2 * 86400) -> float | None:
        series = self._fetch(info, end - window, end)
        if series is None:
            return None
        values = stats.known(series.columns.get(metric, []))
        if values.size:
            return float(values[-1])
        return self._last_written(info, end).get(metric)

    def _last_written(self, info: SeriesInfo, end: float) -> dict[str, float]:
        """A series written once or twice has no consolidated value yet (the first hour of
        a fresh install, the demo): use the last value written, if it is recent."""
        try:
            if self.store.modified(info)[0] < end - 2 * 86400:
                return {}
            return self.store.last_gauges(info)
        except Exception as exc:
            log.warning("digest: cannot read %s: %s", info.path, exc)
            return {}

    # sections ---------------------------------------------------------------------------

    def section_problems(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("problems", "Current problems", ["state", "since", "check", "message"],
                    empty="None: every check is OK.")
        # A backup failure is shown once: in "Backup results" when the digest has that section.
        backups_apart = "backups" in digest.sections
        apart = 0
        for c in self.status.all():
            if c.state is State.OK:
                continue
            if backups_apart and c.target == "backups":
                apart += 1
                continue
            s.rows.append([c.state.name, f"{fmt_time(c.since)} ({format_age(end - c.since)})",
                           clean(f"{c.target} {c.check}", NAME_WIDTH), clean(c.message, 200)])
        if apart:
            s.notes.append(f"{apart} backup problem(s): see Backup results.")
            if not s.rows:
                s.empty = "None apart from backups."
        s.problems = len(s.rows)
        return s

    def section_alerts(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("alerts", "Alerts of the period", ["time", "event", "severity", "what", "message"],
                    empty="No alerts in this period.")
        path = alerts_db_path(self.config.state_dir)
        if not path.exists():
            s.empty = "No alert history (no alert has been recorded yet)."
            return s
        entries = AlertStore(path).history(start, end)  # start <= at < end
        s.totals["alerts"] = len(entries)
        for e in entries[-200:]:
            s.rows.append([fmt_time(e.at), e.kind, e.severity,
                           clean(f"{e.target} {e.label}", NAME_WIDTH), clean(e.message, 200)])
        if len(entries) > 200:
            s.notes.append(f"{len(entries) - 200} older alert(s) of the period not shown.")
        return s

    def section_traffic(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("traffic", "DMZ traffic", ["interface", "in total", "out total", "in peak",
                                               "out peak", "in 95th", "out 95th"],
                    empty="No traffic data in this period.")
        found = []
        updates: list[tuple[float, float]] = []  # (last update, step) of every file
        for info in self._series:
            if "in_octets" not in info.metrics or "out_octets" not in info.metrics:
                continue
            try:  # the site's figures for the same period (graphs.stats): the billing 95th
                rows = stats.period_rows(self.store, info, start, end)
            except Exception as exc:  # a corrupt RRD file: skip this series only
                log.warning("digest: cannot read %s: %s", info.path, exc)
                continue
            updates.append((self._last_update(info), rows.step))
            ins, outs = rows.columns.get("in_octets", []), rows.columns.get("out_octets", [])
            if not stats.known(ins).size and not stats.known(outs).size:
                continue
            fin, fout = (stats.summarize(v, rows.step) for v in (ins, outs))
            found.append(((fin.total or 0) + (fout.total or 0), info, ins, outs, fin, fout,
                          updates[-1]))
        found.sort(key=lambda t: (-t[0], t[1].target, t[1].instance))
        for _, info, _ins, _outs, fin, fout, _ in found:
            name = f"{info.target} {info.instance}".strip()
            s.totals[f"{name} in"], s.totals[f"{name} out"] = fin.total or 0.0, fout.total or 0.0
        for _, info, ins, outs, fin, fout, _ in found[:MAX_TRAFFIC]:
            bits = lambda v: format_bits_per_second(None if v is None else v * 8)  # noqa: E731
            s.rows.append([clean(f"{info.target} {info.instance}".strip(), NAME_WIDTH),
                           format_bytes(fin.total), format_bytes(fout.total), bits(fin.maximum),
                           bits(fout.maximum), bits(fin.p95), bits(fout.p95)])
            s.images.append(sparkline(ins, f"traffic {info.target} {info.instance}", second=outs)
                            if digest.graphs else None)
        if len(found) > MAX_TRAFFIC:
            s.notes.append(f"{len(found) - MAX_TRAFFIC} quieter interface(s) not shown.")
        if found:  # every figure shown is complete up to the least recent of their files
            if note := unwritten_rows(start, end, *min(f[-1] for f in found)).note:
                s.notes.append(note)
        elif updates and (pending := unwritten_rows(start, end, *max(updates))).none_yet:
            s.empty = f"No traffic data in this period yet. {pending.note}"
        return s

    def _agent_ran(self, start: float, end: float
                   ) -> tuple[list[tuple[float, float]] | None, tuple[float, float]]:
        """When the agent ran in the period, from its collectors' heartbeats (monitor.agent
        writes agent "collector NAME" run_seconds every run), as merged (from, to) spans; None
        when no heartbeat is stored (data of an older version: every sample counts). And the
        span not known yet: from the freshest heartbeat's last written row to one interval
        after its last update, the agent ran on (or its next run is not due yet) but rrdtool
        has not written the row: that is no time the agent was down."""
        spans: list[tuple[float, float]] = []
        found = False
        pending = (end, end)
        freshest = -math.inf
        for info in self._series:
            if info.target != "agent" or "run_seconds" not in info.metrics:
                continue
            series = self._fetch(info, start, end)
            if series is None:
                continue
            found = True
            last = self._last_update(info)
            if math.isfinite(last) and last > freshest:
                freshest = last
                pending = (math.floor(last / series.step) * series.step, last + info.step)
            rows = stats.window(series, start, end)
            stamps, columns = rows.timestamps, rows.columns
            spans += [(t - series.step, t) for t, v in
                      zip(stamps, columns.get("run_seconds", []), strict=False)
                      if v is not None and not math.isnan(v)]
        if not found:
            return None, pending
        return merge_spans(spans), pending

    def section_services(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("services", "Services: availability and response times",
                    ["service", "answered", "average", "max", "now"],
                    empty="No service checks recorded in this period.")
        states = {(c.target, c.check): c for c in self.status.all()}
        ran, not_yet_known = self._agent_ran(start, end)
        starts = [a for a, _ in ran or []]
        updates: list[tuple[float, float]] = []  # (last update, step) of every file
        measured_updates: list[tuple[float, float]] = []  # of the files with samples

        def measured(t: float, step: float) -> bool:
            """The agent ran during the row (t - step, t]."""
            if ran is None:
                return True
            i = bisect.bisect_left(starts, t) - 1
            return i >= 0 and ran[i][1] > t - step

        for info in self._series:
            if "response_seconds" not in info.metrics or len(s.rows) >= MAX_SERVICES:
                continue
            series = self._fetch(info, start, end)
            if series is None:
                continue
            rows = stats.window(series, start, end)
            stamps, columns = rows.timestamps, rows.columns
            values = columns.get("response_seconds", [])
            if not values:
                continue
            last = self._last_update(info)
            updates.append((last, series.step))
            none_yet = unwritten_rows(start, end, last, series.step).none_yet
            # Availability over the time the check was measured: a sample taken while the
            # agent was down is no failure of the service, nor is a row of this file that
            # rrdtool has not written yet (another collector's heartbeat may be newer).
            written = math.floor(last / series.step) * series.step
            kept = [v for t, v in zip(stamps, values, strict=False) if t <= written
                    and (measured(t, series.step) or (v is not None and not math.isnan(v)))]
            known = list(stats.known(kept))
            if kept:
                measured_updates.append((last, series.step))
            name = f"{info.instance} ({info.target})"
            s.totals[f"{name} samples"] = len(kept)
            s.totals[f"{name} answered"] = len(known)
            current = states.get((info.target, info.instance))
            s.rows.append([clean(name, NAME_WIDTH),
                           f"{100.0 * len(known) / len(kept):.1f}% of samples" if kept else
                           "no complete row yet" if none_yet else "not measured",
                           f"{sum(known) / len(known):.3f} s" if known else "-",
                           f"{max(known):.3f} s" if known else "-",
                           current.state.name if current else "-"])
            s.images.append(sparkline(values, f"response time {info.instance}")
                            if digest.graphs else None)
        if ran is not None and s.rows:
            down = (end - start) - sum(min(b, end) - max(a, start)
                                       for a, b in merge_spans([*ran, not_yet_known])
                                       if b > start and a < end)
            s.totals["agent down seconds"] = down
            if down >= 60:
                s.notes.append(f"The agent itself did not run for {format_duration(round(down))} "
                               "of this period; that time counts against no service.")
        # As for traffic: complete up to the least recent file that has samples, or why none.
        pending = (unwritten_rows(start, end, *min(measured_updates)) if measured_updates else
                   unwritten_rows(start, end, *max(updates)) if updates else None)
        if pending is not None and pending.note and (measured_updates or pending.none_yet):
            s.notes.append(pending.note)
        return s

    def section_certificates(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("certificates", "Certificate expiry calendar", ["expires", "in", "service"],
                    empty="No TLS certificates are checked.")
        rows = []
        for info in self._series:
            if "cert_expiry_days" not in info.metrics:
                continue
            days = self._latest(info, end, "cert_expiry_days")
            if days is None:
                continue
            rows.append((days, info))
        for days, info in sorted(rows, key=lambda t: t[0]):
            when = date.fromtimestamp(end) + timedelta(days=int(days))
            flag = " (renew!)" if days <= digest.cert_days / 2 else ""
            s.rows.append([when.isoformat(), f"{days:.0f} days{flag}",
                           clean(f"{info.instance} ({info.target})", NAME_WIDTH)])
        if rows and not any(d <= digest.cert_days for d, _ in rows):
            s.notes.append(f"No certificate expires within {digest.cert_days} days.")
        return s

    def section_power(self, digest: Digest, start: float, end: float) -> Section:
        """Power and upstream: each UPS's time on battery, each BGP session's time down and
        flaps in the period (from the stored series: a restart loses nothing)."""
        s = Section("power", "Power and upstream", ["what", "events", "time", "detail"],
                    empty="No power events and no BGP session down.")
        quiet = 0
        for info in self._series:
            is_ups = info.instance == "ups" and "on_battery" in info.metrics
            is_bgp = info.instance.startswith("bgp ") and "bgp_state" in info.metrics
            if not (is_ups or is_bgp):
                continue
            series = self._fetch(info, start, end)
            if series is None:
                continue
            columns = stats.window(series, start, end).columns
            # A consolidated row's mean of a 1/0 series is the share of its time on battery
            # or down (a minute down in a 30-minute row is a minute, not the row).
            if is_ups:
                bad = [v if v is not None else 0.0 for v in columns.get("on_battery", [])]
            else:  # rows from before session_down was stored: down if the state is below 6
                states = columns.get("bgp_state", [])
                down = columns.get("session_down") or [None] * len(states)
                bad = [d if d is not None else 1.0 if v is not None and v < 6 else 0.0
                       for d, v in zip(down, states, strict=False)]
            episodes = sum(1 for i, v in enumerate(bad) if v > 0 and (i == 0 or bad[i - 1] == 0))
            # Flaps are counted per poll: a consolidated row holds the mean of its polls'
            # counts, so the row's flaps are that mean times the polls it covers.
            flaps = sum(stats.known(columns.get("session_flaps", []))) * series.step / info.step
            if not episodes and not flaps:
                quiet += 1
                continue
            longest, run = 0.0, 0.0
            for v in bad:
                run = run + v * series.step if v > 0 else 0.0
                longest = max(longest, run)
            if is_ups:
                charge = list(stats.known(columns.get("battery_charge_percent", [])))
                detail = f"longest {format_duration(longest)}" + (
                    f", lowest charge {min(charge):.0f} %" if charge else "")
                what = f"{info.target} on battery"
            else:
                detail = f"longest down {format_duration(longest)}" + (
                    f", {flaps:.0f} flap(s)" if flaps else "")
                what = f"{info.target} {info.instance}"
            bad_seconds = sum(v * series.step for v in bad)
            s.rows.append([clean(what, NAME_WIDTH), str(episodes), format_duration(bad_seconds),
                           detail])
            s.totals[f"{what} seconds"], s.totals[f"{what} flaps"] = bad_seconds, flaps
        if quiet:
            s.notes.append(f"{quiet} UPS / BGP session(s) without events.")
        return s

    def section_disks(self, digest: Digest, start: float, end: float) -> Section:
        s = Section("disks", "Disks", ["file system", "used", "free", "change"],
                    empty="No disk usage data.")
        rows = []
        for info in self._series:
            if not info.instance.startswith("fs:") or "used_percent" not in info.metrics:
                continue
            series = self._fetch(info, start, end)
            if series is None:
                continue
            columns = stats.window(series, start, end).columns
            pct = columns.get("used_percent", [])
            known = list(stats.known(pct))
            free = list(stats.known(columns.get("free_bytes", [])))
            if not known:
                written = self._last_written(info, end)
                if "used_percent" not in written:
                    continue
                known, pct = [written["used_percent"]], []  # no graph without history
                free = [written["free_bytes"]] if "free_bytes" in written else free
            used = list(stats.known(columns.get("used_bytes", [])))
            change = format_bytes(used[-1] - used[0]) if len(used) > 1 else "-"
            rows.append((known[-1], info, pct, free[-1] if free else None, change))
        for last, info, pct, free_now, change in sorted(rows, key=lambda t: -t[0]):
            s.rows.append([clean(f"{info.instance[3:]} ({info.target})", NAME_WIDTH), f"{last:.0f}%",
                           format_bytes(free_now), change])
            s.images.append(sparkline(pct, f"disk {info.instance[3:]}", percent=True)
                            if digest.graphs and pct else None)
        return s

    def section_mailboxes(self, digest: Digest, start: float, end: float) -> Section:
        """From the mailboxes collector's history (every mailbox, not only the RRD top): size
        and messages of the latest scan, quota, week-over-week growth against the size kept
        for the day a week before; those nearest their quota first."""
        from collectors.mailboxes import history_path, load_history

        s = Section("mailboxes", "Biggest mailboxes", ["mailbox", "size", "messages", "quota",
                                                       "used", "week-over-week"],
                    empty="No mailbox sizes recorded (enable [mailboxes]).")
        history = load_history(history_path(self.config.state_dir))
        if not history.latest:
            return s
        # Growth of the sizes shown (the latest scan's) over the week before that scan: with the
        # period's end instead, a digest built after its end (a late run, `--last`, a test run
        # before 07:00) compared today's sizes with those of eight days ago.
        today = datetime.fromtimestamp(history.scanned_at).date()
        week_ago = (today - timedelta(days=7)).isoformat()
        reaches_back = any(day <= week_ago for day in history.days)

        def before(address: str) -> int | None:
            known = [day for day in history.days if day <= week_ago
                     and address in history.days[day]]
            return history.days[max(known)][address] if known else None

        def growth(now_size: float, then: float | None) -> str:
            if then is None:
                return "new (no size a week ago)" if reaches_back else "no size a week ago yet"
            delta = now_size - then
            pct = f" ({100 * delta / then:+.0f}%)" if then else ""
            return f"{'+' if delta >= 0 else ''}{format_bytes(delta)}{pct}"

        def fill(size: float, quota: int | None) -> float:
            return size / quota if quota else -1.0

        ranked = sorted(history.latest.items(),
                        key=lambda kv: (-fill(kv[1][0], kv[1][2]), -kv[1][0], kv[0]))
        days = sorted(history.days)
        for rank, (address, (size, messages, quota)) in enumerate(ranked[:digest.top]):
            s.rows.append([clean(address, NAME_WIDTH), format_bytes(size), f"{messages}",
                           format_bytes(quota) if quota else "-",
                           f"{100 * size / quota:.0f}%" if quota else "-",
                           growth(size, before(address))])
            graph = [history.days[d].get(address) for d in days]
            s.images.append(sparkline(graph, f"size of {address}")
                            if digest.graphs and rank < GRAPHED_MAILBOXES else None)
        s.totals = {"mailboxes": len(history.latest),
                    "bytes": sum(v[0] for v in history.latest.values())}
        domains: dict[str, list[float]] = {}
        for address, (size, _, _) in history.latest.items():
            total = domains.setdefault(address.rpartition("@")[2], [0.0, 0.0, 0.0])
            then = before(address)
            total[0] += size
            total[1] += then or 0
            total[2] += then is not None
        if len(domains) > 1:
            top = sorted(domains.items(), key=lambda kv: (-kv[1][0], kv[0]))[:10]
            s.notes.append("Biggest domains: " + ", ".join(
                f"{clean(name, NAME_WIDTH)} {format_bytes(size)}"
                f" ({growth(size, then if counted else None)})"
                for name, (size, then, counted) in top))
        s.notes.append(f"Sizes of the scan at {fmt_time(history.scanned_at)}: what the messages "
                       "take in every folder, Trash included; quota from Dovecot's maildirsize.")
        return s

    def _log_state(self, s: Section, name: str, cfg: Any, load_state: Callable[[Path], Any],
                   read_logs: Callable[[Any, Any, float], Any], end: float, what: str) -> Any:
        """A log-counting collector's saved state ([lists], [maillog]) with the lines logged
        since its last run (up to `end`) read into this copy, not saved: the collector counts
        them itself. None (and a note in `s`) when the collector is off and left nothing."""
        path = self.config.state_dir / f"{name}.json"
        if not path.exists() and not cfg.enabled:
            s.empty = f"No {what} recorded (enable [{name}])."
            return None
        state = load_state(path)
        if cfg.enabled:
            read_logs(cfg, state, end)
        return state

    def section_lists(self, digest: Digest, start: float, end: float) -> Section:
        from collectors.lists import activity, load_state, read_logs

        s = Section("lists", "Mailing list activity", ["list", "posts", "volume", "senders",
                                                       "failed", "subscribers"],
                    empty="No posts to any mailing list in this period.")
        state = self._log_state(s, "lists", self.config.lists, load_state, read_logs, end,
                                "list activity")
        if state is None:
            return s
        hours, none = counted_hours(start, end, "posts")
        if none:
            s.empty = none
        by_list = activity(state, start, end)
        for name in sorted(set(by_list) | set(state.subscribers)):
            st = by_list.get(name)
            subs = state.subscribers.get(name)
            s.rows.append([clean(name, NAME_WIDTH), str(st.posts if st else 0),
                           format_bytes(st.bytes if st else 0), str(len(st.senders) if st else 0),
                           f"{st.failures} ({st.refused} recipients)" if st and st.failures else "0",
                           str(subs) if subs is not None else "-"])
        s.totals = {"posts": sum(st.posts for st in by_list.values()),
                    "bytes": sum(st.bytes for st in by_list.values()),
                    "failures": sum(st.failures for st in by_list.values())}
        notices = sum(st.notices for st in by_list.values())
        if s.rows:
            s.notes.append(none or f"Posts of the {hours[0].lower()}{hours[1:]}"
                           + (f"; Mailman also sent {notices} notice(s) of its own." if notices
                              else "."))
        return s

    def section_mail(self, digest: Digest, start: float, end: float) -> Section:
        """pflogsumm's summary from the mail-log collector's hourly counts."""
        from collectors.maillog import by_day, load_state, read_journal, read_logs, summary

        s = Section("mail", "Mail traffic", ["", "what", "count"],
                    empty="No mail logged in this period.")
        state = self._log_state(s, "maillog", self.config.maillog, load_state, read_logs, end,
                                "mail statistics")
        if state is None:
            return s
        counted_to = ""
        if self.config.maillog.enabled and self.config.maillog.journal:
            # As with the log files: the entries since the collector's last run, counted into
            # this copy only (the digest is built in a worker thread: no loop runs here).
            _, problems = asyncio.run(read_journal(self.config.maillog, state, end))
            if problems:
                counted_to = (f" Counted up to the collector's last read of the journal only: "
                              f"{problems[0]}.")
        total = summary(state, start, end)
        c = total.counts
        hours, none = counted_hours(start, end, "the mail log's lines")
        if not any(c.values()):
            s.empty = (none or s.empty) + counted_to
            return s
        rows = [("received", f"{c['received']} ({format_bytes(c['received_bytes'])})"),
                ("delivered", f"{c['delivered']} ({c['outbound']} outbound)"),
                ("deferred", str(c["deferred"])), ("bounced", str(c["bounced"])),
                ("rejected", str(c["rejected"])),
                ("SASL authentication failures", str(c["sasl_failures"])),
                ("Dovecot login failures", str(c["login_failures"]))]
        s.rows = [["totals" if i == 0 else "", what, n] for i, (what, n) in enumerate(rows)]
        # pflogsumm's per-day and per-hour summaries, in a few rows: each day of a longer
        # period, and the busiest hour (a spam run shows as one).
        days = by_day(state, start, end)
        if len(days) > 1:
            s.rows += [["per day" if i == 0 else "", time.strftime("%a %d %b", time.localtime(day)),
                        f"{n['received']} received, {n['delivered']} delivered ({n['outbound']} "
                        f"outbound), {n['deferred']} deferred, {n['bounced']} bounced, "
                        f"{n['rejected']} rejected"] for i, (day, n) in enumerate(days)]
        busiest, most = max(((h, n) for h, n in state.hours.items() if start < h + 3600 <= end),
                            key=lambda item: (item[1].counts["delivered"], item[0]))
        n = most.counts
        if n["delivered"]:
            s.rows.append(["busiest hour", time.strftime("%a %d %b %H:%M", time.localtime(busiest)),
                           f"{n['delivered']} delivered ({n['outbound']} outbound), "
                           f"{n['received']} received"])
        for table, title in (("senders", "top senders"), ("outbound_by", "top outbound senders"),
                             ("domains", "top recipient domains"),
                             ("reasons", "top reject reasons"),
                             ("sasl_clients", "top SASL-failing clients"),
                             ("login_clients", "top login-failing clients")):
            for i, (key, n) in enumerate(total.tables[table].most_common(digest.top)):
                s.rows.append([title if i == 0 else "", clean(key, 100), str(n)])
        s.totals = {name: float(c[name]) for name in ("received", "delivered", "outbound",
                                                      "deferred", "bounced", "rejected",
                                                      "sasl_failures", "login_failures")}
        s.notes.append(f"From the mail log: {hours[0].lower()}{hours[1:]}; senders are "
                       "SASL users, else client addresses." + counted_to)
        return s

    def section_backups(self, digest: Digest, start: float, end: float) -> Section:
        from collectors.backups import report

        s = Section("backups", "Backup results", ["job", "state", "result"],
                    empty="No backup jobs are configured.")
        jobs = report(self.config.backups, self.status.all(), self.config.state_dir, start, end)
        for job in jobs:
            state = job.state.name if job.state else "UNKNOWN"
            s.rows.append([clean(job.job, NAME_WIDTH), state, clean(job.result, 400)])
            if job.runs:
                s.notes.append(f"{job.job}: {job.runs} run(s) in the period, {job.failed} failed.")
        s.problems = sum(1 for row in s.rows if row[1] != "OK")
        s.totals = {"runs": sum(job.runs or 0 for job in jobs),
                    "failed": sum(job.failed for job in jobs)}
        return s


# -- rendering ------------------------------------------------------------------------------

_TEMPLATE = Path(__file__).with_name("digest.html.j2")

_COLOURS = {"CRITICAL": "#c00", "WARNING": "#b60", "UNKNOWN": "#808", "OK": "#080"}


def subject_of(report: Report) -> str:
    d = report.digest
    day = time.strftime("%Y-%m-%d", time.localtime(report.end))
    base = d.subject or f"[monitor] {d.name} digest for {day}"
    if not set(d.sections) & PROBLEM_SECTIONS:
        return base  # a mailbox or traffic report: no verdict on checks it does not show
    return base + (f": {report.problems} problem(s)" if report.problems else ": all OK")


def render_text(report: Report) -> str:
    lines = [subject_of(report), f"{fmt_time(report.start)} - {fmt_time(report.end)} on "
                                 f"{report.hostname}", *([report.notice] if report.notice else []),
             ""]
    for s in report.sections:
        lines += [s.title, "-" * len(s.title)]
        if s.is_empty:
            lines.append(s.empty)
        if s.rows:
            widths = [max(len(str(r[i])) for r in [s.headers, *s.rows]) for i in range(len(s.headers))]
            widths = [min(w, NAME_WIDTH) for w in widths]
            for row in [s.headers, *s.rows]:
                cells = [str(c) for c in row]
                text = "  ".join(c.ljust(w) for c, w in zip(cells[:-1], widths[:-1], strict=False))
                lines.append((text + "  " + cells[-1]).rstrip() if len(cells) > 1 else cells[0])
        lines += [*s.notes, ""]
    if report.digest and hasattr(report, "hostname"):
        lines.append(f"-- monitor on {report.hostname}")
    return "\n".join(lines) + "\n"


def render_html(report: Report, base_url: str = "") -> str:
    env = Environment(autoescape=True)
    template = env.from_string(_TEMPLATE.read_text(encoding="utf-8"))
    return template.render(title=subject_of(report), sections=report.sections,
                           period=f"{fmt_time(report.start)} - {fmt_time(report.end)}",
                           notice=report.notice,
                           hostname=report.hostname, colours=_COLOURS,
                           link=base_url if base_url.startswith(("http://", "https://")) else "")


def recipients_for(config: Config, digest: Digest) -> list[str]:
    out: list[str] = []
    for group in digest.recipients:
        for address in config.contacts.get(group, []):
            if address not in out:
                out.append(address)
    return out


def compose(report: Report, config: Config) -> EmailMessage:
    to = recipients_for(config, report.digest)
    msg = make_message(sender=config.smtp.sender, to=to, subject=subject_of(report),
                       body=render_text(report), date=report.end,
                       headers={"X-Monitor-Digest": report.digest.name})
    msg.add_alternative(render_html(report, config.web.base_url), subtype="html", charset="utf-8")
    if report.images:
        html_part = msg.get_payload(1)
        assert isinstance(html_part, EmailMessage)  # add_alternative made it
        for img in report.images:
            html_part.add_related(img.png, maintype="image", subtype="png", cid=f"<{img.cid}>",
                                  filename=f"{img.cid.split('@')[0]}.png", disposition="inline")
    return msg


async def run_digest(config: Config, name: str, *, dry_run: bool = False, store: RrdStore | None = None,
                     status: StatusBook | None = None, clock: Callable[[], float] = time.time,
                     out: TextIO | None = None, outbox: Outbox | None = None,
                     last: float | None = None, window: tuple[float, float] | None = None,
                     notice: str = "") -> EmailMessage:
    """Build digest NAME now; print it (dry run) or enqueue it in the outbox (the agent's own,
    when it runs there) and try to send. It covers its last complete scheduled period, or
    `window` (start, end), or with `last` the last this many seconds up to now."""
    import sys

    digest = next((d for d in config.digests if d.name == name), None)
    if digest is None:
        known = ", ".join(d.name for d in config.digests) or "none configured"
        raise ValueError(f"no digest named {name!r} (digests: {known})")
    own_store = store is None
    if store is None:  # in a cluster: the one rrdcached's files, their index in Redis
        from monitor.agent import open_store
        store = open_store(config)
    status = status or StatusBook(config.state_dir / "status.json")
    try:
        builder = DigestBuilder(config, store=store, status=status, clock=clock)
        now = clock()
        if last:
            window = (now - last, now)
        report = await asyncio.to_thread(builder.build, digest, window)
        report.notice = notice
        # What each section counted, exactly: with -v the journal tells what a digest said.
        log.debug("digest %s of %s - %s counted %s", name, fmt_time(report.start),
                  fmt_time(report.end), json.dumps({f"{s.key}: {k}": v for s in report.sections
                                                    for k, v in s.totals.items()}))
        msg = await asyncio.to_thread(compose, report, config)
    finally:
        if own_store:
            store.close()
    if dry_run:
        (out or sys.stdout).write(msg.as_string())
        return msg
    if outbox is None:
        outbox = await asyncio.to_thread(Outbox, outbox_path(config.state_dir), config.smtp,
                                         clock=clock)
    entry = await asyncio.to_thread(outbox.enqueue, msg)
    sent = await outbox.deliver_pending()
    log.info("digest %s queued as outbox #%d for %s; %d message(s) sent now", name, entry,
             ", ".join(recipients_for(config, digest)), sent)
    return msg


# -- on the agent's schedule ----------------------------------------------------------------

# rrdtool writes the row that ends at a digest's scheduled time at the first poll after it, so
# a scheduled digest waits for that poll of every collector that polls at least this often
# (slower ones, a 15-minute mailbox scan, feed no period total of a digest) ...
WAITED_STEP = 600
# ... looking every so often, for at most two of the collector's intervals and a minute (its
# next run starts within an interval and its jitter; a collector that does not come by then
# is stuck or gone, and the digest says which rows are missing).
ROWS_LOOK_EVERY = 10.0
ROWS_MARGIN = 60.0


def collectors_behind(store: RrdStore, end: float,
                      among: Sequence[SeriesInfo] | None = None) -> list[SeriesInfo]:
    """The heartbeats (agent "collector NAME" run_seconds, written with each run's samples)
    of the collectors that ran in the two intervals before `end` but whose row ending at `end`
    is not written yet: their first run after `end` has not been stored. A heartbeat is
    never unknown while its collector runs, so a written row is a known one."""
    candidates = among if among is not None else [
        info for info in store.series()
        if info.target == "agent" and "run_seconds" in info.metrics and info.step <= WAITED_STEP]
    behind = []
    for info in candidates:
        try:  # through rrdcached the fetch flushes the file first
            rows = stats.window(store.fetch_path(info, end - 3 * info.step, end),
                                end - 3 * info.step, end).columns.get("run_seconds", [])
        except Exception as exc:  # a corrupt file: nothing to wait for
            log.warning("digest: cannot read %s: %s", info.path, exc)
            continue
        if rows and rows[-1] is not None and not math.isnan(rows[-1]):
            continue  # written
        if among is None and not stats.known(rows).size:
            continue  # not running before `end` (stopped, removed, the agent was down)
        behind.append(info)
    return behind


async def wait_for_rows(store: RrdStore, end: float, clock: Clock) -> list[SeriesInfo]:
    """Wait until the store holds every running collector's row ending at `end`, or until
    the bound; returns the collectors still behind then (logged)."""
    behind = await asyncio.to_thread(collectors_behind, store, end)
    if not behind:
        return []
    deadline = end + 2 * max(info.step for info in behind) + ROWS_MARGIN
    while behind and (left := deadline - clock.time()) > 0:
        await clock.sleep(min(ROWS_LOOK_EVERY, left))
        behind = await asyncio.to_thread(collectors_behind, store, end, behind)
    if behind:
        log.warning("digest: no row up to %s from %s yet; the digest goes out without it",
                    fmt_time(end), ", ".join(info.instance for info in behind))
    return behind


def sent_path(state_dir: Path) -> Path:
    return Path(state_dir) / "digests.json"


def load_sent(state_dir: Path) -> dict[str, float]:
    """digest name -> the end of the last period the schedule sent ({} when none yet)."""
    try:
        raw = json.loads(sent_path(state_dir).read_text(encoding="utf-8"))
        return {str(k): float(v) for k, v in raw.get("sent", {}).items()}
    except FileNotFoundError:
        return {}
    except (OSError, ValueError, TypeError, AttributeError) as exc:
        log.error("digest state %s unreadable (%s): no missed digest is caught up",
                  sent_path(state_dir), exc)
        return {}


def record_sent(state_dir: Path, name: str, end: float) -> None:
    sent = load_sent(state_dir)
    sent[name] = max(end, sent.get(name, end))
    atomic_write(sent_path(state_dir), json.dumps({"version": 1, "sent": sent}, indent=1))


def missed_period(digest: Digest, last_sent: float | None, now: float) -> tuple[float, float] | None:
    """The period a restart made the schedule miss: the last complete one, if an earlier
    one was sent but not this one and it ended less than half a period ago (later, the next
    digest is nearer). None for a first start (nothing was ever sent)."""
    start, end = period_of(digest.schedule, now)
    if last_sent is None or last_sent >= end or now - end > (end - start) / 2:
        return None
    return start, end


def schedule_digests(config: Config, scheduler: Scheduler, store: RrdStore, status: StatusBook,
                     outbox: Outbox, guard: Callable[[Job], Job] = lambda job: job,
                     clock: Clock | None = None) -> None:
    """Put every [[digests]] on the agent's scheduler at its cron schedule, mailed through the
    agent's outbox (one SQLite connection and one delivery lock for alerts and digests).
    Each covers the period that ends at its scheduled time; it is built once the collectors
    have stored their rows up to that time (`wait_for_rows`), and a digest the agent missed
    while restarting is sent at its start. `guard` wraps each job (in a cluster: run on the
    leader only)."""
    clock = clock or SystemClock()
    sent = load_sent(config.state_dir)
    for digest in config.digests:
        async def job(digest: Digest = digest) -> None:
            now = clock.time()
            start, end = period_of(digest.schedule, now)
            done = await asyncio.to_thread(load_sent, config.state_dir)
            if done.get(digest.name, -math.inf) >= end:
                log.info("digest %s of %s was sent already", digest.name, fmt_time(end))
                return
            await wait_for_rows(store, end, clock)
            notice = (f"Sent late, at {fmt_time(clock.time())}: the agent was not running at "
                      f"{fmt_time(end)}." if now - end > ROWS_MARGIN else "")
            await run_digest(config, digest.name, store=store, status=status, outbox=outbox,
                             clock=clock.time, window=(start, end), notice=notice)
            await asyncio.to_thread(record_sent, config.state_dir, digest.name, end)

        missed = missed_period(digest, sent.get(digest.name), clock.time())
        if missed is not None:
            log.warning("digest %s of %s was not sent (the agent was not running); it goes "
                        "out now", digest.name, fmt_time(missed[1]))
        scheduler.add_cron(f"digest {digest.name}", digest.schedule, guard(job),
                           first=None if missed is None else clock.time())


__all__ = ["DigestBuilder", "Report", "Section", "compose", "run_digest",
           "schedule_digests"]
