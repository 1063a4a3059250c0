"""The first copy into an empty workdir, streamed while the project is still being scanned.

A first sync used to scan the whole project (git's list, a stat and maybe a
sniff for secrets per file) before one byte left: at 100k files, ~0.7 s of a
~2.6 s sync. Here each file the scan has vetted goes at once into ``tar -T -``,
whose archive streams over ssh into a staging directory beside the workdir.
Once the scan and the stream are done, one exec moves the staging directory
into place and writes the instance's record (:meth:`FirstCopy.into_place`).
A copy cut short (kill -9, a dropped connection, a full disk) never shows in
the workdir: the next sync finds it still empty and copies again, clearing
first any staging directory whose tar is gone.

The stream starts before the record fetch (which runs during the scan) has
said whether the workdir is empty, as it usually is, when an ssh master
connection is up for both to share; the archive cannot end before that
answer. If the workdir holds anything, the stream stops, the few ms of it
that landed in a staging directory are removed, and the sync compares file
by file as it always has.
"""

from __future__ import annotations

import os
import queue
import shlex
import subprocess
import threading
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FerryError
from .manifest import STALE
from .rsync import TAR_FLAGS, gnu_tar, raise_for

if TYPE_CHECKING:
    from concurrent.futures import Future

    from .remote import Remote


class FirstCopy:
    """One streamed first copy: :meth:`add` each vetted file, :meth:`scanned`, then :meth:`finish`."""

    def __init__(self, remote: "Remote", project: Path, target: str, fetched: "Future", progress: bool):
        self.remote, self.project, self.target, self.fetched, self.progress = remote, project, target, fetched, progress
        self.suffix = os.urandom(6).hex()
        self.scanned_bytes = 0
        self._names: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._error: BaseException | None = None
        self._procs: list[subprocess.Popen] = []
        self._errs: list = []  # temporary files holding tar's and ssh's stderr
        self._started = False
        self._called_off = False  # the fetch found files in the workdir: the stream was stopped
        self._told_all = False  # the feeder has seen the end of the names
        self._pumping: threading.Thread | None = None  # with a progress bar: tar's archive through us to ssh
        self._feeder = threading.Thread(target=self._feed, daemon=True, name="ferry-first-copy")
        self._feeder.start()

    # -- the scan's side ---------------------------------------------------------------------------------------
    def add(self, path: str, st: tuple[int, int, int]) -> None:
        self.scanned_bytes += st[0]
        self._names.put(path)

    def scanned(self) -> None:
        """Every file is told: the archive ends once tar has them all."""
        self._names.put(None)

    # -- the remote side ---------------------------------------------------------------------------------------
    def _shell_paths(self) -> str:
        """Sets R (the workdir, symlinks resolved: a workdir linked to a volume stays linked) and P, where its
        staging directories are named: P<suffix>-<pid of the tar that fills it>."""
        return (f"T={shlex.quote(self.target)}; R=$(readlink -f -- \"$T\" 2>/dev/null) || R=$T; [ -n \"$R\" ] || R=$T; "
                "P=\"${R%/*}/.${R##*/}.ferry-copy-\"")

    # These scripts glob, which a zsh login shell refuses to do for a pattern that matches nothing: they run
    # under sh whatever the user's shell is.
    def _receive_command(self) -> str:
        """Clears what earlier copies left (their tar gone: killed, or cut off), then fills a staging directory."""
        script = (self._shell_paths() + "; mkdir -p \"${R%/*}\" && for D in \"$P\"*; do [ -d \"$D\" ] || continue; "
                  "case ${D##*-} in ''|*[!0-9]*) continue;; esac; kill -0 \"${D##*-}\" 2>/dev/null || rm -rf \"$D\"; "
                  f"done; S=\"${{P}}{self.suffix}-$$\"; mkdir \"$S\" && exec tar -xpf - -C \"$S\"")
        return "exec sh -c " + shlex.quote(script)

    def into_place(self) -> str:
        """Shell (run by the record's write, once the record is found current): the staging directory becomes
        the workdir, or it is removed and the write called off (STALE) if the workdir got files meanwhile."""
        script = (self._shell_paths() + f"; S=; for D in \"${{P}}{self.suffix}-\"*; do S=$D; done; "
                  f"[ -d \"$S\" ] && mv -T \"$S\" \"$R\" 2>/dev/null || "
                  f"{{ rm -rf \"${{P}}{self.suffix}-\"*; printf 'stale: the workdir is no longer empty'; exit {STALE}; }}")
        return "sh -c " + shlex.quote(script)

    def discard(self) -> None:
        """Remove the staging directory (best effort: the next first copy clears what this could not)."""
        if self._started:
            try:
                self.remote.run("sh -c " + shlex.quote(self._shell_paths() + f'; rm -rf "${{P}}{self.suffix}-"*'),
                                check=False, timeout=60)
            except Exception:  # noqa: BLE001 - the connection may be what failed
                pass

    # -- the stream --------------------------------------------------------------------------------------------
    def _feed(self) -> None:
        try:
            # Before the fetch answers (an empty workdir is the usual case), if a master connection is up for both
            # to share; without one, two ssh at once would each open a connection of their own.
            if not self.remote.control_path().exists() and self._occupied(wait=True):
                self._called_off = True  # nothing started: the names are only heard out
                while self._names.get() is not None:
                    pass
                self._told_all = True
                return
            self._start()
            self._write_names()
        except BaseException as exc:  # noqa: BLE001 - raised again by finish()
            self._error = exc
            while not self._told_all and self._names.get() is not None:  # the rest of the names, unheeded
                pass

    def _occupied(self, wait: bool) -> bool | None:
        """Whether the fetch found the workdir holding anything (None: not answered yet; True if it failed, as
        whoever reads the fetch next raises its error)."""
        if not wait and not self.fetched.done():
            return None
        try:
            return bool(self.fetched.result()[0])
        except BaseException:  # noqa: BLE001
            return True

    def _call_off(self) -> None:
        """The workdir was not empty: stop the stream (a few ms of it went into a staging directory)."""
        self._called_off = True
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()

    def _start(self) -> None:
        import tempfile

        tar_err, ssh_err = tempfile.TemporaryFile(), tempfile.TemporaryFile()
        self._errs = [tar_err, ssh_err]
        maker = subprocess.Popen([gnu_tar(), "-cf", "-", *TAR_FLAGS, "--null", "--verbatim-files-from", "-T", "-"],
                                 cwd=self.project, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=tar_err)
        self._procs.append(maker)
        argv = self.remote.ssh_argv() + [self._receive_command()]
        if self.progress:
            taker = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=ssh_err)
            self._pumping = threading.Thread(target=self._pump, args=(maker.stdout, taker.stdin), daemon=True)
            self._pumping.start()
        else:
            taker = subprocess.Popen(argv, stdin=maker.stdout, stdout=subprocess.DEVNULL, stderr=ssh_err)
            maker.stdout.close()  # type: ignore[union-attr]  # ssh holds it now
        self._procs.append(taker)
        self._started = True

    def _write_names(self) -> None:
        sink = self._procs[0].stdin
        settled = False  # the fetch has answered
        while True:
            name = self._names.get()
            batch = []
            while name is not None:
                batch.append(name.encode("utf-8", "surrogateescape") + b"\0")
                try:
                    name = self._names.get_nowait()
                except queue.Empty:
                    name = ""  # more to come: write these first
                    break
            if not settled:  # the archive may end only once the answer is in: the last names wait for it
                occupied = self._occupied(wait=name is None)
                settled = occupied is not None
                if occupied:
                    self._call_off()
                    sink = None
            if sink is not None and batch:
                try:
                    sink.write(b"".join(batch))
                    sink.flush()
                except BrokenPipeError:  # tar died: its exit status tells why
                    sink = None
            if name is None:
                self._told_all = True
                break
        if not self._called_off:
            try:
                self._procs[0].stdin.close()  # type: ignore[union-attr]
            except BrokenPipeError:
                pass

    def _pump(self, source, sink) -> None:
        from .output import TransferBar

        bar = TransferBar("sending")
        done = 0
        try:
            while chunk := source.read1(1 << 20):
                sink.write(chunk)
                done += len(chunk)
                bar.update(done, total=max(done, self.scanned_bytes))
        except (BrokenPipeError, ValueError):
            pass
        finally:
            bar.close()
            for end in (source, sink):
                try:
                    end.close()
                except BrokenPipeError:
                    pass

    def finish(self) -> bool:
        """Wait for the stream: True once every file is in the staging directory, False if the workdir was not
        empty (the stream was stopped, its staging directory removed). A failed stream raises; so does Ctrl-C,
        after stopping tar and ssh."""
        try:
            self._feeder.join()
            if self._error is not None:
                raise self._error
            if self._called_off:
                for proc in self._procs:
                    proc.wait()
                self._close_errs()
                self.discard()
                return False
            maker, taker = self._procs
            code = taker.wait()
            made = maker.wait()
            if self._pumping is not None:
                self._pumping.join()  # its bar is wiped before the summary is printed
        except BaseException:
            self.abort()
            raise
        tar_err, ssh_err = self._errs
        for f in self._errs:
            f.seek(0)
        made_err, err = tar_err.read(), ssh_err.read()
        self._close_errs()
        if made not in (0, 1):  # 1: a file changed while it was read; the next sync sends it again
            self.discard()
            raise FerryError(f"tar failed (exit {made}): {made_err.decode(errors='replace').strip()[:300]}",
                             hint="check that the project's files are readable, then sync again")
        if code != 0:
            self.discard()
            raise_for(code, err, self.remote, what="tar on the instance")
        return True

    def _close_errs(self) -> None:
        for f in self._errs:
            f.close()

    def abort(self) -> None:
        """Stop tar and ssh at once (Ctrl-C, a failed scan), and let the staging directory go."""
        self._names.put(None)
        for proc in self._procs:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
        self.discard()
