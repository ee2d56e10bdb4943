"""`monitor import mrtg` of a big MRTG: 500 interface targets (50 devices x 10), each with two
years of history in rateup's .log layout, into a fresh store; then the same again (every row
already ours: kept). The reference, in the same run: what the import cannot do without, an
rrdtool dump and restore of each of the 500 files it wrote (the way history gets into every
archive of an RRD file). Prints wall and CPU time (ours and the rrdtool children's), the
ratio to the reference and the progress line as a terminal shows it.

Run: .venv/bin/python bench/import_bench.py [TARGETS]
"""

from __future__ import annotations

import argparse
import io
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from importers.commands import cmd_import, register
from monitor.config import parse_config
from tests.rateup_logs import synthetic_log

PER_DEVICE = 10
NOW = 1_700_000_000 - 1_700_000_000 % 86400


def cpu() -> float:
    """CPU seconds of this process and of the children it waited for (rrdtool restore)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


class Terminal(io.StringIO):
    """Standard error as a terminal: the progress line is drawn; the last one is kept."""

    def __init__(self) -> None:
        super().__init__()
        self.progress = ""

    def isatty(self) -> bool:
        return True

    def write(self, text: str) -> int:
        if text.startswith("\r\x1b[K["):
            self.progress = text[4:]
        return super().write(text)


def run(config, path: Path, *extra: str) -> tuple[float, float, str, str]:
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"), lambda args: None)  # type: ignore[arg-type, return-value]
    args = parser.parse_args(["import", "mrtg", str(path), *extra])
    err = Terminal()
    wall, used = time.perf_counter(), cpu()
    code = cmd_import(config, args, io.StringIO(), err)
    wall, used = time.perf_counter() - wall, cpu() - used
    text = err.getvalue()
    assert code == 0, text[-2000:]
    summary = next(line for line in text.splitlines() if line.startswith("import mrtg:"))
    return wall, used, summary.split("\r\x1b[K")[-1], err.progress


def main() -> None:
    targets = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    root = Path(tempfile.mkdtemp(prefix="monitor-import-bench-"))
    try:
        work = root / "mrtg"
        work.mkdir()
        lines = []
        for i in range(targets):
            device, port = divmod(i, PER_DEVICE)
            name = f"rtr{device}_gi0_{port}"
            synthetic_log(work / f"{name}.log", NOW)
            lines.append(f"Target[{name}]: #Gi0/{port}:public@192.0.2.{device % 250 + 1}:::::2\n"
                         f"MaxBytes[{name}]: 125000000\n")
        cfg = root / "mrtg.cfg"
        cfg.write_text(f"WorkDir: {work}\n" + "".join(lines))
        size = sum(p.stat().st_size for p in work.iterdir())
        toml = root / "config.toml"
        toml.write_text(f'[agent]\ndata_dir = "{root / "ours"}"\n')
        config = parse_config(toml.read_text(), toml)
        print(f"{targets} MRTG targets, 2 years of rateup .log each ({size / 2**20:.1f} MiB); "
              f"load average {os.getloadavg()[0]:.2f}", flush=True)

        dry = run(config, cfg, "--dry-run")
        first = run(config, cfg)
        again = run(config, cfg)

        files = sorted((root / "ours").rglob("*.rrd"))
        assert len(files) == targets, len(files)
        scratch = root / "reference"
        scratch.mkdir()
        wall, used = time.perf_counter(), cpu()
        for i, path in enumerate(files):
            xml = scratch / "dump.xml"
            subprocess.run(["rrdtool", "dump", str(path), str(xml)], check=True)
            subprocess.run(["rrdtool", "restore", "-f", str(xml), str(scratch / f"{i}.rrd")],
                           check=True)
        reference = (time.perf_counter() - wall, cpu() - used)

        print(f"{'':28} {'wall s':>8} {'CPU s':>8} {'per target':>11} {'x reference (CPU)':>18}")
        for label, (w, c, *_rest) in (("dry run", dry), ("import", first),
                                      ("again (all kept)", again),
                                      ("reference: dump + restore", (*reference, "", ""))):
            print(f"{label:28} {w:8.1f} {c:8.1f} {1000 * c / targets:9.0f} ms "
                  f"{c / reference[1]:17.2f}x")
        print(f"progress as shown: {first[3].strip()}")
        print(f"summary: {first[2]}")
        print(f"load average after: {os.getloadavg()[0]:.2f}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
