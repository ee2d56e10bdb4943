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
