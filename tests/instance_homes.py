"""Give every fake-cloud sshd its own $HOME and power it off like a machine.

``SshdPool`` sshds log sessions in with the test user's real home directory
(sshd takes $HOME from the passwd entry), so a ferry launch on a fake cloud
would bootstrap, sync and run jobs in the real ``~``. And a stopped or
terminated fake instance would leave its tmux server (which daemonises out
of sshd's process tree) running. ``isolate(pool)`` wraps the pool so each
sshd gets ``SetEnv HOME=<its dir>/home`` plus a marker variable, a stub
``~/.local/bin/uv`` (the instance image "has uv", so bootstrap never tries
to download it: no network beyond loopback), and every process carrying the
marker is ended by pid when the instance stops, is removed, or the test ends.

This belongs in ``SshdPool`` itself; it lives here until the fakes grow it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path

from ferry.sshd import pid_alive

MARKER = "FERRY_FAKE_INSTANCE"


def _processes_marked(marker: str) -> list[int]:
    wanted = f"{MARKER}={marker}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        with contextlib.suppress(OSError):
            if wanted in (entry / "environ").read_bytes().split(b"\0"):
                found.append(int(entry.name))
    return found


def power_off(directory: Path) -> None:
    """End every process started through the sshd in ``directory`` (by pid, TERM then KILL)."""
    victims = _processes_marked(str(directory))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + 3
        while any(pid_alive(p) for p in victims) and time.monotonic() < deadline:
            time.sleep(0.02)
        victims = [p for p in victims if pid_alive(p)]
        if not victims:
            return


class Homes:
    """The wrapped pool's bookkeeping: every directory that ever ran an sshd."""

    def __init__(self, pool):
        self.pool = pool
        self.dirs: list[Path] = []

    def env(self, endpoint) -> dict[str, str]:
        home = endpoint.directory / "home"
        uv = home / ".local" / "bin" / "uv"
        if not uv.exists():
            uv.parent.mkdir(parents=True, exist_ok=True)
            uv.write_text("#!/bin/sh\necho 'uv (test stub)'\n")
            uv.chmod(0o755)
        if endpoint.directory not in self.dirs:
            self.dirs.append(endpoint.directory)
        return {"HOME": str(home), MARKER: str(endpoint.directory)}

    def power_off_all(self) -> None:
        for directory in self.dirs:
            power_off(directory)


def isolate(pool) -> Homes:
    """Wrap ``pool`` (an SshdPool) in place; call ``.power_off_all()`` at teardown."""
    homes = Homes(pool)
    start, stop, remove = pool.start, pool.stop, pool.remove

    def start_with_home(endpoint):
        endpoint.sshd.prepare(endpoint.keys, env=homes.env(endpoint))
        return start(endpoint)

    def stop_and_power_off(endpoint):
        stop(endpoint)
        power_off(endpoint.directory)

    def remove_and_power_off(endpoint):
        stop(endpoint)
        power_off(endpoint.directory)
        remove(endpoint)

    pool.start, pool.stop, pool.remove = start_with_home, stop_and_power_off, remove_and_power_off
    return homes
