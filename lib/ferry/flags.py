"""Values as people type them on the command line, checked in one place, and durations as tables show them.

Every task flag that takes a duration, a count, a price, ports, ``KEY=VALUE``
pairs or one of a few words goes through a parser here, so they all accept
the same spellings and refuse the same mistakes with the same kind of
one-line usage error (exit status 2).
"""

from __future__ import annotations

import re
from typing import Iterable, Sequence

from .errors import UsageError

UNITS = {"": 1, "s": 1, "sec": 1, "secs": 1, "m": 60, "min": 60, "mins": 60, "h": 3600, "hr": 3600, "d": 86400}
_PART = r"(\d+(?:\.\d*)?|\.\d+)\s*([a-z]*)"  # compiled on first use (re caches it)
DURATION_HINT = "use seconds or a unit: 90, 90s, 10m, 2h, 1h30m"


def duration(text: str | float | int | None, flag: str = "--timeout") -> float | None:
    """Seconds as a float; None for None or "". A bare number means seconds."""
    if text is None or text == "":
        return None
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        seconds = float(text)
    else:
        raw = str(text).strip().lower()
        pos, seconds, units_seen = 0, 0.0, []
        while pos < len(raw):
            match = re.compile(_PART).match(raw, pos)
            if not match or match.group(2) not in UNITS:
                raise UsageError(f"bad duration {str(text)!r} for {flag}", hint=DURATION_HINT)
            units_seen.append(match.group(2))
            seconds += float(match.group(1)) * UNITS[match.group(2)]
            pos = match.end()
            while pos < len(raw) and raw[pos] == " ":
                pos += 1
        if not units_seen or (len(units_seen) > 1 and "" in units_seen):
            raise UsageError(f"bad duration {str(text)!r} for {flag}", hint=DURATION_HINT)  # "1h30": min or s?
    if not seconds > 0:
        raise UsageError(f"{flag} must be more than zero, not {text!r}", hint="e.g. 90s, 10m, 2h")
    return seconds


def count(value, flag: str, minimum: int = 1) -> int | None:
    """A whole number >= ``minimum``; None for None."""
    if value is None:
        return None
    text = str(value).strip()
    if not text.isdigit() or int(text) < minimum:
        raise UsageError(f"{flag} must be a whole number of at least {minimum}, not {value!r}",
                         hint=f"e.g. {flag} {max(minimum, 1)}")
    return int(text)


def number(value, flag: str) -> float | None:
    """A positive number (a price); None for None."""
    if value is None:
        return None
    try:
        parsed = float(value)
    except (TypeError, ValueError):
        parsed = 0.0
    if not parsed > 0:
        raise UsageError(f"{flag} must be a positive number, not {value!r}", hint=f"e.g. {flag} 1.5")
    return parsed


def ports(value, flag: str = "--ports") -> list[int]:
    """``8188,6006`` -> [8188, 6006]."""
    found = []
    for part in filter(None, str(value or "").replace(" ", "").split(",")):
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise UsageError(f"bad port {part!r} in {flag}", hint=f"use numbers like {flag} 8188,6006")
        found.append(int(part))
    return found


def port_spec(spec, program_hint: str = "forward") -> tuple[int, int]:
    """``PORT`` or ``PORT:LOCALPORT`` -> (remote port, local port)."""
    from .errors import cmd

    text = str(spec).strip()
    remote, sep, local = text.partition(":")
    for part in (remote, local) if sep else (remote,):
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise UsageError(f"bad port {text!r}",
                             hint=f"use PORT or PORT:LOCALPORT, e.g. {cmd(program_hint + ' 8888')} or {cmd(program_hint + ' 8188:9000')}")
    return int(remote), int(local or remote)


def env_pairs(pairs: Iterable[str] | None, flag: str = "--env") -> dict[str, str]:
    """``KEY=VALUE`` strings -> a dict (names checked: they become shell variables)."""
    env = {}
    for pair in pairs or []:
        key, sep, value = str(pair).partition("=")
        if not sep or not key:
            raise UsageError(f"bad {flag} {pair!r}", hint=f"use {flag} KEY=VALUE")
        env[env_name(key)] = value
    return env


def env_name(key: str) -> str:
    if not key.isidentifier():
        raise UsageError(f"bad environment variable name {key!r}", hint="use letters, digits and _")
    return key


def choice(value, flag: str, choices: Sequence[str]) -> str:
    if value not in choices:
        raise UsageError(f"bad {flag} {value!r}", hint=f"use one of: {', '.join(choices)}")
    return value


def signal_name(value: str) -> str:
    sig = str(value).upper().removeprefix("SIG")
    if not sig.isalnum():
        raise UsageError(f"bad signal {value!r}", hint="use a name like TERM, INT, KILL, USR1")
    return sig


# -- durations as the instance and as tables want them ---------------------------------------------
def shell_seconds(seconds: float) -> str:
    """The form ``sleep`` and ``timeout`` on the instance accept: plain decimal seconds."""
    return f"{max(seconds, 0.001):.3f}".rstrip("0").rstrip(".")


def brief(seconds: float | None) -> str:
    """Shorter still, for countdowns and settings: 5s, 1m30s, 27m, 2h07m, 3d04h."""
    if seconds is None:
        return "-"
    s = max(0, int(round(seconds)))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s % 60 and s < 600 else f"{s // 60}m"
    return human(s)


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
