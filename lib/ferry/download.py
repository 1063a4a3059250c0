"""Results home: rsync from the workdir (or named paths in it) that never loses a local file.

A download never deletes a local file, keeps a local file that is newer,
and replaces an older one only after keeping its previous content under
``.ferry/backups/<stamp>/`` (or ``<--backup-dir>/<stamp>/``): a new directory
per download, so no backup ever overwrites an earlier one. Every file it
skipped or backed up is reported (sync.report), and the summary is logged.
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Sequence

from . import rsync
from .errors import FerryError, UsageError, cmd
from .rsync import RSYNC_FLAGS
from .report import SyncResult, report
from .rsync import progress_wanted, stamp

if TYPE_CHECKING:
    from .handle import Box

log = logging.getLogger(__name__)

ALWAYS_EXCLUDE_DOWN = ("/.ferry/", ".git")  # never pulled, even with --all


def check_relative(path: str) -> str:
    clean = PurePosixPath(path)
    if clean.is_absolute() or ".." in clean.parts or not str(clean).strip() or str(clean) == ".":
        raise UsageError(
            f"bad download path {path!r}",
            hint="name a path inside the instance's workdir, relative to it (e.g. outputs/run1)",
        )
    return str(clean)


def _check_pattern(pattern: str, flag: str) -> str:
    if not pattern or "\0" in pattern or "\n" in pattern:
        raise UsageError(f"bad {flag} pattern {pattern!r}", hint=f"give a pattern such as {flag} '*.json'")
    return pattern


def download_rules(paths: Sequence[str], include: Sequence[str], exclude: Sequence[str], everything: bool) -> list[str]:
    """rsync filter rules for a download: user includes win, then user excludes, then the default list."""
    rules = [f"- {p}" for p in ALWAYS_EXCLUDE_DOWN]
    rules += [f"+ {_check_pattern(p, '--include')}" for p in include]
    rules += [f"- {_check_pattern(p, '--exclude')}" for p in exclude]
    return rules


def download(
    box: "Box",
    paths: Sequence[str] = (),
    dry_run: bool = False,
    force: bool = False,
    backup_dir: str | os.PathLike | None = None,
    everything: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: bool | None = None,
    announce: bool = True,
    dest: str | os.PathLike | None = None,
) -> SyncResult:
    """Pull the workdir (or paths in it) into the project. Never deletes a local file.

    Without ``paths`` it brings what the run produced (results.py): files
    new or changed on the instance since ferry sent them, less environments
    and caches, up to the size guard. Named ``paths`` come whole; ``everything``
    brings the whole workdir. A local file that differs and is newer is kept
    (``result.skipped``) unless ``force``; one that is replaced has its previous
    content kept under a new ``<stamp>/`` directory under ``backup_dir``
    (default ``.ferry/backups/``), so no earlier backup is ever overwritten.
    ``include``/``exclude`` add to ``ferry.download.include``/``exclude``
    (gitignore syntax) for the default, and are rsync patterns otherwise.
    ``dest`` puts the files there instead of the project (a fleet's
    ``<member>/``); backups still go under the project's ``.ferry/backups/``.
    """
    project = Path(dest) if dest else box.project_dir
    if dest:
        project.mkdir(parents=True, exist_ok=True)
    remote = box.remote
    source = box.workdir
    instance = box.instance
    wanted = [check_relative(p) for p in paths]
    started = time.monotonic()
    produced = None
    if not wanted and not everything:
        produced = _what_was_produced(box, include, exclude)
        include, exclude = (), ()  # applied to the plan already
    rules = download_rules(wanted, include, exclude, everything)
    if wanted:
        probe = "cd " + shlex.quote(source) + " && for p in " + " ".join(shlex.quote(p) for p in wanted) + \
            '; do [ -e "$p" ] || [ -L "$p" ] || printf "%s\\0" "$p"; done'
        proc = remote.run(probe, check=False)
        missing = [p for p in proc.stdout.decode(errors="replace").split("\0") if p]
        if proc.returncode != 0 and not missing:
            raise FerryError(
                f"{instance.name} has no workdir for this project yet ({source})",
                hint=f"send the project first: {cmd('sync')}",
            )
        if missing:
            raise FerryError(
                f"not on {instance.name}: {', '.join(missing)}",
                hint=f"list what is there: {cmd(f'ssh --name {instance.name}')}  (then ls {shlex.quote(source)})",
            )
        sources = [f"{remote.rsync_target}{source}/./{p}" for p in wanted]
        extra = ["--relative"]
    else:
        sources = [f"{remote.rsync_target}{source}/"]
        extra = []
    # A new directory per download, also inside a --backup-dir given again: rsync overwrites a file already
    # in its backup dir, and that file is the only copy left of the user's original.
    backups = (Path(backup_dir).expanduser() if backup_dir else Path(".ferry") / "backups") / stamp()
    if not backups.is_absolute():
        backups = box.project_dir / backups
    if dest:
        backups = backups.with_name(f"{backups.name}-{box.name}")  # members download at once: one directory each
    rule_file = rsync.rule_file(rules)
    listing = rsync.rule_file(produced.fetch) if produced is not None else None
    conflicts: list[str] = []
    try:
        # --modify-window=-1 compares mtimes to the nanosecond: a result rewritten within the same second
        # at the same size is still seen as changed (rsync's quick check compares whole seconds).
        argv = [rsync.rsync_binary(), *RSYNC_FLAGS, *extra, "--from0", f"--filter=merge {rule_file}", "-e",
                remote.rsync_rsh(), "--modify-window=-1", "--info=skip1", "--out-format=%i %n", "--backup",
                f"--backup-dir={backups}"]
        if not force:
            argv.append("--update")
        if dry_run:
            argv.append("--dry-run")
        if listing is not None:
            argv.append(f"--files-from={listing}")
        argv += [*sources, f"{project}/"]
        if produced is not None and not produced.fetch:
            out = ""  # nothing new on the instance: no transfer at all
        else:
            out = rsync.run(argv, remote, progress_wanted(progress) and not dry_run, "receiving", partial=conflicts)
    finally:
        os.unlink(rule_file)
        if listing is not None:
            os.unlink(listing)
    result = SyncResult(how="download", dry_run=dry_run, conflicts=conflicts)
    if produced is not None:
        result.left, result.too_big, result.excluded = produced.left, produced.too_big, produced.excluded
    result.files, result.bytes = rsync.parse_stats(out)
    for line in out.splitlines():
        if line.startswith(">f") and len(line) > 12:
            result.received.append(rsync.unescape(line[12:]))
            if dry_run and line[2:11] != "+++++++++":
                result.backed_up.append(rsync.unescape(line[12:]))
        elif line.endswith(" is newer"):
            result.skipped.append(rsync.unescape(line[: -len(" is newer")]))
    if not dry_run:  # what rsync moved into this download's backup dir is everything it replaced or moved aside
        result.backed_up, result.moved_aside = _backed_up(backups, project)
    if result.backed_up or result.moved_aside:  # (a dry run names where the backups would go)
        try:
            result.backup_dir = str(backups.relative_to(project))
        except ValueError:
            result.backup_dir = str(backups)
    result.seconds = time.monotonic() - started
    if announce:
        report(result, "would fetch" if dry_run else "downloaded")
    if not backup_dir and not dry_run and (result.backed_up or result.moved_aside):
        _prune_backups(backups.parent)
    if conflicts:
        first = conflicts[0]
        raise FerryError(
            f"{len(conflicts)} path{'s' if len(conflicts) != 1 else ''} could not come home: "
            + ", ".join(conflicts[:5]) + (", ..." if len(conflicts) > 5 else "")
            + " (something of another kind is in the way here: a directory where the instance has a file, or back)",
            hint=f"move it aside and fetch it again: mv {shlex.quote(first)} {shlex.quote(first + '.local')} && "
                 + cmd(f"download --path {shlex.quote(first)}"),
        )
    return result


def _what_was_produced(box: "Box", include: Sequence[str], exclude: Sequence[str]):
    """The default download's plan: what the run produced, shaped by config and flags, under the size guard."""
    from . import results
    from .manifest import remote_key

    configured = dict(box.settings.data.get("download") or {})
    sent, found = results.listing(box, f".ferry/manifests/{remote_key(box.settings.project, box.workdir)}")
    if not found:
        raise FerryError(f"{box.name} has no workdir for this project yet ({box.workdir})",
                         hint=f"send the project first: {cmd('sync')}")
    return results.plan(sent, found, results.parse_size(configured.get("max_size") or results.DEFAULT_MAX_SIZE),
                        include=[*(configured.get("include") or []), *include],
                        exclude=[*(configured.get("exclude") or []), *exclude])


def _backed_up(backups: Path, project: Path) -> tuple[list[str], list[str]]:
    """(replaced, moved aside) local files now in ``backups``: moved aside when a directory took their place."""
    if not backups.is_dir():
        return [], []
    replaced, moved = [], []
    for path in sorted(backups.rglob("*")):
        if path.is_dir() and not path.is_symlink():
            continue
        rel = str(path.relative_to(backups))
        here = project / rel
        (moved if here.is_dir() and not here.is_symlink() else replaced).append(rel)
    return replaced, moved


KEEP_BACKUPS = 10  # download backup directories kept under .ferry/backups/ (the newest)


def _prune_backups(root: Path) -> None:
    """Keep the newest KEEP_BACKUPS backup directories; say in one line what went and what is kept."""
    import shutil

    from .output import size

    stamps = sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
    old = stamps[:-KEEP_BACKUPS]

    def weight(path: Path) -> int:
        return sum(f.lstat().st_size for f in path.rglob("*") if f.is_file() or f.is_symlink())

    if not old:
        return
    freed = sum(weight(p) for p in old)
    for path in old:
        shutil.rmtree(path, ignore_errors=True)
    kept = sum(weight(p) for p in stamps[-KEEP_BACKUPS:])
    log.info("removed the %d oldest download backup%s (%s); %d kept in %s (%s)", len(old), "s" if len(old) != 1 else "",
             size(freed), min(len(stamps), KEEP_BACKUPS), root.name, size(kept))
