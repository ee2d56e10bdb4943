"""Checks that run a program (argv lists, never a shell): ping and Nagios plugins.

The program gets its own process group, and a timeout or a cancelled cycle kills the group,
so a hung plugin never outlives its check.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import itertools
import os
import re
import statistics
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field

from collectors.services_base import Outcome, Stage, secs
from monitor.config import ServiceCheck
from monitor.model import State, Thresholds
from monitor.process import read_bounded, reap
from monitor.text import clean

MAX_OUTPUT = 64 * 1024


def cannot_run(program: str, exc: OSError) -> str:
    """Why `program` could not be started (the error of `run`), and what to do about it."""
    shown = clean(program, 120)
    if isinstance(exc, FileNotFoundError):
        return f"{shown} does not exist"
    if isinstance(exc, PermissionError):
        return f"{shown} is not executable (chmod +x it, or is its file system mounted noexec?)"
    if exc.errno == errno.ENOEXEC:
        return f"{shown} is not a program (a script needs its #! line)"
    return f"{shown} cannot be started ({clean(exc.strerror or str(exc), 80)})"


async def run(argv: list[str], stage: Stage | None = None, env: dict[str, str] | None = None
              ) -> tuple[int, str, str]:
    """(exit code, stdout, stderr), each output cut at MAX_OUTPUT; the caller's timeout cancels
    this, which kills the group."""
    if stage is not None:
        stage.doing = "exit"
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
    try:
        (out, _), (err, _) = await asyncio.gather(read_bounded(proc.stdout, MAX_OUTPUT),
                                                  read_bounded(proc.stderr, MAX_OUTPUT))
        await proc.wait()
    except BaseException:
        # Cancelled (its timeout) or failed: the whole group goes, children it left included,
        # reaped off the cancelled task so no zombie (or pipe fd) is left behind.
        await asyncio.shield(reap(proc))
        raise
    return (proc.returncode if proc.returncode is not None else -1,
            out.decode("utf-8", "replace"), err.decode("utf-8", "replace"))


# -- ping ---------------------------------------------------------------------------------------

_LOSS = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received.*?([\d.]+)% packet loss")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/\S+)? = ([\d.]+)/([\d.]+)/([\d.]+)")
_DENIED = ("operation not permitted", "permission denied", "socktype: sock_raw", "cap_net_raw")


def parse_ping(text: str) -> tuple[float | None, tuple[float, float, float] | None]:
    """(loss percent, (min, avg, max) in seconds) from iputils/busybox ping output."""
    loss = _LOSS.search(text)
    rtt = _RTT.search(text)
    return (float(loss.group(3)) if loss else None,
            tuple(float(g) / 1000 for g in rtt.groups()) if rtt else None)  # type: ignore[return-value]


def median_and_jitter(rtts: list[float]) -> tuple[float, float] | None:
    """SmokePing's view of the replies (seconds, in the order the pings were sent): the median
    round trip, and the jitter as the mean difference between consecutive replies (RFC 3550's
    idea, mtr's "Javg"); None without a reply."""
    if not rtts:
        return None
    steps = [abs(b - a) for a, b in itertools.pairwise(rtts)]
    return statistics.median(rtts), (sum(steps) / len(steps) if steps else 0.0)


class _Stop(Exception):
    """A ping that cannot work (no program, no ICMP permission): the series ends with it."""

    def __init__(self, outcome: Outcome) -> None:
        super().__init__(outcome.message)
        self.outcome = outcome


class PingSeries:
    """The `count` pings of one ping check, one every `spacing` seconds, each its own `ping -c 1`
    (so the spacing is ours, not ping's, and a lost reply never shifts the ones after it), the
    first `offset` seconds in.

    Run back to back (`run`, spacing = ping_interval, within the check's timeout) for
    `monitor services` and an agent's first cycle; spread over the interval (`start`, then
    `finish` at the next cycle) by the collector the rest of the time, SmokePing's way, as a
    task of its own that no cycle waits for. `sleep` and `clock` are the collector's
    (a test's controlled clock)."""

    def __init__(self, check: ServiceCheck, spacing: float, wait: int, offset: float = 0.0,
                 sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.check, self.spacing, self.wait, self.offset = check, spacing, wait, offset
        self.sleep, self.clock = sleep, clock
        self.replies: dict[int, float | None] = {}  # ping number -> rtt in seconds, None: lost
        self.problem: Outcome | None = None
        self.task: asyncio.Task[None] | None = None

    def start(self) -> PingSeries:
        self.task = asyncio.get_running_loop().create_task(self.run())
        return self

    async def run(self) -> None:
        began = self.clock()
        try:
            async with asyncio.TaskGroup() as group:
                for number in range(self.check.count):
                    delay = began + self.offset + number * self.spacing - self.clock()
                    if delay > 0:
                        await self.sleep(delay)
                    group.create_task(self._one(number))
        except* _Stop as stopped:
            first = stopped.exceptions[0]
            self.problem = first.outcome if isinstance(first, _Stop) else None

    async def _one(self, number: int) -> None:
        check = self.check
        argv = [str(check.ping_command), "-n", "-c", "1", "-W", str(self.wait), check.host]
        try:
            code, out, err = await run(argv, None, env={"LC_ALL": "C", "PATH": "/usr/bin:/bin"})
        except FileNotFoundError:
            raise _Stop(Outcome(State.UNKNOWN, f"{self.where}: {check.ping_command} is missing; "
                                "install iputils-ping or set ping_command")) from None
        except OSError as exc:
            raise _Stop(Outcome(State.UNKNOWN, f"{self.where}: ping_command "
                                f"{cannot_run(str(check.ping_command), exc)}")) from None
        loss, rtt = parse_ping(out)
        if loss is None:
            text = (err or out).strip()
            if any(d in text.lower() for d in _DENIED):
                raise _Stop(Outcome(State.UNKNOWN, f"{self.where}: this process may not open ICMP "
                                    f"sockets ({clean(text, 60)}); allow it with sysctl "
                                    "net.ipv4.ping_group_range='0 2147483647' or setcap "
                                    f"cap_net_raw+ep {check.ping_command}"))
            raise _Stop(Outcome(State.UNKNOWN, f"{self.where}: ping failed (exit {code}): "
                                f"{clean(text, 100)}"))
        self.replies[number] = rtt[1] if rtt is not None and loss < 100 else None

    @property
    def where(self) -> str:
        return f"PING {clean(self.check.host, 60)}"

    def finish(self) -> Outcome:
        """The verdict on the pings that have settled, now: the ones still out are given up
        (their processes killed), so the series never runs into the next one."""
        if self.task is not None and not self.task.done():
            self.task.cancel()
        return self.outcome()

    def outcome(self) -> Outcome:
        if self.problem is not None:
            return self.problem
        check, where = self.check, self.where
        sent = len(self.replies)
        if not sent:
            return Outcome(State.UNKNOWN, f"{where}: no ping of the series had finished")
        rtts = [rtt for _, rtt in sorted(self.replies.items()) if rtt is not None]
        loss = round(100.0 * (sent - len(rtts)) / sent, 3)
        spread = median_and_jitter(rtts)
        rtt = (min(rtts), statistics.fmean(rtts), max(rtts)) if rtts else None
        metrics: dict[str, tuple[float | None, str]] = {"loss_percent": (loss, "%")}
        names = ("rtt_min_seconds", "rtt_avg_seconds", "rtt_max_seconds", "rtt_median_seconds",
                 "rtt_jitter_seconds")
        for metric, value in zip(names, (*(rtt or (None,) * 3), *(spread or (None, None))),
                                 strict=True):
            metrics[metric] = (value, "s")
        state = (State.CRITICAL if loss >= check.loss_critical
                 else State.WARNING if loss >= check.loss_warning else State.OK)
        if rtt is None or spread is None:
            return Outcome(state, f"{where}: no reply to {sent} packets (100% loss)", None, metrics)
        return Outcome(state, f"{where}: {loss:g}% loss, rtt min/avg/max {rtt[0] * 1000:.2f}/"
                       f"{rtt[1] * 1000:.2f}/{rtt[2] * 1000:.2f} ms, median "
                       f"{spread[0] * 1000:.2f} ms, jitter {spread[1] * 1000:.2f} ms", rtt[1],
                       metrics)


async def probe_ping(check: ServiceCheck, stage: Stage) -> Outcome:
    """The pings back to back, ping_interval apart, within the check's timeout."""
    # How long each ping waits for its reply: what the timeout leaves after sending, 1-5 s, so
    # a dead host ends as "100% loss" rather than being killed at the timeout.
    wait = max(1, int(min(5, check.timeout - check.count * check.ping_interval - 0.5)))
    stage.doing = "exit"
    series = PingSeries(check, check.ping_interval, wait)
    await series.run()
    return series.outcome()


def spread_wait(check: ServiceCheck, interval: float) -> int:
    """How long a spread ping waits for its reply: 1-5 s, within a tenth of the interval, so
    the last one has settled before the next cycle."""
    return max(1, int(min(5, check.timeout, interval / 10)))


SPREAD = 0.9  # the share of the interval a spread series uses (the rest: the last replies)


# -- Nagios plugins -----------------------------------------------------------------------------

# Per the Nagios plugin development guidelines: 'label'=value[UOM];[warn];[crit];[min];[max],
# quotes around a label with spaces ('' is a quote inside), and a decimal comma from plugins
# run under another locale ("1,5s").
_NUMBER = r"[-+]?(?:\d+(?:[.,]\d*)?|[.,]\d+)(?:[eE][-+]?\d+)?"
# Perfdata is read a token at a time (a quoted label may hold blanks), each token matched from
# its start: one pass over the text. (A pattern tried at every blank or quote, each scanning on
# to the end, took 55 s of CPU over 64 KiB of either.)
_TOKEN = re.compile(r"'(?:[^'\n]|'')*+'\S*|\S+")
_PERF = re.compile(rf"""('(?:[^'\n]|'')++'|[^'=]+)=({_NUMBER}|U)([^;]*)((?:;[^;]*){{0,4}})""")
_RANGE = re.compile(rf"@?(?:(?:~|{_NUMBER})?:)?(?:{_NUMBER})?")
_UNITS: dict[str, tuple[float, str, str]] = {
    # UOM -> (factor to the base unit, metric suffix, unit)
    "s": (1, "_seconds", "s"), "ms": (1e-3, "_seconds", "s"), "us": (1e-6, "_seconds", "s"),
    "%": (1, "_percent", "%"), "B": (1, "_bytes", "B"), "KB": (1024, "_bytes", "B"),
    "MB": (1024**2, "_bytes", "B"), "GB": (1024**3, "_bytes", "B"), "TB": (1024**4, "_bytes", "B"),
    "c": (1, "", "c"), "": (1, "", ""),
}
# Data sources one plugin check may add: a label that changes every run ("time_12:01:07")
# would otherwise add one to its RRD file every run.
MAX_PLUGIN_METRICS = 50


def metric_name(label: str, suffix: str) -> str:
    """The metric for a perfdata label: its letters (any script, case kept: "/home" and "/HOME"
    are two file systems) and digits, other runs as "_", the unit's suffix."""
    name = re.sub(r"[\W_]+", "_", label).strip("_") or "value"
    return name if not suffix or name.endswith(suffix) else name + suffix


def _number(text: str) -> float:
    return float(text.replace(",", "."))


def _scaled_range(text: str, factor: float) -> str | None:
    """A warn/crit range in the stored unit ("5000:" ms -> "5:"); None if empty or no range."""
    if not text or not _RANGE.fullmatch(text):
        return None
    return re.sub(_NUMBER, lambda m: f"{_number(m.group()) * factor:g}", text)


@dataclass
class Perfdata:
    """The perfdata of one plugin run: metric -> (value in base units, unit) and the thresholds
    of the metrics that came with any."""

    metrics: dict[str, tuple[float | None, str]] = field(default_factory=dict)
    thresholds: dict[str, Thresholds] = field(default_factory=dict)


def parse_perfdata(text: str) -> Perfdata:
    """'label'=value[UOM];warn;crit;min;max ... in base units with the unit in the metric's name
    (time=5ms -> time_seconds 0.005). "c" (a counter) keeps its name and unit "c" so the caller
    can store it as a COUNTER. Two labels that come out as one name ("a b", "a_b") stay two
    metrics: the later one gets a suffix from its label."""
    out = Perfdata()
    labels: dict[str, str] = {}
    for token in _TOKEN.finditer(text):
        match = _PERF.match(token.group())
        if match is None:
            continue
        label, raw, uom, rest = match.groups()
        label = label[1:-1].replace("''", "'") if label.startswith("'") else label
        factor, suffix, unit = _UNITS.get(uom, (1, "", uom))
        name = metric_name(label, suffix)
        if labels.setdefault(name, label) != label:
            name = f"{name}_{hashlib.sha1(label.encode()).hexdigest()[:6]}"
        value = None if raw == "U" else _number(raw) * factor
        out.metrics[name] = (value, unit)
        warn, crit, low, high = [*rest[1:].split(";"), "", "", ""][:4]
        limits = [_number(v) * factor if re.fullmatch(_NUMBER, v) else None for v in (low, high)]
        thresholds = Thresholds(_scaled_range(warn, factor), _scaled_range(crit, factor), *limits)
        if thresholds != Thresholds():
            out.thresholds[name] = thresholds
    return out


def split_plugin_output(out: str) -> tuple[str, str]:
    """(first line's text, all perfdata) per the Nagios plugin guidelines: perfdata after "|"
    on the first line, and on the long-text lines from the first one with a "|" to the end."""
    lines = out.splitlines() or [""]
    text, _, perf = lines[0].partition("|")
    for number, line in enumerate(lines[1:], 1):
        if "|" in line:
            return text.strip(), " ".join([perf, line.partition("|")[2], *lines[number + 1:]])
    return text.strip(), perf


def admit(names: Iterable[str], known: set[str], limit: int = MAX_PLUGIN_METRICS) -> list[str]:
    """Admit new metric names into `known` (one check's or graph's, over the agent's life)
    while it has fewer than `limit`; returns the names not admitted."""
    new = [name for name in names if name not in known]
    room = max(0, limit - len(known))
    known.update(new[:room])
    return new[room:]


def bound_metrics(outcome: Outcome, known: set[str]) -> Outcome:
    """Store at most MAX_PLUGIN_METRICS metrics per check over the agent's life (`known` is the
    check's, kept by its collector); the rest are dropped and the message says so."""
    dropped = admit(outcome.metrics, known)
    if dropped:
        for name in dropped:
            del outcome.metrics[name]
            outcome.thresholds.pop(name, None)
        outcome.message += (f" ({len(dropped)} perfdata label{'s' if len(dropped) > 1 else ''} "
                            f"not stored, e.g. {clean(dropped[0], 40)!r}: this check has its "
                            f"{MAX_PLUGIN_METRICS} data sources; does a label change every run?)")
    return outcome


# What a plugin sees of the agent's environment: nothing (no secrets), a search path and the C
# locale, so its numbers have a decimal point and its messages are the ones documented.
PLUGIN_ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin",
              "LANG": "C", "LC_ALL": "C"}


async def probe_plugin(check: ServiceCheck, stage: Stage) -> Outcome:
    start = time.monotonic()
    program = os.path.basename(check.command[0])
    try:
        code, out, err = await run(list(check.command), stage, env=PLUGIN_ENV)
    except FileNotFoundError as exc:
        return Outcome(State.UNKNOWN, f"plugin {cannot_run(check.command[0], exc)} "
                       "(install monitoring-plugins or fix command)")
    except OSError as exc:
        return Outcome(State.UNKNOWN, f"plugin {cannot_run(check.command[0], exc)}")
    elapsed = time.monotonic() - start
    text, perf = split_plugin_output(out)
    state = State(code) if code in (0, 1, 2, 3) else State.UNKNOWN
    if not text:
        text = clean(err, 120) or f"{program} printed nothing"
    if code not in (0, 1, 2, 3):
        text = f"{program} exited with {code}: {text}"
    perfdata = parse_perfdata(perf)
    return Outcome(state, clean(text, 200), elapsed, perfdata.metrics, perfdata.thresholds)


def plugin_timeout_message(check: ServiceCheck) -> str:
    return f"plugin {os.path.basename(check.command[0])} did not finish within {secs(check.timeout)}" \
           " and was killed"
