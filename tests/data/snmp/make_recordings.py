"""Writes the .snmprec recordings next to this file (run it after changing it; output is committed).

Each simulated device has one recording per poll ("NAME-t0", "NAME-t1", ...): snmpsim serves a
recording under the community of the same name, so a test polls t0, switches the device's
community to t1 and polls again, with a fake clock 60 s later. Counter values are chosen so the
expected rate is exact (e.g. +6000 octets in 60 s = 100 B/s).
"""

from __future__ import annotations

from pathlib import Path

HERE = Path(__file__).resolve().parent
SYS = "1.3.6.1.2.1.1"
IF = "1.3.6.1.2.1.2.2.1"
IFX = "1.3.6.1.2.1.31.1.1.1"
GIG = 1_000_000_000


def oid_key(line: str) -> tuple[int, ...]:
    return tuple(int(x) for x in line.split("|", 1)[0].split("."))


def hexstr(s: str) -> str:
    return "4x|" + s.encode().hex()


def device(descr: str, uptime: int | str, ifaces: list[dict], *, hc: bool = True,
           ifx: bool = True) -> str:
    """ifaces: dicts with index, name, alias, speed, admin, oper, octets (in; out = 2x), packets."""
    lines = [
        f"{SYS}.1.0|4|{descr}",
        f"{SYS}.2.0|6|1.3.6.1.4.1.8072.3.2.10",
        f"{SYS}.3.0|67|{uptime}" if isinstance(uptime, int) else f"{SYS}.3.0|{uptime}",
        f"{SYS}.4.0|4|noc@example.net",
        f"{SYS}.5.0|4|{descr.split()[0]}",
        f"{SYS}.6.0|4|Rack 1, DC Example",
        f"1.3.6.1.2.1.2.1.0|2|{len(ifaces)}",
    ]
    for i in ifaces:
        n = i["index"]
        octets_in = i.get("octets", 0)
        octets_out = i.get("out_octets", 2 * octets_in)
        pk = i.get("packets", 0)
        speed = i.get("speed", GIG)
        c32 = lambda v: v % 2**32  # noqa: E731
        lines += [
            f"{IF}.1.{n}|2|{n}",
            f"{IF}.2.{n}|4|{i.get('descr', i['name'])}",
            f"{IF}.3.{n}|2|6",
            f"{IF}.5.{n}|66|{min(speed, 2**32 - 1)}",
            f"{IF}.7.{n}|2|{i.get('admin', 1)}",
            f"{IF}.8.{n}|2|{i.get('oper', 1)}",
            f"{IF}.10.{n}|65|{c32(i.get('octets32', octets_in))}",
            f"{IF}.11.{n}|65|{c32(pk)}",
            f"{IF}.13.{n}|65|{i.get('discards', 0)}",
            f"{IF}.14.{n}|65|{i.get('errors', 0)}",
            f"{IF}.16.{n}|65|{c32(i.get('out_octets32', octets_out))}",
            f"{IF}.17.{n}|65|{c32(pk)}",
            f"{IF}.19.{n}|65|0",
            f"{IF}.20.{n}|65|0",
        ]
        if ifx:
            lines += [
                f"{IFX}.1.{n}|4|{i['name']}",
                f"{IFX}.2.{n}|65|{c32(pk // 10)}",
                f"{IFX}.3.{n}|65|{c32(pk // 100)}",
                f"{IFX}.4.{n}|65|{c32(pk // 10)}",
                f"{IFX}.5.{n}|65|{c32(pk // 100)}",
                f"{IFX}.15.{n}|66|{speed // 1_000_000}",
                f"{IFX}.18.{n}|{hexstr(i.get('alias', ''))}",
                f"{IFX}.19.{n}|67|{i.get('disc', 0)}",
            ]
            if hc:
                lines += [
                    f"{IFX}.6.{n}|70|{octets_in}",
                    f"{IFX}.7.{n}|70|{pk}",
                    f"{IFX}.8.{n}|70|{pk // 10}",
                    f"{IFX}.9.{n}|70|{pk // 100}",
                    f"{IFX}.10.{n}|70|{octets_out}",
                    f"{IFX}.11.{n}|70|{pk}",
                    f"{IFX}.12.{n}|70|{pk // 10}",
                    f"{IFX}.13.{n}|70|{pk // 100}",
                ]
    lines.sort(key=oid_key)
    return "\n".join(lines) + "\n"


def router(t: int) -> str:
    """4-port DMZ router; between t0 and t1 (60 s): eth0 +6000/s... see the tests."""
    return device("dmz-router Linux 6.1 DMZ edge", 100_000 + 6000 * t, [
        dict(index=1, name="eth0", alias="uplink to ISP <transit>", octets=10**9 + 600_000 * t,
             packets=1000 + 6000 * t),
        dict(index=2, name="eth1", alias="DMZ servers", octets=5 * 10**8 + 60_000 * t),
        dict(index=3, name="eth2", alias="office LAN", oper=2, octets=0),
        dict(index=4, name="eth3", alias="spare", admin=2, oper=2, octets=0),
    ])


def switch(t: int) -> str:
    ports = []
    for p in range(1, 49):
        ports.append(dict(index=p, name=f"Gi0/{p}", alias=f"port {p}", speed=GIG if p < 47 else 10 * GIG,
                          oper=1 if p % 4 else 2, octets=p * 10**6 + p * 6000 * t))
    return device("access-sw1 Cisco IOS", 500_000 + 6000 * t, ports)


def v1_device(t: int) -> str:
    return device("old-printer-switch v1 only", 200_000 + 6000 * t, [
        dict(index=1, name="port1", octets=1000 + 12_000 * t),
        dict(index=2, name="port2", octets=50 + 600 * t),
    ], ifx=False)


def renumbered(t: int) -> str:
    # After "reboot into a new firmware" (uptime keeps going: only the table was rebuilt),
    # eth0 moves from ifIndex 1 to 7 and eth1 from 2 to 3; their counters continue.
    a, b = (1, 2) if t == 0 else (7, 3)
    return device("renumbering-router", 100_000 + 6000 * t, [
        dict(index=a, name="eth0", octets=10**6 + 6000 * t),
        dict(index=b, name="eth1", octets=9 * 10**6 + 60_000 * t),
    ])


def wraps(t: int) -> str:
    """wan32: 32-bit counters only (no ifHC*) wrapping; wan64: 64-bit wrapping."""
    return device("wrap-router", 100_000 + 6000 * t, [
        dict(index=1, name="wan", octets=(2**64 - 1000 + 6000 * t) % 2**64,
             out_octets=(2**64 - 500 + 12_000 * t) % 2**64),
    ])


def wraps32(t: int) -> str:
    return device("wrap32-router", 100_000 + 6000 * t, [
        dict(index=1, name="wan", octets=(2**32 - 1000 + 6000 * t) % 2**32,
             out_octets=(2**32 - 500 + 12_000 * t) % 2**32),
    ], hc=False)


def reboot(t: int) -> str:
    # t0: up 30 days with big counters; t1: rebooted 10 s ago, counters near zero;
    # t2: 60 s later, normal again.
    uptime = [259_200_000, 1000, 7000][t]
    octets = [987_654_321_000, 5000, 11_000][t]
    return device("rebooting-router", uptime, [dict(index=1, name="eth0", octets=octets)])


def uptime_wrap(t: int) -> str:
    # sysUpTime wraps after 2^32 ticks (497 days): t0 just before, t1 just after. Not a reboot.
    uptime = [2**32 - 3000, 3000][t]
    return device("old-faithful-router", uptime, [dict(index=1, name="eth0", octets=10**9 + 6000 * t)])


def demo() -> str:
    """The demo router: counters grow with snmpsim's numeric variation (rate per second)."""
    ifaces = [
        ("eth0", "uplink to ISP", 1_250_000, 2_500_000),   # ~10 / 20 Mbit/s
        ("eth1", "DMZ servers", 400_000, 900_000),
        ("eth2", "office LAN", 150_000, 60_000),
        ("eth3", "backup link", 0, 0),
    ]
    lines = [
        f"{SYS}.1.0|4|dmz-router (simulated by snmpsim for the demo)",
        f"{SYS}.2.0|6|1.3.6.1.4.1.8072.3.2.10",
        f"{SYS}.3.0|67:numeric|rate=100,initial=360000",
        f"{SYS}.4.0|4|noc@example.net",
        f"{SYS}.5.0|4|dmz-router",
        f"{SYS}.6.0|4|Demo rack",
        f"1.3.6.1.2.1.2.1.0|2|{len(ifaces)}",
    ]
    for n, (name, alias, rin, rout) in enumerate(ifaces, 1):
        oper = 2 if name == "eth3" else 1
        lines += [
            f"{IF}.1.{n}|2|{n}", f"{IF}.2.{n}|4|{name}", f"{IF}.3.{n}|2|6",
            f"{IF}.5.{n}|66|{GIG}", f"{IF}.7.{n}|2|1", f"{IF}.8.{n}|2|{oper}",
            f"{IF}.13.{n}|65:numeric|rate={0.01 if rin else 0},initial=0",
            f"{IF}.14.{n}|65:numeric|rate={0.02 if rin else 0},initial=0",
            f"{IF}.19.{n}|65|0", f"{IF}.20.{n}|65|0",
            f"{IFX}.1.{n}|4|{name}",
            f"{IFX}.6.{n}|70:numeric|rate={rin},initial={10**9 * n}",
            f"{IFX}.7.{n}|70:numeric|rate={rin // 800},initial={10**6 * n}",
            f"{IFX}.8.{n}|70:numeric|rate={rin // 80000},initial=0",
            f"{IFX}.9.{n}|70:numeric|rate={rin // 400000},initial=0",
            f"{IFX}.10.{n}|70:numeric|rate={rout},initial={2 * 10**9 * n}",
            f"{IFX}.11.{n}|70:numeric|rate={rout // 900},initial={10**6 * n}",
            f"{IFX}.12.{n}|70:numeric|rate={rout // 90000},initial=0",
            f"{IFX}.13.{n}|70:numeric|rate={rout // 450000},initial=0",
            f"{IFX}.15.{n}|66|1000",
            f"{IFX}.18.{n}|{hexstr(alias)}",
            f"{IFX}.19.{n}|67|0",
        ]
    lines.sort(key=oid_key)
    return "\n".join(lines) + "\n"


# Real recordings (snmpsim-data, BSD-2-Clause: data/network/router/cisco-unmarked-0 and
# data/network/switch/cisco-c3750), cut to the system group, ifNumber, ifTable and ifXTable:
# Catalyst switches where only some interfaces have 64-bit counters (a 2950 with 64-bit
# counters on Vl1 only; a 3750 whose StackPort1 and Nu0 have only 32-bit ones).
MIXED = ("mixed-c2950", "mixed-c3750")
IN_OCTETS = {f"{IF}.10.": 65, f"{IFX}.6.": 70}
OUT_OCTETS = {f"{IF}.16.": 65, f"{IFX}.10.": 70}


def advanced(recording: str, seconds: int = 60) -> str:
    """The next poll of a real recording: uptime + `seconds`, every interface's in/out octet
    counter (32 and 64 bits) + 100 / 200 bytes per second, wrapping as the device would."""
    out = []
    for line in recording.splitlines():
        oid, kind, value = line.split("|", 2)
        if oid == f"{SYS}.3.0":
            value = str((int(value) + 100 * seconds) % 2**32)
        for columns, rate in ((IN_OCTETS, 100), (OUT_OCTETS, 200)):
            for prefix, tag in columns.items():
                if oid.startswith(prefix) and kind == str(tag):
                    bits = 32 if tag == 65 else 64
                    value = str((int(value) + rate * seconds) % 2**bits)
        out.append(f"{oid}|{kind}|{value}")
    return "\n".join(out) + "\n"


def flap(t: int) -> str:
    """eth0 up at t0, down at t1; eth1 never up; lo (softwareLoopback) and a VLAN always up;
    port descriptions in LibreNMS style."""
    text = device("flap-switch", 100000 + 6000 * t, [
        dict(index=1, name="eth0", oper=1 if t == 0 else 2, alias="Transit: ExampleNet [10G] {CID-42}"),
        dict(index=2, name="eth1", oper=2, alias="Cust: Acme Ltd (rack 4)"),
        dict(index=3, name="lo", alias="loopback"),
        dict(index=4, name="vlan10", alias="Core: backbone"),
    ])
    types = {f"{IF}.3.3|": "24", f"{IF}.3.4|": "135"}  # softwareLoopback, l2vlan
    out = []
    for line in text.splitlines():
        for prefix, number in types.items():
            if line.startswith(prefix):
                line = f"{prefix}2|{number}"
        out.append(line)
    # MAC addresses, and IP addresses in both IP-MIB tables (ipAddrTable: v4 only).
    out += [f"{IF}.6.{n}|4x|0200000000{n:02x}" for n in (1, 2, 4)] + [f"{IF}.6.3|4x|"]
    v4 = "192.0.2.1"
    out += [f"1.3.6.1.2.1.4.20.1.1.{v4}|64|{v4}", f"1.3.6.1.2.1.4.20.1.2.{v4}|2|1",
            f"1.3.6.1.2.1.4.20.1.3.{v4}|64|255.255.255.252"]
    v6 = ".".join(str(b) for b in bytes.fromhex("20010db8000000000000000000000001"))
    for index in (f"1.4.{v4}", f"2.16.{v6}"):
        prefix = 30 if index.startswith("1.") else 64
        out += [f"1.3.6.1.2.1.4.34.1.3.{index}|2|1",
                f"1.3.6.1.2.1.4.34.1.5.{index}|6|1.3.6.1.2.1.4.32.1.5.1.{index}.{prefix}"]
    out.sort(key=oid_key)
    return "\n".join(out) + "\n"


EVIL_ALIAS = "Cust: Evil (rack 4) <b>bold</b> (x) tail <script>alert(1)</script>"


def evil_alias(t: int) -> str:
    """A port whose ifAlias has ") " and HTML in it, with a MAC and an address; 60 s apart."""
    lines = device("evil-switch", 100000 + 6000 * t, [
        dict(index=1, name="eth0", alias=EVIL_ALIAS, octets=10**9 + 600_000 * t)]).splitlines()
    lines += [f"{IF}.6.1|4x|02000000be01", "1.3.6.1.2.1.4.20.1.1.198.51.100.7|64|198.51.100.7",
              "1.3.6.1.2.1.4.20.1.2.198.51.100.7|2|1",
              "1.3.6.1.2.1.4.20.1.3.198.51.100.7|64|255.255.255.0"]
    lines.sort(key=oid_key)
    return "\n".join(lines) + "\n"


def odd() -> str:
    """A device without sysName, whose eth1 reports ifOperStatus 0 and eth2 none at all."""
    lines = device("odd-box", 100000, [dict(index=1, name="eth0"), dict(index=2, name="eth1", oper=0),
                                       dict(index=3, name="eth2")]).splitlines()
    return "\n".join(line for line in lines
                     if not line.startswith((f"{SYS}.5.0|", f"{IF}.8.3|"))) + "\n"


def main() -> None:
    for name in MIXED:
        t0 = (HERE / f"{name}-t0.snmprec").read_text()
        (HERE / f"{name}-t1.snmprec").write_text(advanced(t0))
    files: dict[str, str] = {}
    for t in (0, 1):
        files[f"router-t{t}"] = router(t)
        files[f"switch-t{t}"] = switch(t)
        files[f"v1-t{t}"] = v1_device(t)
        files[f"renumber-t{t}"] = renumbered(t)
        files[f"wrap64-t{t}"] = wraps(t)
        files[f"wrap32-t{t}"] = wraps32(t)
        files[f"uptimewrap-t{t}"] = uptime_wrap(t)
        files[f"flap-t{t}"] = flap(t)
        files[f"evilalias-t{t}"] = evil_alias(t)
    for t in (0, 1, 2):
        files[f"reboot-t{t}"] = reboot(t)
    files["odd"] = odd()
    for name, content in files.items():
        (HERE / f"{name}.snmprec").write_text(content)
    # The demo's router ships with the project, not with the tests.
    (HERE.parent.parent.parent / "scripts" / "snmpsim" / "dmz-router.snmprec").write_text(demo())


if __name__ == "__main__":
    main()
