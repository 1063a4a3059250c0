"""One GPU name, each cloud's own id: the alias table behind ``--gpu``.

Users say ``--gpu A100``; RunPod wants "NVIDIA A100 80GB PCIe", vast
"A100 PCIE", Thunder "a100xl", EC2 an instance type that depends on the
count. An exact provider id passes through untouched, so a GPU the table
does not know yet is never out of reach. Checked against each provider's
public catalogue names as of 2026-11.
"""

from __future__ import annotations

import re

from .errors import ConfigError

# alias -> provider -> id (EC2: gpu count -> instance type). None: that cloud does not offer it.
TABLE: dict[str, dict[str, object]] = {
    "H100": {"runpod": "NVIDIA H100 80GB HBM3", "vast": "H100 SXM", "thunder": "h100", "ec2": {8: "p5.48xlarge"}},
    "H100-SXM": {"runpod": "NVIDIA H100 80GB HBM3", "vast": "H100 SXM", "thunder": None, "ec2": {8: "p5.48xlarge"}},
    "H100-PCIE": {"runpod": "NVIDIA H100 PCIe", "vast": "H100 PCIE", "thunder": None, "ec2": None},
    "A100": {"runpod": "NVIDIA A100 80GB PCIe", "vast": "A100 PCIE", "thunder": "a100xl", "ec2": {8: "p4de.24xlarge"}},
    "A100-SXM": {"runpod": "NVIDIA A100-SXM4-80GB", "vast": "A100 SXM4", "thunder": None, "ec2": {8: "p4d.24xlarge"}},
    "A100-40GB": {"runpod": None, "vast": "A100 PCIE", "thunder": "a100", "ec2": {8: "p4d.24xlarge"}},
    "A40": {"runpod": "NVIDIA A40", "vast": "A40", "thunder": None, "ec2": None},
    "L40S": {"runpod": "NVIDIA L40S", "vast": "L40S", "thunder": None,
             "ec2": {1: "g6e.xlarge", 4: "g6e.12xlarge", 8: "g6e.48xlarge"}},
    "L4": {"runpod": "NVIDIA L4", "vast": "L4", "thunder": None, "ec2": {1: "g6.xlarge", 4: "g6.12xlarge", 8: "g6.48xlarge"}},
    "A10G": {"runpod": None, "vast": None, "thunder": None, "ec2": {1: "g5.xlarge", 4: "g5.12xlarge", 8: "g5.48xlarge"}},
    "RTX4090": {"runpod": "NVIDIA GeForce RTX 4090", "vast": "RTX 4090", "thunder": None, "ec2": None},
    "RTX3090": {"runpod": "NVIDIA GeForce RTX 3090", "vast": "RTX 3090", "thunder": None, "ec2": None},
    "RTX6000": {"runpod": "NVIDIA RTX 6000 Ada Generation", "vast": "RTX 6000Ada", "thunder": None, "ec2": None},
    "RTXA6000": {"runpod": "NVIDIA RTX A6000", "vast": "RTX A6000", "thunder": "a6000", "ec2": None},
    "T4": {"runpod": None, "vast": "Tesla T4", "thunder": "t4", "ec2": {1: "g4dn.xlarge", 4: "g4dn.12xlarge", 8: "g4dn.metal"}},
    "V100": {"runpod": "Tesla V100-SXM2-16GB", "vast": "Tesla V100", "thunder": None, "ec2": {1: "p3.2xlarge", 4: "p3.8xlarge", 8: "p3.16xlarge"}},
}

# What an id looks like on each cloud, for passing exact ids through.
ID_PATTERNS = {
    "runpod": re.compile(r"^(NVIDIA|AMD|Tesla) .+"),
    "ec2": re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$"),
}


def _key(name: str) -> str:
    return re.sub(r"[\s_\-]", "", name).upper()


ALIASES = {_key(alias): alias for alias in TABLE}


def known_aliases() -> list[str]:
    return sorted(TABLE)


def canonical(name: str) -> str | None:
    """The table's alias for a user's spelling (h100-sxm, H100_SXM, 'h100 sxm'), or None."""
    return ALIASES.get(_key(name))


def provider_ids(provider: str) -> set[str]:
    ids: set[str] = set()
    for entry in TABLE.values():
        value = entry.get(provider)
        if isinstance(value, dict):
            ids.update(value.values())
        elif isinstance(value, str):
            ids.add(value)
    return ids


def resolve(name: str, provider: str, count: int = 1) -> str:
    """The provider's id for ``name`` (alias or exact id), or an error listing what is known."""
    alias = canonical(name)
    if alias is None:
        pattern = ID_PATTERNS.get(provider)
        if name in provider_ids(provider) or (pattern and pattern.match(name)):
            return name
        raise ConfigError(
            f"unknown GPU {name!r}",
            hint=f"use one of {', '.join(known_aliases())}, or an exact {provider} GPU id",
        )
    value = TABLE[alias].get(provider)
    if value is None:
        offered = [p for p, v in TABLE[alias].items() if v]
        raise ConfigError(f"{provider} does not offer {alias}", hint=f"it is on: {', '.join(offered)}")
    if isinstance(value, dict):
        if count not in value:
            raise ConfigError(
                f"{provider} has no {alias} instance with {count} GPU(s)",
                hint=f"counts available: {', '.join(str(c) for c in sorted(value))}",
            )
        return value[count]
    return value


def alias_for(provider_id: str | None) -> str | None:
    """The friendly name for a provider's id, for tables (falls back to the id itself)."""
    if not provider_id:
        return provider_id
    for alias, entry in TABLE.items():
        for value in entry.values():
            if value == provider_id or (isinstance(value, dict) and provider_id in value.values()):
                return alias
    return provider_id
