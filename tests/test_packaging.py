"""What the package ships, checked without building it: the installed config, the man page,
the systemd unit, `monitor init-config` and the version."""

from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from monitor import __version__
from monitor.cli import build_parser
from monitor.config import parse_config
from monitor.reference import installed_config, reference_text
from tests.cli_helpers import subcommands
from tests.conftest import MONITOR, ROOT


def run(args, **kw):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([*MONITOR, *args], capture_output=True, text=True, timeout=60, env=env,
                          **kw)


def test_packaged_reference_is_the_repository_config_toml():
    assert reference_text() == (ROOT / "config.toml").read_text(encoding="utf-8")


def test_installed_config_has_no_demo_and_is_valid():
    text = installed_config(reference_text())
    config = parse_config(text, "installed.toml", base_dir=Path("/etc/monitor"))
    assert config.agent.data_dir == Path("/var/lib/monitor")
    assert config.snmp.devices == []
    assert not [s.name for s in config.services if s.name.startswith("demo")]
    assert [b.name for b in config.backups] == []
    assert (config.smtp.host, config.smtp.port) == ("localhost", 25)
    assert "demo" not in str(config.mailboxes.paths) and "demo" not in str(config.lists.post_log)
    # Still the whole commented reference: every comment line of it is kept.
    comments = [line for line in reference_text().splitlines() if line.lstrip().startswith("#")]
    assert set(comments) <= set(text.splitlines())


def test_init_config_writes_0640_and_keeps_an_existing_file(tmp_path: Path):
    target = tmp_path / "etc/config.toml"
    result = run(["init-config", str(target)], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert target.stat().st_mode & 0o777 == 0o640
    assert target.read_text() == installed_config(reference_text())
    target.write_text("# mine\n")
    again = run(["init-config", str(target)], cwd=tmp_path)
    assert again.returncode == 2 and "exists" in again.stderr
    assert target.read_text() == "# mine\n"
    assert run(["init-config", str(target), "--force"], cwd=tmp_path).returncode == 0
    assert run(["init-config"], cwd=tmp_path).stdout == target.read_text()


def test_version_comes_from_the_package_metadata():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert __version__ == importlib.metadata.version(project["name"]) == project["version"]
    assert run(["--version"]).stdout.strip() == f"monitor {project['version']}"


def test_man_page_lists_every_command_and_option():
    page = subprocess.run([sys.executable, str(ROOT / "scripts/make_manpage.py")],
                          capture_output=True, text=True, check=True).stdout
    assert page.startswith(".TH MONITOR 1")
    for path, sub in subcommands(build_parser()):
        assert f".SS {' '.join(path)}".replace("-", "\\-") in page
        for action in sub._actions:
            for option in action.option_strings:
                assert option.replace("-", "\\-") in page, (path, option)
    # The global options once, under OPTIONS, not again under each of the commands.
    assert page.count("config file (TOML)") == 1
    if shutil.which("man"):
        rendered = subprocess.run(["man", "-l", "-"], input=page, capture_output=True, text=True,
                                  env=dict(os.environ, MANWIDTH="100"))
        assert rendered.returncode == 0 and "init-config" in rendered.stdout


UNIT = ROOT / "packaging/monitor.service"


def unit_settings() -> dict[str, list[str]]:
    settings: dict[str, list[str]] = {}
    for line in UNIT.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            settings.setdefault(key, []).append(value)
    return settings


def test_unit_is_hardened():
    s = unit_settings()
    expected = {"Type": "notify", "User": "monitor", "StateDirectory": "monitor",
                "ConfigurationDirectory": "monitor", "ProtectSystem": "strict",
                "ProtectHome": "read-only", "PrivateTmp": "yes", "NoNewPrivileges": "yes",
                "CapabilityBoundingSet": "CAP_NET_RAW", "AmbientCapabilities": "CAP_NET_RAW",
                "ExecReload": "/bin/kill -HUP $MAINPID"}
    assert {k: s[k][0] for k in expected} == expected
    assert "WatchdogSec" in s
    assert s["ExecStart"] == ["/usr/bin/monitor --config /etc/monitor/config.toml run"]


@pytest.mark.skipif(not shutil.which("systemd-analyze"),
                    reason="systemd-analyze is absent (apt-get install systemd)")
def test_systemd_analyze_verify_accepts_the_unit(tmp_path: Path):
    # The unit as shipped, with ExecStart pointing at this tree's monitor (the installed one is
    # verified unchanged by tests/test_deb.py); any warning (an unknown or misspelt key) fails.
    executable = Path(sys.executable).with_name("monitor")
    unit = tmp_path / "monitor.service"
    unit.write_text(UNIT.read_text().replace("/usr/bin/monitor", str(executable)))
    verify = subprocess.run(["systemd-analyze", "verify", "--man=no", str(unit)],
                            capture_output=True, text=True, timeout=60)
    assert verify.returncode == 0 and verify.stderr == "", verify.stderr


def capability_ping(settings: dict[str, list[str]]) -> subprocess.CompletedProcess:
    """`monitor services` with a ping check, as nobody with the unit's NoNewPrivileges and
    capabilities, applied by setpriv the way systemd applies them."""
    # Outside pytest's private tmp_path: nobody must read the config.
    with tempfile.TemporaryDirectory(prefix="monitor-ping-") as directory:
        config = Path(directory, "ping.toml")
        config.write_text(f'[agent]\ndata_dir = "{directory}/data"\n[[services]]\nname = "ping"\n'
                          'kind = "ping"\nhost = "127.0.0.1"\ncount = 2\ntimeout = "5s"\n')
        os.chmod(directory, 0o755)
        config.chmod(0o644)
        return run_as_nobody(settings, config)


def run_as_nobody(settings: dict[str, list[str]], config: Path) -> subprocess.CompletedProcess:
    def caps(key: str) -> str:
        names = [c.removeprefix("CAP_").lower() for v in settings.get(key, []) for c in v.split()]
        return ",".join(["-all", *(f"+{n}" for n in names)])
    no_new_privs = ["--no-new-privs"] if settings["NoNewPrivileges"] == ["yes"] else []
    return subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *no_new_privs,
         f"--bounding-set={caps('CapabilityBoundingSet')}", f"--inh-caps={caps('AmbientCapabilities')}",
         f"--ambient-caps={caps('AmbientCapabilities')}", sys.executable, "-m", "monitor",
         "-c", str(config), "services"],
        capture_output=True, text=True, timeout=60, cwd=config.parent,
        env=dict(os.environ, PYTHONPATH=str(ROOT)))


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"),
                    reason="needs root and setpriv (util-linux) to drop privileges")
def test_the_units_capabilities_are_enough_for_ping():
    settings = unit_settings()
    result = capability_ping(settings)
    assert result.returncode == 0 and result.stdout.startswith("OK       ping: PING 127.0.0.1"), (
        result.stdout + result.stderr)
    low, high = map(int, Path("/proc/sys/net/ipv4/ping_group_range").read_text().split())
    if not low <= 65534 <= high:  # no unprivileged ICMP sockets here: the capability is needed
        without = capability_ping({**settings, "AmbientCapabilities": []})
        assert without.returncode != 0 and not without.stdout.startswith("OK"), without.stdout
