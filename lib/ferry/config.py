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
    "ssh_config": None,  # OpenSSH client config for every ssh ferry runs (-F); default: OpenSSH's ~/.ssh/config
    "hosts": {},  # the ssh provider: name -> "user@host:port" or an ssh_config alias
    # Per-provider settings. Every key a user may set is listed so that
    # INVOKE_FERRY_PROVIDERS_<NAME>_<KEY> environment variables reach it
    # (Invoke only overrides keys that exist). api_url/endpoint_url point an
    # SDK elsewhere (a proxy, or the test suite's fake servers).
    "providers": {
        "local": {"root": None},
        "runpod": {"ssh_user": "root", "api_url": None, "image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
                   "cloud_type": "ALL", "disk": 50, "volume": 0, "workdir": "/workspace"},
        "vast": {"ssh_user": "root", "api_url": None, "image": "pytorch/pytorch:2.4.0-cuda12.4-cudnn9-devel", "disk": 50},
        "thunder": {"ssh_user": "ubuntu", "api_url": None, "template": "base", "mode": "prototyping", "cpu_cores": 4,
                    "disk": 100},
        "ec2": {"ssh_user": "ubuntu", "endpoint_url": None, "region": "us-east-1", "ami": None, "disk": 100,
                "volume_type": "gp3", "owner": None, "ssh_port": None},
        "ssh": {},
    },
}

# Where each provider's API key may be, after the environment and the project's
# .env: (environment variable, files in the home directory, in order).
KEY_SOURCES: dict[str, tuple[str, tuple[str, ...]]] = {
    "runpod": ("RUNPOD_API_KEY", (".runpod/api_key", ".runpod/config.toml")),
    "vast": ("VAST_API_KEY", (".config/vastai/vast_api_key", ".vast_api_key")),
    "thunder": ("TNR_API_TOKEN", (".thunder/token",)),
}
GLOBAL_ENV_FILE = ".config/.env.global"

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


def _read_key_file(path: Path) -> str | None:
    """A key file holds the key alone, or (config.toml) an ``api_key = "..."`` line."""
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if path.suffix == ".toml":
        import tomllib

        try:
            data = tomllib.loads(text)
        except ValueError:
            return None
        for section in (data, *[v for v in data.values() if isinstance(v, dict)]):
            if isinstance(section.get("api_key"), str):
                return section["api_key"].strip() or None
        return None
    return text.splitlines()[0].strip() if text else None


def api_key_source(ctx: Context | None, provider: str) -> tuple[str, str] | None:
    """(key, where it came from) for a provider, searching in the documented order; None if absent.

    Order: the environment variable, the project's .env, ~/.config/.env.global,
    then the provider's own files. A .env contributes the variable's value,
    never the file.
    """
    if provider not in KEY_SOURCES:
        return None
    variable, files = KEY_SOURCES[provider]
    value = getenv(variable)
    if value:
        return value.strip(), f"${variable}"
    value = dotenv(ctx).get(variable)
    if value:
        return value.strip(), f"{project_dir(ctx) / '.env'} ({variable})"
    global_env = Path.home() / GLOBAL_ENV_FILE
    if global_env.is_file():
        from dotenv import dotenv_values

        value = dotenv_values(global_env).get(variable)
        if value:
            return value.strip(), f"~/{GLOBAL_ENV_FILE} ({variable})"
    for name in files:
        value = _read_key_file(Path.home() / name)
        if value:
            return value, f"~/{name}"
    return None


def api_key(ctx: Context | None, provider: str) -> str:
    """The provider's API key, or an error that says exactly where ferry looked."""
    from .errors import ConfigError

    found = api_key_source(ctx, provider)
    if found is None:
        variable, files = KEY_SOURCES[provider]
        places = ", ".join([f"${variable}", ".env", f"~/{GLOBAL_ENV_FILE}", *(f"~/{f}" for f in files)])
        raise ConfigError(f"no API key for {provider}", hint=f"set {variable} (ferry looks in: {places})")
    return found[0]


def mask(secret: str | None) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return ""
    return "****" if len(secret) < 12 else f"{secret[:3]}****{secret[-2:]}"
