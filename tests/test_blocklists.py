"""Block-list lookups against a real unbound serving local DNSBL zones: listed and unlisted
addresses (IPv4 and IPv6), a range, a list that answers for everything, one that refuses the
resolver, one that never answers, and the cache."""

from __future__ import annotations

import asyncio
import socket

import dns.message
import dns.rcode
import pytest

from collectors.blocklists import BlocklistCollector, Lookup, query_name
from monitor.config import Blocklist, BlocklistsConfig, ConfigError, load_config
from monitor.model import State
from tests import daemons

ZONES = [
    'local-zone: "bl.dnsbl.example." static',
    'local-data: "10.2.0.192.bl.dnsbl.example. 300 IN A 127.0.0.2"',
    "local-data: '10.2.0.192.bl.dnsbl.example. 300 IN TXT \"Spam seen from 192.0.2.10, see https://bl.example/remove\"'",
    'local-data: "5.100.51.198.bl.dnsbl.example. 300 IN A 127.0.0.4"',
    'local-data: "30.100.51.198.bl.dnsbl.example. 300 IN A 127.0.0.2"',  # in the /27, not a /29
    'local-data: "33.100.51.198.bl.dnsbl.example. 300 IN A 127.0.0.2"',  # just outside the /27
    'local-data: "2.0.0.127.bl.dnsbl.example. 300 IN A 127.0.0.2"',  # RFC 5782's test entry
    # An IPv6 listing, RFC 5782 section 2.4: the address's 32 nibbles in reverse order
    # (written out here, not made by the code under test).
    f'local-data: "{".".join(reversed("20010db8000000000000000000000025"))}.bl.dnsbl.example. '
    '300 IN A 127.0.0.4"',
    'local-zone: "clean.dnsbl.example." static',
    # A list that shut down and wildcards its zone: everything is "listed".
    'local-zone: "dead.dnsbl.example." redirect',
    'local-data: "dead.dnsbl.example. 300 IN A 127.0.0.2"',
    # A list that refuses this resolver (Spamhaus' answer to public resolvers).
    'local-zone: "picky.dnsbl.example." redirect',
    'local-data: "picky.dnsbl.example. 300 IN A 127.255.255.254"',
]


def lists() -> list[Blocklist]:
    return [Blocklist("bl.dnsbl.example", {"127.0.0.2": "spam source", "127.0.0.4": "exploited host"},
                      "https://bl.example/remove"),
            Blocklist("clean.dnsbl.example"), Blocklist("dead.dnsbl.example"),
            Blocklist("picky.dnsbl.example"), Blocklist("slow.dnsbl.example")]


@pytest.fixture
def stalled_server():
    """A UDP DNS "server" that never answers: unbound's stub for slow.dnsbl.example."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def by(batch, target: str, check: str):
    return next(c for c in batch.checks if c.target == target and c.check == check)


def test_query_names():
    import ipaddress
    assert query_name(ipaddress.ip_address("192.0.2.10"), "zen.example") == "10.2.0.192.zen.example."
    six = query_name(ipaddress.ip_address("2001:db8::1"), "v6.example")
    assert six.startswith("1.0.0.0.") and six.endswith(".8.b.d.0.1.0.0.2.v6.example.")
    assert six.count(".") == 32 + 2


async def test_listed_unlisted_wildcard_refusing_and_silent_lists(tmp_path, stalled_server):
    zones = [*ZONES, "stub-zone:", '  name: "slow.dnsbl.example."',
             f"  stub-addr: 127.0.0.1@{stalled_server}"]
    cfg = BlocklistsConfig(enabled=True, addresses=["192.0.2.10", "192.0.2.20", "198.51.100.0/27",
                                                    "2001:db8::25", "2001:db8::26"],
                           resolver="127.0.0.1", timeout=1.0, lists=lists())
    with daemons.unbound(tmp_path, zones, interfaces=["127.0.0.1"]) as port:
        cfg.port = port
        collector = BlocklistCollector(cfg, cfg.interval)
        batch = await collector.collect()
    listed = by(batch, "192.0.2.10", "blocklists")
    assert listed.state is State.CRITICAL
    assert listed.message == (
        '192.0.2.10 is listed in bl.dnsbl.example: 127.0.0.2 = spam source ("Spam seen from '
        '192.0.2.10, see https://bl.example/remove"), delist at https://bl.example/remove')
    # The wildcarding and the refusing list are ignored; the silent one is named.
    clean = by(batch, "192.0.2.20", "blocklists")
    assert clean.state is State.OK
    assert clean.message == ("192.0.2.20 is listed in none of 2 block list(s) "
                             "(slow.dnsbl.example did not answer)")
    ranged = by(batch, "198.51.100.0/27", "blocklists")  # 32 addresses
    assert ranged.state is State.CRITICAL
    assert ranged.message.startswith("198.51.100.5 is listed in bl.dnsbl.example: 127.0.0.4 = "
                                     "exploited host")
    assert "; 198.51.100.30 is listed in bl.dnsbl.example: 127.0.0.2 = spam source" in ranged.message
    assert "198.51.100.33" not in ranged.message
    six = by(batch, "2001:db8::25", "blocklists")
    assert six.state is State.CRITICAL
    assert six.message.startswith("2001:db8::25 is listed in bl.dnsbl.example: 127.0.0.4 = "
                                  "exploited host")
    assert by(batch, "2001:db8::26", "blocklists").state is State.OK
    counts = {m.instance: m.value for m in batch.measurements if m.metric == "listed_addresses"}
    assert counts == {"192.0.2.10": 1, "192.0.2.20": 0, "198.51.100.0/27": 2, "2001:db8::25": 1,
                      "2001:db8::26": 0}
    assert by(batch, "bl.dnsbl.example", "dnsbl").state is State.OK
    assert by(batch, "clean.dnsbl.example", "dnsbl").state is State.OK
    dead = by(batch, "dead.dnsbl.example", "dnsbl")
    assert dead.state is State.WARNING and "answers for everything" in dead.message
    picky = by(batch, "picky.dnsbl.example", "dnsbl")
    assert picky.state is State.WARNING and "127.255.255.254" in picky.message
    slow = by(batch, "slow.dnsbl.example", "dnsbl")
    assert slow.state is State.WARNING and "no answer within 1 s" in slow.message
    assert not any(c.state is State.CRITICAL for c in batch.checks if c.check == "dnsbl")

    # unbound is gone: answers come from the cache, what failed is asked again (and fails).
    again = await collector.collect()
    assert by(again, "192.0.2.10", "blocklists").message == listed.message
    assert by(again, "bl.dnsbl.example", "dnsbl").state is State.OK
    assert by(again, "slow.dnsbl.example", "dnsbl").state is State.WARNING


async def test_no_list_answers_is_unknown_not_ok(tmp_path, stalled_server):
    cfg = BlocklistsConfig(enabled=True, addresses=["192.0.2.10"], resolver="127.0.0.1",
                           port=stalled_server, timeout=0.5, lists=lists()[:2])
    batch = await BlocklistCollector(cfg, cfg.interval).collect()
    assert by(batch, "192.0.2.10", "blocklists").state is State.UNKNOWN
    assert all(c.state is State.WARNING for c in batch.checks if c.check == "dnsbl")


def test_config(write_config):
    config = load_config(write_config('''
        [blocklists]
        enabled = true
        addresses = ["192.0.2.10", "198.51.100.0/27"]
        resolver = "127.0.0.1"
    '''))
    assert config.blocklists.interval == 3600
    assert "zen.spamhaus.org" in [b.zone for b in config.blocklists.lists]
    with pytest.raises(ConfigError, match=r"blocklists.addresses: expected an address or range"):
        load_config(write_config('[blocklists]\naddresses = ["192.0.2.300"]\n'))
    with pytest.raises(ConfigError, match=r"blocklists.lists\[0\].codes: expected return codes"):
        load_config(write_config('[[blocklists.lists]]\nzone = "a.example"\ncodes = { x = "y" }\n'))


class HoldingServer(asyncio.DatagramProtocol):
    """A DNS server that holds each query a moment before answering NXDOMAIN, so how many
    queries the client has in flight at once shows; it notes every name asked."""

    def __init__(self, hold: float) -> None:
        self.hold = hold
        self.outstanding = self.most = 0
        self.asked: list[str] = []

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        query = dns.message.from_wire(data)
        self.asked.append(query.question[0].name.to_text())
        self.outstanding += 1
        self.most = max(self.most, self.outstanding)
        asyncio.get_running_loop().call_later(self.hold, self.answer, query, addr)

    def answer(self, query, addr) -> None:
        self.outstanding -= 1
        response = dns.message.make_response(query)
        response.set_rcode(dns.rcode.NXDOMAIN)
        self.transport.sendto(response.to_wire(), addr)


async def test_a_range_is_asked_politely_bounded_and_cached():
    """A /27 in two lists: 66 questions (each list's test address, 32 addresses each), never
    more than `concurrency` at once, none again within `cache`, all again after it."""
    loop = asyncio.get_running_loop()
    transport, server = await loop.create_datagram_endpoint(lambda: HoldingServer(0.05),
                                                            local_addr=("127.0.0.1", 0))
    try:
        cfg = BlocklistsConfig(enabled=True, addresses=["198.51.100.0/27"], resolver="127.0.0.1",
                               port=transport.get_extra_info("sockname")[1], concurrency=4,
                               timeout=5.0, lists=lists()[:2])
        now = [1000.0]
        collector = BlocklistCollector(cfg, cfg.interval, lookup=Lookup(cfg, clock=lambda: now[0]))
        batch = await collector.collect()
        assert by(batch, "198.51.100.0/27", "blocklists").state is State.OK
        assert len(server.asked) == len(set(server.asked)) == 2 + 2 * 32
        assert 1 < server.most <= 4
        now[0] += cfg.cache - 1
        await collector.collect()
        assert len(server.asked) == 66  # from the cache
        now[0] += 2
        await collector.collect()
        assert len(server.asked) == 2 * 66 and server.most <= 4
    finally:
        transport.close()
