"""What an import will do: config stanzas to print, series to copy, things it cannot map."""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import rrdtool

from monitor.consolidate import Archive
from monitor.model import Measurement
from monitor.store import read_archives


@dataclass
class SeriesCopy:
    """One of our files (target, instance) and where its metrics' history comes from.

    `read` returns {metric: archives}; it runs when the copy is carried out (reading a file of
    a few MB each), so a dry run or the plan costs only the config's reading."""

    templates: list[Measurement]  # one per metric, as the collector writes it
    sources: list[Path]  # the files read (for progress: count and bytes)
    read: Callable[[], dict[str, list[Archive]]]
    what: str  # "MRTG target 127.0.0.1_eth0"
    collector: str = "snmp"  # whose files these are (their step is that collector's interval)
    ceiling: float | None = None  # a value above it is damage, not data (MRTG's 10 x MaxBytes)
    warnings: list[str] = field(default_factory=list)  # what `read` had to leave out, and why

    @property
    def target(self) -> str:
        return self.templates[0].target

    @property
    def instance(self) -> str:
        return self.templates[0].instance

    @property
    def size(self) -> int:
        return sum(p.stat().st_size for p in self.sources if p.exists())


@dataclass
class Plan:
    stanzas: list[str] = field(default_factory=list)  # TOML text, one per device/check
    copies: list[SeriesCopy] = field(default_factory=list)
    unmapped: list[str] = field(default_factory=list)  # "what: why", one per thing left out
    notes: list[str] = field(default_factory=list)


def toml_string(text: str) -> str:
    """A TOML basic string (device names and descriptions come from other tools' files):
    controls and other unprintable characters (bidi overrides) as \\uXXXX escapes."""
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif not ch.isprintable() and ord(ch) <= 0xFFFF:
            out.append(f"\\u{ord(ch):04x}")
        elif not ch.isprintable():
            out.append(f"\\U{ord(ch):08x}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def included_lines(path: Path, include: re.Pattern[str], within: tuple[Path, ...] = ()
                   ) -> Iterator[tuple[Path, int, str]]:
    """A config's lines with their file and number, each line `include` matches replaced by the
    lines of the file its group 1 names (relative to the including file): MRTG's "Include:",
    SmokePing's "@include". ValueError, naming the line, for a file that includes itself."""
    within = (*within, path.resolve())
    for number, text in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
        match = include.match(text)
        if match is None:
            yield path, number, text
            continue
        included = Path(match[1])
        included = included if included.is_absolute() else path.parent / included
        if included.resolve() in within:
            raise ValueError(f"{path}:{number}: {included} is included again (a loop through "
                             "the files that include this one)")
        yield from included_lines(included, include, within)


# Munin's files hold 4,968 rows of one data source, SmokePing's 16,128 of 23, MRTG's 6,400 of 2:
# a file of far more cells is not one of theirs (or is hostile), and reading it would take
# gigabytes of XML.
MAX_CELLS = 5_000_000


def read_rrd_archives(path: Path) -> dict[str, list[Archive]]:
    """Every archive of another tool's RRD file; ValueError for one too large to be theirs."""
    info = rrdtool.info(str(path))
    rows = sum(v for k, v in info.items() if k.endswith(".rows") and isinstance(v, int))
    sources = len({k.split("]", 1)[0] for k in info if k.startswith("ds[")})
    if rows * max(1, sources) > MAX_CELLS:
        raise ValueError(f"{path}: {rows:,} rows of {sources} data source(s), far more than "
                         "MRTG, Munin or SmokePing write: not read")
    return read_archives(path)


def screen(history: dict[str, list[Archive]], ceiling: float | None = None,
           now: float | None = None) -> tuple[dict[str, list[Archive]], list[str]]:
    """The history without rows no tool could have written (each a damaged or hand-edited
    file): rows ending in the future (our file would refuse the collector's next samples
    until then) and values above `ceiling`; what was left out, in words."""
    now = time.time() if now is None else now
    future = too_big = 0
    biggest = 0.0
    out: dict[str, list[Archive]] = {}
    for metric, archives in history.items():
        kept_archives = []
        for archive in archives:
            rows = []
            for start, end, value in archive.rows:
                if end > now:
                    future += 1
                    continue
                if value is not None and ceiling is not None and abs(value) > ceiling:
                    too_big += 1
                    biggest = max(biggest, abs(value))
                    value = None
                rows.append((start, end, value))
            kept_archives.append(Archive(archive.cf, rows))
        out[metric] = kept_archives
    said = []
    if future:
        said.append(f"{future} row(s) dated after now left out (a clock that was ahead, or a "
                    "damaged file)")
    if too_big:
        said.append(f"{too_big} value(s) above {ceiling:.6g} (10 x MaxBytes) left out as "
                    f"unknown, the largest {biggest:.6g}")
    return out, said
