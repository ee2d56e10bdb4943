"""The agent's event loop: uvloop (libuv, a well-kept and faster loop) where it is installed,
asyncio's standard loop otherwise. Every command of the CLI runs its coroutine through `run`."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# libuv looks names up (getaddrinfo) in its thread pool, 4 threads unless UV_THREADPOOL_SIZE
# says otherwise: four lookups stalled on a dead name server (each for the resolver's
# timeout, past their checks' own) held every other check's lookup, /etc/hosts names too.
# As many as checks may run at once (agent.concurrency's default); idle, they cost nothing.
LOOKUP_THREADS = "64"


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's new_event_loop when importable, else None (asyncio's default)."""
    try:
        import uvloop
    except ImportError:
        return None
    os.environ.setdefault("UV_THREADPOOL_SIZE", LOOKUP_THREADS)  # read at libuv's first use
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
