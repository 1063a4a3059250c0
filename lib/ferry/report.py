"""What a sync or download did: one record (SyncResult), and the lines people read about it.

Each line is logged at INFO (so a recipe shows the same lines as a task), or
handed to a ``say`` callback (``sync --watch`` stamps each line with the time).
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from typing import Callable

from .errors import cmd
from .fileset import FileSet
from .output import size as _human

log = logging.getLogger(__name__)


@dataclass
class SyncResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)
    kept_remote: list[str] = field(default_factory=list)  # sent before, changed on the instance since: kept
    kept_unsent: list[str] = field(default_factory=list)  # up: never sent by ferry, the instance has its own (other) copy
    kept_same: list[str] = field(default_factory=list)  # up: likewise, but the same as ours: nothing to say
    sent: list[str] = field(default_factory=list)  # up: the files sent
    replaced: list[str] = field(default_factory=list)  # up: remote files replaced, previous copy in replaced_dir
    replaced_dir: str | None = None  # up: absolute path on the instance
    skipped: list[str] = field(default_factory=list)  # download: newer local files kept
    backed_up: list[str] = field(default_factory=list)  # download: local files replaced, previous copy kept
    moved_aside: list[str] = field(default_factory=list)  # download: local files a directory took the place of
    conflicts: list[str] = field(default_factory=list)  # download: paths that could not come (another kind in the way)
    left: dict[str, tuple[int, int]] = field(default_factory=dict)  # download: environments/caches left (files, bytes)
    too_big: list[tuple[str, int]] = field(default_factory=list)  # download: held back by the size guard
    excluded: tuple[int, int] = (0, 0)  # download: left by ferry.download.exclude / --exclude (files, bytes)
    received: list[str] = field(default_factory=list)
    would_send: list[str] = field(default_factory=list)  # dry run
    backup_dir: str | None = None
    how: str = ""  # "unchanged", "changes", "full", "initial", "dry-run", "download"
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)
    fileset: FileSet | None = field(default=None, repr=False, compare=False)  # up: the set that was synced
    journal: bool = False  # up: the set came from the change journal (journal.py), not a scan of every file

    def summary(self, verb: str) -> str:
        text = f"{verb} {self.files} file{_s(self.files)} ({_human(self.bytes)}) in {self.seconds:.3f}s"
        held = sorted(self.fileset.held_secrets) if self.fileset is not None else []
        if held:
            names = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            text += (f"; held back {len(held)} file{_s(held)} that look{'s' if len(held) == 1 else ''} like secrets "
                     f"({names}): a !pattern in .ferryignore sends one")
        if self.fileset is not None and self.how != "unchanged":
            text += held_back(self.fileset)
        if self.deleted:
            text += f"; {'would delete' if self.dry_run else 'deleted'} {len(self.deleted)} on the instance"
        if self.kept_remote:
            text += f"; kept {len(self.kept_remote)} remote file{_s(self.kept_remote)} changed there since ferry sent it"
        if self.kept_unsent:
            text += (f"; {'would keep' if self.dry_run else 'kept'} the instance's copy of {len(self.kept_unsent)} "
                     f"file{_s(self.kept_unsent)} ferry never sent")
        if self.skipped:
            text += f"; kept {len(self.skipped)} newer local file{_s(self.skipped)}"
        if self.backed_up:
            text += (f"; {'would back up' if self.dry_run else 'backed up'} {len(self.backed_up)} replaced "
                     f"file{_s(self.backed_up)} in {self.backup_dir}")
        if self.moved_aside:
            text += f"; moved {len(self.moved_aside)} local file{_s(self.moved_aside)} aside into {self.backup_dir}"
        if self.conflicts:
            text += f"; {len(self.conflicts)} path{_s(self.conflicts)} could not come home"
        if self.too_big:
            total = sum(size for _, size in self.too_big)
            text += (f"; held back {len(self.too_big)} large file{_s(self.too_big)} ({_human(total)}) over the "
                     f"size guard (listed above; {cmd('download --all')} brings everything)")
        if self.left:
            groups = ", ".join(f"{group} ({files} file{_s(files)}, {_human(size)})"
                               for group, (files, size) in sorted(self.left.items(), key=lambda kv: -kv[1][1]))
            text += f"; left on the instance: {groups} (fetch one with --path)"
        if self.excluded[0]:
            text += f"; {self.excluded[0]} file{_s(self.excluded[0])} ({_human(self.excluded[1])}) excluded by config or --exclude"
        return text


def held_back(fs: FileSet) -> str:
    """What ferry's defaults and the filesystem kept out of the file set, with the way to send each group."""
    parts, negations = [], []
    for rule, paths in sorted(fs.held.items(), key=lambda kv: -len(kv[1])):
        shown = ", ".join(paths[:2]) + (", ..." if len(paths) > 2 else "")
        parts.append(f"{len(paths)} {'path' if rule.endswith('/') else 'file'}{_s(paths)} matching {rule} ({shown})")
        negations.append(f"!{rule}")
    text = ""
    if parts:
        text += f"; held back by ferry's defaults: {'; '.join(parts)}; to send them add {', '.join(negations)} to .ferryignore"
    if fs.specials:
        text += (f"; skipped {len(fs.specials)} special file{_s(fs.specials)} (FIFOs, sockets: nothing to copy): "
                 + ", ".join(fs.specials[:3]) + (", ..." if len(fs.specials) > 3 else ""))
    return text


def _s(n) -> str:
    n = n if isinstance(n, int) else len(n)
    return "" if n == 1 else "s"


def report(result: SyncResult, verb: str, say: Callable[[str], None] | None = None, verbose: bool = False) -> None:
    """Every file a download skipped or backed up, every remote file an upload kept, then the one-line summary.

    Logged at INFO (so a recipe shows the same lines as a task), or handed to
    ``say`` (``sync --watch`` stamps each line with the time).
    """
    line = say or log.info
    for path in result.skipped:
        line(f"kept newer local file: {path}")
    for path in result.backed_up:
        if result.dry_run:
            line(f"would replace {path} (previous copy to {result.backup_dir}/{path})")
        else:
            line(f"backed up {path} (previous copy in {result.backup_dir}/{path})")
    for path in result.moved_aside:
        line(f"moved local file {path} aside: a directory from the instance took its place "
             f"(the file is in {result.backup_dir}/{path})")
    for path in result.conflicts:
        line(f"could not bring {path}: a local directory of that name is in the way of the instance's file")
    for path, size in result.too_big[:10]:
        line(f"held back {path} ({_human(size)}): fetch it with {cmd('download --path ' + shlex.quote(path))}")
    if len(result.too_big) > 10:
        line(f"... and {len(result.too_big) - 10} more over the size guard: {cmd('download --all')} brings everything")
    for path in result.kept_remote:
        line(f"kept {path} on the instance: it changed there since ferry sent it")
    for path in result.kept_unsent:
        line(f"{'would keep' if result.dry_run else 'kept'} the instance's copy of {path}: ferry never sent it; "
             f"download it, or delete it there and run {cmd('sync --full')} to replace it")
    if verbose:  # the details a normal sync keeps to itself
        for path in result.sent:
            line(f"sent {path}")
        for path in result.replaced:
            line(f"replaced {path} on the instance (previous copy in {result.replaced_dir}/)")
        for path in result.kept_same:
            line(f"the instance already has {path}, the same as here: left as it is")
    for warning in result.warnings:
        line(f"warning: {warning}")
    line(result.summary(verb))
