"""Building outgoing mail so that nothing from a device can forge a header.

Alert subjects and bodies quote strings that come from devices and servers (interface aliases,
SMTP banners, mailbox names). Such a string may hold CR/LF ("eth0\\r\\nBcc: victim@...") or other
control characters. Every header value here goes through `clean_header()` first (which also
defuses RFC 2047 encoded words, which the email package would otherwise decode back into CR/LF),
and messages are built with `email.policy.default`, which refuses any header value that still
holds a line break, so an injection fails loudly instead of adding a header. Bodies are plain text; control
characters other than newline and tab are replaced there too so a hostile banner cannot hide text
from a terminal.
"""

from __future__ import annotations

import email.policy
import email.utils
import re
import time
from collections.abc import Iterable, Mapping
from email.headerregistry import Address
from email.message import EmailMessage

# C0 controls, DEL and the C1 block; U+2028/2029 are line breaks to some mail readers.
_HEADER_BAD = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u0085]+")
_BODY_BAD = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\u2028\u2029\u0085]")
MAX_SUBJECT = 200
_ADDRESS = re.compile(r"[^\s@<>()\[\],;:\"\\]+@[A-Za-z0-9.\-\[\]:]+")


def clean_header(value: object, limit: int = MAX_SUBJECT) -> str:
    """One line of text fit for a header: control characters (CR, LF, ...) become one space."""
    text = _HEADER_BAD.sub(" ", str(value))
    # The email package decodes RFC 2047 encoded words in assigned values, so
    # "=?utf-8?q?=0D=0ABcc:...?=" would come back as a real line break: break the "=?" opener.
    text = text.replace("=?", "= ?")
    text = re.sub(r" {2,}", " ", text).strip()
    if len(text) > limit:
        text = text[: limit - 1].rstrip() + "…"
    return text


def clean_body(text: str) -> str:
    """Normalise line ends and drop control characters other than newline and tab."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return _BODY_BAD.sub("\ufffd", text)


def check_address(address: str) -> str:
    """An address from the config, refused (ValueError) unless it is one plain user@domain."""
    if not isinstance(address, str) or not _ADDRESS.fullmatch(address):
        raise ValueError(f"invalid mail address {address!r}: expected one plain user@domain")
    return address


def make_message(
    *,
    sender: str,
    to: Iterable[str],
    subject: str,
    body: str,
    headers: Mapping[str, str] | None = None,
    date: float | None = None,
) -> EmailMessage:
    """A plain-text message with safe headers (untrusted text allowed in subject/body/headers).

    The Message-ID is left to the outbox, which sets it when the message is accepted so that a
    duplicate after a crash carries the same ID. `headers` are extra headers (e.g. X-Monitor-*,
    In-Reply-To) whose values are cleaned like the subject.
    """
    recipients = [check_address(a) for a in to]
    if not recipients:
        raise ValueError("a message needs at least one recipient")
    msg = EmailMessage(policy=email.policy.default)
    msg["From"] = check_address(sender)
    msg["To"] = ", ".join(recipients)
    msg["Subject"] = clean_header(subject)
    msg["Date"] = email.utils.formatdate(date if date is not None else time.time(), localtime=True)
    # RFC 3834: vacation responders and ticket systems must not answer automatic mail.
    msg["Auto-Submitted"] = "auto-generated"
    for name, value in (headers or {}).items():
        header = clean_header(name, limit=76)
        if not re.fullmatch(r"[A-Za-z0-9-]+", header):
            raise ValueError(f"invalid header name {name!r}")
        msg[header] = clean_header(value, limit=900)
    msg.set_content(clean_body(body), subtype="plain", charset="utf-8")
    for name, value in msg.items():  # belt and braces: no header may hold a line break
        if _HEADER_BAD.search(str(value)):
            raise ValueError(f"refusing a {name} header with control characters")
    return msg


def recipients_of(msg: EmailMessage) -> list[str]:
    """The envelope recipients of a message: every address in To, Cc and Bcc."""
    out: list[str] = []
    for header in ("To", "Cc", "Bcc"):
        for value in msg.get_all(header, []):
            for address in getattr(value, "addresses", ()):
                if isinstance(address, Address) and address.addr_spec not in out:
                    out.append(address.addr_spec)
            if not hasattr(value, "addresses"):
                for _, addr in email.utils.getaddresses([str(value)]):
                    if addr and addr not in out:
                        out.append(addr)
    return out
