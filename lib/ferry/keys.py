"""The one ssh key ferry hands to clouds and uses for every connection."""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
from pathlib import Path
from typing import Iterator

from invoke import Context

from . import config
from .errors import ConfigError
from .tools import require


def private_key_path(ctx: Context | None = None) -> Path:
    """The configured key, or ferry's own under ~/.ferry/keys/ (generated on first use, mode 600)."""
    configured = config.settings(ctx).get("ssh_key")
    if configured:
        path = Path(configured).expanduser()
        if not path.is_file():
            raise ConfigError(
                f"ssh key {path} does not exist",
                hint="set ferry.ssh_key to an existing private key, or unset it to let ferry generate one",
            )
        if not Path(f"{path}.pub").is_file():
            raise ConfigError(f"public key {path}.pub is missing", hint=f"recreate it: ssh-keygen -y -f {path} > {path}.pub")
        return path
    path = config.ferry_home() / "keys" / "id_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        with locked(path.parent / ".lock"):
            if not path.exists():  # another launch may have made it while we waited
                _generate(path)
    return path


def _generate(path: Path) -> None:
    """Make the key under a temporary name and rename both halves in: never a half-written key."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    for leftover in (tmp, Path(f"{tmp}.pub")):
        leftover.unlink(missing_ok=True)
    proc = subprocess.run(
        [require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ferry", "-f", str(tmp)],
        stdin=subprocess.DEVNULL, capture_output=True, text=True,
    )
    if proc.returncode != 0:
        raise ConfigError(f"ssh-keygen could not make ferry's key: {proc.stderr.strip()}")
    os.chmod(tmp, 0o600)
    os.replace(f"{tmp}.pub", f"{path}.pub")
    os.replace(tmp, path)


@contextlib.contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """An exclusive advisory lock between ferry processes and threads (each open() is its own lock)."""
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def public_key(ctx: Context | None = None) -> str:
    return Path(f"{private_key_path(ctx)}.pub").read_text().strip()
