"""The leader's alert state and mail across a failover, for real: a redis-server on loopback,
agents as `monitor run` processes, an SMTP sink that holds its answer to a message until the
test has killed the leader (the one moment where a mail can be sent twice: the relay has it,
the leader never heard so), and the page-by-page copy of the alert state in Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import sqlite3
import threading
from pathlib import Path

import pytest
import redis

from alerts.mail import make_message
from alerts.outbox import FAILED, SENT, Outbox
from cluster.node import ClusterNode
from cluster.results import ALERT_STATE, AlertStateReplica, MailLedger
from monitor.config import ClusterConfig, SmtpConfig
from tests.daemons import redis_server
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_cluster import (
    SmtpSink,
    Switch,
    agent,
    alerting_config,
    cluster_config,
    live,
    tcp_checks,
    wait_cycles,
    wait_until,
)


class HoldingRecorder(Recorder):
    """Keeps every message, as a relay does once it has it, but answers the first one only when
    the test says so."""

    def __init__(self) -> None:
        super().__init__()
        self.held = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server, session, envelope) -> str:
        answer = await super().handle_DATA(server, session, envelope)
        if not self.held.is_set():
            self.held.set()
            await asyncio.to_thread(self.release.wait, 120)
        return answer


@pytest.mark.timeout(300)
def test_leader_killed_while_the_relay_holds_its_mail_the_next_leader_does_not_send_it_again(
        tmp_path):
    recorder = HoldingRecorder()
    sink = SmtpSink(recorder)
    service = Switch()
    service.up()
    names = ["node-a", "node-b"]
    body = alerting_config(sink.port, "flap") + tcp_checks(["flap"], service.port)
    try:
        with redis_server(tmp_path) as port, contextlib.ExitStack() as stack:
            client = redis.Redis(port=port, decode_responses=True)
            configs = {n: cluster_config(tmp_path, n, port, body) for n in names}
            procs = {n: stack.enter_context(agent(configs[n], tmp_path / f"{n}.log"))
                     for n in names}
            wait_until(lambda: live(client) == set(names) and client.get("monitor:leader"),
                       "two heartbeats and a leader")
            wait_cycles(2)
            service.down()
            assert recorder.held.wait(60), "the problem mail never reached the relay"
            leader = client.get("monitor:leader")
            assert leader in names
            procs[leader].send_signal(signal.SIGKILL)  # the relay has the mail; no answer yet
            procs[leader].wait()
            recorder.release.set()
            wait_until(lambda: client.get("monitor:leader") not in (None, leader), "a new leader")
            successor = client.get("monitor:leader")
            service.up()
            wait_until(lambda: len(recorder.received) >= 2, "the recovery mail")
            wait_cycles(3)  # time for a second copy of the problem mail, if one were coming
            stack.close()
    finally:
        recorder.release.set()
        sink.close()
    subjects = recorder.subjects()
    ids = recorder.message_ids()
    assert len(ids) == len(set(ids)) == 2, subjects
    assert ["RESOLVED" in s or "OK" in s for s in subjects] == [False, True], subjects
    log = (tmp_path / f"{successor}.log").read_text(errors="replace")
    assert f"begun by {leader}" in log and "not sent again" in log
    assert "Traceback" not in log


def history_db(path: Path, rows: int) -> None:
    db = sqlite3.connect(path)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("CREATE TABLE history (id INTEGER PRIMARY KEY, at REAL, message TEXT)")
    db.executemany("INSERT INTO history (at, message) VALUES (?, ?)",
                   ((i * 60.0, f"check {i % 200} went CRITICAL: connection refused")
                    for i in range(rows)))
    db.commit()
    db.close()


def dump(path: Path) -> list[str]:
    db = sqlite3.connect(path)
    try:
        return list(db.iterdump())
    finally:
        db.close()


def test_alert_state_goes_to_redis_page_by_page_and_comes_back_whole(tmp_path):
    async def scenario(port: int) -> None:
        config = ClusterConfig(redis=f"redis://127.0.0.1:{port}/0", node="node-a",
                               buffer_dir=tmp_path / "buffer")
        leader = ClusterNode(config)
        paths = {"alerts": tmp_path / "a" / "alerts.db"}
        paths["alerts"].parent.mkdir()
        history_db(paths["alerts"], 50_000)
        replica = AlertStateReplica(leader, paths)
        raw = redis.Redis(port=port)
        await replica.save()
        pages = raw.hlen(f"{ALERT_STATE}:alerts")
        assert pages > 100
        assert int(raw.hget(ALERT_STATE, "alerts:pages")) == pages

        commands = raw.info("commandstats")
        before = commands.get("cmdstat_hset", {}).get("calls", 0)
        await replica.save()  # nothing changed: nothing written
        assert raw.info("commandstats")["cmdstat_hset"]["calls"] == before
        assert raw.hget(ALERT_STATE, "version") == b"1"

        db = sqlite3.connect(paths["alerts"])
        db.execute("INSERT INTO history (at, message) VALUES (1e9, 'a new problem')")
        db.commit()
        db.close()
        size = paths["alerts"].stat().st_size
        before = raw.info("stats")["total_net_input_bytes"]
        await replica.save()
        written = raw.info("stats")["total_net_input_bytes"] - before
        assert written < 16 * 4096 < size / 10, (written, size)  # a few pages, not the file
        assert raw.hget(ALERT_STATE, "version") == b"2"

        follower = ClusterNode(ClusterConfig(redis=config.redis, node="node-b",
                                             buffer_dir=tmp_path / "buffer-b"))
        theirs = {"alerts": tmp_path / "b" / "alerts.db"}
        theirs["alerts"].parent.mkdir()
        sqlite3.connect(theirs["alerts"]).close()
        successor = AlertStateReplica(follower, theirs)
        assert await successor.restore()
        assert dump(theirs["alerts"]) == dump(paths["alerts"])
        assert not await successor.restore()  # what it holds is Redis' version already
        for node, copy in ((leader, replica), (follower, successor)):
            await copy.close()
            await node.close()

    with redis_server(tmp_path) as port:
        asyncio.run(scenario(port))


def test_mail_ledger_a_message_begun_or_sent_by_one_leader_is_not_sent_by_another(tmp_path):
    async def scenario(port: int) -> None:
        url = f"redis://127.0.0.1:{port}/0"

        async def allowed() -> bool:
            return True
        first = ClusterNode(ClusterConfig(redis=url, node="node-a", buffer_dir=tmp_path / "a"))
        second = ClusterNode(ClusterConfig(redis=url, node="node-b", buffer_dir=tmp_path / "b"))
        a, b = MailLedger(first, allowed), MailLedger(second, allowed)
        assert await a.taken("<m1@x>") is None
        assert await a.begin("<m1@x>") is None
        assert await a.taken("<m1@x>") is None  # its own: it may send once more (unconfirmed)
        assert (await b.taken("<m1@x>") or "").startswith("begun by node-a")
        assert (await b.begin("<m1@x>") or "").startswith("begun by node-a")
        await a.settle("<m1@x>", "unconfirmed")  # no answer: it stays begun
        assert (await b.taken("<m1@x>") or "").startswith("begun by node-a")
        await a.settle("<m1@x>", "sent")
        assert (await a.taken("<m1@x>") or "").startswith("sent by node-a")
        assert (await b.taken("<m1@x>") or "").startswith("sent by node-a")
        assert await b.begin("<m2@x>") is None
        assert (await a.begin("<m2@x>") or "").startswith("begun by node-b")
        await b.settle("<m2@x>", "deferred")  # the relay did not take it: anyone may send it
        assert await a.taken("<m2@x>") is None and await a.begin("<m2@x>") is None
        await a.settle("<m2@x>", "refused")
        assert (await b.taken("<m2@x>") or "").startswith("refused for good")
        await first.close()
        await second.close()

    with redis_server(tmp_path) as port:
        asyncio.run(scenario(port))


def test_the_next_leaders_copy_of_the_outbox_does_not_resend_what_the_last_one_sent(tmp_path):
    """Two leaders in turn, each with its copy of the outbox (the second holds the image taken
    before the first one sent: killed between the relay's "250" and the next save)."""
    async def scenario(port: int) -> None:
        recorder = Recorder()
        server, smtp_port = await start_smtp(recorder)
        smtp = SmtpConfig(host="127.0.0.1", port=smtp_port, sender="monitor@example.net",
                          timeout=5)
        url = f"redis://127.0.0.1:{port}/0"
        nodes = [ClusterNode(ClusterConfig(redis=url, node=n, buffer_dir=tmp_path / n))
                 for n in ("node-a", "node-b")]

        async def leads() -> bool:
            return True
        first = Outbox(tmp_path / "a.db", smtp)
        first.share(MailLedger(nodes[0], leads))
        for subject in ("CRITICAL web1 http", "refused: CRITICAL web2 http"):
            first.enqueue(make_message(sender=smtp.sender, to=["ops@example.net"],
                                       subject=subject, body="down"))
        first.close()
        shutil.copy(tmp_path / "a.db", tmp_path / "b.db")  # the image the next leader gets
        first = Outbox(tmp_path / "a.db", smtp)
        first.share(MailLedger(nodes[0], leads))
        recorder.reject["refused"] = "550 no such user"
        assert await first.deliver_pending() == 1
        second = Outbox(tmp_path / "b.db", smtp)
        second.share(MailLedger(nodes[1], leads))
        assert await second.deliver_pending() == 0
        assert len(recorder.received) == 1
        states = {e.subject: (e.status, e.last_error) for e in second.entries()}
        assert states["CRITICAL web1 http"][0] == SENT
        assert states["CRITICAL web1 http"][1].startswith("sent by node-a")
        assert states["refused: CRITICAL web2 http"][0] == FAILED
        for box in (first, second):
            box.close()
        for node in nodes:
            await node.close()
        server.close()

    with redis_server(tmp_path) as port:
        asyncio.run(scenario(port))
