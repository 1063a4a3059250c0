"""What ferry last sent to an instance: recorded on the instance, cached in the project.

The record on the instance (``~/.ferry/manifests/<project>-<hash of the
workdir>``) is the authority for remote deletion: a path is deleted remotely
only if ferry sent it (it is in that record), it is gone from the local disk,
and the remote file is still exactly what ferry sent (same size and mtime;
same kind for a symlink). Anything else on the instance (a run's outputs, a
file made by hand, a file a job rewrote) is never deleted. Each record
carries a random token, so a writer can tell whether someone else synced
since it last looked.

The local cache (``.ferry/sync/<key>.json``, a store.JsonStore) holds the
same list with full stats plus that token, and the *kept* list: files the
instance had its own copy of at the last sync (never overwritten), with
their local stat then, so a no-op stays free of network and each is
reported once per local change. When a fresh scan matches the record,
nothing changed since the last successful sync and the network is skipped
entirely; when a few files differ, only those are sent. A cache whose token
no longer matches the instance's record is ignored and the sync compares
everything; a cache that cannot be read is discarded the same way.

Records are NUL-separated (path, size, mtime ns, mode), so any file name,
newlines and leading dashes included, survives the trip on stdin.
"""

from __future__ import annotations

import hashlib
import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path

from .errors import RemoteCommandError, cmd
from .fileset import Stat
from .remote import Remote
from .store import JsonStore

HEADER = b"ferry-manifest 1 "
STALE = 3  # exit status of the remote scripts when the record's token is not the one expected
NO_PYTHON = 97


class NoPython(RemoteCommandError):
    """The instance has no python3, which the guarded remote delete runs on."""


class ManifestChanged(Exception):
    """The instance's record changed since we read it: another sync ran; start over from a fresh read."""


def new_token() -> str:
    return os.urandom(8).hex()


def encode(token: str, files: dict[str, Stat]) -> bytes:
    parts = [HEADER + token.encode() + b"\n"]
    for path, (size, mtime_ns, mode) in files.items():
        parts.append(b"%s\0%d\0%d\0%d\0" % (path.encode("utf-8", "surrogateescape"), size, mtime_ns, mode))
    return b"".join(parts)


def encode_records(files: dict[str, Stat]) -> bytes:
    return encode("", files).split(b"\n", 1)[1]


def decode(data: bytes) -> tuple[str, dict[str, Stat]]:
    if not data.startswith(HEADER):
        return "", {}
    head, _, body = data.partition(b"\n")
    token = head[len(HEADER):].decode(errors="replace").strip()
    fields = body.split(b"\0")
    files: dict[str, Stat] = {}
    for i in range(0, len(fields) - 3, 4):
        try:
            files[fields[i].decode("utf-8", "surrogateescape")] = (int(fields[i + 1]), int(fields[i + 2]), int(fields[i + 3]))
        except ValueError:
            continue
    return token, files


# -- the local cache ---------------------------------------------------------------
def _record_shape(data) -> str | None:
    if not isinstance(data, dict) or not isinstance(data.get("token"), str):
        return "no token"
    for field_name in ("files", "extra", "kept"):
        table = data.get(field_name, {})
        if not isinstance(table, dict):
            return f"{field_name!r} is not an object"
        for value in table.values():
            if not (isinstance(value, list) and len(value) == 3 and all(type(v) is int for v in value)):
                return f"a {field_name!r} entry is not [size, mtime_ns, mode]"
    return None


@dataclass
class LocalRecord:
    """The project's copy of what it last sent to one instance+workdir, with the token it wrote there."""

    path: Path
    token: str = ""
    spec_hash: str = ""
    files: dict[str, Stat] = field(default_factory=dict)
    extra: dict[str, Stat] = field(default_factory=dict)  # sent, gone locally, kept remotely (--delete=never)
    kept: dict[str, Stat] = field(default_factory=dict)  # never sent: the instance had its own copy (local stat then)

    @classmethod
    def load(cls, path: Path) -> "LocalRecord":
        data = cls._store(path).read()  # missing or unreadable: empty, so the sync compares everything
        if not data:
            return cls(path)
        table = lambda name: {k: tuple(v) for k, v in (data.get(name) or {}).items()}  # noqa: E731
        return cls(path, data["token"], str(data.get("spec") or ""), table("files"), table("extra"),  # type: ignore[arg-type]
                   table("kept"))  # type: ignore[arg-type]

    @staticmethod
    def _store(path: Path) -> JsonStore:
        return JsonStore(path, default=dict, check=_record_shape, cache=True)

    @property
    def valid(self) -> bool:
        return bool(self.token)

    def save(self) -> None:
        self._store(self.path).write({"token": self.token, "spec": self.spec_hash, "files": self.files,
                                      "extra": self.extra, "kept": self.kept})

    def forget(self) -> None:
        self.path.unlink(missing_ok=True)


def local_key(instance, workdir: str) -> str:
    """Per instance incarnation and workdir: a re-created instance with the same name starts from nothing."""
    ident = f"{instance.provider}\0{instance.id}\0{instance.created_at}\0{workdir}"
    return hashlib.sha1(ident.encode()).hexdigest()[:16]


def remote_key(project_name: str, workdir: str) -> str:
    return f"{project_name}-{hashlib.sha1(workdir.encode()).hexdigest()[:12]}"


# -- the record on the instance --------------------------------------------------------
# Delete what ferry sent and is gone locally, only while the remote file is still what ferry sent.
# Runs on the instance as `python3 -c`; file names only ever travel on stdin.
_DELETE_PY = r'''
import os, stat, sys
wd, rel, expect, dry, write = sys.argv[1:6]
home = os.path.expanduser("~")
mpath = os.path.join(home, rel)
try:
    with open(mpath, "rb") as f:
        head = f.readline()
    cur = head.split(b" ", 2)[2].strip().decode() if head.startswith(b"ferry-manifest 1 ") else ""
except FileNotFoundError:
    cur = ""
if cur != expect:
    sys.stdout.write("stale " + cur)
    sys.exit(3)
data = sys.stdin.buffer.read()
manifest = b""
if write == "1":
    n, _, data = data.partition(b"\n")
    data, manifest = data[:int(n)], data[int(n):]
fields = data.split(b"\0")
root = os.path.realpath(wd).encode()
out, parents = [], set()
for i in range(0, len(fields) - 3, 4):
    p, size, mtime_ns, mode = fields[i], int(fields[i + 1]), int(fields[i + 2]), int(fields[i + 3])
    parts = p.split(b"/")
    if p.startswith(b"/") or b".." in parts or b"" in parts or b"." in parts:
        continue
    full = os.path.join(os.fsencode(wd), p)
    try:
        st = os.lstat(full)
    except (FileNotFoundError, NotADirectoryError):
        out.append(b"M" + p)
        continue
    parent = os.path.realpath(os.path.dirname(full))
    if parent != root and not parent.startswith(root + b"/"):
        out.append(b"K" + p)
        continue
    if stat.S_ISLNK(mode):
        same = stat.S_ISLNK(st.st_mode)
    else:
        same = stat.S_ISREG(st.st_mode) and st.st_size == size and int(st.st_mtime) == mtime_ns // 10**9
    if not same:
        out.append(b"K" + p)
        continue
    if dry != "1":
        os.unlink(full)
        parents.add(os.path.dirname(full))
    out.append(b"D" + p)
for d in sorted(parents, key=len, reverse=True):
    while d.startswith(root + b"/"):
        try:
            os.rmdir(d)
        except OSError:
            break
        d = os.path.dirname(d)
if write == "1" and dry != "1":
    os.makedirs(os.path.dirname(mpath), exist_ok=True)
    tmp = "%s.tmp.%d" % (mpath, os.getpid())
    with open(tmp, "wb") as f:
        f.write(manifest)
    os.replace(tmp, mpath)
sys.stdout.buffer.write(b"\0".join(out))
'''


@dataclass
class Deletion:
    deleted: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # changed on the instance since ferry sent it: left alone


class RemoteManifest:
    """The instance's record for one workdir, and the three remote steps that use it (one ssh exec each)."""

    def __init__(self, remote: Remote, workdir: str, key: str):
        self.remote = remote
        self.workdir = workdir
        self.rel = f".ferry/manifests/{key}"

    @property
    def _path_sh(self) -> str:
        return '"$HOME"/' + shlex.quote(self.rel)

    def fetch(self) -> tuple[bool, str, dict[str, Stat]]:
        """(workdir holds anything, token, files) from one exec."""
        wd = shlex.quote(self.workdir)
        command = (
            f'if [ -n "$(ls -A {wd} 2>/dev/null | head -n 1)" ]; then echo occupied; else echo empty; fi; '
            f"cat {self._path_sh} 2>/dev/null; exit 0"
        )
        proc = self.remote.run(command)
        status, _, data = proc.stdout.partition(b"\n")
        token, files = decode(data)
        return status.strip() == b"occupied", token, files

    def write(self, token: str, files: dict[str, Stat], expect: str) -> None:
        """Replace the record, unless someone else replaced it since we read ``expect``."""
        command = (
            f"m={self._path_sh}; cur=; "
            f'if [ -f "$m" ]; then IFS= read -r cur < "$m" || true; fi; '
            f'case "$cur" in "ferry-manifest 1 "*) cur=${{cur#ferry-manifest 1 }};; *) cur=;; esac; '
            f'[ "$cur" = {shlex.quote(expect)} ] || {{ printf "stale %s" "$cur"; exit {STALE}; }}; '
            f'mkdir -p "$(dirname "$m")" && cat > "$m.tmp.$$" && mv -f "$m.tmp.$$" "$m"'
        )
        proc = self.remote.run(command, input=encode(token, files), check=False)
        self._check(proc, "record what was sent")

    def delete(self, candidates: dict[str, Stat], expect: str, dry_run: bool = False,
               then_write: tuple[str, dict[str, Stat]] | None = None) -> Deletion:
        """Delete ``candidates`` that are still exactly what ferry sent; optionally replace the record after."""
        records = encode_records(candidates)
        payload = records
        if then_write is not None:
            payload = b"%d\n" % len(records) + records + encode(*then_write)
        args = " ".join(shlex.quote(a) for a in (
            self.workdir, self.rel, expect, "1" if dry_run else "0", "1" if then_write is not None else "0"))
        command = (
            f"command -v python3 >/dev/null 2>&1 || exit {NO_PYTHON}; "
            f"exec python3 -c {shlex.quote(_DELETE_PY)} {args}"
        )
        proc = self.remote.run(command, input=payload, check=False)
        if proc.returncode == NO_PYTHON:
            raise NoPython(
                f"{self.remote.instance.name} has no python3, which ferry needs to delete files safely there",
                hint="install python3 on the instance to let ferry delete them",
            )
        self._check(proc, "delete files it sent before")
        result = Deletion()
        for item in proc.stdout.split(b"\0"):
            if item[:1] == b"D":
                result.deleted.append(item[1:].decode("utf-8", "surrogateescape"))
            elif item[:1] == b"K":
                result.kept.append(item[1:].decode("utf-8", "surrogateescape"))
        return result

    def _check(self, proc, what: str) -> None:
        if proc.returncode == STALE:
            raise ManifestChanged(proc.stdout.decode(errors="replace"))
        if proc.returncode != 0:
            detail = proc.stderr.decode(errors="replace").strip().splitlines()
            raise RemoteCommandError(
                f"could not {what} on {self.remote.instance.name} (exit {proc.returncode})"
                + (f": {detail[-1]}" if detail else ""),
                hint=f"check the instance: {cmd(f'ssh --name {self.remote.instance.name}')}",
            )


def cache_path(project: Path, key: str) -> Path:
    return project / ".ferry" / "sync" / f"{key}.json"

