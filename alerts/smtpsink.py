"""`monitor smtp-sink`: a local SMTP server that files every message it receives.

For the demo and for trying a config without a real relay: each message is written atomically
as `<maildir>/<time>-<n>.eml` (open it with any mail reader, or `less`). It accepts any sender
and recipient and relays nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from pathlib import Path

from aiosmtpd.smtp import SMTP, Envelope, Session

from alerts.mail import clean_header
from monitor.files import atomic_write

log = logging.getLogger("monitor.smtpsink")


class MaildirHandler:
    def __init__(self, maildir: Path) -> None:
        self.maildir = Path(maildir)
        self.maildir.mkdir(parents=True, exist_ok=True)
        self._counter = itertools.count(1)

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        raw = envelope.original_content or envelope.content
        assert isinstance(raw, bytes)  # SMTP() without decode_data keeps the bytes received
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = self.maildir / f"{stamp}-{next(self._counter):04d}.eml"
        # Envelope addresses are the client's words: a quoted local part may hold a CR or LF.
        header = (f"X-Sink-Envelope-From: {clean_header(envelope.mail_from)}\r\n"
                  f"X-Sink-Envelope-To: {clean_header(', '.join(envelope.rcpt_tos))}\r\n"
                  ).encode("ascii", "replace")
        await asyncio.to_thread(atomic_write, path, header + raw, 0o600)
        subject = next((line[9:].decode("utf-8", "replace").strip() for line in raw.splitlines()
                        if line.lower().startswith(b"subject: ")), "")
        log.info("received mail for %s: %s -> %s", clean_header(", ".join(envelope.rcpt_tos)),
                 clean_header(subject), path)
        return "250 OK: stored"


async def serve(maildir: Path, bind: str = "127.0.0.1", port: int = 2525,
                ready: asyncio.Event | None = None, stop: asyncio.Event | None = None) -> None:
    handler = MaildirHandler(maildir)
    # aiosmtpd logs every SMTP command at INFO; one line per stored message is ours.
    logging.getLogger("mail.log").setLevel(logging.WARNING)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: SMTP(handler, hostname="monitor-smtp-sink"),
                                      bind, port)
    actual = server.sockets[0].getsockname()[1]
    log.info("SMTP sink listening on %s:%d, storing mail in %s", bind, actual, maildir)
    if ready is not None:
        ready.set()
    try:
        await (stop.wait() if stop is not None else asyncio.Event().wait())
    finally:
        server.close()
        await server.wait_closed()
