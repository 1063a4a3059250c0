"""Jobs: commands that run in tmux on the instance and outlive every connection.

The remote half is ``remote_scripts/ferry-job``; this is the local half. A
job is started and followed in a single ssh exec (one round trip on the
shared connection). Following reads the log by byte offset: a dropped
connection reconnects with backoff and resumes at the exact byte, so every
line arrives once and in order; Ctrl-C only detaches.
"""

from __future__ import annotations

import base64
import os
import secrets
import shlex
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass
from typing import BinaryIO, Callable, Mapping

from invoke import Context

from . import config
from .errors import FerryError, HostKeyError, JobError, SSHError, UsageError
from .instance import Instance
from .lifecycle import workdir
from .remote import Remote

RECONNECT_WINDOW = 300.0  # seconds of failed reconnects before following gives up
Log = Callable[[str], None]


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def new_job_id() -> str:
    """Sortable by start time, unique without coordination."""
    now = time.time()
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime(now)) + f"{int(now * 1000) % 1000:03d}-" + secrets.token_hex(2)


def job_tool(instance: Instance) -> str:
    return shlex.quote(f"{instance.remote_home}/.ferry/bin/ferry-job")


@dataclass
class JobEnd:
    """How a job stood when following stopped: its exit code, or that it is lost or still running."""

    state: str  # "exited", "lost", "running"
    exit_code: int | None
    log_size: int


@dataclass
class JobInfo:
    id: str
    state: str
    exit_code: int | None
    started_at: str
    finished_at: str
    label: str
    command: str

    def to_dict(self) -> dict:
        return asdict(self)


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
        f"FERRY_COMMAND={shlex.quote(command)}",
        f"FERRY_WORKDIR={shlex.quote(base)}",
        f"FERRY_CWD={shlex.quote(target)}",
        f"FERRY_LABEL={shlex.quote(label or '')}",
    ]
    if timeout:
        lines.append(f"FERRY_TIMEOUT={shlex.quote(str(int(timeout)))}")
    for key, value in merged.items():
        if not key.isidentifier():
            raise UsageError(f"bad environment variable name {key!r}", hint="use letters, digits and _")
        lines.append(f"export {key}={shlex.quote(str(value))}")
    return ("\n".join(lines) + "\n").encode()


def _parse_end(stderr_text: str) -> tuple[JobEnd | None, str]:
    """Split the wrapper's end trailer from whatever else reached stderr."""
    end = None
    other = []
    for line in stderr_text.splitlines():
        if line.startswith("ferry-exit:"):
            _, what, size = line.split(":", 2)
            code = int(what) if what.lstrip("-").isdigit() else None
            end = JobEnd("exited" if code is not None else what, code, int(size or 0))
        elif not line.startswith("ferry-started "):
            other.append(line)
    return end, "\n".join(other)


class _Stream:
    """One ssh exec whose stdout is job output: copy it through, count bytes, collect stderr."""

    def __init__(self, argv: list[str], stdin_data: bytes, out: BinaryIO):
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
        self.out = out

    def _read_err(self) -> None:
        self.stderr = self.proc.stderr.read()  # type: ignore[union-attr]

    def pump(self) -> int:
        fd = self.proc.stdout.fileno()  # type: ignore[union-attr]
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            self.out.write(chunk)
            self.out.flush()
            self.received += len(chunk)
        code = self.proc.wait()
        self._err_thread.join()
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def follow(
    ctx: Context | None,
    instance: Instance,
    job_id: str,
    offset: int = 0,
    out: BinaryIO | None = None,
    start_spec: bytes | None = None,
    log: Log = _stderr,
) -> JobEnd:
    """Stream a job's log from ``offset`` until it ends; reconnect and resume on any drop.

    With ``start_spec`` the job is started in the same exec (idempotent, so a
    retry after a drop never starts it twice).
    """
    out = out or sys.stdout.buffer
    remote = Remote(ctx, instance)
    tool = job_tool(instance)
    jid = shlex.quote(job_id)
    failures_since = None
    delay = 0.2
    connected = False
    while True:
        command = f"{tool} follow {jid} {offset}"
        if start_spec is not None:
            command = f"{tool} start {jid} && exec {command}"
        stream = _Stream(remote.ssh_argv() + [command], start_spec or b"", out)
        try:
            code = stream.pump()
        except BaseException:
            stream.kill()
            raise
        offset += stream.received
        end, other = _parse_end(stream.stderr.decode(errors="replace"))
        if end is not None:
            connected = True
            start_spec = None
            if end.log_size > offset:
                continue  # bytes landed after the follower stopped; fetch them
            if end.state == "running":
                continue  # the follower stopped early; keep following
            return JobEnd(end.state, end.exit_code, offset)
        if code == 3 or "no job" in other:
            raise JobError(f"no job {job_id} on {instance.name}", hint="list them: inv jobs")
        if code != 255 and code is not None and "ferry-job" in other:
            raise FerryError(other.strip().splitlines()[-1])
        if "ferry-started" in stream.stderr.decode(errors="replace"):
            start_spec = None  # started before the drop: only follow from now on
            connected = True
        connected = connected or stream.received > 0
        failure = remote.classify_failure(other)
        if not connected or isinstance(failure, HostKeyError) or "Permission denied" in other:
            raise failure  # never reached it, or it refused us: retrying would only hide that
        # The connection dropped (or the instance is restarting): back off and resume at `offset`.
        now = time.monotonic()
        failures_since = failures_since or now
        if now - failures_since > RECONNECT_WINDOW:
            raise failure
        if stream.received:
            failures_since, delay = now, 0.2
        log(f"connection to {instance.name} lost; reconnecting in {delay:.1f}s (job {job_id} keeps running)")
        time.sleep(delay)
        delay = min(delay * 2, 10.0)


def start(ctx, instance: Instance, command: str, **options) -> str:
    """Start a job and return its id at once (``run --detach``)."""
    job_id = new_job_id()
    spec = job_spec(ctx, instance, command, **options)
    Remote(ctx, instance).run(f"{job_tool(instance)} start {shlex.quote(job_id)}", input=spec)
    return job_id


def run(
    ctx: Context | None,
    instance: Instance,
    command: str,
    detach: bool = False,
    out: BinaryIO | None = None,
    log: Log = _stderr,
    **options,
) -> tuple[str, JobEnd | None]:
    """Start ``command`` as a job; unless detached, stream it and return how it ended."""
    if detach:
        return start(ctx, instance, command, **options), None
    job_id = new_job_id()
    spec = job_spec(ctx, instance, command, **options)
    try:
        end = follow(ctx, instance, job_id, out=out, start_spec=spec, log=log)
    except KeyboardInterrupt:
        raise Detached(job_id) from None
    return job_id, end


class Detached(Exception):
    """Ctrl-C while following: the job keeps running; the caller says how to follow again."""

    def __init__(self, job_id: str):
        super().__init__(job_id)
        self.job_id = job_id


def exit_status(end: JobEnd, job_id: str, instance: Instance) -> int:
    """The local exit status that mirrors the job's, or an error for a job that has no exit code."""
    if end.state == "lost":
        raise JobError(
            f"job {job_id} was lost: its process is gone without an exit code (instance stopped or restarted?)",
            hint=f"see its log: inv logs {job_id}",
        )
    if end.exit_code is None:
        raise JobError(f"job {job_id} has not finished")
    return end.exit_code


# -- listing and control ---------------------------------------------------------------
def _b64(text: str) -> str:
    return base64.b64decode(text).decode(errors="replace") if text else ""


def list_jobs(ctx: Context | None, instance: Instance) -> list[JobInfo]:
    proc = Remote(ctx, instance).run(f"{job_tool(instance)} list")
    jobs = []
    for line in proc.stdout.decode(errors="replace").splitlines():
        fields = line.split("\t")
        if len(fields) != 7:
            continue
        jid, state, code, started, finished, label, command = fields
        jobs.append(JobInfo(jid, state, int(code) if code.lstrip("-").isdigit() else None, started, finished, _b64(label), _b64(command)))
    return jobs


def latest_job(ctx: Context | None, instance: Instance) -> str:
    proc = Remote(ctx, instance).run(f"{job_tool(instance)} latest")
    job_id = proc.stdout.decode().strip()
    if not job_id:
        raise JobError(f"no jobs on {instance.name} yet", hint='start one: inv run "CMD"')
    return job_id


def _remote_end(ctx, instance: Instance, command: str, timeout: float | None = None) -> JobEnd:
    try:
        proc = Remote(ctx, instance).run(command, check=False, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise JobError("timed out waiting for the job") from exc
    end, other = _parse_end(proc.stderr.decode(errors="replace"))
    if end is None:
        message = other.strip().splitlines()[-1] if other.strip() else f"ferry-job exited {proc.returncode}"
        raise JobError(message.replace("ferry-job: ", ""), hint="list jobs: inv jobs")
    return end


def kill(ctx, instance: Instance, job_id: str, signal: str = "TERM") -> JobEnd:
    sig = signal.upper().removeprefix("SIG")
    if not sig.isalnum():
        raise UsageError(f"bad signal {signal!r}", hint="use a name like TERM, INT, KILL")
    return _remote_end(ctx, instance, f"{job_tool(instance)} kill {shlex.quote(job_id)} {shlex.quote(sig)}")


def wait(ctx, instance: Instance, job_id: str, timeout: float | None = None) -> JobEnd:
    """Block until the job ends (reconnecting across drops); state 'running' means the timeout passed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0, int(deadline - time.monotonic()))
        arg = "" if left is None else f" {left}"
        try:
            return _remote_end(ctx, instance, f"{job_tool(instance)} wait {shlex.quote(job_id)}{arg}")
        except SSHError:
            if deadline is not None and time.monotonic() > deadline:
                raise
            time.sleep(1.0)
