"""Demo data for the report collectors: a small Maildir spool and a Mailman 2 post log.

Usage: demo_reports.py DIR  (creates DIR/vhosts/<domain>/<user>/, DIR/mailman/post,
DIR/backup/). Sizes are in the Maildir file names (S=), as Dovecot writes them; the files
themselves are empty so the demo stays small.
"""

from __future__ import annotations

import random
import shutil
import sys
import time
from pathlib import Path


def main(base: Path) -> None:
    rng = random.Random(42)
    spool = base / "vhosts"
    if spool.exists():
        shutil.rmtree(spool)
    users = {"example.net": ["alice", "bob", "carol", "info", "contact"],
             "shop.example.org": ["orders", "dave", "eve"]}
    total = 0
    for domain, names in users.items():
        for name in names:
            box = spool / domain / name
            for sub in ("cur", "new", "tmp", ".Sent/cur", ".Sent/new"):
                (box / sub).mkdir(parents=True, exist_ok=True)
            for i in range(rng.randint(5, 120)):
                size = rng.randint(2_000, 2_000_000)
                folder = ("cur", "cur", "new", ".Sent/cur")[i % 4]
                (box / folder / f"{1763800000 + i}.M{i}P{rng.randint(100, 999)}.mail,"
                                 f"S={size},W={size + 40}:2,S").touch()
                total += 1
    log = base / "mailman" / "post"
    log.parent.mkdir(parents=True, exist_ok=True)
    now = time.time()
    lines = []
    for i in range(40):
        t = now - 86400 + i * 2000
        stamp = time.strftime("%b %d %H:%M:%S %Y", time.localtime(t))
        lst = rng.choice(["announce", "users", "users", "staff"])
        sender = rng.choice(["alice@example.net", "bob@example.net", "orders@shop.example.org"])
        result = "success" if i % 9 else "1 failures"
        lines.append(f"{stamp} ({4000 + i}) post to {lst} from {sender}, "
                     f"size={rng.randint(1500, 40000)}, message-id=<demo{i}@example.net>, {result}\n")
    log.write_text("".join(lines))
    (base / "backup").mkdir(parents=True, exist_ok=True)
    print(f"  {total} messages in {sum(map(len, users.values()))} mailboxes under {spool}")
    print(f"  {len(lines)} posts in {log}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
