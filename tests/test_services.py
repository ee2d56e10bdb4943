"""Service checks against real servers on 127.0.0.1, port 0 (see tests/service_servers.py)."""

from __future__ import annotations

import asyncio
import json
import os
import re
import ssl
from pathlib import Path

import pytest
from aiosmtpd.smtp import SMTP

from collectors.checks.common import Env, Outcome, clean
from collectors.checks.plugin import parse_perfdata, split_output
from collectors.services import ServicesCollector, apply_thresholds, build
from monitor.config import ConfigError, ServiceCheck, parse_config
from monitor.model import Kind, State
from tests.service_servers import (
    DnsResponder,
    Pki,
    Servers,
    banner_handler,
    closed_port,
    echo_handler,
    ftp_handler,
    http_handler,
    imap_handler,
    pop3_handler,
    stall_handler,
)

PLUGINS = Path("/usr/lib/nagios/plugins")


def toml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Path):
        value = str(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    return json.dumps(value)


def service(**keys) -> ServiceCheck:
    keys.setdefault("name", "svc")
    body = "\n".join(f"{k} = {toml_value(v)}" for k, v in keys.items())
    return parse_config(f"[agent]\nhostname = \"monitor.test\"\n[[services]]\n{body}\n").services[0]


ENV = Env(hostname="monitor.test")


async def check(env: Env = ENV, **keys):
    svc = service(**keys)
    return await ServicesCollector([svc], 60, env).run_check(svc)


def metric(result, name: str):
    return {m.metric: m.value for m in result.measurements}[name]


@pytest.fixture
async def servers():
    s = Servers()
    yield s
    await s.close()


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> Pki:
    return Pki.create(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls(pki):
    """Server contexts: valid for mail.test, expiring in 5 days, expired, for another name."""
    return {
        "valid": pki.server_context("mail.test", 365, "valid"),
        "soon": pki.server_context("mail.test", 5, "soon"),
        "expired": pki.server_context("mail.test", -3, "expired"),
        "wrong": pki.server_context("other.test", 365, "wrong"),
    }


class Sink:
    async def handle_DATA(self, server, session, envelope) -> str:
        return "250 OK"


async def smtp_server(servers: Servers, tls_ctx: ssl.SSLContext | None = None, implicit: bool = False) -> int:
    def factory():
        return SMTP(Sink(), hostname="mail.test", ident="test ESMTP",
                    tls_context=None if implicit else tls_ctx, require_starttls=False)
    if implicit:
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0, ssl=tls_ctx)
        servers._servers.append(server)
        return server.sockets[0].getsockname()[1]
    return await servers.protocol(factory)


# --- configuration -----------------------------------------------------------------------------

def test_defaults_and_kind_rules():
    assert service(kind="smtp", host="h").port == 25
    assert service(kind="smtp", host="h", tls=True).port == 465
    assert service(kind="imap", host="h", tls=True).port == 993
    assert service(kind="pop3", host="h", tls=True).port == 995
    assert service(kind="https", host="h").port == 443
    web = service(kind="http", url="https://www.example.net:8443/status?x=1")
    assert (web.host, web.port, web.path, web.tls) == ("www.example.net", 8443, "/status?x=1", True)
    assert service(kind="dns", host="127.0.0.1", query="example.net", query_type="mx").query_type == "MX"
    assert (service(kind="smtp", host="h").cert_warning_days,
            service(kind="smtp", host="h").cert_critical_days) == (21, 7)


@pytest.mark.parametrize(("keys", "error"), [
    ({"kind": "tcp", "host": "h"}, 'services[0]: missing required key "port"'),
    ({"kind": "dns", "host": "h", "query": "x", "starttls": True}, "services[0].starttls: only smtp"),
    ({"kind": "ssh", "host": "h", "tls": True}, "services[0].tls: SSH does not run over TLS"),
    ({"kind": "smtp", "host": "h", "tls": True, "starttls": True}, "either tls"),
    ({"kind": "dns", "host": "h"}, 'missing required key "query"'),
    ({"kind": "dns", "host": "h", "query": "x", "query_type": "BOGUS"}, "record type"),
    ({"kind": "plugin"}, "services[0].command: a plugin check needs"),
    ({"kind": "smtp", "host": "h", "expect_status": [200]}, "services[0].expect_status: only http"),
    ({"kind": "https", "url": "http://x/"}, "needs an https:// URL"),
    ({"kind": "smtp", "host": "h", "cert_critical_days": 30}, "cert_critical_days: must not be more"),
    ({"kind": "smtp", "host": "h", "critical_time": 20}, "critical_time: must be shorter"),
    ({"kind": "smtp", "host": "h", "expect_stauts": [200]}, 'unknown key (did you mean "expect_status"?)'),
    ({"kind": "ping"}, 'missing required key "host"'),
    ({"kind": "imap", "host": "h", "ca_file": "/nonexistent/ca.pem"}, "services[0].ca_file: no such file"),
    ({"kind": "ping", "host": "-f"}, "services[0].host: expected a host name or IP address"),
    ({"kind": "ping", "host": "a b"}, "services[0].host: expected a host name or IP address"),
    ({"kind": "dns", "host": "h", "query": "a" * 70 + ".net"}, "services[0].query: not a valid DNS name"),
])
def test_config_errors_name_file_line_and_key(keys, error):
    with pytest.raises(ConfigError) as info:
        service(**keys)
    assert error in str(info.value)
    assert str(info.value).startswith("config.toml:")


def test_build_groups_by_interval():
    config = parse_config("""
        [agent]
        interval = "1m"
        concurrency = 7
        [[services]]
        name = "a"
        kind = "tcp"
        host = "127.0.0.1"
        port = 1
        [[services]]
        name = "b"
        kind = "ssh"
        host = "127.0.0.1"
        interval = "5m"
        [[services]]
        name = "c"
        kind = "ping"
        host = "127.0.0.1"
    """.replace("        ", ""))
    collectors = build(config)
    assert [(c.name, c.interval, [s.name for s in c.checks]) for c in collectors] == [
        ("services", 60, ["a", "c"]), ("services@5m", 300, ["b"])]
    assert all(c.concurrency == 7 for c in collectors)


# --- tcp and banner protocols ------------------------------------------------------------------

async def test_tcp_open_closed_and_send_expect(servers):
    port = await servers.tcp(echo_handler())
    ok = await check(kind="tcp", host="127.0.0.1", port=port)
    assert ok.state is State.OK and ok.target == "127.0.0.1" and ok.check == "svc"
    assert metric(ok, "response_seconds") > 0
    echoed = await check(kind="tcp", host="127.0.0.1", port=port, send="ping\r\n", expect="echo: ping")
    assert echoed.state is State.OK, echoed.message
    wrong = await check(kind="tcp", host="127.0.0.1", port=port, send="ping\r\n", expect="pong")
    assert wrong.state is State.CRITICAL and "instead of 'pong'" in wrong.message
    refused = await check(kind="tcp", host="127.0.0.1", port=closed_port())
    assert refused.state is State.CRITICAL
    assert refused.message.startswith(f"TCP 127.0.0.1:{refused.message.split(':')[1].split()[0]} refused")
    assert metric(refused, "response_seconds") is None
    smtps = await check(kind="smtp", host="127.0.0.1", port=closed_port(), tls=True)
    assert metric(smtps, "cert_expiry_days") is None  # the series exists even while down


async def test_stalled_server_times_out_with_a_clear_message(servers):
    port = await servers.tcp(stall_handler())
    result = await check(kind="smtp", host="127.0.0.1", port=port, timeout="0.3s")
    assert result.state is State.CRITICAL
    assert result.message == (f"SMTP 127.0.0.1:{port} accepted the connection but gave no answer "
                              "within 0.3 s (waiting for the greeting)")
    handshake = await check(kind="smtp", host="127.0.0.1", port=port, timeout="0.3s", tls=True)
    assert handshake.message == (f"SMTPS 127.0.0.1:{port} did not complete the connection and TLS "
                                 "handshake within 0.3 s")


async def test_smtp_plain_and_starttls(servers, tls, pki):
    port = await smtp_server(servers, tls["valid"])
    plain = await check(kind="smtp", host="127.0.0.1", port=port)
    assert plain.state is State.OK, plain.message
    assert plain.message.startswith(f"SMTP 127.0.0.1:{port} answered 220 in ")
    assert plain.message.endswith(": mail.test test ESMTP")
    secure = await check(kind="smtp", host="127.0.0.1", port=port, starttls=True, ca_file=pki.ca_file,
                         tls_name="mail.test")
    assert secure.state is State.OK, secure.message
    assert "STARTTLS ok; certificate valid 36" in secure.message
    assert 364 < metric(secure, "cert_expiry_days") <= 365


async def test_smtp_wrong_greeting(servers):
    port = await servers.tcp(banner_handler(b"554 mail.test no service for you\r\n"))
    result = await check(kind="smtp", host="127.0.0.1", port=port)
    assert result.state is State.CRITICAL
    assert result.message.startswith(f"SMTP 127.0.0.1:{port} answered 554 instead of 220 in ")
    assert result.message.endswith(": mail.test no service for you")


async def test_smtp_starttls_not_offered(servers):
    port = await smtp_server(servers, None)
    result = await check(kind="smtp", host="127.0.0.1", port=port, starttls=True)
    assert result.state is State.CRITICAL and "EHLO without STARTTLS instead of STARTTLS" in result.message


async def test_smtps_implicit_tls(servers, tls, pki):
    port = await smtp_server(servers, tls["valid"], implicit=True)
    result = await check(kind="smtp", host="127.0.0.1", port=port, tls=True, ca_file=pki.ca_file,
                         tls_name="mail.test")
    assert result.state is State.OK, result.message
    assert result.message.startswith(f"SMTPS 127.0.0.1:{port} answered 220")


@pytest.mark.parametrize(("which", "keys", "state", "text"), [
    ("soon", {}, State.CRITICAL, "certificate for mail.test expires in 5 days"),
    ("soon", {"cert_critical_days": 3}, State.WARNING, "certificate for mail.test expires in 5 days"),
    ("expired", {}, State.CRITICAL, "certificate for mail.test expired 3 days ago"),
    ("wrong", {}, State.CRITICAL, "certificate not trusted (Hostname mismatch"),
    ("wrong", {"verify": False}, State.OK, "certificate valid"),
    ("valid", {"ca_file": None}, State.CRITICAL, "certificate not trusted (unable to get local issuer"),
])
async def test_certificates(servers, tls, pki, which, keys, state, text):
    port = await servers.tcp(imap_handler(), ssl_ctx=tls[which])
    args = {"kind": "imap", "host": "127.0.0.1", "port": port, "tls": True, "ca_file": pki.ca_file,
            "tls_name": "mail.test", **keys}
    if args["ca_file"] is None:
        del args["ca_file"]
    result = await check(**args)
    assert result.state is state, result.message
    assert text in result.message
    assert result.message.startswith(f"IMAPS 127.0.0.1:{port} answered '* OK'")
    assert metric(result, "cert_expiry_days") is not None


async def test_imap_pop3_ftp_with_starttls(servers, tls, pki):
    tls_keys = {"starttls": True, "ca_file": pki.ca_file, "tls_name": "mail.test"}
    imap = await servers.tcp(imap_handler(tls["valid"]))
    pop3 = await servers.tcp(pop3_handler(tls["soon"]))
    ftp = await servers.tcp(ftp_handler(tls=tls["valid"]))
    results = [
        await check(kind="imap", host="127.0.0.1", port=imap),
        await check(kind="imap", host="127.0.0.1", port=imap, **tls_keys),
        await check(kind="pop3", host="127.0.0.1", port=pop3),
        await check(kind="pop3", host="127.0.0.1", port=pop3, **tls_keys),
        await check(kind="ftp", host="127.0.0.1", port=ftp, expect="test FTP"),
        await check(kind="ftp", host="127.0.0.1", port=ftp, **tls_keys),
    ]
    states = [r.state for r in results]
    assert states == [State.OK, State.OK, State.OK, State.CRITICAL, State.OK, State.OK], \
        [r.message for r in results]
    assert "STARTTLS ok; certificate valid" in results[1].message
    assert "STLS ok; certificate for mail.test expires in 5 days" in results[3].message
    assert results[4].message.endswith(": Welcome")
    assert "AUTH TLS ok" in results[5].message


async def test_imap_pop3_refusals(servers):
    imap = await servers.tcp(imap_handler(greeting="* BYE too many connections"))
    pop3 = await servers.tcp(pop3_handler(greeting="-ERR maintenance"))
    bad_imap = await check(kind="imap", host="127.0.0.1", port=imap)
    assert bad_imap.state is State.CRITICAL and bad_imap.message.endswith(
        "answered '* BYE' instead of '* OK' in " + bad_imap.message.split(" in ")[1].split(":")[0]
        + ": * BYE too many connections")
    no_stls = await check(kind="imap", host="127.0.0.1", port=await servers.tcp(imap_handler()),
                          starttls=True)
    assert no_stls.state is State.CRITICAL and "STARTTLS with 'm1 BAD" in no_stls.message
    bad_pop = await check(kind="pop3", host="127.0.0.1", port=pop3)
    assert bad_pop.state is State.CRITICAL and "answered '-ERR' instead of '+OK'" in bad_pop.message


async def test_ssh_banner_versions_and_untrusted_text(servers):
    good = await servers.tcp(banner_handler(b"SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3\r\n"))
    old = await servers.tcp(banner_handler(b"SSH-1.5-ancient\r\n"))
    nasty = await servers.tcp(banner_handler(b"SSH-2.0-evil\x1b[2J\x07" + b"A" * 300 + b"\r\n"))
    ok = await check(kind="ssh", host="127.0.0.1", port=good, expect="OpenSSH")
    assert ok.state is State.OK
    assert ok.message.endswith("answered SSH-2.0 in " + ok.message.split(" in ")[1].split(":")[0]
                               + ": SSH-2.0-OpenSSH_9.2p1 Debian-2+deb12u3")
    v1 = await check(kind="ssh", host="127.0.0.1", port=old)
    assert v1.state is State.CRITICAL and "answered protocol 1.5 instead of 2.0" in v1.message
    bad = await check(kind="ssh", host="127.0.0.1", port=nasty)
    assert "\x1b" not in bad.message and "\x07" not in bad.message and len(bad.message) < 220


def test_clean_strips_control_characters_and_length():
    assert clean(b"220 hi\r\n\x1b[31mred\x00") == "220 hi [31mred"
    assert clean("x" * 500, 20) == "x" * 19 + "…"
    assert clean("a\u2028b\u202ec") == "a b c"


# --- http --------------------------------------------------------------------------------------

async def test_http_status_text_redirects_and_host_header(servers):
    seen: list = []
    routes = {
        "/": (200, {}, b"<h1>Welcome to example</h1>"),
        "/old": (301, {"Location": "/new"}, b""),
        "/new": (302, {"Location": "/"}, b""),
        "/loop": (302, {"Location": "/loop"}, b""),
        "/broken": (500, {}, b"oops"),
        "/evil": (302, {"Location": "/a b\x01c"}, b""),
        "/a%20b%01c": (200, {}, b"quoted"),
        "/badport": (301, {"Location": "http://127.0.0.1:99999/"}, b""),
    }
    port = await servers.tcp(http_handler(routes, seen))
    ok = await check(kind="http", host="127.0.0.1", port=port, vhost="www.example.net",
                     expect_text="Welcome")
    assert ok.state is State.OK, ok.message
    assert ok.message.startswith(f"HTTP 127.0.0.1:{port} answered 200 OK in ")
    assert seen[-1] == ("/", f"www.example.net:{port}")
    missing = await check(kind="http", host="127.0.0.1", port=port, expect_text="Goodbye")
    assert missing.state is State.CRITICAL and "does not contain 'Goodbye'" in missing.message
    redirected = await check(kind="http", host="127.0.0.1", port=port, path="/old", follow_redirects=3,
                             expect_status=[200])
    assert redirected.state is State.OK, redirected.message
    assert "after 2 redirects to http://127.0.0.1:" in redirected.message
    not_followed = await check(kind="http", host="127.0.0.1", port=port, path="/old", expect_status=[200])
    assert not_followed.state is State.CRITICAL
    assert "answered 301 Status instead of 200" in not_followed.message
    looping = await check(kind="http", host="127.0.0.1", port=port, path="/loop", follow_redirects=2)
    assert looping.state is State.CRITICAL and "still redirects after 2 redirects" in looping.message
    broken = await check(kind="http", host="127.0.0.1", port=port, path="/broken")
    assert broken.state is State.CRITICAL and "answered 500" in broken.message
    evil = await check(kind="http", host="127.0.0.1", port=port, path="/evil", follow_redirects=1)
    assert evil.state is State.OK and seen[-1][0] == "/a%20b%01c", (evil.message, seen[-1])
    bad = await check(kind="http", host="127.0.0.1", port=port, path="/badport", follow_redirects=1)
    assert bad.state is State.CRITICAL
    assert bad.message == f"HTTP 127.0.0.1:{port} sent a redirect to a bad URL 'http://127.0.0.1:99999/'"
    absent = await check(kind="http", host="127.0.0.1", port=port, path="/nope")
    assert absent.state is State.WARNING and "answered 404" in absent.message


async def test_http_chunked_and_stall(servers):
    port = await servers.tcp(http_handler({"/": (200, {}, b"chunked body with marker inside")},
                                          chunked=True))
    ok = await check(kind="http", host="127.0.0.1", port=port, expect_text="marker")
    assert ok.state is State.OK, ok.message
    stalled = await servers.tcp(stall_handler())
    result = await check(kind="http", host="127.0.0.1", port=stalled, timeout="0.3s")
    assert result.state is State.CRITICAL
    assert "gave no complete answer within 0.3 s (waiting for the response)" in result.message


async def test_https_with_certificate(servers, tls, pki):
    port = await servers.tcp(http_handler({"/": (200, {}, b"secure")}), ssl_ctx=tls["soon"])
    result = await check(kind="https", host="127.0.0.1", port=port, vhost="mail.test",
                         ca_file=pki.ca_file, cert_critical_days=2)
    assert result.state is State.WARNING, result.message
    assert "certificate for mail.test expires in 5 days" in result.message
    assert 4 < metric(result, "cert_expiry_days") <= 5


# --- dns ---------------------------------------------------------------------------------------

async def test_dns_answers_rcode_and_timeout(servers):
    zone = {("www.example.net", "A"): ["192.0.2.10", "192.0.2.11"],
            ("example.net", "MX"): ["10 mail.example.net."]}
    port = await servers.udp(lambda: DnsResponder(zone))
    ok = await check(kind="dns", host="127.0.0.1", port=port, query="www.example.net",
                     answers=["192.0.2.11"])
    assert ok.state is State.OK, ok.message
    assert ok.message.startswith(f"DNS 127.0.0.1:{port} answered www.example.net A in ")
    assert ok.message.endswith(": 192.0.2.10, 192.0.2.11")
    assert metric(ok, "response_seconds") > 0
    mx = await check(kind="dns", host="127.0.0.1", port=port, query="example.net", query_type="MX",
                     answers=["10 mail.example.net"])
    assert mx.state is State.OK, mx.message
    wrong = await check(kind="dns", host="127.0.0.1", port=port, query="www.example.net",
                        answers=["198.51.100.1"])
    assert wrong.state is State.CRITICAL and "instead of 198.51.100.1" in wrong.message
    nx = await check(kind="dns", host="127.0.0.1", port=port, query="nope.example.org")
    assert nx.state is State.CRITICAL and "answered NXDOMAIN instead of NOERROR" in nx.message
    nx_expected = await check(kind="dns", host="127.0.0.1", port=port, query="nope.example.org",
                              rcode="NXDOMAIN")
    assert nx_expected.state is State.OK
    silent = await servers.udp(lambda: DnsResponder(zone, drop=True))
    timeout = await check(kind="dns", host="127.0.0.1", port=silent, query="www.example.net",
                          timeout="0.3s")
    assert timeout.state is State.CRITICAL
    assert timeout.message == f"DNS 127.0.0.1:{silent} gave no answer for www.example.net A within 0.3 s"


# --- ping --------------------------------------------------------------------------------------

async def test_ping_localhost():
    result = await check(kind="ping", host="127.0.0.1", count=2, packet_interval="10ms", timeout="5s")
    if result.state is State.UNKNOWN and "may not send ICMP" in result.message:
        pytest.skip(result.message)
    assert result.state is State.OK, result.message
    assert result.message.startswith("PING 127.0.0.1: 2/2 replies, 0% loss, rtt min/avg/max ")
    assert metric(result, "loss_percent") == 0
    assert metric(result, "rtt_min_seconds") <= metric(result, "rtt_avg_seconds") <= \
        metric(result, "rtt_max_seconds")
    assert metric(result, "response_seconds") == metric(result, "rtt_avg_seconds")


async def test_ping_not_permitted_says_what_to_do(tmp_path):
    # A stand-in for a ping binary on a host where ICMP sockets are forbidden (as iputils says it).
    fake = tmp_path / "ping"
    fake.write_text("#!/bin/sh\necho 'ping: socket: Operation not permitted' >&2\nexit 2\n")
    fake.chmod(0o755)
    result = await check(Env("monitor.test", ping_path=str(fake)), kind="ping", host="127.0.0.1")
    assert result.state is State.UNKNOWN
    assert "may not send ICMP echo (ping: socket: Operation not permitted)" in result.message
    assert "ping_group_range" in result.message
    assert metric(result, "loss_percent") is None and metric(result, "rtt_avg_seconds") is None


# --- plugins -----------------------------------------------------------------------------------

def test_perfdata_parsing_and_units():
    text, perf = split_output("DISK OK - free space|'/ used'=1.5GB;2;3;0;10 time=250ms\n"
                              "long text\nmore | load1=0.5;1;2 'it''s'=3c inodes=90%;80;90 x=U")
    assert text == "DISK OK - free space"
    parsed = {p.metric: p for p in parse_perfdata(perf)}
    assert parsed["used_bytes"].value == 1.5 * 1024**3 and parsed["used_bytes"].maximum == 10 * 1024**3
    assert parsed["time_seconds"].value == pytest.approx(0.25)
    assert parsed["load1"].value == 0.5 and parsed["load1"].warn == "1"
    assert parsed["it_s"].kind is Kind.DERIVE
    assert parsed["inodes_percent"].value == 90 and parsed["inodes_percent"].unit == "%"
    assert parsed["x"].value is None


@pytest.mark.skipif(not (PLUGINS / "check_tcp").exists(), reason="monitoring-plugins-basic missing")
async def test_nagios_check_tcp_and_check_http(servers):
    port = await servers.tcp(http_handler({"/": (200, {}, b"hello plugin")}))
    ok = await check(kind="plugin", host="127.0.0.1",
                     command=[str(PLUGINS / "check_tcp"), "-H", "127.0.0.1", "-p", str(port)])
    assert ok.state is State.OK and ok.message.startswith("TCP OK"), ok.message
    assert ok.target == "127.0.0.1"
    assert metric(ok, "time_seconds") == metric(ok, "response_seconds")
    down = await check(kind="plugin", command=[str(PLUGINS / "check_tcp"), "-H", "127.0.0.1",
                                              "-p", str(closed_port())])
    assert down.state is State.CRITICAL and "Connection refused" in down.message
    assert down.target == "monitor.test"
    web = await check(kind="plugin", host="127.0.0.1",
                      command=[str(PLUGINS / "check_http"), "-H", "127.0.0.1", "-p", str(port),
                               "-s", "hello"])
    assert web.state is State.OK and web.message.startswith("HTTP OK"), web.message
    assert metric(web, "size_bytes") > 0


async def test_plugin_timeout_bad_exit_and_missing(tmp_path):
    hang = tmp_path / "check_hang"
    hang.write_text("#!/bin/sh\nsleep 30 &\nwait\n")
    hang.chmod(0o755)
    slow = await check(kind="plugin", command=[str(hang)], timeout="0.3s")
    assert slow.state is State.UNKNOWN
    assert slow.message == "plugin check_hang did not finish within 0.3 s and was stopped"
    odd = tmp_path / "check_odd"
    odd.write_text("#!/bin/sh\necho 'weird'\nexit 7\n")
    odd.chmod(0o755)
    weird = await check(kind="plugin", command=[str(odd)])
    assert weird.state is State.UNKNOWN and weird.message == "plugin check_odd exited with code 7: weird"
    missing = await check(kind="plugin", command=[str(tmp_path / "check_none")])
    assert missing.state is State.UNKNOWN and "not found" in missing.message
    # Arguments are argv, never a shell: metacharacters reach the plugin untouched.
    echo = await check(kind="plugin", command=["/bin/echo", "OK; rm -rf / $(id)|t=1s"])
    assert echo.state is State.OK and echo.message == "OK; rm -rf / $(id)"


# --- the collector -----------------------------------------------------------------------------

def test_thresholds():
    svc = service(kind="tcp", host="h", port=1, warning_time="100ms", critical_time="1s")
    assert apply_thresholds(svc, Outcome(State.OK, "m", 0.05)).state is State.OK
    slow = apply_thresholds(svc, Outcome(State.OK, "m", 0.5))
    assert slow.state is State.WARNING and slow.message == "m - slower than the warning limit 0.1 s"
    assert apply_thresholds(svc, Outcome(State.OK, "m", 2)).state is State.CRITICAL
    assert apply_thresholds(svc, Outcome(State.CRITICAL, "down", None)).state is State.CRITICAL


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_cycle_is_bounded_and_fds_stay_flat(servers, tls, pki):
    """Stalled servers cost one timeout each in parallel, and every socket is closed after."""
    stall = await servers.tcp(stall_handler())
    ssh = await servers.tcp(banner_handler(b"SSH-2.0-test\r\n"))
    imaps = await servers.tcp(imap_handler(), ssl_ctx=tls["wrong"])
    closed = closed_port()
    checks = []
    for i in range(30):
        checks.append(service(name=f"stall{i}", kind="smtp", host="127.0.0.1", port=stall, timeout="0.5s"))
        checks.append(service(name=f"ssh{i}", kind="ssh", host="127.0.0.1", port=ssh))
        checks.append(service(name=f"imaps{i}", kind="imap", host="127.0.0.1", port=imaps, tls=True,
                              ca_file=pki.ca_file, tls_name="mail.test"))
        checks.append(service(name=f"closed{i}", kind="tcp", host="127.0.0.1", port=closed))
    collector = ServicesCollector(checks, 60, Env("monitor.test"), concurrency=200)
    await collector.collect()  # warm up: SSL contexts, imports
    await asyncio.sleep(0.05)
    before = _open_fds()
    for _ in range(2):
        batch = await collector.collect()
    await asyncio.sleep(0.05)
    states = {c.check: c.state for c in batch.checks}
    assert len(batch.checks) == 120
    assert states["ssh3"] is State.OK and states["stall3"] is State.CRITICAL
    assert states["imaps3"] is State.CRITICAL and states["closed3"] is State.CRITICAL
    assert _open_fds() <= before + 2  # the servers' side may still be tearing down


async def test_agent_stores_service_results(tmp_path, write_config, servers):
    from monitor.agent import Agent
    from monitor.config import load_config

    port = await servers.tcp(banner_handler(b"SSH-2.0-test\r\n"))
    path = write_config(f"""
        [agent]
        data_dir = "{tmp_path / 'data'}"
        hostname = "monitor.test"
        [host]
        enabled = false
        [disks]
        enabled = false
        [[services]]
        name = "ssh"
        kind = "ssh"
        host = "127.0.0.1"
        port = {port}
        [[services]]
        name = "closed"
        kind = "tcp"
        host = "127.0.0.1"
        port = {closed_port()}
    """)
    agent = Agent(load_config(path), only="services")
    try:
        assert await agent.collect_once()
    finally:
        await agent.close()
    infos = {(s.target, s.instance): s for s in agent.store.series()}
    assert "response_seconds" in infos[("127.0.0.1", "ssh")].metrics
    status = json.loads((tmp_path / "data" / "state" / "status.json").read_text())
    states = {c["check"]: c["state"] for c in status["checks"]}
    assert {k: v for k, v in states.items() if not k.startswith("collector")} == {"ssh": 0, "closed": 2}


async def test_cli_services_prints_results_and_exits_with_the_worst_state(write_config, servers):
    from tests.conftest import MONITOR

    port = await servers.tcp(banner_handler(b"SSH-2.0-cli\r\n"))
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
        port = {closed_port()}
    """)
    proc = await asyncio.create_subprocess_exec(*MONITOR, "--config", str(path), "services",
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    out, err = await proc.communicate()
    lines = out.decode().splitlines()
    assert proc.returncode == 2, err.decode()
    assert lines[0].startswith(f"OK       ssh: SSH 127.0.0.1:{port} answered SSH-2.0 in ")
    assert lines[1].startswith("CRITICAL closed: TCP 127.0.0.1:")
    proc = await asyncio.create_subprocess_exec(*MONITOR, "--config", str(path), "services", "nope",
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.PIPE)
    _, err = await proc.communicate()
    assert proc.returncode == 2 and "no service named 'nope'" in err.decode()


async def test_ipv6_loopback_and_names():
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
        result = await check(kind="ssh", host="::1", port=port)
        assert result.state is State.OK, result.message
        assert result.message.startswith(f"SSH [::1]:{port} answered SSH-2.0")
        # A name with several addresses: each is tried in turn (127.0.0.1 refuses, ::1 answers).
        with open("/etc/hosts") as hosts:
            if re.search(r"^::1\s.*\blocalhost\b", hosts.read(), re.M):
                by_name = await check(kind="ssh", host="localhost", port=port)
                assert by_name.state is State.OK, by_name.message
    finally:
        server.close()
        await server.wait_closed()
