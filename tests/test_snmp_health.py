"""UPS, BGP and device health over SNMP, against real device recordings served by snmpsim
(tests/data/health, see SOURCES.md there) and net-snmp's snmpd; the default link-error rule.

Each recording exists once per poll (NAME-t0, NAME-t1, ...): a test polls t0, switches the
device's community to t1 and polls again, as tests/test_snmp.py does.
"""

from __future__ import annotations

import asyncio
import dataclasses
import subprocess
import sys
import time
from pathlib import Path

import pytest

from alerts.engine import Event, Kind
from alerts.notify import one_line
from collectors.snmp import SnmpCollector
from collectors.snmp_bgp import BgpWatch, Peer
from collectors.snmp_health import ErrorWatch
from monitor.config import SnmpDevice
from monitor.model import Batch, State
from tests.conftest import DATA
from tests.test_snmp import Clock, serving, snmpd  # noqa: F401

HEALTH_DATA = DATA / "health"
T0 = 1_800_000_000


@pytest.fixture(scope="module")
def recordings():
    with serving(HEALTH_DATA, "ups-eaton-t0") as port:
        yield port


class Device:
    """One recorded device polled through its phases with a fake clock."""

    def __init__(self, port: int, recording: str, **kw) -> None:
        self.recording = recording
        self.clock = Clock(T0)
        dev = SnmpDevice(name=recording, host="127.0.0.1", port=port, community=f"{recording}-t0",
                         timeout=2.0, retries=1, **kw)
        self.collector = SnmpCollector([dev], 300, clock=self.clock)

    def poll(self, phase: int, seconds: float = 300) -> Batch:
        poller = self.collector.pollers[self.recording]
        if phase:
            self.collector.replace_device(dataclasses.replace(
                poller.device, community=f"{self.recording}-t{phase}"))
            self.clock.now += seconds
        return asyncio.run(self.collector.collect())

    def close(self) -> None:
        self.collector.close()


def checks(batch: Batch) -> dict[str, tuple[State, str]]:
    return {c.check: (c.state, c.message) for c in batch.checks}


def values(batch: Batch, instance: str) -> dict[str, float | None]:
    return {m.metric: m.value for m in batch.measurements if m.instance == instance}


def test_ups_mib_power_cut_from_a_real_eaton(recordings):
    ups = Device(recordings, "ups-eaton")
    try:
        first = ups.poll(0)
        assert checks(first)["ups"] == (State.OK, "UPS on line, runtime 18h12m (EATON 93E 80, "
                                        "charge 100 %, load 21 %, input 227 V)")
        assert values(first, "ups") == {"on_battery": 0.0, "battery_charge_percent": 100.0,
                                        "runtime_seconds": 65520.0, "input_volts": 227.0,
                                        "output_volts": 220.0, "load_percent": 21.0,
                                        "temperature_celsius": 25.0}
        cut = checks(ups.poll(1, 180))["ups"]
        assert cut == (State.CRITICAL, "UPS on battery, 23m runtime left, for 3m (EATON 93E 80, "
                                       "charge 87 %, load 21 %, input 0 V)")
        low = checks(ups.poll(2, 1080))["ups"]
        assert low[0] is State.CRITICAL and "4m runtime left, battery LOW" in low[1]
        back = checks(ups.poll(3, 240))["ups"]
        assert back == (State.WARNING, "UPS battery needs replacing, runtime 18h12m (EATON 93E 80, "
                                       "charge 35 %, load 21 %, input 227 V)")
    finally:
        ups.close()


def test_apc_powernet_on_battery_and_replace_battery(recordings):
    apc = Device(recordings, "apc-smt750")
    try:
        assert checks(apc.poll(0))["ups"][0] is State.OK
        battery = apc.poll(1, 60)
        assert checks(battery)["ups"] == (State.CRITICAL, "UPS on battery, 12m runtime left, for "
                                          "1m (Smart-UPS X 750, charge 90 %, load 0 %, input 119 V)")
        assert values(battery, "ups")["temperature_celsius"] == 23.4
        assert checks(apc.poll(2, 60))["ups"][0] is State.WARNING
    finally:
        apc.close()


def test_an_apc_self_test_is_not_a_power_cut(recordings):
    """Smart-UPS run a battery self-test every two weeks (upsBasicOutputStatus onBatteryTest):
    seconds on battery by design, which must not page anyone at 3 a.m."""
    apc = Device(recordings, "apc-smt750")
    try:
        test = apc.poll(3, 180)
    finally:
        apc.close()
    state, message = checks(test)["ups"]
    assert state is State.OK and message.startswith("UPS in a battery self-test")
    assert "(Smart-UPS X 750, charge" in message
    assert values(test, "ups")["on_battery"] == 0.0
    # UPS-MIB says it with an upsAlarmTestInProgress row while upsOutputSource is battery.
    eaton = Device(recordings, "ups-eaton")
    try:
        test = eaton.poll(4, 600)
    finally:
        eaton.close()
    state, message = checks(test)["ups"]
    assert state is State.OK and message.startswith("UPS in a battery self-test")


def test_bgp_session_down_and_prefix_drop_on_cisco(recordings):
    router = Device(recordings, "bgp-ios")
    try:
        first = checks(router.poll(0))
        assert first["bgp 192.168.99.25"] == (State.OK, "BGP to AS64513 192.168.99.25 established "
                                              "for 7 min, 19 prefixes accepted")
        later = router.poll(1, 300)
        down_at = time.strftime("%H:%M", time.localtime(router.clock.now - 120))
        assert checks(later)["bgp 192.168.99.25"] == (
            State.CRITICAL, f"BGP to AS64513 192.168.99.25 down since {down_at}, was up 10 min "
                            "(state active)")
        state, message = checks(later)["bgp 192.168.99.20"]
        assert state is State.WARNING and message == (
            "BGP to AS64513 192.168.99.20: accepted prefixes fell from 17 to 7 (-59 %, more than 50 %)")
        assert values(later, "bgp 192.168.99.25")["bgp_state"] == 3
    finally:
        router.close()


def test_cisco_prefix_counts_in_both_mib_tables_are_not_added(recordings):
    """IOS 15 reports a peer's accepted prefixes in cbgpPeerAddrFamilyPrefixTable and again in
    cbgpPeer2AddrFamilyPrefixTable: 19, not 38. And a 4-byte AS as cbgpPeer2RemoteAs."""
    router = Device(recordings, "bgp-ios")
    try:
        result = checks(router.poll(2))
    finally:
        router.close()
    assert result["bgp 192.168.99.25"][1].endswith(", 19 prefixes accepted")
    assert result["bgp 192.168.99.20"][1].endswith(", 17 prefixes accepted")
    # A 4-byte AS: cbgpPeer2RemoteAs, not BGP4-MIB's AS_TRANS 23456.
    assert result["bgp 192.168.99.25"][1].startswith("BGP to AS4200000001 192.168.99.25 established")


def test_bgp_down_mail_is_readable():
    watch = BgpWatch()
    up = Peer("192.0.2.1", 64500, 6, established_seconds=41 * 86400.0)
    watch.batch("edge1", [up], T0)
    down = Peer("192.0.2.1", 64500, 1, established_seconds=600.0)
    [result] = watch.batch("edge1", [down], T0 + 900).checks
    since = time.strftime("%H:%M", time.localtime(T0 + 300))
    assert result.message == f"BGP to AS64500 192.0.2.1 down since {since}, was up 41 d 0 h (state idle)"
    event = Event(kind=Kind.FIRING, key="k", rule="service-down", target="edge1", label=result.check,
                  severity=State.CRITICAL, message=result.message, value=None, threshold="",
                  since=T0 + 900, at=T0 + 900, groups=("admins",))
    assert one_line(event, T0 + 900).startswith(f"[CRITICAL] edge1 bgp 192.0.2.1: BGP to AS64500 "
                                                f"192.0.2.1 down since {since}, was up 41 d")


def test_flaps_are_counted_and_a_stopped_peer_is_not_a_problem():
    watch = BgpWatch()
    watch.batch("r", [Peer("192.0.2.9", 65001, 6, established_seconds=10.0, transitions=7)], T0)
    batch = watch.batch("r", [Peer("192.0.2.9", 65001, 6, established_seconds=5.0, transitions=13)],
                        T0 + 300)
    assert values(batch, "bgp 192.0.2.9")["session_flaps"] == 3
    [stopped] = watch.batch("r", [Peer("192.0.2.9", 65001, 1, admin_stopped=True)], T0 + 600).checks
    assert stopped.state is State.OK and "administratively stopped" in stopped.message


def test_juniper_bgp4_v2_peers_with_ipv6_and_prefixes(recordings):
    router = Device(recordings, "bgp-junos")
    try:
        result = checks(router.poll(0))
        assert result["bgp 192.168.99.25"][1].endswith("established for 4 d 4 h, 24 prefixes accepted")
        assert result["bgp fd00:28:1:1::1:5"][0] is State.CRITICAL
        assert router.collector.pollers["bgp-junos"].health.found.bgp_peers == 3
    finally:
        router.close()


def test_juniper_peers_of_two_routing_instances_with_one_address(recordings):
    """An L3VPN customer's CE in routing instance 5 has the address of a master-instance peer:
    two sessions, two checks, each with its own prefixes."""
    router = Device(recordings, "bgp-junos")
    try:
        router.poll(0)
        later = router.poll(1, 300)
    finally:
        router.close()
    names = [c.check for c in later.checks if c.check.startswith("bgp 192.168.99.25")]
    assert sorted(names) == ["bgp 192.168.99.25", "bgp 192.168.99.25 in routing instance 5"]
    result = checks(later)
    assert result["bgp 192.168.99.25"][1].endswith(", 24 prefixes accepted")
    assert result["bgp 192.168.99.25 in routing instance 5"] == (
        State.OK, "BGP to AS65010 192.168.99.25 in routing instance 5 established for 10 min, "
                  "2 prefixes accepted")
    assert values(later, "bgp 192.168.99.25 in routing instance 5")["accepted_prefixes"] == 2
    assert router.collector.pollers["bgp-junos"].health.found.bgp_peers == 4


def test_cisco_envmon_thresholds_cpu_memory_and_a_failed_fan(recordings):
    switch = Device(recordings, "cisco-c3560")
    try:
        first = switch.poll(0)
        result = checks(first)
        # Recorded as it was: the switch itself said its sensor is in its warning state.
        assert result["temperature SW#1, Sensor#1, YELLOW"] == (
            State.WARNING, "SW#1, Sensor#1, YELLOW is 61 °C (warning, device threshold 66 °C)")
        assert result["psu Sw1, PS1 Normal, RPS NotExist"][0] is State.OK
        assert values(first, "cpu") == {"cpu_percent": 28.0}
        assert values(first, "memory")["used_bytes"] == 22188980
        fan = checks(switch.poll(1))["fan Switch#1, Fan#1"]
        assert fan == (State.CRITICAL, "fan Switch#1, Fan#1 is critical (failed: redundancy lost or "
                                       "the device at risk)")
    finally:
        switch.close()


def test_juniper_operating_table_entity_sensors_and_mikrotik(recordings):
    found = {}
    for name in ("juniper-mx960", "arista-7150s", "routeros-rb750"):
        device = Device(recordings, name)
        try:
            batch = device.poll(0)
            found[name] = (device.collector.pollers[name].health.found, batch)
        finally:
            device.close()
    mx, mx_batch = found["juniper-mx960"]
    assert mx.cpu and mx.memory and mx.storage == 4 and mx.sensors >= 40
    mx_checks = checks(mx_batch)
    assert mx_checks["psu PEM 0"] == (State.OK, "power supply PEM 0 is running")
    assert mx_checks["fan Top Tray Fan 1"][0] is State.OK
    assert "storage /packages/mnt/jbase" not in mx_checks  # read-only package images
    assert values(mx_batch, "sensor Routing Engine 0") == {"temperature_celsius": 24.0}
    arista, arista_batch = found["arista-7150s"]
    assert arista.sensors > 50
    assert values(arista_batch, "sensor Board temp sensor")["temperature_celsius"] == 23.0
    _, mt_batch = found["routeros-rb750"]
    assert values(mt_batch, "sensor voltage") == {"volts": 24.3}
    assert values(mt_batch, "sensor temperature") == {"temperature_celsius": 38.0}
    assert values(mt_batch, "cpu") == {"cpu_percent": 6.0}


def test_storage_thresholds_are_the_devices_own(recordings):
    """The MX960's /var is 33 % used: OK at the defaults (90 / 95), WARNING and CRITICAL when
    the device's storage_warning / storage_critical say so; a bad pair names its key."""
    states = {}
    for warning, critical in ((90.0, 95.0), (30.0, 95.0), (20.0, 30.0)):
        device = Device(recordings, "juniper-mx960", storage_warning=warning,
                        storage_critical=critical)
        try:
            states[warning] = checks(device.poll(0))["storage /var"]
        finally:
            device.close()
    assert states[90.0][0] is State.OK
    assert states[30.0] == (State.WARNING, "/var: 33 % used of 17.8 GiB")
    assert states[20.0][0] is State.CRITICAL
    assert SnmpDevice("r", "h").storage_warning == 90.0


def test_storage_thresholds_in_the_config_file(tmp_path):
    from monitor.config import ConfigError, load_config

    path = tmp_path / "config.toml"
    path.write_text('[[snmp.devices]]\nname = "srv"\nhost = "192.0.2.9"\n'
                    'storage_warning = "80%"\nstorage_critical = "85%"\n')
    device = load_config(path).snmp.devices[0]
    assert (device.storage_warning, device.storage_critical) == (80.0, 85.0)
    path.write_text('[[snmp.devices]]\nname = "srv"\nhost = "192.0.2.9"\n'
                    'storage_warning = "96%"\n')
    with pytest.raises(ConfigError, match="storage_warning: must not be above storage_critical"):
        load_config(path)


def test_arista_thresholds_of_standard_entity_sensors(recordings):
    """ENTITY-SENSOR-MIB itself has no thresholds; Arista's aristaEntSensorThresholdTable
    gives them to its rows (a real DCS-7050TX: an optic on Ethernet1 receives no light, which
    the switch itself calls "below the low critical threshold (229)")."""
    device = Device(recordings, "arista-7050tx")
    try:
        found = checks(device.poll(0))
    finally:
        device.close()
    assert found["sensor DOM RX Power Sensor for Ethernet1"] == (
        State.CRITICAL, "DOM RX Power Sensor for Ethernet1 is 1e-07 W (below the low critical "
                        "threshold 2.29e-05 W)")
    assert found["temperature Cpu temp sensor"] == (
        State.OK, "Cpu temp sensor is 53.3 °C (thresholds: high warning 90 °C, high critical 95 °C)")
    assert found["sensor DOM Voltage Sensor for Ethernet1"][0] is State.OK
    # a rail whose limits are all "not set" (+-1000000000) gets no threshold check
    assert "sensor CpucardPwrCon Rail1 12V standby" not in found
    assert sum(1 for c in found if c.startswith(("temperature ", "sensor "))) == 13


def test_net_snmp_host_resources_and_ucd(snmpd):  # noqa: F811
    device = SnmpDevice(name="linux", host="127.0.0.1", port=snmpd, community="monitor-ro",
                        include=["lo"], skip_types=[])
    collector = SnmpCollector([device], 300)
    try:
        batch = asyncio.run(collector.collect())
    finally:
        collector.close()
    found = collector.pollers["linux"].health.found
    # CPU: found (hrProcessorLoad needs a minute of snmpd's history; the UCD raw counters need
    # two polls), memory and storage at once.
    assert found.cpu and found.memory and found.storage >= 1
    memory = values(batch, "memory")
    assert 0 < memory["used_bytes"] < memory["size_bytes"]
    root = values(batch, "storage:/")
    assert 0 < root["used_percent"] <= 100
    assert any(c.check == "storage /" for c in batch.checks)


def test_link_errors_warn_after_their_duration():
    watch = ErrorWatch(percent=1.0, duration=900)
    bad = {"in_errors": 5.0, "in_ucast_packets": 95.0, "out_errors": 0.0, "out_ucast_packets": 50.0}
    assert watch.judge("ge-0/0/1", bad, T0) == (State.OK, "")
    state, text = watch.judge("ge-0/0/1", bad, T0 + 900)
    assert state is State.WARNING and text == "; 5 % of packets with errors, above 1 % for 15m"
    assert watch.judge("ge-0/0/1", {**bad, "in_errors": 0.0}, T0 + 1200) == (State.OK, "")
    assert watch.judge("ge-0/0/1", bad, T0 + 1500) == (State.OK, "")  # the clock starts again


def test_discover_says_what_it_found(recordings):
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(recordings),
         "--community", "bgp-ios-t0", "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "# UPS-MIB: no, BGP peers: 2, sensors: 0, CPU: no, memory: no\n" in out.stdout
    out = subprocess.run(
        [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(recordings),
         "--community", "cisco-c3560-t0", "--timeout", "2"], capture_output=True, text=True, timeout=60)
    assert "# UPS-MIB: no, BGP peers: 0, sensors: 3, CPU: yes, memory: yes\n" in out.stdout


def test_a_lying_device_harms_only_itself(recordings):
    liar = Device(recordings, "hostile")
    try:
        batch = liar.poll(0)
    finally:
        liar.close()
    result = checks(batch)
    assert result["snmp"][0] is State.OK and "if eth0" in result
    state, message = result["ups"]
    assert state is State.CRITICAL and "\n" not in message and "\u202e" not in message
    assert len(message) < 200 and "charge" not in message  # 5000 % is no charge
    assert set(k for k in result if k.startswith("bgp ")) == {"bgp 192.0.2.2"}
    assert result["bgp 192.0.2.2"][1].startswith("BGP to AS4294967295 192.0.2.2 established")
    assert result["psu ../../etc/passwd"][0] is State.CRITICAL  # a name, never a path
    names = [c.check for c in batch.checks] + [m.instance for m in batch.measurements]
    assert all(name.isprintable() and len(name) < 80 for name in names)
    assert values(batch, "sensor CPU CRITICAL fake") == {}  # scale 99: not a value
    assert values(batch, "sensor #6") == {"temperature_celsius": 42.0}


def test_peers_are_named_by_the_port_they_are_on():
    from collectors.snmp import PortInfo
    from collectors.snmp_bgp import port_links

    def port(alias: str, group: str, description: str, *addresses: str) -> PortInfo:
        return PortInfo("eth0", "eth0", alias, "ethernetCsmacd", 1e9, group, description, "", "",
                        "", addresses)

    watch = BgpWatch(links=port_links([
        port("Transit: ExampleNet [10G]", "transit", "ExampleNet", "192.0.2.2/30", "2001:db8::2/64"),
        port("IX LAN", "", "", "198.51.100.10/22"),  # wider than a /24: not a neighbour's link
        port("", "", "", "203.0.113.1/24"),  # no description: no name
    ]))
    [result] = watch.batch("edge1", [Peer("192.0.2.1", 64500, 3, established_seconds=60.0)], T0).checks
    assert result.message.startswith("BGP to AS64500 192.0.2.1 (Transit: ExampleNet) down since ")
    assert watch.label("2001:db8::1") == "Transit: ExampleNet"
    assert watch.label("198.51.100.1") == "" and watch.label("203.0.113.9") == ""


def test_bgp_history_survives_a_restart(recordings, tmp_path):
    """cron-style runs, each a new collector on the same state directory: the second run
    still knows how long the session had been up."""
    def run(phase: int, at: float) -> Batch:
        dev = SnmpDevice(name="bgp-ios", host="127.0.0.1", port=recordings,
                         community=f"bgp-ios-t{phase}", timeout=2.0, retries=1)
        collector = SnmpCollector([dev], 300, clock=Clock(at), state_dir=tmp_path)
        try:
            return asyncio.run(collector.collect())
        finally:
            collector.close()

    run(0, T0)
    message = checks(run(1, T0 + 300))["bgp 192.168.99.25"][1]
    assert ", was up 10 min (state active)" in message
    assert checks(run(1, T0 + 600))["bgp 192.168.99.20"][0] is State.WARNING  # baseline kept


def test_cisco_entity_sensor_thresholds_of_the_switch_itself(recordings):
    nexus = Device(recordings, "cisco-n5000")
    try:
        first = nexus.poll(0)
        result = checks(first)
        assert result["temperature Module-1, Outlet"] == (
            State.OK, "Module-1, Outlet is 40 °C (thresholds: minor >= 58 °C, major >= 67 °C)")
        assert values(first, "sensor Module-1, Outlet") == {"temperature_celsius": 40.0}
        assert nexus.collector.pollers["cisco-n5000"].health.found.sensors > 50
        hot = checks(nexus.poll(1))["temperature Module-1, Outlet"]
        assert hot == (State.CRITICAL, "Module-1, Outlet is 69 °C (major threshold: >= 67 °C)")
    finally:
        nexus.close()


def test_arista_peers_are_named_by_their_own_description(recordings):
    """A real Arista DCS-7050TX: no BGP4-MIB at all, its sessions in ARISTA-BGP4V2-MIB with the
    description configured on the peer, which names it in the check (and so in the mail)."""
    router = Device(recordings, "bgp-eos")
    try:
        first = router.poll(0)
        later = router.poll(1, 300)
    finally:
        router.close()
    result = checks(first)
    assert result["bgp 192.168.0.2"] == (
        State.OK, "BGP to AS65000 192.168.0.2 (peer.example.com EBGP) established for "
                  "151 d 12 h, 540,339 prefixes accepted")
    assert result["bgp 2001:550:2:2f::33:1"] == (
        State.OK, "BGP to AS65001 2001:550:2:2f::33:1 established for 17 d 23 h, 40,633 "
                  "prefixes accepted")
    assert router.collector.pollers["bgp-eos"].health.found.bgp_peers == 2
    down_at = time.strftime("%H:%M", time.localtime(router.clock.now - 240))
    assert checks(later)["bgp 192.168.0.2"] == (
        State.CRITICAL, f"BGP to AS65000 192.168.0.2 (peer.example.com EBGP) down since "
                        f"{down_at}, was up 151 d 12 h (state idle)")
    assert values(later, "bgp 192.168.0.2")["session_down"] == 1.0
    assert values(later, "bgp 2001:550:2:2f::33:1")["session_down"] == 0.0


def test_juniper_link_local_peer_is_a_peer(recordings):
    """An IPv6 session on link-local addresses (jnxBgpM2PeerRemoteAddrType ipv6z: 16 octets
    and the zone) is watched like any other, its zone in its name."""
    router = Device(recordings, "bgp-junos")
    try:
        result = checks(router.poll(2))
        found = router.collector.pollers["bgp-junos"].health.found
    finally:
        router.close()
    assert result["bgp fe80::1%534"] == (
        State.OK, "BGP to AS65020 fe80::1%534 established for 1 h 00 min, 12 prefixes accepted")
    assert found.bgp_peers == 4


def test_link_errors_of_a_real_switch_port_warn_across_cron_runs(recordings, tmp_path):
    """Gi1/0/6 of a real Catalyst 3750 takes 3 % errors, polled every 5 minutes by a new
    process each time (`collect --once` from cron): WARNING once it has lasted errors_for
    (15 minutes), without a rule written for it."""
    def run(poll: int) -> tuple[State, str]:
        dev = SnmpDevice(name="sw", host="127.0.0.1", port=recordings,
                         community=f"errors-c3750-t{poll}", timeout=2.0, retries=1)
        collector = SnmpCollector([dev], 300, clock=Clock(T0 + 300 * poll), state_dir=tmp_path)
        try:
            return checks(asyncio.run(collector.collect()))["if Gi1/0/6"]
        finally:
            collector.close()

    states = [run(poll) for poll in range(5)]
    assert [s for s, _ in states] == [State.OK] * 4 + [State.WARNING]
    assert states[4][1].startswith("Gi1/0/6 (link-wensilou) up, 1 Gbit/s, in ")
    assert states[4][1].endswith("; 3 % of packets with errors, above 1 % for 15m")


async def test_discover_says_why_the_health_mibs_were_not_read():
    """An agent that answers IF-MIB and drops every other request (a slow or filtered
    enterprise subtree): `discover` says they were not read, not "UPS-MIB: no"."""
    from collectors.snmp_client import CommunityClient, Endpoint
    from collectors.snmp_discover import discover
    from tests.snmp_hostile import HostileAgent, parse_request

    class InterfacesOnly(HostileAgent):
        def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
            oids = parse_request(data)[6]
            if all(o[:7] in ((1, 3, 6, 1, 2, 1, 1), (1, 3, 6, 1, 2, 1, 2), (1, 3, 6, 1, 2, 1, 31))
                   for o in oids):
                super().datagram_received(data, addr)

    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(InterfacesOnly, local_addr=("127.0.0.1", 0))
    port = transport.get_extra_info("sockname")[1]
    client = CommunityClient(Endpoint("quiet", "127.0.0.1", port, 0.3, 0), "longalias", "2c")
    try:
        text = await discover(client, "127.0.0.1", port=port, community="longalias")
    finally:
        client.close()
        transport.close()
    assert "# 2 interface(s)" in text
    [line] = [line for line in text.splitlines() if "MIBs not read" in line]
    assert line.startswith("# UPS, BGP and health MIBs not read: ")
    assert "no SNMP response from" in line
    assert "UPS-MIB: no" not in text


def test_a_device_with_endless_sensors_keeps_a_bounded_number(tmp_path):
    """A device listing 1,500 ENTITY-SENSOR rows (each would be a series, an RRD file and a
    check): the first MAX_SENSORS are kept, the rest counted and said, nothing else lost. One
    whose sensor table goes on past MAX_ROWS has its walk stopped, and says so."""
    import os
    import shutil
    import tempfile

    from collectors.snmp_health import MAX_SENSORS

    data = Path(tempfile.mkdtemp(prefix="monitor-flood-"))
    os.chmod(data, 0o755)
    lines = ["1.3.6.1.2.1.1.1.0|4|sensor flood", "1.3.6.1.2.1.1.3.0|67|100000",
             "1.3.6.1.2.1.1.5.0|4|flood", "1.3.6.1.2.1.2.1.0|2|0"]
    (data / "deep.snmprec").write_text("\n".join(
        lines + [f"1.3.6.1.2.1.99.1.1.1.1.{i}|2|8" for i in range(1, 5000)]) + "\n")
    for column, value in ((1, "2|8"), (2, "2|9"), (3, "2|0"), (4, "2|41"), (5, "2|1")):
        lines += [f"1.3.6.1.2.1.99.1.1.1.{column}.{i}|{value}" for i in range(1, 1501)]
    (data / "flood.snmprec").write_text("\n".join(lines) + "\n")
    collectors, batches = {}, {}
    try:
        with serving(data, "flood") as port:
            for name in ("flood", "deep"):
                dev = SnmpDevice(name=name, host="127.0.0.1", port=port, community=name,
                                 timeout=2.0, retries=1)
                collectors[name] = SnmpCollector([dev], 300, clock=Clock(T0))
                try:
                    batches[name] = asyncio.run(collectors[name].collect())
                finally:
                    collectors[name].close()
    finally:
        shutil.rmtree(data, ignore_errors=True)
    # A table longer than any device's (its walk stopped): said, not taken for "no sensors".
    deep = collectors["deep"].pollers["deep"].health.found
    assert deep.problem == ("the walk of 1.3.6.1.2.1.99.1.1.1.1 passed 4000 rows (more than a "
                            "walk reads) and was stopped")
    assert deep.text() == f"UPS, BGP and health MIBs not read: {deep.problem}"
    batch = batches["flood"]
    found = collectors["flood"].pollers["flood"].health.found
    assert (found.sensors, found.sensors_dropped) == (MAX_SENSORS, 1500 - MAX_SENSORS)
    sensors = {m.instance for m in batch.measurements if m.instance.startswith("sensor ")}
    assert len(sensors) == MAX_SENSORS
    assert "sensors: 1000 (500 more not kept: at most 1000 per device)" in found.text()
    assert checks(batch)["snmp"][0] is State.OK


async def test_bgp_down_mail_through_the_real_mail_path(recordings, tmp_path):
    """The Arista's described session drops: the shipped service-down rule mails it at the
    first reading; the subject starts with what is down and on which router."""
    import re

    from alerts.service import AlertService
    from tests.conftest import ROOT
    from tests.smtp_helpers import Recorder, start_smtp
    from tests.test_alerts import make_config

    rec = Recorder()
    server, smtp_port = await start_smtp(rec)
    shipped = re.search(r'^\[\[alerts\.rules\]\]\nname = "service-down"\n.*?(?=\n\n)',
                        (ROOT / "config.toml").read_text(), re.M | re.S)
    assert shipped is not None
    service = AlertService(make_config(tmp_path, smtp_port, shipped.group(0) + "\n",
                                       group_window="0s"))
    clock = Clock(T0)
    dev = SnmpDevice(name="edge1", host="127.0.0.1", port=recordings, community="bgp-eos-t0",
                     timeout=2.0, retries=1)
    collector = SnmpCollector([dev], 300, clock=clock)
    try:
        await service.consume("snmp", await collector.collect())
        collector.replace_device(dataclasses.replace(dev, community="bgp-eos-t1"))
        clock.now += 300
        await service.consume("snmp", await collector.collect())
    finally:
        collector.close()
        server.close()
    [mail] = rec.received
    down_at = time.strftime("%H:%M", time.localtime(clock.now - 240))
    what = (f"BGP to AS65000 192.168.0.2 (peer.example.com EBGP) down since {down_at}, was up "
            "151 d 12 h (state idle)")
    assert str(mail.message["Subject"]) == f"[CRITICAL] edge1 bgp 192.168.0.2: {what}"
    body = mail.message.get_body(("plain",)).get_content()
    assert f"  what:      {what}" in body


def test_a_failed_power_supply_of_a_real_mx960_is_critical(recordings):
    router = Device(recordings, "juniper-mx960")
    try:
        assert checks(router.poll(0))["psu PEM 2"] == (State.OK, "power supply PEM 2 is running")
        failed = checks(router.poll(1))
    finally:
        router.close()
    assert failed["psu PEM 2"] == (State.CRITICAL, "power supply PEM 2 is down (failed: "
                                   "redundancy lost or the device at risk)")
    assert failed["psu PEM 1"][0] is State.OK
