"""`monitor discover HOST`: walk the system group and IF-MIB, print a [[snmp.devices]] stanza.

Like MRTG's cfgmaker, but the output is our config: paste it into config.toml. Interfaces are
listed as comments (name, alias, speed, status) so the admin can pick include/exclude patterns,
after one comment line of what else the agent will read there without further setup ("UPS-MIB:
yes, BGP peers: 2, sensors: 7, ...", or why those MIBs could not be read). Everything from the
device is untrusted: it only ever lands in TOML comments or JSON-escaped strings, with control
characters removed.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
from collections.abc import Callable

from collectors.snmp import (
    IF_ADMIN,
    IF_ALIAS,
    IF_DESCR,
    IF_HIGH_SPEED,
    IF_NAME,
    IF_NUMBER,
    IF_OPER,
    IF_PHYS_ADDRESS,
    IF_SPEED,
    IF_TYPE,
    INVENTORY,
    OPER_STATUS,
    SYS,
    addresses_by_ifindex,
    format_bps,
    mac_text,
    parse_port_description,
    row_budget,
    text,
)
from collectors.snmp_client import Client, SnmpError, walk_columns
from collectors.snmp_health import DeviceHealth
from collectors.snmp_iftypes import DEFAULT_SKIP_TYPES, if_type_name
from monitor.units import format_duration

SYSTEM = {"descr": 1, "uptime": 3, "contact": 4, "name": 5, "location": 6}
HC_IN_OCTETS = (1, 3, 6, 1, 2, 1, 31, 1, 1, 1, 6)
# A discovery walks what a poll walks, and the inventory: minutes only on a huge or slow agent.
DISCOVER_BUDGET = 300.0


def toml_string(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # a JSON string is a valid TOML basic string


async def discover(client: Client, host: str, *, name: str | None = None, port: int = 161,
                   community: str | None = None, v3: dict[str, str] | None = None,
                   progress: Callable[[int], None] | None = None,
                   budget: float = DISCOVER_BUDGET) -> str:
    """The stanza for one device, as text. Bounded like a poll: `budget` seconds in all, and
    rows per column from the device's ifNumber (`row_budget`); an agent whose tables never
    end gets an SnmpError (kind "walk") that says so."""
    try:
        async with asyncio.timeout(budget):
            return await _discover(client, host, name=name, port=port, community=community,
                                   v3=v3, progress=progress)
    except TimeoutError:
        raise SnmpError("walk", f"discovery of {client.endpoint.where} stopped after {budget:g} s, "
                                "its time budget (the agent answers too slowly, or its tables "
                                "never end)") from None


async def _discover(client: Client, host: str, *, name: str | None, port: int,
                    community: str | None, v3: dict[str, str] | None,
                    progress: Callable[[int], None] | None) -> str:
    varbinds = await client.get([(*SYS, n, 0) for n in SYSTEM.values()])
    system = {key: value for key, (_, value) in zip(SYSTEM, varbinds, strict=False)}
    columns = [IF_NAME, IF_DESCR, IF_ALIAS, IF_TYPE, IF_SPEED, IF_HIGH_SPEED, IF_ADMIN, IF_OPER]
    if client.version != "1":
        columns.append(HC_IN_OCTETS)
    walk = await walk_columns(client, columns, max_repetitions=max(1, 250 // len(columns)),
                              scalars=[IF_NUMBER], progress=progress, max_rows=row_budget)
    if walk.stopped:
        raise SnmpError("walk", f"{client.endpoint.where}: {walk.stopped}")
    tables = walk.tables
    indexes = sorted({i[0] for col in tables.values() for i in col if len(i) == 1})
    inventory_note = ""
    try:
        found = await walk_columns(client, INVENTORY, max_repetitions=25,
                                   max_rows=2 * row_budget(walk.scalars))
        inventory = found.tables
        if found.stopped:
            inventory, inventory_note = {}, f"# MACs and addresses not listed: {found.stopped}"
    except SnmpError:
        inventory = {}  # no IP-MIB: the table has no addresses
    addresses = addresses_by_ifindex(inventory)
    macs = {i[0]: mac_text(v) for i, v in inventory.get(IF_PHYS_ADDRESS, {}).items() if len(i) == 1}

    sys_name = text(system.get("name"))
    device_name = name or re.sub(r"[^A-Za-z0-9._-]+", "-", sys_name).strip("-") or host
    lines = [f"# discovered from {host}:{port}"]
    if text(system.get("descr")):
        lines.append(f"# sysDescr: {text(system.get('descr'))[:200]}")
    details = [f"{k} {text(system.get(k))}" for k in ("location", "contact") if text(system.get(k))]
    uptime = system.get("uptime")
    if isinstance(uptime, int):
        details.append(f"up {format_duration(uptime / 100)}")
    if sys_name:
        details.insert(0, f"sysName {sys_name}")
    if details:
        lines.append("# " + ", ".join(details))
    lines += ["[[snmp.devices]]", f"name = {toml_string(device_name)}", f"host = {toml_string(host)}"]
    if port != 161:
        lines.append(f"port = {port}")
    lines.append(f'version = "{client.version}"')
    if v3 is None:
        lines.append(f"community = {toml_string(community or 'public')}"
                     f"  # or community_file = \"/etc/monitor/{device_name}.community\"")
    hc = bool(tables.get(HC_IN_OCTETS))
    lines.append(f"# {len(indexes)} interface(s); 64-bit counters: {'yes' if hc else 'no'}")
    if inventory_note:
        lines.append(inventory_note)
    health = DeviceHealth()
    await health.poll(client, device_name, 0.0)  # what the agent will read besides interfaces
    lines.append(f"# {health.found.text()}")
    lines.append("# identity = \"ifName\"    # ifName, ifDescr, ifAlias or ifIndex")
    lines.append("# include = []   # shell patterns on the interface name; empty = all")
    lines.append("# exclude = []")
    rows = []
    for index in indexes:
        def get(col: tuple[int, ...], index: int = index) -> object:
            return tables.get(col, {}).get((index,))

        iname = text(get(IF_NAME)) or text(get(IF_DESCR)) or str(index)
        high, low = get(IF_HIGH_SPEED), get(IF_SPEED)
        speed = high * 1e6 if isinstance(high, int) and high else low if isinstance(low, int) else 0
        admin, oper = get(IF_ADMIN), get(IF_OPER)
        status = "admin down" if admin == 2 else OPER_STATUS.get(oper if isinstance(oper, int) else 0, "?")
        kind = if_type_name(get(IF_TYPE))
        if kind in DEFAULT_SKIP_TYPES:
            status += f", skipped ({kind})"
        alias = text(get(IF_ALIAS))
        described = parse_port_description(alias)
        if described:
            status += f", {described.group}"
        extra = " ".join(filter(None, [macs.get(index, ""), *addresses.get(index, [])]))
        rows.append((iname, alias[:40], format_bps(speed) if speed else "-", status, index, extra))
    if rows:
        w_name = max(len(r[0]) for r in rows)
        w_alias = max(max(len(r[1]) for r in rows), 5)
        lines.append(f"#   {'name':<{w_name}}  {'alias':<{w_alias}}  {'speed':>11}  status"
                     "  (ifIndex)  MAC, addresses")
        for iname, alias, speed_text, status, index, extra in rows:
            lines.append(f"#   {iname:<{w_name}}  {alias:<{w_alias}}  {speed_text:>11}  {status}"
                         f"  ({index}){f'  {extra}' if extra else ''}")
    if v3 is not None:
        lines += ["[snmp.devices.v3]", f"user = {toml_string(v3['user'])}",
                  f'auth_protocol = "{v3["auth_protocol"]}"']
        if v3["auth_protocol"] != "none":
            lines.append(f'auth_key_file = "/etc/monitor/{device_name}.auth"  # holds the auth key')
        lines.append(f'priv_protocol = "{v3["priv_protocol"]}"')
        if v3["priv_protocol"] != "none":
            lines.append(f'priv_key_file = "/etc/monitor/{device_name}.priv"  # holds the priv key')
    return "\n".join(lines) + "\n"


async def run_discover(args: argparse.Namespace, auth_key: str | None, priv_key: str | None) -> str:
    """The CLI's `discover`: build a client from the arguments, show progress on stderr."""
    import sys

    from collectors.snmp_client import CommunityClient, Endpoint, UsmClient

    a = args
    endpoint = Endpoint(a.name or a.host, a.host, a.port, a.timeout, a.retries)
    tty = sys.stderr.isatty()
    last = [0]

    def progress(rows: int) -> None:
        if tty:
            print(f"\r  {rows} interface(s) read...", end="", file=sys.stderr, flush=True)
        elif rows - last[0] >= 100:
            print(f"  {rows} interface(s) read...", file=sys.stderr, flush=True)
            last[0] = rows

    print(f"walking {endpoint.where} ...", file=sys.stderr, flush=True)
    v3 = None
    if a.snmp_version == "3":
        from collectors.snmp_v3 import UsmEngine

        client: Client = UsmClient(endpoint, UsmEngine(), a.user, a.auth_protocol, auth_key,
                                   a.priv_protocol, priv_key, a.context)
        v3 = {"user": a.user, "auth_protocol": a.auth_protocol,
              "priv_protocol": a.priv_protocol}
    else:
        client = CommunityClient(endpoint, a.community, a.snmp_version)
    try:
        result = await discover(client, a.host, name=a.name, port=a.port,
                                community=a.community, v3=v3, progress=progress)
    finally:
        if tty:
            print(file=sys.stderr)
        client.close()
    return result
