"""ferry's one ``known_hosts`` (``~/.ferry/known_hosts``): pinned at first contact, enforced ever after.

OpenSSH reads it (``UserKnownHostsFile`` with ``StrictHostKeyChecking=yes``,
``accept-new`` only for an endpoint never pinned) and Fabric loads it with a
``RejectPolicy``. When a provider tells ferry an instance's host key (the
local provider, a cloud's API), ferry pins exactly that key, with no
trust-on-first-use at all. Entries are filed under the provider's address
(``[host]:port``); edits happen under a lock and land atomically.
"""

from __future__ import annotations

from pathlib import Path

from .records import SSHEndpoint
from .sshkey import KeyLine
from .store import locked, write_atomic


def path(home: Path | None = None) -> Path:
    file = (home or Path.home() / ".ferry") / "known_hosts"
    if not file.exists():
        file.parent.mkdir(parents=True, exist_ok=True)
        file.touch(mode=0o600)
    return file


def _lines_without(file: Path, name: str) -> list[str]:
    kept = []
    for line in file.read_text().splitlines():
        fields = line.split()
        if fields and name in fields[0].split(","):
            continue
        kept.append(line)
    return kept


def pin(endpoint: SSHEndpoint, key_line: str, home: Path | None = None) -> None:
    """Trust exactly this key for this endpoint (replacing any earlier pin)."""
    key = KeyLine.parse(key_line)
    file = path(home)
    with locked(file.with_name("known_hosts.lock")):  # concurrent launches edit it too
        lines = _lines_without(file, endpoint.known_hosts_name)
        lines.append(f"{endpoint.known_hosts_name} {key.bare}")
        write_atomic(file, ("\n".join(lines) + "\n").encode(), mode=0o600)


def forget(endpoint: SSHEndpoint, home: Path | None = None) -> None:
    """Drop the pin, e.g. when ferry terminated the instance and the address may be reused."""
    file = path(home)
    with locked(file.with_name("known_hosts.lock")):
        lines = _lines_without(file, endpoint.known_hosts_name)
        write_atomic(file, ("\n".join(lines) + "\n" if lines else "").encode(), mode=0o600)


def pinned(endpoint: SSHEndpoint, home: Path | None = None) -> str | None:
    """The pinned key line for this endpoint, or None."""
    for line in path(home).read_text().splitlines():
        fields = line.split()
        if len(fields) >= 3 and endpoint.known_hosts_name in fields[0].split(","):
            return f"{fields[1]} {fields[2]}"
    return None
