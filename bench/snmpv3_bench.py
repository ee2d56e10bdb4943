"""SNMPv3 CPU cost, side by side in one run: ours v3 vs ours v2c vs `snmpbulkwalk -v3` (and the
pysnmp 7 engine the client used before, for reference).

    .venv/bin/python bench/snmpv3_bench.py [--rounds 20]   (as root: it makes a network namespace)

Inside a private network namespace with 48 interfaces (47 bridges + lo), net-snmp's snmpd
answers v2c and a v3 user with SHA-256 + AES-128 (authPriv). Measured, as CPU time of this
process (or of the child processes for net-snmp):

1. the client: one walk of the columns a poll reads (`collectors.snmp` DESCRIPTIVE + 64-bit
   counters + errors), ms per walk: ours v2c, ours v3, pysnmp v3 (engine reused, lookupMib off);
2. the collector: CPU per poll of one 48-interface device (`SnmpCollector.collect`), v2c vs v3
   (snmp_bench.py's part "v3");
3. `snmpbulkwalk -v3` (and -v2c) of ifTable + ifXTable (all their columns, so more varbinds:
   compared per varbind too), a process each, so it includes net-snmp's start and discovery.

The issue's target: v3 "~18 ms CPU per poll against ~1.5 ms for v2c: bring it down"; the
figures are printed with the 1-minute load average (the machine is shared).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.snmp_bench import (  # noqa: E402  (after the path set-up)
    BASE_PORT,
    IFACES_PER_DEVICE,
    NS,
    V3_AUTH,
    V3_PRIV,
    V3_USER,
    add_interfaces,
    cannot_run,
    child_cpu,
    inside_v3,
    sh,
    start_snmpd,
)
from tests.daemons import stop  # noqa: E402  (TERM, then KILL)

SUBTREES = ("1.3.6.1.2.1.2.2", "1.3.6.1.2.1.31.1.1")  # ifTable, ifXTable


def poll_columns() -> list[tuple[int, ...]]:
    from collectors.snmp import DESCRIPTIVE, ERROR_COLUMNS, HC_COLUMNS

    return [*DESCRIPTIVE, *HC_COLUMNS, *ERROR_COLUMNS]


def from_pysnmp(value: object) -> object:
    """A pysnmp value as our codec gives it (what the walk compares)."""
    from pyasn1.type import univ
    from pysnmp.proto import rfc1905

    from collectors import snmp_ber as ber

    if isinstance(value, rfc1905.EndOfMibView | rfc1905.NoSuchInstance | rfc1905.NoSuchObject):
        return ber.END_OF_MIB_VIEW_V
    if isinstance(value, univ.OctetString):
        return value.asOctets()
    if isinstance(value, univ.Integer):
        return int(value)
    return value


class PysnmpV3:
    """The pysnmp 7 hlapi client, as the collector used it before (engine reused, request
    objects resolved once, lookupMib off), shaped for walk_columns."""

    version = "3"

    def __init__(self, port: int) -> None:
        from pysnmp.hlapi.v3arch.asyncio import SnmpEngine, UsmUserData, usmAesCfb128Protocol
        from pysnmp.hlapi.v3arch.asyncio import usmHMAC192SHA256AuthProtocol as sha256

        self.port = port
        self.engine = SnmpEngine()
        self.auth = UsmUserData(V3_USER, V3_AUTH, V3_PRIV, authProtocol=sha256,
                                privProtocol=usmAesCfb128Protocol)
        self.target = None
        self.objects: dict = {}

    async def bulk(self, non_repeaters, repeaters, max_repetitions):
        from pysnmp.hlapi.v3arch.asyncio import (
            ContextData,
            ObjectIdentity,
            ObjectType,
            UdpTransportTarget,
            bulk_cmd,
        )
        from pysnmp.proto.rfc1902 import ObjectName

        if self.target is None:
            self.target = await UdpTransportTarget.create(("127.0.0.1", self.port), timeout=5,
                                                          retries=1)
        vbs = []
        for oid in [*non_repeaters, *repeaters]:
            if oid not in self.objects:
                self.objects[oid] = ObjectType(ObjectIdentity(ObjectName(oid)))
            vbs.append(self.objects[oid])
        indication, status, _, varbinds = await bulk_cmd(
            self.engine, self.auth, self.target, ContextData(), len(non_repeaters),
            max_repetitions, *vbs, lookupMib=False)
        assert not indication and not status, (indication, status)
        return [(tuple(name), from_pysnmp(value)) for name, value in varbinds]

    def close(self) -> None:
        self.engine.close_dispatcher()


def inside_clients(port: int, rounds: int) -> None:
    from collectors.snmp_client import CommunityClient, Endpoint, UsmClient, walk_columns
    from collectors.snmp_v3 import UsmEngine

    columns = poll_columns()
    reps = max(1, 250 // len(columns))
    endpoint = Endpoint("bench", "127.0.0.1", port, 5, 1)
    clients = {
        "client-v2c": lambda: CommunityClient(endpoint, "public"),
        "client-v3": lambda: UsmClient(endpoint, UsmEngine(), V3_USER, "sha256", V3_AUTH,
                                       "aes128", V3_PRIV),
        "client-pysnmp-v3": lambda: PysnmpV3(port),
    }
    for label, make in clients.items():
        client = make()

        async def walks(client=client) -> tuple[float, int]:
            await walk_columns(client, columns, max_repetitions=reps)  # discovery, keys
            cpu = time.process_time()
            for _ in range(rounds):
                walk = await walk_columns(client, columns, max_repetitions=reps)
            cpu = time.process_time() - cpu
            client.close()  # in the loop: pysnmp's transport belongs to it
            return cpu / rounds, sum(len(t) for t in walk.tables.values())

        per_walk, varbinds = asyncio.run(walks())
        print(f"RESULT {label} {per_walk * 1000:.3f} {varbinds}")


def inside_netsnmp(port: int, rounds: int) -> None:
    security = {
        "netsnmp-v2c": ["-v2c", "-c", "public"],
        "netsnmp-v3": ["-v3", "-l", "authPriv", "-u", V3_USER, "-a", "SHA-256", "-A", V3_AUTH,
                       "-x", "AES", "-X", V3_PRIV],
    }
    env = {**os.environ, "MIBS": "", "SNMPCONFPATH": "/nonexistent"}
    for label, args in security.items():
        lines = 0
        before = child_cpu()
        for _ in range(rounds):
            for subtree in SUBTREES:
                out = subprocess.run(["snmpbulkwalk", *args, "-Cr25", "-On", f"127.0.0.1:{port}",
                                      subtree], capture_output=True, text=True, check=True, env=env)
                lines += out.stdout.count("\n")
        print(f"RESULT {label} {(child_cpu() - before) / rounds * 1000:.3f} {lines // rounds}")


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        what, port, rounds = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
        {"clients": inside_clients, "collector": inside_v3,
         "netsnmp": inside_netsnmp}[what](port, rounds)
        return 0
    rounds = int(sys.argv[sys.argv.index("--rounds") + 1]) if "--rounds" in sys.argv else 20
    problem = cannot_run(("ip", "/usr/sbin/snmpd", "snmpbulkwalk"), "iproute2 snmpd snmp",
                         f"with {IFACES_PER_DEVICE} interfaces")
    if problem:
        print(problem)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="snmpv3-bench-"))
    sh("ip", "netns", "add", NS)
    results: dict[str, list[str]] = {}
    snmpd = None
    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        add_interfaces(IFACES_PER_DEVICE - 1, 0)
        snmpd = start_snmpd(tmp, [BASE_PORT])
        for what in ("clients", "collector", "netsnmp"):
            print(f"{what} ...", flush=True)
            out = subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--inside",
                                  what, str(BASE_PORT), str(rounds)],
                                 capture_output=True, text=True, check=False)
            sys.stderr.write(out.stderr[-3000:])
            out.check_returncode()
            for line in out.stdout.splitlines():
                if line.startswith("RESULT "):
                    name, *values = line.split()[1:]
                    results[name] = values
            results[f"load-{what}"] = [f"{os.getloadavg()[0]:.1f}"]
    finally:
        if snmpd is not None:
            stop(snmpd)
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)
    report(results, rounds)
    return 0


def report(results: dict[str, list[str]], rounds: int) -> None:
    ms = {name: float(values[0]) for name, values in results.items() if not name.startswith("load")}
    print(f"\n== SNMPv3 CPU, one device of {IFACES_PER_DEVICE} interfaces, SHA-256 + AES-128, "
          f"{rounds} rounds (2 shared cores: noisy) ==")
    vb = int(results["client-v3"][1])
    print(f"client, one walk of the poll's {len(poll_columns())} columns ({vb} values; load "
          f"{results['load-clients'][0]}):")
    print(f"  ours v2c        {ms['client-v2c']:7.2f} ms")
    print(f"  ours v3         {ms['client-v3']:7.2f} ms   v3/v2c = "
          f"{ms['client-v3'] / ms['client-v2c']:.2f}x")
    print(f"  pysnmp 7 v3     {ms['client-pysnmp-v3']:7.2f} ms   pysnmp/ours = "
          f"{ms['client-pysnmp-v3'] / ms['client-v3']:.1f}x")
    print(f"collector, CPU per poll (load {results['load-collector'][0]}):")
    print(f"  v2c             {ms['v2c']:7.2f} ms")
    print(f"  v3              {ms['v3']:7.2f} ms   v3/v2c = {ms['v3'] / ms['v2c']:.2f}x")
    n3, n2 = int(results["netsnmp-v3"][1]), int(results["netsnmp-v2c"][1])
    print(f"snmpbulkwalk of ifTable + ifXTable, 2 processes (load {results['load-netsnmp'][0]}):")
    print(f"  -v2c            {ms['netsnmp-v2c']:7.2f} ms ({n2} values)")
    print(f"  -v3             {ms['netsnmp-v3']:7.2f} ms ({n3} values)   snmpbulkwalk -v3 / ours v3 "
          f"client = {ms['netsnmp-v3'] / ms['client-v3']:.1f}x; per value "
          f"{ms['netsnmp-v3'] / n3 * 1000:.1f} µs vs ours {ms['client-v3'] / vb * 1000:.1f} µs "
          f"= {(ms['netsnmp-v3'] / n3) / (ms['client-v3'] / vb):.1f}x")


if __name__ == "__main__":
    sys.exit(main())
