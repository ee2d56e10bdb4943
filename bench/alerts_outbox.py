"""Benchmark: the durable outbox against a plain aiosmtplib client, same relay, same run.

Reference: aiosmtplib sending N messages over one connection straight to the relay (what a
non-durable notifier does). Ours: `Outbox.enqueue()` each message (SQLite, fsync) and then
`deliver_pending()`. Also times the pure alert engine (readings per second). Prints the ratio;
the outbox is expected to cost a small factor for the guarantee that nothing accepted is lost.
Run: .venv/bin/python bench/alerts_outbox.py [N]
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


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 300))
