"""Benchmark: the mailboxes collector's scan vs `du -s` on the same Maildir trees.

Two trees of 2,000 mailboxes (Maildir++ with a Sent folder) holding 1,000,000 message files in
all, generated once into a cache directory under /tmp (reused when present; `--regenerate`
forces it):
- "S=": Dovecot's names, with the size in them (`...,S=2345,W=2401:2,S`);
- "no S=": Postfix virtual(8) / local(8) names (`1700000000.V801I1a2bM123456.mail`), whose
  sizes need a stat() each, as du does. Files are sparse (apparent size, no blocks).

Each round runs both sides on both trees, cold (the page, dentry and inode caches dropped
before each side; needs root) and warm, the order of the two sides alternating between
rounds. Our scan is timed twice: the first scan of a fresh agent (no directory cache) and a
steady-state scan (the collector keeps a cache of unchanged directories between its runs).
Target: every scan at most 1.0x du's time in the same conditions (the minimum over the rounds;
medians and CPU seconds - user + system, all threads - are printed too: on a shared machine
the wall time of either side depends on what else runs, CPU time much less).

    .venv/bin/python bench/mailbox_bench.py [--mailboxes 2000] [--messages 1000000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

DROP_CACHES = Path("/proc/sys/vm/drop_caches")


def progress(text: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r" + text.ljust(78))
        sys.stderr.flush()
    else:
        print(text, file=sys.stderr, flush=True)


def generate(base: Path, mailboxes: int, messages: int, with_sizes: bool) -> tuple[int, int]:
    """Create a tree; returns (messages, bytes). Deterministic (seeded)."""
    rng = random.Random(42)
    tmp = base.with_name(base.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    # Sizes of mailboxes follow a long tail, like real ones: a few huge, most small.
    weights = [rng.paretovariate(1.2) for _ in range(mailboxes)]
    scale = messages / sum(weights)
    counts = [max(1, int(w * scale)) for w in weights]
    counts[0] = max(1, counts[0] + messages - sum(counts))
    total_bytes = made = 0
    flags = os.O_CREAT | os.O_WRONLY | os.O_EXCL
    last = time.monotonic()
    for i, count in enumerate(counts):
        box = tmp / "vhosts" / f"domain{i % 200:03d}.example" / f"user{i:05d}"
        folders = [box, box / ".Sent"]
        for folder in folders:
            for sub in ("cur", "new", "tmp"):
                (folder / sub).mkdir(parents=True)
        for n in range(count):
            size = int(rng.lognormvariate(8.5, 1.3)) + 300
            total_bytes += size
            folder = folders[0] if n % 5 else folders[1]
            sub = "cur" if n % 11 else "new"
            if with_sizes:
                name = f"{1700000000 + n}.M{n}P{i}.mail.example,S={size},W={size + size // 40}"
            else:
                name = f"{1700000000 + n}.V801I{i:x}M{n}.mail.example"
            if sub == "cur":
                name += ":2,S"
            fd = os.open(folder / sub / name, flags, 0o600)
            if not with_sizes:
                os.ftruncate(fd, size)  # sparse: the size is real for stat(), no blocks used
            os.close(fd)
            made += 1
        if time.monotonic() - last > 5:
            last = time.monotonic()
            progress(f"generating: {i + 1}/{mailboxes} mailboxes, {made:,} files")
    progress(f"generated {mailboxes} mailboxes, {made:,} files\n")
    (tmp / "expected").write_text(f"{made} {total_bytes}\n")
    os.replace(tmp, base)
    return made, total_bytes


def drop_caches() -> None:
    os.sync()
    DROP_CACHES.write_text("3\n")


def cpu_seconds(who: int) -> float:
    usage = resource.getrusage(who)
    return usage.ru_utime + usage.ru_stime


def run_du(root: Path) -> tuple[float, float]:
    """(wall, CPU) seconds of `du -s`."""
    cpu = cpu_seconds(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(["du", "-s", str(root)], capture_output=True, check=True)
    return time.perf_counter() - started, cpu_seconds(resource.RUSAGE_CHILDREN) - cpu


def run_scan(root: Path, cache: dict) -> tuple[float, float, tuple[int, int, int]]:
    """(wall, CPU of every thread, what was found) of one scan."""
    from collectors.mailboxes import scan_spools
    from monitor.config import MailboxesConfig

    cpu = cpu_seconds(resource.RUSAGE_SELF)
    started = time.perf_counter()
    result = scan_spools([f"{root}/{{domain}}/{{user}}"], threads=MailboxesConfig().scan_threads,
                         cache=cache)
    elapsed = time.perf_counter() - started
    cpu = cpu_seconds(resource.RUSAGE_SELF) - cpu
    found = (len(result.mailboxes), sum(m.messages for m in result.mailboxes),
             sum(m.size_bytes for m in result.mailboxes))
    return elapsed, cpu, found


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mailboxes", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/monitor-bench-maildir"))
    parser.add_argument("--regenerate", action="store_true")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument("--trees", choices=("both", "S=", "no S="), default="both",
                        help="which tree(s) to time")
    args = parser.parse_args()
    cold = os.access(DROP_CACHES, os.W_OK)
    if not cold:
        print("not root (or /proc/sys read-only): cold runs skipped", file=sys.stderr)
    verdicts = []
    for label, with_sizes in (("S=", True), ("no S=", False)):
        if args.trees not in ("both", label):
            continue
        base = args.dir / f"{args.mailboxes}x{args.messages}{'' if with_sizes else '-nosize'}"
        if args.regenerate:
            shutil.rmtree(base, ignore_errors=True)
        if not (base / "expected").exists():
            print(f"generating {base} (once; reused by later runs)", file=sys.stderr)
            generate(base, args.mailboxes, args.messages, with_sizes)
        expected = (args.mailboxes, *map(int, (base / "expected").read_text().split()))
        if args.generate_only:
            continue
        root = base / "vhosts"
        times: dict[tuple[str, str], list[float]] = {}
        cpus: dict[tuple[str, str], list[float]] = {}
        loads = [os.getloadavg()[0]]
        for round_ in range(args.rounds):
            for caches in (("cold", "warm") if cold else ("warm",)):
                sides = ["du", "scan"] if round_ % 2 == 0 else ["scan", "du"]
                for side in sides:
                    if caches == "cold":
                        drop_caches()
                    elif side == sides[0]:
                        run_du(root)  # warm the caches once for both sides
                    if side == "du":
                        elapsed, cpu = run_du(root)
                        times.setdefault(("du -s", caches), []).append(elapsed)
                        cpus.setdefault(("du -s", caches), []).append(cpu)
                        continue
                    cache: dict = {}
                    elapsed, cpu, found = run_scan(root, cache)
                    if found != expected:
                        print(f"MISMATCH ({label}): scan found {found}, expected {expected}")
                        return 1
                    times.setdefault(("first scan", caches), []).append(elapsed)
                    cpus.setdefault(("first scan", caches), []).append(cpu)
                    if caches == "cold":
                        drop_caches()  # the steady scan's directory stats are cold too
                    time.sleep(2.1)  # directories settle (see collectors.mailboxes._SETTLED)
                    elapsed, cpu, found = run_scan(root, cache)
                    assert found == expected
                    times.setdefault(("steady scan", caches), []).append(elapsed)
                    cpus.setdefault(("steady scan", caches), []).append(cpu)
                loads.append(os.getloadavg()[0])
                progress(f"{label} round {round_ + 1} {caches} done")
        progress("\n")
        print(f"tree {label}: {args.mailboxes} mailboxes, {expected[1]:,} message files ({base}); "
              f"1-min load average {min(loads):.1f}-{max(loads):.1f} over the rounds")
        for caches in ("cold", "warm"):
            if ("du -s", caches) not in times:
                continue
            du = min(times[("du -s", caches)])
            du_median = statistics.median(times[("du -s", caches)])
            du_cpu = min(cpus[("du -s", caches)])
            print(f"  {caches}: du -s {du:.3f} s (median {du_median:.3f}, CPU {du_cpu:.2f} s)")
            for what in ("first scan", "steady scan"):
                ours = min(times[(what, caches)])
                median = statistics.median(times[(what, caches)])
                cpu = min(cpus[(what, caches)])
                ratio = ours / du
                verdicts.append(ratio <= 1.0)
                print(f"    {what}: {ours:.3f} s = {ratio:.2f}x du (median {median:.3f} s = "
                      f"{median / du_median:.2f}x; CPU {cpu:.2f} s = {cpu / du_cpu:.2f}x du's)")
    if args.generate_only:
        return 0
    ok = all(verdicts)
    print(f"target (every scan <= 1.0x du): {'OK' if ok else 'SLOWER'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
