"""The change journal's daemon: one per large project, it remembers which paths changed so a sync need not look.

A sync of a 100k-file tree spends ~0.5 s finding out that (almost) nothing
changed: git lists every file and each one is stat'ed. This process watches
the tree with inotify (Linux) from the moment it starts, and keeps the
paths touched since each sync asked. A sync asks by renaming a FIFO into
``.ferry/journal/``: that rename is itself an inotify event, so when the
daemon reaches it, every change made before the question was asked has
already been read, and the answer (written into the FIFO) covers them all.

It never reads a file's content, and answers "look at everything" whenever
it may have missed something: the kernel's event queue overflowed, a
directory was moved, a flood of changes no sync asked about, or the rules
that decide the file set changed (any ``.gitignore``, ``.ferryignore``,
``.gitmodules``, ``.git/info/exclude``, ``.git/config``). A change to git's
index is named in the answer (the asker lists git's set again, which is
still far cheaper than a scan). A repository made inside the tree is named
too, and the asker scans. Directories git ignores as directories (a venv,
run output) are not watched, nor outside git the ones a sync's walk prunes;
what is watched is widened when the index or the rules change. Only what
the client (journal.py) does with an answer decides what is sent.

It holds ``.ferry/journal/pid`` locked while it lives, and exits when the
project is deleted or moved, or after ``--idle`` seconds without a question.
Started by ``ferry sync`` in projects of ``sync.journal_min_files`` files or
more; ``kill <pid>`` stops it at any time (the next sync looks at everything).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

from . import fileset
from .heldback import Matcher
from .journal import FAILED, INDEX, JOURNAL_DIR

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x02000000, 0x04000000, 0x40000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length
RULES = (".git/info/exclude", ".git/config")  # besides every .gitignore, .ferryignore and .gitmodules
KEEP_PATHS = 200_000  # changed paths remembered across questions; past this the oldest answers are forgotten


class Reset(Exception):
    """Something may have been missed: every question asked before now gets "look at everything"."""


class Daemon:
    def __init__(self, root: str, idle: float):
        self.root = root.rstrip("/")
        self.idle = idle
        self.ident = os.urandom(6).hex()
        self.libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)
        self.fd = -1
        self.paths: dict[int, str] = {}  # watch descriptor -> directory, relative ("" for the root)
        self.epoch = 0  # one per question answered
        self.valid_from = 0  # questions asked before this epoch get "look at everything"
        self.frames: list[tuple[int, set[str]]] = []  # (epoch, the paths changed before it was answered)
        self.dirty: set[str] = set()
        self.kept = 0
        self.skip: set[str] = set()
        self.dev = 0
        self._asking: threading.Thread | None = None  # asking git which directories it ignores (see _rescope)
        self._ask_again = False
        self._widened: set[str] = set()
        self._told_r, self._told_w = os.pipe()  # the thread's "git has said"
        self.plain: Matcher | None = None  # outside git: the rules whose excluded directories a sync never walks

    # -- watches ------------------------------------------------------------------------------------
    def _ignored_dirs(self) -> set[str]:
        """Directories git ignores as directories (a venv, run output): never watched. Outside git: only .git and
        .ferry. (``ls-files --directory`` also names a directory all of whose files happen to be ignored, say
        ``logs/`` holding only ``*.log``; a new file there may not be, so such a one is watched.)"""
        skip = {".git", ".ferry"}
        if not os.path.isdir(os.path.join(self.root, ".git")):
            return skip
        out = subprocess.run(["git", "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory",
                              "--no-empty-directory"], cwd=self.root, capture_output=True, stdin=subprocess.DEVNULL)
        if out.returncode == 0:
            listed = [p for p in out.stdout.decode("utf-8", "surrogateescape").split("\0") if p.endswith("/")]
            skip.update(p.rstrip("/") for p in fileset.ignored_as_directories(Path(self.root), listed))
        return skip

    def _skipped(self, path: str) -> bool:
        """Never watched: what git ignores as a directory; outside git, what the walk of a sync prunes."""
        return path in self.skip or (self.plain is not None and self.plain.excluded(path + "/"))

    def _watch(self, rel: str) -> bool:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(os.path.join(self.root, rel) if rel else self.root),
                                         WATCHED)
        if wd < 0:
            err = ctypes.get_errno()
            # ENOENT, ENOTDIR: gone already (its parent said so); EACCES: git cannot list it either
            if err in (2, 13, 20):
                return False
            raise OSError(err, f"inotify_add_watch {rel or '.'}: {os.strerror(err)}")
        self.paths[wd] = rel
        return True

    def _walk(self, rel: str, report: bool) -> None:
        """Watch ``rel`` and every directory below it; with ``report``, each file found there counts as changed
        (a directory made or moved in after the last question: its files may predate its watch). A repository
        inside (a ``.git``) is not walked but named, and a directory on another (network) file system ends us."""
        stack = [rel]
        while stack:
            top = stack.pop()
            if not self._watch(top):
                continue
            try:
                entries = list(os.scandir(os.path.join(self.root, top) if top else self.root))
            except (FileNotFoundError, NotADirectoryError, PermissionError):
                continue
            for entry in entries:
                path = f"{top}/{entry.name}" if top else entry.name
                if entry.name == ".git":
                    if top and report:
                        self.dirty.add(path)
                elif entry.is_dir(follow_symlinks=False):
                    if not self._skipped(path):
                        self._same_device(entry)
                        stack.append(path)
                elif report:
                    self.dirty.add(path)

    def _same_device(self, entry: os.DirEntry) -> None:
        try:
            dev = entry.stat(follow_symlinks=False).st_dev
        except OSError:
            return
        if dev != self.dev:
            remote = _network_fs(self.libc, entry.path)
            if remote:
                raise OSError(0, f"{entry.path} is on {remote}, where inotify misses changes made elsewhere")

    def start(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths = {}
        self.dev = os.stat(self.root).st_dev
        self.skip = self._ignored_dirs()
        git, lines, user_from, _ = fileset.rules(Path(self.root))
        self.plain = None if git else fileset._matcher(lines, user_from)
        self._watch(JOURNAL_DIR)
        for name in (".git", ".git/info"):
            if os.path.isdir(os.path.join(self.root, name)):
                self._watch(name)
        self._walk("", report=False)
        self._invalidate()
        for name in sorted(os.listdir(os.path.join(self.root, JOURNAL_DIR))):  # asked while no watch could hear
            if name.startswith("ask-"):
                self._answer(name)
            elif name.startswith(".q-"):  # an asker that died before it asked
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(self.root, JOURNAL_DIR, name))

    def _invalidate(self) -> None:
        """Forget every change so far: an answer given before now may not cover what happened before now."""
        self.dirty, self.frames, self.kept = set(), [], 0
        self.valid_from = self.epoch + 1

    def _rescope(self) -> None:
        """Directories git no longer ignores as a whole (a ``git add -f`` inside, a rule gone) are to be watched.
        Git is asked in a thread (~0.1 s at 100k files) as soon as the change is seen, so a question asked a
        little later (``git commit && ferry sync``) need not wait for it; once it has said, each such directory
        is watched and every file in it named as changed, so nothing done there before its watch is lost."""
        if self._asking is not None:
            self._ask_again = True
            return

        def ask_git() -> None:
            self._widened = self._ignored_dirs()
            os.write(self._told_w, b".")

        self._asking = threading.Thread(target=ask_git, daemon=True)
        self._asking.start()

    def _rescoped(self) -> None:
        """Git has said which directories it ignores now: watch the ones it no longer does."""
        os.read(self._told_r, 64)
        self._asking, wider = None, self._widened
        for path in sorted(self.skip - wider):
            if os.path.isdir(os.path.join(self.root, path)):
                self._walk(path, report=True)
        self.skip = wider | {".git", ".ferry"}
        if self._ask_again:
            self._ask_again = False
            self._rescope()

    # -- events -------------------------------------------------------------------------------------
    def _event(self, wd: int, mask: int, name: str) -> None:
        if mask & IN_Q_OVERFLOW:
            raise Reset("the kernel's event queue overflowed")
        top = self.paths.get(wd)
        if top is None:
            return
        if mask & (IN_DELETE_SELF | IN_MOVE_SELF) and top in ("", JOURNAL_DIR):
            raise SystemExit(0)  # the project (or the journal's own directory) is gone
        if mask & IN_IGNORED:
            del self.paths[wd]
            return
        if not name:
            return
        path = f"{top}/{name}" if top else name
        if top == JOURNAL_DIR:
            if mask & IN_MOVED_TO and name.startswith("ask-"):
                self._answer(name)
            elif name == "pid" and mask & (IN_DELETE | IN_MOVED_FROM):
                raise SystemExit(0)  # its lock file is gone: another daemon may start, so this one goes
            return
        if top in (".git", ".git/info"):
            if path == INDEX:  # what is tracked may have changed: the asker lists git's set again
                self.dirty.add(INDEX)
                self._rescope()
            elif path in RULES or (path == ".git/info" and mask & IN_ISDIR):
                if path == ".git/info" and mask & (IN_CREATE | IN_MOVED_TO):
                    self._watch(path)
                self._invalidate()  # the rules changed: the whole set may have
                self._rescope()
            return
        if name in (".gitignore", ".ferryignore", ".gitmodules"):
            if self.plain is not None and path == ".ferryignore":
                raise Reset(".ferryignore changed")  # outside git it decides which directories are watched
            self._invalidate()
            self._rescope()
            return
        if name == ".git":
            self.dirty.add(path)  # a repository made (or gone) inside the tree: the asker scans everything
            return
        if mask & IN_ISDIR:
            if mask & (IN_MOVED_FROM | IN_MOVED_TO) and not self._skipped(path):
                raise Reset(f"directory {path} moved")  # its watches' paths are stale
            if mask & IN_CREATE and not self._skipped(path):
                self._walk(path, report=True)
            elif mask & IN_DELETE:
                self.dirty.add(path + "/")  # everything once below it
            return
        self.dirty.add(path)

    def _answer(self, name: str) -> None:
        """Name: ask-<nonce>-<daemon id>-<epoch of the asker's last answer>; reply: (id, epoch, paths or None)."""
        parts = name.split("-")
        if len(parts) != 4:
            return
        _, _, ident, since = parts
        if self._asking is not None:  # git is being asked what it ignores now: the answer must wait for that
            self._asking.join()
            self._rescoped()
        self.epoch += 1
        if self.dirty:
            self.frames.append((self.epoch, self.dirty))
            self.kept += len(self.dirty)
            self.dirty = set()
        while self.kept > KEEP_PATHS and self.frames:
            epoch, dropped = self.frames.pop(0)
            self.kept -= len(dropped)
            self.valid_from = epoch  # an asker whose last answer came before this frame would need it
        paths: list[str] | None = None
        if ident == self.ident and since.isdigit() and int(since) >= self.valid_from:
            union: set[str] = set()
            for epoch, changed in self.frames:
                if epoch > int(since):
                    union |= changed
            paths = sorted(union)
        _reply(os.path.join(self.root, JOURNAL_DIR, name), marshal.dumps((self.ident, self.epoch, paths)))

    def loop(self) -> None:
        last_question = time.monotonic()
        while True:
            left = self.idle - (time.monotonic() - last_question)  # events that are not questions do not count
            if left <= 0:
                return
            ready = select.select([self.fd, self._told_r], [], [], left)[0]
            if self._told_r in ready:
                self._rescoped()
            if self.fd not in ready:
                continue
            data = os.read(self.fd, 1 << 16)
            pos, epoch = 0, self.epoch
            try:
                while pos < len(data):
                    wd, mask, _, size = EVENT.unpack_from(data, pos)
                    raw = data[pos + EVENT.size:pos + EVENT.size + size].rstrip(b"\0")
                    pos += EVENT.size + size
                    self._event(wd, mask, os.fsdecode(raw))
                if len(self.dirty) > KEEP_PATHS:  # a flood with no sync asking: forget it, and say so to every asker
                    self._invalidate()
            except Reset as why:
                print(f"ferry journal: starting over: {why}", file=sys.stderr, flush=True)
                self.start()
            if self.epoch != epoch:
                last_question = time.monotonic()


def _reply(fifo: str, payload: bytes) -> None:
    """Into the asker's FIFO, opened by it before the rename; an asker gone (or not reading) is skipped."""
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # ENXIO: its asker is gone
        with contextlib.suppress(OSError):
            os.unlink(fifo)
        return
    try:
        os.set_blocking(fd, False)
        view = memoryview(payload)
        deadline = time.monotonic() + 2.0
        while view and time.monotonic() < deadline:
            _, ready, _ = select.select([], [fd], [], 0.5)
            if ready:
                view = view[os.write(fd, view[:1 << 16]):]
    except OSError:
        pass
    finally:
        os.close(fd)


def main(argv: list[str]) -> int:
    root, idle = os.path.realpath(argv[0]), float(argv[1]) if len(argv) > 1 else 3600.0
    state = os.path.join(root, JOURNAL_DIR)
    if not os.path.isdir(os.path.join(root, ".ferry")):
        return 0  # the project is gone (or never synced): never made again by us
    with contextlib.suppress(FileExistsError):
        os.mkdir(state, 0o700)
    lock = os.open(os.path.join(state, "pid"), os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return 0  # one is running already
    os.ftruncate(lock, 0)
    os.write(lock, f"{os.getpid()}\n".encode())
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    daemon = Daemon(root, idle)
    try:
        remote_fs = _network_fs(daemon.libc, root)
        if remote_fs:
            raise OSError(0, f"the project is on {remote_fs}, where inotify misses changes made elsewhere")
        daemon.start()
        daemon.loop()
    except OSError as exc:  # out of inotify watches, say: syncs go on looking at everything, and none restarts it soon
        print(f"ferry journal: stopped: {exc.strerror or exc}", file=sys.stderr, flush=True)
        with open(os.path.join(state, FAILED), "w") as fh:
            fh.write(f"{exc.strerror or exc}\n")
    finally:
        os.ftruncate(lock, 0)
    return 0


NETWORK_FS = {0x6969: "NFS", 0x517B: "SMB", 0xFF534D42: "CIFS", 0xFE534D42: "SMB2", 0x01021997: "9P (WSL's /mnt)",
              0x65735546: "FUSE", 0x564C: "NCP", 0x47504653: "GPFS", 0x0BD00BD0: "Lustre", 0x6B414653: "AFS"}


def _network_fs(libc, path: str) -> str | None:
    """The kind of file system ``path`` is on if changes can come from another machine (inotify never hears)."""
    buf = ctypes.create_string_buffer(256)  # struct statfs; f_type is its first field (a long)
    if libc.statfs(os.fsencode(path), buf) != 0:
        return None
    kind = ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF
    return NETWORK_FS.get(kind)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
