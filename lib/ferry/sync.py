"""Moving files: the project's file set up to the instance, results back down.

Up: one recursive rsync whose excludes reproduce git's view of the project
(tracked plus untracked-but-not-ignored), because rsync walking the tree with
filters is ~3.5x faster on a no-op than feeding it ``--files-from``
(PERFORMANCE.md). The exclude list is git's own list of ignored paths,
collapsed to directories, so ignored venvs and weights cost one line each.
Outside git the default exclude list stands in for .gitignore.

Down: rsync from the workdir that never deletes a local file and never
overwrites a local file that is newer than the remote copy.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Sequence

from invoke import Context

from . import config
from .errors import FerryError, RemoteCommandError, UsageError
from .instance import Instance
from .lifecycle import workdir
from .remote import Remote
from .tools import require

# Never worth shipping to a GPU box: environments, caches, build output, weights, secrets.
DEFAULT_EXCLUDES = (
    ".git/", ".ferry/", ".venv/", "venv/", ".env/", "env/", "__pycache__/", "*.pyc",
    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".ipynb_checkpoints/", ".tox/", ".nox/",
    "node_modules/", "build/", "dist/", "*.egg-info/", ".DS_Store",
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "*.gguf", "*.onnx",
    "wandb/", "checkpoints/", "outputs/",
    ".env", "*.pem", "*.key", "id_rsa*", "id_ed25519*", ".netrc", "credentials.json",
)

# Inside git the ignore rules come from git itself; these are never sent regardless.
ALWAYS_EXCLUDE = (".git", ".ferry/")

RSYNC_UP = ["-rlpt", "--prune-empty-dirs", "--protect-args", "--stats"]
RSYNC_DOWN = ["-rlpt", "--update", "--protect-args", "--stats", "--info=skip1", "--out-format=%i %n"]


@dataclass
class SyncResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    skipped: list[str] = field(default_factory=list)
    received: list[str] = field(default_factory=list)

    def summary(self, verb: str) -> str:
        text = f"{verb} {self.files} file{'s' if self.files != 1 else ''} ({_human(self.bytes)}) in {self.seconds:.2f}s"
        if self.skipped:
            text += f"; kept {len(self.skipped)} newer local file{'s' if len(self.skipped) != 1 else ''}"
        return text


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


# -- the file set ---------------------------------------------------------------
def in_git(project: Path) -> bool:
    return any((d / ".git").exists() for d in (project, *project.parents))


def _rsync_literal(path: str) -> str:
    """An rsync pattern matching exactly ``path`` (escape wildcards only when rsync would see them)."""
    if any(ch in path for ch in "*?[\\"):
        return re.sub(r"([*?\[\\])", r"\\\1", path)
    return path


def exclude_rules(project: Path) -> list[str]:
    """Anchored rsync exclude patterns that turn 'every file' into the project's file set."""
    if in_git(project):
        git = require("git", "the project is a git repository")
        proc = subprocess.run(
            [git, "-c", "core.quotePath=off", "ls-files", "-z", "--others", "--ignored",
             "--exclude-standard", "--directory", "--no-empty-directory"],
            cwd=project, capture_output=True,
        )
        if proc.returncode != 0:
            raise FerryError(f"git could not list ignored files: {proc.stderr.decode(errors='replace').strip()}")
        rules = ["/" + _rsync_literal(p) for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]
        return [*ALWAYS_EXCLUDE, *rules]
    return list(DEFAULT_EXCLUDES)


def _exclude_file(rules: Sequence[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="ferry-excludes-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(r.encode("utf-8", "surrogateescape") + b"\0" for r in rules))
    return path


def _parse_stats(text: str) -> tuple[int, int]:
    files = re.search(r"Number of regular files transferred: ([\d,]+)", text)
    size = re.search(r"Total transferred file size: ([\d,]+)", text)
    as_int = lambda m: int(m.group(1).replace(",", "")) if m else 0  # noqa: E731
    return as_int(files), as_int(size)


def _rsync(argv: list[str], remote: Remote) -> subprocess.CompletedProcess:
    proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
    if proc.returncode == 255 or (proc.returncode == 12 and b"connection unexpectedly closed" in proc.stderr):
        raise remote.classify_failure(proc.stderr.decode(errors="replace"))
    if proc.returncode not in (0, 24):  # 24: a file vanished while sending, which is fine
        lines = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise RemoteCommandError(f"rsync failed (exit {proc.returncode}): {lines[0] if lines else 'no message'}")
    return proc


# -- up ----------------------------------------------------------------------------
def sync_up(ctx: Context | None, instance: Instance, dry_run: bool = False) -> SyncResult:
    """Send the project's file set to ``<workdir_root>/<project>`` in one rsync."""
    rsync = require("rsync", "ferry syncs files with rsync")
    project = config.project_dir(ctx)
    remote = Remote(ctx, instance)
    target = workdir(ctx, instance)
    started = time.monotonic()
    excludes = _exclude_file(exclude_rules(project))
    try:
        argv = [
            rsync, *RSYNC_UP, "--from0", f"--exclude-from={excludes}",
            "-e", remote.rsync_rsh(),
            f"--rsync-path=mkdir -p {shlex.quote(target)} && rsync",
            *(["--dry-run"] if dry_run else []),
            f"{project}/", f"{remote.rsync_target}{target}/",
        ]
        proc = _rsync(argv, remote)
    finally:
        os.unlink(excludes)
    files, size = _parse_stats(proc.stdout.decode(errors="replace"))
    return SyncResult(files=files, bytes=size, seconds=time.monotonic() - started)


# -- down --------------------------------------------------------------------------
def _check_relative(path: str) -> str:
    clean = PurePosixPath(path)
    if clean.is_absolute() or ".." in clean.parts or not str(clean).strip() or str(clean) == ".":
        raise UsageError(
            f"bad download path {path!r}",
            hint="name a path inside the instance's workdir, relative to it (e.g. outputs/run1)",
        )
    return str(clean)


def download(ctx: Context | None, instance: Instance, paths: Sequence[str] = (), dry_run: bool = False) -> SyncResult:
    """Pull the workdir (or paths in it) into the project; never delete, never clobber newer local files."""
    rsync = require("rsync", "ferry downloads files with rsync")
    project = config.project_dir(ctx)
    remote = Remote(ctx, instance)
    source = workdir(ctx, instance)
    wanted = [_check_relative(p) for p in paths]
    if wanted:
        probe = "cd " + shlex.quote(source) + " && for p in " + " ".join(shlex.quote(p) for p in wanted) + \
            '; do [ -e "$p" ] || printf "%s\\0" "$p"; done'
        proc = remote.run(probe, check=False)
        missing = [p for p in proc.stdout.decode(errors="replace").split("\0") if p]
        if proc.returncode != 0 and not missing:
            raise FerryError(
                f"{instance.name} has no workdir for this project yet ({source})",
                hint="send the project first: inv sync",
            )
        if missing:
            raise FerryError(
                f"not on {instance.name}: {', '.join(missing)}",
                hint=f"list what is there: inv ssh --name {instance.name}  (then ls {shlex.quote(source)})",
            )
        sources = [f"{remote.rsync_target}{source}/./{p}" for p in wanted]
        extra = ["--relative"]
    else:
        sources = [f"{remote.rsync_target}{source}/"]
        extra = []
    started = time.monotonic()
    excludes = _exclude_file([".ferry/", ".git/"])
    try:
        argv = [rsync, *RSYNC_DOWN, *extra, "--from0", f"--exclude-from={excludes}", "-e", remote.rsync_rsh(),
                *(["--dry-run"] if dry_run else []), *sources, f"{project}/"]
        proc = _rsync(argv, remote)
    finally:
        os.unlink(excludes)
    out = proc.stdout.decode("utf-8", "replace")
    files, size = _parse_stats(out)
    received = [line[12:] for line in out.splitlines() if line.startswith(">f") and len(line) > 12]
    skipped = [line[: -len(" is newer")] for line in out.splitlines() if line.endswith(" is newer")]
    return SyncResult(files=files, bytes=size, seconds=time.monotonic() - started, skipped=skipped, received=received)
