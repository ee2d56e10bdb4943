"""Writes the later polls (NAME-t1, NAME-t2, ...) of the real recordings next to this file.

Each *-t0.snmprec here is a real device's recording cut to the system group, the interface
tables and the MIBs under test (sources and licences: SOURCES.md). A state change is a second
recording: the t0 file with the few values a real device changes in that event, everything else
as recorded. Run it after changing it; the output is committed.
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
UPS = "1.3.6.1.2.1.33.1"
APC = "1.3.6.1.4.1.318.1.1.1"
BGP = "1.3.6.1.2.1.15.3.1"
CBGP = "1.3.6.1.4.1.9.9.187.1.2.4.1"
CBGP2 = "1.3.6.1.4.1.9.9.187.1.2.8.1"
ENVMON = "1.3.6.1.4.1.9.9.13.1"
CSENSOR = "1.3.6.1.4.1.9.9.91.1"
JBGP = "1.3.6.1.4.1.2636.5.1.1.2"
ABGP = "1.3.6.1.4.1.30065.4.1.1"
UPTIME = "1.3.6.1.2.1.1.3.0"
IF = "1.3.6.1.2.1.2.2.1"
IFX = "1.3.6.1.2.1.31.1.1.1"


def oid_key(line: str) -> tuple[int, ...]:
    return tuple(int(x) for x in line.split("|", 1)[0].split("."))


def variant(name: str, changes: dict[str, str], seconds: int, t0: Path | None = None) -> str:
    """`name`-t0 (or the recording `t0`) with `changes` ({oid: "type|value"}, added when
    missing) and sysUpTime `seconds` later."""
    lines = {}
    for line in (t0 or HERE / f"{name}-t0.snmprec").read_text().splitlines():
        oid, kind, value = line.split("|", 2)
        if oid == UPTIME:
            value = str((int(value) + 100 * seconds) % 2**32)
        lines[oid] = f"{oid}|{kind}|{value}"
    for oid, typed in changes.items():
        lines[oid] = f"{oid}|{typed}"
    return "\n".join(sorted(lines.values(), key=oid_key)) + "\n"


def octets(address: str) -> str:
    """An IPv6 address (with %zone: ipv6z) as the dotted octets of an index."""
    import ipaddress

    ip, _, zone = address.partition("%")
    raw = ipaddress.ip_address(ip).packed + (int(zone).to_bytes(4, "big") if zone else b"")
    return ".".join(map(str, raw))


C3750 = HERE.parent / "snmp" / "mixed-c3750-t0.snmprec"  # a real Catalyst 3750 (its SOURCES)


def link_errors(poll: int) -> str:
    """The Catalyst 3750's Gi1/0/6 (ifIndex 10106) `poll` x 5 minutes later: 970 good and 30
    bad frames a second arrive (3 % with errors: a dirty fibre or a duplex mismatch)."""
    seconds = 300 * poll
    lines = {}
    for line in C3750.read_text().splitlines():
        oid, kind, value = line.split("|", 2)
        lines[oid] = (kind, value)
    bumps = {f"{IF}.14.10106": 30, f"{IF}.11.10106": 970, f"{IFX}.7.10106": 970,
             f"{IF}.10.10106": 500 * 970, f"{IFX}.6.10106": 500 * 970}  # 500-byte frames
    changes = {}
    for oid, rate in bumps.items():
        if oid in lines:
            kind, value = lines[oid]
            bits = 64 if kind == "70" else 32
            changes[oid] = f"{kind}|{(int(value) + rate * seconds) % 2**bits}"
    return variant("errors-c3750", changes, seconds, t0=C3750)


def main() -> None:
    link_local = f"0.4.{octets('fe80::2%534')}.4.{octets('fe80::1%534')}"
    out = {
        # Gi1/0/6 of a real Catalyst 3750 starts taking errors: 3 % of its frames, 20 minutes.
        **{f"errors-c3750-t{poll}": link_errors(poll) for poll in range(5)},
        # Arista: the IPv4 peer with a description ("peer.example.com EBGP") drops to Idle, 4
        # minutes ago (aristaBgp4V2PeerFsmEstablishedTime counts since it left Established).
        "bgp-eos-t1": variant("bgp-eos", {
            f"{ABGP}.2.1.13.1.1.4.192.168.0.2": "2|1",
            f"{ABGP}.4.1.1.1.1.4.192.168.0.2": "66|240"}, 300),
        # Juniper: an IPv6 peer on a link-local address (fe80::1 on the interface of zone
        # 534), as an IX or a point-to-point link often has: jnxBgpM2PeerRemoteAddrType
        # ipv6z (4), a 20-octet address (16 and the zone index), in the index too.
        "bgp-junos-t2": variant("bgp-junos", {
            f"{JBGP}.1.1.1.{n}.{link_local}": typed for n, typed in (
                (2, "2|6"), (3, "2|2"), (10, "2|4"),
                (11, "4x|" + bytes(map(int, octets("fe80::1%534").split("."))).hex().upper()),
                (13, "66|65020"), (14, "66|4"))} | {
            f"{JBGP}.4.1.1.1.{link_local}": "66|3600", f"{JBGP}.6.2.1.8.4.2.1": "66|12"}, 300),
        # The mains fail: on battery for 3 minutes, 23 minutes left, an upsAlarmOnBattery row.
        "ups-eaton-t1": variant("ups-eaton", {
            f"{UPS}.4.1.0": "2|5", f"{UPS}.2.2.0": "2|180", f"{UPS}.2.3.0": "2|23",
            f"{UPS}.2.4.0": "2|87", f"{UPS}.3.3.1.3.1": "2|0", f"{UPS}.3.3.1.3.2": "2|0",
            f"{UPS}.3.3.1.3.3": "2|0", f"{UPS}.6.1.0": "66|1",
            f"{UPS}.6.2.1.2.1": f"6|{UPS}.6.3.2", f"{UPS}.6.2.1.3.1": "67|67425000"}, 180),
        # Still out: the battery is low (4 minutes left).
        "ups-eaton-t2": variant("ups-eaton", {
            f"{UPS}.4.1.0": "2|5", f"{UPS}.2.1.0": "2|3", f"{UPS}.2.2.0": "2|1260",
            f"{UPS}.2.3.0": "2|4", f"{UPS}.2.4.0": "2|18", f"{UPS}.6.1.0": "66|2",
            f"{UPS}.6.2.1.2.1": f"6|{UPS}.6.3.2", f"{UPS}.6.2.1.2.2": f"6|{UPS}.6.3.3"}, 1260),
        # Mains back: on line, charging; the battery self-test asks for a new battery.
        "ups-eaton-t3": variant("ups-eaton", {
            f"{UPS}.2.4.0": "2|35", f"{UPS}.6.1.0": "66|1",
            f"{UPS}.6.2.1.2.1": f"6|{UPS}.6.3.1"}, 1500),
        # Its battery self-test: on battery for 10 s with the upsAlarmTestInProgress row.
        "ups-eaton-t4": variant("ups-eaton", {
            f"{UPS}.4.1.0": "2|5", f"{UPS}.2.2.0": "2|10", f"{UPS}.6.1.0": "66|1",
            f"{UPS}.6.2.1.2.1": f"6|{UPS}.6.3.14", f"{UPS}.6.2.1.3.1": "67|67425000"}, 600),
        # APC: on battery (upsBasicOutputStatus onBattery), 12 minutes left, 90 % charge.
        "apc-smt750-t1": variant("apc-smt750", {
            f"{APC}.4.1.1.0": "2|3", f"{APC}.2.2.3.0": "67|72000", f"{APC}.2.3.1.0": "66|900",
            f"{APC}.2.1.2.0": "67|6000"}, 60),
        # APC back on line; its battery replace indicator is on.
        "apc-smt750-t2": variant("apc-smt750", {f"{APC}.2.2.4.0": "2|2"}, 120),
        # APC: its scheduled battery self-test (upsBasicOutputStatus onBatteryTest): on battery
        # for 8 seconds, by design.
        "apc-smt750-t3": variant("apc-smt750", {
            f"{APC}.4.1.1.0": "2|15", f"{APC}.2.1.2.0": "67|800"}, 180),
        # BGP: 192.168.99.25 drops to Active (left Established 120 s ago);
        # 192.168.99.20 stays up but accepts 5 of its 15 IPv4 unicast prefixes.
        "bgp-ios-t1": variant("bgp-ios", {
            f"{BGP}.2.192.168.99.25": "2|3", f"{BGP}.16.192.168.99.25": "66|120",
            f"{CBGP}.1.192.168.99.20.1.1": "65|5"}, 300),
        # IOS 15 and later fill CISCO-BGP4-MIB's cbgpPeer2AddrFamilyPrefixTable (IPv4 and IPv6
        # peers) next to the deprecated IPv4-only cbgpPeerAddrFamilyPrefixTable: the same counts
        # in both (index: address type 1, length 4, the address, AFI, SAFI).
        # And a peer with a 4-byte AS: BGP4-MIB's 16-bit bgpPeerRemoteAs says AS_TRANS (23456),
        # cbgpPeer2RemoteAs the AS.
        "bgp-ios-t2": variant("bgp-ios", {
            f"{CBGP2}.1.1.4.192.168.99.{peer}.1.{safi}": f"65|{count}" for peer, safi, count in (
                (20, 1, 15), (20, 2, 2), (25, 1, 17), (25, 2, 2))} | {
            f"{BGP}.9.192.168.99.25": "2|23456",
            "1.3.6.1.4.1.9.9.187.1.2.5.1.11.1.4.192.168.99.20": "66|64513",
            "1.3.6.1.4.1.9.9.187.1.2.5.1.11.1.4.192.168.99.25": "66|4200000001"}, 300),
        # Juniper: a customer's routing instance (5) gets a peer with the address of a peer of
        # the master instance (192.168.99.25), as L3VPN customers' CEs often have: established
        # 10 minutes, AS65010, peer index 3, 2 IPv4 unicast prefixes accepted.
        "bgp-junos-t1": variant("bgp-junos", {
            f"{JBGP}.1.1.1.{n}.5.1.192.168.99.24.1.192.168.99.25": typed for n, typed in (
                (2, "2|6"), (3, "2|2"), (11, "4x|C0A86319"), (13, "66|65010"), (14, "66|3"))} | {
            f"{JBGP}.4.1.1.1.5.1.192.168.99.24.1.192.168.99.25": "66|600",
            f"{JBGP}.6.2.1.7.3.1.1": "66|2", f"{JBGP}.6.2.1.8.3.1.1": "66|2"}, 300),
        # Nexus 5000: the outlet of module 1 reaches 69 °C, past its minor (58) and major (67)
        # thresholds, which the switch evaluates as true.
        "cisco-n5000-t1": variant("cisco-n5000", {
            f"{CSENSOR}.1.1.1.4.21598": "2|69", f"{CSENSOR}.2.1.1.5.21598.1": "2|1",
            f"{CSENSOR}.2.1.1.5.21598.2": "2|1"}, 300),
        # MX960: power entry module 2 loses its feed (jnxOperatingState down).
        "juniper-mx960-t1": variant("juniper-mx960", {
            "1.3.6.1.4.1.2636.3.1.13.1.6.2.3.0.0": "2|6"}, 300),
        # Catalyst 3560: its fan fails.
        "cisco-c3560-t1": variant("cisco-c3560", {f"{ENVMON}.4.1.3.1004": "2|3"}, 300),
    }
    for name, text in out.items():
        (HERE / f"{name}.snmprec").write_text(text)


if __name__ == "__main__":
    main()
