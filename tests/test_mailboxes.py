"""The mailboxes collector on generated Maildir trees: sizes from names, stat, mbox; quota."""

from __future__ import annotations

import os
import random
import sys
from pathlib import Path

from collectors.mailboxes import (
    MailboxesCollector,
    MailboxSize,
    measure,
    parse_postqueue_json,
    scan_spools,
)
from monitor.config import MailboxesConfig
from monitor.model import State

DATA = Path(__file__).parent / "data"


def make_maildir(box: Path, sizes: list[int], *, with_names: bool = True, folder: str = "") -> int:
    """Real message files of the given sizes; returns their total size."""
    base = box / folder if folder else box
    if not sizes and folder:
        return 0
    for sub in ("cur", "new"):
        (base / sub).mkdir(parents=True, exist_ok=True)
    for i, size in enumerate(sizes):
        name = f"17000000{i:02d}.M{i}P1.host" + (f",S={size}" if with_names else "")
        sub = "cur" if i % 3 else "new"
        if sub == "cur":
            name += ":2,S"
        (base / sub / name).write_bytes(b"x" * size)
    return sum(sizes)


def test_thousands_of_mailboxes_sizes_and_domains(tmp_path: Path):
    rng = random.Random(1)
    expected: dict[str, tuple[int, int]] = {}
    for i in range(2000):
        domain = f"d{i % 25}.example"
        box = tmp_path / "vhosts" / domain / f"u{i}"
        sizes = [rng.randint(1, 200) for _ in range(rng.randint(0, 4))]
        sent = [rng.randint(1, 200) for _ in range(i % 2)]
        total = make_maildir(box, sizes, with_names=i % 7 != 0)
        total += make_maildir(box, sent, folder=".Sent")
        expected[f"u{i}@{domain}"] = (total, len(sizes) + len(sent))
    # Not mailboxes: a stray file at domain level is an mbox only where the pattern says so;
    # a directory without cur/new is skipped; hidden entries are skipped.
    (tmp_path / "vhosts" / "d0.example" / "not-a-maildir").mkdir()
    (tmp_path / "vhosts" / ".hidden").mkdir()
    result = scan_spools([f"{tmp_path}/vhosts/{{domain}}/{{user}}"], threads=3)
    assert not result.errors
    got = {m.address: (m.size_bytes, m.messages) for m in result.mailboxes}
    assert got == expected
    assert {m.source for m in result.mailboxes} == {"names", "stat"}
    domains = {d.domain: d for d in result.domains()}
    assert len(domains) == 25
    assert domains["d3.example"].mailboxes == 80
    assert domains["d3.example"].size_bytes == sum(
        v[0] for k, v in expected.items() if k.endswith("@d3.example"))
    top = result.biggest(5)
    assert [m.size_bytes for m in top] == sorted((v[0] for v in expected.values()), reverse=True)[:5]


def _maildirsize(box: Path, lines: list[str], mtime: float, header: str = "1000000000S,10000C") -> None:
    path = box / "maildirsize"
    path.write_text(header + "\n" + "".join(f"{line}\n" for line in lines))
    os.utime(path, (mtime, mtime))


def test_one_size_definition_and_the_quota_from_maildirsize(tmp_path: Path):
    """A fresh or drifted maildirsize, or one whose quota rule leaves Trash out, never changes
    the size: it is what the messages take, every folder included. The limit comes from it."""
    box = tmp_path / "spool" / "example.net" / "alice"
    real = make_maildir(box, [100, 200, 300]) + make_maildir(box, [50], folder=".Trash")
    for sub in ("cur", "new"):
        os.utime(box / sub, (1_000_000, 1_000_000))
    pattern = [f"{tmp_path}/spool/{{domain}}/{{user}}"]
    sizes = set()
    # Fresh, then drifted (files removed behind Dovecot's back), then without Trash.
    for lines in (["650 4"], ["5000 7", "-1000 -2", "250 1"], ["600 3"]):
        _maildirsize(box, lines, mtime=2_000_000)
        (m,) = scan_spools(pattern).mailboxes
        sizes.add((m.size_bytes, m.messages, m.source))
        assert m.quota_bytes == 1_000_000_000
    assert sizes == {(real, 4, "names")}
    _maildirsize(box, [], mtime=2_000_000, header="0S,0C")  # 0 is "no limit"
    assert scan_spools(pattern).mailboxes[0].quota_bytes is None
    _maildirsize(box, [], mtime=2_000_000, header="garbage here now")
    (m,) = scan_spools(pattern).mailboxes
    assert (m.size_bytes, m.quota_bytes) == (real, None)


def test_mbox_files_and_a_vanished_mailbox(tmp_path: Path):
    spool = tmp_path / "mail"
    spool.mkdir()
    text = b"From a@b Mon Jan  1 00:00:00 2026\nSubject: x\n\nfrom here on, body\n>From quoted\n"
    (spool / "carol").write_bytes(text * 3 + b"\nFrom z@y Tue Jan 2 00:00:00 2026\n\nlast\n")
    (spool / "dave").write_bytes(b"")
    os.symlink(spool / "gone", spool / "erin")  # dangling: vanished between listing and stat
    result = scan_spools([f"{spool}/{{user}}"], default_domain="example.net", cache={})
    got = {m.address: (m.messages, m.size_bytes, m.kind) for m in result.mailboxes}
    assert got["carol@example.net"][0] == 4
    assert got["carol@example.net"][1] == (spool / "carol").stat().st_size
    assert got["dave@example.net"][:2] == (0, 0)
    (err,) = result.errors
    assert err.address == "erin@example.net" and "vanished" in (err.error or "")


def test_mbox_separator_across_read_chunks(tmp_path: Path, monkeypatch):
    import collectors.mailboxes as mb

    monkeypatch.setattr(mb, "_MBOX_CHUNK", 7)
    path = tmp_path / "box"
    path.write_bytes(b"From a\nx\nFrom b\nyy\nFrom c\nzzz\nFrom d\n")
    box = measure(MailboxSize("u@d", "d", str(path), "mbox"))
    assert box.messages == 4


def test_mailbox_removed_during_scan_is_its_own_error(tmp_path: Path):
    box = tmp_path / "d" / "u"
    make_maildir(box, [10])
    item = MailboxSize("u@d", "d", str(box), "maildir")
    import shutil

    shutil.rmtree(box)
    measure(item)
    assert item.error and "vanished" in item.error


async def test_collector_batch_follows_the_naming_contract(tmp_path: Path):
    for i in range(30):
        make_maildir(tmp_path / "v" / f"d{i % 3}.example" / f"user{i}", [100 * (i + 1)])
    make_maildir(tmp_path / "v" / "evil.example" / "a<b>\r\nc", [5])
    cfg = MailboxesConfig(enabled=True, paths=[tmp_path / "v/{domain}/{user}"], top=5,
                          warn_size=2500, critical_size=2900)
    batch = await MailboxesCollector(cfg, 900, clock=lambda: 1_800_000_000).collect()
    instances = {m.instance for m in batch.measurements}
    boxes = {i for i in instances if "@" in i}
    assert boxes == {f"user{i}@d{i % 3}.example" for i in range(25, 30)}
    assert {"domain:d0.example", "domain:d1.example", "domain:d2.example", "domain:evil.example",
            ""} <= instances
    assert all(m.target == "mailboxes" for m in batch.measurements)
    states = {c.check: c.state for c in batch.checks}
    assert states["mailbox user29@d2.example"] is State.CRITICAL
    assert states["mailbox user26@d2.example"] is State.WARNING
    assert states["mailboxes"] is State.OK
    summary = next(c for c in batch.checks if c.check == "mailboxes")
    assert "31 mailboxes in 4 domains" in summary.message


async def test_hostile_mailbox_names_stay_on_one_line(tmp_path: Path):
    make_maildir(tmp_path / "v" / "evil.example" / "a\r\nSubject: x\u202ecba", [5000])
    cfg = MailboxesConfig(enabled=True, paths=[tmp_path / "v/{domain}/{user}"], critical_size=100)
    batch = await MailboxesCollector(cfg, 900, clock=lambda: 1_800_000_000).collect()
    (over,) = [c for c in batch.checks if c.state is State.CRITICAL]
    assert over.check == "mailbox a Subject: x cba@evil.example"
    assert over.message.startswith("mailbox a Subject: x cba@evil.example holds 4.9 KiB")
    for text in (over.check, over.message):
        assert not set(text) & {"\r", "\n", "\u202e"}


async def test_postfix_queue_from_postqueue_json(tmp_path: Path):
    recorded = DATA / "postfix" / "postqueue-j.txt"
    summary = parse_postqueue_json(recorded.read_text(), now=1763880600)
    assert (summary.messages, summary.size_bytes) == (3, 18133)
    assert summary.by_queue == {"deferred": 2, "active": 1}
    assert summary.oldest_seconds == 10600
    # The collector runs the program (argv, no shell); here a stand-in printing the recording.
    fake = tmp_path / "postqueue"
    fake.write_text(f"#!{sys.executable}\nimport sys\nassert sys.argv[1:] == ['-j']\n"
                    f"sys.stdout.write(open({str(recorded)!r}).read())\n")
    fake.chmod(0o755)
    cfg = MailboxesConfig(enabled=True, paths=[tmp_path / "none/{user}"], postfix_queue=True,
                          postqueue=str(fake), queue_warning=2)
    batch = await MailboxesCollector(cfg, 900).collect()
    queue = next(c for c in batch.checks if c.check == "postfix queue")
    assert queue.state is State.WARNING and "3 message(s)" in queue.message
    assert {m.metric for m in batch.measurements if m.instance == "queue:postfix"} == {
        "messages", "size_bytes", "deferred_messages", "oldest_seconds"}
    missing = MailboxesConfig(enabled=True, paths=[tmp_path / "none/{user}"], postfix_queue=True,
                              postqueue=str(tmp_path / "nope"))
    batch = await MailboxesCollector(missing, 900).collect()
    assert next(c for c in batch.checks if c.check == "postfix queue").state is State.UNKNOWN


def test_unchanged_maildir_directories_are_not_listed_again(tmp_path: Path):
    box = tmp_path / "spool" / "example.net" / "alice"
    make_maildir(box, [100, 200, 300], with_names=False)
    old = 1_700_000_000
    for sub in ("cur", "new"):
        os.utime(box / sub, (old, old))
    pattern = [f"{tmp_path}/spool/{{domain}}/{{user}}"]
    cache: dict = {}
    assert scan_spools(pattern, cache=cache).mailboxes[0].size_bytes == 600
    # Proof the cache answers: a file slipped in with the directory's mtime put back (nothing
    # in Maildir does this) is not seen...
    (box / "cur" / "sneaked:2,S").write_bytes(b"x" * 50)
    os.utime(box / "cur", (old, old))
    assert scan_spools(pattern, cache=cache).mailboxes[0].size_bytes == 600
    # ... while a real delivery, flag change (rename) or expunge changes the mtime: seen at once.
    os.rename(box / "cur" / "sneaked:2,S", box / "cur" / "sneaked:2,RS")
    (m,) = scan_spools(pattern, cache=cache).mailboxes
    assert (m.size_bytes, m.messages) == (650, 4)
    os.unlink(box / "cur" / "sneaked:2,RS")
    assert scan_spools(pattern, cache=cache).mailboxes[0].size_bytes == 600


async def test_scan_cache_outlives_a_restart_and_forgets_removed_mailboxes(tmp_path: Path):
    import shutil

    spool = tmp_path / "vhosts" / "example.net"
    for user in ("a", "b"):
        make_maildir(spool / user, [10, 20], with_names=False)
        make_maildir(spool / user, [5], folder=".Sent", with_names=False)
        for sub in (spool / user).glob("**/cur"):
            os.utime(sub, (1_700_000_000, 1_700_000_000))
        for sub in (spool / user).glob("**/new"):
            os.utime(sub, (1_700_000_000, 1_700_000_000))
    cfg = MailboxesConfig(enabled=True, paths=[tmp_path / "vhosts" / "{domain}" / "{user}"])
    cache_path = tmp_path / "state" / "cache.json"
    first = MailboxesCollector(cfg, 900, cache_path=cache_path)
    await first.collect()
    restarted = MailboxesCollector(cfg, 900, cache_path=cache_path)
    await restarted.collect()
    assert restarted._cache == first._cache and len(first._cache) == 8
    shutil.rmtree(spool / "b")
    batch = await restarted.collect()
    assert {k.split("/example.net/")[1].split("/")[0] for k in restarted._cache} == {"a"}
    sizes = {m.instance: m.value for m in batch.measurements if m.metric == "size_bytes"}
    assert sizes["a@example.net"] == 35


def test_sizes_without_s_come_from_the_listing_not_a_python_stat_per_message(tmp_path: Path):
    """Postfix virtual(8) names (no S=) and a folder mixing both kinds: exact sizes and counts,
    dot files left out, and no os.stat() call from Python per message (the stat()s are
    os.DirEntry's, relative to the listed directory: what makes the scan no slower than du)."""
    box = tmp_path / "example.net" / "carol"
    rng = random.Random(7)
    plain = [rng.randint(300, 90_000) for _ in range(400)]
    expected = make_maildir(box, plain, with_names=False)
    mixed = [rng.randint(300, 9_000) for _ in range(60)]
    expected += make_maildir(box, mixed[:30], with_names=False, folder=".Sent")
    for i, size in enumerate(mixed[30:]):  # Dovecot names next to Postfix ones
        (box / ".Sent" / "cur" / f"17100000{i:02d}.M{i}P9.host,S={size},W={size}:2,S").write_bytes(
            b"x" * size)
    expected += sum(mixed[30:])
    (box / "cur" / ".hidden-temp").write_bytes(b"x" * 5000)
    calls = 0

    def count(frame, event, arg):
        nonlocal calls
        if event == "c_call" and arg in (os.stat, os.lstat):
            calls += 1

    sys.setprofile(count)
    try:
        result = scan_spools([f"{tmp_path}/{{domain}}/{{user}}"])
    finally:
        sys.setprofile(None)
    (found,) = result.mailboxes
    assert (found.size_bytes, found.messages, found.source) == (expected, 460, "stat")
    assert calls < 40, calls  # a few per directory, none per message


def test_the_c_directory_loop_and_the_python_fallback_agree(tmp_path: Path):
    """collectors/maildir_sizes.c (built by `make deps`) measures a directory exactly as the
    Python code does: sizes from names or stat(), dot files out, odd names, a subdirectory and
    a symlink (its own size, not its target's); errors are the same OSErrors."""
    from collectors import mailboxes

    assert mailboxes._NATIVE_SIZES is not None, "run `make deps`: it builds the C helper"
    rng = random.Random(3)
    cur = tmp_path / "box" / "cur"
    cur.mkdir(parents=True)
    for i in range(300):
        size = rng.randint(0, 20_000)
        name = f"17200000{i:03d}.M{i}P3.host" + (f",S={size},W={size + 9}:2,S" if i % 3 else "")
        (cur / name).write_bytes(b"y" * size)
    odd = {"1.M1.host,S=,S=77:2,S": 5, "2.M2.host,S=x:2,S": 300, ",S=0": 9, ".hidden,S=5": 100,
           "3.M3.host,S=\u0661\u0662:2,S": 1, "4.M4.host,S=99999999999999999999999": 3}
    for name, size in odd.items():
        (cur / name).write_bytes(b"z" * size)
    (cur / "subdir").mkdir()
    (cur / "link").symlink_to(cur / "2.M2.host,S=x:2,S")
    native = mailboxes._sizes_of(str(cur))
    assert native == mailboxes._sizes_of_listing(str(cur))
    assert native[1] == 300 + 5 + 2  # every entry but the dot file
    # Without any odd name the whole directory is measured in C (same figures again).
    (cur / "3.M3.host,S=\u0661\u0662:2,S").unlink()
    (cur / "4.M4.host,S=99999999999999999999999").unlink()
    assert mailboxes._sizes_of(str(cur)) == mailboxes._sizes_of_listing(str(cur))
    for where, error in ((tmp_path / "missing", FileNotFoundError),
                         (cur / "link", NotADirectoryError)):
        for measure_directory in (mailboxes._sizes_of, mailboxes._sizes_of_listing):
            try:
                measure_directory(str(where))
            except error:
                continue
            raise AssertionError(f"{measure_directory.__name__}({where}) did not raise {error}")
