"""The lists collector: Mailman 2 post log samples, incremental reading, rotation, truncation."""

from __future__ import annotations

import json
import os
import shutil
import sys
import threading
from datetime import date
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from collectors.lists import ListsCollector, ListsState, activity, follow, load_state, parse_line
from monitor.config import ListsConfig
from monitor.model import State

SAMPLE = Path(__file__).parent / "data" / "mailman" / "post"
NOV22 = 1795340000.0  # 2026-11-22 (any time zone near UTC)


def counts(state: ListsState) -> dict:
    return {(day, name): (s.posts, s.bytes, len(s.senders), s.failures, s.refused)
            for day, lists in state.days.items() for name, s in lists.items()}


EXPECTED = {
    ("2026-11-21", "announce"): (1, 2345, 1, 0, 0),
    ("2026-11-21", "users"): (3, 2512, 2, 1, 2),
    ("2026-11-22", "users"): (1, 700, 1, 1, 1),
    ("2026-11-22", "announce"): (1, 999, 0, 0, 0),
    ("2026-11-22", "staff"): (1, 4096, 1, 0, 0),
    ("2026-11-02", "staff"): (1, 100, 1, 0, 0),
}


def test_parse_real_line_formats():
    assert parse_line("Nov 23 06:25:01 2026 (1234) post to announce from alice@example.net, "
                      "size=2345, message-id=<a,b@c>, success") == (
        "2026-11-23", "announce", "alice@example.net", 2345, 0)
    assert parse_line("Nov 23 06:25:01 2026 (1234) post to x from y@z, size=1, "
                      "message-id=<m>, 3 failures")[4] == 3
    assert parse_line("Nov 23 06:25:01 2026 (1) <id> smtp to x for 3 recips, completed in 1 s") is None


def test_sample_log_counts(tmp_path: Path):
    log = tmp_path / "post"
    shutil.copy(SAMPLE, log)
    state = ListsState()
    posts, _ = follow(log, state)
    assert posts == 8
    assert counts(state) == EXPECTED
    assert state.unparsed == 0
    week = activity(state, date(2026, 11, 20), date(2026, 11, 22))
    assert week["users"].posts == 4 and week["users"].failures == 2
    assert week["staff"].posts == 1  # the 2nd of November is outside


def _split(text: str) -> tuple[str, str]:
    lines = text.splitlines(keepends=True)
    return "".join(lines[:4]), "".join(lines[4:])


def test_incremental_partial_line_rotation_and_truncation(tmp_path: Path):
    log = tmp_path / "post"
    first, rest = _split(SAMPLE.read_text())
    state_file = tmp_path / "state" / "lists.json"
    from collectors.lists import save_state

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
    def do_GET(self):
        assert self.headers["Authorization"].startswith("Basic ")
        body = {"total_size": 2, "start": 0, "entries": [
            {"list_name": "announce", "fqdn_listname": "announce@example.net", "member_count": 812},
            {"list_name": "staff", "fqdn_listname": "staff@example.net", "member_count": 9}]}
        data = json.dumps(body).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


async def test_collector_members_mailman3_and_state(tmp_path: Path):
    log = tmp_path / "post"
    shutil.copy(SAMPLE, log)
    # Stand-in for Mailman 2's bin/list_members: prints a recorded member list for "users".
    members = Path(__file__).parent / "data" / "mailman" / "members-users.txt"
    fake = tmp_path / "list_members"
    fake.write_text(f"#!{sys.executable}\nimport sys\nname = sys.argv[1]\n"
                    f"if name != 'users':\n    sys.exit('No such list: ' + name)\n"
                    f"sys.stdout.write(open({str(members)!r}).read())\n")
    fake.chmod(0o755)
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Mailman3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        cfg = ListsConfig(enabled=True, post_log=log, list_members=str(fake),
                          lists=["users", "ghost"], keep_days=3650,
                          mailman3_url=f"http://127.0.0.1:{server.server_address[1]}",
                          mailman3_password="secret")
        collector = ListsCollector(cfg, 60, tmp_path / "state" / "lists.json", clock=lambda: NOV22)
        batch = await collector.collect()
    finally:
        server.shutdown()
    checks = {c.check: c for c in batch.checks}
    assert checks["list ghost"].state is State.UNKNOWN and "No such list" in checks["list ghost"].message
    assert checks["lists"].state is State.OK
    values = {(m.instance, m.metric): m.value for m in batch.measurements}
    assert values[("users", "subscribers")] == 3
    assert values[("announce", "subscribers")] == 812
    assert values[("users", "posts_today")] == 1
    assert values[("staff", "bytes_today")] == 4096
    saved = load_state(tmp_path / "state" / "lists.json")
    assert counts(saved) == EXPECTED and saved.subscribers["users"] == 3
    # The second run reads nothing new.
    batch = await collector.collect()
    assert "(0 new in the log)" in next(c for c in batch.checks if c.check == "lists").message
    assert counts(load_state(tmp_path / "state" / "lists.json")) == EXPECTED


async def test_missing_log_is_reported_not_raised(tmp_path: Path):
    cfg = ListsConfig(enabled=True, post_log=tmp_path / "nope", list_members=None)
    batch = await ListsCollector(cfg, 60, tmp_path / "s.json").collect()
    (check,) = batch.checks
    assert check.state is State.WARNING and "does not exist" in check.message
