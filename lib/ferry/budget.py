"""The hourly budget: a launch that would push what is running past ``ferry.budget.max_hourly`` is refused.

Checked before any create reaches the cloud, against what every configured
cloud reports running now (ferry's instances or not: a bill is a bill) plus
the new instance's price: ``--max-price`` when given, else the cheapest
matching offer the cloud lists, else the provider's configured price.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import flags
from .errors import FerryError, cmd
from .providers.base import OFFERS
from .records import Status

if TYPE_CHECKING:
    from .config import Settings
    from .providers import Cloud
    from .records import InstanceSpec

log = logging.getLogger(__name__)

LIVE = (Status.RUNNING, Status.PENDING)


def max_hourly(settings: "Settings") -> float | None:
    limit = (settings.data.get("budget") or {}).get("max_hourly")
    return None if limit in (None, "", False) else flags.number(limit, "ferry.budget.max_hourly")


def price_estimate(settings: "Settings", cloud: "Cloud", spec: "InstanceSpec") -> float:
    """$/h the new instance is expected to cost."""
    count = max(spec.gpu_count, 1)
    if spec.max_price:
        return float(spec.max_price) * count
    if OFFERS in cloud.capabilities and spec.gpu:
        offers = [o for o in cloud.offers(spec.gpu, count) if o.spot == spec.spot]
        if offers:
            return min(o.cost_per_hour for o in offers)
    return float(settings.for_provider(cloud.name).get("price") or 0.0)


def check_launch(settings: "Settings", cloud: "Cloud", spec: "InstanceSpec") -> None:
    """Refuse (FerryError, nothing created) when running + new would exceed ``ferry.budget.max_hourly``."""
    limit = max_hourly(settings)
    if limit is None:
        return
    from . import clouds

    skipped: dict[str, str] = {}
    running = [i for i in clouds.list_everywhere(settings, skipped=skipped) if i.status in LIVE]
    now = sum(i.cost_per_hour for i in running)
    new = price_estimate(settings, cloud, spec)
    if now + new > limit + 1e-9:
        raise FerryError(
            f"launching {spec.name} (${new:.2f}/h) would make ${now + new:.2f}/h, over ferry.budget.max_hourly "
            f"${limit:.2f}/h ({len(running)} running at ${now:.2f}/h)",
            hint=f"stop something first (see {cmd('cost')}), or raise ferry.budget.max_hourly",
        )
    log.debug("budget: $%.2f/h running + $%.2f/h new <= $%.2f/h (skipped: %s)", now, new, limit, skipped or "none")
