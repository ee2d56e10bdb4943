"""Two years of an interface in the layout of MRTG's rateup .log, for the import tests and
bench/import_bench.py (real rateup reads them back as its own: tests/test_import_mrtg.py)."""

from __future__ import annotations

import math
from pathlib import Path


def synthetic_log(path: Path, now: int) -> list[tuple[int, int, int, int, int]]:
    """Two years of an interface in rateup's exact layout: the counters line, then the current
    and 601 five-minute lines, 600 of 30 minutes, 600 of 2 hours and 732 of a day, newest
    first, each on its resolution's boundaries as rateup writes them."""
    times = [now - i * 300 for i in range(602)]
    for resolution, count in ((1800, 600), (7200, 600), (86400, 732)):
        first = times[-1] - times[-1] % resolution
        first = first - resolution if first == times[-1] else first
        times += [first - i * resolution for i in range(count)]
    rows = []
    for t in times:
        average = int(1e6 * (2 + math.sin(t / 86400 * 2 * math.pi)) * (1 + (t - now) / 4e8))
        rows.append((t, average, average // 4, int(average * 1.5), average // 3))
    path.write_text(f"{now} 123456789 23456789\n" + "".join(f"{r[0]} {r[1]} {r[2]} {r[3]} {r[4]}\n"
                                                            for r in rows))
    return rows
