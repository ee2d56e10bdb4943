"""What the on-call person sees: acknowledgements, threads, links, improvements, removed rules,
the silence hint, and subjects that say the right thing. A real aiosmtpd relay throughout."""

from __future__ import annotations

import argparse
import subprocess
import textwrap
from urllib.parse import quote

import pytest

from alerts.commands import cmd_ack
from alerts.engine import Event, Kind
from alerts.notify import subject_for
from alerts.service import AlertService
from alerts.state import AlertStore, Silence, alerts_db_path
from monitor.config import parse_config
from monitor.model import Batch, State
from monitor.store import safe_name
from tests.conftest import MONITOR, ROOT
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_alerts import (
    DEPENDENT_RULES,
    SERVICE_RULE,
    T0,
    Clock,
    check,
    make_config,
)
from tests.test_alerts import relay as relay_fixture

relay = relay_fixture  # the aiosmtpd relay fixture, shared


def service(tmp_path, port, options="", clock=None, rules=None, extra=""):
    config = make_config(tmp_path, port, rules or SERVICE_RULE.format(options=options), extra,
                         group_window="0s")
    return AlertService(config, clock=clock or Clock())


async def feed(svc: AlertService, target: str, state: State, message: str | None = None):
    await svc.consume("services", Batch(checks=[check(target, state, svc.clock(), message)]))


async def test_ack_stops_repeats_and_escalation_and_later_mails_say_who(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = service(tmp_path, port, 'repeat = "10m"\nescalate_after = "30m"\nescalate_to = ["boss"]',
                  clock)
    await feed(svc, "mail.example.net", State.CRITICAL)
    assert len(rec.received) == 1
    code = cmd_ack(svc.config, argparse.Namespace(pattern="mail.example.net smtp",
                                                  comment="disk swap, back at 3", until=None))
    assert code == 0
    clock.now += 60
    await svc.tick()  # the agent applies the ack and tells the group that heard of it
    assert rec.subjects()[-1] == ("[ACK] mail.example.net smtp: acknowledged by "
                                  f"{svc.states[next(iter(svc.states))].ack_by}: disk swap, back "
                                  "at 3 (CRITICAL: SMTP no answer in 10 s)")
    for _ in range(6):  # an hour: no repeat, no escalation
        clock.now += 600
        await svc.tick()
    assert len(rec.received) == 2
    await feed(svc, "mail.example.net", State.WARNING, "SMTP slow")
    body = rec.received[-1].message.get_content()
    assert rec.subjects()[-1].startswith("[WARNING] improved, mail.example.net smtp: SMTP slow")
    assert "acked:     " in body and "disk swap, back at 3" in body
    await feed(svc, "mail.example.net", State.OK)
    assert rec.subjects()[-1].startswith("[OK] mail.example.net smtp: recovered")
    # Sticky until the recovery: the next problem pages again, and may repeat.
    await feed(svc, "mail.example.net", State.CRITICAL)
    state = next(iter(svc.states.values()))
    assert state.ack_by == "" and rec.subjects()[-1].startswith("[CRITICAL] mail.example.net")


async def test_ack_matching_nothing_is_refused(tmp_path, relay, capsys):
    _, port = relay
    svc = service(tmp_path, port)
    assert cmd_ack(svc.config, argparse.Namespace(pattern="nothing*", comment="", until=None)) == 1
    assert "no current problem matches 'nothing*'" in capsys.readouterr().out


async def test_mails_of_one_problem_are_one_thread_with_a_link_to_its_page(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = service(tmp_path, port, 'repeat = "10m"', clock)
    await feed(svc, "web[1].example.net", State.CRITICAL)
    clock.now += 600
    await svc.tick()
    await feed(svc, "web[1].example.net", State.OK)
    await feed(svc, "other", State.CRITICAL)
    assert len(rec.received) == 4
    messages = [r.message for r in rec.received]
    ids = {str(m["Message-ID"]) for m in messages}
    assert len(ids) == 4
    thread = {str(m["In-Reply-To"]) for m in messages[:3]}
    assert len(thread) == 1 and thread.pop() not in ids
    assert str(messages[0]["References"]) == str(messages[2]["References"])
    assert str(messages[3]["In-Reply-To"]) != str(messages[0]["In-Reply-To"])  # another problem
    body = messages[0].get_content()
    # The directory the site writes for that target (graphs/site.py: quote(safe_name(target))).
    page = f"https://monitor.example.net/{quote(safe_name('web[1].example.net'))}/index.html"
    assert f"page:      {page}" in body
    # The silence hint silences that alert only, even with glob characters in the name.
    hint = next(line for line in body.splitlines() if line.startswith("Silence:"))
    assert hint == ("Silence: monitor silence add 'web[[]1].example.net smtp' --for 2h "
                    "--reason '...'")
    pattern = "web[[]1].example.net smtp"
    assert Silence(0, pattern, "", 0, 0).matches("service-down", "web[1].example.net", "smtp")
    assert not Silence(0, pattern, "", 0, 0).matches("service-down", "web[1].example.net", "http")
    assert not Silence(0, pattern, "", 0, 0).matches("service-down", "web1.example.net", "smtp")


def test_removing_a_rule_that_paged_sends_its_recovery(tmp_path):
    async def scenario():
        rec = Recorder()
        server, port = await start_smtp(rec)
        try:
            svc = service(tmp_path, port)
            await feed(svc, "mail.example.net", State.CRITICAL)
            svc.close()
            # The reload: the same config without the rule.
            config = make_config(tmp_path, port, """
                [[alerts.rules]]
                name = "other"
                check = "http"
            """, group_window="0s")
            reloaded = AlertService(config, clock=Clock())
            await reloaded.flush()
            return rec.subjects(), reloaded
        finally:
            server.close()

    import asyncio
    subjects, reloaded = asyncio.run(scenario())
    assert len(subjects) == 2
    assert subjects[1].startswith("[OK] mail.example.net smtp: recovered after")
    assert "resolved: rule 'service-down' removed from the config" in subjects[1]
    assert reloaded.states == {}
    assert AlertStore(alerts_db_path(reloaded.config.state_dir)).load_states() == {}


def event(kind: Kind, target: str, at: float = T0, severity: State = State.CRITICAL) -> Event:
    return Event(kind, f"r\x1f{target}\x1fsmtp", "r", target, "smtp", severity, "down", None, "",
                 T0 - 60, at, ("admins",), 40.0)


def test_subjects_count_each_problem_once_and_sort_addresses_as_numbers():
    fired_and_back = [event(Kind.FIRING, "d2"), event(Kind.RESOLVED, "d2", T0 + 20, State.OK)]
    assert subject_for(fired_and_back, T0 + 20).startswith("[OK] d2 smtp: recovered after 1m")
    only_flapping = [event(Kind.FLAPPING, "a"), event(Kind.FLAPPING, "b")]
    assert subject_for(only_flapping, T0).startswith("[FLAPPING] 2 flapping notices")
    many = [event(Kind.FIRING, t) for t in ("127.0.1.100", "127.0.1.10", "127.0.1.2")]
    assert subject_for(many, T0) == ("[CRITICAL] 3 problems: 127.0.1.2 smtp, 127.0.1.10 smtp, "
                                     "127.0.1.100 smtp")


async def test_short_durations_are_whole_seconds(tmp_path, relay):
    rec, port = relay
    clock = Clock()
    svc = service(tmp_path, port, "", clock)
    await feed(svc, "d2", State.CRITICAL)
    clock.now += 0.0220637
    await feed(svc, "d2", State.OK)
    body = rec.received[0].message.get_content()
    assert "ms ago" not in body and "(0s ago)" in body


def test_ack_command_help_and_cli(tmp_path):
    out = subprocess.run([*MONITOR, "ack", "--help"], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0 and "--comment" in out.stdout and "--until" in out.stdout
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
    """))
    parse_config(config.read_text(), base_dir=tmp_path)
    out = subprocess.run([*MONITOR, "--config", str(config), "ack", "x"], capture_output=True,
                         text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 1 and "no current problem matches 'x'" in out.stdout




async def test_dependencies_are_decided_when_the_mail_leaves(tmp_path, relay):
    """Services polled more often than the router fail first; the router's own problem arrives
    32 s later, inside the group window: one mail, about the router."""
    rec, port = relay
    clock = Clock()
    config = make_config(tmp_path, port, DEPENDENT_RULES, group_window="1m")
    svc = AlertService(config, clock=clock)

    def services(state: State) -> Batch:
        return Batch(checks=[check(f"host{i}.dmz.example.net", state, clock.now, "no answer",
                                   name="ping") for i in range(5)])

    await svc.consume("services", services(State.CRITICAL))
    clock.now += 32
    await svc.consume("snmp", Batch(checks=[check("dmz-router", State.CRITICAL, clock.now,
                                                  "SNMP no answer", name="snmp")]))
    for _ in range(3):
        clock.now += 30
        await svc.consume("services", services(State.CRITICAL))
        await svc.tick()
    assert [s.split(":")[0] for s in rec.subjects()] == ["[CRITICAL] dmz-router snmp"]
    # The router recovers, one service stays down: that one is announced now, at its next
    # reading (nothing was said about it, so it owes no recovery before).
    await svc.consume("snmp", Batch(checks=[check("dmz-router", State.OK, clock.now, "up",
                                                  name="snmp")]))
    clock.now += 30
    await svc.consume("services", Batch(checks=[
        check("host0.dmz.example.net", State.CRITICAL, clock.now, "no answer", name="ping"),
        *[check(f"host{i}.dmz.example.net", State.OK, clock.now, "ok", name="ping")
          for i in range(1, 5)]]))
    clock.now += 61
    await svc.tick()
    subjects = rec.subjects()
    assert len(subjects) == 2, subjects
    assert "1 recovered" in subjects[1] and "host0.dmz.example.net ping" in subjects[1]
    assert "host1" not in rec.received[1].message.get_content()


@pytest.mark.parametrize(("options", "expected"), [
    ("", ["[FLAPPING]", "[STABLE]"]),  # flaps from its first readings: two mails, no more
    ("retries = 3", []),  # never reached a hard state: nothing to say
])
async def test_flapping_from_the_first_readings_makes_at_most_two_mails(tmp_path, relay,
                                                                        options, expected):
    rec, port = relay
    clock = Clock()
    config = make_config(tmp_path, port, SERVICE_RULE.format(options=options), group_window="1m")
    svc = AlertService(config, clock=clock)
    for i in range(30 + 40):  # 30 toggles every 5 s, then calm
        state = State.CRITICAL if i % 2 == 0 and i < 30 else State.OK
        await feed(svc, "mail.example.net", state)
        clock.now += 5
        await svc.tick()
    clock.now += 120
    await svc.tick()
    assert [s.split(" ")[0] for s in rec.subjects()] == expected, rec.subjects()


def test_problems_page_shows_who_acknowledged_and_why(tmp_path):
    from alerts.engine import AlertState, Status
    from graphs.site import SiteBuilder
    from monitor.status import StatusBook
    from monitor.store import RrdStore

    db = tmp_path / "state" / "alerts.db"
    store = AlertStore(db)
    store.save([AlertState("r\x1fd2\x1fsmtp", "service-down", "d2", "smtp", status=Status.FIRING,
                           severity=State.CRITICAL, since=T0 - 600, message="no answer",
                           notified=True, ack_by="alice", ack_comment="<b>rebooting</b>")])
    store.close()
    builder = SiteBuilder(RrdStore(tmp_path / "rrd"), StatusBook(tmp_path / "state" / "s.json"),
                          tmp_path / "html", tmp_path / "state" / "graphs.json", workers=1,
                          inline_below=10**6, clock=lambda: T0, alerts_db=db)
    try:
        builder.build()
    finally:
        builder.close()
    page = (tmp_path / "html" / "problems.html").read_text()
    assert "acknowledged by alice: &lt;b&gt;rebooting&lt;/b&gt;" in page
