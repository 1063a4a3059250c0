"""Provider registry: name -> module, imported only when asked for.

`inv --list` must never pay for an SDK import (runpod alone costs 1.6 s), so
nothing here imports a provider module until ``get`` is called.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ..errors import ConfigError

if TYPE_CHECKING:
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


def names() -> list[str]:
    return sorted(MODULES)


def get(name: str, ctx: Any = None, overrides: dict | None = None) -> "Provider":
    """An instance of the named provider, configured from ``ferry.providers.<name>`` in ctx."""
    from .. import config
    from .base import ProviderConfig

    if name not in MODULES:
        raise ConfigError(
            f"unknown provider {name!r}",
            hint=f"choose one of: {', '.join(names())}",
        )
    try:
        module = importlib.import_module(MODULES[name])
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.split(".")[0] in ("runpod", "vastai", "boto3", "botocore", "requests"):
            extra = {"vast": "vast", "ec2": "aws"}.get(name, name)
            raise ConfigError(
                f"the {name} provider needs the {exc.name.split('.')[0]} package",
                hint=f"install it: pip install 'ferry[{extra}]'",
            ) from exc
        raise
    settings = {**config.provider_settings(ctx, name), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    if name == "ssh":
        settings = {**settings, "hosts": config.settings(ctx).get("hosts") or {},
                    "ssh_config": settings.get("ssh_config") or config.settings(ctx).get("ssh_config")}
    return module.make(ProviderConfig(
        name=name, settings=settings, api_key=lambda: config.api_key(ctx, name), project=config.project_name(ctx),
    ))
