"""Backup results: the wrapper with real commands, log patterns, artifacts, a real restic repo."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.backups import BackupsCollector, load_runs
from monitor.config import BackupJob
from monitor.model import State
from tests.conftest import MONITOR


def stamp(at: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at))


def run_cli(config: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([*MONITOR, "--config", str(config), *args], capture_output=True,
                          timeout=60)


def test_wrapper_passes_output_and_exit_status_through(tmp_path: Path, write_config):
    config = write_config(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        [[backups]]
        name = "nightly"
        max_age = "1h"
    """)
    ok = run_cli(config, "backup-run", "nightly", "--", sys.executable, "-c",
                 "import sys; print('copied 42 files'); print('done', file=sys.stderr)")
    assert ok.returncode == 0, ok.stderr
    assert b"copied 42 files" in ok.stdout and b"done" in ok.stdout
    bad = run_cli(config, "backup-run", "nightly", "--", sys.executable, "-c",
                  "import sys; print('rsync: connection refused'); sys.exit(23)")
    assert bad.returncode == 23
    missing = run_cli(config, "backup-run", "nightly", "--", str(tmp_path / "no-such-script"))
    assert missing.returncode == 127
    runs = load_runs(tmp_path / "data" / "state", "nightly")
    assert [r["exit_status"] for r in runs] == [0, 23, 127]
    assert "copied 42 files" in runs[0]["tail"] and runs[0]["output_bytes"] > 0
    assert runs[1]["duration_seconds"] >= 0
    unknown = run_cli(config, "backup-run", "weekly", "--", "true")
    assert unknown.returncode == 2 and b"no [[backups]] job named 'weekly'" in unknown.stderr


async def test_wrapper_results_judged(tmp_path: Path):
    from collectors.backups import run_wrapped

    state = tmp_path / "state"
    job = BackupJob("nightly", max_age=3600)
    collector = BackupsCollector([job], 900, state, clock=lambda: now)
    now = 1_800_000_000.0
    (check,) = (await collector.collect()).checks
    assert check.state is State.CRITICAL and "no result recorded yet" in check.message
    out = open(os.devnull, "wb")  # noqa: SIM115
    assert run_wrapped("nightly", ["sh", "-c", "echo disk full >&2; exit 3"], state,
                       clock=lambda: now, out=out) == 3
    (check,) = (await collector.collect()).checks
    assert check.state is State.CRITICAL
    assert "exit status 3" in check.message and "disk full" in check.message
    assert run_wrapped("nightly", ["sh", "-c", r"printf 'disk \033[2Jfull\342\200\256x\n'; exit 4"],
                       state, clock=lambda: now, out=out) == 4
    (check,) = (await collector.collect()).checks  # the command's own output, on one clean line
    assert check.message.endswith(": disk  [2Jfull x")
    assert run_wrapped("nightly", ["true"], state, clock=lambda: now, out=out) == 0
    (check,) = (await collector.collect()).checks
    assert check.state is State.OK and "succeeded" in check.message
    assert {m.metric for m in check.measurements} >= {"success", "age_seconds", "duration_seconds"}
    now += 7200  # no new result within max_age: a failure in itself
    (check,) = (await collector.collect()).checks
    assert check.state is State.CRITICAL and "no result within 1h" in check.message


async def test_log_and_artifact_jobs(tmp_path: Path):
    log = tmp_path / "backup.log"
    now = time.time()
    log.write_text(f"{stamp(now - 900)} start\n{stamp(now - 300)} backup finished OK\n")
    job = BackupJob("etc", kind="log", log=log, success_pattern="finished OK",
                    failure_pattern="(?i)error", max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: now).collect()).checks
    assert check.state is State.OK
    with open(log, "a") as handle:
        handle.write(f"{stamp(now - 60)} ERROR: tar: /srv: Cannot open\n")
    (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: now).collect()).checks
    assert check.state is State.CRITICAL and "Cannot open" in check.message

    dumps = tmp_path / "dumps"
    dumps.mkdir()
    (dumps / "db-1.sql.gz").write_bytes(b"x" * 1000)
    os.utime(dumps / "db-1.sql.gz", (now - 86400, now - 86400))
    (dumps / "db-2.sql.gz").write_bytes(b"x" * 900)
    os.utime(dumps / "db-2.sql.gz", (now - 60, now - 60))
    job = BackupJob("db", kind="artifact", glob=f"{dumps}/*.sql.gz", max_shrink=20, max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: now).collect()).checks
    assert check.state is State.OK and "db-2.sql.gz" in check.message
    (dumps / "db-3.sql.gz").write_bytes(b"x" * 300)  # shrank by two thirds: suspicious
    os.utime(dumps / "db-3.sql.gz", (now - 30, now - 30))
    (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: now).collect()).checks
    assert check.state is State.CRITICAL and "67% smaller" in check.message
    later = now + 7200
    (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: later).collect()).checks
    assert check.state is State.CRITICAL and "no result within" in check.message
    missing = BackupJob("gone", kind="log", log=tmp_path / "nope.log", success_pattern="OK")
    (check,) = (await BackupsCollector([missing], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL and "does not exist" in check.message


async def test_log_success_time_is_the_line_time_not_the_file_mtime(tmp_path: Path):
    """A job that logs "starting" and dies every night is not a fresh success."""
    log = tmp_path / "backup.log"
    day = 86400
    t0 = time.time() - 3 * day
    job = BackupJob("etc", kind="log", log=log, success_pattern="finished OK",
                    failure_pattern="(?i)error", max_age=26 * 3600)

    async def check_at(at: float):
        (check,) = (await BackupsCollector([job], 900, tmp_path, clock=lambda: at).collect()).checks
        return check

    # Lines without timestamps: the time is when the agent first saw the line (the file's
    # mtime when it is the last line at first sight).
    log.write_text("backup starting\nbackup finished OK\n")
    os.utime(log, (t0, t0))
    check = await check_at(t0 + 60)
    assert check.state is State.OK and "success 1m ago" in check.message
    with open(log, "a") as handle:
        handle.write("backup starting\n")  # the next night's run dies after this line
    os.utime(log, (t0 + day, t0 + day))
    check = await check_at(t0 + 40 * 3600)
    assert check.state is State.CRITICAL and "no result within" in check.message
    assert "success 1d16h ago" in check.message
    # A new success line is dated when first seen, and that date is kept.
    with open(log, "a") as handle:
        handle.write("backup finished OK\nrotating old logs\n")
    assert (await check_at(t0 + 41 * 3600)).state is State.OK
    check = await check_at(t0 + 60 * 3600 + 26 * 3600)
    assert check.state is State.CRITICAL and "success 1d21h ago" in check.message

    # Lines with their own timestamps: the success of 40 h ago is 40 h old, whatever the mtime.
    now = time.time()
    log.write_text(f"{stamp(now - 40 * 3600)} backup finished OK\n"
                   f"{stamp(now - 3600)} backup starting\n")
    check = await check_at(now)
    assert check.state is State.CRITICAL and "no result within" in check.message
    from collectors.backups import line_time

    assert line_time("Mon Nov 23 06:25:01 UTC 2026 ok", now) is not None
    assert line_time("2026-11-23T06:25:01+01:00 ok", now) == 1795411501.0
    assert line_time("Nov 23 06:25:01 host backup: ok", 1795411501.0 + 7200) is not None
    assert line_time("backup finished OK", now) is None


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic (Debian package) not installed")
async def test_restic_repository(tmp_path: Path):
    repo, source = tmp_path / "repo", tmp_path / "src"
    source.mkdir()
    (source / "file.txt").write_text("precious data\n")
    env = {**os.environ, "RESTIC_PASSWORD": "correct horse", "RESTIC_CACHE_DIR": str(tmp_path / "c")}
    subprocess.run(["restic", "init", "--repo", str(repo)], env=env, check=True,
                   capture_output=True, timeout=60)
    job = BackupJob("offsite", kind="restic", repository=str(repo), password="correct horse",
                    max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL and "no snapshots" in check.message
    subprocess.run(["restic", "backup", "--repo", str(repo), str(source)], env=env, check=True,
                   capture_output=True, timeout=60)
    (check,) = (await BackupsCollector([job], 900, tmp_path).collect()).checks
    assert check.state is State.OK, check.message
    assert "newest snapshot" in check.message and "(1 in" in check.message
    wrong = BackupJob("offsite", kind="restic", repository=str(repo), password="wrong",
                      max_age=3600)
    (check,) = (await BackupsCollector([wrong], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL and "cannot list" in check.message


BACKUP_DATA = Path(__file__).parent / "data" / "backups"


@pytest.mark.parametrize(("recording", "shown", "advice"), [
    ("restic-no-repository", "Fatal: unable to open config file", "check the repository path"),
    ("restic-wrong-password", "Fatal: wrong password or no key found", "password_file"),
    ("restic-panic", "panic: runtime error: invalid memory address", None),
    ("borg-relocated", "Repository access aborted", "moved or is new to this user"),
    ("borg-unknown-repository", "Cache initialization aborted", "moved or is new to this user"),
    ("borg-ssh-forced-command", "Remote: Permission denied: repository /srv/borg/clients/www",
     "restrict-to-path"),
])
async def test_wrapper_failure_shows_the_line_that_carries_the_error(
        tmp_path: Path, recording: str, shown: str, advice: str | None):
    """Not the last stderr line (a bare path, a Go stack frame, SSH_ORIGINAL_COMMAND: None)."""
    from collectors.backups import run_wrapped

    state = tmp_path / "state"
    recorded = BACKUP_DATA / f"{recording}.stderr"
    out = open(os.devnull, "wb")  # noqa: SIM115
    assert run_wrapped("nightly", ["sh", "-c", 'cat "$0" >&2; exit 1', str(recorded)], state,
                       out=out) == 1
    (check,) = (await BackupsCollector([BackupJob("nightly")], 900, state).collect()).checks
    assert check.state is State.CRITICAL
    detail = check.message.split("exit status 1 after ", 1)[1]
    assert shown in detail, detail
    assert (advice in detail) if advice else "what to do" not in detail
    last_line = recorded.read_text().strip().splitlines()[-1]
    assert shown in last_line or not detail.endswith(last_line)


@pytest.mark.skipif(shutil.which("restic") is None, reason="restic (Debian package) not installed")
async def test_real_restic_without_repository_names_the_fatal_line(tmp_path: Path):
    job = BackupJob("offsite", kind="restic", repository=str(tmp_path / "none"), password="pw",
                    max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL
    assert "Fatal: unable to open config file" in check.message, check.message
    assert "check the repository path" in check.message


@pytest.mark.skipif(shutil.which("borg") is None, reason="borgbackup (Debian package) not installed")
async def test_real_borg_repository_moved_and_new_to_the_user(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "home"))
    source = tmp_path / "src"
    source.mkdir()
    (source / "file.txt").write_text("precious data\n")
    env = {**os.environ, "BORG_PASSPHRASE": "correct horse"}
    repo = tmp_path / "repo"
    subprocess.run(["borg", "init", "-e", "repokey", str(repo)], env=env, check=True,
                   capture_output=True, timeout=60)
    subprocess.run(["borg", "create", f"{repo}::first", str(source)], env=env, check=True,
                   capture_output=True, timeout=60)
    job = BackupJob("borg", kind="borg", repository=str(repo), password="correct horse",
                    max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path).collect()).checks
    assert check.state is State.OK and "newest snapshot first" in check.message, check.message
    moved = tmp_path / "moved"
    repo.rename(moved)
    job = BackupJob("borg", kind="borg", repository=str(moved), password="correct horse",
                    max_age=3600)
    (check,) = (await BackupsCollector([job], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL and "Repository access aborted" in check.message
    assert "moved or is new to this user" in check.message
    wrong = BackupJob("borg", kind="borg", repository=str(moved), password="wrong", max_age=3600)
    monkeypatch.setenv("BORG_RELOCATED_REPO_ACCESS_IS_OK", "yes")
    (check,) = (await BackupsCollector([wrong], 900, tmp_path).collect()).checks
    assert check.state is State.CRITICAL and "is incorrect" in check.message
    assert "check the job's password" in check.message
