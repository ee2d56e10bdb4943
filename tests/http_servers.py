"""Servers for the http/https check tests: a real nginx on loopback (IPv4 and ::1, SNI sites,
basic auth, gzip, client certificates) started with its own config in a temporary directory,
hostile HTTP servers on asyncio streams, and a small forward proxy (absolute URLs and CONNECT)."""

from __future__ import annotations

import asyncio
import datetime
import gzip
import shutil
import socket
import subprocess
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

from tests import service_servers as srv

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"


def free_port() -> int:
    """A port free on both 127.0.0.1 and ::1 (nginx listens on both)."""
    for _ in range(50):
        with socket.socket() as four:
            four.bind(("127.0.0.1", 0))
            port = four.getsockname()[1]
            try:
                with socket.socket(socket.AF_INET6) as six:
                    six.bind(("::1", port))
            except OSError:
                continue
            return port
    raise OSError("no port free on both 127.0.0.1 and ::1")


def make_ca(directory: Path, stem: str = "ca"):
    """(key, certificate, PEM path) of a test CA."""
    now = datetime.datetime.now(datetime.UTC)
    key, cert = srv._issue("Test CA", now - datetime.timedelta(days=1),
                           now + datetime.timedelta(days=3650), ca=True)
    return key, cert, srv._write_pem(directory / f"{stem}.pem", cert)


def make_leaf(directory: Path, ca, names: tuple[str, ...], stem: str, days: float = 90
              ) -> tuple[Path, Path]:
    """A certificate for `names` signed by ca = (key, certificate): (PEM, key)."""
    now = datetime.datetime.now(datetime.UTC)
    key, cert = srv._issue(names[0], now - datetime.timedelta(days=1),
                           now + datetime.timedelta(days=days), ca=False, signer=ca, alt=names)
    return srv._write_pem(directory / f"{stem}.pem", cert), srv._write_key(directory / f"{stem}.key", key)


@dataclass
class Nginx:
    http: int  # plain sites; / says "hello from nginx <host>"
    https: int  # default certificate for "default.invalid"; www.example.net by SNI
    mtls: int  # asks for a client certificate signed by `ca`; /elsewhere redirects to `other`
    other: int  # another site (localhost) that takes a client certificate and says if it got one
    chain: int  # localhost with an intermediate CA that expires in 10 days (root: chain_ca)
    chain_ca: Path
    ca: Path  # the CA of the other certificates here (for ca_file)
    client: tuple[Path, Path]  # a client certificate and key it accepts
    process: subprocess.Popen


def start_nginx(directory: Path) -> Nginx:
    for sub in ("html", "html/private", "tmp"):
        (directory / sub).mkdir(parents=True, exist_ok=True)
    (directory / "html/index.html").write_text("hello from nginx " + "padding " * 200 + "\n")
    (directory / "html/private/index.html").write_text("the private page\n")
    (directory / "htpasswd").write_text("probe:{PLAIN}s3cr@t\n")
    ca_key, ca_cert, ca = make_ca(directory, stem="ca")
    default = make_leaf(directory, (ca_key, ca_cert), names=("default.invalid",), stem="default")
    www = make_leaf(directory, (ca_key, ca_cert), names=("www.example.net",), stem="www")
    local = make_leaf(directory, (ca_key, ca_cert), names=("localhost", "127.0.0.1", "::1"),
                          stem="local")
    client = make_leaf(directory, (ca_key, ca_cert), names=("probe.example.net",),
                           stem="client")
    chained = srv.make_chain(directory, intermediate_days=10, stem="chained")
    http, https, mtls, chain, other = (free_port(), free_port(), free_port(), free_port(),
                                       free_port())
    d = directory

    def listen(port: int, tls: bool = False) -> str:
        ssl = " ssl" if tls else ""
        return f"listen 127.0.0.1:{port}{ssl}; listen [::1]:{port}{ssl};"

    (d / "nginx.conf").write_text(f"""
master_process off;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    default_type text/plain;
    types {{ text/html html; }}
    gzip on;
    gzip_min_length 0;
    server {{
        {listen(http)}
        root {d}/html;
        location = /host {{ return 200 "host $host\\n"; }}
        location = /six {{ return 302 http://[::1]:{http}/host; }}
        location = /to-closed {{ return 302 http://127.0.0.1:{srv.closed_port()}/; }}
        location = /to-https {{ return 301 https://localhost:{https}/host; }}
        location = /to-chain {{ return 301 https://localhost:{chain}/; }}
        location /private/ {{ auth_basic "monitor"; auth_basic_user_file {d}/htpasswd; }}
    }}
    server {{
        {listen(http)}
        server_name xn--bcher-kva.example;
        location / {{ return 200 "the international site\\n"; }}
    }}
    server {{
        {listen(https, tls=True)}
        ssl_certificate {default[0]};
        ssl_certificate_key {default[1]};
        location / {{ return 200 "default site\\n"; }}
    }}
    server {{
        {listen(https, tls=True)}
        server_name www.example.net;
        ssl_certificate {www[0]};
        ssl_certificate_key {www[1]};
        location / {{ return 200 "the www site\\n"; }}
    }}
    server {{
        {listen(https, tls=True)}
        server_name localhost;
        ssl_certificate {local[0]};
        ssl_certificate_key {local[1]};
        location = /to-ip {{ return 301 https://127.0.0.1:{https}/; }}
        location /private/ {{ auth_basic "monitor"; auth_basic_user_file {d}/htpasswd; }}
        location / {{ return 200 "host $host\\n"; }}
    }}
    server {{
        {listen(chain, tls=True)}
        ssl_certificate {chained[0]};
        ssl_certificate_key {chained[1]};
        location / {{ return 200 "chained site\\n"; }}
    }}
    server {{
        {listen(mtls, tls=True)}
        ssl_certificate {local[0]};
        ssl_certificate_key {local[1]};
        ssl_verify_client on;
        ssl_client_certificate {ca};
        location = /elsewhere {{ return 302 https://localhost:{other}/; }}
        location = /again {{ return 302 https://127.0.0.1:{mtls}/; }}
        location / {{ return 200 "hello $ssl_client_s_dn\\n"; }}
    }}
    server {{
        {listen(other, tls=True)}
        ssl_certificate {local[0]};
        ssl_certificate_key {local[1]};
        ssl_verify_client optional;
        ssl_client_certificate {ca};
        location / {{ return 200 "client certificate: $ssl_client_verify $ssl_client_s_dn\\n"; }}
    }}
}}
""")
    process = subprocess.Popen([NGINX, "-p", str(d), "-c", str(d / "nginx.conf")],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"nginx did not start: {process.stderr.read().decode()}"  # type: ignore
                               f"{(d / 'error.log').read_text() if (d / 'error.log').exists() else ''}")
        try:
            socket.create_connection(("127.0.0.1", mtls), timeout=1).close()
            socket.create_connection(("::1", http), timeout=1).close()
            break
        except OSError:
            time.sleep(0.02)
    else:
        process.kill()
        raise RuntimeError("nginx did not listen within 10 s")
    return Nginx(http, https, mtls, other, chain, chained[2], ca, client, process)


# -- hostile servers ----------------------------------------------------------------------------


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    request = (await reader.readline()).decode()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    body = await reader.readexactly(int(headers.get("content-length", 0)))
    return request, headers, body


async def huge_chunk(reader, writer):
    """One 64 MiB chunk, written as fast as the client takes it."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4000000\r\nneedle ")
    piece = b"x" * 65536
    for _ in range(1024):
        writer.write(piece)
        await writer.drain()


async def trickle(reader, writer):
    """A chunked body that never ends: a small chunk every 20 ms."""
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    while True:
        writer.write(b"5\r\nabcde\r\n")
        await writer.drain()
        await asyncio.sleep(0.02)


def answers(raw: bytes):
    """A server that answers each connection's request with `raw` and keeps the connection
    open until the client gives up."""

    async def handler(reader, writer):
        await read_request(reader)
        writer.write(raw)
        await writer.drain()
        await reader.read(1)

    return handler


early_hints = answers(b"HTTP/1.1 103 Early Hints\r\nLink: </style.css>; rel=preload\r\n\r\n"
                      b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nthe answer")
negative_length = answers(b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\nhello")
# A gzip body whatever the request said (as some servers and caches do).
_ZIPPED = gzip.compress(b"<html>Welcome to the compressed page</html>")
gzipped = answers(b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Type: text/html\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(_ZIPPED) + _ZIPPED)


def gzip_bomb() -> bytes:
    """64 MiB of zeros in 64 KiB of gzip, as an answer (zlib lets other threads run)."""
    packer = zlib.compressobj(1, zlib.DEFLATED, 31)
    body = b"".join(packer.compress(bytes(1 << 20)) for _ in range(64)) + packer.flush()
    return (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n"
            % len(body) + body)


# A body without Content-Length or chunking on a connection the server keeps open.
keep_alive_without_length = answers(b"HTTP/1.1 200 OK\r\nConnection: keep-alive\r\n\r\n"
                                    b"hello there")


async def endless_headers(reader, writer):
    await read_request(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    n = 0
    while True:
        writer.write(b"X-Header-%d: value\r\n" % n)
        n += 1
        if n % 100 == 0:
            await writer.drain()
            await asyncio.sleep(0)


async def echo(reader, writer):
    """Answers with the request's method, Content-Type and body (a POST to /form: 303 to /)."""
    request, headers, body = await read_request(reader)
    if request.startswith("POST /form "):
        writer.write(b"HTTP/1.1 303 See Other\r\nLocation: /\r\nContent-Length: 0\r\n\r\n")
        await writer.drain()
        return
    answer = (f"{request.split(' ', 1)[0]} {headers.get('content-type')} ".encode() + body)
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(answer) + answer)
    await writer.drain()


def echoing_redirect(then: str):
    """A server that echoes the credentials it got (the Authorization header's base64) into a
    redirect's Location, between a right-to-left override and a terminal escape; the hop it
    leads to gets a status line that echoes them again (then="garbage") or nothing at all
    (then="stall")."""

    async def handler(reader, writer):
        request, headers, _ = await read_request(reader)
        creds = headers.get("authorization", "").removeprefix("Basic ").encode()
        if request.split(" ")[1] == "/":
            writer.write(b"HTTP/1.1 302 Found\r\nLocation: /x\xe2\x80\xae\x1b[2J" + creds
                         + b"/next\r\nContent-Length: 0\r\n\r\n")
        elif then == "garbage":
            writer.write(b"HTTP/1.1 2x0 " + creds + b"\xe2\x80\xae\x1b[2J\r\n\r\n")
        await writer.drain()
        await reader.read(1)

    return handler


# -- a forward proxy ----------------------------------------------------------------------------


class Proxy:
    """GET http://host:port/path (absolute form) and CONNECT host:port, to loopback only;
    `seen` lists the request lines (and Proxy-Authorization headers) it got."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def handle(self, reader, writer):
        line = (await reader.readline()).decode().strip()
        self.seen.append(line)
        headers = []
        while (h := await reader.readline()) not in (b"\r\n", b""):
            headers.append(h)
            if h.lower().startswith(b"proxy-authorization:"):
                self.seen.append(h.decode().strip())
        method, target, _ = line.split(" ", 2)
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            up_reader, up_writer = await asyncio.open_connection(host.strip("[]"), int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            from urllib.parse import urlsplit

            parts = urlsplit(target)
            up_reader, up_writer = await asyncio.open_connection(parts.hostname, parts.port or 80)
            path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
            up_writer.write(f"{method} {path} HTTP/1.1\r\n".encode() + b"".join(
                h for h in headers if not h.lower().startswith(b"proxy-")) + b"\r\n")

        async def pipe(src, dst):
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer),
                             return_exceptions=True)
