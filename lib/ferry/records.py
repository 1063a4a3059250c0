"""The plain records every layer speaks: what an instance is, how to reach it, what to make, what it costs.

Providers translate their cloud's own shapes into these, so lifecycle, ssh,
sync and jobs never see a provider-specific dict (it is kept in ``raw``).
They are dataclasses with no behaviour beyond (de)serialising themselves:
the state file, ``--json`` output and the provider contract all use them.
"""

from __future__ import annotations

import enum
import re
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from .errors import UsageError

NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_name(name: str) -> str:
    """Reject names a cloud would refuse or a shell would mangle, before anything is created."""
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise UsageError(
            f"bad instance name {name!r}",
            hint="use 1-63 lowercase letters, digits and '-', starting and ending with a letter or digit",
        )
    return name


def slugify(text: str) -> str:
    """A valid instance name derived from free text (a project directory name)."""
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:63].strip("-")
    return slug or "ferry"


class Status(str, enum.Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    STOPPED = "STOPPED"
    TERMINATED = "TERMINATED"
    ERROR = "ERROR"


@dataclass(frozen=True)
class SSHEndpoint:
    host: str
    port: int = 22
    user: str = "root"

    @property
    def known_hosts_name(self) -> str:
        """The name OpenSSH and paramiko file this endpoint's key under."""
        return self.host if self.port == 22 else f"[{self.host}]:{self.port}"


@dataclass
class InstanceSpec:
    name: str
    provider: str = "local"
    gpu: str | None = None
    gpu_count: int = 0
    image: str | None = None
    disk_gb: int | None = None
    spot: bool = False
    max_price: float | None = None
    region: str | None = None
    ports: list[int] = field(default_factory=list)
    volume_gb: int | None = None
    labels: dict[str, str] = field(default_factory=dict)
    public_key: str | None = None
    # Provider settings this one instance overrides (e.g. Thunder's cpu_cores and mode for a clone).
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class Instance:
    id: str
    name: str
    provider: str
    status: Status
    gpu: str | None = None
    gpu_count: int = 0
    cost_per_hour: float = 0.0
    ssh: SSHEndpoint | None = None
    remote_home: str | None = None
    workdir_root: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
    created_at: float = field(default_factory=time.time)
    raw: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["status"] = self.status.value
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Instance":
        data = dict(data)
        data["status"] = Status(data.get("status", "ERROR"))
        if data.get("ssh"):
            data["ssh"] = SSHEndpoint(**data["ssh"])
        known = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Offer:
    """A priced way to rent ``gpu_count`` x ``gpu`` on a provider (``offers``, ``--provider auto``)."""

    provider: str
    gpu: str
    gpu_count: int
    cost_per_hour: float
    spot: bool = False
    region: str | None = None
    id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
