"""Benchmark: the mailboxes collector's scan vs `du -s` on the same Maildir tree.

2,000 mailboxes (Maildir++ with a Sent folder) holding 1,000,000 message files in all, generated
once into a cache directory under /tmp (reused when present; `--regenerate` forces it). Message
files are empty but carry Dovecot's `S=<size>` in their names, as real deliveries do; the scan
reads sizes from names, du must stat every file. Both run twice in the same process; the second
(warm cache) runs are compared. Target: our scan at most 1.0x du's time.

    .venv/bin/python bench/mailbox_bench.py [--mailboxes 2000] [--messages 1000000] [--dir DIR]
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text.ljust(70))
        sys.stderr.flush()
    else:
        print(text, file=sys.stderr, flush=True)


def generate(base: Path, mailboxes: int, messages: int) -> tuple[int, int]:
    """Create the tree; returns (messages, bytes claimed by S=). Deterministic (seeded)."""
    rng = random.Random(42)
    tmp = base.with_name(base.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # Sizes of mailboxes follow a long tail, like real ones: a few huge, most small.
    weights = [rng.paretovariate(1.2) for _ in range(mailboxes)]
    scale = messages / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[0] += messages - sum(counts)
    if counts[0] < 1:
        counts[0] = 1
    total_bytes = 0
    made = 0
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    last = time.monotonic()
    for i, count in enumerate(counts):
        domain = f"domain{i % 200:03d}.example"
        box = tmp / "vhosts" / domain / f"user{i:05d}"
        folders = [box, box / ".Sent"]
        for folder in folders:
            for sub in ("cur", "new", "tmp"):
                (folder / sub).mkdir(parents=True)
        for n in range(count):
            size = int(rng.lognormvariate(8.5, 1.3)) + 300
            total_bytes += size
            folder = folders[0] if n % 5 else folders[1]
            sub = "cur" if n % 11 else "new"
            name = f"{1700000000 + n}.M{n}P{i}.mail.example,S={size},W={size + size // 40}"
            if sub == "cur":
                name += ":2,S"
            os.close(os.open(folder / sub / name, flags, 0o600))
            made += 1
        if time.monotonic() - last > 2:
            last = time.monotonic()
            progress(f"generating: {i + 1}/{mailboxes} mailboxes, {made:,} files")
    progress(f"generated {mailboxes} mailboxes, {made:,} files")
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    (tmp / "expected").write_text(f"{made} {total_bytes}\n")
    os.replace(tmp, base)
    return made, total_bytes


def run_du(root: Path) -> tuple[float, str]:
    started = time.perf_counter()
    out = subprocess.run(["du", "-s", str(root)], capture_output=True, text=True, check=True).stdout
    return time.perf_counter() - started, out.split()[0]


def run_scan(root: Path) -> tuple[float, int, int, int]:
    from collectors.mailboxes import scan_spools
    from monitor.config import MailboxesConfig

    started = time.perf_counter()
    # As the collector runs it by default (threads), minus maildirsize: every name is read.
    result = scan_spools([f"{root}/{{domain}}/{{user}}"],
                         threads=MailboxesConfig().scan_threads)
    elapsed = time.perf_counter() - started
    messages = sum(m.messages for m in result.mailboxes)
    size = sum(m.size_bytes for m in result.mailboxes)
    return elapsed, len(result.mailboxes), messages, size


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/monitor-bench-maildir"))
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--generate-only", action="store_true")
    args = parser.parse_args()
    base = args.dir / f"{args.mailboxes}x{args.messages}"
    if args.regenerate:
        shutil.rmtree(base, ignore_errors=True)
    if not (base / "expected").exists():
        print(f"generating the tree in {base} (once; reused by later runs)", file=sys.stderr)
        generate(base, args.mailboxes, args.messages)
    expected_messages, expected_bytes = map(int, (base / "expected").read_text().split())
    if args.generate_only:
        return 0
    root = base / "vhosts"
    results: dict[str, list[float]] = {"du -s": [], "monitor scan": []}
    for round_ in (1, 2):
        t, du_kib = run_du(root)
        results["du -s"].append(t)
        progress(f"round {round_}: du -s {t:.2f} s ({int(du_kib) / 1024:.0f} MiB on disk)")
        t, boxes, messages, size = run_scan(root)
        results["monitor scan"].append(t)
        progress(f"round {round_}: scan {t:.2f} s: {boxes} mailboxes, {messages:,} messages, "
                 f"{size / 2**30:.2f} GiB")
        if (boxes, messages, size) != (args.mailboxes, expected_messages, expected_bytes):
            print(f"MISMATCH: scan found {boxes} mailboxes, {messages} messages, {size} bytes; "
                  f"expected {args.mailboxes}, {expected_messages}, {expected_bytes}")
            return 1
    if sys.stderr.isatty():
        sys.stderr.write("\n")
    du_warm, scan_warm = results["du -s"][1], results["monitor scan"][1]
    print(f"tree: {args.mailboxes} mailboxes, {expected_messages:,} message files ({base})")
    print(f"du -s (warm):        {du_warm:.3f} s   (cold-ish first run {results['du -s'][0]:.3f} s)")
    print(f"monitor scan (warm): {scan_warm:.3f} s   (first run {results['monitor scan'][0]:.3f} s)")
    ratio = scan_warm / du_warm
    print(f"ratio scan/du: {ratio:.2f}x (target <= 1.0x): {'OK' if ratio <= 1.0 else 'SLOWER'}")
    return 0 if ratio <= 1.0 else 1


if __name__ == "__main__":
    sys.exit(main())
