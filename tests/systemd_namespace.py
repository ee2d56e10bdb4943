"""Debian's systemd as PID 1 of its own PID, mount, UTS and network namespaces, for testing the
installed unit on a machine whose own PID 1 is no systemd (a VM or container init).

Inside, before systemd starts: a private /run and /tmp (systemd-tmpfiles would otherwise clean
the machine's shared /tmp), a volatile journal, a boot target that starts journald only, and
monitor.service without sysinit.target's ordering (sysinit.target would run sysctl, udev and
tmpfiles on the shared kernel and file system). The unit's own settings, its hardening, stay as
installed. The empty cgroups systemd leaves in the shared hierarchies are removed afterwards.
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil

BOOT = r"""
set -eu
mount -t proc proc /proc
mount -t tmpfs -o mode=755 tmpfs /run
mount -t tmpfs -o mode=1777 tmpfs /tmp
mkdir -p /run/systemd/system/monitor.service.d /run/systemd/journald.conf.d
printf '[Journal]\nStorage=volatile\n' > /run/systemd/journald.conf.d/volatile.conf
printf '[Unit]\nDefaultDependencies=no\nWants=systemd-journald.service systemd-journald.socket\n' \
    > /run/systemd/system/test-boot.target
printf '[Unit]\nDefaultDependencies=no\n' > /run/systemd/system/monitor.service.d/test-boot.conf
hostname monitor-test
exec env -i container=test PATH=/usr/sbin:/usr/bin:/sbin:/bin /lib/systemd/systemd --system \
    --unit=test-boot.target --log-target=console --show-status=no
"""

Inside = Callable[..., subprocess.CompletedProcess]
CGROUPS = Path("/sys/fs/cgroup")


def available() -> str | None:
    """Why systemd cannot be booted here, or None."""
    for tool in ("unshare", "nsenter"):
        if not shutil.which(tool):
            return f"{tool} (util-linux) is missing"
    if not Path("/lib/systemd/systemd").exists():
        return "systemd is not installed"
    if Path("/run/systemd/system").exists():
        return "this machine already runs systemd (test the unit there)"
    return None


def _cgroups() -> set[Path]:
    return {p for p in CGROUPS.glob("*/*") if p.is_dir()} | {p for p in CGROUPS.glob("*/*/*")
                                                              if p.is_dir()}


@contextlib.contextmanager
def booted(log_path: Path, timeout: float = 60) -> Iterator[Inside]:
    """Boot systemd in new namespaces; yields inside(*argv) that runs a command in them."""
    before = _cgroups()
    with open(log_path, "wb") as log:
        outer = subprocess.Popen(["unshare", "--pid", "--fork", "--kill-child", "--mount", "--uts",
                                  "--net", "--propagation", "private", "sh", "-c", BOOT],
                                 stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    init: int | None = None

    def inside(*argv: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(init), "-m", "-p", "-u", "-n", *argv],
                              capture_output=True, text=True, timeout=timeout)

    try:
        deadline = time.monotonic() + timeout
        state = ""
        while state not in ("running", "degraded"):
            if outer.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"systemd did not boot ({state or 'not started'}): "
                                   f"{log_path.read_text(errors='replace')[-3000:]}")
            time.sleep(0.2)
            if init is None:
                children = psutil.Process(outer.pid).children()
                if children and children[0].name() == "systemd":
                    init = children[0].pid
                continue
            state = inside("systemctl", "is-system-running").stdout.strip()
        yield inside
    finally:
        if outer.poll() is None and init is not None:
            with contextlib.suppress(subprocess.SubprocessError, OSError):
                inside("systemctl", "poweroff", "--no-block", timeout=30)
        try:
            outer.wait(60)
        except subprocess.TimeoutExpired:
            outer.kill()  # --kill-child: systemd, PID 1 there, and so the whole namespace
            outer.wait(30)
        for left in sorted(_cgroups() - before, key=lambda p: -len(p.parts)):
            with contextlib.suppress(OSError):  # only empty ones go; a busy cgroup stays
                left.rmdir()
