"""Jobs: commands that run in tmux on the instance and outlive every connection.

The remote half is ``remote_scripts/ferry-job``; this is the local half. A
job is started and followed in a single ssh exec (one round trip on the
shared connection). Following reads the log by byte offset: a dropped
connection or a restarted sshd reconnects with backoff and resumes at the
exact byte, so every byte arrives once and in order; Ctrl-C only detaches.

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

import os
import re
import secrets
import select
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from typing import BinaryIO, Callable, Mapping

from invoke import Context

from . import config
from .durations import human, shell_seconds
from .errors import FerryError, HostKeyError, JobError, SSHError, UsageError
from .instance import Instance
from .lifecycle import workdir
from .remote import Remote

RECONNECT_WINDOW = 600.0  # seconds without progress before following gives up (the job keeps running)
FIRST_DELAY, MAX_DELAY = 0.05, 10.0  # reconnect backoff: a killed connection is back at once, a rebooting host is not hammered
LATEST = "@latest"  # the wrapper resolves it to the newest job on the instance
STATES = ("running", "succeeded", "failed", "killed", "timed_out", "lost")
THEN_ACTIONS = ("stop", "terminate")
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_job_id() -> str:
    """Sortable by start time, unique without coordination."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}-" + secrets.token_hex(2)


def job_tool(instance: Instance) -> str:
    """The wrapper as a remote command prefix; ``bash`` directly saves the shebang's ``env`` hop."""
    return "bash " + shlex.quote(f"{instance.remote_home}/.ferry/bin/ferry-job")


def _flag(job_id: str) -> str:
    return f"-j {shlex.quote(job_id)}"


@dataclass
class JobEnd:
    """How a job stood when following or waiting stopped."""

    job_id: str
    state: str  # one of STATES; "running" when we stopped before it ended (detach, --wait-for, a timeout)
    exit_code: int | None
    log_size: int
    matched: bool = False  # --wait-for saw its pattern

    def describe(self) -> str:
        return {
            "succeeded": "succeeded",
            "failed": f"failed with exit code {self.exit_code}",
            "killed": f"was killed (exit code {self.exit_code})",
            "timed_out": f"timed out (exit code {self.exit_code})",
            "lost": "was lost (its process is gone without an exit code: instance stopped or restarted?)",
        }.get(self.state, "is still running")


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

    def to_dict(self) -> dict:
        return asdict(self)


# -- the spec ------------------------------------------------------------------------------
def job_spec(
    ctx: Context | None,
    instance: Instance,
    command: str,
    env: Mapping[str, str] | None = None,
    cwd: str | None = None,
    timeout: float | None = None,
    label: str | None = None,
) -> bytes:
    """The spec the wrapper sources: every value shlex-quoted, sent on stdin, never on a command line."""
    if not command.strip():
        raise UsageError("empty command", hint='give the command to run: inv run "python train.py"')
    base = workdir(ctx, instance)
    target = base if not cwd else (cwd if cwd.startswith("/") else f"{base}/{cwd}")
    merged = {"PYTHONUNBUFFERED": "1", **(config.settings(ctx).get("env") or {}), **(env or {})}
    lines = [
        # First, and digits only: the wrapper reads this one line without sourcing the rest.
        f"FERRY_TIMEOUT={shell_seconds(timeout) if timeout else ''}",
        f"FERRY_COMMAND={shlex.quote(command)}",
        f"FERRY_WORKDIR={shlex.quote(base)}",
        f"FERRY_CWD={shlex.quote(target)}",
        f"FERRY_LABEL={shlex.quote(label or '')}",
    ]
    for key, value in merged.items():
        if not key.isidentifier():
            raise UsageError(f"bad environment variable name {key!r}", hint="use letters, digits and _")
        lines.append(f"export {key}={shlex.quote(str(value))}")
    return ("\n".join(lines) + "\n").encode()


# -- talking to the wrapper ----------------------------------------------------------------------
def _parse_end(stderr_text: str) -> tuple[JobEnd | None, str]:
    """Split the wrapper's trailer from whatever else reached stderr."""
    end = None
    other = []
    for line in stderr_text.splitlines():
        if line.startswith("ferry-exit:"):
            fields = line.split(":", 4)
            if len(fields) == 5:
                _, what, size, state, job_id = fields
                code = int(what) if what.lstrip("-").isdigit() else None
                end = JobEnd(job_id, state if state in STATES else "running", code, int(size or 0))
        elif not line.startswith(("ferry-started ", "ferry-id:", "ferry-waiting ", "ferry-following ")):
            other.append(line)
    return end, "\n".join(other)


def _wrapper_error(code: int, other: str, instance: Instance, job_id: str) -> FerryError | None:
    """The wrapper's own refusals (exit 2-5 with a ``ferry-job:`` line) as errors a user can act on."""
    said = [l.removeprefix("ferry-job: ") for l in other.splitlines() if l.startswith("ferry-job: ")]
    if code in (0, 255) or not said:
        return None
    message = said[-1]
    if code == 3:
        return JobError(f"no job {job_id} on {instance.name}", hint="list them: inv jobs")
    if code == 5:
        return JobError(f"no jobs on {instance.name} yet", hint='start one: inv run "CMD"')
    if code == 2:
        return UsageError(message)
    return JobError(message)


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
        self.stderr = self.proc.stderr.read()  # type: ignore[union-attr]

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


# -- following ------------------------------------------------------------------------------------
def follow(
    ctx: Context | None,
    instance: Instance,
    job_id: str,
    offset: int = 0,
    out: BinaryIO | None = None,
    start_spec: bytes | None = None,
    log: Log = _stderr,
    until: Callable[[bytes], bool] | None = None,
    deadline: float | None = None,
) -> JobEnd:
    """Stream a job's log from byte ``offset`` until it ends; reconnect and resume on any drop.

    With ``start_spec`` the job is started in the same exec (idempotent, so a
    retry after a drop never starts it twice). ``until(chunk)`` returning
    True, or the monotonic ``deadline`` passing, stops early: the JobEnd then
    reads "running" (``matched`` says which). Ctrl-C propagates as
    KeyboardInterrupt; the job keeps running.
    """
    out = out or sys.stdout.buffer
    remote = Remote(ctx, instance)
    tool = job_tool(instance)
    jid = shlex.quote(job_id)
    failures_since = None
    delay = FIRST_DELAY
    connected = False
    while True:
        if start_spec is not None:
            command = f"{tool} start {jid} follow {offset}"  # one exec, one process: start, then follow
        else:
            command = f"{tool} follow {jid} {offset}"
        stream = _Stream(remote.ssh_argv() + [command], start_spec or b"")
        try:
            how = stream.pump(out, until, deadline)
        except BaseException:
            stream.kill()
            raise
        offset += stream.received
        if how != "eof":
            stream.kill()
            return JobEnd(job_id, "running", None, offset, matched=how == "matched")
        code = stream.finish()
        stderr_text = stream.stderr.decode(errors="replace")
        end, other = _parse_end(stderr_text)
        if end is not None:
            connected, start_spec = True, None
            failures_since, delay = None, FIRST_DELAY
            if end.log_size > offset or end.state == "running":
                if end.state == "running" and not stream.received:
                    time.sleep(0.2)  # it stopped early with nothing new: never spin
                continue  # bytes landed after the follower stopped, or it stopped early: fetch the rest
            return replace(end, log_size=offset)
        refused = _wrapper_error(code, other, instance, job_id)
        if refused is not None:
            raise refused
        if "ferry-started" in stderr_text:
            start_spec = None  # started before the drop: only follow from now on
        # The wrapper says "ferry-following" as it begins: a drop after that is a drop, not "unreachable".
        connected = connected or stream.received > 0 or "ferry-following" in stderr_text
        failure = remote.classify_failure(other)
        if not connected or isinstance(failure, HostKeyError) or "Permission denied" in other:
            if start_spec is not None:
                failure.hint = f"{failure.hint}; the job may have started anyway: inv jobs"
            raise failure  # never reached it, or it refused us: retrying would only hide that
        # The connection dropped (or the sshd is restarting): back off and resume at `offset`.
        now = time.monotonic()
        if stream.received or failures_since is None:
            failures_since, delay = now, FIRST_DELAY
        if now - failures_since > RECONNECT_WINDOW:
            raise SSHError(
                f"lost the connection to {instance.name} for {human(now - failures_since)}; stopped following job {job_id}",
                hint=f"the job keeps running; follow it again later: inv logs -f {_flag(job_id)}",
            )
        if deadline is not None and now + delay >= deadline:
            return JobEnd(job_id, "running", None, offset)
        log(f"connection to {instance.name} lost; reconnecting in {delay:g}s (job {job_id} keeps running)")
        time.sleep(delay)
        delay = min(delay * 2, MAX_DELAY)


def start(ctx, instance: Instance, command: str, **options) -> str:
    """Start a job and return its id at once (``run --detach``)."""
    job_id = new_job_id()
    spec = job_spec(ctx, instance, command, **options)
    proc = Remote(ctx, instance).run(f"{job_tool(instance)} start {shlex.quote(job_id)}", input=spec, check=False)
    if proc.returncode:
        stderr_text = proc.stderr.decode(errors="replace")
        raise _wrapper_error(proc.returncode, stderr_text, instance, job_id) or JobError(
            f"could not start the job on {instance.name} (exit status {proc.returncode})"
        )
    return job_id


def run(
    ctx: Context | None,
    instance: Instance,
    command: str,
    detach: bool = False,
    out: BinaryIO | None = None,
    log: Log = _stderr,
    wait_for: str | None = None,
    wait_timeout: float | None = None,
    **options,
) -> tuple[str, JobEnd | None]:
    """Start ``command`` as a job; unless detached, stream it and return how it ended.

    With ``wait_for`` (a regular expression) return as soon as a line of the
    log matches, leaving the job running (``end.matched``); raise JobError if
    the job ends first or ``wait_timeout`` seconds pass. Ctrl-C while
    streaming raises Detached; the job keeps running.
    """
    if detach and wait_for:
        raise UsageError("--detach and --wait-for do not go together", hint="--wait-for already returns once the job is ready")
    if wait_timeout and not wait_for:
        raise UsageError("--wait-timeout needs --wait-for", hint='e.g. --wait-for "Listening on" --wait-timeout 5m')
    matcher = LineMatcher(wait_for) if wait_for else None
    if detach:
        return start(ctx, instance, command, **options), None
    job_id = new_job_id()
    spec = job_spec(ctx, instance, command, **options)
    deadline = time.monotonic() + wait_timeout if wait_timeout else None
    try:
        end = follow(ctx, instance, job_id, out=out, start_spec=spec, log=log,
                     until=matcher.feed if matcher else None, deadline=deadline)
    except KeyboardInterrupt:
        raise Detached(job_id) from None
    if matcher is None or end.matched:
        return job_id, end
    if end.state == "running":
        raise JobError(
            f"job {job_id} printed no line matching {wait_for!r} within {human(wait_timeout)}; it keeps running",
            hint=f"follow it: inv logs -f {_flag(job_id)}   stop it: inv kill {_flag(job_id)}",
        )
    raise JobError(
        f"job {job_id} ended ({end.describe()}) before printing a line matching {wait_for!r}",
        hint=f"see its log: inv logs {_flag(job_id)}",
    )


class Detached(Exception):
    """Ctrl-C while following: the job keeps running; the caller says how to follow again."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


def exit_status(end: JobEnd) -> int:
    """The local exit status that mirrors the job's, or an error for a job that has no exit code."""
    if end.state == "lost":
        raise JobError(f"job {end.job_id} {end.describe()}", hint=f"see its log: inv logs {_flag(end.job_id)}")
    if end.exit_code is None:
        raise JobError(f"job {end.job_id} has not finished", hint=f"wait for it: inv wait {_flag(end.job_id)}")
    return end.exit_code


# -- after the job: --then stop|terminate ------------------------------------------------------------
def check_then(ctx: Context | None, instance: Instance, action: str | None) -> None:
    """Refuse a --then the provider cannot honour before the job starts, not hours later."""
    if action is None:
        return
    if action not in THEN_ACTIONS:
        raise UsageError(f"bad --then {action!r}", hint="use --then stop or --then terminate")
    from .lifecycle import provider_for
    from .providers.base import OWNED, STOP

    cloud = provider_for(ctx, instance.provider)
    if (STOP if action == "stop" else OWNED) not in cloud.capabilities:
        raise FerryError(
            f"the {cloud.name} provider cannot {action} {instance.name}",
            hint="drop --then" + (" or use --then terminate" if action == "stop" else ""),
        )


def then(ctx: Context | None, instance: Instance, end: JobEnd, action: str | None,
         always: bool = False, log: Log = _stderr) -> bool:
    """Stop or terminate the instance after the job: after success only, unless ``always``. True if done."""
    if action is None:
        return False
    if end.state != "succeeded" and not always:
        log(f"job {end.job_id} {end.describe()}; instance {instance.name} was left running "
            f"(--then {action} acts only after success; --then-always acts whatever the outcome)")
        return False
    from . import lifecycle

    if action == "stop":
        lifecycle.stop(ctx, instance)
        log(f"{instance.name} stopped (--then stop)")
    else:
        lifecycle.terminate(ctx, instance)
        log(f"{instance.name} terminated (--then terminate)")
    return True


# -- listing, logs and control ----------------------------------------------------------------------
def _when(text: str) -> datetime | None:
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")) if text else None
    except ValueError:
        return None


def list_jobs(ctx: Context | None, instance: Instance) -> list[JobInfo]:
    """Every job on the instance, oldest first. One exec; no value is re-quoted on the way."""
    proc = Remote(ctx, instance).run(f"{job_tool(instance)} list")
    fields = proc.stdout.split(b"\0")
    records = [[f.decode(errors="replace") for f in fields[i:i + 7]] for i in range(0, len(fields) - 6, 7)]
    now = None
    jobs = []
    for jid, state, code, started, finished, label, command in records:
        if jid == "now":
            now = _when(state)
            continue
        state = "running" if state == "starting" else state
        begin, stop = _when(started), _when(finished)
        if stop is None and state == "running":
            stop = now
        duration = (stop - begin).total_seconds() if begin and stop else None
        jobs.append(JobInfo(jid, label, command, state, int(code) if code.lstrip("-").isdigit() else None,
                            started or None, finished or None, duration))
    return jobs


def latest_job(ctx: Context | None, instance: Instance) -> str:
    proc = Remote(ctx, instance).run(f"{job_tool(instance)} latest")
    job_id = proc.stdout.decode().strip()
    if not job_id:
        raise JobError(f"no jobs on {instance.name} yet", hint='start one: inv run "CMD"')
    return job_id


def _remote_call(ctx, instance: Instance, command: str, job_id: str, timeout: float | None = None,
                 stdout=subprocess.PIPE) -> tuple[subprocess.CompletedProcess, JobEnd | None]:
    proc = Remote(ctx, instance).run(command, check=False, timeout=timeout, stdout=stdout)  # a timeout is an SSHError
    end, other = _parse_end(proc.stderr.decode(errors="replace"))
    refused = _wrapper_error(proc.returncode, other, instance, job_id)
    if refused is not None:
        raise refused
    return proc, end


def _remote_end(ctx, instance: Instance, command: str, job_id: str, timeout: float | None = None) -> JobEnd:
    proc, end = _remote_call(ctx, instance, command, job_id, timeout)
    if end is None:
        raise JobError(f"ferry-job on {instance.name} gave no answer about job {job_id} (exit status {proc.returncode})",
                       hint="list jobs: inv jobs")
    return end


def print_log(ctx, instance: Instance, job_id: str = LATEST, lines: int | None = None,
              out: BinaryIO | None = None) -> None:
    """The whole log (or its last ``lines`` lines), byte for byte, to ``out``."""
    out = out or sys.stdout.buffer
    arg = f" {int(lines)}" if lines is not None else ""
    command = f"{job_tool(instance)} log {shlex.quote(job_id)}{arg}"
    try:
        out.fileno()
    except (AttributeError, OSError, ValueError):  # an in-memory stream: collect, then write
        proc, _ = _remote_call(ctx, instance, command, job_id)
        out.write(proc.stdout)
        return
    out.flush()
    _remote_call(ctx, instance, command, job_id, stdout=out)


def tail_offset(ctx, instance: Instance, job_id: str, lines: int) -> tuple[str, int]:
    """(job id, byte offset where its last ``lines`` lines start): where ``logs -f --tail N`` begins."""
    proc, _ = _remote_call(ctx, instance, f"{job_tool(instance)} offset {shlex.quote(job_id)} {int(lines)}", job_id)
    jid, _, offset = proc.stdout.decode().strip().partition(" ")
    if not offset.isdigit():
        raise JobError(f"ferry-job on {instance.name} gave no offset for job {job_id}")
    return jid, int(offset)


def kill(ctx, instance: Instance, job_id: str = LATEST, signal: str = "TERM") -> JobEnd:
    """Signal the job's whole process group (KILL after 10 s if it lingers); it then reads ``killed``."""
    sig = signal.upper().removeprefix("SIG")
    if not sig.isalnum():
        raise UsageError(f"bad signal {signal!r}", hint="use a name like TERM, INT, KILL, USR1")
    return _remote_end(ctx, instance, f"{job_tool(instance)} kill {shlex.quote(job_id)} {shlex.quote(sig)}", job_id)


def wait(ctx, instance: Instance, job_id: str = LATEST, timeout: float | None = None) -> JobEnd:
    """Block until the job ends (reconnecting across drops); state 'running' means the timeout passed."""
    remote = Remote(ctx, instance)
    deadline = None if timeout is None else time.monotonic() + timeout
    failures_since = None
    delay = FIRST_DELAY
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        arg = "" if left is None else f" {shell_seconds(max(left, 0.001))}"
        proc = subprocess.run(remote.ssh_argv() + [f"{job_tool(instance)} wait {shlex.quote(job_id)}{arg}"],
                              stdin=subprocess.DEVNULL, capture_output=True)
        stderr_text = proc.stderr.decode(errors="replace")
        end, other = _parse_end(stderr_text)
        if end is None and proc.returncode == 255:
            # Unreachable from the start: say so. Dropped while waiting ("ferry-waiting" came
            # through first): wait again, with backoff, unless it never comes back.
            now = time.monotonic()
            failures_since = failures_since or now
            if ("ferry-waiting" not in stderr_text and failures_since == now) or \
                    (deadline is not None and now > deadline) or now - failures_since > RECONNECT_WINDOW:
                raise remote.classify_failure(other)
            time.sleep(delay)
            delay = min(delay * 2, MAX_DELAY)
            continue
        refused = _wrapper_error(proc.returncode, other, instance, job_id)
        if refused is not None:
            raise refused
        if end is None:
            raise JobError(f"ferry-job on {instance.name} gave no answer about job {job_id} (exit status {proc.returncode})")
        failures_since, delay = None, FIRST_DELAY
        job_id = end.job_id  # pin @latest: a retry must wait for the same job
        if end.state != "running" or (deadline is not None and time.monotonic() >= deadline):
            return end


def attach(ctx, instance: Instance, job_id: str | None = None) -> int:
    """A real terminal on the job's tmux session (or a shell session in the workdir); its exit status."""
    remote = Remote(ctx, instance)
    command = f"{job_tool(instance)} attach {shlex.quote(job_id or LATEST)} {shlex.quote(workdir(ctx, instance))}"
    return subprocess.call(remote.ssh_argv(tty=True) + [command])
