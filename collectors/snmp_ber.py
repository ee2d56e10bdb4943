"""A minimal BER codec for SNMP PDUs and v1/v2c community messages (RFC 1157, RFC 3416).

Why not pysnmp's codec here: pyasn1 decoding costs ~100 µs per varbind, which caps a poller at
6-9k varbinds per CPU-second; interface polling is almost all integers and short strings, which
this decoder reads in a few µs. SNMPv3 messages (collectors.snmp_v3) wrap the same PDUs. Only
what a poller needs: encode Get/GetNext/GetBulk, decode Response/Report.
Malformed input raises `BerError`, never anything else, and the work per message is bounded:
an OID has at most 128 sub-identifiers of at most 32 bits (RFC 2578 section 3.5), an integer at
most 64 bits, so decoding costs time linear in the message size, whatever the peer sends.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass

Oid = tuple[int, ...]

GET, GETNEXT, RESPONSE, GETBULK, REPORT = 0xA0, 0xA1, 0xA2, 0xA5, 0xA8

# Values that mean "nothing here" in a v2c response.
NO_SUCH_OBJECT, NO_SUCH_INSTANCE, END_OF_MIB_VIEW = 0x80, 0x81, 0x82


class Missing:
    """noSuchObject / noSuchInstance / endOfMibView: an exception value, not data."""

    __slots__ = ("tag",)

    def __init__(self, tag: int) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return {0x80: "noSuchObject", 0x81: "noSuchInstance", 0x82: "endOfMibView"}.get(self.tag, "?")


NO_SUCH_OBJECT_V = Missing(NO_SUCH_OBJECT)
NO_SUCH_INSTANCE_V = Missing(NO_SUCH_INSTANCE)
END_OF_MIB_VIEW_V = Missing(END_OF_MIB_VIEW)
_MISSING = {NO_SUCH_OBJECT: NO_SUCH_OBJECT_V, NO_SUCH_INSTANCE: NO_SUCH_INSTANCE_V,
            END_OF_MIB_VIEW: END_OF_MIB_VIEW_V}

ERROR_STATUS = {
    0: "noError", 1: "tooBig", 2: "noSuchName", 3: "badValue", 4: "readOnly", 5: "genErr",
    6: "noAccess", 7: "wrongType", 8: "wrongLength", 9: "wrongEncoding", 10: "wrongValue",
    11: "noCreation", 12: "inconsistentValue", 13: "resourceUnavailable", 14: "commitFailed",
    15: "undoFailed", 16: "authorizationError", 17: "notWritable", 18: "inconsistentName",
}


MAX_OID_ARCS = 128  # RFC 2578 3.5: at most 128 sub-identifiers, each at most 2^32-1
MAX_ARC = 2**32 - 1
# Content bytes of a value: INTEGER is 32 bits (signed), Counter32/Gauge32/TimeTicks 32 bits
# unsigned (plus a leading zero byte), Counter64 64 bits (plus a leading zero byte).
MAX_INT_BYTES = {0x02: 4, 0x41: 5, 0x42: 5, 0x43: 5, 0x46: 9}


class BerError(ValueError):
    """A message that is not valid BER/SNMP."""


@dataclass(slots=True)
class Response:
    version: int
    community: bytes
    pdu_type: int
    request_id: int
    error_status: int
    error_index: int
    varbinds: list[tuple[Oid, object]]


# -- encoding ----------------------------------------------------------------------------------


def _length(n: int) -> bytes:
    if n < 0x80:
        return bytes((n,))
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes((0x80 | len(body),)) + body


def _tlv(tag: int, payload: bytes) -> bytes:
    return bytes((tag,)) + _length(len(payload)) + payload


def encode_int(n: int) -> bytes:
    return _tlv(0x02, n.to_bytes(max(1, (n.bit_length() + 8) // 8), "big", signed=True))


def encode_oid(oid: Oid) -> bytes:
    if len(oid) < 2:
        raise ValueError(f"OID {oid} needs at least two arcs")
    if max(oid[2:], default=0) < 0x80 and 0 <= oid[0] * 40 + oid[1] < 0x80:
        return _tlv(0x06, bytes((oid[0] * 40 + oid[1], *oid[2:])))  # one byte per arc
    out = bytearray((oid[0] * 40 + oid[1],))
    for arc in oid[2:]:
        if arc < 0x80:
            out.append(arc)
            continue
        chunk = []
        while arc:
            chunk.append(arc & 0x7F)
            arc >>= 7
        for i in range(len(chunk) - 1, 0, -1):
            out.append(chunk[i] | 0x80)
        out.append(chunk[0])
    return _tlv(0x06, bytes(out))


_NULL = b"\x05\x00"


@functools.lru_cache(maxsize=8192)
def _request_varbind(oid: Oid) -> bytes:
    """(oid, NULL) as sent in a request. Cached: a walk's cursors are the same few thousand
    (column, ifIndex) pairs at every poll of every device, and encoding was a tenth of the
    client's CPU time."""
    return _tlv(0x30, encode_oid(oid) + _NULL)


def encode_pdu(pdu_type: int, request_id: int, oids: list[Oid], non_repeaters: int = 0,
               max_repetitions: int = 0) -> bytes:
    """A Get/GetNext (error fields 0) or GetBulk (non-repeaters, max-repetitions) PDU."""
    varbinds = b"".join(map(_request_varbind, oids))
    return _tlv(pdu_type, encode_int(request_id) + encode_int(non_repeaters)
                + encode_int(max_repetitions) + _tlv(0x30, varbinds))


def encode_request(version: int, community: bytes, pdu_type: int, request_id: int, oids: list[Oid],
                   non_repeaters: int = 0, max_repetitions: int = 0) -> bytes:
    """A v1/v2c message carrying `encode_pdu`'s PDU."""
    pdu = encode_pdu(pdu_type, request_id, oids, non_repeaters, max_repetitions)
    return _tlv(0x30, encode_int(version) + _tlv(0x04, community) + pdu)


# -- decoding ----------------------------------------------------------------------------------


def _header(data: bytes, pos: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the TLV at pos."""
    try:
        tag = data[pos]
        first = data[pos + 1]
    except IndexError:
        raise BerError("truncated message") from None
    pos += 2
    if first & 0x80:
        n = first & 0x7F
        if n == 0 or n > 4:
            raise BerError("unsupported length encoding")
        length = int.from_bytes(data[pos:pos + n], "big")
        pos += n
    else:
        length = first
    end = pos + length
    if end > len(data):
        raise BerError("truncated message")
    return tag, pos, end


def _int(data: bytes, pos: int, end: int, tag: int = 0x02) -> int:
    if end - pos > MAX_INT_BYTES[tag]:
        raise BerError(f"integer of {end - pos} bytes (type 0x{tag:02X} holds at most "
                       f"{MAX_INT_BYTES[tag]})")
    if end == pos:
        raise BerError("integer without content")
    value = int.from_bytes(data[pos:end], "big", signed=tag == 0x02)
    if tag != 0x02 and value >> (64 if tag == 0x46 else 32):
        raise BerError(f"value {value} out of range for type 0x{tag:02X}")
    return value


_HIGH_BIT = re.compile(rb"[\x80-\xff]")
# The first byte of an OID holds its first two arcs (40 x first + second).
_FIRST_ARCS = tuple((0, b) if b < 40 else (1, b - 40) if b < 80 else (2, b - 80) for b in range(256))


def decode_oid(body: bytes) -> Oid:
    if not body:
        raise BerError("empty OID")
    # A sub-identifier takes at most 5 bytes: longer bodies cannot be a legal OID, and refusing
    # them first keeps a hostile 60 KB OID from costing more than a few microseconds.
    if len(body) > 5 * MAX_OID_ARCS:
        raise BerError(f"OID of {len(body)} bytes (more than {MAX_OID_ARCS} sub-identifiers)")
    if body.isascii() and len(body) < MAX_OID_ARCS:
        # The common case, every sub-identifier below 128: one byte each, read in C.
        return _FIRST_ARCS[body[0]] + tuple(body[1:])
    if body[-1] & 0x80:
        raise BerError("OID ends inside a sub-identifier (dangling continuation byte)")
    first = body[0]
    if first < 40:
        arcs = [0, first]
    elif first < 80:
        arcs = [1, first - 40]
    else:
        arcs = [2, first - 80]
    # The one-byte sub-identifiers before the first long one (a table column's OID, before
    # an ifIndex of 128 or more) in C; the rest byte by byte.
    high = _HIGH_BIT.search(body, 1)
    start = len(body) if high is None else high.start()
    arcs.extend(body[1:start])
    arc = 0
    for b in body[start:]:
        if b & 0x80:
            arc = (arc << 7) | (b & 0x7F)
            if arc > MAX_ARC:
                raise BerError("OID sub-identifier above 2^32-1")
        else:
            arc = (arc << 7) | b
            if arc > MAX_ARC:
                raise BerError("OID sub-identifier above 2^32-1")
            arcs.append(arc)
            arc = 0
    if len(arcs) > MAX_OID_ARCS:
        raise BerError(f"OID with {len(arcs)} sub-identifiers (more than {MAX_OID_ARCS})")
    return tuple(arcs)


def decode_response(data: bytes) -> Response:
    """Decode a Response (or Report) message; values: int, bytes, Oid, str (IpAddress), Missing."""
    try:
        return _decode_response(data)
    except BerError:
        raise
    except (IndexError, ValueError) as exc:
        raise BerError(f"malformed message: {exc}") from None


def decode_pdu(data: bytes, pos: int, end: int) -> Response:
    """The Response (or Report) PDU at `pos`, inside data[:end] (an SNMPv3 scoped PDU's)."""
    try:
        return _decode_pdu(data[:end] if end < len(data) else data, pos, 3, b"")
    except BerError:
        raise
    except (IndexError, ValueError) as exc:
        raise BerError(f"malformed message: {exc}") from None


def _decode_response(data: bytes) -> Response:
    tag, pos, _ = _header(data, 0)
    if tag != 0x30:
        raise BerError("not an SNMP message")
    tag, s, e = _header(data, pos)
    if tag != 0x02:
        raise BerError("no version")
    version = _int(data, s, e)
    tag, s, e = _header(data, e)
    if tag != 0x04:
        raise BerError("no community")
    return _decode_pdu(data, e, version, data[s:e])


def _decode_pdu(data: bytes, pos: int, version: int, community: bytes) -> Response:
    pdu_type, s, _ = _header(data, pos)
    if pdu_type not in (RESPONSE, REPORT):
        raise BerError(f"unexpected PDU type 0x{pdu_type:02X}")
    fields = []
    pos = s
    for _ in range(3):
        tag, s, e = _header(data, pos)
        if tag != 0x02:
            raise BerError("bad PDU header")
        fields.append(_int(data, s, e))
        pos = e
    tag, pos, list_end = _header(data, pos)
    if tag != 0x30:
        raise BerError("no varbind list")
    varbinds: list[tuple[Oid, object]] = []
    if list_end > len(data):
        raise BerError("truncated message")
    _decode_varbinds(data, pos, list_end, varbinds)
    return Response(version, community, pdu_type, fields[0], fields[1], fields[2], varbinds)


# Encoded OID -> OID, for the names of response varbinds (see _decode_varbinds).
_OID_CACHE: dict[bytes, Oid] = {}
_OID_CACHE_SIZE = 32_768


def _decode_varbinds(data: bytes, pos: int, list_end: int, varbinds: list[tuple[Oid, object]],
                     first_arcs: tuple[tuple[int, int], ...] = _FIRST_ARCS,
                     int_limits: dict[int, int] = MAX_INT_BYTES,
                     missing: dict[int, Missing] = _MISSING,
                     from_bytes: Callable[..., int] = int.from_bytes,
                     oids: dict[bytes, Oid] = _OID_CACHE) -> None:
    """The varbind list from `pos` to `list_end`. This loop is the poller's hot path: the
    module-level tables come in as defaults (local names), short lengths (all of a poller's
    varbinds) are read inline, long ones go through _header, and OIDs come from a cache (the
    same (column, ifIndex) pairs come back at every poll of every device)."""
    append = varbinds.append
    while pos < list_end:
        if data[pos] != 0x30:
            raise BerError("bad varbind")
        n = data[pos + 1]
        if n < 0x80:
            vb_start, vb_end = pos + 2, pos + 2 + n
        else:
            _, vb_start, vb_end = _header(data, pos)
        if vb_end > list_end:
            raise BerError("varbind beyond its list")
        if data[vb_start] != 0x06:
            raise BerError("bad varbind name")
        n = data[vb_start + 1]
        if n < 0x80:
            s, e = vb_start + 2, vb_start + 2 + n
        else:
            _, s, e = _header(data, vb_start)
        body = data[s:e]
        oid = oids.get(body)
        if oid is None:
            if body.isascii() and 0 < n < 128:  # decode_oid's fast path, inline
                oid = first_arcs[body[0]] + tuple(body[1:])
            else:
                oid = decode_oid(body)
            if n < 40:  # a table row's name (a long one would only fill the cache)
                if len(oids) >= _OID_CACHE_SIZE:
                    oids.clear()  # junk from one device costs speed, never memory
                oids[body] = oid
        n = data[e + 1] if e + 1 < vb_end else 0x80
        if n < 0x80:
            tag, s, e = data[e], e + 2, e + 2 + n
        else:
            tag, s, e = _header(data, e)
        if e > vb_end:
            raise BerError("value beyond its varbind")
        limit = int_limits.get(tag)
        if limit is not None:  # INTEGER; Counter32, Gauge32, TimeTicks, Counter64: unsigned
            if not 0 < n <= limit:
                _int(data, s, e, tag)  # raises the precise error
            if tag == 0x02:
                value: object = from_bytes(data[s:e], "big", signed=True)
            else:
                value = from_bytes(data[s:e], "big")
                if value >> (64 if tag == 0x46 else 32):
                    _int(data, s, e, tag)
        elif tag == 0x04 or tag == 0x44:  # OCTET STRING, Opaque
            value = data[s:e]
        elif tag == 0x06:
            value = decode_oid(data[s:e])
        elif tag == 0x40:  # IpAddress
            value = ".".join(str(b) for b in data[s:e])
        elif tag == 0x05:
            value = None
        elif tag in missing:
            value = missing[tag]
        else:
            value = data[s:e]
        append((oid, value))
        pos = vb_end
