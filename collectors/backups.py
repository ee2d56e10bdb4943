"""Backup results, one [[backups]] job at a time, from wherever the job leaves them.

Kinds:
- "wrapper": cron runs `monitor backup-run NAME -- CMD ARGS...`; `run_wrapped()` runs the
  command, passes its output and exit status through (so cron still mails failures), and records
  start, end, exit status, output size and the output's last lines in
  data_dir/state/backups/NAME.json;
- "log": the last line of a log file matching success_pattern or failure_pattern decides; its
  own timestamp says when (else the time the agent first saw that line, never the file's
  mtime: a later "starting" line must not refresh an old success);
- "artifact": the newest file matching a glob must be younger than max_age, at least min_size,
  and not more than max_shrink percent smaller than the one before it;
- "restic" / "borg": the newest snapshot in `restic snapshots --json` / `borg list --json`.
In every kind, no result within max_age is a failure in itself (cron stopped, disk unmounted).

Naming contract: target "backups", instance = job name; metrics age_seconds, success (1/0),
duration_seconds, size_bytes. Check: CheckResult("backups", "backup NAME").
"""

from __future__ import annotations

import asyncio
import collections
import glob as globmod
import hashlib
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

from monitor.config import BackupJob, Config
from monitor.files import atomic_write
from monitor.model import Batch, CheckResult, Collector, Measurement, State
from monitor.process import CommandFailed, CommandMissing, run_command
from monitor.status import CheckStatus
from monitor.text import clean
from monitor.units import format_bytes, format_duration

TARGET = "backups"
TAIL_LINES = 20
TAIL_BYTES = 4096
KEEP_RUNS = 30


# -- the wrapper ----------------------------------------------------------------------------


def runs_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "backups" / f"{name}.json"


def load_runs(state_dir: Path, name: str) -> list[dict]:
    """The recorded wrapper runs of a job, oldest first ([] when none or unreadable)."""
    try:
        raw = json.loads(runs_path(state_dir, name).read_text(encoding="utf-8"))
        return list(raw.get("runs", []))
    except (OSError, ValueError, AttributeError):
        return []


def _save_runs(state_dir: Path, name: str, runs: list[dict]) -> None:
    atomic_write(runs_path(state_dir, name), json.dumps({"version": 1, "runs": runs[-KEEP_RUNS:]},
                                                        indent=1))


def run_wrapped(name: str, argv: Sequence[str], state_dir: Path, *, clock: Callable[[], float] = time.time,
                out: BinaryIO | None = None) -> int:
    """Run a backup command, record its result, return its exit status (128+N for signal N)."""
    out = out or sys.stdout.buffer
    started = clock()
    runs = load_runs(state_dir, name)
    record = {"started": started, "finished": None, "exit_status": None, "duration_seconds": None,
              "output_bytes": 0, "tail": ""}
    try:
        _save_runs(state_dir, name, [*runs, record])  # "running since" for the collector
    except OSError as exc:
        print(f"monitor backup-run: cannot record in {state_dir}: {exc}", file=sys.stderr)
    tail: collections.deque[bytes] = collections.deque(maxlen=TAIL_LINES)
    total = 0
    status: int
    try:
        proc = subprocess.Popen(list(argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        status, tail_text = 127, f"command not found: {argv[0]}"
    except PermissionError:
        status, tail_text = 126, f"permission denied: {argv[0]}"
    else:
        assert proc.stdout is not None
        try:
            for line in proc.stdout:
                total += len(line)
                tail.append(line[-TAIL_BYTES:])
                out.write(line)
            out.flush()
            code = proc.wait()
        except KeyboardInterrupt:
            proc.terminate()
            code = proc.wait()
        status = 128 - code if code < 0 else code
        tail_text = b"".join(tail).decode("utf-8", "replace")[-TAIL_BYTES:]
    finished = clock()
    record.update(finished=finished, exit_status=status, duration_seconds=finished - started,
                  output_bytes=total, tail=tail_text)
    try:
        _save_runs(state_dir, name, [*runs, record])
    except OSError as exc:
        print(f"monitor backup-run: cannot record the result in {state_dir}: {exc}", file=sys.stderr)
    return status


# -- evaluating one job ---------------------------------------------------------------------


@dataclass
class JobResult:
    """What one evaluation found; `when` is the time of the result it judges (None: none)."""

    ok: bool
    message: str
    when: float | None = None
    duration: float | None = None
    size: float | None = None
    extra: dict = field(default_factory=dict)


def _human(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 60:
        return f"{seconds:.1f} s" if seconds < 10 else f"{seconds:.0f} s"
    return format_duration(round(seconds))


def _ago(now: float, when: float) -> str:
    return f"{_human(now - when)} ago"


# Lines that never carry the error: Go stack frames and goroutine headers, Python traceback
# frames, a bare path (restic's "Is there a repository at the following location?" answer), a
# forced-command wrapper's environment dump.
_NOISE = re.compile(r"^(?:goroutine \d+ |\S+\.go:\d+|[\w./*()-]+\(.*\)$|created by |\[signal |"
                    r"File \".*\", line \d+|Traceback |/\S*$|SSH_ORIGINAL_COMMAND[:=]|"
                    r"Do you want to continue)")
_ERROR_WORD = re.compile(r"(?i)\b(?:error|fatal|denied|failed|failure|aborted|refused|panic|"
                         r"incorrect|cannot|unable|not exist|no such)\b")
# (pattern, what to do) for errors whose cure is known.
ADVICE = (
    (re.compile(r"Cache initialization aborted|Repository access aborted|previously located at"),
     "the repository was moved or is new to this user: run `borg list REPOSITORY` once by hand "
     "as the user the backup runs as and answer yes, or set BORG_RELOCATED_REPO_ACCESS_IS_OK=yes "
     "or BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes for that job"),
    (re.compile(r"wrong password or no key found|passphrase supplied in .* is incorrect"),
     "the password does not open this repository: check the job's password / password_file"),
    (re.compile(r"unable to open config file|Repository .* does not exist"),
     "no repository at that location: check the repository path, or create it with restic "
     "init / borg init"),
    (re.compile(r"(?i)repository is already locked|Failed to create/acquire the lock"),
     "another run holds the repository lock, or a crashed one left it: once none runs, "
     "`restic unlock` / `borg break-lock REPOSITORY`"),
    (re.compile(r"outside the allowed paths|restrict-to-(?:path|repository)"),
     "the server's `borg serve --restrict-to-path` does not allow this repository: fix the "
     "repository path or the forced command in the server's authorized_keys"),
    (re.compile(r"(?i)permission denied"),
     "run the backup as a user who may read and write the repository and the source files"),
)


def error_line(text: str) -> str:
    """The line of a tool's output that carries the error: restic's "Fatal:", else the last
    line naming an error (error, fatal, denied, aborted ...), else the last line that is not
    a stack frame, a bare path or an environment dump; with what to do for known errors."""
    lines = [clean(line, 300) for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if line]
    fatal = [line for line in lines if line.startswith("Fatal:")]
    useful = [line for line in lines if not _NOISE.match(line)]
    named = [line for line in useful if _ERROR_WORD.search(line)]
    line = (fatal or named or useful or lines or [""])[-1]
    for pattern, advice in ADVICE:
        if pattern.search(line):
            return f"{line[:200]}; what to do: {advice}"
    return line[:200]


def evaluate_wrapper(job: BackupJob, state_dir: Path, now: float) -> JobResult:
    runs = load_runs(state_dir, job.name)
    finished = [r for r in runs if r.get("finished") is not None]
    running = [r for r in runs if r.get("finished") is None]
    if not finished:
        hint = f" (started {_ago(now, running[-1]['started'])}, still running)" if running else ""
        return JobResult(False, f"no result recorded yet{hint}; run it as `monitor backup-run "
                                f"{job.name} -- COMMAND ...` from cron")
    last = finished[-1]
    when = float(last["finished"])
    took = float(last.get("duration_seconds") or 0)
    size = float(last.get("output_bytes") or 0)
    if last.get("exit_status") != 0:
        detail = error_line(last.get("tail", ""))
        return JobResult(False, f"failed {_ago(now, when)} with exit status {last.get('exit_status')}"
                         f" after {_human(took)}" + (f": {detail}" if detail else ""),
                         when, took, size)
    return JobResult(True, f"succeeded {_ago(now, when)} in {_human(took)}", when, took, size)


_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_ISO_TIME = re.compile(r"(\d{4})-(\d\d)-(\d\d)[T ](\d\d):(\d\d)(?::(\d\d)(?:[.,]\d+)?)?"
                       r"\s?(Z|[+-]\d\d:?\d\d)?")
# syslog "Nov 23 06:25:01", date(1) "Mon Nov 23 06:25:01 CET 2026", Mailman "Nov 23 06:25:01 2026"
_WORD_TIME = re.compile(r"\b(" + "|".join(_MONTHS) + r") +(\d{1,2}) (\d\d):(\d\d):(\d\d)"
                        r"(?: [A-Z]{2,5})?(?: (\d{4})\b)?")


def line_time(line: str, now: float) -> float | None:
    """The time a log line gives itself (ISO 8601, syslog or date(1) style), else None. A
    syslog stamp without a year is taken in the year that puts it at most a day ahead."""
    m = _ISO_TIME.search(line)
    try:
        if m:
            year, month, day, hour, minute = (int(x) for x in m.groups()[:5])
            when = datetime(year, month, day, hour, minute, int(m[6] or 0))
            if m[7]:
                zone = m[7].replace(":", "")
                offset = 0 if zone == "Z" else (1 if zone[0] == "+" else -1) * (
                    int(zone[1:3]) * 3600 + int(zone[3:5]) * 60)
                return when.replace(tzinfo=UTC).timestamp() - offset
            return when.timestamp()
        m = _WORD_TIME.search(line)
        if m:
            month, day = _MONTHS.index(m[1]) + 1, int(m[2])
            clock = (int(m[3]), int(m[4]), int(m[5]))
            if m[6]:
                return datetime(int(m[6]), month, day, *clock).timestamp()
            year = datetime.fromtimestamp(now).year
            stamp = datetime(year, month, day, *clock).timestamp()
            return stamp if stamp <= now + 86400 else datetime(year - 1, month, day,
                                                             *clock).timestamp()
    except ValueError:  # 2026-02-30: not a time after all
        return None
    return None


def _seen_path(state_dir: Path, name: str) -> Path:
    return Path(state_dir) / "backups" / "seen" / f"{name}.json"


def _first_seen(state_dir: Path, name: str, key: str, guess: float) -> float:
    """When the agent first saw the line identified by `key` (recorded at first sight)."""
    path = _seen_path(state_dir, name)
    try:
        seen = json.loads(path.read_text(encoding="utf-8"))
        if seen.get("line") == key:
            return float(seen["first_seen"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        pass
    try:
        atomic_write(path, json.dumps({"line": key, "first_seen": guess}))
    except OSError:
        pass  # seen again next time, and judged by that time then
    return guess


def evaluate_log(job: BackupJob, state_dir: Path, now: float) -> JobResult:
    """The last line matching either pattern decides; its time is the line's own timestamp,
    else when the agent first saw it (the file's mtime if it is the last line at first
    sight): a job that logs "starting" and dies does not look like a fresh success."""
    assert job.log is not None
    st = os.stat(job.log)
    with open(job.log, "rb") as handle:
        base = max(0, st.st_size - (1 << 20))
        handle.seek(base)
        data = handle.read()
    ok_re = re.compile(job.success_pattern) if job.success_pattern else None
    bad_re = re.compile(job.failure_pattern) if job.failure_pattern else None
    lines = data.split(b"\n")
    end = base + len(data)
    last_line = True
    for raw in reversed(lines):
        start = end - len(raw)
        line = raw.decode("utf-8", "replace").rstrip("\r")
        end = start - 1
        if not line.strip():
            continue
        failed = bad_re is not None and bool(bad_re.search(line))
        if not failed and (ok_re is None or not ok_re.search(line)):
            last_line = False
            continue
        when = line_time(line, now)
        if when is None:
            key = f"{st.st_ino}:{start}:{hashlib.sha256(raw).hexdigest()[:16]}"
            when = _first_seen(state_dir, job.name, key,
                               min(now, st.st_mtime) if last_line else now)
        if failed:
            return JobResult(False, f"log {job.log} reports a failure {_ago(now, when)}: "
                                    f"{clean(line, 200)}", when)
        return JobResult(True, f"log {job.log} reports success {_ago(now, when)}: "
                               f"{clean(line, 120)}", when)
    return JobResult(False, f"no line of {job.log} matches the success or failure pattern")


def evaluate_artifact(job: BackupJob, now: float) -> JobResult:
    assert job.glob is not None
    found = []
    for path in globmod.glob(job.glob):
        try:
            st = os.stat(path)
        except OSError:
            continue
        if os.path.isfile(path):
            found.append((st.st_mtime, st.st_size, path))
    if not found:
        return JobResult(False, f"no file matches {job.glob}")
    found.sort(reverse=True)
    when, size, path = found[0]
    name = os.path.basename(path)
    if size < job.min_size:
        return JobResult(False, f"newest backup {name} is only {size} bytes", when, size=size)
    if len(found) > 1 and found[1][1] > 0:
        previous = found[1][1]
        shrink = 100.0 * (previous - size) / previous
        if shrink > job.max_shrink:
            return JobResult(False, f"newest backup {name} ({format_bytes(size)}) is {shrink:.0f}% smaller "
                                    f"than the one before ({format_bytes(previous)})", when, size=size)
    return JobResult(True, f"newest backup {name} ({format_bytes(size)}) written {_ago(now, when)}",
                     when, size=size)


def _parse_time(text: str) -> float:
    # restic: "2026-11-23T06:25:01.123456789+01:00"; borg: "2026-11-23T06:25:01.000000"
    text = re.sub(r"(\.\d{6})\d+", r"\1", text.strip()).replace("Z", "+00:00")
    return datetime.fromisoformat(text).timestamp()


def parse_restic_snapshots(text: str) -> list[dict]:
    data = json.loads(text or "[]")
    return data if isinstance(data, list) else []


def parse_borg_list(text: str) -> list[dict]:
    data = json.loads(text or "{}")
    return list(data.get("archives", [])) if isinstance(data, dict) else []


def repository_argv(job: BackupJob) -> tuple[list[str], dict[str, str]]:
    """The argv (never a shell line) and extra environment to list a restic/borg repository."""
    assert job.repository is not None
    env: dict[str, str] = {}
    if job.kind == "restic":
        argv = [job.command or "restic", "--repo", job.repository, "snapshots", "--json",
                "--no-lock", "--no-cache"]
        if job.password is not None:
            env["RESTIC_PASSWORD"] = job.password
    else:
        argv = [job.command or "borg", "list", "--json", "--", job.repository]
        if job.password is not None:
            env["BORG_PASSPHRASE"] = job.password
    return argv, env


async def evaluate_repository(job: BackupJob, now: float) -> JobResult:
    argv, extra = repository_argv(job)
    env = {**os.environ, **extra}
    try:
        out = await run_command(argv, job.timeout, env)
    except CommandMissing:
        return JobResult(False, f"{argv[0]} is not installed (apt-get install {job.kind}, or set "
                                "command to its path)")
    except CommandFailed as exc:
        return JobResult(False, f"{job.kind} cannot list {job.repository}: "
                                f"{error_line(exc.stderr) or f'exit status {exc.status}'}")
    except RuntimeError as exc:
        return JobResult(False, f"{job.kind} cannot list {job.repository}: {clean(exc, 200)}")
    try:
        text = out.decode("utf-8", "replace")
        items = parse_restic_snapshots(text) if job.kind == "restic" else parse_borg_list(text)
        stamped = [(_parse_time(i.get("time") or i.get("start", "")), i) for i in items]
    except (ValueError, TypeError, AttributeError) as exc:
        return JobResult(False, f"unexpected {job.kind} output: {exc}")
    if not stamped:
        return JobResult(False, f"{job.repository} holds no snapshots")
    when, newest = max(stamped, key=lambda t: t[0])
    summary = newest.get("summary") or {}
    size = summary.get("total_bytes_processed")
    label = newest.get("short_id") or newest.get("name") or newest.get("id", "")[:8]
    return JobResult(True, f"newest snapshot {label} taken {_ago(now, when)} "
                           f"({len(stamped)} in {job.repository})", when,
                     size=float(size) if size is not None else None,
                     extra={"snapshots": len(stamped)})


async def evaluate(job: BackupJob, state_dir: Path, now: float) -> JobResult:
    try:
        if job.kind == "wrapper":
            return await asyncio.to_thread(evaluate_wrapper, job, state_dir, now)
        if job.kind == "log":
            return await asyncio.to_thread(evaluate_log, job, state_dir, now)
        if job.kind == "artifact":
            return await asyncio.to_thread(evaluate_artifact, job, now)
        return await evaluate_repository(job, now)
    except FileNotFoundError as exc:
        return JobResult(False, f"{exc.filename} does not exist")
    except OSError as exc:
        return JobResult(False, f"cannot read {getattr(exc, 'filename', '') or ''}: "
                                f"{exc.strerror or exc}")


def judge(job: BackupJob, result: JobResult, now: float) -> CheckResult:
    stale = result.when is None or now - result.when > job.max_age
    message = result.message
    if stale and result.when is not None:
        message = f"no result within {format_duration(job.max_age)}; last: {message}"
    ok = result.ok and not stale
    ms: list[Measurement] = [Measurement(TARGET, job.name, "success", 1 if ok else 0, timestamp=now,
                                         minimum=0, maximum=1)]
    if result.when is not None:
        ms.append(Measurement(TARGET, job.name, "age_seconds", max(0.0, now - result.when),
                              unit="s", timestamp=now, minimum=0))
    if result.duration is not None:
        ms.append(Measurement(TARGET, job.name, "duration_seconds", result.duration, unit="s",
                              timestamp=now, minimum=0))
    if result.size is not None:
        ms.append(Measurement(TARGET, job.name, "size_bytes", result.size, unit="B", timestamp=now,
                              minimum=0))
    return CheckResult(TARGET, f"backup {job.name}", State.OK if ok else State.CRITICAL,
                       f"backup {job.name}: {message}", tuple(ms), timestamp=now)


@dataclass(frozen=True)
class JobReport:
    """One job's line in a digest: its current verdict and its wrapper runs of a period."""

    job: str
    state: State | None  # None: not checked yet
    result: str
    runs: int | None  # wrapper runs that finished in the period (None: not a wrapper job)
    failed: int


def report(jobs: Sequence[BackupJob], checks: Iterable[CheckResult | CheckStatus], state_dir: Path,
           start: float, end: float) -> list[JobReport]:
    """The digest's read of this collector: each job's latest check (from `checks`, e.g. the
    status book's) and the wrapper runs that finished at start <= t < end."""
    latest = {c.check: c for c in checks if c.target == TARGET}
    out = []
    for job in jobs:
        check = latest.get(f"backup {job.name}")
        runs = failed = None
        if job.kind == "wrapper":
            finished = [r for r in load_runs(state_dir, job.name)
                        if r.get("finished") and start <= r["finished"] < end]
            runs, failed = len(finished), sum(1 for r in finished if r.get("exit_status") != 0)
        out.append(JobReport(job.name, check.state if check else None,
                             check.message.removeprefix(f"backup {job.name}: ") if check
                             else "not checked yet", runs, failed or 0))
    return out


@dataclass
class BackupsCollector:
    jobs: list[BackupJob]
    interval: float
    state_dir: Path
    clock: Callable[[], float] = time.time
    name: str = "backups"

    async def collect(self) -> Batch:
        now = self.clock()
        results = await asyncio.gather(*(evaluate(job, self.state_dir, now) for job in self.jobs))
        batch = Batch()
        for job, result in zip(self.jobs, results, strict=True):
            batch.add(judge(job, result, now))
        return batch


def build(config: Config) -> list[Collector]:
    if not config.backups:
        return []
    # Backups run daily: a look every 15 minutes is plenty (restic/borg listing is not free).
    interval = max(config.agent.interval, 900.0)
    return [BackupsCollector(list(config.backups), interval, config.state_dir)]
