"""The mailboxes collector (see its issue); not implemented yet, so it contributes no jobs."""

from __future__ import annotations

from monitor.config import Config
from monitor.model import Collector


def build(config: Config) -> list[Collector]:
    return []
