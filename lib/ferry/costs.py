"""What everything costs: each instance on each configured cloud, per hour and so far, with totals.

``ferry cost`` and ``ferry top`` read it. Figures are the clouds' own: the
$/h each reports for an instance, times how long it has run since it was
created (stops are not tracked, so an instance stopped and started again
reads high; its agent's own count, in ``top``, does not). A stopped
instance's storage charge is shown where the cloud reports one (vast).
Autostop comes from the registry, so nothing here opens an ssh connection.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, NamedTuple

from . import clouds
from .records import Instance, Status
from .registry import Registry, key_of

if TYPE_CHECKING:
    from .config import Settings

BILLED = (Status.RUNNING, Status.PENDING)


class Line(NamedTuple):
    """One instance and what it costs."""

    instance: Instance
    per_hour: float  # what it bills now: compute while up, storage while stopped
    uptime: float
    cost_so_far: float
    storage_per_hour: float | None
    autostop: str  # as the registry knows it: "stop after 30m idle", "off", "-" (not launched from here)

    def to_dict(self) -> dict[str, Any]:
        i = self.instance
        return {"name": i.name, "provider": i.provider, "id": i.id, "status": i.status.value, "gpu": i.gpu,
                "gpu_count": i.gpu_count, "cost_per_hour": i.cost_per_hour, "billing_per_hour": round(self.per_hour, 4),
                "uptime_seconds": round(self.uptime, 1), "cost_so_far": round(self.cost_so_far, 4),
                "storage_per_hour": self.storage_per_hour, "autostop": self.autostop}


def storage_per_hour(instance: Instance) -> float | None:
    value = instance.raw.get("storage_per_hour") if isinstance(instance.raw, dict) else None
    return float(value) if isinstance(value, (int, float)) else None


def line(instance: Instance, entries: dict[str, dict]) -> Line:
    from .autostop import Policy

    storage = storage_per_hour(instance)
    if instance.status in BILLED:
        per_hour = instance.cost_per_hour
    elif instance.status == Status.STOPPED:
        per_hour = storage or 0.0
    else:
        per_hour = 0.0
    entry = entries.get(key_of(instance.provider, instance.id))
    if entry is None:
        autostop = "-"
    elif entry.get("autostop"):
        autostop = Policy.from_dict(entry["autostop"]).describe()
    else:
        autostop = "default"
    return Line(instance, per_hour, clouds.uptime(instance), clouds.cost_so_far(instance),
                storage if instance.status == Status.STOPPED else None, autostop)


def report(settings: "Settings", skipped: dict[str, str] | None = None) -> list[Line]:
    """Every instance on every configured cloud (and local ones), costed; ``skipped`` notes clouds not asked."""
    entries = Registry(settings.home).entries()
    found = [i for i in clouds.list_everywhere(settings, skipped=skipped) if i.provider != "ssh"]
    return [line(i, entries) for i in found]


def totals(lines: list[Line]) -> dict[str, dict[str, float]]:
    """Per cloud and ``all``: instances, billed per hour now, and cost so far."""
    sums: dict[str, dict[str, float]] = {}
    for one in lines:
        for key in (one.instance.provider, "all"):
            bucket = sums.setdefault(key, {"instances": 0, "per_hour": 0.0, "cost_so_far": 0.0})
            bucket["instances"] += 1
            bucket["per_hour"] = round(bucket["per_hour"] + one.per_hour, 4)
            bucket["cost_so_far"] = round(bucket["cost_so_far"] + one.cost_so_far, 4)
    sums.setdefault("all", {"instances": 0, "per_hour": 0.0, "cost_so_far": 0.0})
    return sums
