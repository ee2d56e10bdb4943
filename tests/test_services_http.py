"""http/https checks against a real nginx on 127.0.0.1 and ::1 and hostile HTTP servers
(tests/http_servers.py)."""

from __future__ import annotations

import asyncio
import socket
import time

import pytest

from monitor.config import ConfigError, load_config
from monitor.model import State
from tests import daemons
from tests import http_servers as web
from tests import service_servers as srv
from tests.test_services import LOOPBACKS, metric, one, run, servers, svc

__all__ = ["servers"]  # the fixture, imported for these tests


# Exponential in the length of a run of "a" with no "b" after it (in re and regex alike:
# 40 a are minutes).
CATASTROPHIC = r"(a|aa)+b"


@pytest.fixture(scope="module")
def nginx(tmp_path_factory):
    server = web.start_nginx(tmp_path_factory.mktemp("nginx"))
    yield server
    server.process.kill()
    server.process.wait(timeout=10)


class Heartbeat:
    """A 10 ms tick in the test's event loop: the longest gap shows whether anything held it."""

    def __init__(self) -> None:
        self.longest = 0.0
        self.ticks = 0

    async def run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(0.01)
            now = time.monotonic()
            self.longest = max(self.longest, now - last)
            self.ticks += 1
            last = now


@pytest.fixture
async def heartbeat():
    beat = Heartbeat()
    task = asyncio.create_task(beat.run())
    yield beat
    task.cancel()


# -- nginx --------------------------------------------------------------------------------------


async def test_ipv6_literals_send_a_bracketed_host(nginx):
    p = nginx.http
    four, six, by_url, redirected = await run(
        svc("http", p, "four", path="/host", expect_text="host 127.0.0.1"),
        svc("http", p, "six", host="::1", path="/host", expect_text="host [::1]"),
        svc("http", name="url", url=f"http://[::1]:{p}/host", expect_text="host [::1]"),
        svc("http", p, "redirected", host="::1", path="/six", follow_redirects=1,
            expect_text="host [::1]"))
    for result in (four, six, by_url, redirected):
        assert result.state == State.OK, result.message
    assert six.message.startswith(f"HTTP [::1]:{p}/host answered 200 OK in ")
    assert by_url.message.startswith(f"HTTP [::1]:{p}/host answered 200 OK in ")
    assert "after 1 redirect" in redirected.message


async def test_server_name_is_the_sni_on_any_port(nginx):
    # Only the www.example.net certificate is valid for that name: nginx chose it by the SNI.
    # (The Host header is still host:port, so nginx answers from its default site.)
    checks = [svc("https", nginx.https, f"www-{host}", host=host, server_name="www.example.net",
                  ca_file=nginx.ca) for host in ("127.0.0.1", "::1")]
    default = svc("https", nginx.https, "default", ca_file=nginx.ca, verify_hostname=False,
                  expect_text="default site")
    wrong = svc("https", nginx.https, "no-name", ca_file=nginx.ca)
    www4, www6, plain, no_name = await run(*checks, default, wrong)
    for result in (www4, www6, plain):
        assert result.state == State.OK, result.message
        assert "certificate valid for 90 days" in result.message
    assert www6.message.startswith(f"HTTPS [::1]:{nginx.https}/ answered 200 OK")
    assert no_name.state == State.CRITICAL
    assert "certificate is not valid for 127.0.0.1" in no_name.message


async def test_an_error_after_a_redirect_names_the_failing_server(nginx):
    result = await one(svc("http", nginx.http, "moved", path="/to-closed", follow_redirects=1))
    assert result.state == State.CRITICAL
    closed = result.message.split("HTTP 127.0.0.1:")[2].split("/")[0]
    assert result.message.startswith(f"HTTP 127.0.0.1:{nginx.http}/to-closed after 1 redirect: "
                                     f"HTTP 127.0.0.1:{closed}/ refused the connection after ")


async def test_the_phases_of_a_request_are_measured(nginx):
    # A name to resolve (from /etc/hosts). Name lookups here have been seen to stall for the
    # resolver's 5 s now and then, hence the longer timeout of the checks that make one.
    result = await one(svc("https", nginx.https, "phases", host="localhost", ca_file=nginx.ca,
                           timeout=15))
    assert result.state == State.OK, result.message
    phases = {name: metric(result, f"{name}_seconds").value for name in ("dns", "connect", "first_byte")}
    assert all(value > 0 for value in phases.values()), phases
    assert sum(phases.values()) <= metric(result, "response_seconds").value


async def test_redirect_to_https_judges_that_sites_certificate(nginx):
    result = await one(svc("http", nginx.http, "to-https", path="/to-https", follow_redirects=1,
                           ca_file=nginx.ca, expect_text="host localhost", timeout=15))
    assert result.state == State.OK, result.message
    assert "after 1 redirect" in result.message and "certificate valid for 90 days" in result.message
    assert 89 < metric(result, "cert_expiry_days").value <= 90


async def test_an_intermediate_expiring_first_is_found_after_a_redirect(nginx):
    direct, redirected = await run(
        svc("https", nginx.chain, "direct", server_name="localhost", ca_file=nginx.chain_ca),
        svc("http", nginx.http, "redirected", path="/to-chain", follow_redirects=1,
            ca_file=nginx.chain_ca, expect_text="chained site", timeout=15))
    for result in (direct, redirected):
        assert result.state == State.WARNING, result.message
        assert "chain certificate 'Test Intermediate CA' expires in 10 days" in result.message
        assert 9 < metric(result, "cert_expiry_days").value <= 10
    assert "after 1 redirect" in redirected.message


async def test_each_tls_site_on_the_way_is_judged(nginx):
    # localhost's certificate is good; the site it redirects to (by IP: no SNI, nginx's default
    # certificate for default.invalid) is not, and that is named.
    result = await one(svc("https", nginx.https, "hops", vhost="localhost", path="/to-ip",
                           follow_redirects=1, ca_file=nginx.ca))
    assert result.state == State.CRITICAL
    assert result.message.endswith("; certificate valid for 90 days; 127.0.0.1: certificate is "
                                   "not valid for 127.0.0.1"), result.message


async def test_an_untrusted_certificate_is_still_measured(nginx):
    result = await one(svc("https", nginx.https, "untrusted", server_name="www.example.net"))
    assert result.state == State.CRITICAL
    assert "answered 200 OK" in result.message
    assert result.message.endswith("; certificate not trusted: unable to get local issuer "
                                   "certificate; certificate expires in 90 days"), result.message
    assert 89 < metric(result, "cert_expiry_days").value <= 90


async def test_basic_auth_from_the_url_is_sent_and_never_shown(nginx):
    base = f"127.0.0.1:{nginx.http}/private/"
    good, wrong, none = await run(
        svc("http", name="good", url=f"http://probe:s3cr%40t@{base}", expect_text="private page"),
        svc("http", name="wrong", url=f"http://probe:nope@{base}"),
        svc("http", name="none", url=f"http://{base}"))
    assert good.state == State.OK, good.message
    assert wrong.state == State.CRITICAL and "answered 401 Unauthorized" in wrong.message
    assert none.state == State.CRITICAL and "answered 401" in none.message
    for result in (good, wrong):
        assert "s3cr" not in result.message and "nope" not in result.message
        assert "probe" not in result.message


async def test_basic_auth_with_username_and_password_file(nginx, write_config, tmp_path):
    secret = tmp_path / "web.secret"
    secret.write_text("s3cr@t\n")
    secret.chmod(0o600)
    tables = [f"""
        [[services]]
        name = "{name}"
        kind = "https"
        host = "localhost"
        port = {nginx.https}
        path = "/private/"
        ca_file = "{nginx.ca}"
        username = "probe"
        {password}
        timeout = "15s"
    """ for name, password in (("private", f'password_file = "{secret}"'),
                                ("by-env", 'password_env = "WEB_SECRET"'))]
    config = load_config(write_config("".join(tables)), environ={"WEB_SECRET": "wrong-one"})
    good, wrong = await run(*config.services)
    assert good.state == State.OK and "answered 200 OK" in good.message, good.message
    assert wrong.state == State.CRITICAL and "answered 401 Unauthorized" in wrong.message
    for result in (good, wrong):
        assert "s3cr" not in result.message and "wrong-one" not in result.message


async def test_international_names_go_out_in_their_ascii_form(nginx):
    by_vhost, by_url = await run(
        svc("http", nginx.http, "vhost", vhost="bücher.example", expect_text="international"),
        svc("http", name="url", host="127.0.0.1", url=f"http://bücher.example:{nginx.http}/",
            expect_text="international"))
    assert by_vhost.state == State.OK, by_vhost.message
    assert by_url.state == State.OK, by_url.message
    assert by_vhost.message.startswith(f"HTTP xn--bcher-kva.example:{nginx.http}/ answered 200")


async def test_client_certificate(nginx):
    without, with_cert = await run(
        svc("https", nginx.mtls, "without", ca_file=nginx.ca),
        svc("https", nginx.mtls, "with", ca_file=nginx.ca, client_cert=nginx.client[0],
            client_key=nginx.client[1], expect_text="CN=probe.example.net"))
    assert without.state == State.CRITICAL and "answered 400" in without.message
    assert with_cert.state == State.OK, with_cert.message
    assert "certificate valid for 90 days" in with_cert.message


async def test_client_certificate_is_not_sent_on_a_redirect_to_another_site(nginx):
    # `other` takes a client certificate if one comes (ssl_verify_client optional) and says
    # whether it got one; the same site again (`/again`) still gets it.
    cert = {"ca_file": nginx.ca, "client_cert": nginx.client[0], "client_key": nginx.client[1],
            "follow_redirects": 1}
    elsewhere, again = await run(
        # (with the certificate it would say "client certificate: SUCCESS CN=probe...")
        svc("https", nginx.mtls, "elsewhere", path="/elsewhere",
            expect_text="client certificate: NONE", timeout=15, **cert),
        svc("https", nginx.mtls, "again", path="/again", expect_text="CN=probe.example.net", **cert))
    assert elsewhere.state == State.OK, elsewhere.message
    assert again.state == State.OK, again.message
    assert "after 1 redirect" in elsewhere.message and "after 1 redirect" in again.message


async def test_gzip_from_nginx_is_decoded(nginx):
    result = await one(svc("http", nginx.http, "page", expect_text="hello from nginx",
                           expect_regex=r"(padding ){200}"))
    assert result.state == State.OK, result.message


async def test_through_a_proxy(nginx):
    proxy = web.Proxy()
    server = await asyncio.start_server(proxy.handle, "127.0.0.1", 0)
    address = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}"
    try:
        plain, tls = await run(
            svc("http", nginx.http, "plain", path="/host", proxy=address, expect_text="host"),
            svc("https", nginx.https, "tls", vhost="www.example.net", ca_file=nginx.ca,
                proxy=address.replace("//", "//agent:pr%40xy@"), expect_text="the www site"))
    finally:
        server.close()
    assert plain.state == State.OK, plain.message
    assert tls.state == State.OK, tls.message
    assert "certificate valid for 90 days" in tls.message
    assert f"GET http://127.0.0.1:{nginx.http}/host HTTP/1.1" in proxy.seen
    assert f"CONNECT 127.0.0.1:{nginx.https} HTTP/1.1" in proxy.seen
    assert "Proxy-Authorization: Basic YWdlbnQ6cHJAeHk=" in proxy.seen  # agent:pr@xy
    assert "pr@xy" not in tls.message and "agent" not in tls.message
    down = await one(svc("http", nginx.http, "down", proxy=f"http://127.0.0.1:{srv.closed_port()}"))
    assert down.state == State.CRITICAL and "through the proxy" in down.message


# -- hostile servers ----------------------------------------------------------------------------


async def test_a_64_mib_chunk_or_a_gzip_bomb_neither_holds_the_loop_nor_outlives_the_timeout(
        servers, heartbeat, tmp_path):
    pair = srv.make_cert(tmp_path)
    plain = await servers(web.huge_chunk)
    tls = await servers(web.huge_chunk, tls=srv.server_context(pair))
    endless = await servers(web.trickle)
    bomb = await servers(web.answers(await asyncio.to_thread(web.gzip_bomb)))
    six = [await servers(web.huge_chunk, host="::1")] if "::1" in LOOPBACKS else []
    *big_six, big, big_tls, never, small, bombed = await run(
        *(svc("http", port, "big-six", host="::1", timeout=5, expect_text="needle") for port in six),
        svc("http", plain, "big", timeout=5, expect_text="needle"),
        svc("https", tls, "big-tls", timeout=5, ca_file=pair[0]),
        svc("http", endless, "never", timeout=2),
        svc("http", plain, "small", timeout=5, max_body=65536, expect_text="not there"),
        svc("http", bomb, "bomb", timeout=5))
    assert bombed.state == State.OK, bombed.message
    assert "(1048576 bytes, more not read)" in bombed.message
    for result in (big, *big_six):
        assert result.state == State.OK, result.message
        assert "more not read" in result.message
    assert big_tls.state == State.OK, big_tls.message
    assert "(1048576 bytes, more not read)" in big_tls.message
    assert small.state == State.CRITICAL
    assert "without the text 'not there' in its first 65536 bytes" in small.message
    assert never.state == State.CRITICAL
    assert never.message.startswith(f"HTTP 127.0.0.1:{endless} sent no end of the HTTP body "
                                    "within 2.00 s (got ")
    # The old client held the loop for the whole 64 MiB (40 s); two seconds are room for the
    # scheduling hiccups of a busy machine, not a speed target.
    assert heartbeat.ticks > 10 and heartbeat.longest < 2.0, heartbeat.longest


async def test_hostile_answers(servers):
    hints, negative, zipped, kept, kept_text, headers = await run(
        svc("http", await servers(web.early_hints), "hints", expect_text="the answer"),
        svc("http", await servers(web.negative_length), "negative"),
        svc("http", await servers(web.gzipped), "gzip", expect_text="Welcome to the compressed"),
        svc("http", await servers(web.keep_alive_without_length), "kept", timeout=2),
        svc("http", await servers(web.keep_alive_without_length), "kept-text", timeout=2,
            expect_text="hello"),
        svc("http", await servers(web.endless_headers), "headers", timeout=2))
    assert hints.state == State.OK and "answered 200 OK" in hints.message, hints.message
    assert negative.state == State.CRITICAL
    assert "sent a malformed HTTP answer" in negative.message, negative.message
    assert zipped.state == State.OK, zipped.message
    for result in (kept, kept_text):  # before: each waited for its timeout
        assert result.state == State.OK, result.message
    assert headers.state == State.CRITICAL
    assert "sent a malformed HTTP answer" in headers.message, headers.message
    ftp = await servers(web.answers(b"HTTP/1.1 302 Found\r\nLocation: ftp://files.example/\r\n"
                                    b"Content-Length: 0\r\n\r\n"))
    unusable = await one(svc("http", ftp, "ftp", follow_redirects=1))
    assert unusable.message == f"HTTP 127.0.0.1:{ftp}/ redirected to unusable 'ftp://files.example/'"


async def test_a_hostile_redirect_reaches_messages_said(servers, tmp_path):
    # The server echoes our basic auth into its Location (with a bidi override and a terminal
    # escape) and then into a broken status line, or stalls after the redirect: whatever it
    # says reaches the message without the password (in any form) or control characters.
    from monitor.text import CONTROL

    pair = srv.make_cert(tmp_path)
    garbage = await servers(web.echoing_redirect("garbage"))
    garbage_tls = await servers(web.echoing_redirect("garbage"), tls=srv.server_context(pair))
    stall_tls = await servers(web.echoing_redirect("stall"), tls=srv.server_context(pair))
    login = {"username": "probe", "password": "s3cret", "ca_file": pair[0], "follow_redirects": 2}
    by_fields, by_url, stalled = await run(
        svc("https", garbage_tls, "fields", **login),
        svc("http", name="url", url=f"http://probe:s3cret@127.0.0.1:{garbage}/",
            follow_redirects=2),
        svc("https", stall_tls, "stalled", timeout=2, **login))
    for result in (by_fields, by_url, stalled):
        assert result.state == State.CRITICAL, result.message
        assert "after 1 redirect" in result.message, result.message
        assert "***/next" in result.message, result.message
        assert not CONTROL.search(result.message), repr(result.message)
        for secret in ("s3cret", "czNjcmV0", "cHJvYmU6czNjcmV0"):  # as typed, and in base64
            assert secret not in result.message, result.message
    for result in (by_fields, by_url):
        assert "sent a malformed HTTP answer" in result.message, result.message
        assert "2x0 ***" in result.message, result.message
    assert "sent no HTTP response within 2.00 s (after 1 redirect, at HTTPS 127.0.0.1:" \
        in stalled.message, stalled.message


async def test_post_with_a_body_and_a_regex(servers):
    port = await servers(web.echo)
    form, as_json, regex, no_match, then_get = await run(
        svc("http", port, "form", method="POST", body="a=1&b=2",
            expect_text="POST application/x-www-form-urlencoded a=1&b=2"),
        svc("http", port, "json", method="POST", body='{"ping": 1}', content_type="application/json",
            expect_text='application/json {"ping": 1}'),
        svc("http", port, "regex", expect_regex=r"^GET None $"),
        svc("http", port, "no-match", expect_regex=r"POST"),
        svc("http", port, "then-get", method="POST", body="x=1", path="/form", follow_redirects=1,
            expect_text="GET None "))
    for result in (form, as_json, regex, then_get):
        assert result.state == State.OK, result.message
    assert no_match.state == State.CRITICAL
    assert "but nothing matched 'POST'" in no_match.message


async def test_a_catastrophic_expect_regex_holds_neither_the_loop_nor_a_thread(servers, heartbeat):
    """A pattern from the config that backtracks without end over the page: the loop keeps its
    turns (re held the GIL for as long as it matched, thread or not), the check ends at its
    timeout, UNKNOWN (the server answered; the check cannot judge), and the thread that
    matched is free again, not busy for the rest of the agent's life."""
    from concurrent.futures import ThreadPoolExecutor

    body = b"a" * 40 + b"!"
    page = await servers(web.answers(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body)
                                     + body))
    one_thread = ThreadPoolExecutor(1)  # the matching runs on the loop's default executor
    asyncio.get_running_loop().set_default_executor(one_thread)
    stuck, fine = await run(svc("http", page, "stuck", expect_regex=CATASTROPHIC, timeout=1),
                            svc("http", page, "fine", expect_regex=r"a{40}!", timeout=10))
    assert fine.state == State.OK, fine.message
    assert stuck.state == State.UNKNOWN, stuck.message
    assert stuck.message == (f"HTTP 127.0.0.1:{page} answered, but expect_regex "
                             f"{CATASTROPHIC!r} did not finish matching within 1.00 s (41 bytes): "
                             "does it backtrack without end? Simplify the pattern")
    assert heartbeat.ticks > 10, heartbeat.ticks  # (about 100 fit in that second)
    # The one thread is free again: it gave up at the check's timeout (with re, it would
    # match for longer than this test lives). 30 s is a bound for a hung test, not a target.
    assert await asyncio.wait_for(asyncio.to_thread(str, "free"), 30) == "free"
    one_thread.shutdown(wait=False)


@pytest.mark.parametrize("host", LOOPBACKS)
async def test_a_stalled_tls_handshake_says_so(servers, host):
    port = await servers(srv.stall, host=host)
    # (Long enough for a busy machine to make the TLS context and connect.)
    result = await one(svc("https", port, "stalled", host=host, timeout=2))
    assert result.state == State.CRITICAL
    assert result.message == (f"HTTPS {srv.hostport(host, port)} accepted the connection but the "
                              "TLS handshake did not complete within 2.00 s")


def test_http_config_errors(write_config, tmp_path):
    def error(body: str) -> str:
        with pytest.raises(ConfigError) as info:
            load_config(write_config(f'[[services]]\nname = "x"\n{body}'))
        return str(info.value)

    secret = tmp_path / "web.secret"
    secret.write_text("s3cr@t\n")
    login = f'username = "u"\npassword_file = "{secret}"\n'
    assert "services[0].username: a login check needs tls = true" in error(
        f'kind = "http"\nhost = "a"\n{login}')
    assert "services[0].username: the url has user:password@ too" in error(
        f'kind = "https"\nurl = "https://u:p@a/"\n{login}')
    assert "services[0].username: HTTP basic auth cannot carry a ':'" in error(
        'kind = "https"\nhost = "a"\n' + login.replace('"u"', '"u:v"'))
    assert "services[0].resolver: expected an IP address" in error(
        'kind = "http"\nhost = "a"\nresolver = "dns.example.net"\n')

    assert "services[0].body: only a method = \"POST\"" in error(
        'kind = "http"\nhost = "a"\nbody = "x"\n')
    assert "services[0].expect_text: a method = \"HEAD\" answer has no body" in error(
        'kind = "http"\nhost = "a"\nmethod = "HEAD"\nexpect_text = "x"\n')
    assert "services[0].expect_regex: not a valid regular expression" in error(
        'kind = "http"\nhost = "a"\nexpect_regex = "(["\n')
    bad_url = error('kind = "http"\nurl = "http://probe:s3cret@host:x/"\n')
    assert "expected a URL" in bad_url and "s3cret" not in bad_url
    assert "services[0].url: not a valid international name" in error(
        'kind = "http"\nurl = "http://a\u3002\u3002b/"\n')
    assert "services[0].proxy: expected a URL" in error('kind = "http"\nhost = "a"\nproxy = "x"\n')
    assert "services[0].client_key: needs client_cert" in error(
        'kind = "https"\nhost = "a"\nclient_key = "/k"\n')
    assert "only http/https checks have max_body" in error(
        'kind = "tcp"\nhost = "a"\nport = 1\nmax_body = "2MiB"\n')
    config = load_config(write_config('[[services]]\nname = "x"\nkind = "http"\nhost = "a"\n'
                                      'max_body = "64KiB"\n'))
    assert config.services[0].max_body == 65536
    assert "only http/https checks have proxy" in error(
        'kind = "tcp"\nhost = "a"\nport = 1\nproxy = "http://p:1"\n')


async def test_timeouts_name_the_stage_and_the_site(servers):
    stall = await servers(srv.stall)

    async def to_stall(reader, writer):
        await web.read_request(reader)
        writer.write(f"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:{stall}/next\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        await writer.drain()

    moved = await servers(to_stall)
    answer, named, redirected = await run(
        svc("http", stall, "answer", timeout=1),
        svc("http", name="named", host="127.0.0.1", url=f"http://www.example.net:{stall}/x",
            timeout=1),
        svc("http", moved, "redirected", follow_redirects=1, timeout=1))
    assert answer.message == f"HTTP 127.0.0.1:{stall} sent no HTTP response within 1.00 s"
    assert named.message == f"HTTP www.example.net:{stall} sent no HTTP response within 1.00 s"
    assert redirected.message == (f"HTTP 127.0.0.1:{moved} sent no HTTP response within 1.00 s "
                                  f"(after 1 redirect, at HTTP 127.0.0.1:{stall}/next)")


def test_redirect_targets():
    from collectors.services_http import Hop, next_hop

    here = Hop(False, "192.0.2.80", 80, "/a/b", "www.example.net")
    assert next_hop(here, "c?d=1") == Hop(False, "192.0.2.80", 80, "/a/c?d=1", "www.example.net")
    assert next_hop(here, "https://www.example.net/") == Hop(True, "www.example.net", 443, "/",
                                                              "www.example.net")
    assert next_hop(here, "http://bücher.example:8080/x") == Hop(
        False, "xn--bcher-kva.example", 8080, "/x", "xn--bcher-kva.example:8080")
    assert next_hop(here, "http://[::1]:8080/") == Hop(False, "::1", 8080, "/", "[::1]:8080")
    assert next_hop(here, "http://u:p@other.example/") == Hop(False, "other.example", 80, "/",
                                                               "other.example")
    posted = Hop(False, "192.0.2.80", 80, "/form", "www.example.net", "POST")
    assert next_hop(posted, "/done", 303).method == "GET"
    assert next_hop(posted, "/again", 307).method == "POST"
    assert next_hop(here, "ftp://files.example/") == "ftp://files.example/"
    assert next_hop(here, "http://www.example.net:99999/") == "http://www.example.net:99999/"


async def test_a_stalled_name_lookup_names_the_dns_stage(nginx, tmp_path):
    # A "resolver" that takes the query and never answers, and real unbound for the good case.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    try:
        stalled = f"127.0.0.1:{silent.getsockname()[1]}"
        with daemons.unbound(tmp_path, ['local-zone: "example.test." static',
                                        'local-data: "www.example.test. 300 IN A 127.0.0.1"']) as port:
            lookup, redirected, good = await run(
                svc("http", nginx.http, "lookup", host="www.example.test", resolver=stalled,
                    timeout=1),
                svc("http", nginx.http, "redirected", path="/to-https", follow_redirects=1,
                    resolver=stalled, timeout=1),
                svc("http", nginx.http, "good", host="www.example.test",
                    resolver=f"127.0.0.1:{port}", path="/host", expect_text="www.example.test"))
    finally:
        silent.close()
    assert lookup.message == (f"HTTP www.example.test:{nginx.http}: name lookup of "
                              "www.example.test timed out after 1.00 s")
    assert redirected.message == (f"HTTP 127.0.0.1:{nginx.http}: name lookup of localhost "
                                  f"timed out after 1.00 s (after 1 redirect, at HTTPS "
                                  f"localhost:{nginx.https}/host)")
    assert good.state == State.OK, good.message
    assert metric(good, "dns_seconds").value > 0


async def test_a_server_that_fails_aaaa_queries_still_gives_the_a_address(nginx):
    """A DNS server (or a middlebox in front of it) that answers A but SERVFAILs AAAA: the
    site is reachable over IPv4, so the check is OK; only a name without any address fails."""
    import threading

    import dns.message
    import dns.rcode
    import dns.rdatatype
    import dns.rrset

    server = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    server.bind(("127.0.0.1", 0))
    server.settimeout(0.2)
    running = True

    def answer() -> None:
        while running:
            try:
                data, peer = server.recvfrom(4096)
            except TimeoutError:
                continue
            query = dns.message.from_wire(data)
            reply = dns.message.make_response(query)
            question = query.question[0]
            if question.rdtype == dns.rdatatype.A and str(question.name) == "www.example.test.":
                reply.answer.append(dns.rrset.from_text(question.name, 300, "IN", "A", "127.0.0.1"))
            else:
                reply.set_rcode(dns.rcode.SERVFAIL)
            server.sendto(reply.to_wire(), peer)

    thread = threading.Thread(target=answer, daemon=True)
    thread.start()
    try:
        where = f"127.0.0.1:{server.getsockname()[1]}"
        good, nowhere = await run(
            svc("http", nginx.http, "good", host="www.example.test", resolver=where,
                path="/host", expect_text="www.example.test"),
            svc("http", nginx.http, "nowhere", host="nowhere.example.test", resolver=where))
    finally:
        running = False
        thread.join()
        server.close()
    assert good.state == State.OK, good.message
    assert nowhere.state == State.CRITICAL and "cannot be resolved" in nowhere.message
