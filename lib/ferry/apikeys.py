"""API keys: where ferry finds each cloud's key, and how it shows one without revealing it.

Order, first found wins: the environment variable, the project's ``.env``,
``~/.config/.env.global``, then the cloud's own files (each provider module
declares its variable and files as ``API_KEY``). A ``.env`` contributes the
variable's value, never the file. A key is never printed, logged or put on
a command line: :func:`mask` is all anyone sees of it.
"""

from __future__ import annotations

from pathlib import Path

from . import config, providers
from .config import Settings
from .errors import ConfigError

GLOBAL_ENV_FILE = ".config/.env.global"


def sources() -> dict[str, "providers.KeySource"]:
    """provider -> where its key may be, for every provider that takes one."""
    found = {}
    for name in providers.names():
        declared = providers.module(name).API_KEY
        if declared is not None:
            found[name] = declared
    return found


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


def lookup(settings: Settings, provider: str) -> tuple[str, str] | None:
    """(key, where it came from) for a provider, searching in the documented order; None if absent."""
    declared = providers.module(provider).API_KEY
    if declared is None:
        return None
    return find(settings, declared)


def find(settings: Settings, declared: "providers.KeySource") -> tuple[str, str] | None:
    """(value, where it came from) for any declared secret (a cloud's key, a hub's token); None if absent."""
    variable = declared.variable
    value = config.getenv(variable)
    if value:
        return value.strip(), f"${variable}"
    value = settings.dotenv().get(variable)
    if value:
        return value.strip(), f"{settings.project_dir / '.env'} ({variable})"
    global_env = Path.home() / GLOBAL_ENV_FILE
    if global_env.is_file():
        from dotenv import dotenv_values

        value = dotenv_values(global_env).get(variable)
        if value:
            return value.strip(), f"~/{GLOBAL_ENV_FILE} ({variable})"
    for name in declared.files:
        value = _read_key_file(Path.home() / name)
        if value:
            return value, f"~/{name}"
    return None


def key(settings: Settings, provider: str) -> str:
    """The provider's API key, or an error that says exactly where ferry looked."""
    found = lookup(settings, provider)
    if found is None:
        declared = providers.module(provider).API_KEY
        raise ConfigError(f"no API key for {provider}", hint=f"set {declared.variable} (ferry looks in: {places(declared)})")
    return found[0]


def places(declared: "providers.KeySource") -> str:
    """Where :func:`find` looks, in order, as a user reads it."""
    return ", ".join([f"${declared.variable}", ".env", f"~/{GLOBAL_ENV_FILE}", *(f"~/{f}" for f in declared.files)])


def mask(secret: str | None) -> str:
    """Enough of a secret to recognise it, never enough to use it."""
    if not secret:
        return ""
    return "****" if len(secret) < 12 else f"{secret[:3]}****{secret[-2:]}"
