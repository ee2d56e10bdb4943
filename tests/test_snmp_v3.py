"""SNMPv3 (collectors.snmp_v3 + UsmClient) against net-snmp's snmpd on loopback: every auth x
priv combination snmpd offers, engine ID changes and reboots, and a hostile path in between
(a UDP relay that mangles snmpd's real replies)."""

from __future__ import annotations

import asyncio
import random

import pytest

from collectors import snmp_ber as ber
from collectors import snmp_v3 as v3
from collectors.snmp import SnmpCollector
from collectors.snmp_client import Endpoint, SnmpError, UsmClient, walk_columns
from monitor.config import SnmpDevice, SnmpV3Config
from monitor.model import State
from tests.test_snmp import STEP, check, net_snmpd
from tests.test_snmp_ber import check_values, mutate

SYS_UPTIME = (1, 3, 6, 1, 2, 1, 1, 3, 0)
IF_DESCR = (1, 3, 6, 1, 2, 1, 2, 2, 1, 2)
IF_IN_OCTETS = (1, 3, 6, 1, 2, 1, 2, 2, 1, 10)
AUTH_PASS, PRIV_PASS = "matrix-auth-pass", "matrix-priv-pass"

# Our protocol names -> net-snmp's (createUser). "aes" and "aes128" are the same protocol.
NET_SNMP_AUTH = {"md5": "MD5", "sha": "SHA", "sha224": "SHA-224", "sha256": "SHA-256",
                 "sha384": "SHA-384", "sha512": "SHA-512"}
NET_SNMP_PRIV = {"des": "DES", "aes128": "AES", "aes192": "AES-192", "aes256": "AES-256",
                 "aes192c": "AES-192-C", "aes256c": "AES-256-C"}
# noAuthNoPriv, then every auth protocol without and with every privacy protocol: 43 users.
COMBINATIONS = [("none", "none")] + [(a, p) for a in NET_SNMP_AUTH for p in ("none", *NET_SNMP_PRIV)]


def user_name(auth: str, priv: str) -> str:
    return f"u-{auth}-{priv}"


def matrix_conf() -> str:
    lines = ["rocommunity monitor-ro 127.0.0.1"]
    for auth, priv in COMBINATIONS:
        name = user_name(auth, priv)
        spec = "" if auth == "none" else f" {NET_SNMP_AUTH[auth]} {AUTH_PASS}"
        if priv != "none":
            spec += f" {NET_SNMP_PRIV[priv]} {PRIV_PASS}"
        level = "noauth" if auth == "none" else "auth" if priv == "none" else "priv"
        lines += [f"createUser {name}{spec}", f"rouser {name} {level}"]
    return "\n".join(lines) + "\n"


def v3_config(auth: str, priv: str, **changes: str) -> SnmpV3Config:
    config = SnmpV3Config(user=user_name(auth, priv), auth_protocol=auth,  # type: ignore[arg-type]
                          auth_key=AUTH_PASS if auth != "none" else None,
                          priv_protocol=priv,  # type: ignore[arg-type]
                          priv_key=PRIV_PASS if priv != "none" else None)
    for key, value in changes.items():
        setattr(config, key, value)
    return config


def v3_device(name: str, port: int, config: SnmpV3Config, **kw) -> SnmpDevice:
    kw.setdefault("timeout", 1.0)
    kw.setdefault("retries", 1)
    return SnmpDevice(name=name, host="127.0.0.1", port=port, version="3", v3=config,
                      include=["lo"], skip_types=[], **kw)


def client(port: int, config: SnmpV3Config, engine: v3.UsmEngine | None = None,
           timeout: float = 1.0, retries: int = 1) -> UsmClient:
    return UsmClient(Endpoint("dev", "127.0.0.1", port, timeout, retries), engine or v3.UsmEngine(),
                     config.user, config.auth_protocol, config.auth_key, config.priv_protocol,
                     config.priv_key, config.context)


@pytest.fixture(scope="module")
def matrix_snmpd(tmp_path_factory):
    with net_snmpd(tmp_path_factory.mktemp("snmpd-matrix"), matrix_conf()) as port:
        yield port


def test_rfc3414_key_localisation_vectors():
    """RFC 3414 A.3: "maplesyrup" localised to engine ID 00..02."""
    engine_id = bytes.fromhex("000000000000000000000002")
    assert v3.password_to_key("maplesyrup", engine_id, "md5").hex() == \
        "526f5eed9fcce26f8964c2930787d82b"
    assert v3.password_to_key("maplesyrup", engine_id, "sha1").hex() == \
        "6695febc9288e36282235fc7151f128497b38f3f"


def test_keys_agree_with_pysnmp_for_every_hash():
    """Our one-call 1 MB hash and localisation give what pysnmp's localkey gives (64 bytes at a
    time, as RFC 3414's sample code), for every auth protocol's hash and odd pass phrase lengths."""
    import hashlib

    from pyasn1.type import univ
    from pysnmp.proto.secmod.rfc3414 import localkey

    engine_id = bytes.fromhex("80001f8880e9630000d61ff449")
    for auth in v3.AUTH_PROTOCOLS.values():
        function = getattr(hashlib, auth.hash_name)
        for passphrase in ("12345678", "a pass phrase of 33 characters!!", "é" * 40):
            theirs = localkey.password_to_key(passphrase.encode(), univ.OctetString(engine_id),
                                              function)
            assert v3.password_to_key(passphrase, engine_id, auth.hash_name) == bytes(theirs)


def test_priv_key_extensions_agree_with_pysnmp():
    """AES-192/256 keys longer than the auth hash: Blumenthal's and Reeder's extensions give
    what pysnmp's implementations of the drafts give."""
    from pyasn1.type import univ
    from pysnmp.proto.secmod.eso.priv import aes192, aes256
    from pysnmp.proto.secmod.rfc3414.auth import hmacmd5, hmacsha

    engine_id = bytes.fromhex("80001f8880e9630000d61ff449")
    for auth_name, service in (("md5", hmacmd5.HmacMd5), ("sha1", hmacsha.HmacSha)):
        master = service().hash_passphrase(PRIV_PASS)
        for ours, theirs in ((v3.PRIV_PROTOCOLS["aes192"], aes192.AesBlumenthal192()),
                             (v3.PRIV_PROTOCOLS["aes256"], aes256.AesBlumenthal256()),
                             (v3.PRIV_PROTOCOLS["aes192c"], aes192.Aes192()),
                             (v3.PRIV_PROTOCOLS["aes256c"], aes256.Aes256())):
            expected = bytes(theirs.localize_key(service.SERVICE_ID, master,
                                                 univ.OctetString(engine_id)))
            assert v3.localized_priv_key(PRIV_PASS, engine_id, auth_name, ours) == expected, \
                (auth_name, ours)


def test_time_window_of_replies():
    """RFC 3414 3.2.7 as a manager: a reply from an earlier boot, or from more than 150 s before
    our notion of the agent's clock, is refused; a later one moves the notion forward."""
    engine = v3.UsmEngine()
    engine.discovered(b"\x80\x00\x1f\x88\x04agent", 5, 1000)
    assert engine.in_time_window(5, 1000) and engine.in_time_window(5, 900)
    assert not engine.in_time_window(5, 849)
    assert not engine.in_time_window(4, 5000)
    assert not engine.in_time_window(2**31 - 1, 0)
    assert engine.in_time_window(6, 3)  # a reboot: boots up, clock restarted
    assert engine.now()[0] == 6 and engine.latest_time == 3
    assert not engine.in_time_window(5, 1200)


def test_every_auth_and_priv_combination_of_net_snmp(matrix_snmpd, tmp_path):
    """All 43 security configurations snmpd offers (noAuthNoPriv; MD5, SHA-1, SHA-224/256/384/512
    each without privacy and with DES, AES-128, AES-192/256 and their Cisco-style -C variants),
    polled by the collector twice: OK, with the interface table."""
    devices = [v3_device(f"{a}-{p}", matrix_snmpd, v3_config(a, p)) for a, p in COMBINATIONS]
    collector = SnmpCollector(devices, STEP, concurrency=43)

    async def twice():
        await collector.collect()
        return await collector.collect()

    batch = asyncio.run(twice())
    collector.close()
    assert len(COMBINATIONS) == 43
    for dev in devices:
        status = check(batch, dev.name, "snmp")
        assert status.state is State.OK, (dev.name, status.message)
        assert check(batch, dev.name, "if lo").state is State.OK


def test_engine_and_keys_are_made_once_and_reused(matrix_snmpd):
    """Discovery and key localisation happen on the first request only: the engine keeps the
    engine ID, and the same Keys object serves every later request of the device."""
    config = v3_config("sha256", "aes128")
    engine = v3.UsmEngine()

    async def go():
        c = client(matrix_snmpd, config, engine)
        first = await c.get([SYS_UPTIME])
        keys = engine.keys(c.user)
        walk = await walk_columns(c, [IF_DESCR, IF_IN_OCTETS], max_repetitions=5)
        c.close()
        # a new client (a config reload) on the same engine: no new discovery, same keys
        again = client(matrix_snmpd, config, engine)
        second = await again.get([SYS_UPTIME])
        again.close()
        return first, keys, walk, second

    first, keys, walk, second = asyncio.run(go())
    assert first[0][0] == SYS_UPTIME and isinstance(first[0][1], int)
    assert walk.tables[IF_DESCR] and not walk.ends
    assert engine.keys(v3.UsmUser(config.user, "sha256", AUTH_PASS, "aes128", PRIV_PASS)) is keys
    assert second[0][1] >= first[0][1]
    assert engine.engine_id and engine.boots >= 1


@pytest.mark.parametrize(("changes", "words"), [
    ({"user": "intruder"}, "does not know SNMPv3 user 'intruder' (unknown user name)"),
    ({"auth_key": "wrong-auth-pass"}, "authentication failed (wrong auth key or auth protocol)"),
    ({"auth_protocol": "md5"}, "authentication failed (wrong auth key or auth protocol)"),
    # agents drop a request they cannot decrypt: only silence comes back
    ({"priv_key": "wrong-priv-pass"}, "wrong privacy key/protocol"),
    ({"priv_protocol": "des"}, "wrong privacy key/protocol"),
])
def test_wrong_user_or_keys_say_so(matrix_snmpd, changes, words):
    config = v3_config("sha", "aes128", **changes)

    async def go() -> SnmpError:
        c = client(matrix_snmpd, config, timeout=0.5, retries=0)
        try:
            with pytest.raises(SnmpError) as info:
                await c.get([SYS_UPTIME])
        finally:
            c.close()
        return info.value

    error = asyncio.run(go())
    assert words in error.message, error.message
    assert "127.0.0.1" in error.message


def test_privacy_for_a_user_without_it_is_an_unsupported_level(matrix_snmpd):
    """The user has no privacy key on the agent: it says usmStatsUnsupportedSecLevels."""
    config = v3_config("sha", "none", priv_protocol="aes128", priv_key=PRIV_PASS)

    async def go() -> str:
        c = client(matrix_snmpd, config, retries=0)
        try:
            with pytest.raises(SnmpError) as info:
                await c.get([SYS_UPTIME])
        finally:
            c.close()
        return info.value.message

    message = asyncio.run(go())
    assert "does not support security level authPriv for user 'u-sha-none'" in message, message


def test_engine_id_change_and_reboot_resync(tmp_path):
    """The device is replaced (a new engine ID on the same address), then reboots (its boot
    counter goes up): the next poll rediscovers / re-syncs once and goes on, keys relocalised."""
    config = v3_config("sha512", "aes256")
    conf = matrix_conf()
    engine = v3.UsmEngine()

    async def poll(port: int) -> object:
        c = client(port, config, engine)
        try:
            return (await c.get([SYS_UPTIME]))[0][1]
        finally:
            c.close()

    first_dir, second_dir = tmp_path / "first", tmp_path / "second"
    first_dir.mkdir()
    second_dir.mkdir()
    with net_snmpd(first_dir, "engineID first-device\n" + conf) as port:
        asyncio.run(poll(port))
    first_id, first_boots = engine.engine_id, engine.boots
    with net_snmpd(second_dir, "engineID second-device\n" + conf, port):
        assert isinstance(asyncio.run(poll(port)), int)
    assert engine.engine_id != first_id
    second_boots = engine.boots
    with net_snmpd(second_dir, "engineID second-device\n" + conf, port):
        assert isinstance(asyncio.run(poll(port)), int)
    assert engine.boots > second_boots >= first_boots


def test_discover_over_v3_prints_a_stanza_that_loads(matrix_snmpd, tmp_path, monkeypatch):
    """`monitor discover` with v3 (keys from the environment): a stanza with the v3 table and
    no key in it; a wrong auth key says so and exits 1."""
    import os
    import re
    import subprocess
    import sys
    import tomllib

    from monitor.config import parse_config
    from tests.conftest import ROOT

    def discover(auth_key: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "monitor", "discover", "127.0.0.1", "--port", str(matrix_snmpd),
             "--snmp-version", "3", "--user", user_name("sha384", "aes192c"),
             "--auth-protocol", "sha384", "--priv-protocol", "aes192c", "--timeout", "1"],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
            env={**os.environ, "SNMP_AUTH_KEY": auth_key, "SNMP_PRIV_KEY": PRIV_PASS})

    out = discover(AUTH_PASS)
    assert out.returncode == 0, out.stderr
    assert AUTH_PASS not in out.stdout and PRIV_PASS not in out.stdout
    stanza = tomllib.loads(out.stdout)["snmp"]["devices"][0]
    assert stanza["version"] == "3" and stanza["v3"]["priv_protocol"] == "aes192c"
    assert "lo " in out.stdout
    # the stanza names key files to create; here the keys come from the environment
    text = re.sub(r'(auth|priv)_key_file = "[^"]*"', r'\1_key_env = "MATRIX_\1"', out.stdout)
    monkeypatch.setenv("MATRIX_auth", AUTH_PASS)
    monkeypatch.setenv("MATRIX_priv", PRIV_PASS)
    config = parse_config(f'[agent]\ndata_dir = "{tmp_path}"\n' + text, base_dir=tmp_path)
    pasted = config.snmp.devices[0]
    assert pasted.v3.user == user_name("sha384", "aes192c")
    collector = SnmpCollector([pasted], STEP)
    batch = asyncio.run(collector.collect())
    collector.close()
    assert check(batch, pasted.name, "snmp").state is State.OK, check(batch, pasted.name, "snmp")
    wrong = discover("not-the-auth-key")
    assert wrong.returncode == 1
    assert "authentication failed (wrong auth key or auth protocol)" in wrong.stderr


# -- hostile: a relay between the client and snmpd that mangles the replies ---------------------


class Relay(asyncio.DatagramProtocol):
    """Forwards requests to snmpd and its replies back, through `mangle` (None: drop)."""

    def __init__(self, agent_port: int, mangle) -> None:
        self.agent = ("127.0.0.1", agent_port)
        self.mangle = mangle
        self.transport: asyncio.DatagramTransport | None = None
        self.upstream: dict[tuple, asyncio.DatagramTransport] = {}
        self.replies: list[bytes] = []  # snmpd's replies as they came, unmangled
        self.tasks: set[asyncio.Future] = set()

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        task = asyncio.ensure_future(self._forward(data, addr))
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    async def _forward(self, data: bytes, addr) -> None:
        relay = self

        class Back(asyncio.DatagramProtocol):
            def datagram_received(self, reply: bytes, _addr) -> None:
                relay.replies.append(reply)
                mangled = relay.mangle(reply)
                if mangled is not None and relay.transport is not None:
                    relay.transport.sendto(mangled, addr)

        if addr not in self.upstream:
            loop = asyncio.get_running_loop()
            self.upstream[addr], _ = await loop.create_datagram_endpoint(
                Back, remote_addr=self.agent)
        self.upstream[addr].sendto(data)

    def close(self) -> None:
        for transport in self.upstream.values():
            transport.close()
        if self.transport is not None:
            self.transport.close()


async def start_relay(agent_port: int, mangle) -> tuple[Relay, int]:
    loop = asyncio.get_running_loop()
    transport, relay = await loop.create_datagram_endpoint(
        lambda: Relay(agent_port, mangle), local_addr=("127.0.0.1", 0))
    return relay, transport.get_extra_info("sockname")[1]


def flip_digest(reply: bytes) -> bytes:
    """The reply with one bit of its HMAC flipped (an authenticated reply; others unchanged)."""
    message = v3.decode_message(reply)
    if not message.flags & v3.AUTH_FLAG:
        return reply
    start = message.auth_at[0]
    return reply[:start] + bytes((reply[start] ^ 0x01,)) + reply[start + 1:]


def test_hostile_replies_harm_only_their_device(matrix_snmpd):
    """Garbage, truncated replies, flipped HMAC bits and random mutations of snmpd's real
    replies, polled next to a good v3 device: the good one is OK every cycle; the hostile one
    is reported in words (never "poll failed" with an exception name)."""
    rng = random.Random(20261202)
    manglers = {
        "garbage": lambda r: bytes(rng.randrange(256) for _ in range(rng.randrange(1, 200))),
        "truncated": lambda r: r[:rng.randrange(len(r))],
        "digest": flip_digest,
        "mutated": lambda r: mutate(r, rng),
        "v2c": lambda r: ber.encode_request(1, b"public", ber.RESPONSE, 1, [SYS_UPTIME]),
    }

    async def go() -> list:
        relays = {}
        for mode, mangle in manglers.items():
            relays[mode] = await start_relay(matrix_snmpd, mangle)
        devices = [v3_device("good", matrix_snmpd, v3_config("sha256", "aes256"))]
        devices += [v3_device(mode, port, v3_config("sha256", "aes256"), timeout=0.3, retries=0)
                    for mode, (_, port) in relays.items()]
        collector = SnmpCollector(devices, STEP, concurrency=8)
        batches = []
        try:
            for _ in range(3):
                batches.append(await collector.collect())
        finally:
            collector.close()
            for relay, _ in relays.values():
                relay.close()
        return batches

    batches = asyncio.run(go())
    for batch in batches:
        assert check(batch, "good", "snmp").state is State.OK, check(batch, "good", "snmp").message
        for mode in manglers:
            status = check(batch, mode, "snmp")
            assert status.state is not State.OK or mode == "mutated", (mode, status.message)
            assert "poll failed" not in status.message, (mode, status.message)
    words = {mode: check(batches[0], mode, "snmp").message for mode in manglers}
    assert "answered with a malformed reply" in words["garbage"], words
    assert "fails authentication" in words["digest"], words
    assert "SNMP version 2c message (v3 asked)" in words["v2c"], words


def recorded_v3_replies(port: int) -> list[tuple[bytes, v3.Keys | None]]:
    """snmpd's real replies to walks at each security level (noAuthNoPriv, authNoPriv,
    authPriv with DES and AES), each with the keys that open it."""
    recorded: list[tuple[bytes, v3.Keys | None]] = []

    async def go() -> None:
        for auth, priv in (("none", "none"), ("md5", "none"), ("sha", "des"), ("sha256", "aes128")):
            relay, relay_port = await start_relay(port, lambda r: r)
            engine = v3.UsmEngine()
            c = client(relay_port, v3_config(auth, priv), engine)
            await walk_columns(c, [IF_DESCR, IF_IN_OCTETS], max_repetitions=3,
                               scalars=[SYS_UPTIME[:-1]])
            c.close()
            relay.close()
            keys = engine.keys(c.user) if c.user.flags else None
            recorded.extend((reply, keys) for reply in relay.replies[1:])  # not discovery's

    asyncio.run(go())
    return recorded


def open_reply(data: bytes, keys: v3.Keys | None) -> ber.Response:
    message = v3.decode_message(data)
    if message.flags & v3.AUTH_FLAG:
        if keys is None:
            raise v3.WrongDigest("authenticated, no keys")
        v3.verify(message, keys)
    return v3.scoped_pdu(message, keys)


def test_fuzzed_v3_replies_only_ever_raise_ber_error(matrix_snmpd):
    """A seeded mutator over snmpd's real v3 replies (bounded: 20,000 cases, about a second):
    decoding, HMAC check and decryption return a PDU of known value types or raise BerError
    (WrongDigest, CannotDecrypt included), nothing else."""
    originals = recorded_v3_replies(matrix_snmpd)
    assert len({keys.priv.cipher if keys and keys.priv else "-" for _, keys in originals}) == 3
    for data, keys in originals:
        assert open_reply(data, keys).varbinds
    rng = random.Random(20261203)
    opened = 0
    for _ in range(20_000):
        data, keys = rng.choice(originals)
        try:
            pdu = open_reply(mutate(data, rng), keys)
        except ber.BerError:
            continue
        opened += 1
        check_values(pdu.varbinds)
    assert opened  # unauthenticated replies still decode after some mutations


def report_instead(reply: bytes, oid: tuple[int, ...], engine_id: bytes | None = None) -> bytes:
    """snmpd's reply to a request turned into an unauthenticated Report of `oid` (with another
    engine ID if given); discovery's reply, with no user name, passes as it is."""
    message = v3.decode_message(reply)
    if not message.user_name:
        return reply
    report = ber.encode_pdu(ber.REPORT, 0, [oid])
    return v3.encode_message(message.msg_id, 0, engine_id or message.engine_id, message.boots,
                             message.engine_time, message.user_name, None,
                             v3.encode_scoped_pdu(b"", b"", report))


def unknown_engine_report(reply: bytes, rng: random.Random) -> bytes:
    """What a relay that never knows the engine ID answers: a Report of
    usmStatsUnknownEngineIDs naming a new engine ID each time."""
    return report_instead(reply, (*v3.USM_STATS, 4, 0), rng.randbytes(12))


@pytest.mark.parametrize(("oid", "kind", "words"), [
    ((*v3.USM_STATS, 6, 0), "auth", "cannot decrypt the request of user 'u-sha-aes128'"),
    ((*v3.USM_STATS, 5, 0), "auth", "authentication failed (wrong auth key or auth protocol)"),
    ((*v3.USM_STATS, 2, 0), "engine", "not in time window"),
    ((1, 3, 6, 1, 6, 3, 12, 1, 5, 0), "error", "has no SNMPv3 context ''"),
    ((1, 3, 6, 1, 6, 3, 11, 2, 1, 3, 0), "protocol", "answered with a report: unknownPDUHandler"),
    ((1, 3, 6, 1, 4, 1, 9, 9, 9), "protocol", "answered with a report: 1.3.6.1.4.1.9.9.9"),
])
def test_reports_of_an_agent_say_what_went_wrong(matrix_snmpd, oid, kind, words):
    """Each Report an agent (or a relay) may answer with, in words; an unauthenticated
    notInTimeWindow to an authenticated request is not taken as a clock to follow."""
    async def go() -> SnmpError:
        relay, port = await start_relay(matrix_snmpd, lambda r: report_instead(r, oid))
        c = client(port, v3_config("sha", "aes128"), timeout=0.5, retries=0)
        try:
            with pytest.raises(SnmpError) as info:
                await c.get([SYS_UPTIME])
        finally:
            c.close()
            relay.close()
        return info.value

    error = asyncio.run(go())
    assert error.kind == kind and words in error.message, error.message


def test_a_relay_that_keeps_reporting_unknown_engine_ids(matrix_snmpd):
    """Every request answered by an unknownEngineID report with a new engine ID: each poll
    rediscovers once, then says so in words; the device's engine keeps the keys of a few
    engine IDs, not of every one it was told (polls go on for months)."""
    rng = random.Random(20261204)
    config = v3_config("sha256", "aes128")
    engine = v3.UsmEngine()

    async def go() -> list[SnmpError]:
        relay, port = await start_relay(matrix_snmpd, lambda r: unknown_engine_report(r, rng))
        errors = []
        try:
            for _ in range(3 * v3.MAX_KEPT_KEYS):
                c = client(port, config, engine, timeout=0.5, retries=0)
                try:
                    with pytest.raises(SnmpError) as info:
                        await c.get([SYS_UPTIME])
                    errors.append(info.value)
                finally:
                    c.close()
        finally:
            relay.close()
        return errors

    errors = asyncio.run(go())
    for error in errors:
        assert error.kind == "engine", error.message
        assert "reported an unknown engine ID" in error.message, error.message
    assert len(engine._keys) <= v3.MAX_KEPT_KEYS
