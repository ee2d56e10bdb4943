"""BGP sessions of a router: BGP4-MIB's peer table, Juniper's and Arista's BGP4-V2 tables,
prefix counts.

Peers come from Juniper's jnxBgpM2PeerTable or Arista's aristaBgp4V2PeerTable when the router
has one (IPv6 peers, link-local ones with their zone, routing instances; Arista's with the
peer's configured description), else from BGP4-MIB's bgpPeerTable (IPv4 peers of the default
instance, what every router has). Accepted prefixes come from CISCO-BGP4-MIB
(cbgpPeerAddrFamilyPrefixTable, cbgpPeer2AddrFamilyPrefixTable), Juniper's
jnxBgpM2PrefixCountersTable or Arista's aristaBgp4V2PrefixGaugesTable, summed over the address
families of a peer.

One check per peer, "bgp <address>" ("bgp <address> in routing instance N" outside Juniper's
master instance: an L3VPN customer's CE may have a master peer's address): CRITICAL when a
session that is not administratively stopped is not Established ("BGP to AS64500 192.0.2.1
down since 03:12, was up 41 d 5 h"), WARNING when its accepted prefixes fell by more than
`bgp_prefix_drop` percent below what it had. Metrics (instance "bgp <address>"): bgp_state
(6 = established), session_down (1 while the check says down: not Established and not
administratively stopped; a consolidated row's mean is the share of its time down),
established_seconds, accepted_prefixes, session_flaps (times it left Established since the
last poll).
"""

from __future__ import annotations

import dataclasses
import ipaddress
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Protocol

from collectors.snmp_ber import Oid
from monitor.model import Batch, CheckResult, Kind, Measurement, State
from monitor.text import clean
from monitor.units import format_age

BGP_PEER = (1, 3, 6, 1, 2, 1, 15, 3, 1)
PEER_STATE, PEER_ADMIN, PEER_REMOTE_AS = (*BGP_PEER, 2), (*BGP_PEER, 3), (*BGP_PEER, 9)
PEER_TRANSITIONS, PEER_ESTABLISHED_TIME = (*BGP_PEER, 15), (*BGP_PEER, 16)
CISCO_ACCEPTED = (1, 3, 6, 1, 4, 1, 9, 9, 187, 1, 2, 4, 1, 1)  # index: IPv4 (4), afi, safi
CISCO2_ACCEPTED = (1, 3, 6, 1, 4, 1, 9, 9, 187, 1, 2, 8, 1, 1)  # index: type, len, addr, afi, safi
# cbgpPeer2RemoteAs (index: type, len, addr): the 4-byte AS that BGP4-MIB's 16-bit
# bgpPeerRemoteAs shows as AS_TRANS (23456)
CISCO2_REMOTE_AS = (1, 3, 6, 1, 4, 1, 9, 9, 187, 1, 2, 5, 1, 11)
JNX_PEER = (1, 3, 6, 1, 4, 1, 2636, 5, 1, 1, 2, 1, 1, 1)
JNX_STATE, JNX_STATUS, JNX_REMOTE_ADDR = (*JNX_PEER, 2), (*JNX_PEER, 3), (*JNX_PEER, 11)
JNX_REMOTE_AS, JNX_PEER_INDEX = (*JNX_PEER, 13), (*JNX_PEER, 14)
JNX_ESTABLISHED_TIME = (1, 3, 6, 1, 4, 1, 2636, 5, 1, 1, 2, 4, 1, 1, 1)
JNX_PREFIXES = (1, 3, 6, 1, 4, 1, 2636, 5, 1, 1, 2, 6, 2, 1)
JNX_IN_PREFIXES, JNX_ACCEPTED = (*JNX_PREFIXES, 7), (*JNX_PREFIXES, 8)  # index: peer index, afi, safi
# ARISTA-BGP4V2-MIB (the IETF BGP4-V2 draft under Arista's enterprise). Index: instance (1: the
# default), address type, address length, address; the prefix gauges add afi, safi.
ARISTA = (1, 3, 6, 1, 4, 1, 30065, 4, 1, 1)
ARISTA_REMOTE_AS, ARISTA_ADMIN = (*ARISTA, 2, 1, 10), (*ARISTA, 2, 1, 12)  # admin: halted (1)
ARISTA_STATE, ARISTA_DESCRIPTION = (*ARISTA, 2, 1, 13), (*ARISTA, 2, 1, 14)
ARISTA_ESTABLISHED_TIME, ARISTA_TRANSITIONS = (*ARISTA, 4, 1, 1), (*ARISTA, 7, 1, 5)
ARISTA_IN_PREFIXES, ARISTA_ACCEPTED = (*ARISTA, 8, 1, 3), (*ARISTA, 8, 1, 4)

COLUMNS = [PEER_STATE, PEER_ADMIN, PEER_REMOTE_AS, PEER_TRANSITIONS, PEER_ESTABLISHED_TIME,
           CISCO_ACCEPTED, CISCO2_ACCEPTED, CISCO2_REMOTE_AS, JNX_STATE, JNX_STATUS,
           JNX_REMOTE_ADDR, JNX_REMOTE_AS, JNX_PEER_INDEX, JNX_ESTABLISHED_TIME, JNX_IN_PREFIXES,
           JNX_ACCEPTED, ARISTA_REMOTE_AS, ARISTA_ADMIN, ARISTA_STATE, ARISTA_DESCRIPTION,
           ARISTA_ESTABLISHED_TIME, ARISTA_TRANSITIONS, ARISTA_IN_PREFIXES, ARISTA_ACCEPTED]

STATES = {1: "idle", 2: "connect", 3: "active", 4: "opensent", 5: "openconfirm", 6: "established"}
ESTABLISHED = 6
# A lower prefix count that lasts this long is the peer's new normal, not a drop.
NEW_NORMAL = 86400.0


@dataclass(frozen=True, slots=True)
class Peer:
    address: str
    remote_as: int | None
    state: int | None
    admin_stopped: bool = False
    established_seconds: float | None = None
    transitions: int | None = None
    accepted_prefixes: int | None = None
    routing_instance: int = 0  # Juniper's jnxBgpM2PeerRoutingInstance; 0: the master instance
    description: str = ""  # the router's own description of the peer (Arista)

    @property
    def name(self) -> str:
        """The peer's address, and its routing instance when that is not the master: what its
        check, series and history are keyed by."""
        if not self.routing_instance:
            return self.address
        return f"{self.address} in routing instance {self.routing_instance}"


def _int(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _address(octets: tuple[int, ...] | bytes) -> str | None:
    """An InetAddress: 4 or 16 octets, or ipv4z / ipv6z (8 / 20: the address and a 4-octet
    zone index, as a link-local peer has) written "fe80::1%5"."""
    try:
        raw = bytes(octets)
        if len(raw) in (8, 20):
            return f"{ipaddress.ip_address(raw[:-4])}%{int.from_bytes(raw[-4:], 'big')}"
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return None


def _indexed_address(index: Oid) -> tuple[str | None, int]:
    """(address, octets of the index it took) of an index that starts with an InetAddressType
    and a length-prefixed InetAddress (BGP4-V2's peer index after its instance)."""
    if len(index) < 2 or index[1] > len(index) - 2:
        return None, len(index)
    return _address(index[2:2 + index[1]]), 2 + index[1]


def _sum(counts: dict[str, int], key: str | None, value: object) -> None:
    if key is not None and _int(value) is not None:
        counts[key] = counts.get(key, 0) + value  # type: ignore[operator]


Tables = dict[Oid, dict[Oid, object]]


def peers_from_tables(tables: Tables) -> list[Peer]:
    """The BGP peers the tables describe (an empty list for a router without BGP)."""
    get = lambda column: tables.get(column, {})  # noqa: E731
    accepted: dict[str, int] = {}
    for index, value in get(CISCO_ACCEPTED).items():
        _sum(accepted, _address(index[:4]) if len(index) == 6 else None, value)
    # IOS 15 and later count an IPv4 peer in both tables: the newer one's counts replace the
    # older one's, never add to them.
    newer: dict[str, int] = {}
    for index, value in get(CISCO2_ACCEPTED).items():
        ok = len(index) >= 4 and index[1] == len(index) - 4
        _sum(newer, _address(index[2:-2]) if ok else None, value)
    accepted |= newer
    if get(JNX_STATE):
        peers = _juniper_peers(tables, accepted)
    elif get(ARISTA_STATE):
        peers = _arista_peers(tables, accepted)
    else:
        peers = _bgp4_mib_peers(tables)
    return [dataclasses.replace(p, accepted_prefixes=accepted.get(p.name)) for p in peers]


def _seconds(value: object) -> float | None:
    seconds = _int(value)
    return None if seconds is None else float(seconds)


def _bgp4_mib_peers(tables: Tables) -> list[Peer]:
    get = lambda column: tables.get(column, {})  # noqa: E731
    remote_as: dict[str, int] = {
        address: asn for index, value in get(CISCO2_REMOTE_AS).items()
        if len(index) >= 2 and index[1] == len(index) - 2
        and (address := _address(index[2:])) is not None and (asn := _int(value)) is not None}
    peers = []
    for index, state in sorted(get(PEER_STATE).items()):
        address = _address(index) if len(index) == 4 else None
        if address is None or _int(state) not in STATES:  # not a BGP state: not a peer
            continue
        asn = remote_as.get(address, _int(get(PEER_REMOTE_AS).get(index)))
        peers.append(Peer(address, asn, _int(state), get(PEER_ADMIN).get(index) == 1,
                          _seconds(get(PEER_ESTABLISHED_TIME).get(index)),
                          _int(get(PEER_TRANSITIONS).get(index))))
    return peers


def _juniper_peers(tables: Tables, accepted: dict[str, int]) -> list[Peer]:
    get = lambda column: tables.get(column, {})  # noqa: E731
    peers, by_peer_index = [], {}
    for index, state in sorted(get(JNX_STATE).items()):
        raw = get(JNX_REMOTE_ADDR).get(index)
        address = _address(raw) if isinstance(raw, bytes) else None
        if address is None or _int(state) not in STATES:
            continue
        peer = Peer(address, _int(get(JNX_REMOTE_AS).get(index)), _int(state),
                    get(JNX_STATUS).get(index) == 1, _seconds(get(JNX_ESTABLISHED_TIME).get(index)),
                    routing_instance=index[0])
        peer_index = _int(get(JNX_PEER_INDEX).get(index))
        if peer_index is not None:
            by_peer_index[peer_index] = peer.name
        peers.append(peer)
    for index, value in (get(JNX_ACCEPTED) or get(JNX_IN_PREFIXES)).items():
        _sum(accepted, by_peer_index.get(index[0]) if len(index) == 3 else None, value)
    return peers


def _arista_peers(tables: Tables, accepted: dict[str, int]) -> list[Peer]:
    get = lambda column: tables.get(column, {})  # noqa: E731
    peers, by_index = [], {}
    for index, state in sorted(get(ARISTA_STATE).items()):
        address, used = _indexed_address(index[1:])
        if address is None or used != len(index) - 1 or _int(state) not in STATES:
            continue
        description = get(ARISTA_DESCRIPTION).get(index)
        peer = Peer(address, _int(get(ARISTA_REMOTE_AS).get(index)), _int(state),
                    get(ARISTA_ADMIN).get(index) == 1, _seconds(get(ARISTA_ESTABLISHED_TIME).get(index)),
                    _int(get(ARISTA_TRANSITIONS).get(index)),
                    routing_instance=0 if index[0] == 1 else index[0],  # 1: the default
                    description=clean(description.decode("utf-8", "replace"), 60)
                    if isinstance(description, bytes) else "")
        by_index[index] = peer.name
        peers.append(peer)
    for index, value in (get(ARISTA_ACCEPTED) or get(ARISTA_IN_PREFIXES)).items():
        _sum(accepted, by_index.get(index[:-2]), value)
    return peers


@dataclass
class PeerHistory:
    """What one poll needs of the earlier ones."""

    up_for: float | None = None  # established seconds at the last poll it was up
    up_seen: float | None = None  # when that was
    transitions: int | None = None
    reference: int | None = None  # accepted prefixes before a drop
    low_since: float | None = None


def _clock(ts: float, now: float) -> str:
    fmt = "%H:%M" if now - ts < 20 * 3600 else "%Y-%m-%d %H:%M"
    return time.strftime(fmt, time.localtime(ts))


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class DescribedPort(Protocol):
    """What `port_links` needs of a port (collectors.snmp.PortInfo)."""

    @property
    def group(self) -> str: ...
    @property
    def description(self) -> str: ...
    @property
    def alias(self) -> str: ...
    @property
    def addresses(self) -> tuple[str, ...]: ...


def port_links(ports: Iterable[DescribedPort]) -> list[tuple[Network, str]]:
    """The subnets of the described ports ("Transit: ExampleNet", else the alias), at most a
    /24 or /64 wide: a BGP peer in one of them is that port's neighbour."""
    out = []
    for port in ports:
        label = clean(f"{port.group.title()}: {port.description}" if port.group and port.description
                      else port.alias, 40)
        for address in port.addresses if label else ():
            try:
                network = ipaddress.ip_network(address, strict=False)
            except ValueError:
                continue
            if network.prefixlen >= (24 if network.version == 4 else 64):
                out.append((network, label))
    return out


@dataclass
class BgpWatch:
    """Per device: the history of each peer across polls, and the checks of one poll.

    `links`: the device's own interface networks with the port's description ("Transit:
    ExampleNet"); a peer inside one is named by it (BGP4-MIB has no peer descriptions)."""

    prefix_drop: float = 50.0
    peers: dict[str, PeerHistory] = field(default_factory=dict)
    links: list[tuple[Network, str]] = field(default_factory=list)

    def label(self, address: str) -> str:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return ""
        if ip.is_link_local:  # fe80::/64 is on every port: the subnet names none of them
            return ""
        inside = [(net.prefixlen, name) for net, name in self.links
                  if net.version == ip.version and ip in net]
        return max(inside)[1] if inside else ""  # the narrowest network

    def batch(self, target: str, peers: list[Peer], now: float) -> Batch:
        batch = Batch()
        for peer in peers:
            history = self.peers.setdefault(peer.name, PeerHistory())
            instance = f"bgp {peer.name}"

            def add(metric: str, value: float | None, unit: str = "", instance: str = instance) -> None:
                if value is not None:
                    batch.add(Measurement(target, instance, metric, value, Kind.GAUGE, unit, now))

            # Each its own unit, prefixes first: the device page draws the first of them.
            add("accepted_prefixes", peer.accepted_prefixes)
            add("bgp_state", peer.state, "state")
            add("session_down", float(peer.state != ESTABLISHED and not peer.admin_stopped), "down")
            add("established_seconds", peer.established_seconds if peer.state == ESTABLISHED else None,
                "s")
            if peer.transitions is not None and history.transitions is not None:
                # into and out of Established both count: two transitions are one flap
                add("session_flaps", (max(0, peer.transitions - history.transitions) + 1) // 2,
                    "flaps")
            history.transitions = peer.transitions
            batch.add(CheckResult(target, instance, *self.verdict(peer, history, now), timestamp=now))
        for gone in self.peers.keys() - {p.name for p in peers}:
            del self.peers[gone]  # removed from the router's config
        return batch

    def verdict(self, peer: Peer, history: PeerHistory, now: float) -> tuple[State, str]:
        name = f"BGP to AS{peer.remote_as} {peer.name}" if peer.remote_as else f"BGP to {peer.name}"
        label = peer.description or self.label(peer.address)  # the router's own words first
        if label:
            name += f" ({label})"
        if peer.state != ESTABLISHED:
            state_name = STATES.get(peer.state or 0, f"state {peer.state}")
            if peer.admin_stopped:
                return State.OK, f"{name} is administratively stopped ({state_name})"
            since = ""
            if peer.established_seconds:  # while down: seconds since it left Established
                since = f" since {_clock(now - peer.established_seconds, now)}"
            was = ""
            if history.up_for is not None and history.up_seen is not None:
                left = now - (peer.established_seconds or 0.0)
                was = f", was up {format_age(history.up_for + max(0.0, left - history.up_seen))}"
            return State.CRITICAL, f"{name} down{since}{was} (state {state_name})"
        history.up_for, history.up_seen = peer.established_seconds, now
        # durations as people say them ("41 d 5 h"): a session's seconds are noise in a subject
        up = (f" for {format_age(peer.established_seconds)}"
              if peer.established_seconds is not None else "")
        count = peer.accepted_prefixes
        if count is None:
            return State.OK, f"{name} established{up}"
        message = f"{name} established{up}, {count:,} prefixes accepted"
        reference = history.reference
        floor = None if reference is None else reference * (1 - self.prefix_drop / 100)
        if self.prefix_drop and floor is not None and count < floor:
            history.low_since = history.low_since or now
            if now - history.low_since < NEW_NORMAL:
                drop = 100 * (reference - count) / reference if reference else 0.0
                return State.WARNING, (f"{name}: accepted prefixes fell from {reference:,} to "
                                       f"{count:,} (-{drop:.0f} %, more than {self.prefix_drop:g} %)")
        history.reference, history.low_since = count, None
        return State.OK, message
