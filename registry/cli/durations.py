"""Durations as users write them (``500ms``, ``10s``, ``5m``, ``1h``) and as the CLI prints them,
and the ages of the SINCE column (``2m ago``). Integer milliseconds, as the protocol carries them."""

from __future__ import annotations

import re

import typer

_UNITS_MS = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_DURATION = re.compile(r"([0-9]+)(ms|s|m|h)")
ACCEPTED = "a whole number with a unit: ms, s, m or h (e.g. 500ms, 10s, 5m, 1h)"


def parse_duration(text: str) -> int:
    """Milliseconds of ``text``; ValueError saying what is accepted otherwise."""
    match = _DURATION.fullmatch(text.strip())
    if match is None:
        raise ValueError(f"invalid duration {text!r}: use {ACCEPTED}")
    return int(match[1]) * _UNITS_MS[match[2]]


def duration_option(value: str | None) -> int | None:
    """A typer callback: the option's milliseconds, or a usage error (exit 2)."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as e:
        raise typer.BadParameter(str(e)) from None


def format_duration(ms: int) -> str:
    """The largest unit that divides ``ms`` exactly: 10000 -> "10s", 90000 -> "90s", 1500 -> "1500ms"."""
    for unit in ("h", "m", "s"):
        if ms and ms % _UNITS_MS[unit] == 0:
            return f"{ms // _UNITS_MS[unit]}{unit}"
    return f"{ms}ms"


def format_age(since_ms: int, now_ms: int) -> str:
    """How long ago ``since_ms`` was, in its largest whole unit ("45s ago", "2m ago", "3h ago",
    "2d ago"); "-" when unknown (0: an older node's reply); "just now" under a second, and also
    for a time slightly ahead of ours (clocks of different hosts differ)."""
    if since_ms <= 0:
        return "-"
    seconds = (now_ms - since_ms) // 1000
    if seconds < 1:
        return "just now"
    for size, unit in ((86400, "d"), (3600, "h"), (60, "m")):
        if seconds >= size:
            return f"{seconds // size}{unit} ago"
    return f"{seconds}s ago"
