"""ICMP echo through the system `ping` (iputils): several packets, loss and RTT min/avg/max.

iputils' ping uses unprivileged ICMP datagram sockets where net.ipv4.ping_group_range allows,
else its file capability; running it keeps this agent free of raw-socket privileges.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import os
import re
import signal

from collectors.checks.common import Env, Outcome, clean, limit_text
from monitor.config import ServiceCheck
from monitor.model import Kind, State

_SUMMARY = re.compile(r"(\d+) packets transmitted, (\d+) (?:packets )?received")
_RTT = re.compile(r"(?:rtt|round-trip) min/avg/max(?:/mdev|/stddev)? = ([\d.]+)/([\d.]+)/([\d.]+)")
_NOT_PERMITTED = ("operation not permitted", "permission denied", "lacking privilege",
                  "are you root", "socktype: sock_raw")


def ping_argv(check: ServiceCheck, ping_path: str) -> list[str]:
    deadline = max(1, math.ceil(check.timeout))
    return [ping_path, "-n", "-q", "-c", str(check.count), "-i", f"{check.packet_interval:g}",
            "-W", str(max(1, math.ceil(min(check.timeout, 10)))), "-w", str(deadline), check.host]


async def run(check: ServiceCheck, env: Env) -> Outcome:
    where = f"PING {clean(check.host, 80)}"
    argv = ping_argv(check, env.ping_path)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
            env={"LC_ALL": "C", "PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    except FileNotFoundError:
        return Outcome(State.UNKNOWN, f"{where}: {env.ping_path} not found; install iputils-ping")
    except PermissionError:
        return Outcome(State.UNKNOWN, f"{where}: {env.ping_path} is not executable")
    try:
        async with asyncio.timeout(check.timeout + 2):
            out_b, err_b = await proc.communicate()
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        await proc.wait()
        return Outcome(State.UNKNOWN, f"{where}: ping did not finish within "
                       f"{limit_text(check.timeout + 2)} and was stopped")
    out = out_b.decode("utf-8", "replace")
    err = err_b.decode("utf-8", "replace")
    summary = _SUMMARY.search(out)
    if summary is None:
        lowered = err.lower()
        if any(marker in lowered for marker in _NOT_PERMITTED):
            return Outcome(State.UNKNOWN, f"{where}: this process may not send ICMP echo "
                           f"({clean(err, 80)}); allow it with sysctl net.ipv4.ping_group_range="
                           f"\"0 2147483647\" or setcap cap_net_raw+ep {env.ping_path}")
        return Outcome(State.CRITICAL if proc.returncode == 2 else State.UNKNOWN,
                       f"{where}: ping failed ({clean(err or out, 100) or f'exit code {proc.returncode}'})")
    sent, received = int(summary.group(1)), int(summary.group(2))
    loss = 100.0 * (sent - received) / sent if sent else 100.0
    metrics: dict[str, tuple[float | None, str, Kind]] = {"loss_percent": (loss, "%", Kind.GAUGE)}
    rtt = _RTT.search(out)
    if received == 0 or rtt is None:
        for name in ("rtt_min_seconds", "rtt_avg_seconds", "rtt_max_seconds"):
            metrics[name] = (None, "s", Kind.GAUGE)
        return Outcome(State.CRITICAL, f"{where}: no reply to {sent} packets (100% loss)", None, metrics)
    low, avg, high = (float(rtt.group(i)) / 1000 for i in (1, 2, 3))
    metrics["rtt_min_seconds"] = (low, "s", Kind.GAUGE)
    metrics["rtt_avg_seconds"] = (avg, "s", Kind.GAUGE)
    metrics["rtt_max_seconds"] = (high, "s", Kind.GAUGE)
    state = (State.CRITICAL if loss >= check.loss_critical and loss > 0
             else State.WARNING if loss >= check.loss_warning and loss > 0 else State.OK)
    message = (f"{where}: {received}/{sent} replies, {loss:.0f}% loss, rtt min/avg/max "
               f"{low * 1000:.3g}/{avg * 1000:.3g}/{high * 1000:.3g} ms")
    return Outcome(state, message, avg, metrics)
