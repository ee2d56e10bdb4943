"""Record a real Mailman 3 smtp.log and REST answer (run by hand; the output is checked in).

Runs Debian 12's Mailman 3 core (`apt-get install mailman3`; not needed by the tests) with its
own var_dir, an SQLite database and free loopback ports; its outgoing SMTP goes to an aiosmtpd
sink here that refuses the recipients whose name starts with "gone" (550, as a relay does for a
mailbox that no longer exists). Two lists named `users` on two domains, members added with
welcome messages (Mailman's own mail), posts from members over LMTP, a post from a nonmember
(held: a notice to the owner). Writes smtp.log-mailman3-real and lists-mailman3-real.json here.

    .venv/bin/python tests/data/mailman/record_mailman3.py
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from aiosmtpd.controller import Controller

HERE = Path(__file__).resolve().parent
LISTS = {"users@lists.a.example": 14, "users@lists.b.example": 7}
REFUSED = ("gone1", "gone2")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Sink:
    def __init__(self) -> None:
        self.messages = 0

    async def handle_RCPT(self, server, session, envelope, address, options):  # noqa: ANN001
        if address.split("@")[0].startswith(REFUSED):
            return "550 5.1.1 <%s>: Recipient address rejected: User unknown" % address
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # noqa: ANN001
        self.messages += 1
        return "250 OK"


def post(lmtp: int, to: str, sender: str, n: int, size: int) -> None:
    body = ("A line of a real post to the list.\n" * (size // 36 + 1))[:size]
    text = (f"From: {sender}\nTo: {to}\nSubject: post {n}\nMessage-ID: <post-{n}@example.org>\n"
            f"Date: {time.strftime('%a, %d %b %Y %H:%M:%S +0000', time.gmtime())}\n\n{body}\n")
    with smtplib.LMTP("127.0.0.1", lmtp) as client:
        client.sendmail(sender, [to], text.replace("\n", "\r\n").encode())


def main() -> None:
    if shutil.which("mailman") is None:
        sys.exit("mailman (Debian package mailman3) is not installed")
    sink = Sink()
    smtp_port, lmtp_port, rest_port = free_port(), free_port(), free_port()
    controller = Controller(sink, hostname="127.0.0.1", port=smtp_port)
    controller.start()
    var = Path(tempfile.mkdtemp(prefix="mailman3-record-"))
    cfg = var / "mailman.cfg"
    cfg.write_text(f"""[mailman]
layout: record
site_owner: listmaster@lists.a.example

[paths.record]
var_dir: {var}/var
bin_dir: /usr/lib/mailman3/bin

[database]
class: mailman.database.sqlite.SQLiteDatabase
url: sqlite:///{var}/var/data/mailman.db

[mta]
incoming: mailman.mta.null.NullMTA
lmtp_host: 127.0.0.1
lmtp_port: {lmtp_port}
smtp_host: 127.0.0.1
smtp_port: {smtp_port}

[webservice]
hostname: 127.0.0.1
port: {rest_port}
admin_user: restadmin
admin_pass: restpass
""")
    mailman = ["mailman", "--run-as-root", "-C", str(cfg)]
    try:
        subprocess.run([*mailman, "start", "--force"], check=True)
        for name in LISTS:
            subprocess.run([*mailman, "create", "--owner", "owner@example.org", name], check=True)
        deadline = time.monotonic() + 180
        while True:  # the REST runner is up once it answers
            try:
                answer = rest(rest_port, "/3.1/lists")
                break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        for name, count in LISTS.items():
            members = var / f"{name}.txt"
            local = name.split("@")[1].split(".")[1]
            addresses = [f"member{i}.{local}@example.org" for i in range(count - len(REFUSED))]
            members.write_text("\n".join([*addresses, *(f"{r}@example.org" for r in REFUSED)])
                               + "\n")
            subprocess.run([*mailman, "addmembers", "--welcome-msg", str(members), name],
                           check=True)
        n = 0
        for round_ in range(3):
            for name, count in LISTS.items():
                local = name.split("@")[1].split(".")[1]
                n += 1
                post(lmtp_port, name, f"member{round_}.{local}@example.org", n, 400 + 977 * n)
        post(lmtp_port, "users@lists.a.example", "stranger@example.com", 99, 800)  # held
        log = var / "var" / "logs" / "smtp.log"
        deadline = time.monotonic() + 120
        while log.read_text().count(" post to ") < 6 if log.exists() else True:
            if time.monotonic() > deadline:
                raise SystemExit("Mailman did not deliver the posts within 2 minutes")
            time.sleep(1)
        time.sleep(10)  # the owner's notice and the rest of the welcome messages
        answer = rest(rest_port, "/3.1/lists")
        shutil.copy(log, HERE / "smtp.log-mailman3-real")
        (HERE / "lists-mailman3-real.json").write_text(json.dumps(answer, indent=1) + "\n")
        print(log.read_text())
    finally:
        subprocess.run([*mailman, "stop"], check=False)
        controller.stop()
        shutil.rmtree(var, ignore_errors=True)


def rest(port: int, path: str) -> dict:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    token = base64.b64encode(b"restadmin:restpass").decode()
    request.add_header("Authorization", f"Basic {token}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
