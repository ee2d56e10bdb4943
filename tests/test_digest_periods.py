"""Consecutive digests on a controlled clock tile time: over 21 dailies and 3 weeklies, the sums
of every section's numbers equal independent counts of what happened (posts, alerts, traffic,
service samples, backup runs), including events exactly on a period boundary."""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import random
from datetime import datetime, timedelta
from pathlib import Path

from alerts.digest import DigestBuilder, period_of
from alerts.engine import Event, Kind
from alerts.state import AlertStore, alerts_db_path
from collectors.backups import runs_path
from collectors.lists import ListsCollector
from monitor.config import parse_config
from monitor.model import Measurement, State
from monitor.status import StatusBook
from monitor.store import RrdStore

STEP = 300
SECTIONS = ["alerts", "traffic", "services", "power", "lists", "backups"]


def config_text(tmp_path: Path, log: Path, sections: list[str] = SECTIONS, more: str = "") -> str:
    """A daily and a weekly digest of `sections`; `more`: more tables ([smtp] ...)."""
    return f"""{more}
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "mon.example.net"
[storage]
archives = ["step:40d"]
[contacts]
admins = ["admin@example.net"]
[lists]
enabled = true
post_log = "{tmp_path / 'none'}"
smtp_log = "{log}"
list_members = "{tmp_path / 'none'}"
[[backups]]
name = "nightly"
[[digests]]
name = "daily"
schedule = "0 7 * * *"
sections = {sections!r}
graphs = false
[[digests]]
name = "weekly"
schedule = "0 8 * * 1"
sections = {sections!r}
graphs = false
"""


def mm3_line(at: float, name: str, sender: str, size: int, refused: int = 0) -> str:
    stamp = datetime.fromtimestamp(at).strftime("%b %d %H:%M:%S %Y")
    tail = f", {refused} failures" if refused else ""
    return (f"{stamp} (42) <{int(at)}.{size}@example.net> post to {name} from {sender}, "
            f"{size} bytes{tail}\n")


def test_consecutive_daily_and_weekly_digests_tile_time(tmp_path: Path):
    rng = random.Random(13)
    monday = datetime(2026, 11, 2, 8, 0)
    assert monday.weekday() == 0
    first = (monday - timedelta(days=1, hours=8)).timestamp()
    last = (monday + timedelta(days=22)).timestamp()
    state_dir = tmp_path / "data" / "state"
    log = tmp_path / "smtp.log"
    log.write_text("")
    config = parse_config(config_text(tmp_path, log))

    # Events at random times, and some exactly on the boundaries of both schedules.
    boundaries = [(monday + timedelta(days=d, hours=h)).timestamp()
                  for d in range(-1, 22) for h in (-1, 0)]
    def times(n: int) -> list[float]:
        return sorted([rng.uniform(first, last) for _ in range(n)] + rng.sample(boundaries, 6))

    # Traffic and one service, every 5 minutes; the service misses every 7th sample.
    store = RrdStore(tmp_path / "data" / "rrd", archives=config.storage.archives)
    stamps = list(range(int(first) // STEP * STEP + STEP, int(last), STEP))
    traffic = {t: float(rng.randrange(1000, 90_000)) for t in stamps}
    answers = {t: (None if i % 7 == 0 else 0.01 + (i % 5) / 100) for i, t in enumerate(stamps)}
    # The UPS runs on battery now and then, for 5 to 40 minutes, boundaries included.
    battery = {t: 0.0 for t in stamps}
    for outage, length in ((t, rng.randrange(1, 9) * STEP) for t in times(25)):
        for t in stamps:
            if outage <= t < outage + length:
                battery[t] = 1.0
    rows = []
    for t in stamps:
        rows += [Measurement("ups1", "ups", "on_battery", battery[t], timestamp=t),
                 Measurement("dmz-router", "eth0", "in_octets", traffic[t], timestamp=t),
                 Measurement("dmz-router", "eth0", "out_octets", traffic[t] / 2, timestamp=t),
                 Measurement("mail.example.net", "smtp", "response_seconds", answers[t],
                             timestamp=t)]
    assert not store.write(rows, STEP).errors

    posts = [(t, rng.choice(["users@lists.a", "users@lists.b"]), rng.randrange(300, 9000),
              rng.choice([0, 0, 0, 2])) for t in times(160)]
    notices = [(t, "users@lists.a") for t in times(20)]
    alert_times = times(90)
    alerts = AlertStore(alerts_db_path(state_dir))
    alerts.save([], [Event(Kind.FIRING, f"k{i}", "rule", "host", "check", State.WARNING, "m",
                           None, "", at, at, ()) for i, at in enumerate(alert_times)])
    runs = [dict(started=t - 600, finished=t, exit_status=rng.choice([0, 0, 1]),
                 duration_seconds=600, output_bytes=0, tail="")
            for t in sorted((monday + timedelta(days=d, hours=2, minutes=rng.randrange(-300, 400)))
                            .timestamp() for d in range(-1, 22))]
    runs_path(state_dir, "nightly").parent.mkdir(parents=True, exist_ok=True)
    runs_path(state_dir, "nightly").write_text(json.dumps({"version": 1, "runs": runs}))

    store = RrdStore(tmp_path / "data" / "rrd", archives=config.storage.archives)
    status = StatusBook(state_dir / "status.json")
    lines = sorted([(t, mm3_line(t, n, f"s{int(t) % 17}@example.org", size, refused))
                    for t, n, size, refused in posts]
                   + [(t, mm3_line(t, n, "users-bounces@lists.a", 1500)) for t, n in notices])
    digests = {d.name: d for d in config.digests}
    schedule = sorted(
        [(end, "daily") for end in ((monday + timedelta(days=d, hours=-1)).timestamp()
                                    for d in range(1, 22))]
        + [(end, "weekly") for end in ((monday + timedelta(weeks=w)).timestamp()
                                       for w in (1, 2, 3))])
    sums: dict[str, dict[str, float]] = {"daily": {}, "weekly": {}}
    spans: dict[str, list[tuple[float, float]]] = {"daily": [], "weekly": []}
    collector = ListsCollector(config.lists, 300, state_dir / "lists.json")
    written = 0
    for end, name in schedule:
        # Mailman writes its log as time goes by; the collector reads it now and then, and the
        # lines written since its last run are read by the digest itself.
        seen_at = end - rng.uniform(60, 5 * 3600)
        for cutoff in (seen_at, end):
            new = [text for t, text in lines[written:] if t < cutoff]
            with open(log, "a") as handle:
                handle.writelines(new)
            written += len(new)
            if cutoff == seen_at:
                collector.clock = lambda at=cutoff: at
                asyncio.run(collector.collect())
        # The scheduler runs the job a few seconds late; the period still ends at 07:00.
        report = DigestBuilder(config, store=store, status=status,
                               clock=lambda at=end: at + 7.5).build(digests[name])
        assert report.end == end
        spans[name].append((report.start, report.end))
        for section in report.sections:
            for key, value in section.totals.items():
                sums[name][f"{section.key}: {key}"] = sums[name].get(f"{section.key}: {key}",
                                                                     0) + value
    store.close()

    for name, periods in spans.items():
        # One period after the other, no gap, no overlap.
        assert all(a[1] == b[0] for a, b in itertools.pairwise(periods)), name
        start, end = periods[0][0], periods[-1][1]
        counted = [p for p in posts if start <= p[0] < end]
        expected = {
            "alerts: alerts": sum(1 for t in alert_times if start <= t < end),
            "lists: posts": len(counted),
            "lists: bytes": sum(p[2] for p in counted),
            "lists: failures": sum(1 for p in counted if p[3]),
            "traffic: dmz-router eth0 in": math.fsum(traffic[t] for t in stamps
                                                     if start < t <= end) * STEP,
            "traffic: dmz-router eth0 out": math.fsum(traffic[t] / 2 for t in stamps
                                                      if start < t <= end) * STEP,
            "services: smtp (mail.example.net) samples": sum(1 for t in stamps if start < t <= end),
            "power: ups1 on battery seconds": STEP * sum(battery[t] for t in stamps
                                                         if start < t <= end),
            "power: ups1 on battery flaps": 0,
            "services: smtp (mail.example.net) answered": sum(
                1 for t in stamps if start < t <= end and answers[t] is not None),
            "backups: runs": sum(1 for r in runs if start <= r["finished"] < end),
            "backups: failed": sum(1 for r in runs if start <= r["finished"] < end
                                   and r["exit_status"] != 0),
        }
        assert expected["lists: posts"] > 100 and expected["alerts: alerts"] > 50
        assert {k: round(v, 3) for k, v in sums[name].items()} == {
            k: round(v, 3) for k, v in expected.items()}, name


def test_period_rule():
    daily = period_of("0 7 * * *", datetime(2026, 11, 23, 7, 0, 3).timestamp())
    assert daily == (datetime(2026, 11, 22, 7).timestamp(), datetime(2026, 11, 23, 7).timestamp())
    # By hand in the afternoon: the last complete period.
    assert period_of("0 7 * * *", datetime(2026, 11, 23, 15).timestamp()) == daily
    weekly = period_of("0 8 * * 1", datetime(2026, 11, 23, 8).timestamp())  # a Monday
    assert weekly == (datetime(2026, 11, 16, 8).timestamp(), datetime(2026, 11, 23, 8).timestamp())
    # Weekdays only: Monday's digest covers the weekend.
    assert period_of("0 7 * * 1-5", datetime(2026, 11, 23, 9).timestamp())[0] == datetime(
        2026, 11, 20, 7).timestamp()


def test_availability_is_over_the_time_the_check_was_measured(tmp_path: Path):
    """An SMTP check that answered whenever it was measured is 100 % available, whatever the
    agent's own downtime; that downtime is shown apart."""
    end = datetime(2026, 11, 23, 7).timestamp()
    start = end - 86400
    config = parse_config(config_text(tmp_path, tmp_path / "smtp.log"))
    store = RrdStore(tmp_path / "data" / "rrd", archives=config.storage.archives)
    rows = []
    failures = {start + 3600 * h for h in (2, 3, 20)}
    for t in range(int(start) - 3600, int(end) + 3600, STEP):
        agent_up = not (start + 5 * 3600 < t <= start + 15 * 3600)  # down for 10 hours
        if agent_up:  # a down agent writes nothing at all
            rows += [Measurement("mail.example.net", "smtp", "response_seconds",
                                 None if t in failures else 0.02, timestamp=t),
                     Measurement("agent", "collector services", "run_seconds", 0.3, timestamp=t)]
    assert not store.write(rows, STEP).errors
    digest = next(d for d in config.digests if d.name == "daily")
    report = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "s.json"),
                           clock=lambda: end).build(digest)
    store.close()
    services = next(s for s in report.sections if s.key == "services")
    # rrdtool leaves the row of the first sample after a gap unknown: 10 h and one step.
    measured = 288 - 121
    assert services.totals["smtp (mail.example.net) samples"] == measured
    assert services.totals["smtp (mail.example.net) answered"] == measured - 3
    assert services.rows[0][1] == f"{100 * (measured - 3) / measured:.1f}% of samples"
    assert services.totals["agent down seconds"] == 10 * 3600 + STEP
    assert "The agent itself did not run for 10h5m of this period" in services.notes[0]


def _short_run(tmp_path: Path, polls: list[float], period: tuple[float, float],
               host_polls: tuple[float, ...] = ()):
    """A demo-like run of the agent on a 1-minute step: heartbeats, one service and one
    interface at each poll (the interface's first poll has no rate yet), and the host
    collector's heartbeat at `host_polls`, written through monitor.store, then the digest of
    `period`. The files are left as the agent leaves them: last changed at their last poll
    (set here, the samples being in the past)."""
    import os

    config = parse_config(config_text(tmp_path, tmp_path / "smtp.log"))
    store = RrdStore(tmp_path / "data" / "rrd", archives=config.storage.archives)
    for i, t in enumerate(polls):
        rate = None if i == 0 else 1000.0 * i
        assert not store.write([
            Measurement("agent", "collector services", "run_seconds", 0.3, timestamp=t),
            Measurement("mail.example.net", "smtp", "response_seconds", 0.02, timestamp=t),
            Measurement("dmz-router", "eth0", "in_octets", rate, timestamp=t),
            Measurement("dmz-router", "eth0", "out_octets", rate, timestamp=t)], 60).errors
    for t in host_polls:
        assert not store.write([Measurement("agent", "collector host", "run_seconds", 0.01,
                                            timestamp=t)], 60).errors
    for info in store.series():
        last = host_polls[-1] if info.instance == "collector host" else polls[-1]
        os.utime(info.path, (last, last))
    digest = next(d for d in config.digests if d.name == "daily")
    report = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "s.json"),
                           clock=lambda: period[1]).build(digest, period)
    store.close()
    return {s.key: s for s in report.sections}


def test_a_run_shorter_than_a_row_says_why_it_has_no_figures(tmp_path: Path):
    # `make demo` with DEMO_DURATION=45s: one poll (and the services' check before the run)
    # inside one minute; rrdtool writes that minute's row at the next poll, which never came.
    t = datetime(2026, 11, 23, 7, 0).timestamp()
    sections = _short_run(tmp_path, [t + 45, t + 51], (t + 50, t + 98))
    why = ("The last poll (07:00:51) came before the period's first 1m row ended (07:01:00): "
           "rrdtool writes a row at the first poll after it ends.")
    assert sections["traffic"].empty == f"No traffic data in this period yet. {why}"
    services = sections["services"]
    assert services.rows[0][:2] == ["smtp (mail.example.net)", "no complete row yet"]
    assert services.notes == [why]  # and no "the agent did not run"
    assert services.totals["agent down seconds"] == 0
    assert sections["lists"].empty == ("No complete hour in this period: posts are counted per "
                                       "hour, and 2026-11-23 07:00-08:00 is counted once it has "
                                       "ended.")


def test_rows_not_written_yet_are_no_downtime_of_the_agent(tmp_path: Path):
    # The default demo: polls at 51 s, 1m51s and 2m51s; the agent stops at 3m. The row up to
    # 07:01 has 9 s of data (unknown), the one up to 07:03 waits for a fourth poll.
    t = datetime(2026, 11, 23, 7, 0).timestamp()
    sections = _short_run(tmp_path, [t + 51, t + 111, t + 171], (t + 50, t + 181))
    note = ("Figures up to 07:02:00, the last complete 1m row: the 1m1s after it are written at "
            "the agent's next poll.")
    traffic, services = sections["traffic"], sections["services"]
    assert traffic.rows[0][0] == "dmz-router eth0" and traffic.notes == [note]
    # The row 07:01-07:02: 51 s at the second poll's rate (1000/s), 9 s at the third's.
    assert traffic.totals["dmz-router eth0 in"] == 51 * 1000.0 + 9 * 2000.0
    assert services.rows[0][1] == "100.0% of samples"
    # Before: the unwritten 1m1s counted as the agent's downtime ("did not run for 1m11s").
    assert services.totals["agent down seconds"] == 10  # 07:00:50 to the first poll's row
    assert services.notes == [note]


def test_a_row_the_service_file_has_not_written_is_no_failed_sample(tmp_path: Path):
    # Under load the agent stopped after the host collector's fourth poll but before the
    # service check's: the heartbeats say the agent ran in the row up to 07:03, the service's
    # file has that row still pending. Before: counted as a missed answer ("50.0%").
    t = datetime(2026, 11, 23, 7, 0).timestamp()
    sections = _short_run(tmp_path, [t + 51, t + 111, t + 171], (t + 50, t + 241),
                          host_polls=(t + 51, t + 111, t + 171, t + 232))
    services = sections["services"]
    assert services.rows[0][1] == "100.0% of samples"
    assert services.totals["smtp (mail.example.net) samples"] == 1  # the row up to 07:02
