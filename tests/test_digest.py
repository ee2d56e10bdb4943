"""Digests built from real RRD files, the status book and report state, sent to a real aiosmtpd."""

from __future__ import annotations

import email
import email.policy
import math
import subprocess
import time
from datetime import datetime
from pathlib import Path

from alerts.digest import period_of, run_digest
from collectors.lists import ListsState, ListStats, save_state
from collectors.mailboxes import MailboxSize, ScanResult, record_scan
from graphs.stats import percentile
from monitor.config import parse_config
from monitor.model import CheckResult, Measurement, State
from monitor.status import StatusBook
from monitor.store import RrdStore
from tests.conftest import MONITOR
from tests.smtp_helpers import Recorder, start_smtp

EVIL = "<script>alert(1)</script>@evil.example"
SECTIONS = ["problems", "alerts", "traffic", "services", "certificates", "disks", "mailboxes",
            "lists", "backups"]


def make_config(tmp_path: Path, port: int, sections=SECTIONS) -> str:
    return f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "mon.example.net"
[smtp]
host = "127.0.0.1"
port = {port}
from = "monitor@example.net"
[contacts]
admins = ["admin@example.net", "noc@example.net"]
hotline = ["hotline@example.net"]
[[backups]]
name = "nightly"
[[digests]]
name = "daily"
schedule = "0 7 * * *"
recipients = ["admins"]
sections = {sections!r}
[[digests]]
name = "weekly-hotline"
schedule = "0 8 * * 1"
recipients = ["hotline"]
sections = ["mailboxes"]
"""


def fill(tmp_path: Path, now: float) -> None:
    """Eight days of 5-minute samples in real RRD files, a status book and list counts."""
    store = RrdStore(tmp_path / "data" / "rrd")
    start = int(now - 8 * 86400) // 300 * 300
    rows = []
    for i, ts in enumerate(range(start, int(now), 300)):
        wave = 1 + math.sin(i / 30)
        rows += [
            Measurement("dmz-router", "eth0", "in_octets", 100_000 * wave, timestamp=ts),
            Measurement("dmz-router", "eth0", "out_octets", 50_000 * wave, timestamp=ts),
            Measurement("mail.example.net", "smtp", "response_seconds",
                        None if i % 10 == 0 else 0.05 * wave, timestamp=ts),
            Measurement("www.example.net", "https", "cert_expiry_days", 20 - i / 288, timestamp=ts),
            Measurement("mon.example.net", "fs:/var", "used_percent", 70 + i / 200, timestamp=ts),
            Measurement("mon.example.net", "fs:/var", "used_bytes", 7e9 + i * 1e6, timestamp=ts),
            Measurement("mon.example.net", "fs:/var", "free_bytes", 3e9 - i * 1e6, timestamp=ts),
            Measurement("mailboxes", "alice@example.net", "size_bytes", 1e9 + i * 1e6, timestamp=ts),
            Measurement("mailboxes", "alice@example.net", "messages", 5000 + i, timestamp=ts),
            Measurement("mailboxes", EVIL, "size_bytes", 5e8, timestamp=ts),
            Measurement("mailboxes", "domain:example.net", "size_bytes", 2e9 + i * 1e6,
                        timestamp=ts),
        ]
        if i > 288 * 6:  # a mailbox that appeared two days ago
            rows.append(Measurement("mailboxes", "new@example.net", "size_bytes", 2e6, timestamp=ts))
    report = store.write(rows, 300)
    assert not report.errors
    store.close()
    status = StatusBook(tmp_path / "data" / "state" / "status.json")
    status.update([
        CheckResult("mail.example.net", "smtp", State.OK, "SMTP answered 220", timestamp=now),
        CheckResult("backups", "backup nightly", State.CRITICAL,
                    "backup nightly: failed 2 h ago with exit status 23: rsync: <refused>",
                    timestamp=now - 7200),
    ])
    status.save()
    # The mailboxes collector's history: a scan a day for 8 days, then the latest one.
    history = tmp_path / "data" / "state" / "mailboxes.json"
    for k in range(8, -1, -1):
        boxes = [MailboxSize("alice@example.net", "example.net", "/x", "maildir",
                             int(1e9 + (8 - k) * 288e6), 5000 + (8 - k) * 288),
                 MailboxSize(EVIL, "evil.example", "/y", "maildir", int(5e8), 10)]
        if k <= 2:  # a mailbox that appeared two days ago
            boxes.append(MailboxSize("new@example.net", "example.net", "/z", "maildir",
                                     int(2e6), 3))
        record_scan(history, ScanResult(mailboxes=boxes), now - k * 86400, None)
    _, end = period_of("0 7 * * *", now)  # the daily digest's period
    hour = int(end - 3 * 3600) // 3600 * 3600
    state = ListsState(hours={hour: {"announce": ListStats(3, 12345, {"a@x", "b@x"}, 1, 2)}},
                       subscribers={"announce": 812, "users": 40})
    save_state(tmp_path / "data" / "state" / "lists.json", state)


async def test_digest_sent_through_outbox_to_real_smtp(tmp_path: Path):
    recorder = Recorder()
    server, port = await start_smtp(recorder)
    try:
        config = parse_config(make_config(tmp_path, port))
        now = time.time()
        fill(tmp_path, now)
        await run_digest(config, "daily")
    finally:
        server.close()
    (received,) = recorder.received
    assert sorted(received.recipients) == ["admin@example.net", "noc@example.net"]
    msg = received.message
    assert "daily digest" in str(msg["Subject"]) and "1 problem(s)" in str(msg["Subject"])
    assert msg.get_content_type() == "multipart/alternative"
    plain, related = msg.get_payload()
    assert plain.get_content_type() == "text/plain"
    assert related.get_content_type() == "multipart/related"
    text = plain.get_content()
    for title in ("Current problems", "Alerts of the period", "DMZ traffic", "Services",
                  "Certificate expiry calendar", "Disks", "Biggest mailboxes",
                  "Mailing list activity", "Backup results"):
        assert title in text
    # The backup failure is listed once, under "Backup results", and counted once.
    assert "backups backup nightly" not in text and text.count("exit status 23") == 1
    assert "nightly  CRITICAL" in text and "1 backup problem(s): see Backup results." in text
    assert "dmz-router eth0" in text and "95th" in text
    assert "% of samples" in text
    assert "www.example.net" in text and "(renew!)" in text
    assert "alice@example.net" in text and "new (no size a week ago)" in text
    assert "announce  3" in text and "812" in text
    assert "No alert history" in text  # the alerts database does not exist here
    html_part = related.get_payload()[0]
    html = html_part.get_content()
    assert "<script>" not in html and "&lt;script&gt;" in html
    assert "rsync: &lt;refused&gt;" in html
    images = [p for p in related.get_payload()[1:] if p.get_content_type() == "image/png"]
    assert len(images) >= 3  # traffic, response time, disk
    for image in images:
        cid = image["Content-ID"].strip("<>")
        assert f'src="cid:{cid}"' in html
        assert image.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    # Week-over-week growth of alice: about 2016 samples x 1 MB.
    line = next(line for line in text.splitlines() if line.startswith("alice@example.net"))
    assert "+1.9 GiB" in line or "+1.8 GiB" in line


async def test_empty_sections_say_so_and_weekly_hotline(tmp_path: Path):
    recorder = Recorder()
    server, port = await start_smtp(recorder)
    try:
        config = parse_config(make_config(tmp_path, port))
        await run_digest(config, "daily")
        fill(tmp_path, time.time())
        await run_digest(config, "weekly-hotline")
    finally:
        server.close()
    first, weekly = recorder.received
    text = first.message.get_payload()[0].get_content()
    for note in ("None: every check is OK.", "No traffic data in this period.",
                 "No service checks recorded", "No TLS certificates are checked.",
                 "No disk usage data.", "No mailbox sizes recorded", "No list activity recorded",
                 "not checked yet"):
        assert note in text
    assert weekly.recipients == ["hotline@example.net"]
    weekly_text = weekly.message.get_payload()[0].get_content()
    assert "Biggest mailboxes" in weekly_text and "DMZ traffic" not in weekly_text
    assert weekly_text.index("alice@example.net") < weekly_text.index("evil.example")


def test_dry_run_prints_the_message_and_sends_nothing(tmp_path: Path):
    (tmp_path / "config.toml").write_text(make_config(tmp_path, 9, ["problems", "backups"]))
    result = subprocess.run([*MONITOR, "--config", str(tmp_path / "config.toml"), "digest", "daily",
                             "--dry-run"], capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr
    msg = email.message_from_bytes(result.stdout, policy=email.policy.default)
    assert msg["To"] == "admin@example.net, noc@example.net"
    assert msg.get_content_type() == "multipart/alternative"
    assert not (tmp_path / "data" / "state" / "outbox.db").exists()
    recent = subprocess.run([*MONITOR, "--config", str(tmp_path / "config.toml"), "digest",
                             "daily", "--dry-run", "--last", "3h"], capture_output=True, timeout=60)
    assert recent.returncode == 0, recent.stderr
    body = email.message_from_bytes(recent.stdout, policy=email.policy.default).get_body(
        ("plain",)).get_content()
    starts = {time.strftime("%Y-%m-%d %H:%M", time.localtime(time.time() - 3 * 3600 - lag))
              for lag in (0, 60)}  # the minute may turn while the command runs
    assert any(start in body for start in starts), body[:300]
    bad = subprocess.run([*MONITOR, "--config", str(tmp_path / "config.toml"), "digest", "nope"],
                         capture_output=True, timeout=60)
    assert bad.returncode == 2 and b"no digest named 'nope'" in bad.stderr


def test_percentile_nearest_rank():
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 95) is None


def test_digest_config_errors():
    import pytest

    from monitor.config import ConfigError

    with pytest.raises(ConfigError, match="unknown contact group 'ops'"):
        parse_config('[[digests]]\nname = "d"\nrecipients = ["ops"]\n')
    with pytest.raises(ConfigError, match="cron expression"):
        parse_config('[contacts]\nadmins = ["a@b.c"]\n[[digests]]\nname = "d"\nschedule = "daily"\n')


def test_untrusted_names_are_cleaned_and_bounded(tmp_path: Path):
    """A mailbox directory name with newlines, an interface name with a bidi override and a
    300-character name reach no mail body raw."""
    from alerts.digest import DigestBuilder, render_text
    from collectors.mailboxes import scan_spools

    spool = tmp_path / "vhosts" / "example.net"
    evil_user = "bob\n[OK] www.example.net https recovered\n[OK] db recovered"
    for sub in ("cur", "new", "tmp"):
        (spool / evil_user / sub).mkdir(parents=True)
    ((spool / evil_user / "cur") / "1700000000.M1P1.mx,S=1234:2,S").write_bytes(b"x" * 1234)
    (box,) = scan_spools([f"{tmp_path}/vhosts/{{domain}}/{{user}}"]).mailboxes
    assert "\n" not in box.address and box.address.startswith("bob [OK] www.example.net")

    now = time.time()
    _, end = period_of("0 7 * * *", now)
    store = RrdStore(tmp_path / "data" / "rrd")
    bidi, long_name = "Gi\u202e0/0/3gnp.exe", "x" * 300
    rows = []
    for ts in range(int(end) - 86400 + 300, int(end) + 1, 300):
        for name in (bidi, long_name):
            rows += [Measurement("dmz-router", name, "in_octets", 1000.0, timestamp=ts),
                     Measurement("dmz-router", name, "out_octets", 500.0, timestamp=ts)]
        rows.append(Measurement("mailboxes", box.address, "size_bytes", 1234, timestamp=ts))
    assert not store.write(rows, 300).errors
    config = parse_config(make_config(tmp_path, 9, ["traffic", "mailboxes"]))
    digest = next(d for d in config.digests if d.name == "daily")
    report = DigestBuilder(config, store=store, status=StatusBook(tmp_path / "s.json"),
                           clock=lambda: now).build(digest)
    store.close()
    text = render_text(report)
    assert "\u202e" not in text and "Gi 0/0/3gnp.exe" in text
    assert not any(line.startswith("[OK]") for line in text.splitlines())
    traffic = text[text.index("DMZ traffic"):text.index("Biggest mailboxes")]
    assert max(len(line) for line in traffic.splitlines()) < 160


async def test_weekly_hotline_mail_speaks_of_mailboxes_from_the_latest_scan(tmp_path: Path):
    """Sizes of the latest scan for every mailbox (not only the RRD top), quota and % of quota
    from maildirsize (those nearest the limit first), growth for a mailbox outside the top,
    a subject about mailboxes only."""
    from alerts.digest import DigestBuilder, render_text, subject_of
    from collectors.mailboxes import MailboxesCollector, history_path
    from monitor.config import MailboxesConfig
    from tests.test_mailboxes import make_maildir

    spool = tmp_path / "vhosts" / "example.net"
    kib = 1024
    make_maildir(spool / "full", [100 * kib] * 9)  # 900 KiB of a 1 MiB quota
    (spool / "full" / "maildirsize").write_text(f"{1024 * kib}S,0C\n921600 9\n")
    make_maildir(spool / "big", [2048 * kib] * 3)  # 6 MiB, no quota
    make_maildir(spool / "grower", [600 * kib])  # 0.6 MiB now; 32.9 MiB in a week
    cfg = MailboxesConfig(enabled=True, paths=[tmp_path / "vhosts" / "{domain}" / "{user}"],
                          top=1)
    state_dir = tmp_path / "data" / "state"
    monday = datetime(2026, 11, 23, 8).timestamp()
    clock = [monday - 7 * 86400 - 3600]
    collector = MailboxesCollector(cfg, 900, clock=lambda: clock[0],
                                   history_path=history_path(state_dir))
    for day in range(8):
        if day == 7:
            make_maildir(spool / "grower", [600 * kib, *[1100 * kib] * 30])  # 32.8 MiB more
        clock[0] = monday - (7 - day) * 86400 - 3600
        batch = await collector.collect()
    assert [m.instance for m in batch.measurements if m.metric == "size_bytes"
            and "@" in m.instance] == ["grower@example.net"]  # RRD: the top 1 only (a week
    # ago that was big@: grower's growth comes from the history of every mailbox)
    config = parse_config(make_config(tmp_path, 9))
    status = StatusBook(state_dir / "status.json")
    status.update([CheckResult("backups", "backup nightly", State.CRITICAL, "failed",
                               timestamp=monday)])
    weekly = next(d for d in config.digests if d.name == "weekly-hotline")
    report = DigestBuilder(config, store=RrdStore(tmp_path / "data" / "rrd"), status=status,
                           clock=lambda: monday + 5).build(weekly)
    assert "problem" not in subject_of(report)  # the backup failure is not this mail's
    text = render_text(report)
    rows = [line for line in text.splitlines() if "@example.net" in line]
    assert rows[0].startswith("full@example.net") and "1.0 MiB" in rows[0] and "88%" in rows[0]
    grower = next(line for line in rows if line.startswith("grower@"))
    assert "32.8 MiB" in grower and "31" in grower and "+32.2 MiB" in grower
    big = next(line for line in rows if line.startswith("big@"))
    assert "6.0 MiB" in big and " 3 " in big
    mailboxes = next(s for s in report.sections if s.key == "mailboxes")
    assert sum(1 for image in mailboxes.images if image is not None) == 3


def test_digest_formats_with_the_shared_helpers_and_shadows_no_module():
    """One byte formatter (monitor.units) and one "known values" helper (graphs.stats) for
    every section, and no local name hiding an imported module (`stats` in section_lists)."""
    import ast

    import alerts.digest
    from monitor.units import format_bytes

    tree = ast.parse(Path(alerts.digest.__file__).read_text())
    own = {node.name for node in tree.body if isinstance(node, ast.FunctionDef)}
    assert not own & {"fmt_bytes", "fmt_bits", "_known"}
    imported = {alias.asname or alias.name.partition(".")[0] for node in tree.body
                if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names}
    shadowing = sorted(
        f"{func.name}: {node.id}" for func in ast.walk(tree) if isinstance(func, ast.FunctionDef)
        for node in ast.walk(func)
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and node.id in imported)
    assert shadowing == []
    assert (format_bytes(-1536), format_bytes(None), format_bytes(3 * 2**30)) == (
        "-1.5 KiB", "-", "3.0 GiB")
