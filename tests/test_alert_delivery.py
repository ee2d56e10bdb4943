"""Mail delivery on its own task: a stuck relay never holds up collection, a stop or a reload;
new alerts are tried at once; a relay that comes back gets everything within a minute."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import textwrap
import time
from dataclasses import dataclass, field

from alerts.mail import make_message
from alerts.outbox import PENDING, Outbox
from monitor.agent import Agent
from monitor.config import SmtpConfig
from monitor.model import Batch, CheckResult, State
from tests.conftest import MONITOR, ROOT
from tests.smtp_helpers import Recorder, free_port, start_smtp
from tests.test_alerts import Clock, make_config


@dataclass
class Tarpit:
    """A "relay" that accepts connections and never says a word."""

    connections: int = 0
    writers: list = field(default_factory=list)
    server: asyncio.AbstractServer | None = None
    port: int = 0

    async def start(self) -> Tarpit:
        async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            self.writers.append(writer)
            await reader.read()  # until the client gives up

        self.server = await asyncio.start_server(hold, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]
        return self

    def close(self) -> None:
        assert self.server is not None
        self.server.close()
        for w in self.writers:
            w.close()


@dataclass
class Probe:
    """A collector that reports one CRITICAL check per run and counts its runs."""

    name: str = "probe"
    interval: float = 0.2
    runs: int = 0

    async def collect(self) -> Batch:
        self.runs += 1
        return Batch(checks=[CheckResult("d2", "smtp", State.CRITICAL, "no answer",
                                         timestamp=time.time())])


RULE = """
    [[alerts.rules]]
    name = "service-down"
    check = "smtp"
"""


async def test_a_tarpit_relay_does_not_hold_up_collection_or_the_stop(tmp_path):
    tarpit = await Tarpit().start()
    config = make_config(tmp_path, tarpit.port, RULE, group_window="0s")
    config.smtp.timeout = 120.0
    agent = Agent(config)
    probe = Probe()
    agent.collectors = [probe]
    try:
        agent.schedule()
        agent.scheduler.start()
        for _ in range(200):  # until delivery is stuck in the tarpit
            await asyncio.sleep(0.05)
            if tarpit.connections:
                break
        assert tarpit.connections == 1
        stuck_at = probe.runs
        await asyncio.sleep(2.0)
        # Collection went on while the only delivery attempt hung (0.2 s interval: ~10 runs;
        # before, the first run waited for the relay and every later turn was skipped).
        assert probe.runs - stuck_at >= 4
        assert tarpit.connections == 1
        # The stop cancels the hanging session; the mail stays queued for the next start.
        await asyncio.wait_for(agent.close(), 20)
    finally:
        tarpit.close()
    assert [e.status for e in Outbox(config.state_dir / "outbox.db", config.smtp).entries()] == [
        PENDING]


def test_sighup_and_sigterm_are_not_held_up_by_a_tarpit_relay(tmp_path):
    """A real agent process: reload and stop while its only relay holds the session."""
    async def scenario() -> tuple[int, str]:
        tarpit = await Tarpit().start()
        closed = free_port()
        data = tmp_path / "data"
        config = tmp_path / "config.toml"
        config.write_text(textwrap.dedent(f"""
            [agent]
            data_dir = "{data}"
            interval = "1s"
            jitter = "0s"
            [host]
            enabled = false
            [disks]
            enabled = false
            [web]
            interval = "0s"
            [smtp]
            host = "127.0.0.1"
            port = {tarpit.port}
            from = "monitor@example.net"
            timeout = "120s"
            [contacts]
            admins = ["admin@example.net"]
            [alerts]
            group_window = "0s"
            [[services]]
            name = "gone"
            kind = "tcp"
            host = "127.0.0.1"
            port = {closed}
            [[alerts.rules]]
            name = "down"
            check = "*"
            target = "127.0.0.1"
        """))
        log = tmp_path / "agent.log"
        with open(log, "w") as err:
            proc = subprocess.Popen([*MONITOR, "--config", str(config), "run"], stderr=err,
                                    env=dict(os.environ, PYTHONPATH=str(ROOT)), cwd=ROOT)
        try:
            for _ in range(400):
                await asyncio.sleep(0.05)
                if tarpit.connections:
                    break
            assert tarpit.connections, log.read_text()
            proc.send_signal(signal.SIGHUP)
            for _ in range(400):  # the reloaded agent tries the relay again
                await asyncio.sleep(0.05)
                if "config reloaded" in log.read_text() and tarpit.connections >= 2:
                    break
            assert "config reloaded" in log.read_text()
            proc.send_signal(signal.SIGTERM)
            # The session with the tarpit would last 120 s; the stop must not wait for it.
            code = await asyncio.wait_for(asyncio.to_thread(proc.wait), 20)
        finally:
            proc.kill()
            tarpit.close()
        return code, log.read_text()

    code, text = asyncio.run(scenario())
    assert code == 0, text
    assert "stopped" in text


def message(subject: str):
    return make_message(sender="monitor@example.net", to=["admin@example.net"], subject=subject,
                        body="down\n")


def smtp(port: int) -> SmtpConfig:
    return SmtpConfig(host="127.0.0.1", port=port, sender="monitor@example.net", timeout=5)


async def test_new_mail_is_tried_at_once_and_a_returning_relay_gets_all_within_a_minute(tmp_path):
    port = free_port()
    clock = Clock()
    box = Outbox(tmp_path / "outbox.db", smtp(port), clock)
    # Ten minutes of outage, the delivery task probing whenever it is due.
    for minute in range(10):
        box.enqueue(message(f"queued {minute}"))
        await box.deliver_pending(new_mail=True)
        for _ in range(6):
            clock.now += 10
            await box.deliver_pending()
    relay = box.relay_state()
    assert relay.failures >= 10
    assert relay.next_attempt - clock.now <= 60  # probes of a down relay: at most 60 s apart

    rec = Recorder()
    server, _ = await start_smtp(rec, port=port)
    try:
        # A new alert right after the relay returns: tried at once, whatever the back-off.
        box.enqueue(message("fresh"))
        await box.deliver_pending(new_mail=True)
        assert rec.subjects() == [f"queued {m}" for m in range(10)] + ["fresh"]
    finally:
        server.close()


async def test_queued_mail_leaves_within_a_minute_of_the_relays_return(tmp_path):
    port = free_port()
    clock = Clock()
    box = Outbox(tmp_path / "outbox.db", smtp(port), clock)
    for minute in range(10):
        box.enqueue(message(f"queued {minute}"))
        await box.deliver_pending(new_mail=True)
        clock.now += 60
    rec = Recorder()
    server, _ = await start_smtp(rec, port=port)
    try:
        assert await box.deliver_pending() == 0 or rec.received  # maybe still backed off
        clock.now += 60  # the next probe is at most a minute away
        await box.deliver_pending()
    finally:
        server.close()
    assert rec.subjects() == [f"queued {m}" for m in range(10)]


async def test_the_delivery_task_sends_when_the_relay_returns(tmp_path):
    """The agent's task itself (real time, short back-off): nothing needs another trigger."""
    port = free_port()
    box = Outbox(tmp_path / "outbox.db", smtp(port), retry_base=0.2, retry_max=0.5)
    box.start(poll=0.5)
    rec = Recorder()
    try:
        box.enqueue(message("during the outage"))
        await box.deliver_pending(new_mail=True)
        for _ in range(100):
            await asyncio.sleep(0.05)
            if box.relay_state().failures:
                break
        assert box.relay_state().failures >= 1
        server, _ = await start_smtp(rec, port=port)
        try:
            for _ in range(200):
                await asyncio.sleep(0.05)
                if rec.received:
                    break
        finally:
            server.close()
    finally:
        await box.stop()
    assert rec.subjects() == ["during the outage"]
