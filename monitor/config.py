"""The agent's configuration: TOML in, typed and validated dataclasses out.

Every section is a dataclass; field types drive validation (see `_convert`). Errors name the
file, the line and the key path: `config.toml:42: snmp.devices[1].port: expected an integer
1-65535, got "abc"`. Unknown keys are errors with a "did you mean". `config.toml` at the project
root is the commented reference for every key defined here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import socket
import stat
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from monitor.units import parse_duration, parse_percent, parse_size

if typing.TYPE_CHECKING:
    import argparse

# ---------------------------------------------------------------------------------------------
# Field markers: Annotated[...] metadata that says how a TOML value becomes a Python value.


@dataclass(frozen=True)
class Range:
    low: float | None = None
    high: float | None = None


@dataclass(frozen=True)
class Pattern:
    """A string that must match a regular expression; `hint` says what it should look like."""

    regex: str
    hint: str


class _Marker:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


DURATION_MARK = _Marker("duration")
SIZE_MARK = _Marker("size")
PERCENT_MARK = _Marker("percent")
PATH_MARK = _Marker("path")
SECRET_MARK = _Marker("secret")

Duration = Annotated[float, DURATION_MARK]
Size = Annotated[int, SIZE_MARK]
Percent = Annotated[float, PERCENT_MARK]
ConfigPath = Annotated[Path, PATH_MARK]
Secret = Annotated[str | None, SECRET_MARK]
Port = Annotated[int, Range(1, 65535)]
Name = Annotated[str, Pattern(r"^\S(.*\S)?$", "a non-empty name without leading or trailing spaces")]


def key(toml_key: str, default: Any = dataclasses.MISSING, **kwargs: Any) -> Any:
    """A field whose TOML key differs from its Python name (e.g. `from`)."""
    if default is not dataclasses.MISSING:
        kwargs["default"] = default
    return field(metadata={"key": toml_key}, **kwargs)


class Invalid(ValueError):
    """Raised by a section's `validate()`; `key` is the offending sub-key (None: the section)."""

    def __init__(self, key: str | None, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


class ConfigError(Exception):
    """A config that cannot be used. `str()` is the message a user sees."""

    def __init__(self, file: str, line: int | None, key_path: str, message: str) -> None:
        where = f"{file}:{line}" if line else file
        text = f"{where}: {key_path}: {message}" if key_path else f"{where}: {message}"
        super().__init__(text)
        self.file, self.line, self.key_path, self.message = file, line, key_path, message


# ---------------------------------------------------------------------------------------------
# Sections. Defaults here are the agent's built-in defaults; config.toml documents each key.


@dataclass
class AgentConfig:
    data_dir: ConfigPath = Path("/var/lib/monitor")
    interval: Annotated[float, DURATION_MARK, Range(1, 86400)] = 300.0
    jitter: Duration = 5.0
    concurrency: Annotated[int, Range(1, 10000)] = 64
    hostname: str = ""
    max_backoff: Annotated[float, DURATION_MARK, Range(1, None)] = 3600.0

    def validate(self) -> None:
        if not self.hostname:
            self.hostname = socket.gethostname()
        if self.jitter >= self.interval:
            raise Invalid("jitter", "must be shorter than the interval")


@dataclass
class StorageConfig:
    rrd_dir: ConfigPath | None = None
    rrdcached: str | None = None
    # Each archive is "RESOLUTION:KEEP"; "step" is the file's base step (the job interval).
    archives: list[str] = field(default_factory=lambda: ["step:2d", "5m:32d", "30m:2w", "2h:9w", "1d:2y"])
    consolidations: list[Literal["AVERAGE", "MAX", "MIN", "LAST"]] = field(
        default_factory=lambda: ["AVERAGE", "MAX"]
    )

    def validate(self) -> None:
        for text in self.archives:
            resolution, _, keep = text.partition(":")
            try:
                if resolution != "step":
                    parse_duration(resolution)
                parse_duration(keep)
            except ValueError:
                raise Invalid(
                    "archives", f'expected "RESOLUTION:KEEP" like "30m:2w", got {text!r}'
                ) from None
        if self.rrdcached and not re.match(r"^(unix:/\S+|[\w.\-\[\]:]+:\d+)$", self.rrdcached):
            raise Invalid(
                "rrdcached", f'expected "unix:/path/to/socket" or "host:port", got {self.rrdcached!r}'
            )


@dataclass
class WebConfig:
    html_dir: ConfigPath | None = None
    title: str = "Network monitor"
    base_url: str = ""
    refresh: Duration = 300.0
    # How often `run` redraws the site (default: the agent's interval); 0 turns the job off.
    interval: Duration | None = None
    # Worker processes drawing graphs (default: one per core).
    workers: Annotated[int, Range(1, 256)] | None = None
    # Ports listed first in a device's port table: shell patterns on "device port".
    uplinks: list[str] = field(default_factory=list)


@dataclass
class SmtpRelay:
    """One way out for mail: an SMTP relay, or the local sendmail program."""

    transport: Literal["smtp", "sendmail"] = "smtp"
    host: str = "localhost"
    port: Port = 25
    security: Literal["none", "starttls", "tls"] = "none"
    username: str | None = None
    password: Secret = None
    # Connect, greeting and each command (EHLO, AUTH, MAIL, RCPT, DATA).
    timeout: Duration = 30.0
    # The relay's answer after the message (RFC 5321 4.5.3.2.6: 10 minutes; content scanning).
    data_timeout: Duration = 600.0
    # A CA bundle for a relay with a private CA (default: the system's trusted CAs).
    ca_file: ConfigPath | None = None
    # transport = "sendmail": the program, run as PROGRAM -oi -f FROM -- RECIPIENTS.
    sendmail: str = "/usr/sbin/sendmail"

    def validate(self) -> None:
        if not self.sendmail.startswith("/"):
            raise Invalid("sendmail", "must be an absolute path to the sendmail program")

    @property
    def where(self) -> str:
        return self.sendmail if self.transport == "sendmail" else f"{self.host}:{self.port}"


@dataclass
class SmtpConfig(SmtpRelay):
    sender: str = key("from", "monitor@localhost")
    # Other ways out, in order, used when this relay refuses or has been down `fallback_after`.
    fallback: list[SmtpRelay] = field(default_factory=list)
    fallback_after: Duration = 300.0
    # The agent's own "agent mail" check: WARNING when mail has waited `warn_after`, CRITICAL
    # after `critical_after` or when the relay refuses mail.
    warn_after: Duration = 300.0
    critical_after: Duration = 1800.0

    def validate(self) -> None:
        super().validate()
        if self.warn_after > self.critical_after:
            raise Invalid("warn_after", "must not be longer than critical_after")


@dataclass
class HostConfig:
    enabled: bool = True
    interval: Duration | None = None


@dataclass
class SnmpV3Config:
    user: str
    auth_protocol: Literal[
        "none", "md5", "sha", "sha224", "sha256", "sha384", "sha512"
    ] = "none"
    auth_key: Secret = None
    priv_protocol: Literal["none", "des", "aes", "aes128", "aes192", "aes256", "aes192c", "aes256c"] = (
        "none"
    )
    priv_key: Secret = None
    context: str = ""


@dataclass
class SnmpDevice:
    name: Name
    host: str
    port: Port = 161
    version: Literal["1", "2c", "3"] = "2c"
    community: Secret = "public"
    v3: SnmpV3Config | None = None
    timeout: Annotated[float, DURATION_MARK, Range(0.1, 60)] = 2.0
    retries: Annotated[int, Range(0, 10)] = 2
    interval: Duration | None = None
    # [cluster]: the nodes that may poll this device are those whose `groups` name this group.
    group: Name = "default"
    identity: Literal["ifName", "ifDescr", "ifAlias", "ifIndex"] = "ifName"
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    include_admin_down: bool = False
    # An interface going down is CRITICAL when it was seen up before; these (shell patterns on
    # the identity) are CRITICAL when down even if never seen up (a new uplink not yet lit).
    alert_down: list[str] = field(default_factory=list)
    # Utilisation: in or out above this percent of the link speed for `utilisation_for` makes
    # the interface check WARNING / CRITICAL (0 turns a level off), on the interfaces that
    # match `utilisation_interfaces`.
    utilisation_warning: Annotated[float, Range(0, 1000)] = 80.0
    utilisation_critical: Annotated[float, Range(0, 1000)] = 95.0
    utilisation_for: Annotated[float, DURATION_MARK, Range(0, 86400 * 7)] = 900.0
    utilisation_interfaces: list[str] = field(default_factory=lambda: ["*"])
    # Interface types (IANAifType names) not polled: loopbacks, voice and channel sub-layers.
    skip_types: list[str] = field(default_factory=lambda: list(_default_skip_types()))
    # GETBULK max-repetitions; 0 picks one from the number of columns (about 250 varbinds).
    max_repetitions: Annotated[int, Range(0, 1000)] = 0
    # The longest one poll of this device may take (default: its poll interval); a device that
    # answers too slowly or never ends its tables is stopped there and reported, alone.
    poll_budget: Annotated[float, DURATION_MARK, Range(0.1, 86400)] | None = None
    # Link errors without writing a rule: in or out errors above this percent of the packets
    # for `errors_for` make the interface's check WARNING (0 turns it off).
    errors_warning: Annotated[float, Range(0, 100)] = 1.0
    errors_for: Annotated[float, DURATION_MARK, Range(0, 86400 * 7)] = 900.0
    # UPS (UPS-MIB, APC PowerNet), BGP peers and health (CPU, memory, storage, sensors, fans,
    # power supplies) are read with every poll when the device has them; false skips them.
    health: bool = True
    # A BGP peer whose accepted prefixes fall by more than this percent is WARNING (0: off).
    bgp_prefix_drop: Annotated[float, Range(0, 100)] = 50.0
    # hrStorage fixed disks (servers polled by SNMP): percent used that is WARNING / CRITICAL,
    # named like [disks] usage_warning / usage_critical.
    storage_warning: Percent = 90.0
    storage_critical: Percent = 95.0

    def validate(self) -> None:
        if self.storage_warning > self.storage_critical:
            raise Invalid("storage_warning",
                          f"must not be above storage_critical ({self.storage_critical:g})")
        if self.version == "3" and self.v3 is None:
            raise Invalid("v3", "SNMP version 3 needs a [snmp.devices.v3] table with at least user")
        if self.version != "3" and self.v3 is not None:
            raise Invalid("version", 'a [snmp.devices.v3] table is only used with version = "3"')
        if self.v3 is not None:
            if self.v3.auth_protocol != "none" and not self.v3.auth_key:
                raise Invalid("v3.auth_key", f"auth_protocol {self.v3.auth_protocol} needs auth_key "
                              "(or auth_key_file / auth_key_env)")
            if self.v3.priv_protocol != "none" and self.v3.auth_protocol == "none":
                raise Invalid("v3.priv_protocol", "privacy needs authentication: set auth_protocol")
            if self.v3.priv_protocol != "none" and not self.v3.priv_key:
                raise Invalid("v3.priv_key", f"priv_protocol {self.v3.priv_protocol} needs priv_key "
                              "(or priv_key_file / priv_key_env)")
            for name in ("auth_key", "priv_key"):
                secret = getattr(self.v3, name)
                if secret is not None and len(secret) < 8:
                    raise Invalid(f"v3.{name}", "SNMPv3 keys must be at least 8 characters")
        from collectors.snmp_iftypes import IF_TYPES

        unknown = [t for t in self.skip_types if t not in IF_TYPES]
        if unknown:
            raise Invalid("skip_types", f"unknown ifType name(s) {', '.join(map(repr, unknown))} "
                          "(IANAifType names, e.g. softwareLoopback, ethernetCsmacd, l2vlan)")


def _default_skip_types() -> list[str]:
    from collectors.snmp_iftypes import DEFAULT_SKIP_TYPES

    return DEFAULT_SKIP_TYPES


@dataclass
class SnmpConfig:
    devices: list[SnmpDevice] = field(default_factory=list)
    interval: Duration | None = None
    concurrency: Annotated[int, Range(1, 1000)] = 32


@dataclass
class UpsConfig:
    """One [[ups]] table: a UPS behind Network UPS Tools' upsd (NUT's TCP protocol)."""

    name: Name
    ups: str = "ups"  # the UPS's name in upsd (ups.conf section; `upsc -l` lists them)
    host: str = "127.0.0.1"
    port: Port = 3493
    timeout: Annotated[float, DURATION_MARK, Range(0.1, 60)] = 5.0
    interval: Duration | None = None

    def validate(self) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", self.ups):
            raise Invalid("ups", f"expected a upsd UPS name of letters, digits, . _ -, got {self.ups!r}")


SERVICE_PORTS = {"tcp": None, "smtp": 25, "imap": 143, "pop3": 110, "ssh": 22, "ftp": 21,
                 "http": 80, "https": 443, "dns": 53, "roundtrip": 587}
# Implicit TLS ports of the mail protocols (tls = true): submissions, imaps, pop3s.
SERVICE_TLS_PORTS = {"smtp": 465, "imap": 993, "pop3": 995, "ftp": 990, "http": 443, "https": 443,
                     "roundtrip": 465}
DNS_RCODES = ["NOERROR", "FORMERR", "SERVFAIL", "NXDOMAIN", "NOTIMP", "REFUSED", "YXDOMAIN",
              "YXRRSET", "NXRRSET", "NOTAUTH", "NOTZONE"]
_TEXT_PROTOCOLS = ("tcp", "smtp", "imap", "pop3", "ssh", "ftp")


@dataclass
class ServiceCheck:
    """One [[services]] table; see config.toml for the meaning of each key."""

    name: Name
    kind: Literal["tcp", "smtp", "imap", "pop3", "ssh", "ftp", "http", "https", "dns", "ping", "plugin",
                  "roundtrip"]
    host: str = ""
    port: Port | None = None
    timeout: Annotated[float, DURATION_MARK, Range(0.01, 3600)] = 10.0
    interval: Duration | None = None
    group: Name = "default"  # [cluster]: which nodes may run this check
    # Response time thresholds (the whole check, connect to last answer).
    warning: Annotated[float, DURATION_MARK, Range(0, None)] | None = None
    critical: Annotated[float, DURATION_MARK, Range(0, None)] | None = None
    # tcp: a string to send after connecting and a substring expected in the answer.
    send: str | None = None
    expect: str | None = None
    # TLS: implicit TLS from the first byte (smtps, imaps, pop3s, https) or STARTTLS/STLS.
    tls: bool = False
    starttls: bool = False
    verify: bool = True
    verify_hostname: bool = True
    ca_file: ConfigPath | None = None
    # The name the certificate must carry and the TLS SNI (default: host).
    server_name: str | None = None
    cert_warning_days: Annotated[float, Range(0, None)] = 21.0
    cert_critical_days: Annotated[float, Range(0, None)] = 7.0
    # smtp: the name sent with EHLO (default: the agent's host name).
    helo: str | None = None
    # smtp/imap/pop3 login, http(s) basic auth, with a test account (over TLS only); the
    # password never shows.
    username: str | None = None
    password: Secret = field(default=None, repr=False)
    # roundtrip: a probe mail submitted over SMTP (host, port, tls/starttls, login) to rcpt_to,
    # then looked for over IMAPS (imap_host, imap_port, the same login) and deleted.
    rcpt_to: str | None = None
    imap_host: str | None = None
    imap_port: Port | None = None
    # http/https
    url: str | None = None
    path: str = "/"
    vhost: str | None = None
    method: Literal["GET", "HEAD", "POST"] = "GET"
    body: str | None = None
    content_type: str | None = None
    expect_status: list[Annotated[int, Range(100, 599)]] = field(default_factory=list)
    expect_text: str | None = None
    expect_regex: str | None = None
    follow_redirects: Annotated[int, Range(0, 20)] = 0
    max_body: Annotated[int, SIZE_MARK, Range(1, 64 << 20)] = 1 << 20
    proxy: str | None = None
    client_cert: ConfigPath | None = None
    client_key: ConfigPath | None = None
    # The DNS server asked for the host's address ("192.0.2.53", "[2001:db8::53]:5353");
    # default: the system's resolver (/etc/hosts, resolv.conf).
    resolver: str | None = None
    # dns
    query: str | None = None
    query_type: str = "A"
    server: str | None = None
    servers: list[str] = field(default_factory=list)
    expect_answers: list[str] = field(default_factory=list)
    expect_rcode: str = "NOERROR"
    authoritative: bool = False  # the answer must carry the AA flag
    dnssec: bool = False  # the answer must carry the AD flag (a validating resolver's verdict)
    # ping
    count: Annotated[int, Range(1, 100)] = 20
    ping_interval: Annotated[float, DURATION_MARK, Range(0.002, 10)] = 0.2
    loss_warning: Percent = 20.0
    loss_critical: Percent = 60.0
    ping_command: ConfigPath = Path("/usr/bin/ping")
    # plugin: argv list, first item the executable (never a shell).
    command: list[str] = field(default_factory=list)

    def validate(self) -> None:
        kind = self.kind
        if self.warning is not None and self.critical is not None and self.warning > self.critical:
            raise Invalid("warning", f"must not be above critical ({self.critical:g} s)")
        if self.cert_warning_days < self.cert_critical_days:
            raise Invalid("cert_warning_days", "must not be below cert_critical_days")
        if kind == "https":
            self.tls = True
        if self.tls and self.starttls:
            raise Invalid("starttls", "tls = true is TLS from the first byte; starttls upgrades "
                                      "a plain connection: choose one")
        if self.starttls and kind not in ("smtp", "imap", "pop3", "roundtrip"):
            raise Invalid("starttls", f"only smtp, imap and pop3 checks can STARTTLS (this is {kind})")
        if self.tls and kind not in ("tcp", "smtp", "imap", "pop3", "ftp", "http", "https", "roundtrip"):
            raise Invalid("tls", f"a {kind} check cannot use TLS")
        if (self.send is not None or self.expect is not None) and kind not in _TEXT_PROTOCOLS:
            raise Invalid("send" if self.send is not None else "expect",
                          f"send/expect are for tcp-like checks, not {kind}")
        # Both go into protocol lines (EHLO, Host:): a CR or LF would end the line and start
        # another command or header of the config's making.
        for key_name, value in (("helo", self.helo), ("vhost", self.vhost)):
            if value is not None and (not value or re.search(r"[\x00-\x20\x7f]", value)):
                raise Invalid(key_name, f"expected a host name without spaces or control "
                                        f"characters (CR/LF would end the protocol line), got {value!r}")
        if self.username is not None or self.password is not None or kind == "roundtrip":
            self._validate_login()
        if kind == "roundtrip":
            self.rcpt_to = self.rcpt_to or self.username
            if not re.fullmatch(r"[^\s@<>]+@[A-Za-z0-9.-]+", self.rcpt_to or ""):
                raise Invalid("rcpt_to", f"expected a mail address like probe@example.net, got "
                                         f"{self.rcpt_to!r}")
            self.imap_host = self.imap_host or self.host
            self.imap_port = self.imap_port or 993
        else:
            for name in ("rcpt_to", "imap_host", "imap_port"):
                if getattr(self, name) is not None:
                    raise Invalid(name, f"only roundtrip checks have {name}")
        http_only: dict[str, object] = {"url": self.url, "vhost": self.vhost,
                                        "expect_text": self.expect_text}
        http_only |= {"expect_regex": self.expect_regex, "body": self.body,
                      "content_type": self.content_type, "proxy": self.proxy,
                      "client_cert": self.client_cert, "client_key": self.client_key,
                      "resolver": self.resolver,
                      "max_body": None if self.max_body == 1 << 20 else self.max_body}
        if kind not in ("http", "https"):
            for name, given in http_only.items():
                if given is not None:
                    raise Invalid(name, f"only http/https checks have {name}")
            if self.expect_status:
                raise Invalid("expect_status", "only http/https checks have expect_status")
        for name in ("authoritative", "dnssec"):
            if getattr(self, name) and kind != "dns":
                raise Invalid(name, f"only dns checks have {name}")
        if kind == "plugin":
            if not self.command:
                raise Invalid("command", 'a plugin check needs command = ["/usr/lib/nagios/plugins/'
                                         'check_x", "-H", "host"] (an argv list, no shell)')
            if not Path(self.command[0]).is_absolute():
                raise Invalid("command", f"the first item must be an absolute path, got "
                                         f"{self.command[0]!r}")
            self.host = self.host or "localhost"
            return
        if self.command:
            raise Invalid("command", "only plugin checks run a command")
        if kind in ("http", "https"):
            if self.url:
                self._from_url()
            self._international_names()
        if kind == "dns":
            if not self.query:
                raise Invalid("query", 'a dns check needs query = "NAME" (the name to look up)')
            servers = self.servers or ([self.server] if self.server else [])
            if not servers and not self.host:
                raise Invalid("server", 'a dns check needs server = "ADDRESS" (or servers = [...])')
            self.servers = servers or [self.host]
            self.host = self.host or self.servers[0]
            self.expect_rcode = self.expect_rcode.upper()
            if self.expect_rcode not in DNS_RCODES:
                raise Invalid("expect_rcode", f"expected one of {', '.join(DNS_RCODES)}, "
                                              f"got {self.expect_rcode!r}")
            import dns.rdatatype

            try:
                dns.rdatatype.from_text(self.query_type)
            except Exception:
                raise Invalid("query_type", f'expected a record type like "A", "AAAA", "MX", '
                                            f'got {self.query_type!r}') from None
            self.query_type = self.query_type.upper()
        if not self.host:
            raise Invalid("host", f'a {kind} check needs host = "NAME OR ADDRESS"')
        # The host reaches ping's argv and protocol lines: a name or an address, never "-f".
        hosts = [("host", self.host), ("imap_host", self.imap_host or self.host),
                 *(("servers", v) for v in self.servers)]
        for key_name, value in hosts:
            if not re.fullmatch(r"[A-Za-z0-9_.:%][A-Za-z0-9_.:%-]*", value):
                raise Invalid(key_name, f"expected a host name or IP address, got {value!r}")
        if kind == "ping":
            if self.loss_warning > self.loss_critical:
                raise Invalid("loss_warning", "must not be above loss_critical")
            if self.timeout <= self.count * self.ping_interval:
                raise Invalid("timeout", f"must be longer than count x ping_interval "
                                         f"({self.count * self.ping_interval:g} s)")
            return
        if self.port is None:
            default = (SERVICE_TLS_PORTS.get(kind) if self.tls else None) or SERVICE_PORTS.get(kind)
            if default is None:
                raise Invalid("port", f"a {kind} check needs port = NUMBER")
            self.port = default
        if kind in ("http", "https") and not self.path.startswith("/"):
            raise Invalid("path", f'expected a path starting with "/", got {self.path!r}')
        if kind in ("http", "https"):
            self._validate_http()

    def _validate_http(self) -> None:
        from urllib.parse import urlsplit

        if not self.expect_status:
            self.expect_status = [200]
        if (self.body is not None or self.content_type is not None) and self.method != "POST":
            raise Invalid("body" if self.body is not None else "content_type",
                          'only a method = "POST" check sends a body')
        if self.method == "HEAD" and (self.expect_text is not None or self.expect_regex is not None):
            raise Invalid("expect_text" if self.expect_text is not None else "expect_regex",
                          'a method = "HEAD" answer has no body to look in')
        if self.expect_regex is not None:
            import regex  # the module the check matches with (collectors.services_http)

            try:
                regex.compile(self.expect_regex)
            except regex.error as exc:
                raise Invalid("expect_regex", f"not a valid regular expression: {exc}") from None
        if self.proxy is not None:
            parts = urlsplit(self.proxy)
            if parts.scheme != "http" or not parts.hostname:
                raise Invalid("proxy", f'expected a URL like "http://proxy.example.net:3128", '
                                       f'got {self.proxy!r}')
        if self.client_key is not None and self.client_cert is None:
            raise Invalid("client_key", "needs client_cert (the certificate it belongs to)")
        if self.resolver is not None:
            try:
                address_and_port(self.resolver, 53)
            except ValueError:
                raise Invalid("resolver", f'expected an IP address with an optional port like '
                                          f'"192.0.2.53" or "[2001:db8::53]:5353", got '
                                          f'{self.resolver!r}') from None

    def _international_names(self) -> None:
        """International names go on the wire (DNS, Host, SNI) in their ASCII (IDNA) form."""
        for key_name in ("host", "vhost", "server_name"):
            value = getattr(self, key_name)
            if value and not value.isascii():
                try:
                    setattr(self, key_name, _idna(value))
                except UnicodeError:
                    raise Invalid("url" if key_name == "host" and self.url else key_name,
                                  f"not a valid international name: {value!r}") from None

    def _validate_login(self) -> None:
        if self.kind not in ("smtp", "imap", "pop3", "roundtrip", "http", "https"):
            raise Invalid("username", f"only smtp, imap, pop3, http(s) and roundtrip checks log in "
                                      f"(this is {self.kind})")
        if self.kind in ("http", "https") and "@" in (self.url or "").partition("//")[2].split("/")[0]:
            raise Invalid("username", "the url has user:password@ too: give the login one way "
                                      "(username with password_file is the one that keeps the "
                                      "password out of the config)")
        if self.kind in ("http", "https") and ":" in (self.username or ""):
            raise Invalid("username", "HTTP basic auth cannot carry a ':' in the user name "
                                      "(RFC 7617)")
        if not self.username:
            raise Invalid("username", "a login check needs username = \"NAME\" with the password")
        if not self.password:
            raise Invalid("password", "a login check needs password_file = \"PATH\" (or password_env)")
        if not (self.tls or self.starttls or (self.url or "").lower().startswith("https:")):
            raise Invalid("username", "a login check needs tls = true or starttls = true (http: "
                                      "an https check): the password must not cross the "
                                      "network in clear")
        for key_name, value in (("username", self.username), ("password", self.password)):
            if re.search(r"[\x00\r\n]", value):
                raise Invalid(key_name, "must not contain NUL, CR or LF")

    def _from_url(self) -> None:
        from urllib.parse import urlsplit

        assert self.url is not None
        parts = urlsplit(self.url)
        try:
            port, port_ok = parts.port, True
        except ValueError:  # not a number, or above 65535
            port, port_ok = None, False
        if parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            shown = re.sub(r"//[^/@]*@", "//***@", self.url)  # no password in an error message
            raise Invalid("url", f'expected a URL like "https://www.example.net/", got {shown!r}')
        if parts.scheme == "https":
            self.tls = True
        self.host = self.host or parts.hostname
        if port:
            self.port = self.port or port
        self.path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        if self.vhost is None and parts.hostname != self.host:
            # The authority without user:password@ (that goes in an Authorization header).
            self.vhost = parts.netloc.rpartition("@")[2]


def address_and_port(text: str, default_port: int) -> tuple[str, int]:
    """("192.0.2.53", 5353) from "192.0.2.53:5353", ("2001:db8::53", 53) from "2001:db8::53" or
    "[2001:db8::53]"; ValueError for anything that is not an IP address (and port)."""
    import ipaddress

    host, port = text, default_port
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(text)
            port = int(rest[1:])
    elif text.count(":") == 1:
        host, _, number = text.partition(":")
        port = int(number)
    ipaddress.ip_address(host)
    if not 0 < port < 65536:
        raise ValueError(text)
    return host, port


def _idna(name: str) -> str:
    """bücher.example -> xn--bcher-kva.example (a port after the name is kept)."""
    host, colon, port = name.rpartition(":") if name.count(":") == 1 else (name, "", "")
    return host.encode("idna").decode("ascii") + colon + port


# Pseudo and read-only image file systems that are never worth a usage check.
DEFAULT_EXCLUDED_FS_TYPES = [
    "tmpfs", "devtmpfs", "ramfs", "overlay", "squashfs", "proc", "sysfs", "devpts", "securityfs",
    "cgroup*", "pstore", "bpf", "debugfs", "tracefs", "configfs", "fusectl", "mqueue",
    "hugetlbfs", "autofs", "binfmt_misc", "rpc_pipefs", "nsfs", "efivarfs", "selinuxfs", "nfsd",
    "iso9660", "fuse.lxcfs", "fuse.gvfsd-fuse", "fuse.portal",
]
# A SMART device as `smartctl --scan` prints it: "/dev/sda" or "/dev/sda -d sat".
SMART_DEVICE_RE = re.compile(r"^(/dev/[A-Za-z0-9/_.:+-]+)(?:\s+-d\s+([A-Za-z0-9_,+-]+))?$")


def parse_smart_device(text: str) -> tuple[str, str | None]:
    """(device path, smartctl -d type or None) from "/dev/sda" or "/dev/sda -d sat".

    The path goes into smartctl's argv, so it is held to a strict form: under /dev, no "..",
    no spaces or shell characters (argv lists are used anyway; this keeps names sane).
    """
    match = SMART_DEVICE_RE.match(text.split("#", 1)[0].strip())
    if not match or "/." in match.group(1):
        raise ValueError(
            f'expected a device like "/dev/sda" or "/dev/sda -d sat", got {text!r}'
        )
    return match.group(1), match.group(2)


@dataclass
class DisksConfig:
    enabled: bool = True
    interval: Duration | None = None
    # Usage per mount point. Patterns are shell patterns (fnmatch) on the mount point.
    include: list[str] = field(default_factory=list)
    exclude: list[str] = field(default_factory=list)
    exclude_fs_types: list[str] = field(default_factory=lambda: list(DEFAULT_EXCLUDED_FS_TYPES))
    usage_warning: Percent = 85.0
    usage_critical: Percent = 95.0
    inodes_warning: Percent = 85.0
    inodes_critical: Percent = 95.0
    statvfs_timeout: Annotated[float, DURATION_MARK, Range(0.1, 600)] = 5.0
    mounts: ConfigPath = Path("/proc/self/mounts")
    # Disk I/O counters (psutil).
    io: bool = True
    io_exclude: list[str] = field(default_factory=lambda: ["loop*", "ram*", "zram*", "sr*", "fd*"])
    io_partitions: bool = False
    # SMART through smartctl.
    smart: Any = "auto"
    smartctl: ConfigPath = Path("/usr/sbin/smartctl")
    smart_timeout: Annotated[float, DURATION_MARK, Range(1, 600)] = 60.0
    smart_rescan: Duration = 3600.0
    smart_temperature_warning: Annotated[float, Range(0, 150)] = 60.0
    smart_temperature_critical: Annotated[float, Range(0, 150)] = 70.0
    smart_wear_warning: Percent = 90.0
    smart_growth_hold: Duration = 86400.0
    # Linux software RAID.
    mdstat: ConfigPath = Path("/proc/mdstat")

    def validate(self) -> None:
        for low, high in (("usage_warning", "usage_critical"), ("inodes_warning", "inodes_critical"),
                          ("smart_temperature_warning", "smart_temperature_critical")):
            if getattr(self, low) > getattr(self, high):
                raise Invalid(low, f"must not be above {high} ({getattr(self, high):g})")
        if self.smart is False or self.smart == "off":
            self.smart = "off"
        elif self.smart != "auto":
            if not isinstance(self.smart, list) or not all(isinstance(d, str) for d in self.smart):
                raise Invalid("smart", '"auto", "off" or a list of devices like ["/dev/sda", '
                              f'"/dev/sdb -d sat"], got {self.smart!r}')
            for text in self.smart:
                try:
                    parse_smart_device(text)
                except ValueError as exc:
                    raise Invalid("smart", str(exc)) from None


_LIST_NAME = Pattern(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,99}(@[A-Za-z0-9.-]{1,253})?$",
                     "a mailing list name (letters, digits, . _ + -; Mailman 3: list@domain)")


@dataclass
class MailboxesConfig:
    """[mailboxes]: mailbox sizes from Maildir trees and mbox files, optional Postfix queue."""

    enabled: bool = False
    interval: Duration | None = None
    # Path patterns; {domain} and {user} each stand for one directory level.
    paths: list[ConfigPath] = field(default_factory=lambda: [Path("/var/mail/vhosts/{domain}/{user}")])
    # The domain of mailboxes whose pattern has no {domain} (e.g. "/var/mail/{user}" mbox files).
    default_domain: str = "localhost"
    # The quota of mailboxes whose Dovecot maildirsize names no limit (for % of quota).
    default_quota: Size | None = None
    top: Annotated[int, Range(0, 1000)] = 20
    warn_size: Size | None = None
    critical_size: Size | None = None
    scan_threads: Annotated[int, Range(1, 64)] = 2
    postfix_queue: bool = False
    postqueue: str = "/usr/sbin/postqueue"
    queue_warning: Annotated[int, Range(1, None)] | None = None
    queue_critical: Annotated[int, Range(1, None)] | None = None

    def validate(self) -> None:
        for path in self.paths:
            pattern = str(path)
            if "{user}" not in pattern:
                raise Invalid("paths", f"pattern {pattern!r} has no {{user}} placeholder")
            for part in pattern.split("/"):
                if "{" in part and part not in ("{domain}", "{user}"):
                    raise Invalid("paths", f"in {pattern!r}: {{domain}} and {{user}} must each be "
                                           "a whole directory level")
        if not self.postqueue.startswith("/"):
            raise Invalid("postqueue", "must be an absolute path to the postqueue program")


@dataclass
class ListsConfig:
    """[lists]: Mailman activity from Mailman 2's post log and/or Mailman 3's smtp.log, and
    subscriber counts (Mailman 2's list_members, Mailman 3's REST API)."""

    enabled: bool = False
    interval: Duration | None = None
    post_log: ConfigPath | None = Path("/var/lib/mailman/logs/post")
    smtp_log: ConfigPath | None = Path("/var/log/mailman3/smtp.log")
    list_members: str | None = "/usr/lib/mailman/bin/list_members"
    lists: list[Annotated[str, _LIST_NAME]] = field(default_factory=list)
    keep_days: Annotated[int, Range(1, 3660)] = 60
    mailman3_url: str | None = None
    mailman3_user: str = "restadmin"
    mailman3_password: Secret = None
    timeout: Duration = 20.0

    def validate(self) -> None:
        if self.list_members is not None and not self.list_members.startswith("/"):
            raise Invalid("list_members", "must be an absolute path (or leave it out)")
        if self.mailman3_url is not None and not re.match(r"^https?://[^\s/]+", self.mailman3_url):
            raise Invalid("mailman3_url", 'expected "http://HOST:PORT" of Mailman 3 core\'s REST API')


_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?"
_DNS_ZONE = Pattern(rf"^{_LABEL}(\.{_LABEL})+\.?$", 'a DNS zone like "zen.spamhaus.org"')


@dataclass
class Blocklist:
    """One DNSBL zone of [[blocklists.lists]]: what its return codes mean, where to delist."""

    zone: Annotated[str, _DNS_ZONE]
    # Return code (an A record in 127.0.0.0/8) -> what it means.
    codes: dict[str, str] = field(default_factory=dict)
    delist: str = ""

    def validate(self) -> None:
        import ipaddress

        self.zone = self.zone.rstrip(".").lower()
        for code in self.codes:
            try:
                ipaddress.IPv4Address(code)
            except ValueError:
                raise Invalid("codes", f"expected return codes like \"127.0.0.2\", got {code!r}") from None


def _default_blocklists() -> list[Blocklist]:
    """The widely used public lists, their return codes and delisting pages."""
    return [
        Blocklist("zen.spamhaus.org", {
            "127.0.0.2": "SBL: a spam source or spam operation (Spamhaus Block List)",
            "127.0.0.3": "SBL CSS: a snowshoe spam source",
            "127.0.0.4": "XBL: an exploited host (open proxy, malware, hijacked server)",
            "127.0.0.9": "SBL DROP: a hijacked or rogue network",
            "127.0.0.10": "PBL: end-user address the ISP says should not send mail directly",
            "127.0.0.11": "PBL: end-user address Spamhaus says should not send mail directly",
        }, "https://check.spamhaus.org/"),
        Blocklist("bl.spamcop.net", {"127.0.0.2": "SpamCop: reported as a spam source"},
                  "https://www.spamcop.net/bl.shtml"),
        Blocklist("b.barracudacentral.org", {"127.0.0.2": "Barracuda: poor sender reputation"},
                  "https://www.barracudacentral.org/rbl/removal-request"),
        Blocklist("psbl.surriel.com", {"127.0.0.2": "PSBL: sent mail to its spam traps"},
                  "https://psbl.org/remove"),
        Blocklist("bl.mailspike.net", {
            "127.0.0.2": "Mailspike: spam source", "127.0.0.10": "Mailspike: worst reputation",
            "127.0.0.11": "Mailspike: very bad reputation", "127.0.0.12": "Mailspike: bad reputation",
        }, "https://mailspike.org/anubis/lookup.html"),
        Blocklist("dnsbl-1.uceprotect.net", {"127.0.0.2": "UCEPROTECT level 1: this address sent spam"},
                  "https://www.uceprotect.net/en/rblcheck.php"),
    ]


@dataclass
class BlocklistsConfig:
    """[blocklists]: the shop's outbound addresses looked up in DNS block lists."""

    enabled: bool = False
    interval: Annotated[float, DURATION_MARK, Range(60, None)] = 3600.0
    # Addresses and ranges ("192.0.2.10", "198.51.100.0/27"): the shop's outbound mail servers.
    addresses: list[str] = field(default_factory=list)
    # The resolver to ask ("127.0.0.1"); unset: the system's (/etc/resolv.conf).
    resolver: str | None = None
    port: Port = 53
    timeout: Annotated[float, DURATION_MARK, Range(0.1, 120)] = 10.0
    concurrency: Annotated[int, Range(1, 256)] = 8
    # An answer is asked again after this long at the earliest (lists limit queries per resolver).
    cache: Duration = 3300.0
    lists: list[Blocklist] = field(default_factory=_default_blocklists)

    def validate(self) -> None:
        import ipaddress

        total = 0
        for text in self.addresses:
            try:
                network = ipaddress.ip_network(text, strict=False)
            except ValueError:
                raise Invalid("addresses", f'expected an address or range like "192.0.2.10" or '
                              f'"198.51.100.0/27", got {text!r}') from None
            total += network.num_addresses
        if total > 4096:
            raise Invalid("addresses", f"{total} addresses: at most 4096 (a /20) are looked up")
        if self.resolver is not None:
            try:
                ipaddress.ip_address(self.resolver)
            except ValueError:
                raise Invalid("resolver", f"expected the resolver's IP address, got {self.resolver!r}"
                              ) from None
        if self.enabled and not self.addresses:
            raise Invalid("addresses", "list the outbound addresses to look up")
        zones = [b.zone for b in self.lists]
        for i, zone in enumerate(zones):
            if zone in zones[:i]:
                raise Invalid("lists", f"zone {zone!r} is listed twice")


@dataclass
class MailLogConfig:
    """[maillog]: Postfix (and Dovecot) log statistics, read incrementally, pflogsumm-style."""

    enabled: bool = False
    interval: Duration | None = None
    # The syslog file Postfix writes to (Debian: /var/log/mail.log; maillog_file works too).
    log: ConfigPath = Path("/var/log/mail.log")
    # Dovecot's own log_path, when it does not log to the same file through syslog.
    dovecot_log: ConfigPath | None = None
    # Domains delivered here: mail to them is inbound, everything else outbound.
    local_domains: list[str] = field(default_factory=list)
    keep_days: Annotated[int, Range(1, 3660)] = 35
    # Debian 12 without rsyslog: Postfix and Dovecot log to the journal only.
    journal: bool = False
    journal_units: list[str] = field(default_factory=lambda: [
        "postfix@-.service", "postfix.service", "dovecot.service"])
    journal_directory: ConfigPath | None = None  # another journal (journalctl -D); unset: the system's
    journalctl: ConfigPath = Path("/usr/bin/journalctl")
    timeout: Duration = 60.0

    def validate(self) -> None:
        self.local_domains = [d.lower().rstrip(".") for d in self.local_domains]


@dataclass
class BaselineSeries:
    """One [[baseline.series]] pattern: which series get a seasonal baseline, how tolerant."""

    metric: str
    target: str = "*"
    instance: str = "*"
    enabled: bool = True
    factor: Annotated[float, Range(1.1, None)] | None = None


@dataclass
class BaselineConfig:
    """[baseline]: the usual level of a series per hour of the week, and deviations from it."""

    enabled: bool = False
    interval: Annotated[float, DURATION_MARK, Range(60, None)] = 3600.0
    weeks: Annotated[int, Range(2, 9)] = 6
    # WARNING when an hour's average is this many times the usual for that hour of the week
    # (and outside the usual spread).
    factor: Annotated[float, Range(1.1, None)] = 4.0
    series: list[BaselineSeries] = field(default_factory=lambda: [
        BaselineSeries("in_octets"), BaselineSeries("out_octets"),
        BaselineSeries("outbound", target="mail", instance="postfix")])


@dataclass
class BackupJob:
    """One [[backups]] job and where its results come from."""

    name: Annotated[str, Pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$",
                                 "a job name of letters, digits, . _ -")]
    kind: Literal["wrapper", "log", "artifact", "restic", "borg"] = "wrapper"
    max_age: Annotated[float, DURATION_MARK, Range(60, None)] = 93600.0
    # kind = "log"
    log: ConfigPath | None = None
    success_pattern: str | None = None
    failure_pattern: str | None = None
    # kind = "artifact"
    glob: str | None = None
    max_shrink: Percent = 20.0
    min_size: Size = 1
    # kind = "restic" / "borg"
    repository: str | None = None
    password: Secret = None
    command: str | None = None
    timeout: Duration = 300.0

    def validate(self) -> None:
        need = {"log": ("log", self.log), "artifact": ("glob", self.glob),
                "restic": ("repository", self.repository), "borg": ("repository", self.repository)}
        if self.kind in need and need[self.kind][1] is None:
            raise Invalid(need[self.kind][0], f'a "{self.kind}" backup job needs {need[self.kind][0]}')
        if self.kind == "log" and not (self.success_pattern or self.failure_pattern):
            raise Invalid("success_pattern", "a log job needs success_pattern and/or failure_pattern")
        for k in ("success_pattern", "failure_pattern"):
            if getattr(self, k):
                try:
                    re.compile(getattr(self, k))
                except re.error as exc:
                    raise Invalid(k, f"not a valid regular expression: {exc}") from None
        if self.glob is not None and not self.glob.startswith("/"):
            raise Invalid("glob", "must be an absolute path pattern like /srv/backup/*.tar.gz")
        if self.command is not None and not self.command.startswith("/"):
            raise Invalid("command", "must be an absolute path to the restic/borg program")


_COMPARISON = Pattern(r"^\s*(>=|<=|>|<|==|!=)\s*[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?\s*$",
                      'a comparison like "> 90" or "<= 0.5"')


@dataclass
class AlertRule:
    """One [[alerts.rules]] table; see config.toml for the meaning of each key."""

    name: Name
    # What it looks at: check results (by check name) or measurements (by metric name).
    check: str | None = None
    metric: str | None = None
    target: str = "*"
    instance: str = "*"
    condition: Literal["state", "threshold", "rate", "nodata"] | None = None
    states: list[Literal["WARNING", "CRITICAL", "UNKNOWN"]] = field(
        default_factory=lambda: ["WARNING", "CRITICAL", "UNKNOWN"])
    warning: Annotated[str, _COMPARISON] | None = None
    critical: Annotated[str, _COMPARISON] | None = None
    rate_per: Annotated[float, DURATION_MARK, Range(1, None)] = 3600.0
    nodata: Annotated[float, DURATION_MARK, Range(1, None)] | None = None
    severity: Literal["WARNING", "CRITICAL", "UNKNOWN"] | None = None
    summary: str = ""
    # Before it fires / before it recovers.
    pending: Duration = key("for", 0.0)  # noqa: RUF009 - a field() with a TOML name
    retries: Annotated[int, Range(1, 100)] = 1
    hysteresis: Annotated[float, Range(0, None)] = 0.0
    recover_after: Annotated[int, Range(1, 100)] = 1
    # Who hears about it, and how often.
    notify: list[str] = field(default_factory=lambda: ["admins"])
    repeat: Annotated[float, DURATION_MARK, Range(60, None)] | None = None
    escalate_after: Annotated[float, DURATION_MARK, Range(60, None)] | None = None
    escalate_to: list[str] = field(default_factory=list)
    depends_on: list[str] = field(default_factory=list)
    flap_detection: bool = True
    flap_high: Percent = 30.0
    flap_low: Percent = 20.0

    def validate(self) -> None:
        if (self.check is None) == (self.metric is None):
            raise Invalid(None, 'set exactly one of "check" (a check name pattern) or "metric" '
                                "(a metric name pattern)")
        if self.condition is None:
            self.condition = ("nodata" if self.nodata is not None
                              else "state" if self.check is not None else "threshold")
        if self.condition in ("threshold", "rate"):
            if self.metric is None:
                raise Invalid("condition", f'"{self.condition}" needs a "metric" pattern')
            if self.warning is None and self.critical is None:
                raise Invalid(None, f'a {self.condition} rule needs "warning" and/or "critical", '
                                    'e.g. critical = "> 90"')
        elif self.warning is not None or self.critical is not None:
            raise Invalid("warning" if self.warning is not None else "critical",
                          f'only threshold and rate rules have levels (this is "{self.condition}")')
        if self.condition == "nodata" and self.nodata is None:
            raise Invalid("nodata", 'a nodata rule needs nodata = "DURATION", e.g. "15m"')
        if self.condition == "state" and self.check is None:
            raise Invalid("condition", '"state" needs a "check" pattern')
        if self.flap_low > self.flap_high:
            raise Invalid("flap_low", "must not be above flap_high")
        if self.escalate_after is not None and not self.escalate_to:
            raise Invalid("escalate_to", "escalate_after needs escalate_to (contact groups)")
        if not self.notify:
            raise Invalid("notify", "needs at least one contact group")


@dataclass
class MaintenanceWindow:
    """A recurring window (cron start + duration) during which matching alerts stay quiet."""

    name: Name
    cron: str
    duration: Annotated[float, DURATION_MARK, Range(60, None)]
    match: list[str] = field(default_factory=lambda: ["*"])
    reason: str = ""

    def validate(self) -> None:
        from apscheduler.triggers.cron import CronTrigger

        try:
            CronTrigger.from_crontab(self.cron)
        except ValueError as exc:
            raise Invalid("cron", f'expected a crontab line like "0 3 * * sun", got {self.cron!r}: '
                                  f"{exc}") from None


@dataclass
class RepliesConfig:
    """[alerts.replies]: an IMAP mailbox where replies to alert mails arrive."""

    server: str
    user: str
    password: Secret = None
    port: Port | None = None
    security: Literal["none", "starttls", "tls"] = "tls"
    ca_file: ConfigPath | None = None
    mailbox: str = "INBOX"
    interval: Annotated[float, DURATION_MARK, Range(10, 3600)] = 60.0
    timeout: Duration = 30.0
    authserv_id: str | None = None

    def validate(self) -> None:
        if self.authserv_id is not None and not re.fullmatch(r"[A-Za-z0-9.-]+", self.authserv_id):
            raise Invalid("authserv_id", "a host name, as your mail server writes it at the start "
                          "of its Authentication-Results header")
        if self.port is None:
            self.port = 993 if self.security == "tls" else 143
        if not self.password:
            raise Invalid("password", "the IMAP login needs a password (password_file = ...)")


@dataclass
class AlertsConfig:
    rules: list[AlertRule] = field(default_factory=list)
    replies: RepliesConfig | None = None
    maintenance: list[MaintenanceWindow] = field(default_factory=list)
    group_window: Annotated[float, DURATION_MARK, Range(0, 3600)] = 60.0
    interval: Annotated[float, DURATION_MARK, Range(1, 3600)] = 30.0

    def validate(self) -> None:
        names = [r.name for r in self.rules]
        for i, rule in enumerate(self.rules):
            if rule.name in names[:i]:
                raise Invalid("rules", f"two rules are named {rule.name!r}; names must be unique")
            for dep in rule.depends_on:
                parent = dep.split(":", 1)[0]
                if parent not in names:
                    raise Invalid("rules", f"rule {rule.name!r} depends on unknown rule {parent!r}"
                                  f' (expected "RULE" or "RULE:TARGET-PATTERN")')
                if parent == rule.name:
                    raise Invalid("rules", f"rule {rule.name!r} depends on itself")
        parents = {r.name: [d.split(":", 1)[0] for d in r.depends_on] for r in self.rules}
        for start in parents:
            path, todo = [start], list(parents[start])
            while todo:
                name = todo.pop()
                if name == start:
                    raise Invalid("rules", f"rule {start!r} depends on itself through "
                                  f"{' -> '.join(path[1:] or [start])}")
                if name not in path:
                    path.append(name)
                    todo.extend(parents.get(name, []))


DigestSection = Literal["problems", "alerts", "power", "traffic", "services", "certificates",
                        "disks", "mailboxes", "lists", "mail", "backups"]
DIGEST_SECTIONS: tuple[DigestSection, ...] = typing.get_args(DigestSection)


@dataclass
class Digest:
    """One [[digests]] mail: what goes in it, to whom, when."""

    name: Annotated[str, Pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                 "a digest name of letters, digits, . _ -")]
    schedule: str = "0 7 * * *"
    recipients: list[str] = field(default_factory=lambda: ["admins"])
    sections: list[DigestSection] = field(default_factory=lambda: list(DIGEST_SECTIONS))
    subject: str = ""
    top: Annotated[int, Range(1, 1000)] = 20
    cert_days: Annotated[int, Range(1, 3650)] = 60
    graphs: bool = True

    def validate(self) -> None:
        from monitor.scheduler import cron_trigger

        try:
            cron_trigger(self.schedule)
        except ValueError as exc:
            raise Invalid("schedule", f'expected a cron expression like "0 7 * * 1", got '
                                      f"{self.schedule!r} ({exc})") from None
        if not self.recipients:
            raise Invalid("recipients", "needs at least one contact group")
        if not self.sections:
            raise Invalid("sections", "needs at least one section")


@dataclass
class ExportConfig:
    # Prometheus: a file for node_exporter's textfile collector, rewritten after every run.
    textfile: ConfigPath | None = None
    # "host:port" ("[::1]:9469") for an HTTP endpoint serving /metrics.
    listen: str | None = None

    def validate(self) -> None:
        if self.listen is not None:
            listen_address(self.listen)


def listen_address(text: str, key: str = "listen", example: str = "127.0.0.1:9469") -> tuple[str, int]:
    """ "127.0.0.1:9469" or "[::1]:9469" -> (host, port); Invalid (of `key`) otherwise."""
    match = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([\w.-]+):(\d+)", text)
    port = int(match[2] or match[4]) if match else 0
    if not match or not 1 <= port <= 65535:
        raise Invalid(key, f'expected "host:port" like "{example}", got {text!r}')
    return match[1] or match[3], port


@dataclass
class MuninSource:
    """One [[munin]] table: Munin plugins run here, or a munin-node asked over TCP."""

    name: Annotated[str, Pattern(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$",
                                 "a name of letters, digits, . _ -")]
    # Local plugins: absolute paths (the symlinks of /etc/munin/plugins: if_eth0 -> if_) and/or
    # every executable file of a directory.
    plugins: list[ConfigPath] = field(default_factory=list)
    directory: ConfigPath | None = None
    # Or a munin-node: "host:port"; `only` limits the plugins fetched (default: all it lists).
    node: str | None = None
    only: list[str] = field(default_factory=list)
    # The target the graphs and checks belong to (default: this host, or the node's host).
    target: str = ""
    # munin-node's plugin settings (env.NAME, timeout) for the local plugins, read as it reads
    # them; a directory that does not exist has none.
    plugin_conf: ConfigPath = Path("/etc/munin/plugin-conf.d")
    # More environment for the local plugins (over plugin-conf.d's).
    env: dict[str, str] = field(default_factory=dict)
    interval: Annotated[float, DURATION_MARK, Range(10, None)] = 300.0
    # Per plugin run (config, then fetch) or per munin-node answer.
    timeout: Annotated[float, DURATION_MARK, Range(0.1, 600)] = 10.0

    def validate(self) -> None:
        local = bool(self.plugins or self.directory)
        if local == (self.node is not None):
            raise Invalid("node", "a [[munin]] table has either plugins/directory (run here) or "
                                  "node = \"host:port\" (a munin-node), not both nor neither")
        for key, path in [("plugins", p) for p in self.plugins] + [("directory", self.directory)]:
            if path is not None and not path.is_absolute():
                raise Invalid(key, f"must be an absolute path, got {str(path)!r}")
        if self.node is not None:
            listen_address(self.node, "node", "127.0.0.1:4949")
        for name in self.only:
            if not re.fullmatch(r"[\w.:-]{1,100}", name):
                raise Invalid("only", f"not a plugin name: {name!r}")
        for name, value in self.env.items():
            if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,63}", name) or "\0" in value:
                raise Invalid("env", f"{name!r}: expected NAME = \"value\" (letters, digits, _; "
                                     "no NUL in the value)")


@dataclass
class ClusterConfig:
    """[cluster]: several agents share the work through Redis (see README "Several machines")."""

    redis: Annotated[str, Pattern(r"^(redis|rediss|unix)://\S+$",
                                  '"redis://host:6379/0", "rediss://..." (TLS) or "unix:///path"')]
    password: Secret = field(default=None, repr=False)
    tls_ca_file: ConfigPath | None = None  # rediss://: the CA that signed Redis' certificate
    node: Name | None = None  # default: the agent's host name
    groups: list[Name] = field(default_factory=lambda: ["default"])
    # How often a node says it is alive; it is taken for dead after three missed heartbeats.
    heartbeat: Annotated[float, DURATION_MARK, Range(0.1, 3600)] = 5.0
    # The leader's lease (alerts, site, digests): renewed every third of it; another node takes
    # over when it lapses.
    lease: Annotated[float, DURATION_MARK, Range(0.3, 3600)] = 15.0
    # Where samples and check results wait while Redis or rrdcached cannot be reached, and
    # how much of them: past it the oldest go (counted, reported by `monitor cluster status`).
    buffer_dir: ConfigPath | None = None
    buffer_max: Size = 256 * 1024 * 1024

    def validate(self) -> None:
        if not self.groups:
            raise Invalid("groups", "a node needs at least one group")


@dataclass
class Config:
    agent: AgentConfig = field(default_factory=AgentConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    web: WebConfig = field(default_factory=WebConfig)
    smtp: SmtpConfig = field(default_factory=SmtpConfig)
    contacts: dict[str, list[str]] = field(default_factory=dict)
    host: HostConfig = field(default_factory=HostConfig)
    snmp: SnmpConfig = field(default_factory=SnmpConfig)
    ups: list[UpsConfig] = field(default_factory=list)
    services: list[ServiceCheck] = field(default_factory=list)
    disks: DisksConfig = field(default_factory=DisksConfig)
    mailboxes: MailboxesConfig = field(default_factory=MailboxesConfig)
    lists: ListsConfig = field(default_factory=ListsConfig)
    blocklists: BlocklistsConfig = field(default_factory=BlocklistsConfig)
    maillog: MailLogConfig = field(default_factory=MailLogConfig)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    backups: list[BackupJob] = field(default_factory=list)
    munin: list[MuninSource] = field(default_factory=list)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    digests: list[Digest] = field(default_factory=list)
    export: ExportConfig = field(default_factory=ExportConfig)
    cluster: ClusterConfig | None = None
    # Not read from TOML: where the config came from and what the loader wants the user to know.
    source: Path = field(default=Path("config.toml"), metadata={"internal": True})
    warnings: list[str] = field(default_factory=list, metadata={"internal": True})

    def validate(self) -> None:
        if self.storage.rrd_dir is None:
            self.storage.rrd_dir = self.agent.data_dir / "rrd"
        if self.web.html_dir is None:
            self.web.html_dir = self.agent.data_dir / "html"
        if self.cluster is not None:
            self.cluster.node = self.cluster.node or self.agent.hostname or socket.gethostname()
            if self.cluster.buffer_dir is None:
                self.cluster.buffer_dir = self.agent.data_dir / "cluster-buffer"
        names = [s.name for s in self.services]
        for i, name in enumerate(names):
            if name in names[:i]:
                raise Invalid("services", f"two services are named {name!r}; names must be unique")
        units = [u.name for u in self.ups]
        for i, name in enumerate(units):
            if name in units[:i]:
                raise Invalid("ups", f"two [[ups]] tables are named {name!r}; names must be unique")
        read_by_snmp = {d.name for d in self.snmp.devices if d.health}
        for unit in self.ups:
            if unit.name in read_by_snmp:
                # Both would write target NAME, instance "ups", and one "ups" check.
                raise Invalid("ups", f"[[ups]] {unit.name!r} has the name of [[snmp.devices]] "
                              f"{unit.name}, whose UPS (if it has one) the SNMP poll reads too: "
                              "give the [[ups]] another name, or set health = false there")
        devices = [d.name for d in self.snmp.devices]
        for i, name in enumerate(devices):
            if name in devices[:i]:
                raise Invalid("snmp", f"two SNMP devices are named {name!r}; names must be unique")
        self._validate_alert_contacts()
        self._validate_reports()

    def _validate_reports(self) -> None:
        for what, names in (("backups", [b.name for b in self.backups]),
                            ("munin", [m.name for m in self.munin]),
                            ("digests", [d.name for d in self.digests])):
            for i, name in enumerate(names):
                if name in names[:i]:
                    raise Invalid(what, f"two {what} are named {name!r}; names must be unique")
        for digest in self.digests:
            for group in digest.recipients:
                if group not in self.contacts:
                    known = ", ".join(sorted(self.contacts)) or "none defined"
                    raise Invalid("digests", f"digest {digest.name!r} goes to unknown contact "
                                  f"group {group!r} (groups in [contacts]: {known})")

    def _validate_alert_contacts(self) -> None:
        for group, addresses in self.contacts.items():
            for address in addresses:
                if not re.fullmatch(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9.\-\[\]:]+", address):
                    raise Invalid("contacts", f"group {group!r}: {address!r} is not a plain "
                                  "user@domain address")
        for rule in self.alerts.rules:
            for group in [*rule.notify, *rule.escalate_to]:
                if group not in self.contacts:
                    known = ", ".join(sorted(self.contacts)) or "none defined"
                    raise Invalid("alerts", f"rule {rule.name!r} notifies unknown contact group "
                                  f"{group!r} (groups in [contacts]: {known})")

    @property
    def rrd_dir(self) -> Path:
        assert self.storage.rrd_dir is not None
        return self.storage.rrd_dir

    @property
    def html_dir(self) -> Path:
        assert self.web.html_dir is not None
        return self.web.html_dir

    @property
    def state_dir(self) -> Path:
        return self.agent.data_dir / "state"


# ---------------------------------------------------------------------------------------------
# Loading


def default_config_path(environ: typing.Mapping[str, str] | None = None) -> Path:
    """$MONITOR_CONFIG, else ./config.toml, else /etc/monitor/config.toml."""
    environ = os.environ if environ is None else environ
    if environ.get("MONITOR_CONFIG"):
        return Path(environ["MONITOR_CONFIG"])
    local = Path("config.toml")
    return local if local.exists() else Path("/etc/monitor/config.toml")


# What a subcommand's module is handed to read the config (monitor.cli.read_config: the path
# of -c/$MONITOR_CONFIG, the loader, its warnings logged): every command reads it one way.
ReadConfig = typing.Callable[["argparse.Namespace"], "Config"]


def load_config(path: str | os.PathLike[str], environ: typing.Mapping[str, str] | None = None) -> Config:
    """Read, parse and validate a config file; raises ConfigError with file:line: key: message."""
    path = Path(path)
    display = str(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ConfigError(
            display, None, "", "no such file; pass --config PATH or set MONITOR_CONFIG"
        ) from None
    except OSError as exc:
        raise ConfigError(display, None, "", f"cannot read: {exc.strerror}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(display, line, "", "not valid UTF-8") from None
    return parse_config(text, display, base_dir=path.resolve().parent, environ=environ,
                        readable_by_others=_readable_by_others(path))


def parse_config(
    text: str,
    display: str = "config.toml",
    *,
    base_dir: Path | None = None,
    environ: typing.Mapping[str, str] | None = None,
    readable_by_others: bool = False,
) -> Config:
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        msg = str(exc)
        match = re.search(r"\(at line (\d+), column \d+\)", msg)
        line = int(match.group(1)) if match else None
        msg = re.sub(r"\s*\(at line \d+, column \d+\)", "", msg)
        raise ConfigError(display, line, "", f"invalid TOML: {msg}") from None
    ctx = _Context(
        display=display,
        lines=_locate_keys(text),
        base_dir=base_dir or Path.cwd(),
        environ=os.environ if environ is None else environ,
        readable_by_others=readable_by_others,
    )
    config = _convert(data, Config, (), ctx)
    config.source = Path(display)
    config.warnings = ctx.warnings
    return config


def _readable_by_others(path: Path) -> bool:
    try:
        return bool(path.stat().st_mode & (stat.S_IRGRP | stat.S_IROTH))
    except OSError:
        return False


@dataclass
class _Context:
    display: str
    lines: dict[tuple[str | int, ...], int]
    base_dir: Path
    environ: typing.Mapping[str, str]
    readable_by_others: bool
    warnings: list[str] = field(default_factory=list)

    def line(self, path: tuple[str | int, ...]) -> int | None:
        while path:
            if path in self.lines:
                return self.lines[path]
            path = path[:-1]
        return None

    def error(self, path: tuple[str | int, ...], message: str) -> ConfigError:
        return ConfigError(self.display, self.line(path), _format_path(path), message)


def _format_path(path: tuple[str | int, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else part)
    return out


def _describe(value: Any) -> str:
    if isinstance(value, str):
        return '"' + value.replace('"', '\\"') + '"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        return "an array"
    return repr(value)


def _split_annotated(tp: Any) -> tuple[Any, tuple[Any, ...]]:
    if typing.get_origin(tp) is Annotated:
        return tp.__origin__, tp.__metadata__
    return tp, ()


def _convert(value: Any, tp: Any, path: tuple[str | int, ...], ctx: _Context) -> Any:
    base, marks = _split_annotated(tp)
    origin = typing.get_origin(base)

    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(base) if a is not type(None)]
        if len(options) == 1:
            inner = Annotated[(options[0], *marks)] if marks else options[0]
            return _convert(value, inner, path, ctx)
        raise TypeError(f"unsupported union {base}")

    if dataclasses.is_dataclass(base):
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a table, got {_describe(value)}")
        return _convert_dataclass(value, typing.cast(type, base), path, ctx)

    if origin is list:
        if not isinstance(value, list):
            raise ctx.error(path, f"expected an array, got {_describe(value)}")
        (item_type,) = typing.get_args(base)
        return [_convert(item, item_type, (*path, i), ctx) for i, item in enumerate(value)]

    if origin is dict:
        if not isinstance(value, dict):
            raise ctx.error(path, f"expected a table, got {_describe(value)}")
        _, value_type = typing.get_args(base)
        return {k: _convert(v, value_type, (*path, k), ctx) for k, v in value.items()}

    if origin is Literal:
        allowed = typing.get_args(base)
        if value not in allowed:
            choices = ", ".join(f'"{a}"' for a in allowed)
            hint = difflib.get_close_matches(str(value), [str(a) for a in allowed], n=1)
            extra = f' (did you mean "{hint[0]}"?)' if hint else ""
            raise ctx.error(path, f"expected one of {choices}, got {_describe(value)}{extra}")
        return value

    try:
        result = _convert_scalar(value, base, marks, ctx)
    except ValueError as exc:
        raise ctx.error(path, str(exc)) from None
    for mark in marks:
        if isinstance(mark, Range):
            _check_range(result, mark, base, value, path, ctx)
        elif isinstance(mark, Pattern) and not re.match(mark.regex, result):
            raise ctx.error(path, f"expected {mark.hint}, got {_describe(value)}")
    return result


def _convert_scalar(value: Any, base: Any, marks: tuple[Any, ...], ctx: _Context) -> Any:
    if DURATION_MARK in marks:
        return parse_duration(value)
    if SIZE_MARK in marks:
        return parse_size(value)
    if PERCENT_MARK in marks:
        return parse_percent(value)
    if PATH_MARK in marks:
        if not isinstance(value, str) or not value:
            raise ValueError(f"expected a path, got {_describe(value)}")
        path = Path(value).expanduser()
        return path if path.is_absolute() else ctx.base_dir / path
    if base is bool:
        if not isinstance(value, bool):
            raise ValueError(f"expected true or false, got {_describe(value)}")
        return value
    if base is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"expected an integer{_range_text(marks)}, got {_describe(value)}")
        return value
    if base is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"expected a number{_range_text(marks)}, got {_describe(value)}")
        return float(value)
    if base is str:
        if not isinstance(value, str):
            raise ValueError(f"expected a string, got {_describe(value)}")
        return value
    if base is Any:
        return value
    raise TypeError(f"unsupported config type {base!r}")


def _range_text(marks: tuple[Any, ...]) -> str:
    for mark in marks:
        if isinstance(mark, Range):
            if mark.low is not None and mark.high is not None:
                return f" {mark.low:g}-{mark.high:g}"
            if mark.low is not None:
                return f" >= {mark.low:g}"
            if mark.high is not None:
                return f" <= {mark.high:g}"
    return ""


def _check_range(result: Any, mark: Range, base: Any, raw: Any, path: tuple, ctx: _Context) -> None:
    too_low = mark.low is not None and result < mark.low
    too_high = mark.high is not None and result > mark.high
    if too_low or too_high:
        what = "an integer" if base is int else "a value"
        raise ctx.error(path, f"expected {what}{_range_text((mark,))}, got {_describe(raw)}")


def _fields(cls: type) -> dict[str, tuple[dataclasses.Field, Any]]:
    """TOML key -> (field, resolved type), for the fields a user may set."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for f in dataclasses.fields(cls):
        if f.metadata.get("internal"):
            continue
        out[f.metadata.get("key", f.name)] = (f, hints[f.name])
    return out


def _is_secret(tp: Any) -> bool:
    return SECRET_MARK in _split_annotated(tp)[1]


def _convert_dataclass(data: dict, cls: type, path: tuple[str | int, ...], ctx: _Context) -> Any:
    fields = _fields(cls)
    known = set(fields)
    for name, (_, tp) in fields.items():
        if _is_secret(tp):
            known |= {f"{name}_file", f"{name}_env"}
    for k in data:
        if k not in known:
            hint = difflib.get_close_matches(k, sorted(known), n=1, cutoff=0.6)
            extra = f' (did you mean "{hint[0]}"?)' if hint else ""
            raise ctx.error((*path, k), f"unknown key{extra}")

    kwargs: dict[str, Any] = {}
    for name, (f, tp) in fields.items():
        if _is_secret(tp):
            secret = _read_secret(data, name, (*path, name), ctx)
            if secret is not None:
                kwargs[f.name] = secret
            continue
        if name in data:
            kwargs[f.name] = _convert(data[name], tp, (*path, name), ctx)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ctx.error(path, f'missing required key "{name}"')
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if validate is not None:
        try:
            validate()
        except Invalid as exc:
            raise ctx.error((*path, exc.key) if exc.key else path, exc.message) from None
    return obj


def _read_secret(data: dict, name: str, path: tuple[str | int, ...], ctx: _Context) -> str | None:
    given = [k for k in (name, f"{name}_file", f"{name}_env") if k in data]
    if len(given) > 1:
        raise ctx.error(path, f"set only one of {', '.join(given)}")
    if not given:
        return None
    k = given[0]
    value = data[k]
    where = (*path[:-1], k)
    if not isinstance(value, str):
        raise ctx.error(where, f"expected a string, got {_describe(value)}")
    if k.endswith("_file"):
        file = Path(value).expanduser()
        file = file if file.is_absolute() else ctx.base_dir / file
        try:
            return file.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ctx.error(where, f"cannot read secret file {file}: {exc.strerror}") from None
    if k.endswith("_env"):
        if value not in ctx.environ:
            raise ctx.error(where, f"environment variable {value} is not set")
        return ctx.environ[value]
    if ctx.readable_by_others:
        ctx.warnings.append(
            f"{ctx.display}:{ctx.line(where) or '?'}: {_format_path(where)}: inline secret in a "
            f"file other users can read; use {name}_file or {name}_env, or chmod 600 the config"
        )
    return value


_BARE_OR_QUOTED = r"""(?:[A-Za-z0-9_\-]+|"[^"]*"|'[^']*')"""
_KEY_LINE = re.compile(rf"^\s*({_BARE_OR_QUOTED}(?:\s*\.\s*{_BARE_OR_QUOTED})*)\s*=")
_TABLE = re.compile(r"^\s*(\[\[?)\s*([^\]]+?)\s*\]\]?\s*(#.*)?$")


def _split_key(text: str) -> tuple[str, ...]:
    parts = re.findall(r"""[A-Za-z0-9_\-]+|"[^"]*"|'[^']*'""", text)
    return tuple(p[1:-1] if p[:1] in "\"'" else p for p in parts)


def _locate_keys(text: str) -> dict[tuple[str | int, ...], int]:
    """Map each key path to the line that sets it (tomllib does not report positions).

    Handles tables, arrays of tables (with their index in the path), dotted keys and skips the
    inside of multi-line strings; anything subtler falls back to the enclosing table's line.
    """
    lines: dict[tuple[str | int, ...], int] = {}
    array_index: dict[tuple[str | int, ...], int] = {}
    table: tuple[str | int, ...] = ()
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        header = _TABLE.match(line)
        if header and not _KEY_LINE.match(line):
            keys = _split_key(header.group(2))
            resolved: tuple[str | int, ...] = ()
            for i, k in enumerate(keys):
                resolved = (*resolved, k)
                is_last = i == len(keys) - 1
                if is_last and header.group(1) == "[[":
                    array_index[resolved] = array_index.get(resolved, -1) + 1
                    resolved = (*resolved, array_index[resolved])
                elif not is_last and resolved in array_index:
                    resolved = (*resolved, array_index[resolved])
                lines.setdefault(resolved[:-1] if isinstance(resolved[-1], int) else resolved, number)
            table = resolved
            lines[table] = number
            continue
        match = _KEY_LINE.match(line)
        if match:
            lines[(*table, *_split_key(match.group(1)))] = number
            rest = line[match.end():]
            for quote in ('"""', "'''"):
                if rest.count(quote) % 2 == 1:
                    in_multiline = quote
    return lines
