"""The current state of every check and since when it holds, for pages, digests and `monitor`.

Persisted as JSON in the state directory after each run so that a restart keeps "since when".
"""

from __future__ import annotations

import fnmatch
import json
import logging
import threading
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from monitor.files import atomic_write
from monitor.model import CheckResult, State

log = logging.getLogger(__name__)


@dataclass
class CheckStatus:
    target: str
    check: str
    state: State
    message: str
    since: float
    last: float
    interval: float = 300.0

    @property
    def key(self) -> str:
        return f"{self.target}/{self.check}"

    def stale(self, now: float, missed: int = 3) -> bool:
        """Not reported for `missed` intervals: the agent (or this collector) is not running."""
        return now - self.last > missed * max(self.interval, 60.0)

    def matches(self, pattern: str) -> bool:
        """A shell glob on the target, the check or "TARGET CHECK"."""
        return any(fnmatch.fnmatchcase(text, pattern)
                   for text in (self.target, self.check, f"{self.target} {self.check}"))


class StatusBook:
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._checks: dict[str, CheckStatus] = {}
        self._load()

    def _load(self) -> None:
        try:
            raw = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.error("status file %s unreadable (%s); states start afresh", self.path, exc)
            return
        try:
            checks = [CheckStatus(**{**entry, "state": State(entry["state"])})
                      for entry in raw.get("checks", [])]
        except (AttributeError, KeyError, TypeError, ValueError) as exc:  # another version's file
            log.error("status file %s has entries this version cannot read (%s); states start "
                      "afresh", self.path, exc)
            return
        self._checks = {status.key: status for status in checks}

    def update(
        self, results: Iterable[CheckResult], interval: float = 300.0
    ) -> list[tuple[CheckStatus | None, CheckStatus]]:
        """Record results; returns (previous, current) for each check whose state changed."""
        changes = []
        with self._lock:
            for r in results:
                old = self._checks.get(r.key)
                since = old.since if old and old.state == r.state else r.timestamp
                new = CheckStatus(r.target, r.check, r.state, r.message, since, r.timestamp,
                                  interval)
                self._checks[r.key] = new
                if old is None or old.state != new.state:
                    changes.append((old, new))
        return changes

    def expire(self, now: float, missed: int = 3) -> list[CheckStatus]:
        """Forget checks nobody reported for `missed` intervals (a removed mount or service),
        so pages and digests do not show them forever; returns what was dropped."""
        with self._lock:
            stale = [s for s in self._checks.values() if s.stale(now, missed)]
            for status in stale:
                del self._checks[status.key]
        return stale

    def save(self) -> None:
        with self._lock:
            data = [dict(asdict(s), state=int(s.state)) for s in self._checks.values()]
        atomic_write(self.path, json.dumps({"version": 1, "checks": data}, indent=1))

    def all(self) -> list[CheckStatus]:
        """Every check, worst first, then by target and name."""
        with self._lock:
            items = list(self._checks.values())
        return sorted(items, key=lambda s: (-s.state.severity, s.target, s.check))
