"""SMART health through `smartctl --json` (smartmontools 7 or later).

smartctl runs by absolute path with a fixed argv, `smartctl --json -a -n standby [-d TYPE] DEV`,
where DEV passed `parse_smart_device` (under /dev, no "..", no odd characters) - device names
from `smartctl --scan-open` are checked the same way. "-n standby" makes smartctl skip a drive
that is spun down instead of waking it.

smartctl's exit status is a bit mask (smartctl(8), "RETURN VALUES"); each bit means something
different and several can be set at once, so it is decoded bit by bit, not read as zero/non-zero.

A growing count of reallocated sectors (ATA) or media errors (NVMe) is the classic early sign
of a dying disk, so the last count per disk is kept in a small JSON state file; growth gives a
WARNING that stays for `growth_hold` seconds so it is not lost between two runs. NVMe media
errors and SAS uncorrected errors (read/write/verify) above zero are a WARNING even without
growth: each is data the drive could not deliver.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from monitor.config import parse_smart_device
from monitor.files import atomic_write
from monitor.model import CheckResult, Measurement, State
from monitor.text import clean

EXIT_BITS = {
    0: "smartctl did not accept its command line",
    1: "the device could not be opened, or it is in a low-power mode",
    2: "a command to the disk failed, or SMART data had a checksum error",
    3: "SMART status: DISK FAILING",
    4: "pre-failure attributes are at or below their threshold",
    5: "some attributes were at or below their threshold in the past",
    6: "the device error log contains errors",
    7: "the self-test log contains errors",
}
NVME_WARNINGS = {
    0x01: "available spare below threshold",
    0x02: "temperature outside its limits",
    0x04: "NVM subsystem reliability degraded",
    0x08: "media placed in read-only mode",
    0x10: "volatile memory backup failed",
    0x20: "persistent memory region unreliable",
}
_TYPE_RE = re.compile(r"^[A-Za-z0-9_,+-]+$")


@dataclass(frozen=True, slots=True)
class SmartDevice:
    path: str
    type: str | None = None

    @classmethod
    def parse(cls, text: str) -> SmartDevice:
        path, dtype = parse_smart_device(text)
        return cls(path, dtype)

    @property
    def addressed(self) -> bool:
        """True when the type picks one disk behind a controller ("megaraid,3", "cciss,0")."""
        return bool(self.type and "," in self.type)

    @property
    def label(self) -> str:
        # Only an addressing type belongs in the name: "/dev/sda" stays "/dev/sda" whether it
        # was detected (type "sat") or listed without a type, so its history and graphs match.
        return f"{self.path} -d {self.type}" if self.addressed else self.path

    @property
    def instance(self) -> str:
        name = self.path.removeprefix("/dev/")
        return f"smart:{name}" + (f" {self.type}" if self.addressed else "")

    def argv(self, smartctl: str) -> list[str]:
        return [smartctl, "--json", "-a", "-n", "standby",
                *(["-d", self.type] if self.type else []), self.path]


@dataclass(frozen=True)
class SmartLimits:
    temperature_warning: float = 60.0
    temperature_critical: float = 70.0
    wear_warning: float = 90.0
    growth_hold: float = 86400.0


def decode_exit_status(status: int) -> list[str]:
    return [text for bit, text in EXIT_BITS.items() if status & (1 << bit)]


async def run_smartctl(argv: list[str], timeout: float) -> tuple[int, dict | None, str]:
    """(exit status, parsed JSON or None, stderr) of one smartctl run, killed after `timeout`."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"},
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
        await proc.wait()
        raise
    try:
        data = json.loads(out)
        if not isinstance(data, dict):
            data = None
    except ValueError:
        data = None
    return proc.returncode or 0, data, err.decode("utf-8", "replace")


def _messages(data: dict | None) -> list[str]:
    if not data:
        return []
    msgs = data.get("smartctl", {}).get("messages", [])
    return [clean(m.get("string", "")) for m in msgs if isinstance(m, dict)]


def _privilege_hint() -> str:
    if os.geteuid() == 0:
        return ("SMART needs raw access to the disk, which even root lacks here (a container "
                "without the device, or a restricted VM?)")
    return (f"SMART needs raw access to the disk and the agent runs as uid {os.geteuid()}; run "
            "it as root or with CAP_SYS_RAWIO and read access to the device")


def scan_result(target: str, status: int, data: dict | None, stderr: str, smartctl: str,
                now: float) -> tuple[list[SmartDevice], CheckResult | None]:
    """Devices from `smartctl --scan-open --json`, or the one UNKNOWN saying why there are none."""
    def unknown(text: str) -> tuple[list[SmartDevice], CheckResult]:
        return [], CheckResult(target, "smart", State.UNKNOWN, text, timestamp=now)

    if data is None:
        first = clean((stderr.strip().splitlines() or ["no output"])[0], 200)
        return unknown(f"{smartctl} --scan-open --json printed no JSON (exit {status}: {first}); "
                       "smartmontools 7 or later is needed")
    devices: list[SmartDevice] = []
    denied: list[str] = []
    for entry in data.get("devices", []) or []:
        if not isinstance(entry, dict):
            continue
        name, dtype = str(entry.get("name", "")), entry.get("type")
        error = entry.get("open_error")
        if error:
            if "permission" in str(error).lower():
                denied.append(clean(name))
            continue
        try:
            path, _ = parse_smart_device(name)
        except ValueError:
            continue  # a name we will not put on a command line
        if not (isinstance(dtype, str) and _TYPE_RE.match(dtype)):
            dtype = None
        device = SmartDevice(path, dtype)
        if all(d.label != device.label for d in devices):
            devices.append(device)
    if devices:
        return devices, None
    if denied:
        return unknown(f"smartctl cannot open {', '.join(denied)}: permission denied; "
                       + _privilege_hint())
    return unknown("smartctl --scan-open found no disks that report SMART (a virtual machine or "
                   'container?); set [disks] smart = "off" to drop this check, or list devices')


def _attributes(data: dict) -> dict[int, dict]:
    table = data.get("ata_smart_attributes", {}).get("table", []) or []
    return {a["id"]: a for a in table if isinstance(a, dict) and isinstance(a.get("id"), int)}


def _raw(attrs: dict[int, dict], attr_id: int) -> int | None:
    value = attrs.get(attr_id, {}).get("raw", {}).get("value")
    return value if isinstance(value, int) else None


def _growth(previous: dict, name: str, value: int | None, now: float, hold: float,
            ) -> tuple[dict | None, str | None]:
    """New history entry for one counter, and a warning text while a recent growth is held."""
    if value is None:
        return previous.get(name), None
    entry = dict(previous.get(name) or {"value": value})
    old = entry.get("value", value)
    if value > old:
        entry.update(grew_from=old, grew_at=now)
    entry["value"] = value
    grew_at = entry.get("grew_at")
    if grew_at is not None and now - grew_at < hold:
        when = time.strftime("%Y-%m-%d %H:%M", time.localtime(grew_at))
        return entry, f"grew from {entry['grew_from']} to {value} (at {when})"
    return entry, None


def interpret(target: str, device: SmartDevice, status: int, data: dict | None, stderr: str,
              previous: dict, limits: SmartLimits, now: float) -> tuple[CheckResult, dict]:
    """One disk's smartctl result -> (check with measurements, new history entry for the disk).

    Pure: the caller runs smartctl and keeps the history.
    """
    check = f"smart {device.label}"

    def result(state: State, text: str, ms: tuple[Measurement, ...] = ()) -> CheckResult:
        return CheckResult(target, check, state, text, ms, now)

    messages = _messages(data)
    detail = "; ".join(messages) or clean((stderr.strip().splitlines() or [""])[0], 200)
    if data is None:
        return result(State.UNKNOWN, f"smartctl printed no JSON for {device.label} (exit {status}: "
                      f"{detail or 'no output'}); smartmontools 7 or later is needed"), previous
    if status & 0x01:
        return result(State.UNKNOWN, f"smartctl refused {device.label} (exit {status}: "
                      f"{detail or EXIT_BITS[0]}); check the device name and its -d type"), previous
    if status & 0x02:
        if any("mode, exit(" in m or "STANDBY" in m or "SLEEP" in m for m in messages):
            return result(State.OK, f"{device.label} is spun down ({detail}); not woken, "
                          "SMART read skipped"), previous
        if "permission" in detail.lower() or "operation not permitted" in detail.lower():
            return result(State.UNKNOWN, f"smartctl cannot open {device.label}: permission "
                          f"denied; {_privilege_hint()}"), previous
        return result(State.UNKNOWN, f"smartctl cannot open {device.label}: "
                      f"{detail or 'device open failed'}"), previous

    protocol = str(data.get("device", {}).get("protocol", ""))
    model = clean(data.get("model_name", "")) or "unknown model"
    passed = data.get("smart_status", {}).get("passed")
    temperature = data.get("temperature", {}).get("current")
    hours = data.get("power_on_time", {}).get("hours")
    instance = device.instance

    def m(metric: str, value: Any, unit: str = "", maximum: float | None = None) -> Measurement:
        v = float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None
        return Measurement(target, instance, metric, v, unit=unit, timestamp=now, minimum=0,
                           maximum=maximum)

    problems: list[tuple[State, str]] = []
    facts: list[str] = []
    history: dict = dict(previous)
    ms = [m("health_ok", None if passed is None else int(bool(passed)), "", 1),
          m("temperature_celsius", temperature, "C"), m("power_on_hours", hours, "h")]

    if status & 0x08 or passed is False:
        problems.append((State.CRITICAL, "SMART overall health FAILED: back up and replace the disk"))
    attrs = _attributes(data)
    failing_now = [clean(a.get("name", a["id"])) for a in attrs.values() if a.get("when_failed") == "now"]
    failed_past = [clean(a.get("name", a["id"])) for a in attrs.values() if a.get("when_failed") == "past"]
    if status & 0x10 or failing_now:
        problems.append((State.CRITICAL, "attribute(s) at or below threshold now: "
                         + (", ".join(failing_now) or "see smartctl -a")))
    if status & 0x20 or failed_past:
        problems.append((State.WARNING, "attribute(s) were at or below threshold in the past: "
                         + (", ".join(failed_past) or "see smartctl -a")))
    if status & 0x40:
        count = data.get("ata_smart_error_log", {}).get("summary", {}).get("count")
        problems.append((State.WARNING, f"device error log has {count if count is not None else 'some'}"
                         " error(s)"))
    if status & 0x80:
        count = (data.get("ata_smart_self_test_log", {}).get("standard", {})
                 .get("error_count_total"))
        problems.append((State.WARNING, f"self-test log has {count if count is not None else 'some'}"
                         " failed test(s)"))

    if protocol == "NVMe" or "nvme_smart_health_information_log" in data:
        log = data.get("nvme_smart_health_information_log", {})
        warning = log.get("critical_warning", 0) or 0
        used = log.get("percentage_used")
        media = log.get("media_errors")
        ms += [m("critical_warning", warning), m("endurance_used_percent", used, "%"),
               m("media_errors", media), m("available_spare_percent", log.get("available_spare"), "%", 100)]
        if warning:
            names = [text for bit, text in NVME_WARNINGS.items() if warning & bit] or ["unknown bits"]
            problems.append((State.CRITICAL, f"NVMe critical warning 0x{warning:02x}: " + ", ".join(names)))
        if isinstance(used, int) and used >= limits.wear_warning:
            problems.append((State.WARNING, f"{used}% of rated endurance used"))
        entry, grew = _growth(previous, "media_errors", media, now, limits.growth_hold)
        if entry is not None:
            history["media_errors"] = entry
        if grew:
            problems.append((State.WARNING, f"media errors {grew}"))
        elif isinstance(media, int) and media > 0:
            # Data the drive could not read back, ever: not normal at any count.
            problems.append((State.WARNING, f"{media} media error(s) recorded (data the drive "
                                            "could not read back): back it up, plan a "
                                            "replacement"))
        facts += [f"{used}% endurance used" if used is not None else "",
                  f"{media} media errors" if media is not None else ""]
    elif protocol == "SCSI":
        # SAS/SCSI disks have no attribute table; the grown defect list is their reallocation count.
        grown = data.get("scsi_grown_defect_list")
        ms.append(m("grown_defects", grown))
        entry, grew = _growth(previous, "grown_defects", grown if isinstance(grown, int) else None,
                              now, limits.growth_hold)
        if entry is not None:
            history["grown_defects"] = entry
        if grew:
            problems.append((State.WARNING, f"grown defect list {grew}"))
        facts.append(f"{grown} grown defects" if grown is not None else "")
        # Errors the drive could not correct (read, write, verify): any is a lost block.
        counters = data.get("scsi_error_counter_log") or {}
        uncorrected = [(kind, counters[kind].get("total_uncorrected_errors"))
                       for kind in ("read", "write", "verify")
                       if isinstance(counters.get(kind), dict)]
        total = sum(n for _, n in uncorrected if isinstance(n, int))
        if uncorrected:
            ms.append(m("uncorrected_errors", total))
        if total > 0:
            which = ", ".join(f"{n} {kind}" for kind, n in uncorrected if isinstance(n, int) and n)
            problems.append((State.WARNING, f"{total} uncorrected error(s) ({which}): back it "
                                            "up, plan a replacement"))
    else:
        reallocated, pending, uncorrectable = _raw(attrs, 5), _raw(attrs, 197), _raw(attrs, 198)
        ms += [m("reallocated_sectors", reallocated), m("pending_sectors", pending),
               m("offline_uncorrectable_sectors", uncorrectable)]
        entry, grew = _growth(previous, "reallocated_sectors", reallocated, now, limits.growth_hold)
        if entry is not None:
            history["reallocated_sectors"] = entry
        if grew:
            problems.append((State.WARNING, f"reallocated sectors {grew}"))
        if pending:
            problems.append((State.WARNING, f"{pending} sector(s) pending reallocation (unreadable)"))
        if uncorrectable:
            problems.append((State.WARNING, f"{uncorrectable} offline-uncorrectable sector(s)"))
        facts += [f"{reallocated} reallocated" if reallocated is not None else "",
                  f"{pending} pending" if pending is not None else ""]

    if isinstance(temperature, int | float):
        if temperature >= limits.temperature_critical:
            problems.append((State.CRITICAL, f"temperature {temperature} °C (critical at "
                             f"{limits.temperature_critical:g} °C)"))
        elif temperature >= limits.temperature_warning:
            problems.append((State.WARNING, f"temperature {temperature} °C (warning at "
                             f"{limits.temperature_warning:g} °C)"))
    if status & 0x04:
        if passed is None:
            problems.append((State.UNKNOWN, f"SMART data could not be read ({detail or EXIT_BITS[2]})"))
        else:
            facts.append("some SMART commands failed")

    health = "PASSED" if passed else "FAILED" if passed is False else "health unknown"
    facts = [f for f in (health,
                         f"{temperature} °C" if temperature is not None else "",
                         f"{hours} h powered on" if hours is not None else "", *facts) if f]
    state = State.worst(s for s, _ in problems)
    problems.sort(key=lambda p: -p[0].severity)
    head = f"{device.label} {model} ({protocol or 'unknown protocol'})"
    text = head + ": " + "; ".join(t for _, t in problems) + (" | " if problems else "") + ", ".join(facts)
    return result(state, text, tuple(ms)), history


def disk_key(device: SmartDevice, data: dict | None) -> str:
    """History key: model and serial when known, so a swapped disk starts a fresh history."""
    if data and data.get("serial_number"):
        return f"{clean(data.get('model_name', ''))}:{clean(data['serial_number'])}"
    return device.label


class SmartHistory:
    """Last counters per disk in a small JSON file (data_dir/state/smart.json)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.disks: dict[str, dict] = {}
        self.loaded = False

    def load(self) -> None:
        """Read the file once (lazily: building collectors for check-config touches no files)."""
        if self.loaded:
            return
        self.loaded = True
        try:
            loaded = json.loads(self.path.read_text(encoding="utf-8"))
            if isinstance(loaded, dict):
                self.disks = {k: v for k, v in loaded.get("disks", {}).items() if isinstance(v, dict)}
        except (OSError, ValueError):
            pass  # no history yet, or unreadable: start afresh (growth is seen from now on)

    def save(self) -> None:
        atomic_write(self.path, json.dumps({"disks": self.disks}, indent=1, sort_keys=True))


class SmartCollector:
    """Runs smartctl on every configured (or detected) disk; one check per disk."""

    def __init__(self, target: str, smartctl: Path, devices: list[SmartDevice] | None,
                 state_file: Path, limits: SmartLimits, timeout: float = 60.0,
                 rescan: float = 3600.0, concurrency: int = 4,
                 clock: Callable[[], float] = time.time) -> None:
        self.target = target
        self.smartctl = str(smartctl)
        self.devices = devices  # None: detect with --scan-open
        self.history = SmartHistory(state_file)
        self.limits = limits
        self.timeout = timeout
        self.rescan = rescan
        self.concurrency = concurrency
        self.clock = clock
        self._scanned: tuple[float, list[SmartDevice], CheckResult | None] | None = None

    async def _devices(self) -> tuple[list[SmartDevice], CheckResult | None]:
        if self.devices is not None:
            return self.devices, None
        now = self.clock()
        if self._scanned is None or now - self._scanned[0] >= self.rescan or self._scanned[2]:
            try:
                status, data, err = await run_smartctl([self.smartctl, "--scan-open", "--json"],
                                                       self.timeout)
            except TimeoutError:
                return [], CheckResult(self.target, "smart", State.UNKNOWN,
                                       f"smartctl --scan-open did not finish within {self.timeout:g} s",
                                       timestamp=now)
            devices, problem = scan_result(self.target, status, data, err, self.smartctl, now)
            self._scanned = (now, devices, problem)
        _, devices, problem = self._scanned
        return devices, problem

    async def collect(self) -> list[CheckResult]:
        now = self.clock()
        if not os.path.isfile(self.smartctl) or not os.access(self.smartctl, os.X_OK):
            return [CheckResult(self.target, "smart", State.UNKNOWN,
                                f"smartctl not found at {self.smartctl}: install smartmontools "
                                "(apt-get install smartmontools) or set [disks] smartctl", timestamp=now)]
        devices, problem = await self._devices()
        if problem is not None:
            return [problem]
        await asyncio.to_thread(self.history.load)
        semaphore = asyncio.Semaphore(self.concurrency)

        async def one(device: SmartDevice) -> CheckResult:
            async with semaphore:
                try:
                    status, data, err = await run_smartctl(device.argv(self.smartctl), self.timeout)
                except TimeoutError:
                    return CheckResult(self.target, f"smart {device.label}", State.UNKNOWN,
                                       f"smartctl on {device.label} did not finish within "
                                       f"{self.timeout:g} s", timestamp=self.clock())
                except OSError as exc:
                    return CheckResult(self.target, f"smart {device.label}", State.UNKNOWN,
                                       f"cannot run {self.smartctl}: {exc.strerror or exc}",
                                       timestamp=self.clock())
            key = disk_key(device, data)
            check, entry = interpret(self.target, device, status, data, err,
                                     self.history.disks.get(key, {}), self.limits, self.clock())
            if entry:
                self.history.disks[key] = entry
            return check

        before = json.dumps(self.history.disks, sort_keys=True)
        results = list(await asyncio.gather(*(one(d) for d in devices)))
        # Clears an earlier "smartctl missing / no disks" UNKNOWN once SMART works.
        results.append(CheckResult(self.target, "smart", State.OK,
                                   f"smartctl checks {len(devices)} disk(s): "
                                   + ", ".join(d.label for d in devices), timestamp=now))
        if json.dumps(self.history.disks, sort_keys=True) != before:
            try:
                await asyncio.to_thread(self.history.save)
            except OSError as exc:
                results.append(CheckResult(self.target, "smart", State.WARNING,
                                           f"cannot save SMART history to {self.history.path}: "
                                           f"{exc.strerror}; sector growth may be missed",
                                           timestamp=now))
        return results
