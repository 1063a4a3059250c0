"""The provider registry: name -> module, imported only when asked for, every verb retried here, once.

Adding a cloud is one module (or a folder, for a cloud that holds more than
one concept) plus one line in ``MODULES``. A module may also declare
``RETRY`` (a backoff.Policy) when its API wants another retry policy. Nothing here imports a provider's
SDK: ``inv --list`` never pays for one (``import runpod`` alone costs 1.6 s),
and a provider imports its SDK through :func:`sdk`, which turns a missing
package into a one-line install hint.

:func:`get` hands out a :class:`Cloud`: the provider behind the one retry
policy (backoff.call) for transient failures, plus the two rules every
launch depends on: an instance is found by name only when it carries ferry's
project label (a same-named machine made by hand is never adopted, so never
terminated), and a create is never repeated blindly (between attempts the
name is looked up, because a lost response may mean the instance exists).
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import TYPE_CHECKING, Any, Callable, Mapping

from ..errors import ConfigError, UsageError
from ..records import Instance, InstanceSpec, Offer, Status
from .base import OWNED, KeySource, ProviderConfig

if TYPE_CHECKING:
    from .. import backoff
    from ..config import Settings
    from .base import Provider

MODULES = {
    "local": "ferry.providers.local",
    "ssh": "ferry.providers.ssh",
    "runpod": "ferry.providers.runpod",
    "vast": "ferry.providers.vast",
    "thunder": "ferry.providers.thunder",
    "ec2": "ferry.providers.ec2",
}
CLOUDS = ("runpod", "vast", "thunder", "ec2")  # the ones that rent machines for money
PROJECT_LABEL = "ferry-project"

__all__ = ["MODULES", "CLOUDS", "KeySource", "Cloud", "names", "module", "get", "sdk", "register", "unregister"]


def names() -> list[str]:
    return sorted(MODULES)


def module(name: str) -> ModuleType:
    """The provider's module (light: its SDK is imported later, inside its calls)."""
    if name not in MODULES:
        raise UsageError(f"unknown provider {name!r}", hint=f"choose one of: {', '.join(names())}")
    return importlib.import_module(MODULES[name])


def register(name: str, module_path: str) -> None:
    """Add a provider (ferry.testing's fake, or a user's own cloud) under ``name``: a module path."""
    MODULES[name] = module_path


def unregister(name: str) -> None:
    MODULES.pop(name, None)


def sdk(package: str, provider: str) -> ModuleType:
    """``import package`` for a provider, or a ConfigError naming the extra that installs it."""
    try:
        return importlib.import_module(package)
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] != package.split(".")[0]:
            raise
        extra = getattr(module(provider), "EXTRA", None) or provider
        raise ConfigError(f"the {provider} provider needs the {package.split('.')[0]} package",
                          hint=f"install it: pip install 'ferry[{extra}]'") from None


def get(name: str, settings: "Settings", overrides: Mapping[str, Any] | None = None) -> "Cloud":
    """The named provider, configured from ``ferry.providers.<name>`` (plus ``overrides``), behind the retry policy."""
    from .. import apikeys

    mod = module(name)
    block = {**settings.for_provider(name), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if name == "ssh":
        block = {**block, "hosts": settings.hosts, "ssh_config": block.get("ssh_config") or settings.ssh_config}
    cfg = ProviderConfig(name=name, settings=block, api_key=lambda: apikeys.key(settings, name),
                         project=settings.project, home=settings.home)
    return Cloud(mod.make(cfg), mod, getattr(mod, "RETRY", None) or _policy(settings))


def _policy(settings: "Settings") -> "backoff.Policy":
    from .. import backoff

    tuned = dict(settings.data.get("retry") or {})
    base = backoff.DEFAULT
    return backoff.Policy(attempts=int(tuned.get("attempts") or base.attempts),
                          budget=float(tuned.get("budget") or base.budget),
                          base=float(tuned.get("base") or base.base), cap=float(tuned.get("cap") or base.cap))


class Cloud:
    """A provider as the layers above see it: every verb retried under one policy, find-by-name, create-once."""

    def __init__(self, provider: "Provider", mod: ModuleType | None = None, policy: "backoff.Policy | None" = None):
        from .. import backoff

        self.provider = provider
        self.module = mod
        self.policy = policy or backoff.DEFAULT
        self.name: str = provider.name
        self.capabilities: frozenset[str] = frozenset(provider.capabilities)

    def _retry(self, fn: Callable[[], Any], **kw) -> Any:
        from .. import backoff

        return backoff.call(fn, self.policy, **kw)

    def can(self, capability: str) -> bool:
        return capability in self.capabilities

    # -- the contract, retried ------------------------------------------------------------------
    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        return self._retry(lambda: self.provider.list(labels))

    def get(self, instance_id: str) -> Instance | None:
        return self._retry(lambda: self.provider.get(instance_id))

    def start(self, instance_id: str) -> Instance:
        return self._retry(lambda: self.provider.start(instance_id))

    def stop(self, instance_id: str) -> Instance:
        return self._retry(lambda: self.provider.stop(instance_id))

    def terminate(self, instance_id: str) -> None:
        return self._retry(lambda: self.provider.terminate(instance_id))

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        return self._retry(lambda: self.provider.offers(gpu, count))

    def modify(self, instance_id: str, changes: dict[str, Any]) -> None:
        return self._retry(lambda: self.provider.modify(instance_id, changes))  # type: ignore[attr-defined]

    def set_self_stop_action(self, instance_id: str, action: str) -> None:
        """Make the instance's own shutdown mean ``action`` where the cloud decides that (EC2); else nothing."""
        hook = getattr(self.provider, "set_self_stop_action", None)
        if hook is not None:
            self._retry(lambda: hook(instance_id, action))

    def spec_of(self, instance: Instance) -> InstanceSpec:
        return self.provider.spec_of(instance)  # type: ignore[attr-defined]

    # -- the rules above the contract -------------------------------------------------------------
    def find(self, name: str, retried: bool = True) -> Instance | None:
        """The live instance a name refers to; on clouds ferry rents from, only one carrying ferry's label."""
        for instance in (self.list() if retried else self.provider.list()):
            if instance.name != name or instance.status == Status.TERMINATED:
                continue
            if OWNED in self.capabilities and self.name != "local" and PROJECT_LABEL not in instance.labels:
                continue
            return instance
        return None

    def create(self, spec: InstanceSpec) -> Instance:
        """Create, retrying transient failures, but never twice: between attempts the name is looked up."""
        return self._retry(lambda: self.provider.create(spec), before_retry=lambda _: self.find(spec.name, retried=False))
