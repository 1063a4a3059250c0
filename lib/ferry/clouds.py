"""Across providers: every instance everywhere, one price list, the cheapest offer, and what things cost.

Providers are asked in parallel; one with no API key (or no SDK installed)
is skipped and said so, never an error, because "what is running on my
clouds" and "which of them is cheapest" should work with whatever the user
has set up.
"""

from __future__ import annotations

import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, TypeVar

from . import providers
from .config import Settings
from .errors import FerryError, UsageError, cmd
from .providers.base import OFFERS
from .records import Instance, InstanceSpec, Offer

log = logging.getLogger(__name__)
T = TypeVar("T")


def each(names: list[str], ask: Callable[[str], list[T]], skipped: dict[str, str]) -> list[T]:
    """``ask(name)`` for every provider at once; a FerryError skips that provider (noted in ``skipped``)."""
    with ThreadPoolExecutor(max_workers=max(1, len(names))) as pool:
        futures = {name: pool.submit(ask, name) for name in names}
    found: list[T] = []
    for name, future in futures.items():
        try:
            found.extend(future.result())
        except FerryError as exc:
            skipped[name] = exc.message
    return found


def list_everywhere(settings: Settings, skipped: dict[str, str] | None = None) -> list[Instance]:
    """Every instance on every provider that is configured; the ones that are not are noted in ``skipped``."""
    skipped = skipped if skipped is not None else {}
    names = ["local", *providers.CLOUDS, "ssh"]
    # Everything the account has running on each cloud, ferry's or not: a bill is a bill.
    found = each(names, lambda name: providers.get(name, settings).list(), skipped)
    return sorted(found, key=lambda i: (i.provider, i.name))


def offers(settings: Settings, gpu: str | None, count: int = 1, spot: bool = False, only: list[str] | None = None,
           skipped: dict[str, str] | None = None) -> list[Offer]:
    """Offers for ``count`` x ``gpu`` from every cloud that lists offers: spot ones with ``spot``, else on-demand."""
    skipped = skipped if skipped is not None else {}
    names = only or [n for n in providers.CLOUDS]

    def ask(name: str) -> list[Offer]:
        cloud = providers.get(name, settings)
        if OFFERS not in cloud.capabilities:
            return []
        return [o for o in cloud.offers(gpu, count) if o.spot == spot]

    return sorted(each(names, ask, skipped), key=lambda o: (o.cost_per_hour, o.provider))


def cheapest(settings: Settings, spec: InstanceSpec) -> str:
    """``--provider auto``: the cloud with the cheapest offer for the GPU, among those with keys."""
    if not spec.gpu:
        raise UsageError("--provider auto needs --gpu", hint=f"e.g. {cmd('launch --provider auto --gpu A100')}")
    found = offers(settings, spec.gpu, max(spec.gpu_count, 1), spot=spec.spot)
    if not found:
        raise FerryError(f"no offer for {spec.gpu} on any provider with an API key",
                         hint=f"see: {cmd('offers --gpu ' + spec.gpu)}")
    best = found[0]
    log.info("cheapest %s: %s at $%.2f/h", spec.gpu, best.provider, best.cost_per_hour)
    return best.provider


def uptime(instance: Instance) -> float:
    """Seconds since creation while it runs: what the cloud bills (an estimate; stops are not tracked)."""
    if instance.status.value != "RUNNING" or not instance.created_at:
        return 0.0
    return max(0.0, time.time() - instance.created_at)


def cost_so_far(instance: Instance) -> float:
    return instance.cost_per_hour * uptime(instance) / 3600
