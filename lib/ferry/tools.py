"""Local programs ferry drives, and the one-line fix when one is missing."""

from __future__ import annotations

import os

from .errors import MissingToolError

DEBIAN_PACKAGES = {
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
    "sshd": "openssh-server",
    "rsync": "rsync",
    "tmux": "tmux",
    "git": "git",
}

# sshd lives in sbin, which is often not on an unprivileged PATH.
EXTRA_DIRS = ("/usr/sbin", "/usr/local/sbin", "/sbin")


def which(name: str) -> str | None:
    for directory in (*os.get_exec_path(), *EXTRA_DIRS):  # shutil.which, without importing shutil at start-up
        candidate = os.path.join(directory or ".", name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate):
            return candidate
    return None


def require(name: str, why: str | None = None) -> str:
    """The absolute path of ``name``, or an error naming the package that provides it."""
    path = which(name)
    if path is None:
        package = DEBIAN_PACKAGES.get(name, name)
        reason = f" ({why})" if why else ""
        raise MissingToolError(
            f"{name} is not installed{reason}",
            hint=f"install it: sudo apt-get install -y {package}  (macOS: brew install {package})",
        )
    return os.path.realpath(path)
