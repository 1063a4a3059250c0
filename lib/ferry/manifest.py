"""What ferry last sent to an instance: recorded on the instance, cached in the project.

The record on the instance (``~/.ferry/manifests/<project>-<hash of the
workdir>``) is the authority for remote deletion: a path is deleted remotely
only if ferry sent it (it is in that record), it is gone from the local disk,
and the remote file is still exactly what ferry sent (same size and mtime;
same kind for a symlink). Anything else on the instance (a run's outputs, a
file made by hand, a file a job rewrote) is never deleted. Each record
carries a random token, so a writer can tell whether someone else synced
since it last looked.

The local cache (``.ferry/sync/<key>.rec``, localrecord.py) holds the
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

import os
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from .digest import sha1
from .errors import RemoteCommandError, cmd
from .fileset import Stat
from .remote import Remote

HEADER = b"ferry-manifest 1 "
STALE = 3  # exit status of the remote scripts when the record's token is not the one expected
NO_PYTHON = 97
GONE = -1  # the size of an appended record that takes its path out (an older ferry reads it as never matching)


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


def encode_delta(changed: dict[str, Stat], gone: list[str]) -> bytes:
    """Records appended to a record: later entries win, and a path with size ``GONE`` leaves it."""
    tombstones = {path: (GONE, 0, 0) for path in gone}
    return encode_records({**tombstones, **changed})


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
            path, size = fields[i].decode("utf-8", "surrogateescape"), int(fields[i + 1])
            if size == GONE:  # appended after the path was sent: it is no longer ferry's
                files.pop(path, None)
            else:
                files[path] = (size, int(fields[i + 2]), int(fields[i + 3]))
        except ValueError:
            continue
    return token, files


def local_key(instance, workdir: str) -> str:
    """Per instance incarnation and workdir: a re-created instance with the same name starts from nothing."""
    ident = f"{instance.provider}\0{instance.id}\0{instance.created_at}\0{workdir}"
    return sha1(ident.encode()).hexdigest()[:16]


def remote_key(project_name: str, workdir: str) -> str:
    return f"{project_name}-{sha1(workdir.encode()).hexdigest()[:12]}"


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
if write != "0":
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
elif write == "2" and dry != "1":
    token, _, delta = manifest.partition(b"\n")
    with open(mpath, "r+b") as f:
        f.seek(0, 2)
        f.write(delta)
        f.flush()
        f.seek(0)
        f.write(b"ferry-manifest 1 " + token + b"\n")
sys.stdout.buffer.write(b"\0".join(out))
'''


@dataclass(frozen=True)
class Update:
    """A new record for the instance: ``whole`` (mode 1) or appended to the current one (mode 2)."""

    mode: str
    payload: bytes

    @classmethod
    def whole(cls, token: str, files: dict[str, Stat]) -> "Update":
        return cls("1", encode(token, files))

    @classmethod
    def appended(cls, token: str, changed: dict[str, Stat], gone: list[str]) -> "Update":
        """Later entries win and a path with size GONE leaves the record. The records go first and the
        header's token after them, in place (tokens have one length): cut short in between, the record lists
        a file ferry did send under the old token, and the next sync's token check compares everything."""
        return cls("2", token.encode() + b"\n" + encode_delta(changed, gone))


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

    def write(self, update: Update, expect: str) -> None:
        """Replace the record (or append to it), unless someone else replaced it since we read ``expect``."""
        if update.mode == "1":
            store = 'mkdir -p "$(dirname "$m")" && cat > "$m.tmp.$$" && mv -f "$m.tmp.$$" "$m"'
            data = update.payload
        else:
            token, _, data = update.payload.partition(b"\n")
            store = f'cat >> "$m" && printf "ferry-manifest 1 %s\\n" {shlex.quote(token.decode())} ' \
                    f'| dd of="$m" conv=notrunc status=none'
        command = f"m={self._path_sh}; " + _unless_stale(expect) + store
        proc = self.remote.run(command, input=data, check=False)
        self._check(proc, "record what was sent")

    def begin_write(self, update: Update, expect: str, before: str) -> "PendingWrite":
        """A whole-record write whose exec opens now and acts once :meth:`PendingWrite.complete` sends the record:
        its ssh session is made while a transfer still runs. On the instance the record is read first, then (if
        it arrived whole and the record is still ``expect``'s) ``before`` runs, then the record is replaced;
        ``before`` exits STALE itself to call it off."""
        assert update.mode == "1"
        command = (
            f"m={self._path_sh}; t=\"$m.tmp.$$\"; trap 'rm -f \"$t\"' EXIT; "
            f'mkdir -p "$(dirname "$m")" && cat > "$t" && [ "$(wc -c < "$t")" -eq {len(update.payload)} ] || exit 1; '
            + _unless_stale(expect) + f'{{ {before}; }} && mv -f "$t" "$m"'
        )
        return PendingWrite(self, command, update.payload)

    def retoken(self, expect: str, token: str) -> str:
        """Shell that gives the record ``token`` in place of ``expect`` (one length: only its header line is
        rewritten), or exits STALE if the record's token is no longer ``expect``. Run in the exec of a transfer,
        after it: rewriting a record that is already right costs neither an exec nor sending it again."""
        assert len(expect) == len(token)
        return (
            f"m={self._path_sh}; cur=; "
            f'if [ -f "$m" ]; then IFS= read -r cur < "$m" || true; fi; '
            f'[ "$cur" = {shlex.quote(HEADER.decode() + expect)} ] || {{ printf "stale %s" "$cur"; exit {STALE}; }}; '
            f'printf "ferry-manifest 1 %s\\n" {shlex.quote(token)} | dd of="$m" conv=notrunc status=none'
        )

    def delete(self, candidates: dict[str, Stat], expect: str, dry_run: bool = False,
               then_write: Update | None = None) -> Deletion:
        """Delete ``candidates`` that are still exactly what ferry sent; optionally replace the record after."""
        records = encode_records(candidates)
        payload = records
        if then_write is not None:
            payload = b"%d\n" % len(records) + records + then_write.payload
        args = " ".join(shlex.quote(a) for a in (
            self.workdir, self.rel, expect, "1" if dry_run else "0", then_write.mode if then_write is not None else "0"))
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


def _unless_stale(expect: str) -> str:
    """Shell that exits STALE, saying so, unless the record at ``$m`` still has the token ``expect``."""
    return ('cur=; if [ -f "$m" ]; then IFS= read -r cur < "$m" || true; fi; '
            'case "$cur" in "ferry-manifest 1 "*) cur=${cur#ferry-manifest 1 };; *) cur=;; esac; '
            f'[ "$cur" = {shlex.quote(expect)} ] || {{ printf "stale %s" "$cur"; exit {STALE}; }}; ')


class PendingWrite:
    """An exec of :meth:`RemoteManifest.begin_write`, waiting for its record on stdin."""

    def __init__(self, manifest: RemoteManifest, command: str, payload: bytes):
        self.manifest, self.payload = manifest, payload
        self.argv = manifest.remote.ssh_argv() + [command]
        self.proc = subprocess.Popen(self.argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def complete(self) -> None:
        """Send the record and wait: ManifestChanged if it was called off, RemoteCommandError if it failed."""
        out, err = self.proc.communicate(self.payload)
        self.manifest._check(subprocess.CompletedProcess(self.argv, self.proc.returncode, out, err),
                             "record what was sent")

    def cancel(self) -> None:
        """Never act: the record does not arrive whole (the instance checks its length), whatever ssh does next."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


def cache_path(project: Path, key: str) -> Path:
    return project / ".ferry" / "sync" / f"{key}.rec"

