"""SNMP requests to one device: v1/v2c over our own small codec, v3 through pysnmp's engine.

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


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[int, asyncio.Future[ber.Response | ber.BerError]] = {}
        self.transport: asyncio.DatagramTransport | None = None
        self.error: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: object) -> None:
        # A late reply to an earlier request is dropped. A reply that does not decode fails
        # the request in flight at once: the socket is connected, so only the device sends
        # here, and it did answer (just not in SNMP).
        try:
            response = ber.decode_response(data)
        except ber.BerError as exc:
            for future in self.waiting.values():
                if not future.done():
                    future.set_result(exc)  # a result, not an exception: nobody may await it
            self.waiting.clear()
            return
        waiter = self.waiting.pop(response.request_id, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(response)

    def error_received(self, exc: Exception) -> None:
        # ICMP port unreachable shows up here on a connected socket: keep waiting for the
        # timeout (a retry may still get through), but remember it for the message.
        self.error = exc


class CommunityClient:
    """SNMPv1 / v2c with a community string; one connected UDP socket per device."""

    def __init__(self, endpoint: Endpoint, community: str, version: str = "2c",
                 rng: Callable[[], int] | None = None) -> None:
        self.endpoint = endpoint
        self.community = community.encode("utf-8")
        self.version = version
        self._wire_version = 0 if version == "1" else 1
        self._protocol: _Protocol | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sock: socket.socket | None = None
        self._ids = itertools.count((rng or (lambda: random.randrange(1, 2**30)))())

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
                    _, protocol = await loop.create_datagram_endpoint(_Protocol, sock=sock)
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

    async def _request(self, pdu_type: int, oids: Sequence[Oid], non_repeaters: int = 0,
                       max_repetitions: int = 0) -> ber.Response:
        protocol = await self._open()
        request_id = next(self._ids) & 0x7FFFFFFF
        message = ber.encode_request(self._wire_version, self.community, pdu_type, request_id,
                                     list(oids), non_repeaters, max_repetitions)
        loop = asyncio.get_running_loop()
        future: asyncio.Future = loop.create_future()
        protocol.waiting[request_id] = future
        expected = len(oids) if pdu_type != ber.GETBULK else (
            non_repeaters + (len(oids) - non_repeaters) * max_repetitions)
        try:
            for _ in range(self.endpoint.retries + 1):
                assert protocol.transport is not None
                protocol.transport.sendto(message)
                try:
                    response = await asyncio.wait_for(asyncio.shield(future), self.endpoint.timeout)
                except TimeoutError:
                    continue
                if isinstance(response, ber.BerError):
                    raise SnmpError("malformed", self.endpoint.malformed(str(response)))
                if len(response.varbinds) > max(expected, 1):
                    raise SnmpError("malformed", self.endpoint.malformed(
                        f"{len(response.varbinds)} values for {expected} asked"))
                return response
        finally:
            protocol.waiting.pop(request_id, None)
            if not future.done():
                future.cancel()
        refused = isinstance(protocol.error, ConnectionRefusedError)
        hint = ("port closed (ICMP port unreachable): is the SNMP agent running?" if refused else
                "wrong community, or host down?")
        raise SnmpError("timeout", self.endpoint.no_response(hint))

    def _check(self, response: ber.Response) -> Varbinds:
        if response.error_status:
            status = ber.ERROR_STATUS.get(response.error_status, str(response.error_status))
            raise SnmpError("error", f"{self.endpoint.where} answered {status} "
                                     f"(error index {response.error_index})", status,
                            response.error_index)
        return response.varbinds

    async def get(self, oids: Sequence[Oid]) -> Varbinds:
        return self._check(await self._request(ber.GET, oids))

    async def next(self, oids: Sequence[Oid]) -> Varbinds:
        return self._check(await self._request(ber.GETNEXT, oids))

    async def bulk(self, non_repeaters: Sequence[Oid], repeaters: Sequence[Oid],
                   max_repetitions: int) -> Varbinds:
        oids = [*non_repeaters, *repeaters]
        response = await self._request(ber.GETBULK, oids, len(non_repeaters), max_repetitions)
        return self._check(response)


# -- SNMPv3 through pysnmp ---------------------------------------------------------------------

_AUTH = {
    "none": "USM_AUTH_NONE", "md5": "USM_AUTH_HMAC96_MD5", "sha": "USM_AUTH_HMAC96_SHA",
    "sha224": "USM_AUTH_HMAC128_SHA224", "sha256": "USM_AUTH_HMAC192_SHA256",
    "sha384": "USM_AUTH_HMAC256_SHA384", "sha512": "USM_AUTH_HMAC384_SHA512",
}
# net-snmp's AES-192/256 use the Blumenthal key extension; Cisco's (net-snmp "AES-256-C",
# "aes256c" elsewhere) use Reeder's, which pysnmp calls plain CFB192/256.
_PRIV = {
    "none": "USM_PRIV_NONE", "des": "USM_PRIV_CBC56_DES", "aes": "USM_PRIV_CFB128_AES",
    "aes128": "USM_PRIV_CFB128_AES", "aes192": "USM_PRIV_CFB192_AES_BLUMENTHAL",
    "aes256": "USM_PRIV_CFB256_AES_BLUMENTHAL", "aes192c": "USM_PRIV_CFB192_AES",
    "aes256c": "USM_PRIV_CFB256_AES",
}


def _v3_error(endpoint: Endpoint, indication: object, user: str) -> SnmpError:
    from pysnmp.proto import errind

    where = endpoint.where
    if isinstance(indication, errind.RequestTimedOut):
        return SnmpError("timeout", endpoint.no_response(
            "host down, SNMP blocked, or wrong privacy key/protocol (agents drop what they "
            "cannot decrypt)?"))
    if isinstance(indication, errind.UnknownUserName):
        return SnmpError("auth", f"{where} does not know SNMPv3 user {user!r} (unknown user name)")
    if isinstance(indication, errind.UnknownSecurityName):
        return SnmpError("auth", f"{where}: unknown SNMPv3 security name {user!r}")
    if isinstance(indication, errind.WrongDigest | errind.AuthenticationFailure
                  | errind.AuthenticationError):
        return SnmpError("auth", f"{where} rejected user {user!r}: authentication failed "
                                 "(wrong auth key or auth protocol)")
    if isinstance(indication, errind.DecryptionError):
        return SnmpError("auth", f"{where}: cannot decrypt the reply for user {user!r} "
                                 "(wrong priv key or priv protocol)")
    if isinstance(indication, errind.UnsupportedSecurityLevel):
        return SnmpError("auth", f"{where} does not support this security level for user {user!r} "
                                 "(set auth/priv protocols as configured on the device)")
    if isinstance(indication, errind.UnknownEngineID):
        return SnmpError("engine", f"{where} reported an unknown engine ID (USM report): engine "
                                   "discovery failed; is the agent's engine ID stable?")
    if isinstance(indication, errind.NotInTimeWindow):
        return SnmpError("engine", f"{where}: message not in time window (engine boots/time "
                                   "mismatch; the device's clock or boot counter jumped)")
    return SnmpError("protocol", f"{where}: {indication}")


def _from_pysnmp(value: object) -> object:
    from pyasn1.type import univ
    from pysnmp.proto import rfc1902, rfc1905

    if isinstance(value, rfc1905.EndOfMibView):
        return ber.END_OF_MIB_VIEW_V
    if isinstance(value, rfc1905.NoSuchInstance):
        return ber.NO_SUCH_INSTANCE_V
    if isinstance(value, rfc1905.NoSuchObject):
        return ber.NO_SUCH_OBJECT_V
    if isinstance(value, rfc1902.IpAddress):
        return ".".join(str(b) for b in value.asOctets())
    if isinstance(value, univ.OctetString):
        return value.asOctets()
    if isinstance(value, univ.ObjectIdentifier):
        return tuple(value)
    if isinstance(value, univ.Integer):
        return int(value)
    if isinstance(value, univ.Null):
        return None
    return value


class UsmClient:
    """SNMPv3 (USM) through pysnmp's asyncio hlapi, on an engine reused across polls."""

    version = "3"

    def __init__(self, endpoint: Endpoint, engine: object, user: str, auth_protocol: str = "none",
                 auth_key: str | None = None, priv_protocol: str = "none",
                 priv_key: str | None = None, context: str = "") -> None:
        from pysnmp.hlapi.v3arch.asyncio import auth

        self.endpoint = endpoint
        self.engine = engine
        self.user = user
        self.auth_protocol, self.priv_protocol = auth_protocol, priv_protocol
        self.auth = auth.UsmUserData(
            user,
            authKey=auth_key if auth_protocol != "none" else None,
            privKey=priv_key if priv_protocol != "none" else None,
            authProtocol=getattr(auth, _AUTH[auth_protocol]),
            privProtocol=getattr(auth, _PRIV[priv_protocol]),
        )
        self.context = context
        self._target = None
        self._request_vbs: dict[Oid, object] = {}  # OID -> pysnmp ObjectType, resolved once

    def close(self) -> None:
        pass

    def too_low(self) -> str:
        """authorizationError: the agent's access rule (VACM) wants more than we offer."""
        level = ("authPriv" if self.priv_protocol != "none" else
                 "authNoPriv" if self.auth_protocol != "none" else "noAuthNoPriv")
        need = {"noAuthNoPriv": "authNoPriv or authPriv: set auth_protocol and auth_key (and "
                                "priv_protocol and priv_key for authPriv)",
                "authNoPriv": "authPriv: set priv_protocol and priv_key as on the device",
                "authPriv": "read access to the IF-MIB: the device's access rule (VACM view) for "
                            "this user does not allow it"}[level]
        return (f"{self.endpoint.where} refused user {self.user!r} at security level {level} "
                f"(authorizationError): it needs {need}")

    async def _call(self, kind: str, oids: Sequence[Oid], non_repeaters: int = 0,
                    max_repetitions: int = 0) -> Varbinds:
        from pysnmp.hlapi.v3arch.asyncio import (
            ContextData,
            ObjectIdentity,
            ObjectType,
            UdpTransportTarget,
            bulk_cmd,
            get_cmd,
            next_cmd,
        )
        from pysnmp.proto.rfc1902 import ObjectName

        if self._target is None:
            try:
                self._target = await UdpTransportTarget.create(
                    (self.endpoint.host, self.endpoint.port), timeout=self.endpoint.timeout,
                    retries=self.endpoint.retries)
            except Exception as exc:
                raise SnmpError("timeout", f"cannot reach {self.endpoint.where}: {exc}") from None
        context = ContextData(contextName=self.context)
        vbs = []
        for oid in oids:
            # pysnmp resolves every request OID against its MIB tree (a tenth of a v3 poll's
            # CPU) and marks the object resolved: the same object is not resolved again.
            vb = self._request_vbs.get(oid)
            if vb is None:
                if len(self._request_vbs) >= 4096:
                    self._request_vbs.clear()
                vb = self._request_vbs[oid] = ObjectType(ObjectIdentity(ObjectName(oid)))
            vbs.append(vb)
        if kind == "bulk":
            result = await bulk_cmd(self.engine, self.auth, self._target, context, non_repeaters,
                                    max_repetitions, *vbs, lookupMib=False)
        elif kind == "next":
            result = await next_cmd(self.engine, self.auth, self._target, context, *vbs,
                                    lookupMib=False)
        else:
            result = await get_cmd(self.engine, self.auth, self._target, context, *vbs,
                                   lookupMib=False)
        indication, status, index, varbinds = result
        if indication:
            raise _v3_error(self.endpoint, indication, self.user)
        if status:
            name = status.prettyPrint()
            if name == "authorizationError":
                raise SnmpError("auth", self.too_low(), name, int(index))
            raise SnmpError("error", f"{self.endpoint.where} answered {name} "
                                     f"(error index {int(index)})", name, int(index))
        return [(tuple(name), _from_pysnmp(value)) for name, value in varbinds]

    async def get(self, oids: Sequence[Oid]) -> Varbinds:
        return await self._call("get", oids)

    async def next(self, oids: Sequence[Oid]) -> Varbinds:
        return await self._call("next", oids)

    async def bulk(self, non_repeaters: Sequence[Oid], repeaters: Sequence[Oid],
                   max_repetitions: int) -> Varbinds:
        return await self._call("bulk", [*non_repeaters, *repeaters], len(non_repeaters),
                                max_repetitions)


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
                walk.stopped = (f"the walk of {dotted(column)} passed {limit} rows (more than the "
                                "device's interface count allows) and was stopped")
                return walk
        for column in active:
            if column in done or not advanced:
                cursor.pop(column, None)
        rows = max((len(t) for t in tables.values()), default=0)
        if progress is not None and rows != rows_seen:
            progress(rows)
            rows_seen = rows
    return walk
