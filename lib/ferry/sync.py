"""Moving files: the project's file set up to the instance, results back down.

Up, fastest path first:

* nothing changed: a fresh stat scan of the file set (fileset.py) equals the
  local record of the last successful sync to this instance (manifest.py),
  so no network at all (~20 ms for 5,000 files, against ~100 ms for even a
  no-op rsync). In a large project the change journal's daemon is asked
  instead of scanning (journal.py): when it saw nothing change, not even the
  record is read, and when it saw a few paths change, only those are
  looked at and compared;
* a few files changed: only those go, in one rsync fed the short list, and
  files that are gone locally are deleted remotely (safely, see manifest.py);
* the first sync from this checkout: if the workdir is empty, each file the
  scan vets goes straight into one uncompressed tar stream (the floor for a
  first copy) into a staging directory, put in place with the record once
  whole (firstcopy.py);
* otherwise (``--full``, a workdir that holds files, or someone else synced
  in between): the instance's record is read, then an empty workdir is filled
  by one tar stream, and an existing one by one recursive rsync whose
  excludes reproduce git's file set exactly, which is ~3.5x faster than
  ``--files-from`` on a large tree.

Nothing on the instance is ever deleted unless ferry sent it and it is gone
locally (``--delete=never`` turns even that off); rsync never runs with
``--delete``. A run's outputs (any remote file ferry never sent) are never
replaced either: only files in the instance's record of what ferry sent go
the ordinary way; every other file goes with ``--ignore-existing``, so a
copy the instance already has is kept and reported, never overwritten (else
``download`` mid-run, then ``sync``, would put the stale copy back over the
job's final one). Such kept files are remembered in the local record with
their local stat, so a no-op stays free of network and each is reported
once per local change. Whatever
a sync does replace remotely is first moved aside by rsync's ``--backup``
into ``~/.ferry/replaced/<stamp>/`` on the instance.

Down is download.py.

The rsync and tar processes themselves are rsync.py's; every record of
what was sent is manifest.py's. Every transfer shows a progress bar on a
terminal once it has run a second, and every call returns a SyncResult whose
summary says files, bytes, seconds (and is logged, so any caller shows it).
"""

from __future__ import annotations

import logging
import os
import shlex
import time
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, AbstractSet, Iterable, Sequence

from . import fileset, journal, rsync
from .errors import FerryError, UsageError, cmd
from .fileset import DEFAULT_EXCLUDES, FileSet, Stat
from .localrecord import COMPACT_AFTER, LocalRecord
from .manifest import STALE, ManifestChanged, NoPython, RemoteManifest, Update, cache_path, local_key, new_token, remote_key
from .report import SyncResult, _s, report
from .rsync import ITEM_FORMAT, RSYNC_FLAGS, Sent, progress_wanted, stamp
if TYPE_CHECKING:
    from concurrent.futures import Future

    from .firstcopy import FirstCopy
    from .handle import Box

log = logging.getLogger(__name__)

__all__ = ["upload", "report", "SyncResult", "DEFAULT_EXCLUDES", "DELETE_MODES", "progress_wanted", "stamp"]

DELETE_MODES = ("sent", "never")
LIST_LIMIT = 1000  # changed files sent as an explicit list; more than this and the filtered tree walk is cheaper
REPLACED_DIR = ".ferry/replaced"  # on the instance, under its home: what a sync replaced, one dir per sync
KEEP_REPLACED = 10  # the newest backup dirs kept there; older ones go (they would grow without bound)


# -- up --------------------------------------------------------------------------------------------
class _Up:
    """One upload: the scan, the local record, the instance's record, and the transfers between them."""

    def __init__(self, box: "Box", delete: str, progress: bool, compare: bool = False):
        instance = box.instance
        self.instance = instance
        self.project = box.project_dir
        self.remote = box.remote
        self.target = box.workdir
        self.delete = delete
        self.progress = progress
        self.record = LocalRecord.load(cache_path(self.project, local_key(instance, self.target)))
        self.kept = self.record.kept if self.record.valid else {}
        self.manifest = RemoteManifest(self.remote, self.target, remote_key(box.settings.project, self.target))
        # A sync that will compare with the instance (the first, --full, a dry run) reads its record meanwhile:
        # that exec waits on the network while the scan below keeps the CPU busy.
        self._prefetched: "Future | None" = None
        if compare or not self.record.valid:
            from concurrent.futures import ThreadPoolExecutor

            pool = ThreadPoolExecutor(max_workers=1)
            self._prefetched = pool.submit(self.manifest.fetch)
            pool.shutdown(wait=False)  # its one thread ends with the fetch
        known: AbstractSet[str] = frozenset()
        if self.record.valid:
            known = self.record.files.keys() | self.kept.keys() if self.kept else self.record.files.keys()
        # A first sync streams each file as the scan finds it, into the workdir if that is empty (firstcopy.py).
        self.first: "FirstCopy | None" = None
        if self._prefetched is not None and not compare and rsync.gnu_tar():
            from . import firstcopy

            self.first = firstcopy.FirstCopy(self.remote, self.project, self.target, self._prefetched, progress)
        def full_scan() -> FileSet:
            return fileset.scan(self.project, known, self.record.spec_hash,
                                previous=self.record.files if self.record.valid else None,
                                on_file=self.first.add if self.first is not None else None)

        # In a large project a daemon may know what changed since the last sync (journal.py): no full scan then.
        self.answer: "journal.Answer | None" = None
        self.journaled, self._full_scan = False, full_scan
        try:
            if self.first is None and not compare:
                self.fs, self.answer, self.journaled = journal.scan(self.project, self.record, full_scan)
            else:
                self.fs = full_scan()
        except BaseException:
            if self.first is not None:
                self.first.abort()
            raise
        if self.first is not None:
            self.first.scanned()
        home = (instance.remote_home or str(PurePosixPath(self.target).parent)).rstrip("/")
        self.replaced_dir = f"{home}/{REPLACED_DIR}/{stamp()}"

    @property
    def rsync_path(self) -> str:
        """The remote rsync, after making the workdir and pruning all but the newest backups of replaced files."""
        replaced_root = shlex.quote(str(PurePosixPath(self.replaced_dir).parent))
        prune = f"(cd {replaced_root} 2>/dev/null && ls -1 | head -n -{KEEP_REPLACED} | xargs -r -d '\\n' rm -rf --)"
        return f"mkdir -p {shlex.quote(self.target)} && {{ {prune}; true; }} && rsync"

    def _maybe(self) -> set[str] | None:
        """The paths that may differ between the local record and now: after the change journal's answer, the
        touched ones and the record's own few (kept, extra); None (any) after a full scan."""
        if self.fs.touched is None:
            return None
        return self.fs.touched.union(self.record.extra, self.record.kept)

    def _split(self, previously: dict[str, Stat]) -> tuple[dict[str, Stat], dict[str, Stat]]:
        """(to delete remotely, to keep listing as sent): only files gone from the local disk count as deleted."""
        maybe = self._maybe()
        pool = previously.items() if maybe is None else [(p, previously[p]) for p in maybe if p in previously]
        gone = {p: s for p, s in pool if p not in self.fs.files and self.fs.gone(p, s[2])}
        if self.delete == "never":
            return {}, gone
        return gone, {}

    def _sent(self, kept: AbstractSet[str], extra: dict[str, Stat]) -> dict[str, Stat]:
        """The instance's new record: the file set less what it kept of its own, plus ``extra``."""
        files = {p: s for p, s in self.fs.files.items() if p not in kept} if kept else self.fs.files
        return {**files, **extra}

    def _commit(self, token: str, extra: dict[str, Stat], kept: dict[str, Stat]) -> None:
        """Save the local record, kept list and all, in one atomic write."""
        rec, maybe = self.record, self._maybe()
        files = {p: s for p, s in self.fs.files.items() if p not in kept} if kept else self.fs.files
        rec.token, rec.spec_hash, rec.files, rec.extra, rec.kept = token, self.fs.spec_hash, files, extra, kept
        rec.save(maybe)
        self.kept = kept

    def _finish(self, result: SyncResult, done: Sent) -> None:
        result.files, result.bytes = done.files, done.bytes
        result.sent = sorted(done.sent)
        differ = set(rsync.differing(done.kept, self.remote, self.project, self.target)) if done.kept else set()
        result.kept_unsent = sorted(p for p in done.kept if p in differ)
        result.kept_same = sorted(p for p in done.kept if p not in differ)
        result.replaced = done.replaced
        result.replaced_dir = self.replaced_dir if done.replaced else None

    # the paths ----------------------------------------------------------------------------------
    def unchanged(self) -> bool:
        rec = self.record
        if not rec.valid or (self.delete != "never" and rec.extra):
            return False
        if self.fs.touched is not None:  # the set was made from the record: only these may differ
            return all(self.fs.files.get(p) == self.kept.get(p, rec.files.get(p)) for p in self.fs.touched)
        return self.fs.files == ({**rec.files, **self.kept} if self.kept else rec.files)

    def changes(self, result: SyncResult) -> None:
        """Send what changed since the record, delete what vanished; ManifestChanged if the record is stale."""
        rec = self.record
        kept = {p: s for p, s in self.kept.items() if self.fs.files.get(p) == s}  # still as it was when kept
        maybe = self._maybe()
        pool = self.fs.files.items() if maybe is None else [(p, self.fs.files[p]) for p in maybe if p in self.fs.files]
        changed = {p: s for p, s in pool if rec.files.get(p) != s and p not in kept}
        sent_before = {**rec.extra, **rec.files}  # the instance's record, as of rec.token
        to_delete, extra = self._split(sent_before)
        token = new_token()
        written = False
        if to_delete:  # before sending: a file that became a directory (or back) must make way first
            written = not changed
            update = self._update(token, self._sent(kept.keys(), extra), sent_before) if written else None
            if not self._delete(to_delete, rec.token, result, extra, then_write=update):
                written = False
        if len(changed) > LIST_LIMIT:  # a branch switch: past this, walking the tree beats a long list
            done = self._send(None, sent_before)
        elif changed:
            done = self._send(sorted(changed), sent_before)
        else:
            done = Sent()
        kept = {p: s for p, s in kept.items() if p not in done.tried_new}
        kept.update((p, self.fs.files[p]) for p in done.kept)
        self._finish(result, done)
        if not written:
            self.manifest.write(self._update(token, self._sent(kept.keys(), extra), sent_before), expect=rec.token)
        self._commit(token, extra, kept)

    def _update(self, token: str, now: dict[str, Stat], before: dict[str, Stat]) -> Update:
        """The instance's record becomes ``now``: appended to by the difference while that is small and the
        local record is appended to as well (both are rewritten whole together, every COMPACT_AFTER syncs)."""
        rec = self.record
        if rec.token and len(rec.token) == len(token) and rec.deltas < COMPACT_AFTER - 1:
            maybe = self._maybe()
            if maybe is None:
                changed = {p: s for p, s in now.items() if before.get(p) != s}
                gone = [p for p in before if p not in now]
            else:
                changed = {p: now[p] for p in maybe if p in now and before.get(p) != now[p]}
                gone = [p for p in maybe if p in before and p not in now]
            if len(changed) + len(gone) <= len(now) // 4 + 16:
                return Update.appended(token, changed, gone)
        return Update.whole(token, now)

    def _fetch(self) -> tuple[bool, str, dict[str, Stat]]:
        """The instance's record: the one read during the scan the first time, a fresh read after that."""
        prefetched, self._prefetched = self._prefetched, None
        return prefetched.result() if prefetched is not None else self.manifest.fetch()

    def full(self, result: SyncResult) -> None:
        """Compare everything: read the instance's record, delete, send (tar or rsync), write the record."""
        occupied, current, sent_before = self._fetch()
        if self.fs.touched is not None:  # made from our record, which another sync made stale: look at everything
            self.fs, self.journaled = self._full_scan(), False
        first, self.first = self.first, None
        if first is not None and self._streamed(first, occupied, current, result):
            return
        to_delete, extra = self._split(sent_before)
        if to_delete:
            self._delete(to_delete, current, result, extra)
        if not occupied and rsync.gnu_tar() and self.fs.files:
            # An empty workdir: nothing there to overwrite. tar writes files in place, so a stream cut
            # short (kill -9, a dropped connection, a full disk) leaves a truncated file behind: the
            # instance's record lists every file first, so the next sync treats them all as ferry's
            # and compares them, rather than keeping a half-written one as the instance's own copy.
            # Once every file is there the record is already right but for its token: the tar's own exec
            # swaps the token in place, rather than a third exec sending the whole record again.
            intent = new_token()
            self.manifest.write(Update.whole(intent, self._sent(frozenset(), extra)), expect=current)
            token = new_token()
            self._tar(result, then=self.manifest.retoken(intent, token))
            self._commit(token, extra, {})
            return
        done = self._send(None, sent_before)
        kept = {p: self.fs.files[p] for p in done.kept}
        self._finish(result, done)
        token = new_token()
        self.manifest.write(Update.whole(token, self._sent(kept.keys(), extra)), expect=current)
        self._commit(token, extra, kept)

    def _streamed(self, first: "FirstCopy", occupied: bool, current: str, result: SyncResult) -> bool:
        """The first copy streamed during the scan (firstcopy.py), put in place with its record; False if the
        workdir was not empty, and nothing was sent."""
        if occupied:
            return first.finish()  # False: nothing was sent
        token = new_token()
        # While tar may still be sending: the record is made, and the exec that puts both in place is opened.
        pending = self.manifest.begin_write(Update.whole(token, self.fs.files), current, first.into_place())
        try:
            copied = first.finish()
        except BaseException:
            pending.cancel()
            raise
        if not copied:
            pending.cancel()
            return False
        try:
            pending.complete()
        except BaseException:  # called off (someone else's files), or failed: the staging copy goes too
            first.discard()
            raise
        result.files, result.bytes, result.sent = len(self.fs.files), self.fs.total_bytes, sorted(self.fs.files)
        self._commit(token, {}, {})
        return True

    def _delete(self, to_delete: dict[str, Stat], expect: str, result: SyncResult, extra: dict[str, Stat],
                then_write: Update | None = None, dry_run: bool = False) -> bool:
        """Delete remotely; without python3 there, keep them listed as sent (``extra``) and say so."""
        try:
            done = self.manifest.delete(to_delete, expect, dry_run=dry_run, then_write=then_write)
        except NoPython as exc:
            extra.update(to_delete)
            result.warnings.append(f"{exc.message}; {len(to_delete)} file{_s(len(to_delete))} gone locally "
                                   f"stay on the instance for now ({exc.hint})")
            return False
        result.deleted, result.kept_remote = done.deleted, done.kept
        return True

    def dry_run(self, result: SyncResult) -> None:
        occupied, current, sent_before = self._fetch()
        if occupied:
            done = self._send(None, sent_before, dry_run=True)
            result.would_send, result.kept_unsent = done.sent, sorted(done.kept)
            result.files, result.bytes = done.files, done.bytes
        else:
            result.would_send = sorted(self.fs.files)
            result.files, result.bytes = len(self.fs.files), self.fs.total_bytes
        to_delete, _ = self._split(sent_before)
        if to_delete:
            self._delete(to_delete, current, result, {}, dry_run=True)

    # the transfers -----------------------------------------------------------------------------------
    def _send(self, paths: Sequence[str] | None, sent_before: dict[str, Stat], dry_run: bool = False) -> Sent:
        """Send ``paths`` (None: the whole file set) such that only a file ferry sent before replaces a remote one.

        Files in the instance's record (``sent_before``) go the ordinary way, each replaced remote file moved
        to ``replaced_dir`` first; the rest go with ``--ignore-existing`` (one more rsync on the same
        ControlMaster, only when there are any), and those the instance already has are ``kept``. A file
        known to differ from what ferry sent goes with ``--ignore-times``: rsync's quick check compares whole
        seconds, so a same-size edit within the second would otherwise stay behind while recorded as sent.
        """
        done = Sent()
        if paths is None:
            ours = [p for p in self.fs.files if p in sent_before]
            new = [p for p in self.fs.files if p not in sent_before]
            if ours:
                self._rsync_tree(done, "ours", skip=new, dry_run=dry_run)
                seen = set(done.sent)
                missed = [p for p in ours if sent_before[p] != self.fs.files[p] and p not in seen]
                if missed:
                    self._rsync_list(missed, done, "changed", dry_run=dry_run)
            if len(new) > LIST_LIMIT:  # past this, a second walk beats a long list
                self._rsync_tree(done, "new", skip=ours, dry_run=dry_run)
            elif new:
                self._rsync_list(new, done, "new", dry_run=dry_run)
        else:  # every path here changed since it was sent
            ours = [p for p in paths if p in sent_before]
            new = [p for p in paths if p not in sent_before]
            if ours:
                self._rsync_list(ours, done, "changed", dry_run=dry_run)
            if new:
                self._rsync_list(new, done, "new", dry_run=dry_run)
        if new:
            done.tried_new = set(new)
            sent = set(done.sent)
            done.kept = [p for p in new if p not in sent]
        return done

    def _guard_args(self, how: str, dry_run: bool) -> list[str]:
        """``how``: "ours" (sent before), "changed" (sent before, differs since), "new" (never sent)."""
        argv = [ITEM_FORMAT, *{"ours": [], "changed": ["--ignore-times"], "new": ["--ignore-existing"]}[how]]
        if dry_run:
            argv.append("--dry-run")
        else:
            argv += ["--backup", f"--backup-dir={self.replaced_dir}", f"--rsync-path={self.rsync_path}"]
        return argv

    def _rsync_tree(self, done: Sent, how: str, skip: Iterable[str] = (), dry_run: bool = False) -> None:
        """One recursive rsync of the file set (less ``skip``), driven by the file set's exclude rules."""
        rules = rsync.rule_file([*self.fs.exclude_rules(), *rsync.skip_rules(skip, self.fs.files)])
        try:
            argv = [rsync.rsync_binary(), *RSYNC_FLAGS, "--prune-empty-dirs", "--from0", f"--exclude-from={rules}",
                    "-e", self.remote.rsync_rsh(), *self._guard_args(how, dry_run),
                    f"{self.project}/", f"{self.remote.rsync_target}{self.target}/"]
            done.add(rsync.run(argv, self.remote, self.progress and not dry_run, "sending"))
        finally:
            os.unlink(rules)

    def _rsync_list(self, paths: Sequence[str], done: Sent, how: str, dry_run: bool = False) -> None:
        listing = rsync.rule_file(paths)
        try:
            argv = [rsync.rsync_binary(), "-lpt", "--protect-args", "--stats", "--from0", f"--files-from={listing}",
                    "--ignore-missing-args", "-e", self.remote.rsync_rsh(), *self._guard_args(how, dry_run),
                    f"{self.project}/", f"{self.remote.rsync_target}{self.target}/"]
            done.add(rsync.run(argv, self.remote, self.progress and not dry_run, "sending"))
        finally:
            os.unlink(listing)

    def _tar(self, result: SyncResult, then: str) -> None:
        """An empty workdir: one uncompressed tar stream, the cheapest first copy (mtimes kept to the ns);
        ``then`` (the record's new token) runs in the same exec. ManifestChanged if it finds someone else's."""
        total = self.fs.total_bytes
        if not rsync.tar_stream(self.project, list(self.fs.files), total, self.remote, self.target, self.progress,
                                then=then, passed=STALE):
            raise ManifestChanged("another sync rewrote the instance's record during the first copy")
        result.files, result.bytes, result.sent = len(self.fs.files), total, sorted(self.fs.files)


def upload(box: "Box", dry_run: bool = False, delete: str = "sent", full: bool = False,
           progress: bool | None = None, announce: bool = True, verbose: bool = False) -> SyncResult:
    """Make ``<workdir_root>/<project>`` hold the project's file set; see the module docstring for how.

    ``delete="sent"`` deletes remotely the files ferry sent before that are now
    gone locally (and only while the remote copy is still what ferry sent);
    ``"never"`` deletes nothing. ``full`` ignores the local record and compares
    every file with the instance. ``dry_run`` lists what would be sent
    (``result.would_send``) and deleted (``result.deleted``), and changes nothing.
    """
    if delete not in DELETE_MODES:
        raise UsageError(f"bad --delete value {delete!r}", hint=f"use one of: {', '.join(DELETE_MODES)}")
    started = time.monotonic()
    result = SyncResult(dry_run=dry_run)
    # The change journal's daemon says nothing changed since a sync that left nothing to do: not even the record
    # need be read (journal.py).
    quiet = None if dry_run or full else \
        journal.quiet(box.project_dir, cache_path(box.project_dir, local_key(box.instance, box.workdir)), delete)
    if quiet is not None:
        result.how, result.fileset, result.journal = "unchanged", quiet, True
        return _done(result, started, announce, verbose)
    up = _Up(box, delete, progress_wanted(progress), compare=dry_run or full)
    if dry_run:
        result.how = "dry-run"
        up.dry_run(result)
    elif not full and up.unchanged():
        result.how = "unchanged"
    else:
        for attempt in range(3):
            try:
                if not full and up.record.valid and attempt == 0:
                    result.how = "changes"
                    up.changes(result)
                else:
                    result.how = "initial" if not up.record.valid and attempt == 0 else "full"
                    up.full(result)
                break
            except ManifestChanged:
                up.record.token = ""  # someone else synced to this workdir: compare everything
                if attempt == 2:
                    raise FerryError(
                        f"another sync to {box.name} kept changing its record of sent files",
                        hint=f"let the other sync finish, then run: {cmd('sync')}",
                    ) from None
    result.fileset, result.journal = up.fs, up.journaled
    if not dry_run:
        journal.settle(up.record, up.fs, up.answer, box.settings.sync_journal_min_files)
    return _done(result, started, announce, verbose)


def _done(result: SyncResult, started: float, announce: bool, verbose: bool) -> SyncResult:
    result.seconds = time.monotonic() - started
    if announce:
        report(result, "would send" if result.dry_run else "synced", verbose=verbose)
    return result
