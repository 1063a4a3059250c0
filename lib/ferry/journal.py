"""The change journal, as a sync uses it: the file set rebuilt from the last sync plus what changed since.

In a project of ``sync.journal_min_files`` files or more (20,000 by
default), a sync leaves a daemon behind (journald.py) that watches the tree.
The next sync asks it which paths changed since the sync before, and builds
the file set from the local record of that sync (which holds the whole set
with stats) and those paths alone: each is stat'ed, tested against the
rules and, if new to the set, put to git (one ``ls-files`` limited to those
paths; after a change to git's index, git's whole set is listed instead,
still far cheaper than stat'ing every file). When the daemon saw nothing
change, not even the record is read. The answer is trusted only when:

* the record is the one this journal state was saved with (same token and
  file), and the rules are the same: ``.ferryignore``, ferry's defaults,
  and git's own config and excludes file outside the project;
* the daemon that answers is the one that answered then, still holding
  every change since (it says "look at everything" after anything it may
  have missed: an overflow, a moved directory, a changed ``.gitignore``);
* at most ``LIST_LIMIT`` paths changed, none of them a hard-linked file
  (a write through its other name was not heard), in a single repository
  (no submodule, no new nested one).

Anything else, and the sync scans the whole tree as it always did. What
inotify cannot see is missed until ``sync --full``: a write through a hard
link from outside the tree or through a shared mmap, or a change another
machine makes on a network file system (the daemon refuses to run on one).
State lives beside the record: ``.ferry/sync/<key>.journal`` (marshal; any
damage just means a full scan). Linux only (inotify); elsewhere syncs scan.
"""

from __future__ import annotations

import fcntl
import marshal
import os
import select
import stat
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from . import fileset
from .fileset import SECRET_EXCLUDES, FileSet
from .heldback import Matcher, groups, held_for_content

if TYPE_CHECKING:
    from .localrecord import LocalRecord

LIST_LIMIT = 1000  # more changed paths than this and a full scan is about as cheap
ASK_TIMEOUT = 1.0  # a daemon that does not answer within this is taken to be away: the sync scans
IDLE = 3600  # the daemon exits after this many seconds without a question
STATE_VERSION = 2
JOURNAL_DIR = ".ferry/journal"  # the daemon's pid file and log, and where questions are asked
INDEX = ".git/index"  # in an answer: git's index changed (what is tracked may have)
FAILED = "failed"  # written there by a daemon that could not watch (no inotify watches left, a network fs)
RETRY_AFTER = 3600  # seconds before a sync tries a daemon again after one failed


@dataclass
class Answer:
    ident: str  # the daemon's, new each time one starts
    epoch: int  # this answer's number: the next question asks for what changed after it
    paths: list[str] | None  # changed since the asker's epoch ("dir/" for a removed directory); None: look at all


def supported(root: Path) -> bool:
    """inotify, and the project is its repository's top (or not in git): every rule file is inside the tree."""
    return sys.platform.startswith("linux") and ((root / ".git").is_dir() or not fileset.in_git(root))


def _pid_file(root: Path) -> Path:
    return root / JOURNAL_DIR / "pid"


def daemon_pid(root: Path) -> int | None:
    """The pid of the project's daemon while one holds its lock, else None."""
    try:
        fd = os.open(_pid_file(root), os.O_RDONLY)
    except OSError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        text = os.pread(fd, 32, 0).decode(errors="replace").strip()
        return int(text) if text.isdigit() else None
    else:
        return None
    finally:
        os.close(fd)


def start(root: Path) -> None:
    """Start the project's daemon in the background (it exits at once if one runs already)."""
    state = root / JOURNAL_DIR
    state.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        if os.stat(state / FAILED).st_mtime > time.time() - RETRY_AFTER:
            return  # the last one could not watch this tree; syncs scan it, as they would without a journal
    except OSError:
        pass
    log_path = state / "log"
    small = not log_path.exists() or log_path.stat().st_size < 1 << 18
    with open(log_path, "ab" if small else "wb") as log:  # sh puts it in the background and exits: nothing to reap
        subprocess.run(["/bin/sh", "-c", 'exec "$0" "$@" &', sys.executable, "-m", "ferry.journald", os.fspath(root),
                        str(IDLE)], cwd="/", stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log,
                       start_new_session=True, check=False)


def stop(root: Path, timeout: float = 5.0) -> None:
    """Stop the project's daemon by its pid and wait for it to let go of its lock."""
    import signal

    pid = daemon_pid(root)
    if pid is None:
        return
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while daemon_pid(root) is not None and time.monotonic() < deadline:
        time.sleep(0.01)


def ask(root: Path, ident: str = "none", since: int | None = None) -> Answer | None:
    """What changed since answer ``since`` of daemon ``ident``; None when no daemon answers."""
    directory = root / JOURNAL_DIR
    nonce = os.urandom(6).hex()
    waiting = directory / f".q-{nonce}"
    try:
        os.mkfifo(waiting, 0o600)
    except OSError:
        return None
    fd = -1
    try:
        fd = os.open(waiting, os.O_RDONLY | os.O_NONBLOCK)
        asked = directory / f"ask-{nonce}-{ident}-{'x' if since is None else since}"
        os.rename(waiting, asked)  # the question: an event ordered after every change made before it
        waiting = asked
        chunks: list[bytes] = []
        end = time.monotonic() + ASK_TIMEOUT
        while True:
            left = end - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                return None
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        if fd >= 0:
            os.close(fd)
        try:
            os.unlink(waiting)
        except OSError:
            pass
    try:
        ident, epoch, paths = marshal.loads(b"".join(chunks))
    except (ValueError, EOFError, TypeError):
        return None
    return Answer(ident, epoch, paths)


# -- the state saved with each record -----------------------------------------------------------------
def _state_path(record_path: Path) -> Path:
    return record_path.with_suffix(".journal")


def _identity(path: Path) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _git_globals(previous: dict | None) -> list | None:
    """Git's rules from outside the project (the user's and the system's config, the user's ignore file), as the
    identities of their files: any change there and the next sync scans everything. None outside git."""
    from .config import getenv

    home = Path.home()
    xdg = Path(getenv("XDG_CONFIG_HOME") or home / ".config")
    configs = [_identity(p) for p in (home / ".gitconfig", xdg / "git" / "config", Path("/etc/gitconfig"))]
    if previous and previous.get("globals") and previous["globals"][0] == configs:
        excludes = previous["globals"][1]  # the configs are as they were: so is the excludes file's path
    else:
        out = subprocess.run(["git", "config", "--get", "core.excludesFile"], capture_output=True,
                             stdin=subprocess.DEVNULL, check=False)
        named = out.stdout.decode("utf-8", "surrogateescape").strip()
        excludes = os.path.expanduser(named) if named else os.fspath(xdg / "git" / "ignore")
    return [configs, excludes, _identity(Path(excludes))]


def _globals_unchanged(saved: list | None) -> bool:
    return saved is None or (_git_globals({"globals": saved}) == saved)


def remember(record: "LocalRecord", fs: FileSet, answer: Answer) -> None:
    """After a sync: the answer it started from, with the file set's parts the record does not hold, and the
    record file's identity (while it is the same file, its token is this one)."""
    body = {"version": STATE_VERSION, "token": record.token, "ident": answer.ident, "epoch": answer.epoch,
            "spec": fs.spec_hash, "git": fs.git, "repos": fs.repos, "dropped": fs.dropped,
            "dropped_dirs": fs.dropped_dirs, "specials": fs.specials, "held_secrets": fs.held_secrets,
            "held": fs.held, "record": _identity(record.path), "extra": bool(record.extra),
            "globals": _git_globals(_state(record.path)) if fs.git else None}
    path = _state_path(record.path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}")
    try:
        tmp.write_bytes(marshal.dumps(body))
        os.replace(tmp, path)
    except OSError:
        forget(record)


def forget(record: "LocalRecord") -> None:
    try:
        _state_path(record.path).unlink()
    except OSError:
        pass


def _state(record_path: Path, token: str | None = None) -> dict | None:
    """The state saved with the record at ``record_path`` (with ``token``; None: whatever the file holds now)."""
    try:
        body = marshal.loads(_state_path(record_path).read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    if not (isinstance(body, dict) and body.get("version") == STATE_VERSION):
        return None
    if token is not None and body.get("token") != token:
        return None
    return body


def settle(record: "LocalRecord", fs: FileSet, answer: Answer | None, min_files: int) -> None:
    """After a sync that succeeded: save what the next one asks from, and start a daemon if the set is large."""
    if answer is not None:
        remember(record, fs, answer)
    else:
        forget(record)
    if min_files and len(fs.files) >= min_files and supported(fs.root) and daemon_pid(fs.root) is None:
        start(fs.root)


# -- the file set ---------------------------------------------------------------------------------------
def scan(root: Path, record: "LocalRecord", full: Callable[[], FileSet]) -> tuple[FileSet, Answer | None, bool]:
    """(the file set, the daemon's answer if any, whether it came from the journal rather than ``full()``)."""
    if not supported(root) or daemon_pid(root) is None:
        return full(), None, False
    state = _state(record.path, record.token) if record.valid else None
    answer = ask(root, state["ident"], state["epoch"]) if state else ask(root)
    if answer is not None and answer.paths is not None and state is not None and answer.ident == state["ident"]:
        fs = updated(root, record, state, answer.paths)
        if fs is not None:
            return fs, answer, True
    return full(), answer, False


def _saved_set(root: Path, state: dict, files: dict | None, cls: type = FileSet) -> FileSet | None:
    """The file set as the state's sync left it (``files`` from its record); None if the rules changed since."""
    git, _, _, spec_hash = fileset.rules(root)
    if spec_hash != state["spec"] or git != state["git"] or len(state["repos"]) > 1:
        return None  # (a submodule's own index is outside what the daemon watches)
    if not _globals_unchanged(state.get("globals")):
        return None
    return cls(root=root, git=git, files=files, spec_hash=spec_hash, dropped=list(state["dropped"]),
               dropped_dirs=list(state["dropped_dirs"]), repos=list(state["repos"]),
               held_secrets=list(state["held_secrets"]), held=dict(state["held"]), specials=list(state["specials"]),
               touched=frozenset())


class _Recorded(FileSet):
    """A file set the journal vouches is exactly the last sync's: its files are read from that sync's record only
    if someone asks for them (a no-op sync of 100k files need not spend ~40 ms decoding it)."""

    record_path: Path | None = None

    @property  # type: ignore[override]
    def files(self) -> dict:
        if self._files is None:
            from .localrecord import LocalRecord

            record = LocalRecord.load(self.record_path)  # type: ignore[arg-type]
            self._files = {**record.files, **record.kept}
        return self._files

    @files.setter
    def files(self, value) -> None:
        self._files = value


def quiet(root: Path, record_path: Path, delete: str) -> FileSet | None:
    """The file set, when the journal says nothing changed since the sync that wrote ``record_path`` (still the
    same file) and that sync left nothing for this one to do; else None (the sync goes the ordinary way)."""
    if not supported(root):
        return None
    state = _state(record_path)
    if state is None or state["record"] != _identity(record_path) or (state["extra"] and delete != "never"):
        return None
    if daemon_pid(root) is None:
        return None
    answer = ask(root, state["ident"], state["epoch"])
    if answer is None or answer.ident != state["ident"] or answer.paths != []:
        return None
    fs = _saved_set(root, state, None, _Recorded)
    if fs is not None:
        fs.record_path = record_path  # type: ignore[attr-defined]
    return fs


def updated(root: Path, record: "LocalRecord", state: dict, paths: list[str]) -> FileSet | None:
    """The last sync's file set with ``paths`` looked at again; None where only a full scan can tell."""
    if len(paths) > LIST_LIMIT or any(p == ".git" or p.endswith("/.git") for p in paths):
        return None  # (a repository made or gone inside the tree: which files are whose is the full scan's business)
    files = {**record.files, **record.kept} if record.kept else dict(record.files)
    fs = _saved_set(root, state, files)
    if fs is None or not paths:
        return fs
    git, lines, user_from, _ = fileset.rules(root)
    touched = {p for p in paths if not p.endswith("/") and p != INDEX}
    gone_dirs = tuple(p for p in paths if p.endswith("/"))
    if gone_dirs:
        touched.update(p for p in [*files, *fs.dropped] if p.startswith(gone_dirs))
    listed: set[str] | None = None
    if INDEX in paths:  # git's index changed: what is tracked may have, so git's whole set is listed again
        listed = {n for n in fileset._git(root, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
                  .split("\0") if n and not fileset.never_sent(n)}
        if any(n.endswith("/") for n in listed):
            return None  # a repository nested in the tree
        touched |= listed.symmetric_difference(files.keys() | set(fs.dropped))
    if len(touched) > LIST_LIMIT:
        return None
    fs.touched = frozenset(touched)
    known = {p for p in touched if p in files} | set(fs.dropped).intersection(touched)
    for path in touched:  # each is taken out, then put back as it is now
        files.pop(path, None)
    fs.dropped = [p for p in fs.dropped if p not in touched]
    fs.specials = [p for p in fs.specials if p not in touched]
    fs.held_secrets = [p for p in fs.held_secrets if p not in touched]
    spec = fileset._matcher(lines, user_from)
    if listed is not None:
        members = sorted(p for p in touched if p in listed)
    else:
        unknown = sorted(p for p in touched - known if not fileset.never_sent(p))
        members = sorted(known)
        if unknown and git:
            found = fileset._git(root, "--literal-pathspecs", "ls-files", "-z", "--cached", "--others",
                                 "--exclude-standard", "--", *unknown)
            members += [p for p in found.split("\0") if p]
        elif unknown:
            members += [p for p in unknown if fileset.plain_reached(p, spec)]
    secret = Matcher(list(SECRET_EXCLUDES), len(SECRET_EXCLUDES))
    base = os.fspath(root) + "/"
    for path in members:
        try:
            st = os.lstat(base + path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        mode = st.st_mode
        if stat.S_ISDIR(mode):
            if git and os.path.lexists(base + path + "/.git"):
                return None  # a new nested repository
            continue
        if st.st_nlink > 1 and stat.S_ISREG(mode):
            return None  # a write through one of its other names changed it too, and only this name was heard
        if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
            fs.dropped.append(path)
            fs.specials.append(path)
        elif spec is None or not spec.excluded(path):
            found = (st.st_size, st.st_mtime_ns, mode)
            if held_for_content(base[:-1], path, found, record.files, spec):
                fs.dropped.append(path)
                fs.held_secrets.append(path)
            else:
                files[path] = found
        else:
            fs.dropped.append(path)
            if secret.excluded(path):
                fs.held_secrets.append(path)
    quiet = set(fs.held_secrets) | set(fs.specials)
    fs.held = groups(spec, [p for p in fs.dropped if p not in quiet],
                     [d for d in fs.dropped_dirs if d not in quiet and d != ".ferry"])
    return fs
