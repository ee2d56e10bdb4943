"""A hostile SNMP agent for the tests: a small asyncio UDP server on loopback that reads the
poller's real GET/GETNEXT/GETBULK requests and answers them badly, in the way the community
string asks for (one server plays every bad device at once, like snmpsim plays the good ones):

endless       a table that never ends (every answer has higher OIDs in every column)
slow          like endless, each answer 0.2 s late (only a time budget stops it)
held          like endless, but no answer at all until the test sets `HostileAgent.gate`
backwards     OIDs that go back inside a column (.5, then .1)
repeat        the same OID again and again
endofmib      answers sysUpTime, endOfMibView for every IF-MIB column
nosuchobject  answers sysUpTime, noSuchObject for every IF-MIB column
bigint        integers 200 bytes long
hugeoid       a 60 KB OID
dangling      an OID whose last byte says "more follows"
garbage       random bytes
silence       nothing at all

Not in MODES (not a broken poll), for the tests of what a device may say:
longalias     a tidy table of 2 interfaces whose ifAlias is 30 KB with terminal escapes and
              bidi overrides
badcounters   a tidy table of 2 interfaces whose counters are of the wrong type: a negative
              INTEGER in the 64-bit columns, a Counter64 above 2^32 in the 32-bit ones
endlessinventory  a tidy IF-MIB, but ifPhysAddress and the IP-MIB tables never end
"""

from __future__ import annotations

import asyncio
import random

from collectors import snmp_ber as ber

SYS_OBJECT_ID = (1, 3, 6, 1, 2, 1, 1, 2, 0)
SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
SYS_NAME = (1, 3, 6, 1, 2, 1, 1, 5, 0)
IF_NUMBER = (1, 3, 6, 1, 2, 1, 2, 1, 0)
MODES = ("endless", "slow", "held", "backwards", "repeat", "endofmib", "nosuchobject", "bigint",
         "hugeoid", "dangling", "garbage", "silence")


def parse_request(data: bytes) -> tuple[int, bytes, int, int, int, int, list[tuple[int, ...]]]:
    """(version, community, pdu type, request id, non-repeaters, max-repetitions, oids)."""
    _, pos, _ = ber._header(data, 0)
    _, s, e = ber._header(data, pos)
    version = int.from_bytes(data[s:e], "big")
    _, s, e = ber._header(data, e)
    community = data[s:e]
    pdu_type, pos, _ = ber._header(data, e)
    fields = []
    for _ in range(3):
        _, s, e = ber._header(data, pos)
        fields.append(int.from_bytes(data[s:e], "big", signed=True))
        pos = e
    _, pos, end = ber._header(data, pos)
    oids = []
    while pos < end:
        _, pos, vb_end = ber._header(data, pos)
        _, s, e = ber._header(data, pos)
        oids.append(ber.decode_oid(data[s:e]))
        pos = vb_end
    return version, community, pdu_type, fields[0], fields[1], fields[2], oids


def varbind(oid: tuple[int, ...], value: bytes) -> bytes:
    return ber._tlv(0x30, ber.encode_oid(oid) + value)


def counter(n: int) -> bytes:
    return ber._tlv(0x41, n.to_bytes(5, "big"))


def scalar(oid: tuple[int, ...], sys_name: bytes) -> bytes:
    """The answer to a GETNEXT of a scalar the poller asks for (sysUpTime and friends)."""
    if SYS_OBJECT_ID[:-1] == oid[:len(SYS_OBJECT_ID) - 1]:
        return varbind(SYS_OBJECT_ID, ber.encode_oid((1, 3, 6, 1, 4, 1, 8072, 3, 2, 10)))
    if SYS_UPTIME[:-1] == oid[:len(SYS_UPTIME) - 1]:
        return varbind(SYS_UPTIME, ber._tlv(0x43, (123456).to_bytes(4, "big")))
    if SYS_NAME[:-1] == oid[:len(SYS_NAME) - 1]:
        return varbind(SYS_NAME, ber._tlv(0x04, sys_name))
    return varbind(IF_NUMBER, ber.encode_int(2))


IF, IFX = (1, 3, 6, 1, 2, 1, 2, 2, 1), (1, 3, 6, 1, 2, 1, 31, 1, 1, 1)
INVENTORY_COLUMNS = ((*IF, 6), (1, 3, 6, 1, 2, 1, 4))  # ifPhysAddress, the IP-MIB
LONG_ALIAS = b"\x1b[2J\xe2\x80\xae" + b"evil alias " * 2700 + b"\x07"


def tidy_value(column: tuple[int, ...], index: int) -> bytes:
    """A plausible value of an IF-MIB column for interface `index`."""
    if column in ((*IFX, 1), (*IF, 2)):  # ifName, ifDescr
        return ber._tlv(0x04, f"port{index}".encode())
    if column == (*IFX, 18):  # ifAlias
        return ber._tlv(0x04, LONG_ALIAS)
    if column in ((*IF, 3), (*IF, 7), (*IF, 8)):  # ifType ethernetCsmacd, admin and oper up
        return ber.encode_int(6 if column == (*IF, 3) else 1)
    if column in ((*IF, 5), (*IFX, 15)):  # ifSpeed, ifHighSpeed: 1 Gbit/s
        return ber._tlv(0x42, (10**9 if column == (*IF, 5) else 1000).to_bytes(5, "big"))
    return counter(1000)


def next_row(mode: str, column: tuple[int, ...], cursor: tuple[int, ...], rep: int) -> bytes:
    """One repetition of one column: the varbind the hostile agent returns."""
    index = cursor[len(column)] if len(cursor) > len(column) else 0
    if mode == "badcounters":
        if index + rep + 1 > 2:
            return varbind(cursor, b"\x82\x00")
        value = tidy_value(column, index + rep + 1)
        if value == counter(1000):
            value = (ber.encode_int(-5) if column[:len(IFX)] == IFX
                     else ber._tlv(0x46, (2**40 + rep).to_bytes(6, "big")))
        return varbind((*column, index + rep + 1), value)
    if mode in ("longalias", "endlessinventory"):
        if mode == "endlessinventory" and any(column[:len(c)] == c for c in INVENTORY_COLUMNS):
            return varbind((*column, index + rep + 1), counter(1000))
        if index + rep + 1 > 2:  # two interfaces, then the end of the MIB
            return varbind(cursor, b"\x82\x00")
        return varbind((*column, index + rep + 1), tidy_value(column, index + rep + 1))
    if mode in ("endless", "slow", "held"):
        return varbind((*column, index + rep + 1), counter(1000))
    if mode == "backwards":
        return varbind((*column, 5 if rep % 2 == 0 else 1), counter(1000))
    if mode == "repeat":
        return varbind((*column, max(index, 1)), counter(1000))
    if mode == "endofmib":
        return varbind(cursor, b"\x82\x00")
    if mode == "nosuchobject":
        return varbind(cursor, b"\x80\x00")
    if mode == "bigint":
        return varbind((*column, index + 1), ber._tlv(0x41, b"\x01" * 200))
    if mode == "hugeoid":
        return ber._tlv(0x30, ber._tlv(0x06, b"\x2b" + b"\x81" * 60_000 + b"\x01") + counter(1))
    if mode == "dangling":
        body = ber.encode_oid((*column, index + 1))[2:] + b"\x81"
        return ber._tlv(0x30, ber._tlv(0x06, body) + counter(1))
    raise AssertionError(mode)


def answer(data: bytes, rng: random.Random, sys_name: bytes = b"hostile") -> bytes | None:
    version, community, pdu_type, request_id, non_rep, reps, oids = parse_request(data)
    mode = community.decode()
    if mode == "silence":
        return None
    if mode == "garbage":
        return bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200)))
    if pdu_type != ber.GETBULK:
        non_rep, reps = len(oids), 0
    if pdu_type == ber.GET:
        body = b"".join(varbind(o, ber.encode_int(1)) for o in oids)
    else:
        body = b"".join(scalar(o, sys_name) for o in oids[:non_rep])
        repeaters = oids[non_rep:]
        if mode == "hugeoid":  # one 60 KB OID: all a datagram can carry
            reps, repeaters = 1, repeaters[:1]
        if mode == "longalias":  # one 30 KB alias per answer
            reps = 1
        for rep in range(min(reps, 10)):
            for oid in repeaters:
                column = oid[:11] if oid[:10] == (1, 3, 6, 1, 2, 1, 31, 1, 1, 1) else oid[:10]
                body += next_row(mode, column, oid, rep)
    pdu = (ber.encode_int(request_id) + ber.encode_int(0) + ber.encode_int(0)
           + ber._tlv(0x30, body))
    return ber._tlv(0x30, ber.encode_int(version) + ber._tlv(0x04, community)
                    + ber._tlv(ber.RESPONSE, pdu))


class HostileAgent(asyncio.DatagramProtocol):
    def __init__(self, sys_name: str = "hostile") -> None:
        self.sys_name = sys_name.encode()
        self.gate = asyncio.Event()
        self.held: list[tuple[bytes, tuple[str, int]]] = []
        self.release: asyncio.Future | None = None
        self.transport: asyncio.DatagramTransport | None = None
        self.rng = random.Random(15)
        self.requests: dict[str, int] = {}

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            reply = answer(data, self.rng, self.sys_name)
        except Exception:  # a request we cannot read: stay silent, like a real agent
            return
        mode = parse_request(data)[1].decode()
        self.requests[mode] = self.requests.get(mode, 0) + 1
        if reply is None or self.transport is None:
            return
        if mode == "slow":
            asyncio.get_running_loop().call_later(0.2, self._send, reply, addr)
        elif mode == "held" and not self.gate.is_set():
            if not self.held:
                self.release = asyncio.ensure_future(self._release())
            self.held.append((reply, addr))
        else:
            self.transport.sendto(reply, addr)

    async def _release(self) -> None:
        await self.gate.wait()
        for reply, addr in self.held:
            self._send(reply, addr)
        self.held.clear()

    def _send(self, reply: bytes, addr: tuple[str, int]) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.sendto(reply, addr)


async def start_hostile(sys_name: str = "hostile") -> tuple[asyncio.DatagramTransport,
                                                          HostileAgent, int]:
    """Bound to port 0 on 127.0.0.1 (answering sysName `sys_name`); close the transport when done."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(lambda: HostileAgent(sys_name),
                                                              local_addr=("127.0.0.1", 0))
    return transport, protocol, transport.get_extra_info("sockname")[1]
