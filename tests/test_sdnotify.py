"""systemd's notify protocol: the real agent (`monitor run`) talks to a datagram socket the test
creates, as systemd's would be, through start, watchdog, SIGHUP reload and SIGTERM."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from monitor.sdnotify import Notifier, watchdog_period
from tests.cli_helpers import HOST_ONLY
from tests.conftest import MONITOR, ROOT


def receive(sock: socket.socket, timeout: float = 30.0) -> dict[str, str]:
    sock.settimeout(timeout)
    data = sock.recv(4096).decode()
    return dict(line.split("=", 1) for line in data.splitlines())


def receive_until(sock: socket.socket, key: str, timeout: float = 30.0) -> tuple[dict, list[dict]]:
    """The first message with `key`, and the ones before it."""
    before = []
    deadline = time.monotonic() + timeout
    while True:
        message = receive(sock, max(0.1, deadline - time.monotonic()))
        if key in message:
            return message, before
        before.append(message)


def test_agent_notifies_ready_watchdog_reloading_stopping(tmp_path: Path, write_config):
    config = write_config(HOST_ONLY.format(data=tmp_path / "data", interval="1m"))
    address = tmp_path / "notify.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(address))
        env = dict(os.environ, PYTHONPATH=str(ROOT), NOTIFY_SOCKET=str(address),
                   WATCHDOG_USEC="400000")
        proc = subprocess.Popen([*MONITOR, "--config", str(config), "run"], env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            ready, _ = receive_until(sock, "READY")
            assert ready["READY"] == "1" and ready["MAINPID"] == str(proc.pid)
            assert ready["STATUS"].startswith("running: host every 1m")
            # The watchdog: at half of WATCHDOG_USEC, from the running event loop.
            for _ in range(3):
                assert receive(sock) == {"WATCHDOG": "1"}

            config.write_text(HOST_ONLY.format(data=tmp_path / "data", interval="2m"))
            proc.send_signal(signal.SIGHUP)
            reloading, _ = receive_until(sock, "RELOADING")
            assert int(reloading["MONOTONIC_USEC"]) > 0
            ready, between = receive_until(sock, "READY")
            assert ready["STATUS"].startswith("running: host every 2m")
            assert all(m == {"WATCHDOG": "1"} for m in between)

            proc.send_signal(signal.SIGTERM)
            stopping, _ = receive_until(sock, "STOPPING")
            assert stopping["STOPPING"] == "1"
            _, err = proc.communicate(timeout=30)
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert "config reloaded" in err


def test_abstract_socket_address_and_no_socket_means_silence():
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        name = f"monitor-test-{os.getpid()}"
        sock.bind("\0" + name)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        assert notifier.stopping()
        assert receive(sock, 5)["STOPPING"] == "1"
        notifier.close()
    quiet = Notifier({})
    assert not quiet.enabled and not quiet.ready("x")


def test_unreachable_socket_is_logged_once_and_never_raises(tmp_path: Path, caplog):
    notifier = Notifier({"NOTIFY_SOCKET": str(tmp_path / "gone.sock")})
    assert not notifier.ready("x") and not notifier.stopping()
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1


def test_watchdog_period_only_for_this_process():
    assert watchdog_period({"WATCHDOG_USEC": "30000000"}) == 30.0
    assert watchdog_period({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert watchdog_period({"WATCHDOG_USEC": "x"}) is None
    assert watchdog_period({}) is None
