"""Alert state and the mail it causes are durable together: a full disk, a crash in between.

The full disk is real: a size-limited tmpfs mounted by the test (skipped where mounting is not
allowed), filled with a file until the kernel says ENOSPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from alerts.service import AlertService
from monitor.model import Batch, State
from tests.conftest import ROOT
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_alerts import (
    SERVICE_RULE,
    T0,
    Clock,
    check,
    make_config,
)
from tests.test_alerts import relay as relay_fixture

relay = relay_fixture  # the aiosmtpd relay fixture, shared


class SmallDisk:
    """A tmpfs of `size` mounted at `path`; fill() until ENOSPC, free() again."""

    def __init__(self, path: Path, size: str) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        if os.geteuid() != 0:
            pytest.skip("mounting a small tmpfs needs root")
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        self.filler = path / "filler"

    def fill(self) -> None:
        with open(self.filler, "ab", buffering=0) as f, contextlib.suppress(OSError):
            while True:
                f.write(b"\0" * 4096)

    def free(self) -> None:
        self.filler.unlink()

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    disk = SmallDisk(tmp_path / "small", "1m")
    yield disk
    disk.umount()


def service_on(disk: SmallDisk, port: int, clock: Clock) -> AlertService:
    config = make_config(disk.path, port, SERVICE_RULE.format(options=""), group_window="0s")
    return AlertService(config, clock=clock)


async def test_problem_raised_while_the_disk_is_full_is_mailed_before_its_recovery(
        small_disk, relay):
    rec, port = relay
    clock = Clock()
    svc = service_on(small_disk, port, clock)
    small_disk.fill()
    await svc.consume("services", Batch(checks=[check("d2", State.CRITICAL, T0)]))
    assert rec.received == []
    assert "full" in svc.save_error or "I/O" in svc.save_error
    small_disk.free()
    clock.now += 20
    await svc.consume("services", Batch(checks=[check("d2", State.OK, clock.now)]))
    subjects = rec.subjects()
    # Nobody gets "recovered" for a problem nobody was paged about: the firing event that
    # could not be saved is saved (and mailed) first, then its recovery.
    (mail,) = rec.received
    assert subjects[0].startswith("[OK] d2 smtp: recovered after 20s"), subjects
    assert "[CRITICAL] d2 smtp: SMTP no answer in 10 s" in mail.message.get_content()
    assert [h.kind for h in svc.store.history(T0)] == ["firing", "resolved"]
    assert svc.save_error == ""


async def test_nothing_counts_as_announced_until_it_is_saved(small_disk, relay):
    """A restart while the disk was full announces the problem again (not silently forgotten)."""
    rec, port = relay
    clock = Clock()
    svc = service_on(small_disk, port, clock)
    small_disk.fill()
    await svc.consume("services", Batch(checks=[check("d2", State.CRITICAL, T0)]))
    await svc.tick()  # still full: the retry fails too
    small_disk.free()
    restarted = service_on(small_disk, port, clock)
    assert restarted.states == {}  # the engine's unsaved decision is not on disk
    clock.now += 30
    await restarted.consume("services", Batch(checks=[check("d2", State.CRITICAL, clock.now)]))
    assert [s.split(":")[0] for s in rec.subjects()] == ["[CRITICAL] d2 smtp"]


async def test_mail_handed_to_the_outbox_before_a_failure_is_not_sent_twice(
        tmp_path, small_disk, relay):
    """alerts.db on a disk that fills up between the outbox taking a mail and the queue
    letting go of its events (outbox.db elsewhere): the retry sends nothing new."""
    rec, port = relay
    clock = Clock()
    roomy = tmp_path / "roomy"
    roomy.mkdir()
    state_dir = small_disk.path / "data" / "state"
    state_dir.mkdir(parents=True)
    (state_dir / "outbox.db").symlink_to(roomy / "outbox.db")
    config = make_config(small_disk.path, port, SERVICE_RULE.format(options=""), group_window="1m")
    svc = AlertService(config, clock=clock)
    await svc.consume("services", Batch(checks=[check("d2", State.CRITICAL, T0)]))
    clock.now += 61
    small_disk.fill()
    await svc.tick()  # no exception: that would back the agent's alert job off
    assert svc.mail_check().state is State.CRITICAL
    assert "cannot be handed to the outbox" in svc.mail_check().message
    small_disk.free()
    for _ in range(3):
        clock.now += 61
        await svc.tick()
    await svc.deliver()
    assert [s.split(":")[0] for s in rec.subjects()] == ["[CRITICAL] d2 smtp"]
    assert len(svc.outbox.entries()) == 1


# -- kill -9 anywhere on the alert path ---------------------------------------------------------

CHILD = textwrap.dedent("""
    # The agent's alert path in a process of its own: states, queue, outbox, delivery task.
    import asyncio, sys, time
    from alerts.service import AlertService
    from monitor.config import load_config
    from monitor.model import Batch, CheckResult, State

    async def main():
        svc = AlertService(load_config(sys.argv[1]))
        svc.outbox.start(poll=0.2)
        for i in range(int(sys.argv[2])):
            await svc.consume("services", Batch(checks=[CheckResult(
                f"t{i:03d}", "smtp", State.CRITICAL, "no answer", timestamp=time.time())]))
        while svc.outbox.pending():
            await asyncio.sleep(0.05)
        await svc.outbox.stop()
        print("done", flush=True)

    asyncio.run(main())
""")

_TARGET = re.compile(r"^\[CRITICAL\] (t\d{3}) smtp", re.M)


async def kill_9_loop(tmp_path: Path, alerts: int, kills: int, budget: float,
                      delay: float = 0.05) -> dict:
    """Start the alert path, kill -9 it at a random moment, again and again (at most `kills`
    times and `budget` seconds), then let it finish. Counts, per alert, the mails that reached
    a slow relay and their Message-IDs."""
    rec = Recorder(delay=delay)
    server, port = await start_smtp(rec)
    config = tmp_path / "config.toml"
    config.write_text(textwrap.dedent(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        [smtp]
        host = "127.0.0.1"
        port = {port}
        from = "monitor@example.net"
        [contacts]
        admins = ["admin@example.net"]
        [alerts]
        group_window = "0s"
        [[alerts.rules]]
        name = "down"
        check = "smtp"
    """))
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    rng = random.Random(16)
    done_kills = 0
    started = time.monotonic()

    async def child() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable, "-c", CHILD, str(config), str(alerts), cwd=ROOT, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)

    try:
        while done_kills < kills and time.monotonic() - started < budget:
            proc = await child()
            await asyncio.sleep(rng.uniform(0.3, 1.2))  # python starts in ~0.3 s
            if proc.returncode is None:
                proc.send_signal(signal.SIGKILL)
                done_kills += 1
            await proc.wait()
        proc = await child()
        out, _ = await asyncio.wait_for(proc.communicate(), 120)
        assert out.strip() == b"done"
    finally:
        server.close()
    per_alert: dict[str, list[str]] = {f"t{i:03d}": [] for i in range(alerts)}
    for received in rec.received:
        msg = received.message
        for target in _TARGET.findall(msg.get_content()):
            per_alert[target].append(str(msg["Message-ID"]))
    lost = [t for t, ids in per_alert.items() if not ids]
    duplicates = sum(len(ids) - 1 for ids in per_alert.values() if ids)
    new_ids = [t for t, ids in per_alert.items() if len(set(ids)) > 1]
    return {"kills": done_kills, "lost": lost, "duplicates": duplicates,
            "duplicates_with_a_new_message_id": new_ids, "mails": len(rec.received),
            "seconds": time.monotonic() - started}


async def test_kill_9_on_the_alert_path_loses_nothing_and_duplicates_keep_their_id(tmp_path):
    result = await kill_9_loop(tmp_path, alerts=40, kills=5, budget=15)
    assert result["kills"] >= 3, result
    assert result["lost"] == [], result
    assert result["duplicates_with_a_new_message_id"] == [], result


@pytest.mark.parametrize("name", ["alerts.db", "outbox.db"])
async def test_a_damaged_database_is_moved_aside_and_reported(tmp_path, relay, name):
    rec, port = relay
    config = make_config(tmp_path, port, SERVICE_RULE.format(options=""), group_window="0s")
    config.state_dir.mkdir(parents=True)
    damaged = config.state_dir / name
    damaged.write_bytes(b"this is not an SQLite database, whatever happened to it\n" * 100)
    svc = AlertService(config)  # no traceback: the agent keeps running
    (aside,) = config.state_dir.glob(f"{name}.damaged-*")
    assert aside.read_bytes().startswith(b"this is not an SQLite")
    check_result = svc.mail_check()
    assert check_result.state is State.CRITICAL
    assert f"{damaged} is damaged" in check_result.message and str(aside) in check_result.message
    await svc.consume("services", Batch(checks=[check("d2", State.CRITICAL, time.time())]))
    assert [s.split(":")[0] for s in rec.subjects()] == ["[CRITICAL] d2 smtp"]


def test_monitor_alerts_reads_on_a_full_disk(small_disk):
    import argparse

    from alerts.commands import cmd_alerts

    config = make_config(small_disk.path, 25, SERVICE_RULE.format(options=""))
    AlertService(config).close()
    small_disk.fill()
    assert cmd_alerts(config, argparse.Namespace(history="24h")) == 0
