"""``sync --credentials DIR``: secrets onto the instance without ever showing them to anyone.

DIR's files travel inside a tar stream on ssh's stdin, never on a command
line (where ``ps`` and shell history would see them) and never in a log.
On the instance they land in ``~/.ferry/credentials/`` (directory 700, files
600), replacing the previous upload as a whole, so a secret removed from DIR
does not linger there. Then one marked block at the top of ``~/.bashrc``
exports ``GOOGLE_APPLICATION_CREDENTIALS`` (when DIR holds
``gcp-service-account.json``) and sources DIR's ``.env`` (when it has one).
The block goes first because stock Debian/Ubuntu ``.bashrc`` files return
early for non-interactive shells, which is what ssh commands run in. A
repeated upload replaces the block, never adds a second. With a service
account and ``gcloud`` on the instance, ``gcloud auth
activate-service-account`` runs too (its output is discarded: it names the
account). The same lines also land in ``~/.ferry/credentials.sh`` for the
job runner to source: a tmux server started before the upload keeps its old
environment, so ``.bashrc`` alone would not reach jobs it starts.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from typing import TYPE_CHECKING

from .errors import FerryError, UsageError, cmd

if TYPE_CHECKING:
    from .handle import Box

GCP_KEY = "gcp-service-account.json"
DOTENV = ".env"
BEGIN = "# >>> ferry credentials >>>"
END = "# <<< ferry credentials <<<"

# Runs on the instance; it only ever sees file names, never file contents on its command line.
_INSTALL_SH = r"""
set -eu
umask 077
base="$HOME/.ferry"; d="$base/credentials"; new="$base/.credentials.new.$$"; old="$base/.credentials.old.$$"
mkdir -p "$base"
rm -rf "$new"; mkdir -m 700 "$new"
tar -xf - -C "$new"
chmod -R u=rwX,go= "$new"
if [ -e "$d" ]; then mv "$d" "$old"; fi
mv "$new" "$d"; rm -rf "$old"
chmod 700 "$d"
lines() {
  if [ -f "$d/gcp-service-account.json" ]; then
    printf '%s\n' 'export GOOGLE_APPLICATION_CREDENTIALS="$HOME/.ferry/credentials/gcp-service-account.json"'
  fi
  if [ -f "$d/.env" ]; then
    printf '%s\n' 'if [ -f "$HOME/.ferry/credentials/.env" ]; then set -a; . "$HOME/.ferry/credentials/.env"; set +a; fi'
  fi
}
# The same lines for non-shell readers (a job runner whose tmux server predates this upload).
if [ -n "$(lines)" ]; then lines > "$base/credentials.sh"; else rm -f "$base/credentials.sh"; fi
rc="$HOME/.bashrc"; tmp="$rc.ferry.$$"
{
  if [ -n "$(lines)" ]; then
    printf '%s\n' '# >>> ferry credentials >>>'
    printf '%s\n' '# written by `ferry sync --credentials`; replaced on every upload, edit outside this block'
    lines
    printf '%s\n' '# <<< ferry credentials <<<'
  fi
  if [ -f "$rc" ]; then
    awk 'BEGIN { skip = 0 }
         $0 == "# >>> ferry credentials >>>" { skip = 1; next }
         $0 == "# <<< ferry credentials <<<" { skip = 0; next }
         !skip { print }' "$rc"
  fi
} > "$tmp"
if [ -f "$rc" ]; then chmod "$(stat -c %a "$rc" 2>/dev/null || echo 644)" "$tmp"; else chmod 644 "$tmp"; fi
if [ -L "$rc" ]; then cat "$tmp" > "$rc"; rm -f "$tmp"; else mv -f "$tmp" "$rc"; fi
gcloud=none
if [ -f "$d/gcp-service-account.json" ] && command -v gcloud >/dev/null 2>&1; then
  if gcloud auth activate-service-account --key-file="$d/gcp-service-account.json" >/dev/null 2>&1; then
    gcloud=activated
  else
    gcloud=failed
  fi
fi
echo "gcloud=$gcloud"
echo "dir=$d"
"""


@dataclass
class CredentialsResult:
    files: int
    remote_dir: str
    gcp: bool
    dotenv: bool
    gcloud: str  # "activated", "failed", "none" (no service account, or no gcloud on the instance)

    def summary(self) -> str:
        parts = [f"uploaded {self.files} credential file{'s' if self.files != 1 else ''} to {self.remote_dir}"]
        if self.gcp:
            parts.append("GOOGLE_APPLICATION_CREDENTIALS set in ~/.bashrc")
        if self.dotenv:
            parts.append(".env sourced from ~/.bashrc")
        if self.gcloud == "activated":
            parts.append("gcloud service account activated")
        elif self.gcloud == "failed":
            parts.append("gcloud auth activate-service-account failed (run it on the instance to see why)")
        return "; ".join(parts)


def _bundle(directory: Path) -> tuple[bytes, int]:
    """DIR as a tar in memory: regular files (symlinks followed) 600, directories 700, owner root."""
    buf = io.BytesIO()
    count = 0
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for dirpath, dirnames, filenames in os.walk(directory, followlinks=False):
            dirnames.sort()
            rel_dir = os.path.relpath(dirpath, directory)
            for name in sorted(dirnames):
                info = tarfile.TarInfo(os.path.normpath(os.path.join(rel_dir, name)))
                info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o700, int(time.time())
                tar.addfile(info)
            for name in sorted(filenames):
                full = os.path.join(dirpath, name)
                try:
                    st = os.stat(full)
                except OSError:
                    continue  # a dangling link
                if not stat.S_ISREG(st.st_mode):
                    continue
                info = tarfile.TarInfo(os.path.normpath(os.path.join(rel_dir, name)))
                info.size, info.mode, info.mtime = st.st_size, 0o600, int(st.st_mtime)
                with open(full, "rb") as fh:
                    tar.addfile(info, fh)
                count += 1
    return buf.getvalue(), count


def upload(box: "Box", directory: str | os.PathLike) -> CredentialsResult:
    """Replace ``~/.ferry/credentials/`` on the instance with DIR's files and wire them into ``~/.bashrc``."""
    path = Path(directory).expanduser()
    if not path.is_dir():
        raise UsageError(
            f"no such credentials directory: {directory}",
            hint="give a directory holding e.g. gcp-service-account.json and/or .env: --credentials ~/secrets/proj",
        )
    try:
        data, count = _bundle(path)
    except OSError as exc:
        raise FerryError(f"cannot read {path}: {exc.strerror or exc}", hint="check the directory's permissions") from exc
    proc = box.remote.run(_INSTALL_SH, input=data, check=False)
    if proc.returncode != 0:
        detail = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise FerryError(
            f"could not install credentials on {box.name} (exit {proc.returncode})"
            + (f": {detail[-1]}" if detail else ""),
            hint=f"check space and permissions in ~/.ferry on the instance: {cmd(f'ssh --name {box.name}')}",
        )
    facts = dict(l.split("=", 1) for l in proc.stdout.decode(errors="replace").splitlines() if "=" in l)
    return CredentialsResult(
        files=count,
        remote_dir=facts.get("dir", "~/.ferry/credentials"),
        gcp=(path / GCP_KEY).is_file(),
        dotenv=(path / DOTENV).is_file(),
        gcloud=facts.get("gcloud", "none"),
    )
