"""Plain (non-TLS) TCP for the service checks: one epoll set per collector cycle, and two faces
on it.

A port or banner check is a few system calls; on asyncio's general path each step also costs a
selector key, a handle, a future, a task wake-up and a timer, several times the system calls
themselves (see bench/services_bench.py). Here the sockets of one cycle share an epoll set of
their own whose one descriptor sits in the event loop, and one timer per cycle expires overdue
checks. `TcpProbe` runs a whole tcp check (connect, optional send, optional expect) as a small
state machine called back by that set; `PlainStream` is the coroutine face of the same sockets,
for the multi-step plain dialogs (smtp, imap, pop3, ssh, ftp, http). TLS and STARTTLS keep
asyncio's streams. The messages are those the coroutine path gives for the same events.
"""

from __future__ import annotations

import asyncio
import errno
import os
import select
import socket
import time
from collections.abc import Callable

from collectors.services_base import WAITING, Outcome, error_text, label, secs
from monitor.config import ServiceCheck
from monitor.model import State
from monitor.text import clean

_IN = select.EPOLLIN
_OUT = select.EPOLLOUT
_INET, _INET6 = socket.AF_INET, socket.AF_INET6
_STREAM_NONBLOCK = socket.SOCK_STREAM | socket.SOCK_NONBLOCK  # no fcntl call per socket
_SOL_SOCKET, _SO_ERROR = socket.SOL_SOCKET, socket.SO_ERROR
_EINPROGRESS = errno.EINPROGRESS
_inet_pton = socket.inet_pton
KEEP = 65536  # the last 64 KiB of an answer are searched for `expect` (both paths)


def start_connect(family: int, address: tuple) -> socket.socket:
    """A non-blocking socket whose connection is under way (or made); OSError if it failed at
    once. Both faces below connect this way."""
    sock = socket.socket(family, _STREAM_NONBLOCK)
    code = sock.connect_ex(address)
    if code != _EINPROGRESS and code != 0:
        sock.close()
        raise OSError(code, os.strerror(code))  # ConnectionRefusedError for ECONNREFUSED...
    return sock


def connected(sock: socket.socket) -> None:
    """After the socket turned writable: raise what the connection attempt ended with, if any."""
    code = sock.getsockopt(_SOL_SOCKET, _SO_ERROR)
    if code:
        raise OSError(code, os.strerror(code))


def addresses(host: str, port: int) -> list[tuple[int, tuple]] | None:
    """The address of an IP literal; None for a name (to be resolved by getaddrinfo)."""
    family = _INET6 if ":" in host else _INET
    try:
        _inet_pton(family, host)
    except OSError:
        return None
    return [(family, (host, port))]


def handles(check: ServiceCheck) -> bool:
    """Is this a check the callback path runs (the rest go through run_check)?"""
    return check.kind == "tcp" and not check.tls and not check.starttls


class Sockets:
    """The plain sockets of one collector cycle on one epoll set, watched by the loop through
    that set's single descriptor; `expire` runs the checks past their deadline."""

    def __init__(self, loop: asyncio.AbstractEventLoop,
                 report: Callable[[list[TcpProbe]], None] | None = None) -> None:
        self.loop = loop
        # Finished probes are reported together after each batch of events, so the caller can
        # open the next connections back to back: the peers' wake-ups (a loopback listener's,
        # here) then serve several connections each, which is measurably cheaper than one each.
        self.report = report
        self.ended: list[TcpProbe] = []
        self.dispatching = False
        self.epoll = select.epoll()
        self.handlers: dict[int, Callable[[int], None]] = {}
        self.active: set[TcpProbe] = set()
        self.timer: asyncio.TimerHandle | None = None
        self.timer_when = float("inf")
        loop.add_reader(self.epoll.fileno(), self._events)

    def _events(self) -> None:
        handlers = self.handlers
        self.dispatching = True
        try:
            for fd, events in self.epoll.poll(0):
                handler = handlers.get(fd)
                if handler is not None:
                    handler(events)
        finally:
            self.dispatching = False
            self.flush()

    def ended_one(self, probe: TcpProbe) -> None:
        self.ended.append(probe)
        if not self.dispatching:
            self.flush()

    def flush(self) -> None:
        if self.ended:
            ended, self.ended = self.ended, []
            if self.report is not None:
                self.report(ended)

    def watch(self, fd: int, events: int, handler: Callable[[int], None]) -> None:
        self.epoll.register(fd, events)
        self.handlers[fd] = handler

    def forget(self, fd: int) -> None:
        # Explicitly, before the socket closes: a forked child (a plugin check) may briefly hold
        # the descriptor, and epoll would keep reporting it under a number reused meanwhile.
        if self.handlers.pop(fd, None) is not None and not self.epoll.closed:
            self.epoll.unregister(fd)

    async def wait(self, sock: socket.socket, events: int) -> None:
        """Until `sock` is ready for `events` (or in error): the coroutine face of `watch`."""
        future = self.loop.create_future()

        def ready(_: int) -> None:
            if not future.done():
                future.set_result(None)

        fd = sock.fileno()
        self.watch(fd, events, ready)
        try:
            await future
        finally:
            self.forget(fd)

    def deadline(self, when: float) -> None:
        """Make sure the sweep runs by `when` (one timer for the cycle, not one per check)."""
        if when < self.timer_when:
            if self.timer is not None:
                self.timer.cancel()
            self.timer = self.loop.call_at(when, self._sweep)
            self.timer_when = when

    def _sweep(self) -> None:
        self.timer, self.timer_when = None, float("inf")
        now = self.loop.time()
        self.dispatching = True
        try:
            for probe in [p for p in self.active if p.deadline <= now]:
                probe.expire()
        finally:
            self.dispatching = False
            self.flush()
        if self.active:
            self.deadline(min(p.deadline for p in self.active))

    def close(self) -> None:
        for probe in list(self.active):
            probe.abort()
        if self.timer is not None:
            self.timer.cancel()
            self.timer, self.timer_when = None, float("inf")
        self.loop.remove_reader(self.epoll.fileno())
        self.epoll.close()


class TcpProbe:
    """One plain tcp check: resolve (names only), connect to each address in turn, send, read
    until `expect` shows up; reported exactly once through `sockets.report`, from the event loop,
    with `probe.outcome` set."""

    __slots__ = ("addresses", "check", "connected", "deadline", "doing", "fd", "host", "job",
                 "outcome", "resolving", "seen", "sock", "sockets", "start", "unsent")

    def __init__(self, check: ServiceCheck, host: str, sockets: Sockets) -> None:
        self.check = check
        self.host = host
        self.sockets = sockets
        self.sock: socket.socket | None = None
        self.fd = -1
        # "connect", then "answer" while sending, then "expect" (its text is only rendered when
        # a timeout message needs it).
        self.doing = "connect"
        self.seen = b""
        self.unsent = b""
        self.connected = 0.0
        self.resolving: asyncio.Future | None = None
        self.outcome: Outcome | None = None
        self.job: tuple = ()  # the caller's bookkeeping

    def begin(self) -> None:
        sockets = self.sockets
        self.start = time.monotonic()
        self.deadline = deadline = sockets.loop.time() + self.check.timeout
        sockets.active.add(self)
        if deadline < sockets.timer_when:
            sockets.deadline(deadline)
        host, port = self.host, self.check.port
        literal = addresses(host, port)
        if literal is None:
            self.resolving = asyncio.ensure_future(
                sockets.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM))
            self.resolving.add_done_callback(self._resolved)
            return
        self.addresses = literal
        self._connect()

    def _resolved(self, future: asyncio.Future) -> None:
        self.resolving = None
        if self.outcome is not None or future.cancelled():
            return
        try:
            infos = future.result()
        except Exception as exc:  # a name that does not resolve is a result
            self._failed(exc)
            return
        self.addresses = [(info[0], info[4]) for info in infos]
        self._connect()

    def _connect(self) -> None:
        """Connect to the next address; the answer (or the refusal) comes as an epoll event."""
        error: OSError | None = None
        while self.addresses:
            family, address = self.addresses.pop(0)
            try:
                sock = start_connect(family, address)
            except OSError as exc:  # refused at once, or out of descriptors
                error = exc
                continue
            else:
                self.sock = sock
                self.fd = fd = sock.fileno()
                # Writability is only waited for where it tells something: the connect time of
                # a bare port check, or before sending. A banner check just waits for the banner
                # (a refusal wakes EPOLLIN too), a round of epoll calls less per check.
                check = self.check
                self.sockets.watch(fd, _OUT if check.send is not None or check.expect is None
                                   else _IN, self.ready)
                return
        # Reported from a fresh loop turn, so the report never runs inside `begin`.
        self.sockets.loop.call_soon(self._failed, error or OSError(f"no address for {self.host}"))

    def ready(self, events: int) -> None:
        try:
            doing = self.doing
            if doing == "connect" and (self.check.send is not None or self.check.expect is None):
                connected(self.sock)
                self._on_connected()
                return
            if doing == "answer":
                self._send()
                return
            try:
                chunk = self.sock.recv(4096)
            except (BlockingIOError, InterruptedError):
                return
            self.doing = "expect"  # a banner check learns of the connection by its bytes
            self._got(chunk)
        except OSError as exc:
            if self.addresses and self.doing == "connect":
                self._drop()
                self._connect()
                return
            self._failed(exc)
        except Exception as exc:  # a check never takes the cycle down
            self._failed(exc)

    def _on_connected(self) -> None:
        self.connected = time.monotonic() - self.start
        if self.check.send is not None:
            self.doing = "answer"
            self.unsent = self.check.send.encode()
            self._send()
        else:
            self._sent()

    def _send(self) -> None:
        try:
            self.unsent = self.unsent[self.sock.send(self.unsent):]
        except (BlockingIOError, InterruptedError):
            pass
        if not self.unsent:  # else the socket stays watched for writing
            self._sent()

    def _sent(self) -> None:
        if self.check.expect is None:
            self._finish(State.OK, "accepted the connection in " + secs(self.connected))
            return
        self.doing = "expect"
        self.sockets.epoll.modify(self.fd, _IN)

    def _got(self, chunk: bytes) -> None:
        expect = self.check.expect
        if not chunk:
            self._finish(State.CRITICAL, f"closed the connection without sending "
                         f"{clean(expect)!r} (got {clean(self.seen)!r})")
            return
        seen = self.seen + chunk if self.seen else chunk
        if len(seen) > KEEP:
            seen = seen[-KEEP:]
        self.seen = seen
        if expect.encode() in seen:
            elapsed = time.monotonic() - self.start
            self._drop()  # before the text work: the next socket call is the next check's
            first = seen.split(b"\n", 1)[0]
            self._finish(State.OK, f"answered {clean(first)!r} in {{t}}", elapsed)

    def _finish(self, state: State, detail: str, elapsed: float | None = None) -> None:
        if elapsed is None:
            elapsed = time.monotonic() - self.start
        self._end(Outcome(state, f"{label(self.check)} {detail.replace('{t}', secs(elapsed))}",
                          elapsed))

    def _failed(self, exc: BaseException) -> None:
        if self.outcome is None:
            self._end(Outcome(State.CRITICAL, f"{label(self.check)} {error_text(exc)} after "
                              f"{secs(time.monotonic() - self.start)}"))

    def expire(self) -> None:
        """The deadline passed: the message says what had not happened yet."""
        check = self.check
        if self.doing == "connect" and self.sock is not None and check.expect is not None and (
                check.send is None):
            try:  # a banner check does not watch for the connection itself: ask the socket
                self.sock.getpeername()
                self.doing = "expect"
            except OSError:
                pass
        doing = repr(clean(check.expect or "")) if self.doing == "expect" else self.doing
        what = WAITING.get(doing, f"sent no {doing}")
        note = f" (got {clean(self.seen)!r})" if self.seen else ""
        self._end(Outcome(State.CRITICAL, f"{label(check)} {what} within {secs(check.timeout)}"
                          f"{note}"))

    def abort(self) -> None:
        """The cycle is over (cancelled): drop the socket, report nothing."""
        self.outcome = Outcome(State.UNKNOWN, "")
        self._drop()
        self.sockets.active.discard(self)
        if self.resolving is not None:
            self.resolving.cancel()

    def _drop(self) -> None:
        sock = self.sock
        if sock is not None:
            self.sockets.forget(self.fd)
            sock.close()
            self.sock = None

    def _end(self, outcome: Outcome) -> None:
        if self.outcome is not None:
            return
        self.outcome = outcome
        self._drop()
        self.sockets.active.discard(self)
        if self.resolving is not None:
            self.resolving.cancel()
        self.sockets.ended_one(self)


LINE_LIMIT = 65536


class PlainStream:
    """StreamReader and StreamWriter in one on a plain socket of the cycle's `Sockets`, for the
    dialogs (smtp, imap, pop3, ssh, ftp, http) that read as coroutines: the same connect and the
    same readiness set as TcpProbe, awaited instead of called back. Without a transport, protocol
    and two stream objects per connection their CPU cost drops by about a third. Only what the
    probes use is here; STARTTLS needs real streams.
    """

    def __init__(self, sock: socket.socket, sockets: Sockets) -> None:
        self.sock = sock
        self.sockets = sockets
        self.buffer = b""
        self.eof = False
        self.pending = b""
        self.transport = self  # so close() can call writer.transport.abort()

    @classmethod
    async def open(cls, sockets: Sockets, host: str, port: int) -> PlainStream:
        found = addresses(host, port)
        if found is None:
            infos = await sockets.loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            found = [(info[0], info[4]) for info in infos]
        error: OSError | None = None
        for family, address in found:  # each address in turn, as open_connection does
            try:
                sock = start_connect(family, address)
            except OSError as exc:
                error = exc
                continue
            try:
                await sockets.wait(sock, _OUT)
                connected(sock)
            except BaseException as exc:
                sock.close()
                if not isinstance(exc, OSError):
                    raise
                error = exc
                continue
            return cls(sock, sockets)
        raise error if error is not None else OSError(f"no address for {host}")

    async def _fill(self, size: int = 65536) -> bool:
        if self.eof:
            return False
        while True:
            try:
                data = self.sock.recv(size)
                break
            except (BlockingIOError, InterruptedError):
                await self.sockets.wait(self.sock, _IN)
        if not data:
            self.eof = True
            return False
        self.buffer += data
        return True

    async def readline(self) -> bytes:
        """Like StreamReader.readline: the line with its newline, the rest at EOF, b"" when
        nothing is left; ValueError for a line over the limit."""
        start = 0
        while True:
            end = self.buffer.find(b"\n", start)
            if end >= 0:
                line, self.buffer = self.buffer[: end + 1], self.buffer[end + 1:]
                return line
            if len(self.buffer) > LINE_LIMIT:
                self.buffer = b""
                raise ValueError("line longer than the limit")
            start = len(self.buffer)
            if not await self._fill():
                line, self.buffer = self.buffer, b""
                return line

    async def read(self, n: int = -1) -> bytes:
        if not self.buffer:
            await self._fill(65536 if n < 0 else min(n, 65536))
        if n < 0:
            n = len(self.buffer)
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    async def readexactly(self, n: int) -> bytes:
        while len(self.buffer) < n:
            if not await self._fill(min(n - len(self.buffer), 65536)):
                partial, self.buffer = self.buffer, b""
                raise asyncio.IncompleteReadError(partial, n)
        data, self.buffer = self.buffer[:n], self.buffer[n:]
        return data

    def write(self, data: bytes) -> None:
        self.pending += data

    async def drain(self) -> None:
        data, self.pending = memoryview(self.pending), b""
        while data:
            try:
                data = data[self.sock.send(data):]
            except (BlockingIOError, InterruptedError):
                await self.sockets.wait(self.sock, _OUT)

    def abort(self) -> None:
        self.sock.close()
