"""The leader's copy of its alert state to Redis, with a long history: 2 years of alerts for
200 checks (an episode a day each: firing and resolved, 292,000 history rows) in the alert
database, and 30 days of sent mail (KEEP_SENT: 12,000 messages) in the outbox, made through
`alerts.state.AlertStore` and `alerts.outbox.Outbox`.

A leader's round after one new alert (a state, two history rows, one mail queued), one after a
reading that changed only an alert state (the alert database alone), and one in which nothing
changed, each timed (wall and CPU of this process) with the bytes Redis
received:
- reference: the whole of both databases each round (serialized, base64, one HSET: the copy
  before the page-by-page one);
- `AlertStateReplica.save`: only the pages that changed, nothing when no database did.
Run: .venv/bin/python bench/leader_state_bench.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import redis

from alerts.engine import AlertState, Event, Kind
from alerts.mail import make_message
from alerts.outbox import Outbox
from alerts.state import AlertStore
from cluster.node import ClusterNode
from cluster.results import AlertStateReplica
from monitor.config import ClusterConfig, SmtpConfig
from monitor.model import State

CHECKS, DAYS, MAIL_DAYS, ROUNDS = 200, 730, 30, 7
T0 = 1_700_000_000.0


def event(kind: Kind, check: int, at: float) -> Event:
    return Event(kind, f"watched/web{check}/http", "watched", f"web{check}", "http",
                 State.CRITICAL if kind is Kind.FIRING else State.OK,
                 f"web{check} http: connection refused (port 443)", None, "", at, at, ("ops",))


def long_history(state_dir: Path) -> tuple[AlertStore, Outbox]:
    store = AlertStore(state_dir / "alerts.db")
    for day in range(DAYS):
        at = T0 + day * 86400
        store.save([], [event(kind, c, at + c * 60 + (kind is Kind.RESOLVED) * 900)
                        for c in range(CHECKS) for kind in (Kind.FIRING, Kind.RESOLVED)])
    outbox = Outbox(state_dir / "outbox.db", SmtpConfig(host="127.0.0.1", sender="monitor@example.net"))
    body = "\n".join(f"web{c} http: connection refused (port 443), for 15 min" for c in range(40))
    outbox.enqueue(make_message(sender="monitor@example.net", to=["ops@example.net"],
                                subject="[monitor] CRITICAL web1 http", body=body))
    db = sqlite3.connect(outbox.db_path)
    with db:  # the same message again as the 30 days of sent mail, in one transaction
        db.execute(
            "INSERT INTO outbox (message_id, sender, recipients, subject, raw, created, status, "
            "done_at) SELECT '<m' || n.value || '@example.net>', sender, recipients, subject, "
            "raw, created, 'sent', created FROM outbox, json_each(?) AS n",
            (json.dumps(list(range(CHECKS * 2 * MAIL_DAYS))),))
    db.close()
    return store, outbox


def one_alert(store: AlertStore, outbox: Outbox, n: int) -> None:
    at = T0 + DAYS * 86400 + n * 60
    state = AlertState(f"watched/web{n}/http", "watched", f"web{n}", "http", since=at)
    store.save([state], [event(Kind.FIRING, n, at), event(Kind.RESOLVED, n, at + 30)])
    outbox.enqueue(make_message(sender="monitor@example.net", to=["ops@example.net"],
                                subject=f"[monitor] CRITICAL web{n} http", body="down"))


def one_reading(store: AlertStore, n: int) -> None:
    """A round without news: one state's reading history moves on (the alert database only)."""
    store.save([AlertState("watched/web1/http", "watched", "web1", "http", history="o" * (n % 9))])


def reference_save(client: redis.Redis, paths: dict[str, Path]) -> None:
    """The copy before: both databases whole, each round."""
    images = {}
    for name, path in paths.items():
        db = sqlite3.connect(path)
        images[name] = base64.b64encode(db.serialize()).decode()
        db.close()
    client.hset("bench:reference", mapping={"node": "bench", **images})


def measure(round_work, save) -> tuple[float, float, int, int]:
    """Median (wall s, CPU s, bytes to Redis) of a save over ROUNDS rounds."""
    walls, cpus, sent = [], [], []
    for n in range(ROUNDS):
        round_work(n)
        before = INFO()["total_net_input_bytes"]
        wall, cpu = time.perf_counter(), time.process_time()
        save()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
        sent.append(INFO()["total_net_input_bytes"] - before)
    return statistics.median(walls), statistics.median(cpus), int(statistics.median(sent)), 0


def main() -> int:
    global INFO
    with tempfile.TemporaryDirectory(prefix="leader-state-bench-") as name:
        tmp = Path(name)
        from tests.daemons import redis_server
        with redis_server(tmp) as port:
            client = redis.Redis(port=port)
            INFO = lambda: client.info("stats")  # noqa: E731
            began = time.perf_counter()
            store, outbox = long_history(tmp)
            paths = {"alerts": store.path, "outbox": outbox.db_path}
            sizes = {n: p.stat().st_size + (Path(str(p) + "-wal").stat().st_size
                                            if Path(str(p) + "-wal").exists() else 0)
                     for n, p in paths.items()}
            print(f"history: {CHECKS} checks x {DAYS} days = {CHECKS * DAYS * 2:,} history rows "
                  f"({sizes['alerts'] / 1e6:.1f} MB), {CHECKS * 2 * MAIL_DAYS:,} sent mails "
                  f"({sizes['outbox'] / 1e6:.1f} MB); made in {time.perf_counter() - began:.0f} s")
            node = ClusterNode(ClusterConfig(redis=f"redis://127.0.0.1:{port}/0", node="bench"))
            replica = AlertStateReplica(node, paths)
            loop = asyncio.new_event_loop()
            loop.run_until_complete(replica.save())  # the first save: everything, once
            counter = iter(range(10_000))

            def change(_: int) -> None:
                one_alert(store, outbox, next(counter))

            rows = {
                "reference, one new alert": measure(change, lambda: reference_save(client, paths)),
                "pages, one new alert": measure(change, lambda: loop.run_until_complete(
                    replica.save())),
                "reference, a reading": measure(lambda n: one_reading(store, n),
                                                lambda: reference_save(client, paths)),
                "pages, a reading": measure(lambda n: one_reading(store, n),
                                            lambda: loop.run_until_complete(replica.save())),
                "reference, nothing new": measure(lambda _: None,
                                                  lambda: reference_save(client, paths)),
                "pages, nothing new": measure(lambda _: None, lambda: loop.run_until_complete(
                    replica.save())),
            }
            loop.run_until_complete(replica.close())
            loop.run_until_complete(node.close())
            loop.close()
            store.close()
            outbox.close()
    load = os.getloadavg()[0]
    print(f"a leader's save of its alert state, median of {ROUNDS} rounds (load average "
          f"{load:.1f}):")
    for what, (wall, cpu, sent, _) in rows.items():
        print(f"  {what:26s} {wall * 1000:8.1f} ms wall {cpu * 1000:8.1f} ms CPU "
              f"{sent / 1e3:10.1f} kB to Redis")
    for case in ("one new alert", "a reading", "nothing new"):
        ref, new = rows[f"reference, {case}"], rows[f"pages, {case}"]
        print(f"ratio (reference / pages), {case}: CPU {ref[1] / max(new[1], 1e-6):.0f}x, "
              f"bytes {ref[2] / max(new[2], 1):.0f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
