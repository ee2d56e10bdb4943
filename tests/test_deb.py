"""`make deb`: the Debian package is built, installed with apt on this machine, used as the
`monitor` user, and purged without leaving anything behind.

Slow (about a minute: a virtualenv with every dependency, from pip's index and cache) but
bounded; `-m "not slow"` leaves it out. Needs root, apt and Debian's python3.11.
"""

from __future__ import annotations

import grp
import json
import os
import pwd
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from tests import systemd_namespace
from tests.conftest import ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.timeout(900),
    pytest.mark.skipif(os.geteuid() != 0, reason="installs a package: needs root"),
    pytest.mark.skipif(not (shutil.which("dpkg-deb") and shutil.which("apt-get")),
                       reason="needs dpkg-deb and apt-get (Debian)"),
    pytest.mark.skipif(not Path("/usr/bin/python3.11").exists(),
                       reason="needs Debian 12's python3.11"),
]
APT = ["apt-get", "-o", "DPkg::Lock::Timeout=600", "-y", "-q"]


def installed(package: str) -> bool:
    result = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True,
                            text=True)
    return "ok installed" in result.stdout or "config-files" in result.stdout


def as_monitor(*args: str) -> subprocess.CompletedProcess:
    runuser = shutil.which("runuser") or "/usr/sbin/runuser"
    return subprocess.run([runuser, "-u", "monitor", "--", "/usr/bin/monitor", *args],
                          capture_output=True, text=True, timeout=300, cwd="/",
                          env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})


def check_smartctl_sudo_rule() -> None:
    """The README's SMART setup: the example sudoers rule lets the monitor user run exactly the
    agent's smartctl command lines as root through /usr/lib/monitor/smartctl-sudo."""
    rule = Path("/etc/sudoers.d/monitor-smartctl")
    shutil.copy("/usr/share/doc/monitor/examples/sudoers.smartctl", rule)
    rule.chmod(0o440)
    try:
        assert subprocess.run(["visudo", "-c"], capture_output=True).returncode == 0

        def smartctl(*args: str) -> subprocess.CompletedProcess:
            runuser = shutil.which("runuser") or "/usr/sbin/runuser"
            return subprocess.run([runuser, "-u", "monitor", "--", "/usr/lib/monitor/smartctl-sudo",
                                   *args], capture_output=True, text=True, timeout=60)

        allowed = [("--scan-open", "--json"), ("--json", "-a", "-n", "standby", "/dev/sda"),
                   ("--json", "-a", "-n", "standby", "-d", "megaraid,0", "/dev/bus/0"),
                   ("--json", "-a", "-n", "standby", "/dev/disk/by-id/nvme-eui.0025")]
        for args in allowed:
            result = smartctl(*args)
            assert "sudo:" not in result.stderr, (args, result.stderr)  # smartctl itself ran
        refused = [("-s", "on", "/dev/sda"), ("--json", "-a", "-n", "standby", "/dev/sda", "-s", "on"),
                   ("--json", "-a", "-n", "standby", "/dev/../etc/shadow"),
                   ("--json", "-a", "/dev/sda"), ("--scan-open",)]
        for args in refused:
            result = smartctl(*args)
            assert result.returncode != 0 and "sudo:" in result.stderr, args
    finally:
        rule.unlink()


def properties(inside: systemd_namespace.Inside, *names: str) -> dict[str, str]:
    shown = inside("systemctl", "show", "monitor.service", "-p", ",".join(names)).stdout
    return dict(line.split("=", 1) for line in shown.splitlines() if "=" in line)


def journal(inside: systemd_namespace.Inside, *options: str) -> list[dict]:
    out = inside("journalctl", "-u", "monitor.service", "-o", "json", "--no-pager", *options).stdout
    return [json.loads(line) for line in out.splitlines() if line.startswith("{")]


def check_under_systemd(tmp_path: Path) -> None:
    """The installed unit under Debian's systemd (booted in namespaces of its own when this
    machine's PID 1 is something else): started as Type=notify, hardened as it says, logging to
    the journal with priorities, reloaded by SIGHUP and stopped cleanly."""
    status_file = Path("/var/lib/monitor/state/status.json")
    status_file.unlink()  # the one `collect` wrote: the service writes its own
    with systemd_namespace.booted(tmp_path / "systemd.log") as inside:
        start = inside("systemctl", "start", "monitor.service")  # returns after READY=1
        assert start.returncode == 0, start.stderr + inside("journalctl", "-n", "50").stdout
        shown = properties(inside, "ActiveState", "SubState", "StatusText", "MainPID", "NRestarts")
        assert (shown["ActiveState"], shown["SubState"]) == ("active", "running"), shown
        assert shown["StatusText"].startswith("running: host every ")
        pid = shown["MainPID"]
        proc = dict(line.split(":\t", 1) for line in
                    inside("cat", f"/proc/{pid}/status").stdout.splitlines() if ":\t" in line)
        assert proc["Uid"].split()[0] == str(pwd.getpwnam("monitor").pw_uid)
        assert int(proc["CapEff"], 16) == int(proc["CapBnd"], 16) == 1 << 13  # CAP_NET_RAW only
        assert (proc["NoNewPrivs"], proc["Seccomp"]) == ("1", "2")

        deadline = time.monotonic() + 120
        while not status_file.exists() and time.monotonic() < deadline:
            time.sleep(0.5)
        checks = {c["check"] for c in json.loads(status_file.read_text())["checks"]}
        assert "collector host" in checks
        # The unit's bind mounts (StateDirectory=, ReadWritePaths=, ProtectSystem=) are parts
        # of the root file system, not disks of their own.
        assert not {"disk /var/lib/monitor", "disk /etc/monitor"} & checks, sorted(checks)

        reload = inside("systemctl", "reload", "monitor.service")
        assert reload.returncode == 0, reload.stderr
        # systemd 252 ends the reload job when `kill -HUP` returns; the agent's RELOADING=1 may
        # come after that, and READY=1 ends the "reloading" state it starts.
        deadline = time.monotonic() + 60
        while (after := properties(inside, "ActiveState", "MainPID", "NRestarts"))[
                "ActiveState"] == "reloading" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert after == {"ActiveState": "active", "MainPID": pid, "NRestarts": "0"}

        stop = inside("systemctl", "stop", "monitor.service")
        assert stop.returncode == 0, stop.stderr
        assert properties(inside, "ActiveState", "Result") == {"ActiveState": "inactive",
                                                               "Result": "success"}
        # journald read the <N> prefixes: levels filter, and no time stamp of our own.
        lines = journal(inside)
        messages = {e["MESSAGE"]: e["PRIORITY"] for e in lines}
        started = next(m for m in messages if m.startswith("monitor ") and " started: " in m)
        assert messages[started] == "6" and messages["stopped"] == "6"
        assert any(m.startswith("config reloaded: ") for m in messages)
        stamped = [m for m in messages if re.match(r"<\d>|\d{4}-\d\d-\d\d \d\d:\d\d", m)]
        assert stamped == []
        warnings = journal(inside, "-p", "warning")
        assert warnings and all(int(e["PRIORITY"]) <= 4 for e in warnings)


def test_deb_builds_installs_runs_as_monitor_and_purges(tmp_path: Path):
    if installed("monitor"):
        pytest.skip("a monitor package is already installed here; not touching it")
    build = subprocess.run([str(ROOT / "packaging/build-deb")], capture_output=True, text=True,
                           timeout=600, env=dict(os.environ, DEB_OUT=str(tmp_path)))
    assert build.returncode == 0, build.stderr[-3000:]
    deb = Path(build.stdout.strip().splitlines()[-1])
    assert deb.name.startswith("monitor_") and deb.name.endswith("_amd64.deb")
    try:
        install = subprocess.run([*APT, "install", str(deb)], capture_output=True, text=True,
                                 timeout=600, env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]

        user = pwd.getpwnam("monitor")
        assert user.pw_dir == "/var/lib/monitor" and user.pw_uid < 1000  # a system user
        data = os.stat("/var/lib/monitor")
        assert data.st_uid == user.pw_uid
        config = os.stat("/etc/monitor/config.toml")
        assert (config.st_uid, config.st_gid) == (0, grp.getgrnam("monitor").gr_gid)
        assert config.st_mode & 0o777 == 0o640
        conffiles = subprocess.run(["dpkg-query", "-W", "-f=${Conffiles}", "monitor"],
                                   capture_output=True, text=True).stdout
        assert "/etc/monitor/config.toml" in conffiles
        text = Path("/etc/monitor/config.toml").read_text()
        assert 'data_dir = "/var/lib/monitor"' in text and '\nname = "demo-down"' not in text

        check = as_monitor("check-config")
        assert check.returncode == 0, check.stderr
        assert check.stdout.startswith("/etc/monitor/config.toml: OK")
        collect = as_monitor("collect", "--once")
        assert collect.returncode == 0, collect.stderr
        assert any(Path("/var/lib/monitor/rrd").rglob("*.rrd"))
        assert os.stat("/var/lib/monitor/state/status.json").st_uid == user.pw_uid
        status = as_monitor("status", "--json")
        assert 0 <= status.returncode <= 3, status.stderr
        assert any(c["check"] == "collector host" for c in json.loads(status.stdout)["checks"])

        # The unit as installed, with its binary and man page in place.
        if shutil.which("systemd-analyze"):
            verify = subprocess.run(["systemd-analyze", "verify", "monitor.service"],
                                    capture_output=True, text=True, timeout=60)
            assert verify.returncode == 0 and verify.stderr == "", verify.stderr
        assert Path("/usr/share/man/man1/monitor.1.gz").exists()
        if shutil.which("sudo"):
            check_smartctl_sudo_rule()
        why_not = systemd_namespace.available()
        if why_not is None:
            check_under_systemd(tmp_path)
        else:
            print(f"not started under systemd: {why_not}")
    finally:
        purge = subprocess.run([*APT, "purge", "monitor"], capture_output=True, text=True,
                               timeout=600)
    assert purge.returncode == 0, purge.stderr
    assert not installed("monitor")
    for path in ("/opt/monitor", "/etc/monitor", "/var/lib/monitor", "/usr/bin/monitor",
                 "/etc/systemd/system/multi-user.target.wants/monitor.service"):
        assert not os.path.lexists(path), f"{path} left behind by purge"
    with pytest.raises(KeyError):
        pwd.getpwnam("monitor")
