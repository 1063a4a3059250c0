"""``ferry gc``: instances ferry made that nothing on this machine knows any more, and records of ones that are gone.

An orphan carries ferry's project label, was launched from this machine (its
``ferry-machine`` label, or none: made before the label existed), and is
neither in the per-user registry nor in the state of any project the
registry names. Typical causes: a deleted project directory, a launch killed
between create and record, a state file removed by hand. Instances labelled
by another machine are listed apart and never touched. Registry entries
whose cloud answered and no longer has the instance are removed.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

from . import clouds, costs, providers
from .errors import FerryError
from .records import Instance, Status
from .registry import MACHINE_LABEL, Registry, key_of, machine_id

if TYPE_CHECKING:
    from .config import Settings

log = logging.getLogger(__name__)


class Findings(NamedTuple):
    orphans: list[costs.Line]  # ferry's, from this machine, known to no project here
    elsewhere: list[Instance]  # ferry's, launched from another machine: listed, never touched
    stale: list[dict]  # registry entries whose instance is gone (removed by find())
    skipped: dict[str, str]  # clouds not asked (no key, no SDK) and why


def _known_by_projects(entries: dict[str, dict]) -> set[str]:
    """``provider/id`` of every instance recorded in the state of a project the registry names."""
    known: set[str] = set()
    for project_dir in {e.get("project_dir") for e in entries.values() if e.get("project_dir")}:
        try:
            state = json.loads((Path(project_dir) / ".ferry" / "state.json").read_text())
            for record in (state.get("instances") or {}).values():
                known.add(key_of(record["provider"], record["id"]))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            continue
    return known


def find(settings: "Settings") -> Findings:
    """Compare what every configured cloud reports with what this machine knows; clean stale entries."""
    registry = Registry(settings.home)
    entries = registry.entries()
    here = machine_id(settings.home)
    skipped: dict[str, str] = {}
    names = ["local", *providers.CLOUDS]
    found = clouds.each(names, lambda name: providers.get(name, settings).list(), skipped)
    known = set(entries) | _known_by_projects(entries)
    orphans, elsewhere = [], []
    for instance in found:
        if instance.status == Status.TERMINATED:
            continue
        ours = providers.PROJECT_LABEL in instance.labels
        if not ours or key_of(instance.provider, instance.id) in known:
            continue
        if instance.labels.get(MACHINE_LABEL) not in (None, here):
            elsewhere.append(instance)
        else:
            orphans.append(costs.line(instance, entries))
    listed = {key_of(i.provider, i.id) for i in found}
    stale = [e for k, e in entries.items() if e.get("provider") in names and e.get("provider") not in skipped
             and k not in listed]
    for entry in stale:
        registry.remove(entry["provider"], entry["id"])
    return Findings(orphans, elsewhere, stale, skipped)


def terminate(settings: "Settings", orphans: list[costs.Line]) -> dict[str, str | None]:
    """Terminate each orphan; ``{provider/id: None}`` when done, else the error's message."""
    results: dict[str, str | None] = {}
    for one in orphans:
        instance = one.instance
        try:
            providers.get(instance.provider, settings).terminate(instance.id)
            results[key_of(instance.provider, instance.id)] = None
            log.info("terminated %s (%s, %s)", instance.name, instance.provider, instance.id)
        except FerryError as exc:
            results[key_of(instance.provider, instance.id)] = exc.message
    return results
