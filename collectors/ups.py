"""What a UPS says, whoever asked: UPS-MIB (RFC 1628) and APC PowerNet over SNMP, NUT over TCP.

Each source is read into one `UpsReading`; `ups_batch` turns a reading into the measurements
(instance "ups") and the one "ups" check every source shares, so a UPS on a network card and a
UPS on USB behind upsd page the same way:

- on battery: CRITICAL at once, with the runtime left first ("UPS on battery, 23m runtime left
  (Smart-UPS 750, charge 90 %)") because that is what the person woken at 3 a.m. needs to
  decide, and a lock screen shows only the start of the subject;
- battery low (on line), battery needs replacing, on bypass: WARNING;
- on line, or in a battery self-test (on battery by design: APC's onBatteryTest, UPS-MIB's
  upsAlarmTestInProgress): OK, with charge, runtime and load.

Metrics (instance "ups"): on_battery (1/0), battery_charge_percent, runtime_seconds,
input_volts, output_volts, load_percent, temperature_celsius.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from collectors.snmp_ber import Missing, Oid
from monitor.model import Batch, CheckResult, Kind, Measurement, State
from monitor.text import clean
from monitor.units import format_duration

# Power states, in the words of the messages.
ONLINE, BATTERY, BYPASS, OFF, UNKNOWN = "on line", "on battery", "on bypass", "off", "unknown"
SELF_TEST = "in a battery self-test"

METRICS = {  # field -> (metric, unit)
    "charge_percent": ("battery_charge_percent", "%"),
    "runtime_seconds": ("runtime_seconds", "s"),
    "input_volts": ("input_volts", "V"),
    "output_volts": ("output_volts", "V"),
    "load_percent": ("load_percent", "%"),
    "temperature_celsius": ("temperature_celsius", "°C"),
}


@dataclass(frozen=True, slots=True)
class UpsReading:
    """One look at one UPS. `source` names the protocol ("UPS-MIB", "APC PowerNet", "NUT")."""

    source: str
    power: str = UNKNOWN
    battery_low: bool = False
    replace_battery: bool = False
    model: str = ""
    charge_percent: float | None = None
    runtime_seconds: float | None = None
    on_battery_seconds: float | None = None
    input_volts: float | None = None
    output_volts: float | None = None
    load_percent: float | None = None
    temperature_celsius: float | None = None


def _minutes(seconds: float) -> str:
    return format_duration(round(seconds / 60) * 60) if seconds >= 60 else f"{seconds:.0f} s"


def verdict(r: UpsReading) -> tuple[State, str]:
    """The state and the one-line message: the power state and runtime first, the model and
    readings after (a phone's lock screen shows the subject's first 40 or so characters)."""
    facts = [clean(r.model, 40)] if r.model else []
    if r.charge_percent is not None:
        facts.append(f"charge {r.charge_percent:.0f} %")
    if r.load_percent is not None:
        facts.append(f"load {r.load_percent:.0f} %")
    if r.input_volts is not None:
        facts.append(f"input {r.input_volts:.0f} V")
    detail = f" ({', '.join(facts)})" if facts else ""  # "(Smart-UPS 750, charge 90 %, ...)"
    runtime = (f", {_minutes(r.runtime_seconds)} runtime left" if r.runtime_seconds is not None
               else ", runtime unknown")
    if r.power == BATTERY:
        low = ", battery LOW" if r.battery_low else ""
        since = (f", for {_minutes(r.on_battery_seconds)}" if r.on_battery_seconds else "")
        return State.CRITICAL, f"on battery{runtime}{low}{since}{detail}"
    problems = []
    state = State.OK
    if r.power == BYPASS:
        problems.append("on bypass: the load is not protected")
    if r.battery_low:
        problems.append("battery low")
    if r.replace_battery:
        problems.append("battery needs replacing")
    if problems:
        state = State.WARNING
    elif r.power in (OFF, UNKNOWN):
        return State.UNKNOWN, f"power state {r.power} ({', '.join([r.source, *facts])})"
    lead = "; ".join(problems) if problems else r.power
    left = f", runtime {_minutes(r.runtime_seconds)}" if r.runtime_seconds is not None else ""
    return state, f"{lead}{left}{detail}"


def ups_batch(target: str, reading: UpsReading, now: float | None = None) -> Batch:
    """The measurements (instance "ups") and the "ups" check of one reading."""
    now = time.time() if now is None else now
    batch = Batch()
    if reading.power != UNKNOWN:
        batch.add(Measurement(target, "ups", "on_battery", 1.0 if reading.power == BATTERY else 0.0,
                              Kind.GAUGE, "", now, 0, 1))
    for name, (metric, unit) in METRICS.items():
        value = getattr(reading, name)
        if value is not None:
            batch.add(Measurement(target, "ups", metric, value, Kind.GAUGE, unit, now))
    state, message = verdict(reading)
    batch.add(CheckResult(target, "ups", state, f"UPS {message}", timestamp=now))
    return batch


# -- UPS-MIB (RFC 1628) and APC PowerNet over SNMP ---------------------------------------------

UPS_MIB = (1, 3, 6, 1, 2, 1, 33, 1)
UPS_MODEL, UPS_BATTERY_STATUS = (*UPS_MIB, 1, 2), (*UPS_MIB, 2, 1)
UPS_SECONDS_ON_BATTERY, UPS_MINUTES_LEFT = (*UPS_MIB, 2, 2), (*UPS_MIB, 2, 3)
UPS_CHARGE, UPS_TEMPERATURE = (*UPS_MIB, 2, 4), (*UPS_MIB, 2, 7)
UPS_OUTPUT_SOURCE = (*UPS_MIB, 4, 1)
UPS_INPUT_VOLTAGE = (*UPS_MIB, 3, 3, 1, 3)
UPS_OUTPUT_VOLTAGE, UPS_OUTPUT_LOAD = (*UPS_MIB, 4, 4, 1, 2), (*UPS_MIB, 4, 4, 1, 5)
UPS_ALARM_DESCR = (*UPS_MIB, 6, 2, 1, 2)
UPS_ALARM_BATTERY_BAD = (*UPS_MIB, 6, 3, 1)
UPS_ALARM_LOW_BATTERY = (*UPS_MIB, 6, 3, 3)
UPS_ALARM_TEST_IN_PROGRESS = (*UPS_MIB, 6, 3, 14)

APC = (1, 3, 6, 1, 4, 1, 318, 1, 1, 1)
APC_MODEL = (*APC, 1, 1, 1)
APC_BATTERY_STATUS, APC_TIME_ON_BATTERY = (*APC, 2, 1, 1), (*APC, 2, 1, 2)
APC_CAPACITY, APC_TEMPERATURE = (*APC, 2, 2, 1), (*APC, 2, 2, 2)
APC_RUNTIME, APC_REPLACE = (*APC, 2, 2, 3), (*APC, 2, 2, 4)
APC_INPUT_VOLTAGE = (*APC, 3, 2, 1)
APC_OUTPUT_STATUS, APC_OUTPUT_VOLTAGE, APC_OUTPUT_LOAD = (*APC, 4, 1, 1), (*APC, 4, 2, 1), (*APC, 4, 2, 3)
# The "high precision" variants (tenths) of newer network cards, preferred when present.
APC_HP_CAPACITY, APC_HP_TEMPERATURE = (*APC, 2, 3, 1), (*APC, 2, 3, 2)
APC_HP_INPUT_VOLTAGE = (*APC, 3, 3, 1)
APC_HP_OUTPUT_VOLTAGE, APC_HP_OUTPUT_LOAD = (*APC, 4, 3, 1), (*APC, 4, 3, 3)

# Asked as scalars (GET-NEXT: the .0 instance comes back when the device has it).
SCALARS = [UPS_MODEL, UPS_BATTERY_STATUS, UPS_SECONDS_ON_BATTERY, UPS_MINUTES_LEFT, UPS_CHARGE,
           UPS_TEMPERATURE, UPS_OUTPUT_SOURCE,
           APC_MODEL, APC_BATTERY_STATUS, APC_TIME_ON_BATTERY, APC_CAPACITY, APC_TEMPERATURE,
           APC_RUNTIME, APC_REPLACE, APC_INPUT_VOLTAGE, APC_OUTPUT_STATUS, APC_OUTPUT_VOLTAGE,
           APC_OUTPUT_LOAD, APC_HP_CAPACITY, APC_HP_TEMPERATURE, APC_HP_INPUT_VOLTAGE,
           APC_HP_OUTPUT_VOLTAGE, APC_HP_OUTPUT_LOAD]
COLUMNS = [UPS_INPUT_VOLTAGE, UPS_OUTPUT_VOLTAGE, UPS_OUTPUT_LOAD, UPS_ALARM_DESCR]

# upsOutputSource: other(1) none(2) normal(3) bypass(4) battery(5) booster(6) reducer(7)
UPS_MIB_POWER = {1: UNKNOWN, 2: OFF, 3: ONLINE, 4: BYPASS, 5: BATTERY, 6: ONLINE, 7: ONLINE}
# upsBasicOutputStatus: onLine(2) onBattery(3) onSmartBoost(4) timedSleeping(5)
# softwareBypass(6) off(7) rebooting(8) switchedBypass(9) hardwareFailureBypass(10)
# sleepingUntilPowerReturn(11) onSmartTrim(12) ecoMode(13) hotStandby(14) onBatteryTest(15)
# emergencyStaticBypass(16) staticBypassStandby(17) eConversion(20) selfTest(28) (others: unknown).
# A self-test is on battery by design (the card schedules one every two weeks): not a power cut.
APC_POWER = {2: ONLINE, 3: BATTERY, 4: ONLINE, 5: OFF, 6: BYPASS, 7: OFF, 8: OFF, 9: BYPASS,
             10: BYPASS, 11: OFF, 12: ONLINE, 13: ONLINE, 14: ONLINE, 15: SELF_TEST, 16: BYPASS,
             17: BYPASS, 20: ONLINE, 28: SELF_TEST}


def _scalar(scalars: dict[Oid, object], oid: Oid) -> int | None:
    value = scalars.get((*oid, 0))
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _text(scalars: dict[Oid, object], oid: Oid) -> str:
    value = scalars.get((*oid, 0))
    if isinstance(value, Missing) or value is None:
        return ""
    return clean(value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value), 60)


def _first(column: dict[Oid, object]) -> int | None:
    for _, value in sorted(column.items()):
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    return None


def _percent(value: int | None) -> float | None:
    return float(value) if value is not None and 0 <= value <= 1000 else None


def from_snmp(scalars: dict[Oid, object], tables: dict[Oid, dict[Oid, object]]) -> UpsReading | None:
    """The UPS a device describes (APC PowerNet first: more precise), None if it is not one."""
    apc_status = _scalar(scalars, APC_OUTPUT_STATUS)
    if apc_status is not None:
        def value(precise: Oid, plain: Oid) -> float | None:
            tenths = _scalar(scalars, precise)
            return tenths / 10 if tenths is not None else _float(_scalar(scalars, plain))

        runtime = _scalar(scalars, APC_RUNTIME)
        on_battery = _scalar(scalars, APC_TIME_ON_BATTERY)
        charge, load = value(APC_HP_CAPACITY, APC_CAPACITY), value(APC_HP_OUTPUT_LOAD, APC_OUTPUT_LOAD)
        return UpsReading(
            "APC PowerNet", APC_POWER.get(apc_status, UNKNOWN),
            battery_low=_scalar(scalars, APC_BATTERY_STATUS) == 3,
            replace_battery=_scalar(scalars, APC_REPLACE) == 2,
            model=_text(scalars, APC_MODEL),
            charge_percent=charge if charge is not None and 0 <= charge <= 100 else None,
            runtime_seconds=runtime / 100 if runtime is not None else None,  # TimeTicks
            on_battery_seconds=on_battery / 100 if on_battery is not None else None,
            input_volts=value(APC_HP_INPUT_VOLTAGE, APC_INPUT_VOLTAGE),
            output_volts=value(APC_HP_OUTPUT_VOLTAGE, APC_OUTPUT_VOLTAGE),
            load_percent=load if load is not None and 0 <= load <= 1000 else None,
            temperature_celsius=value(APC_HP_TEMPERATURE, APC_TEMPERATURE),
        )
    source = _scalar(scalars, UPS_OUTPUT_SOURCE)
    status = _scalar(scalars, UPS_BATTERY_STATUS)
    if source is None and status is None:
        return None
    alarms = {v for v in tables.get(UPS_ALARM_DESCR, {}).values() if isinstance(v, tuple)}
    minutes = _scalar(scalars, UPS_MINUTES_LEFT)
    seconds = _scalar(scalars, UPS_SECONDS_ON_BATTERY)
    power = UPS_MIB_POWER.get(source, UNKNOWN) if source is not None else UNKNOWN
    if power == BATTERY and UPS_ALARM_TEST_IN_PROGRESS in alarms:
        power = SELF_TEST  # on battery by design, not a power cut
    return UpsReading(
        "UPS-MIB", power,
        battery_low=status in (3, 4) or UPS_ALARM_LOW_BATTERY in alarms,
        replace_battery=UPS_ALARM_BATTERY_BAD in alarms,
        model=_text(scalars, UPS_MODEL),
        charge_percent=_percent(_scalar(scalars, UPS_CHARGE)),
        runtime_seconds=minutes * 60.0 if minutes is not None else None,
        on_battery_seconds=float(seconds) if seconds else None,
        input_volts=_float(_first(tables.get(UPS_INPUT_VOLTAGE, {}))),
        output_volts=_float(_first(tables.get(UPS_OUTPUT_VOLTAGE, {}))),
        load_percent=_percent(_first(tables.get(UPS_OUTPUT_LOAD, {}))),
        temperature_celsius=_float(_scalar(scalars, UPS_TEMPERATURE)),
    )


def _float(value: int | None) -> float | None:
    return None if value is None else float(value)
