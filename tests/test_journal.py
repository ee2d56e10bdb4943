"""Logging under journald: `<N>` priorities and no time stamps when stderr is $JOURNAL_STREAM;
the usual time-stamped format everywhere else."""

from __future__ import annotations

import logging
import os
import re
import socket
import subprocess
from pathlib import Path

import pytest

from monitor.cli import build_parser, setup_logging
from tests.cli_helpers import HOST_ONLY
from tests.conftest import MONITOR, ROOT

CONFIG = HOST_ONLY + """\
[smtp]
password = "inline-secret"
"""


def run_agent(tmp_path: Path, journal: bool) -> str:
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", interval="1s"))
    config.chmod(0o644)  # readable by others: the inline secret gives a warning
    log = tmp_path / "stderr.log"
    with open(log, "w") as stderr:
        stat = os.fstat(stderr.fileno())
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        env.pop("JOURNAL_STREAM", None)
        if journal:
            env["JOURNAL_STREAM"] = f"{stat.st_dev}:{stat.st_ino}"
        subprocess.run([*MONITOR, "--config", str(config), "run", "--for", "1s"], env=env,
                       stderr=stderr, stdout=subprocess.DEVNULL, timeout=60, check=True)
    return log.read_text()


def test_journal_stream_gets_priorities_and_no_timestamps(tmp_path: Path):
    lines = run_agent(tmp_path, journal=True).splitlines()
    assert lines and all(re.match(r"<[0-7]>", line) for line in lines), lines
    assert any(line.startswith("<4>") and "inline secret" in line for line in lines)
    assert any(line.startswith("<6>monitor ") and "started" in line for line in lines)
    assert not any(re.match(r"<\d>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", line) for line in lines)


def test_elsewhere_lines_keep_their_time_stamps_and_levels(tmp_path: Path):
    lines = run_agent(tmp_path, journal=False).splitlines()
    stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
    assert any(re.match(stamp + r"WARNING +.*inline secret", line) for line in lines), lines
    assert any(re.match(stamp + r"INFO +monitor .* started", line) for line in lines)
    assert not any(line.startswith("<") for line in lines)


def test_a_stale_journal_stream_is_ignored(tmp_path: Path, monkeypatch):
    # stderr redirected elsewhere (a shell in between): $JOURNAL_STREAM names another file.
    from monitor.journal import stderr_is_journal

    with open(tmp_path / "a", "w") as a, open(tmp_path / "b", "w") as b:
        stat = os.fstat(a.fileno())
        env = {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}
        assert stderr_is_journal(a, env) and not stderr_is_journal(b, env)
        assert not stderr_is_journal(a, {"JOURNAL_STREAM": "garbage"})


@pytest.fixture
def root_logger():
    """setup_logging configures the root logger of this process: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    for handler in handlers:
        root.removeHandler(handler)
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_syslog_gets_daemon_facility_priorities_and_a_tag(tmp_path: Path, root_logger):
    address = tmp_path / "log"  # stands for /dev/log
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslogd:
        syslogd.bind(str(address))
        syslogd.settimeout(10)
        setup_logging(0, False, str(address))
        logging.getLogger("monitor").warning("disk %s is full", "/var")
        logging.getLogger("monitor").info("started")
        received = [syslogd.recv(4096).decode() for _ in range(2)]
    # <facility daemon (3) * 8 + priority>: 28 warning, 30 info.
    assert received == [f"<28>monitor[{os.getpid()}]: disk /var is full\x00",
                        f"<30>monitor[{os.getpid()}]: started\x00"]


@pytest.mark.skipif(os.path.exists("/dev/log"), reason="a syslog daemon listens here")
def test_no_syslog_daemon_falls_back_to_stderr_with_a_warning(tmp_path: Path):
    config = tmp_path / "config.toml"
    config.write_text(CONFIG.format(data=tmp_path / "data", interval="1s"))
    config.chmod(0o644)  # a warning to log: the inline secret
    result = subprocess.run([*MONITOR, "--syslog", "-c", str(config), "check-config"],
                            capture_output=True, text=True, timeout=60,
                            env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert result.returncode == 0
    assert "cannot log to syslog at /dev/log" in result.stderr
    assert "inline secret" in result.stderr


def test_syslog_option_is_global():
    args = build_parser().parse_args(["collect", "--syslog"])
    assert args.syslog is True
