"""Disk health: real statvfs on file systems the test creates, recorded smartctl output played
back through a stand-in smartctl script, recorded /proc/mdstat samples, real psutil counters."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import threading
from pathlib import Path

import psutil
import pytest

from collectors.disks import DisksCollector, build, io_measurements
from collectors.fsusage import (
    BoundedStatvfs,
    Mount,
    UsageThresholds,
    collect_usage,
    parse_mounts,
    select_mounts,
)
from collectors.mdstat import array_check, parse_mdstat
from collectors.smart import SmartCollector, SmartDevice, SmartLimits, decode_exit_status
from monitor.config import DEFAULT_EXCLUDED_FS_TYPES, ConfigError, parse_config, parse_smart_device
from monitor.model import Kind, State
from monitor.store import RrdStore
from tests.conftest import DATA

SMART = DATA / "smart"
MDSTAT = DATA / "mdstat"


# --------------------------------------------------------------------------------------------
# config


def test_disks_config_defaults_and_keys(tmp_path):
    config = parse_config(f"""
        [agent]
        data_dir = "{tmp_path}"
        [disks]
        include = ["/", "/srv*"]
        exclude = ["/srv/scratch"]
        usage_warning = "80%"
        usage_critical = 90
        statvfs_timeout = "2s"
        smart = ["/dev/sda", "/dev/sdb -d sat", "/dev/disk/by-id/nvme-eui.0025385b71b0b4a2"]
        smartctl = "/opt/smartmontools/sbin/smartctl"
        mdstat = "/proc/mdstat"
        io_exclude = ["loop*"]
    """.replace("\n        ", "\n"))
    d = config.disks
    assert d.usage_warning == 80 and d.usage_critical == 90 and d.statvfs_timeout == 2
    assert d.exclude_fs_types == DEFAULT_EXCLUDED_FS_TYPES
    assert d.smartctl == Path("/opt/smartmontools/sbin/smartctl")
    assert [c.name for c in build(config)] == ["disks"]


@pytest.mark.parametrize(("text", "error"), [
    ('usage_warning = 96\nusage_critical = 95', "disks.usage_warning: must not be above"),
    ('smart = ["/dev/../etc/passwd"]', 'disks.smart: expected a device like "/dev/sda"'),
    ('smart = ["/dev/sda; reboot"]', "disks.smart: expected a device"),
    ('smart = "sometimes"', 'disks.smart: "auto", "off" or a list'),
    ('statvfs_timeout = "1h"', "disks.statvfs_timeout: expected a value 0.1-600"),
    ('exclude_fs_type = []', 'unknown key (did you mean "exclude_fs_types"?)'),
])
def test_disks_config_errors(text, error):
    with pytest.raises(ConfigError) as exc:
        parse_config("[disks]\n" + text)
    assert error in str(exc.value)


def test_smart_device_names():
    assert parse_smart_device("/dev/sda") == ("/dev/sda", None)
    assert parse_smart_device("/dev/bus/0 -d megaraid,0") == ("/dev/bus/0", "megaraid,0")
    assert parse_smart_device("/dev/sda -d sat # /dev/sda [SAT], ATA device") == ("/dev/sda", "sat")
    for bad in ("sda", "/dev/../sda", "/dev/./sda", "/etc/passwd", "/dev/sda -d sat;ls", "/dev/$(id)",
                "/dev/sda\n-d", "/dev/ sda", "-d /dev/sda"):
        with pytest.raises(ValueError):
            parse_smart_device(bad)
    assert SmartDevice.parse("/dev/sdb -d sat").argv("/usr/sbin/smartctl") == [
        "/usr/sbin/smartctl", "--json", "-a", "-n", "standby", "-d", "sat", "/dev/sdb"]
    sdb, raid3 = SmartDevice.parse("/dev/sdb -d sat"), SmartDevice.parse("/dev/bus/0 -d megaraid,3")
    assert (sdb.label, sdb.instance) == ("/dev/sdb", "smart:sdb")
    assert (raid3.label, raid3.instance) == ("/dev/bus/0 -d megaraid,3", "smart:bus/0 megaraid,3")


# --------------------------------------------------------------------------------------------
# usage


def test_parse_and_select_mounts():
    text = ("/dev/vda1 / ext4 rw 0 0\n"
            "tmpfs /run tmpfs rw 0 0\n"
            "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n"
            "/dev/sdb1 /srv/my\\040data xfs rw 0 0\n"
            "srv:/export /mnt/nfs nfs4 rw 0 0\n"
            "/dev/sdc1 /mnt/nfs ext4 rw 0 0\n")  # mounted over the NFS mount: hides it
    mounts = parse_mounts(text)
    assert Mount("/dev/sdb1", "/srv/my data", "xfs") in mounts
    assert [m.fstype for m in mounts if m.mountpoint == "/mnt/nfs"] == ["ext4"]
    picked = select_mounts(mounts, [], ["/srv/*"], DEFAULT_EXCLUDED_FS_TYPES)
    assert [m.mountpoint for m in picked] == ["/", "/mnt/nfs"]
    assert [m.mountpoint for m in select_mounts(mounts, ["/srv/*"], [], [])] == ["/srv/my data"]


def _statvfs_numbers(path: Path) -> tuple[int, int, float]:
    st = os.statvfs(path)
    used = (st.f_blocks - st.f_bfree) * st.f_frsize
    avail = st.f_bavail * st.f_frsize
    return used, avail, 100.0 * used / (used + avail)


async def test_usage_on_temporary_directories(tmp_path):
    """Real statvfs on real directories, listed in a mount table file written by the test."""
    a, b = tmp_path / "a", tmp_path / "with space"
    a.mkdir()
    b.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/x {a} ext4 rw 0 0\n/dev/y {str(b).replace(' ', chr(92) + '040')} xfs rw 0 0\n"
                      f"tmpfs {tmp_path} tmpfs rw 0 0\n/dev/z {tmp_path}/gone ext4 rw 0 0\n"
                      f"/dev/e {tmp_path}/x\\012y\\033[2J ext4 rw 0 0\n")  # hostile label
    pct = _statvfs_numbers(a)[2]
    limits = UsageThresholds(usage_warning=0, usage_critical=100)  # any use warns: a known state
    checks = await collect_usage("host1", mounts, [], [], ["tmpfs"], limits,
                                 BoundedStatvfs(5.0), clock=lambda: 1000.0)
    by_check = {c.check: c for c in checks}
    assert set(by_check) == {f"disk {a}", f"disk {b}", f"disk {tmp_path}/gone",
                             f"disk {tmp_path}/x y [2J"}
    evil = by_check[f"disk {tmp_path}/x y [2J"]
    assert "\n" not in evil.message and "\x1b" not in evil.message
    ok = by_check[f"disk {a}"]
    assert ok.state is State.WARNING and f"{a} (ext4): " in ok.message
    values = {m.metric: m for m in ok.measurements}
    assert {m.instance for m in ok.measurements} == {f"fs:{a}"}
    assert values["size_bytes"].value > 0
    # Same file system as our own statvfs a moment ago: equal up to what other tests write.
    assert abs(values["used_percent"].value - pct) < 5
    assert values["used_percent"].maximum == 100
    assert {"used_bytes", "free_bytes", "size_bytes", "used_percent"} <= set(values)
    gone = by_check[f"disk {tmp_path}/gone"]
    assert gone.state is State.UNKNOWN and "No such file or directory" in gone.message


@pytest.fixture
def small_tmpfs(tmp_path):
    """A real 1 MB tmpfs with 64 inodes (root only; skipped where mounting is not allowed)."""
    point = tmp_path / "small"
    point.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m,nr_inodes=64", "monitor-test", str(point)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield point
    finally:
        subprocess.run(["umount", "-l", str(point)], check=False)


async def test_a_bind_mount_of_a_directory_is_no_disk_of_its_own(small_tmpfs, tmp_path):
    """What systemd's StateDirectory=/ReadWritePaths= make for the hardened unit: a directory of
    a file system mounted again elsewhere. Its usage is the file system's, checked once."""
    (small_tmpfs / "state").mkdir()
    again = tmp_path / "var-lib-monitor"
    again.mkdir()
    whole = tmp_path / "whole"  # the same file system's root mounted twice stays (as before)
    whole.mkdir()
    for source, point in ((small_tmpfs / "state", again), (small_tmpfs, whole)):
        subprocess.run(["mount", "--bind", str(source), str(point)], check=True)
    try:
        checks = await collect_usage("host1", Path("/proc/self/mounts"),
                                     [str(small_tmpfs), str(again), str(whole)], [], [],
                                     UsageThresholds(), BoundedStatvfs(5.0))
    finally:
        for point in (again, whole):
            subprocess.run(["umount", "-l", str(point)], check=False)
    assert sorted(c.check for c in checks) == sorted([f"disk {small_tmpfs}", f"disk {whole}"])


async def test_usage_thresholds_on_a_real_tmpfs(small_tmpfs, tmp_path):
    limits = UsageThresholds()
    statvfs = BoundedStatvfs(5.0)

    async def check():
        checks = await collect_usage("host1", Path("/proc/self/mounts"), [str(small_tmpfs)], [], [],
                                     limits, statvfs)
        assert len(checks) == 1
        return checks[0]

    empty = await check()
    assert empty.state is State.OK, empty.message
    (small_tmpfs / "big").write_bytes(b"x" * (900 * 1024))
    full = await check()
    values = {m.metric: m.value for m in full.measurements}
    assert full.state is State.WARNING and values["used_percent"] >= 85, full.message
    (small_tmpfs / "more").write_bytes(b"x" * (100 * 1024))
    assert (await check()).state is State.CRITICAL
    for name in ("big", "more"):
        (small_tmpfs / name).unlink()
    for i in range(60):  # 64 inodes: the root directory plus these fill the table
        (small_tmpfs / f"f{i}").touch()
    inodes = await check()
    values = {m.metric: m.value for m in inodes.measurements}
    assert values["inodes_used_percent"] >= 95 and inodes.state is State.CRITICAL, inodes.message
    assert "inodes" in inodes.message


async def test_hung_mount_is_bounded_and_not_retried(tmp_path):
    """The one stand-in: a statvfs that blocks like a dead NFS server (cannot be made here)."""
    hung, fine = tmp_path / "nfs", tmp_path / "local"
    hung.mkdir()
    fine.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"srv:/x {hung} nfs4 rw 0 0\n/dev/y {fine} ext4 rw 0 0\n")
    release = threading.Event()
    calls: list[str] = []

    def statvfs(path: str) -> os.statvfs_result:
        calls.append(path)
        if path == str(hung):
            release.wait(30)
        return os.statvfs(path)

    now = [100.0]
    bounded = BoundedStatvfs(0.2, statvfs=statvfs, clock=lambda: now[0])

    async def run():
        checks = await collect_usage("host1", mounts, [], [], [], UsageThresholds(), bounded)
        return {c.check: c for c in checks}

    first = await run()
    assert first[f"disk {fine}"].state is State.OK
    assert first[f"disk {hung}"].state is State.UNKNOWN
    assert first[f"disk {hung}"].message == f"statvfs of {hung} did not return within 0.2 s (hung NFS?)"
    now[0] += 300
    second = await run()
    assert second[f"disk {fine}"].state is State.OK
    assert "has still not returned after 5m" in second[f"disk {hung}"].message
    assert calls.count(str(hung)) == 1  # the stuck call was not started again
    assert bounded.blocked() == [str(hung)]
    release.set()
    for _ in range(100):  # wait for the stuck thread to finish (not a timed assertion)
        if not bounded.blocked():
            break
        await asyncio.sleep(0.02)
    third = await run()
    assert third[f"disk {hung}"].state is State.OK
    assert calls.count(str(hung)) == 2


# --------------------------------------------------------------------------------------------
# I/O


def test_io_counters_from_psutil(tmp_path):
    counters = psutil.disk_io_counters(perdisk=True) or {}
    sys_block = Path("/sys/block")
    whole = {p.name for p in sys_block.iterdir()} if sys_block.is_dir() else set()
    expected = sorted(n for n in counters if n in whole and not n.startswith(("loop", "ram", "zram")))
    if not expected:
        pytest.skip("no block devices visible here")
    ms = io_measurements("host1", counters, ["loop*", "ram*", "zram*"], whole, 1000.0)
    assert sorted({m.instance for m in ms}) == [f"io:{n}" for n in expected]
    first = [m for m in ms if m.instance == f"io:{expected[0]}"]
    assert {m.metric for m in first} >= {"read_bytes", "write_bytes", "read_ops", "write_ops"}
    assert all(m.kind is Kind.DERIVE for m in first)
    # Collector level: with partitions allowed, every non-excluded device counts.
    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n[disks]\nio_partitions = true\n'
                          'io_exclude = []\nsmart = "off"\n')
    names = {m.instance for m in build(config)[0].io()}
    assert {f"io:{n}" for n in expected} <= names


# --------------------------------------------------------------------------------------------
# SMART


def fake_smartctl(tmp_path: Path, files: dict[str, str], scan: str | None = None) -> tuple[Path, Path]:
    """A stand-in smartctl that prints the recorded file for the device it is asked about and
    exits with the status that smartctl recorded in it. Logs its argv, one run per line."""
    log = tmp_path / "argv.log"
    lines = ["#!/bin/sh", f'echo "$*" >> "{log}"', 'for last; do :; done', 'case "$*" in']
    if scan:
        status = json.loads((SMART / scan).read_text())["smartctl"]["exit_status"]
        lines.append(f'  *--scan-open*) cat "{SMART / scan}"; exit {status};;')
    for device, name in files.items():
        path = Path(name) if Path(name).is_absolute() else SMART / name
        status = json.loads(path.read_text())["smartctl"]["exit_status"]
        lines.append(f'  *" {device}") cat "{path}"; exit {status};;')
    lines += ['  *) echo "unexpected: $*" >&2; exit 1;;', "esac"]
    script = tmp_path / "smartctl"
    script.write_text("\n".join(lines) + "\n")
    script.chmod(0o755)
    return script, log


def smart_collector(tmp_path, script, devices, clock=lambda: 1_800_000_000.0, **kw) -> SmartCollector:
    parsed = None if devices is None else [SmartDevice.parse(d) for d in devices]
    return SmartCollector("host1", script, parsed,
                          tmp_path / "state" / "smart.json", SmartLimits(), timeout=10, clock=clock, **kw)


async def test_smart_recorded_disks(tmp_path):
    files = {"/dev/sda": "ata_healthy.json", "/dev/sdb": "ata_prefail.json",
             "/dev/sdc": "ata_failing.json", "/dev/nvme0": "nvme_healthy.json",
             "/dev/nvme1": "nvme_critical.json", "/dev/sdd": "ata_standby.json"}
    script, log = fake_smartctl(tmp_path, files)
    collector = smart_collector(tmp_path, script, list(files))
    results = {c.check: c for c in await collector.collect()}

    sda = results["smart /dev/sda"]
    assert sda.state is State.OK
    assert sda.message.startswith("/dev/sda WDC WD40EFRX-68N32N0 (ATA): PASSED, 34 °C, 43210 h")
    values = {m.metric: m.value for m in sda.measurements}
    assert values == {"health_ok": 1, "temperature_celsius": 34, "power_on_hours": 43210,
                      "reallocated_sectors": 0, "pending_sectors": 0,
                      "offline_uncorrectable_sectors": 0}
    assert {m.instance for m in sda.measurements} == {"smart:sda"}

    sdb = results["smart /dev/sdb"]
    assert sdb.state is State.WARNING
    for text in ("8 sector(s) pending reallocation", "8 offline-uncorrectable", "error log has 23",
                 "self-test log has 1 failed"):
        assert text in sdb.message

    sdc = results["smart /dev/sdc"]
    assert sdc.state is State.CRITICAL
    assert "SMART overall health FAILED" in sdc.message
    assert "at or below threshold now: Reallocated_Sector_Ct" in sdc.message
    assert "in the past: Airflow_Temperature_Cel" in sdc.message
    assert {m.metric: m.value for m in sdc.measurements}["temperature_celsius"] == 38

    nvme0 = results["smart /dev/nvme0"]
    assert nvme0.state is State.OK, nvme0.message
    values = {m.metric: m.value for m in nvme0.measurements}
    assert values["endurance_used_percent"] == 1 and values["media_errors"] == 0
    assert values["critical_warning"] == 0 and values["temperature_celsius"] == 38

    nvme1 = results["smart /dev/nvme1"]
    assert nvme1.state is State.CRITICAL
    assert ("NVMe critical warning 0x05: available spare below threshold, NVM subsystem reliability "
            "degraded") in nvme1.message
    assert "97% of rated endurance used" in nvme1.message

    sdd = results["smart /dev/sdd"]
    assert sdd.state is State.OK and "not woken" in sdd.message and not sdd.measurements

    assert results["smart"].state is State.OK
    runs = log.read_text().splitlines()
    assert sorted(runs) == sorted(f"--json -a -n standby {d}" for d in files)


def test_exit_status_bits():
    assert decode_exit_status(0) == []
    assert decode_exit_status(248) == [
        "SMART status: DISK FAILING", "pre-failure attributes are at or below their threshold",
        "some attributes were at or below their threshold in the past",
        "the device error log contains errors", "the self-test log contains errors"]
    assert decode_exit_status(2) == ["the device could not be opened, or it is in a low-power mode"]


def _variant(tmp_path: Path, name: str, reallocated: int) -> str:
    doc = json.loads((SMART / "ata_healthy.json").read_text())
    for attr in doc["ata_smart_attributes"]["table"]:
        if attr["id"] == 5:
            attr["raw"] = {"value": reallocated, "string": str(reallocated)}
    path = tmp_path / name
    path.write_text(json.dumps(doc, indent=2))
    return str(path)


async def test_reallocated_sector_growth_warns_and_is_remembered(tmp_path):
    now = [1_800_000_000.0]
    before = _variant(tmp_path, "before.json", 0)
    after = _variant(tmp_path, "after.json", 8)
    script, _ = fake_smartctl(tmp_path, {"/dev/sda": before})
    first = await smart_collector(tmp_path, script, ["/dev/sda"], clock=lambda: now[0]).collect()
    assert first[0].state is State.OK
    state_file = tmp_path / "state" / "smart.json"
    assert json.loads(state_file.read_text())["disks"]["WDC WD40EFRX-68N32N0:WD-WCC7K4NJ0001"][
        "reallocated_sectors"]["value"] == 0

    # A restarted agent (a new collector) still knows the old count.
    script, _ = fake_smartctl(tmp_path, {"/dev/sda": after})
    now[0] += 300
    collector = smart_collector(tmp_path, script, ["/dev/sda"], clock=lambda: now[0])
    grown = (await collector.collect())[0]
    assert grown.state is State.WARNING
    assert "reallocated sectors grew from 0 to 8" in grown.message
    now[0] += 3600  # same count an hour later: the warning is held...
    assert (await collector.collect())[0].state is State.WARNING
    now[0] += 86400  # ...for a day, then it clears
    assert (await collector.collect())[0].state is State.OK


async def test_smart_auto_scan(tmp_path):
    script, log = fake_smartctl(tmp_path, {"/dev/sda": "ata_healthy.json", "/dev/nvme0": "nvme_healthy.json"},
                                scan="scan_open.json")
    collector = smart_collector(tmp_path, script, None)
    checks = {c.check: c for c in await collector.collect()}
    assert set(checks) == {"smart", "smart /dev/sda", "smart /dev/nvme0"}
    assert checks["smart"].message == "smartctl checks 2 disk(s): /dev/sda, /dev/nvme0"
    await collector.collect()  # the scan is cached
    runs = log.read_text().splitlines()
    assert runs.count("--scan-open --json") == 1
    assert "--json -a -n standby -d sat /dev/sda" in runs


async def test_smart_problems_give_one_clear_unknown(tmp_path):
    missing = await smart_collector(tmp_path, tmp_path / "no" / "smartctl", None).collect()
    assert len(missing) == 1 and missing[0].state is State.UNKNOWN
    assert "smartctl not found at" in missing[0].message
    assert "apt-get install smartmontools" in missing[0].message

    script, _ = fake_smartctl(tmp_path, {}, scan="scan_open_denied.json")
    denied = await smart_collector(tmp_path, script, None).collect()
    assert len(denied) == 1 and denied[0].state is State.UNKNOWN
    assert "permission denied" in denied[0].message and "root" in denied[0].message

    script, _ = fake_smartctl(tmp_path, {}, scan="real_scan_open_vm.json")
    none = await smart_collector(tmp_path, script, None).collect()
    assert len(none) == 1 and "found no disks" in none[0].message

    script, _ = fake_smartctl(tmp_path, {"/dev/sda": "permission_denied.json",
                                         "/dev/vda": "real_vda_unsupported.json",
                                         "/dev/sdz": "real_no_such_device.json"})
    checks = {c.check: c for c in await smart_collector(tmp_path, script, ["/dev/sda", "/dev/vda",
                                                                           "/dev/sdz"]).collect()}
    assert checks["smart /dev/sda"].state is State.UNKNOWN
    assert "permission denied; SMART needs raw access" in checks["smart /dev/sda"].message
    assert "Unable to detect device type" in checks["smart /dev/vda"].message
    assert "cannot open /dev/sdz: Smartctl open device: /dev/sdz failed: No such device" in \
        checks["smart /dev/sdz"].message


async def test_smartctl_that_hangs_is_killed(tmp_path):
    script = tmp_path / "smartctl"
    script.write_text("#!/bin/sh\nexec sleep 30\n")
    script.chmod(0o755)
    collector = SmartCollector("host1", script, [SmartDevice("/dev/sda")], tmp_path / "s.json",
                               SmartLimits(), timeout=0.3)
    checks = await collector.collect()
    assert checks[0].state is State.UNKNOWN and "did not finish within 0.3 s" in checks[0].message


async def test_scan_output_is_untrusted(tmp_path):
    doc = json.loads((SMART / "scan_open.json").read_text())
    doc["devices"][0]["name"] = "/dev/sda;reboot"
    doc["devices"][1]["type"] = "nvme;reboot"
    path = tmp_path / "scan.json"
    path.write_text(json.dumps(doc))
    script, log = fake_smartctl(tmp_path, {"/dev/nvme0": "nvme_healthy.json"}, scan=str(path))
    checks = {c.check for c in await smart_collector(tmp_path, script, None).collect()}
    assert checks == {"smart", "smart /dev/nvme0"}
    assert "reboot" not in log.read_text().split("\n", 1)[1]


@pytest.mark.skipif(not os.access("/usr/sbin/smartctl", os.X_OK), reason="smartmontools not installed")
async def test_real_smartctl_on_this_machine(tmp_path):
    """Whatever this machine has: checks come back, nothing raises."""
    checks = await smart_collector(tmp_path, Path("/usr/sbin/smartctl"), None).collect()
    assert checks and all(c.check.startswith("smart") for c in checks)


# --------------------------------------------------------------------------------------------
# md RAID


def md(name: str) -> dict:
    return {a.name: a for a in parse_mdstat((MDSTAT / name).read_text())}


def test_mdstat_healthy():
    arrays = md("healthy.txt")
    assert set(arrays) == {"md0", "md1", "md2"}
    assert arrays["md1"].level == "raid1" and arrays["md1"].slots == "UU"
    for a in arrays.values():
        check = array_check("host1", a, 1.0)
        assert check.state is State.OK, check.message
    assert array_check("host1", arrays["md1"], 1.0).message == "md1 (raid1) clean [2/2] [UU]"


def test_mdstat_degraded():
    a = md("degraded.txt")["md0"]
    check = array_check("host1", a, 1.0)
    assert check.state is State.CRITICAL
    assert check.message.startswith("md0 (raid5) is DEGRADED [4/3] [_UUU]: 1 of 4 disk(s) missing")
    values = {m.metric: m.value for m in check.measurements}
    assert values["degraded"] == 1 and values["disks_working"] == 3 and values["disks_wanted"] == 4
    assert {m.instance for m in check.measurements} == {"md:md0"}


def test_mdstat_resync():
    arrays = md("resync.txt")
    md0 = array_check("host1", arrays["md0"], 1.0)
    assert md0.state is State.WARNING
    assert "resync 28.3%, about 132 min left" in md0.message
    assert {m.metric: m.value for m in md0.measurements}["sync_progress_percent"] == 28.3
    md1 = array_check("host1", arrays["md1"], 1.0)
    assert md1.state is State.WARNING and "resync=DELAYED" in md1.message
    scrub = array_check("host1", arrays["md2"], 1.0)  # a periodic "check" is routine
    assert scrub.state is State.OK and "check 3.1%" in scrub.message


def test_mdstat_failed_members():
    arrays = md("failed.txt")
    md1 = array_check("host1", arrays["md1"], 1.0)
    assert md1.state is State.CRITICAL
    assert "failed: sdc1" in md1.message and "recovery 12.6%" in md1.message
    md0 = array_check("host1", arrays["md0"], 1.0)
    assert md0.state is State.CRITICAL and "failed: sdf1" in md0.message
    assert {m.metric: m.value for m in md0.measurements}["disks_failed"] == 1
    inactive = array_check("host1", arrays["md127"], 1.0)
    assert inactive.state is State.CRITICAL and "inactive" in inactive.message
    assert arrays["md127"].spares == ["sdh1"]


def test_mdstat_imsm_container_is_not_an_inactive_array():
    arrays = md("imsm.txt")
    container = array_check("host1", arrays["md127"], 1.0)
    assert container.state is State.OK and "IMSM firmware RAID container of sda, sdb" in (
        container.message)
    volume = array_check("host1", arrays["md126"], 1.0)
    assert volume.state is State.OK and volume.message == "md126 (raid1) clean [2/2] [UU]"


def test_mdstat_reshape_is_not_a_failed_disk():
    arrays = md("reshape.txt")
    grow = array_check("host1", arrays["md0"], 1.0)  # raid5 3 -> 4 disks
    assert grow.state is State.WARNING and "reshape 2.3%" in grow.message
    level = array_check("host1", arrays["md1"], 1.0)  # raid5 -> raid6: [5/4] while reshaping
    assert level.state is State.WARNING and "being reshaped [5/4] [UUUU_]" in level.message
    assert "replace" not in level.message and "remove no disk" in level.message


# --------------------------------------------------------------------------------------------
# the whole collector, into real RRD files


async def test_disks_collector_end_to_end(tmp_path):
    fs = tmp_path / "fs"
    fs.mkdir()
    mounts = tmp_path / "mounts"
    mounts.write_text(f"/dev/vdz1 {fs} ext4 rw 0 0\nproc /proc proc rw 0 0\n")
    script, _ = fake_smartctl(tmp_path, {"/dev/sda": "ata_healthy.json", "/dev/nvme0": "nvme_critical.json"})
    shutil.copy(MDSTAT / "degraded.txt", tmp_path / "mdstat")
    config = parse_config(f"""
[agent]
data_dir = "{tmp_path / 'data'}"
hostname = "host1"
[disks]
mounts = "{mounts}"
smartctl = "{script}"
smart = ["/dev/sda", "/dev/nvme0"]
mdstat = "{tmp_path / 'mdstat'}"
""")
    (collector,) = build(config)
    assert isinstance(collector, DisksCollector)
    batch = await collector.collect()
    states = {c.check: c.state for c in batch.checks}
    assert states == {f"disk {fs}": State.OK, "smart /dev/sda": State.OK,
                      "smart /dev/nvme0": State.CRITICAL, "smart": State.OK,
                      "raid md0": State.CRITICAL, "disks": State.OK}
    summary = next(c for c in batch.checks if c.check == "disks").message
    assert summary.startswith("watching 1 file system(s), ") and "2 SMART disk(s), 1 md array(s)" in summary
    store = RrdStore(tmp_path / "rrd")
    report = store.write(batch.measurements, 60)
    assert not report.errors
    instances = {s.instance for s in store.series() if s.target == "host1"}
    assert {f"fs:{fs}", "smart:sda", "smart:nvme0", "md:md0"} <= instances
    assert any(i.startswith("io:") for i in instances) or not psutil.disk_io_counters(perdisk=True)
    store.close()


def test_missing_mdstat_means_no_raid(tmp_path):
    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n[disks]\nmdstat = "{tmp_path}/none"\n')
    assert build(config)[0].raid() == []


def test_every_disks_key_is_documented_in_config_toml():
    import dataclasses

    from monitor.config import DisksConfig
    from tests.conftest import ROOT

    text = (ROOT / "config.toml").read_text()
    section = text[text.index("\n[disks]"):]
    section = section[:section.index("\n[", 2)]
    for f in dataclasses.fields(DisksConfig):
        assert f"\n{f.name} = " in section or f"\n# {f.name} = " in section, f.name


async def test_unreadable_inputs_are_one_disks_check_that_clears(tmp_path):
    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n[disks]\nmounts = "{tmp_path}/mounts"\n'
                          f'mdstat = "{tmp_path}/mdstat"\nsmart = "off"\nio = false\n')
    (tmp_path / "mdstat").mkdir()  # exists but cannot be read as a file
    (collector,) = build(config)
    bad = [c for c in (await collector.collect()).checks if c.check == "disks"]
    assert len(bad) == 1 and bad[0].state is State.UNKNOWN
    assert f"cannot read the mount table {tmp_path}/mounts" in bad[0].message
    assert f"cannot read {tmp_path}/mdstat" in bad[0].message
    (tmp_path / "mdstat").rmdir()
    (tmp_path / "mounts").write_text(f"/dev/x {tmp_path} ext4 rw 0 0\n")
    good = [c for c in (await collector.collect()).checks if c.check == "disks"]
    assert good[0].state is State.OK and good[0].message.startswith("watching 1 file system(s)")


async def test_smart_nvme_media_errors_and_sas_uncorrected_warn_without_growth(tmp_path):
    files = {"/dev/nvme2": "nvme_media_errors.json", "/dev/sde": "sas_uncorrected.json"}
    script, _ = fake_smartctl(tmp_path, files)
    collector = smart_collector(tmp_path, script, list(files))
    for _ in range(2):  # the second run sees no growth: still a WARNING
        results = {c.check: c for c in await collector.collect()}
        nvme = results["smart /dev/nvme2"]
        assert nvme.state is State.WARNING and "3 media error(s) recorded" in nvme.message
        sas = results["smart /dev/sde"]
        assert sas.state is State.WARNING, sas.message
        assert "2 uncorrected error(s) (2 read)" in sas.message
        assert {m.metric: m.value for m in sas.measurements}["uncorrected_errors"] == 2
