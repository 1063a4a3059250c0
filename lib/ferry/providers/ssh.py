"""Hosts you already have: ``ferry.hosts`` maps a name to ``user@host:port`` or an ssh_config alias.

Nothing is rented, so there is nothing to create, stop or destroy: ``launch
--provider ssh --name NAME`` finds NAME in ``ferry.hosts``, checks it answers
and bootstraps it like any instance; ferry never changes a host's power
(capabilities carry neither STOP nor OWNED, so lifecycle refuses ``stop`` and
``terminate`` with a message and leaves the machine alone).

Every entry is resolved the way OpenSSH itself would, with ``ssh -G`` (no
connection is made): an alias or a bare name picks up ``HostName``, ``Port``
and ``User`` from the user's ssh_config, so the endpoint ferry records (and
files the host key under) is the real address. An alias reached through
``ProxyJump``/``ProxyCommand`` keeps its alias as the host, so OpenSSH keeps
applying the proxy. Listing is cheap (no network): a configured host reads
RUNNING; whether it really answers is what ``launch`` checks.

OpenSSH finds ``~/.ssh/config`` through the passwd entry, not ``$HOME``;
setting ``ssh_config`` (a path, passed as ``ssh -F``) names another file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any, Mapping

from ..errors import ConfigError, FerryError, cmd
from ..records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ..tools import require
from .base import SSH

DEFAULTS: dict[str, Any] = {}  # the hosts themselves are ferry.hosts
API_KEY = None
SELF_STOP = None  # ferry does not own these hosts: nothing stops them but their owner
SDK = None
EXTRA = None
GPUS: dict[str, str] = {}
STATUS = {"configured": Status.RUNNING}  # listing never connects: a configured host reads RUNNING

ENTRY = r"^(?:(?P<user>[^@\s]+)@)?(?P<host>\[[0-9A-Fa-f:.]+\]|[^\s:@\[\]]+)(?::(?P<port>\d{1,5}))?$"  # (compiled on use)
EXAMPLE = "ferry: {hosts: {gpu-box: 'me@10.0.0.5:22'}}"


def make(cfg) -> "SSHHostsProvider":
    return SSHHostsProvider(cfg.settings.get("hosts") or {}, default_user=cfg.ssh_user,
                            ssh_config=cfg.settings.get("ssh_config"))


def not_owned(name: str) -> FerryError:
    return FerryError(
        f"ferry does not own {name} (a host from ferry.hosts); it leaves its power alone",
        hint="stop or shut it down the way you normally do; to stop using it with ferry, remove it from ferry.hosts",
    )


class SSHHostsProvider:
    name = "ssh"
    capabilities: frozenset[str] = frozenset({SSH})  # no STOP, no OWNED: not ferry's machines

    def __init__(self, hosts: Mapping[str, Any], default_user: str | None = None, ssh_config: str | None = None):
        self.hosts = dict(hosts or {})
        self.default_user = default_user
        self.ssh_config = str(Path(ssh_config).expanduser()) if ssh_config else None

    # -- resolving an entry ----------------------------------------------------------
    def _parts(self, name: str, value: Any) -> tuple[str | None, str, int | None]:
        """(user, host, port) as written in config; host may be an ssh_config alias."""
        if isinstance(value, Mapping):
            user, host, port = value.get("user"), value.get("host"), value.get("port")
        else:
            match = re.match(ENTRY, str(value or "").strip())
            if not match:
                raise ConfigError(
                    f"ferry.hosts.{name} = {value!r} is not user@host:port or an ssh_config alias",
                    hint=f"e.g. in invoke.yaml: {EXAMPLE}",
                )
            user, host, port = match.group("user"), match.group("host"), match.group("port")
        if not host:
            raise ConfigError(f"ferry.hosts.{name} names no host", hint=f"e.g. in invoke.yaml: {EXAMPLE}")
        host = str(host).strip("[]")
        try:
            port = int(port) if port not in (None, "") else None
        except ValueError:
            port = -1
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"ferry.hosts.{name} has a bad port {value!r}", hint=f"e.g. in invoke.yaml: {EXAMPLE}")
        return (user or self.default_user), host, port

    def _endpoint(self, name: str, value: Any) -> SSHEndpoint:
        """What OpenSSH would connect to for this entry (``ssh -G`` reads the config, connects nowhere)."""
        user, host, port = self._parts(name, value)
        argv = [require("ssh", "ferry reaches hosts over ssh"), "-G"]
        if self.ssh_config:
            argv += ["-F", self.ssh_config]
        if port:
            argv += ["-p", str(port)]
        if user:
            argv += ["-l", user]
        proc = subprocess.run([*argv, "--", host], capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=10)
        if proc.returncode != 0:
            reason = (proc.stderr.strip().splitlines() or ["ssh -G failed"])[-1]
            raise ConfigError(f"cannot resolve ferry.hosts.{name} ({host}): {reason}",
                              hint="check ~/.ssh/config, or write the host as user@host:port")
        resolved: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            key, _, val = line.partition(" ")
            resolved.setdefault(key.lower(), val.strip())
        proxied = any(resolved.get(k, "none") not in ("none", "") for k in ("proxyjump", "proxycommand"))
        return SSHEndpoint(
            host=host if proxied else resolved.get("hostname", host),
            port=int(resolved.get("port") or port or 22),
            user=resolved.get("user") or user or "root",
        )

    def _instance(self, name: str) -> Instance:
        value = self.hosts[name]
        return Instance(
            id=name, name=name, provider=self.name, status=STATUS["configured"], ssh=self._endpoint(name, value),
            labels={}, created_at=0.0, raw={"entry": value if isinstance(value, (str, dict)) else str(value)},
        )

    # -- the contract ----------------------------------------------------------------
    def list(self, labels: Mapping[str, str | None] | None = None) -> list[Instance]:
        if labels:
            return []  # configured hosts carry no labels
        return [self._instance(name) for name in sorted(self.hosts)]

    def get(self, instance_id: str) -> Instance | None:
        return self._instance(instance_id) if instance_id in self.hosts else None

    def create(self, spec: InstanceSpec) -> Instance:
        known = ", ".join(sorted(self.hosts)) or "none yet"
        raise ConfigError(
            f"no host named {spec.name} in ferry.hosts (configured: {known})",
            hint=(f"add it to invoke.yaml as ferry: {{hosts: {{{spec.name}: 'user@host:port'}}}} "
                  f"(or an ssh_config alias), then: {cmd(f'launch --provider ssh --name {spec.name}')}"),
        )

    def start(self, instance_id: str) -> Instance:
        raise not_owned(instance_id)

    def stop(self, instance_id: str) -> Instance:
        raise not_owned(instance_id)

    def terminate(self, instance_id: str) -> None:
        raise not_owned(instance_id)

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        return []
