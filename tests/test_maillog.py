"""Mail-log statistics from logs a real Postfix and Dovecot wrote (recorded in
tests/data/postfix/ by tests/mail_traffic.py, and live in one test): the expected counts come
from the plan of what was sent, never from the reader."""

from __future__ import annotations

import gzip
import json
import re
import shutil
from collections.abc import Callable
from pathlib import Path

from collectors.maillog import (
    COUNTS,
    MailLogCollector,
    MailLogState,
    load_state,
    read_logs,
    reject_reason,
    summary,
)
from monitor.config import MailLogConfig
from monitor.model import Kind, State
from tests import mail_traffic
from tests.mail_traffic import Send, expected

DATA = Path(__file__).parent / "data" / "postfix"
RECORDED_AT = json.loads((DATA / "plan.json").read_text())["recorded_at"]  # stamps have no year


def recorded_plan() -> dict:
    raw = json.loads((DATA / "plan.json").read_text())
    return expected([Send(**s) for s in raw["plan"]], raw["sasl_failures"], raw["login_failures"])


def config(tmp_path: Path, log: Path, dovecot: Path | None = None) -> MailLogConfig:
    return MailLogConfig(enabled=True, log=log, dovecot_log=dovecot, local_domains=["example.test"])


def figures(state: MailLogState) -> dict:
    total = summary(state, 0, float("inf"))
    out = {name: total.counts[name] for name in ("received", "delivered", "deferred", "bounced",
                                                 "rejected", "outbound")}
    out["reasons"] = dict(total.tables["reasons"])
    out["outbound_by"] = dict(total.tables["outbound_by"])
    out["senders"] = dict(total.tables["senders"])
    out["domains"] = dict(total.tables["domains"])
    out["sasl_failures"] = dict(total.tables["sasl_clients"])
    out["login_failures"] = dict(total.tables["login_clients"])
    return out


def copy_logs(tmp_path: Path) -> tuple[Path, Path]:
    mail, dovecot = tmp_path / "mail.log", tmp_path / "dovecot.log"
    shutil.copy(DATA / "mail.log", mail)
    shutil.copy(DATA / "dovecot.log", dovecot)
    return mail, dovecot


def test_recorded_postfix_and_dovecot_logs_count_what_was_sent(tmp_path):
    mail, dovecot = copy_logs(tmp_path)
    state = MailLogState()
    counted, problems = read_logs(config(tmp_path, mail, dovecot), state, RECORDED_AT + 60)
    assert problems == []
    assert figures(state) == recorded_plan()
    assert counted > 0
    # Read again: nothing new, nothing counted twice.
    assert read_logs(config(tmp_path, mail, dovecot), state, RECORDED_AT + 120) == (0, [])
    assert figures(state) == recorded_plan()


def test_rotation_in_the_middle_counts_every_line_once(tmp_path):
    """The first half is read, logrotate renames and compresses the file, Postfix writes the
    second half to a new one: same figures as one read of the whole log."""
    lines = (DATA / "mail.log").read_bytes().splitlines(keepends=True)
    half = len(lines) // 2
    mail = tmp_path / "mail.log"
    mail.write_bytes(b"".join(lines[:half]) + lines[half][:20])  # a half-written line waits
    cfg = config(tmp_path, mail, tmp_path / "dovecot.log")
    shutil.copy(DATA / "dovecot.log", tmp_path / "dovecot.log")
    state = MailLogState()
    read_logs(cfg, state, RECORDED_AT + 60)
    with mail.open("ab") as f:
        f.write(lines[half][20:] + lines[half + 1])
    with mail.open("rb") as src, gzip.open(tmp_path / "mail.log.1.gz", "wb") as dst:
        dst.write(src.read())
    mail.unlink()
    mail.write_bytes(b"".join(lines[half + 2:]))
    _, problems = read_logs(cfg, state, RECORDED_AT + 120)
    assert problems == []
    assert figures(state) == recorded_plan()


def shifted(text: str, seconds: int, copy: str) -> str:
    """The recorded log as if it had been written `seconds` later, its queue ids made this
    copy's own (a queue id is unique while the message is in the queue; Postfix reuses them
    only much later)."""
    from datetime import datetime

    year = datetime.fromtimestamp(RECORDED_AT).year
    out = []
    for line in text.splitlines():
        stamp = datetime.strptime(f"{year} {line[:15]}", "%Y %b %d %H:%M:%S")
        moved = datetime.fromtimestamp(stamp.timestamp() + seconds).strftime("%b %d %H:%M:%S")
        out.append(moved + re.sub(r"(?<=\]: )([0-9A-F]{6,})(?=: )", rf"\g<1>{copy}", line[15:]))
    return "\n".join(out) + "\n"


def three_copies(tmp_path: Path) -> tuple[Path, Path]:
    """The recorded logs three times: at their hour, an hour later and a day later."""
    mail, dovecot = tmp_path / "mail.log", tmp_path / "dovecot.log"
    for path, source in ((mail, DATA / "mail.log"), (dovecot, DATA / "dovecot.log")):
        path.write_text("".join(shifted(source.read_text(), seconds, copy)
                                for seconds, copy in ((0, "A"), (3600, "B"), (86400, "C"))))
    return mail, dovecot


def test_counts_per_hour_and_per_day(tmp_path):
    """The recorded traffic three times: at its hour, an hour later, and a day later. Each
    hour holds the plan once; the first day twice, the next once (pflogsumm's per-hour and
    per-day summaries)."""
    from datetime import datetime, timedelta

    from collectors.maillog import hours_between

    mail, dovecot = three_copies(tmp_path)
    state = MailLogState()
    assert read_logs(config(tmp_path, mail, dovecot), state, RECORDED_AT + 2 * 86400)[1] == []
    first = (DATA / "mail.log").read_text()[:15]  # local time, as the reader takes it
    hour = datetime.strptime(f"{datetime.fromtimestamp(RECORDED_AT).year} {first}",
                             "%Y %b %d %H:%M:%S").replace(minute=0, second=0)
    want = recorded_plan()

    def one(counts) -> dict:
        state = MailLogState(hours={0: counts})
        return figures(state)

    hours = hours_between(state, 0, float("inf"))
    assert [datetime.fromtimestamp(h) for h, _ in hours] == [
        hour, hour + timedelta(hours=1), hour + timedelta(days=1)]
    assert [one(counts) for _, counts in hours] == [want] * 3

    def twice(figures: dict) -> dict:
        return {k: ({key: 2 * n for key, n in v.items()} if isinstance(v, dict) else 2 * v)
                for k, v in figures.items()}

    midnight = hour.replace(hour=0)
    days = [(midnight + timedelta(days=d)).timestamp() for d in range(3)]
    first_day = MailLogState(hours={0: summary(state, days[0], days[1])})
    second_day = MailLogState(hours={0: summary(state, days[1], days[2])})
    assert figures(first_day) == twice(want)
    assert figures(second_day) == want


async def test_collector_stores_series_and_a_check(tmp_path):
    mail, dovecot = copy_logs(tmp_path)
    collector = MailLogCollector(config(tmp_path, mail, dovecot), 300, tmp_path / "maillog.json",
                                 clock=lambda: RECORDED_AT + 60)
    batch = await collector.collect()
    want = recorded_plan()
    values = {(m.instance, m.metric): m for m in batch.measurements}
    assert values["postfix", "delivered"].value == want["delivered"]
    assert values["postfix", "delivered"].kind is Kind.DERIVE
    assert values["dovecot", "login_failures"].value == sum(want["login_failures"].values())
    assert {metric for _, metric in values} >= set(COUNTS)
    senders = {i: m.value for (i, metric), m in values.items() if metric == "outbound_last_hour"}
    # Recorded within one hour or two: the current hour holds at most what was sent.
    assert all(i.startswith("sender ") for i in senders)
    (check,) = batch.checks
    assert check.state is State.OK and check.check == "maillog"
    assert load_state(tmp_path / "maillog.json").totals["delivered"] == want["delivered"]
    # The next run adds nothing: the DERIVE totals stay.
    again = await collector.collect()
    assert {(m.instance, m.metric): m.value for m in again.measurements}[
        "postfix", "delivered"] == want["delivered"]


async def test_a_missing_or_foreign_log_is_a_warning(tmp_path):
    other = tmp_path / "syslog"
    other.write_text("Dec  2 00:00:01 host CRON[12]: (root) CMD (true)\n")
    state = MailLogState()
    _, problems = read_logs(config(tmp_path, other), state, RECORDED_AT)
    assert problems == [f"none of the 1 line(s) of {other} is from Postfix or Dovecot"]
    collector = MailLogCollector(config(tmp_path, tmp_path / "nope.log"), 300,
                                 tmp_path / "state.json")
    (check,) = (await collector.collect()).checks
    assert check.state is State.WARNING and "does not exist" in check.message


def test_hostile_lines_are_bounded_and_cleaned(tmp_path):
    mail = tmp_path / "mail.log"
    lines = [f"2026-12-02T00:00:{i % 60:02d}.000000+00:00 mx postfix/smtpd[1]: warning: "
             f"unknown[10.{i // 65536}.{i // 256 % 256}.{i % 256}]: SASL LOGIN authentication failed: x"
             for i in range(2000)]
    lines.append("2026-12-02T00:01:00+00:00 mx postfix/smtpd[1]: NOQUEUE: reject: RCPT from "
                 "x[10.0.0.1]: 554 5.7.1 <a@b>: Recipient address rejected: \x1b[31mred\u202e; "
                 "from=<a> to=<b>")
    mail.write_text("\n".join(lines) + "\n", encoding="utf-8")
    state = MailLogState()
    read_logs(config(tmp_path, mail), state, 1_796_000_000)
    total = summary(state, 0, float("inf"))
    assert total.counts["sasl_failures"] == 2000
    assert len(total.tables["sasl_clients"]) <= 501 and total.tables["sasl_clients"]["(others)"] > 0
    (reason,) = total.tables["reasons"]
    assert "\x1b" not in reason and "\u202e" not in reason


def test_fields_a_client_chooses_cannot_pose_as_the_real_ones(tmp_path):
    """The user name a login attempt gives and the quoted local part of an address are the
    client's choice: a "rip=" in the first, a "status=sent" or ">" in the second, must not be
    taken for the fields Postfix and Dovecot write after them."""
    mail = tmp_path / "mail.log"
    stamp = "2026-12-02T00:00:01.000000+00:00 mx"
    mail.write_text("\n".join([
        f"{stamp} dovecot: imap-login: Disconnected (auth failed, 3 attempts in 6 secs): "
        "user=<x, rip=192.0.2.99>, method=PLAIN, rip=203.0.113.5, lip=192.0.2.1, TLS, "
        "session=<abcdef>",
        f"{stamp} postfix/qmgr[2]: 4B2C81E0A1: from=<\"a>b\"@example.net>, size=1200, nrcpt=1 "
        "(queue active)",
        f'{stamp} postfix/smtp[3]: 4B2C81E0A1: to=<"x>, status=sent"@example.org>, '
        'orig_to=<"y, status=sent"@example.org>, relay=mx.example.org[198.51.100.7]:25, '
        "delay=1.2, delays=0.1/0/0.5/0.6, dsn=4.0.0, status=deferred (host said: 451 try again; "
        "dsn=2.0.0, status=sent)",
    ]) + "\n", encoding="utf-8")
    state = MailLogState()
    read_logs(config(tmp_path, mail), state, 1_796_000_000)
    total = summary(state, 0, float("inf"))
    assert dict(total.tables["login_clients"]) == {"203.0.113.5": 3}
    assert total.counts["deferred"] == 1 and total.counts["delivered"] == 0
    assert total.counts["received"] == 1 and total.counts["received_bytes"] == 1200


def test_reject_reasons():
    assert reject_reason("RCPT from x[192.0.2.1]: 554 5.7.1 Service unavailable; Client host "
                         "[192.0.2.1] blocked using zen.spamhaus.org; from=<a> to=<b>") == (
        "Service unavailable; Client host [address] blocked using zen.spamhaus.org")
    assert reject_reason("RCPT from x[192.0.2.1]: 450 4.1.2 <a@nowhere.example>: Recipient "
                         "address rejected: Domain not found; from=<a> to=<b>") == (
        "Recipient address rejected: Domain not found")


async def test_live_postfix_and_dovecot(tmp_path):
    """The plan through a real Postfix and Dovecot now, read while they run."""
    import time

    mail_log, dovecot_log = await mail_traffic.record(tmp_path)
    (tmp_path / "m.log").write_text(mail_log)
    (tmp_path / "d.log").write_text(dovecot_log)
    state = MailLogState()
    _, problems = read_logs(config(tmp_path, tmp_path / "m.log", tmp_path / "d.log"), state,
                            time.time())
    assert problems == []
    assert figures(state) == expected()


def digest_config(tmp_path: Path, maillog: str):
    """A config with [maillog] (`maillog`: its source keys) and a daily digest of its section."""
    from monitor.config import parse_config

    return parse_config(f'''
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "mon.example.net"
[contacts]
admins = ["admin@example.net"]
[maillog]
enabled = true
{maillog}
local_domains = ["example.test"]
[[digests]]
name = "daily"
sections = ["mail"]
''', "config.toml")


def test_digest_mail_section_is_pflogsumm_style(tmp_path):
    from alerts.digest import DigestBuilder, Report, render_html, render_text
    from monitor.status import StatusBook
    from monitor.store import RrdStore

    mail, dovecot = copy_logs(tmp_path)
    config = digest_config(tmp_path, f'log = "{mail}"\ndovecot_log = "{dovecot}"')
    builder = DigestBuilder(config, store=RrdStore(tmp_path / "rrd"),
                            status=StatusBook(tmp_path / "status.json"))
    digest = config.digests[0]
    # The digest reads the log itself up to its end (the collector never ran).
    report = builder.build(digest, (RECORDED_AT - 86400, RECORDED_AT + 7200))
    (section,) = report.sections
    want = recorded_plan()
    assert section.totals["delivered"] == want["delivered"]
    assert section.totals["outbound"] == want["outbound"]
    rows = {(r[1], r[2]) for r in section.rows}
    assert ("probe@example.test", str(want["senders"]["probe@example.test"])) in rows
    assert ("Recipient address rejected: Blocked by policy", "2") in rows
    assert ("127.0.0.10", "1") in rows and ("127.0.0.12", "1") in rows
    text = render_text(Report(digest, "mon.example.net", *report_window(report), [section]))
    assert "top reject reasons" in text and "top recipient domains" in text
    assert "<td>top SASL-failing clients</td>" in render_html(report)
    # Nothing of it is saved: the collector counts the same lines itself later.
    assert not (tmp_path / "data" / "state" / "maillog.json").exists()


def test_digest_mail_section_per_day_and_busiest_hour(tmp_path):
    """A weekly digest over the traffic of three hours on two days: a row per day (twice the
    plan, then once), and the busiest hour."""
    from alerts.digest import DigestBuilder, Report, render_text
    from monitor.status import StatusBook
    from monitor.store import RrdStore

    mail, dovecot = three_copies(tmp_path)
    config = digest_config(tmp_path, f'log = "{mail}"\ndovecot_log = "{dovecot}"')
    builder = DigestBuilder(config, store=RrdStore(tmp_path / "rrd"),
                            status=StatusBook(tmp_path / "status.json"))
    window = (RECORDED_AT - 3 * 86400, RECORDED_AT + 4 * 86400)
    (section,) = builder.build(config.digests[0], window).sections
    want = recorded_plan()
    per_day = [r for r in section.rows if r[0] == "per day" or (r[0] == "" and "received, " in r[2])]
    line = ("{} received, {} delivered ({} outbound), {} deferred, {} bounced, {} rejected")
    assert [r[2] for r in per_day] == [
        line.format(*(k * want[n] for n in ("received", "delivered", "outbound", "deferred",
                                             "bounced", "rejected"))) for k in (2, 1)]
    (busiest,) = [r for r in section.rows if r[0] == "busiest hour"]
    assert busiest[2] == (f"{want['delivered']} delivered ({want['outbound']} outbound), "
                          f"{want['received']} received")
    text = render_text(Report(config.digests[0], "mon.example.net", *window, [section]))
    print(text)
    assert "per day" in text and "busiest hour" in text


def report_window(report) -> tuple[float, float]:
    return report.start, report.end


def test_default_rules_of_the_reference_config_fire_on_a_hijacked_server(tmp_path):
    """config.toml's anomaly rules, fed what the collectors report for a server relaying spam:
    a burst of SASL failures, one sender's volume, the deferred queue growing, a baseline
    WARNING. Each fires at its level; quiet readings fire nothing."""
    import dataclasses

    from alerts.service import AlertService
    from monitor.config import load_config
    from monitor.model import Batch, CheckResult, Measurement
    from tests.conftest import ROOT

    reference = load_config(ROOT / "config.toml")
    config = dataclasses.replace(reference, agent=dataclasses.replace(
        reference.agent, data_dir=tmp_path))
    now = [1_796_000_000.0]
    service = AlertService(config, clock=lambda: now[0])

    def batch(sasl: float, sender: float, deferred: float, baseline: State,
              logins: float = 0) -> Batch:
        at = now[0]
        return Batch([Measurement("mail", "postfix", "sasl_failures", sasl, Kind.DERIVE,
                                  timestamp=at),
                      Measurement("mail", "dovecot", "login_failures", logins, Kind.DERIVE,
                                  timestamp=at),
                      Measurement("mail", "sender alice@example.net", "outbound_last_hour",
                                  sender, timestamp=at),
                      Measurement("mx1", "queue:postfix", "deferred_messages", deferred,
                                  timestamp=at)],
                     [CheckResult("dmz-router", "baseline eth1 out_octets", baseline,
                                  "dmz-router eth1 out_octets is 8.0x the usual", timestamp=at)])

    service.evaluate(batch(1000, 20, 10, State.OK))
    now[0] += 3600
    service.evaluate(batch(1050, 30, 20, State.OK))  # 50 failures and 10 deferred in an hour
    assert not [s for s in service.states.values() if s.severity is not State.OK]
    now[0] += 3600
    service.evaluate(batch(3050, 1500, 700, State.WARNING))
    firing = {s.rule: s.severity for s in service.states.values() if s.severity is not State.OK}
    assert firing == {"mail-auth-failures": State.CRITICAL, "mail-sender-burst": State.CRITICAL,
                      "mail-deferred-growing": State.CRITICAL, "traffic-unusual": State.WARNING}
    # Dovecot's failed logins (IMAP/POP3 brute force) are the same rule's, alerted on their own.
    now[0] += 3600
    service.evaluate(batch(3050, 0, 700, State.OK, logins=150))
    auth = {s.label: s.severity for s in service.states.values() if s.rule == "mail-auth-failures"}
    assert sorted(auth.values()) == [State.OK, State.WARNING], auth
    assert any("dovecot" in label for label, severity in auth.items()
               if severity is State.WARNING), auth
    service.close()


async def test_mail_page_shows_the_last_day_escaped(tmp_path):
    """The site's mail.html from the recorded logs (plus a hostile sender), looked at in
    Chromium: the totals from the plan, names escaped."""
    from graphs.site import SiteBuilder
    from monitor.model import CheckResult
    from monitor.status import StatusBook
    from monitor.store import RrdStore
    from tests.conftest import ROOT
    from tests.test_graphs import chromium

    mail, dovecot = copy_logs(tmp_path)
    with mail.open("a") as f:
        f.write(mail.read_text().splitlines()[-1].split(" mail postfix/")[0]
                + " mail postfix/smtpd[9]: NOQUEUE: reject: RCPT from x[192.0.2.9]: 554 5.7.1 "
                "<a@b>: Recipient address rejected: <script>alert(1)</script>; from=<a> to=<b>\n")
    now = RECORDED_AT + 60
    cfg = config(tmp_path, mail, dovecot)
    state_path = tmp_path / "state" / "maillog.json"
    batch = await MailLogCollector(cfg, 300, state_path, clock=lambda: now).collect()
    store = RrdStore(tmp_path / "rrd")
    store.write(batch.measurements, 300)
    status = StatusBook(tmp_path / "state" / "status.json")
    status.update([CheckResult("192.0.2.10", "blocklists", State.CRITICAL,
                               "192.0.2.10 is listed in bl.example: 127.0.0.2 = spam source",
                               timestamp=now), *batch.checks], 300)
    builder = SiteBuilder(store, status, tmp_path / "html", tmp_path / "state" / "graphs.json",
                          workers=1, clock=lambda: now, inline_below=10**6, mail_state=state_path)
    try:
        report = builder.build()
    finally:
        builder.close()
    assert not report.errors
    page = (tmp_path / "html" / "mail.html").read_text()
    want = recorded_plan()
    row = re.search(r"<tr>(<td class=\"num\">\d+</td>)+</tr>", page).group(0)
    assert re.findall(r">(\d+)<", row)[:3] == [str(want["received"]), str(want["delivered"]),
                                               str(want["outbound"])]
    (day,) = re.findall(r"<tr><th>\w{3} \d\d \w{3}</th>((?:<td class=\"num\">\d+</td>)+)</tr>",
                        page)  # the recorded day, in the per-day table
    assert re.findall(r">(\d+)<", day) == re.findall(r">(\d+)<", row)
    assert "<script>alert" not in page and "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "192.0.2.10 is listed in bl.example" in page
    assert 'href="mail.html">Mail</a>' in (tmp_path / "html" / "index.html").read_text()
    shot = ROOT / "test-artifacts" / "mail-page.png"
    shot.parent.mkdir(exist_ok=True)
    result = chromium(tmp_path, "--window-size=1280,1800", f"--screenshot={shot}",
                      (tmp_path / "html" / "mail.html").as_uri())
    assert result.returncode == 0, result.stderr[-2000:]
    assert shot.stat().st_size > 10_000


def journal_export(lines: list[str], now: float, first: int = 0) -> bytes:
    """The recorded syslog lines as journald would have stored them (systemd's export format):
    Postfix's under postfix@-.service, Dovecot's under dovecot.service, plus a cron line."""
    from collectors.maillog import _STAMP, line_time

    out = []
    at = now
    for n, line in enumerate(lines):
        stamp = _STAMP.match(line)
        at = line_time(stamp, now)
        rest = stamp["rest"]
        if " postfix/" in f" {rest}":
            _, _, tail = rest.partition(" ")  # the host name
            ident, _, message = tail.partition(": ")
            ident, pid = ident.rstrip("]").split("[")
            unit = "postfix@-.service"
        else:  # Dovecot's own log: "imap-login: Info: ..."
            ident, pid, unit, message = "dovecot", "77", "dovecot.service", rest
        usec = int(at * 1e6) + first + n  # one boot: journalctl orders its entries by the monotonic clock
        out.append(f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={usec}\n"
                   f"_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=mail\n"
                   f"_SYSTEMD_UNIT={unit}\nSYSLOG_IDENTIFIER={ident}\n_PID={pid}\n"
                   f"MESSAGE={message}\n\n")
    usec = int(at * 1e6) + first + len(lines)
    out.append(f"__REALTIME_TIMESTAMP={usec}\n__MONOTONIC_TIMESTAMP={usec}\n"
               "_BOOT_ID=0123456789abcdef0123456789abcdef\n_HOSTNAME=mail\n"
               "_SYSTEMD_UNIT=cron.service\nSYSLOG_IDENTIFIER=CRON\n_PID=5\n"
               "MESSAGE=warning: unknown[10.0.0.1]: SASL LOGIN authentication failed: x\n\n")
    return "".join(out).encode()


def make_journal(path: Path, lines: list[str], now: float, first: int = 0) -> None:
    import subprocess

    import pytest

    remote = Path("/lib/systemd/systemd-journal-remote")
    if not remote.exists():
        pytest.skip("systemd-journal-remote is not installed (see APT_PACKAGES in the Makefile)")
    subprocess.run([str(remote), f"--output={path}", "-"], input=journal_export(lines, now, first),
                   check=True, capture_output=True)


def journal_in_two_parts(tmp_path: Path) -> tuple[Path, float, Callable[[], None]]:
    """The recorded traffic as journal files in tmp_path/journal: the first half now, the
    rest (and Dovecot's lines) when the returned function is called."""
    lines = (DATA / "mail.log").read_text().splitlines()
    dovecot = (DATA / "dovecot.log").read_text().splitlines()
    half = len(lines) // 2
    directory = tmp_path / "journal"
    directory.mkdir()
    now = RECORDED_AT + 60
    make_journal(directory / "one.journal", lines[:half], now)
    return directory, now, lambda: make_journal(directory / "two.journal", lines[half:] + dovecot,
                                                now, first=half + 1)


async def test_journal_is_read_after_its_cursor(tmp_path):
    """Debian 12 without rsyslog: the same traffic read from real journal files with journalctl,
    in two parts (a second file appears between runs): every entry counted once, other units'
    entries left out."""
    directory, now, second_half = journal_in_two_parts(tmp_path)
    cfg = MailLogConfig(enabled=True, journal=True, journal_directory=directory,
                        local_domains=["example.test"])
    state_path = tmp_path / "maillog.json"
    # The first read covers the last day before `now`.
    collector = MailLogCollector(cfg, 300, state_path, clock=lambda: now)
    (check,) = (await collector.collect()).checks
    assert check.state is State.OK, check.message
    cursor = load_state(state_path).journal_cursor
    assert cursor.startswith("s=")
    second_half()
    await collector.collect()
    await collector.collect()  # nothing new: the cursor stays, nothing counted twice
    assert figures(load_state(state_path)) == recorded_plan()
    broken = MailLogCollector(MailLogConfig(enabled=True, journal=True,
                                            journalctl=tmp_path / "no-journalctl"), 300,
                              tmp_path / "other.json", clock=lambda: now)
    (check,) = (await broken.collect()).checks
    assert check.state is State.WARNING and "cannot read the journal" in check.message


def test_sender_volume_is_a_sliding_hour_and_falls_back_to_zero():
    from collectors.maillog import HourCounts, last_hour_senders

    state = MailLogState()
    hour = 1_796_000_400  # a whole hour (UTC and most zones)
    state.hours[hour - 3600] = HourCounts()
    state.hours[hour - 3600].tables["outbound_by"].update({"spammer@example.net": 600})
    state.hours[hour] = HourCounts()
    state.hours[hour].tables["outbound_by"].update({"alice@example.net": 3})
    at_quarter = last_hour_senders(state, hour + 900)
    assert at_quarter == {"alice@example.net": 3, "spammer@example.net": 450}
    # Two hours on: the spammer, quiet since, has decayed out (its alert recovered on the way).
    state.hours[hour + 3600] = HourCounts()
    assert last_hour_senders(state, hour + 3600 + 10) == {"alice@example.net": 3 * (1 - 10 / 3600)}


def test_mail_graphs_draw_messages_per_hour(tmp_path):
    """Two days of the collector's counters written through the store: the store keeps the
    rate per second (as before), the mail graph draws it per hour ("120 msg/h", y axis
    "messages per hour"), not as 0.0333 per second."""
    from collectors.maillog import COUNT_UNITS, COUNTS, TARGET
    from graphs import render
    from graphs.render import PERIODS, Job
    from monitor import units
    from monitor.model import Kind, Measurement
    from monitor.store import RrdStore

    store = RrdStore(tmp_path / "rrd")
    per_step = {"received": 10, "delivered": 9, "outbound": 2}  # per 5 minutes: 120/h, 108/h, 24/h
    end = RECORDED_AT // 300 * 300
    for n, at in enumerate(range(end - 2 * 86400, end + 1, 300)):
        store.write([Measurement(TARGET, "postfix", m, float(per_step.get(m, 0) * n), Kind.DERIVE,
                                 unit=COUNT_UNITS.get(m, ""), timestamp=at, minimum=0)
                     for m in COUNTS if m != "login_failures"], 300)
    info = store.info(TARGET, "postfix")
    stored = store.fetch_path(info, end - 3600, end).columns["received"]
    assert all(abs(v - 10 / 300) < 1e-9 for v in stored if v is not None)  # still per second
    start, stop, _ = render.window(PERIODS["day"], end, info.step)
    rows = render.stats.period_rows(store, info, start, stop)
    graph = render.build_graph(info, store.fetch_path(info, start, stop), rows)
    assert graph.unit == "msg/h" and units.axis_label(graph.unit) == "messages per hour"
    assert units.format_value(2.0, "msg/h") == "7.20 kmsg/h"  # a flood: 2 per second
    from alerts.baseline import shown  # the baseline check's words: per hour as well

    assert shown(10 / 300, "outbound", info.units["outbound"]) == "120 msg/h"
    legend = {row.label: row.text for row in graph.legend}
    assert "avg   120 msg/h" in legend["received"] and "avg  24.0 msg/h" in legend["outbound"]
    # Six lines: the legend takes a second column, so outbound and rejected are named too.
    layout = render.legend_layout(graph.legend)
    assert [(column, line, row.label) for column, line, row, _ in layout] == [
        (0, 0, "received"), (0, 1, "delivered"), (0, 2, "deferred"), (0, 3, "bounced"),
        (1, 0, "rejected"), (1, 1, "outbound")]
    assert layout[-1][3] == "outbound  now 24.0 msg/h avg 24.0 msg/h max 24.0 msg/h"
    _, _, ticks = render.axis(0.0, max(graph.layers[0].values), 0.0, None, graph.unit)
    assert all(t.endswith(" msg/h") for t in ticks) and ticks[-1] in ("120 msg/h", "125 msg/h",
                                                                       "150 msg/h")
    result = render.render_job(store, render.Renderer(), Job(info, ["day"], tmp_path / "png", end))
    assert not result.error and (tmp_path / "png" / "day.png").stat().st_size > 5_000


def test_journal_mode_digest_counts_up_to_the_period_end(tmp_path):
    """journal = true: the collector read the first half of the traffic; the rest reached the
    journal after its last run. The digest reads the journal after the collector's cursor
    itself (as it reads the files in file mode) and counts everything, saving nothing; with
    journalctl gone it says how far it counted."""
    import asyncio

    from alerts.digest import DigestBuilder
    from monitor.status import StatusBook
    from monitor.store import RrdStore

    directory, now, second_half = journal_in_two_parts(tmp_path)

    def config(journalctl: str = "/usr/bin/journalctl"):
        return digest_config(tmp_path, f'journal = true\njournal_directory = "{directory}"\n'
                                       f'journalctl = "{journalctl}"')

    cfg = config()
    state_path = cfg.state_dir / "maillog.json"
    asyncio.run(MailLogCollector(cfg.maillog, 300, state_path, clock=lambda: now).collect())
    cursor = load_state(state_path).journal_cursor
    second_half()
    window = (RECORDED_AT - 86400, RECORDED_AT + 7200)
    want = recorded_plan()

    def build(config) -> object:
        builder = DigestBuilder(config, store=RrdStore(tmp_path / "rrd"),
                                status=StatusBook(tmp_path / "status.json"))
        (section,) = builder.build(config.digests[0], window).sections
        return section

    section = build(cfg)
    assert section.totals["delivered"] == want["delivered"]
    assert section.totals["received"] == want["received"]
    assert section.totals["login_failures"] == sum(want["login_failures"].values())
    assert load_state(state_path).journal_cursor == cursor  # the collector's cursor: not moved
    partial = build(config(str(tmp_path / "no-journalctl")))
    assert partial.totals["delivered"] < want["delivered"]
    assert "Counted up to the collector's last read of the journal only: cannot read the " \
           "journal" in partial.notes[-1]


def test_login_failure_graphs_draw_failures_per_hour(tmp_path):
    """SASL and Dovecot login failures, like the messages: stored per second, drawn per hour
    ("12.0 failures/h" beside "failures per hour"), in the Postfix file's table too."""
    from collectors.maillog import COUNT_UNITS, COUNTS, TARGET
    from graphs import render
    from graphs.render import PERIODS
    from monitor import units
    from monitor.model import Kind, Measurement
    from monitor.store import RrdStore

    store = RrdStore(tmp_path / "rrd")
    per_step = {"received": 10, "sasl_failures": 3, "login_failures": 1}  # 36/h and 12/h
    end = RECORDED_AT // 300 * 300
    for n, at in enumerate(range(end - 2 * 86400, end + 1, 300)):
        store.write([Measurement(TARGET, "dovecot" if m == "login_failures" else "postfix", m,
                                 float(per_step.get(m, 0) * n), Kind.DERIVE,
                                 unit=COUNT_UNITS.get(m, ""), timestamp=at, minimum=0)
                     for m in COUNTS], 300)
    graphs = {}
    for instance in ("postfix", "dovecot"):
        info = store.info(TARGET, instance)
        start, stop, _ = render.window(PERIODS["day"], end, info.step)
        rows = render.stats.period_rows(store, info, start, stop)
        graphs[instance] = render.build_graph(info, store.fetch_path(info, start, stop), rows)
    dovecot = graphs["dovecot"]
    assert dovecot.unit == "failures/h" and units.axis_label(dovecot.unit) == "failures per hour"
    legend = {row.label: row.text for row in dovecot.legend}
    assert "avg 12.0 failures/h" in legend["login_failures"], legend
    # The Postfix graph draws the messages; its table has the SASL failures per hour.
    postfix = graphs["postfix"]
    assert postfix.unit == "msg/h" and postfix.units["sasl_failures"] == "failures/h"
    assert units.format_value(postfix.summary["sasl_failures"]["average"],
                              postfix.units["sasl_failures"]) == "36.0 failures/h"
    from alerts.baseline import shown  # the baseline check's words: per hour as well

    info = store.info(TARGET, "dovecot")
    assert shown(1 / 300, "login_failures", info.units["login_failures"]) == "12.0 failures/h"
