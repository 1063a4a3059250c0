"""Prices across clouds: one list of offers for a GPU, cheapest first.

Behind ``inv offers`` and ``launch --provider auto``. Providers are asked
in parallel; one with no API key (or no SDK installed) is skipped and said
so, never an error, because "which of my clouds is cheapest" should work
with whatever the user has set up.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict

from invoke import Context

from . import providers, retry
from .errors import ConfigError, FerryError
from .providers.base import Offer


def _ask(ctx: Context | None, name: str, gpu: str | None, count: int) -> list[Offer]:
    cloud = providers.get(name, ctx)
    return retry.call(lambda: cloud.offers(gpu, count))


def collect(
    ctx: Context | None,
    gpu: str | None,
    count: int = 1,
    spot: bool = False,
    only: list[str] | None = None,
    skipped: dict[str, str] | None = None,
) -> list[Offer]:
    """Offers for ``count`` x ``gpu`` from every configured cloud: spot ones with ``spot``, else on-demand."""
    names = only or list(providers.CLOUDS)
    skipped = skipped if skipped is not None else {}
    found: list[Offer] = []
    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {name: pool.submit(_ask, ctx, name, gpu, count) for name in names}
    for name, future in futures.items():
        try:
            found.extend(o for o in future.result() if o.spot == spot)
        except ConfigError as exc:  # no key, no SDK, GPU not offered there
            skipped[name] = exc.message
        except FerryError as exc:
            skipped[name] = exc.message
    return sorted(found, key=lambda o: (o.cost_per_hour, o.provider))


def as_dicts(offers: list[Offer]) -> list[dict]:
    return [asdict(o) for o in offers]
