"""The one ssh key ferry hands to clouds and uses for every connection, and the one parser of key lines.

The key is the configured ``ferry.ssh_key`` or ferry's own
``~/.ferry/keys/id_ed25519``, generated on first use (mode 600, under a
lock, both halves renamed into place so no launch ever sees half a key).

:class:`KeyLine` reads an OpenSSH public key line (``type base64 [comment]``);
every provider that registers a key and every host-key pin compares keys
through it, by type and blob, never by the comment.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

from .errors import ConfigError
from .store import locked
from .tools import require


class KeyLine(NamedTuple):
    """``ssh-ed25519 AAAA... comment`` as its parts."""

    type: str
    body: str  # the base64 blob: what identifies the key
    comment: str = ""

    @classmethod
    def parse(cls, text: str | None) -> "KeyLine":
        parts = (text or "").split(None, 2)
        if len(parts) < 2:
            raise ConfigError("not an OpenSSH public key line", hint="check ferry.ssh_key and its .pub file")
        return cls(parts[0], parts[1], parts[2].strip() if len(parts) > 2 else "")

    @property
    def bare(self) -> str:
        """Type and blob, without the comment (what clouds store and known_hosts holds)."""
        return f"{self.type} {self.body}"

    def blob(self) -> bytes:
        import base64
        import binascii

        try:
            return base64.b64decode(self.body, validate=True)
        except (binascii.Error, ValueError):
            raise ConfigError("the public key's base64 is damaged", hint="check ferry.ssh_key and its .pub file") from None

    def fingerprint(self) -> str:
        """``SHA256:...`` as ``ssh-keygen -l`` prints it."""
        import base64
        import hashlib

        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob()).digest()).decode().rstrip("=")

    def same_key(self, other: "KeyLine | str | None") -> bool:
        try:
            other = other if isinstance(other, KeyLine) else KeyLine.parse(other)
        except ConfigError:
            return False
        return self.body == other.body


def private_key_path(configured: str | None = None, home: Path | None = None) -> Path:
    """The configured key, or ferry's own under ``home/keys/`` (generated on first use, mode 600)."""
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
    path = (home or Path.home() / ".ferry") / "keys" / "id_ed25519"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        os.chmod(path.parent, 0o700)
        with locked(path.parent / ".lock"):
            if not path.exists():  # another launch may have made it while we waited
                _generate(path)
    return path


def public_key(private_key: Path) -> str:
    return Path(f"{private_key}.pub").read_text().strip()


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
        raise ConfigError(f"ssh-keygen could not make ferry's key: {proc.stderr.strip()}",
                          hint=f"check that {path.parent} is writable, or set ferry.ssh_key to a key of yours")
    os.chmod(tmp, 0o600)
    os.replace(f"{tmp}.pub", f"{path}.pub")
    os.replace(tmp, path)
