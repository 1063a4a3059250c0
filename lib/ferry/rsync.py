"""The rsync and tar processes behind sync and download: argv, progress, what they did, and their failures.

Everything here runs one transfer and reports it: ``run`` drives rsync
(with a live bar on a terminal once it has run a second) and returns its
stdout, which :class:`Sent` reads (``--stats`` and ``%i %n`` item lines);
``tar_stream`` sends a file list as one uncompressed tar through ssh (the
floor for a first copy). Exit codes become ferry's errors in one place: a
broken connection is an SSHError (callers may retry), exit 20 is the user's
Ctrl-C, anything else a RemoteCommandError with rsync's own first line.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, AbstractSet, Iterable, Sequence

from .errors import FerryError, RemoteCommandError
from .fileset import rsync_literal
from .output import TransferBar
from .tools import require, which

if TYPE_CHECKING:
    from .remote import Remote

RSYNC_FLAGS = ["-rlpt", "--protect-args", "--stats"]
CONNECTION_EXITS = {10, 12, 30, 35, 255}  # socket I/O, protocol stream, timeouts, ssh itself
ITEM_FORMAT = "--out-format=%i %n"
ITEM = re.compile(r"([<>ch.*][fdLDS][^ ]{9}) (.*)\Z", re.S)
PROGRESS = re.compile(rb"^\s*([\d,.]+)\s+(\d+)%\s+(\S+/s)\s+(\d+:\d\d:\d\d)")


def rsync_binary() -> str:
    return require("rsync", "ferry moves files with rsync")


def unescape(name: str) -> str:
    """A name as rsync prints it (``\\#ooo`` for control and non-ASCII bytes) back to the real one."""
    if "\\#" not in name:
        return name
    raw = re.sub(rb"\\#([0-7]{3})", lambda m: bytes([int(m.group(1), 8)]), name.encode("utf-8", "surrogateescape"))
    return raw.decode("utf-8", "surrogateescape")


def parse_stats(text: str) -> tuple[int, int]:
    """(regular files transferred, bytes) from rsync's ``--stats``."""
    files = re.search(r"Number of regular files transferred: ([\d,.]+)", text)
    size = re.search(r"Total transferred file size: ([\d,.]+)", text)
    as_int = lambda m: int(re.sub(r"[,.]", "", m.group(1))) if m else 0  # noqa: E731
    return as_int(files), as_int(size)


@dataclass
class Sent:
    """What one or more upload rsyncs did, from their ``--stats`` and ``%i %n`` lines."""

    files: int = 0
    bytes: int = 0
    sent: list[str] = field(default_factory=list)  # files and links sent (or, in a dry run, that would be)
    replaced: list[str] = field(default_factory=list)  # of those, the ones that replaced a remote file
    tried_new: set[str] = field(default_factory=set)  # sent with --ignore-existing (ferry never sent them)
    kept: list[str] = field(default_factory=list)  # of those, the ones not sent: the instance has its own copy

    def add(self, out: str) -> None:
        files, size = parse_stats(out)
        self.files, self.bytes = self.files + files, self.bytes + size
        for line in out.split("\n"):
            m = ITEM.match(line.rstrip("\r"))
            if not m or m.group(1)[0] not in "<c" or m.group(1)[1] == "d":
                continue
            name = unescape(m.group(2))
            self.sent.append(name)
            if m.group(1)[2:] != "+" * 9:  # (a file that became a link shows as new: not counted, still backed up)
                self.replaced.append(name)


CONFLICT = re.compile(r"(?:could not make way for new (?:regular file|symlink|directory|device|special file)"
                      r"|cannot delete non-empty directory|delete_file: \w+\(.*?\) failed): (.+?)(?: \(.*\))?$")


def conflicts(stderr: str) -> list[str]:
    """The paths rsync could not put in place because something of another kind stands there."""
    return [rsync_name for line in stderr.splitlines() if (m := CONFLICT.search(line)) and (rsync_name := unescape(m.group(1)))]


def raise_for(code: int, stderr: bytes, remote: "Remote", what: str = "rsync", partial: list[str] | None = None) -> None:
    """Exit codes as ferry's errors. With ``partial``, an exit 23 whose only errors are conflicts is not
    raised: the conflicting paths are appended to ``partial`` for the caller to report."""
    if code in (0, 24):  # 24: a file vanished while sending, which is fine
        return
    text = stderr.decode(errors="replace")
    if code == 23 and partial is not None:
        errors = [l for l in text.splitlines() if l.strip() and not l.startswith("rsync error:")]
        found = conflicts(text)
        if found and len(found) == len(errors):
            partial.extend(found)
            return
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


def run(argv: list[str], remote: "Remote", progress: bool, label: str, partial: list[str] | None = None) -> str:
    """Run rsync; return its stdout (stats, itemized lines). Connection failures raise SSHError.

    ``partial`` collects conflicting paths instead of failing (see raise_for).
    """
    if not progress:
        proc = subprocess.run(argv, capture_output=True, stdin=subprocess.DEVNULL)
        raise_for(proc.returncode, proc.stderr, remote, partial=partial)
        return proc.stdout.decode("utf-8", "replace")
    argv = [argv[0], "--info=progress2", *argv[1:]]
    bar = TransferBar(label)
    out = bytearray()
    import tempfile  # here, not at the top: a `ferry run` with nothing to send never pays its import (~3 ms)

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
                        bar.update(int(re.sub(rb"[,.]", b"", m.group(1))), percent=int(m.group(2)))
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
        raise_for(code, err.read(), remote, partial=partial)
    return out.decode("utf-8", "replace")


def rule_file(rules: Sequence[str]) -> str:
    """Rules (or paths) in a NUL-separated temp file, for ``--from0 --exclude-from``/``--files-from``."""
    import tempfile

    fd, path = tempfile.mkstemp(prefix="ferry-rules-")
    with os.fdopen(fd, "wb") as fh:
        fh.write(b"".join(r.encode("utf-8", "surrogateescape") + b"\0" for r in rules))
    return path


# A first copy's archive: mtimes to the ns (pax), no atime/ctime noise, no local owners, unreadable files skipped.
TAR_FLAGS = ["--format=posix", "--pax-option=delete=atime,delete=ctime", "--numeric-owner", "--owner=0",
             "--group=0", "--ignore-failed-read"]

_GNU_TAR: list[str | None] = []


def gnu_tar() -> str | None:
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


def tar_stream(project: Path, paths: Sequence[str], total: int, remote: "Remote", target: str, progress: bool,
               then: str | None = None, passed: int | None = None) -> bool:
    """Send ``paths`` (relative to ``project``) into an empty ``target`` as one uncompressed tar (mtimes to the ns).

    ``then``: shell run in the same exec once tar succeeded (an exec less). If it exits ``passed``, return
    False instead of raising: the caller knows what that status means. True otherwise.
    """
    tar = gnu_tar()
    assert tar
    listing = rule_file(sorted(paths))
    remote_cmd = f"mkdir -p {shlex.quote(target)} && exec tar -xpf - -C {shlex.quote(target)}"
    if then:
        remote_cmd = f"mkdir -p {shlex.quote(target)} && tar -xpf - -C {shlex.quote(target)} && {{ {then}; }}"
    import tempfile

    try:
        with tempfile.TemporaryFile() as tar_err:
            maker = subprocess.Popen(
                [tar, "-cf", "-", *TAR_FLAGS, "--null", "--verbatim-files-from", "-T", listing],
                cwd=project, stdout=subprocess.PIPE, stderr=tar_err, stdin=subprocess.DEVNULL,
            )
            assert maker.stdout is not None
            try:
                if progress:
                    code, err = _pump(maker.stdout, remote, remote_cmd, total)
                else:
                    taker = subprocess.run(remote.ssh_argv() + [remote_cmd], stdin=maker.stdout, capture_output=True)
                    code, err = taker.returncode, taker.stderr
            finally:
                maker.stdout.close()
                made = maker.wait()
            tar_err.seek(0)
            made_err = tar_err.read()
    finally:
        os.unlink(listing)
    if made not in (0, 1):  # 1: a file changed while it was read; the next sync sends it again
        raise FerryError(f"tar failed (exit {made}): {made_err.decode(errors='replace').strip()[:300]}",
                         hint="check that the project's files are readable, then sync again")
    if passed is not None and code == passed:
        return False
    raise_for(code, err, remote, what="tar on the instance")
    return True


def _pump(source, remote: "Remote", remote_cmd: str, total: int) -> tuple[int, bytes]:
    bar = TransferBar("sending", total=total)
    taker = subprocess.Popen(remote.ssh_argv() + [remote_cmd], stdin=subprocess.PIPE,
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
            bar.update(done)
        taker.stdin.close()
        err = taker.stderr.read()
        return taker.wait(), err
    except BaseException:
        taker.kill()
        taker.wait()
        raise
    finally:
        bar.close()


def skip_rules(skip: Iterable[str], files: AbstractSet[str]) -> list[str]:
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
        rules["/" + rsync_literal(path[:i]) + "/" if i > 0 else "/" + rsync_literal(path)] = None
    return list(rules)


def differing(paths: Sequence[str], remote: "Remote", project: Path, target: str) -> list[str]:
    """Of files the instance kept its own copy of, those that differ from ours (a dry run's quick check):
    an identical copy (a result downloaded and left as it was) is nothing to talk about."""
    listing = rule_file(paths)
    try:
        argv = [rsync_binary(), "-lpt", "--protect-args", "--from0", f"--files-from={listing}", "--dry-run",
                "--ignore-missing-args", "--modify-window=-1", ITEM_FORMAT, "-e", remote.rsync_rsh(),
                f"{project}/", f"{remote.rsync_target}{target}/"]
        seen = Sent()
        seen.add(run(argv, remote, False, "comparing"))
    finally:
        os.unlink(listing)
    return seen.sent


def stamp() -> str:
    """A name for one run's backups: sorts by time (to the microsecond), and pid plus random make it unique."""
    now = time.time()
    return f"{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}-{os.getpid()}-" \
           f"{os.urandom(2).hex()}"


def progress_wanted(progress: bool | None) -> bool:
    return sys.stderr.isatty() if progress is None else progress
