"""The one ssh key ferry hands to clouds and uses for every connection."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

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
        subprocess.run(
            [require("ssh-keygen"), "-q", "-t", "ed25519", "-N", "", "-C", "ferry", "-f", str(path)],
            check=True, stdin=subprocess.DEVNULL,
        )
    os.chmod(path, 0o600)
    return path


def public_key(ctx: Context | None = None) -> str:
    return Path(f"{private_key_path(ctx)}.pub").read_text().strip()
