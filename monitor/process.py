"""Running an external command the safe way: an argv list (never a shell), no stdin, a timeout."""

from __future__ import annotations

import asyncio
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
                            + (f": {last[0].strip()}" if last else ""), proc.returncode, text)
    return out
