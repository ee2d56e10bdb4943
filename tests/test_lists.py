"""The lists collector: Mailman 2 post log samples, incremental reading, rotation, truncation."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from collectors.lists import (
    ListsCollector,
    ListsState,
    activity,
    follow,
    load_state,
    parse_line,
    save_state,
)
from monitor.config import ListsConfig
from monitor.model import State

SAMPLE = Path(__file__).parent / "data" / "mailman" / "post"
NOV22 = 1795340000.0  # 2026-11-22 (any time zone near UTC)


def counts(state: ListsState) -> dict:
    return {(day, name): (s.posts, s.bytes, len(s.senders), s.failures, s.refused)
            for day, lists in state.by_day().items() for name, s in lists.items()}


def local(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


EXPECTED = {
    ("2026-11-21", "announce"): (1, 2345, 1, 0, 0),
    ("2026-11-21", "users"): (3, 2512, 2, 1, 2),
    ("2026-11-22", "users"): (1, 700, 1, 1, 1),
    ("2026-11-22", "announce"): (1, 999, 0, 0, 0),
    ("2026-11-22", "staff"): (1, 4096, 1, 0, 0),
    ("2026-11-02", "staff"): (1, 100, 1, 0, 0),
}


def test_parse_real_line_formats():
    post = parse_line("Nov 23 06:25:01 2026 (1234) post to announce from alice@example.net, "
                      "size=2345, message-id=<a,b@c>, success")
    assert (post.when, post.list, post.sender, post.size, post.refused, post.notice) == (
        datetime(2026, 11, 23, 6, 25, 1), "announce", "alice@example.net", 2345, 0, False)
    assert parse_line("Nov 23 06:25:01 2026 (1234) post to x from y@z, size=1, "
                      "message-id=<m>, 3 failures").refused == 3
    assert parse_line("Nov 23 06:25:01 2026 (1) <id> smtp to x for 3 recips, completed in 1 s") is None
    # Mailman 3's templates (schema.cfg [logging.smtp]).
    post = parse_line("Nov 23 06:25:01 2026 (77) <a@b> post to users@lists.example.net from a@b, "
                      "641 bytes, 2 failures")
    assert (post.list, post.sender, post.size, post.refused, post.notice) == (
        "users@lists.example.net", "a@b", 641, 2, False)
    assert parse_line("Nov 23 06:25:01 2026 (77) <a@b> smtp to users@lists.example.net for 3 "
                      "recips, completed in 0.25 seconds") is True
    assert parse_line("Nov 23 06:25:01 2026 (77) <a@b> post to users@lists.example.net from "
                      "users-bounces@lists.example.net, 900 bytes").notice


def test_sample_log_counts(tmp_path: Path):
    log = tmp_path / "post"
    shutil.copy(SAMPLE, log)
    state = ListsState()
    posts, _ = follow(log, state)
    assert posts == 8
    assert counts(state) == EXPECTED
    week = activity(state, local("2026-11-20T00:00"), local("2026-11-23T00:00"))
    assert week["users"].posts == 4 and week["users"].failures == 2
    assert week["staff"].posts == 1  # the 2nd of November is outside


def _split(text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:4]), "".join(lines[4:])


def test_incremental_partial_line_rotation_and_truncation(tmp_path: Path):
    log = tmp_path / "post"
    first, rest = _split(SAMPLE.read_text())
    state_file = tmp_path / "state" / "lists.json"
    # Run 1: four lines and half of the fifth (a writer in the middle of a line).
    log.write_text(first + rest[:30])
    state = ListsState()
    assert follow(log, state)[0] == 4
    save_state(state_file, state)
    # Run 2 (after a restart): the rest of the line arrives; nothing counted twice.
    state = load_state(state_file)
    with open(log, "a") as handle:
        handle.write(rest[30:])
    assert follow(log, state)[0] == 4
    assert counts(state) == EXPECTED
    # Rotation by rename: two more lines were written to the old file before logrotate moved it,
    # one to the new file since.
    extra_old = ("Nov 22 12:00:00 2026 (9) post to users from zed@example.net, size=10, "
                 "message-id=<r1@x>, success\n")
    extra_new = ("Nov 22 12:05:00 2026 (9) post to users from zed@example.net, size=20, "
                 "message-id=<r2@x>, success\n")
    with open(log, "a") as handle:
        handle.write(extra_old)
    os.rename(log, tmp_path / "post.1")
    log.write_text(extra_new)
    posts, notes = follow(log, state)
    assert posts == 2 and "post.1" in notes[0]
    assert counts(state)[("2026-11-22", "users")][:2] == (3, 730)
    # copytruncate: the content is copied to post.1 (new inode), the log truncated in place.
    extra_copy = extra_new.replace("r2@x", "r3@x").replace("size=20", "size=40")
    with open(log, "a") as handle:
        handle.write(extra_copy)
    shutil.copy(log, tmp_path / "post.1")
    with open(log, "r+") as handle:
        handle.truncate(0)
    posts, notes = follow(log, state)
    assert posts == 1 and "truncated" in notes[0]
    assert counts(state)[("2026-11-22", "users")][:2] == (4, 770)
    # Nothing new: nothing counted.
    assert follow(log, state)[0] == 0
    # Truncated and the copy lost: what is in the file now is counted once, with a note.
    (tmp_path / "post.1").unlink()
    with open(log, "a") as handle:
        handle.write(extra_new.replace("size=20", "size=1"))
    assert follow(log, state)[0] == 1
    log.write_text("")
    posts, notes = follow(log, state)
    assert posts == 0 and "not found" in notes[0]


class _Mailman3(BaseHTTPRequestHandler):
    """Mailman 3's REST API, GET /3.1/lists: two `users` lists on two domains, among others."""

    body = json.dumps({"total_size": 4, "start": 0, "entries": [
        {"list_name": "announce", "fqdn_listname": "announce@example.net", "member_count": 812},
        {"list_name": "staff", "fqdn_listname": "staff@example.net", "member_count": 9},
        {"list_name": "users", "mail_host": "lists.a", "fqdn_listname": "users@lists.a",
         "member_count": 14},
        {"list_name": "users", "mail_host": "lists.b", "fqdn_listname": "users@lists.b",
         "member_count": 7}]}).encode()

    def do_GET(self):
        assert self.headers["Authorization"].startswith("Basic ")
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


async def test_collector_members_mailman3_and_state(tmp_path: Path):
    log = tmp_path / "post"
    shutil.copy(SAMPLE, log)
    # Stand-in for Mailman 2's bin/list_members: prints a recorded member list for "users".
    members = Path(__file__).parent / "data" / "mailman" / "members-users.txt"
    fake = tmp_path / "list_members"
    # (A shell script: a Python one would spend most of the test starting up.)
    fake.write_text(f'#!/bin/sh\n[ "$1" = users ] || {{ echo "No such list: $1" >&2; exit 1; }}\n'
                    f"exec cat '{members}'\n")
    fake.chmod(0o755)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mailman3)
    # A short poll: shutdown() waits for serve_forever's next look (0.5 s by default).
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        cfg = ListsConfig(enabled=True, post_log=log, smtp_log=None, list_members=str(fake),
                          lists=["users", "ghost"], keep_days=3650,
                          mailman3_url=f"http://127.0.0.1:{server.server_address[1]}",
                          mailman3_password="secret")
        collector = ListsCollector(cfg, 60, tmp_path / "state" / "lists.json", clock=lambda: NOV22)
        batch = await collector.collect()
        # The second run, against the same server, reads nothing new in the log.
        second = await collector.collect()
    finally:
        server.shutdown()
        server.server_close()
    checks = {c.check: c for c in batch.checks}
    assert checks["list ghost"].state is State.UNKNOWN and "No such list" in checks["list ghost"].message
    assert checks["lists"].state is State.OK
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("users", "subscribers")] == 3
    # Mailman 3's lists are keyed by address: two "users" lists on two domains stay two.
    assert values[("announce@example.net", "subscribers")] == 812
    assert values[("users@lists.a", "subscribers")] == 14
    assert values[("users@lists.b", "subscribers")] == 7
    assert values[("users", "posts_today")] == 1
    assert values[("staff", "bytes_today")] == 4096
    saved = load_state(tmp_path / "state" / "lists.json")
    assert counts(saved) == EXPECTED and saved.subscribers["users"] == 3
    again = next(c for c in second.checks if c.check == "lists")
    assert again.state is State.OK and "(0 new in the log)" in again.message
    assert {(m.instance, m.metric): m.value for m in second.measurements}[
        ("users@lists.a", "subscribers")] == 14
    assert counts(load_state(tmp_path / "state" / "lists.json")) == EXPECTED


async def test_mailman3_api_that_never_answers_costs_its_timeout_only(tmp_path: Path):
    """A REST API that accepts and then says nothing: the run ends at the lists timeout with
    a warning, and the log's counts are still there."""
    log = tmp_path / "post"
    shutil.copy(SAMPLE, log)
    with socket.create_server(("127.0.0.1", 0), backlog=8) as silent:  # listens, never accepts
        cfg = ListsConfig(enabled=True, post_log=log, smtp_log=None, list_members=None,
                          keep_days=3650,
                          mailman3_url=f"http://127.0.0.1:{silent.getsockname()[1]}",
                          mailman3_password="secret", timeout=0.3)
        batch = await ListsCollector(cfg, 60, tmp_path / "lists.json", clock=lambda: NOV22).collect()
    check = next(c for c in batch.checks if c.check == "lists")
    assert check.state is State.WARNING and "Mailman 3 REST API" in check.message
    assert "timed out" in check.message
    assert {(m.instance, m.metric): m.value for m in batch.measurements}[("staff", "bytes_today")] == 4096


async def test_missing_log_is_reported_not_raised(tmp_path: Path):
    # (smtp_log too: its default, /var/log/mailman3/smtp.log, exists wherever mailman3 is.)
    cfg = ListsConfig(enabled=True, post_log=tmp_path / "nope", smtp_log=tmp_path / "nope3",
                      list_members=None)
    batch = await ListsCollector(cfg, 60, tmp_path / "s.json").collect()
    (check,) = batch.checks
    assert check.state is State.WARNING and "no Mailman log found" in check.message


SMTP_LOG = Path(__file__).parent / "data" / "mailman" / "smtp.log"

EXPECTED_MAILMAN3 = {
    ("2026-11-21", "announce@lists.example.net"): (1, 2345, 1, 0, 0),
    ("2026-11-21", "users@lists.example.net"): (2, 1453, 1, 1, 2),
    ("2026-11-21", "users@lists.other.example"): (1, 500, 1, 0, 0),
    ("2026-11-22", "users@lists.other.example"): (1, 700, 1, 1, 1),
    ("2026-11-22", "announce@lists.example.net"): (0, 0, 0, 0, 0),  # a notice only
    ("2026-11-22", "staff@lists.example.net"): (1, 4096, 1, 0, 0),
}


async def test_mailman3_smtp_log_posts_failures_and_notices(tmp_path: Path):
    log = tmp_path / "smtp.log"
    shutil.copy(SMTP_LOG, log)
    cfg = ListsConfig(enabled=True, post_log=None, smtp_log=log, list_members=None)
    batch = await ListsCollector(cfg, 60, tmp_path / "lists.json", clock=lambda: NOV22).collect()
    state = load_state(tmp_path / "lists.json")
    assert counts(state) == EXPECTED_MAILMAN3
    notices = {(day, name): s.notices for day, lists in state.by_day().items()
               for name, s in lists.items() if s.notices}
    assert notices == {("2026-11-21", "users@lists.example.net"): 2,
                       ("2026-11-22", "announce@lists.example.net"): 1}
    (check,) = batch.checks
    assert check.state is State.OK and "6 new in the log" in check.message
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("users@lists.other.example", "failures_today")] == 1
    assert values[("staff@lists.example.net", "posts_today")] == 1


async def test_a_state_that_cannot_be_saved_is_a_warning_and_counts_again(tmp_path: Path):
    # (collectors.logfollow's frame, shared with the mail log: save_counts, counts_check)
    log = tmp_path / "smtp.log"
    shutil.copy(SMTP_LOG, log)
    cfg = ListsConfig(enabled=True, post_log=None, smtp_log=log, list_members=None)
    (tmp_path / "blocked").write_text("a file where the state directory should be")
    collector = ListsCollector(cfg, 60, tmp_path / "blocked" / "lists.json", clock=lambda: NOV22)
    for _ in range(2):  # unsaved, the next run reads the same lines again: nothing is lost
        (check,) = (await collector.collect()).checks
        assert check.state is State.WARNING
        assert check.message.startswith(f"cannot save {tmp_path / 'blocked' / 'lists.json'}: ")
        assert check.message.endswith("; 2 post(s) to 3 list(s) today, 1 with refused recipients "
                                      "(6 new in the log)")


async def test_log_without_a_parseable_line_is_a_warning(tmp_path: Path):
    log = tmp_path / "smtp.log"
    # A custom [logging.smtp] template: nothing can be counted, and the check says so.
    log.write_text("2026-11-21 06:25:01 mailman.smtp: posted <a@b> to users, 641 bytes\n" * 3)
    cfg = ListsConfig(enabled=True, post_log=None, smtp_log=log, list_members=None)
    collector = ListsCollector(cfg, 60, tmp_path / "lists.json", clock=lambda: NOV22)
    (check,) = (await collector.collect()).checks
    assert check.state is State.WARNING
    assert f"none of the 3 line(s) of {log} is in a format Mailman writes" in check.message
    (check,) = (await collector.collect()).checks  # and stays so on the next run
    assert check.state is State.WARNING


def test_rotation_with_immediate_compression_reads_the_gzip_tail(tmp_path: Path):
    import gzip

    log = tmp_path / "post"
    first, rest = _split(SAMPLE.read_text())
    log.write_text(first)
    state = ListsState()
    assert follow(log, state)[0] == 4
    # Four more posts, then logrotate with `compress` and no `delaycompress`: post.1.gz at once.
    with open(log, "a") as handle:
        handle.write(rest)
    with open(log, "rb") as src, gzip.open(tmp_path / "post.1.gz", "wb") as dst:
        dst.write(src.read())
    log.unlink()
    log.write_text("")
    posts, notes = follow(log, state)
    assert posts == 4 and "post.1.gz" in notes[0]
    assert counts(state) == EXPECTED
    assert not state.losses


async def test_rotation_whose_previous_file_is_gone_is_a_warning(tmp_path: Path):
    log = tmp_path / "post"
    log.write_text(SAMPLE.read_text())
    cfg = ListsConfig(enabled=True, post_log=log, smtp_log=None, list_members=None)
    now = [NOV22]
    collector = ListsCollector(cfg, 60, tmp_path / "lists.json", clock=lambda: now[0])
    assert (await collector.collect()).checks[0].state is State.OK
    log.unlink()  # rotated and removed (rotate 0), or moved somewhere else
    log.write_text("")
    (check,) = (await collector.collect()).checks
    assert check.state is State.WARNING and "not counted" in check.message
    assert time.strftime("after the last read (%Y-%m-%d %H:%M)", time.localtime(NOV22)) in check.message
    now[0] += 2 * 86400  # shown for a day, then the check is green again
    (check,) = (await collector.collect()).checks
    assert check.state is State.OK


def test_the_rest_of_a_rotated_log_is_read_to_its_end_however_long(tmp_path, monkeypatch):
    """More unread lines in the rotated file than one read takes (a busy server, an agent
    stopped across the rotation): all of them are counted, none dropped."""
    from collectors import logfollow

    monkeypatch.setattr(logfollow, "_READ_LIMIT", 4096)
    log = tmp_path / "mail.log"
    log.write_bytes(b"line 0\n")
    position = logfollow.LogPosition()

    def count(data: bytes) -> int:
        return data.count(b"\n")

    assert logfollow.follow_log(log, position, count, 1.0, "lines").counted == 1
    with log.open("ab") as handle:
        handle.write(b"".join(b"line %d\n" % i for i in range(1, 5001)))  # ~40 KiB
    log.rename(log.with_name("mail.log.1"))
    log.write_bytes(b"new 1\nnew 2\n")
    result = logfollow.follow_log(log, position, count, 2.0, "lines")
    assert result.counted == 5000 + 2 and not result.loss


MAILMAN3_REAL = Path(__file__).parent / "data" / "mailman" / "smtp.log-mailman3-real"
EXPECTED_MAILMAN3_REAL = {
    ("2026-12-02", "users@lists.a.example"): (3, 1554 + 3498 + 5442, 3, 3, 6),
    ("2026-12-02", "users@lists.b.example"): (3, 2526 + 4470 + 6414, 3, 3, 6)}


class _RecordedMailman3(_Mailman3):
    """Mailman 3.3.8's own answer, recorded with the log."""

    body = (MAILMAN3_REAL.parent / "lists-mailman3-real.json").read_bytes()


async def test_a_real_mailman3_smtp_log_and_rest_answer(tmp_path: Path):
    """Recorded from Debian 12's Mailman 3.3.8 (tests/data/mailman/record_mailman3.py): two
    `users` lists on two domains, 3 member posts each with 2 recipients refused by the relay,
    welcome mails (from users-request@), a bounce and a moderation notice, and the LMTP
    runner's own debug lines in the same file (no post, no warning)."""
    log = tmp_path / "smtp.log"
    shutil.copy(MAILMAN3_REAL, log)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _RecordedMailman3)
    thread = threading.Thread(target=server.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    try:
        cfg = ListsConfig(enabled=True, post_log=None, smtp_log=log, list_members=None,
                          keep_days=3650, mailman3_url=f"http://127.0.0.1:{server.server_address[1]}",
                          mailman3_password="restpass")
        batch = await ListsCollector(cfg, 60, tmp_path / "lists.json",
                                     clock=lambda: local("2026-12-02T12:00")).collect()
    finally:
        server.shutdown()
        server.server_close()
    state = load_state(tmp_path / "lists.json")
    assert counts(state) == EXPECTED_MAILMAN3_REAL
    totals = activity(state, 0, local("2026-12-03T00:00"))
    assert {name: s.notices for name, s in totals.items()} == {"users@lists.a.example": 16,
                                                               "users@lists.b.example": 7}
    (check,) = batch.checks
    assert check.state is State.OK and "6 post(s) to 2 list(s) today" in check.message
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("users@lists.a.example", "subscribers")] == 14
    assert values[("users@lists.b.example", "subscribers")] == 7


@pytest.mark.skipif(shutil.which("logrotate") is None, reason="logrotate (Debian package) not installed")
@pytest.mark.parametrize("dateext", [False, True], ids=["smtp.log.1.gz", "smtp.log-DATE.gz"])
async def test_real_logrotate_compressing_at_once_loses_no_post(tmp_path: Path, dateext: bool):
    """logrotate with `compress` and no `delaycompress` gzips the old log at once: the posts
    written to it after the collector's last read are read from the .gz."""
    log = tmp_path / "logs" / "smtp.log"
    log.parent.mkdir()
    lines = MAILMAN3_REAL.read_text().splitlines(keepends=True)
    log.write_text("".join(lines[:60]))  # up to the first member post of users@lists.a
    cfg = ListsConfig(enabled=True, post_log=None, smtp_log=log, list_members=None, keep_days=3650)
    collector = ListsCollector(cfg, 60, tmp_path / "lists.json",
                               clock=lambda: local("2026-12-02T12:00"))
    await collector.collect()
    with log.open("a") as handle:
        handle.writelines(lines[60:])
    conf = tmp_path / "logrotate.conf"
    options = ["rotate 3", "compress", "create", *(["dateext"] if dateext else [])]
    conf.write_text(f"{log} {{\n" + "".join(f"  {o}\n" for o in options) + "}\n")
    subprocess.run(["logrotate", "-s", str(tmp_path / "logrotate.state"), "-f", str(conf)],
                   check=True, capture_output=True, timeout=60)
    assert [p.name.endswith(".gz") for p in log.parent.iterdir() if p != log] == [True]
    (check,) = (await collector.collect()).checks
    # All six member posts came after the first read: each one is read from the .gz.
    assert check.state is State.OK and "(6 new in the log)" in check.message, check.message
    assert counts(load_state(tmp_path / "lists.json")) == EXPECTED_MAILMAN3_REAL
