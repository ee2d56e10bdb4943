"""SNMP requests to one device: v1/v2c and v3 (USM, collectors.snmp_v3) over our own codec.

Both clients offer the same three async calls (`get`, `next`, `bulk`) returning
[(oid tuple, python value)], and raise `SnmpError` whose message names what went wrong in words
an admin acts on (timeout, wrong community, unknown user, wrong key, unknown engine ID, ...).
`walk_columns` walks several table columns at once with GETBULK (GETNEXT for v1).
"""

from __future__ import annotations

import asyncio
import itertools
import random
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from collectors import snmp_ber as ber
from collectors import snmp_v3 as v3
from collectors.snmp_ber import Missing, Oid

Varbinds = list[tuple[Oid, object]]


class SnmpError(Exception):
    """A request that got no usable answer. `kind`: timeout, auth, engine, error, protocol,
    malformed (the device answered, but not in valid SNMP), walk (a table walk the device would
    not let end: see `walk_columns`); for
    "error", the agent's error status ("noSuchName") and error index."""

    def __init__(self, kind: str, message: str, status: str = "", index: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.index = index


@dataclass(frozen=True)
class Endpoint:
    """Where and how patiently to ask: names the device in every message."""

    name: str
    host: str
    port: int = 161
    timeout: float = 2.0
    retries: int = 2

    @property
    def where(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        label = f"{self.name} {host}:{self.port}" if self.name != self.host else f"{host}:{self.port}"
        return label

    def malformed(self, detail: str) -> str:
        return f"{self.where} answered with a malformed reply ({detail})"

    def no_response(self, hint: str) -> str:
        return (f"no SNMP response from {self.where} ({self.timeout:g} s x {self.retries} "
                f"retries): {hint}")


Decoder = Callable[[bytes], tuple[int, object]]


class _Protocol(asyncio.DatagramProtocol):
    """A connected UDP socket's replies, handed to the request waiting for each: `decode` gives
    a reply's key (request ID for v1/v2c, msgID for v3) and what the waiter gets."""

    def __init__(self, decode: Decoder) -> None:
        self.decode = decode
        self.waiting: dict[int, asyncio.Future[object]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        # A late reply to an earlier request is dropped. A reply that does not decode fails
        # the request in flight at once: the socket is connected, so only the device sends
        # here, and it did answer (just not in SNMP).
        try:
            key, reply = self.decode(data)
        except ber.BerError as exc:
            for future in self.waiting.values():
                if not future.done():
                    future.set_result(exc)  # a result, not an exception: nobody may await it
            self.waiting.clear()
            return
        waiter = self.waiting.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(reply)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable shows up here on a connected socket: keep waiting for the
        # timeout (a retry may still get through), but remember it for the message.
        self.error = exc


class _UdpClient:
    """One connected UDP socket per device, and sending a message until its reply comes."""

    # Why a device may not answer at all, for the message of a timeout.
    silence_hint = "wrong community, or host down?"

    def __init__(self, endpoint: Endpoint, rng: Callable[[], int] | None = None) -> None:
        self.endpoint = endpoint
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count((rng or (lambda: random.randrange(1, 2**30)))())

    def _decode(self, data: bytes) -> tuple[int, object]:
        raise NotImplementedError

    async def _open(self) -> _Protocol:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self.close()  # a socket belongs to the event loop that made it
        if self._protocol is None or self._protocol.transport is None \
                or self._protocol.transport.is_closing():
            self._loop = loop
            try:
                infos = await loop.getaddrinfo(self.endpoint.host, self.endpoint.port,
                                               type=socket.SOCK_DGRAM)
                family, kind, proto, _, address = infos[0]
                sock = socket.socket(family, kind, proto)
                sock.setblocking(False)
                try:
                    sock.connect(address)
                    _, protocol = await loop.create_datagram_endpoint(
                        lambda: _Protocol(self._decode), sock=sock)
                except BaseException:
                    sock.close()
                    raise
                self._sock = sock
            except OSError as exc:
                raise SnmpError("timeout", f"cannot reach {self.endpoint.where}: "
                                f"{exc.strerror or exc}") from None
            self._protocol = protocol
        return self._protocol

    def close(self) -> None:
        transport = self._protocol.transport if self._protocol is not None else None
        if transport is not None:
            if self._loop is not None and self._loop.is_closed():
                if self._sock is not None:
                    self._sock.close()
            else:
                transport.close()
        self._protocol = None
        self._loop = None
        self._sock = None

    def _next_id(self) -> int:
        return next(self._ids) & 0x7FFFFFFF

    async def _exchange(self, message: bytes, key: int) -> object:
        """Send `message` (again after each timeout) until the reply with `key` comes."""
        protocol = await self._open()
        loop = asyncio.get_running_loop()
        future: asyncio.Future[object] = loop.create_future()
        protocol.waiting[key] = future
        try:
            for _ in range(self.endpoint.retries + 1):
                assert protocol.transport is not None
                protocol.transport.sendto(message)
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), self.endpoint.timeout)
                except TimeoutError:
                    continue
                if isinstance(reply, ber.BerError):
                    raise SnmpError("malformed", self.endpoint.malformed(str(reply)))
                return reply
        finally:
            protocol.waiting.pop(key, None)
            if not future.done():
                future.cancel()
        refused = isinstance(protocol.error, ConnectionRefusedError)
        hint = ("port closed (ICMP port unreachable): is the SNMP agent running?" if refused else
                self.silence_hint)
        raise SnmpError("timeout", self.endpoint.no_response(hint))

    def _check(self, response: ber.Response, expected: int) -> Varbinds:
        if len(response.varbinds) > max(expected, 1):
            raise SnmpError("malformed", self.endpoint.malformed(
                f"{len(response.varbinds)} values for {expected} asked"))
        if response.error_status:
            status = ber.ERROR_STATUS.get(response.error_status, str(response.error_status))
            raise SnmpError("error", f"{self.endpoint.where} answered {status} "
                                     f"(error index {response.error_index})", status,
                            response.error_index)
        return response.varbinds

    async def _request(self, pdu_type: int, oids: Sequence[Oid], non_repeaters: int = 0,
                       max_repetitions: int = 0) -> Varbinds:
        raise NotImplementedError

    async def get(self, oids: Sequence[Oid]) -> Varbinds:
        return await self._request(ber.GET, oids)

    async def next(self, oids: Sequence[Oid]) -> Varbinds:
        return await self._request(ber.GETNEXT, oids)

    async def bulk(self, non_repeaters: Sequence[Oid], repeaters: Sequence[Oid],
                   max_repetitions: int) -> Varbinds:
        return await self._request(ber.GETBULK, [*non_repeaters, *repeaters], len(non_repeaters),
                                   max_repetitions)


def _expected(pdu_type: int, oids: Sequence[Oid], non_repeaters: int, max_repetitions: int) -> int:
    """How many varbinds a request may get back."""
    if pdu_type != ber.GETBULK:
        return len(oids)
    return non_repeaters + (len(oids) - non_repeaters) * max_repetitions


class CommunityClient(_UdpClient):
    """SNMPv1 / v2c with a community string; one connected UDP socket per device."""

    def __init__(self, endpoint: Endpoint, community: str, version: str = "2c",
                 rng: Callable[[], int] | None = None) -> None:
        super().__init__(endpoint, rng)
        self.community = community.encode("utf-8")
        self.version = version
        self._wire_version = 0 if version == "1" else 1

    def _decode(self, data: bytes) -> tuple[int, object]:
        response = ber.decode_response(data)
        return response.request_id, response

    async def _request(self, pdu_type: int, oids: Sequence[Oid], non_repeaters: int = 0,
                       max_repetitions: int = 0) -> Varbinds:
        request_id = self._next_id()
        message = ber.encode_request(self._wire_version, self.community, pdu_type, request_id,
                                     list(oids), non_repeaters, max_repetitions)
        response = await self._exchange(message, request_id)
        assert isinstance(response, ber.Response)
        return self._check(response, _expected(pdu_type, oids, non_repeaters, max_repetitions))


# -- SNMPv3 (USM) ------------------------------------------------------------------------------


class UsmClient(_UdpClient):
    """SNMPv3 with the User-based Security Model (collectors.snmp_v3), on the device's
    `UsmEngine`: what discovery learnt and the localised keys last across polls and reloads."""

    version = "3"
    silence_hint = ("host down, SNMP blocked, or wrong privacy key/protocol (agents drop what they "
                    "cannot decrypt)?")

    def __init__(self, endpoint: Endpoint, engine: v3.UsmEngine, user: str,
                 auth_protocol: str = "none", auth_key: str | None = None,
                 priv_protocol: str = "none", priv_key: str | None = None, context: str = "",
                 rng: Callable[[], int] | None = None) -> None:
        super().__init__(endpoint, rng)
        self.engine = engine
        self.user = v3.UsmUser(user, auth_protocol, auth_key, priv_protocol, priv_key)
        self.context = context.encode("utf-8")
        self._user_name = user.encode("utf-8")

    def _decode(self, data: bytes) -> tuple[int, object]:
        message = v3.decode_message(data)
        return message.msg_id, message

    def too_low(self) -> str:
        """authorizationError: the agent's access rule (VACM) wants more than we offer."""
        level = self.user.level
        need = {"noAuthNoPriv": "authNoPriv or authPriv: set auth_protocol and auth_key (and "
                                "priv_protocol and priv_key for authPriv)",
                "authNoPriv": "authPriv: set priv_protocol and priv_key as on the device",
                "authPriv": "read access to the IF-MIB: the device's access rule (VACM view) for "
                            "this user does not allow it"}[level]
        return (f"{self.endpoint.where} refused user {self.user.name!r} at security level {level} "
                f"(authorizationError): it needs {need}")

    async def _discover(self) -> None:
        """RFC 3414 4: an empty unauthenticated request; the agent's Report names its engine ID,
        boots and time."""
        msg_id = self._next_id()
        pdu = ber.encode_pdu(ber.GET, self._next_id(), [])
        message = v3.encode_message(msg_id, v3.REPORTABLE_FLAG, b"", 0, 0, b"", None,
                                    v3.encode_scoped_pdu(b"", b"", pdu))
        reply = await self._exchange(message, msg_id)
        assert isinstance(reply, v3.Message)
        if not reply.engine_id:
            raise SnmpError("malformed", self.endpoint.malformed(
                "no engine ID in its answer to engine discovery"))
        self.engine.discovered(reply.engine_id, reply.boots, reply.engine_time)

    async def _request(self, pdu_type: int, oids: Sequence[Oid], non_repeaters: int = 0,
                       max_repetitions: int = 0) -> Varbinds:
        engine, user = self.engine, self.user
        if not engine.engine_id:
            await self._discover()
        resynced = rediscovered = False
        while True:
            keys = await engine.keys_soon(user) if user.flags else None
            request_id, msg_id = self._next_id(), self._next_id()
            boots, engine_time = engine.now()
            scoped = v3.encode_scoped_pdu(engine.engine_id, self.context, ber.encode_pdu(
                pdu_type, request_id, list(oids), non_repeaters, max_repetitions))
            message = v3.encode_message(msg_id, user.flags | v3.REPORTABLE_FLAG, engine.engine_id,
                                        boots, engine_time, self._user_name, keys, scoped,
                                        engine.next_salt())
            reply = await self._exchange(message, msg_id)
            assert isinstance(reply, v3.Message)
            pdu = self._open_reply(reply, keys)
            if pdu.pdu_type != ber.REPORT:
                break
            report = v3.REPORTS.get(pdu.varbinds[0][0], "") if pdu.varbinds else ""
            authentic = bool(reply.flags & v3.AUTH_FLAG)
            if report == "unknownEngineID" and not rediscovered and reply.engine_id \
                    and reply.engine_id != engine.engine_id:
                # The agent's engine ID changed (a replaced or reconfigured device): its keys
                # are localised again for the new ID, once.
                rediscovered = True
                engine.discovered(reply.engine_id, reply.boots, reply.engine_time)
                continue
            if report == "notInTimeWindow" and not resynced and (authentic or keys is None):
                # The agent rebooted, or our notion of its clock drifted: the report (signed
                # with our key) carries its boots and time; ask again, once.
                resynced = True
                engine.heard(reply.boots, reply.engine_time)
                continue
            raise self._report_error(report, pdu)
        level = reply.flags & (v3.AUTH_FLAG | v3.PRIV_FLAG)
        if level != user.flags or reply.engine_id != engine.engine_id \
                or reply.user_name != self._user_name:
            raise SnmpError("malformed", self.endpoint.malformed(
                "a response at another security level, engine ID or user name than asked"))
        if keys is not None and not engine.in_time_window(reply.boots, reply.engine_time):
            # A replay, or an agent whose clock or boot counter went back: the next request
            # discovers its boots and time afresh rather than failing for ever.
            engine.engine_id = b""
            raise SnmpError("engine", f"{self.endpoint.where}: reply not in time window (its "
                                      "boot counter or clock went back, or the reply is a replay)")
        if pdu.request_id != request_id:
            raise SnmpError("malformed", self.endpoint.malformed(
                f"request ID {pdu.request_id} in the reply to {request_id}"))
        if pdu.error_status == 16:  # authorizationError
            raise SnmpError("auth", self.too_low(), "authorizationError", pdu.error_index)
        return self._check(pdu, _expected(pdu_type, oids, non_repeaters, max_repetitions))

    def _open_reply(self, reply: v3.Message, keys: v3.Keys | None) -> ber.Response:
        """The reply's PDU, once its digest checks out and it decrypts."""
        where, user = self.endpoint.where, self.user.name
        try:
            if reply.flags & v3.AUTH_FLAG:
                if keys is None:
                    raise v3.WrongDigest("an authenticated reply to an unauthenticated request")
                v3.verify(reply, keys)
            return v3.scoped_pdu(reply, keys)
        except v3.WrongDigest as exc:
            raise SnmpError("auth", f"{where} sent a reply for user {user!r} that fails "
                                    f"authentication ({exc}): not from the agent, or a wrong "
                                    "auth key on one side") from None
        except v3.CannotDecrypt as exc:
            raise SnmpError("auth", f"{where}: cannot decrypt the reply for user {user!r} "
                                    f"(wrong priv key or priv protocol: {exc})") from None
        except ber.BerError as exc:
            raise SnmpError("malformed", self.endpoint.malformed(str(exc))) from None

    def _report_error(self, report: str, pdu: ber.Response) -> SnmpError:
        """An agent's Report (RFC 3414 usmStats and friends) in words an admin acts on."""
        words = _REPORT_WORDS.get(report)
        if words is None:
            what = report or (dotted(pdu.varbinds[0][0]) if pdu.varbinds else "no varbind")
            return SnmpError("protocol", f"{self.endpoint.where} answered with a report: {what}")
        kind, text = words
        return SnmpError(kind, text.format(
            where=self.endpoint.where, user=self.user.name, level=self.user.level, report=report,
            context=self.context.decode("utf-8", "replace")))


# What an agent's Report means: (SnmpError kind, message).
_REPORT_WORDS = {
    "unknownUserName": ("auth", "{where} does not know SNMPv3 user {user!r} (unknown user name)"),
    "wrongDigest": ("auth", "{where} rejected user {user!r}: authentication failed (wrong auth "
                            "key or auth protocol)"),
    "decryptionError": ("auth", "{where}: cannot decrypt the request of user {user!r} (wrong "
                                "priv key or priv protocol)"),
    "unsupportedSecLevel": ("auth", "{where} does not support security level {level} for user "
                                    "{user!r} (set auth/priv protocols as configured on the "
                                    "device)"),
    "unknownEngineID": ("engine", "{where} reported an unknown engine ID (USM report): engine "
                                  "discovery failed; is the agent's engine ID stable?"),
    "notInTimeWindow": ("engine", "{where}: message not in time window (engine boots/time "
                                  "mismatch; the device's clock or boot counter jumped)"),
    "unknownContext": ("error", "{where} has no SNMPv3 context {context!r} ({report})"),
    "unavailableContext": ("error", "{where} has no SNMPv3 context {context!r} ({report})"),
}


Client = CommunityClient | UsmClient


# -- walking -----------------------------------------------------------------------------------


@dataclass
class Walk:
    """What a table walk read, and how it ended.

    tables: {column: {index: value}}; scalars: {oid: value}.
    ends: per column, what ended it when it was not the normal step past its last row:
    "endOfMibView", "noSuchObject", "noSuchInstance", or "OIDs went backwards (... after ...)",
    "repeated OID ...". A healthy walk of a column with rows has no entry.
    stopped: why the walk was cut short by its row budget ("" if it ended by itself).
    """

    tables: dict[Oid, dict[Oid, object]]
    scalars: dict[Oid, object]
    ends: dict[Oid, str] = field(default_factory=dict)
    stopped: str = ""


def dotted(oid: Oid) -> str:
    text = ".".join(map(str, oid))
    return text if len(text) <= 80 else text[:77] + "..."


async def walk_columns(
    client: Client, columns: Sequence[Oid], *, max_repetitions: int = 25,
    scalars: Sequence[Oid] = (), progress: Callable[[int], None] | None = None,
    max_rows: Callable[[dict[Oid, object]], int] | int = 100_000,
) -> Walk:
    """Walk table columns side by side with GETBULK (GETNEXT for v1).

    `scalars` are fetched by GET-NEXT semantics in the first request (pass the OID without .0,
    e.g. sysUpTime (1,3,6,1,2,1,1,3) gives (1,3,6,1,2,1,1,3,0)). `max_rows` bounds the rows of
    any one column (an agent whose table never ends); a callable gets the scalars of the first
    answer (to allow, say, twice the device's ifNumber).
    """
    walk = Walk({c: {} for c in columns}, {})
    tables = walk.tables
    cursor: dict[Oid, Oid] = {c: c for c in columns}
    pending_scalars = list(scalars)
    bulk = client.version != "1"
    rows_seen = 0
    limit = max_rows if isinstance(max_rows, int) else None
    while True:
        active = [c for c in columns if c in cursor]
        if not active and not pending_scalars:
            break
        oids = [cursor[c] for c in active]
        if bulk:
            varbinds = await client.bulk(pending_scalars, oids, max_repetitions)
        else:
            try:
                varbinds = await client.next([*pending_scalars, *oids])
            except SnmpError as exc:
                # v1 ends a column with noSuchName at its index: drop it and ask again.
                index = exc.index
                if exc.status != "noSuchName" or not index or index > len(pending_scalars) + len(active):
                    raise
                position = index - 1
                if position < len(pending_scalars):
                    pending_scalars.pop(position)
                else:
                    del cursor[active[position - len(pending_scalars)]]
                continue
        for _scalar, (oid, value) in zip(pending_scalars, varbinds, strict=False):
            if not isinstance(value, Missing):
                walk.scalars[oid] = value
        rest = varbinds[len(pending_scalars):]
        pending_scalars = []
        if limit is None:
            assert callable(max_rows)
            limit = max_rows(walk.scalars)
        if not active:
            continue
        width = len(active)
        done: set[Oid] = set()
        advanced = False
        # Column by column (a GETBULK answer interleaves them: row 1 of every column, row 2,
        # ...): each column's values are every width-th varbind. This loop is the walk's hot
        # path, so the per-value work is one slice compare, one order compare, one insert.
        for k, column in enumerate(active):
            table, n, last = tables[column], len(column), cursor[column]
            for oid, value in rest[k::width]:
                # (oid == column needs no test of its own: it is <= last, which starts there)
                if oid[:n] != column or oid <= last or value.__class__ is Missing:
                    done.add(column)
                    if value.__class__ is Missing:
                        walk.ends[column] = repr(value)
                    elif oid <= last:
                        what = "repeated OID" if oid == last else "OIDs went backwards:"
                        walk.ends[column] = f"{what} {dotted(oid)} after {dotted(last)}"
                    break
                table[oid[n:]] = value
                last = oid
            if last is not cursor[column]:
                cursor[column] = last
                advanced = True
            if len(table) > limit:
                why = "the device's interface count allows" if callable(max_rows) else "a walk reads"
                walk.stopped = (f"the walk of {dotted(column)} passed {limit} rows (more than {why})"
                                " and was stopped")
                return walk
        for column in active:
            if column in done or not advanced:
                cursor.pop(column, None)
        rows = max((len(t) for t in tables.values()), default=0)
        if progress is not None and rows != rows_seen:
            progress(rows)
            rows_seen = rows
    return walk
