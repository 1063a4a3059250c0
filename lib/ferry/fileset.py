"""The project's file set: exactly the files ``sync`` sends, each with its stat, found fast.

Inside git the set is git's own view: tracked files plus untracked files git
does not ignore, and the same inside every submodule (and any repository
nested in the tree), recursively. A file still in git's index but deleted
on disk is simply not in the set. Outside git it is every file under the
project less the default exclude list below. In both modes the project's
``.ferryignore`` (gitignore syntax, ``!negation`` included, matched by the
``pathspec`` library) then takes files away; outside git it is read after
the default list, so ``!model.pt`` there brings back a file the defaults
exclude. ``.git`` and the project's ``.ferry/`` never travel.

Besides the list, a FileSet gives the anchored rsync exclude rules that turn
"walk the whole tree" into exactly this set. A recursive rsync driven by a
short exclude list is ~3.5x faster than feeding the list itself through
``--files-from`` (PERFORMANCE.md), so the rules are what ferry sends with:
git's ignored paths collapsed to directories (``git ls-files --others
--ignored --directory``, one line for a whole venv), plus anything
``.ferryignore`` removed, collapsed the same way.

Matching 5,000 paths against .ferryignore costs ~20 ms in pathspec, so
``scan`` accepts the paths it kept last time under the same rules and only
matches paths it has not seen.
"""

from __future__ import annotations

import os
import re
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import AbstractSet, Callable, Iterable, Iterator, Mapping

from .digest import sha1
from .errors import FerryError
from .heldback import Matcher, groups, held_for_content, sniff
from .tools import require

# Files that hold secrets: never sent to a rented machine, in git projects too (a .env that
# .gitignore forgot would otherwise carry the cloud API keys ferry itself reads from it).
# A `!pattern` line in .ferryignore sends one on purpose; `sync --credentials` is the way
# to put secrets on an instance.
SECRET_EXCLUDES = (
    ".env", ".env.*", "!.env.example", "!.env.sample", "!.env.template",
    "*.pem", "*.key", "id_rsa*", "id_ed25519*", "id_ecdsa*", "!*.pub", ".netrc", ".pypirc",
    "credentials.json", "*service-account*.json", ".aws/", ".ssh/", ".gnupg/",
)

# Never worth shipping to a GPU box: environments, caches, build output, weights, run output, secrets.
DEFAULT_EXCLUDES = (
    ".git/", ".ferry/", ".venv/", "venv/", ".env/", "env/", "__pycache__/", "*.pyc", "*.pyo",
    ".mypy_cache/", ".pytest_cache/", ".ruff_cache/", ".ipynb_checkpoints/", ".tox/", ".nox/", ".cache/",
    "node_modules/", "build/", "dist/", "*.egg-info/", ".DS_Store",
    "*.pt", "*.pth", "*.ckpt", "*.safetensors", "*.bin", "*.gguf", "*.onnx",
    "wandb/", "checkpoints/", "outputs/",
    *SECRET_EXCLUDES,
)

IGNORE_FILE = ".ferryignore"

# (size, mtime in ns, st_mode): what "unchanged since the last sync" compares.
Stat = tuple[int, int, int]


def in_git(project: Path) -> bool:
    return any((d / ".git").exists() for d in (project, *project.parents))


def rsync_literal(path: str) -> str:
    """An rsync pattern matching exactly ``path`` (rsync reads backslashes only in wildcard patterns)."""
    if any(ch in path for ch in "*?[\\"):
        return re.sub(r"([*?\[\\])", r"\\\1", path)
    return path


@dataclass
class FileSet:
    """The files to send (relative POSIX paths, str with surrogateescape) and how to make rsync send just those."""

    root: Path
    git: bool
    files: dict[str, Stat]
    spec_hash: str
    # Paths on disk that are not in the set, known without asking git again (.ferryignore drops, specials).
    dropped: list[str] = field(default_factory=list)
    dropped_dirs: list[str] = field(default_factory=list)
    repos: list[str] = field(default_factory=list)  # "" for the top, "sub/" for each submodule or nested repo
    held_secrets: list[str] = field(default_factory=list)  # dropped because they look like secrets (name or content)
    held: dict[str, list[str]] = field(default_factory=dict)  # default rule -> what it dropped (data, weights, ...)
    specials: list[str] = field(default_factory=list)  # FIFOs, sockets, devices: nothing rsync can send
    # From the change journal (journal.py): the only paths whose stat may differ from the last sync's set.
    touched: frozenset[str] | None = None  # None: a full scan, any path may differ
    _rules: list[str] | None = None
    _git_dirs: list[str] | None = None
    _ignored_dirs: list[str] | None = None

    @property
    def total_bytes(self) -> int:
        return sum(s[0] for s in self.files.values())

    def gone(self, path: str, mode: int) -> bool:
        """Whether ``path`` (sent with ``mode``) is gone from the local disk: missing, or now another kind of thing.

        Only gone files are deleted remotely; a file that is still there but now ignored is left alone.
        """
        try:
            st = os.lstat(os.path.join(self.root, path))
        except (FileNotFoundError, NotADirectoryError):
            return True
        return stat.S_IFMT(st.st_mode) != stat.S_IFMT(mode)

    def exclude_rules(self) -> list[str]:
        """Anchored rsync exclude rules under which a recursive walk of ``root`` yields exactly ``files``."""
        if self._rules is None:
            ignored: list[str] = []
            if self.git:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(max_workers=min(4, len(self.repos))) as pool:
                    for prefix, entries in zip(self.repos, pool.map(self._git_ignored, self.repos)):
                        ignored.extend(prefix + e for e in entries)
            self._git_dirs = [p for p in ignored if p.endswith("/")]
            rules = [".git", "/.ferry/"] if self.git else ["/.ferry/"]
            rules += ["/" + rsync_literal(p) for p in ignored if p not in self.files]
            rules += ["/" + rsync_literal(d) + "/" for d in self.dropped_dirs]
            rules += ["/" + rsync_literal(p) for p in _collapse(self.dropped, self.files)]
            self._rules = rules
        return self._rules

    def ignored_dirs(self) -> list[str]:
        """Directories wholly outside the set for good (a venv, a data dir): changes there never need a sync.
        Of those git lists, only the ones it ignores as directories: git also lists one all of whose files
        happen to be ignored (``logs/`` holding only ``*.log``), where a new file may not be."""
        if self._ignored_dirs is None:
            self.exclude_rules()
            kept: list[str] = []
            for prefix in self.repos:
                mine = [d[len(prefix):] for d in self._git_dirs or [] if d.startswith(prefix) and not any(
                    r != prefix and r.startswith(prefix) and d.startswith(r) for r in self.repos)]
                kept += [prefix + d for d in ignored_as_directories(self.root / prefix, mine)]
            self._ignored_dirs = [d.rstrip("/") for d in kept] + list(self.dropped_dirs)
        return list(self._ignored_dirs)

    def _git_ignored(self, prefix: str) -> list[str]:
        out = _git(self.root / prefix, "ls-files", "-z", "--others", "--ignored", "--exclude-standard",
                   "--directory", "--no-empty-directory")
        return [p for p in out.split("\0") if p]


def ignored_as_directories(cwd: Path, dirs: list[str]) -> list[str]:
    """Of ``dirs`` (relative to the repository at ``cwd``, each ending in "/"), those a rule ignores as a
    directory (``venv/``, ``outputs``): not one whose files all happen to match (``*.log``)."""
    if not dirs:
        return []
    proc = subprocess.run([require("git", "the project is a git repository"), "check-ignore", "-z", "--stdin"],
                          cwd=cwd, input="".join(d + "\0" for d in dirs).encode("utf-8", "surrogateescape"),
                          capture_output=True)
    return [p for p in proc.stdout.decode("utf-8", "surrogateescape").split("\0") if p]


def _collapse(dropped: Iterable[str], kept: AbstractSet[str]) -> list[str]:
    """Dropped paths as few rules as possible: a directory holding nothing kept is one rule, not one per file."""
    dropped = list(dropped)
    if not dropped:
        return []
    kept_dirs = set()
    for path in kept:
        cut = path.rfind("/")
        while cut > 0:
            parent = path[:cut]
            if parent in kept_dirs:
                break
            kept_dirs.add(parent)
            cut = path.rfind("/", 0, cut)
    rules: dict[str, None] = {}
    for path in dropped:
        parts = path.split("/")
        rule = path
        for i in range(1, len(parts)):
            ancestor = "/".join(parts[:i])
            if ancestor not in kept_dirs:
                rule = ancestor + "/"
                break
        rules[rule] = None
    return list(rules)


def _git(cwd: Path, *args: str) -> str:
    git = require("git", "the project is a git repository")
    proc = subprocess.run([git, "-c", "core.quotePath=off", *args], cwd=cwd, capture_output=True,
                          stdin=subprocess.DEVNULL)
    if proc.returncode != 0:
        raise _git_failed(cwd, proc.returncode, proc.stderr)
    return proc.stdout.decode("utf-8", "surrogateescape")


def _git_failed(cwd: Path, code: int, stderr: bytes) -> FerryError:
    detail = stderr.decode(errors="replace").strip().splitlines()
    return FerryError(f"git could not list the files of {cwd}: {detail[-1] if detail else 'exit ' + str(code)}",
                      hint="check the repository with: git status")


def _git_names(cwd: Path, *args: str) -> Iterator[str]:
    """NUL-separated names from git as it prints them, so a caller's stat of each overlaps git's own walk of
    the untracked tree (~100 ms at 100k files); a failing git raises once its output is read."""
    git = require("git", "the project is a git repository")
    proc = subprocess.Popen([git, "-c", "core.quotePath=off", *args], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    # git's complaints are drained as they come (a full stderr pipe would block git while we read stdout), by a
    # thread rather than into a temporary file: importing tempfile cost every `ferry run` ~4 ms
    errors: list[bytes] = []
    drain = threading.Thread(target=lambda: errors.append(proc.stderr.read()), daemon=True)  # type: ignore[union-attr]
    drain.start()
    rest = b""
    try:
        while chunk := proc.stdout.read1(1 << 17):  # type: ignore[union-attr]
            names = (rest + chunk).split(b"\0")
            rest = names.pop()
            for name in names:
                yield name.decode("utf-8", "surrogateescape")
    finally:
        proc.stdout.close()  # type: ignore[union-attr]
        proc.wait()
        drain.join()
        proc.stderr.close()  # type: ignore[union-attr]
    if proc.returncode != 0:
        raise _git_failed(cwd, proc.returncode, b"".join(errors))


def _ignore_lines(root: Path) -> list[str]:
    try:
        return (root / IGNORE_FILE).read_text(encoding="utf-8", errors="surrogateescape").splitlines()
    except FileNotFoundError:
        return []
    except OSError as exc:
        raise FerryError(f"cannot read {root / IGNORE_FILE}: {exc}", hint="fix its permissions") from exc


def _matcher(lines: list[str], user_from: int) -> Matcher | None:
    if not any(l.strip() and not l.lstrip().startswith("#") for l in lines):
        return None
    return Matcher(lines, user_from)


def rules(root: Path) -> tuple[bool, list[str], int, str]:
    """(in git, the rule lines, where the user's own lines start, a hash naming the lot): what decides the set."""
    git = in_git(root)
    # Outside git the defaults stand in for .gitignore; inside, git decides but secrets stay home.
    base = SECRET_EXCLUDES if git else DEFAULT_EXCLUDES
    lines = [*base, *_ignore_lines(root)]
    spec_hash = sha1(("git\n" if git else "plain\n").encode() + "\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()[:16]
    return git, lines, len(base), spec_hash


def never_sent(path: str) -> bool:
    """``.git`` and the project's ``.ferry/``: whatever the rules say."""
    return path[:4] == ".git" and (path == ".git" or path[4] == "/") or \
        path[:6] == ".ferry" and (path == ".ferry" or path[6] == "/")


def plain_reached(path: str, spec: Matcher | None) -> bool:
    """Outside git: whether the walk reaches ``path`` (no directory above it is excluded)."""
    cut = path.find("/")
    while cut > 0:
        parent = path[:cut]
        if parent == ".ferry" or (spec is not None and spec.excluded(parent + "/")):
            return False
        cut = path.find("/", cut + 1)
    return True


def scan(root: Path, known: AbstractSet[str] = frozenset(), known_spec: str | None = None,
         previous: Mapping[str, Stat] | None = None, on_file: Callable[[str, Stat], None] | None = None) -> FileSet:
    """The file set of ``root`` with stats.

    ``known`` paths (kept last time under ``known_spec``) skip matching;
    files whose stat differs from ``previous`` (the last sync's record) have
    their first KB read for secrets. ``on_file(path, stat)`` hears of each file of the set as soon as the
    walk has found it and vetted it (rules and content): a first copy streams them while the walk goes on.
    """
    root = Path(root)
    git, lines, user_from, spec_hash = rules(root)
    spec = _matcher(lines, user_from)
    trusted = known if known_spec == spec_hash else frozenset()
    fs = FileSet(root=root, git=git, files={}, spec_hash=spec_hash)
    by_content: list[str] = []
    root_dir, before = os.fspath(root), previous or {}

    def admit(path: str, st: Stat) -> None:  # sniffed as it is found, not after the walk: only then is it told
        if held_for_content(root_dir, path, st, before, spec):
            by_content.append(path)
        else:
            on_file(path, st)  # type: ignore[misc]

    hook = admit if on_file is not None else None  # without a listener: the walk, then one sniff over the set
    if git:
        _scan_git(fs, "", spec, trusted, depth=0, admit=hook)
    else:
        _scan_plain(fs, spec, trusted, hook)
    secret = Matcher(list(SECRET_EXCLUDES), len(SECRET_EXCLUDES))
    fs.held_secrets = [p for p in [*fs.dropped, *fs.dropped_dirs] if secret.excluded(p) and spec and spec.excluded(p)]
    if on_file is None:
        by_content = sniff(root_dir, fs.files, before, spec)
    for path in by_content:
        del fs.files[path]
    fs.dropped.extend(by_content)
    fs.held_secrets.extend(by_content)
    secrets = set(fs.held_secrets)
    specials = set(fs.specials)
    fs.held = groups(spec, [p for p in fs.dropped if p not in secrets and p not in specials],
                     [d for d in fs.dropped_dirs if d not in secrets and d != ".ferry"])
    return fs


def _keep(path: str, spec: Matcher | None, trusted: AbstractSet[str]) -> bool:
    if spec is None or path in trusted:
        return True
    return not spec.excluded(path)


def _scan_git(fs: FileSet, prefix: str, spec, trusted: AbstractSet[str], depth: int, admit=None) -> None:
    """One repository's files (``prefix`` is its place in the project), then its submodules, recursively."""
    if depth > 16:
        return
    fs.repos.append(prefix)
    listing = _git_names(fs.root / prefix if prefix else fs.root,
                         "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    base = os.fspath(fs.root) + "/"
    lstat, files, S_ISREG, S_ISLNK = os.lstat, fs.files, stat.S_ISREG, stat.S_ISLNK  # the loop runs per file
    excluded = spec.excluded if spec is not None else None
    nested = []
    for name in listing:
        path = prefix + name.rstrip("/") if prefix or name[-1:] == "/" else name
        if not prefix and path[:6] == ".ferry" and (path == ".ferry" or path.startswith(".ferry/")):
            continue
        try:
            st = lstat(base + path)
        except (FileNotFoundError, NotADirectoryError):
            continue  # still in git's index, deleted on disk: not part of what we send
        mode = st.st_mode
        if S_ISREG(mode) or S_ISLNK(mode):
            if excluded is None or path in trusted or not excluded(path):  # as _keep, inline
                files[path] = found = (st.st_size, st.st_mtime_ns, mode)
                if admit is not None:
                    admit(path, found)
            else:
                fs.dropped.append(path)
        elif stat.S_ISDIR(mode):
            if os.path.lexists(base + path + "/.git"):
                nested.append(path + "/")  # a submodule (gitlink) or a repository nested in the tree
            # else: a submodule that was never checked out; nothing to send
        else:
            fs.dropped.append(path)  # sockets, fifos: rsync could not send them anyway
            fs.specials.append(path)
    for sub in nested:
        if spec is not None and spec.excluded(sub):
            fs.dropped_dirs.append(sub.rstrip("/"))
            continue
        _scan_git(fs, sub, spec, trusted, depth + 1, admit)


def _scan_plain(fs: FileSet, spec, trusted: AbstractSet[str], admit=None) -> None:
    """Walk the tree, pruning excluded directories (gitignore: nothing below an excluded dir comes back)."""
    stack = [""]
    base = os.fspath(fs.root)
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(base, rel) if rel else base))
        except (FileNotFoundError, NotADirectoryError, PermissionError):
            continue
        for entry in entries:
            path = rel + entry.name
            if entry.is_dir(follow_symlinks=False):
                if path == ".ferry" or (spec is not None and spec.excluded(path + "/")):
                    fs.dropped_dirs.append(path)
                else:
                    stack.append(path + "/")
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)):
                fs.dropped.append(path)
                fs.specials.append(path)
            elif _keep(path, spec, trusted):
                fs.files[path] = found = (st.st_size, st.st_mtime_ns, st.st_mode)
                if admit is not None:
                    admit(path, found)
            else:
                fs.dropped.append(path)
