"""Shared test helpers: real rrdtool files in temporary directories, a config writer."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
MONITOR = [sys.executable, "-m", "monitor"]


@pytest.fixture
def write_config(tmp_path: Path):
    """Write a config file (dedented) into tmp_path and return its path."""

    def write(text: str, name: str = "config.toml") -> Path:
        path = tmp_path / name
        path.write_text(textwrap.dedent(text))
        path.chmod(0o600)
        return path

    return write


@pytest.fixture
def rrdcached(tmp_path: Path):
    """A real rrdcached on a unix socket in tmp_path; yields its address "unix:/path"."""
    import shutil
    import subprocess
    import time

    binary = shutil.which("rrdcached") or "/usr/bin/rrdcached"
    sock = tmp_path / "rrdcached.sock"
    journal = tmp_path / "journal"
    journal.mkdir()
    proc = subprocess.Popen(
        [binary, "-g", "-l", f"unix:{sock}", "-p", str(tmp_path / "rrdcached.pid"),
         "-j", str(journal), "-w", "3600", "-z", "1", "-f", "7200", "-F"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    for _ in range(200):
        if sock.exists():
            break
        time.sleep(0.02)
    else:
        proc.kill()
        pytest.fail("rrdcached did not start")
    yield f"unix:{sock}"
    proc.terminate()
    proc.wait(timeout=10)
