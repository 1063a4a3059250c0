"""Moving files: the project's file set up to the instance, results back down.

Up, fastest path first:

* nothing changed: a fresh stat scan of the file set (fileset.py) equals the
  local record of the last successful sync to this instance (manifest.py),
  so no network at all (~20 ms for 5,000 files, against ~100 ms for even a
  no-op rsync);
* a few files changed: only those go, in one rsync fed the short list, and
  files that are gone locally are deleted remotely (safely, see manifest.py);
* otherwise (first sync from this checkout, ``--full``, or someone else
  synced in between): the instance's record is read, then an empty workdir
  is filled by one uncompressed tar stream (the floor for a first copy), and
  an existing one by one recursive rsync whose excludes reproduce git's file
  set exactly, which is ~3.5x faster than ``--files-from`` on a large tree.

Nothing on the instance is ever deleted unless ferry sent it and it is gone
locally (``--delete=never`` turns even that off); rsync never runs with
``--delete``. A run's outputs (any remote file ferry never sent) are never
replaced either: only files in the instance's record of what ferry sent go
the ordinary way; every other file goes with ``--ignore-existing``, so a
copy the instance already has is kept and reported, never overwritten (else
``download`` mid-run, then ``sync``, would put the stale copy back over the
job's final one). Such kept files are remembered beside the local record
(``<key>.kept.json``, tied to its token) with their local stat, so a no-op
stays free of network and each is reported once per local change. Whatever
a sync does replace remotely is first moved aside by rsync's ``--backup``
into ``~/.ferry/replaced/<stamp>/`` on the instance.

Down: rsync from the workdir (or named paths) that never deletes a local
file, keeps a local file that is newer, and replaces an older one only after
keeping its previous content under ``.ferry/backups/<stamp>/`` (or
``<--backup-dir>/<stamp>/``): a new directory per download, so no backup
ever overwrites an earlier one.

Every transfer shows a progress bar on a terminal once it has run a second,
and every call returns a SyncResult whose summary says files, bytes, seconds.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import AbstractSet, Callable, Iterable, Sequence

from invoke import Context

from . import config, fileset
from .errors import FerryError, RemoteCommandError, UsageError
from .fileset import DEFAULT_EXCLUDES, FileSet, Stat
from .instance import Instance
from .lifecycle import workdir
from .manifest import (LocalRecord, ManifestChanged, NoPython, RemoteManifest, cache_path, local_key, new_token,
                       remote_key)
from .remote import Remote
from .state import write_atomic
from .tools import require, which

__all__ = ["sync_up", "download", "report", "SyncResult", "DEFAULT_EXCLUDES", "DELETE_MODES"]

DELETE_MODES = ("sent", "never")
LIST_LIMIT = 1000  # changed files sent as an explicit list; more than this and the filtered tree walk is cheaper
RSYNC_FLAGS = ["-rlpt", "--protect-args", "--stats"]
ALWAYS_EXCLUDE_DOWN = ("/.ferry/", ".git")  # never pulled, even with --all
CONNECTION_EXITS = {10, 12, 30, 35, 255}  # socket I/O, protocol stream, timeouts, ssh itself
REPLACED_DIR = ".ferry/replaced"  # on the instance, under its home: what a sync replaced, one dir per sync
KEEP_REPLACED = 10  # the newest backup dirs kept there; older ones go (they would grow without bound)
ITEM_FORMAT = "--out-format=%i %n"
ITEM = re.compile(r"([<>ch.*][fdLDS][^ ]{9}) (.*)\Z", re.S)
Log = Callable[[str], None]

@dataclass
class SyncResult:
    files: int = 0
    bytes: int = 0
    seconds: float = 0.0
    deleted: list[str] = field(default_factory=list)
    kept_remote: list[str] = field(default_factory=list)  # sent before, changed on the instance since: kept
    kept_unsent: list[str] = field(default_factory=list)  # up: never sent by ferry, the instance has its own copy
    replaced: list[str] = field(default_factory=list)  # up: remote files replaced, previous copy in replaced_dir
    replaced_dir: str | None = None  # up: absolute path on the instance
    skipped: list[str] = field(default_factory=list)  # download: newer local files kept
    backed_up: list[str] = field(default_factory=list)  # download: local files replaced, previous copy kept
    received: list[str] = field(default_factory=list)
    would_send: list[str] = field(default_factory=list)  # dry run
    backup_dir: str | None = None
    how: str = ""  # "unchanged", "changes", "full", "initial", "dry-run", "download"
    dry_run: bool = False
    warnings: list[str] = field(default_factory=list)
    fileset: FileSet | None = field(default=None, repr=False, compare=False)  # up: the set that was synced

    def summary(self, verb: str) -> str:
        text = f"{verb} {self.files} file{_s(self.files)} ({_human(self.bytes)}) in {self.seconds:.3f}s"
        held = sorted(self.fileset.held_secrets) if self.fileset is not None else []
        if held:
            names = ", ".join(held[:3]) + (", ..." if len(held) > 3 else "")
            text += (f"; held back {len(held)} file{_s(held)} that look{'s' if len(held) == 1 else ''} like secrets "
                     f"({names}): a !pattern in .ferryignore sends one")
        if self.deleted:
            text += f"; {'would delete' if self.dry_run else 'deleted'} {len(self.deleted)} on the instance"
        if self.kept_remote:
            text += f"; kept {len(self.kept_remote)} remote file{_s(self.kept_remote)} changed there since ferry sent it"
        if self.kept_unsent:
            text += (f"; {'would keep' if self.dry_run else 'kept'} the instance's copy of {len(self.kept_unsent)} "
                     f"file{_s(self.kept_unsent)} ferry never sent")
        if self.replaced and not self.dry_run:
            text += (f"; replaced {len(self.replaced)} file{_s(self.replaced)} on the instance, previous "
                     f"cop{'y' if len(self.replaced) == 1 else 'ies'} in {self.replaced_dir}")
        if self.skipped:
            text += f"; kept {len(self.skipped)} newer local file{_s(self.skipped)}"
        if self.backed_up:
            text += (f"; {'would back up' if self.dry_run else 'backed up'} {len(self.backed_up)} replaced "
                     f"file{_s(self.backed_up)} in {self.backup_dir}")
        return text


def _s(n) -> str:
    n = n if isinstance(n, int) else len(n)
    return "" if n == 1 else "s"


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GB"


def _stamp() -> str:
    """A name for one run's backups: sorts by time (to the microsecond), and pid plus random make it unique."""
    now = time.time()
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}-{os.getpid()}-" \
           f"{os.urandom(2).hex()}"


def _unescape(name: str) -> str:
    """A name as rsync prints it (``\\#ooo`` for control and non-ASCII bytes) back to the real one."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


@dataclass
class _Sent:
    """What one or more upload rsyncs did, from their ``--stats`` and ``%i %n`` lines."""

    files: int = 0
    bytes: int = 0
    sent: list[str] = field(default_factory=list)  # files and links sent (or, in a dry run, that would be)
    replaced: list[str] = field(default_factory=list)  # of those, the ones that replaced a remote file
    tried_new: set[str] = field(default_factory=set)  # sent with --ignore-existing (ferry never sent them)
    kept: list[str] = field(default_factory=list)  # of those, the ones not sent: the instance has its own copy

    def add(self, out: str) -> None:
        files, size = _parse_stats(out)
        self.files, self.bytes = self.files + files, self.bytes + size
        for line in out.split("\n"):
            m = ITEM.match(line.rstrip("\r"))
            if not m or m.group(1)[0] not in "<c" or m.group(1)[1] == "d":
                continue
            name = _unescape(m.group(2))
            self.sent.append(name)
            if m.group(1)[2:] != "+" * 9:  # (a file that became a link shows as new: not counted, still backed up)
                self.replaced.append(name)


def _parse_stats(text: str) -> tuple[int, int]:
    files = re.search(r"Number of regular files transferred: ([\d,.]+)", text)
    size = re.search(r"Total transferred file size: ([\d,.]+)", text)
    as_int = lambda m: int(re.sub(r"[,.]", "", m.group(1))) if m else 0  # noqa: E731
    return as_int(files), as_int(size)


# -- running rsync (and tar) with a progress bar on a terminal -------------------------------
PROGRESS_AFTER = 1.0  # seconds a transfer runs before its bar appears (short ones stay quiet)
PROGRESS = re.compile(rb"^\s*([\d,.]+)\s+(\d+)%\s+(\S+/s)\s+(\d+:\d\d:\d\d)")


class ProgressBar:
    """One line on stderr, drawn only once a transfer has run ``after`` seconds, wiped at the end."""

    def __init__(self, label: str, after: float | None = None, stream=None):
        self.label, self.stream = label, stream or sys.stderr
        self.after = PROGRESS_AFTER if after is None else after
        self.started = time.monotonic()
        self.drawn = False
        self.last = 0.0

    def update(self, done: int, percent: int | None = None, rate: str | None = None, total: int | None = None) -> None:
        now = time.monotonic()
        if now - self.started < self.after or (self.drawn and now - self.last < 0.1):
            return
        self.last = now
        if percent is None and total:
            percent = min(100, int(100 * done / total))
        if rate is None:
            rate = f"{_human(done / max(now - self.started, 1e-6))}/s"
        self.stream.write(f"\r{self.label} {percent if percent is not None else '?':>3}%  {_human(done)}  {rate}\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\r\x1b[K")
            self.stream.flush()


def _progress_wanted(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress


def _raise_for(code: int, stderr: bytes, remote: Remote, what: str = "rsync") -> None:
    if code in (0, 24):  # 24: a file vanished while sending, which is fine
        return
    text = stderr.decode(errors="replace")
    if code == 255 or (code in CONNECTION_EXITS and re.search(
            r"connection unexpectedly closed|Broken pipe|Connection (refused|reset|closed|timed out)|"
            r"error in socket IO|protocol data stream|timeout", text)):
        raise remote.classify_failure(text)
    if code == 20:
        raise KeyboardInterrupt
    lines = [l for l in text.splitlines() if l.strip() and not l.startswith("rsync error:")]
    raise RemoteCommandError(
        f"{what} failed (exit {code}): {lines[0] if lines else text.strip() or 'no message'}",
        hint="run again with --debug for details",
    )


def _run_rsync(argv: list[str], remote: Remote, progress: bool, label: str) -> str:
    """Run rsync; return its stdout (stats, itemized lines). Connection failures raise SSHError."""
    if not progress:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        _raise_for(proc.returncode, proc.stderr, remote)
        return proc.stdout.decode("utf-8", "replace")
    argv = [argv[0], "--info=progress2", *argv[1:]]
    bar = ProgressBar(label)
    out = bytearray()
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=err, stdin=subprocess.DEVNULL)
        try:
            pending = b""
            assert proc.stdout is not None
            while True:
                chunk = proc.stdout.read1(65536)
                if not chunk:
                    break
                pending += chunk
                cut = max(pending.rfind(b"\r"), pending.rfind(b"\n"))
                if cut < 0:
                    continue
                for seg in re.split(rb"(?<=[\r\n])", pending[: cut + 1]):
                    m = PROGRESS.match(seg)
                    if m:
                        bar.update(int(re.sub(rb"[,.]", b"", m.group(1))), int(m.group(2)), m.group(3).decode())
                    elif seg.strip():
                        out += seg.rstrip(b"\r") if seg.endswith(b"\r") else seg
                pending = pending[cut + 1:]
            out += pending
            code = proc.wait()
        except BaseException:
            proc.kill()
            proc.wait()
            raise
        finally:
            bar.close()
        err.seek(0)
        _raise_for(code, err.read(), remote)
    return out.decode("utf-8", "replace")


def _rule_file(rules: Sequence[str]) -> str:
    fd, path = tempfile.mkstemp(prefix="ferry-rules-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(r.encode("utf-8", "surrogateescape") + b"\0" for r in rules))
    return path


_GNU_TAR: list[str | None] = []


def _gnu_tar() -> str | None:
    """GNU tar, whose ``--verbatim-files-from`` reads any name literally (bsdtar would take ``-C`` lines as options)."""
    if not _GNU_TAR:
        tar = which("tar")
        ok = False
        if tar:
            try:
                ok = b"GNU tar" in subprocess.run([tar, "--version"], capture_output=True, timeout=10).stdout
            except (OSError, subprocess.SubprocessError):
                ok = False
        _GNU_TAR.append(tar if ok else None)
    return _GNU_TAR[0]


# -- up --------------------------------------------------------------------------------------------
def _skip_rules(skip: Iterable[str], files: AbstractSet[str]) -> list[str]:
    """Anchored excludes for ``skip``: a directory holding none of the other ``files`` goes as one rule."""
    skip = list(skip)
    if not skip:
        return []
    busy: set[str] = set()  # every directory holding one of the other files
    for path in set(files).difference(skip):
        i = path.find("/")
        while i > 0:
            busy.add(path[:i])
            i = path.find("/", i + 1)
    rules: dict[str, None] = {}
    for path in skip:
        i = path.find("/")
        while i > 0 and path[:i] in busy:
            i = path.find("/", i + 1)
        rules["/" + fileset.rsync_literal(path[:i]) + "/" if i > 0 else "/" + fileset.rsync_literal(path)] = None
    return list(rules)


class _Up:
    """One upload: the scan, the local record, the instance's record, and the transfers between them."""

    def __init__(self, ctx: Context | None, instance: Instance, delete: str, progress: bool):
        self.ctx = ctx
        self.instance = instance
        self.project = config.project_dir(ctx)
        self.remote = Remote(ctx, instance)
        self.target = workdir(ctx, instance)
        self.delete = delete
        self.progress = progress
        self.record = LocalRecord.load(cache_path(self.project, local_key(instance, self.target)))
        self.kept = self._load_kept()
        self.manifest = RemoteManifest(self.remote, self.target, remote_key(config.project_name(ctx), self.target))
        known: AbstractSet[str] = frozenset()
        if self.record.valid:
            known = self.record.files.keys() | self.kept.keys() if self.kept else self.record.files.keys()
        self.fs: FileSet = fileset.scan(self.project, known, self.record.spec_hash)
        home = (instance.remote_home or str(PurePosixPath(self.target).parent)).rstrip("/")
        self.replaced_dir = f"{home}/{REPLACED_DIR}/{_stamp()}"

    @property
    def rsync_path(self) -> str:
        """The remote rsync, after making the workdir and pruning all but the newest backups of replaced files."""
        replaced_root = shlex.quote(str(PurePosixPath(self.replaced_dir).parent))
        prune = f"(cd {replaced_root} 2>/dev/null && ls -1 | head -n -{KEEP_REPLACED} | xargs -r -d '\\n' rm -rf --)"
        return f"mkdir -p {shlex.quote(self.target)} && {{ {prune}; true; }} && rsync"

    @property
    def _kept_path(self) -> Path:
        return self.record.path.with_name(self.record.path.stem + ".kept.json")

    def _load_kept(self) -> dict[str, Stat]:
        """Files the instance had its own copy of at the last sync, with their local stat then (see the docstring)."""
        if not self.record.valid:
            return {}
        try:
            data = json.loads(self._kept_path.read_text(encoding="utf-8", errors="surrogateescape"))
            if data.get("token") != self.record.token:
                return {}
            return {k: tuple(v) for k, v in data["files"].items()}  # type: ignore[misc]
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            return {}  # missing or unreadable: those files are simply offered again, with --ignore-existing

    def _split(self, previously: dict[str, Stat]) -> tuple[dict[str, Stat], dict[str, Stat]]:
        """(to delete remotely, to keep listing as sent): only files gone from the local disk count as deleted."""
        gone = {p: s for p, s in previously.items() if p not in self.fs.files and self.fs.gone(p, s[2])}
        if self.delete == "never":
            return {}, gone
        return gone, {}

    def _sent(self, kept: AbstractSet[str], extra: dict[str, Stat]) -> dict[str, Stat]:
        """The instance's new record: the file set less what it kept of its own, plus ``extra``."""
        files = {p: s for p, s in self.fs.files.items() if p not in kept} if kept else self.fs.files
        return {**files, **extra}

    def _commit(self, token: str, extra: dict[str, Stat], kept: dict[str, Stat]) -> None:
        """Save the local record (the kept list first: a crash between the two leaves it stale, so ignored)."""
        rec = self.record
        if kept:
            body = {"token": token, "files": kept}
            write_atomic(self._kept_path, json.dumps(body, separators=(",", ":")).encode("utf-8", "surrogateescape"))
        else:
            self._kept_path.unlink(missing_ok=True)
        files = {p: s for p, s in self.fs.files.items() if p not in kept} if kept else self.fs.files
        rec.token, rec.spec_hash, rec.files, rec.extra = token, self.fs.spec_hash, files, extra
        rec.save()
        self.kept = kept

    def _finish(self, result: SyncResult, done: _Sent) -> None:
        result.files, result.bytes = done.files, done.bytes
        result.kept_unsent = sorted(done.kept)
        result.replaced = done.replaced
        result.replaced_dir = self.replaced_dir if done.replaced else None

    # the paths ----------------------------------------------------------------------------------
    def unchanged(self) -> bool:
        rec = self.record
        if not rec.valid or (self.delete != "never" and rec.extra):
            return False
        return self.fs.files == ({**rec.files, **self.kept} if self.kept else rec.files)

    def changes(self, result: SyncResult) -> None:
        """Send what changed since the record, delete what vanished; ManifestChanged if the record is stale."""
        rec = self.record
        kept = {p: s for p, s in self.kept.items() if self.fs.files.get(p) == s}  # still as it was when kept
        changed = {p: s for p, s in self.fs.files.items() if rec.files.get(p) != s and p not in kept}
        sent_before = {**rec.extra, **rec.files}  # the instance's record, as of rec.token
        to_delete, extra = self._split(sent_before)
        token = new_token()
        written = False
        if to_delete:  # before sending: a file that became a directory (or back) must make way first
            written = not changed
            if not self._delete(to_delete, rec.token, result, extra, then_write=(token, self._sent(kept.keys(), extra))
                                if written else None):
                written = False
        if len(changed) > LIST_LIMIT:  # a branch switch: past this, walking the tree beats a long list
            done = self._send(None, sent_before)
        elif changed:
            done = self._send(sorted(changed), sent_before)
        else:
            done = _Sent()
        kept = {p: s for p, s in kept.items() if p not in done.tried_new}
        kept.update((p, self.fs.files[p]) for p in done.kept)
        self._finish(result, done)
        if not written:
            self.manifest.write(token, self._sent(kept.keys(), extra), expect=rec.token)
        self._commit(token, extra, kept)

    def full(self, result: SyncResult) -> None:
        """Compare everything: read the instance's record, delete, send (tar or rsync), write the record."""
        occupied, current, sent_before = self.manifest.fetch()
        to_delete, extra = self._split(sent_before)
        if to_delete:
            self._delete(to_delete, current, result, extra)
        kept: dict[str, Stat] = {}
        if not occupied and _gnu_tar() and self.fs.files:
            self._tar(result)  # an empty workdir: nothing there to overwrite
        else:
            done = self._send(None, sent_before)
            kept = {p: self.fs.files[p] for p in done.kept}
            self._finish(result, done)
        token = new_token()
        self.manifest.write(token, self._sent(kept.keys(), extra), expect=current)
        self._commit(token, extra, kept)

    def _delete(self, to_delete: dict[str, Stat], expect: str, result: SyncResult, extra: dict[str, Stat],
                then_write: tuple[str, dict[str, Stat]] | None = None, dry_run: bool = False) -> bool:
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
        occupied, current, sent_before = self.manifest.fetch()
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
    def _send(self, paths: Sequence[str] | None, sent_before: dict[str, Stat], dry_run: bool = False) -> _Sent:
        """Send ``paths`` (None: the whole file set) such that only a file ferry sent before replaces a remote one.

        Files in the instance's record (``sent_before``) go the ordinary way, each replaced remote file moved
        to ``replaced_dir`` first; the rest go with ``--ignore-existing`` (one more rsync on the same
        ControlMaster, only when there are any), and those the instance already has are ``kept``. A file
        known to differ from what ferry sent goes with ``--ignore-times``: rsync's quick check compares whole
        seconds, so a same-size edit within the second would otherwise stay behind while recorded as sent.
        """
        done = _Sent()
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

    def _rsync_tree(self, done: _Sent, how: str, skip: Iterable[str] = (), dry_run: bool = False) -> None:
        """One recursive rsync of the file set (less ``skip``), driven by the file set's exclude rules."""
        rsync = require("rsync", "ferry syncs files with rsync")
        rules = _rule_file([*self.fs.exclude_rules(), *_skip_rules(skip, self.fs.files)])
        try:
            argv = [rsync, *RSYNC_FLAGS, "--prune-empty-dirs", "--from0", f"--exclude-from={rules}",
                    "-e", self.remote.rsync_rsh(), *self._guard_args(how, dry_run),
                    f"{self.project}/", f"{self.remote.rsync_target}{self.target}/"]
            done.add(_run_rsync(argv, self.remote, self.progress and not dry_run, "sending"))
        finally:
            os.unlink(rules)

    def _rsync_list(self, paths: Sequence[str], done: _Sent, how: str, dry_run: bool = False) -> None:
        rsync = require("rsync", "ferry syncs files with rsync")
        listing = _rule_file(paths)
        try:
            argv = [rsync, "-lpt", "--protect-args", "--stats", "--from0", f"--files-from={listing}",
                    "--ignore-missing-args", "-e", self.remote.rsync_rsh(), *self._guard_args(how, dry_run),
                    f"{self.project}/", f"{self.remote.rsync_target}{self.target}/"]
            done.add(_run_rsync(argv, self.remote, self.progress and not dry_run, "sending"))
        finally:
            os.unlink(listing)

    def _tar(self, result: SyncResult) -> None:
        """An empty workdir: one uncompressed tar stream, the cheapest first copy (mtimes kept to the ns)."""
        tar = _gnu_tar()
        assert tar
        listing = _rule_file(sorted(self.fs.files))
        total = self.fs.total_bytes
        remote_cmd = f"mkdir -p {shlex.quote(self.target)} && exec tar -xpf - -C {shlex.quote(self.target)}"
        try:
            with tempfile.TemporaryFile() as tar_err:
                maker = subprocess.Popen(
                    [tar, "-cf", "-", "--format=posix", "--pax-option=delete=atime,delete=ctime",
                     "--numeric-owner", "--owner=0", "--group=0", "--ignore-failed-read",
                     "--null", "--verbatim-files-from", "-T", listing],
                    cwd=self.project, stdout=subprocess.PIPE, stderr=tar_err, stdin=subprocess.DEVNULL,
                )
                assert maker.stdout is not None
                try:
                    if self.progress:
                        code, err = self._pump(maker.stdout, remote_cmd, total)
                    else:
                        taker = subprocess.run(self.remote.ssh_argv() + [remote_cmd], stdin=maker.stdout,
                                               capture_output=True)
                        code, err = taker.returncode, taker.stderr
                finally:
                    maker.stdout.close()
                    made = maker.wait()
                tar_err.seek(0)
                made_err = tar_err.read()
        finally:
            os.unlink(listing)
        _raise_for(code, err, self.remote, what="tar on the instance")
        if made not in (0, 1):  # 1: a file changed while it was read; the next sync sends it again
            raise FerryError(f"tar failed (exit {made}): {made_err.decode(errors='replace').strip()[:300]}")
        result.files, result.bytes = len(self.fs.files), total

    def _pump(self, source, remote_cmd: str, total: int) -> tuple[int, bytes]:
        bar = ProgressBar("sending")
        taker = subprocess.Popen(self.remote.ssh_argv() + [remote_cmd], stdin=subprocess.PIPE,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        assert taker.stdin is not None and taker.stderr is not None
        done = 0
        try:
            while True:
                chunk = source.read1(1 << 20)
                if not chunk:
                    break
                try:
                    taker.stdin.write(chunk)
                except BrokenPipeError:
                    break
                done += len(chunk)
                bar.update(done, total=total)
            taker.stdin.close()
            err = taker.stderr.read()
            return taker.wait(), err
        except BaseException:
            taker.kill()
            taker.wait()
            raise
        finally:
            bar.close()


def sync_up(
    ctx: Context | None,
    instance: Instance,
    dry_run: bool = False,
    delete: str = "sent",
    full: bool = False,
    progress: bool | None = None,
) -> SyncResult:
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
    up = _Up(ctx, instance, delete, _progress_wanted(progress))
    result = SyncResult(dry_run=dry_run)
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
                        f"another sync to {instance.name} kept changing its record of sent files",
                        hint="let the other sync finish, then run: inv sync",
                    ) from None
    result.fileset = up.fs
    result.seconds = time.monotonic() - started
    return result


# -- down ------------------------------------------------------------------------------------------
def _check_relative(path: str) -> str:
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
    if not everything and not paths:  # a path named on the command line comes whole
        rules += [f"- {p}" for p in DEFAULT_EXCLUDES]
    return rules


def download(
    ctx: Context | None,
    instance: Instance,
    paths: Sequence[str] = (),
    dry_run: bool = False,
    force: bool = False,
    backup_dir: str | os.PathLike | None = None,
    everything: bool = False,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    progress: bool | None = None,
) -> SyncResult:
    """Pull the workdir (or paths in it) into the project. Never deletes a local file.

    A local file that differs and is newer is kept (``result.skipped``) unless
    ``force``; one that is replaced has its previous content kept under
    a new ``<stamp>/`` directory under ``backup_dir`` (default ``.ferry/backups/``), so no
    earlier backup is ever overwritten (``result.backed_up``, ``result.backup_dir``).
    The default exclude list (venvs, caches, weights, ``outputs/``, secrets)
    applies to a whole-workdir pull unless ``everything``; named ``paths`` come
    whole. ``include``/``exclude`` are rsync patterns (``*.json``, ``logs/``),
    includes winning.
    """
    rsync = require("rsync", "ferry downloads files with rsync")
    project = config.project_dir(ctx)
    remote = Remote(ctx, instance)
    source = workdir(ctx, instance)
    wanted = [_check_relative(p) for p in paths]
    rules = download_rules(wanted, include, exclude, everything)
    started = time.monotonic()
    if wanted:
        probe = "cd " + shlex.quote(source) + " && for p in " + " ".join(shlex.quote(p) for p in wanted) + \
            '; do [ -e "$p" ] || [ -L "$p" ] || printf "%s\\0" "$p"; done'
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
    # A new directory per download, also inside a --backup-dir given again: rsync overwrites a file already
    # in its backup dir, and that file is the only copy left of the user's original.
    backups = (Path(backup_dir).expanduser() if backup_dir else Path(".ferry") / "backups") / _stamp()
    if not backups.is_absolute():
        backups = project / backups
    rule_file = _rule_file(rules)
    try:
        argv = [rsync, *RSYNC_FLAGS, *extra, "--from0", f"--filter=merge {rule_file}", "-e", remote.rsync_rsh(),
                "--info=skip1", "--out-format=%i %n", "--backup", f"--backup-dir={backups}"]
        if not force:
            argv.append("--update")
        if dry_run:
            argv.append("--dry-run")
        argv += [*sources, f"{project}/"]
        out = _run_rsync(argv, remote, _progress_wanted(progress) and not dry_run, "receiving")
    finally:
        os.unlink(rule_file)
    result = SyncResult(how="download", dry_run=dry_run)
    result.files, result.bytes = _parse_stats(out)
    for line in out.splitlines():
        if line.startswith(">f") and len(line) > 12:
            result.received.append(_unescape(line[12:]))
            if line[2:11] != "+++++++++":
                result.backed_up.append(_unescape(line[12:]))
        elif line.endswith(" is newer"):
            result.skipped.append(_unescape(line[: -len(" is newer")]))
    if result.backed_up:  # (a dry run names where the backups would go)
        try:
            result.backup_dir = str(backups.relative_to(project))
        except ValueError:
            result.backup_dir = str(backups)
    result.seconds = time.monotonic() - started
    return result


def report(result: SyncResult, log: Log, verb: str) -> None:
    """Every file a download skipped or backed up, every remote file an upload kept, then the one-line summary
    (what tasks and watch print)."""
    for path in result.skipped:
        log(f"kept newer local file: {path}")
    for path in result.backed_up:
        if result.dry_run:
            log(f"would replace {path} (previous copy to {result.backup_dir}/{path})")
        else:
            log(f"backed up {path} (previous copy in {result.backup_dir}/{path})")
    for path in result.kept_remote:
        log(f"kept {path} on the instance: it changed there since ferry sent it")
    for path in result.kept_unsent:
        log(f"{'would keep' if result.dry_run else 'kept'} the instance's copy of {path}: ferry never sent it; "
            f"download it, or delete it there and run inv sync --full to replace it")
    for warning in result.warnings:
        log(f"warning: {warning}")
    log(result.summary(verb))

