"""Report collectors: mailboxes (generated Maildir trees), lists (Mailman 2 post log), backups."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from collectors.backups import BackupsCollector, load_runs, run_wrapped
from collectors.lists import ListsCollector, PostLog, load_activity
from collectors.mailboxes import MailboxesCollector, read_maildirsize, scan
from monitor.config import BackupJob, MailboxesConfig, MailingList
from monitor.model import State

DATA = Path(__file__).parent / "data" / "mailman"


def make_tree(root: Path, domains: int, users: int, seed: int = 1) -> dict[str, tuple[int, int]]:
    """A Maildir spool; returns the expected {address: (bytes, messages)}."""
    expected = {}
    n = seed
    for d in range(domains):
        for u in range(users):
            box = root / f"d{d}.example" / f"user{u}"
            for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new"):
                (box / sub).mkdir(parents=True)
            size = count = 0
            for i in range((u % 5) + 1):
                n = (n * 1103515245 + 12345) % 2**31
                length = 100 + n % 5000
                folder = ("cur", "new", ".Sent/cur")[i % 3]
                if i % 4 == 3:  # no S= in the name: the scanner must stat it
                    (box / folder / f"{i}.M{n}P1.host:2,S").write_bytes(b"x" * (n % 300))
                    size += n % 300
                else:
                    (box / folder / f"{i}.M{n}P1.host,S={length},W={length + 9}:2,S").touch()
                    size += length
                count += 1
            (box / "tmp" / "delivering.M1P1.host,S=99999").touch()  # tmp is not counted
            expected[f"user{u}@d{d}.example"] = (size, count)
    return expected


def test_thousands_of_mailboxes(tmp_path: Path) -> None:
    expected = make_tree(tmp_path, domains=4, users=500)
    settings = MailboxesConfig(enabled=True, root=tmp_path, workers=4, top=10)
    result = scan(settings)
    assert result.root_error is None and not result.errors
    got = {m.address: (m.size_bytes, m.messages) for m in result.mailboxes}
    assert got == expected
    domains = result.domains()
    assert domains["d0.example"] == tuple(
        sum(v[i] for k, v in expected.items() if k.endswith("@d0.example")) for i in (0, 1))

    batch = asyncio.run(MailboxesCollector(settings).collect())
    top = sorted(expected.items(), key=lambda kv: (-kv[1][0], kv[0]))[:10]
    sizes = {m.instance: m.value for m in batch.measurements if m.metric == "size_bytes"}
    assert {k: sizes[k] for k, _ in top} == {k: v[0] for k, v in top}
    assert len([i for i in sizes if "@" in i]) == 10
    assert sizes["domain:d3.example"] == domains["d3.example"][0]
    check = batch.checks[0]
    assert check.state is State.OK and "2000 mailboxes in 4 domain(s)" in check.message


def test_maildirsize_fast_path_and_staleness(tmp_path: Path) -> None:
    box = tmp_path / "example.net" / "alice"
    (box / "cur").mkdir(parents=True)
    (box / "cur" / "1.M1.host,S=500:2,S").touch()
    (box / "maildirsize").write_text("1000000000S,0C\n12345 10\n-345 -2\n1000 1\n")
    now = time.time()
    assert read_maildirsize(box / "maildirsize", 3600, now) == (13000, 9)
    settings = MailboxesConfig(enabled=True, root=tmp_path)
    [m] = scan(settings, now).mailboxes
    assert (m.size_bytes, m.messages, m.source) == (13000, 9, "maildirsize")
    old = now - 7200
    os.utime(box / "maildirsize", (old, old))
    settings.maildirsize_max_age = 3600
    [m] = scan(settings, now).mailboxes
    assert (m.size_bytes, m.messages, m.source) == (500, 1, "scan")


def test_unreadable_mailbox_is_its_own_error_and_mbox(tmp_path: Path) -> None:
    make_tree(tmp_path / "spool", domains=1, users=3)
    bad = tmp_path / "spool" / "d0.example" / "user1"
    if os.geteuid() == 0:  # root reads everything: a broken mailbox instead ("cur" a file)
        shutil.rmtree(bad / "cur")
        (bad / "cur").write_text("")
        reason = "Not a directory"
    else:
        reason = "Permission denied"
    bad.chmod(0)
    mbox = tmp_path / "mbox"
    mbox.mkdir()
    (mbox / "root").write_bytes(b"From a@b Mon Nov 23 2026\nSubject: x\n\n>From here\n"
                                b"From c@d Mon Nov 23 2026\n\nbody\n")
    try:
        settings = MailboxesConfig(enabled=True, root=tmp_path / "spool", mbox_dir=mbox,
                                   domain="host.example")
        batch = asyncio.run(MailboxesCollector(settings).collect())
    finally:
        bad.chmod(0o755)
    check = batch.checks[0]
    assert check.state is State.WARNING
    assert f"1 of 4 mailboxes could not be read: user1@d0.example: {reason}" in check.message
    sizes = {m.instance: m.value for m in batch.measurements if m.metric == "messages"}
    assert sizes["root@host.example"] == 2
    assert sizes["user0@d0.example"] == 1


def test_missing_root_is_critical(tmp_path: Path) -> None:
    settings = MailboxesConfig(enabled=True, root=tmp_path / "nope")
    batch = asyncio.run(MailboxesCollector(settings).collect())
    assert batch.checks[0].state is State.CRITICAL and "cannot list" in batch.checks[0].message


# -- lists -------------------------------------------------------------------------------------


def test_post_log_counts_per_list_per_day(tmp_path: Path) -> None:
    log = tmp_path / "post"
    shutil.copy(DATA / "post", log)
    reader = PostLog(log, tmp_path / "state" / "lists.json")
    assert reader.update() == 7
    day = reader.state["days"]["2026-11-23"]
    assert day["announce"]["posts"] == 2 and day["announce"]["bytes"] == 2345 + 10240
    assert sorted(day["announce"]["senders"]) == ["alice@example.net", "bob@example.org"]
    assert day["users"] == {"posts": 4, "bytes": 4096 + 1000 + 1500 + 800, "failures": 2,
                            "senders": ["carol@example.com", "dave@example.com"]}
    assert reader.state["days"]["2026-11-22"]["announce"]["posts"] == 1
    # Nothing new: nothing counted twice, also after a restart (state reloaded from disk).
    assert PostLog(log, tmp_path / "state" / "lists.json").update() == 0


def _line(n: int, day: str = "Nov 23") -> str:
    return (f"{day} 08:{n // 60:02d}:{n % 60:02d} 2026 (99) post to announce from "
            f"u{n}@example.net, size=100, message-id=<{n}@x>, success\n")


def test_rotation_and_truncation_without_double_counting(tmp_path: Path) -> None:
    log = tmp_path / "post"
    state = tmp_path / "lists-test.json"
    log.write_text(_line(1) + _line(2))
    assert PostLog(log, state).update() == 2
    # Lines appended, then the log rotated (rename + new file) before the next run.
    with open(log, "a") as f:
        f.write(_line(3))
    log.rename(tmp_path / "post.1")
    log.write_text(_line(4))
    assert PostLog(log, state).update() == 2  # line 3 from post.1, line 4 from the new file
    # copytruncate: same inode, shorter file.
    with open(log, "w") as f:
        f.write(_line(5))
    assert PostLog(log, state).update() == 1
    # A half-written line waits for its newline.
    with open(log, "a") as f:
        f.write(_line(6)[:30])
    assert PostLog(log, state).update() == 0
    with open(log, "a") as f:
        f.write(_line(6)[30:])
    reader = PostLog(log, state)
    assert reader.update() == 1
    assert reader.state["days"]["2026-11-23"]["announce"]["posts"] == 6
    assert load_activity(tmp_path)["2026-11-23"]["announce"]["senders"] == 6


def test_lists_collector_with_list_members(tmp_path: Path) -> None:
    log = tmp_path / "post"
    shutil.copy(DATA / "post", log)
    members = str(DATA / "list_members")
    lists = [MailingList(name="*", post_log=log, list_members=members),
             MailingList(name="empty", post_log=log, list_members=members)]
    clock = lambda: time.mktime((2026, 11, 23, 12, 0, 0, 0, 0, -1))  # noqa: E731
    collector = ListsCollector(log, lists, tmp_path / "state", clock=clock)
    batch = asyncio.run(collector.collect())
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("announce", "posts_today")] == 2
    assert values[("users", "failures_today")] == 2
    assert values[("users", "senders_today")] == 2
    assert values[("announce", "subscribers")] == 3 and values[("users", "subscribers")] == 2
    assert values[("empty", "posts_today")] == 0
    check = batch.checks[0]
    assert check.state is State.WARNING and "empty: subscribers unknown" in check.message


def test_lists_collector_missing_log(tmp_path: Path) -> None:
    lists = [MailingList(name="*", post_log=tmp_path / "nope", list_members="")]
    batch = asyncio.run(ListsCollector(tmp_path / "nope", lists, tmp_path).collect())
    assert batch.checks[0].state is State.UNKNOWN


# -- backups -----------------------------------------------------------------------------------


def test_backup_wrapper_success_and_failure(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok = run_wrapped("nightly", [sys.executable, "-c", "print('x' * 10000)"], state, echo=False)
    assert ok == 0
    [run] = load_runs(state, "nightly")
    assert run["exit_status"] == 0 and run["output_bytes"] == 10001
    assert len(run["output_tail"]) == 4096
    job = BackupJob(name="nightly", source="wrapper", max_age=3600)
    batch = asyncio.run(BackupsCollector([job], state).collect())
    assert batch.checks[0].state is State.OK, batch.checks[0].message

    bad = run_wrapped("nightly", ["/bin/sh", "-c", "echo 'rsync: connection refused'; exit 23"],
                      state, echo=False)
    assert bad == 23
    batch = asyncio.run(BackupsCollector([job], state).collect())
    assert batch.checks[0].state is State.CRITICAL
    assert "exited 23: rsync: connection refused" in batch.checks[0].message
    assert run_wrapped("nightly", [str(tmp_path / "missing")], state, echo=False) == 127

    # Through the real CLI: the exit status passes through for cron.
    config = tmp_path / "config.toml"
    config.write_text(f'[agent]\ndata_dir = "{tmp_path}"\n[[backups]]\nname = "nightly"\n')
    proc = subprocess.run([sys.executable, "-m", "monitor", "-q", "-c", str(config),
                           "backup-run", "nightly", "--", "/bin/sh", "-c", "echo hi; exit 3"],
                          capture_output=True, text=True)
    assert proc.returncode == 3 and proc.stdout == "hi\n"
    assert load_runs(state, "nightly")[-1]["exit_status"] == 3


def test_backup_no_result_and_stale(tmp_path: Path) -> None:
    job = BackupJob(name="never", source="wrapper", max_age=3600)
    batch = asyncio.run(BackupsCollector([job], tmp_path).collect())
    assert batch.checks[0].state is State.CRITICAL and "no result" in batch.checks[0].message
    run_wrapped("never", ["/bin/true"], tmp_path, echo=False)
    later = lambda: time.time() + 7200  # noqa: E731
    batch = asyncio.run(BackupsCollector([job], tmp_path, clock=later).collect())
    assert batch.checks[0].state is State.CRITICAL and "older than" in batch.checks[0].message


def test_backup_log_and_artifact(tmp_path: Path) -> None:
    log = tmp_path / "backup.log"
    log.write_text("start\nbackup finished OK\nstart\nERROR: disk full\n")
    job = BackupJob(name="db", source="log", log=log, success="finished OK", failure="ERROR")
    batch = asyncio.run(BackupsCollector([job], tmp_path).collect())
    assert batch.checks[0].state is State.CRITICAL and "disk full" in batch.checks[0].message
    log.write_text(log.read_text() + "backup finished OK\n")
    batch = asyncio.run(BackupsCollector([job], tmp_path).collect())
    assert batch.checks[0].state is State.OK

    art = BackupJob(name="dump", source="artifact", path=str(tmp_path / "dump-*.sql.gz"),
                    max_shrink=20, max_age=86400)
    (tmp_path / "dump-1.sql.gz").write_bytes(b"x" * 1000)
    os.utime(tmp_path / "dump-1.sql.gz", (time.time() - 100, time.time() - 100))
    batch = asyncio.run(BackupsCollector([art], tmp_path).collect())
    assert batch.checks[0].state is State.OK
    (tmp_path / "dump-2.sql.gz").write_bytes(b"x" * 500)
    batch = asyncio.run(BackupsCollector([art], tmp_path).collect())
    assert batch.checks[0].state is State.CRITICAL and "50% smaller" in batch.checks[0].message


@pytest.mark.skipif(not shutil.which("restic"), reason="restic not installed")
def test_restic_repository(tmp_path: Path) -> None:
    repo, data = tmp_path / "repo", tmp_path / "data"
    data.mkdir()
    (data / "file.txt").write_text("hello" * 1000)
    env = {**os.environ, "RESTIC_PASSWORD": "test-secret", "RESTIC_CACHE_DIR": str(tmp_path / "c")}
    restic = shutil.which("restic")
    assert restic
    subprocess.run([restic, "-r", str(repo), "init"], env=env, check=True, capture_output=True)
    subprocess.run([restic, "-r", str(repo), "backup", str(data)], env=env, check=True,
                   capture_output=True)
    job = BackupJob(name="restic", source="restic", max_age=3600,
                    command=[restic, "-r", str(repo), "snapshots", "--json"],
                    environment={"RESTIC_PASSWORD": "test-secret",
                                 "RESTIC_CACHE_DIR": str(tmp_path / "c")})
    batch = asyncio.run(BackupsCollector([job], tmp_path).collect())
    assert batch.checks[0].state is State.OK, batch.checks[0].message
    assert "1 snapshot(s)" in batch.checks[0].message
    age = next(m.value for m in batch.measurements if m.metric == "age_seconds")
    assert age is not None and age < 3600
    job.environment["RESTIC_PASSWORD"] = "wrong"
    batch = asyncio.run(BackupsCollector([job], tmp_path).collect())
    assert batch.checks[0].state is State.UNKNOWN and "restic exited" in batch.checks[0].message


def test_mailman3_rest_subscribers(tmp_path: Path) -> None:
    """A loopback HTTP server answering GET /3.1/lists like Mailman 3's REST API."""
    import base64
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    seen = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append((self.path, self.headers.get("Authorization")))
            body = json.dumps({"start": 0, "total_size": 2, "entries": [
                {"list_id": "dev.example.net", "list_name": "dev",
                 "fqdn_listname": "dev@example.net", "member_count": 17},
                {"list_id": "ops.example.net", "list_name": "ops",
                 "fqdn_listname": "ops@example.net", "member_count": 4}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}/3.1"
        lists = [MailingList(name="*", post_log=tmp_path / "none", list_members="",
                             mailman3_url=url, mailman3_password="s3cret")]
        batch = asyncio.run(ListsCollector(tmp_path / "none", lists, tmp_path).collect())
    finally:
        server.shutdown()
        server.server_close()
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("dev", "subscribers")] == 17 and values[("ops", "subscribers")] == 4
    assert batch.checks[0].state is State.OK, batch.checks[0].message
    assert seen[0][0].startswith("/3.1/lists")
    assert seen[0][1] == "Basic " + base64.b64encode(b"restadmin:s3cret").decode()
