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
"""

from __future__ import annotations

import getpass
import shutil
import threading
from dataclasses import dataclass, field
from pathlib import Path

from ferry.errors import FerryError
from ferry.sshd import LoopbackSshd


@dataclass(eq=False)
class Endpoint:
    """Where one fake instance's sshd listens; ``port`` can change only if it had to move."""

    host: str
    port: int | None
    user: str
    sshd: LoopbackSshd = field(repr=False)
    name: str = ""
    keys: list[str] = field(default_factory=list, repr=False)

    @property
    def directory(self) -> Path:
        return self.sshd.dir

    def running(self) -> bool:
        return self.sshd.running()


def _key_lines(public_key: str | list[str] | tuple[str, ...] | None) -> list[str]:
    if public_key is None:
        return []
    if isinstance(public_key, str):
        public_key = public_key.splitlines()
    return [line.strip() for line in public_key if line and line.strip()]


class SshdPool:
    """Creates, stops, restarts and removes loopback sshds under ``base_dir``."""

    def __init__(self, base_dir: str | Path):
        self.base_dir = Path(base_dir)
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.user = getpass.getuser()
        self._lock = threading.RLock()
        self._count = 0
        self.endpoints: list[Endpoint] = []

    # -- lifecycle -----------------------------------------------------------
    def create(self, public_key: str | list[str] | None, *, start: bool = True, name: str | None = None) -> Endpoint:
        """A new sshd trusting ``public_key`` (one line, several lines, or a list).

        With ``start=False`` the files are prepared but no process runs and
        ``port`` is None until :meth:`start`.
        """
        with self._lock:
            self._count += 1
            label = name or f"i{self._count}"
            # Short directory names: ssh ControlPath sockets and sshd paths stay well under 100 chars.
            directory = self.base_dir / f"s{self._count}"
            sshd = LoopbackSshd(directory)
            keys = _key_lines(public_key)
            sshd.prepare(authorized_keys=keys)
            endpoint = Endpoint(host="127.0.0.1", port=None, user=self.user, sshd=sshd, name=label, keys=keys)
            self.endpoints.append(endpoint)
        if start:
            self.start(endpoint)
        return endpoint

    def start(self, endpoint: Endpoint) -> Endpoint:
        """Start (or keep running) the sshd; reuse its previous port when free."""
        with self._lock:
            sshd = endpoint.sshd
            if sshd.running() and endpoint.port:
                return endpoint
            port = None
            if endpoint.port:
                try:
                    port = sshd.start(port=endpoint.port)
                except FerryError:
                    port = None  # the old port was taken: move to a new one
            if port is None:
                port = sshd.start()
            endpoint.port = port
            return endpoint

    def stop(self, endpoint: Endpoint) -> None:
        """Stop the sshd (and its per-connection children); the endpoint keeps its port for ``start``."""
        with self._lock:
            endpoint.sshd.stop()

    def remove(self, endpoint: Endpoint) -> None:
        """Stop the sshd and delete its directory (an instance that was terminated)."""
        with self._lock:
            endpoint.sshd.stop()
            if endpoint in self.endpoints:
                self.endpoints.remove(endpoint)
            shutil.rmtree(endpoint.directory, ignore_errors=True)

    def stop_all(self) -> None:
        """Stop every sshd this pool ever started (by pid); safe to call twice."""
        with self._lock:
            errors = []
            for endpoint in list(self.endpoints):
                try:
                    endpoint.sshd.stop()
                except Exception as exc:  # keep stopping the others
                    errors.append(exc)
            if errors:
                raise errors[0]

    # -- keys ----------------------------------------------------------------
    def set_keys(self, endpoint: Endpoint, public_keys: str | list[str] | None) -> None:
        """Replace authorized_keys (sshd reads the file at each login, so this works live)."""
        with self._lock:
            endpoint.keys = _key_lines(public_keys)
            endpoint.sshd.prepare(authorized_keys=endpoint.keys)

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
