"""Benchmark: the durable outbox against a plain aiosmtplib client, same relay, same run.

Reference: aiosmtplib sending N messages over one connection straight to the relay (what a
non-durable notifier does). Ours: `Outbox.enqueue()` each message (SQLite, fsync) and then
`deliver_pending()`. Also times the pure alert engine (readings per second). Prints the ratio;
the outbox is expected to cost a small factor for the guarantee that nothing accepted is lost.

The on-call figures (issue 16), each with its reference in the same run:
- kill -9: the whole alert path (states, queue, outbox, delivery task) killed 100 times at
  random moments with a slow relay; mails lost, duplicated, and duplicates under a new ID.
- cadence: collection runs of a 0.5 s collector in the Agent, healthy relay (reference) against
  a tarpit relay that accepts and never answers.
- outage: mail queued during a relay outage, then the time from the relay's return until all of
  it arrived (target: within 60 s), and a new alert right after the return.
Run: .venv/bin/python bench/alerts_outbox.py [N] [--quick]
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiosmtplib
from aiosmtpd.smtp import SMTP

from alerts.engine import step
from alerts.mail import make_message
from alerts.outbox import Outbox
from alerts.rules import Reading
from monitor.config import AlertRule, SmtpConfig
from monitor.model import State


class Sink:
    def __init__(self) -> None:
        self.count = 0

    async def handle_DATA(self, server, session, envelope) -> str:
        self.count += 1
        return "250 OK"


def messages(n: int):
    return [make_message(sender="monitor@example.net", to=["admin@example.net"],
                         subject=f"[CRITICAL] host{i} smtp: no answer", body="x\n" * 20)
            for i in range(n)]


async def main(n: int) -> None:
    sink = Sink()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(sink), "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]

    msgs = messages(n)
    started = time.perf_counter()
    client = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
    await client.connect()
    for m in msgs:
        await client.send_message(m)
    await client.quit()
    reference = time.perf_counter() - started

    msgs = messages(n)
    with tempfile.TemporaryDirectory() as tmp:
        box = Outbox(Path(tmp) / "outbox.db", SmtpConfig(host="127.0.0.1", port=port,
                                                        sender="monitor@example.net"))
        started = time.perf_counter()
        for m in msgs:
            box.enqueue(m)
        enqueued = time.perf_counter() - started
        sent = await box.deliver_pending()
        ours = time.perf_counter() - started
    server.close()
    assert sent == n and sink.count == 2 * n
    print(f"direct aiosmtplib (reference): {n} mails in {reference:.2f} s = {n / reference:.0f}/s")
    print(f"durable outbox (ours):         {n} mails in {ours:.2f} s = {n / ours:.0f}/s "
          f"(enqueue {enqueued / n * 1000:.2f} ms each, fsync'd)")
    print(f"ratio ours/reference: {ours / reference:.2f}x the time")

    rule = AlertRule(name="r", check="*")
    rule.validate()
    readings = [Reading("k", "r", "t", "l", (State.OK, State.CRITICAL)[(i // 7) % 2], "m", at=i)
                for i in range(100_000)]
    started = time.perf_counter()
    s = None
    for i, r in enumerate(readings):
        s, _ = step(rule, s, r, float(i))
    engine = time.perf_counter() - started
    print(f"alert engine: {len(readings)} readings in {engine:.2f} s = "
          f"{len(readings) / engine:,.0f} readings/s")


async def kill_9(kills: int) -> None:
    from tests.test_alert_durability import kill_9_loop

    with tempfile.TemporaryDirectory() as tmp:
        r = await kill_9_loop(Path(tmp), alerts=200, kills=kills, budget=kills * 3.0)
    print(f"kill -9 x{r['kills']} with a slow relay (50 ms per message), 200 alerts: "
          f"{len(r['lost'])} lost, {r['duplicates']} duplicated "
          f"({len(r['duplicates_with_a_new_message_id'])} under a new Message-ID), "
          f"{r['mails']} mails, {r['seconds']:.0f} s")


async def cadence(seconds: float) -> None:
    from monitor.agent import Agent
    from monitor.config import parse_config
    from tests.smtp_helpers import Recorder, start_smtp
    from tests.test_alert_delivery import RULE, Probe, Tarpit

    async def runs(port: int, tmp: str) -> int:
        config = parse_config(f"""
            [agent]
            data_dir = "{tmp}"
            [host]
            enabled = false
            [disks]
            enabled = false
            [web]
            interval = "0s"
            [smtp]
            host = "127.0.0.1"
            port = {port}
            timeout = "30s"
            [contacts]
            admins = ["admin@example.net"]
            [alerts]
            group_window = "0s"
        """.replace("\n            ", "\n") + RULE.replace("\n    ", "\n"))
        agent = Agent(config)
        probe = Probe(interval=0.5)
        agent.collectors = [probe]
        agent.schedule()
        agent.scheduler.start()
        await asyncio.sleep(seconds)
        count = probe.runs
        started = time.perf_counter()
        await agent.close()
        print(f"    stop took {time.perf_counter() - started:.2f} s")
        return count

    rec = Recorder()
    server, port = await start_smtp(rec)
    with tempfile.TemporaryDirectory() as tmp:
        healthy = await runs(port, tmp)
    server.close()
    tarpit = await Tarpit().start()
    with tempfile.TemporaryDirectory() as tmp:
        stuck = await runs(tarpit.port, tmp)
    tarpit.close()
    print(f"collection runs in {seconds:.0f} s at 0.5 s: healthy relay (reference) {healthy}, "
          f"tarpit relay {stuck}: {stuck / healthy:.2f}x")


async def outage(seconds: float) -> None:
    import socket

    from tests.smtp_helpers import Recorder, start_smtp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    rec = Recorder()
    with tempfile.TemporaryDirectory() as tmp:
        box = Outbox(Path(tmp) / "outbox.db", SmtpConfig(host="127.0.0.1", port=port,
                                                        sender="monitor@example.net"))
        box.start()
        msgs = messages(14)
        for m in msgs:
            box.enqueue(m)
            await box.deliver_pending(new_mail=True)
            await asyncio.sleep(seconds / len(msgs))
        server, _ = await start_smtp(rec, port=port)
        back = time.perf_counter()
        while len(rec.received) < len(msgs):
            await asyncio.sleep(0.1)
        queued = time.perf_counter() - back
        fresh = time.perf_counter()
        box.enqueue(messages(1)[0])
        await box.deliver_pending(new_mail=True)
        while len(rec.received) < len(msgs) + 1:
            await asyncio.sleep(0.01)
        fresh = time.perf_counter() - fresh
        await box.stop()
        server.close()
    print(f"relay outage of {seconds:.0f} s, 14 mails queued: all delivered {queued:.1f} s after "
          f"the relay's return (target <= 60 s; before: 7.5 min after 10 min); a new alert then "
          f"took {fresh:.2f} s")


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    quick = "--quick" in sys.argv
    asyncio.run(main(int(args[0]) if args else 300))
    asyncio.run(kill_9(10 if quick else 100))
    asyncio.run(cadence(10 if quick else 60))
    asyncio.run(outage(20 if quick else 180))
