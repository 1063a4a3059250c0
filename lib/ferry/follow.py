"""Following a job's log: one ssh exec that streams it, resumed at the exact byte after any drop.

The remote half is ``remote_scripts/ferry-job``. A job can be started and
followed in a single exec (one round trip on the shared connection).
Following reads the log by byte offset: a dropped connection or a restarted
sshd reconnects with backoff and resumes where it stopped, so every byte
arrives once and in order; Ctrl-C only detaches.

The wrapper ends every conversation about a job with one stderr trailer,
``ferry-exit:<code|lost|running>:<log size>:<state>:<id>``, so the outcome
(and, for ``@latest``, which job it was) costs no extra round trip.

``--wait-for`` is matched here, on the bytes as they arrive, not on the
instance: the local side already holds every byte exactly once, Python's
``re`` is the same dialect everywhere (grep's differs between instances),
and the match survives reconnects because the matcher only ever sees the
contiguous stream.
"""

from __future__ import annotations

import logging
import os
import re
import select
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, BinaryIO, Callable

from .backoff import Backoff
from .errors import FerryError, HostKeyError, JobError, SSHError, UsageError, cmd
from .flags import human

if TYPE_CHECKING:
    from .handle import Box

log = logging.getLogger(__name__)

RECONNECT_WINDOW = 600.0  # seconds without progress before following gives up (the job keeps running)
FIRST_DELAY, MAX_DELAY = 0.05, 10.0  # reconnect backoff: a killed connection is back at once, a rebooting host is not hammered
STATES = ("running", "succeeded", "failed", "killed", "timed_out", "lost")


@dataclass
class JobResult:
    """How a job stood when following or waiting stopped: ``state`` is one of STATES.

    ``state`` reads "running" when ferry stopped before the job ended
    (detach, ``wait_for``, a timeout).
    """

    job_id: str
    state: str
    exit_code: int | None
    log_size: int = 0
    matched: bool = False  # --wait-for saw its pattern
    number: int | None = None  # the job's short number on its instance (1, 2, 3 ...)
    seconds: float | None = None  # how long ferry followed it, where the caller measured that (fleet.run)

    @property
    def ok(self) -> bool:
        return self.state == "succeeded"

    @property
    def ref(self) -> str:
        """How a user names this job: its number, else its id."""
        return str(self.number) if self.number else self.job_id

    def describe(self) -> str:
        return {
            "succeeded": "succeeded",
            "failed": f"failed with exit code {self.exit_code}",
            "killed": f"was killed (exit code {self.exit_code})",
            "timed_out": f"timed out (exit code {self.exit_code})",
            "lost": "was lost (its process is gone without an exit code: instance stopped or restarted?)",
        }.get(self.state, "is still running")


class Detached(KeyboardInterrupt):
    """Ctrl-C while following: the job keeps running; the caller says how to follow it again."""

    def __init__(self, job_id: str, number: int | None = None):
        super().__init__(job_id)
        self.job_id, self.number = job_id, number

    @property
    def ref(self) -> str:
        return str(self.number) if self.number else self.job_id


def job_tool(box: "Box") -> str:
    """The wrapper as a remote command prefix; ``bash`` directly saves the shebang's ``env`` hop."""
    return "bash " + shlex.quote(f"{box.instance.remote_home}/.ferry/bin/ferry-job")


def flag(job_id: str | int) -> str:
    return f"-j {shlex.quote(str(job_id))}"


def started_number(stderr_text: str) -> int | None:
    """The job's number from the wrapper's ``ferry-started ID NUMBER`` line."""
    for line in stderr_text.splitlines():
        if line.startswith("ferry-started "):
            parts = line.split()
            if len(parts) >= 3 and parts[2].isdigit():
                return int(parts[2])
    return None


def parse_end(stderr_text: str) -> tuple[JobResult | None, str]:
    """Split the wrapper's trailer from whatever else reached stderr."""
    end = None
    other = []
    for line in stderr_text.splitlines():
        if line.startswith("ferry-exit:"):
            fields = line.split(":", 5)
            if len(fields) >= 5:
                _, what, size, state, job_id = fields[:5]
                number = fields[5] if len(fields) == 6 else ""
                code = int(what) if what.lstrip("-").isdigit() else None
                end = JobResult(job_id, state if state in STATES else "running", code, int(size or 0),
                                number=int(number) if number.isdigit() else None)
        elif not line.startswith(("ferry-started ", "ferry-id:", "ferry-waiting ", "ferry-following ")):
            other.append(line)
    return end, "\n".join(other)


def wrapper_error(code: int, other: str, box: "Box", job_id: str) -> FerryError | None:
    """The wrapper's own refusals (exit 2-5 with a ``ferry-job:`` line) as errors a user can act on."""
    said = [l.removeprefix("ferry-job: ") for l in other.splitlines() if l.startswith("ferry-job: ")]
    if code in (0, 255) or not said:
        return None
    if code == 3:
        return JobError(f"no job {job_id} on {box.name}", hint=f"list them: {cmd('jobs')}")
    if code == 5:
        return JobError(f"no jobs on {box.name} yet", hint=f'start one: {cmd("run CMD")}')
    if code == 2:
        return UsageError(said[-1])
    return JobError(said[-1])


class Cancel:
    """Stops followers from another thread: ``trip()`` ends their ssh execs and every reconnect after.

    Used where one process follows many jobs at once (fleet.run, map): a
    Ctrl-C reaches only the main thread, which trips this; every follower
    then returns a "running" result at once and its job keeps running.
    """

    def __init__(self) -> None:
        self.event = threading.Event()
        self._procs: set[subprocess.Popen] = set()
        self._lock = threading.Lock()

    @property
    def tripped(self) -> bool:
        return self.event.is_set()

    def watch(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.add(proc)
        if self.event.is_set():
            self.trip()

    def unwatch(self, proc: subprocess.Popen) -> None:
        with self._lock:
            self._procs.discard(proc)

    def trip(self) -> None:
        self.event.set()
        with self._lock:
            procs = list(self._procs)
        for proc in procs:
            if proc.poll() is None:
                proc.kill()


class _Stream:
    """One ssh exec whose stdout is job output: copy it through, count bytes, collect stderr."""

    def __init__(self, argv: list[str], stdin_data: bytes):
        self.proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            process_group=0,  # Ctrl-C reaches us, not ssh: we decide what a Ctrl-C means
        )
        self.stderr = b""
        self.received = 0
        self._err_thread = threading.Thread(target=self._read_err, daemon=True)
        self._err_thread.start()
        try:
            self.proc.stdin.write(stdin_data)  # type: ignore[union-attr]
            self.proc.stdin.close()  # type: ignore[union-attr]
        except BrokenPipeError:
            pass

    def _read_err(self) -> None:
        for line in self.proc.stderr:  # type: ignore[union-attr]  # line by line: a Ctrl-C can see what came so far
            self.stderr += line

    def pump(self, out: BinaryIO, until: Callable[[bytes], bool] | None = None,
             deadline: float | None = None) -> str:
        """Copy stdout to ``out`` until EOF ("eof"), ``until`` says stop ("matched") or ``deadline`` ("deadline")."""
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return "deadline"
                if not select.select([fd], [], [], left)[0]:
                    continue
            chunk = os.read(fd, 65536)
            if not chunk:
                return "eof"
            out.write(chunk)
            out.flush()
            self.received += len(chunk)
            if until is not None and until(chunk):
                return "matched"

    def finish(self) -> int:
        code = self.proc.wait()
        self._err_thread.join()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


class LineMatcher:
    """``--wait-for``: does any line of the stream so far match? Lines end at \\n or \\r (progress bars).

    The unfinished last line is tried too, so a prompt printed without a
    newline still counts. Only its last 64 KiB are kept, which bounds the
    work on a huge line that never ends.
    """

    KEEP = 65536

    def __init__(self, pattern: str):
        try:
            self.regex = re.compile(pattern)
        except re.error as exc:
            raise UsageError(f"bad --wait-for pattern {pattern!r}: {exc}", hint="it is a Python regular expression") from None
        self.pattern = pattern
        self.partial = b""

    def feed(self, chunk: bytes) -> bool:
        *lines, self.partial = re.split(rb"[\r\n]", self.partial + chunk)
        self.partial = self.partial[-self.KEEP:]
        for line in lines:
            if self.regex.search(line.decode(errors="replace")):
                return True
        return bool(self.partial) and self.regex.search(self.partial.decode(errors="replace")) is not None


def follow(box: "Box", job_id: str, offset: int = 0, out: BinaryIO | None = None, start_spec: bytes | None = None,
           until: Callable[[bytes], bool] | None = None, deadline: float | None = None,
           window: float = RECONNECT_WINDOW, cancel: Cancel | None = None) -> JobResult:
    """Stream a job's log from byte ``offset`` until it ends; reconnect and resume on any drop.

    With ``start_spec`` the job is started in the same exec (idempotent, so a
    retry after a drop never starts it twice). ``until(chunk)`` returning
    True, or the monotonic ``deadline`` passing, stops early: the result then
    reads "running" (``matched`` says which). Ctrl-C propagates as
    KeyboardInterrupt; the job keeps running. ``window``: seconds without
    progress before a dropped connection is given up (SSHError); ``cancel``
    (tripped from another thread) returns "running" at once.
    """
    out = out or sys.stdout.buffer
    remote = box.remote
    tool = job_tool(box)
    jid = shlex.quote(job_id)
    retry = Backoff(first=FIRST_DELAY, cap=MAX_DELAY, window=window)
    connected = False
    tries = 0  # attempts that never showed a sign of life (a drop right as it began looks the same)
    number: int | None = None
    while True:
        if start_spec is not None:
            command = f"{tool} start {jid} follow {offset}"  # one exec, one process: start, then follow
        else:
            command = f"{tool} follow {jid} {offset}"
        if cancel is not None and cancel.tripped:
            return JobResult(job_id, "running", None, offset, number=number)
        stream = _Stream(remote.ssh_argv() + [command], start_spec or b"")
        if cancel is not None:
            cancel.watch(stream.proc)
        try:
            how = stream.pump(out, until, deadline)
        except KeyboardInterrupt:
            stream.kill()
            number = number or started_number(stream.stderr.decode(errors="replace"))
            raise Detached(job_id, number) from None
        except BaseException:
            stream.kill()
            raise
        finally:
            if cancel is not None:
                cancel.unwatch(stream.proc)
        offset += stream.received
        if how != "eof":
            stream.kill()
            return JobResult(job_id, "running", None, offset, matched=how == "matched")
        code = stream.finish()
        stderr_text = stream.stderr.decode(errors="replace")
        end, other = parse_end(stderr_text)
        if end is not None:
            connected, start_spec, tries = True, None, 0
            retry.succeeded()
            job_id, number = end.job_id, end.number or number  # pinned: a label or number asked for resolves once
            jid = shlex.quote(job_id)
            if end.log_size > offset or end.state == "running":
                if end.state == "running" and not stream.received:
                    time.sleep(0.2)  # it stopped early with nothing new: never spin
                continue  # bytes landed after the follower stopped, or it stopped early: fetch the rest
            return replace(end, log_size=offset, number=number)
        refused = wrapper_error(code, other, box, job_id)
        if refused is not None:
            raise refused
        if cancel is not None and cancel.tripped:
            return JobResult(job_id, "running", None, offset, number=number or started_number(stderr_text))
        if "ferry-started" in stderr_text:
            start_spec = None  # started before the drop: only follow from now on
            number = number or started_number(stderr_text)
        # The wrapper says "ferry-following" as it begins: a drop after that is a drop, not "unreachable".
        connected = connected or stream.received > 0 or "ferry-following" in stderr_text
        failure = remote.classify_failure(other)
        refused = isinstance(failure, HostKeyError) or "Permission denied" in other
        tries += 1
        unreachable = any(m in other for m in ("Connection refused", "timed out", "No route", "Could not resolve"))
        if refused or (not connected and (unreachable or tries > 2)):
            if start_spec is not None:
                failure.hint = f"{failure.hint}; the job may have started anyway: {cmd('jobs')}"
            raise failure  # it refused us, or never answered twice in a row: retrying would only hide that
        # The connection dropped (or the sshd is restarting): back off and resume at `offset`.
        if stream.received:
            retry.succeeded()
        delay = retry.failed()
        if retry.expired:
            raise SSHError(
                f"lost the connection to {box.name} for {human(retry.failing_for)}; stopped following job {job_id}",
                hint=f"the job keeps running; follow it again later: {cmd(f'logs -f {flag(job_id)}')}",
            )
        if deadline is not None and time.monotonic() + delay >= deadline:
            return JobResult(job_id, "running", None, offset)
        log.info("connection to %s lost; reconnecting in %gs (job %s keeps running)", box.name, delay, job_id)
        time.sleep(delay)
