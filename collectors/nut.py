"""[[ups]]: a UPS on USB behind Network UPS Tools' upsd, read over NUT's TCP protocol (port 3493).

One `LIST VAR <ups>` per poll, the same read `upsc` does, without running a program. The
variables (ups.status "OL"/"OB"/"LB"/"RB"/"BYPASS", battery.charge, battery.runtime, ...) become
a `collectors.ups.UpsReading`, so the check and metrics are those of an SNMP UPS: target = the
[[ups]] name, check "ups", instance "ups".

upsd is a peer like any other: each UPS has its own time budget, a line longer than
`MAX_LINE` or more than `MAX_VARS` variables end the read, and whatever it answers is only
ever a number or cleaned text.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable

from collectors.services_base import hostport
from collectors.ups import BATTERY, BYPASS, OFF, ONLINE, UNKNOWN, UpsReading, ups_batch
from monitor.config import Config, UpsConfig
from monitor.model import Batch, CheckResult, Collector, State
from monitor.text import clean

log = logging.getLogger(__name__)

MAX_LINE = 1024
MAX_VARS = 1000


class NutError(Exception):
    """upsd refused (ERR UNKNOWN-UPS, ACCESS-DENIED, ...) or said something that is not NUT."""


# What an admin does about upsd's refusals (NUT's network protocol, "ERR <word>").
ERR_HINTS = {
    "UNKNOWN-UPS": "upsd has no UPS of that name (UNKNOWN-UPS): `upsc -l {where}` lists its "
                   "names; set ups = one of them",
    "DATA-STALE": "upsd has no fresh data from the UPS's driver (DATA-STALE): is the UPS's USB or "
                  "serial cable in, and its driver running (`upsdrvctl start`)?",
    "DRIVER-NOT-CONNECTED": "the UPS's driver is not running (DRIVER-NOT-CONNECTED): start it "
                            "(`upsdrvctl start`, or the nut-driver service)",
    "ACCESS-DENIED": "upsd refuses this host (ACCESS-DENIED): see LISTEN in upsd.conf",
}


def _unquote(text: str) -> str:
    if len(text) >= 2 and text[0] == text[-1] == '"':
        return text[1:-1].replace('\\"', '"').replace("\\\\", "\\")
    return text


async def list_vars(host: str, port: int, ups: str, timeout: float) -> dict[str, str]:
    """{variable: value} of one UPS from upsd."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port, limit=MAX_LINE)
        try:
            writer.write(f"LIST VAR {ups}\n".encode())
            await writer.drain()
            out: dict[str, str] = {}
            prefix = f"VAR {ups} "
            while True:
                try:
                    raw = await reader.readuntil(b"\n")
                except asyncio.LimitOverrunError:
                    raise NutError(f"a line longer than {MAX_LINE} bytes") from None
                except asyncio.IncompleteReadError:
                    raise NutError("the connection closed before END LIST VAR") from None
                line = raw.decode("utf-8", "replace").strip()
                if line.startswith("ERR "):
                    word = line[4:].split(" ", 1)[0]
                    hint = ERR_HINTS.get(word)
                    raise NutError(hint.format(where=hostport(host, port)) if hint
                                   else clean(line[4:], 60))
                if line.startswith(f"BEGIN LIST VAR {ups}"):
                    continue
                if line.startswith(f"END LIST VAR {ups}"):
                    return out
                if not line.startswith(prefix):
                    raise NutError(f"unexpected answer {clean(line, 40)!r}")
                name, _, value = line[len(prefix):].partition(" ")
                out[name] = _unquote(value)
                if len(out) > MAX_VARS:
                    raise NutError(f"more than {MAX_VARS} variables")
        finally:
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass


def _number(variables: dict[str, str], *names: str) -> float | None:
    for name in names:
        try:
            value = float(variables[name])
        except (KeyError, ValueError):
            continue
        if math.isfinite(value):  # not "nan" or "inf": float() takes them
            return value
    return None


def reading_of(variables: dict[str, str]) -> UpsReading:
    """NUT's variables -> the reading every UPS source shares."""
    flags = set(variables.get("ups.status", "").split())
    if "OB" in flags:
        power = BATTERY
    elif "BYPASS" in flags:
        power = BYPASS
    elif "OFF" in flags:
        power = OFF
    elif "OL" in flags:
        power = ONLINE
    else:
        power = UNKNOWN
    model = " ".join(filter(None, (variables.get("device.mfr") or variables.get("ups.mfr"),
                                   variables.get("device.model") or variables.get("ups.model"))))
    return UpsReading(
        "NUT", power, battery_low="LB" in flags, replace_battery="RB" in flags, model=clean(model, 60),
        charge_percent=_number(variables, "battery.charge"),
        runtime_seconds=_number(variables, "battery.runtime"),
        input_volts=_number(variables, "input.voltage"),
        output_volts=_number(variables, "output.voltage"),
        load_percent=_number(variables, "ups.load"),
        temperature_celsius=_number(variables, "ups.temperature", "battery.temperature"),
    )


class NutCollector:
    """Polls every [[ups]] of one interval concurrently; a dead upsd is that UPS's problem."""

    def __init__(self, units: list[UpsConfig], interval: float, *, name: str = "ups",
                 clock: Callable[[], float] = time.time) -> None:
        self.name, self.interval, self.units, self.clock = name, interval, units, clock

    async def _one(self, unit: UpsConfig) -> Batch:
        where = f"upsd {unit.host}:{unit.port} UPS {unit.ups!r}"
        try:
            variables = await list_vars(unit.host, unit.port, unit.ups, unit.timeout)
        except TimeoutError:
            message = f"no answer from {where} in {unit.timeout:g} s"
        except (OSError, NutError) as exc:
            message = f"cannot read {where}: {exc}"
        else:
            return ups_batch(unit.name, reading_of(variables), self.clock())
        return Batch(checks=[CheckResult(unit.name, "ups", State.UNKNOWN, message,
                                         timestamp=self.clock())])

    async def collect(self) -> Batch:
        batch = Batch()
        for part in await asyncio.gather(*(self._one(u) for u in self.units)):
            batch.add(part)
        return batch


def build(config: Config) -> list[Collector]:
    default = config.agent.interval
    groups: dict[float, list[UpsConfig]] = {}
    for unit in config.ups:
        groups.setdefault(unit.interval or default, []).append(unit)
    return [NutCollector(units, interval, name="ups" if interval == default else f"ups-{interval:g}s")
            for interval, units in sorted(groups.items())]
