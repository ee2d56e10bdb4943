"""Service checks against real servers on 127.0.0.1 port 0 (see tests/service_servers.py)."""

from __future__ import annotations

import asyncio
import os
import re
import socket
from pathlib import Path

import pytest

from collectors import services
from collectors.services_exec import parse_perfdata, parse_ping, split_plugin_output
from monitor.config import ConfigError, ServiceCheck, load_config
from monitor.model import Kind, State, Thresholds
from tests import daemons
from tests import service_servers as srv
from tests.conftest import ROOT
from tests.smtp_helpers import Recorder, start_smtp

PLUGINS = Path("/usr/lib/nagios/plugins")
# The loopback addresses every kind is tested on (::1 where this machine has it).
LOOPBACKS = ["127.0.0.1", *(["::1"] if daemons.ipv6_loopback() else [])]


def svc(kind: str, port: int | None = None, name: str = "svc", **kw) -> ServiceCheck:
    host = kw.pop("host", "" if kind == "plugin" else "127.0.0.1")
    check = ServiceCheck(name=name, kind=kind, host=host, port=port, timeout=kw.pop("timeout", 5.0), **kw)
    check.validate()
    return check


async def run(*checks: ServiceCheck, concurrency: int = 64):
    collector = services.ServicesCollector("services", 60, list(checks), concurrency)
    try:
        return (await collector.collect()).checks
    finally:
        collector.close()  # no ping series left running for a next cycle


async def one(check: ServiceCheck):
    (result,) = await run(check)
    return result


def metric(result, name: str):
    return {m.metric: m for m in result.measurements}[name]


@pytest.fixture
async def servers():
    started = []

    async def start(handler, tls=None, host="127.0.0.1"):
        server, port = await srv.serve(handler, tls, host)
        started.append(server)
        return port

    yield start
    for server in started:
        server.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    return {
        "valid": srv.make_cert(d, days=90, stem="valid"),
        "soon": srv.make_cert(d, days=5, stem="soon"),
        "expired": srv.make_cert(d, expired=True, stem="expired"),
        "wrongname": srv.make_cert(d, names=("other.example.org",), stem="wrongname"),
    }


# -- tcp and line protocols ---------------------------------------------------------------------


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_tcp_connect_send_expect_and_closed_port(servers, host):
    port = await servers(srv.banner("hello there"), host=host)
    ok, expect, missing, closed = await run(
        svc("tcp", port, "plain", host=host),
        svc("tcp", port, "expect", host=host, send="hi\r\n", expect="hello"),
        svc("tcp", port, "missing", host=host, expect="welcome", timeout=1),
        svc("tcp", srv.closed_port(host), "closed", host=host))
    assert ok.state == State.OK and "accepted the connection" in ok.message
    assert ok.message.startswith(f"TCP {srv.hostport(host, port)} accepted the connection in ")
    assert ok.target == host and ok.check == "plain"
    assert metric(ok, "response_seconds").value >= 0
    assert metric(ok, "response_seconds").instance == "plain"
    assert expect.state == State.OK and "'hello there'" in expect.message
    assert missing.state == State.CRITICAL and "welcome" in missing.message
    assert closed.state == State.CRITICAL and "refused the connection" in closed.message
    assert metric(closed, "response_seconds").value is None


async def test_plain_tcp_by_name_refused_partial_banner_and_cancelled_cycle(servers):
    port = await servers(srv.banner("220 mail ready"))
    stall = await servers(srv.stall)
    closed = srv.closed_port()
    by_name, refused, partial, slow = await run(
        svc("tcp", port, "by-name", host="localhost", expect="220"),
        svc("tcp", closed, "refused", expect="220"),
        svc("tcp", port, "partial", expect="ESMTP", timeout=0.3),
        svc("tcp", port, "slow", expect="220", critical=0.0))
    assert by_name.state == State.OK, by_name.message
    assert by_name.message.startswith(f"TCP localhost:{port} answered '220 mail ready' in ")
    assert refused.state == State.CRITICAL
    assert refused.message.startswith(f"TCP 127.0.0.1:{closed} refused the connection after ")
    assert partial.state == State.CRITICAL
    assert partial.message == (f"TCP 127.0.0.1:{port} sent no 'ESMTP' within 0.30 s "
                               "(got '220 mail ready')")
    assert metric(partial, "response_seconds").value is None
    assert slow.state == State.CRITICAL and slow.message.endswith(" (slower than 0.000 s)")

    # A cycle cancelled midway (the agent's run cut-off) leaves no socket behind.
    async def cancelled() -> None:
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.1):
                await run(svc("tcp", stall, "a", expect="x"), svc("smtp", stall, "b"))
        for _ in range(5):
            await asyncio.sleep(0)

    await cancelled()
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(3):
        await cancelled()
    assert len(os.listdir("/proc/self/fd")) <= before


async def test_stalling_server_costs_only_its_timeout(servers):
    stall = await servers(srv.stall)
    good = await servers(srv.banner("SSH-2.0-OpenSSH_9.2p1 Debian-2"))
    # Six stalls with concurrency 4 and a 0.3 s timeout: the cycle ends and the good one is OK.
    checks = [svc("smtp", stall, f"stall{i}", timeout=0.3) for i in range(6)]
    results = await run(*checks, svc("ssh", good, "ssh"), concurrency=4)
    by = {r.check: r for r in results}
    assert by["ssh"].state == State.OK
    assert by["ssh"].message.startswith("SSH 127.0.0.1:")
    assert "SSH-2.0-OpenSSH_9.2p1 Debian-2" in by["ssh"].message
    for i in range(6):
        assert by[f"stall{i}"].state == State.CRITICAL
        assert "accepted the connection but sent no greeting within 0.30 s" in by[f"stall{i}"].message


async def test_smtp_refusal_message(servers):
    port = await servers(srv.banner("554 5.7.1 no service for you\x1b[31m"))
    result = await one(svc("smtp", port, "mail"))
    assert result.state == State.CRITICAL
    assert result.message.startswith(f"SMTP 127.0.0.1:{port} answered 554 instead of 220 in ")
    assert "\x1b" not in result.message


async def test_smtp_starttls_against_aiosmtpd(certs):
    server, port = await start_smtp(Recorder(), cert=certs["valid"])
    try:
        result = await one(svc("smtp", port, "mail", starttls=True, ca_file=certs["valid"][0]))
        untrusted = await one(svc("smtp", port, "mail2", starttls=True))
    finally:
        server.close()
    assert result.state == State.OK, result.message
    assert "answered 220 and STARTTLS" in result.message
    assert "certificate valid for 90 days" in result.message
    assert 89 < metric(result, "cert_expiry_days").value <= 90
    # Same server without our CA: the chain is not trusted, yet the expiry is still measured.
    assert untrusted.state == State.CRITICAL
    assert "not trusted" in untrusted.message and "self-signed" in untrusted.message
    assert 89 < metric(untrusted, "cert_expiry_days").value <= 90


async def test_smtp_implicit_tls(certs):
    server, port = await start_smtp(Recorder(), cert=certs["valid"], implicit_tls=True)
    try:
        result = await one(svc("smtp", port, "smtps", tls=True, ca_file=certs["valid"][0]))
    finally:
        server.close()
    assert result.state == State.OK, result.message
    assert result.message.startswith("SMTPS 127.0.0.1:")


async def test_imap_pop3_ftp_ssh(servers, certs):
    ctx = srv.server_context(certs["valid"])
    ca = certs["valid"][0]
    imap = await servers(srv.imap(ctx))
    pop = await servers(srv.pop3(ctx))
    imaps = await servers(srv.imap(), tls=ctx)
    ftp = await servers(srv.banner("220-Welcome", "220 ProFTPD ready"))
    ftp_bad = await servers(srv.banner("421 Too many connections"))
    ssh1 = await servers(srv.banner("SSH-1.5-old"))
    results = await run(
        svc("imap", imap, "imap"), svc("imap", imap, "imap-tls", starttls=True, ca_file=ca),
        svc("pop3", pop, "pop3-tls", starttls=True, ca_file=ca),
        svc("imap", imaps, "imaps", tls=True, ca_file=ca),
        svc("ftp", ftp, "ftp"), svc("ftp", ftp_bad, "ftp-bad"), svc("ssh", ssh1, "ssh1"),
        svc("pop3", imap, "wrong-protocol"))
    by = {r.check: r for r in results}
    for name in ("imap", "imap-tls", "pop3-tls", "imaps", "ftp"):
        assert by[name].state == State.OK, by[name].message
    assert "* OK and STARTTLS" in by["imap-tls"].message
    assert "+OK and STLS" in by["pop3-tls"].message
    assert "cert_expiry_days" in {m.metric for m in by["imaps"].measurements}
    assert by["ftp-bad"].state == State.CRITICAL and "421 instead of 220" in by["ftp-bad"].message
    assert by["ssh1"].state == State.CRITICAL and "not SSH 2.0" in by["ssh1"].message
    assert by["wrong-protocol"].state == State.CRITICAL
    assert "instead of +OK" in by["wrong-protocol"].message


# -- TLS certificates ---------------------------------------------------------------------------


async def test_certificates(servers, certs):
    ports = {name: await servers(srv.http, tls=srv.server_context(pair)) for name, pair in certs.items()}

    def https(name: str, **kw) -> ServiceCheck:
        return svc("https", ports[name], name, ca_file=certs[name][0], **kw)

    valid, soon, expired, wrong, soon_warn = await run(
        https("valid"), https("soon"), https("expired"), https("wrongname"),
        svc("https", ports["soon"], "soon-warn", ca_file=certs["soon"][0], cert_critical_days=3))
    assert valid.state == State.OK and "certificate valid for 90 days" in valid.message
    assert soon.state == State.CRITICAL and "certificate expires in 5.0 days" in soon.message
    assert soon_warn.state == State.WARNING and "expires in 5 days" in soon_warn.message
    assert 4 < metric(soon, "cert_expiry_days").value <= 5
    assert expired.state == State.CRITICAL and "certificate expired 3 days ago" in expired.message
    assert metric(expired, "cert_expiry_days").value < 0
    assert wrong.state == State.CRITICAL
    assert "certificate is not valid for 127.0.0.1" in wrong.message


async def test_certificate_after_a_redirect_is_judged_by_the_site_it_names(servers, tmp_path):
    pair = srv.make_cert(tmp_path, names=("localhost",), stem="localhost-only")
    https_port = await servers(srv.http, tls=srv.server_context(pair))
    http_port = await servers(srv.http)
    result = await one(svc("http", http_port, "moved", path=f"/to-https/{https_port}",
                           follow_redirects=1, expect_text="final page", ca_file=pair[0]))
    assert result.state == State.OK, result.message
    assert "after 1 redirect" in result.message and "certificate valid for 90 days" in result.message


async def test_an_intermediate_expiring_first_is_the_news(servers, tmp_path):
    short = srv.make_chain(tmp_path, intermediate_days=10, stem="short")
    long = srv.make_chain(tmp_path, intermediate_days=400, stem="long")
    short_port = await servers(srv.http, tls=srv.server_context(short[:2]))
    long_port = await servers(srv.http, tls=srv.server_context(long[:2]))
    short_chain, long_chain = await run(svc("https", short_port, "short", ca_file=short[2]),
                                        svc("https", long_port, "long", ca_file=long[2]))
    assert short_chain.state == State.WARNING, short_chain.message
    assert "chain certificate 'Test Intermediate CA' expires in 10 days" in short_chain.message
    assert 9 < metric(short_chain, "cert_expiry_days").value <= 10  # the earliest of the chain
    assert long_chain.state == State.OK, long_chain.message
    assert "certificate valid for 90 days" in long_chain.message
    assert 89 < metric(long_chain, "cert_expiry_days").value <= 90


# -- HTTP ---------------------------------------------------------------------------------------


async def test_http(servers):
    port = await servers(srv.http)
    results = await run(
        svc("http", port, "home", expect_text="Hello world"),
        svc("http", port, "text-missing", expect_text="Goodbye"),
        svc("http", port, "redirect", path="/redirect", follow_redirects=2, expect_text="final page"),
        svc("http", port, "no-follow", path="/redirect"),
        svc("http", port, "redirect-ok", path="/redirect", expect_status=[301, 302]),
        svc("http", port, "absolute", path="/absolute", follow_redirects=1),
        svc("http", port, "loop", path="/loop", follow_redirects=3),
        svc("http", port, "error", path="/error"),
        svc("http", port, "vhost", path="/vhost", vhost="www.example.net", expect_text="www.example.net"),
        svc("http", port, "chunked", path="/chunked", expect_text="Hello chunk"),
        svc("http", port, "head", method="HEAD"),
        svc("http", port, "unsized", path="/unsized", expect_text="second part"),
        svc("http", name="url", url=f"http://127.0.0.1:{port}/final", expect_text="final"),
        svc("http", port, "spaced", path="/spaced", follow_redirects=1, expect_text="quoted path"),
        svc("http", port, "slow", warning=0.0))
    by = {r.check: r for r in results}
    for name in ("home", "redirect", "redirect-ok", "absolute", "vhost", "chunked", "head", "url",
                 "unsized", "spaced"):
        assert by[name].state == State.OK, (name, by[name].message)
    assert by["home"].message.startswith(f"HTTP 127.0.0.1:{port}/ answered 200 OK in ")
    assert "after 1 redirect" in by["redirect"].message
    assert by["text-missing"].state == State.CRITICAL and "without the text 'Goodbye'" in by[
        "text-missing"].message
    assert by["no-follow"].state == State.CRITICAL
    assert "answered 302 Found instead of 200 (to /final)" in by["no-follow"].message
    assert by["loop"].state == State.CRITICAL and "after 3 redirects" in by["loop"].message
    assert by["error"].state == State.CRITICAL
    assert "answered 503 Service Unavailable instead of 200" in by["error"].message
    assert by["slow"].state == State.WARNING and "slower than" in by["slow"].message


# -- DNS ----------------------------------------------------------------------------------------


async def test_dns():
    transport, port = await srv.serve_dns()
    dead = srv.closed_port()
    try:
        results = await run(
            svc("dns", port, "www", query="www.example.net", server="127.0.0.1",
                expect_answers=["192.0.2.10"]),
            svc("dns", port, "mx", query="example.net", query_type="mx", server="127.0.0.1",
                expect_answers=["10 mail.example.net"]),
            svc("dns", port, "wrong", query="www.example.net", server="127.0.0.1",
                expect_answers=["192.0.2.99"]),
            svc("dns", port, "nx", query="nope.example.net", server="127.0.0.1"),
            svc("dns", port, "nx-ok", query="nope.example.net", server="127.0.0.1",
                expect_rcode="nxdomain"),
            svc("dns", dead, "two", query="www.example.net", servers=["127.0.0.1", "127.0.0.2"],
                timeout=0.5))
    finally:
        transport.close()
    by: dict[str, list] = {}
    for r in results:
        by.setdefault(r.check, []).append(r)
    assert by["www"][0].state == State.OK, by["www"][0].message
    assert "192.0.2.10, 192.0.2.11" in by["www"][0].message
    assert by["mx"][0].state == State.OK, by["mx"][0].message
    assert by["wrong"][0].state == State.CRITICAL and "instead of 192.0.2.99" in by["wrong"][0].message
    assert by["nx"][0].state == State.CRITICAL
    assert "answered NXDOMAIN instead of NOERROR" in by["nx"][0].message
    assert by["nx-ok"][0].state == State.OK
    # Primary and secondary are each a target of their own.
    assert sorted(r.target for r in by["two"]) == ["127.0.0.1", "127.0.0.2"]
    assert all(r.state == State.CRITICAL for r in by["two"])


async def test_dns_truncated_answer_is_asked_again_over_tcp():
    server, port = await srv.serve_dns(tcp=True)
    udp_only, udp_port = await srv.serve_dns()
    try:
        big, no_tcp = await run(
            svc("dns", port, "big", query="big.example.net", query_type="TXT", server="127.0.0.1",
                expect_answers=['"29' + "x" * 58 + '"']),
            svc("dns", udp_port, "no-tcp", query="big.example.net", query_type="TXT",
                server="127.0.0.1", timeout=1))
    finally:
        server.close()
        udp_only.close()
    assert big.state == State.OK, big.message
    assert "(over TCP: the UDP answer was truncated)" in big.message
    assert no_tcp.state == State.CRITICAL
    assert "refused the connection" in no_tcp.message, no_tcp.message



# -- ping and plugins ---------------------------------------------------------------------------

PING_OUTPUT = """PING 192.0.2.1 (192.0.2.1) 56(84) bytes of data.

--- 192.0.2.1 ping statistics ---
5 packets transmitted, 4 received, 20% packet loss, time 804ms
rtt min/avg/max/mdev = 0.031/0.052/0.090/0.020 ms
"""


def test_parse_ping_and_perfdata():
    loss, rtt = parse_ping(PING_OUTPUT)
    assert loss == 20.0 and rtt == pytest.approx((0.031e-3, 0.052e-3, 0.090e-3))
    text, perf = split_plugin_output("DISK OK - free | '/var log'=2GB;3;4;0;10 time=5ms\n"
                                     "long text | load1=0.5;1;2 hits=12c size=U")
    assert text == "DISK OK - free"
    metrics = parse_perfdata(perf).metrics
    assert metrics["var_log_bytes"] == (2 * 1024**3, "B")
    assert metrics["time_seconds"] == (pytest.approx(0.005), "s")
    assert metrics["load1"] == (0.5, "")
    assert metrics["hits"] == (12, "c")
    assert metrics["size"] == (None, "")


async def test_ping_localhost_or_clear_refusal(tmp_path):
    result = await one(svc("ping", name="lo", count=2, timeout=5))
    if result.state == State.OK:
        assert {"loss_percent", "rtt_avg_seconds", "response_seconds"} <= {
            m.metric for m in result.measurements}
        assert "0% loss" in result.message
    else:  # a sandbox without ICMP: the message says how to allow it
        assert result.state == State.UNKNOWN and "ICMP" in result.message
    # The refusal as iputils prints it without the capability, replayed by a stand-in.
    fake = tmp_path / "ping"
    fake.write_text("#!/bin/sh\necho 'ping: socket: Operation not permitted' >&2\nexit 2\n")
    fake.chmod(0o755)
    denied = await one(svc("ping", name="denied", ping_command=fake))
    assert denied.state == State.UNKNOWN
    assert "may not open ICMP sockets" in denied.message and "ping_group_range" in denied.message


@pytest.mark.skipif(not (PLUGINS / "check_tcp").exists(), reason="monitoring-plugins-basic missing")
async def test_nagios_plugins(servers):
    port = await servers(srv.banner("220 ready"))
    web = await servers(srv.http)
    closed = srv.closed_port()
    six = [await servers(srv.banner("220 ready"), host="::1")] if "::1" in LOOPBACKS else []
    *tcp_six, tcp, dead, http, hung, flood = await run(
        *(svc("plugin", name="check_tcp6", command=[str(PLUGINS / "check_tcp"), "-6", "-H", "::1",
                                                    "-p", str(p)]) for p in six),
        svc("plugin", name="check_tcp", command=[str(PLUGINS / "check_tcp"), "-H", "127.0.0.1",
                                                   "-p", str(port)]),
        svc("plugin", name="check_tcp_dead", command=[str(PLUGINS / "check_tcp"), "-H",
                                                        "127.0.0.1", "-p", str(closed)]),
        svc("plugin", name="check_http", command=[str(PLUGINS / "check_http"), "-H", "127.0.0.1",
                                                    "-p", str(web), "-s", "Hello world"]),
        svc("plugin", name="hung", command=["/bin/sleep", "30"], timeout=0.3),
        # Endless output: read up to its bound, then the timeout; the kill must not hang on the
        # pipe the reader stopped draining.
        svc("plugin", name="flood", command=["/usr/bin/yes", "OK | x=1"], timeout=0.5))
    for result in (tcp, *tcp_six):
        assert result.state == State.OK and result.message.startswith("TCP OK"), result.message
    assert tcp.target == "localhost"
    assert metric(tcp, "time_seconds").unit == "s"
    assert dead.state == State.CRITICAL and "refused" in dead.message.lower()
    assert http.state == State.OK, http.message
    assert metric(http, "size_bytes").value > 0
    assert metric(http, "time_seconds").kind == Kind.GAUGE
    assert hung.state == State.CRITICAL and "killed" in hung.message
    assert flood.state == State.CRITICAL and "killed" in flood.message


# -- robustness, config and wiring --------------------------------------------------------------


async def test_file_descriptors_stay_flat(servers, certs):
    stall = await servers(srv.stall)
    web = await servers(srv.http, tls=srv.server_context(certs["expired"]))
    checks = [svc("tcp", stall, "stall", expect="x", timeout=0.2),
              svc("tcp", srv.closed_port(), "closed"),
              svc("https", web, "expired", ca_file=certs["expired"][0]),
              svc("plugin", name="hung", command=["/bin/sleep", "30"], timeout=0.2)]
    await run(*checks)
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        await run(*checks)
    await asyncio.sleep(0)
    assert len(os.listdir("/proc/self/fd")) <= before


def test_config_errors(write_config):
    def error(body: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(write_config(f'[[services]]\nname = "x"\n{body}'))
        return str(info.value)

    assert 'needs port = NUMBER' in error('kind = "tcp"\nhost = "a"\n')
    assert "needs query" in error('kind = "dns"\nserver = "127.0.0.1"\n')
    assert "an argv list" in error('kind = "plugin"\n')
    assert "absolute path" in error('kind = "plugin"\ncommand = ["check_tcp"]\n')
    assert "only smtp, imap and pop3" in error('kind = "ssh"\nhost = "a"\nstarttls = true\n')
    assert "choose one" in error('kind = "smtp"\nhost = "a"\ntls = true\nstarttls = true\n')
    assert "only http/https" in error('kind = "tcp"\nhost = "a"\nport = 1\nexpect_text = "x"\n')
    assert "must not be above critical" in error('kind = "ssh"\nhost = "a"\nwarning = "2s"\n'
                                                 'critical = "1s"\n')
    assert "longer than count x ping_interval" in error('kind = "ping"\nhost = "a"\ncount = 10\n'
                                                         'timeout = "1s"\n')
    assert "record type" in error('kind = "dns"\nserver = "a"\nquery = "x"\nquery_type = "BOGUS"\n')
    assert "expected a URL" in error('kind = "http"\nurl = "ftp://x/"\n')
    assert "services[0].expect_status[0]" in error('kind = "http"\nhost = "a"\nexpect_status = [99]\n')
    # A host reaches ping's argv: "-f" would be an option (flood ping as root), not a host.
    assert "services[0].host: expected a host name or IP address" in error('kind = "ping"\nhost = "-f"\n')
    assert "services[0].host: expected a host name" in error('kind = "ssh"\nhost = "a b"\n')
    assert "services[0].servers: expected a host name" in error(
        'kind = "dns"\nquery = "x"\nservers = ["127.0.0.1", "-x"]\n')


def test_untrusted_text_is_one_safe_line():
    from collectors.services_base import clean

    assert clean(b"220 hi\r\n\x1b[31mred\x00") == "220 hi [31mred"
    text = clean("SSH-2.0-x\u202eevil\u2028next\u200bzero\x07")
    assert not any(c in text for c in "\u202e\u2028\u200b\x07\r\n"), repr(text)
    assert len(clean("x" * 500)) <= 80


async def test_ipv6_loopback_and_a_name_with_several_addresses():
    async def greet(reader, writer):
        writer.write(b"SSH-2.0-six\r\n")
        await writer.drain()
        await reader.read(100)
        writer.close()

    try:
        server = await asyncio.start_server(greet, "::1", 0)
    except OSError:
        pytest.skip("no IPv6 loopback here")
    try:
        port = server.sockets[0].getsockname()[1]
        result = await one(svc("ssh", port, host="::1"))
        assert result.state == State.OK, result.message
        assert result.message.startswith(f"SSH [::1]:{port} answered SSH-2.0-six")
        # Each address of a name is tried in turn (127.0.0.1 refuses, ::1 answers).
        if re.search(r"^::1\s.*\blocalhost\b", Path("/etc/hosts").read_text(), re.M):
            by_name = await one(svc("ssh", port, host="localhost"))
            assert by_name.state == State.OK, by_name.message
    finally:
        server.close()
        await server.wait_closed()


def own_resolver(tmp_path: Path, hosts: str, nameserver: str) -> list[str] | None:
    """argv that runs a command with its own /etc/hosts and resolv.conf (bound over the real
    ones in a mount namespace of its own: the machine's stay as they are); None where this
    machine cannot do that."""
    import shutil
    import subprocess

    (tmp_path / "hosts").write_text(hosts)
    # One attempt of 3 s: the lookup outlives the check's timeout, not the test.
    (tmp_path / "resolv.conf").write_text(f"nameserver {nameserver}\noptions timeout:3 attempts:1\n")
    script = (f'mount --bind "{tmp_path}/hosts" /etc/hosts && '
              f'mount --bind "{tmp_path}/resolv.conf" /etc/resolv.conf && exec "$@"')
    argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh"]
    if shutil.which("unshare") is None or os.geteuid() != 0 or subprocess.run(
            [*argv, "grep", "-q", "own.test", "/etc/hosts"]).returncode != 0:
        return None
    return argv


async def test_names_through_the_system_resolver(tmp_path, write_config, servers):
    """The system's resolver as a user has it, in `monitor services` on the agent's loop: a
    name with an IPv4 and an IPv6 address (each tried in turn, whichever listens), and a DNS
    server that takes the query and never answers: every kind that looks a name up says it
    was the name lookup that stalled, not the server ("did not accept the connection"
    before), and five stalled lookups do not hold the lookups of other names (libuv's four
    lookup threads did)."""
    from tests.conftest import MONITOR

    if "::1" not in LOOPBACKS:
        pytest.skip("no IPv6 loopback here")
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.53.53.53", 53))  # (a resolv.conf server has no port: 53; an address no one uses)
    try:
        argv = own_resolver(tmp_path, "127.0.0.1 localhost\n127.0.0.1 both.own.test\n"
                                      "::1 both.own.test\n", "127.53.53.53")
        if argv is None:
            pytest.skip("no mount namespace for a resolver of our own here")
        four = await servers(srv.banner("220 v4"), host="127.0.0.1")
        six = await servers(srv.banner("220 v6"), host="::1")
        nowhere = srv.closed_port("::1")
        stalled = "mail.stalled.test"
        table = """
            [[services]]
            name = "{name}"
            kind = "{kind}"
            {keys}
            timeout = "1s"
        """
        checks = {
            "on-v4": f'host = "both.own.test"\nport = {four}\nexpect = "220"', "on-v6":
            f'host = "both.own.test"\nport = {six}\nexpect = "220"', "nowhere":
            f'host = "both.own.test"\nport = {nowhere}', "smtp": f'host = "{stalled}"',
            "http": f'host = "{stalled}"', "dns": f'server = "{stalled}"\nquery = "example.net"',
            "pop3": f'host = "{stalled}"',
            "roundtrip": f'host = "{stalled}"\ntls = true\nusername = "p@example.net"\n'
                         f'password_file = "{tmp_path / "secret"}"'}
        (tmp_path / "secret").write_text("secret\n")
        (tmp_path / "secret").chmod(0o600)
        kinds = {"on-v4": "tcp", "on-v6": "tcp", "nowhere": "tcp"}
        config = write_config("".join(table.format(name=name, kind=kinds.get(name, name), keys=keys)
                                      for name, keys in checks.items()))
        proc = await asyncio.create_subprocess_exec(
            *argv, *MONITOR, "--config", str(config), "services", stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        out, err = await proc.communicate()
    finally:
        silent.close()
    # "CRITICAL smtp: SMTP mail.stalled.test:25: ..." -> {"smtp": "SMTP mail..."}
    said = dict(line.split(None, 1)[1].split(": ", 1) for line in out.decode().splitlines())
    assert set(said) == set(checks), (out, err)
    assert said["on-v4"].startswith(f"TCP both.own.test:{four} answered '220 v4'"), said
    assert said["on-v6"].startswith(f"TCP both.own.test:{six} answered '220 v6'"), said
    assert said["nowhere"].startswith(f"TCP both.own.test:{nowhere} refused the connection"), said
    lookup = f"name lookup of {stalled} timed out after 1.00 s"
    assert said["smtp"] == f"SMTP {stalled}:25: {lookup}", said
    assert said["http"] == f"HTTP {stalled}:80: {lookup}", said
    assert said["dns"] == f"DNS {stalled}:53: {lookup}", said
    assert said["pop3"] == f"POP3 {stalled}:110: {lookup}", said
    assert said["roundtrip"] == f"MAIL ROUND TRIP {stalled}:465: {lookup}", said


def test_defaults_and_grouping(write_config):
    config = load_config(write_config('''
        [agent]
        interval = "1m"
        data_dir = "data"
        [[services]]
        name = "smtps"
        kind = "smtp"
        host = "mail.example.net"
        tls = true
        [[services]]
        name = "web"
        kind = "http"
        url = "https://www.example.net/status?x=1"
        interval = "5m"
        [[services]]
        name = "ns"
        kind = "dns"
        query = "example.net"
        servers = ["192.0.2.53", "198.51.100.53"]
    '''))
    smtps, web, ns = config.services
    assert smtps.port == 465 and web.port == 443 and web.tls and web.path == "/status?x=1"
    assert web.host == "www.example.net" and web.expect_status == [200]
    assert ns.host == "192.0.2.53" and ns.port == 53
    assert (smtps.cert_warning_days, smtps.cert_critical_days) == (21, 7)
    collectors = services.build(config)
    assert [(c.name, c.interval) for c in collectors] == [("services", 60), ("services-5m", 300)]


async def test_default_config_demo_down():
    config = load_config(ROOT / "config.toml")
    config.services = [s for s in config.services if s.name == "demo-down"]
    (collector,) = services.build(config)
    (result,) = (await collector.collect()).checks
    assert (result.target, result.check, result.state) == ("127.0.0.1", "demo-down", State.CRITICAL)
    assert "refused the connection" in result.message


def test_default_config_documents_every_service_key():
    from dataclasses import fields

    text = (ROOT / "config.toml").read_text()
    for f in fields(ServiceCheck):
        assert f"# {f.name} =" in text or f"\n{f.name} =" in text, f.name


async def test_results_land_in_rrd(tmp_path, servers, certs):
    from monitor.store import RrdStore

    port = await servers(srv.http, tls=srv.server_context(certs["valid"]))
    batch = await services.ServicesCollector("services", 60, [
        svc("https", port, "web", ca_file=certs["valid"][0]),
        svc("tcp", srv.closed_port(), "down")]).collect()
    store = RrdStore(tmp_path / "rrd")
    report = store.write(batch.measurements, 60)
    assert not report.errors
    series = {(s.target, s.instance): set(s.metrics) for s in store.series()}
    assert series[("127.0.0.1", "web")] == {"response_seconds", "cert_expiry_days", "dns_seconds",
                                            "connect_seconds", "first_byte_seconds"}
    assert series[("127.0.0.1", "down")] == {"response_seconds"}
    store.close()


async def test_tls_to_plain_server_and_long_banner(servers):
    port = await servers(srv.banner("220 " + "x" * 5000 + "\r\x07"))
    plain = await servers(srv.banner("SSH-2.0-" + "y" * 5000))
    tls, ssh = await run(svc("smtp", port, "smtps", tls=True), svc("ssh", plain, "ssh"))
    assert tls.state == State.CRITICAL and "TLS handshake" in tls.message
    assert ssh.state == State.OK and len(ssh.message) < 200 and ssh.message.count("y") <= 60


async def test_cli_services_prints_results_and_exits_with_the_worst_state(write_config, servers):
    from tests.conftest import MONITOR

    port = await servers(srv.banner("SSH-2.0-cli"))
    path = write_config(f"""
        [[services]]
        name = "ssh"
        kind = "ssh"
        host = "127.0.0.1"
        port = {port}
        [[services]]
        name = "closed"
        kind = "tcp"
        host = "127.0.0.1"
        port = {srv.closed_port()}
    """)

    async def monitor(*args: str) -> tuple[int, str, str]:
        proc = await asyncio.create_subprocess_exec(
            *MONITOR, "--config", str(path), "services", *args,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await proc.communicate()
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    code, out, err = await monitor()
    lines = out.splitlines()
    assert code == 2, err
    assert lines[0].startswith(f"OK       ssh: SSH 127.0.0.1:{port} answered SSH-2.0-cli")
    assert lines[1].startswith("CRITICAL closed: TCP 127.0.0.1:")
    code, out, _ = await monitor("ssh")
    assert code == 0 and out.count("\n") == 1
    code, _, err = await monitor("nope")
    assert code == 2 and "no service named 'nope'" in err


# -- the message names the stage that failed (issue 14, defect 5) -------------------------------


async def test_stalled_tls_handshake_is_named(servers):
    async def starttls_then_stall(reader, writer):
        writer.write(b"* OK IMAP ready\r\n")
        await reader.readline()
        writer.write(b"m1 OK Begin TLS negotiation now.\r\n")
        await srv.stall(reader, writer)

    stalls = [(host, await servers(srv.stall, host=host)) for host in LOOPBACKS]
    imap = await servers(starttls_then_stall)
    login = {"username": "probe", "password": "secret", "rcpt_to": "probe@example.net"}
    results = await run(
        *(svc("smtp", port, f"smtps-{host}", host=host, tls=True, timeout=1) for host, port in stalls),
        *(svc("roundtrip", port, f"roundtrip-{host}", host=host, tls=True, timeout=1, **login)
          for host, port in stalls),
        svc("imap", imap, "imap", starttls=True, timeout=1))
    smtps, roundtrips, imap_starttls = results[:len(stalls)], results[len(stalls):-1], results[-1]
    for result, (host, port) in zip(smtps, stalls, strict=True):
        assert result.message == (f"SMTPS {srv.hostport(host, port)} accepted the connection but "
                                  "the TLS handshake did not complete within 1.00 s")
    for result, (host, port) in zip(roundtrips, stalls, strict=True):
        # (aiosmtplib makes the handshake and reads the greeting in one call)
        assert result.message == (f"MAIL ROUND TRIP {srv.hostport(host, port)} accepted the "
                                  "connection but the TLS handshake or the greeting after it did "
                                  "not complete within 1.00 s")
    assert imap_starttls.message == (f"IMAP 127.0.0.1:{imap} accepted the connection but the TLS "
                                     "handshake did not complete within 1.00 s")


async def test_server_name_is_the_sni_of_every_tls_kind(servers, certs):
    """Every kind that speaks TLS sends server_name as the SNI, on 127.0.0.1 and ::1: a server
    with a certificate per name chooses by it (the round trip's submission through aiosmtplib
    sent the host before)."""
    seen: dict[int, list[str | None]] = {}

    def recording(port_of: list[int]):
        context = srv.server_context(certs["valid"])
        context.sni_callback = lambda sslobj, name, ctx: seen[port_of[0]].append(name)
        return context

    async def greet(reader, writer):
        writer.write(b"nothing useful\r\n")
        await writer.drain()

    kinds = ("tcp", "smtp", "imap", "pop3", "ftp", "https", "roundtrip")
    checks = []
    for host in LOOPBACKS:
        for kind in kinds:
            port_of: list[int] = []
            port = await servers(greet, recording(port_of), host=host)
            port_of.append(port)
            seen[port] = []
            extra = ({"username": "probe", "password": "secret", "rcpt_to": "probe@example.net"}
                     if kind == "roundtrip" else {})
            checks.append(svc(kind, port, f"{kind}-{host}", host=host, tls=True, verify=False,
                              server_name="mail.example.net", timeout=2, **extra))
    await run(*checks)
    assert {check.name: seen[check.port] for check in checks} == {
        check.name: ["mail.example.net"] for check in checks}


async def test_smtp_check_against_real_sshd_is_judged_by_its_first_line(tmp_path):
    with daemons.sshd(tmp_path) as port:
        smtp = await run(*(svc("smtp", port, f"smtp-{h}", host=h, timeout=30) for h in LOOPBACKS))
        ssh = await run(*(svc("ssh", port, f"ssh-{h}", host=h) for h in LOOPBACKS))
    for result, host in zip(ssh, LOOPBACKS, strict=True):
        assert result.state == State.OK, result.message
        assert result.message.startswith(f"SSH {srv.hostport(host, port)} answered SSH-2.0-OpenSSH")
    for result, host in zip(smtp, LOOPBACKS, strict=True):
        # Judged on the line it sent, not after the 30 s timeout ("sent no greeting within").
        assert result.state == State.CRITICAL
        assert result.message.startswith(f"SMTP {srv.hostport(host, port)} answered 'SSH-2.0-OpenSSH")
        assert "instead of an SMTP greeting in " in result.message, result.message
        assert metric(result, "response_seconds").value is not None


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_a_5000_line_greeting_is_read_to_its_end_before_ehlo(servers, host):
    async def chatty_smtp(reader, writer):
        writer.write(b"".join(b"220-line %d of the greeting\r\n" % i for i in range(4999))
                     + b"220 mail.example.net ESMTP ready\r\n")
        while line := await reader.readline():
            if line.upper().startswith(b"EHLO"):
                writer.write(b"250-mail.example.net\r\n250 8BITMIME\r\n")
            elif line.upper().startswith(b"QUIT"):
                writer.write(b"221 bye\r\n")
            await writer.drain()

    async def endless_greeting(reader, writer):
        while True:
            writer.write(b"220-" + b"x" * 1000 + b"\r\n")
            await writer.drain()

    chatty = await servers(chatty_smtp, host=host)
    endless = await servers(endless_greeting, host=host)
    ok, bounded = await run(svc("smtp", chatty, "chatty", host=host),
                            svc("smtp", endless, "endless", host=host))
    assert ok.state == State.OK, ok.message
    assert ok.message.startswith(f"SMTP {srv.hostport(host, chatty)} answered 220 in ")
    assert bounded.state == State.CRITICAL
    assert bounded.message == f"SMTP {srv.hostport(host, endless)} sent a greeting longer than 1024 KiB"


async def test_refused_udp_dns_is_reported_at_once():
    closed = daemons.free_port(socket.SOCK_DGRAM)
    results = await run(svc("dns", closed, "dns", query="www.example.net", servers=LOOPBACKS, timeout=30))
    for result in results:
        # The kernel's ICMP port unreachable, not the 30 s timeout.
        assert result.state == State.CRITICAL
        assert result.message.startswith(f"DNS {srv.hostport(result.target, closed)} refused the "
                                         "query www.example.net A over UDP (port unreachable) in ")


async def test_dns_edns0_brings_a_large_answer_over_udp_from_real_unbound(tmp_path):
    # Eight 100-character TXT records: about 1,000 bytes, more than 512 and less than 1232.
    texts = [f"{i}" + "t" * 99 for i in range(8)]
    zone = ['local-zone: "example.test." static',
            *(f"local-data: 'big.example.test. 300 IN TXT \"{t}\"'" for t in texts),
            'local-data: "www.example.test. 300 IN AAAA 2001:db8::10"']
    with daemons.unbound(tmp_path, zone, tcp=False) as port:
        results = await run(
            svc("dns", port, "big", query="big.example.test", query_type="TXT", servers=LOOPBACKS,
                expect_answers=[f'"{t}"' for t in texts]),
            svc("dns", port, "www", query="www.example.test", query_type="AAAA", servers=LOOPBACKS,
                expect_answers=["2001:db8::10"]))
    assert len(results) == 2 * len(LOOPBACKS)
    for result in results:
        assert result.state == State.OK, result.message  # TCP/53 is closed: UDP carried it
        assert "over TCP" not in result.message


# -- plugin perfdata and environment (issue 14, defect 7) ---------------------------------------

GUIDELINES_EXAMPLE = """DISK OK - free space: / 3326 MB (56%); | /=2643MB;5948;5958;0;5968
/ 15272 MB (77%);
/boot 68 MB (69%);
/home 69357 MB (27%);
/var/log 819 MB (84%); | /boot=68MB;88;93;0;98
/home=69357MB;253404;253409;0;253414
/var/log=818MB;970;975;0;980
"""


def plugin_script(tmp_path: Path, name: str, body: str) -> Path:
    path = tmp_path / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


async def test_plugin_perfdata_per_the_guidelines(tmp_path):
    example = tmp_path / "example.txt"
    example.write_text(GUIDELINES_EXAMPLE)
    disk = plugin_script(tmp_path, "check_disk_example", f"cat {example}\n")
    odd = plugin_script(tmp_path, "check_odd", "echo \"OK | /home=1B /HOME=2B time=1,5s "
                        "'Temperatur Küche'=21,5;25;30 'a b'=1 a_b=2 rta=250ms;200:;@500:900;0;\"\n")
    disk_result, odd_result = await run(svc("plugin", name="disk", command=[str(disk)]),
                                        svc("plugin", name="odd", command=[str(odd)]))
    assert disk_result.state == State.OK and disk_result.message == "DISK OK - free space: / 3326 MB (56%);"
    got = {m.metric: m for m in disk_result.measurements}
    # The guidelines' own example: the perfdata of every line after the "|", /home and /var/log too.
    assert {name: m.value / 1024**2 for name, m in got.items() if name != "response_seconds"} == {
        "value_bytes": 2643, "boot_bytes": 68, "home_bytes": 69357, "var_log_bytes": 818}
    assert got["home_bytes"].thresholds == Thresholds(
        f"{253404 * 1024**2:g}", f"{253409 * 1024**2:g}", 0, 253414 * 1024**2)
    got = {m.metric: m for m in odd_result.measurements}
    assert got["home_bytes"].value == 1 and got["HOME_bytes"].value == 2  # case-distinct labels
    assert got["time_seconds"].value == 1.5  # a decimal comma
    assert got["Temperatur_Küche"].value == 21.5
    assert got["Temperatur_Küche"].thresholds == Thresholds("25", "30", None, None)
    assert got["a_b"].value == 1 and {m.value for n, m in got.items() if n.startswith("a_b_")} == {2}
    # Ranges and limits in the stored unit (ms -> s), as the plugin gave them otherwise.
    assert got["rta_seconds"].value == pytest.approx(0.25)
    assert got["rta_seconds"].thresholds == Thresholds("0.2:", "@0.5:0.9", 0, None)


async def test_hostile_perfdata_never_holds_the_loop(tmp_path):
    """60 KB of blanks or of quotes after the "|" (a plugin that pads, or quotes a peer): the
    perfdata is read in one pass. The old pattern tried every blank and every quote as a
    label's start and scanned on to the end from each: 55 s of CPU each on the event loop,
    beyond the test's time limit."""
    pads = plugin_script(tmp_path, "check_pads", "printf 'OK | a=1'; head -c 60000 /dev/zero | "
                         "tr '\\0' ' '; echo ' b=2'\n")
    quotes = plugin_script(tmp_path, "check_quotes", "printf 'OK | a=1 '; head -c 60000 /dev/zero "
                           "| tr '\\0' \"'\"; echo ' b=2'\n")
    padded, quoted = await run(svc("plugin", name="pads", command=[str(pads)], timeout=30),
                               svc("plugin", name="quotes", command=[str(quotes)], timeout=30))
    for result in (padded, quoted):
        assert result.state == State.OK, result.message
        assert metric(result, "a").value == 1 and metric(result, "b").value == 2


async def test_plugin_runs_in_a_minimal_c_locale_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MONITOR_TEST_SECRET", "hunter2")
    monkeypatch.setenv("LANG", "de_DE.UTF-8")
    show = plugin_script(tmp_path, "check_env", 'echo "OK LC_ALL=$LC_ALL LANG=$LANG '
                         'secret=${MONITOR_TEST_SECRET:-none} path=$PATH"\n')
    result = await one(svc("plugin", name="env", command=[str(show)]))
    assert result.message == ("OK LC_ALL=C LANG=C secret=none "
                              "path=/usr/local/bin:/usr/bin:/bin:/usr/local/sbin:/usr/sbin:/sbin")


async def test_plugin_data_sources_are_bounded_and_the_message_says_so(tmp_path):
    counter = tmp_path / "runs"
    counter.write_text("0")
    # Each run prints 30 labels no run printed before (a time stamp in the label, say).
    churn = plugin_script(tmp_path, "check_churn", f"""n=$(cat {counter}); echo $((n+1)) > {counter}
printf 'OK |'; i=0; while [ $i -lt 30 ]; do printf " run${{n}}_$i=1"; i=$((i+1)); done; echo
""")
    collector = services.ServicesCollector("services", 60, [svc("plugin", name="churn",
                                                                command=[str(churn)])])
    first, second, third = [(await collector.collect()).checks[0] for _ in range(3)]
    assert len(first.measurements) == 31 and first.message == "OK"
    assert len(second.measurements) == 21  # 50 in all, and response_seconds
    assert second.message == ("OK (10 perfdata labels not stored, e.g. 'run1_20': this check has "
                              "its 50 data sources; does a label change every run?)")
    assert [m.metric for m in third.measurements] == ["response_seconds"]


def test_crlf_in_helo_or_vhost_is_refused_at_load(write_config):
    for key, kind in (("helo", "smtp"), ("vhost", "http")):
        path = write_config(f'[[services]]\nname = "x"\nkind = "{kind}"\nhost = "a"\n'
                            f'{key} = "mx.example.net\\r\\nRCPT TO:<victim@example.net>"\n')
        with pytest.raises(ConfigError) as info:
            load_config(path)
        assert str(info.value).startswith(f"{path}:5: services[0].{key}: expected a host name "
                                          "without spaces or control characters"), str(info.value)


# -- ping the SmokePing way ---------------------------------------------------------------------

def fake_ping(tmp_path: Path, rtts_ms: list[float | None]) -> Path:
    """A stand-in for `ping -c 1`: the n-th run prints iputils' output for the n-th round trip
    of `rtts_ms` (None: no reply), and notes its arguments in ping.log."""
    replies = tmp_path / "replies"
    replies.write_text("".join(f"{'lost' if ms is None else ms}\n" for ms in rtts_ms))
    return plugin_script(tmp_path, "ping", f"""
printf '%s\\n' "$*" >> {tmp_path}/ping.log
n=$(wc -l < {tmp_path}/ping.log)
ms=$(sed -n "${{n}}p" {replies})
echo "PING 192.0.2.1 (192.0.2.1) 56(84) bytes of data."
if [ "$ms" = lost ]; then
  printf '\\n--- 192.0.2.1 ping statistics ---\\n'
  echo "1 packets transmitted, 0 received, 100% packet loss, time 0ms"
  exit 1
fi
echo "64 bytes from 192.0.2.1: icmp_seq=1 ttl=64 time=$ms ms"
printf '\\n--- 192.0.2.1 ping statistics ---\\n'
echo "1 packets transmitted, 1 received, 0% packet loss, time 0ms"
echo "rtt min/avg/max/mdev = $ms/$ms/$ms/0.000 ms"
""")


async def test_ping_reports_median_and_jitter(tmp_path):
    fake = fake_ping(tmp_path, [10.0, 30.0, None, 20.0, 25.0])
    result = await one(svc("ping", name="smoke", ping_command=fake, count=5))
    assert result.message == ("PING 127.0.0.1: 20% loss, rtt min/avg/max 10.00/21.25/30.00 ms, "
                              "median 22.50 ms, jitter 11.67 ms")
    assert metric(result, "rtt_median_seconds").value == pytest.approx(0.0225)
    assert metric(result, "rtt_jitter_seconds").value == pytest.approx(0.035 / 3)
    assert ServiceCheck(name="p", kind="ping", host="a").count == 20  # SmokePing's default
    for host in LOOPBACKS:
        real = await one(svc("ping", name="lo", host=host, count=3, ping_interval=0.2, timeout=5))
        if real.state == State.OK:
            assert real.message.startswith(f"PING {host}: 0% loss, rtt min/avg/max ")
            assert ", median " in real.message and ", jitter " in real.message
            assert metric(real, "rtt_median_seconds").value > 0
        else:  # a sandbox without ICMP sockets
            assert real.state == State.UNKNOWN and "ICMP" in real.message


class ControlledClock:
    """A monotonic clock that moves only when the test says: `sleep` waits for it."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleepers: list[tuple[float, asyncio.Future]] = []
        self.woken: list[float] = []  # when each sleeper was due, in order

    def __call__(self) -> float:
        return self.now

    async def sleep(self, delay: float) -> None:
        future = asyncio.get_running_loop().create_future()
        self.sleepers.append((self.now + delay, future))
        await future

    async def advance(self, to: float) -> None:
        """Move to `to`, waking every sleeper due by then in order (and what they start)."""
        while True:
            due = sorted((t, f) for t, f in self.sleepers if t <= to and not f.done())
            if not due:
                break
            at, future = due[0]
            self.now = at
            self.woken.append(at)
            future.set_result(None)
            for _ in range(50):  # let the woken series start its ping and reach its next sleep
                await asyncio.sleep(0)
            await settle()
        self.now = to
        await settle()


async def settle() -> None:
    """Until every ping process started so far has finished (the stand-in answers at once)."""
    for _ in range(500):
        await asyncio.sleep(0.002)
        if not [t for t in asyncio.all_tasks() if "_one" in repr(t.get_coro())]:
            return


async def test_pings_are_spread_over_the_interval_and_never_hold_a_cycle(tmp_path, servers):
    rtts: list[float | None] = [2.0] * 60
    rtts[25], rtts[30] = None, 7.0  # one lost in the second series, one slow
    fake = fake_ping(tmp_path, rtts)
    port = await servers(srv.banner("220 ready"))
    clock = ControlledClock()
    ping = svc("ping", name="smoke", ping_command=fake, count=20, ping_interval=0.002)
    collector = services.ServicesCollector("services", 60, [ping, svc("tcp", port, "tcp")],
                                           sleep=clock.sleep, monotonic=clock)
    try:
        # Cycle 1: its pings back to back (there is no series yet), and the spread series of
        # the next interval started; the cycle ends with the series' clock not moved at all.
        first = {r.check: r for r in (await collector.collect()).checks}
        assert first["tcp"].state == State.OK and first["smoke"].state == State.OK
        assert first["smoke"].message.startswith("PING 127.0.0.1: 0% loss")
        assert clock.now == 0.0 and not collector.pings["smoke"].task.done()
        # The interval passes: one ping every 0.9 x 60 / 20 = 2.7 s, each mid-slot.
        await clock.advance(60.0)
        assert clock.woken == pytest.approx([2.7 * (k + 0.5) for k in range(20)])
        assert len((tmp_path / "ping.log").read_text().splitlines()) == 40  # 20 + 20 pings
        # Cycle 2 reports that series at once and starts the next (its clock unmoved).
        second = {r.check: r for r in (await collector.collect()).checks}
        assert clock.now == 60.0
        smoke = second["smoke"]
        assert smoke.state == State.OK, smoke.message
        assert smoke.message.startswith("PING 127.0.0.1: 5% loss, "), smoke.message
        assert metric(smoke, "rtt_median_seconds").value == pytest.approx(0.002)
        assert metric(smoke, "rtt_max_seconds").value == pytest.approx(0.007)
        assert metric(smoke, "loss_percent").value == 5.0
        # Cycle 3 comes before the series ran out (the scheduler's jitter): what has settled is
        # the result, the rest given up; the series after it starts at once.
        await clock.advance(60.0 + 2.7 * 4 + 0.1)
        third = {r.check: r for r in (await collector.collect()).checks}
        assert metric(third["smoke"], "loss_percent").value == 0.0
        assert "PING 127.0.0.1: 0% loss" in third["smoke"].message
        assert len(collector.pings) == 1 and not collector.pings["smoke"].task.done()
    finally:
        collector.close()
    assert all(line.startswith("-n -c 1 -W ") for line in (tmp_path / "ping.log").read_text().splitlines())


# -- DNS for ISPs: SOA serials of primary and secondaries, the AA flag --------------------------


async def test_soa_serial_of_each_secondary_against_the_primary(tmp_path):
    def zone(serial: int) -> list[str]:
        return ['local-zone: "example.test." static',
                f'local-data: "example.test. 3600 IN SOA ns1.example.test. hostmaster.example.test. '
                f'{serial} 7200 3600 1209600 300"']

    port = daemons.free_port(socket.SOCK_DGRAM)
    stale_at = "::1" if daemons.ipv6_loopback() else "127.0.0.3"
    with daemons.unbound(tmp_path / "primary", zone(2026120102), interfaces=["127.0.0.1"],
                         port=port), \
         daemons.unbound(tmp_path / "fresh", zone(2026120102), interfaces=["127.0.0.2"], port=port), \
         daemons.unbound(tmp_path / "stale", zone(2026113001), interfaces=[stale_at], port=port):
        primary, fresh, stale = await run(svc(
            "dns", port, "soa", query="example.test", query_type="SOA", authoritative=True,
            servers=["127.0.0.1", "127.0.0.2", stale_at]))
        nx, = await run(svc("dns", port, "aa", query="www.example.test", authoritative=True,
                            servers=["127.0.0.1"], expect_rcode="NXDOMAIN"))
    cache, cache_port = await srv.serve_dns()  # answers as a cache does: without AA
    try:
        not_ours = await one(svc("dns", cache_port, "cached", query="www.example.net",
                                 server="127.0.0.1", authoritative=True))
    finally:
        cache.close()
    assert (primary.state, fresh.state) == (State.OK, State.OK), (primary.message, fresh.message)
    assert metric(primary, "soa_serial").value == 2026120102
    assert stale.state == State.WARNING
    assert stale.message.endswith(f"; serial 2026113001 is behind the primary 127.0.0.1:{port}'s "
                                  "2026120102"), stale.message
    assert stale.target == stale_at and metric(stale, "response_seconds").value is not None
    assert nx.state == State.OK, nx.message
    assert not_ours.state == State.CRITICAL
    assert not_ours.message.startswith(f"DNS 127.0.0.1:{cache_port} answered www.example.net A "
                                       "without the authoritative flag (AA)")


# -- login checks (a test account on real dovecot) ----------------------------------------------

PASSWORD = "pa55 w0rd;\"'"


@pytest.fixture
def dovecot(tmp_path):
    # One per test: dovecot delays every login from an address after a failed one (its anvil
    # penalty), so each test makes its failed logins last, one per address.
    cert = srv.make_cert(tmp_path, names=("localhost", "127.0.0.1", "::1"))
    with daemons.dovecot(cert, {"probe@example.test": PASSWORD}) as server:
        server.ca = cert[0]
        server.cert = cert
        yield server


@pytest.fixture
def postfix(dovecot):
    """postfix delivering example.test to the dovecot above, SASL AUTH through it."""
    with daemons.postfix(dovecot.cert, dovecot) as ports:
        yield ports


async def test_imap_and_pop3_login_against_dovecot(dovecot):
    ports = dovecot.ports

    def login(kind: str, port_name: str, host: str, password: str = PASSWORD, **kw) -> ServiceCheck:
        return svc(kind, ports[port_name], f"{port_name}-{host}-{password[:3]}", host=host,
                   ca_file=dovecot.ca, username="probe@example.test", password=password, **kw)

    checks = []
    for host in LOOPBACKS:
        checks += [login("imap", "imap", host, starttls=True), login("imap", "imaps", host, tls=True),
                   login("pop3", "pop3", host, starttls=True), login("pop3", "pop3s", host, tls=True)]
    good = await run(*checks)
    bad_imap, bad_pop3 = await run(login("imap", "imaps", "127.0.0.1", "wrong", tls=True),
                                   login("pop3", "pop3s", LOOPBACKS[-1], "wrong", tls=True))
    for result in good:
        assert result.state == State.OK, result.message
        assert ", logged in as 'probe@example.test' in " in result.message
        assert "certificate valid for 90 days" in result.message
    assert bad_imap.state == State.CRITICAL and bad_pop3.state == State.CRITICAL
    assert bad_imap.message.startswith(f"IMAPS 127.0.0.1:{ports['imaps']} refused the login of "
                                       "'probe@example.test': 'NO [AUTHENTICATIONFAILED]")
    assert bad_pop3.message.startswith(f"POP3S {srv.hostport(LOOPBACKS[-1], ports['pop3s'])} refused "
                                       "the login of 'probe@example.test': '-ERR [AUTH] "
                                       "Authentication failed.'")
    for result in [*good, bad_imap, bad_pop3]:
        assert PASSWORD not in result.message and "wrong" not in result.message


def test_login_config(write_config, tmp_path):
    secret = tmp_path / "probe.secret"
    secret.write_text(PASSWORD + "\n")
    config = load_config(write_config(f'''
        [[services]]
        name = "imap-login"
        kind = "imap"
        host = "mail.example.net"
        tls = true
        username = "probe@example.net"
        password_file = "{secret}"
    '''))
    (check,) = config.services
    assert check.password == PASSWORD and PASSWORD not in repr(check)

    def error(body: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(write_config(f'[[services]]\nname = "x"\nhost = "a"\n{body}'))
        return str(info.value)

    assert "services[0].username: a login check needs tls = true or starttls = true" in error(
        f'kind = "imap"\nusername = "u"\npassword_file = "{secret}"\n')
    assert "services[0].password: a login check needs password_file" in error(
        'kind = "pop3"\ntls = true\nusername = "u"\n')
    assert "services[0].username: only smtp, imap, pop3, http(s) and roundtrip checks log in" in error(
        f'kind = "ssh"\nusername = "u"\npassword_file = "{secret}"\n')


async def test_smtp_auth_login_against_postfix(postfix, dovecot):

    def login(host: str, password: str = PASSWORD) -> ServiceCheck:
        return svc("smtp", postfix["submission"], f"submission-{host}-{password[:3]}", host=host,
                   starttls=True, ca_file=dovecot.ca, username="probe@example.test",
                   password=password)

    good = await run(*(login(h) for h in LOOPBACKS))
    bad, = await run(login("127.0.0.1", "wrong"))
    for result in good:
        assert result.state == State.OK, result.message
        assert "answered 220 and STARTTLS, logged in as 'probe@example.test' in " in result.message
    assert bad.state == State.CRITICAL
    assert bad.message.startswith(f"SMTP 127.0.0.1:{postfix['submission']} refused the login of "
                                  "'probe@example.test': '535 5.7.8 "), bad.message
    assert all(PASSWORD not in r.message for r in [*good, bad])


async def test_mail_round_trip_through_postfix_and_dovecot(postfix, dovecot):

    def roundtrip(host: str, password: str = PASSWORD, **kw) -> ServiceCheck:
        return svc("roundtrip", postfix["submission"], f"rt-{host}-{password[:3]}", host=host,
                   starttls=True, ca_file=dovecot.ca, username="probe@example.test",
                   password=password, imap_port=dovecot.ports["imaps"], timeout=20, **kw)

    results = await run(*(roundtrip(h) for h in LOOPBACKS), concurrency=1)
    for result, host in zip(results, LOOPBACKS, strict=True):
        assert result.state == State.OK, result.message
        assert result.message.startswith(
            f"MAIL ROUND TRIP {srv.hostport(host, postfix['submission'])} delivered a probe to "
            "probe@example.test in ")
        assert f"found over IMAPS {srv.hostport(host, dovecot.ports['imaps'])})" in result.message
        assert metric(result, "delivery_seconds").value > 0
        assert "certificate valid for 90 days" in result.message
    # Found and deleted: the mailbox holds no probe afterwards.
    inbox = dovecot.maildir("probe@example.test")
    assert not [p for p in inbox.rglob("*") if p.is_file() and p.parent.name in ("new", "cur")]
    bad, = await run(roundtrip("127.0.0.1", "wrong"))
    assert bad.state == State.CRITICAL
    assert bad.message.startswith(f"MAIL ROUND TRIP 127.0.0.1:{postfix['submission']} refused the "
                                  "login of 'probe@example.test': '535 "), bad.message


async def test_a_refused_imap_certificate_is_judged_and_costs_no_second_probe(tmp_path):
    names = ("localhost", "127.0.0.1", "::1")
    smtp_cert = srv.make_cert(tmp_path, names=names, stem="smtp")
    imap_cert = srv.make_cert(tmp_path, names=names, stem="imap")  # not the ca_file's
    with (daemons.dovecot(imap_cert, {"probe@example.test": PASSWORD}) as dovecot,
          daemons.postfix(smtp_cert, dovecot) as ports):
        result, = await run(svc("roundtrip", ports["submission"], "rt", starttls=True,
                                ca_file=smtp_cert[0], username="probe@example.test",
                                password=PASSWORD, imap_port=dovecot.ports["imaps"], timeout=20))
        log = (dovecot.directory / "dovecot.log").read_text()
    assert result.state == State.CRITICAL, result.message
    imaps = f"IMAPS 127.0.0.1:{dovecot.ports['imaps']}"
    assert " delivered a probe to probe@example.test in " in result.message
    assert result.message.endswith(f"; certificate valid for 90 days; {imaps}: certificate not "
                                   "trusted: self-signed certificate; certificate expires in 90 "
                                   "days"), result.message
    assert "probes of earlier runs" not in result.message
    assert log.count("saved mail to INBOX") == 1, log  # one probe mail, not one per verdict


async def test_ftp_against_real_vsftpd():
    with daemons.vsftpd() as port:
        results = await run(*(svc("ftp", port, f"ftp-{h}", host=h) for h in LOOPBACKS))
    for result, host in zip(results, LOOPBACKS, strict=True):
        assert result.state == State.OK, result.message
        assert result.message.startswith(f"FTP {srv.hostport(host, port)} answered 220 in ")
        assert result.message.endswith("(monitor test FTP ready)")


async def test_a_flooding_peer_never_holds_the_loop(servers):
    async def flood(reader, writer):
        chunk = b"y" * 65536
        while True:
            writer.write(chunk)
            await writer.drain()

    port = await servers(flood)
    ticks = 0

    async def heartbeat() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    beating = asyncio.create_task(heartbeat())
    try:
        (result,) = await run(svc("tcp", port, "flood", expect="never sent", timeout=1))
    finally:
        beating.cancel()
    # Ended by its own timeout, the text kept bounded, and the loop had its turns meanwhile
    # (a lenient floor, for a loaded machine: about 100 ticks fit in that second; a reader that
    # never yields while data keeps coming gives none).
    assert result.message.startswith(f"TCP 127.0.0.1:{port} sent no 'never sent' within 1.00 s (got ")
    assert len(result.message) < 200
    assert ticks >= 3, ticks


def signed_zone(directory: Path) -> tuple[Path, str]:
    """signed.test, signed with a fresh ECDSA P-256 key: (zone file, the trust anchor line)."""
    import dns.dnssec
    import dns.rdtypes.ANY.DNSKEY
    import dns.zone
    from cryptography.hazmat.primitives.asymmetric import ec

    zone = dns.zone.from_text("""$TTL 300
@ IN SOA ns.signed.test. hostmaster.signed.test. 1 7200 3600 1209600 300
@ IN NS ns.signed.test.
ns IN A 127.0.0.1
www IN A 192.0.2.80
""", origin="signed.test.")
    key = ec.generate_private_key(ec.SECP256R1())
    dnskey = dns.dnssec.make_dnskey(key.public_key(), dns.dnssec.Algorithm.ECDSAP256SHA256,
                                    flags=257)
    dns.dnssec.sign_zone(zone, keys=[(key, dnskey)], add_dnskey=True, lifetime=86400)
    path = directory / "signed.test.zone"
    path.write_text(zone.to_text())
    return path, f"signed.test. DNSKEY {dnskey.to_text()}"


async def test_dnssec_validation_status_from_a_validating_unbound(tmp_path):
    zone_file, anchor = signed_zone(tmp_path)
    authority = daemons.free_port(socket.SOCK_DGRAM)
    with daemons.unbound(tmp_path / "authority", [
            'local-zone: "test." nodefault',  # RFC 6761 names are blocked by default
            "auth-zone:", '  name: "signed.test."', f'  zonefile: "{zone_file}"',
            "  for-downstream: yes", "  for-upstream: yes"], interfaces=["127.0.0.1"],
            port=authority), \
         daemons.unbound(tmp_path / "resolver", [
            'local-zone: "test." nodefault',
            f'trust-anchor: "{anchor}"', "stub-zone:", '  name: "signed.test."',
            f"  stub-addr: 127.0.0.1@{authority}"], interfaces=["127.0.0.2"],
            modules="validator iterator") as resolver:
        validated, = await run(svc("dns", resolver, "validated", query="www.signed.test",
                                   server="127.0.0.2", dnssec=True, expect_answers=["192.0.2.80"]))
        unvalidated, = await run(svc("dns", authority, "authority", query="www.signed.test",
                                     server="127.0.0.1", dnssec=True, authoritative=True))
    assert validated.state == State.OK, validated.message
    assert validated.message.endswith(" (DNSSEC-validated) in " + validated.message.rsplit(" in ", 1)[1])
    assert unvalidated.state == State.CRITICAL
    assert unvalidated.message.startswith(f"DNS 127.0.0.1:{authority} answered www.signed.test A "
                                          "without the AD flag: not DNSSEC-validated")


def test_an_echoed_password_is_hidden_however_it_reaches_the_message():
    """Servers that echo what they got: the password as typed, as AUTH LOGIN sends it (base64)
    and as AUTH PLAIN does (with the user name) all become ***."""
    import base64

    from collectors.services_base import hide_password

    password = "pa\\ss'wo\"rd"
    check = ServiceCheck(name="login", kind="pop3", host="127.0.0.1", username="probe",
                         password=password)
    echoes = [password, base64.b64encode(password.encode()).decode(),
              base64.b64encode(f"\0probe\0{password}".encode()).decode()]
    message = hide_password(check, "refused: " + " / ".join(echoes))
    assert message == "refused: *** / *** / ***"


async def test_a_password_echoed_anywhere_in_a_reply_never_reaches_the_message(servers, certs):
    """Servers that echo the password at every offset, across the cut of an 80-character
    message too: not even a prefix of it may survive."""
    password = "Qx7!Zr9#Lm2$Wp5&"
    context = srv.server_context(certs["valid"])
    checks = []
    for pad in range(0, 96, 3):
        for kind in ("smtp", "imap", "pop3", "roundtrip", "https"):
            port = await servers(srv.echoing("smtp" if kind == "roundtrip" else kind, pad), context)
            extra = {"rcpt_to": "probe@example.net", "imap_port": port} if kind == "roundtrip" else {}
            checks.append(svc(kind, port, f"{kind}-{pad}", tls=True, verify=False,
                              username="probe", password=password, **extra))
    results = await run(*checks)
    pieces = {password[i:i + 4] for i in range(len(password) - 3)}
    for result in results:
        assert result.state == State.CRITICAL, result.message
        assert "refused the login" in result.message or "answered 401" in result.message
        leaked = [piece for piece in pieces if piece in result.message]
        assert not leaked, (result.check, result.message)


def test_one_peer_chain_and_labels_only_for_the_kinds_that_use_them():
    from collectors import services_base, services_http, services_tcp

    assert services_http.peer_chain is services_tcp.peer_chain is services_base.peer_chain
    # http/https are labelled by their site (services_http.site_label), not by LABELS
    assert not {"http", "https"} & services_base.LABELS.keys()


async def test_programs_that_cannot_be_started_say_why_and_what_to_do(tmp_path):
    """A ping_command or plugin that exists but is no program (not executable, a script without
    its #! line) is the config's problem, said as such, never "cannot be reached"."""
    no_shebang = tmp_path / "check_no_shebang"
    no_shebang.write_text("echo OK\n")
    no_shebang.chmod(0o755)
    not_executable = tmp_path / "ping"
    not_executable.write_text("#!/bin/sh\n")
    plugin, ping = await run(svc("plugin", name="plugin", command=[str(no_shebang)]),
                             svc("ping", name="ping", ping_command=not_executable, count=2))
    assert plugin.state is State.UNKNOWN
    assert plugin.message == f"plugin {no_shebang} is not a program (a script needs its #! line)"
    assert ping.state is State.UNKNOWN
    assert ping.message == (f"PING 127.0.0.1: ping_command {not_executable} is not executable "
                            "(chmod +x it, or is its file system mounted noexec?)")


async def test_round_trip_deletes_only_the_probes_a_lying_imap_server_names(servers, certs):
    """The UIDs of the probes come from the IMAP server: one that answers the search with
    "1:*" (every message) or a UID that is no number must not have our STORE + EXPUNGE empty
    the test account's INBOX. And the probe found by its token is deleted with the late ones,
    even when it arrived between the two searches."""
    context = srv.server_context(certs["valid"])
    sent: list[str] = []

    async def submission(reader, writer):
        writer.write(b"220 fake ESMTP\r\n")
        while line := await reader.readline():
            command = line.decode().strip().upper()
            if command.startswith("EHLO"):
                writer.write(b"250-fake\r\n250 AUTH PLAIN\r\n")
            elif command.startswith("AUTH"):
                writer.write(b"235 ok\r\n")
            elif command == "DATA":
                writer.write(b"354 go on\r\n")
                while (await reader.readline()) != b".\r\n":
                    pass
                writer.write(b"250 queued\r\n")
            elif command == "QUIT":
                writer.write(b"221 bye\r\n")
                return
            else:
                writer.write(b"250 ok\r\n")

    async def liar(reader, writer):
        writer.write(b"* OK liar ready\r\n")
        while line := await reader.readline():
            tag, _, command = line.decode().strip().partition(" ")
            sent.append(command)
            if command == "AUTHENTICATE PLAIN":
                writer.write(b"+ \r\n")
                await reader.readline()
                writer.write(f"{tag} OK logged in\r\n".encode())
                continue
            if command.startswith("UID SEARCH") and tag.endswith("t"):  # by the run's token
                writer.write(b"* SEARCH 9\r\n")
            elif command.startswith("UID SEARCH"):  # by the check's tag: this run's not yet
                writer.write(b"* SEARCH 1:* 3 x)(y 4 " + b"7" * 5000 + b"\r\n")
            writer.write(f"{tag} OK done\r\n".encode())
            if command == "LOGOUT":
                return

    smtp_port, imap_port = await servers(submission, context), await servers(liar, context)
    result = await one(svc("roundtrip", smtp_port, "rt", tls=True, verify=False, username="probe",
                           password="secret", rcpt_to="probe@example.net", imap_port=imap_port))
    assert result.state is State.OK, result.message
    assert [c for c in sent if c.startswith("UID STORE")] == ["UID STORE 3,4,9 +FLAGS.SILENT (\\Deleted)"]
    assert "deleted 2 probes of earlier runs" in result.message


async def test_tcp_expect_after_a_long_answer_names_its_first_line(servers):
    """The message quotes the first line of the answer, also when what was expected comes
    after more than 64 KiB of it (not a line from the middle of the answer)."""
    port = await servers(srv.banner("220 long banner", "x" * 100_000, "READY"))
    result = await one(svc("tcp", port, "long", expect="READY"))
    assert result.state is State.OK, result.message
    assert result.message.startswith(f"TCP 127.0.0.1:{port} answered '220 long banner' in "), \
        result.message
