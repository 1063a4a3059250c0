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
}


def names() -> list[str]:
    return sorted(MODULES)


def get(name: str, settings: dict[str, Any] | None = None) -> "Provider":
    """An instance of the named provider, built from its settings block."""
    if name not in MODULES:
        raise ConfigError(
            f"unknown provider {name!r}",
            hint=f"choose one of: {', '.join(names())}",
        )
    module = importlib.import_module(MODULES[name])
    return module.make(settings or {})
