"""Real servers on 127.0.0.1 port 0 for the service-check tests.

Small asyncio servers speak just enough IMAP, POP3, FTP, SSH and HTTP; SMTP is aiosmtpd; DNS is
a UDP responder built with dnspython. Certificates come from a test CA made with `cryptography`.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@dataclass
class Pki:
    directory: Path
    ca_file: Path
    _ca_key: object
    _ca_cert: object

    @classmethod
    def create(cls, directory: Path) -> Pki:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Monitor Test CA")])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=30)).not_valid_after(now + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                         content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False,
                                         encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256())
        )
        ca_file = directory / "ca.pem"
        ca_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(directory, ca_file, key, cert)

    def server_context(self, hostname: str, days_left: float = 365, label: str | None = None
                       ) -> ssl.SSLContext:
        """A server context whose certificate (signed by the CA) names `hostname`."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        not_after = now + dt.timedelta(days=days_left)
        not_before = min(now - dt.timedelta(days=1), not_after - dt.timedelta(days=90))
        sans: list = [x509.DNSName(hostname)]
        with contextlib.suppress(ValueError):
            sans = [x509.IPAddress(ipaddress.ip_address(hostname))]
        ca_cert = self._ca_cert
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key())  # type: ignore[attr-defined]
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before).not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                self._ca_key.public_key()), critical=False)  # type: ignore[attr-defined]
            .sign(self._ca_key, hashes.SHA256())  # type: ignore[arg-type]
        )
        stem = label or f"{hostname}-{days_left:g}"
        cert_path, key_path = self.directory / f"{stem}.crt", self.directory / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                               serialization.PrivateFormat.PKCS8,
                                               serialization.NoEncryption()))
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_path, key_path)
        return ctx


class Servers:
    """Starts servers in the test's loop and closes them (and their connections) at the end."""

    def __init__(self) -> None:
        self._servers: list[asyncio.base_events.Server] = []
        self._writers: set[asyncio.StreamWriter] = set()
        self._transports: list[asyncio.BaseTransport] = []

    async def tcp(self, handler: Handler, ssl_ctx: ssl.SSLContext | None = None) -> int:
        async def wrapped(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self._writers.add(writer)
            try:
                await handler(reader, writer)
            except (OSError, asyncio.IncompleteReadError, ssl.SSLError, asyncio.CancelledError):
                pass
            finally:
                self._writers.discard(writer)
                writer.transport.abort()

        server = await asyncio.start_server(wrapped, "127.0.0.1", 0, ssl=ssl_ctx)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def protocol(self, factory: Callable[[], asyncio.BaseProtocol]) -> int:
        server = await asyncio.get_running_loop().create_server(factory, "127.0.0.1", 0)
        self._servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def udp(self, factory: Callable[[], asyncio.DatagramProtocol]) -> int:
        transport, _ = await asyncio.get_running_loop().create_datagram_endpoint(
            factory, local_addr=("127.0.0.1", 0))
        self._transports.append(transport)
        return transport.get_extra_info("sockname")[1]

    async def close(self) -> None:
        for writer in list(self._writers):
            writer.transport.abort()
        for server in self._servers:
            server.close()
        for transport in self._transports:
            transport.close()
        for server in self._servers:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(2):
                    await server.wait_closed()


def closed_port() -> int:
    """A port nothing listens on: bound and released, so the kernel refuses connections to it."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- protocol handlers -------------------------------------------------------------------------

async def _lines(reader: asyncio.StreamReader):
    while True:
        line = await reader.readline()
        if not line:
            return
        yield line.decode().strip()


def imap_handler(tls: ssl.SSLContext | None = None, greeting: str = "* OK [CAPABILITY IMAP4rev1] "
                 "test IMAP ready") -> Handler:
    async def handle(reader, writer):
        writer.write(greeting.encode() + b"\r\n")
        async for line in _lines(reader):
            tag, _, command = line.partition(" ")
            if command.upper() == "STARTTLS" and tls:
                writer.write(f"{tag} OK Begin TLS negotiation now\r\n".encode())
                await writer.drain()
                await writer.start_tls(tls)
            elif command.upper() == "LOGOUT":
                writer.write(f"* BYE bye\r\n{tag} OK LOGOUT completed\r\n".encode())
                await writer.drain()
                return
            else:
                writer.write(f"{tag} BAD unknown command\r\n".encode())
            await writer.drain()
    return handle


def pop3_handler(tls: ssl.SSLContext | None = None, greeting: str = "+OK test POP3 ready") -> Handler:
    async def handle(reader, writer):
        writer.write(greeting.encode() + b"\r\n")
        async for line in _lines(reader):
            if line.upper() == "STLS" and tls:
                writer.write(b"+OK Begin TLS\r\n")
                await writer.drain()
                await writer.start_tls(tls)
            elif line.upper() == "QUIT":
                writer.write(b"+OK bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"-ERR unknown command\r\n")
            await writer.drain()
    return handle


def ftp_handler(greeting: bytes = b"220-Welcome\r\n220 test FTP ready\r\n",
                tls: ssl.SSLContext | None = None) -> Handler:
    async def handle(reader, writer):
        writer.write(greeting)
        async for line in _lines(reader):
            if line.upper() == "AUTH TLS" and tls:
                writer.write(b"234 AUTH TLS ok\r\n")
                await writer.drain()
                await writer.start_tls(tls)
            elif line.upper() == "QUIT":
                writer.write(b"221 bye\r\n")
                await writer.drain()
                return
            else:
                writer.write(b"502 not implemented\r\n")
            await writer.drain()
    return handle


def banner_handler(banner: bytes) -> Handler:
    """Say `banner`, then read until the client goes away (SSH-like or any greeting)."""
    async def handle(reader, writer):
        writer.write(banner)
        await writer.drain()
        while await reader.read(4096):
            pass
    return handle


def stall_handler(stalled: list | None = None) -> Handler:
    """Accept and never say a word (but notice when the client hangs up, to free the socket)."""
    async def handle(reader, writer):
        if stalled is not None:
            stalled.append(writer)
        while await reader.read(4096):
            pass
    return handle


def echo_handler() -> Handler:
    async def handle(reader, writer):
        data = await reader.readline()
        writer.write(b"echo: " + data)
        await writer.drain()
    return handle


def http_handler(routes: dict[str, tuple[int, dict[str, str], bytes]], seen: list | None = None,
                 chunked: bool = False) -> Handler:
    """Answer GETs from `routes` (path -> status, headers, body); records (path, Host)."""
    async def handle(reader, writer):
        request = (await reader.readline()).decode().split()
        headers = {}
        async for line in _lines(reader):
            if not line:
                break
            name, _, value = line.partition(":")
            headers[name.lower()] = value.strip()
        path = request[1] if len(request) > 1 else "/"
        if seen is not None:
            seen.append((path, headers.get("host")))
        status, extra, body = routes.get(path, (404, {}, b"not found"))
        head = f"HTTP/1.1 {status} {'OK' if status == 200 else 'Status'}\r\n"
        for k, v in extra.items():
            head += f"{k}: {v}\r\n"
        if chunked:
            head += "Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
            payload = b"".join(b"%x\r\n%s\r\n" % (len(body[i:i + 7]), body[i:i + 7])
                               for i in range(0, len(body), 7)) + b"0\r\n\r\n"
        else:
            head += f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
            payload = body
        writer.write(head.encode() + payload)
        await writer.drain()
    return handle


class DnsResponder(asyncio.DatagramProtocol):
    """A tiny authoritative-style responder: zone maps (name, type) -> list of rdata texts."""

    def __init__(self, zone: dict[tuple[str, str], list[str]], drop: bool = False) -> None:
        self.zone = zone
        self.drop = drop
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        import dns.message
        import dns.rcode
        import dns.rdatatype
        import dns.rrset

        if self.drop:
            return
        query = dns.message.from_wire(data)
        response = dns.message.make_response(query)
        question = query.question[0]
        name = question.name.to_text().rstrip(".").lower()
        rdtype = dns.rdatatype.to_text(question.rdtype)
        if (name, rdtype) in self.zone:
            response.answer.append(dns.rrset.from_text_list(
                question.name, 300, "IN", rdtype, self.zone[(name, rdtype)]))
        elif not any(n == name for n, _ in self.zone):
            response.set_rcode(dns.rcode.NXDOMAIN)
        assert self.transport is not None
        self.transport.sendto(response.to_wire(), addr)
