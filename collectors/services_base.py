"""What every service probe shares: its outcome, safe text from untrusted peers, TLS contexts
and the certificate verdict (days to expiry, host name, chain)."""

from __future__ import annotations

import datetime
import ipaddress
import re
import ssl
from dataclasses import dataclass, field

from monitor.config import ServiceCheck
from monitor.model import State

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]+")


def clean(text: str | bytes, limit: int = 80) -> str:
    """Banner text fit for a one-line message: control characters gone, length bounded."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = _CONTROL.sub(" ", text).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"


def hostport(host: str, port: int | None) -> str:
    """"mail.example.net:25", "[2001:db8::25]:25" for the messages."""
    host = clean(host, 60)
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def secs(value: float) -> str:
    return f"{value:.3f} s" if value < 0.1 else f"{value:.2f} s"


@dataclass
class Outcome:
    """What a probe found. `metrics`: metric -> (value, unit), stored with response_seconds.

    `response` is the measured time (None: nothing answered, so no response time exists).
    """

    state: State
    message: str
    response: float | None = None
    metrics: dict[str, tuple[float | None, str]] = field(default_factory=dict)


class Stage:
    """Where a probe is, so a timeout can say what did not happen ("sent no greeting")."""

    def __init__(self) -> None:
        self.doing = "connect"
        self.note = ""
        self.cert: Outcome | None = None


def tls_context(check: ServiceCheck, verify: bool) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(check.ca_file) if check.ca_file else None)
    # Host names are matched by `cert_verdict`, so a wrong name and an expiry are both reported.
    context.check_hostname = False
    context.verify_mode = ssl.CERT_REQUIRED if verify else ssl.CERT_NONE
    return context


def server_name(check: ServiceCheck) -> str:
    return check.server_name or check.vhost or check.host


def _names_match(pattern: str, name: str) -> bool:
    pattern, name = pattern.lower().rstrip("."), name.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = name.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == name


def hostname_matches(cert, name: str) -> bool:
    """RFC 6125: subjectAltName DNS/IP entries (the common name only when there is no SAN)."""
    from cryptography import x509
    from cryptography.x509.oid import NameOID

    try:
        address = ipaddress.ip_address(name)
    except ValueError:
        address = None
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        san = None
    if san is not None:
        if address is not None:
            return address in san.get_values_for_type(x509.IPAddress)
        return any(_names_match(p, name) for p in san.get_values_for_type(x509.DNSName))
    cns = [a.value for a in cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    return any(isinstance(cn, str) and _names_match(cn, name) for cn in cns)


def cert_verdict(check: ServiceCheck, der: bytes | None, now: float,
                 verify_error: str | None = None) -> Outcome:
    """The certificate part of a TLS check: days to expiry (metric cert_expiry_days), the host
    name and, when the handshake refused it, the chain error OpenSSL gave."""
    from cryptography import x509

    if der is None:
        return Outcome(State.CRITICAL, "sent no certificate")
    cert = x509.load_der_x509_certificate(der)
    expires = cert.not_valid_after_utc
    days = (expires.timestamp() - now) / 86400
    when = expires.astimezone(datetime.UTC).strftime("%Y-%m-%d")
    problems: list[tuple[State, str]] = []
    if days < 0:
        problems.append((State.CRITICAL, f"certificate expired {-days:.0f} days ago ({when})"))
    elif days < check.cert_critical_days:
        problems.append((State.CRITICAL, f"certificate expires in {days:.1f} days ({when})"))
    elif days < check.cert_warning_days:
        problems.append((State.WARNING, f"certificate expires in {days:.0f} days ({when})"))
    name = server_name(check)
    if check.verify_hostname and not hostname_matches(cert, name):
        problems.append((State.CRITICAL, f"certificate is not valid for {clean(name)}"))
    if verify_error and days >= 0:
        problems.append((State.CRITICAL, f"certificate not trusted: {clean(verify_error)}"))
    metrics: dict[str, tuple[float | None, str]] = {"cert_expiry_days": (round(days, 3), "d")}
    if not problems:
        return Outcome(State.OK, f"certificate valid for {days:.0f} days", metrics=metrics)
    state = State.worst(s for s, _ in problems)
    return Outcome(state, "; ".join(m for _, m in problems), metrics=metrics)
