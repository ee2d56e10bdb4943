"""RRD file names: no `%` ever reaches librrd (rrdtool 1.7.2 formats file names as printf
formats in its error paths), hostile names with a truncated file give a clear error and no crash,
and data directories written with the old `%XX` names are migrated without losing history."""

from __future__ import annotations

import json
import os
import subprocess
import sys

from monitor.model import Kind, Measurement
from monitor.store import RrdStore, safe_name
from tests.conftest import MONITOR, ROOT
from tests.test_graphs import graph_config

STEP = 60
T0 = 1_763_880_000
NASTY = ["%s%n%s%n%s%n", "%n%n%n%n", "Gi0/0/1", "a%2Fb", "%x" * 80, "100%"]


def sample(target: str, instance: str, value: float, ts: int) -> Measurement:
    return Measurement(target, instance, "in_octets", value, Kind.GAUGE, "B/s", ts)


def test_file_names_never_contain_percent_and_stay_injective():
    names = [*NASTY, "a/b", "a_b", "a=2Fb", "", ".", "..", "x" * 500, "caf\udce9"]
    safe = [safe_name(n) for n in names]
    assert len(set(safe)) == len(names)
    assert not [s for s in safe if "%" in s or "/" in s or s.startswith(".")]


def test_hostile_names_and_a_truncated_file_give_a_clear_error_and_no_crash(tmp_path, write_config):
    data = tmp_path / "data"
    store = RrdStore(data / "rrd")
    for i in range(30):
        store.write([sample(t, t, 1000.0 + i, T0 + i * STEP) for t in NASTY], STEP)
    store.close()
    broken = store.path_for(NASTY[0], NASTY[0])
    broken.write_bytes(broken.read_bytes()[:600])  # truncated: a full disk, a crash mid-copy

    # the agent's writer, in its own process so that a segfault shows as one
    script = (f"import sys; sys.path.insert(0, {str(ROOT)!r})\n"
              "from monitor.store import RrdStore\nfrom tests.test_store_names import NASTY, sample\n"
              f"s = RrdStore({str(data / 'rrd')!r})\n"
              f"r = s.write([sample(t, t, 5.0, {T0 + 30 * STEP}) for t in NASTY], {STEP})\n"
              "print('\\n'.join(r.errors))\n")
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert "corrupt RRD file" in run.stdout and str(broken) in run.stdout
    assert "%" not in broken.name

    # another one truncated, for the grapher: the store's index still lists it
    truncated = store.path_for(NASTY[1], NASTY[1])
    truncated.write_bytes(truncated.read_bytes()[:2000])
    config = graph_config(write_config, data)
    graph = subprocess.run([*MONITOR, "--config", str(config), "graph", "--all"],
                           capture_output=True, text=True, timeout=120)
    assert graph.returncode == 1, (graph.returncode, graph.stderr)  # failed graphs, no signal
    assert "1 graph(s) failed" in graph.stderr
    assert f"({truncated})" in graph.stderr, graph.stderr  # which file, as it is on disk
    html = data / "html"
    drawn = [t for t in NASTY if (html / safe_name(t) / safe_name(t) / "day.png").exists()]
    assert drawn == NASTY[2:]

def test_old_percent_named_data_directories_are_migrated_with_their_history(tmp_path):
    root = tmp_path / "rrd"
    store = RrdStore(root)
    names = [("dmz-router", "Gi0/0/1"), ("%s%n", "%n"), ("web", "")]
    for i in range(10):
        store.write([sample(t, n, 100.0 * i, T0 + i * STEP) for t, n in names], STEP)
    store.close()
    # Lay the directory out as the %XX versions did: %XX escapes, index keys to match.
    index = json.loads((root / "index.json").read_text())
    old_files = {}
    for rel, entry in index["files"].items():
        old = rel.replace("=", "%")
        (root / old).parent.mkdir(parents=True, exist_ok=True)
        os.rename(root / rel, root / old)
        old_files[old] = entry
    for directory in list(root.iterdir()):
        if directory.is_dir() and not any(directory.iterdir()):
            directory.rmdir()
    index["files"] = old_files
    (root / "index.json").write_text(json.dumps(index))
    (root / ".names-migrated").unlink()  # those versions wrote no marker
    assert [p for p in root.rglob("*.rrd") if "%" in str(p.relative_to(root))]

    migrated = RrdStore(root)
    assert not [p for p in root.rglob("*") if "%" in str(p.relative_to(root))]
    assert {(s.target, s.instance) for s in migrated.series()} == set(names)
    for target, instance in names:
        series = migrated.fetch(target, instance, T0, T0 + 9 * STEP)
        assert [v for v in series.columns["in_octets"] if v is not None] == \
            [100.0 * i for i in range(1, 10)]
    # new samples go on into the migrated files
    assert migrated.write([sample(t, n, 7.0, T0 + 10 * STEP) for t, n in names], STEP).errors == []
    series = migrated.fetch("dmz-router", "Gi0/0/1", T0, T0 + 10 * STEP)
    assert dict(zip(series.timestamps, series.columns["in_octets"], strict=True))[T0 + 10 * STEP] == 7.0
