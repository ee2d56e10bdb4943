"""Hostile and broken SNMP agents next to good ones: a misbehaving device harms only itself.

The bad devices are played by tests/snmp_hostile.py (a UDP server on loopback answering the
poller's real requests badly); the good ones by snmpsim with real-device-like recordings.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from collectors.snmp import SnmpCollector
from monitor.agent import Agent
from monitor.config import parse_config
from monitor.model import Batch, State
from tests.snmp_hostile import MODES, start_hostile
from tests.test_snmp import check, device, snmpsim  # noqa: F401 (snmpsim is a fixture)

GOOD = {"dmz-router": "router-t0", "access-sw1": "switch-t0"}


def agent_config(tmp_path: Path, snmpsim_port: int, hostile_port: int, modes=MODES) -> str:
    lines = ["[host]\nenabled = false\n[disks]\nenabled = false\n",
             f'[agent]\ndata_dir = "{tmp_path}"\ninterval = "10s"\n']
    for name, community in GOOD.items():
        lines.append(f'[[snmp.devices]]\nname = "{name}"\nhost = "127.0.0.1"\nport = {snmpsim_port}\n'
                     f'community = "{community}"\ntimeout = "1s"\nretries = 1\n')
    for mode in modes:
        # "held" answers only once the test saw the good devices' data: it has all the time.
        # "slow" answers every request, late: only its poll budget (not a timeout) stops it.
        patience = {"held": 'timeout = "50s"\npoll_budget = "60s"',
                    "slow": 'timeout = "10s"\npoll_budget = "2s"'}.get(
            mode, 'timeout = "1s"\npoll_budget = "2s"')
        lines.append(f'[[snmp.devices]]\nname = "bad-{mode}"\nhost = "127.0.0.1"\n'
                     f'port = {hostile_port}\ncommunity = "{mode}"\nretries = 0\n{patience}\n')
    return "\n".join(lines)


async def test_hostile_devices_harm_only_themselves(snmpsim, tmp_path):  # noqa: F811
    transport, hostile, port = await start_hostile()
    config = parse_config(agent_config(tmp_path, snmpsim, port), base_dir=tmp_path)
    agent = Agent(config, only="snmp")
    arrivals: list[tuple[float, set[str]]] = []

    async def record(_name: str, batch: Batch) -> None:
        targets = {c.target for c in batch.checks}
        arrivals.append(targets)
        seen = set().union(*arrivals)
        if set(GOOD) <= seen:
            hostile.gate.set()  # the held device answers only after the good ones are stored

    agent.sinks.append(record)
    try:
        for _cycle in range(2):
            await agent.run_collector(agent.collectors[0])
            states = {s.key: s for s in agent.status.all()}
            for name in GOOD:
                assert states[f"{name}/snmp"].state is State.OK, states[f"{name}/snmp"].message
                assert agent.store.info(name, "eth0" if name == "dmz-router" else "Gi0/2")
            for mode in MODES:
                status = states[f"bad-{mode}/snmp"]
                assert status.state is State.CRITICAL or (
                    mode in ("backwards", "repeat") and status.state is State.WARNING), status
                assert f"bad-{mode}" in status.message
                assert "Traceback" not in status.message
            # The run ended by itself (each device within its budget), not by the agent's cut-off.
            assert states["agent/collector snmp"].state is State.OK
        # The good devices' results were stored and checked while the held device was still
        # waiting (it could only finish after the sink saw them): in earlier batches.
        first = {target: n for n, targets in reversed(list(enumerate(arrivals)))
                 for target in targets}
        assert first["dmz-router"] < first["bad-held"] and first["access-sw1"] < first["bad-held"]
    finally:
        await agent.close()
        transport.close()
    messages = {s.target: s.message for s in agent.status.all() if s.check == "snmp"}
    assert "passed 260 rows" in messages["bad-endless"]       # 2 x ifNumber 2 + 256
    assert "time budget" in messages["bad-slow"]
    assert "malformed reply" in messages["bad-garbage"]
    assert "no SNMP response" not in messages["bad-garbage"]
    assert "malformed reply" in messages["bad-bigint"] and "bytes" in messages["bad-bigint"]
    assert "malformed reply" in messages["bad-hugeoid"]
    assert "dangling" in messages["bad-dangling"]
    assert "endOfMibView" in messages["bad-endofmib"]
    assert "noSuchObject" in messages["bad-nosuchobject"]
    assert "backwards" in messages["bad-backwards"]
    assert "repeated" in messages["bad-repeat"]
    assert "no SNMP response" in messages["bad-silence"]
    # The endless table cost a bounded number of requests (the row budget), not 100,000.
    assert hostile.requests["endless"] < 2 * 80


@pytest.mark.parametrize("mode", ["endofmib", "nosuchobject", "backwards", "repeat"])
def test_device_losing_its_interface_table_is_not_green(snmpsim, tmp_path, mode):  # noqa: F811
    """A device that answered its table, then lost it: a problem of the device, and its known
    interfaces are UNKNOWN (not silently gone)."""
    async def go() -> Batch:
        # The same device (its sysName and sysObjectID), now with a broken IF-MIB.
        transport, _, port = await start_hostile(sys_name="dmz-router")
        collector = SnmpCollector([device("flaky", snmpsim, "router-t0")], 60)
        try:
            first = await collector.collect()
            assert check(first, "flaky", "snmp").state is State.OK
            known = {c.check for c in first.checks if c.check.startswith("if ")}
            assert "if eth0" in known
            poller = collector.pollers["flaky"]
            collector.replace_device(device("flaky", port, mode))
            second = await collector.collect()
            for name in known:
                assert check(second, "flaky", name).state is State.UNKNOWN
            assert poller.known  # remembered for the next poll
            return second
        finally:
            collector.close()
            transport.close()

    second = asyncio.run(go())
    result = check(second, "flaky", "snmp")
    if mode in ("endofmib", "nosuchobject"):
        assert result.state is State.CRITICAL
        assert {"endofmib": "endOfMibView", "nosuchobject": "noSuchObject"}[mode] in result.message
        assert "interface table" in result.message
    else:
        assert result.state is State.WARNING
        assert ("backwards" if mode == "backwards" else "repeated") in result.message


def test_a_huge_hostile_alias_is_cleaned_and_bounded(tmp_path):
    """A 30 KB ifAlias with terminal escapes and a bidi override: messages, the port index and
    logs get one bounded, clean line; the state file's name is safe whatever the device's."""
    from collectors.snmp import DISPLAY_STRING_LIMIT
    from monitor.config import SnmpDevice
    from monitor.files import safe_name

    name = "../evil/dev"
    async def go() -> tuple[Batch, SnmpCollector]:
        transport, _, port = await start_hostile()
        collector = SnmpCollector([SnmpDevice(name=name, host="127.0.0.1", port=port,
                                              community="longalias", timeout=1, retries=0)],
                                  60, state_dir=tmp_path / "snmp")
        try:
            return await collector.collect(), collector
        finally:
            collector.close()
            transport.close()

    batch, collector = asyncio.run(go())
    port1 = check(batch, name, "if port1")
    assert port1.state is State.OK and "evil alias" in port1.message
    assert len(port1.message) < DISPLAY_STRING_LIMIT + 100
    for bad in ("\x1b", "\u202e", "\x07"):
        assert bad not in port1.message
    poller = collector.pollers[name]
    assert len(poller.ports["port1"].alias) <= DISPLAY_STRING_LIMIT
    assert poller.state_path() == tmp_path / "snmp" / f"{safe_name(name)}.json"
    assert poller.state_path().exists() and "/" not in safe_name(name)


def test_discover_is_bounded_like_a_poll():
    """An endless interface table, an endless inventory, a slow agent: discover ends each
    with a clear word instead of walking on (the CLI prints it and exits 1)."""
    from collectors.snmp_client import CommunityClient, Endpoint, SnmpError
    from collectors.snmp_discover import discover

    async def go(community: str, budget: float = 60) -> str:
        transport, _, port = await start_hostile()
        client = CommunityClient(Endpoint("bad", "127.0.0.1", port, 1, 0), community)
        try:
            return await discover(client, "127.0.0.1", port=port, budget=budget)
        finally:
            client.close()
            transport.close()

    with pytest.raises(SnmpError, match="passed 260 rows"):  # 2 x ifNumber 2 + 256
        asyncio.run(go("endless"))
    with pytest.raises(SnmpError, match="time budget"):
        asyncio.run(go("slow", budget=1))
    stanza = asyncio.run(go("endlessinventory"))
    assert "# 2 interface(s)" in stanza and "port1" in stanza and "port2" in stanza
    assert "MACs and addresses not listed" in stanza and "rows" in stanza


def test_counters_of_the_wrong_type_are_unknown_not_a_failed_poll(tmp_path):
    """A negative INTEGER where a Counter64 belongs, a 64-bit value in a 32-bit counter's
    column: those counters are unknown (no rate from them), the rest of the poll stands."""
    from monitor.config import SnmpDevice

    async def go() -> list[Batch]:
        transport, _, port = await start_hostile()
        collector = SnmpCollector([SnmpDevice(name="bad", host="127.0.0.1", port=port,
                                              community="badcounters", timeout=1, retries=0)],
                                  60, state_dir=tmp_path / "snmp")
        try:
            return [await collector.collect(), await collector.collect()]
        finally:
            collector.close()
            transport.close()

    for batch in asyncio.run(go()):
        status = check(batch, "bad", "snmp")
        assert "poll failed" not in status.message, status.message
        assert check(batch, "bad", "if port1").state is State.OK
        octets = [m for m in batch.measurements if m.metric in ("in_octets", "out_octets")]
        assert all(m.value is None for m in octets), octets
