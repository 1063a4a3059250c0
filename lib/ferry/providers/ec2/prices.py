"""EC2 on-demand list prices for the GPU instance types ferry's ``--gpu`` aliases map to.

AWS's Price List API (``pricing.get_products``) needs extra permissions,
answers only from us-east-1/ap-south-1 and is not in moto, so ``inv offers``
reads this table instead: USD per instance-hour, Linux, shared tenancy,
on-demand. Spot prices are asked of EC2 itself (``describe_spot_price_history``).

AS_OF is when the figures were taken from AWS's public on-demand pricing
pages. They drift (AWS cut P4/P5 prices in June 2025); refresh them, with
this date, when a row looks wrong. Regions not listed here get no on-demand
offer rather than a guessed one.
"""

from __future__ import annotations

AS_OF = "2026-06"
SOURCE = "https://aws.amazon.com/ec2/pricing/on-demand/ (Linux, us-east-1 and us-west-2)"

# instance type -> (GPU alias, GPUs, {region: $/hour})
_US = ("us-east-1", "us-west-2")


def _same(price: float) -> dict[str, float]:
    return {region: price for region in _US}


PRICES: dict[str, tuple[str, int, dict[str, float]]] = {
    "g4dn.xlarge": ("T4", 1, _same(0.526)),
    "g4dn.12xlarge": ("T4", 4, _same(3.912)),
    "g4dn.metal": ("T4", 8, _same(7.824)),
    "g5.xlarge": ("A10G", 1, _same(1.006)),
    "g5.12xlarge": ("A10G", 4, _same(5.672)),
    "g5.48xlarge": ("A10G", 8, _same(16.288)),
    "g6.xlarge": ("L4", 1, _same(0.8048)),
    "g6.12xlarge": ("L4", 4, _same(4.6016)),
    "g6.48xlarge": ("L4", 8, _same(13.3504)),
    "g6e.xlarge": ("L40S", 1, _same(1.861)),
    "g6e.12xlarge": ("L40S", 4, _same(10.493)),
    "g6e.48xlarge": ("L40S", 8, _same(30.131)),
    "p3.2xlarge": ("V100", 1, _same(3.06)),
    "p3.8xlarge": ("V100", 4, _same(12.24)),
    "p3.16xlarge": ("V100", 8, _same(24.48)),
    "p4d.24xlarge": ("A100-SXM", 8, _same(21.96)),
    "p4de.24xlarge": ("A100", 8, _same(27.45)),
    "p5.48xlarge": ("H100", 8, _same(55.04)),
}


def on_demand(instance_type: str, region: str) -> float | None:
    """$/hour for the type in the region, or None when the table does not know it."""
    entry = PRICES.get(instance_type)
    return entry[2].get(region) if entry else None


def gpus_of(instance_type: str) -> tuple[str | None, int]:
    """(GPU alias, count) of an instance type, (None, 0) when unknown."""
    entry = PRICES.get(instance_type)
    return (entry[0], entry[1]) if entry else (None, 0)
