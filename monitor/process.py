"""Processes: running an external command the safe way (an argv list, never a shell; no stdin;
a timeout), and helper processes that end with the process they work for."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import select
import signal
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


OUTPUT_LIMIT = 256 * 1024 * 1024
"""The most standard output `run_command` keeps: a tool that writes more is stopped (its output
held in memory whole would take the agent down with it)."""
STDERR_LIMIT = 1024 * 1024


async def read_bounded(stream: asyncio.StreamReader | None, limit: int, *, stop: bool = False
                       ) -> tuple[bytes, bool]:
    """The first `limit` bytes of a pipe, and whether there was more: a program that floods its
    output costs its own time budget, never the agent's memory. The pipe is read to its end
    (the writer is never blocked on a full pipe) unless `stop`: then reading ends at the limit
    and the caller stops the writer."""
    kept = bytearray()
    size = 0
    while stream is not None and (chunk := await stream.read(65536)):
        kept += chunk[:max(0, limit - len(kept))]
        size += len(chunk)
        if stop and size > limit:
            break
    return bytes(kept), size > limit


async def reap(proc: asyncio.subprocess.Process) -> None:
    """Kill a program's whole process group and wait for it. Its pipes are read to their end
    first: asyncio's wait() returns only once they are closed, and a reader that stopped early
    never sees that. A pipe still open after a few seconds belongs to a process that left the
    group: give up."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(5):
            await asyncio.gather(read_bounded(proc.stdout, 0), read_bounded(proc.stderr, 0))
            await proc.wait()


async def _stdout_or_stop(proc: asyncio.subprocess.Process, limit: int) -> tuple[bytes, bool]:
    """Standard output up to `limit`; beyond it the group is killed (which ends stderr too)."""
    out, flooded = await read_bounded(proc.stdout, limit, stop=True)
    if flooded:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    return out, flooded


async def run_command(
    argv: Sequence[str], timeout: float, env: Mapping[str, str] | None = None,
    limit: int = OUTPUT_LIMIT,
) -> bytes:
    """Run `argv` (in a process group of its own) and return its standard output.

    Raises CommandMissing when the program does not exist, RuntimeError with a message naming
    the command when it cannot start, outlasts `timeout`, writes more than `limit` bytes (the
    group is killed in both cases) or exits non-zero (with the last line of its standard error:
    where tools and tracebacks put the actual error). A cancelled call kills the group too.
    """
    what = " ".join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, start_new_session=True,
            env=None if env is None else dict(env))
    except FileNotFoundError:
        raise CommandMissing(f"cannot run {what}: {argv[0]} not found") from None
    except OSError as exc:
        raise RuntimeError(f"cannot run {what}: {exc.strerror or exc}") from None
    try:
        async with asyncio.timeout(timeout):
            (out, flooded), (err, _) = await asyncio.gather(
                _stdout_or_stop(proc, limit), read_bounded(proc.stderr, STDERR_LIMIT))
            await (reap(proc) if flooded else proc.wait())
    except BaseException as exc:
        # Timed out, or the caller was cancelled: the group goes, children it left included,
        # reaped off the cancelled task so no zombie (or pipe fd) is left behind.
        await asyncio.shield(reap(proc))
        if isinstance(exc, TimeoutError):
            raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from None
        raise
    if flooded:
        raise RuntimeError(f"{what} wrote more than {limit // (1024 * 1024)} MiB; its output "
                           "was not used (narrow what it is asked for)")
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
