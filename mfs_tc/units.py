"""Parsing of the units people type: rates (tc style) and DSCP lists."""

from __future__ import annotations

import re

from .layout import DSCP_KEEP

_RATE_UNITS = {
    "": 1,
    "bit": 1,
    "bps": 8,
    "k": 1e3,
    "kbit": 1e3,
    "kbps": 8e3,
    "m": 1e6,
    "mbit": 1e6,
    "mbps": 8e6,
    "g": 1e9,
    "gbit": 1e9,
    "gbps": 8e9,
    "t": 1e12,
    "tbit": 1e12,
    "tbps": 8e12,
}


def parse_rate(text: str) -> int:
    """'200mbit', '10gbit', '100M', '1.5g', '125000000' -> bits per second (tc's units: *bps are bytes)."""
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*", text)
    unit = m.group(2).lower() if m else None
    if not m or unit not in _RATE_UNITS:
        raise ValueError(f"bad rate {text!r}: use e.g. 200mbit, 10gbit, 1.5g (bits per second)")
    bps = int(float(m.group(1)) * _RATE_UNITS[unit])
    if bps <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    return bps


def format_rate(bps: float | None) -> str:
    if not bps:
        return "-"
    for unit, div in (("Gbit", 1e9), ("Mbit", 1e6), ("Kbit", 1e3)):
        if bps >= div:
            return f"{bps / div:g}{unit}"
    return f"{bps:g}bit"


def parse_dscp_list(text: str | None) -> list[int] | None:
    """'default' (or None) -> None (the default table); 'keep'/'none' -> [] (leave DSCP alone);
    '46,34,0,...' -> values, where 'keep' or '-' in the list leaves that level's DSCP alone."""
    if text is None or text.strip().lower() == "default":
        return None
    if text.strip().lower() in ("keep", "none", "off"):
        return []
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        if p in ("keep", "-"):
            out.append(DSCP_KEEP)
            continue
        try:
            v = int(p, 0)
        except ValueError:
            raise ValueError(f"bad DSCP {part!r} in {text!r}: use numbers 0..63, 'keep', 'default' or 'none'") from None
        if not 0 <= v < 64:
            raise ValueError(f"DSCP {v} out of range 0..63")
        out.append(v)
    return out


def seconds_to_ns(s: float, what: str) -> int:
    """Seconds (any number) as integer nanoseconds; anything else is an error naming `what`."""
    try:
        ns = int(round(float(s) * 1e9))
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be a number of seconds, got {s!r}") from exc
    return ns
