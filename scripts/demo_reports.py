"""Sample data for the demo's reports: a Maildir spool, a Mailman 2 post log (under data/demo/).

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


if __name__ == "__main__":
    make_spool(BASE / "vhosts")
    make_post_log(BASE / "mailman" / "post")
    (BASE / "backups").mkdir(parents=True, exist_ok=True)
