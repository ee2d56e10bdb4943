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

A misbehaving device harms only itself: each poll has a time budget and a row budget, and the
collector yields each device's batch as soon as it is done (`SnmpCollector.batches`). Counter
state, the interfaces seen (and seen up) and the port index (`read_port_index`: groups from
LibreNMS-style descriptions, MAC and IP addresses) are kept per device in [agent] data_dir's
state/snmp/, so restarts and `collect --once` from cron keep their rates.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import ipaddress
import json
import logging
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path

from collectors.snmp_ber import Missing
from collectors.snmp_bgp import port_links
from collectors.snmp_client import (
    Client,
    CommunityClient,
    Endpoint,
    SnmpError,
    UsmClient,
    Walk,
    walk_columns,
)
from collectors.snmp_counters import Counter, Counters, CounterState, DeviceSample, InterfaceSample
from collectors.snmp_health import DeviceHealth, ErrorWatch, StorageLimits
from collectors.snmp_iftypes import IF_TYPES, if_type_name
from collectors.snmp_v3 import UsmEngine
from monitor.config import Config, SnmpDevice
from monitor.files import atomic_write, load_state, safe_name
from monitor.model import Batch, CheckResult, Collector, Kind, Measurement, SharedState, State
from monitor.text import clean
from monitor.units import OPER_STATUS, format_duration

log = logging.getLogger(__name__)

Oid = tuple[int, ...]

SYS = (1, 3, 6, 1, 2, 1, 1)
SYS_OBJECT_ID, SYS_UPTIME, SYS_NAME = (*SYS, 2), (*SYS, 3), (*SYS, 5)
IF_NUMBER = (1, 3, 6, 1, 2, 1, 2, 1)
# Fetched with the first request of every poll (GET-NEXT semantics: the .0 instance comes back).
SCALARS = [SYS_OBJECT_ID, SYS_UPTIME, SYS_NAME, IF_NUMBER]
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
DESCRIPTIVE = [IF_NAME, IF_DESCR, IF_ALIAS, IF_TYPE, IF_SPEED, IF_HIGH_SPEED, IF_ADMIN, IF_OPER,
               IF_DISCONTINUITY]
HC_COLUMNS = [hc for hc, _ in COUNTERS.values() if hc is not None]
LOW_COLUMNS = [low for _, low in COUNTERS.values() if low is not None]
ERROR_COLUMNS = [low for hc, low in COUNTERS.values() if hc is None and low is not None]
COUNTER_METRICS = tuple(COUNTERS)
_COUNTER32, _COUNTER64 = 2**32, 2**64  # the values a counter of either width can have
UNITS = {metric: "B/s" if "octets" in metric else "/s" for metric in COUNTERS}
# metric -> its 32-bit column, for the metrics that also have a 64-bit one.
LOW_OF_HC = {metric: low for metric, (hc, low) in COUNTERS.items() if hc is not None and low}

# Rows one column may have: a table longer than this is an agent that never ends its walk.
# ifNumber counts the rows of ifTable; real agents have a few more in ifXTable (stacked or
# hidden sub-interfaces), never thousands more.
ROW_SLACK = 256
ROWS_WITHOUT_IFNUMBER = 20_000

# The slow-changing part of a device (MAC and IP addresses per interface): walked on the first
# poll and then once an hour, like LibreNMS' discovery, not every poll.
IF_PHYS_ADDRESS = (*IF, 6)
IP_AD_ENT_IF_INDEX, IP_AD_ENT_NETMASK = (1, 3, 6, 1, 2, 1, 4, 20, 1, 2), (1, 3, 6, 1, 2, 1, 4, 20, 1, 3)
IP_ADDRESS_IF_INDEX, IP_ADDRESS_PREFIX = (1, 3, 6, 1, 2, 1, 4, 34, 1, 3), (1, 3, 6, 1, 2, 1, 4, 34, 1, 5)
INVENTORY = [IF_PHYS_ADDRESS, IP_AD_ENT_IF_INDEX, IP_AD_ENT_NETMASK, IP_ADDRESS_IF_INDEX,
             IP_ADDRESS_PREFIX]
INVENTORY_INTERVAL = 3600.0

# LibreNMS' port description convention: "Transit: ExampleNet (notes) [10G] {CID-42}".
PORT_GROUPS = ("cust", "transit", "peering", "core")
_PORT_DESCRIPTION = re.compile(r"^\s*(?P<group>[A-Za-z]+)\s*:\s*(?P<name>[^\[{(]*)")


@dataclass(frozen=True, slots=True)
class PortDescription:
    """What an ifAlias in LibreNMS style says: group (cust, transit, peering, core), the
    other side's name, and the optional (notes) and {circuit id}. A [speed] is part of the
    alias the site shows; the speed figures come from ifHighSpeed."""

    group: str
    name: str
    notes: str = ""
    circuit: str = ""


NOT_DESCRIBED = PortDescription("", "")


@dataclass(frozen=True, slots=True)
class PortInfo:
    """One entry of the port index (see `read_port_index`)."""

    name: str
    descr: str
    alias: str
    type: str
    speed_bps: float | None
    group: str
    description: str
    circuit: str
    notes: str
    mac: str
    addresses: tuple[str, ...]

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> PortInfo:
        values = {f.name: data.get(f.name) for f in dataclasses.fields(cls)}
        speed, addresses = values["speed_bps"], values["addresses"]
        return cls(**{k: str(v or "") for k, v in values.items() if k not in ("speed_bps", "addresses")},
                   speed_bps=float(speed) if isinstance(speed, int | float) else None,
                   addresses=tuple(str(a) for a in addresses) if isinstance(addresses, list | tuple) else ())


PORT_FIELDS = tuple(f.name for f in dataclasses.fields(PortInfo))


def parse_port_description(alias: str) -> PortDescription | None:
    match = _PORT_DESCRIPTION.match(alias)
    if match is None or match["group"].lower() not in PORT_GROUPS:
        return None

    def part(opening: str, closing: str) -> str:
        found = re.search(re.escape(opening) + r"([^" + re.escape(closing) + r"]*)"
                          + re.escape(closing), alias)
        return found.group(1).strip() if found else ""

    return PortDescription(match["group"].lower(), match["name"].strip(), part("(", ")"),
                           part("{", "}"))


def mac_text(value: object) -> str:
    """ifPhysAddress as aa:bb:cc:dd:ee:ff ("" for none)."""
    if not isinstance(value, bytes) or not value.strip(b"\x00"):
        return ""
    return ":".join(f"{b:02x}" for b in value)


def addresses_by_ifindex(tables: dict[Oid, dict[Oid, object]]) -> dict[int, list[str]]:
    """Interface addresses ("192.0.2.1/24", "2001:db8::1/64") per ifIndex, from the IP-MIB's
    ipAddressTable (v4 and v6) and the older ipAddrTable (v4 only), without duplicates."""
    found: dict[int, set[str]] = {}
    masks = tables.get(IP_AD_ENT_NETMASK, {})
    for index, if_index in tables.get(IP_AD_ENT_IF_INDEX, {}).items():
        if len(index) != 4 or not isinstance(if_index, int):
            continue
        mask = masks.get(index)
        try:
            address = ipaddress.IPv4Address(bytes(index))
            prefix = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen if isinstance(mask, str) else 32
        except ValueError:
            continue
        found.setdefault(if_index, set()).add(f"{address}/{prefix}")
    prefixes = tables.get(IP_ADDRESS_PREFIX, {})
    for index, if_index in tables.get(IP_ADDRESS_IF_INDEX, {}).items():
        # index: address type (1 ipv4, 2 ipv6), length, the address bytes
        if len(index) < 2 or index[0] not in (1, 2) or len(index) != 2 + index[1]:
            continue
        if not isinstance(if_index, int) or any(not 0 <= b < 256 for b in index[2:]):
            continue
        try:
            any_address = ipaddress.ip_address(bytes(index[2:]))
        except ValueError:
            continue
        pointer = prefixes.get(index)
        full = 32 if any_address.version == 4 else 128
        prefix = pointer[-1] if isinstance(pointer, tuple) and len(pointer) > 1 else full
        found.setdefault(if_index, set()).add(f"{any_address}/{prefix if 0 <= prefix <= full else full}")
    return {i: sorted(a, key=lambda t: (":" in t, t)) for i, a in found.items()}



# DisplayString (RFC 2579) holds at most 255 characters: a longer ifAlias or sysName is an agent
# that misbehaves, and must not carry kilobytes into every message and log line.
DISPLAY_STRING_LIMIT = 255


def text(value: object) -> str:
    """A display string from the agent, cleaned (`monitor.text.clean`: one line, no control or
    bidi characters, at most DISPLAY_STRING_LIMIT characters); "" for nothing
    (noSuchObject/noSuchInstance/endOfMibView are not names)."""
    if value is None or isinstance(value, Missing):
        return ""
    return clean(value, DISPLAY_STRING_LIMIT)


class DeviceTexts:
    """`text` and `parse_port_description` made once per distinct name or alias: the same
    ones come back at every poll of every device, and one string object for each also keeps
    the names held from poll to poll (known interfaces, the port index) single. One per
    collector, shared by its devices, and bounded: junk from one device only empties it."""

    def __init__(self, size: int = 8192) -> None:
        self.size = size
        self._texts: dict[bytes, str] = {}
        self._descriptions: dict[str, PortDescription | None] = {}

    def __call__(self, value: object) -> str:
        if value.__class__ is not bytes or len(value) > DISPLAY_STRING_LIMIT:
            return text(value)
        found = self._texts.get(value)
        if found is None:
            if len(self._texts) >= self.size:
                self._texts.clear()
            found = self._texts[value] = clean(value, DISPLAY_STRING_LIMIT)
        return found

    def port_description(self, alias: str) -> PortDescription | None:
        try:
            return self._descriptions[alias]
        except KeyError:
            if len(self._descriptions) >= self.size:
                self._descriptions.clear()
            found = self._descriptions[alias] = parse_port_description(alias)
            return found


def format_bps(bps: float) -> str:
    for unit, size in (("Gbit/s", 1e9), ("Mbit/s", 1e6), ("kbit/s", 1e3)):
        if bps >= size:
            return f"{bps / size:.3g} {unit}"
    return f"{bps:.0f} bit/s"


@dataclass(slots=True)
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
    if_type: int | None = None


def interfaces_from_tables(tables: dict[Oid, dict[Oid, object]], identity: str,
                           text: Callable[[object], str] = text) -> list[Interface]:
    """Rows keyed by ifIndex -> Interfaces named by `identity` (ifName, ifDescr, ifAlias, ifIndex),
    their names made by `text` (a collector's `DeviceTexts`).

    Re-resolved on every poll: the identity, not the ifIndex, links a row to its history.
    Two rows with the same identity keep it apart with "#ifIndex" on the later one.
    """
    empty: dict[Oid, object] = {}
    names, descrs, aliases = (tables.get(c, empty) for c in (IF_NAME, IF_DESCR, IF_ALIAS))
    highs, lows, discs = (tables.get(c, empty) for c in (IF_HIGH_SPEED, IF_SPEED, IF_DISCONTINUITY))
    admins, opers, types = (tables.get(c, empty) for c in (IF_ADMIN, IF_OPER, IF_TYPE))
    # Per metric: its 64-bit column's rows, then its 32-bit column's (either may be empty).
    counter_columns = [(metric, tables.get(hc, empty) if hc else empty,
                        tables.get(low, empty) if low else empty)
                       for metric, (hc, low) in COUNTERS.items()]
    keys: set[Oid] = set().union(*tables.values())
    # One tuple of counter names for all the interfaces that have the same columns (usually
    # all of them, and of every device): the last poll of each interface stays in memory.
    shapes = {COUNTER_METRICS: COUNTER_METRICS}
    out: list[Interface] = []
    seen: set[str] = set()
    for key in sorted(k for k in keys if len(k) == 1):
        index = key[0]
        name, descr, alias = text(names.get(key)), text(descrs.get(key)), text(aliases.get(key))
        if identity == "ifName":
            ident = name or descr
        elif identity == "ifDescr":
            ident = descr or name
        elif identity == "ifAlias":
            ident = alias or name or descr
        else:
            ident = ""
        ident = ident or str(index)
        if ident in seen:
            ident = f"{ident}#{index}"
        seen.add(ident)
        high, low = highs.get(key), lows.get(key)
        speed: float | None = None
        if isinstance(high, int) and 0 < high < 2**32:
            speed = high * 1e6
        if isinstance(low, int) and 0 < low < 2**32 - 1 and (speed is None or speed < 4e9):
            speed = float(low)  # exact for links below 4.29 Gbit/s (ifHighSpeed is rounded)
        metrics: list[str] = []
        values: list[int] = []
        wide_bits = 0
        for metric, wide, narrow in counter_columns:
            # (a counter of the wrong type from a broken agent, a negative INTEGER or 64 bits
            # in a 32-bit column, is no counter: its rate would be made up)
            value = wide.get(key)
            if value.__class__ is int and 0 <= value < _COUNTER64:
                wide_bits |= 1 << len(values)
            else:
                value = narrow.get(key)
                if value.__class__ is not int or not 0 <= value < _COUNTER32:
                    continue
            metrics.append(metric)
            values.append(value)
        shape = tuple(metrics)
        counters = Counters(shapes.setdefault(shape, shape), values, wide_bits)
        disc = discs.get(key)
        admin, oper, if_type = admins.get(key), opers.get(key), types.get(key)
        out.append(Interface(
            index, ident, name, descr, alias, speed,
            admin if isinstance(admin, int) else None, oper if isinstance(oper, int) else None,
            InterfaceSample(counters, speed, disc if isinstance(disc, int) else None),
            if_type if isinstance(if_type, int) else None,
        ))
    return out


def make_client(device: SnmpDevice, engine: UsmEngine | None) -> Client:
    endpoint = Endpoint(device.name, device.host, device.port, device.timeout, device.retries)
    if device.version == "3":
        assert device.v3 is not None and engine is not None
        v3 = device.v3
        return UsmClient(endpoint, engine, v3.user, v3.auth_protocol, v3.auth_key,
                         v3.priv_protocol, v3.priv_key, v3.context)
    return CommunityClient(endpoint, device.community or "public", device.version)


def row_budget(scalars: dict[Oid, object]) -> int:
    """The most rows a walk may read per column, from the device's ifNumber (in `scalars`)."""
    count = scalars.get((*IF_NUMBER, 0))
    if isinstance(count, int) and count >= 0:
        return 2 * count + ROW_SLACK
    return ROWS_WITHOUT_IFNUMBER


def state_file(directory: Path, name: str) -> Path:
    """Where a device's counter state lives: a safe file name, whatever the device is called."""
    return directory / f"{safe_name(name)}.json"


def scalar_text(value: object) -> str:
    if isinstance(value, tuple):
        return ".".join(map(str, value))
    return text(value)


@dataclass
class DevicePoller:
    """One device's client and counter history across polls (and, with `state_dir`, runs)."""

    device: SnmpDevice
    interval: float
    state_dir: Path | None = None
    state: CounterState = field(init=False)
    # Learnt from the last poll: the metrics whose 64-bit column some interface lacks (their
    # 32-bit columns are walked too); None until the first poll (walk both).
    low_needed: set[str] | None = None
    # Interfaces seen in earlier polls (identity -> seen up at least once): a known interface
    # missing from a broken walk becomes UNKNOWN, and "down" matters for one that was up.
    known: dict[str, bool] = field(default_factory=dict)
    identity: dict[str, str] = field(default_factory=dict)  # sysObjectID, sysName
    client: Client | None = None
    loaded: bool = False
    # ifIndex -> (MAC, addresses), from the inventory walk; when it was last walked.
    inventory: dict[int, tuple[str, list[str]]] = field(default_factory=dict)
    inventory_at: float | None = None
    # Per interface identity: group/description/MAC/addresses (the port index, saved with the
    # counter state for the site and digests to read: see `read_port_index`).
    ports: dict[str, PortInfo] = field(default_factory=dict)
    # identity -> {"WARNING"/"CRITICAL": since when the interface is above that threshold}
    busy_since: dict[str, dict[str, float]] = field(default_factory=dict)
    # UPS, BGP and device health (collectors.snmp_health), and the default link-error rule.
    health: DeviceHealth = field(init=False)
    errors: ErrorWatch = field(init=False)
    texts: DeviceTexts = field(default_factory=DeviceTexts)  # the collector's, shared

    def __post_init__(self) -> None:
        self.state = CounterState(self.interval)
        self.reset_health()

    def reset_health(self) -> None:
        self.health = DeviceHealth()
        self.health.bgp.prefix_drop = self.device.bgp_prefix_drop
        self.health.storage = StorageLimits(self.device.storage_warning, self.device.storage_critical)
        self.errors = ErrorWatch(self.device.errors_warning, self.device.errors_for)

    @property
    def skip_types(self) -> set[int]:
        return {IF_TYPES[t] for t in self.device.skip_types}

    def columns(self) -> list[Oid]:
        if self.device.version == "1":
            counters = LOW_COLUMNS  # v1 cannot carry Counter64
        elif self.low_needed is None:
            counters = HC_COLUMNS + LOW_COLUMNS
        else:
            counters = [*HC_COLUMNS, *ERROR_COLUMNS,
                        *(LOW_OF_HC[m] for m in LOW_OF_HC if m in self.low_needed)]
        return [*DESCRIPTIVE, *counters]

    async def poll(self, engine: UsmEngine | None, clock: Callable[[], float],
                   share: SharedState | None = None) -> Batch:
        device = self.device
        if not self.loaded:
            self.loaded = True
            await asyncio.to_thread(self.load_state)
        if share is not None:
            # Another node may have polled this device since we last did (a takeover): its
            # counters are the ones to compute the next rates from.
            text = await share.get(device.name)
            if text is not None:
                self.restore_state(text, "the cluster", newer_only=True)
        if self.client is None:
            self.client = make_client(device, engine)
        columns = self.columns()
        reps = device.max_repetitions or max(1, 250 // len(columns))
        budget = device.poll_budget or self.interval
        started = time.monotonic()
        try:
            async with asyncio.timeout(budget):
                walk = await walk_columns(self.client, columns, max_repetitions=reps,
                                          scalars=SCALARS, max_rows=row_budget)
                if not walk.stopped and (self.inventory_at is None
                                         or clock() - self.inventory_at >= INVENTORY_INTERVAL):
                    await self.walk_inventory(walk, clock())
        except TimeoutError:
            return self.failed(f"{device.name}: poll stopped after {budget:g} s, its time budget "
                               "(the agent answers too slowly, or its tables never end)", clock())
        except SnmpError as exc:
            return self.failed(exc.message, clock())
        if walk.stopped:
            return self.failed(f"{device.name}: {walk.stopped}", clock())
        batch = self.measure(walk, clock())
        if device.health:
            try:
                async with asyncio.timeout(max(0.1, budget - (time.monotonic() - started))):
                    self.health.bgp.links = port_links(self.ports.values())
                    batch.add(await self.health.poll(self.client, device.name, clock()))
            except TimeoutError:
                log.info("%s: health MIBs not read within the poll budget", device.name)
        if self.state_dir is not None:
            await asyncio.to_thread(self.save_state)
        if share is not None:
            text = self.state_text()
            if text is not None:
                await share.put(device.name, text)
        return batch

    async def walk_inventory(self, walk: Walk, now: float) -> None:
        """MAC and IP addresses per ifIndex; a device without the IP-MIB just has none."""
        assert self.client is not None
        try:
            inventory = await walk_columns(self.client, INVENTORY, max_repetitions=25,
                                           max_rows=2 * row_budget(walk.scalars))
        except SnmpError as exc:
            log.debug("%s: no interface addresses: %s", self.device.name, exc.message)
            return
        addresses = addresses_by_ifindex(inventory.tables)
        macs = {i[0]: mac_text(v) for i, v in inventory.tables[IF_PHYS_ADDRESS].items() if len(i) == 1}
        self.inventory = {i: (macs.get(i, ""), addresses.get(i, [])) for i in macs.keys() | addresses}
        self.inventory_at = now

    def failed(self, message: str, now: float, state: State = State.CRITICAL) -> Batch:
        """The device gave no usable poll: say why, and its known interfaces are unknown."""
        batch = Batch(checks=[CheckResult(self.device.name, "snmp", state, message, timestamp=now)])
        for identity in self.known:
            batch.add(CheckResult(self.device.name, f"if {identity}", State.UNKNOWN,
                                  f"{identity}: unknown, no usable poll of {self.device.name} "
                                  "(see its snmp check)", timestamp=now))
        return batch

    def selected(self, iface: Interface, skip_types: set[int]) -> bool:
        d = self.device
        names = {iface.identity, iface.name, iface.descr} - {""}
        if d.include and not any(fnmatch.fnmatchcase(n, p) for n in names for p in d.include):
            return False
        if any(fnmatch.fnmatchcase(n, p) for n in names for p in d.exclude):
            return False
        if iface.if_type is not None and iface.if_type in skip_types:
            return False
        return d.include_admin_down or iface.admin != 2

    def table_problem(self, walk: Walk, interfaces: list[Interface]) -> tuple[State, str]:
        """What is wrong with the interface table as walked (OK, "" when nothing)."""
        count = walk.scalars.get((*IF_NUMBER, 0))
        if not interfaces:
            if count == 0 and not walk.ends:
                return State.OK, ""
            answers = sorted({walk.ends.get(c, "nothing") for c in (IF_DESCR, IF_OPER)})
            return State.CRITICAL, (f"{self.device.name} answers sysUpTime but not its interface "
                                    f"table (IF-MIB ifTable: {', '.join(answers)}"
                                    f"{f'; ifNumber {count}' if isinstance(count, int) else ''})")
        disorder = {c: why for c, why in walk.ends.items() if not why.startswith("no")
                    and not why.startswith("end")}
        if disorder:
            why = next(iter(disorder.values()))
            return State.WARNING, (f"{self.device.name} walked its interface table out of order "
                                   f"({why}, in {len(disorder)} column(s)); the walk stopped "
                                   "there, so some interfaces may be missing")
        return State.OK, ""

    def measure(self, walk: Walk, now: float) -> Batch:
        device = self.device
        tables = walk.tables
        uptime = walk.scalars.get((*SYS_UPTIME, 0))
        uptime_ticks = uptime if isinstance(uptime, int) else None
        identity = {"sys_object_id": scalar_text(walk.scalars.get((*SYS_OBJECT_ID, 0))),
                    "sys_name": scalar_text(walk.scalars.get((*SYS_NAME, 0)))}
        if any(self.identity.get(k, "") not in ("", v) for k, v in identity.items() if v):
            # Another device now answers at this name: its counters are not the old ones'.
            log.info("%s: device identity changed (%s -> %s); counter history dropped",
                     device.name, self.identity, identity)
            self.state = CounterState(self.interval)
            self.known.clear()
            # nor its MACs, addresses, ports and utilisation timers (the inventory is walked
            # afresh at the next poll)
            self.inventory, self.inventory_at, self.busy_since, self.ports = {}, None, {}, {}
            self.reset_health()  # and its UPS, BGP and link-error history
        self.identity = identity
        interfaces = interfaces_from_tables(tables, device.identity, self.texts)
        if device.version != "1":
            indexes = {iface.index for iface in interfaces}
            self.low_needed = {m for m, (hc, _) in COUNTERS.items() if hc is not None and m in LOW_OF_HC
                               and indexes - {i[0] for i in tables.get(hc, {}) if len(i) == 1}}
        problem_state, problem = self.table_problem(walk, interfaces)
        skip = self.skip_types
        chosen = [i for i in interfaces if self.selected(i, skip)]
        if problem_state is State.OK or chosen:
            sample = DeviceSample(now, uptime_ticks, {i.identity: i.sample for i in chosen})
            rates = self.state.update(sample)
        else:
            rates = None  # keep the last good sample: the next good poll continues from it
        batch = Batch()
        target = device.name

        add = batch.measurements.append  # ~15 values per interface: the per-value cost counts
        gauge = Kind.GAUGE
        if uptime_ticks is not None:
            add(Measurement(target, "", "uptime_seconds", uptime_ticks / 100.0, gauge, "s", now, 0))
        up = 0
        for iface in chosen:
            ident = iface.identity
            per_second = rates.interfaces.get(ident, {}) if rates else {}
            for metric, rate in per_second.items():
                add(Measurement(target, ident, metric, rate, gauge, UNITS[metric], now, 0))
            if iface.oper is not None:
                add(Measurement(target, ident, "oper_status", iface.oper, gauge, "", now, 0))
            if iface.admin is not None:
                add(Measurement(target, ident, "admin_status", iface.admin, gauge, "", now, 0))
            if iface.speed_bps is not None:
                add(Measurement(target, ident, "speed_bps", iface.speed_bps, gauge, "bit/s", now, 0))
            up += iface.oper == 1
            batch.checks.append(self.interface_check(iface, per_second, now))
            self.known[ident] = self.known.get(ident, False) or iface.oper == 1
        present = {i.identity for i in chosen}
        if chosen:
            # An unchanged entry stays the one made before (the new one is freed at once): what
            # lives from poll to poll is not reallocated at every poll, which fragments the heap.
            before = self.ports
            self.ports = {}
            for iface in chosen:
                entry = self.port_entry(iface)
                old = before.get(iface.identity)
                self.ports[iface.identity] = old if old == entry else entry
        if problem_state is not State.OK:
            for missing in self.known.keys() - present:
                batch.add(CheckResult(target, f"if {missing}", State.UNKNOWN,
                                      f"{missing}: unknown, missing from the interface table "
                                      f"{device.name} returned (see its snmp check)", timestamp=now))
        else:
            # A healthy walk is the truth: interfaces no longer there are gone (removed, renamed).
            for gone in self.known.keys() - present:
                del self.known[gone]
        uptime_text = (f", up {format_duration(uptime_ticks / 100.0)}"
                       if uptime_ticks is not None else "")
        summary = (f"{device.name}: {len(chosen)} interface(s) polled, {up} up "
                   f"(of {len(interfaces)} on the device){uptime_text}")
        if problem_state is not State.OK:
            batch.add(CheckResult(target, "snmp", problem_state, problem, timestamp=now))
        elif rates is not None and rates.rebooted:
            batch.add(CheckResult(target, "snmp", State.WARNING,
                                  f"{device.name} restarted (sysUpTime went back{uptime_text}); "
                                  "rates of this poll are unknown", timestamp=now))
        else:
            batch.add(CheckResult(target, "snmp", State.OK, summary, timestamp=now))
        if rates is not None and rates.reason:
            log.debug("%s: %s", device.name, rates.reason)
        return batch

    def port_entry(self, iface: Interface) -> PortInfo:
        described = self.texts.port_description(iface.alias) or NOT_DESCRIBED
        mac, addresses = self.inventory.get(iface.index, ("", []))
        return PortInfo(iface.name, iface.descr, iface.alias, if_type_name(iface.if_type),
                        iface.speed_bps, described.group, described.name, described.circuit,
                        described.notes, mac, tuple(addresses))

    def utilisation(self, iface: Interface, rate_in: float | None, rate_out: float | None,
                    now: float) -> tuple[State, str]:
        """WARNING/CRITICAL when in or out stayed above its threshold for `utilisation_for`."""
        d = self.device
        levels = [(State.CRITICAL, d.utilisation_critical), (State.WARNING, d.utilisation_warning)]
        if (rate_in is None or rate_out is None or not iface.speed_bps
                or not any(fnmatch.fnmatchcase(iface.identity, p) for p in d.utilisation_interfaces)):
            return State.OK, ""
        percent = 100 * 8 * max(rate_in, rate_out) / iface.speed_bps
        over = self.busy_since.setdefault(iface.identity, {})
        result: tuple[State, str] = (State.OK, "")
        for state, threshold in levels:
            if not threshold or percent < threshold:
                over.pop(state.name, None)
                continue
            since = over.setdefault(state.name, now)
            if now - since >= d.utilisation_for and result[0] is State.OK:
                result = (state, f"; {percent:.0f} % of the link, above {threshold:g} % for "
                                 f"{format_duration(now - since)}")
        if not over:
            del self.busy_since[iface.identity]
        return result

    def interface_check(self, iface: Interface, rates: dict[str, float | None], now: float) -> CheckResult:
        label = iface.identity + (f" ({iface.alias})" if iface.alias and iface.alias != iface.identity
                                  else "")
        speed = f", {format_bps(iface.speed_bps)}" if iface.speed_bps else ""
        check = f"if {iface.identity}"
        if iface.admin == 2:
            return CheckResult(self.device.name, check, State.OK,
                               f"{label} is administratively down", timestamp=now)
        if iface.oper is None:
            status = "of unknown status (no ifOperStatus)"
        else:
            status = OPER_STATUS.get(iface.oper, f"in status {iface.oper} (not a valid ifOperStatus)")
        if iface.oper == 1:
            traffic = ""
            rin, rout = rates.get("in_octets"), rates.get("out_octets")
            if rin is not None and rout is not None:
                traffic = f", in {format_bps(rin * 8)}, out {format_bps(rout * 8)}"
            state, busy = self.utilisation(iface, rin, rout, now)
            error_state, errors = self.errors.judge(iface.identity, rates, now)
            return CheckResult(self.device.name, check, State.worst((state, error_state)),
                               f"{label} up{speed}{traffic}{busy}{errors}", timestamp=now)
        # A port that was up and went down is a problem; a port nothing was ever plugged into
        # is not (unless alert_down names it): a new switch's first poll pages nobody.
        was_up = self.known.get(iface.identity, False)
        watched = any(fnmatch.fnmatchcase(iface.identity, p) for p in self.device.alert_down)
        if not (was_up or watched):
            return CheckResult(self.device.name, check, State.OK, f"{label} is {status} "
                               "(never seen up; alert_down names the ports to watch anyway)",
                               timestamp=now)
        state = State.CRITICAL if iface.oper in (2, 7) else State.WARNING
        why = "was up before" if was_up else "in alert_down"
        return CheckResult(self.device.name, check, state,
                           f"{self.device.name} interface {label} is {status} (admin up, {why})",
                           timestamp=now)

    # -- counter state on disk: `collect --once` from cron and restarts keep their rates ------

    def state_path(self) -> Path | None:
        return None if self.state_dir is None else state_file(self.state_dir, self.device.name)

    def save_state(self) -> None:
        path = self.state_path()
        text = self.state_text()
        if path is None or text is None:
            return
        try:
            # Not fsynced (see monitor.files.save_state): rewritten at every poll, and checked
            # when read back.
            atomic_write(path, text, mode=0o600, durable=False)
        except OSError as exc:
            log.error("%s: cannot save counter state to %s: %s", self.device.name, path, exc)

    def state_text(self) -> str | None:
        """The counter state (and what goes with it) as JSON; None before the first poll."""
        last = self.state.last
        if last is None:
            return None
        data = {
            "format": 1, "host": f"{self.device.host}:{self.device.port}",
            "identity": self.identity, "time": last.time, "uptime_ticks": last.uptime_ticks,
            "known": self.known, "device": self.device.name,
            "ports": {name: {f: getattr(port, f) for f in PORT_FIELDS}  # asdict: 5x slower
                      for name, port in self.ports.items()},
            "busy_since": self.busy_since, "errors_since": self.errors.since,
            "health": self.health.saved(),
            "interfaces": {name: {"counters": i.counters.saved(),
                                  "speed_bps": i.speed_bps, "discontinuity": i.discontinuity}
                           for name, i in last.interfaces.items()},
        }
        return json.dumps(data, separators=(",", ":"))

    def load_state(self) -> None:
        """The last poll of an earlier run, if it is of this device (the rest is checked by
        `CounterState`: sysUpTime against the clock, the gap against the interval)."""
        path = self.state_path()
        if path is None:
            return
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return
        except OSError as exc:
            log.warning("%s: ignoring unreadable counter state %s: %s", self.device.name, path, exc)
            return
        self.restore_state(text, str(path))

    def restore_state(self, text: str, where: str, newer_only: bool = False) -> None:
        """Take the state in `text` (from a file, or from the node that polled the device
        before this one); with `newer_only`, only if it is of a later poll than ours."""
        try:
            data = json.loads(text)
            identity = {k: str(v) for k, v in data["identity"].items()}
            interfaces = {
                str(name): InterfaceSample(
                    Counters.of({str(m): Counter(int(v), int(bits))
                                 for m, (v, bits) in i["counters"].items()}),
                    None if i["speed_bps"] is None else float(i["speed_bps"]),
                    None if i["discontinuity"] is None else int(i["discontinuity"]))
                for name, i in data["interfaces"].items()}
            ticks = data["uptime_ticks"]
            sample = DeviceSample(float(data["time"]), None if ticks is None else int(ticks),
                                  interfaces)
            known = {str(k): bool(v) for k, v in data.get("known", {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("%s: ignoring unreadable counter state %s: %s", self.device.name, where, exc)
            return
        if data.get("host") != f"{self.device.host}:{self.device.port}":
            log.info("%s: counter state in %s is of another host; ignored", self.device.name, where)
            return
        if newer_only and self.state.last is not None and sample.time <= self.state.last.time:
            return
        self.identity, self.known, self.state.last = identity, known, sample
        self.health.restore(data.get("health"))
        ports, busy, errors = data.get("ports"), data.get("busy_since"), data.get("errors_since")
        try:
            if isinstance(ports, dict):
                self.ports = {str(n): PortInfo.from_dict(p) for n, p in ports.items()}
        except (TypeError, ValueError, AttributeError):
            self.ports = {}
        try:
            if isinstance(busy, dict):
                self.busy_since = {str(i): {str(k): float(v) for k, v in levels.items()}
                                   for i, levels in busy.items() if isinstance(levels, dict)}
        except (TypeError, ValueError, AttributeError):
            self.busy_since = {}
        try:  # the link-error rule's clocks: cron runs reach its `errors_for` too
            if isinstance(errors, dict):
                self.errors.since = {str(i): float(t) for i, t in errors.items()}
        except (TypeError, ValueError):
            self.errors.since = {}


class SnmpCollector:
    """Polls its devices concurrently, at most `concurrency` at a time.

    `batches()` yields each device's results as soon as that device is done (the agent stores
    and checks them at once); `collect()` waits for all of them. Every device has its own time
    budget (`poll_budget`, default the interval) and row budget (from its ifNumber), so a
    device that never ends its walk only stops itself.
    """

    def __init__(self, devices: list[SnmpDevice], interval: float, *, concurrency: int = 32,
                 name: str = "snmp", clock: Callable[[], float] = time.time,
                 state_dir: Path | None = None) -> None:
        self.name = name
        self.interval = interval
        self.concurrency = concurrency
        self.clock = clock
        self.pollers = {d.name: DevicePoller(d, interval, state_dir) for d in devices}
        self._engines: dict[str, UsmEngine] = {}
        self._selected: set[str] | None = None  # [cluster]: the devices this node polls now
        self._until: float | None = None  # [cluster]: no poll starts after this (cycle's end)
        self._share: SharedState | None = None  # [cluster]: counter state of every node
        self.texts = DeviceTexts()
        for poller in self.pollers.values():
            poller.texts = self.texts

    def work_units(self) -> dict[str, str]:
        return {name: poller.device.group for name, poller in self.pollers.items()}

    def select(self, units: set[str] | None, until: float | None = None) -> None:
        self._selected, self._until = units, until

    def unit_of(self, target: str, check: str) -> str | None:
        return target if target in self.pollers else None

    def share_state(self, share: SharedState) -> None:
        self._share = share
        # A takeover may skip one cycle (the dead node's heartbeat lapses just after the
        # cycle began), so a rate may span up to three intervals; sysUpTime still tells a
        # restarted device from a quiet one.
        for poller in self.pollers.values():
            poller.state.max_gap_intervals = 3.0

    def replace_device(self, device: SnmpDevice) -> None:
        """Change how a device is reached, keeping its counter history (config reloads, tests)."""
        poller = self.pollers[device.name]
        if poller.client is not None:
            poller.client.close()
        poller.device, poller.client = device, None

    def _engine_for(self, poller: DevicePoller) -> UsmEngine | None:
        """A v3 device's USM state (its engine ID, clock, localised keys), kept across polls and
        reloads: one per device, as two devices may share a user name with different keys."""
        if poller.device.version != "3":
            return None
        engine = self._engines.get(poller.device.name)
        if engine is None:
            engine = self._engines[poller.device.name] = UsmEngine()
        return engine

    async def _poll(self, poller: DevicePoller) -> Batch:
        try:
            return await poller.poll(self._engine_for(poller), self.clock, self._share)
        except Exception as exc:  # a bug or a broken agent: report it, poll the others
            log.exception("%s: SNMP poll failed", poller.device.name)
            return poller.failed(f"{poller.device.name}: poll failed: {type(exc).__name__}: "
                                 f"{exc}", self.clock(), State.UNKNOWN)

    async def batches(self) -> AsyncIterator[Batch]:
        """Each device's batch as it finishes; devices done while the consumer was busy with
        the previous batch come together (one store write and status save for many). At most
        `concurrency` finished batches wait for the consumer: a slow store holds the polls
        back instead of piling up every device's values in memory."""
        limit = asyncio.Semaphore(self.concurrency)
        ready: asyncio.Queue[Batch] = asyncio.Queue(maxsize=self.concurrency)
        late: list[str] = []

        async def run(poller: DevicePoller) -> None:
            # The poll keeps its place until its batch is queued: were the place given back at
            # once, every device polled while the consumer writes would wait here with its batch.
            async with limit:
                if self._until is not None and self.clock() >= self._until:
                    late.append(poller.device.name)  # the next cycle's owner polls it
                    await ready.put(Batch())
                    return
                await ready.put(await self._poll(poller))

        tasks = [asyncio.ensure_future(run(p)) for name, p in self.pollers.items()
                 if self._selected is None or name in self._selected]
        try:
            remaining = len(tasks)
            while remaining:
                batch = await ready.get()
                remaining -= 1
                while remaining and not ready.empty():
                    batch.add(ready.get_nowait())
                    remaining -= 1
                if batch.checks or batch.measurements:
                    yield batch
        finally:
            for task in tasks:
                task.cancel()
        if late:
            log.warning("%s: %d device(s) not polled, their cycle was over before the poll could "
                        "start: %s", self.name, len(late), ", ".join(sorted(late)))

    async def collect(self) -> Batch:
        batch = Batch()
        async for part in self.batches():
            batch.add(part)
        return batch

    def close(self) -> None:
        for poller in self.pollers.values():
            if poller.client is not None:
                poller.client.close()
                poller.client = None
        self._engines.clear()


PortIndex = dict[str, dict[str, PortInfo]]


def read_port_index(state_dir: Path) -> PortIndex:
    """{device: {interface identity: PortInfo}} as of each device's last poll, for the site
    and the digests (group: "transit", "peering", "cust", "core" or ""). `state_dir` is the
    config's state_dir; the text is device data: untrusted, clean and escape it. A damaged
    state file leaves its device out."""
    out: PortIndex = {}
    directory = state_dir / "snmp"
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        try:
            data = load_state(path)
            device, ports = data["device"], data["ports"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if not isinstance(device, str) or not isinstance(ports, dict):
            continue
        try:
            out[device] = {str(name): PortInfo.from_dict(port) for name, port in ports.items()}
        except (TypeError, ValueError, AttributeError):
            continue
    return out


def build(config: Config) -> list[Collector]:
    """One collector per distinct poll interval (most configs: one, named "snmp")."""
    default = config.snmp.interval or config.agent.interval
    groups: dict[float, list[SnmpDevice]] = {}
    for device in config.snmp.devices:
        groups.setdefault(device.interval or default, []).append(device)
    out: list[Collector] = []
    for interval, devices in sorted(groups.items(), key=lambda kv: kv[0] != default):
        name = "snmp" if interval == default else f"snmp-{format_duration(interval).replace(' ', '')}"
        out.append(SnmpCollector(devices, interval, concurrency=config.snmp.concurrency, name=name,
                                 state_dir=config.state_dir / "snmp"))
    return out
