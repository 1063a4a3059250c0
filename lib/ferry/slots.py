"""One ssh connection that runs many jobs one after another: a map slot's pipe to ``ferry-job serve``.

Starting each of map's items with its own ssh exec would pay an ssh session
and a parse of the wrapper per item; a slot instead keeps one exec open and
sends each job's spec down it, framed (``ID LENGTH\\n`` + spec). The wrapper
starts the job, waits for its end and answers with ``ferry-item ID SIZE``,
the log's SIZE bytes and the usual ``ferry-exit:`` trailer.

The jobs themselves are ordinary ferry jobs with their own sessions: a
dropped connection loses nothing. :meth:`JobPipe.run` then returns None and
the caller follows that job by id (``follow``), which resumes at the byte
where this left off.
"""

from __future__ import annotations

import collections
import subprocess
import threading
from typing import TYPE_CHECKING, BinaryIO

from .follow import JobResult, job_tool, parse_end

if TYPE_CHECKING:
    from .follow import Cancel
    from .handle import Box


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
        try:
            proc.stdin.write(f"{job_id} {len(spec)}\n".encode() + spec)  # type: ignore[union-attr]
            proc.stdin.flush()  # type: ignore[union-attr]
            header = proc.stdout.readline().split()  # type: ignore[union-attr]
            if len(header) != 3 or header[0] != b"ferry-item" or header[1].decode() != job_id:
                raise EOFError
            left = int(header[2])
            while left:
                chunk = proc.stdout.read(min(left, 1 << 16))  # type: ignore[union-attr]
                if not chunk:
                    raise EOFError
                sink.write(chunk)
                left -= len(chunk)
            sink.flush()
            end, _ = parse_end(proc.stdout.readline().decode(errors="replace"))  # type: ignore[union-attr]
            if end is None:
                raise EOFError
            return end
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
                proc.stdin.close()  # type: ignore[union-attr]
                proc.wait(timeout=2)  # the wrapper's loop ends at EOF
            except (OSError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
