"""Nagios-compatible plugins: argv list (never a shell), timeout, exit code, perfdata.

Output format (Nagios plugin API): the first line is "TEXT|PERFDATA", further lines are long
text, and perfdata may continue after a "|" in the long text. Exit codes 0-3 are OK, WARNING,
CRITICAL, UNKNOWN; anything else (or a signal) is UNKNOWN.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from dataclasses import dataclass

from collectors.checks.common import Env, Outcome, clean, limit_text
from monitor.config import ServiceCheck
from monitor.model import Kind, State

OUTPUT_LIMIT = 64 * 1024
_PERF = re.compile(
    r"""('(?:[^']|'')+'|[^'=\s]+)=(U|[-+]?[\d.,]+(?:[eE][-+]?\d+)?)([a-zA-Z%]*)"""
    r"""(?:;([^;\s]*))?(?:;([^;\s]*))?(?:;([^;\s]*))?(?:;([^;\s]*))?"""
)
# UOM -> (factor to the base unit, metric suffix, unit). Sizes are binary, as check_disk's are.
_UNITS: dict[str, tuple[float, str, str]] = {
    "s": (1, "_seconds", "s"), "ms": (1e-3, "_seconds", "s"), "us": (1e-6, "_seconds", "s"),
    "ns": (1e-9, "_seconds", "s"), "%": (1, "_percent", "%"), "b": (1, "_bytes", "B"),
    "kb": (1024, "_bytes", "B"), "mb": (1024**2, "_bytes", "B"), "gb": (1024**3, "_bytes", "B"),
    "tb": (1024**4, "_bytes", "B"),
}


@dataclass(frozen=True)
class Perf:
    metric: str
    value: float | None
    unit: str
    kind: Kind
    warn: str = ""
    crit: str = ""
    minimum: float | None = None
    maximum: float | None = None


def _number(text: str | None, factor: float = 1.0) -> float | None:
    if not text:
        return None
    try:
        return float(text.replace(",", ".")) * factor
    except ValueError:
        return None


def metric_name(label: str, suffix: str) -> str:
    name = re.sub(r"[^a-z0-9]+", "_", label.lower()).strip("_") or "value"
    if name[0].isdigit():
        name = "m_" + name
    if suffix and not name.endswith(suffix):
        name += suffix
    return name


def parse_perfdata(text: str) -> list[Perf]:
    """'label'=value[UOM];warn;crit;min;max ... -> measurements in base units, names with units."""
    out: list[Perf] = []
    for m in _PERF.finditer(text):
        label, raw, uom = m.group(1), m.group(2), m.group(3)
        if label.startswith("'"):
            label = label[1:-1].replace("''", "'")
        kind = Kind.GAUGE
        if uom.lower() == "c":
            factor, suffix, unit, kind = 1.0, "", "", Kind.DERIVE
        elif uom.lower() in _UNITS:
            factor, suffix, unit = _UNITS[uom.lower()]
        else:
            factor, suffix, unit = 1.0, "", uom
        value = None if raw == "U" else _number(raw, factor)
        out.append(Perf(metric_name(label, suffix), value, unit, kind, m.group(4) or "",
                        m.group(5) or "", _number(m.group(6), factor), _number(m.group(7), factor)))
    return out


def split_output(text: str) -> tuple[str, str]:
    """(first line's text, all perfdata) from a plugin's standard output."""
    lines = text.splitlines() or [""]
    first, _, perf = lines[0].partition("|")
    rest = "\n".join(lines[1:])
    if "|" in rest:
        perf += " " + rest.split("|", 1)[1]
    return first.strip(), perf.strip()


async def run(check: ServiceCheck, env: Env) -> Outcome:
    argv = check.command
    name = os.path.basename(argv[0])
    started = time.perf_counter()
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True)
    except FileNotFoundError:
        return Outcome(State.UNKNOWN, f"plugin {clean(argv[0])} not found; install it (Debian: "
                       "monitoring-plugins-basic) or fix the command")
    except PermissionError:
        return Outcome(State.UNKNOWN, f"plugin {clean(argv[0])} is not executable (chmod +x?)")
    except OSError as exc:
        return Outcome(State.UNKNOWN, f"plugin {clean(argv[0])} cannot run: {clean(exc.strerror)}")
    try:
        async with asyncio.timeout(check.timeout):
            out_b, err_b = await proc.communicate()
    except TimeoutError:
        # The plugin's own children (e.g. a hung ssh) live in its session: stop them all.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Outcome(State.UNKNOWN, f"plugin {clean(name)} did not finish within "
                       f"{limit_text(check.timeout)} and was stopped")
    seconds = time.perf_counter() - started
    text, perf = split_output(out_b[:OUTPUT_LIMIT].decode("utf-8", "replace"))
    code = proc.returncode
    state = State(code) if code in (0, 1, 2, 3) else State.UNKNOWN
    if not text:
        err = clean(err_b[:OUTPUT_LIMIT], 100)
        text = f"plugin {clean(name)} exited with code {code} and printed nothing" + (
            f" (stderr: {err})" if err else "")
    elif code not in (0, 1, 2, 3):
        text = f"plugin {clean(name)} exited with code {code}: {text}"
    metrics: dict[str, tuple[float | None, str, Kind]] = {}
    response = seconds
    for p in parse_perfdata(perf):
        metrics[p.metric] = (p.value, p.unit, p.kind)
        if p.metric == "time_seconds" and p.value is not None:
            response = p.value  # the plugin's own measurement excludes our fork/exec
    metrics.pop("response_seconds", None)
    return Outcome(state, clean(text, 200), response, metrics)
