"""The SNMP interface collector: traffic, packets, errors and status of router and switch ports.

One `SnmpCollector` job per poll interval polls its devices concurrently (bounded by
`[snmp] concurrency`); one dead or slow device only delays itself. Each poll walks the IF-MIB
columns side by side with GETBULK (numeric OIDs, no MIB lookups), re-resolves ifIndex -> identity,
and hands the raw counters to `snmp_counters`, which turns them into exact rates per second.

Naming contract: target = device name, instance = interface identity (ifName by default);
metrics in_octets/out_octets (bytes per second, stored as GAUGE: we computed the rate),
in/out_{ucast,mcast,bcast}_packets, in/out_{errors,discards} (per second), oper_status and
admin_status (1 = up, 2 = down), speed_bps; instance "" has uptime_seconds. Checks: "snmp" per
device, "if <identity>" per interface.
"""

from __future__ import annotations

import asyncio
import fnmatch
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from collectors.snmp_client import (
    Client,
    CommunityClient,
    Endpoint,
    SnmpError,
    UsmClient,
    walk_columns,
)
from collectors.snmp_counters import Counter, CounterState, DeviceSample, InterfaceSample
from monitor.config import Config, SnmpDevice
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, State
from monitor.units import format_duration

log = logging.getLogger(__name__)

Oid = tuple[int, ...]

SYS = (1, 3, 6, 1, 2, 1, 1)
SYS_UPTIME = (*SYS, 3)
IF = (1, 3, 6, 1, 2, 1, 2, 2, 1)
IFX = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)

# Descriptive columns: always walked.
IF_DESCR, IF_TYPE, IF_SPEED, IF_ADMIN, IF_OPER = (*IF, 2), (*IF, 3), (*IF, 5), (*IF, 7), (*IF, 8)
IF_NAME, IF_HIGH_SPEED, IF_ALIAS, IF_DISCONTINUITY = (*IFX, 1), (*IFX, 15), (*IFX, 18), (*IFX, 19)

# metric -> (64-bit column, 32-bit column or None). Errors and discards only exist in 32 bits.
COUNTERS: dict[str, tuple[Oid | None, Oid | None]] = {
    "in_octets": ((*IFX, 6), (*IF, 10)),
    "out_octets": ((*IFX, 10), (*IF, 16)),
    "in_ucast_packets": ((*IFX, 7), (*IF, 11)),
    "out_ucast_packets": ((*IFX, 11), (*IF, 17)),
    "in_mcast_packets": ((*IFX, 8), (*IFX, 2)),
    "out_mcast_packets": ((*IFX, 12), (*IFX, 4)),
    "in_bcast_packets": ((*IFX, 9), (*IFX, 3)),
    "out_bcast_packets": ((*IFX, 13), (*IFX, 5)),
    "in_discards": (None, (*IF, 13)),
    "in_errors": (None, (*IF, 14)),
    "out_discards": (None, (*IF, 19)),
    "out_errors": (None, (*IF, 20)),
}
DESCRIPTIVE = [IF_NAME, IF_DESCR, IF_ALIAS, IF_SPEED, IF_HIGH_SPEED, IF_ADMIN, IF_OPER,
               IF_DISCONTINUITY]
HC_COLUMNS = [hc for hc, _ in COUNTERS.values() if hc is not None]
LOW_COLUMNS = [low for _, low in COUNTERS.values() if low is not None]
ERROR_COLUMNS = [low for hc, low in COUNTERS.values() if hc is None and low is not None]

OPER_STATUS = {1: "up", 2: "down", 3: "testing", 4: "unknown", 5: "dormant", 6: "notPresent",
               7: "lowerLayerDown"}


def text(value: object) -> str:
    """A display string from the agent: bytes decoded leniently, control characters dropped."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return "" if value is None else str(value)
    return "".join(ch for ch in value if ch.isprintable()).strip()


def format_bps(bps: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:.0f} bit/s"


@dataclass
class Interface:
    """One row of the interface tables, as read in one poll."""

    index: int
    identity: str
    name: str
    descr: str
    alias: str
    speed_bps: float | None
    admin: int | None
    oper: int | None
    sample: InterfaceSample


def interfaces_from_tables(tables: dict[Oid, dict[Oid, object]], identity: str) -> list[Interface]:
    """Rows keyed by ifIndex -> Interfaces named by `identity` (ifName, ifDescr, ifAlias, ifIndex).

    Re-resolved on every poll: the identity, not the ifIndex, links a row to its history.
    Two rows with the same identity keep it apart with "#ifIndex" on the later one.
    """
    indexes = sorted({idx[0] for column in tables.values() for idx in column if len(idx) == 1})
    out: list[Interface] = []
    seen: set[str] = set()
    for index in indexes:
        key = (index,)

        def get(column: Oid, key: tuple[int, ...] = key) -> object:
            return tables.get(column, {}).get(key)

        name, descr, alias = text(get(IF_NAME)), text(get(IF_DESCR)), text(get(IF_ALIAS))
        candidates = {
            "ifName": (name, descr),
            "ifDescr": (descr, name),
            "ifAlias": (alias, name, descr),
            "ifIndex": (),
        }[identity]
        ident = next((c for c in candidates if c), str(index))
        if ident in seen:
            ident = f"{ident}#{index}"
        seen.add(ident)
        high, low = get(IF_HIGH_SPEED), get(IF_SPEED)
        speed: float | None = None
        if isinstance(high, int) and high > 0:
            speed = high * 1e6
        if isinstance(low, int) and 0 < low < 2**32 - 1 and (speed is None or speed < 4e9):
            speed = float(low)  # exact for links below 4.29 Gbit/s (ifHighSpeed is rounded)
        counters: dict[str, Counter] = {}
        for metric, (hc, low_col) in COUNTERS.items():
            value = get(hc) if hc is not None else None
            if isinstance(value, int):
                counters[metric] = Counter(value, 64)
                continue
            value = get(low_col) if low_col is not None else None
            if isinstance(value, int):
                counters[metric] = Counter(value, 32)
        disc = get(IF_DISCONTINUITY)
        admin, oper = get(IF_ADMIN), get(IF_OPER)
        out.append(Interface(
            index, ident, name, descr, alias, speed,
            admin if isinstance(admin, int) else None, oper if isinstance(oper, int) else None,
            InterfaceSample(counters, speed, disc if isinstance(disc, int) else None),
        ))
    return out


def make_client(device: SnmpDevice, engine: object | None) -> Client:
    endpoint = Endpoint(device.name, device.host, device.port, device.timeout, device.retries)
    if device.version == "3":
        assert device.v3 is not None and engine is not None
        v3 = device.v3
        return UsmClient(endpoint, engine, v3.user, v3.auth_protocol, v3.auth_key,
                         v3.priv_protocol, v3.priv_key, v3.context)
    return CommunityClient(endpoint, device.community or "public", device.version)


@dataclass
class DevicePoller:
    """One device's client and counter history across polls."""

    device: SnmpDevice
    interval: float
    state: CounterState = field(init=False)
    has_hc: bool | None = None  # learnt on the first poll: are ifHC* columns there?
    client: Client | None = None

    def __post_init__(self) -> None:
        self.state = CounterState(self.interval)

    def columns(self) -> list[Oid]:
        if self.device.version == "1":
            counters = LOW_COLUMNS  # v1 cannot carry Counter64
        elif self.has_hc:
            counters = [*HC_COLUMNS, *ERROR_COLUMNS]
        else:
            counters = HC_COLUMNS + LOW_COLUMNS if self.has_hc is None else LOW_COLUMNS
        return [*DESCRIPTIVE, *counters]

    async def poll(self, engine: object | None, clock: Callable[[], float]) -> Batch:
        device = self.device
        if self.client is None:
            self.client = make_client(device, engine)
        columns = self.columns()
        reps = device.max_repetitions or max(1, 250 // len(columns))
        try:
            tables, scalars = await walk_columns(self.client, columns, max_repetitions=reps,
                                                 scalars=[SYS_UPTIME])
        except SnmpError as exc:
            return Batch(checks=[CheckResult(device.name, "snmp", State.CRITICAL, exc.message,
                                             timestamp=clock())])
        now = clock()
        if self.has_hc is None and device.version != "1":
            self.has_hc = any(tables.get(c) for c in HC_COLUMNS)
        uptime = scalars.get((*SYS_UPTIME, 0))
        uptime_ticks = uptime if isinstance(uptime, int) else None
        interfaces = interfaces_from_tables(tables, device.identity)
        return self.measure(interfaces, uptime_ticks, now)

    def selected(self, iface: Interface) -> bool:
        d = self.device
        names = {iface.identity, iface.name, iface.descr} - {""}
        if d.include and not any(fnmatch.fnmatchcase(n, p) for n in names for p in d.include):
            return False
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in d.exclude):
            return False
        return d.include_admin_down or iface.admin != 2

    def measure(self, interfaces: list[Interface], uptime_ticks: int | None, now: float) -> Batch:
        device = self.device
        chosen = [i for i in interfaces if self.selected(i)]
        sample = DeviceSample(now, uptime_ticks, {i.identity: i.sample for i in chosen})
        rates = self.state.update(sample)
        batch = Batch()
        target = device.name

        def gauge(instance: str, metric: str, value: float | None, unit: str) -> Measurement:
            return Measurement(target, instance, metric, value, Kind.GAUGE, unit, now, minimum=0)

        if uptime_ticks is not None:
            batch.add(gauge("", "uptime_seconds", uptime_ticks / 100.0, "s"))
        up = 0
        for iface in chosen:
            per_second = rates.interfaces.get(iface.identity, {})
            for metric, rate in per_second.items():
                batch.add(gauge(iface.identity, metric, rate, "B/s" if "octets" in metric else "/s"))
            if iface.oper is not None:
                batch.add(gauge(iface.identity, "oper_status", iface.oper, ""))
            if iface.admin is not None:
                batch.add(gauge(iface.identity, "admin_status", iface.admin, ""))
            if iface.speed_bps is not None:
                batch.add(gauge(iface.identity, "speed_bps", iface.speed_bps, "bit/s"))
            up += iface.oper == 1
            batch.add(self.interface_check(iface, per_second, now))
        uptime_text = (f", up {format_duration(uptime_ticks / 100.0)}"
                       if uptime_ticks is not None else "")
        summary = (f"{device.name}: {len(chosen)} interface(s) polled, {up} up "
                   f"(of {len(interfaces)} on the device){uptime_text}")
        if rates.rebooted:
            batch.add(CheckResult(target, "snmp", State.WARNING,
                                  f"{device.name} restarted (sysUpTime went back{uptime_text}); "
                                  "rates of this poll are unknown", timestamp=now))
        else:
            batch.add(CheckResult(target, "snmp", State.OK, summary, timestamp=now))
        if rates.reason:
            log.debug("%s: %s", device.name, rates.reason)
        return batch

    def interface_check(self, iface: Interface, rates: dict[str, float | None], now: float) -> CheckResult:
        label = iface.identity + (f" ({iface.alias})" if iface.alias and iface.alias != iface.identity
                                  else "")
        speed = f", {format_bps(iface.speed_bps)}" if iface.speed_bps else ""
        check = f"if {iface.identity}"
        if iface.admin == 2:
            return CheckResult(self.device.name, check, State.OK,
                               f"{label} is administratively down", timestamp=now)
        status = OPER_STATUS.get(iface.oper or 0, f"status {iface.oper}")
        if iface.oper == 1:
            traffic = ""
            rin, rout = rates.get("in_octets"), rates.get("out_octets")
            if rin is not None and rout is not None:
                traffic = f", in {format_bps(rin * 8)}, out {format_bps(rout * 8)}"
            return CheckResult(self.device.name, check, State.OK, f"{label} up{speed}{traffic}",
                               timestamp=now)
        watched = any(fnmatch.fnmatchcase(iface.identity, p) for p in self.device.alert_down)
        if not watched:
            return CheckResult(self.device.name, check, State.OK, f"{label} is {status} "
                               "(not in alert_down)", timestamp=now)
        state = State.CRITICAL if iface.oper in (2, 7) else State.WARNING
        return CheckResult(self.device.name, check, state,
                           f"{self.device.name} interface {label} is {status} (admin up)",
                           timestamp=now)


class SnmpCollector:
    """Polls its devices concurrently, at most `concurrency` at a time, one SNMP engine shared."""

    def __init__(self, devices: list[SnmpDevice], interval: float, *, concurrency: int = 32,
                 name: str = "snmp", clock: Callable[[], float] = time.time) -> None:
        self.name = name
        self.interval = interval
        self.concurrency = concurrency
        self.clock = clock
        self.pollers = {d.name: DevicePoller(d, interval) for d in devices}
        self._engines: dict[str, tuple[object, asyncio.AbstractEventLoop]] = {}

    def replace_device(self, device: SnmpDevice) -> None:
        """Change how a device is reached, keeping its counter history (config reloads, tests)."""
        poller = self.pollers[device.name]
        if poller.client is not None:
            poller.client.close()
        poller.device, poller.client = device, None

    def _engine_for(self, poller: DevicePoller) -> object | None:
        """The pysnmp engine of a v3 device, made once per event loop and then reused.

        One engine per device, not one for all: pysnmp keeps one key per user name, so two
        devices with the same user and different keys would otherwise overwrite each other.
        """
        if poller.device.version != "3":
            return None
        loop = asyncio.get_running_loop()
        engine, engine_loop = self._engines.get(poller.device.name, (None, None))
        if engine is None or engine_loop is not loop:
            from pysnmp.hlapi.v3arch.asyncio import SnmpEngine

            engine = SnmpEngine()
            self._engines[poller.device.name] = (engine, loop)
            poller.client = None
        return engine

    async def collect(self) -> Batch:
        limit = asyncio.Semaphore(self.concurrency)

        async def one(poller: DevicePoller) -> Batch:
            async with limit:
                try:
                    return await poller.poll(self._engine_for(poller), self.clock)
                except Exception as exc:  # a bug or a broken agent: report it, poll the others
                    log.exception("%s: SNMP poll failed", poller.device.name)
                    return Batch(checks=[CheckResult(
                        poller.device.name, "snmp", State.UNKNOWN,
                        f"{poller.device.name}: poll failed: {type(exc).__name__}: {exc}",
                        timestamp=self.clock())])

        batch = Batch()
        for result in await asyncio.gather(*(one(p) for p in self.pollers.values())):
            batch.add(result)
        return batch

    def close(self) -> None:
        for poller in self.pollers.values():
            if poller.client is not None:
                poller.client.close()
                poller.client = None
        for engine, _ in self._engines.values():
            try:
                engine.close_dispatcher()  # type: ignore[attr-defined]
            except Exception:
                log.debug("closing an SNMP engine failed", exc_info=True)
        self._engines.clear()


def build(config: Config) -> list[Collector]:
    """One collector per distinct poll interval (most configs: one, named "snmp")."""
    default = config.snmp.interval or config.agent.interval
    groups: dict[float, list[SnmpDevice]] = {}
    for device in config.snmp.devices:
        groups.setdefault(device.interval or default, []).append(device)
    out: list[Collector] = []
    for interval, devices in sorted(groups.items(), key=lambda kv: kv[0] != default):
        name = "snmp" if interval == default else f"snmp-{format_duration(interval).replace(' ', '')}"
        out.append(SnmpCollector(devices, interval, concurrency=config.snmp.concurrency, name=name))
    return out
