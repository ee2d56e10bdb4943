"""The counter math, exhaustively: wraps, reboots, renumbering, gaps, impossible rates."""

from __future__ import annotations

import pytest

from collectors.snmp_counters import (
    UPTIME_WRAP,
    Counter,
    Counters,
    CounterState,
    DeviceSample,
    InterfaceSample,
    counter_delta,
    uptime_verdict,
)

GBIT = 1e9


def iface(octets: int, bits: int = 64, speed: float | None = GBIT, disc: int | None = None,
          **more: int) -> InterfaceSample:
    counters = {"in_octets": Counter(octets, bits), "out_octets": Counter(octets * 2 % (1 << bits), bits)}
    counters.update({k: Counter(v, bits) for k, v in more.items()})
    return InterfaceSample(counters, speed, disc)


def dev(t: float, uptime: int | None, **ifaces: InterfaceSample) -> DeviceSample:
    return DeviceSample(t, uptime, ifaces)


def two_polls(first: DeviceSample, second: DeviceSample, interval: float = 60):
    state = CounterState(interval)
    r1 = state.update(first)
    assert r1.reason.startswith("first poll")
    assert all(v is None for rates in r1.interfaces.values() for v in rates.values())
    return state.update(second)


@pytest.mark.parametrize(("old", "new", "bits", "delta"), [
    (0, 0, 32, 0),
    (100, 6100, 32, 6000),
    (2**32 - 1000, 5000, 32, 6000),
    (2**32 - 1, 0, 32, 1),
    (2**64 - 1000, 5000, 64, 6000),
    (2**64 - 1, 2**64 - 1, 64, 0),
    (5, 4, 32, 2**32 - 1),
])
def test_counter_delta_is_exact(old, new, bits, delta):
    assert counter_delta(Counter(old, bits), Counter(new, bits)) == delta


def test_counter_delta_across_widths_is_unknown():
    assert counter_delta(Counter(5, 32), Counter(10, 64)) is None


@pytest.mark.parametrize(("old", "new", "elapsed", "verdict"), [
    (100_000, 106_000, 60, "ok"),
    (100_000, 106_500, 60, "ok"),             # reply delay, agent caching
    (UPTIME_WRAP - 3000, 3000, 60, "wrapped"),  # 497 days: not a reboot
    (UPTIME_WRAP - 1, 5999, 60, "wrapped"),
    (100_000, 500, 60, "rebooted"),           # went back
    (1_000, 12_000, 300, "rebooted"),         # rebooted 2 min ago, uptime already past the old one
    (100_000, 100_000 + 360_000, 60, "rebooted"),  # an hour passed in a minute: another agent
    (UPTIME_WRAP - 100, 50, 60, "rebooted"),  # wrapped but far too little time: a restart
])
def test_uptime_verdict(old, new, elapsed, verdict):
    assert uptime_verdict(old, new, elapsed) == verdict


def test_plain_rate():
    r = two_polls(dev(0, 100_000, eth0=iface(1000)), dev(60, 106_000, eth0=iface(7000)))
    assert r.reason == ""
    assert r.interfaces["eth0"]["in_octets"] == 100.0
    assert r.interfaces["eth0"]["out_octets"] == 200.0


def test_32bit_wrap_exact():
    r = two_polls(dev(0, 100_000, eth0=iface(2**32 - 1000, bits=32)),
                  dev(60, 106_000, eth0=iface(5000, bits=32)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_64bit_wrap_exact():
    r = two_polls(dev(0, 100_000, eth0=iface(2**64 - 1000)), dev(60, 106_000, eth0=iface(5000)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_uptime_wrap_keeps_rates():
    r = two_polls(dev(0, UPTIME_WRAP - 3000, eth0=iface(1000)), dev(60, 3000, eth0=iface(7000)))
    assert r.reason == "" and not r.rebooted
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_reboot_is_unknown_not_a_spike():
    r = two_polls(dev(0, 10_000_000, eth0=iface(10**12)), dev(60, 500, eth0=iface(300)))
    assert r.rebooted
    assert r.interfaces["eth0"] == {"in_octets": None, "out_octets": None}


def test_reboot_then_rates_resume():
    state = CounterState(60)
    state.update(dev(0, 10_000_000, eth0=iface(10**12)))
    assert state.update(dev(60, 500, eth0=iface(300))).rebooted
    r = state.update(dev(120, 6500, eth0=iface(6300)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_discontinuity_time_change_is_unknown_for_that_interface_only():
    r = two_polls(dev(0, 100_000, eth0=iface(1000, disc=0), eth1=iface(1000, disc=0)),
                  dev(60, 106_000, eth0=iface(50, disc=105_000), eth1=iface(7000, disc=0)))
    assert r.interfaces["eth0"]["in_octets"] is None
    assert r.interfaces["eth1"]["in_octets"] == 100.0


def test_rate_above_link_speed_is_discarded():
    # A counter reset without a reboot looks like a 64-bit wrap: astronomically fast.
    r = two_polls(dev(0, 100_000, eth0=iface(10**9)), dev(60, 106_000, eth0=iface(10)))
    assert r.interfaces["eth0"]["in_octets"] is None


def test_rate_at_link_speed_is_kept():
    speed = 10e6  # 10 Mbit/s = 1.25 MB/s
    r = two_polls(dev(0, 100_000, eth0=iface(0, speed=speed)),
                  dev(60, 106_000, eth0=iface(int(1.25e6 * 60), speed=speed)))
    assert r.interfaces["eth0"]["in_octets"] == pytest.approx(1.25e6)


def test_32bit_reset_above_speed_on_slow_link_discarded():
    speed = 10e6
    r = two_polls(dev(0, 100_000, eth0=iface(3_000_000, bits=32, speed=speed)),
                  dev(60, 106_000, eth0=iface(100, bits=32, speed=speed)))
    assert r.interfaces["eth0"]["in_octets"] is None


def test_unknown_speed_does_not_discard():
    r = two_polls(dev(0, 100_000, eth0=iface(10**9, speed=None)),
                  dev(60, 106_000, eth0=iface(10, speed=None)))
    assert r.interfaces["eth0"]["in_octets"] == pytest.approx((2**64 - 10**9 + 10) / 60)


def test_renumbering_keeps_series_by_identity():
    # Identity (ifName) is the key; ifIndex is not even part of the sample.
    r = two_polls(dev(0, 100_000, eth0=iface(1000), eth1=iface(50_000)),
                  dev(60, 106_000, eth1=iface(56_000), eth0=iface(7000)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0
    assert r.interfaces["eth1"]["in_octets"] == 100.0


def test_new_interface_starts_unknown():
    r = two_polls(dev(0, 100_000, eth0=iface(1000)),
                  dev(60, 106_000, eth0=iface(7000), eth9=iface(5)))
    assert r.interfaces["eth9"] == {"in_octets": None, "out_octets": None}
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_poller_pause_is_a_gap():
    state = CounterState(60)
    state.update(dev(0, 100_000, eth0=iface(1000)))
    r = state.update(dev(3600, 460_000, eth0=iface(1000 + 3600 * 100)))
    assert "gap" in r.reason
    assert r.interfaces["eth0"]["in_octets"] is None
    r = state.update(dev(3660, 466_000, eth0=iface(1000 + 3660 * 100)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_slightly_late_poll_is_not_a_gap():
    r = two_polls(dev(0, 100_000, eth0=iface(0)), dev(110, 111_000, eth0=iface(11_000)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_clock_going_back_is_unknown():
    r = two_polls(dev(100, 100_000, eth0=iface(0)), dev(40, 106_000, eth0=iface(6000)))
    assert r.interfaces["eth0"]["in_octets"] is None


def test_switch_from_64_to_32_bit_is_unknown():
    r = two_polls(dev(0, 100_000, eth0=iface(1000)), dev(60, 106_000, eth0=iface(7000, bits=32)))
    assert r.interfaces["eth0"]["in_octets"] is None


def test_counter_missing_in_previous_poll_is_unknown():
    r = two_polls(dev(0, 100_000, eth0=iface(1000)),
                  dev(60, 106_000, eth0=iface(7000, in_errors=5)))
    assert r.interfaces["eth0"]["in_errors"] is None
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_packet_rate_bound():
    r = two_polls(dev(0, 100_000, eth0=iface(0, speed=8e3, in_ucast_packets=0)),
                  dev(60, 106_000, eth0=iface(600, speed=8e3, in_ucast_packets=2**40)))
    assert r.interfaces["eth0"]["in_ucast_packets"] is None
    assert r.interfaces["eth0"]["in_octets"] == 10.0


def test_no_uptime_still_gives_rates():
    r = two_polls(dev(0, None, eth0=iface(1000)), dev(60, None, eth0=iface(7000)))
    assert r.interfaces["eth0"]["in_octets"] == 100.0


def test_compact_counters_read_like_a_dict():
    counters = Counters.of({"in_octets": Counter(2**64 - 1, 64), "in_errors": Counter(7, 32)})
    assert dict(counters) == {"in_octets": Counter(2**64 - 1, 64), "in_errors": Counter(7, 32)}
    assert counters.get("out_octets") is None and len(counters) == 2
    assert counters.saved() == {"in_octets": [2**64 - 1, 64], "in_errors": [7, 32]}
    assert Counters.of(counters) is counters


@pytest.mark.parametrize("bad", [Counter(2**32, 32), Counter(-1, 64), Counter(5, 16)])
def test_compact_counters_refuse_what_no_agent_sends(bad):
    """A damaged state file: an error (the state is ignored), not a wrong rate later."""
    with pytest.raises(ValueError):
        Counters.of({"in_octets": bad})


def test_same_rates_whether_the_columns_line_up_or_not():
    """The side-by-side path (same columns as last time) and the by-name one agree: wraps in
    32 and 64 bits, a width switch, a reset above the link speed."""
    before = {"in_octets": Counter(2**64 - 600, 64), "out_octets": Counter(2**32 - 60, 32),
              "in_errors": Counter(100, 32), "out_errors": Counter(100, 64),
              "in_discards": Counter(2**40, 64)}
    after = {"in_octets": Counter(600, 64), "out_octets": Counter(60, 32),
             "in_errors": Counter(160, 32), "out_errors": Counter(160, 32),
             "in_discards": Counter(0, 64)}
    expected = {"in_octets": 20.0, "out_octets": 2.0, "in_errors": 1.0, "out_errors": None,
                "in_discards": None}
    lined_up = two_polls(dev(0, 100_000, eth0=InterfaceSample(before, 8e3)),
                         dev(60, 106_000, eth0=InterfaceSample(after, 8e3)))
    assert lined_up.interfaces["eth0"] == expected
    reordered = dict(reversed(list(before.items())))
    by_name = two_polls(dev(0, 100_000, eth0=InterfaceSample(reordered, 8e3)),
                        dev(60, 106_000, eth0=InterfaceSample(after, 8e3)))
    assert by_name.interfaces["eth0"] == expected
