"""Mailbox sizes against a real Dovecot: LMTP delivery into Maildir++ with the maildir quota
(Trash left out by a quota rule), Dovecot's own figures from `doveadm quota get`."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import smtplib
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from collectors.mailboxes import MailboxesCollector, load_history, scan_spools
from monitor.config import MailboxesConfig

pytestmark = pytest.mark.skipif(shutil.which("dovecot") is None or shutil.which("doveadm") is None,
                                reason="dovecot-lmtpd (Debian package) not installed")

QUOTA = 10 * 1024 * 1024


@dataclass
class Dovecot:
    config: Path
    port: int
    spool: Path

    def doveadm(self, *args: str, stdin: bytes | None = None) -> str:
        done = subprocess.run(["doveadm", "-c", str(self.config), *args], input=stdin,
                              capture_output=True, timeout=60)
        assert done.returncode == 0, done.stderr
        return done.stdout.decode()

    def quota_bytes_used(self, user: str) -> int:
        """STORAGE from `doveadm quota get` (KiB, rounded up by Dovecot)."""
        for line in self.doveadm("quota", "get", "-u", user).splitlines():
            if "STORAGE" in line:
                return int(line.split()[-3]) * 1024
        raise AssertionError(f"no STORAGE line for {user}")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def dovecot(tmp_path: Path) -> Iterator[Dovecot]:
    # The mail user must reach the spool: pytest's tmp_path is private to root.
    outside = Path(tempfile.mkdtemp(prefix="monitor-dovecot-"))
    outside.chmod(0o755)
    spool = outside / "vhosts"
    spool.mkdir()
    # Dovecot refuses uid 0 for mail: as root, deliver as its own system user.
    user = pwd.getpwuid(os.getuid()).pw_name if os.getuid() else "dovecot"
    if os.getuid() == 0:
        entry = pwd.getpwnam(user)
        os.chown(spool, entry.pw_uid, entry.pw_gid)
    port = _free_port()
    config = tmp_path / "dovecot.conf"
    config.write_text(f"""
base_dir = {tmp_path}/run
state_dir = {tmp_path}/state
log_path = {tmp_path}/dovecot.log
protocols = lmtp
listen = 127.0.0.1
ssl = no
first_valid_uid = 0
mail_location = maildir:{spool}/%d/%n
mail_plugins = quota
default_internal_user = {"dovecot" if os.getuid() == 0 else user}
default_login_user = {"dovenull" if os.getuid() == 0 else user}
passdb {{
  driver = static
  args = nopassword=y
}}
userdb {{
  driver = static
  args = uid={user} gid={user} home={spool}/%d/%n
}}
service lmtp {{
  inet_listener lmtp {{
    address = 127.0.0.1
    port = {port}
  }}
}}
protocol lmtp {{
  postmaster_address = postmaster@example.net
}}
plugin {{
  quota = maildir:User quota
  quota_rule = *:storage={QUOTA // 1024}K
  quota_rule2 = Trash:ignore
}}
""")
    process = subprocess.Popen(["dovecot", "-c", str(config), "-F"], start_new_session=True,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    log = (tmp_path / "dovecot.log")
                    raise RuntimeError("dovecot did not start: " + (
                        log.read_text() if log.exists() else "no log")) from None
                time.sleep(0.1)
        yield Dovecot(config, port, spool)
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=20)
        shutil.rmtree(outside, ignore_errors=True)


def message(n: int, size: int) -> bytes:
    body = (b"line of a message body\r\n" * (size // 24 + 1))[:size]
    return (f"From: sender{n}@example.org\r\nTo: someone\r\nSubject: message {n}\r\n"
            f"Message-ID: <{n}@example.org>\r\n\r\n").encode() + body + b"\r\n"


def test_sizes_match_dovecot_quota_and_stay_one_definition(dovecot: Dovecot, tmp_path: Path):
    users = [f"user{i}@{'example.net' if i % 2 else 'example.org'}" for i in range(12)]
    with smtplib.LMTP("127.0.0.1", dovecot.port) as lmtp:
        for i, user in enumerate(users):
            for n in range(i % 4 + 1):
                refused = lmtp.sendmail("sender@example.org", [user], message(n, 700 + 911 * i * n))
                assert not refused
    # user0 throws mail away: Trash counts for the mailbox, not for Dovecot's quota.
    dovecot.doveadm("mailbox", "create", "-u", users[0], "Trash")
    dovecot.doveadm("save", "-u", users[0], "-m", "Trash", stdin=message(99, 40_000))

    pattern = [f"{dovecot.spool}/{{domain}}/{{user}}"]
    boxes = {b.address: b for b in scan_spools(pattern).mailboxes}
    assert set(boxes) == set(users)
    trash_dir = dovecot.spool / "example.org" / "user0" / ".Trash"
    trash = sum(int(name.split(",S=")[1].split(",")[0].split(":")[0])
                for sub in ("cur", "new") for name in os.listdir(trash_dir / sub))
    assert trash > 30_000
    for user in users:
        used = dovecot.quota_bytes_used(user)
        size = boxes[user].size_bytes - (trash if user == users[0] else 0)
        assert used - 1024 < size <= used, user  # Dovecot rounds up to KiB
        assert boxes[user].quota_bytes == QUOTA
        assert boxes[user].source == "names"

    # Files removed behind Dovecot's back: its maildirsize drifts, our size follows the disk and
    # stays the same from one scan to the next.
    box = dovecot.spool / "example.net" / "user3"
    victim = sorted((box / "new").iterdir())[0]
    victim_size = int(victim.name.split(",S=")[1].split(",")[0])
    victim.unlink()
    before = boxes["user3@example.net"].size_bytes
    for _ in range(2):
        (after,) = [b for b in scan_spools(pattern).mailboxes if b.address == "user3@example.net"]
        assert after.size_bytes == before - victim_size

    # The collector keeps it all for the digest: latest sizes and the quota of every mailbox.
    cfg = MailboxesConfig(enabled=True, paths=[Path(pattern[0])], top=2)
    collector = MailboxesCollector(cfg, 900, history_path=tmp_path / "state" / "mailboxes.json")
    import asyncio

    asyncio.run(collector.collect())
    history = load_history(tmp_path / "state" / "mailboxes.json")
    assert set(history.latest) == set(users)
    assert all(quota == QUOTA for _, _, quota in history.latest.values())


def test_postfix_deliveries_by_lmtp_and_by_virtual8_measure_as_on_disk(dovecot: Dovecot,
                                                                      tmp_path: Path):
    """Postfix in front, as on a mail server: one domain goes over LMTP into Dovecot (names with
    S=, Dovecot's quota), another to Postfix's own virtual(8), whose Maildir names carry no
    size (each one a stat()). Both measure as Dovecot's quota / the files on disk say."""
    from types import SimpleNamespace

    from tests import daemons
    from tests.service_servers import make_cert

    lmtp_users = [f"user{i}@example.net" for i in range(4)]
    virtual_users = [f"v{i}@virt.example" for i in range(5)]
    cert = make_cert(tmp_path, names=("localhost",))
    with daemons.world_dir("monitor-vmail-") as vmail:
        nobody = pwd.getpwnam("nobody")
        os.chown(vmail, nobody.pw_uid, nobody.pw_gid)
        boxes = ", ".join(f"{u}={u.partition('@')[2]}/{u.partition('@')[0]}/"
                          for u in lmtp_users + virtual_users)
        main_cf = (f"virtual_mailbox_domains = example.net, virt.example\n"
                   f"transport_maps = inline:{{virt.example=virtual:}}\n"
                   f"virtual_mailbox_base = {vmail}\n"
                   f"virtual_mailbox_maps = inline:{{{boxes}}}\n"
                   f"virtual_uid_maps = static:{nobody.pw_uid}\n"
                   f"virtual_gid_maps = static:{nobody.pw_gid}\n")
        # daemons.postfix wants a Dovecot's LMTP and auth ports: this one's LMTP (no SASL here).
        backend = SimpleNamespace(ports={"lmtp": dovecot.port, "auth": daemons.free_port()})
        with daemons.postfix(cert, backend, domain="example.net", main_cf=main_cf) as ports:
            sizes: dict[str, list[int]] = {}
            with smtplib.SMTP("127.0.0.1", ports["smtp"]) as smtp:
                for i, user in enumerate(lmtp_users + virtual_users):
                    for n in range(i % 3 + 1):
                        body = message(n, 500 + 1733 * i * n)
                        assert not smtp.sendmail("sender@example.org", [user], body)
                        sizes.setdefault(user, []).append(len(body))
            spools = {u: (dovecot.spool if u in lmtp_users else vmail) / u.partition("@")[2]
                      / u.partition("@")[0] for u in sizes}

            def delivered(user: str) -> list[Path]:
                return [f for sub in ("new", "cur") if (spools[user] / sub).is_dir()
                        for f in (spools[user] / sub).iterdir()]

            deadline = time.monotonic() + 60
            while any(len(delivered(u)) < len(sizes[u]) for u in sizes):
                assert time.monotonic() < deadline, "postfix did not deliver within 60 s"
                time.sleep(0.1)
            found = {b.address: b for b in scan_spools([
                f"{dovecot.spool}/{{domain}}/{{user}}", f"{vmail}/{{domain}}/{{user}}"]).mailboxes}
            for user in virtual_users:
                files = delivered(user)
                assert not any(",S=" in f.name for f in files)  # virtual(8)'s own names
                box = found[user]
                assert box.source == "stat"
                assert (box.size_bytes, box.messages) == (sum(f.lstat().st_size for f in files),
                                                          len(files))
            for user in lmtp_users:
                box = found[user]
                used = dovecot.quota_bytes_used(user)
                assert box.source == "names" and used - 1024 < box.size_bytes <= used, user
                assert box.quota_bytes == QUOTA
