"""systemd's readiness protocol (sd_notify(3)) for `monitor run` under Type=notify.

systemd passes the address of a datagram socket in $NOTIFY_SOCKET (a path, or "@name" for the
abstract namespace); the agent sends newline-separated VAR=VALUE lines to it: READY=1 once its
jobs are scheduled, RELOADING=1 ... READY=1 around a SIGHUP reload, STOPPING=1 when it shuts
down, and WATCHDOG=1 at half the $WATCHDOG_USEC period so that a hung agent is restarted.
Without $NOTIFY_SOCKET (a terminal, cron, tests) every call does nothing. A send that fails is
logged once and never stops the agent.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
from collections.abc import Mapping

log = logging.getLogger("monitor")


class Notifier:
    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        environ = os.environ if environ is None else environ
        address = environ.get("NOTIFY_SOCKET", "")
        # "@name" is the abstract namespace, written with a leading NUL byte.
        self.address = "\0" + address[1:] if address.startswith("@") else address
        self._socket: socket.socket | None = None
        self._failed = False
        self.watchdog_period = watchdog_period(environ)

    @property
    def enabled(self) -> bool:
        return bool(self.address)

    def send(self, **fields: str | int) -> bool:
        """Send VAR=VALUE lines (keyword names in upper case); True if systemd got them."""
        if not self.address:
            return False
        message = "\n".join(f"{key.upper()}={value}" for key, value in fields.items())
        try:
            if self._socket is None:
                self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
            self._socket.sendto(message.encode("utf-8"), self.address)
            return True
        except OSError as exc:
            if not self._failed:
                log.warning("cannot notify systemd at %s: %s", self.address.replace("\0", "@"), exc)
                self._failed = True
            return False

    def ready(self, status: str) -> bool:
        return self.send(ready=1, status=status, mainpid=os.getpid())

    def reloading(self) -> bool:
        # MONOTONIC_USEC lets systemd 253+ tell this reload from an older one (sd_notify(3)).
        return self.send(reloading=1, monotonic_usec=time.monotonic_ns() // 1000,
                         status="reloading the config")

    def stopping(self) -> bool:
        return self.send(stopping=1, status="stopping: finishing running jobs")

    async def keep_alive(self) -> None:
        """WATCHDOG=1 from the event loop at half the watchdog period, until cancelled: if the
        loop hangs, the pings stop and systemd restarts the service."""
        if not self.enabled or self.watchdog_period is None:
            return
        while True:
            self.send(watchdog=1)
            await asyncio.sleep(self.watchdog_period / 2)

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None


def watchdog_period(environ: Mapping[str, str]) -> float | None:
    """The watchdog period systemd asks for in seconds, or None (none set, or meant for
    another process: $WATCHDOG_PID names the one that must ping)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    pid = environ.get("WATCHDOG_PID")
    if usec <= 0 or (pid and pid != str(os.getpid())):
        return None
    return usec / 1_000_000
