"""Small real servers on 127.0.0.1 port 0 for the service-check tests: line protocols (IMAP,
POP3, FTP, SSH banner, SMTP that refuses), HTTP(S) with redirects, a UDP DNS responder built
with dnspython, a server that accepts and stalls, and certificates made with `cryptography`."""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import dns.flags
import dns.message
import dns.rcode
import dns.rdatatype
import dns.rrset

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


def _issue(cn: str, start, end, *, ca: bool, signer=None, alt: tuple[str, ...] = ()):
    """(key, certificate) for `cn`, signed by signer = (its key, its certificate), else by
    itself; `alt` names go in the subjectAltName (IP literals as IP addresses)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)])
    signer_key, signer_cert = signer if signer else (key, None)
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(signer_cert.subject if signer_cert else name)
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(start).not_valid_after(end)
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True))
    if alt:
        names: list[x509.GeneralName] = []
        for entry in alt:
            try:
                names.append(x509.IPAddress(ipaddress.ip_address(entry)))
            except ValueError:
                names.append(x509.DNSName(entry))
        builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
    return key, builder.sign(signer_key, hashes.SHA256())


def _write_pem(path: Path, *certs) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs))
    return path


def _write_key(path: Path, key) -> Path:
    from cryptography.hazmat.primitives import serialization

    path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                       serialization.PrivateFormat.PKCS8,
                                       serialization.NoEncryption()))
    return path


def make_cert(directory: Path, *, days: float = 90, names: tuple[str, ...] = ("localhost", "127.0.0.1"),
              expired: bool = False, stem: str = "cert") -> tuple[Path, Path]:
    """A self-signed certificate (it is its own CA, so ca_file = cert trusts it)."""
    now = datetime.datetime.now(datetime.UTC)
    if expired:
        start, end = now - datetime.timedelta(days=30), now - datetime.timedelta(days=3)
    else:
        start, end = now - datetime.timedelta(days=1), now + datetime.timedelta(days=days)
    key, cert = _issue(names[0], start, end, ca=True, alt=names)
    return _write_pem(directory / f"{stem}.pem", cert), _write_key(directory / f"{stem}.key", key)


def make_chain(directory: Path, *, intermediate_days: float, leaf_days: float = 90,
               stem: str = "chain") -> tuple[Path, Path, Path]:
    """Root CA -> intermediate CA -> server certificate for localhost/127.0.0.1, as a web server
    has them: (leaf + intermediate PEM, leaf key, root PEM for ca_file)."""
    now = datetime.datetime.now(datetime.UTC)
    start = now - datetime.timedelta(days=1)

    def until(days: float) -> datetime.datetime:
        return now + datetime.timedelta(days=days)

    root = _issue("Test Root CA", start, until(3650), ca=True)
    middle = _issue("Test Intermediate CA", start, until(intermediate_days), ca=True, signer=root)
    leaf_key, leaf = _issue("localhost", start, until(leaf_days), ca=False, signer=middle,
                            alt=("localhost", "127.0.0.1"))
    return (_write_pem(directory / f"{stem}.pem", leaf, middle[1]),
            _write_key(directory / f"{stem}.key", leaf_key),
            _write_pem(directory / f"{stem}-root.pem", root[1]))


def server_context(cert: tuple[Path, Path]) -> ssl.SSLContext:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*map(str, cert))
    return context


async def serve(handler: Handler, tls: ssl.SSLContext | None = None, host: str = "127.0.0.1"
                ) -> tuple[asyncio.Server, int]:
    async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await handler(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ssl.SSLError, OSError):
            pass
        finally:
            writer.transport.abort()

    server = await asyncio.start_server(wrapped, host, 0, ssl=tls)
    return server, server.sockets[0].getsockname()[1]


def hostport(host: str, port: int) -> str:
    """ "127.0.0.1:25", "[::1]:25": as the messages name a server."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def closed_port(host: str = "127.0.0.1") -> int:
    import socket

    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


# -- line protocols -----------------------------------------------------------------------------


def banner(*lines: str) -> Handler:
    async def handler(reader, writer):
        for line in lines:
            writer.write(line.encode() + b"\r\n")
        await writer.drain()
        await reader.read(1024)

    return handler


async def stall(reader, writer):
    # Never answers; returns when the client gives up, so the test's own fds stay flat too.
    while await reader.read(1024):
        pass


def imap(context: ssl.SSLContext | None = None) -> Handler:
    async def handler(reader, writer):
        writer.write(b"* OK [CAPABILITY IMAP4rev1 STARTTLS] Dovecot ready.\r\n")
        while line := await reader.readline():
            tag, _, cmd = line.decode().strip().partition(" ")
            if cmd.upper() == "STARTTLS" and context is not None:
                writer.write(f"{tag} OK Begin TLS negotiation now.\r\n".encode())
                await writer.drain()
                await writer.start_tls(context)
            elif cmd.upper() == "LOGOUT":
                writer.write(f"* BYE\r\n{tag} OK Logout completed.\r\n".encode())
                await writer.drain()
                return
            else:
                writer.write(f"{tag} BAD unknown\r\n".encode())

    return handler


def pop3(context: ssl.SSLContext | None = None) -> Handler:
    async def handler(reader, writer):
        writer.write(b"+OK Dovecot ready.\r\n")
        while line := await reader.readline():
            cmd = line.decode().strip().upper()
            if cmd == "STLS" and context is not None:
                writer.write(b"+OK Begin TLS negotiation\r\n")
                await writer.drain()
                await writer.start_tls(context)
            elif cmd == "QUIT":
                writer.write(b"+OK Logging out\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"-ERR unknown command\r\n")

    return handler


# -- HTTP ---------------------------------------------------------------------------------------


async def http(reader, writer):
    request = (await reader.readline()).decode()
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        k, _, v = line.decode().partition(":")
        headers[k.strip().lower()] = v.strip()
    method, path, _ = request.split(" ", 2)
    status, extra, body = "200 OK", "", b"Hello world from the test site"
    if path == "/redirect":
        status, extra, body = "302 Found", "Location: /final\r\n", b"moved"
    elif path == "/absolute":
        status, extra, body = "301 Moved", f"Location: http://{headers['host']}/final\r\n", b""
    elif path.startswith("/to-https/"):  # /to-https/PORT: on to another site, over TLS
        status, extra = "301 Moved", f"Location: https://localhost:{path.rsplit('/', 1)[1]}/final\r\n"
    elif path == "/loop":
        status, extra, body = "302 Found", "Location: /loop\r\n", b""
    elif path == "/final":
        body = b"the final page"
    elif path == "/spaced":  # a careless (or hostile) Location with a space and a control
        status, extra, body = "302 Found", "Location: /a b\x01c\r\n", b""
    elif path == "/a%20b%01c":
        body = b"quoted path"
    elif path == "/error":
        status, body = "503 Service Unavailable", b"down for maintenance"
    elif path == "/vhost":
        body = f"site {headers.get('host')}".encode()
    elif path == "/unsized":
        writer.write(b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nfirst part, ")
        await writer.drain()
        await asyncio.sleep(0.05)
        writer.write(b"second part")
        await writer.drain()
        return
    elif path == "/chunked":
        writer.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
                     b"6\r\nHello \r\n5\r\nchunk\r\n0\r\n\r\n")
        await writer.drain()
        return
    writer.write(f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nContent-Type: text/plain\r\n"
                 f"{extra}Connection: close\r\n\r\n".encode() + (b"" if method == "HEAD" else body))
    await writer.drain()


# -- DNS ----------------------------------------------------------------------------------------

ZONE = {("www.example.net.", "A"): ["192.0.2.10", "192.0.2.11"],
        ("example.net.", "MX"): ["10 mail.example.net."],
        # 30 x 60 characters: more than a UDP answer without EDNS may carry (512 bytes)
        ("big.example.net.", "TXT"): [f'"{i:02d}{"x" * 58}"' for i in range(30)]}


def dns_answer(data: bytes, udp: bool) -> bytes:
    """Answers from ZONE, NXDOMAIN for anything else; over UDP, above 512 bytes (or the EDNS
    payload the query offers), an empty truncated answer (TC), as a server does."""
    query = dns.message.from_wire(data)
    limit = max(512, query.payload) if udp and query.edns >= 0 else 512 if udp else None
    response = dns.message.make_response(query)
    q = query.question[0]
    records = ZONE.get((q.name.to_text().lower(), dns.rdatatype.to_text(q.rdtype)))
    if records:
        response.answer.append(dns.rrset.from_text_list(q.name, 300, "IN", q.rdtype, records))
    else:
        response.set_rcode(dns.rcode.NXDOMAIN)
    wire = response.to_wire(max_size=65535)
    if limit is not None and len(wire) > limit:
        response.answer.clear()
        response.flags |= dns.flags.TC
        wire = response.to_wire()
    return wire


class DnsResponder(asyncio.DatagramProtocol):
    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.transport.sendto(dns_answer(data, udp=True), addr)


async def _dns_over_tcp(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    size = int.from_bytes(await reader.readexactly(2), "big")
    wire = dns_answer(await reader.readexactly(size), udp=False)
    writer.write(len(wire).to_bytes(2, "big") + wire)
    await writer.drain()


class DnsServer:
    def __init__(self, udp: asyncio.DatagramTransport, tcp: asyncio.Server | None) -> None:
        self.udp, self.tcp = udp, tcp

    def close(self) -> None:
        self.udp.close()
        if self.tcp is not None:
            self.tcp.close()


async def serve_dns(tcp: bool = False) -> tuple[DnsServer, int]:
    """A UDP responder on 127.0.0.1 (with tcp=True, a TCP one on the same port number too)."""
    loop = asyncio.get_running_loop()
    for _ in range(20):
        server, port = await serve(_dns_over_tcp) if tcp else (None, 0)
        try:
            udp, _ = await loop.create_datagram_endpoint(DnsResponder,
                                                         local_addr=("127.0.0.1", port))
        except OSError:  # that port number is taken for UDP: try another
            if server is not None:
                server.close()
            continue
        return DnsServer(udp, server), udp.get_extra_info("sockname")[1]
    raise OSError("no port free for both UDP and TCP")


# -- servers that echo the password ---------------------------------------------------------


def echoing(kind: str, pad: int) -> Handler:
    """A login server (smtp, imap, pop3 or https) that refuses every login with a reply echoing the
    password it got `pad` characters into its text, as some do with what they could not parse."""

    def refusal(password: str) -> bytes:
        return (" " + "x" * pad + password + " was refused").encode()

    async def handler(reader, writer):
        if kind == "https":  # in the reason phrase of a 401 (and the Location of a redirect)
            headers = {}
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.decode().partition(":")
                headers[name.strip().lower()] = value.strip()
            password = base64.b64decode(headers["authorization"].split()[1]).decode()
            password = password.partition(":")[2]
            writer.write(b"HTTP/1.1 401" + refusal(password) + b"\r\nLocation: /" + refusal(password)[1:]
                         + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        elif kind == "smtp":
            writer.write(b"220 echo ESMTP\r\n")
            while line := await reader.readline():
                command = line.decode().strip()
                if command.upper().startswith("EHLO"):
                    writer.write(b"250-echo\r\n250 AUTH PLAIN LOGIN\r\n")
                elif command.upper().startswith("AUTH PLAIN"):
                    encoded = command.split(" ", 2)[2] if command.count(" ") >= 2 else ""
                    if not encoded:
                        writer.write(b"334 \r\n")
                        encoded = (await reader.readline()).decode().strip()
                    password = base64.b64decode(encoded).split(b"\0")[2].decode()
                    writer.write(b"535" + refusal(password) + b"\r\n")
                else:
                    writer.write(b"221 bye\r\n")
                    return
        elif kind == "imap":
            writer.write(b"* OK echo ready\r\n")
            while line := await reader.readline():
                tag, _, command = line.decode().strip().partition(" ")
                if command.upper() == "AUTHENTICATE PLAIN":
                    writer.write(b"+ \r\n")
                    encoded = (await reader.readline()).decode().strip()
                    password = base64.b64decode(encoded).split(b"\0")[2].decode()
                    writer.write(f"{tag} NO".encode() + refusal(password) + b"\r\n")
                else:
                    writer.write(f"{tag} OK bye\r\n".encode())
                    return
        else:
            writer.write(b"+OK echo ready\r\n")
            while line := await reader.readline():
                command = line.decode().strip()
                if command.upper().startswith("PASS "):
                    writer.write(b"-ERR" + refusal(command[5:]) + b"\r\n")
                elif command.upper().startswith("USER "):
                    writer.write(b"+OK\r\n")
                else:
                    writer.write(b"+OK bye\r\n")
                    return
        await writer.drain()

    return handler
