"""[[ups]]: a real upsd (Debian's nut-server) with the dummy-ups driver replaying a power cut:
on line, on battery, low battery, back on line with a battery to replace. And the mail an
admin gets for "on battery", read as a mail."""

from __future__ import annotations

import asyncio
import socket
import threading
import time

import pytest

from alerts.engine import Event, Kind
from alerts.notify import one_line
from collectors.nut import NutCollector, list_vars, reading_of
from monitor.config import ConfigError, UpsConfig, parse_config
from monitor.model import Batch, State
from tests.daemons import nut_upsd

ONLINE = {"device.mfr": "APC", "device.model": "Back-UPS ES 700", "ups.status": "OL",
          "battery.charge": "100", "battery.runtime": "2400", "input.voltage": "231.0",
          "output.voltage": "230.0", "ups.load": "23", "battery.temperature": "28.5"}
SEQUENCE = [
    ONLINE,
    {**ONLINE, "ups.status": "OB DISCHRG", "battery.charge": "91", "battery.runtime": "1380",
     "input.voltage": "0.0"},
    {**ONLINE, "ups.status": "OB DISCHRG LB", "battery.charge": "12", "battery.runtime": "180",
     "input.voltage": "0.0"},
    {**ONLINE, "ups.status": "OL CHRG RB", "battery.charge": "40"},
]


def poll_until(collector: NutCollector, values: dict[str, str]) -> Batch:
    """Polls once upsd reports all of `values` (the driver rereads its file every second and
    hands upsd one variable at a time)."""
    deadline = time.monotonic() + 30
    unit = collector.units[0]
    while True:
        now = asyncio.run(list_vars(unit.host, unit.port, unit.ups, 5))
        if all(now.get(k) == v for k, v in values.items()) or time.monotonic() > deadline:
            return asyncio.run(collector.collect())
        time.sleep(0.2)


def check(batch: Batch):
    [result] = [c for c in batch.checks if c.check == "ups"]
    return result


def test_power_cut_through_real_upsd():
    with nut_upsd(SEQUENCE[0]) as ups:
        collector = NutCollector([UpsConfig(name="rack-ups", ups=ups.name, port=ups.port)], 60)
        states = []
        for values in SEQUENCE:
            ups.show(values)
            batch = poll_until(collector, values)
            states.append(check(batch))
            if values is SEQUENCE[1]:
                on_battery = batch
        assert [c.state for c in states] == [State.OK, State.CRITICAL, State.CRITICAL,
                                             State.WARNING], [c.message for c in states]
        assert states[0].message == ("UPS on line, runtime 40m (APC Back-UPS ES 700, charge 100 %, "
                                     "load 23 %, input 231 V)")
        assert states[1].message.startswith("UPS on battery, 23m runtime left (APC Back-UPS ES 700")
        assert states[2].message.startswith("UPS on battery, 3m runtime left, battery LOW")
        assert states[3].message.startswith("UPS battery needs replacing")
        values = {m.metric: m.value for m in on_battery.measurements}
        assert values["on_battery"] == 1 and values["runtime_seconds"] == 1380
        assert values["battery_charge_percent"] == 91 and values["temperature_celsius"] == 28.5


def test_on_battery_mail_subject_reads_on_a_lock_screen():
    reading = reading_of({"ups.status": "OB", "battery.runtime": "1380", "battery.charge": "91",
                          "device.model": "Smart-UPS 1500"})
    from collectors.ups import ups_batch

    result = check(ups_batch("rack-ups", reading, 1000.0))
    event = Event(kind=Kind.FIRING, key="k", rule="service-down", target="rack-ups", label="ups",
                  severity=State.CRITICAL, message=result.message, value=None, threshold="",
                  since=1000.0, at=1000.0, groups=("admins",))
    subject = one_line(event, 1000.0)
    assert subject == ("[CRITICAL] rack-ups ups: UPS on battery, 23m runtime left "
                       "(Smart-UPS 1500, charge 91 %)")
    # What a phone's lock screen shows of a subject (about 40 to 60 characters) says it all,
    # whatever the UPS's model is called.
    assert "on battery, 23m runtime left" in subject[:60]


@pytest.mark.parametrize("answer", [b"ERR UNKNOWN-UPS\n", b"x" * 5000 + b"\n", b"",
                                    b"VAR dummy ups.status \"OL\"\n" * 2000])
def test_hostile_upsd_harms_only_its_ups(answer):
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    port = server.getsockname()[1]

    def serve() -> None:
        conn, _ = server.accept()
        conn.recv(100)
        try:
            conn.sendall(answer)
        except OSError:
            pass
        conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    collector = NutCollector([UpsConfig(name="bad", ups="dummy", port=port, timeout=3)], 60)
    result = check(asyncio.run(collector.collect()))
    assert result.state is State.UNKNOWN and result.message.startswith("cannot read upsd 127.0.0.1")
    server.close()


def test_silent_upsd_is_unknown_after_its_timeout():
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    collector = NutCollector([UpsConfig(name="mute", port=server.getsockname()[1], timeout=0.3)], 60)
    result = check(asyncio.run(collector.collect()))
    assert result.state is State.UNKNOWN and "no answer" in result.message
    server.close()


def test_ups_config_names_file_line_and_key(tmp_path):
    with pytest.raises(ConfigError) as info:
        parse_config('[[ups]]\nname = "rack"\nups = "bad name!"\n', "site.toml")
    assert str(info.value).startswith("site.toml:3: ups[0].ups: expected a upsd UPS name")


async def test_on_battery_pages_at_once_through_the_real_mail_path(tmp_path):
    """upsd says OB: the rule config.toml ships (every CRITICAL check, retries = 1) mails at
    the first reading, no retries, and the mail, read as a mail, says the runtime first."""
    import re

    from alerts.service import AlertService
    from tests.conftest import ROOT
    from tests.smtp_helpers import Recorder, start_smtp
    from tests.test_alerts import make_config

    rec = Recorder()
    server, port = await start_smtp(rec)
    shipped = re.search(r'^\[\[alerts\.rules\]\]\nname = "service-down"\n.*?(?=\n\n)',
                        (ROOT / "config.toml").read_text(), re.M | re.S)
    assert shipped is not None
    rule = shipped.group(0) + "\n"
    service = AlertService(make_config(tmp_path, port, rule, group_window="0s"))
    try:
        with nut_upsd(SEQUENCE[0]) as ups:
            collector = NutCollector([UpsConfig(name="rack-ups", ups=ups.name, port=ups.port)], 60)
            ups.show(SEQUENCE[1])  # the mains fail
            for _ in range(200):  # until the driver has read the file again and told upsd
                batch = await collector.collect()
                if "on battery" in check(batch).message:
                    break
                await asyncio.sleep(0.1)
            await service.consume("ups", batch)
        [mail] = rec.received
        subject = str(mail.message["Subject"])
        assert subject == ("[CRITICAL] rack-ups ups: UPS on battery, 23m runtime left (APC "
                           "Back-UPS ES 700, charge 91 %, load 23 %, input 0 V)")
        body = mail.message.get_body(("plain",)).get_content()
        assert "  what:      UPS on battery, 23m runtime left (APC Back-UPS ES 700" in body
        assert "rule:      service-down" in body
    finally:
        server.close()


def test_upsd_refusals_say_what_to_do():
    """upsd's ERR words (UNKNOWN-UPS, DATA-STALE, ...) come with what the admin does about them."""
    with nut_upsd(ONLINE) as ups:
        collector = NutCollector([UpsConfig(name="rack-ups", ups="nosuch", port=ups.port)], 60)
        result = check(asyncio.run(collector.collect()))
    assert result.state is State.UNKNOWN
    assert result.message == (f"cannot read upsd 127.0.0.1:{ups.port} UPS 'nosuch': upsd has no "
                              f"UPS of that name (UNKNOWN-UPS): `upsc -l 127.0.0.1:{ups.port}` "
                              "lists its names; set ups = one of them")


def test_numbers_that_are_not_numbers_are_not_stored():
    """A upsd (or driver) saying "nan" or "inf" gives no value, not a NaN in the graphs and
    "charge nan %" in a page."""
    reading = reading_of({"ups.status": "OL", "battery.charge": "nan", "battery.runtime": "inf",
                          "ups.load": "-inf", "input.voltage": "230"})
    assert (reading.charge_percent, reading.runtime_seconds, reading.load_percent) == (None, None, None)
    assert reading.input_volts == 230.0
