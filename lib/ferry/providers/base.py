"""The contract every provider adapts to: seven verbs, the capabilities it declares, and what it is given.

A provider only translates between its cloud and ferry's records. Waiting,
retrying (the registry, once), idempotency, the checks every launch needs,
bootstrap and ssh live above it. Each provider *module* declares, besides
``make(cfg)``: ``DEFAULTS`` (its settings block), ``API_KEY`` (a
:class:`KeySource`, or None), ``SDK`` (the package it imports, or None),
``EXTRA`` (the pip extra that installs it), ``GPUS`` (alias -> its id) and
``STATUS`` (its states -> :class:`ferry.records.Status`).

Capabilities are read, never decorative: lifecycle refuses ``--spot`` on a
provider without ``SPOT`` before anything is created, ``stop`` without
``STOP``, ``terminate`` without ``OWNED``, ``modify``/``clone`` without
``MODIFY``/``CLONE``; ``offers`` asks only providers with ``OFFERS``;
bootstrap waits for ssh only on providers with ``SSH``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple, Protocol, TypeVar

from ..errors import FerryError
from ..records import Instance, InstanceSpec, Offer

STOP = "stop"  # can stop and start again, keeping the disk
OWNED = "owned"  # ferry created it, so ferry may terminate it
SSH = "ssh"  # instances answer ssh: launch waits for it, pins the host key and bootstraps
GPU = "gpu"  # rents GPUs: a create needs --gpu, and --gpu means something
SPOT = "spot"  # interruptible/bid capacity
OFFERS = "offers"  # can list priced offers before creating
REGION = "region"  # --region chooses where
IMAGE = "image"  # --image chooses a container image or machine image
PORTS = "ports"  # --ports opens ports at create
VOLUME = "volume"  # --volume adds a persistent volume
MODIFY = "modify"  # resize in place (lifecycle.modify)
CLONE = "clone"  # describe an instance as a spec for a new one (lifecycle.clone)

# What a spec asks for, and the capability that must be there for it.
SPEC_NEEDS = (("spot", SPOT, "--spot"), ("region", REGION, "--region"), ("image", IMAGE, "--image"),
              ("ports", PORTS, "--ports"), ("volume_gb", VOLUME, "--volume"))


class KeySource(NamedTuple):
    """Where a provider's API key may be: an environment variable, then files under $HOME."""

    variable: str
    files: tuple[str, ...] = ()


class SelfStop(NamedTuple):
    """How an instance of a cloud stops itself (ferry-agent's SELF_STOP), declared by the module as ``SELF_STOP``.

    ``path`` is what the agent does (local, ec2, runpod, vast, thunder);
    ``summary`` says it in a few words for ``launch``; ``how`` in a sentence
    for ``doctor``; ``needs_key``: only with the account key on the instance
    (``launch --autostop-key``), because the cloud has no narrower credential.
    """

    path: str
    summary: str
    how: str
    needs_key: bool = False


class ProviderConfig:
    """What a provider module's ``make`` receives: its settings block and a way to get its key.

    The key is a callable so that merely naming a provider (``inv --list``,
    ``ls`` of other clouds) never reads secrets or fails for a missing key.
    (A plain class, not a dataclass: this module is on every start-up path.)
    """

    def __init__(self, name: str, settings: dict[str, Any] | None = None, api_key: Callable[[], str] = lambda: "",
                 project: str = "ferry", home: Path | None = None, user: str | None = None):
        self.name = name
        self.settings = dict(settings or {})
        self.api_key = api_key
        self.project = project
        self.home = home or Path.home() / ".ferry"
        self.user = user or _local_user()

    @property
    def ssh_user(self) -> str | None:
        return self.settings.get("ssh_user")


def _local_user() -> str:
    import getpass

    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return "unknown"


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
    # With MODIFY: modify(instance_id, changes: dict) -> None (checked and translated by the provider).
    # With CLONE: spec_of(instance) -> InstanceSpec (what a new instance like it is made from).


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
