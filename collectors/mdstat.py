"""Linux software RAID (md) from /proc/mdstat: each array's members, health and sync progress.

/proc/mdstat looks like this (one block per array, a blank line between them):

    md1 : active raid5 sdd1[3] sdc1[1] sdb1[0](F)
          3906764800 blocks super 1.2 level 5, 512k chunk, algorithm 2 [3/2] [_UU]
          [=>...................]  recovery =  8.5% (166078592/1953382400) finish=152.1min speed=195K/sec
          bitmap: 1/15 pages [4KB], 65536KB chunk

Member flags: (F) failed, (S) spare, (W) write-mostly, (R) replacement. "[3/2]" is "wanted
disks / working disks" and "[_UU]" shows which slot is missing.

Firmware RAID (Intel RST / IMSM, DDF) shows a *container* that is always "inactive", its
members all spares, and the arrays inside it as ordinary md devices:

    md126 : active raid1 sda[1] sdb[0]
          976759808 blocks super external:/md127/0 [2/2] [UU]
    md127 : inactive sdb[1](S) sda[0](S)
          5288 blocks super external:imsm

The container holds no data of its own: it is reported as OK; its arrays are checked.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from monitor.model import CheckResult, Measurement, State

_HEADER = re.compile(r"^(md\S*)\s*:\s*(\S+)\s*(.*)$")
_MEMBER = re.compile(r"^(\S+?)\[(\d+)\]((?:\([A-Z]\))*)$")
_SLOTS = re.compile(r"\[(\d+)/(\d+)\]\s*\[([U_]+)\]")
_PROGRESS = re.compile(
    r"\b(resync|recovery|reshape|check|repair)\s*=\s*([\d.]+)%"
    r"(?:.*?finish\s*=\s*([\d.]+)min)?(?:.*?speed\s*=\s*(\d+)K/sec)?"
)
_CONTAINER = re.compile(r"\bsuper external:(imsm|ddf)\b")
_PENDING = re.compile(r"\b(resync|recovery|reshape|check|repair)\s*=\s*(DELAYED|PENDING)")


@dataclass
class MdArray:
    name: str
    active: bool
    read_only: str = ""          # "read-only" / "auto-read-only" or ""
    level: str = ""
    members: dict[str, set[str]] = field(default_factory=dict)  # name -> {"F", "S", ...}
    wanted: int | None = None    # disks the array should have
    working: int | None = None   # disks currently working
    slots: str = ""              # "[UU_]" map without brackets
    action: str = ""             # resync, recovery, reshape, check, repair
    progress: float | None = None
    finish_minutes: float | None = None
    speed_kbps: int | None = None
    pending: str = ""            # "resync=DELAYED" etc.
    container: str = ""          # "imsm" / "ddf": a firmware RAID container, not an array

    @property
    def failed(self) -> list[str]:
        return sorted(n for n, f in self.members.items() if "F" in f)

    @property
    def spares(self) -> list[str]:
        return sorted(n for n, f in self.members.items() if "S" in f)

    @property
    def degraded(self) -> bool:
        if self.wanted is not None and self.working is not None and self.working < self.wanted:
            return True
        return "_" in self.slots


def parse_mdstat(text: str) -> list[MdArray]:
    arrays: list[MdArray] = []
    current: MdArray | None = None
    for line in text.splitlines():
        header = _HEADER.match(line)
        if header and not line.startswith((" ", "\t")):
            state, rest = header.group(2), header.group(3).split()
            current = MdArray(header.group(1), active=state == "active")
            arrays.append(current)
            if rest and rest[0].startswith("(") and rest[0].endswith(")"):
                current.read_only = rest.pop(0).strip("()")
            if rest and not _MEMBER.match(rest[0]):
                current.level = rest.pop(0)
            for word in rest:
                member = _MEMBER.match(word)
                if member:
                    current.members[member.group(1)] = set(re.findall(r"\(([A-Z])\)", member.group(3)))
            continue
        if current is None or not line.strip():
            if not line.strip():
                current = None
            continue
        container = _CONTAINER.search(line)
        if container:
            current.container = container.group(1)
        slots = _SLOTS.search(line)
        if slots:
            current.wanted, current.working = int(slots.group(1)), int(slots.group(2))
            current.slots = slots.group(3)
        progress = _PROGRESS.search(line)
        if progress:
            current.action = progress.group(1)
            current.progress = float(progress.group(2))
            if progress.group(3):
                current.finish_minutes = float(progress.group(3))
            if progress.group(4):
                current.speed_kbps = int(progress.group(4))
        pending = _PENDING.search(line)
        if pending:
            current.pending = f"{pending.group(1)}={pending.group(2)}"
    return arrays


def array_check(target: str, array: MdArray, now: float) -> CheckResult:
    """Degraded or inactive: CRITICAL; rebuilding/resyncing or a failed member left: WARNING."""
    instance = f"md:{array.name}"

    def m(metric: str, value: float | None, unit: str = "", maximum: float | None = None) -> Measurement:
        return Measurement(target, instance, metric, value, unit=unit, timestamp=now,
                           minimum=0, maximum=maximum)

    ms = (
        m("disks_wanted", array.wanted if array.wanted is not None else len(array.members)),
        m("disks_working", array.working if array.working is not None
          else len(array.members) - len(array.failed) - len(array.spares)),
        m("disks_failed", len(array.failed)),
        m("disks_spare", len(array.spares)),
        m("degraded", 1 if array.degraded else 0),
        m("sync_progress_percent", array.progress, "%", 100),
    )
    what = f"{array.name} ({array.level})" if array.level else array.name
    shape = (f" [{array.wanted}/{array.working}] [{array.slots}]"
             if array.wanted is not None else "")
    details = []
    if array.failed:
        details.append("failed: " + ", ".join(array.failed))
    if array.action:
        text = f"{array.action} {array.progress:g}%"
        if array.finish_minutes is not None:
            text += f", about {array.finish_minutes:.0f} min left"
        details.append(text)
    if array.pending:
        details.append(array.pending)
    if array.spares:
        details.append("spare: " + ", ".join(array.spares))
    tail = ("; " + "; ".join(details)) if details else ""

    if array.container:
        disks = ", ".join(sorted(array.members))
        state, text = State.OK, (f"{array.name} is a {array.container.upper()} firmware RAID "
                                 f"container of {disks} (always inactive; its arrays are "
                                 "checked on their own)")
    elif not array.active:
        state, text = State.CRITICAL, f"{what} is inactive (not running){tail}"
    elif array.degraded and array.action == "reshape" and not array.failed:
        # Growing or changing level (raid5 -> raid6): the new slot fills as the reshape runs.
        state = State.WARNING
        text = (f"{what} is being reshaped{shape}{tail}; it has less redundancy until the "
                "reshape ends: leave it running, remove no disk")
    elif array.degraded:
        missing = (array.wanted or 0) - (array.working or 0)
        state = State.CRITICAL
        advice = ("a rebuild is running" if array.action == "recovery"
                  else "a reshape is running; once it ends, replace the failed disk (mdadm --add)"
                  if array.action == "reshape"
                  else "replace the failed disk (mdadm --add)")
        text = f"{what} is DEGRADED{shape}: {missing} of {array.wanted} disk(s) missing{tail}; {advice}"
    elif array.action in ("resync", "recovery", "reshape", "repair") or array.pending:
        state, text = State.WARNING, f"{what} is not in sync yet{shape}{tail}"
    elif array.failed:
        state = State.WARNING
        text = f"{what} clean{shape} but a failed member is still listed{tail}; remove it (mdadm --remove)"
    else:
        state, text = State.OK, f"{what} clean{shape}{tail}"
    if array.read_only:
        text += f" ({array.read_only})"
    return CheckResult(target, f"raid {array.name}", state, text, ms, now)
