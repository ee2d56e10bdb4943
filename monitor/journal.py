"""Log lines for the systemd journal (`<N>` priority prefixes, no time stamps of our own), or
for syslog (`--syslog`: the local socket, facility daemon).

Under systemd, standard error goes to journald, which stamps every line itself and reads a
leading "<N>" (syslog priority, sd-daemon(3)) as the line's level, so `journalctl -p warning`
finds the agent's warnings. systemd says where stderr goes in $JOURNAL_STREAM ("DEVICE:INODE");
it counts only when stderr still is that stream (not redirected by a shell in between).
"""

from __future__ import annotations

import logging
import logging.handlers
import os
from collections.abc import Mapping
from typing import TextIO

# Python levels -> syslog priorities (3 err, 4 warning, 6 info, 7 debug; 2 crit).
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4),
              (logging.INFO, 6))


class JournalFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(message)s")

    def format(self, record: logging.LogRecord) -> str:
        priority = next((p for level, p in PRIORITIES if record.levelno >= level), 7)
        # Every line of a multi-line message (a traceback) carries the priority.
        return "\n".join(f"<{priority}>{line}" for line in super().format(record).splitlines())


SYSLOG_SOCKET = "/dev/log"


def syslog_handler(address: str = SYSLOG_SOCKET) -> logging.Handler:
    """A handler for the local syslog daemon (rsyslog, syslog-ng): facility daemon, tag
    "monitor[PID]:"; the daemon adds the time stamp. OSError if nothing listens there."""
    handler = logging.handlers.SysLogHandler(address, logging.handlers.SysLogHandler.LOG_DAEMON)
    sock = getattr(handler, "socket", None)  # set by the handler, absent from typeshed's stub
    if sock is None or sock.fileno() == -1:
        # Not connected: it would retry on every line and print a traceback each time.
        handler.close()
        raise OSError(f"nothing listens on {address}")
    handler.setFormatter(logging.Formatter("monitor[%(process)d]: %(message)s"))
    return handler


def stderr_is_journal(stream: TextIO, environ: Mapping[str, str] | None = None) -> bool:
    """True if `stream` is the journal stream systemd connected ($JOURNAL_STREAM)."""
    environ = os.environ if environ is None else environ
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        stat = os.fstat(stream.fileno())
        return (stat.st_dev, stat.st_ino) == (int(device), int(inode))
    except (ValueError, OSError, AttributeError):
        return False
