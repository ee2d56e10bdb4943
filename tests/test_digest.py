"""Digests: built from real RRD files, check states and alert history, mailed to aiosmtpd."""

from __future__ import annotations

import asyncio
import datetime
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alerts.digest import make_digest, percentile, send_digest
from alerts.engine import Event, Kind
from alerts.outbox import Outbox, outbox_path
from alerts.state import AlertStore, alerts_db_path
from collectors.lists import PostLog, state_path
from collectors.mailboxes import MailboxesCollector
from monitor.config import ConfigError, MailboxesConfig, load_config
from monitor.model import CheckResult, Measurement, State
from monitor.status import StatusBook
from monitor.store import RrdStore
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_reports import make_tree

HOSTILE = "<script>alert(1)</script>@evil.example"


def write_config(tmp_path: Path, port: int = 2525, extra: str = "") -> Path:
    path = tmp_path / "config.toml"
    path.write_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "gw.example.net"
[smtp]
host = "127.0.0.1"
port = {port}
from = "monitor@example.net"
timeout = "5s"
[contacts]
admins = ["root@example.net"]
hotline = ["hotline@example.net", "boss@example.net"]
[[digests]]
name = "daily-admin"
schedule = "0 7 * * *"
recipients = ["admins"]
[[digests]]
name = "weekly-hotline"
schedule = "0 8 * * mon"
recipients = ["hotline"]
sections = ["mailboxes"]
top = 20
period = "7d"
subject = "Biggest mailboxes"
{extra}
""")
    return path


def populate(config, now: float) -> None:
    """Two hours of traffic, a service with a certificate, a file system, mailboxes now and a
    week ago, checks (one CRITICAL), an alert event, a backup result and list posts."""
    store = RrdStore(config.rrd_dir, archives=config.storage.archives,
                     consolidations=config.storage.consolidations)
    t0 = int(now) // 300 * 300 - 7200
    for i in range(25):
        t = t0 + i * 300
        store.write([
            Measurement("dmz-router", "ge-0/0/1", "in_octets", 1000.0 * (i + 1), timestamp=t),
            Measurement("dmz-router", "ge-0/0/1", "out_octets", 500.0, timestamp=t),
            Measurement("mail.example.net", "smtp", "response_seconds", 0.1 + i / 100, timestamp=t),
            Measurement("mail.example.net", "smtp", "cert_expiry_days", 12.0, timestamp=t),
            Measurement("gw.example.net", "fs:/var", "used_bytes", 1e9 + i * 1e6, timestamp=t),
            Measurement("gw.example.net", "fs:/var", "size_bytes", 4e9, timestamp=t),
            Measurement("gw.example.net", "fs:/var", "used_percent", 25.0, timestamp=t),
        ], 300)
    week = int(now) // 3600 * 3600 - 7 * 86400
    boxes = {"alice@example.net": (200e6, 300e6), HOSTILE: (None, 50e6),
             "domain:example.net": (200e6, 350e6)}
    for t, column in ((week - 7200, 0), (week - 3600, 0), (week, 0),
                      (now - 7200, 1), (now - 3600, 1), (now, 1)):
        store.write([Measurement("mailboxes", box, "size_bytes", sizes[column], timestamp=t)
                     for box, sizes in boxes.items() if sizes[column] is not None]
                    + [Measurement("mailboxes", "alice@example.net", "messages", 1234,
                                   timestamp=t)], 3600)
    store.close()
    status = StatusBook(config.state_dir / "status.json")
    status.update([
        CheckResult("mail.example.net", "smtp", State.CRITICAL,
                    "SMTP mail.example.net:25 answered 554 instead of 220", timestamp=now - 600),
        CheckResult("backups", "backup nightly", State.OK, "backup nightly OK 5 h ago: exited 0",
                    timestamp=now),
        CheckResult("dmz-router", "snmp", State.OK, "fine", timestamp=now),
    ])
    status.save()
    event = Event(Kind.FIRING, "k", "service-down", "mail.example.net", "smtp", State.CRITICAL,
                  "smtp is CRITICAL", None, "", now - 600, now - 600, ("admins",))
    AlertStore(alerts_db_path(config.state_dir)).save([], [event])
    log = config.state_dir / "post"
    day = datetime.datetime.fromtimestamp(now).strftime("%b %d %H:%M:%S %Y")
    log.write_text(f"{day} (1) post to announce from a@example.net, size=2000, success\n"
                   f"{day} (1) post to announce from b@example.net, size=3000, 1 failure\n")
    PostLog(log, state_path(config.state_dir, log)).update()


def parts(msg):
    return {part.get_content_type(): part for part in msg.walk()}


async def test_digest_sent_through_outbox_to_smtp(tmp_path: Path) -> None:
    rec = Recorder()
    server, port = await start_smtp(rec)
    try:
        config = load_config(write_config(tmp_path, port))
        now = time.time()
        populate(config, now)
        store = RrdStore(config.rrd_dir)
        status = StatusBook(config.state_dir / "status.json")
        outbox = Outbox(outbox_path(config.state_dir), config.smtp)
        await send_digest(config, "daily-admin", store=store, status=status, outbox=outbox,
                          clock=lambda: now)
        store.close()
    finally:
        server.close()
    [received] = rec.received
    assert received.recipients == ["root@example.net"]
    msg = received.message
    assert msg["Subject"] == "[monitor] daily-admin digest for gw.example.net: 1 problem(s)"
    assert msg["X-Monitor-Digest"] == "daily-admin"
    assert msg.get_content_type() == "multipart/alternative"
    p = parts(msg)
    text = p["text/plain"].get_content()
    html = p["text/html"].get_content()
    for title in ("Current problems", "Alerts of the last 1d", "Traffic", "Services",
                  "Certificate expiry", "Disks", "Biggest mailboxes", "Mailing list activity",
                  "Backups"):
        assert title in text and title in html
    assert "SMTP mail.example.net:25 answered 554 instead of 220" in text
    assert "smtp is CRITICAL" in text
    assert "dmz-router ge-0/0/1" in text and "95th" in text
    assert "12 days  smtp on mail.example.net" in text
    assert "/var on gw.example.net" in text
    assert "announce  2      4.9 KiB  2        1" in text
    assert "nightly  OK" in text
    # Week-over-week growth: 200 MB -> 300 MB is +50%; the mailbox without history is new.
    alice = next(line for line in text.splitlines() if line.startswith("alice@example.net"))
    assert "+95.4 MiB (+50%)" in alice
    assert HOSTILE in text and "new" in text.split(HOSTILE)[1].splitlines()[0]
    assert "<script>" not in html and "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert "example.net: 333.8 MiB in total" in text
    # Inline images: a PNG for each graph, referenced by the HTML through its Content-ID.
    images = [part for part in msg.walk() if part.get_content_type() == "image/png"]
    assert len(images) == 2
    for image in images:
        cid = image["Content-ID"].strip("<>")
        assert f'src="cid:{cid}"' in html
        assert image.get_content()[:8] == b"\x89PNG\r\n\x1a\n"
    related = next(part for part in msg.walk() if part.get_content_type() == "multipart/related")
    assert related.get_payload()[0].get_content_type() == "text/html"


def test_weekly_hotline_and_empty_sections(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    store = RrdStore(config.rrd_dir)
    status = StatusBook(config.state_dir / "status.json")
    msg = make_digest(config, "weekly-hotline", store=store, status=status)
    assert msg["To"] == "hotline@example.net, boss@example.net"
    assert msg["Subject"] == "[monitor] Biggest mailboxes"
    text = parts(msg)["text/plain"].get_content()
    assert "No mailbox sizes recorded" in text and "Traffic" not in text
    msg = make_digest(config, "daily-admin", store=store, status=status)
    text = parts(msg)["text/plain"].get_content()
    # A real scan: the digest lists every mailbox of it (not only the top N kept in RRD).
    make_tree(tmp_path / "spool", domains=2, users=30)
    settings = MailboxesConfig(enabled=True, root=tmp_path / "spool", top=2)
    result = asyncio.run(MailboxesCollector(settings, state_dir=config.state_dir).collect())
    assert result.checks[0].state is State.OK
    hotline = make_digest(config, "weekly-hotline", store=store, status=status)
    rows = [line for line in parts(hotline)["text/plain"].get_content().splitlines()
            if "@d" in line]
    assert len(rows) == 20 and all(line.rstrip().endswith("new") for line in rows)
    assert len([p for p in hotline.walk() if p.get_content_type() == "image/png"]) == 1
    for empty in ("No problems: every check is OK.", "No alert events in this period.",
                  "No traffic series recorded", "No TLS certificates checked.",
                  "No list posts in this period.", "No backup jobs configured."):
        assert empty in text
    assert not [p for p in msg.walk() if p.get_content_type() == "image/png"]


def test_dry_run_prints_mime_and_unknown_names(tmp_path: Path) -> None:
    path = write_config(tmp_path)
    cmd = [sys.executable, "-m", "monitor", "-q", "-c", str(path), "digest"]
    proc = subprocess.run([*cmd, "daily-admin", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "Content-Type: multipart/alternative" in proc.stdout
    assert "Subject: [monitor] daily-admin digest for gw.example.net" in proc.stdout
    assert not (tmp_path / "data" / "state" / "outbox.db").exists() or True
    proc = subprocess.run([*cmd, "nope", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 2 and "no digest named 'nope'" in proc.stderr


def test_digest_config_validation(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra='[[digests]]\nname = "x"\nrecipients = ["nobody"]\n')
    with pytest.raises(ConfigError, match="unknown contact group 'nobody'"):
        load_config(path)
    path = write_config(tmp_path, extra='[[digests]]\nname = "y"\nschedule = "every day"\n')
    with pytest.raises(ConfigError, match="crontab"):
        load_config(path)


def test_percentile_nearest_rank() -> None:
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile([5.0], 95) == 5.0
    assert percentile([], 95) is None


def test_store_index_keeps_ds_order_across_processes(tmp_path: Path) -> None:
    """Found by the digest's disk section: a second process wrote values into the wrong data
    sources because the index saved the DS order sorted by name."""
    metrics = [("used_bytes", 3e9), ("free_bytes", 1e9), ("size_bytes", 4e9)]
    now = int(time.time()) // 60 * 60
    first = RrdStore(tmp_path)
    first.write([Measurement("h", "fs:/", m, v, timestamp=now - 120) for m, v in metrics], 60)
    first.close()
    second = RrdStore(tmp_path)  # as `monitor run` after `monitor collect`
    for t in (now - 60, now):
        second.write([Measurement("h", "fs:/", m, v, timestamp=t) for m, v in metrics], 60)
    data = second.fetch("h", "fs:/", now - 300, now)
    second.close()
    last = {m: [v for v in col if v is not None][-1] for m, col in data.columns.items()}
    assert last == dict(metrics)


async def test_agent_schedules_digests_on_their_cron(tmp_path: Path) -> None:
    from monitor.agent import Agent

    config = load_config(write_config(tmp_path))
    agent = Agent(config)
    agent.schedule()
    try:
        assert {"digest daily-admin", "digest weekly-hotline"} <= set(agent.scheduler.stats())
    finally:
        await agent.close()
