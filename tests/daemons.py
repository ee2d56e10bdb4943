"""Real Debian daemons for the service-check tests (unbound, openssh-server), each a child of
the test with its own config in a temporary directory, on a free loopback port, killed at
teardown. A daemon that is not installed skips the test (the Makefile installs them)."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, kind) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def free_dns_port() -> int:
    """A port free for UDP and TCP on 127.0.0.1 and ::1 (a DNS server binds all four; a port
    free for UDP on 127.0.0.1 alone was taken for TCP now and then by a busy test)."""
    hosts = ["127.0.0.1", *(["::1"] if ipv6_loopback() else [])]
    for _ in range(100):
        port = free_port(socket.SOCK_DGRAM)
        try:
            for host in hosts:
                family = socket.AF_INET6 if ":" in host else socket.AF_INET
                for kind in (socket.SOCK_DGRAM, socket.SOCK_STREAM):
                    with socket.socket(family, kind) as s:
                        s.bind((host, port))
        except OSError:
            continue
        return port
    raise OSError("no port free for UDP and TCP on the loopback addresses")


def ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


def _ids(user: str) -> tuple[int, int]:
    import pwd

    entry = pwd.getpwnam(user)
    return entry.pw_uid, entry.pw_gid


def _require(binary: str) -> None:
    if not Path(binary).exists():
        pytest.skip(f"{binary} is not installed (see APT_PACKAGES in the Makefile)")


@contextlib.contextmanager
def _running(argv: list[str], ready, what: str, log: Path) -> Iterator[subprocess.Popen]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{what} did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.02)
        yield proc
    finally:
        proc.kill()
        proc.wait(timeout=10)


def _accepts(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


@contextlib.contextmanager
def unbound(directory: Path, local_data: list[str], tcp: bool = True,
            interfaces: list[str] | None = None, port: int | None = None,
            modules: str = "iterator") -> Iterator[int]:
    """unbound answering for its local zones from `local_data` lines (unbound.conf syntax, more
    clauses such as auth-zone or stub-zone too) on `interfaces` (default 127.0.0.1 and ::1; UDP,
    TCP too unless tcp=False) with `modules` ("validator iterator" to validate); yields the
    port."""
    _require("/usr/sbin/unbound")
    import dns.message
    import dns.query

    port = port or free_dns_port()
    interfaces = interfaces or ["127.0.0.1", *(["::1"] if ipv6_loopback() else [])]
    directory.mkdir(parents=True, exist_ok=True)
    conf = directory / "unbound.conf"
    lines = ["server:", f"  port: {port}", "  do-daemonize: no", "  chroot: \"\"",
             "  username: \"\"", f"  directory: \"{directory}\"", "  pidfile: \"\"",
             "  use-syslog: no", "  logfile: \"\"", "  verbosity: 1", "  num-threads: 1",
             f"  do-tcp: {'yes' if tcp else 'no'}", "  do-ip6: yes",
             "  access-control: 127.0.0.0/8 allow", "  access-control: ::1 allow",
             f"  module-config: \"{modules}\"", "  do-not-query-localhost: no",
             *(f"  interface: {i}" for i in interfaces), *(f"  {line}" for line in local_data)]
    conf.write_text("\n".join(lines) + "\n")

    def ready() -> bool:
        try:
            dns.query.udp(dns.message.make_query("ready.invalid.", "A"), interfaces[0],
                          port=port, timeout=0.2)
            return True
        except Exception:
            return False

    with _running(["/usr/sbin/unbound", "-d", "-c", str(conf)], ready, "unbound",
                  directory / "unbound.log"):
        yield port


@contextlib.contextmanager
def sshd(directory: Path) -> Iterator[int]:
    """OpenSSH's sshd on 127.0.0.1 (and ::1) with a host key made here; yields the port."""
    _require("/usr/sbin/sshd")
    # sshd started as root insists on its privilege separation directory (systemd makes it).
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    key = directory / "ssh_host_ed25519_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(key)], check=True)
    port = free_port()
    conf = directory / "sshd_config"
    listen = ["ListenAddress 127.0.0.1", *(["ListenAddress [::1]"] if ipv6_loopback() else [])]
    conf.write_text("\n".join([f"Port {port}", *listen, f"HostKey {key}", "UsePAM no",
                               f"PidFile {directory / 'sshd.pid'}", "PasswordAuthentication no",
                               "KbdInteractiveAuthentication no"]) + "\n")
    with _running(["/usr/sbin/sshd", "-D", "-e", "-f", str(conf)],
                  lambda: _accepts("127.0.0.1", port), "sshd", directory / "sshd.log"):
        yield port


@contextlib.contextmanager
def world_dir(prefix: str) -> Iterator[Path]:
    """A directory the daemons' own users can reach (pytest's tmp_path sits under a 0700
    directory of root's), removed afterwards."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


class Dovecot:
    """A running dovecot: ports by name (imap, imaps, pop3, pop3s, lmtp, and auth: SASL for
    postfix), its directory."""

    def __init__(self, directory: Path, ports: dict[str, int]) -> None:
        self.directory = directory
        self.ports = ports

    def maildir(self, user: str) -> Path:
        return self.directory / "mail" / user


@contextlib.contextmanager
def dovecot(cert: tuple[Path, Path], users: dict[str, str],
            reused_login_processes: bool = False) -> Iterator[Dovecot]:
    """dovecot with IMAP, IMAPS, POP3, POP3S and LMTP (TCP) on 127.0.0.1 and ::1, `users`
    (name -> password) in a passwd-file, Maildirs under its directory, the certificate `cert`
    (PEM, key) for TLS. Debian's default starts an imap-login process per connection
    ("high-security mode"); `reused_login_processes`: Dovecot's "high-performance mode"
    (service_count = 0), which busy servers use."""
    _require("/usr/sbin/dovecot")
    import pwd
    import shutil

    with world_dir("monitor-dovecot-") as d:
        vmail = pwd.getpwnam("dovecot")
        (d / "mail").mkdir()
        os.chown(d / "mail", vmail.pw_uid, vmail.pw_gid)
        for name, src in (("cert.pem", cert[0]), ("key.pem", cert[1])):
            shutil.copy(src, d / name)
        (d / "passwd").write_text("".join(f"{u}:{{PLAIN}}{p}::::::\n" for u, p in users.items()))
        ports = {name: free_port() for name in ("imap", "imaps", "pop3", "pop3s", "lmtp", "auth")}
        address = "127.0.0.1" + (", ::1" if ipv6_loopback() else "")

        def listener(service: str, name: str, ssl: bool = False) -> str:
            return (f"service {service} {{\n  inet_listener {name} {{\n    address = {address}\n"
                    f"    port = {ports[name]}\n    ssl = {'yes' if ssl else 'no'}\n  }}\n}}\n")

        conf = d / "dovecot.conf"
        conf.write_text(f"""
base_dir = {d}/run
state_dir = {d}/state
log_path = {d}/dovecot.log
instance_name = monitor-test-{ports['imap']}
protocols = imap pop3 lmtp
listen = {address}
ssl = yes
ssl_cert = <{d}/cert.pem
ssl_key = <{d}/key.pem
disable_plaintext_auth = yes
auth_mechanisms = plain login
first_valid_uid = {vmail.pw_uid}
mail_location = maildir:{d}/mail/%u
passdb {{
  driver = passwd-file
  args = scheme=PLAIN {d}/passwd
}}
userdb {{
  driver = static
  args = uid={vmail.pw_uid} gid={vmail.pw_gid} home={d}/mail/%u
}}
default_internal_user = dovecot
default_login_user = dovenull
auth_failure_delay = 0
# No growing penalty after the tests' failed logins (anvil skips trusted networks).
login_trusted_networks = 127.0.0.0/8 ::1/128
""" + ("service imap-login {\n  service_count = 0\n  process_min_avail = 2\n}\n"
       if reused_login_processes else "")
            + listener("imap-login", "imap") + listener("imap-login", "imaps", True).replace(
            "service imap-login {\n", "service imap-login {\n", 1)
            + listener("pop3-login", "pop3") + listener("pop3-login", "pop3s", True)
            + listener("lmtp", "lmtp") + listener("auth", "auth").replace(
                f"address = {address}", "address = 127.0.0.1"))
        with _running(["/usr/sbin/dovecot", "-F", "-c", str(conf)],
                      lambda: all(_accepts("127.0.0.1", p) for p in ports.values()), "dovecot",
                      d / "stdout.log"):
            yield Dovecot(d, ports)


@contextlib.contextmanager
def postfix(cert: tuple[Path, Path], dovecot: Dovecot, domain: str = "example.test",
            main_cf: str = "", log: Path | None = None) -> Iterator[dict[str, int]]:
    """postfix with smtp (STARTTLS offered) and submission (TLS required, SASL AUTH through
    `dovecot`) on 127.0.0.1 and ::1, delivering mail for `domain` to dovecot over LMTP; yields
    the ports by name (smtp, submission). `main_cf`: more main.cf lines; `log`: where its mail
    log goes (default: postfix.log in its directory)."""
    _require("/usr/sbin/postfix")
    import shutil

    with world_dir("monitor-postfix-") as d:
        etc = d / "etc"
        etc.mkdir()
        uid, gid = _ids("postfix")
        postdrop = grp.getgrnam("postdrop").gr_gid
        (d / "data").mkdir()
        os.chown(d / "data", uid, gid)
        # What `postfix check` would make, made here so master starts at once (no postfix-script).
        (d / "queue" / "pid").mkdir(parents=True)
        for name, owner, mode in [*((q, gid, 0o700) for q in (
                "active", "bounce", "corrupt", "defer", "deferred", "flush", "hold", "incoming",
                "private", "saved", "trace")), ("maildrop", postdrop, 0o730), ("public", postdrop, 0o710)]:
            (d / "queue" / name).mkdir()
            os.chown(d / "queue" / name, uid, owner)
            (d / "queue" / name).chmod(mode)
        for name, src in (("cert.pem", cert[0]), ("key.pem", cert[1])):
            shutil.copy(src, etc / name)
        ports = {"smtp": free_port(), "submission": free_port()}
        six = ipv6_loopback()
        (etc / "main.cf").write_text(f"""compatibility_level = 3.6
queue_directory = {d}/queue
data_directory = {d}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mail.{domain}
mydomain = {domain}
myorigin = {domain}
mydestination =
inet_interfaces = loopback-only
inet_protocols = {'all' if six else 'ipv4'}
mynetworks = 127.0.0.0/8{' [::1]/128' if six else ''}
alias_maps =
alias_database =
local_recipient_maps =
virtual_mailbox_domains = {domain}
virtual_transport = lmtp:inet:127.0.0.1:{dovecot.ports['lmtp']}
smtpd_tls_cert_file = {etc}/cert.pem
smtpd_tls_key_file = {etc}/key.pem
smtpd_tls_security_level = may
smtpd_sasl_type = dovecot
smtpd_sasl_path = inet:127.0.0.1:{dovecot.ports['auth']}
smtpd_relay_restrictions = permit_mynetworks permit_sasl_authenticated reject_unauth_destination
maillog_file = /dev/stdout
smtputf8_enable = no
biff = no
""" + main_cf)
        common = "n - n - - smtpd"
        binds = ["127.0.0.1", *(["[::1]"] if six else [])]
        services = [f"{b}:{ports['smtp']} inet {common}" for b in binds] + [
            f"{b}:{ports['submission']} inet {common} -o smtpd_tls_security_level=encrypt "
            "-o smtpd_sasl_auth_enable=yes -o smtpd_client_restrictions=permit_sasl_authenticated,reject"
            for b in binds]
        (etc / "master.cf").write_text("\n".join([*services, *"""pickup unix n - n 60 1 pickup
cleanup unix n - n - 0 cleanup
qmgr unix n - n 300 1 qmgr
tlsmgr unix - - n 1000? 1 tlsmgr
rewrite unix - - n - - trivial-rewrite
bounce unix - - n - 0 bounce
defer unix - - n - 0 bounce
trace unix - - n - 0 bounce
verify unix - - n - 1 verify
flush unix n - n 1000? 0 flush
proxymap unix - - n - - proxymap
smtp unix - - n - - smtp
showq unix n - n - - showq
error unix - - n - - error
retry unix - - n - - error
discard unix - - n - - discard
lmtp unix - - n - - lmtp
virtual unix - n n - - virtual
anvil unix - - n - 1 anvil
scache unix - - n - 1 scache
postlog unix-dgram n - n - 1 postlogd""".splitlines()]) + "\n")
        # master in the foreground (-d) as the test's child; its own children end with it.
        with _running(["/usr/lib/postfix/sbin/master", "-c", str(etc), "-d"],
                      lambda: all(_accepts("127.0.0.1", p) for p in ports.values()), "postfix",
                      log or d / "postfix.log"):
            yield ports


@contextlib.contextmanager
def vsftpd() -> Iterator[int]:
    """vsftpd on 127.0.0.1 and ::1 (listen_ipv6 takes both), anonymous read-only into an empty
    directory; yields the port."""
    _require("/usr/sbin/vsftpd")
    with world_dir("monitor-vsftpd-") as d:
        empty = d / "empty"
        empty.mkdir()
        port = free_port()
        conf = d / "vsftpd.conf"
        conf.write_text("\n".join([
            f"listen_ipv6={'YES' if ipv6_loopback() else 'NO'}",
            f"listen={'NO' if ipv6_loopback() else 'YES'}", f"listen_port={port}",
            "background=NO", "anonymous_enable=YES", "ftp_username=nobody", f"anon_root={empty}",
            "local_enable=NO", "write_enable=NO",
            f"secure_chroot_dir={empty}", "ftpd_banner=monitor test FTP ready", "seccomp_sandbox=NO",
            f"vsftpd_log_file={d}/vsftpd.log", "pasv_enable=NO"]) + "\n")
        with _running(["/usr/sbin/vsftpd", str(conf)], lambda: _accepts("127.0.0.1", port),
                      "vsftpd", d / "stdout.log"):
            yield port


@contextlib.contextmanager
def nginx(cert: tuple[Path, Path], server_name: str = "localhost") -> Iterator[int]:
    """nginx serving a small page over HTTPS (`cert`) on 127.0.0.1 and ::1; yields the port."""
    _require("/usr/sbin/nginx")
    with world_dir("monitor-nginx-") as d:
        port = free_port()
        (d / "html").mkdir()
        (d / "html" / "index.html").write_text("Hello from nginx\n")
        listen = [f"listen 127.0.0.1:{port} ssl;", *([f"listen [::1]:{port} ssl;"] if ipv6_loopback()
                                                     else [])]
        conf = d / "nginx.conf"
        conf.write_text(f"""daemon off;
master_process on;
worker_processes 1;
user nobody nogroup;
pid {d}/nginx.pid;
error_log {d}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  server {{
    {' '.join(listen)}
    server_name {server_name};
    ssl_certificate {cert[0]};
    ssl_certificate_key {cert[1]};
    root {d}/html;
  }}
}}
""")
        with _running(["/usr/sbin/nginx", "-c", str(conf), "-p", str(d)],
                      lambda: _accepts("127.0.0.1", port), "nginx", d / "stdout.log"):
            yield port


class NutUps:
    """A running upsd with one dummy-ups UPS; `show()` makes the UPS report new values."""

    def __init__(self, directory: Path, port: int, name: str) -> None:
        self.directory, self.port, self.name = directory, port, name

    def show(self, values: dict[str, str]) -> None:
        # dummy-ups (mode dummy-once) reads its file again when it changes.
        path = self.directory / "ups.seq"
        tmp = path.with_suffix(".new")
        tmp.write_text("".join(f"{k}: {v}\n" for k, v in values.items()))
        tmp.chmod(0o644)
        tmp.replace(path)


@contextlib.contextmanager
def nut_upsd(values: dict[str, str], name: str = "dummy") -> Iterator[NutUps]:
    """Debian's upsd and dummy-ups driver on a free loopback port, configured in a temporary
    directory (NUT_CONFPATH / NUT_STATEPATH), as user nut when started as root."""
    for binary in ("/lib/nut/upsd", "/lib/nut/dummy-ups"):
        _require(binary)
    with world_dir("monitor-nut-") as directory:
        state = directory / "state"
        state.mkdir()
        port = free_port()
        ups = NutUps(directory, port, name)
        ups.show(values)
        (directory / "ups.conf").write_text(
            f"[{name}]\n  driver = dummy-ups\n  port = {directory / 'ups.seq'}\n"
            "  mode = dummy-once\n  pollinterval = 1\n  desc = \"test UPS\"\n")
        (directory / "upsd.conf").write_text(f"LISTEN 127.0.0.1 {port}\n")
        (directory / "upsd.users").write_text("")
        user: list[str] = []
        if os.geteuid() == 0:
            uid, gid = _ids("nut")
            os.chown(state, uid, gid)
            state.chmod(0o770)
            for conf in ("upsd.conf", "upsd.users", "ups.conf"):
                os.chown(directory / conf, 0, gid)
                (directory / conf).chmod(0o640)
            user = ["-u", "nut"]
        env = {**os.environ, "NUT_CONFPATH": str(directory), "NUT_STATEPATH": str(state),
               "NUT_ALTPIDPATH": str(state)}
        with contextlib.ExitStack() as stack:
            driver_log = directory / "driver.log"
            driver = subprocess.Popen(["/lib/nut/dummy-ups", "-a", name, "-F", *user], env=env,
                                      stdout=driver_log.open("w"), stderr=subprocess.STDOUT)
            stack.callback(stop, driver)
            for _ in range(100):
                if any(state.iterdir()) or driver.poll() is not None:
                    break
                time.sleep(0.05)
            upsd_log = directory / "upsd.log"
            upsd = subprocess.Popen(["/lib/nut/upsd", "-F", *user], env=env,
                                    stdout=upsd_log.open("w"), stderr=subprocess.STDOUT)
            stack.callback(stop, upsd)
            for _ in range(100):
                if _accepts("127.0.0.1", port):
                    break
                if upsd.poll() is not None:
                    raise RuntimeError(f"upsd exited: {upsd_log.read_text()[-1000:]}")
                time.sleep(0.05)
            else:
                raise RuntimeError(f"upsd did not listen: {upsd_log.read_text()[-1000:]}")
            yield ups


def stop(proc: subprocess.Popen) -> None:
    """Ends a daemon of a test: TERM, then KILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@contextlib.contextmanager
def munin_node(directory: Path) -> Iterator[int]:
    """Debian's munin-node on 127.0.0.1 with a config of its own (its plugins are the
    machine's /etc/munin/plugins, which munin-node cannot be told to look elsewhere for);
    yields the port."""
    _require("/usr/sbin/munin-node")
    port = free_port()
    conf = directory / "munin-node.conf"
    conf.write_text("\n".join([
        "log_level 4", f"log_file {directory / 'munin-node.log'}",
        f"pid_file {directory / 'munin-node.pid'}", "background 0", "setsid 0",
        "user root", "group root", "ignore_file [\\#~]$", "allow ^127\\.0\\.0\\.1$",
        "host 127.0.0.1", f"port {port}", "timeout 10"]) + "\n")
    with _running(["/usr/sbin/munin-node", "--config", str(conf), "--foreground"],
                  lambda: _accepts("127.0.0.1", port), "munin-node", directory / "node.out"):
        yield port


@contextlib.contextmanager
def redis_server(directory: Path, port: int | None = None) -> Iterator[int]:
    """redis-server on 127.0.0.1 (no persistence), its files in `directory`; yields the port.
    A given `port` lets a test start it again where the agents expect it."""
    _require("/usr/bin/redis-server")
    port = port or free_port()
    argv = ["/usr/bin/redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
            "--appendonly", "no", "--dir", str(directory), "--daemonize", "no"]
    with _running(argv, lambda: _accepts("127.0.0.1", port), "redis-server",
                  directory / f"redis-{port}.log"):
        yield port


@contextlib.contextmanager
def rrdcached_tcp(base: Path, port: int | None = None) -> Iterator[int]:
    """rrdcached listening on 127.0.0.1:PORT over TCP, its files under `base` (-b, -B: clients
    name files relative to it and cannot leave it; -R: CREATE makes directories); yields the
    port."""
    _require("/usr/bin/rrdcached")
    port = port or free_port()
    journal = base.parent / f"{base.name}-journal"
    base.mkdir(exist_ok=True)
    journal.mkdir(exist_ok=True)
    argv = ["/usr/bin/rrdcached", "-g", "-R", "-l", f"127.0.0.1:{port}", "-b", str(base), "-B",
            "-j", str(journal), "-w", "3600", "-z", "1", "-f", "7200",
            "-p", str(base.parent / f"rrdcached-{port}.pid")]
    with _running(argv, lambda: _accepts("127.0.0.1", port), "rrdcached",
                  base.parent / f"rrdcached-{port}.log"):
        yield port


@contextlib.contextmanager
def snmpsim(recordings: dict[str, str], ready_community: str) -> Iterator[int]:
    """snmpsim serving recordings (community -> .snmprec text) on a free UDP port of
    127.0.0.1; yields the port once `ready_community` answers."""
    import shutil
    import sys
    import tempfile

    # Not under pytest's tmp_path: as root snmpsim runs as nobody, who must reach its cache.
    tmp = Path(tempfile.mkdtemp(prefix="monitor-snmpsim-"))
    cache = tmp / "cache"
    cache.mkdir()
    os.chmod(tmp, 0o755)
    os.chmod(cache, 0o777)
    data_dir = tmp / "data"
    data_dir.mkdir()
    os.chmod(data_dir, 0o755)
    for community, text in recordings.items():
        (data_dir / f"{community}.snmprec").write_text(text)
    port = free_port(socket.SOCK_DGRAM)
    root = Path(__file__).resolve().parent.parent
    argv = [sys.executable, str(root / "scripts" / "run_snmpsim.py"), f"--data-dir={data_dir}",
            f"--cache-dir={cache}", f"--agent-udpv4-endpoint=127.0.0.1:{port}",
            "--max-var-binds=2000", "--logging-method=null"]
    if os.geteuid() == 0:
        argv += ["--process-user=nobody", "--process-group=nogroup"]

    def answers() -> bool:
        from collectors.snmp_client import CommunityClient, Endpoint, SnmpError

        async def get() -> bool:
            client = CommunityClient(Endpoint("snmpsim", "127.0.0.1", port, timeout=0.3,
                                              retries=0), ready_community)
            try:
                await client.get([(1, 3, 6, 1, 2, 1, 1, 3, 0)])
                return True
            except SnmpError:
                return False
            finally:
                client.close()
        import asyncio
        return asyncio.run(get())

    try:
        with _running(argv, answers, "snmpsim", tmp / "snmpsim.log"):
            yield port
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
