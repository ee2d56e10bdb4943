"""Digests: a scheduled report mail ([[digests]]) built from what the agent already stores.

Sections read the check states (StatusBook), the alert history (AlertStore), the RRD files
(RrdStore.fetch, following the naming contract: any in_octets+out_octets series is traffic, any
response_seconds series a service, cert_expiry_days a certificate, "fs:*" a file system, target
"mailboxes" / "backups" the report collectors) and the list activity kept by the lists
collector. A section with nothing to say says so in one line.

The mail is multipart/alternative: plain text, and HTML (Jinja2, autoescaped: mailbox, list and
interface names come from outside) with small inline PNG graphs (multipart/related, CID). It
leaves through the alert outbox, so a relay outage delays it but never loses it.
"""

from __future__ import annotations

import datetime
import email.utils
import io
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import EmailMessage

import jinja2

from alerts.mail import clean_body, clean_header, make_message
from alerts.outbox import Outbox, outbox_path
from alerts.state import AlertStore, alerts_db_path
from monitor.config import Config, Digest
from monitor.model import State
from monitor.status import StatusBook
from monitor.store import RrdStore, SeriesInfo
from monitor.units import format_duration

log = logging.getLogger(__name__)

WEEK = 7 * 86400


@dataclass
class Section:
    key: str
    title: str
    columns: list[str] = field(default_factory=list)
    rows: list[list[str]] = field(default_factory=list)
    empty: str = "Nothing to report."
    notes: list[str] = field(default_factory=list)
    image: bytes | None = None
    image_cid: str = ""
    image_alt: str = ""


def fmt_bytes(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    step = 1024.0
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < step or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= step
    return f"{value:.1f} PiB"


def fmt_bits(octets_per_second: float | None) -> str:
    if octets_per_second is None:
        return "-"
    bits = octets_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if bits < 1000 or unit == "Gbit/s":
            return f"{bits:.1f} {unit}"
        bits /= 1000
    return f"{bits:.1f} Gbit/s"


def percentile(values: list[float], p: float) -> float | None:
    """The p-th percentile (nearest rank, as 95th-percentile billing uses)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[rank - 1]


def when(ts: float) -> str:
    return datetime.datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


class DigestBuilder:
    def __init__(self, config: Config, digest: Digest, *, store: RrdStore, status: StatusBook,
                 alerts: AlertStore, now: float) -> None:
        self.config = config
        self.digest = digest
        self.store = store
        self.status = status
        self.alerts = alerts
        self.now = now
        self.since = now - digest.period
        self._series: list[SeriesInfo] | None = None

    # -- data helpers ------------------------------------------------------------------------

    def series(self) -> list[SeriesInfo]:
        if self._series is None:
            self._series = self.store.series()
        return self._series

    def column(self, info: SeriesInfo, metric: str, start: float, end: float,
               cf: str = "AVERAGE") -> tuple[int, list[float]]:
        """(step, known values) of one metric over a period."""
        try:
            data = self.store.fetch(info.target, info.instance, start, end, cf=cf)
        except Exception as exc:  # a corrupt RRD file spoils one row, not the digest
            log.warning("digest: cannot read %s/%s: %s", info.target, info.instance, exc)
            return 0, []
        values = [v for v in data.columns.get(metric, []) if v is not None and not math.isnan(v)]
        return data.step, values

    def last(self, info: SeriesInfo, metric: str, at: float | None = None) -> float | None:
        end = self.now if at is None else at
        _, values = self.column(info, metric, end - max(4 * info.step, 7200), end, cf="AVERAGE")
        return values[-1] if values else None

    # -- sections ----------------------------------------------------------------------------

    def build(self) -> list[Section]:
        out = []
        for key in self.digest.sections:
            try:
                out.append(getattr(self, f"section_{key}")())
            except Exception as exc:  # one broken section must not cost the whole digest
                log.exception("digest %s: section %s failed", self.digest.name, key)
                out.append(Section(key, key.capitalize(), empty=f"This section could not be "
                                   f"built: {exc}"))
        return out

    def section_problems(self) -> Section:
        s = Section("problems", "Current problems", ["State", "Target", "Check", "Since", "Message"],
                    empty="No problems: every check is OK.")
        for c in self.status.all():
            if c.state is not State.OK:
                s.rows.append([c.state.name, c.target, c.check,
                               f"{format_duration(self.now - c.since)} ago", c.message])
        return s

    def section_alerts(self) -> Section:
        s = Section("alerts", f"Alerts of the last {format_duration(self.digest.period)}",
                    ["Time", "Event", "Rule", "Target", "Severity", "Message"],
                    empty="No alert events in this period.")
        history = self.alerts.history(self.since, self.now)
        for h in history[-50:]:
            s.rows.append([when(h.at), h.kind, h.rule, f"{h.target} {h.label}".strip(),
                           h.severity, h.message])
        if len(history) > 50:
            s.notes.append(f"{len(history) - 50} earlier event(s) not shown; `monitor alerts "
                           "--history` lists them all.")
        return s

    def section_traffic(self) -> Section:
        s = Section("traffic", "Traffic", ["Interface", "In total", "Out total", "In peak",
                                           "Out peak", "In 95th pct", "Out 95th pct"],
                    empty="No traffic series recorded in this period.")
        found = []
        for info in self.series():
            if "in_octets" in info.metrics and "out_octets" in info.metrics:
                row = []
                totals = []
                stats = []
                for metric in ("in_octets", "out_octets"):
                    step, values = self.column(info, metric, self.since, self.now)
                    totals.append(sum(values) * step)
                    _, peaks = self.column(info, metric, self.since, self.now, cf="MAX")
                    stats.append((max(peaks or values, default=None), percentile(values, 95)))
                if not any(totals):
                    continue
                row = [f"{info.target} {info.instance}", fmt_bytes(totals[0]),
                       fmt_bytes(totals[1]), fmt_bits(stats[0][0]), fmt_bits(stats[1][0]),
                       fmt_bits(stats[0][1]), fmt_bits(stats[1][1])]
                found.append((sum(totals), info, row))
        found.sort(key=lambda t: -t[0])
        s.rows = [row for _, _, row in found[:20]]
        if found and self.digest.graphs:
            info = found[0][1]
            data = self.store.fetch(info.target, info.instance, self.since, self.now)
            s.image = traffic_png(data.timestamps, data.columns.get("in_octets", []),
                                  data.columns.get("out_octets", []))
            s.image_alt = f"traffic of {info.target} {info.instance}"
        return s

    def section_services(self) -> Section:
        s = Section("services", "Services", ["Service", "State", "Answered", "Avg response",
                                             "Max response"],
                    empty="No service checks recorded in this period.")
        states = {(c.target, c.check): c for c in self.status.all()}
        for info in self.series():
            if "response_seconds" not in info.metrics:
                continue
            try:
                data = self.store.fetch(info.target, info.instance, self.since, self.now)
            except Exception as exc:
                log.warning("digest: cannot read %s/%s: %s", info.target, info.instance, exc)
                continue
            column = data.columns.get("response_seconds", [])
            # Count from the first answer on: a service added mid-period is not "down" before.
            first = next((i for i, v in enumerate(column) if v is not None), len(column))
            values = [v for v in column[first:] if v is not None]
            # The newest row is often still being filled: do not count it against the service.
            rows = max(1, len(column) - first - (1 if column and column[-1] is None else 0))
            current = states.get((info.target, info.instance))
            answered = f"{min(100.0, 100 * len(values) / rows):.1f}%"
            s.rows.append([f"{info.instance} on {info.target}",
                           current.state.name if current else "-", answered,
                           f"{sum(values) / len(values):.3f} s" if values else "-",
                           f"{max(values):.3f} s" if values else "-"])
        if s.rows:
            s.notes.append("Answered: share of the period's samples with a response.")
        return s

    def section_certificates(self) -> Section:
        s = Section("certificates", "Certificate expiry", ["Expires", "In", "Service"],
                    empty="No TLS certificates checked.")
        found = []
        for info in self.series():
            if "cert_expiry_days" in info.metrics:
                days = self.last(info, "cert_expiry_days")
                if days is not None:
                    found.append((days, info))
        for days, info in sorted(found, key=lambda t: t[0]):
            expires = datetime.date.fromtimestamp(self.now + days * 86400).isoformat()
            s.rows.append([expires, f"{days:.0f} days", f"{info.instance} on {info.target}"])
        return s

    def section_disks(self) -> Section:
        s = Section("disks", "Disks", ["File system", "Used", "Size", "Used %", "Change"],
                    empty="No file system usage recorded yet.")
        for info in self.series():
            if not info.instance.startswith("fs:") or "used_percent" not in info.metrics:
                continue
            used = self.last(info, "used_bytes")
            before = self.last(info, "used_bytes", self.since)
            change = "-" if used is None or before is None else (
                ("+" if used >= before else "-") + fmt_bytes(abs(used - before)))
            pct = self.last(info, "used_percent")
            if used is None and pct is None:
                continue  # no consolidated value yet
            s.rows.append([f"{info.instance[3:]} on {info.target}", fmt_bytes(used),
                           fmt_bytes(self.last(info, "size_bytes")),
                           f"{pct:.1f}%" if pct is not None else "-", change])
        return s

    def section_mailboxes(self) -> Section:
        s = Section("mailboxes", "Biggest mailboxes", ["Mailbox", "Size", "Messages",
                                                       "Growth in a week"],
                    empty="No mailbox sizes recorded (is [mailboxes] enabled?).")
        from collectors.mailboxes import load_snapshot

        infos = {i.instance: i for i in self.series()
                 if i.target == "mailboxes" and "size_bytes" in i.metrics}
        # Current sizes: the collector's last full scan (every mailbox), else the RRD files.
        boxes: list[tuple[float, str, float]] = []
        domains: list[tuple[float, str]] = []
        snap = load_snapshot(self.config.state_dir)
        if snap is not None:
            boxes = [(size, address, count) for address, size, count in snap["mailboxes"]]
            domains = [(v[0], d) for d, v in snap["domains"].items()]
        else:
            for instance, info in infos.items():
                size = self.last(info, "size_bytes")
                if size is None:
                    continue
                if instance.startswith("domain:"):
                    domains.append((size, instance[7:]))
                else:
                    boxes.append((size, instance, self.last(info, "messages") or 0))
        boxes.sort(key=lambda t: (-t[0], t[1]))
        for size, address, count in boxes[: self.digest.top]:
            info = infos.get(address)
            before = self.last(info, "size_bytes", self.now - WEEK) if info else None
            growth = "new" if before is None else (
                f"{'+' if size >= before else '-'}{fmt_bytes(abs(size - before))}"
                + (f" ({100 * (size - before) / before:+.0f}%)" if before else ""))
            s.rows.append([address, fmt_bytes(size), f"{count:.0f}", growth])
        for size, domain in sorted(domains, key=lambda t: (-t[0], t[1])):
            s.notes.append(f"{domain}: {fmt_bytes(size)} in total")
        if snap is not None and snap.get("errors"):
            s.notes.append(f"{len(snap['errors'])} mailbox(es) could not be read in the last "
                           "scan: " + ", ".join(sorted(snap["errors"])[:10]))
        if boxes and self.digest.graphs:
            top = boxes[:10]
            s.image = bars_png([a for _, a, _ in top], [v for v, _, _ in top])
            s.image_alt = "biggest mailboxes"
        return s

    def section_lists(self) -> Section:
        from collectors.lists import load_activity

        s = Section("lists", "Mailing list activity", ["List", "Posts", "Size", "Senders",
                                                       "Failed deliveries"],
                    empty="No list posts in this period.")
        first = datetime.date.fromtimestamp(self.since).isoformat()
        last = datetime.date.fromtimestamp(self.now).isoformat()
        totals: dict[str, list[int]] = {}
        for day, lists in load_activity(self.config.state_dir).items():
            if first <= day <= last:
                for name, v in lists.items():
                    t = totals.setdefault(name, [0, 0, 0, 0])
                    for i, k in enumerate(("posts", "bytes", "senders", "failures")):
                        t[i] += v[k]
        for name, (posts, size, senders, failures) in sorted(totals.items(),
                                                             key=lambda kv: -kv[1][0]):
            s.rows.append([name, str(posts), fmt_bytes(size), str(senders), str(failures)])
        if s.rows:
            s.notes.append(f"Days {first} to {last}; senders are distinct per day.")
        return s

    def section_backups(self) -> Section:
        s = Section("backups", "Backups", ["Job", "State", "Result"],
                    empty="No backup jobs configured.")
        for c in self.status.all():
            if c.target == "backups" and c.check.startswith("backup "):
                s.rows.append([c.check[7:], c.state.name, c.message])
        s.rows.sort(key=lambda r: r[0])
        return s


# -- graphs ----------------------------------------------------------------------------------


def _figure():
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    return Figure(figsize=(6, 2.2), dpi=80)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def traffic_png(timestamps: list[int], inbound: list, outbound: list) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    times = [datetime.datetime.fromtimestamp(t) for t in timestamps]
    for values, label in ((inbound, "in"), (outbound, "out")):
        ax.plot(times, [v * 8 if v is not None else float("nan") for v in values], label=label)
    ax.set_ylabel("bit/s")
    ax.legend(loc="upper left", fontsize=8)
    ax.tick_params(labelsize=7)
    fig.autofmt_xdate()
    return _png(fig)


def bars_png(labels: list[str], values: list[float]) -> bytes:
    fig = _figure()
    ax = fig.add_subplot()
    ax.barh(range(len(values)), [v / 2**20 for v in values])
    ax.set_yticks(range(len(values)), [label[:30] for label in labels], fontsize=7)
    ax.invert_yaxis()
    ax.set_xlabel("MiB", fontsize=8)
    return _png(fig)


# -- rendering -------------------------------------------------------------------------------

_HTML = """<!DOCTYPE html>
<html><head><meta charset="utf-8"><title>{{ title }}</title></head>
<body style="font-family: sans-serif; font-size: 14px; color: #222;">
<h1 style="font-size: 18px;">{{ title }}</h1>
<p>{{ period }}</p>
{% for s in sections %}
<h2 style="font-size: 16px; border-bottom: 1px solid #ccc;" id="{{ s.key }}">{{ s.title }}</h2>
{% if s.rows %}
<table cellpadding="3" cellspacing="0" border="1" style="border-collapse: collapse; font-size: 13px;">
<tr>{% for c in s.columns %}<th align="left" bgcolor="#eeeeee">{{ c }}</th>{% endfor %}</tr>
{% for row in s.rows %}<tr>{% for cell in row %}
<td{% if cell in states %} bgcolor="{{ states[cell] }}"{% endif %}>{{ cell }}</td>
{% endfor %}</tr>
{% endfor %}</table>
{% else %}<p><i>{{ s.empty }}</i></p>{% endif %}
{% for n in s.notes %}<p style="font-size: 12px; color: #555;">{{ n }}</p>{% endfor %}
{% if s.image_cid %}<p><img src="cid:{{ s.image_cid }}" alt="{{ s.image_alt }}" width="480"></p>{% endif %}
{% endfor %}
<p style="font-size: 11px; color: #777;">Sent by monitor on {{ host }}.</p>
</body></html>
"""

_STATE_COLOURS = {"WARNING": "#fff3b0", "CRITICAL": "#ffc9c9", "UNKNOWN": "#e0d4ff",
                  "OK": "#d3f9d8"}


def render_text(title: str, period: str, sections: list[Section]) -> str:
    lines = [title, "=" * len(title), period, ""]
    for s in sections:
        lines += [s.title, "-" * len(s.title)]
        if not s.rows:
            lines.append(s.empty)
        else:
            widths = [min(40, max(len(c), *(len(r[i]) for r in s.rows)))
                      for i, c in enumerate(s.columns)]
            lines.append("  ".join(c.ljust(w) for c, w in zip(s.columns, widths, strict=True)).rstrip())
            for row in s.rows:
                cells = [cell.ljust(w) if i < len(row) - 1 else cell
                         for i, (cell, w) in enumerate(zip(row, widths, strict=True))]
                lines.append("  ".join(cells).rstrip())
        lines += s.notes
        lines.append("")
    return "\n".join(lines)


def build_message(config: Config, digest: Digest, sections: list[Section], now: float,
                  since: float) -> EmailMessage:
    recipients: list[str] = []
    for group in digest.recipients:
        for address in config.contacts.get(group, []):
            if address not in recipients:
                recipients.append(address)
    host = config.agent.hostname
    problems = next((len(s.rows) for s in sections if s.key == "problems"), None)
    title = digest.subject or f"{digest.name} digest for {host}"
    subject = f"[monitor] {title}" + (f": {problems} problem(s)" if problems else "")
    period = f"{when(since)} to {when(now)}"
    text = render_text(clean_header(title), f"Period: {period}", sections)
    msg = make_message(sender=config.smtp.sender, to=recipients, subject=subject, body=text,
                       headers={"X-Monitor-Digest": digest.name}, date=now)
    domain = config.smtp.sender.rpartition("@")[2] or "localhost"
    for s in sections:
        if s.image:
            s.image_cid = email.utils.make_msgid(f"{s.key}-graph", domain=domain)[1:-1]
    env = jinja2.Environment(autoescape=True, undefined=jinja2.StrictUndefined)
    html = env.from_string(_HTML).render(title=clean_header(title), period=f"Period: {period}",
                                         sections=sections, host=host, states=_STATE_COLOURS)
    msg.add_alternative(clean_body(html), subtype="html")
    html_part = msg.get_payload()[1]
    for s in sections:
        if s.image:
            html_part.add_related(s.image, maintype="image", subtype="png",
                                  cid=f"<{s.image_cid}>", filename=f"{s.key}.png",
                                  disposition="inline")
    return msg


def find_digest(config: Config, name: str) -> Digest:
    for digest in config.digests:
        if digest.name == name:
            return digest
    known = ", ".join(d.name for d in config.digests) or "none configured"
    raise ValueError(f"no digest named {name!r} in {config.source} (digests: {known})")


def make_digest(config: Config, name: str, *, store: RrdStore, status: StatusBook,
                now: float | None = None) -> EmailMessage:
    digest = find_digest(config, name)
    now = time.time() if now is None else now
    builder = DigestBuilder(config, digest, store=store, status=status,
                            alerts=AlertStore(alerts_db_path(config.state_dir)), now=now)
    return build_message(config, digest, builder.build(), now, builder.since)


async def send_digest(config: Config, name: str, *, store: RrdStore, status: StatusBook,
                      outbox: Outbox | None = None,
                      clock: Callable[[], float] = time.time) -> int:
    """Build the digest and hand it to the outbox (durable), then try to deliver at once."""
    import asyncio

    msg = await asyncio.to_thread(make_digest, config, name, store=store, status=status,
                                  now=clock())
    outbox = outbox or Outbox(outbox_path(config.state_dir), config.smtp)
    entry = outbox.enqueue(msg)
    log.info("digest %s queued for %s (outbox #%d)", name, msg["To"], entry)
    await outbox.deliver_pending()
    return entry


def open_store(config: Config) -> RrdStore:
    return RrdStore(config.rrd_dir, archives=config.storage.archives,
                    consolidations=config.storage.consolidations,
                    rrdcached=config.storage.rrdcached)


async def run_digest(config: Config, name: str, *, dry_run: bool = False) -> int:
    """`monitor digest NAME [--dry-run]`."""
    find_digest(config, name)
    store = open_store(config)
    status = StatusBook(config.state_dir / "status.json")
    try:
        if dry_run:
            msg = make_digest(config, name, store=store, status=status)
            print(msg.as_string())
            return 0
        outbox = Outbox(outbox_path(config.state_dir), config.smtp)
        entry = await send_digest(config, name, store=store, status=status, outbox=outbox)
        state = next((e for e in outbox.entries() if e.id == entry), None)
        if state is not None and state.status != "sent":
            print(f"digest {name} queued (outbox #{entry}, {state.status}): the relay "
                  f"{config.smtp.host}:{config.smtp.port} did not take it yet; the agent retries "
                  "(see `monitor alerts`)")
        else:
            print(f"digest {name} sent (outbox #{entry})")
        return 0
    finally:
        store.close()
