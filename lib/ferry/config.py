"""Settings: the ``ferry`` key of Invoke's config, read the way ``inv`` reads it, resolved once.

Precedence is Invoke's own: defaults < ``/etc/invoke.yaml`` < ``~/.invoke.yaml``
< the project's ``invoke.yaml`` < ``INVOKE_FERRY_*`` < flags. ``FerryConfig``
puts ferry's defaults into Invoke's global defaults (Fabric's own pattern),
so the ``ferry`` console script and a plain Python script see exactly what
``inv`` sees; :func:`make_context` builds such a Context outside ``inv``.

:class:`Settings` is the resolved view one operation works from: built once
from a Context and handed down (a ``Box`` holds it), never re-merged per read.
This is the only module that reads the process environment.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Mapping

from invoke import Config, Context
from invoke.config import merge_dicts

from .records import slugify

GENERAL_DEFAULTS: dict[str, Any] = {
    "provider": "local",
    "name": None,  # instance name; default: the project directory's name
    "project_dir": None,  # default: nearest ancestor holding .ferry/, tasks.py or .git
    "ssh_key": None,  # private key path; default: ~/.ferry/keys/id_ed25519 (generated)
    "env": {},  # exported to every job
    "debug": False,
    "json": False,
    "launch_timeout": 600,
    "jobs_kept": 200,  # job directories kept on an instance (the newest; a running job is never removed)
    "run": {"sync": True},  # `run` first syncs a project that changed since the last sync (no network when it did not)
    # A project with at least this many files to sync keeps a daemon watching it (inotify, Linux), so a sync
    # asks it what changed instead of looking at every file; 0 turns it off.
    "sync": {"journal_min_files": 20000},
    # A plain download brings what the run produced, less environments and caches, up to max_size;
    # include/exclude (gitignore syntax) shape it.
    "download": {"max_size": "2G", "include": [], "exclude": []},
    # Every instance ferry launches stops itself after this long idle (no job, no interactive ssh, no busy
    # GPU), checked on the instance every autostop_check; "off" turns it off. launch --autostop overrides.
    "autostop": "30m",
    "autostop_check": "60s",
    # max_hourly: launch refuses when what runs plus the new instance would cost more per hour;
    # max_cost_per_instance: each instance stops itself once it has cost this much (launch --max-cost).
    "budget": {"max_hourly": None, "max_cost_per_instance": None},
    "ssh_config": None,  # OpenSSH client config for every ssh ferry runs (-F); default: OpenSSH's ~/.ssh/config
    "hosts": {},  # the ssh provider: name -> "user@host:port" or an ssh_config alias
    # Cloud API calls that fail transiently (429, 5xx, timeouts) are retried: at most `attempts` times within
    # `budget` seconds, waiting U(0, min(cap, base * 2^n)) and never less than the server's Retry-After.
    "retry": {"attempts": 6, "budget": 60.0, "base": 0.5, "cap": 8.0},
    # `ferry build`: a command of your own (inputs: globs whose content decides whether it must run again;
    # env: the environment it makes, relative to the workdir, which jobs then use); unset, ferry picks
    # uv sync, requirements*.txt or environment.yml from the project's files.
    "build": {"command": None, "inputs": [], "env": None},
    "providers": {},  # per provider: its module's DEFAULTS < this block < INVOKE_FERRY_PROVIDERS_<NAME>_<KEY>
}
PROJECT_MARKERS = (".ferry", "tasks.py", ".git")


def defaults() -> dict[str, Any]:
    """ferry's general defaults, as Invoke config (so ``INVOKE_FERRY_<KEY>`` reaches each of them).

    Each provider's block is resolved when that provider is used
    (:meth:`Settings.for_provider`), so start-up never imports a provider module.
    """
    return {k: (dict(v) if isinstance(v, dict) else v) for k, v in GENERAL_DEFAULTS.items()}


def _cast(text: str, default: Any) -> Any:
    """An environment value in the type of the default it overrides (Invoke's own rule)."""
    if isinstance(default, bool):
        return text.strip().lower() not in ("", "0", "false", "no", "off")
    if isinstance(default, (int, float)):
        try:
            return type(default)(text)
        except ValueError:
            from .errors import ConfigError

            raise ConfigError(f"{text!r} is not a {type(default).__name__}", hint="fix the INVOKE_FERRY_PROVIDERS_* variable")
    return text


class FerryConfig(Config):
    """Invoke's Config with ferry's settings among the global defaults (what ``ferry`` and scripts use)."""

    @staticmethod
    def global_defaults() -> dict[str, Any]:
        their = Config.global_defaults()
        merge_dicts(their, {"ferry": defaults()})
        return their


def make_context(overrides: Mapping[str, Any] | None = None) -> Context:
    """A Context for code outside ``inv`` that loads the same files ``inv`` would, plus ``overrides`` for ``ferry``."""
    config = FerryConfig(project_location=str(project_root()), overrides={"ferry": dict(overrides)} if overrides else None)
    config.load_project()
    config.load_shell_env()
    return Context(config=config)


# -- the environment and where things live ------------------------------------------
def getenv(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


def ferry_home() -> Path:
    """Per-user state: keys, known_hosts, local instances, ControlMaster sockets."""
    return Path.home() / ".ferry"


def project_root(start: Path | None = None) -> Path:
    """The nearest ancestor of ``start`` (the cwd) holding ``.ferry/``, ``tasks.py`` or ``.git``; else ``start``."""
    here = (start or Path.cwd()).resolve()
    home = Path.home().resolve()
    for candidate in (here, *here.parents):
        if any((candidate / marker).exists() for marker in PROJECT_MARKERS):
            if candidate == home and candidate != here:
                break  # ~/.ferry is per-user state, not a project
            return candidate
    return here


def _plain(value: Any) -> Any:
    """Invoke hands back DataProxy objects; everything below wants dicts and lists."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class Settings:
    """The ``ferry`` settings of one Context, resolved once: what every layer below the tasks reads."""

    def __init__(self, data: Mapping[str, Any], context: Context | None = None):
        self.data: dict[str, Any] = dict(data)
        self.context = context
        self._project_dir: Path | None = None

    @classmethod
    def of(cls, c: "Context | Settings | None" = None) -> "Settings":
        """Settings from a Context (``inv``'s, or one :func:`make_context` builds when ``c`` is None)."""
        if isinstance(c, Settings):
            return c
        if c is None:
            c = make_context()
        merged = defaults()
        merge_dicts(merged, _plain(c.config.get("ferry") or {}))
        return cls(merged, c)

    def with_overrides(self, **values: Any) -> "Settings":
        data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.data.items()}
        merge_dicts(data, values)
        return Settings(data, self.context)

    # -- plain values ---------------------------------------------------------------------
    @property
    def provider(self) -> str:
        return self.data.get("provider") or "local"

    @property
    def name(self) -> str | None:
        return self.data.get("name")

    @property
    def env(self) -> dict[str, str]:
        return dict(self.data.get("env") or {})

    @property
    def launch_timeout(self) -> float:
        return float(self.data.get("launch_timeout") or 600)

    @property
    def sync_journal_min_files(self) -> int:
        return int((self.data.get("sync") or {}).get("journal_min_files") or 0)

    @property
    def ssh_config(self) -> str | None:
        path = self.data.get("ssh_config")
        return str(Path(path).expanduser()) if path else None

    @property
    def ssh_key(self) -> str | None:
        return self.data.get("ssh_key")

    @property
    def hosts(self) -> dict[str, Any]:
        return dict(self.data.get("hosts") or {})

    @property
    def debug(self) -> bool:
        return bool(self.data.get("debug") or getenv("FERRY_DEBUG")) or logging.getLogger().isEnabledFor(logging.DEBUG)

    def for_provider(self, name: str) -> dict[str, Any]:
        """A provider's settings: its module's DEFAULTS < ``ferry.providers.<name>`` < INVOKE_FERRY_PROVIDERS_<NAME>_<KEY>."""
        from . import providers

        declared = dict(providers.module(name).DEFAULTS)
        block = {**declared, **((self.data.get("providers") or {}).get(name) or {})}
        prefix = f"INVOKE_FERRY_PROVIDERS_{name.upper()}_"
        for key in block:
            value = getenv(prefix + key.upper())
            if value is not None:
                block[key] = _cast(value, declared.get(key))
        return block

    # -- places -------------------------------------------------------------------------------
    @property
    def home(self) -> Path:
        return ferry_home()

    @property
    def project_dir(self) -> Path:
        if self._project_dir is None:
            configured = self.data.get("project_dir")
            self._project_dir = Path(configured).expanduser().resolve() if configured else project_root()
        return self._project_dir

    @property
    def project(self) -> str:
        """The project's name: instance names, labels and workdirs derive from it."""
        return slugify(self.project_dir.name)

    def dotenv(self) -> dict[str, str]:
        """The project's ``.env`` as values; never loaded into os.environ, never the whole file as one value."""
        path = self.project_dir / ".env"
        if not path.is_file():
            return {}
        from dotenv import dotenv_values

        return {k: v for k, v in dotenv_values(path).items() if v is not None}
