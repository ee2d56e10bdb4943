"""The v1/v2c codec: encodings checked against known bytes, decoding of every value type."""

from __future__ import annotations

import pytest

from collectors import snmp_ber as ber


def test_encode_oid_and_int():
    assert ber.encode_oid((1, 3, 6, 1, 2, 1, 1, 3, 0)) == bytes.fromhex("06082b06010201010300")
    assert ber.encode_oid((1, 3, 6, 1, 4, 1, 8072)) == bytes.fromhex("06072b06010401bf08")
    assert ber.encode_int(0) == b"\x02\x01\x00"
    assert ber.encode_int(128) == b"\x02\x02\x00\x80"
    assert ber.encode_int(-1) == b"\x02\x01\xff"


def test_oid_round_trip():
    for oid in [(1, 3), (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6, 2**31 - 1), (2, 100, 3), (0, 39)]:
        body = ber.encode_oid(oid)[2:]
        assert ber.decode_oid(body) == oid


def response(varbinds: bytes, pdu: int = ber.RESPONSE, request_id: int = 42) -> bytes:
    inner = ber.encode_int(request_id) + ber.encode_int(0) + ber.encode_int(0) + ber._tlv(0x30, varbinds)
    return ber._tlv(0x30, ber.encode_int(1) + ber._tlv(0x04, b"public") + ber._tlv(pdu, inner))


def vb(oid, tag: int, content: bytes) -> bytes:
    return ber._tlv(0x30, ber.encode_oid(oid) + ber._tlv(tag, content))


def test_decode_all_value_types():
    data = response(
        vb((1, 3, 1), 0x02, b"\xff")                       # Integer -1
        + vb((1, 3, 2), 0x04, b"eth0")                     # OCTET STRING
        + vb((1, 3, 3), 0x41, b"\x00\xff\xff\xff\xff")     # Counter32 max
        + vb((1, 3, 4), 0x46, b"\x00" + b"\xff" * 8)       # Counter64 max
        + vb((1, 3, 5), 0x43, b"\x01\x00")                 # TimeTicks 256
        + vb((1, 3, 6), 0x40, bytes([192, 0, 2, 1]))       # IpAddress
        + vb((1, 3, 7), 0x06, ber.encode_oid((1, 3, 6))[2:])
        + vb((1, 3, 8), 0x82, b"")                         # endOfMibView
        + vb((1, 3, 9), 0x05, b"")
    )
    r = ber.decode_response(data)
    assert r.request_id == 42 and r.community == b"public" and r.version == 1
    values = [v for _, v in r.varbinds]
    assert values[:7] == [-1, b"eth0", 2**32 - 1, 2**64 - 1, 256, "192.0.2.1", (1, 3, 6)]
    assert values[7] is ber.END_OF_MIB_VIEW_V and values[8] is None


def test_long_lengths():
    big = b"x" * 300
    r = ber.decode_response(response(vb((1, 3), 0x04, big)))
    assert r.varbinds[0][1] == big


@pytest.mark.parametrize("junk", [b"", b"\x30", b"\x30\x05\x02\x01", b"\x04\x00", b"\x30\x84\xff\xff\xff\xff",
                                  b"\x30\x03\x02\x01\x01"])
def test_garbage_raises_ber_error(junk):
    with pytest.raises(ber.BerError):
        ber.decode_response(junk)


def test_truncated_real_message_raises():
    data = response(vb((1, 3, 1), 0x02, b"\x01"))
    for cut in range(1, len(data)):
        with pytest.raises(ber.BerError):
            ber.decode_response(data[:cut])


def test_request_decodes_with_pysnmp():
    """An independent decoder (pysnmp/pyasn1) reads our GETBULK as we meant it."""
    from pyasn1.codec.ber import decoder
    from pysnmp.proto import api

    module = api.PROTOCOL_MODULES[api.SNMP_VERSION_2C]
    msg = ber.encode_request(1, b"public", ber.GETBULK, 12345,
                             [(1, 3, 6, 1, 2, 1, 1, 3), (1, 3, 6, 1, 2, 1, 2, 2, 1, 10)], 1, 25)
    decoded, rest = decoder.decode(msg, asn1Spec=module.Message())
    assert rest == b""
    assert bytes(module.apiMessage.get_community(decoded)) == b"public"
    pdu = module.apiMessage.get_pdu(decoded)
    assert int(module.apiBulkPDU.get_request_id(pdu)) == 12345
    assert int(module.apiBulkPDU.get_non_repeaters(pdu)) == 1
    assert int(module.apiBulkPDU.get_max_repetitions(pdu)) == 25
    oids = [tuple(oid) for oid, _ in module.apiBulkPDU.get_varbinds(pdu)]
    assert oids == [(1, 3, 6, 1, 2, 1, 1, 3), (1, 3, 6, 1, 2, 1, 2, 2, 1, 10)]


# -- malformed input: refused with BerError, in bounded work --------------------------------


@pytest.mark.parametrize("tag, content", [
    (0x02, b"\x01" * 5),         # INTEGER beyond 32 bits
    (0x41, b"\x01" * 6),         # Counter32 of 6 bytes
    (0x41, b"\x01" + b"\x00" * 4),  # Counter32 = 2^32: 5 bytes, out of range
    (0x46, b"\x01" * 200),       # a 200-byte Counter64
    (0x43, b""),                 # TimeTicks without content
])
def test_oversized_or_empty_integers_are_malformed(tag, content):
    with pytest.raises(ber.BerError):
        ber.decode_response(response(vb((1, 3, 1), tag, content)))


def oid_body(oid) -> bytes:
    encoded = ber.encode_oid(oid)
    _, start, _ = ber._header(encoded, 0)
    return encoded[start:]


def test_oid_limits():
    longest = (1, 3, *([2**32 - 1] * 126))
    assert ber.decode_oid(oid_body(longest)) == longest
    with pytest.raises(ber.BerError, match="128"):
        ber.decode_oid(oid_body((1, 3, *([7] * 127))))
    with pytest.raises(ber.BerError):
        ber.decode_oid(b"\x2b" + b"\x81" * 60_000 + b"\x01")  # the 60 KB OID
    with pytest.raises(ber.BerError, match="2\\^32"):
        ber.decode_oid(ber.encode_oid((1, 3, 2**32))[2:])
    with pytest.raises(ber.BerError, match="dangling"):
        ber.decode_oid(ber.encode_oid((1, 3, 6, 1))[2:] + b"\x81")


def recorded_responses() -> list[bytes]:
    """Responses built from a real device recording (a Catalyst 2950's IF-MIB, every value
    type it has), in GETBULK-sized pieces."""
    from tests.conftest import DATA

    tags = {"2": 0x02, "4": 0x04, "4x": 0x04, "6": 0x06, "64": 0x40, "65": 0x41, "66": 0x42,
            "67": 0x43, "70": 0x46}
    varbinds = []
    for line in (DATA / "snmp" / "mixed-c2950-t0.snmprec").read_text().splitlines():
        oid_text, kind, value = line.split("|", 2)
        oid = tuple(int(x) for x in oid_text.split("."))
        tag = tags[kind]
        if kind == "4x":
            content = bytes.fromhex(value)
        elif tag == 0x04:
            content = value.encode()
        elif tag == 0x06:
            content = ber.encode_oid(tuple(int(x) for x in value.split(".")))[2:]
        elif tag == 0x40:
            content = bytes(int(x) for x in value.split("."))
        elif tag == 0x02:
            content = ber.encode_int(int(value))[2:]
        else:
            n = int(value)
            content = n.to_bytes((n.bit_length() + 8) // 8, "big")
        varbinds.append(vb(oid, tag, content))
    return [response(b"".join(varbinds[i:i + 50])) for i in range(0, len(varbinds), 50)]


def mutate(data: bytes, rng) -> bytes:
    out = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        what = rng.randrange(6)
        pos = rng.randrange(len(out)) if out else 0
        if what == 0 and out:
            out[pos] ^= 1 << rng.randrange(8)
        elif what == 1 and out:
            out[pos] = rng.choice((0x00, 0x7F, 0x80, 0x81, 0x84, 0xFF))
        elif what == 2:
            out[pos:pos] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif what == 3:
            del out[pos:pos + rng.randrange(1, 9)]
        elif what == 4:
            out = out[:pos]
        else:
            out[pos:pos] = b"\x81" * rng.randrange(1, 300)  # long continuation runs
    return bytes(out)


def test_fuzzed_recorded_responses_only_ever_raise_ber_error():
    """A seeded mutator over real responses (bounded: 20,000 cases, about a second): the
    decoder returns a Response of known value types or raises BerError, nothing else."""
    import random

    rng = random.Random(20261201)
    originals = recorded_responses()
    for original in originals:
        assert ber.decode_response(original).varbinds
    decoded = 0
    for _ in range(20_000):
        data = mutate(rng.choice(originals), rng)
        try:
            result = ber.decode_response(data)
        except ber.BerError:
            continue
        decoded += 1
        check_values(result.varbinds)
    assert decoded  # some mutations (a flipped value bit) still decode


def check_values(varbinds: list) -> None:
    """What a decoded message may hold, however mangled it was: OIDs within the standard's
    limits, values of the codec's types, integers within 64 bits."""
    for oid, value in varbinds:
        assert isinstance(oid, tuple) and len(oid) <= ber.MAX_OID_ARCS
        assert isinstance(value, int | bytes | tuple | str | ber.Missing | None)
        if isinstance(value, int):
            assert -(2**31) <= value < 2**64
