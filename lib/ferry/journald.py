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
directory was moved, the rules that decide the file set changed
(``.gitignore``, ``.ferryignore``, ``.git/index``, ``.gitmodules``). Only
what the journal's client (journal.py) does with an answer decides what is
sent. Directories git ignores (a venv, run output) are not watched at all.

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
import time

from .journal import FAILED, JOURNAL_DIR

IN_MODIFY, IN_ATTRIB, IN_CLOSE_WRITE = 0x2, 0x4, 0x8
IN_MOVED_FROM, IN_MOVED_TO, IN_CREATE, IN_DELETE = 0x40, 0x80, 0x100, 0x200
IN_DELETE_SELF, IN_MOVE_SELF, IN_Q_OVERFLOW, IN_IGNORED = 0x400, 0x800, 0x4000, 0x8000
IN_ONLYDIR, IN_DONT_FOLLOW, IN_EXCL_UNLINK, IN_ISDIR = 0x01000000, 0x02000000, 0x04000000, 0x40000000
WATCHED = (IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE
           | IN_DELETE_SELF | IN_MOVE_SELF | IN_ONLYDIR | IN_DONT_FOLLOW | IN_EXCL_UNLINK)
EVENT = struct.Struct("iIII")  # wd, mask, cookie, name length
RULES = (".ferryignore", ".gitmodules", ".git/index", ".git/info/exclude")  # any .gitignore too
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

    # -- watches ------------------------------------------------------------------------------------
    def _ignored_dirs(self) -> set[str]:
        """What git ignores wholly (a venv, run output): never watched. Outside git: only .git and .ferry."""
        skip = {".git", ".ferry"}
        if os.path.isdir(os.path.join(self.root, ".git")):
            out = subprocess.run(["git", "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory",
                                  "--no-empty-directory"], cwd=self.root, capture_output=True, stdin=subprocess.DEVNULL)
            if out.returncode == 0:
                skip.update(p.rstrip("/") for p in out.stdout.decode("utf-8", "surrogateescape").split("\0")
                            if p.endswith("/"))
        return skip

    def _watch(self, rel: str) -> bool:
        wd = self.libc.inotify_add_watch(self.fd, os.fsencode(os.path.join(self.root, rel) if rel else self.root),
                                         WATCHED)
        if wd < 0:
            err = ctypes.get_errno()
            if err in (2, 20):  # ENOENT, ENOTDIR: gone already; its parent reported that
                return False
            raise OSError(err, f"inotify_add_watch {rel or '.'}: {os.strerror(err)}")
        self.paths[wd] = rel
        return True

    def _walk(self, rel: str, report: bool) -> None:
        """Watch ``rel`` and every directory below it; with ``report``, each file found there counts as changed
        (a directory made or moved in after the last question: its files may predate its watch)."""
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
                if entry.is_dir(follow_symlinks=False):
                    if path not in self.skip:
                        stack.append(path)
                elif report:
                    self.dirty.add(path)

    def start(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
        self.fd = self.libc.inotify_init1(os.O_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.paths = {}
        self.skip = self._ignored_dirs()
        self._watch(JOURNAL_DIR)
        for name in (".git", ".git/info"):
            if os.path.isdir(os.path.join(self.root, name)):
                self._watch(name)
        self._walk("", report=False)
        self.dirty, self.frames, self.kept = set(), [], 0
        self.valid_from = self.epoch + 1  # an answer given before now may not cover what happened before now
        for name in sorted(os.listdir(os.path.join(self.root, JOURNAL_DIR))):  # asked while no watch could hear
            if name.startswith("ask-"):
                self._answer(name)

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
            if path in RULES:
                raise Reset(f"{path} changed")
            return
        if name == ".gitignore" or path in RULES:
            raise Reset(f"{path} changed")
        if mask & IN_ISDIR:
            if mask & (IN_MOVED_FROM | IN_MOVED_TO) and path not in self.skip:
                raise Reset(f"directory {path} moved")  # its watches' paths are stale
            if mask & IN_CREATE and path not in self.skip:
                self._walk(path, report=True)
            elif mask & IN_DELETE:
                self.dirty.add(path + "/")  # everything once below it
            return
        self.dirty.add(path)
        if len(self.dirty) > KEEP_PATHS:  # a flood with no sync asking: forget it, and say so to every asker
            self.dirty, self.frames, self.kept = set(), [], 0
            self.valid_from = self.epoch + 1

    def _answer(self, name: str) -> None:
        """Name: ask-<nonce>-<daemon id>-<epoch of the asker's last answer>; reply: (id, epoch, paths or None)."""
        parts = name.split("-")
        if len(parts) != 4:
            return
        _, _, ident, since = parts
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
            if not select.select([self.fd], [], [], left)[0]:
                continue
            data = os.read(self.fd, 1 << 16)
            pos, epoch = 0, self.epoch
            try:
                while pos < len(data):
                    wd, mask, _, size = EVENT.unpack_from(data, pos)
                    raw = data[pos + EVENT.size:pos + EVENT.size + size].rstrip(b"\0")
                    pos += EVENT.size + size
                    self._event(wd, mask, os.fsdecode(raw))
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
    os.makedirs(state, mode=0o700, exist_ok=True)
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
