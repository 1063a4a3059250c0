"""Jobs: commands that run in tmux on the instance and outlive every connection (the local half).

``Box.run`` starts a job and follows it (follow.py) to its end, returning a
:class:`JobResult` or raising :class:`ferry.JobFailed` unless ``warn``, as
Invoke's ``run`` does. ``detach=True`` returns a :class:`Job` at once; so
does ``wait_for`` once a log line matches. A Job is a handle on one job:
``wait``, ``logs``, ``kill``, ``attach``. The job's spec (command, cwd, env,
timeout) travels on stdin, every value shell-quoted, never on a command line.
A Box's detached starts and waits after the first go through one ssh session
(jobchannel.py), not an exec each.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, BinaryIO, Mapping

from . import jobchannel
from .backoff import Backoff
from .errors import JobError, JobFailed, UsageError, cmd
from .flags import env_name, human, shell_seconds, signal_name
from .follow import (FIRST_DELAY, MAX_DELAY, RECONNECT_WINDOW, STATES, Detached, JobResult, LineMatcher, flag, follow,
                     job_tool, parse_end, started_number, wrapper_error)

if TYPE_CHECKING:
    from .handle import Box

log = logging.getLogger(__name__)

LATEST = "@latest"  # the wrapper resolves it to the newest job on the instance

__all__ = ["Job", "JobInfo", "JobResult", "JobFailed", "Detached", "LATEST", "STATES", "run",
           "list_jobs", "attach", "exit_status"]


def new_job_id() -> str:
    """Sortable by start time, unique without coordination."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}-" + os.urandom(2).hex()


@dataclass
class JobInfo:
    id: str
    label: str
    command: str
    state: str
    exit_code: int | None
    started_at: str | None
    finished_at: str | None
    duration: float | None  # seconds; for a running job, so far (by the instance's clock)
    number: int | None = None  # short, per instance: what -j takes

    def to_dict(self) -> dict:
        return asdict(self)


# -- the spec --------------------------------------------------------------------------------------
def job_spec(box: "Box", command: str, env: Mapping[str, str] | None = None, cwd: str | None = None,
             timeout: float | None = None, label: str | None = None, then: str | None = None,
             then_always: bool = False, pane: bool = True) -> bytes:
    """The spec the wrapper sources: every value shlex-quoted, sent on stdin, never on a command line.

    ``pane=False`` starts the job without a tmux pane (map's items): it
    survives disconnects just the same and costs less; ``attach`` shows its log.
    """
    if not command.strip():
        raise UsageError("empty command", hint="give the command to run: " + cmd("run 'python train.py'"))
    base = box.workdir
    target = base if not cwd else (cwd if cwd.startswith("/") else f"{base}/{cwd}")
    merged = {"PYTHONUNBUFFERED": "1", **box.settings.env, **(env or {})}
    lines = [
        # First, and digits only: the wrapper reads this one line without sourcing the rest.
        f"FERRY_TIMEOUT={shell_seconds(timeout) if timeout else ''}",
        f"FERRY_KEEP_JOBS={int(box.settings.data.get('jobs_kept') or 200)}",  # second, digits only: read unsourced
        # Third and fourth, read unsourced: what the instance does when the job ends (then.py).
        f"FERRY_THEN={then if then in ('stop', 'terminate') else ''}",
        f"FERRY_THEN_ALWAYS={1 if then_always else 0}",
        f"FERRY_PANE={1 if pane else 0}",  # read unsourced by `start`
        f"FERRY_COMMAND={shlex.quote(command)}",
        f"FERRY_WORKDIR={shlex.quote(base)}",
        f"FERRY_CWD={shlex.quote(target)}",
        f"FERRY_LABEL={shlex.quote(label or '')}",
    ]
    for key, value in merged.items():
        lines.append(f"export {env_name(key)}={shlex.quote(str(value))}")
    return ("\n".join(lines) + "\n").encode()


# -- running -----------------------------------------------------------------------------------------
def run(box: "Box", command: str, *, warn: bool = False, detach: bool = False, env: Mapping[str, str] | None = None,
        cwd: str | None = None, timeout: float | None = None, label: str | None = None, wait_for: str | None = None,
        wait_timeout: float | None = None, out: BinaryIO | None = None, then: str | None = None,
        then_always: bool = False) -> "JobResult | Job":
    """Start ``command`` as a job; unless detached, stream it and return how it ended (see Box.run).

    With ``wait_for`` (a regular expression) return the running Job as soon as
    a line of the log matches; raise JobError if the job ends first or
    ``wait_timeout`` seconds pass. Ctrl-C while streaming raises Detached;
    the job keeps running.
    """
    if detach and wait_for:
        raise UsageError("--detach and --wait-for do not go together", hint="--wait-for already returns once the job is ready")
    if wait_timeout and not wait_for:
        raise UsageError("--wait-timeout needs --wait-for", hint='e.g. --wait-for "Listening on" --wait-timeout 5m')
    matcher = LineMatcher(wait_for) if wait_for else None
    job_id = new_job_id()
    spec = job_spec(box, command, env=env, cwd=cwd, timeout=timeout, label=label, then=then, then_always=then_always)
    if detach:
        return Job(box, job_id, _start(box, job_id, spec))
    deadline = time.monotonic() + wait_timeout if wait_timeout else None
    end = follow(box, job_id, out=out, start_spec=spec, until=matcher.feed if matcher else None, deadline=deadline)
    if matcher is not None:
        if end.matched:
            return Job(box, job_id, end.number)
        if end.state == "running":
            raise JobError(
                f"job {job_id} printed no line matching {wait_for!r} within {human(wait_timeout)}; it keeps running",
                hint=f"follow it: {cmd(f'logs -f {flag(job_id)}')}   stop it: {cmd(f'kill {flag(job_id)}')}",
            )
        raise JobError(f"job {job_id} ended ({end.describe()}) before printing a line matching {wait_for!r}",
                       hint=f"see its log: {cmd(f'logs {flag(job_id)}')}")
    if not warn and not end.ok:
        raise JobFailed(end, hint=f"see its log: {cmd(f'logs {flag(end.ref)}')}")
    return end


def _start(box: "Box", job_id: str, spec: bytes) -> int | None:
    """Start the job detached; its number. Through the Box's job channel when it has one (jobchannel.py)."""
    answer = jobchannel.ask(box, jobchannel.start_request(job_id, spec))
    if answer is None:
        proc = box.remote.run(f"{job_tool(box)} start {shlex.quote(job_id)}", input=spec, check=False)
        answer = proc.returncode, proc.stderr.decode(errors="replace")
    code, stderr_text = answer
    if code:
        raise wrapper_error(code, stderr_text, box, job_id) or JobError(
            f"could not start the job on {box.name} (exit status {code})")
    return started_number(stderr_text)


def exit_status(end: JobResult) -> int:
    """The local exit status that mirrors the job's, or an error for a job that has no exit code."""
    if end.state == "lost":
        raise JobError(f"job {end.ref} {end.describe()}", hint=f"see its log: {cmd(f'logs {flag(end.ref)}')}")
    if end.exit_code is None:
        raise JobError(f"job {end.ref} has not finished", hint=f"wait for it: {cmd(f'wait {flag(end.ref)}')}")
    return end.exit_code


# -- a handle on one job -----------------------------------------------------------------------------
class Job:
    """One job on a Box: wait for it, read or follow its log, kill it, attach to it."""

    def __init__(self, box: "Box", job_id: str = LATEST, number: int | None = None):
        self.box = box
        self.id = job_id  # the full id, a number, a label or a unique prefix: the wrapper resolves each
        self.number = number

    def __repr__(self) -> str:
        return f"<Job {self.ref} on {self.box.name}>"

    @property
    def ref(self) -> str:
        """How a user names this job: its number, else what it was asked for by."""
        return str(self.number) if self.number else self.id

    def _remote(self, command: str, timeout: float | None = None, stdout=subprocess.PIPE):
        proc = self.box.remote.run(command, check=False, timeout=timeout, stdout=stdout)  # a timeout is an SSHError
        end, other = parse_end(proc.stderr.decode(errors="replace"))
        refused = wrapper_error(proc.returncode, other, self.box, self.id)
        if refused is not None:
            raise refused
        return proc, end

    def wait(self, timeout: float | None = None, warn: bool = True) -> JobResult:
        """Block until the job ends (reconnecting across drops); state 'running' means the timeout passed.

        ``warn=False`` raises JobFailed for a job that ended other than successfully.
        """
        remote, tool = self.box.remote, job_tool(self.box)
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = Backoff(first=FIRST_DELAY, cap=MAX_DELAY, window=RECONNECT_WINDOW)
        while True:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            seconds = "" if left is None else shell_seconds(max(left, 0.001))
            request = jobchannel.wait_request(self.id, seconds)
            answer = jobchannel.ask(self.box, request) if request else None
            if answer is None:
                proc = subprocess.run(remote.ssh_argv() + [f"{tool} wait {shlex.quote(self.id)}"
                                                           + (f" {seconds}" if seconds else "")],
                                      stdin=subprocess.DEVNULL, capture_output=True)
                answer = proc.returncode, proc.stderr.decode(errors="replace")
            returncode, stderr_text = answer
            end, other = parse_end(stderr_text)
            if end is None and returncode == 255:
                # Unreachable from the start: say so. Dropped while waiting ("ferry-waiting" came
                # through first): wait again, with backoff, unless it never comes back.
                first = retry.failing_since is None
                delay = retry.failed()
                if ("ferry-waiting" not in stderr_text and first) or retry.expired or \
                        (deadline is not None and time.monotonic() > deadline):
                    raise remote.classify_failure(other)
                time.sleep(delay)
                continue
            refused = wrapper_error(returncode, other, self.box, self.id)
            if refused is not None:
                raise refused
            if end is None:
                raise JobError(f"ferry-job on {self.box.name} gave no answer about job {self.id} "
                               f"(exit status {returncode})")
            retry.succeeded()
            self.id, self.number = end.job_id, end.number or self.number  # pinned: a retry waits for the same job
            if end.state != "running" or (deadline is not None and time.monotonic() >= deadline):
                if not warn and end.state != "running" and not end.ok:
                    raise JobFailed(end, hint=f"see its log: {cmd(f'logs {flag(self.id)}')}")
                return end

    def logs(self, follow: bool = False, tail: int | None = None, out: BinaryIO | None = None) -> JobResult | None:
        """The log byte for byte to ``out`` (its last ``tail`` lines); ``follow`` streams to the end and returns how it ended."""
        out = out or sys.stdout.buffer
        if follow:
            offset = 0
            if tail is not None:
                self.id, offset = self._tail_offset(tail)
            elif self.id == LATEST:
                self.id = self._latest()  # pinned: a reconnect must resume this job
            return _follow(self.box, self.id, offset=offset, out=out)
        arg = f" {int(tail)}" if tail is not None else ""
        command = f"{job_tool(self.box)} log {shlex.quote(self.id)}{arg}"
        try:
            out.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream: collect, then write
            proc, _ = self._remote(command)
            out.write(proc.stdout)
            return None
        out.flush()
        self._remote(command, stdout=out)
        return None

    def kill(self, signal: str = "TERM") -> JobResult:
        """Signal the job's whole process group (KILL after 10 s if it lingers); it then reads ``killed``."""
        sig = signal_name(signal)
        proc, end = self._remote(f"{job_tool(self.box)} kill {shlex.quote(self.id)} {shlex.quote(sig)}")
        if end is None:
            raise JobError(f"ferry-job on {self.box.name} gave no answer about job {self.id} "
                           f"(exit status {proc.returncode})", hint=f"list jobs: {cmd('jobs')}")
        return end

    def attach(self) -> int:
        return attach(self.box, self.id)

    def _latest(self) -> str:
        job_id = self.box.remote.run(f"{job_tool(self.box)} latest").stdout.decode().strip()
        if not job_id:
            raise JobError(f"no jobs on {self.box.name} yet", hint=f'start one: {cmd("run CMD")}')
        return job_id

    def _tail_offset(self, lines: int) -> tuple[str, int]:
        """(job id, byte offset where its last ``lines`` lines start): where ``logs -f --tail N`` begins."""
        proc, _ = self._remote(f"{job_tool(self.box)} offset {shlex.quote(self.id)} {int(lines)}")
        jid, _, offset = proc.stdout.decode().strip().partition(" ")
        if not offset.isdigit():
            raise JobError(f"ferry-job on {self.box.name} gave no offset for job {self.id}")
        return jid, int(offset)


_follow = follow  # Job.logs has a parameter of that name


# -- listing and attaching ----------------------------------------------------------------------------
def _when(text: str):
    from datetime import datetime

    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def list_jobs(box: "Box") -> list[JobInfo]:
    """Every job on the instance, oldest first. One exec; no value is re-quoted on the way."""
    proc = box.remote.run(f"{job_tool(box)} list")
    fields = proc.stdout.split(b"\0")
    width = 8 if len(fields) > 2 and fields[2] == b"8" else 7  # the wrapper says its width (one before numbers: 7)
    records = [[f.decode(errors="replace") for f in fields[i:i + width]] for i in range(0, len(fields) - width + 1, width)]
    now = None
    found = []
    for jid, state, code, started, finished, label, command, *number in records:
        if jid == "now":
            now = _when(state)
            continue
        state = "running" if state == "starting" else state
        begin, stop = _when(started), _when(finished)
        if stop is None and state == "running":
            stop = now
        duration = (stop - begin).total_seconds() if begin and stop else None
        found.append(JobInfo(jid, label, command, state, int(code) if code.lstrip("-").isdigit() else None,
                             started or None, finished or None, duration,
                             int(number[0]) if number and number[0].isdigit() else None))
    return found


def attach(box: "Box", job_id: str | None = None) -> int:
    """A real terminal on the job's tmux session (or a shell session in the workdir); its exit status."""
    command = f"{job_tool(box)} attach {shlex.quote(job_id or LATEST)} {shlex.quote(box.workdir)}"
    return subprocess.call(box.remote.ssh_argv(tty=True) + [command])
