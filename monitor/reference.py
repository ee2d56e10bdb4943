"""The commented reference config (config.toml, shipped in this package) and its installed form.

The repository's config.toml is the one source: `monitor/config.toml` is a link to it, so the
wheel, `monitor init-config` and the Debian package's /etc/monitor/config.toml all carry the same
text. The installed form drops the demo: a table whose header line ends in "# demo" is commented
out (with its sub-tables), and a line ending in "# demo; installed: LINE" becomes LINE.
"""

from __future__ import annotations

import re
from importlib.resources import files

_TABLE = re.compile(r"^\s*\[\[?\s*(?P<name>[\w.-]+)\s*\]\]?\s*(?P<demo>#\s*demo\s*)?$")
_DEMO_LINE = re.compile(r"#\s*demo;\s*installed:\s*(?P<line>.+?)\s*$")

INSTALLED_HEADER = (
    "# Written by `monitor init-config` from the reference config of this version, without the\n"
    "# demo (its tables are commented out). Check it with `monitor check-config`.\n#\n"
)


def reference_text() -> str:
    """The reference config.toml of this version, exactly as in the repository."""
    return files("monitor").joinpath("config.toml").read_text(encoding="utf-8")


def installed_config(reference: str) -> str:
    """`reference` with the demo's tables commented out and the installed values in place."""
    out = [INSTALLED_HEADER]
    demo_table: str | None = None
    for line in reference.splitlines(keepends=True):
        table = _TABLE.match(line)
        if table:
            name = table["name"]
            if table["demo"]:
                demo_table = name
            elif demo_table is None or not name.startswith(demo_table + "."):
                demo_table = None
        if demo_table is not None:
            if line.strip() and not line.lstrip().startswith("#"):
                line = "# " + line
            out.append(line)
            continue
        replacement = None if line.lstrip().startswith("#") else _DEMO_LINE.search(line)
        out.append(replacement["line"] + "\n" if replacement else line)
    return "".join(out)
