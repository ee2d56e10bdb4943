"""Untrusted text (banners, interface aliases, model strings, mailbox and list names, command
output) made fit for one line of a message, a log or a page."""

from __future__ import annotations

import re

# C0/C1 controls, and the Unicode line separators, zero-width and bidirectional overrides that
# could make hostile text rewrite the rest of a line when displayed.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029\u200b-\u200f\u202a-\u202e\u2066-\u2069]+")


def clean(text: object, limit: int = 80) -> str:
    """One line: control characters become a space, length bounded by `limit`."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    text = str(text)
    # Every character CONTROL matches is unprintable (Cc, Cf, Zl, Zp): most text skips it.
    text = (text if text.isprintable() else CONTROL.sub(" ", text)).strip()
    return text if len(text) <= limit else text[: limit - 1] + "…"
