"""The explicit registry of collector kinds: name -> module with `build(config)`.

`collect --once --only NAME` and the job names in logs use these names.
"""

from __future__ import annotations

from collections.abc import Callable

from collectors import backups, blocklists, disks, host, lists, mailboxes, maillog, services, snmp
from monitor.config import Config
from monitor.model import Collector

COLLECTORS: dict[str, Callable[[Config], list[Collector]]] = {
    "host": host.build,
    "snmp": snmp.build,
    "services": services.build,
    "disks": disks.build,
    "mailboxes": mailboxes.build,
    "lists": lists.build,
    "backups": backups.build,
    "blocklists": blocklists.build,
    "maillog": maillog.build,
}


def build_collectors(config: Config, only: str | None = None) -> list[Collector]:
    """Every enabled collector of the config (or of one kind), ready to schedule."""
    if only is not None and only not in COLLECTORS:
        raise KeyError(only)
    out: list[Collector] = []
    for name, build in COLLECTORS.items():
        if only is None or only == name:
            out.extend(build(config))
    return out
