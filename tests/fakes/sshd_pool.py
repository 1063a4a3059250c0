"""One real OpenSSH sshd per fake cloud instance.

``SshdPool(base_dir).create(public_key)`` gives an :class:`Endpoint` backed by
its own :class:`ferry.sshd.LoopbackSshd` (own directory, host key,
authorized_keys and port) that trusts that key.

Port policy: ``stop`` then ``start`` restarts the sshd on the **same port**
when that port is still free, so a stopped-then-started instance keeps its
endpoint (and its host key); only if something else grabbed the port in the
meantime does it move to a new one (``endpoint.port`` is updated in place).
Every sshd is stopped by the pid in its own pid file (never by name), and
``stop_all`` stops every one the pool ever started, so a fixture's finally can
call it after a failing test.

Each instance is a machine of its own, not the test user's account:

- its sessions get ``HOME=<its directory>/home`` (sshd would otherwise take
  the real home from the passwd entry, and a launch would bootstrap, sync and
  run jobs there);
- that home holds a stub ``~/.local/bin/uv`` (the image "has uv"), so
  bootstrap.sh never runs ``curl https://astral.sh/uv/install.sh``: tests
  reach nothing beyond loopback;
- every process started through its sshd carries the local provider's marker
  variable, and ``stop``, ``remove`` and ``stop_all`` end them all by pid,
  the way a power-off would (a tmux server daemonises out of sshd's process
  tree and would outlive it). The marker and the /proc scan are
  :mod:`ferry.providers.local`'s own, so there is one copy of that logic;
- ``create(..., env={...})`` (or :meth:`SshdPool.set_env`) gives one endpoint extra
  session environment on top of HOME and the marker (which always win): a cloud's
  per-instance variables such as ``RUNPOD_POD_ID`` or a ``PATH``. They are sshd
  ``SetEnv`` values, read when the sshd starts.
"""

from __future__ import annotations

import getpass
import re
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ferry.errors import FerryError
from ferry.providers.local import MARKER, end_marked_processes
from ferry.sshd import LoopbackSshd

UV_STUB = "#!/bin/sh\necho 'uv 0.0.0 (ferry test stub)'\n"


@dataclass(eq=False)
class Endpoint:
    """Where one fake instance's sshd listens; ``port`` can change only if it had to move."""

    host: str
    port: int | None
    user: str
    sshd: LoopbackSshd = field(repr=False)
    name: str = ""
    keys: list[str] = field(default_factory=list, repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)  # extra session env (see SshdPool._env)

    @property
    def directory(self) -> Path:
        return self.sshd.dir

    @property
    def home(self) -> Path:
        """The instance's $HOME: where bootstrap, the synced project and jobs land."""
        return self.directory / "home"

    def running(self) -> bool:
        return self.sshd.running()


def _key_lines(public_key: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if public_key is None:
        return []
    if isinstance(public_key, str):
        public_key = public_key.splitlines()
    return [line.strip() for line in public_key if line and line.strip()]


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _checked_env(env: dict[str, str] | None) -> dict[str, str]:
    """``env`` as sshd ``SetEnv`` can carry it (``NAME="value"``): refuse what would not survive."""
    checked: dict[str, str] = {}
    for name, value in (env or {}).items():
        value = str(value)
        if not _ENV_NAME.fullmatch(name):
            raise ValueError(f"not an environment variable name: {name!r}")
        if any(c in value for c in '"\\\n\r'):
            raise ValueError(f"{name}: a SetEnv value cannot hold quotes, backslashes or newlines")
        checked[name] = value
    return checked


class SshdPool:
    """Creates, stops, restarts and removes loopback sshds under ``base_dir``."""

    def __init__(self, base_dir: str | Path):
        self.base_dir = Path(base_dir).resolve()  # as LoopbackSshd resolves: markers name the same path
        self.base_dir.mkdir(parents=True, exist_ok=True)
        # Instance directories sit where the local provider would look for its own, so its power-off fits.
        self.user = getpass.getuser()
        self._lock = threading.RLock()
        self._count = 0
        self.endpoints: list[Endpoint] = []

    # -- lifecycle -----------------------------------------------------------
    def create(self, public_key: str | list[str] | None, *, start: bool = True, name: str | None = None,
               env: dict[str, str] | None = None) -> Endpoint:
        """A new sshd trusting ``public_key`` (one line, several lines, or a list).

        With ``start=False`` the files are prepared but no process runs and
        ``port`` is None until :meth:`start`. ``env``: extra variables for
        every session on this endpoint (HOME and the power-off marker stay the
        pool's).
        """
        extra = _checked_env(env)
        with self._lock:
            self._count += 1
            label = name or f"i{self._count}"
            # Short directory names: ssh ControlPath sockets and sshd paths stay well under 100 chars.
            directory = self.base_dir / f"s{self._count}"
            sshd = LoopbackSshd(directory)
            keys = _key_lines(public_key)
            endpoint = Endpoint(host="127.0.0.1", port=None, user=self.user, sshd=sshd, name=label, keys=keys,
                                env=extra)
            sshd.prepare(authorized_keys=keys, env=self._env(endpoint))
            uv = endpoint.home / ".local" / "bin" / "uv"
            uv.parent.mkdir(parents=True, exist_ok=True)
            uv.write_text(UV_STUB)
            uv.chmod(0o755)
            self.endpoints.append(endpoint)
        if start:
            self.start(endpoint)
        return endpoint

    def start(self, endpoint: Endpoint) -> Endpoint:
        """Start (or keep running) the sshd; reuse its previous port when free.

        A host key deleted meanwhile is made anew (a machine rebuilt behind the
        same address), and the instance's HOME and marker are passed on every
        start, whatever was prepared last.
        """
        with self._lock:
            sshd = endpoint.sshd
            if sshd.running() and endpoint.port:
                return endpoint
            env = self._env(endpoint)
            sshd.prepare(authorized_keys=endpoint.keys, env=env)
            port = None
            if endpoint.port:
                try:
                    port = sshd.start(port=endpoint.port, env=env)
                except FerryError:
                    port = None  # the old port was taken: move to a new one
            if port is None:
                port = sshd.start(env=env)
            endpoint.port = port
            return endpoint

    def stop(self, endpoint: Endpoint) -> None:
        """Power off: the sshd, its sessions and whatever they left running; the port is kept for ``start``."""
        with self._lock:
            endpoint.sshd.stop()
            self._power_off(endpoint)

    def remove(self, endpoint: Endpoint) -> None:
        """Power off and delete its directory (an instance that was terminated)."""
        with self._lock:
            self.stop(endpoint)
            if endpoint in self.endpoints:
                self.endpoints.remove(endpoint)
            shutil.rmtree(endpoint.directory, ignore_errors=True)

    def stop_all(self) -> None:
        """Power off every instance this pool ever started (by pid); safe to call twice."""
        with self._lock:
            errors = []
            for endpoint in list(self.endpoints):
                try:
                    self.stop(endpoint)
                except Exception as exc:  # keep stopping the others
                    errors.append(exc)
            if errors:
                raise errors[0]

    # -- the machine around the sshd -------------------------------------------
    def _env(self, endpoint: Endpoint) -> dict[str, str]:
        """sshd ``SetEnv`` for every session: the endpoint's extra env, then its own HOME and the
        power-off marker (those two always win, so power-off finds every process)."""
        return {**endpoint.env, "HOME": str(endpoint.home), MARKER: str(endpoint.directory)}

    def set_env(self, endpoint: Endpoint, env: dict[str, str] | None) -> None:
        """Replace the endpoint's extra session env. sshd reads ``SetEnv`` when it starts, so this
        takes effect at the next :meth:`start` (a running sshd keeps what it started with)."""
        with self._lock:
            endpoint.env = _checked_env(env)

    def _power_off(self, endpoint: Endpoint) -> None:
        """End every process carrying this instance's marker (TERM, then KILL), by pid."""
        end_marked_processes(endpoint.directory)

    # -- keys ----------------------------------------------------------------
    def set_keys(self, endpoint: Endpoint, public_keys: str | list[str] | None) -> None:
        """Replace authorized_keys (sshd reads the file at each login, so this works live)."""
        with self._lock:
            endpoint.keys = _key_lines(public_keys)
            endpoint.sshd.set_authorized_keys(endpoint.keys)

    def add_key(self, endpoint: Endpoint, public_key: str) -> None:
        with self._lock:
            merged = list(endpoint.keys)
            for line in _key_lines(public_key):
                if line not in merged:
                    merged.append(line)
            self.set_keys(endpoint, merged)

    # -- inspection ----------------------------------------------------------
    def running_pids(self) -> list[int]:
        with self._lock:
            return [e.sshd.pid() for e in self.endpoints if e.sshd.running()]  # type: ignore[misc]

    def __enter__(self) -> "SshdPool":
        return self

    def __exit__(self, *exc) -> None:
        self.stop_all()
