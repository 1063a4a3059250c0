"""Settings: the ``ferry`` key of Invoke's config, the project's ``.env``, and where things live.

This is the only module that reads the process environment; everything else
asks it. Precedence is Invoke's own (collection defaults < ~/.invoke.yaml <
project invoke.yaml < INVOKE_FERRY_* < flags), so a user's ``tasks.py`` or
``invoke.yaml`` can change any default below.
"""

from __future__ import annotations

import copy
import logging
import os
from pathlib import Path
from typing import Any, Mapping

from invoke import Config, Context

from .instance import slugify

DEFAULTS: dict[str, Any] = {
    "provider": "local",
    "name": None,  # instance name; default: the project directory's name
    "project_dir": None,  # default: nearest ancestor holding .ferry/, tasks.py or .git
    "ssh_key": None,  # private key path; default: ~/.ferry/keys/id_ed25519 (generated)
    "env": {},  # exported to every job
    "debug": False,
    "json": False,
    "launch_timeout": 600,
    "providers": {"local": {}},
}

PROJECT_MARKERS = (".ferry", "tasks.py", ".git")


def make_context(overrides: Mapping[str, Any] | None = None) -> Context:
    """A Context for library callers (recipes) who are not running under ``inv``."""
    settings = copy.deepcopy(DEFAULTS)
    settings.update(overrides or {})
    config = Config(defaults={"ferry": settings})
    config.load_system()
    config.load_user()
    config.load_shell_env()
    return Context(config=config)


def settings(ctx: Context | None) -> dict[str, Any]:
    """The ``ferry`` settings as a plain dict, defaults filled in, whatever Context we were handed."""
    merged = copy.deepcopy(DEFAULTS)
    if ctx is not None:
        found = ctx.config.get("ferry") or {}
        for key, value in dict(found).items():
            merged[key] = _plain(value)
    return merged


def _plain(value: Any) -> Any:
    """Invoke hands back DataProxy objects; callers want dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def getenv(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def ferry_home() -> Path:
    """Per-user state: keys, known_hosts, local instances, ControlMaster sockets."""
    return Path.home() / ".ferry"


def project_dir(ctx: Context | None = None) -> Path:
    configured = settings(ctx).get("project_dir")
    if configured:
        return Path(configured).expanduser().resolve()
    here = Path.cwd().resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            if candidate == Path.home() and candidate != here:
                break  # ~/.ferry is per-user state, not a project
            return candidate
    return here


def project_name(ctx: Context | None = None) -> str:
    return slugify(project_dir(ctx).name)


def instance_name(ctx: Context | None, name: str | None = None) -> str | None:
    """An explicit name wins; then config; None means 'the project's current instance'."""
    return name or settings(ctx).get("name")


def provider_settings(ctx: Context | None, provider: str) -> dict[str, Any]:
    return dict((settings(ctx).get("providers") or {}).get(provider) or {})


def dotenv(ctx: Context | None = None) -> dict[str, str]:
    """The project's ``.env`` as values; never loaded into os.environ, never the whole file as one value."""
    path = project_dir(ctx) / ".env"
    if not path.is_file():
        return {}
    from dotenv import dotenv_values

    return {k: v for k, v in dotenv_values(path).items() if v is not None}


def debug_enabled(ctx: Context | None = None) -> bool:
    """``--debug`` on inv/ferry turns on the root logger; config or FERRY_DEBUG also work."""
    if settings(ctx).get("debug") or getenv("FERRY_DEBUG"):
        return True
    return logging.getLogger().isEnabledFor(logging.DEBUG)
