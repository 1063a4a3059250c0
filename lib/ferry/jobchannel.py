"""One ssh session that carries many job starts and waits: ``ferry-job channel`` on the instance.

Code that starts jobs one after another and then waits for each
(``[box.run(cmd, detach=True) for cmd in ...]``, then ``job.wait()``) paid an
ssh exec per call: a session on the ControlMaster plus a parse of the
wrapper, about as much as the job itself for short jobs. A Box's second such
request opens this channel; that request and every later one go through it,
one at a time. The answer to each is exactly what its own exec would have
printed on stderr, and its exit status, so the callers read it with the same
code.

The channel is an optimisation, never a dependency: a request that finds it
busy (another thread is waiting through it), broken (the connection
dropped) or closed returns None, and the caller uses an exec, with its own
retries. A start is idempotent by job id, so sending it again that way is
safe. The session ends when the Box is collected or Python exits (stdin
closed: the loop on the instance reads EOF and returns).
"""

from __future__ import annotations

import re
import subprocess
import threading
import weakref
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .handle import Box

DONE = b"ferry-done "
PLAIN_WORD = re.compile(r"[A-Za-z0-9._@-]+")  # an id the channel's space-separated request line can carry


class JobChannel:
    def __init__(self, box: "Box"):
        from .follow import job_tool

        self.proc = subprocess.Popen(box.remote.ssh_argv() + [f"{job_tool(box)} channel"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        self.lock = threading.Lock()
        self.broken = False
        self._finalizer = weakref.finalize(self, _shut, self.proc)

    def ask(self, request: bytes) -> tuple[int, str] | None:
        """(exit status, what the wrapper said) for one request; None when busy or broken: use an exec."""
        if self.broken or not self.lock.acquire(blocking=False):
            return None
        try:
            self.proc.stdin.write(request)  # type: ignore[union-attr]
            self.proc.stdin.flush()  # type: ignore[union-attr]
            said = []
            while True:
                line = self.proc.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    raise EOFError("the channel closed")
                if line.startswith(DONE) and line[len(DONE):].strip().isdigit():
                    return int(line[len(DONE):]), b"".join(said).decode(errors="replace")
                said.append(line)
        except (OSError, EOFError, ValueError):
            self.close()
            return None
        except BaseException:  # Ctrl-C mid-answer: the rest of it would be read as the next one's
            self.close()
            raise
        finally:
            self.lock.release()

    def close(self) -> None:
        self.broken = True
        self._finalizer()


def _shut(proc: subprocess.Popen) -> None:
    """End the session: EOF to the loop on the instance, then the ssh process (by its own pid)."""
    try:
        proc.stdin.close()  # type: ignore[union-attr]
    except OSError:
        pass
    try:
        proc.wait(timeout=2)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    if proc.stdout is not None:
        proc.stdout.close()


def ask(box: "Box", request: bytes) -> tuple[int, str] | None:
    """Send ``request`` through the Box's channel, opened on its second request; None: use an exec instead."""
    state = box.__dict__
    channel = state.get("_job_channel")
    if channel is None:
        if not state.get("_job_requests"):
            state["_job_requests"] = 1  # the first one goes by exec: a single command never opens a channel
            return None
        try:
            channel = state["_job_channel"] = JobChannel(box)
        except OSError:
            return None
    # A channel that broke stays closed (a dropped connection, or an older wrapper without one): the rest go
    # by exec, each with its own retries, rather than a new session tried, and maybe lost, per request.
    return channel.ask(request)


def start_request(job_id: str, spec: bytes) -> bytes:
    return f"start {job_id} {len(spec)}\n".encode() + spec


def wait_request(job_id: str, seconds: str) -> bytes | None:
    """The wait request, or None for an id the request line cannot carry (a label with spaces): use an exec."""
    if not PLAIN_WORD.fullmatch(job_id):
        return None
    return f"wait {job_id}{(' ' + seconds) if seconds else ''}\n".encode()
