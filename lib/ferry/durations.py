"""Durations as people type them (``90``, ``90s``, ``10m``, ``2h``, ``1h30m``) and as tables show them.

Every flag that takes a time (``run --timeout``, ``--wait-timeout``,
``wait --timeout``) goes through :func:`parse`, so they all accept the same
spellings and reject the same mistakes with the same one-line error.
"""

from __future__ import annotations

import re

from .errors import UsageError

UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "d": 86400}
_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)")


def parse(text: str | float | int | None, flag: str = "--timeout") -> float | None:
    """Seconds as a float; None for None or "". A bare number means seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        pos, seconds, units_seen = 0, 0.0, []
        while pos < len(raw):
            match = _PART.match(raw, pos)
            if not match or match.group(2) not in UNITS:
                raise _bad(text, flag)
            units_seen.append(match.group(2))
            seconds += float(match.group(1)) * UNITS[match.group(2)]
            pos = match.end()
            while pos < len(raw) and raw[pos] == " ":
                pos += 1
        if not units_seen or (len(units_seen) > 1 and "" in units_seen):
            raise _bad(text, flag)  # "1h30" is ambiguous: minutes or seconds?
    if not seconds > 0:
        raise UsageError(f"{flag} must be more than zero, not {text!r}", hint="e.g. 90s, 10m, 2h")
    return seconds


def _bad(text, flag: str) -> UsageError:
    return UsageError(f"bad duration {str(text)!r} for {flag}", hint="use seconds or a unit: 90, 90s, 10m, 2h, 1h30m")


def shell_seconds(seconds: float) -> str:
    """The form ``sleep`` and ``timeout`` on the instance accept: plain decimal seconds."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")


def human(seconds: float | None) -> str:
    """Compact, for tables: 0.4s, 42s, 3m05s, 2h07m, 3d04h."""
    if seconds is None:
        return "-"
    if seconds < 10:
        return f"{seconds:.1f}s"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{(s % 3600) // 60:02d}m"
    return f"{s // 86400}d{(s % 86400) // 3600:02d}h"
