"""Real Debian daemons for the service-check tests (unbound, openssh-server), each a child of
the test with its own config in a temporary directory, on a free loopback port, killed at
teardown. A daemon that is not installed skips the test (the Makefile installs them)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _require(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(f"{binary} is not installed (see APT_PACKAGES in the Makefile)")


@contextlib.contextmanager
def _running(argv: list[str], ready, what: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def unbound(directory: Path, local_data: list[str], tcp: bool = True,
            interfaces: list[str] | None = None, port: int | None = None) -> Iterator[int]:
    """unbound answering for its local zones from `local_data` lines (unbound.conf syntax) on
    `interfaces` (default 127.0.0.1 and ::1; UDP, TCP too unless tcp=False); yields the port."""
    _require("/usr/sbin/unbound")
    import dns.message
    import dns.query

    port = port or free_port(socket.SOCK_DGRAM)
    interfaces = interfaces or ["127.0.0.1", *(["::1"] if ipv6_loopback() else [])]
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "unbound.conf"
    lines = ["server:", f"  port: {port}", "  do-daemonize: no", "  chroot: \"\"",
             "  username: \"\"", f"  directory: \"{directory}\"", "  pidfile: \"\"",
             "  use-syslog: no", "  logfile: \"\"", "  verbosity: 1", "  num-threads: 1",
             f"  do-tcp: {'yes' if tcp else 'no'}", "  do-ip6: yes",
             "  access-control: 127.0.0.0/8 allow", "  access-control: ::1 allow",
             "  module-config: \"iterator\"", "  do-not-query-localhost: no",
             *(f"  interface: {i}" for i in interfaces), *(f"  {line}" for line in local_data)]
    conf.write_text("\n".join(lines) + "\n")

    def ready() -> bool:
        try:
            dns.query.udp(dns.message.make_query("ready.invalid.", "A"), interfaces[0],
                          port=port, timeout=0.2)
            return True
        except Exception:
            return False

    with _running(["/usr/sbin/unbound", "-d", "-c", str(conf)], ready, "unbound",
                  directory / "unbound.log"):
        yield port


@contextlib.contextmanager
def sshd(directory: Path) -> Iterator[int]:
    """OpenSSH's sshd on 127.0.0.1 (and ::1) with a host key made here; yields the port."""
    _require("/usr/sbin/sshd")
    # sshd started as root insists on its privilege separation directory (systemd makes it).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    key = directory / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    conf = directory / "sshd_config"
    listen = ["ListenAddress 127.0.0.1", *(["ListenAddress [::1]"] if ipv6_loopback() else [])]
    conf.write_text("\n".join([f"Port {port}", *listen, f"HostKey {key}", "UsePAM no",
                               f"PidFile {directory / 'sshd.pid'}", "PasswordAuthentication no",
                               "KbdInteractiveAuthentication no"]) + "\n")
    with _running(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                  lambda: _accepts("127.0.0.1", port), "sshd", directory / "sshd.log"):
        yield port
