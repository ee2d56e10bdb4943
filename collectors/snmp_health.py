"""What an SNMP device says beyond its interfaces: power, upstream and its own health.

`DeviceHealth.poll` runs after the interface walk of every poll (same client, same time
budget) and reads, where the device has them:

- UPS: UPS-MIB and APC PowerNet (`collectors.ups`), check "ups";
- BGP peers: BGP4-MIB, CISCO-BGP4-MIB, Juniper BGP4-V2 (`collectors.snmp_bgp`), "bgp <peer>";
- CPU and memory: HOST-RESOURCES-MIB (hrProcessorLoad, hrStorage RAM), UCD-SNMP-MIB (net-snmp
  and Linux-based boxes), CISCO-PROCESS-MIB, CISCO-MEMORY-POOL-MIB, Juniper's
  jnxOperatingTable (routing engines); storage (hrStorage fixed disks), check "storage <path>"
  at the device's storage_warning / storage_critical percent (default 90 / 95);
- sensors, fans and power supplies: ENTITY-SENSOR-MIB (thresholds from Arista's
  aristaEntSensorThresholdTable: the standard MIB has none), CISCO-ENTITY-SENSOR-MIB and
  CISCO-ENVMON-MIB (with the device's own thresholds and states: checks "temperature <name>",
  "sensor <name>"), jnxOperatingTable, MikroTik's health tables. A failed fan or power supply
  is CRITICAL ("fan <name>", "psu <name>").

The first poll walks every column of these MIBs; later polls walk only the columns that had
rows, and every `SURVEY_INTERVAL` all of them again (a line card or UPS added later shows up).
At most `MAX_SENSORS` sensors, fans and power supplies are kept per device; `Found` (what
`monitor discover` prints) counts the rest, and says why the MIBs were not read when they
were not (rather than "UPS-MIB: no").
`ErrorWatch` is the interface collector's default link-error rule.

Metrics: instance "cpu" cpu_percent; "memory" used_percent/used_bytes/size_bytes; "storage:PATH"
the same; "sensor NAME" temperature_celsius, fan_rpm, volts, amperes, watts, power_dbm or
humidity_percent.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field

from collectors import snmp_bgp, ups
from collectors.fsusage import usage_state
from collectors.snmp_ber import Missing, Oid
from collectors.snmp_client import Client, SnmpError, walk_columns
from monitor.model import Batch, CheckResult, Kind, Measurement, State
from monitor.text import clean
from monitor.units import format_bytes, format_duration

log = logging.getLogger(__name__)

SURVEY_INTERVAL = 3600.0
# Sensors, fans and power supplies kept per device: each is a series (an RRD file) and
# checks, so a device that lists thousands fills the agent's disk, not only its own pages.
# A small shop's biggest box (48 ports with optics, 5 sensors each) has about 300.
MAX_SENSORS = 1000
MAX_ROWS = 4 * MAX_SENSORS  # per column (Cisco's threshold table: up to 4 rows per sensor)
COLUMNS_PER_WALK = 16  # columns walked side by side
VALUES_PER_REQUEST = 250

HR_STORAGE = (1, 3, 6, 1, 2, 1, 25, 2, 3, 1)
HR_STORAGE_TYPE, HR_STORAGE_DESCR = (*HR_STORAGE, 2), (*HR_STORAGE, 3)
HR_STORAGE_UNITS, HR_STORAGE_SIZE, HR_STORAGE_USED = (*HR_STORAGE, 4), (*HR_STORAGE, 5), (*HR_STORAGE, 6)
HR_RAM, HR_FIXED_DISK = (1, 3, 6, 1, 2, 1, 25, 2, 1, 2), (1, 3, 6, 1, 2, 1, 25, 2, 1, 4)
HR_PROCESSOR_LOAD = (1, 3, 6, 1, 2, 1, 25, 3, 3, 1, 2)
UCD = (1, 3, 6, 1, 4, 1, 2021)
UCD_MEM_TOTAL, UCD_MEM_AVAIL = (*UCD, 4, 5), (*UCD, 4, 6)
UCD_MEM_BUFFER, UCD_MEM_CACHED = (*UCD, 4, 14), (*UCD, 4, 15)
UCD_CPU_IDLE = (*UCD, 11, 11)
# ssCpuRaw{User,Nice,System,Idle,Wait,Interrupt,SoftIRQ,Steal}: ticks, busy share from deltas
UCD_CPU_RAW = [(*UCD, 11, n) for n in (50, 51, 52, 53, 54, 56, 61, 64)]
UCD_CPU_RAW_IDLE = [(*UCD, 11, 53), (*UCD, 11, 54)]  # idle and I/O wait
CISCO_CPU_5MIN = (1, 3, 6, 1, 4, 1, 9, 9, 109, 1, 1, 1, 1, 8)
CISCO_POOL = (1, 3, 6, 1, 4, 1, 9, 9, 48, 1, 1, 1)
CISCO_POOL_NAME, CISCO_POOL_USED, CISCO_POOL_FREE = (*CISCO_POOL, 2), (*CISCO_POOL, 5), (*CISCO_POOL, 6)
JNX = (1, 3, 6, 1, 4, 1, 2636, 3, 1, 13, 1)
JNX_DESCR, JNX_STATE, JNX_TEMP = (*JNX, 5), (*JNX, 6), (*JNX, 7)
JNX_CPU, JNX_BUFFER = (*JNX, 8), (*JNX, 11)
MIKROTIK = (1, 3, 6, 1, 4, 1, 14988, 1, 1, 3)
MT_VOLTAGE, MT_TEMPERATURE, MT_CPU_TEMPERATURE = (*MIKROTIK, 8), (*MIKROTIK, 10), (*MIKROTIK, 11)
MT_GAUGE = (*MIKROTIK, 100, 1)
MT_GAUGE_NAME, MT_GAUGE_VALUE, MT_GAUGE_UNIT = (*MT_GAUGE, 2), (*MT_GAUGE, 3), (*MT_GAUGE, 4)
ENT_SENSOR = (1, 3, 6, 1, 2, 1, 99, 1, 1, 1)
ENT_TYPE, ENT_SCALE, ENT_PRECISION = (*ENT_SENSOR, 1), (*ENT_SENSOR, 2), (*ENT_SENSOR, 3)
ENT_VALUE, ENT_OPER = (*ENT_SENSOR, 4), (*ENT_SENSOR, 5)
ENT_PHYSICAL = (1, 3, 6, 1, 2, 1, 47, 1, 1, 1, 1)
ENT_PHYSICAL_NAME, ENT_PHYSICAL_DESCR = (*ENT_PHYSICAL, 7), (*ENT_PHYSICAL, 2)
CISCO_SENSOR = (1, 3, 6, 1, 4, 1, 9, 9, 91, 1, 1, 1, 1)  # CISCO-ENTITY-SENSOR-MIB: same columns
CISCO_THRESHOLD = (1, 3, 6, 1, 4, 1, 9, 9, 91, 1, 2, 1, 1)  # index: entPhysicalIndex, threshold
CISCO_T_SEVERITY, CISCO_T_RELATION = (*CISCO_THRESHOLD, 2), (*CISCO_THRESHOLD, 3)
CISCO_T_VALUE, CISCO_T_EVALUATION = (*CISCO_THRESHOLD, 4), (*CISCO_THRESHOLD, 5)
# ENTITY-SENSOR-MIB (RFC 3433) has no thresholds; Arista's aristaEntSensorThresholdTable adds
# them to its rows (same index, same units as entPhySensorValue): low warning (1), low critical
# (2), high warning (3), high critical (4); +-1000000000 is "not set".
ARISTA_THRESHOLD = (1, 3, 6, 1, 4, 1, 30065, 3, 12, 1, 1, 1)
ARISTA_LIMITS = {2: (State.CRITICAL, "low critical", -1), 4: (State.CRITICAL, "high critical", 1),
                 1: (State.WARNING, "low warning", -1), 3: (State.WARNING, "high warning", 1)}
ARISTA_UNSET = 1_000_000_000
ENVMON = (1, 3, 6, 1, 4, 1, 9, 9, 13, 1)
ENV_TEMP_DESCR, ENV_TEMP_VALUE = (*ENVMON, 3, 1, 2), (*ENVMON, 3, 1, 3)
ENV_TEMP_THRESHOLD, ENV_TEMP_STATE = (*ENVMON, 3, 1, 4), (*ENVMON, 3, 1, 6)
ENV_FAN_DESCR, ENV_FAN_STATE = (*ENVMON, 4, 1, 2), (*ENVMON, 4, 1, 3)
ENV_PSU_DESCR, ENV_PSU_STATE = (*ENVMON, 5, 1, 2), (*ENVMON, 5, 1, 3)

SCALARS = [*ups.SCALARS, UCD_MEM_TOTAL, UCD_MEM_AVAIL, UCD_MEM_BUFFER, UCD_MEM_CACHED, UCD_CPU_IDLE,
           *UCD_CPU_RAW, MT_VOLTAGE, MT_TEMPERATURE, MT_CPU_TEMPERATURE]
COLUMNS = [*ups.COLUMNS, *snmp_bgp.COLUMNS, HR_STORAGE_TYPE, HR_STORAGE_DESCR, HR_STORAGE_UNITS,
           HR_STORAGE_SIZE, HR_STORAGE_USED, HR_PROCESSOR_LOAD, CISCO_CPU_5MIN, CISCO_POOL_NAME,
           CISCO_POOL_USED, CISCO_POOL_FREE, JNX_DESCR, JNX_STATE, JNX_TEMP, JNX_CPU, JNX_BUFFER,
           MT_GAUGE_NAME, MT_GAUGE_VALUE, MT_GAUGE_UNIT, ENT_TYPE, ENT_SCALE, ENT_PRECISION,
           ENT_VALUE, ENT_OPER, *((*CISCO_SENSOR, n) for n in range(1, 6)), CISCO_T_SEVERITY,
           CISCO_T_RELATION, CISCO_T_VALUE, CISCO_T_EVALUATION,
           *((*ARISTA_THRESHOLD, n) for n in ARISTA_LIMITS), ENV_TEMP_DESCR, ENV_TEMP_VALUE,
           ENV_TEMP_THRESHOLD, ENV_TEMP_STATE,
           ENV_FAN_DESCR, ENV_FAN_STATE, ENV_PSU_DESCR, ENV_PSU_STATE]

READ_ONLY_MOUNTS = ("/packages/", "/dev", "/proc", "/sys", "/run", "/snap/")
# CISCO-ENVMON states: normal(1) warning(2) critical(3) shutdown(4) notPresent(5)
# notFunctioning(6)
ENVMON_STATE = {1: State.OK, 2: State.WARNING, 3: State.CRITICAL, 4: State.CRITICAL, 6: State.CRITICAL}
ENVMON_WORDS = {1: "normal", 2: "warning", 3: "critical", 4: "shut down", 6: "not functioning"}
# jnxOperatingState: unknown(1) running(2) ready(3) reset(4) runningAtFullSpeed(5) down(6)
# standby(7)
JNX_WORDS = {1: "unknown", 2: "running", 3: "ready", 4: "reset", 5: "running at full speed",
             6: "down", 7: "standby"}
# ENTITY-SENSOR-MIB entPhySensorType -> (metric, unit)
ENT_KINDS = {3: ("volts", "V"), 4: ("volts", "V"), 5: ("amperes", "A"), 6: ("watts", "W"),
             8: ("temperature_celsius", "°C"), 9: ("humidity_percent", "%"), 10: ("fan_rpm", "rpm"),
             14: ("power_dbm", "dBm")}
# CISCO-ENTITY-SENSOR thresholds: severity minor(10) major(20) critical(30); relation
CISCO_SEVERITY = {10: (State.WARNING, "minor"), 20: (State.CRITICAL, "major"),
                  30: (State.CRITICAL, "critical")}
CISCO_RELATION = {1: "<", 2: "<=", 3: ">", 4: ">=", 5: "=", 6: "!="}
# MikroTik mtxrGaugeUnit: celsius(1) rpm(2) dV(3) dA(4) dW(5) status(6)
MT_KINDS = {1: ("temperature_celsius", "°C", 1.0), 2: ("fan_rpm", "rpm", 1.0), 3: ("volts", "V", 0.1),
            4: ("amperes", "A", 0.1), 5: ("watts", "W", 0.1)}


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _name(value: object, fallback: str) -> str:
    if value is None or isinstance(value, Missing):
        return fallback
    text = clean(value.decode("utf-8", "replace") if isinstance(value, bytes) else value, 60)
    return text or fallback


@dataclass
class StorageLimits:
    """hrStorage fixed disks: percent used that is WARNING / CRITICAL (the device's
    storage_warning / storage_critical, as [disks] usage_warning / usage_critical)."""

    warning: float = 90.0
    critical: float = 95.0


@dataclass
class Found:
    """What one poll found, for `monitor discover` and the site."""

    ups: str = ""  # "UPS-MIB", "APC PowerNet" or ""
    bgp_peers: int = 0
    sensors: int = 0
    cpu: bool = False
    memory: bool = False
    storage: int = 0
    sensors_dropped: int = 0  # past MAX_SENSORS
    problem: str = ""  # why the MIBs were not read, or not to their end

    def text(self) -> str:
        if self.problem and not self.read_anything():
            return f"UPS, BGP and health MIBs not read: {self.problem}"
        dropped = (f" ({self.sensors_dropped} more not kept: at most {MAX_SENSORS} per device)"
                   if self.sensors_dropped else "")
        parts = [f"{self.ups or 'UPS-MIB'}: {'yes' if self.ups else 'no'}",
                 f"BGP peers: {self.bgp_peers}", f"sensors: {self.sensors}{dropped}",
                 f"CPU: {'yes' if self.cpu else 'no'}", f"memory: {'yes' if self.memory else 'no'}"]
        if self.storage:
            parts.append(f"storage: {self.storage}")
        return ", ".join(parts) + (f"; incomplete: {self.problem}" if self.problem else "")

    def read_anything(self) -> bool:
        return bool(self.ups or self.bgp_peers or self.sensors or self.cpu or self.memory
                    or self.storage)


class _Out:
    """Collects one poll's measurements and checks for one target."""

    def __init__(self, target: str, now: float) -> None:
        self.target, self.now, self.batch, self.found = target, now, Batch(), Found()
        self.names: set[tuple[str, str]] = set()

    def value(self, instance: str, metric: str, value: float | None, unit: str = "") -> None:
        if value is not None:
            self.batch.add(Measurement(self.target, instance, metric, value, Kind.GAUGE, unit, self.now))

    def check(self, check: str, state: State, message: str) -> None:
        self.batch.add(CheckResult(self.target, check, state, message, timestamp=self.now))

    def unique(self, name: str, index: Oid, space: str = "sensor") -> str:
        """`name`, or `name#index` when another row of `space` (sensor, fan, ...) has it."""
        if (space, name) in self.names:
            name = f"{name}#{'.'.join(map(str, index))}"
        self.names.add((space, name))
        return name

    def admit(self) -> bool:
        """Count one more sensor, fan or power supply: False past MAX_SENSORS (not kept)."""
        if self.found.sensors >= MAX_SENSORS:
            self.found.sensors_dropped += 1
            return False
        self.found.sensors += 1
        return True

    def sensor(self, name: str, metric: str, value: float | None, unit: str) -> bool:
        """Store a sensor's reading; False if it has none or is past MAX_SENSORS."""
        if value is None or not self.admit():
            return False
        self.value(f"sensor {name}", metric, value, unit)
        return True


def _cpu_and_memory(out: _Out, scalars: dict[Oid, object], tables: dict[Oid, dict[Oid, object]],
                    storage: StorageLimits) -> None:
    get = lambda column: tables.get(column, {})  # noqa: E731
    loads = [v for v in map(_int, get(HR_PROCESSOR_LOAD).values()) if v is not None]
    cisco = [v for v in map(_int, get(CISCO_CPU_5MIN).values()) if v is not None]
    engines = {i: v for i, v in get(JNX_DESCR).items() if "routing engine" in _name(v, "").lower()}
    jnx_cpu = [v for i in engines if (v := _int(get(JNX_CPU).get(i))) is not None]
    idle = _int(scalars.get((*UCD_CPU_IDLE, 0)))
    cpu = loads or cisco or jnx_cpu
    if cpu:
        out.value("cpu", "cpu_percent", sum(cpu) / len(cpu), "%")
    elif idle is not None and 0 <= idle <= 100:
        out.value("cpu", "cpu_percent", 100.0 - idle, "%")
    out.found.cpu = bool(cpu) or idle is not None or (*UCD_CPU_RAW[0], 0) in scalars

    def memory(used: float, size: float) -> None:
        if size > 0:
            out.found.memory = True
            out.value("memory", "used_bytes", used, "B")
            out.value("memory", "size_bytes", size, "B")
            out.value("memory", "used_percent", 100 * used / size, "%")

    total, avail = _int(scalars.get((*UCD_MEM_TOTAL, 0))), _int(scalars.get((*UCD_MEM_AVAIL, 0)))
    pools = [(i, _int(get(CISCO_POOL_USED).get(i)), _int(get(CISCO_POOL_FREE).get(i)))
             for i, n in get(CISCO_POOL_NAME).items() if _name(n, "").lower() == "processor"]
    if total and avail is not None:  # UCD (kB): what Linux calls used, without buffers and cache
        cache = sum(_int(scalars.get((*oid, 0))) or 0 for oid in (UCD_MEM_BUFFER, UCD_MEM_CACHED))
        memory(1024.0 * max(0, total - avail - cache), 1024.0 * total)
    elif pools and pools[0][1] is not None and pools[0][2] is not None:
        memory(float(pools[0][1]), float(pools[0][1] + pools[0][2]))
    else:
        buffers = [v for i in engines if (v := _int(get(JNX_BUFFER).get(i))) is not None]
        if buffers:
            out.found.memory = True
            out.value("memory", "used_percent", sum(buffers) / len(buffers), "%")
    units, sizes, used = get(HR_STORAGE_UNITS), get(HR_STORAGE_SIZE), get(HR_STORAGE_USED)
    for index, kind in sorted(get(HR_STORAGE_TYPE).items()):
        unit, size, taken = _int(units.get(index)), _int(sizes.get(index)), _int(used.get(index))
        if not unit or not size or taken is None or size < 0 or taken < 0:
            continue
        if kind == HR_RAM and not out.found.memory:
            memory(float(taken * unit), float(size * unit))
        elif kind == HR_FIXED_DISK:
            descr = _name(get(HR_STORAGE_DESCR).get(index), str(index[0]))
            # JUNOS: "/dev/ad1s1f: var file system, mounted on: /var"
            path = out.unique(descr.rpartition("mounted on: ")[2] or descr, index, "storage")
            if path.startswith(READ_ONLY_MOUNTS):
                continue  # package images and pseudo file systems: always "full"
            instance = f"storage:{path}"
            percent = 100.0 * taken / size
            out.found.storage += 1
            out.value(instance, "used_bytes", float(taken * unit), "B")
            out.value(instance, "size_bytes", float(size * unit), "B")
            out.value(instance, "used_percent", percent, "%")
            state = usage_state(percent, storage.warning, storage.critical)
            out.check(f"storage {path}", state, f"{path}: {percent:.0f} % used of "
                      f"{format_bytes(size * unit)}")


def _failed_part(out: _Out, kind: str, name: str, state: State, words: str) -> None:
    what = "power supply" if kind == "psu" else kind
    message = f"{what} {name} is {words}" + (" (failed: redundancy lost or the device at risk)"
                                            if state is State.CRITICAL else "")
    out.check(f"{kind} {name}", state, message)


def _sensors(out: _Out, scalars: dict[Oid, object], tables: dict[Oid, dict[Oid, object]]) -> None:
    get = lambda column: tables.get(column, {})  # noqa: E731
    # CISCO-ENVMON: the device's own thresholds and states.
    for index, descr in sorted(get(ENV_TEMP_DESCR).items()):
        name = out.unique(_name(descr, f"temperature {index[0]}"), index)
        value, limit = _int(get(ENV_TEMP_VALUE).get(index)), _int(get(ENV_TEMP_THRESHOLD).get(index))
        state_code = _int(get(ENV_TEMP_STATE).get(index)) or 0
        kept = out.sensor(name, "temperature_celsius", None if value is None else float(value), "°C")
        if state_code in ENVMON_STATE and (kept or (value is None and out.admit())):
            shown = f"{value} °C" if value is not None else "unknown"
            threshold = f", device threshold {limit} °C" if limit else ""
            out.check(f"temperature {name}", ENVMON_STATE[state_code],
                      f"{name} is {shown} ({ENVMON_WORDS[state_code]}{threshold})")
    for kind, descrs, states in (("fan", ENV_FAN_DESCR, ENV_FAN_STATE),
                                 ("psu", ENV_PSU_DESCR, ENV_PSU_STATE)):
        for index, descr in sorted(get(descrs).items()):
            code = _int(get(states).get(index)) or 0
            if code in ENVMON_STATE and out.admit():
                _failed_part(out, kind, out.unique(_name(descr, f"{kind} {index[0]}"), index, kind),
                             ENVMON_STATE[code], ENVMON_WORDS[code])
    # Juniper: power supplies ("PEM", "Power Supply") and fans by their description.
    for index, descr in sorted(get(JNX_DESCR).items()):
        name = _name(descr, "")
        lower = name.lower()
        kind = ("psu" if lower.startswith(("pem", "power supply")) else
                "fan" if lower.startswith("fan") or " fan" in lower else "")
        jnx_state = _int(get(JNX_STATE).get(index))
        temperature = _int(get(JNX_TEMP).get(index))
        if temperature:
            out.sensor(out.unique(name or str(index), index), "temperature_celsius", float(temperature), "°C")
        if kind and jnx_state is not None and out.admit():
            state = State.CRITICAL if jnx_state == 6 else State.WARNING if jnx_state == 1 else State.OK
            _failed_part(out, kind, out.unique(name, index, kind), state,
                         JNX_WORDS.get(jnx_state, str(jnx_state)))
    _arista_thresholds(out, tables, _entity_sensors(out, tables, ENT_SENSOR))
    _cisco_thresholds(out, tables, _entity_sensors(out, tables, CISCO_SENSOR))
    # MikroTik: the gauge table (RouterOS 6.4x+), else the older scalars (tenths).
    if get(MT_GAUGE_VALUE):
        for index, raw in sorted(get(MT_GAUGE_VALUE).items()):
            gauge = MT_KINDS.get(_int(get(MT_GAUGE_UNIT).get(index)) or 0)
            reading = _int(raw)
            if gauge is not None and reading is not None:
                name = out.unique(_name(get(MT_GAUGE_NAME).get(index), f"gauge {index[0]}"), index)
                out.sensor(name, gauge[0], reading * gauge[2], gauge[1])
    else:
        for name, oid, metric, unit in (("temperature", MT_TEMPERATURE, "temperature_celsius", "°C"),
                                        ("cpu temperature", MT_CPU_TEMPERATURE, "temperature_celsius", "°C"),
                                        ("voltage", MT_VOLTAGE, "volts", "V")):
            value = _int(scalars.get((*oid, 0)))
            if value is not None:
                out.sensor(name, metric, value / 10.0, unit)


def _entity_sensors(out: _Out, tables: Tables, base: Oid) -> dict[Oid, tuple[str, str, str, float]]:
    """ENTITY-SENSOR-MIB (or CISCO-ENTITY-SENSOR-MIB, same columns under `base`): value x
    10^(3 (scale - 9) - precision). Returns {index: (name, metric, unit, scale factor)}."""
    get = lambda n: tables.get((*base, n), {})  # noqa: E731
    names, descrs = tables.get(ENT_PHYSICAL_NAME, {}), tables.get(ENT_PHYSICAL_DESCR, {})
    found = {}
    for index, kind_code in sorted(get(1).items()):
        kind = ENT_KINDS.get(_int(kind_code) or 0)
        raw, scale = _int(get(4).get(index)), _int(get(2).get(index)) or 9
        precision, oper = _int(get(3).get(index)) or 0, _int(get(5).get(index))
        if kind is None or raw is None or oper == 2 or not 1 <= scale <= 17:  # unavailable
            continue
        label = _name(names.get(index), "") or _name(descrs.get(index), f"#{index[0]}")  # "sensor #25866"
        name = out.unique(label, index)
        factor = 10.0 ** (3 * (scale - 9) - max(0, min(precision, 9)))
        value = raw * factor
        if not out.sensor(name, kind[0], round(value, 6), kind[1]):
            continue
        found[index] = (name, *kind, factor)
        if kind[0] == "fan_rpm" and oper is not None:
            failed = oper == 3
            _failed_part(out, "fan", out.unique(name, index, "fan"),
                         State.CRITICAL if failed else State.OK,
                         "not operational" if failed else f"turning at {value:.0f} rpm")
    return found


def _cisco_thresholds(out: _Out, tables: Tables, sensors: dict[Oid, tuple[str, str, str, float]]) -> None:
    """The device's own thresholds of its sensors: a check per sensor that has some."""
    get = lambda column: tables.get(column, {})  # noqa: E731
    limits: dict[Oid, list[tuple[int, str, float, bool]]] = {}
    for index, severity in get(CISCO_T_SEVERITY).items():
        relation = CISCO_RELATION.get(_int(get(CISCO_T_RELATION).get(index)) or 0)
        raw_limit, level = _int(get(CISCO_T_VALUE).get(index)), _int(severity)
        if level in CISCO_SEVERITY and relation and raw_limit is not None and index[:-1] in sensors:
            hit = get(CISCO_T_EVALUATION).get(index) == 1
            limits.setdefault(index[:-1], []).append((level, relation, float(raw_limit), hit))
    for index, rows in sorted(limits.items()):
        _, _, unit, factor = sensors[index]
        value = _int(get((*CISCO_SENSOR, 4)).get(index)) or 0
        hits = sorted((r for r in rows if r[3]), reverse=True)
        crossed = None
        if hits:
            level, relation, limit, _ = hits[0]
            state, word = CISCO_SEVERITY[level]
            crossed = (state, f"{word} threshold: {relation} {limit * factor:g} {unit}")
        levels = ", ".join(f"{CISCO_SEVERITY[s][1]} {r} {v * factor:g} {unit}" for s, r, v, _ in sorted(rows))
        _threshold_check(out, sensors[index], value, crossed, levels)


def _arista_thresholds(out: _Out, tables: Tables, sensors: dict[Oid, tuple[str, str, str, float]]) -> None:
    """Arista's thresholds of its ENTITY-SENSOR rows: a check per sensor that has some; the
    device's own words ("below the low critical threshold") decide, as in its CLI."""
    for index, sensor in sorted(sensors.items()):
        limits = {n: v for n in ARISTA_LIMITS
                  if (v := _int(tables.get((*ARISTA_THRESHOLD, n), {}).get(index))) is not None
                  and abs(v) < ARISTA_UNSET}
        value = _int(tables.get(ENT_VALUE, {}).get(index))
        if not limits or value is None:
            continue
        _, _, unit, factor = sensor
        hit = next(((state, f"{'below' if side < 0 else 'above'} the {word} threshold "
                     f"{limits[n] * factor:g} {unit}")
                    for n, (state, word, side) in ARISTA_LIMITS.items()
                    if n in limits and (value - limits[n]) * side > 0), None)
        levels = ", ".join(f"{ARISTA_LIMITS[n][1]} {limits[n] * factor:g} {unit}" for n in sorted(limits))
        _threshold_check(out, sensor, value, hit, levels)


def _threshold_check(out: _Out, sensor: tuple[str, str, str, float], raw: int,
                     hit: tuple[State, str] | None, levels: str) -> None:
    """Check "temperature NAME" (or "sensor NAME") of a sensor with the device's own limits:
    `hit` (state, words) when one is crossed, else OK with all of them."""
    name, metric, unit, factor = sensor
    what = "temperature" if metric == "temperature_celsius" else "sensor"
    shown = f"{raw * factor:g} {unit}"
    if hit is not None:
        out.check(f"{what} {name}", hit[0], f"{name} is {shown} ({hit[1]})")
    else:
        out.check(f"{what} {name}", State.OK, f"{name} is {shown} (thresholds: {levels})")


def interpret(target: str, scalars: dict[Oid, object], tables: dict[Oid, dict[Oid, object]],
              now: float, bgp: snmp_bgp.BgpWatch, storage: StorageLimits | None = None
              ) -> tuple[Batch, Found]:
    """One poll's values -> measurements and checks (pure but for `bgp`'s history)."""
    out = _Out(target, now)
    reading = ups.from_snmp(scalars, tables)
    if reading is not None:
        out.found.ups = reading.source
        out.batch.add(ups.ups_batch(target, reading, now))
    peers = snmp_bgp.peers_from_tables(tables)
    out.found.bgp_peers = len(peers)
    out.batch.add(bgp.batch(target, peers, now))
    _cpu_and_memory(out, scalars, tables, storage or StorageLimits())
    _sensors(out, scalars, tables)
    return out.batch, out.found


Tables = dict[Oid, dict[Oid, object]]


async def read(client: Client, columns: Sequence[Oid], names: Tables | None = None
               ) -> tuple[dict[Oid, object], Tables, str]:
    """The scalars and `columns` of the health MIBs, a few columns per walk; the sensors'
    entPhysicalName/Descr too unless `names` (of an earlier poll) are given. The third item
    says why the walks stopped short of the end ("" if they did not)."""
    scalars: dict[Oid, object] = {}
    tables: dict[Oid, dict[Oid, object]] = {}
    chunks = [columns[i:i + COLUMNS_PER_WALK] for i in range(0, len(columns), COLUMNS_PER_WALK)]
    for k, chunk in enumerate(chunks or [[]]):
        asked = SCALARS if k == 0 else []  # with the first request: one round trip fewer
        # About 250 values per answer, as the interface walk asks.
        reps = max(1, min(50, (VALUES_PER_REQUEST - len(asked)) // max(1, len(chunk))))
        walk = await walk_columns(client, chunk, scalars=asked, max_repetitions=reps,
                                  max_rows=MAX_ROWS)
        scalars.update(walk.scalars)
        tables.update(walk.tables)
        if walk.stopped:
            return scalars, tables, walk.stopped
    if names is not None:
        tables.update(names)
    elif tables.get(ENT_TYPE) or tables.get((*CISCO_SENSOR, 1)):  # names: for sensors only
        walk = await walk_columns(client, [ENT_PHYSICAL_NAME, ENT_PHYSICAL_DESCR], max_repetitions=25,
                                  max_rows=MAX_ROWS)
        tables.update(walk.tables)
        return scalars, tables, walk.stopped
    return scalars, tables, ""


@dataclass
class DeviceHealth:
    """One device's health reading across polls (which columns it has, BGP history)."""

    bgp: snmp_bgp.BgpWatch = field(default_factory=snmp_bgp.BgpWatch)
    storage: StorageLimits = field(default_factory=StorageLimits)
    present: list[Oid] | None = None  # the columns that had rows at the last survey
    surveyed_at: float | None = None
    found: Found = field(default_factory=Found)
    cpu_ticks: tuple[int, int] | None = None  # UCD raw CPU counters: (busy, total) last poll
    names: Tables | None = None  # ENTITY-MIB names of the sensors, read at the survey

    async def poll(self, client: Client, target: str, now: float) -> Batch:
        survey = (self.present is None or self.surveyed_at is None
                  or now - self.surveyed_at >= SURVEY_INTERVAL)
        columns = COLUMNS if survey else self.present or []
        try:
            scalars, tables, stopped = await read(client, columns, None if survey else self.names)
        except SnmpError as exc:
            # Its interfaces answered: a device that refuses or drops these walks says so
            # (`discover` prints it), rather than looking like one without a UPS or BGP.
            problem = exc.message
            if exc.kind == "timeout":  # not "wrong community": the interface walk just worked
                e = client.endpoint
                problem = (f"no SNMP response from {e.where} to these requests ({e.timeout:g} s "
                           f"x {e.retries} retries) though its interfaces answered: an agent "
                           "slow on some tables?")
            log.info("%s: UPS, BGP and health MIBs not read: %s", target, problem)
            self.found = Found(problem=problem)
            return Batch()
        if stopped:
            log.info("%s: UPS, BGP and health MIBs read in part: %s", target, stopped)
        try:
            batch, self.found = interpret(target, scalars, tables, now, self.bgp, self.storage)
        except Exception:  # a device's data we did not foresee: its interfaces still count
            log.exception("%s: cannot interpret its UPS/BGP/health tables", target)
            self.found = Found(problem="its tables could not be interpreted (see the agent's log)")
            return Batch()
        self.found.problem = stopped
        if self.found.sensors_dropped and survey:
            log.warning("%s: %d sensors, fans and power supplies kept, %d more not (at most %d "
                        "per device)", target, self.found.sensors, self.found.sensors_dropped,
                        MAX_SENSORS)
        if survey:
            self.names = {c: tables.get(c, {}) for c in (ENT_PHYSICAL_NAME, ENT_PHYSICAL_DESCR)}
            # A family's columns go together: a UPS's alarm table or a peer's prefix counts
            # may be empty now and have rows at the next poll.
            had = {c for c in COLUMNS if tables.get(c)}
            for family in (ups.COLUMNS, snmp_bgp.COLUMNS):
                if had & set(family) or (family is ups.COLUMNS and self.found.ups):
                    had |= set(family)
            self.present = [c for c in COLUMNS if c in had]
            self.surveyed_at = now
        if not any(m.metric == "cpu_percent" for m in batch.measurements):
            self.ucd_cpu(target, scalars, now, batch)
        return batch

    def saved(self) -> dict[str, object]:
        """What a restart must keep: each BGP peer's history (for "was up 41 days" and the
        prefix baseline) and the UCD CPU ticks. The survey is redone."""
        return {"bgp": {a: dataclasses.asdict(h) for a, h in self.bgp.peers.items()},
                "cpu_ticks": self.cpu_ticks}

    def restore(self, data: object) -> None:
        """The inverse of `saved` (an unreadable part is dropped, never an error)."""
        if not isinstance(data, dict):
            return
        peers = data.get("bgp")
        try:
            if isinstance(peers, dict):
                self.bgp.peers = {str(a): snmp_bgp.PeerHistory(**h) for a, h in peers.items()}
            ticks = data.get("cpu_ticks")
            self.cpu_ticks = (int(ticks[0]), int(ticks[1])) if isinstance(ticks, list) else None
        except (TypeError, ValueError, IndexError):
            self.bgp.peers, self.cpu_ticks = {}, None

    def ucd_cpu(self, target: str, scalars: dict[Oid, object], now: float, batch: Batch) -> None:
        """net-snmp's CPU share from its raw tick counters (two polls needed)."""
        ticks = {oid: _int(scalars.get((*oid, 0))) for oid in UCD_CPU_RAW}
        if ticks[UCD_CPU_RAW[0]] is None:
            return
        total = sum(v or 0 for v in ticks.values())
        busy = total - sum(ticks[oid] or 0 for oid in UCD_CPU_RAW_IDLE)
        last, self.cpu_ticks = self.cpu_ticks, (busy, total)
        if last is not None and total > last[1] and busy >= last[0]:  # no counter wrap/reset
            share = 100.0 * (busy - last[0]) / (total - last[1])
            batch.add(Measurement(target, "cpu", "cpu_percent", share, Kind.GAUGE, "%", now))


@dataclass
class ErrorWatch:
    """The default link-error rule: in or out errors above `percent` of that direction's
    packets for `duration` seconds is WARNING (errors below one per 100 s are noise)."""

    percent: float
    duration: float
    since: dict[str, float] = field(default_factory=dict)

    def judge(self, identity: str, rates: dict[str, float | None], now: float) -> tuple[State, str]:
        worst = 0.0
        for side in ("in", "out"):
            errors = rates.get(f"{side}_errors")
            packets = sum(rates.get(f"{side}_{k}_packets") or 0.0 for k in ("ucast", "mcast", "bcast"))
            if errors is not None and errors >= 0.01 and errors + packets > 0:
                worst = max(worst, 100 * errors / (errors + packets))
        if not self.percent or worst < self.percent:
            self.since.pop(identity, None)
            return State.OK, ""
        start = self.since.setdefault(identity, now)
        if now - start < self.duration:
            return State.OK, ""
        return State.WARNING, (f"; {worst:.2g} % of packets with errors, above {self.percent:g} % "
                               f"for {format_duration(now - start)}")
