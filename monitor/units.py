"""Human forms of durations, sizes and percentages ("90s", "5m", "26h", "2GB", "90%")."""

from __future__ import annotations

import math
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


# How traffic looks in the site's graphs and the digests' sparklines alike (MRTG's convention:
# in as a green area, out as a blue line).
IN_FILL, IN_EDGE, OUT_LINE = "#57b85a", "#22722a", "#1c3fa8"
# A warning and a critical limit, drawn as lines: Nagios' yellow and red (the yellow darkened
# enough to be seen on white).
WARNING_LINE, CRITICAL_LINE = "#e0b000", "#d62728"


# -- the one formatter of measured values ------------------------------------------------------
#
# One convention in the site, the mail and messages: sizes in IEC binary units (KiB, MiB, GiB,
# TiB: what `df -h` and `du -h` print), rates of bits in SI (kbit/s, Mbit/s: how links are sold),
# durations of a minute or more as durations ("44 days", not "3.84 Ms").

_BINARY = {"B": ("B", "KiB", "MiB", "GiB", "TiB", "PiB"),
           "B/s": ("B/s", "KiB/s", "MiB/s", "GiB/s", "TiB/s", "PiB/s")}
_BITS = ("bit/s", "kbit/s", "Mbit/s", "Gbit/s", "Tbit/s")
_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k"))
_DURATIONS = ((2 * 86400, 86400, "days"), (2 * 3600, 3600, "h"), (120, 60, "min"))
# A unit ending in "/h" is a per-second rate (what the store keeps of a counter) shown per
# hour: a few mails an hour read "12 msg/h", not "0.00333", and a few failed logins
# "4 failures/h". _HOURLY_RATES: the counted units whose rate is shown so.
_AXIS_LABELS = {"msg/h": "messages per hour", "failures/h": "failures per hour"}
_HOURLY_RATES = {"msg": "msg/h", "failures": "failures/h"}


def rate_unit(unit: str) -> str:
    """The unit a counter's stored rate per second is shown in: "msg" -> "msg/h", "failures" ->
    "failures/h"; any other unit as it is."""
    return _HOURLY_RATES.get(unit, unit)


def axis_label(unit: str) -> str:
    """The y axis's words for a graph in `unit`, where its tick labels are not enough."""
    return _AXIS_LABELS.get(unit, "")


def scale_for(magnitude: float, unit: str) -> tuple[float, str]:
    """(factor, unit shown) for values of about `magnitude` in `unit`: 3e9, "B" -> (2**30, "GiB");
    2e7, "b/s" -> (1e6, "Mbit/s"); 0.004, "s" -> (0.001, "ms"); 4e6, "s" -> (86400, "days");
    0.01 (per second), "msg/h" -> (1 / 3600, "msg/h")."""
    magnitude = abs(magnitude)
    if unit in _BINARY:
        names, factor, index = _BINARY[unit], 1.0, 0
        while magnitude >= factor * 1024 * 0.9995 and index < len(names) - 1:
            factor *= 1024
            index += 1
        return factor, names[index]
    if unit in ("b/s", "bit/s"):
        index = 0
        while magnitude >= 1000 ** (index + 1) * 0.9995 and index < len(_BITS) - 1:
            index += 1
        return 1000.0**index, _BITS[index]
    if unit == "s":
        for threshold, factor, name in _DURATIONS:
            if magnitude >= threshold:
                return factor, name
        if magnitude >= 0.9995 or magnitude == 0:
            return 1.0, "s"
        return (1e-3, "ms") if magnitude >= 0.9995e-3 else (1e-6, "µs")
    if unit == "%":
        return 1.0, "%"
    if unit == "d":  # certificate expiry
        return 1.0, "days"
    if unit.endswith("/h"):
        for factor, prefix in _SI:
            if magnitude * 3600 >= factor * 0.9995:
                return factor / 3600, f"{prefix}{unit}"
        return 1 / 3600, unit
    for factor, prefix in _SI:  # packets, errors per second, plain counts: never milli
        if magnitude >= factor * 0.9995:
            return factor, f"{prefix}{unit}" if unit else prefix
    return 1.0, unit


def format_value(value: float | None, unit: str = "") -> str:
    """A measured value for people, in the convention above; None or NaN -> "-".

    1536, "B" -> "1.5 KiB"; 12_345_678, "b/s" -> "12.3 Mbit/s"; 0.0042, "s" -> "4.20 ms";
    3_840_000, "s" -> "44 days"; 12.34, "%" -> "12.3 %". Infinite (rrdtool's average of a
    value near the doubles' limit) is no figure either."""
    if value is None or not math.isfinite(value):
        return "-"
    factor, shown = scale_for(value, unit)
    scaled = value / factor
    if unit == "%":
        text = f"{scaled:.1f}"
    elif shown in ("B", "B/s") or scaled == 0:
        text = f"{scaled:.0f}"
    elif unit in _BINARY:
        text = f"{scaled:.1f}"
    elif shown in ("days", "h", "min"):
        text = f"{scaled:.0f}" if abs(scaled) >= 10 else f"{scaled:.1f}"
    else:  # three significant digits
        text = f"{scaled:.{max(0, 2 - math.floor(math.log10(abs(scaled) * 1.0005)))}f}"
    return f"{text} {shown}".strip()


def format_bytes(value: float | None) -> str:
    """1536 -> "1.5 KiB", 3 * 2**30 -> "3.0 GiB", -1536 -> "-1.5 KiB" (a mailbox may shrink),
    None -> "-"."""
    return format_value(value, "B")


def format_bits_per_second(value: float | None) -> str:
    """940 -> "940 bit/s", 1234567 -> "1.23 Mbit/s", None -> "-"."""
    return format_value(value, "b/s")


# -- enumerated metrics: values that name states ----------------------------------------------

# IF-MIB ifOperStatus and ifAdminStatus, as the collectors store them (the number of the state).
OPER_STATUS = {1: "up", 2: "down", 3: "testing", 4: "unknown", 5: "dormant", 6: "notPresent",
               7: "lowerLayerDown"}
ADMIN_STATUS = {1: "up", 2: "down", 3: "testing"}
ENUMERATED = {"oper_status": OPER_STATUS, "admin_status": ADMIN_STATUS}


def format_state(value: float | None, states: dict[int, str]) -> str:
    """A stored state number as its word: 1 -> "up"; a figure between states (the average of
    a period with both) -> "mixed"; None or NaN -> "-"."""
    if value is None or math.isnan(value):
        return "-"
    if abs(value - round(value)) > 1e-9:
        return "mixed"
    return states.get(round(value), f"state {value:g}")


def format_metric(value: float | None, metric: str, unit: str = "") -> str:
    """A value of `metric` for people: the state's word for an enumerated metric
    (oper_status 1 -> "up"), else `format_value`."""
    states = ENUMERATED.get(metric)
    return format_state(value, states) if states else format_value(value, unit)
