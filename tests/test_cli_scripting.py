"""The scriptable CLI: `status` with Nagios exit codes, --json, global options after the
subcommand, complete --help of every subcommand."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time
from pathlib import Path

import pytest

from monitor.cli import build_parser, main
from monitor.model import CheckResult, State
from monitor.status import StatusBook
from tests.cli_helpers import subcommands
from tests.conftest import MONITOR, ROOT

CONFIG = """\
[agent]
data_dir = "{data}"
[disks]
enabled = false
"""


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*MONITOR, *args], capture_output=True, text=True, timeout=90, env=env,
                          cwd=cwd)


@pytest.fixture
def config(tmp_path: Path, write_config) -> Path:
    return write_config(CONFIG.format(data=tmp_path / "data"))


def record(config: Path, *results: CheckResult, interval: float = 60.0) -> None:
    book = StatusBook(config.parent / "data/state/status.json")
    book.update(results, interval)
    book.save()


def test_global_options_after_the_subcommand(tmp_path: Path, config: Path):
    # From another directory, so that no ./config.toml is found by default.
    result = run("check-config", "-c", str(config), "-q", cwd=tmp_path / "..")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{config}: OK")
    missing = run("status", "--config", str(tmp_path / "nope.toml"))
    assert missing.returncode == 2 and "nope.toml: no such file" in missing.stderr
    # Before the subcommand still works, and is not reset by the subparser's copy.
    args = build_parser().parse_args(["-c", "a.toml", "-v", "silence", "list"])
    assert (str(args.config), args.verbose) == ("a.toml", 1)
    args = build_parser().parse_args(["silence", "add", "x", "--for", "1h", "--reason", "r",
                                      "-c", "b.toml"])
    assert str(args.config) == "b.toml"


def test_backup_run_passes_options_after_the_separator_to_its_command():
    args = build_parser().parse_args(["backup-run", "nightly", "--", "tar", "-c", "-v", "x"])
    assert args.argv[-4:] == ["tar", "-c", "-v", "x"] and args.config is None


def test_discover_snmp_version_and_its_alias():
    parser = build_parser()
    assert parser.parse_args(["discover", "h", "--snmp-version", "3"]).snmp_version == "3"
    assert parser.parse_args(["discover", "h", "--version", "1"]).snmp_version == "1"
    assert run("--version").stdout.startswith("monitor ")


def test_status_exits_with_the_worst_state_and_filters_by_pattern(config: Path):
    record(config,
           CheckResult("mail.example.net", "smtp", State.CRITICAL, "no answer in 10 s"),
           CheckResult("mail.example.net", "imap", State.OK, "IMAP answered"),
           CheckResult("www.example.net", "https", State.WARNING, "certificate expires in 9 days"))
    result = run("-c", str(config), "status")
    assert result.returncode == 2, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "CRITICAL: 1 OK, 1 WARNING, 1 CRITICAL"
    assert lines[1].startswith("CRITICAL mail.example.net smtp: no answer in 10 s (since ")
    assert run("-c", str(config), "status", "www.*").returncode == 1
    assert run("-c", str(config), "status", "mail.example.net imap").returncode == 0
    nothing = run("-c", str(config), "status", "nosuch*")
    assert nothing.returncode == 3 and nothing.stdout.startswith("UNKNOWN: no checks matching")


def test_status_json_and_stale_checks_are_unknown(config: Path):
    old = time.time() - 3600
    record(config, CheckResult("dmz-router", "snmp", State.OK, "polled", timestamp=old))
    result = run("-c", str(config), "status", "--json")
    assert result.returncode == 3
    data = json.loads(result.stdout)
    assert (data["state"], data["exit_code"]) == ("UNKNOWN", 3)
    assert data["checks"] == [{"target": "dmz-router", "check": "snmp", "state": "OK",
                               "message": "polled", "since": old, "last": old, "stale": True}]
    assert "stale: last reported 1h" in run("-c", str(config), "status").stdout


def test_services_json(tmp_path: Path, write_config):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        config = write_config(CONFIG.format(data=tmp_path / "data") + f"""
[[services]]
name = "local-tcp"
kind = "tcp"
host = "127.0.0.1"
port = {port}
timeout = "5s"
""")
        result = run("-c", str(config), "services", "--json")
    assert result.returncode == 0, result.stderr
    [check] = json.loads(result.stdout)
    assert (check["target"], check["check"], check["state"]) == ("127.0.0.1", "local-tcp", "OK")
    assert check["metrics"]["response_seconds"] >= 0


def test_alerts_json_lists_silences(config: Path):
    add = run("-c", str(config), "silence", "add", "mail.*", "--for", "2h", "--reason", "swap")
    assert add.returncode == 0, add.stderr
    result = run("-c", str(config), "alerts", "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert set(data) == {"alerts", "silences", "outbox", "history"}
    assert [(s["pattern"], s["reason"]) for s in data["silences"]] == [("mail.*", "swap")]


def test_check_config_json(tmp_path: Path, config: Path, write_config):
    data = json.loads(run("-c", str(config), "check-config", "--json").stdout)
    assert data["ok"] and data["data_dir"] == str(tmp_path / "data")
    assert "host" in [j["name"] for j in data["jobs"]]
    bad = write_config('[agent]\ninterval = "soon"\n', "bad.toml")
    result = run("check-config", "--json", "-c", str(bad))
    assert result.returncode == 2
    error = json.loads(result.stdout)
    assert error["ok"] is False and error["error"].startswith(f"{bad}:2: agent.interval: ")


def test_every_subcommand_help_is_complete(capsys):
    commands = list(subcommands(build_parser()))
    assert {"run", "collect", "status", "init-config", "services", "silence add"} <= {
        " ".join(path) for path, _ in commands}
    for path, sub in commands:
        with pytest.raises(SystemExit) as exit_:
            main([*path, "--help"])
        assert exit_.value.code == 0
        out = capsys.readouterr().out
        assert out.startswith(f"usage: monitor {' '.join(path)}"), path
        for action in sub._actions:
            for option in action.option_strings:
                assert option in out, (path, option)
            if action.help and action.option_strings:
                assert action.help.split("%")[0][:20] in " ".join(out.split()), (path, action.dest)
        for option in ("-c CONFIG, --config CONFIG", "-v, --verbose", "-q, --quiet"):
            assert option in out, (path, option)
