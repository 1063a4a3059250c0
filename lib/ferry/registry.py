"""The per-user registry: every instance ferry launched on this machine, from any project (``~/.ferry/registry.json``).

A project's ``.ferry/state.json`` knows that project's instances; nothing
knew them all, so an instance whose project directory was deleted (or whose
launch was interrupted between create and record) billed unseen. Every launch
writes here and every terminate removes; ``ferry gc`` compares this with what
each cloud reports. Entries also carry the autostop policy ferry gave the
instance (so ``cost`` can show it without asking the instance) and the
machine id that instances are labelled with, which tells this machine's
instances from those another machine of the same account launched.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .store import JsonStore

if TYPE_CHECKING:
    from .records import Instance

MACHINE_LABEL = "ferry-machine"


def _shape(data: Any) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("instances", {}), dict):
        return "expected an object with 'instances'"
    return None


def key_of(provider: str, instance_id: str) -> str:
    return f"{provider}/{instance_id}"


def machine_id(home: Path) -> str:
    """A random id for this machine's ferry (``~/.ferry/machine-id``), made once; instances carry it as a label."""
    path = Path(home) / "machine-id"
    try:
        found = path.read_text().strip()
        if found:
            return found
    except OSError:
        pass
    from .store import write_atomic

    made = os.urandom(6).hex()
    write_atomic(path, (made + "\n").encode(), mode=0o600)
    return made


class Registry:
    """``registry.json``: ``{"instances": {"<provider>/<id>": entry}}``, changed under its lock."""

    def __init__(self, home: Path):
        self.store = JsonStore(Path(home) / "registry.json", default=lambda: {"instances": {}}, mode=0o600,
                               check=_shape, hint=f"fix or remove {Path(home) / 'registry.json'}; "
                                                  "ferry rebuilds it as instances are launched")

    def entries(self) -> dict[str, dict[str, Any]]:
        return dict(self.store.read().get("instances") or {})

    def get(self, provider: str, instance_id: str) -> dict[str, Any] | None:
        return self.entries().get(key_of(provider, instance_id))

    def add(self, instance: "Instance", project_dir: Path, autostop: dict | None = None) -> None:
        with self.store.edit() as data:
            entries = data.setdefault("instances", {})
            old = entries.get(key_of(instance.provider, instance.id)) or {}
            entries[key_of(instance.provider, instance.id)] = {
                "provider": instance.provider, "id": instance.id, "name": instance.name,
                "project_dir": str(project_dir), "cost_per_hour": instance.cost_per_hour,
                "registered_at": old.get("registered_at") or time.time(),
                "autostop": autostop if autostop is not None else old.get("autostop"),
            }

    def ensure(self, instance: "Instance", project_dir: Path) -> None:
        """Add an instance a project records but the registry lacks (one launched before the registry)."""
        if self.get(instance.provider, instance.id) is None:
            self.add(instance, project_dir)

    def set_autostop(self, provider: str, instance_id: str, autostop: dict | None) -> None:
        with self.store.edit() as data:
            entry = (data.setdefault("instances", {})).get(key_of(provider, instance_id))
            if entry is not None:
                entry["autostop"] = autostop

    def remove(self, provider: str, instance_id: str) -> None:
        with self.store.edit() as data:
            data.setdefault("instances", {}).pop(key_of(provider, instance_id), None)
