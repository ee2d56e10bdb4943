"""Processes: running an external command the safe way (an argv list, never a shell; no stdin;
a timeout), and helper processes that end with the process they work for."""

from __future__ import annotations

import asyncio
import logging
import os
import select
import threading
from collections.abc import Mapping, Sequence


class CommandMissing(RuntimeError):
    """The program does not exist: callers can say which package to install."""


class CommandFailed(RuntimeError):
    """The program exited non-zero; `stderr` is all it wrote there (for callers that know
    which line of their tool's output carries the error)."""

    def __init__(self, message: str, status: int, stderr: str) -> None:
        super().__init__(message)
        self.status = status
        self.stderr = stderr


async def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None
) -> bytes:
    """Run `argv` and return its standard output.

    Raises CommandMissing when the program does not exist, RuntimeError with a message naming
    the command when it cannot start, outlasts `timeout` (it is killed) or exits non-zero (with
    the last line of its standard error: where tools and tracebacks put the actual error).
    """
    what = " ".join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, env=None if env is None else dict(env))
    except FileNotFoundError:
        raise CommandMissing(f"cannot run {what}: {argv[0]} not found") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run {what}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        text = err.decode("utf-8", "replace")
        last = text.strip().splitlines()[-1:]
        raise CommandFailed(f"{what} exited with status {proc.returncode}"
                            + (f": {last[0].strip()}" if last else ""), proc.returncode or -1, text)
    return out


def exit_with(pid: int) -> None:
    """End this process as soon as process `pid` ends, however it ends (kill -9 included).

    For worker processes: a pool's workers otherwise outlive a killed parent, each holding its
    memory. PR_SET_PDEATHSIG cannot do it: a forkserver's workers are the server's children,
    not the pool owner's, and it fires when the parent *thread* ends. A pidfd becomes readable
    when the process exits, so a thread waits on it without polling or PID-reuse races."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:  # it ended before we looked
        os._exit(1)
    except OSError as exc:  # a kernel before 5.3: the process works on, unwatched
        logging.getLogger(__name__).warning("cannot watch process %d (%s): this process may "
                                            "outlive it", pid, exc)
        return

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(1)

    threading.Thread(target=watch, name=f"exit-with-{pid}", daemon=True).start()
