"""One GPU name, each cloud's own id: the alias table behind ``--gpu``.

Users say ``--gpu A100``; RunPod wants "NVIDIA A100 80GB PCIe", vast
"A100 PCIE", Thunder "a100xl", EC2 an instance type that depends on the
count. Each provider module declares its own ids (``GPUS``: alias -> id, or
for EC2 alias -> {count: instance type}); this module spells aliases
forgivingly, resolves them per provider, and maps ids back to aliases for
tables. An exact provider id passes through untouched, so a GPU the table
does not know yet is never out of reach.
"""

from __future__ import annotations

import difflib
import functools
import re

from . import providers
from .errors import UsageError

# What an id looks like on each cloud, for passing exact ids through.
ID_PATTERNS = {
    "runpod": r"^(NVIDIA|AMD|Tesla) .+",
    "ec2": r"^[a-z][a-z0-9-]*\.[a-z0-9]+$",
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).upper()


def _ids(provider: str) -> dict[str, object]:
    return dict(getattr(providers.module(provider), "GPUS", {}) or {})


def table() -> dict[str, dict[str, object]]:
    """alias -> provider -> id, from every provider's ``GPUS``."""
    return _table(tuple(providers.names()))


@functools.lru_cache(maxsize=4)
def _table(names: tuple[str, ...]) -> dict[str, dict[str, object]]:
    merged: dict[str, dict[str, object]] = {}
    for name in names:
        for alias, value in _ids(name).items():
            merged.setdefault(alias, {})[name] = value
    return merged


def known_aliases() -> list[str]:
    return sorted(table())


def canonical(name: str) -> str | None:
    """The table's alias for a user's spelling (h100-sxm, H100_SXM, 'h100 sxm'), or None."""
    return {_key(alias): alias for alias in table()}.get(_key(name))


def offered_by(provider: str) -> list[str]:
    return sorted(_ids(provider))


def _provider_ids(provider: str) -> set[str]:
    ids: set[str] = set()
    for value in _ids(provider).values():
        ids.update(value.values() if isinstance(value, dict) else [value])  # type: ignore[arg-type]
    return ids


def check(name: str) -> str:
    """An alias known to some provider, or a usage error naming the closest ones (before anything is asked)."""
    alias = canonical(name)
    if alias is not None:
        return alias
    if any(name in _provider_ids(p) or (ID_PATTERNS.get(p) and re.match(ID_PATTERNS[p], name)) for p in providers.names()):
        return name
    close = difflib.get_close_matches(_key(name), [_key(a) for a in known_aliases()], n=3, cutoff=0.5)
    names = [canonical(c) for c in close]
    raise UsageError(f"unknown GPU {name!r}" + (f"; did you mean {', '.join(n for n in names if n)}?" if names else ""),
                     hint=f"use one of {', '.join(known_aliases())}, or a provider's exact GPU id")


def resolve(name: str, provider: str, count: int = 1) -> str:
    """The provider's id for ``name`` (alias or exact id), or an error listing what is known."""
    alias = canonical(name)
    if alias is None:
        pattern = ID_PATTERNS.get(provider)
        if name in _provider_ids(provider) or (pattern and re.match(pattern, name)):
            return name
        check(name)  # a usage error with the closest names, if it is nobody's alias
        raise UsageError(f"{provider} has no GPU {name!r}", hint=f"{provider} offers: {', '.join(offered_by(provider))}")
    value = _ids(provider).get(alias)
    if value is None:
        offered = sorted(table()[alias])
        raise UsageError(f"{provider} does not offer {alias}", hint=f"it is on: {', '.join(offered)}")
    if isinstance(value, dict):
        if count not in value:
            raise UsageError(
                f"{provider} has no {alias} instance with {count} GPU(s)",
                hint=f"counts available: {', '.join(str(c) for c in sorted(value))}",
            )
        return value[count]
    return str(value)


def alias_for(provider_id: str | None) -> str | None:
    """The friendly name for a provider's id, for tables (falls back to the id itself)."""
    if not provider_id:
        return provider_id
    for alias, entry in table().items():
        for value in entry.values():
            if value == provider_id or (isinstance(value, dict) and provider_id in value.values()):
                return alias
    return provider_id
