"""Running an external command the safe way: an argv list (never a shell), no stdin, a timeout."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence


async def run_command(argv: Sequence[str], timeout: float) -> bytes:
    """Run `argv` and return its standard output.

    Raises RuntimeError with a message naming the command when it cannot start, outlasts
    `timeout` (it is killed) or exits non-zero (with the first line of its standard error).
    """
    what = " ".join(argv)
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL)
    except OSError as exc:
        raise RuntimeError(f"cannot run {what}: {exc.strerror or exc}") from None
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise RuntimeError(f"{what} did not finish within {timeout:.0f} s") from None
    if proc.returncode != 0:
        first = err.decode("utf-8", "replace").strip().splitlines()[:1]
        raise RuntimeError(f"{what} exited with status {proc.returncode}"
                           + (f": {first[0]}" if first else ""))
    return out
