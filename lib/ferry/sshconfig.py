"""``~/.ferry/ssh_config``: a ``Host <name>`` entry per instance, so plain ``ssh``, ``rsync`` and editors reach it.

Each entry carries what ferry itself uses: the endpoint, ferry's key
(``IdentitiesOnly``), ferry's known_hosts with ``StrictHostKeyChecking yes``
and the ``HostKeyAlias`` the pin is filed under, so ``ssh exp1`` trusts
exactly the key ferry pinned. Launch and start write an instance's entry,
terminate removes it; the entries live in a JSON store beside the file and
the file is rendered whole from it (atomically). ``ferry ssh-config
--install`` adds one ``Include`` line to ``~/.ssh/config`` (shown first).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .store import JsonStore, write_atomic

if TYPE_CHECKING:
    from .handle import Box

def _store(home: Path) -> JsonStore:
    return JsonStore(home / "ssh_hosts.json", default=dict, mode=0o600, cache=True)


def path(home: Path) -> Path:
    return home / "ssh_config"


def render(entries: dict) -> str:
    lines = ["# Written by ferry (launch, start and terminate keep it current); edits here are overwritten.", ""]
    for name in sorted(entries):
        entry = entries[name]
        lines += [f"Host {name}", f"    HostName {entry['host']}", f"    Port {entry['port']}", f"    User {entry['user']}",
                  f"    IdentityFile {entry['key']}", "    IdentitiesOnly yes",
                  f"    UserKnownHostsFile {entry['known_hosts']}", f"    HostKeyAlias {entry['alias']}",
                  "    StrictHostKeyChecking yes", ""]
    return "\n".join(lines)


def _write(home: Path, entries: dict) -> None:
    write_atomic(path(home), render(entries).encode(), mode=0o600)


def remember(box: "Box") -> None:
    """Write (or move) the instance's entry."""
    from . import known_hosts

    ssh = box.instance.ssh
    if ssh is None:
        return
    home = box.settings.home
    with _store(home).edit() as entries:
        entries[box.name] = {"host": ssh.host, "port": ssh.port, "user": ssh.user, "key": str(box.key_path),
                             "known_hosts": str(known_hosts.path(home)), "alias": ssh.known_hosts_name,
                             "provider": box.provider, "id": box.instance.id}
        _write(home, entries)


def forget(box: "Box") -> None:
    home = box.settings.home
    with _store(home).edit() as entries:
        if entries.get(box.name, {}).get("id") in (None, box.instance.id):
            entries.pop(box.name, None)
        _write(home, entries)


def include_line(home: Path) -> str:
    """The line for ~/.ssh/config (an absolute path: OpenSSH expands ``~`` from the passwd entry, not $HOME)."""
    return f"Include {path(home)}"


def install(home: Path, user_config: Path) -> bool:
    """Add the Include line at the top of ``user_config`` (where OpenSSH reads it for every host); False if there."""
    line = include_line(home)
    text = user_config.read_text() if user_config.exists() else ""
    if any(existing.strip() == line for existing in text.splitlines()):
        return False
    user_config.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(user_config, (f"{line}\n\n{text}" if text else f"{line}\n").encode(), mode=0o600)
    return True
