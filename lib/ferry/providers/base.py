"""The contract every cloud adapts to: six verbs, plus what it can do.

Everything generic (waiting, retrying, idempotency, bootstrap, ssh) lives once
in lifecycle.py and remote.py; a provider only translates.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Protocol, TypeVar, runtime_checkable

from ..errors import FerryError
from ..instance import Instance, InstanceSpec

STOP = "stop"  # can stop and start again, keeping the disk
SPOT = "spot"  # interruptible/bid capacity
OFFERS = "offers"  # can list priced offers before creating
MODIFY = "modify"
MULTI_NODE = "multi_node"
OWNED = "owned"  # ferry created it, so ferry may terminate it


@dataclass
class Offer:
    provider: str
    gpu: str
    gpu_count: int
    cost_per_hour: float
    spot: bool = False
    region: str | None = None
    id: str | None = None


@dataclass
class ProviderConfig:
    """What a provider module's ``make`` receives: its settings block and a way to get its key.

    The key is a callable so that merely naming a provider (``inv --list``,
    ``ls`` of other clouds) never reads secrets or fails for a missing key.
    """

    name: str
    settings: dict[str, Any] = field(default_factory=dict)
    api_key: Callable[[], str] = lambda: ""
    project: str = "ferry"

    @property
    def ssh_user(self) -> str | None:
        return self.settings.get("ssh_user")


@runtime_checkable
class Provider(Protocol):
    name: str
    capabilities: frozenset[str]

    def create(self, spec: InstanceSpec) -> Instance: ...
    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]: ...
    def get(self, instance_id: str) -> Instance | None: ...  # None = gone
    def start(self, instance_id: str) -> Instance: ...
    def stop(self, instance_id: str) -> Instance: ...
    def terminate(self, instance_id: str) -> None: ...  # idempotent: gone is fine
    def offers(self, gpu: str | None, count: int) -> list[Offer]: ...


T = TypeVar("T")


def translated(translate: Callable[[Exception, str], Exception], what: str, fn: Callable[..., T], *args, **kwargs) -> T:
    """Call an SDK function; turn its exceptions into ferry's through the provider's one ``translate``.

    ``translate`` returns the exception itself for anything it does not
    recognise, which is re-raised untouched (a bug should keep its traceback).
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - translated in one place, re-raised
        mapped = translate(exc, what)
        if mapped is exc:
            raise
        raise mapped from None


def unsupported(provider: str, verb: str, hint: str | None = None) -> FerryError:
    return FerryError(f"the {provider} provider cannot {verb} instances", hint=hint)


def find_by_name(provider: Provider, name: str) -> Instance | None:
    """Idempotency hinges on this: the instance a name refers to, if the cloud still has it.

    On a cloud ferry creates instances on, only instances carrying ferry's
    project label count: a same-named machine made by hand is never adopted
    (and so never terminated by ferry).
    """
    for instance in provider.list():
        if instance.name != name or instance.status.value == "TERMINATED":
            continue
        if OWNED in provider.capabilities and provider.name != "local" and "ferry-project" not in instance.labels:
            continue
        return instance
    return None
