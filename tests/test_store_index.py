"""The RRD index keeps each file's DS order, also across processes and from old indexes.

Found through the digest's disk section: after `monitor collect` created fs:/ and `monitor run`
(a second process) loaded the index, used_bytes held the free bytes and inodes_used the size,
because the index was saved with sorted keys and so listed the metrics alphabetically rather
than in the file's DS order that every update relies on.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from monitor.model import Measurement
from monitor.store import RrdStore

METRICS = [("used_bytes", 3e9), ("free_bytes", 1e9), ("size_bytes", 4e9)]


def _write(store: RrdStore, t: int) -> None:
    store.write([Measurement("h", "fs:/", m, v, timestamp=t) for m, v in METRICS], 60)


def _last(store: RrdStore, now: int) -> dict[str, float]:
    data = store.fetch("h", "fs:/", now - 300, now)
    return {m: [v for v in col if v is not None][-1] for m, col in data.columns.items()}


def test_second_process_writes_the_right_data_sources(tmp_path: Path) -> None:
    now = int(time.time()) // 60 * 60
    first = RrdStore(tmp_path)
    _write(first, now - 120)
    first.close()
    second = RrdStore(tmp_path)  # as `monitor run` after `monitor collect`
    for t in (now - 60, now):
        _write(second, t)
    assert _last(second, now) == dict(METRICS)
    second.close()


def test_version_1_index_with_sorted_metrics_is_repaired(tmp_path: Path) -> None:
    now = int(time.time()) // 60 * 60
    first = RrdStore(tmp_path)
    _write(first, now - 120)
    first.close()
    # What the old code saved: metrics sorted by name, version 1.
    index = json.loads((tmp_path / "index.json").read_text())
    for entry in index["files"].values():
        entry["metrics"] = dict(sorted(entry["metrics"].items()))
    index["version"] = 1
    (tmp_path / "index.json").write_text(json.dumps(index, sort_keys=True))
    second = RrdStore(tmp_path)
    for t in (now - 60, now):
        _write(second, t)
    assert _last(second, now) == dict(METRICS)
    second.close()
    saved = json.loads((tmp_path / "index.json").read_text())
    assert saved["version"] == 2
    assert list(next(iter(saved["files"].values()))["metrics"]) == [m for m, _ in METRICS]
