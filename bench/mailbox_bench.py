"""Mailbox scan vs `du -s`, same tree, same run, warm cache.

A Maildir spool of 2,000 mailboxes / 1,000,000 message files (Dovecot-style names with S=,
2 % without, a third of the messages in Maildir++ subfolders) is generated once into a cache
directory under /tmp and reused. Then, after one warm-up pass of each, our scan (collectors.
mailboxes.scan: sizes and message counts per mailbox) and `du -s` (one number for the tree) run
alternately; the best of ROUNDS of each is compared. Target: ours <= 1.0x du's time.

Run: .venv/bin/python bench/mailbox_bench.py [--mailboxes 2000] [--messages 1000000]
     [--cache /tmp/monitor-mailbox-bench] [--rounds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from collectors.mailboxes import scan  # noqa: E402
from monitor.config import MailboxesConfig  # noqa: E402


def progress(text: str, end: str = "\n") -> None:
    """A progress line on a terminal; plain log lines otherwise."""
    if sys.stderr.isatty():
        print(f"\r  {text}", end=end, file=sys.stderr, flush=True)
    else:
        print(f"  {text}", file=sys.stderr, flush=True)


def generate(root: Path, mailboxes: int, messages: int) -> None:
    marker = root / f".complete-{mailboxes}-{messages}"
    if marker.exists():
        progress(f"reusing {messages:,} files in {mailboxes:,} mailboxes under {root}")
        return
    if root.exists():
        subprocess.run(["rm", "-rf", str(root)], check=True)
    started = time.monotonic()
    per_box = messages // mailboxes
    made = 0
    domains = max(1, mailboxes // 200)
    for b in range(mailboxes):
        box = root / f"d{b % domains}.example" / f"user{b}"
        folders = [box / "cur", box / "new", box / ".Sent" / "cur", box / ".Archive" / "cur"]
        for folder in folders:
            folder.mkdir(parents=True, exist_ok=True)
        (box / "tmp").mkdir(exist_ok=True)
        count = per_box + (messages - per_box * mailboxes if b == mailboxes - 1 else 0)
        for i in range(count):
            folder = folders[0] if i % 3 else folders[1 + i % 3 if i % 9 else 2]
            size = 1500 + (i * 7919) % 60000
            if i % 50 == 49:
                name = f"17000{i:05d}.M{i}P{b}.mail:2,S"
            else:
                name = f"17000{i:05d}.M{i}P{b}.mail,S={size},W={size + 30}:2,S"
            os.close(os.open(folder / name, os.O_CREAT | os.O_WRONLY, 0o600))
        made += count
        every = 20 if sys.stderr.isatty() else 200
        if b % every == every - 1 or b == mailboxes - 1:
            rate = made / max(1e-6, time.monotonic() - started)
            progress(f"generating: {made:,}/{messages:,} files ({rate:,.0f}/s)",
                     end="\r" if b != mailboxes - 1 else "\n")
    marker.touch()


def time_ours(root: Path, workers: int) -> tuple[float, int, int]:
    settings = MailboxesConfig(enabled=True, root=root, workers=workers)
    t = time.perf_counter()
    result = scan(settings)
    elapsed = time.perf_counter() - t
    assert not result.errors and result.root_error is None
    return elapsed, len(result.mailboxes), sum(m.messages for m in result.mailboxes)


def time_du(root: Path) -> float:
    t = time.perf_counter()
    subprocess.run(["du", "-s", str(root)], check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--cache", type=Path, default=Path("/tmp/monitor-mailbox-bench"))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    root = args.cache / "vhosts"
    generate(root, args.mailboxes, args.messages)
    progress("warming the cache (one pass of each)")
    _, boxes, msgs = time_ours(root, args.workers)
    assert boxes == args.mailboxes and msgs == args.messages, (boxes, msgs)
    time_du(root)
    ours, du = [], []
    for r in range(args.rounds):
        ours.append(time_ours(root, args.workers)[0])
        du.append(time_du(root))
        progress(f"round {r + 1}/{args.rounds}: ours {ours[-1]:.2f} s, du -s {du[-1]:.2f} s")
    best_ours, best_du = min(ours), min(du)
    print(f"mailbox scan: {boxes:,} mailboxes, {msgs:,} message files, warm cache, "
          f"best of {args.rounds}")
    print(f"  ours (sizes + counts per mailbox, {args.workers} workers): {best_ours:.2f} s")
    print(f"  du -s (one total):                               {best_du:.2f} s")
    print(f"  ratio ours/du: {best_ours / best_du:.2f}x (target <= 1.0x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
