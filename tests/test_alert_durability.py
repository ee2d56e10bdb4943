"""Alert state and the mail it causes are durable together: a full disk, a crash in between.

The full disk is real: a size-limited tmpfs mounted by the test (skipped where mounting is not
allowed), filled with a file until the kernel says ENOSPC.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from pathlib import Path

import pytest

from alerts.service import AlertService
from monitor.model import Batch, State
from tests.smtp_helpers import Recorder, start_smtp
from tests.test_alerts import SERVICE_RULE, T0, Clock, check, make_config


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


@pytest.fixture
async def relay():
    rec = Recorder()
    server, port = await start_smtp(rec)
    yield rec, port
    server.close()


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
    assert len(subjects) == 1 and subjects[0].startswith("[CRITICAL] 1 problem, 1 recovered"), subjects
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
    with contextlib.suppress(Exception):
        await svc.tick()
    small_disk.free()
    for _ in range(3):
        clock.now += 61
        await svc.tick()
    await svc.deliver()
    assert [s.split(":")[0] for s in rec.subjects()] == ["[CRITICAL] d2 smtp"]
    assert len(svc.outbox.entries()) == 1
