"""Sample data for the demo's reports: a Maildir spool, a Mailman 2 post log, a Postfix mail log
(under data/demo/).

Idempotent: the spool is made once; the post log gets today's and yesterday's lines appended
when they are missing, so the lists collector (which reads incrementally) sees new posts.
"""

from __future__ import annotations

import random
import sys
import time
from pathlib import Path

BASE = Path(sys.argv[1] if len(sys.argv) > 1 else "data/demo")
USERS = {"example.net": ["alice", "bob", "carol", "hotline"], "example.org": ["dave", "erin"]}


def make_spool(root: Path) -> None:
    rng = random.Random(7)
    now = int(time.time())
    for domain, users in USERS.items():
        for i, user in enumerate(users):
            box = root / domain / user
            if box.exists():
                continue
            for folder in (box, box / ".Sent"):
                for sub in ("cur", "new", "tmp"):
                    (folder / sub).mkdir(parents=True, exist_ok=True)
            for n in range(rng.randint(5, 40) * (i + 1)):
                body = (f"From: someone@example.com\nTo: {user}@{domain}\nSubject: message {n}\n\n"
                        + "hello " * rng.randint(10, 4000)).encode()
                folder = box if n % 4 else box / ".Sent"
                name = f"{now - n * 3600}.M{n}P{i}.demo,S={len(body)}:2,S"
                (folder / "cur" / name).write_bytes(body)
            # One message delivered by an agent that does not put S= in names: stat()ed.
            (box / "new" / f"{now}.M999P{i}.demo").write_bytes(b"Subject: no size in name\n\nhi\n")
    print(f"sample Maildir spool: {root}")


def make_post_log(path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    existing = path.read_text() if path.exists() else ""
    rng = random.Random(int(time.time()) // 86400)
    lines = []
    for days_ago in (1, 0):
        stamp = time.localtime(time.time() - days_ago * 86400)
        day = time.strftime("%b %d", stamp)
        if f"{day} " in existing and f"{time.strftime('%Y', stamp)} (" in existing:
            continue
        for n in range(rng.randint(5, 15)):
            hh, mm = 6 + n, rng.randint(0, 59)
            if days_ago == 0 and hh > stamp.tm_hour:
                break
            lst = rng.choice(["announce", "users", "users", "staff"])
            sender = rng.choice(["alice@example.net", "bob@example.net", "dave@example.org",
                                 "news@example.com"])
            size = rng.randint(800, 60000)
            mid = f"<{n}.{days_ago}@demo.example.net>"
            outcome = "success" if rng.random() > 0.15 else f"{rng.randint(1, 3)} failures"
            lines.append(f"{day} {hh:02d}:{mm:02d}:{rng.randint(0, 59):02d} {stamp.tm_year} "
                         f"({4000 + n}) post to {lst} from {sender}, size={size}, "
                         f"message-id={mid}, {outcome}\n")
    with open(path, "a") as handle:
        handle.writelines(lines)
    print(f"sample Mailman post log: {path} ({len(lines)} new line(s))")


def make_mail_log(path: Path) -> None:
    """Postfix's syslog lines for each hour since the last line written (at most a day back):
    deliveries in and out, deferrals, bounces, rejects and SASL brute force, in the formats
    Postfix 3.7 writes (see tests/data/postfix/mail.log for a recorded one)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    last = path.stat().st_mtime if path.exists() else now - 86400
    rng = random.Random(int(now))
    lines = []
    qid = rng.randint(0x100000, 0xFFFFFF) * 16
    users = [f"{u}@{d}" for d, us in USERS.items() for u in us]
    for hour in range(int(last) // 3600 + 1, int(now) // 3600 + 1):
        busy = 0.3 + 0.7 * abs(12 - (hour % 24)) / 12
        for _ in range(int(rng.randint(5, 30) * (1.3 - busy))):
            qid += 1
            q = f"{qid:X}"
            at = time.strftime("%b %e %H:%M:%S", time.localtime(hour * 3600 + rng.randint(0, 3599)))
            user = rng.choice(users)
            to = rng.choice([*users, "friend@example.com", "list@lists.example.org",
                             "someone@gmail.example"])
            local = to.split("@")[1] in USERS
            status = rng.choices(["sent", "deferred", "bounced"], [20, 2, 1])[0]
            relay = "127.0.0.1[127.0.0.1]:24" if local else "mx.example.com[192.0.2.25]:25"
            lines += [f"{at} mx postfix/smtpd[2001]: {q}: client=client.example.net[198.51.100.7], "
                      f"sasl_method=PLAIN, sasl_username={user}\n",
                      f"{at} mx postfix/qmgr[2002]: {q}: from=<{user}>, size={rng.randint(900, 90000)}, "
                      "nrcpt=1 (queue active)\n",
                      f"{at} mx postfix/{'lmtp' if local else 'smtp'}[2003]: {q}: to=<{to}>, "
                      f"relay={relay}, delay=0.4, dsn=2.0.0, status={status} (demo)\n"]
            if status != "deferred":
                lines.append(f"{at} mx postfix/qmgr[2002]: {q}: removed\n")
        at = time.strftime("%b %e %H:%M:%S", time.localtime(hour * 3600 + 1800))
        for _ in range(rng.randint(0, 4)):
            lines.append(f"{at} mx postfix/smtpd[2004]: NOQUEUE: reject: RCPT from unknown[203.0.113."
                         f"{rng.randint(1, 254)}]: 554 5.7.1 <x@example.net>: Relay access denied; "
                         "from=<spam@example.biz> to=<x@example.net> proto=ESMTP helo=<spam>\n")
        for _ in range(rng.randint(0, 6)):
            lines.append(f"{at} mx postfix/smtpd[2004]: warning: unknown[203.0.113.66]: SASL LOGIN "
                         "authentication failed: UGFzc3dvcmQ6\n")
    with open(path, "a") as handle:
        handle.writelines(lines)
    print(f"sample Postfix mail log: {path} ({len(lines)} new line(s))")


if __name__ == "__main__":
    make_spool(BASE / "vhosts")
    make_post_log(BASE / "mailman" / "post")
    make_mail_log(BASE / "mail.log")
    (BASE / "backups").mkdir(parents=True, exist_ok=True)
