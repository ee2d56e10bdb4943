"""What an import will do: config stanzas to print, series to copy, things it cannot map."""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from monitor.consolidate import Archive
from monitor.model import Measurement


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
