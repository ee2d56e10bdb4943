"""Backup results: one check per [[backups]] job, "backup <name>" on target "backups".

A job's result comes from one source:
- "wrapper": `monitor backup-run NAME -- CMD ARGS...` (see `run_wrapped`) ran the job and
  recorded exit status, duration, output tail and size in data_dir/state/backups/NAME.json;
- "log": the newest line of a log file that matches the success or failure pattern;
- "artifact": the newest file matching a glob must be younger than max_age and must not have
  shrunk by more than max_shrink since the previous one;
- "restic" / "borg": the newest snapshot/archive of `restic snapshots --json` /
  `borg list --json`.
No successful result within max_age is a failure (CRITICAL), whatever the source.
Measurements (instance = job name): age_seconds, success (1/0), and when known
duration_seconds, size_bytes.
"""

from __future__ import annotations

import asyncio
import datetime
import glob
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from monitor.config import BackupJob, Config
from monitor.model import Batch, CheckResult, Collector, Measurement, State

TARGET = "backups"
TAIL_BYTES = 4096
KEEP_RUNS = 30


@dataclass
class Result:
    ok: bool
    when: float | None
    message: str
    duration: float | None = None
    size: float | None = None


def wrapper_state(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "backups" / f"{name}.json"


def load_runs(state_dir: Path, name: str) -> list[dict]:
    try:
        return json.loads(wrapper_state(state_dir, name).read_text(encoding="utf-8"))["runs"]
    except (OSError, ValueError, KeyError):
        return []


def run_wrapped(name: str, argv: Sequence[str], state_dir: Path, *,
                clock: Callable[[], float] = time.time, echo: bool = True) -> int:
    """Run a backup command, pass its output through, record the result; returns the exit
    status to exit with (128 + signal for a killed command, 127 if it cannot be started)."""
    from monitor.files import atomic_write

    started = clock()
    t0 = time.monotonic()
    tail = b""
    total = 0
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except OSError as exc:
        status, tail = 127, f"cannot start {argv[0]}: {exc.strerror or exc}\n".encode()
        total = len(tail)
        if echo:
            sys.stderr.write(tail.decode())
    else:
        assert proc.stdout is not None
        while chunk := proc.stdout.read1(65536):
            total += len(chunk)
            tail = (tail + chunk)[-TAIL_BYTES:]
            if echo:
                sys.stdout.buffer.write(chunk)
                sys.stdout.buffer.flush()
        code = proc.wait()
        status = 128 - code if code < 0 else code
    run = {"started": started, "finished": clock(), "duration": time.monotonic() - t0,
           "exit_status": status, "output_bytes": total,
           "output_tail": tail.decode("utf-8", "replace"), "command": list(argv)}
    runs = [*load_runs(state_dir, name), run][-KEEP_RUNS:]
    atomic_write(wrapper_state(state_dir, name), json.dumps({"job": name, "runs": runs}, indent=1))
    return status


def from_wrapper(job: BackupJob, state_dir: Path) -> Result | None:
    runs = load_runs(state_dir, job.name)
    if not runs:
        return None
    run = runs[-1]
    last_line = run["output_tail"].strip().splitlines()[-1:] or [""]
    if run["exit_status"] == 0:
        return Result(True, run["finished"], "exited 0", run["duration"], run["output_bytes"])
    return Result(False, run["finished"], f"exited {run['exit_status']}: {last_line[0][:200]}",
                  run["duration"], run["output_bytes"])


def from_log(job: BackupJob) -> Result | None:
    assert job.log is not None
    with open(job.log, "rb") as handle:
        size = os.fstat(handle.fileno()).st_size
        handle.seek(max(0, size - 256 * 1024))
        lines = handle.read().decode("utf-8", "replace").splitlines()
        mtime = os.fstat(handle.fileno()).st_mtime
    ok_re = re.compile(job.success)
    bad_re = re.compile(job.failure) if job.failure else None
    for line in reversed(lines):
        if bad_re is not None and bad_re.search(line):
            return Result(False, mtime, f"log says: {line.strip()[:200]}")
        if ok_re.search(line):
            return Result(True, mtime, f"log says: {line.strip()[:200]}")
    return None


def from_artifact(job: BackupJob, state_dir: Path) -> Result | None:
    from monitor.files import atomic_write

    files = []
    for path in glob.glob(job.path):
        try:
            st = os.stat(path)
        except OSError:
            continue
        files.append((st.st_mtime, st.st_size, path))
    if not files:
        return None
    mtime, size, path = max(files)
    memo = Path(state_dir) / "backups" / f"{job.name}.artifact.json"
    try:
        previous = json.loads(memo.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        previous = {}
    history = previous.get("history", [])
    if not history or history[-1]["path"] != path or history[-1]["mtime"] != mtime:
        history = [*history, {"path": path, "mtime": mtime, "size": size}][-KEEP_RUNS:]
        atomic_write(memo, json.dumps({"history": history}))
    before = history[-2]["size"] if len(history) > 1 else None
    name = os.path.basename(path)
    if before and size < before * (1 - job.max_shrink / 100):
        return Result(False, mtime, f"{name} is {size} bytes, {100 - 100 * size / before:.0f}% "
                      f"smaller than the previous backup ({before} bytes)", size=size)
    return Result(True, mtime, f"{name}, {size} bytes", size=size)


def _parse_time(text: str) -> float:
    # restic: "2026-11-23T06:25:01.123456789+01:00"; borg: "2026-11-23T06:25:01.000000"
    m = re.match(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?(Z|[+-]\d\d:?\d\d)?$", text.strip())
    if not m:
        raise ValueError(f"unexpected time {text!r}")
    zone = m[3] or ""
    value = datetime.datetime.fromisoformat(m[1] + ("+00:00" if zone == "Z" else zone))
    return value.timestamp()


async def _run_json(job: BackupJob) -> object:
    env = {**os.environ, **job.environment}
    proc = await asyncio.create_subprocess_exec(
        *job.command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), job.timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{job.command[0]} did not answer within {job.timeout:.0f} s") from None
    if proc.returncode != 0:
        raise RuntimeError(f"{os.path.basename(job.command[0])} exited {proc.returncode}: "
                           f"{err.decode('utf-8', 'replace').strip()[-300:]}")
    return json.loads(out)


async def from_snapshots(job: BackupJob) -> Result | None:
    data = await _run_json(job)
    if job.source == "restic":
        items = data if isinstance(data, list) else []
        snaps = [(_parse_time(s["time"]), s) for s in items]
    else:
        items = data.get("archives", []) if isinstance(data, dict) else []
        snaps = [(_parse_time(a.get("time") or a["start"]), a) for a in items]
    if not snaps:
        return None
    when, snap = max(snaps, key=lambda t: t[0])
    size = None
    summary = snap.get("summary") or {}
    if "total_bytes_processed" in summary:
        size = summary["total_bytes_processed"]
    label = snap.get("short_id") or snap.get("name") or snap.get("id", "")[:8]
    return Result(True, when, f"{len(snaps)} snapshot(s), newest {label}", size=size)


class BackupsCollector:
    def __init__(self, jobs: list[BackupJob], state_dir: Path, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.name = "backups"
        self.jobs = jobs
        self.state_dir = Path(state_dir)
        self.interval = min(job.interval for job in jobs)
        self.clock = clock

    async def result(self, job: BackupJob) -> Result | None:
        if job.source == "wrapper":
            return from_wrapper(job, self.state_dir)
        if job.source == "log":
            return await asyncio.to_thread(from_log, job)
        if job.source == "artifact":
            return await asyncio.to_thread(from_artifact, job, self.state_dir)
        return await from_snapshots(job)

    async def check(self, job: BackupJob, now: float) -> tuple[CheckResult, list[Measurement]]:
        check = f"backup {job.name}"
        try:
            result = await self.result(job)
        except (OSError, RuntimeError, ValueError, KeyError, TypeError) as exc:
            text = getattr(exc, "strerror", None) or str(exc)
            return CheckResult(TARGET, check, State.UNKNOWN,
                               f"backup {job.name}: cannot read its {job.source} result: {text}",
                               timestamp=now), []
        limit = _age(job.max_age)
        if result is None or result.when is None:
            return CheckResult(TARGET, check, State.CRITICAL,
                               f"backup {job.name}: no result found ({job.source}); expected one "
                               f"at least every {limit}", timestamp=now), []
        age = max(0.0, now - result.when)
        values = [Measurement(TARGET, job.name, "age_seconds", age, unit="s", timestamp=now),
                  Measurement(TARGET, job.name, "success", 1 if result.ok else 0, timestamp=now)]
        if result.duration is not None:
            values.append(Measurement(TARGET, job.name, "duration_seconds", result.duration,
                                      unit="s", timestamp=now))
        if result.size is not None:
            values.append(Measurement(TARGET, job.name, "size_bytes", result.size, unit="B",
                                      timestamp=now))
        ago = _age(age)
        if not result.ok:
            state, text = State.CRITICAL, f"backup {job.name} FAILED {ago} ago: {result.message}"
        elif age > job.max_age:
            state, text = State.CRITICAL, (f"backup {job.name}: last success {ago} ago, older "
                                           f"than the allowed {limit} ({result.message})")
        else:
            state, text = State.OK, f"backup {job.name} OK {ago} ago: {result.message}"
        return CheckResult(TARGET, check, state, text, timestamp=now), values

    async def collect(self) -> Batch:
        now = self.clock()
        batch = Batch()
        for check, values in await asyncio.gather(*(self.check(j, now) for j in self.jobs)):
            batch.extend(values)
            batch.add(check)
        return batch


def _age(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


def build(config: Config) -> list[Collector]:
    if not config.backups:
        return []
    return [BackupsCollector(config.backups, config.state_dir)]
