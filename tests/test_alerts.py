"""The alert service end to end: batches in, mail out of a real aiosmtpd relay."""

from __future__ import annotations

import asyncio
import email
import email.policy
import subprocess
import textwrap

import aiosmtplib
import pytest

from alerts.service import AlertService
from alerts.smtpsink import MaildirHandler
from monitor.agent import Agent
from monitor.config import parse_config
from monitor.model import Batch, CheckResult, Kind, Measurement, State
from tests.conftest import MONITOR, ROOT
from tests.smtp_helpers import Recorder, start_smtp

T0 = 1_800_000_000.0


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


def make_config(tmp_path, port: int, rules: str, extra: str = "", group_window: str = "1m"):
    text = textwrap.dedent(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        hostname = "monitor.example.net"
        [host]
        enabled = false
        [disks]
        enabled = false
        [web]
        base_url = "https://monitor.example.net/"
        [smtp]
        host = "127.0.0.1"
        port = {port}
        from = "monitor@example.net"
        timeout = "5s"
        [contacts]
        admins = ["admin@example.net"]
        boss = ["boss@example.net"]
        [alerts]
        group_window = "{group_window}"
    """) + textwrap.dedent(rules) + textwrap.dedent(extra)
    return parse_config(text, base_dir=tmp_path)


SERVICE_RULE = """
    [[alerts.rules]]
    name = "service-down"
    check = "smtp"
    {options}
"""


DEPENDENT_RULES = """
    [[alerts.rules]]
    name = "router-down"
    check = "snmp"
    target = "dmz-router"
    [[alerts.rules]]
    name = "dmz-services"
    check = "*"
    target = "*.dmz.example.net"
    depends_on = ["router-down:dmz-*"]
"""


def check(target: str, state: State, at: float, message: str | None = None,
          name: str = "smtp") -> CheckResult:
    return CheckResult(target, name, state, message or (
        "SMTP no answer in 10 s" if state else "SMTP answered 220 in 0.02 s"), timestamp=at)


@pytest.fixture
async def relay():
    rec = Recorder()
    server, port = await start_smtp(rec)
    yield rec, port
    server.close()


async def advance(service: AlertService, clock: Clock, seconds: float) -> None:
    clock.now += seconds
    await service.tick()


async def test_fire_and_resolve_cycle(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(tmp_path, port, SERVICE_RULE.format(options="")), clock=clock)
    await svc.consume("services", Batch(checks=[check("mail.example.net", State.CRITICAL, T0)]))
    assert rec.received == []  # the group window is still open
    clock.now += 300
    await svc.consume("services", Batch(checks=[check("mail.example.net", State.CRITICAL,
                                                       clock.now)]))
    (mail,) = rec.received
    msg = mail.message
    assert str(msg["Subject"]) == "[CRITICAL] mail.example.net smtp: SMTP no answer in 10 s (for 5m)"
    assert mail.recipients == ["admin@example.net"]
    body = msg.get_content()
    for expected in ("what:      SMTP no answer in 10 s", "since:", "threshold: check state CRITICAL",
                     "rule:      service-down", "https://monitor.example.net/problems.html",
                     "monitor silence add 'mail.example.net smtp' --for 2h"):
        assert expected in body
    assert msg["Message-ID"] and msg["Auto-Submitted"] == "auto-generated"

    clock.now += 600
    await svc.consume("services", Batch(checks=[check("mail.example.net", State.OK, clock.now)]))
    await advance(svc, clock, 61)
    assert len(rec.received) == 2
    assert str(rec.received[1].message["Subject"]).startswith(
        "[OK] mail.example.net smtp: recovered after 15m")
    assert [h.kind for h in svc.store.history(T0)] == ["firing", "resolved"]


async def test_soft_problems_below_retries_send_nothing(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(tmp_path, port, SERVICE_RULE.format(options="retries = 3")),
                       clock=clock)
    for state in (State.CRITICAL, State.CRITICAL, State.OK, State.CRITICAL, State.CRITICAL):
        await svc.consume("s", Batch(checks=[check("mail.example.net", state, clock.now)]))
        await advance(svc, clock, 60)
    assert rec.received == []
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    await advance(svc, clock, 61)
    assert [str(r.message["Subject"]).split(":")[0] for r in rec.received] == [
        "[CRITICAL] mail.example.net smtp"]


async def test_flapping_service_gives_few_mails(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(tmp_path, port, SERVICE_RULE.format(options=""),
                                   group_window="0s"), clock=clock)
    for i in range(60):
        state = State.CRITICAL if i % 2 == 0 and i < 30 else State.OK
        await svc.consume("s", Batch(checks=[check("mail.example.net", state, clock.now)]))
        clock.now += 60
    subjects = rec.subjects()
    assert sum("[FLAPPING]" in s for s in subjects) == 1
    assert sum("[STABLE]" in s for s in subjects) == 1
    assert len(subjects) <= 8, subjects  # instead of 30


async def test_dependency_one_notification_not_fifty(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(tmp_path, port, DEPENDENT_RULES), clock=clock)
    services = [check(f"host{i}.dmz.example.net", State.CRITICAL, clock.now, "no answer",
                      name="ping") for i in range(50)]
    router = check("dmz-router", State.CRITICAL, clock.now, "SNMP no answer", name="snmp")
    await svc.consume("snmp", Batch(checks=[router]))
    await svc.consume("services", Batch(checks=services))
    await advance(svc, clock, 61)
    (mail,) = rec.received
    assert str(mail.message["Subject"]) == "[CRITICAL] dmz-router snmp: SNMP no answer (for 1m)"
    assert "host1.dmz" not in mail.message.get_content()
    states = [s for s in svc.states.values() if s.rule == "dmz-services"]
    assert len(states) == 50 and all(s.quiet.startswith("depends on router-down") for s in states)

    # The router comes back and so do the services: one recovery, for the router only.
    await svc.consume("snmp", Batch(checks=[check("dmz-router", State.OK, clock.now, "up",
                                                  name="snmp")]))
    await svc.consume("services", Batch(checks=[check(f"host{i}.dmz.example.net", State.OK,
                                                      clock.now, "ok", name="ping")
                                                for i in range(50)]))
    await advance(svc, clock, 61)
    assert len(rec.received) == 2
    assert str(rec.received[1].message["Subject"]).startswith("[OK] dmz-router snmp")


async def test_dependent_problem_still_there_after_parent_recovers_is_announced(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    rules = """
        [[alerts.rules]]
        name = "router-down"
        check = "snmp"
        [[alerts.rules]]
        name = "web"
        check = "http"
        depends_on = ["router-down"]
    """
    svc = AlertService(make_config(tmp_path, port, rules, group_window="0s"), clock=clock)
    await svc.consume("snmp", Batch(checks=[check("r", State.CRITICAL, clock.now, "down", "snmp")]))
    await svc.consume("svc", Batch(checks=[check("www", State.CRITICAL, clock.now, "503", "http")]))
    await svc.consume("snmp", Batch(checks=[check("r", State.OK, clock.now, "up", "snmp")]))
    await advance(svc, clock, 60)  # time alone announces nothing held back
    assert rec.subjects() == ["[CRITICAL] r snmp: down", "[OK] r snmp: recovered after 0s (up)"]
    await svc.consume("svc", Batch(checks=[check("www", State.CRITICAL, clock.now, "503", "http")]))
    assert rec.subjects()[-1] == "[CRITICAL] www http: 503 (for 1m)"


async def test_silence_from_the_command_line(tmp_path, relay):
    rec, port = relay
    config = make_config(tmp_path, port, SERVICE_RULE.format(options=""), group_window="0s")
    path = tmp_path / "config.toml"
    # The CLI reads the same data_dir; write the config it needs.
    path.write_text(textwrap.dedent(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        [contacts]
        admins = ["admin@example.net"]
    """))

    def cli(*args: str, code: int = 0) -> str:
        out = subprocess.run([*MONITOR, "--config", str(path), *args], capture_output=True,
                             text=True, cwd=ROOT, timeout=60)
        assert out.returncode == code, out.stderr
        return out.stdout + out.stderr

    # Nothing of that name is known yet (a typo?), and a month is long: both want --force.
    refused = cli("silence", "add", "mail.example.*", "--for", "2h", "--reason", "x", code=2)
    assert "matches no alert and no check now" in refused and "--force" in refused
    refused = cli("silence", "add", "*", "--for", "30d", "--reason", "x", "--force", code=0)
    assert cli("silence", "remove", "1")
    refused = cli("silence", "add", "*", "--for", "30d", "--reason", "x", code=2)
    assert "longer than 7d" in refused
    added = cli("silence", "add", "mail.example.*", "--for", "2h", "--reason", "disk swap",
                "--force")
    assert added.startswith("silence #2: 'mail.example.*' until")
    assert "disk swap" in cli("silence", "list")

    svc = AlertService(config)
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, T0)]))
    await svc.consume("s", Batch(checks=[check("other.example.org", State.CRITICAL, T0)]))
    assert rec.subjects() == ["[CRITICAL] other.example.org smtp: SMTP no answer in 10 s"]
    listing = cli("alerts")
    assert "mail.example.net smtp" in listing and "quiet: silence #2" in listing
    assert "Outbox: 0 message(s) waiting" in listing

    assert "ended" in cli("silence", "remove", "2")
    assert "no active silences" in cli("silence", "list")
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, T0 + 60)]))
    assert rec.subjects()[-1].startswith("[CRITICAL] mail.example.net smtp")


async def test_maintenance_window_keeps_quiet(tmp_path, relay):
    rec, port = relay
    extra = """
        [[alerts.maintenance]]
        name = "always"
        cron = "* * * * *"
        duration = "1h"
        match = ["backup*"]
        reason = "nightly backups"
    """
    svc = AlertService(make_config(tmp_path, port, SERVICE_RULE.format(options=""), extra,
                                   group_window="0s"))
    import time
    now = time.time()
    await svc.consume("s", Batch(checks=[check("backup.example.net", State.CRITICAL, now),
                                         check("mail.example.net", State.CRITICAL, now)]))
    assert rec.subjects() == ["[CRITICAL] mail.example.net smtp: SMTP no answer in 10 s"]
    quiet = [s.quiet for s in svc.states.values() if s.target.startswith("backup")]
    assert quiet == ["maintenance window always: nightly backups"]


async def test_200_alerts_in_a_minute_are_one_mail_per_group(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    rules = """
        [[alerts.rules]]
        name = "ports"
        check = "if *"
        [[alerts.rules]]
        name = "ports-boss"
        check = "if *"
        target = "core-*"
        notify = ["boss"]
    """
    svc = AlertService(make_config(tmp_path, port, rules), clock=clock)
    for i in range(200):
        target = "core-sw" if i % 4 == 0 else "access-sw"
        await svc.consume("snmp", Batch(checks=[check(target, State.CRITICAL, clock.now,
                                                      f"port {i} down", name=f"if ge-0/0/{i}")]))
        clock.now += 0.29
        if i % 100 == 99:
            await svc.tick()
    assert rec.received == []
    await advance(svc, clock, 5)
    by_rcpt = {r.recipients[0]: r.message for r in rec.received}
    assert len(rec.received) == 2 and set(by_rcpt) == {"admin@example.net", "boss@example.net"}
    assert str(by_rcpt["admin@example.net"]["Subject"]).startswith("[CRITICAL] 200 problems: ")
    assert str(by_rcpt["boss@example.net"]["Subject"]).startswith("[CRITICAL] 50 problems: ")
    assert by_rcpt["admin@example.net"]["X-Monitor-Events"] == "200"
    assert "... and 140 more:" in by_rcpt["admin@example.net"].get_content()
    # The next minute of the same storm: one more mail per group, not 200.
    for i in range(200, 260):
        await svc.consume("snmp", Batch(checks=[check("access-sw", State.CRITICAL, clock.now,
                                                      "down", name=f"if xe-{i}")]))
        clock.now += 0.5
    await advance(svc, clock, 31)
    assert len(rec.received) == 3


async def test_thresholds_hysteresis_rate_and_nodata(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    rules = """
        [[alerts.rules]]
        name = "disk-full"
        metric = "used_percent"
        instance = "fs:*"
        warning = "> 80"
        critical = "> 90"
        hysteresis = 5
        [[alerts.rules]]
        name = "disk-filling"
        metric = "used_bytes"
        condition = "rate"
        critical = "> 1000000000"
        rate_per = "1h"
        severity = "WARNING"
        [[alerts.rules]]
        name = "silent-router"
        metric = "in_octets"
        nodata = "10m"
    """
    svc = AlertService(make_config(tmp_path, port, rules, group_window="0s"), clock=clock)

    def m(metric, value, instance="fs:/var", unit="%"):
        return Measurement("files.example.net", instance, metric, value, unit=unit,
                           timestamp=clock.now)

    async def feed(*ms):
        await svc.consume("disks", Batch(measurements=list(ms)))

    await feed(m("used_percent", 93.2))
    assert rec.subjects()[-1] == ("[CRITICAL] files.example.net fs:/var used_percent: "
                                  "fs:/var used_percent is 93.2 %, critical above 90 %")
    await feed(m("used_percent", 88))  # within the hysteresis: still critical, no mail
    await feed(m("used_percent", 86))
    assert len(rec.received) == 1
    await feed(m("used_percent", 84))  # below 90 - 5, but above the warning level
    await feed(m("used_percent", 70))
    assert rec.subjects()[-1].startswith("[OK] files.example.net fs:/var used_percent")
    body = rec.received[0].message.get_content()
    assert "value:     93.2" in body and "threshold: warning > 80 %, critical > 90 %" in body

    # Rate: +2 GB in half an hour is 4 GB/h.
    await feed(m("used_bytes", 10e9, unit="B"))
    clock.now += 1800
    await feed(m("used_bytes", 12e9, unit="B"))
    assert rec.subjects()[-1].startswith("[WARNING] files.example.net fs:/var used_bytes: "
                                         "fs:/var used_bytes changes by 4,000,000,000 B per hour")

    # No data: the router's counters stop arriving.
    await feed(m("in_octets", 1.0, instance="ge-0/0/0", unit="B/s"))
    clock.now += 9 * 60
    await svc.tick()
    assert "silent-router" not in " ".join(rec.subjects())
    clock.now += 2 * 60
    await svc.tick()
    assert rec.subjects()[-1] == ("[CRITICAL] files.example.net ge-0/0/0 in_octets: no data "
                                  "for 11m")
    await feed(m("in_octets", 1.0, instance="ge-0/0/0", unit="B/s"))
    assert rec.subjects()[-1].startswith("[OK] files.example.net ge-0/0/0 in_octets")


async def test_rate_rules_remember_across_restarts_and_cron_runs(tmp_path, relay):
    """Each `collect --once` from cron is a new process (and a new AlertService): the rate
    rule's last reading is on disk, so the second run has a rate. A counter that went back
    (reset by a reboot) gives no rate; a damaged file only restarts the rates."""
    rec, port = relay
    clock = Clock()
    rules = """
        [[alerts.rules]]
        name = "disk-filling"
        metric = "used_bytes"
        condition = "rate"
        critical = "> 1000000000"
        rate_per = "1h"
        severity = "WARNING"
        [[alerts.rules]]
        name = "nic-busy"
        metric = "in_octets"
        condition = "rate"
        critical = "> 1000000"
        rate_per = "1s"
    """
    config = make_config(tmp_path, port, rules, group_window="0s")

    async def run(*ms: Measurement) -> None:  # one cron run: a fresh service, then gone
        svc = AlertService(config, clock=clock)
        try:
            await svc.consume("disks", Batch(measurements=list(ms)))
        finally:
            svc.close()

    def used(value: float) -> Measurement:
        return Measurement("files.example.net", "fs:/var", "used_bytes", value, unit="B",
                           timestamp=clock.now)

    def octets(value: float) -> Measurement:
        return Measurement("files.example.net", "nic:eth0", "in_octets", value, Kind.DERIVE,
                           unit="B", timestamp=clock.now)

    await run(used(10e9), octets(5e9))
    assert (config.state_dir / "alert-rates.json").exists()
    clock.now += 1800
    await run(used(12e9), octets(1e3))  # +2 GB in half an hour; the NIC counter was reset
    assert [s for s in rec.subjects() if "disk-filling" in s or "used_bytes" in s] == [
        "[WARNING] files.example.net fs:/var used_bytes: fs:/var used_bytes changes by "
        "4,000,000,000 B per hour, warning above 1,000,000,000 B per hour"]
    assert not [s for s in rec.subjects() if "in_octets" in s]  # no huge negative "rate"
    (config.state_dir / "alert-rates.json").write_text("{damaged")
    clock.now += 1800
    await run(used(20e9))  # no memory: no rate, no crash
    assert len(rec.received) == 1


async def test_state_survives_a_restart_and_the_recovery_still_comes(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    config = make_config(tmp_path, port, SERVICE_RULE.format(options=""), group_window="0s")
    svc = AlertService(config, clock=clock)
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    assert len(rec.received) == 1
    del svc
    clock.now += 3600
    again = AlertService(config, clock=clock)
    await again.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    assert len(rec.received) == 1  # no second "firing" after the restart
    await again.consume("s", Batch(checks=[check("mail.example.net", State.OK, clock.now)]))
    assert rec.subjects()[-1].startswith("[OK] mail.example.net smtp: recovered after 1h")


async def test_escalation_and_repeat_through_the_clock(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(
        tmp_path, port, SERVICE_RULE.format(
            options='repeat = "1h"\nescalate_after = "30m"\nescalate_to = ["boss"]'),
        group_window="0s"), clock=clock)
    await svc.consume("s", Batch(checks=[check("mail.example.net", State.CRITICAL, clock.now)]))
    for _ in range(4):
        await advance(svc, clock, 900)
    got = [(r.recipients[0], str(r.message["Subject"])[:25]) for r in rec.received]
    assert got == [("admin@example.net", "[CRITICAL] mail.example.n"),
                   ("boss@example.net", "[CRITICAL] ESCALATED, mai"),
                   ("admin@example.net", "[CRITICAL] still mail.exa"),
                   ("boss@example.net", "[CRITICAL] still mail.exa")]


async def test_agent_feeds_every_batch_to_the_alerts(tmp_path, relay):
    rec, port = relay
    rules = """
        [[alerts.rules]]
        name = "collectors"
        check = "collector *"
        target = "agent"
    """
    config = make_config(tmp_path, port, rules, group_window="0s")
    agent = Agent(config)

    class Broken:
        name, interval = "broken", 60.0

        async def collect(self) -> Batch:
            raise OSError("permission denied reading /proc/net/snmp")

    try:
        with pytest.raises(OSError):
            await agent.run_collector(Broken())
    finally:
        await agent.close()
    (mail,) = rec.received
    assert str(mail.message["Subject"]).startswith(
        "[UNKNOWN] agent collector broken: collector broken could not run: permission denied")


async def test_device_strings_never_add_a_header_end_to_end(tmp_path, relay):
    rec, port = relay
    rules = """
        [[alerts.rules]]
        name = "ports"
        check = "if *"
        [[alerts.rules]]
        name = "errors"
        metric = "in_errors"
        critical = "> 10"
    """
    svc = AlertService(make_config(tmp_path, port, rules, group_window="0s"))
    evil = "ge-0/0/1\r\nBcc: victim@evil.example\r\nX-Injected: 1"
    await svc.consume("snmp", Batch(
        checks=[CheckResult("sw1\nBcc: a@evil.example", f"if {evil}", State.CRITICAL,
                            "banner 220 hi\r\n\r\nBcc: b@evil.example", timestamp=T0)],
        measurements=[Measurement("sw1", evil, "in_errors", 50.0, timestamp=T0)]))
    assert len(rec.received) == 1  # one group window: the two alerts are one mail
    (mail,) = rec.received
    assert mail.recipients == ["admin@example.net"]
    msg = mail.message
    assert msg.get_all("Bcc") is None and msg.get_all("X-Injected") is None
    assert "\n" not in str(msg["Subject"])
    assert "evil.example" in msg.get_content()  # shown as text in the body, harmlessly


async def test_smtp_sink_files_each_message(tmp_path):
    handler = MaildirHandler(tmp_path / "mail")
    server, port = await start_smtp(handler)  # type: ignore[arg-type]
    try:
        for i in range(2):
            await aiosmtplib.send(f"Subject: hello {i}\r\n\r\nbody\r\n".encode(),
                                  sender="a@example.net", recipients=["b@example.net"],
                                  hostname="127.0.0.1", port=port)
        # A client's quoted local part may carry a bare CR: it must not start a header.
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        for line in (b"HELO x", b'MAIL FROM:<"a\rX-Injected: 1"@b.c>', b"RCPT TO:<b@example.net>",
                     b"DATA", b"Subject: evil\r\n\r\nbody\r\n.", b"QUIT"):
            writer.write(line + b"\r\n")
        await writer.drain()
        await reader.read()
        writer.close()
    finally:
        server.close()
    files = sorted((tmp_path / "mail").glob("*.eml"))
    assert len(files) == 3
    msg = email.message_from_bytes(files[1].read_bytes(), policy=email.policy.default)
    assert msg["Subject"] == "hello 1" and msg["X-Sink-Envelope-To"] == "b@example.net"
    evil = email.message_from_bytes(files[2].read_bytes(), policy=email.policy.default)
    assert evil["Subject"] == "evil" and evil["X-Injected"] is None
    assert "\r" not in evil["X-Sink-Envelope-From"]


def test_config_errors_name_the_problem(tmp_path):
    from monitor.config import ConfigError

    bad = [
        ('[[alerts.rules]]\nname = "x"\n', 'set exactly one of "check"'),
        ('[[alerts.rules]]\nname = "x"\nmetric = "a"\n', "needs \"warning\" and/or \"critical\""),
        ('[[alerts.rules]]\nname = "x"\nmetric = "a"\ncritical = "above 9"\n',
         'expected a comparison like "> 90"'),
        ('[[alerts.rules]]\nname = "x"\ncheck = "a"\nnotify = ["pagers"]\n',
         "unknown contact group 'pagers'"),
        ('[[alerts.rules]]\nname = "x"\ncheck = "a"\ndepends_on = ["y"]\n', "unknown rule 'y'"),
        ('[[alerts.rules]]\nname = "x"\ncheck = "a"\ndepends_on = ["y"]\n'
         '[[alerts.rules]]\nname = "y"\ncheck = "a"\ndepends_on = ["x"]\n', "depends on itself"),
        ('[[alerts.maintenance]]\nname = "m"\ncron = "every night"\nduration = "1h"\n',
         "crontab"),
        ('[contacts]\nadmins = ["root@localhost\\r\\nBcc: x@y"]\n', "not a plain"),
    ]
    for text, expected in bad:
        if "[contacts]" not in text:
            text = '[contacts]\nadmins = ["a@example.net"]\n' + text
        with pytest.raises(ConfigError) as info:
            parse_config(text)
        assert expected in str(info.value), (text, str(info.value))


def test_default_config_documents_every_alert_key():
    from dataclasses import fields

    from monitor.config import AlertRule, AlertsConfig, MaintenanceWindow, SmtpConfig

    text = (ROOT / "config.toml").read_text()
    for cls in (AlertRule, AlertsConfig, MaintenanceWindow, SmtpConfig):
        for f in fields(cls):
            name = f.metadata.get("key", f.name)
            if name in ("rules", "maintenance", "fallback", "replies"):  # tables of their own
                continue
            assert f"{name} =" in text or f"{name}_file =" in text, f"{cls.__name__}.{name}"





async def test_concurrent_batches_mail_each_problem_once(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = AlertService(make_config(tmp_path, port, SERVICE_RULE.format(options="")), clock=clock)
    for round_no in range(5):
        targets = [f"host{round_no}-{i}.example.net" for i in range(4)]
        # Collector jobs finish together: their batches (and the clock job) flush at once.
        await asyncio.gather(*(svc.consume("services", Batch(checks=[
            check(t, State.CRITICAL, clock.now)])) for t in targets), svc.tick())
        clock.now += 120
        await asyncio.gather(*(svc.consume("services", Batch(checks=[
            check(t, State.CRITICAL, clock.now)])) for t in targets), svc.tick(), svc.tick())
    subjects = [str(mail.message["Subject"]) for mail in rec.received]
    assert [s.split(": ")[1].split("-")[0] for s in subjects] == [f"host{r}" for r in range(5)]
    assert all(s.startswith("[CRITICAL] 4 problems: ") for s in subjects), subjects
