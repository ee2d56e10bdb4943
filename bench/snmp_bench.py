"""SNMP collector benchmark, side by side with net-snmp and MRTG in the same run.

    .venv/bin/python bench/snmp_bench.py [--devices 1000] [--archives step:1h,...] [--only PARTS]
    (as root: it makes a network namespace)

Inside a private network namespace (so nothing touches the host's interfaces) it creates bridge
interfaces and runs net-snmp's snmpd there, then measures:

1. client efficiency: varbinds per CPU-second walking the IF-MIB columns of 500 interfaces,
   ours vs `snmpbulkwalk -v2c -Cr<N> -On` (and bare pysnmp for reference);
2. a full cycle of 1,000 devices x 48 interfaces (one snmpd answering on 1,000 ports), all
   columns, each device's batch written through rrdcached as it arrives (as the agent does),
   with the agent's peak RSS;
3. SNMPv3 (SHA-256 + AES-128) vs v2c: CPU per poll of one 48-interface device;
4. MRTG (`cfgmaker` config, `LogFormat: rrdtool`) polling one 48-interface device: its time per
   interface vs ours.

Targets from the issues: client efficiency >= snmpbulkwalk's; steady cycle <= 20 s, first
cycle (creating the files) <= 3x steady, RSS <= 250 MiB; MRTG >= 5x slower per interface.

With the default archives an interface's RRD file is ~3 MB (48,000 of them: ~150 GB), so the
cycle refuses to start when the disk cannot hold them; `--archives step:1h` (a small file) still
measures the steady state (an update touches a few pages whatever the file's size). Every
figure is printed with the load average: the machine is shared.
"""

from __future__ import annotations

import asyncio
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from tests.daemons import stop  # noqa: E402  (TERM, then KILL)

NS = f"monbench{os.getpid()}"
DEVICES, IFACES_PER_DEVICE, BIG = 1000, 48, 500
V3_USER, V3_AUTH, V3_PRIV = "bench", "bench-auth-key", "bench-priv-key"
BASE_PORT = 21000


def sh(*argv: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=True, **kw)


def child_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def add_interfaces(count: int, start: int) -> None:
    batch = "".join(f"link add br{i} type bridge\nlink set br{i} up\n" for i in range(start, start + count))
    subprocess.run(["ip", "-n", NS, "-batch", "-"], input=batch, text=True, check=True)


def start_snmpd(tmp: Path, ports: list[int]) -> subprocess.Popen:
    conf = tmp / "snmpd.conf"
    conf.write_text("rocommunity public 127.0.0.1\nmaxGetbulkResponses 2000\nmaxGetbulkRepeats 2000\n"
                    f"createUser {V3_USER} SHA-256 {V3_AUTH} AES {V3_PRIV}\nrouser {V3_USER} priv\n")
    endpoints = ",".join(f"udp:127.0.0.1:{p}" for p in ports)
    env = {**os.environ, "MIBS": "", "MIBDIRS": str(tmp)}
    proc = subprocess.Popen(["ip", "netns", "exec", NS, "/usr/sbin/snmpd", "-f",
                             "-Lf", str(tmp / "snmpd.log"), "-C", "-c", str(conf),
                             f"--persistentDir={tmp / 'persist'}",
                             "-p", str(tmp / "snmpd.pid"), endpoints], env=env)
    for _ in range(100):
        r = subprocess.run(["ip", "netns", "exec", NS, "snmpget", "-v2c", "-c", "public", "-t", "0.2",
                            "-r", "0", f"127.0.0.1:{ports[0]}", "1.3.6.1.2.1.1.3.0"],
                           capture_output=True)
        if r.returncode == 0:
            return proc
        time.sleep(0.1)
    raise RuntimeError("snmpd did not start; see " + str(tmp / "snmpd.log"))


def cannot_run(tools: tuple[str, ...], packages: str, interfaces: str) -> str:
    """Why the benchmark cannot run here ("" if it can): a tool missing, or not root."""
    for tool in tools:
        if not shutil.which(tool):
            return f"needs {tool} (apt-get install {packages})"
    if os.geteuid() != 0:
        return f"run as root: the benchmark creates a network namespace {interfaces}"
    return ""


# ------------------------------------------------------------------------------------------------
# The measurements run inside the namespace (this script re-executes itself there).


def inside_efficiency(port: int, rounds: int) -> None:
    from collectors.snmp import DESCRIPTIVE, ERROR_COLUMNS, HC_COLUMNS
    from collectors.snmp_client import CommunityClient, Endpoint, walk_columns

    columns = [*DESCRIPTIVE, *HC_COLUMNS, *ERROR_COLUMNS]
    reps = max(1, 250 // len(columns))

    async def ours() -> tuple[int, float]:
        client = CommunityClient(Endpoint("bench", "127.0.0.1", port, 5, 1), "public")
        await walk_columns(client, columns, max_repetitions=reps)  # warm up
        varbinds = 0
        cpu = time.process_time()
        for _ in range(rounds):
            tables = (await walk_columns(client, columns, max_repetitions=reps)).tables
            varbinds += sum(len(t) for t in tables.values())
        cpu = time.process_time() - cpu
        client.close()
        return varbinds, cpu

    varbinds, cpu = asyncio.run(ours())
    print(f"RESULT ours {varbinds} {cpu:.4f} {reps}")

    # net-snmp's snmpbulkwalk walks one subtree at a time: ifTable and ifXTable whole (all their
    # columns, so more varbinds than ours, at its best max-repetitions of ~250 per request).
    total = 0
    before = child_cpu()
    for _ in range(rounds):
        for subtree in ("1.3.6.1.2.1.2.2", "1.3.6.1.2.1.31.1.1"):
            out = subprocess.run(["snmpbulkwalk", "-v2c", "-c", "public", "-Cr250", "-On",
                                  f"127.0.0.1:{port}", subtree],
                                 capture_output=True, text=True, check=True)
            total += out.stdout.count("\n")
    print(f"RESULT netsnmp {total} {child_cpu() - before:.4f}")

    # Bare pysnmp (v3arch asyncio hlapi, lookupMib=False), for reference.
    async def bare() -> tuple[int, float]:
        from pysnmp.hlapi.v3arch.asyncio import (
            CommunityData,
            ContextData,
            ObjectIdentity,
            ObjectType,
            SnmpEngine,
            UdpTransportTarget,
            bulk_cmd,
        )
        engine = SnmpEngine()
        target = await UdpTransportTarget.create(("127.0.0.1", port), timeout=5, retries=1)
        count = 0
        cpu = time.process_time()
        cursor = [ObjectType(ObjectIdentity(".".join(map(str, c)))) for c in columns[:4]]
        for _ in range(3):
            oids = list(cursor)
            while oids:
                err, status, _, vbs = await bulk_cmd(engine, CommunityData("public"), target,
                                                    ContextData(), 0, 50, *oids, lookupMib=False)
                if err or status or not vbs:
                    break
                count += len(vbs)
                last = vbs[-len(oids):]
                if not str(last[0][0]).startswith(".".join(map(str, columns[0]))):
                    break
                oids = [ObjectType(ObjectIdentity(str(vb[0]))) for vb in last]
        cpu = time.process_time() - cpu
        engine.close_dispatcher()
        return count, cpu

    count, cpu = asyncio.run(bare())
    print(f"RESULT pysnmp {count} {cpu:.4f}")


def start_rrdcached(tmp: Path) -> tuple[subprocess.Popen, str]:
    sock, journal = tmp / "rrdcached.sock", tmp / "journal"
    journal.mkdir(exist_ok=True)
    proc = subprocess.Popen([shutil.which("rrdcached") or "/usr/bin/rrdcached", "-g", "-l",
                             f"unix:{sock}", "-p", str(tmp / "rrdcached.pid"), "-j", str(journal),
                             "-w", "3600", "-z", "1", "-f", "7200", "-F"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for _ in range(500):
        if sock.exists():
            return proc, f"unix:{sock}"
        time.sleep(0.02)
    raise RuntimeError("rrdcached did not start")


def store_archives() -> list[str]:
    from monitor.config import StorageConfig

    if "--archives" in sys.argv:
        return sys.argv[sys.argv.index("--archives") + 1].split(",")
    return StorageConfig().archives


def file_size(tmp: Path, archives: list[str]) -> int:
    """The size of one interface's RRD file with these archives."""
    from collectors.snmp import COUNTERS
    from monitor.model import Measurement
    from monitor.store import RrdStore

    store = RrdStore(tmp / "size-probe", archives=archives)
    metrics = [*COUNTERS, "oper_status", "admin_status", "speed_bps"]
    store.write([Measurement("d", "i", m, 1.0, timestamp=time.time()) for m in metrics], 60)
    store.close()
    size = sum(p.stat().st_size for p in (tmp / "size-probe").rglob("*.rrd"))
    shutil.rmtree(tmp / "size-probe")
    return size


def reset_peak_rss() -> None:
    """Start a new peak (VmHWM) so each cycle's figure is its own, not the run's so far."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass


def peak_rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inside_cycle(ports: list[int], tmp: Path, archives: list[str]) -> None:
    from collectors.snmp import SnmpCollector
    from monitor.config import SnmpDevice
    from monitor.store import RrdStore

    daemon, address = start_rrdcached(tmp)
    devices = [SnmpDevice(name=f"dev{i:04d}", host="127.0.0.1", port=p, timeout=10, retries=1)
               for i, p in enumerate(ports)]
    collector = SnmpCollector(devices, 60, concurrency=32, state_dir=tmp / "state" / "snmp")
    store = RrdStore(tmp / "rrd", rrdcached=address, archives=archives)

    async def cycle() -> tuple[float, float, int, int, int]:
        """As the agent does: each batch (devices done meanwhile) written as it arrives."""
        t0 = time.perf_counter()
        cpu0 = time.process_time()
        values = created = bad = 0
        async for part in collector.batches():
            report = await asyncio.to_thread(store.write, part.measurements, 60)
            values += len(part.measurements)
            created += report.files_created
            problems = [c for c in part.checks if c.check == "snmp" and c.state.name != "OK"]
            if problems and not bad:
                print("  problem:", problems[0].message, file=sys.stderr)
            bad += len(problems)
        return time.perf_counter() - t0, time.process_time() - cpu0, values, created, bad

    tracing = os.environ.get("SNMP_BENCH_TRACEMALLOC") == "1"  # where the memory goes (slow)
    if tracing:
        import tracemalloc

        tracemalloc.start(int(os.environ.get("SNMP_BENCH_FRAMES", "1")))

    async def main() -> None:
        for i in range(3):
            reset_peak_rss()
            wall, cpu, values, created, bad = await cycle()
            rss = peak_rss_mib()
            print(f"RESULT cycle{i} {wall:.3f} {cpu:.3f} {values} {created} {bad} {rss:.0f} "
                  f"{os.getloadavg()[0]:.1f}")
            if tracing:
                current, peak = tracemalloc.get_traced_memory()
                print(f"  tracemalloc cycle{i}: live {current / 2**20:.1f} MiB, peak "
                      f"{peak / 2**20:.1f} MiB", file=sys.stderr)
                top = tracemalloc.take_snapshot().statistics("lineno")[:12]
                for stat in top:
                    print(f"    {stat}", file=sys.stderr)
                tracemalloc.reset_peak()
            await asyncio.sleep(1)  # RRD timestamps are whole seconds

    try:
        asyncio.run(main())
    finally:
        collector.close()
        store.close()
        stop(daemon)


def inside_v3(port: int, rounds: int) -> None:
    """CPU per poll of one device: v2c vs v3 (USM state and keys kept across polls)."""
    from collectors.snmp import SnmpCollector
    from monitor.config import SnmpDevice, SnmpV3Config

    v3 = SnmpV3Config(user=V3_USER, auth_protocol="sha256", auth_key=V3_AUTH,
                      priv_protocol="aes128", priv_key=V3_PRIV)
    for label, device in (
        ("v2c", SnmpDevice(name="d", host="127.0.0.1", port=port, timeout=5, retries=1)),
        ("v3", SnmpDevice(name="d", host="127.0.0.1", port=port, version="3", v3=v3, timeout=5,
                          retries=1)),
    ):
        collector = SnmpCollector([device], 60)

        async def polls(collector: SnmpCollector = collector) -> float:
            await collector.collect()  # engine discovery, key localisation
            cpu = time.process_time()
            for _ in range(rounds):
                batch = await collector.collect()
                assert all(c.state.name == "OK" for c in batch.checks if c.check == "snmp"), \
                    [c.message for c in batch.checks if c.check == "snmp"]
            return (time.process_time() - cpu) / rounds

        per_poll = asyncio.run(polls())
        collector.close()
        print(f"RESULT {label} {per_poll * 1000:.2f}")


def inside_mrtg(port: int, tmp: Path) -> None:
    work = tmp / "mrtg"
    work.mkdir()
    cfg = work / "mrtg.cfg"
    out = subprocess.run(["cfgmaker", "--global", f"WorkDir: {work}", "--global", "LogFormat: rrdtool",
                          "--show-op-down", "--zero-speed=1000000000", f"public@127.0.0.1:{port}"],
                         capture_output=True, text=True, check=True)
    cfg.write_text(out.stdout)
    targets = out.stdout.count("\nTarget[")
    env = {**os.environ, "LANG": "C", "LC_ALL": "C"}
    times = []
    for _ in range(3):
        t0 = time.perf_counter()
        run = subprocess.run(["mrtg", "--lock-file", str(work / "lock"), str(cfg)],
                             env=env, capture_output=True, text=True, check=False)
        times.append(time.perf_counter() - t0)
        if run.returncode != 0:
            print(f"mrtg exited {run.returncode}: {run.stderr[-1500:]}", file=sys.stderr)
    rrds = list(work.glob("*.rrd"))
    print(f"  mrtg wrote {len(rrds)} RRD files", file=sys.stderr)
    print(f"RESULT mrtg {targets} {min(times[1:]):.3f}")


# ------------------------------------------------------------------------------------------------


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--inside":
        what, tmp = sys.argv[2], Path(sys.argv[3])
        if what == "efficiency":
            inside_efficiency(int(sys.argv[4]), int(sys.argv[5]))
        elif what == "cycle":
            inside_cycle([int(p) for p in sys.argv[4].split(",")], tmp, sys.argv[5].split(","))
        elif what == "v3":
            inside_v3(int(sys.argv[4]), int(sys.argv[5]))
        elif what == "mrtg":
            inside_mrtg(int(sys.argv[4]), tmp)
        return 0

    global DEVICES
    if "--devices" in sys.argv:
        DEVICES = int(sys.argv[sys.argv.index("--devices") + 1])
    # --only efficiency (or cycle, v3, mrtg, comma-separated): a part of the run, for iterating
    parts = set(sys.argv[sys.argv.index("--only") + 1].split(",")) if "--only" in sys.argv else {
        "cycle", "v3", "mrtg", "efficiency"}
    problem = cannot_run(("ip", "/usr/sbin/snmpd", "snmpbulkwalk", "mrtg", "cfgmaker", "rrdcached"),
                         "iproute2 snmpd snmp mrtg", "with many interfaces")
    if problem:
        print(problem)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="snmp-bench-"))
    sh("ip", "netns", "add", NS)
    procs: list[subprocess.Popen] = []
    results: dict[str, list[str]] = {}

    def inside(*args: str) -> None:
        out = subprocess.run(["ip", "netns", "exec", NS, sys.executable, __file__, "--inside", *args],
                             capture_output=True, text=True, check=True)
        sys.stderr.write(out.stderr[-2000 if 'SNMP_BENCH_TRACEMALLOC' not in os.environ else -20000:])
        for line in out.stdout.splitlines():
            if line.startswith("RESULT "):
                name, *vals = line.split()[1:]
                results[name] = vals
        results[f"load-{args[0]}"] = [f"{os.getloadavg()[0]:.1f}"]  # 1-minute load as it ended

    try:
        sh("ip", "-n", NS, "link", "set", "lo", "up")
        print(f"namespace {NS}: creating {IFACES_PER_DEVICE - 1} bridge interfaces (+ lo)", flush=True)
        add_interfaces(IFACES_PER_DEVICE - 1, 0)
        ports = [BASE_PORT + i for i in range(DEVICES)]
        snmpd = start_snmpd(tmp, ports)
        procs.append(snmpd)

        print(f"full cycle: {DEVICES} devices x {IFACES_PER_DEVICE} interfaces, all columns, RRD "
              f"updates through rrdcached, archives {','.join(store_archives())} ...", flush=True)
        if "cycle" in parts:
            need = file_size(tmp, store_archives()) * DEVICES * IFACES_PER_DEVICE
            free = shutil.disk_usage(tmp).free
            if need > 0.8 * free:
                print(f"the cycle needs {need / 2**30:.0f} GiB of RRD files, the disk has "
                      f"{free / 2**30:.0f} GiB free: skipped (try --archives step:1h)")
                parts.discard("cycle")
        if "cycle" in parts:
            inside("cycle", str(tmp), ",".join(map(str, ports)), ",".join(store_archives()))
        if "v3" in parts:
            print("SNMPv3 vs v2c CPU per poll of one device ...", flush=True)
            inside("v3", str(tmp), str(ports[0]), "20")
        if "mrtg" in parts:
            print("MRTG (cfgmaker + LogFormat rrdtool) on one device of 48 interfaces ...", flush=True)
            inside("mrtg", str(tmp), str(ports[0]))

        if "efficiency" in parts:
            print(f"adding interfaces up to {BIG} for the client efficiency test ...", flush=True)
            add_interfaces(BIG - IFACES_PER_DEVICE, IFACES_PER_DEVICE - 1)
            stop(snmpd)
            procs.remove(snmpd)
            snmpd = start_snmpd(tmp, [BASE_PORT])
            procs.append(snmpd)
            inside("efficiency", str(tmp), str(BASE_PORT), "10")
    finally:
        for p in procs:
            stop(p)
        subprocess.run(["ip", "netns", "del", NS], check=False)
        shutil.rmtree(tmp, ignore_errors=True)

    print()
    print("== SNMP benchmark (2 shared cores: figures are noisy) ==")
    report(results)
    return 0


def report(results: dict[str, list[str]]) -> None:
    if "ours" in results:
        vb, cpu, reps = results["ours"]
        ours_rate = int(vb) / float(cpu)
        nvb, ncpu = results["netsnmp"]
        net_rate = int(nvb) / max(float(ncpu), 1e-6)
        pvb, pcpu = results["pysnmp"]
        py_rate = int(pvb) / max(float(pcpu), 1e-6)
        print(f"client efficiency, {BIG} interfaces, {len(all_columns())} columns, "
              f"max-repetitions {reps} (load {results['load-efficiency'][0]}):")
        print(f"  ours            {ours_rate:>10,.0f} varbinds/CPU-s")
        print(f"  snmpbulkwalk    {net_rate:>10,.0f} varbinds/CPU-s   "
              f"ours/net-snmp = {ours_rate / net_rate:.2f}x (target >= 1x: "
              f"{'met' if ours_rate >= net_rate else 'NOT met'})")
        print(f"  bare pysnmp     {py_rate:>10,.0f} varbinds/CPU-s   "
              f"ours/pysnmp = {ours_rate / py_rate:.1f}x")
    steady = None
    if "cycle0" in results:
        walls = []
        for i in range(3):
            wall, cpu, values, created, bad, rss, load = results[f"cycle{i}"]
            walls.append(float(wall))
            label = "first (creates RRD files)" if i == 0 else "steady state"
            print(f"cycle {i} {label}: {DEVICES}x{IFACES_PER_DEVICE}: {float(wall):.2f} s wall, "
                  f"{float(cpu):.2f} s agent CPU ({values} values, {created} files created, "
                  f"{bad} device(s) not OK), peak RSS {rss} MiB, load {load}")
        steady = min(walls[1:])
        rss = max(float(results[f"cycle{i}"][5]) for i in range(3))  # each cycle's own peak
        cpus = [float(results[f"cycle{i}"][1]) for i in range(3)]
        print(f"  steady-state cycle {steady:.2f} s (target <= 20 s: "
              f"{'met' if steady <= 20 else 'NOT met'}); first/steady = {walls[0] / steady:.1f}x "
              f"wall, {cpus[0] / min(cpus[1:]):.1f}x agent CPU "
              f"(target <= 3x: {'met' if walls[0] <= 3 * steady else 'NOT met'}); RSS {rss:.0f} "
              f"MiB (target <= 250: {'met' if rss <= 250 else 'NOT met'})")
    if "v2c" in results:
        v2c, v3 = float(results["v2c"][0]), float(results["v3"][0])
        print(f"CPU per poll of one 48-interface device: v2c {v2c:.2f} ms, v3 (SHA-256/AES-128) "
              f"{v3:.2f} ms = {v3 / v2c:.1f}x (load {results['load-v3'][0]})")
    if "mrtg" in results and steady is not None:
        targets, mrtg_time = results["mrtg"]
        per_if_mrtg = float(mrtg_time) / max(int(targets), 1)
        per_if_ours = steady / (DEVICES * IFACES_PER_DEVICE)
        ratio = per_if_mrtg / per_if_ours
        print(f"MRTG: {targets} targets in {float(mrtg_time):.2f} s = {per_if_mrtg * 1000:.2f} "
              f"ms/interface; ours {per_if_ours * 1000:.3f} ms/interface (all columns + RRD)")
        print(f"  MRTG/ours = {ratio:.1f}x slower per interface (target >= 5x: "
              f"{'met' if ratio >= 5 else 'NOT met'})")


def all_columns() -> list:
    from collectors.snmp import DESCRIPTIVE, ERROR_COLUMNS, HC_COLUMNS

    return [*DESCRIPTIVE, *HC_COLUMNS, *ERROR_COLUMNS]


if __name__ == "__main__":
    sys.exit(main())
