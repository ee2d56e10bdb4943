"""The real `monitor` command in a subprocess: collect, check-config, signals."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

from tests.conftest import MONITOR, ROOT

CONFIG = """\
[agent]
data_dir = "{data}"
interval = "{interval}"
jitter = "0s"

[disks]
enabled = false
"""


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*MONITOR, *args], capture_output=True, text=True, timeout=90, env=env, **kw)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_help_lists_commands():
    out = run(["--help"]).stdout
    for command in ("run", "collect", "check-config"):
        assert command in out


def test_collect_once_writes_rrd_files(tmp_path: Path, write_config):
    config = write_config(CONFIG.format(data=tmp_path / "data", interval="1m"))
    result = run(["--config", str(config), "collect", "--once", "--only", "host"])
    assert result.returncode == 0, result.stderr
    index = json.loads((tmp_path / "data/rrd/index.json").read_text())
    metrics = {m for f in index["files"].values() for m in f["metrics"]}
    assert {"load1", "memory_used_bytes", "in_octets"} <= metrics
    status = json.loads((tmp_path / "data/state/status.json").read_text())
    assert {c["check"] for c in status["checks"]} == {"host", "collector host"}


def test_bad_config_exits_2_with_location(tmp_path: Path, write_config):
    config = write_config('[agent]\ninterval = "soon"\n')
    result = run(["--config", str(config), "check-config"])
    assert result.returncode == 2
    assert f"{config}:2: agent.interval: expected a duration" in result.stderr


def test_check_config_summarises(tmp_path: Path, write_config):
    config = write_config(CONFIG.format(data=tmp_path / "data", interval="5m"))
    result = run(["--config", str(config), "check-config"])
    assert result.returncode == 0, result.stderr
    assert "host" in result.stdout and "every 5m" in result.stdout


def start_agent(config: Path, *extra: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.Popen([*MONITOR, "--config", str(config), "run", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def test_sigterm_stops_cleanly_after_writing(tmp_path: Path, write_config):
    data = tmp_path / "data"
    config = write_config(CONFIG.format(data=data, interval="1s"))
    proc = start_agent(config)
    try:
        assert wait_for(lambda: (data / "rrd/index.json").exists())
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert "stopped" in err
    assert list((data / "rrd").glob("*/*.rrd"))


def test_sighup_reloads_and_keeps_old_config_when_new_is_bad(tmp_path: Path, write_config):
    data = tmp_path / "data"
    config = write_config(CONFIG.format(data=data, interval="1s"))
    proc = start_agent(config)
    try:
        assert wait_for(lambda: (data / "rrd/index.json").exists())
        config.write_text('[agent]\nintervall = "1m"\n')
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        config.write_text(CONFIG.format(data=data, interval="2s"))
        proc.send_signal(signal.SIGHUP)
        time.sleep(1.0)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    assert 'reload refused, keeping the running config' in err
    assert 'agent.intervall: unknown key (did you mean "interval"?)' in err
    assert "config reloaded: host every 2s" in err


def test_run_for_stops_by_itself(tmp_path: Path, write_config):
    config = write_config(CONFIG.format(data=tmp_path / "data", interval="1s"))
    result = run(["--config", str(config), "run", "--for", "2s"])
    assert result.returncode == 0, result.stderr
    assert "ran for 2s; stopping" in result.stderr
