import subprocess

from tests.conftest import MONITOR, ROOT


def test_embedded_default_config_is_valid():
    result = subprocess.run([*MONITOR, "--config", str(ROOT / "config.toml"), "check-config"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert "OK" in result.stdout
