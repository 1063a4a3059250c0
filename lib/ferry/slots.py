"""One ssh connection that runs many jobs one after another: a map slot's pipe to ``ferry-job serve``.

Starting each of map's items with its own ssh exec would pay an ssh session
and a parse of the wrapper per item; a slot instead keeps one exec open and
sends each job's spec down it, framed (``ID LENGTH TOKEN\\n`` + spec). The
wrapper starts the job, waits for its end and answers with the whole log, then
the TOKEN (16 random bytes, new per job) and the usual ``ferry-exit:`` trailer
in one write. A token rather than a size up front saves a process per job on
the instance (``cat`` instead of ``stat`` and ``head``).

The jobs themselves are ordinary ferry jobs with their own sessions: a
dropped connection loses nothing. :meth:`JobPipe.run` then returns None and
the caller follows that job by id (``follow``), which resumes at the byte
where this left off.
"""

from __future__ import annotations

import collections
import os
import subprocess
import threading
from dataclasses import replace
from typing import TYPE_CHECKING, BinaryIO

from .follow import JobResult, job_tool, parse_end

if TYPE_CHECKING:
    from .follow import Cancel
    from .handle import Box


def copy_until(stream: BinaryIO, token: bytes, sink: BinaryIO) -> tuple[int, bytes]:
    """Copy ``stream`` to ``sink`` up to ``token``: (bytes copied, what was read past the token)."""
    keep = len(token) - 1  # a token split across two reads is found once the second arrives
    pending = b""
    copied = 0
    while True:
        chunk = stream.read1(1 << 16)  # type: ignore[attr-defined]
        if not chunk:
            raise EOFError
        pending += chunk
        at = pending.find(token)
        if at >= 0:
            sink.write(pending[:at])
            return copied + at, pending[at + len(token):]
        cut = max(0, len(pending) - keep)
        sink.write(pending[:cut])
        copied += cut
        pending = pending[cut:]


class JobPipe:
    """A ``ferry-job serve`` exec on one instance, opened on first use and again after a drop."""

    def __init__(self, box: "Box", cancel: "Cancel | None" = None):
        self.box, self.cancel = box, cancel
        self.proc: subprocess.Popen | None = None
        self.said: collections.deque[str] = collections.deque(maxlen=20)  # the wrapper's last stderr lines

    def _open(self) -> subprocess.Popen:
        argv = self.box.remote.ssh_argv() + [f"{job_tool(self.box)} serve"]
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                process_group=0)  # Ctrl-C is the caller's to decide about, not ssh's
        threading.Thread(target=self._drain, args=(proc,), daemon=True).start()
        if self.cancel is not None:
            self.cancel.watch(proc)
        self.proc = proc
        return proc

    def _drain(self, proc: subprocess.Popen) -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            self.said.append(line.decode(errors="replace").rstrip())

    def run(self, job_id: str, spec: bytes, sink: BinaryIO) -> JobResult | None:
        """Start the job, copy its whole log to ``sink`` once it ends; None if the connection failed."""
        proc = self.proc if self.proc is not None and self.proc.poll() is None else self._open()
        token = os.urandom(16).hex().encode()  # ends the log in the answer: no log can hold it by chance (not
        # secrets.token_hex: the same bytes, but importing secrets cost every `ferry map` ~3 ms)
        try:
            proc.stdin.write(f"{job_id} {len(spec)} ".encode() + token + b"\n" + spec)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            size, rest = copy_until(proc.stdout, token, sink)  # type: ignore[arg-type]
            sink.flush()
            line = rest[1:] if rest.startswith(b"\n") else rest
            if not line.endswith(b"\n"):
                line += proc.stdout.readline()  # type: ignore[union-attr]
            end, _ = parse_end(line.decode(errors="replace"))
            if end is None or end.job_id != job_id:
                raise EOFError
            return replace(end, log_size=size)
        except (OSError, EOFError, ValueError):
            self.close()
            return None

    def close(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None:
            return
        if self.cancel is not None:
            self.cancel.unwatch(proc)
        if proc.poll() is None:
            try:
                proc.stdin.close()  # type: ignore[union-attr]  # the wrapper's loop ends at EOF, and ssh with it
            except OSError:
                pass
            # Reaped aside, not waited for here: ssh takes ~10-20 ms to wind down under load, and the last slot's
            # wait was the last thing a map waited for before it could answer.
            threading.Thread(target=_reap, args=(proc,), daemon=True, name="ferry-reap").start()


def _reap(proc: subprocess.Popen) -> None:
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
