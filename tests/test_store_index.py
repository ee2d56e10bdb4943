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


def test_last_gauges_before_any_consolidated_value(tmp_path: Path) -> None:
    now = int(time.time())
    store = RrdStore(tmp_path)
    store.write([Measurement("mailboxes", "a@example.net", "size_bytes", 1234.0, timestamp=now),
                 Measurement("mailboxes", "a@example.net", "messages", 5.0, timestamp=now)], 3600)
    [info] = store.series()
    data = store.fetch("mailboxes", "a@example.net", now - 7200, now)
    assert all(v is None for col in data.columns.values() for v in col)  # rrdtool: nothing yet
    assert store.last_gauges(info) == {"size_bytes": 1234.0, "messages": 5.0}
    store.close()


def test_digest_right_after_the_first_scan_lists_mailboxes_and_disks(tmp_path: Path) -> None:
    """A fresh install (and the demo): one collection, then a digest. Before, the sections said
    "No mailbox sizes recorded" and "No disk usage data" until rrdtool had consolidated."""
    import subprocess
    import sys

    box = tmp_path / "spool" / "example.net" / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / sub).mkdir(parents=True)
    (box / "cur" / "1.M1P1.host,S=5000,W=5100:2,S").touch()
    config = tmp_path / "config.toml"
    config.write_text(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "gw.example.net"
[contacts]
admins = ["root@example.net"]
[mailboxes]
enabled = true
paths = ["{tmp_path / 'spool'}/{{domain}}/{{user}}"]
[disks]
enabled = true
smart = "off"
[[digests]]
name = "now"
recipients = ["admins"]
sections = ["disks", "mailboxes"]
graphs = false
""")
    monitor = [sys.executable, "-m", "monitor", "-q", "-c", str(config)]
    for part in ("mailboxes", "disks"):
        proc = subprocess.run([*monitor, "collect", "--only", part], capture_output=True,
                              text=True)
        assert proc.returncode == 0, proc.stderr
    proc = subprocess.run([*monitor, "digest", "now", "--dry-run"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "alice@example.net" in proc.stdout
    assert "No disk usage data" not in proc.stdout and "No mailbox sizes" not in proc.stdout
