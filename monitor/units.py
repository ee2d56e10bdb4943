"""Human forms of durations, sizes and percentages ("90s", "5m", "26h", "2GB", "90%")."""

from __future__ import annotations

import re

_DURATION_UNITS = {
    "ms": 0.001, "s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "d": 86400, "w": 604800,
    "M": 2592000, "mo": 2592000, "y": 31536000,
}
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)\s*(ms|sec|min|mo|s|m|h|d|w|M|y)")
_SIZE_UNITS = {
    "": 1, "b": 1, "k": 1000, "kb": 1000, "m": 1000**2, "mb": 1000**2, "g": 1000**3,
    "gb": 1000**3, "t": 1000**4, "tb": 1000**4, "kib": 1024, "mib": 1024**2, "gib": 1024**3,
    "tib": 1024**4,
}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")


def parse_duration(text: str | int | float) -> float:
    """Seconds from "90s", "5m", "1h30m", "2d", "1.5h" or a bare number of seconds.

    "m" is minutes and "M" (or "mo") is a 30-day month, as in rrdtool's own notation.
    """
    if isinstance(text, bool):
        raise ValueError("expected a duration like \"90s\", \"5m\" or \"2h\"")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a duration cannot be negative")
        return float(text)
    s = text.strip()
    if re.fullmatch(r"\d+(\.\d+)?", s):
        return float(s)
    pos, total = 0, 0.0
    for match in _DURATION_PART.finditer(s):
        if s[pos:match.start()].strip():
            break
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    if pos == 0 or s[pos:].strip():
        raise ValueError(f"expected a duration like \"90s\", \"5m\" or \"2h\", got {text!r}")
    return total


def parse_size(text: str | int | float) -> int:
    """Bytes from "2GB", "512MiB", "10k" or a bare number (decimal units, binary with "i")."""
    if isinstance(text, bool):
        raise ValueError("expected a size like \"2GB\"")
    if isinstance(text, int | float):
        if text < 0:
            raise ValueError("a size cannot be negative")
        return int(text)
    match = _SIZE.match(text)
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ValueError(f"expected a size like \"500MB\" or \"2GiB\", got {text!r}")
    return int(float(match.group(1)) * _SIZE_UNITS[unit])


def parse_percent(text: str | int | float) -> float:
    """A percentage 0-100 from "90%", "90" or 90."""
    if isinstance(text, bool):
        raise ValueError("expected a percentage like \"90%\"")
    raw = text.strip().removesuffix("%").strip() if isinstance(text, str) else text
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"expected a percentage like \"90%\", got {text!r}") from None
    if not 0 <= value <= 100:
        raise ValueError(f"expected a percentage between 0% and 100%, got {text!r}")
    return value


def format_duration(seconds: float) -> str:
    """The shortest exact human form: 300 -> "5m", 5400 -> "1h30m", 0.25 -> "250ms"."""
    if seconds < 1 and seconds > 0:
        return f"{seconds * 1000:g}ms"
    seconds = round(seconds)
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or "0s"


def format_age(seconds: float) -> str:
    """How long something has lasted, for people: "7 min", "2 h 05 min", "3 d 4 h"."""
    seconds = max(0, int(seconds))
    if seconds < 3600:
        return f"{seconds // 60} min"
    if seconds < 86400:
        return f"{seconds // 3600} h {seconds % 3600 // 60:02d} min"
    return f"{seconds // 86400} d {seconds % 86400 // 3600} h"


def format_scaled(value: float, units: tuple[str, ...], base: int, decimals: int) -> str:
    """`value` (in units[0]) in the largest unit that keeps it under `base`; the first unit
    without decimals: 1536, ("B", "KiB"), 1024, 1 -> "1.5 KiB"."""
    index = 0
    while value >= base and index < len(units) - 1:
        value /= base
        index += 1
    return f"{value:.0f} {units[0]}" if index == 0 else f"{value:.{decimals}f} {units[index]}"


def format_bytes(value: float) -> str:
    """1536 -> "1.5 KiB", 3 * 2**30 -> "3.0 GiB"."""
    return format_scaled(value, ("B", "KiB", "MiB", "GiB", "TiB"), 1024, 1)


def format_bits_per_second(value: float) -> str:
    """940 -> "940 bit/s", 1234567 -> "1.23 Mbit/s"."""
    return format_scaled(value, ("bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s"), 1000, 2)
