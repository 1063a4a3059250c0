"""Tasks for jobs: run, jobs, logs, wait, kill, attach, and forward (a port of the instance, here).

A job is picked with ``--job/-j ID`` (Invoke has no optional positionals);
without it, the latest job on the instance. ``--name`` always picks the
instance, so a job's own label is ``--label``.
"""

from __future__ import annotations

import os
import sys

from invoke.exceptions import Exit

from ..errors import UsageError
from ._common import ferry_task, lazy

durations = lazy("ferry.durations")
forward_lib = lazy("ferry.forward")
jobs_lib = lazy("ferry.jobs")
lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")

NAME_HELP = "instance name (default: the project's current instance)"
JOB_HELP = "job id (default: the latest job)"


def _parse_env(pairs) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --env {pair!r}", hint="use --env KEY=VALUE")
        env[key] = value
    return env


def _exit_with(end) -> None:
    code = jobs_lib.exit_status(end)
    if code:
        raise Exit(code=code)


def _stdout_gone() -> None:
    """The reader of our stdout went away (``| head``): stop quietly; the job keeps running."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except OSError:
        pass
    raise Exit(code=141)


@ferry_task(iterable=["env"], auto_shortflags=False, help={  # auto short flags would hand --then-always "-_"
    "command": "the shell command to run in the workdir",
    "name": NAME_HELP,
    "detach": "print the job id and return at once",
    "env": "KEY=VALUE exported to the job (repeatable; ferry.env in config adds to every job)",
    "cwd": "directory to run in, relative to the workdir",
    "timeout": "kill the job after this long (90, 90s, 10m, 2h); it then exits 124 and reads timed_out",
    "label": "a label to find the job by in `inv jobs`",
    "wait-for": "return 0 once a log line matches this regular expression, leaving the job running",
    "wait-timeout": "with --wait-for: give up (exit 1) after this long; the job keeps running",
    "then": "stop or terminate the instance after the job succeeds",
    "then-always": "with --then: act whatever the job's outcome",
})
def run(c, command, name=None, detach=False, env=None, cwd=None, timeout=None, label=None,
        wait_for=None, wait_timeout=None, then=None, then_always=False):
    """Run COMMAND in tmux on the instance; stream its output and exit with its exit code."""
    options = dict(env=_parse_env(env), cwd=cwd, label=label,
                   timeout=durations.parse(timeout, "--timeout"))
    wait_seconds = durations.parse(wait_timeout, "--wait-timeout")
    if then is not None and then not in jobs_lib.THEN_ACTIONS:
        raise UsageError(f"bad --then {then!r}", hint="use --then stop or --then terminate")
    if then is not None and (detach or wait_for):
        raise UsageError(f"--then {then} needs ferry to see the job end",
                         hint="drop --detach/--wait-for, or stop the instance later: inv wait && inv stop")
    if wait_seconds and not wait_for:
        raise UsageError("--wait-timeout needs --wait-for", hint='e.g. --wait-for "Listening on" --wait-timeout 5m')
    if then_always and then is None:
        raise UsageError("--then-always needs --then stop or --then terminate")
    instance = lifecycle.resolve(c, name)
    jobs_lib.check_then(c, instance, then)
    try:
        job_id, end = jobs_lib.run(c, instance, command, detach=detach, wait_for=wait_for,
                                   wait_timeout=wait_seconds, log=output.note, **options)
    except jobs_lib.Detached as detached:
        skipped = f" --then {then} was not applied." if then else ""
        output.note(f"\ndetached; job {detached.job_id} keeps running.{skipped} "
                    f"Follow it again: inv logs -f -j {detached.job_id}")
        raise Exit(code=130) from None
    except BrokenPipeError:
        _stdout_gone()
    if detach:
        print(job_id)
        return
    if wait_for:
        output.note(f"job {job_id} is ready (matched {wait_for!r}) and keeps running; "
                    f"follow: inv logs -f -j {job_id}   stop: inv kill -j {job_id}")
        return
    jobs_lib.then(c, instance, end, then, always=then_always, log=output.note)
    _exit_with(end)


@ferry_task(help={"name": NAME_HELP, "json": "print one JSON document"})
def jobs(c, name=None, json=False):
    """List the jobs on the instance: id, state, exit code, start, duration, label, command."""
    instance = lifecycle.resolve(c, name)
    found = jobs_lib.list_jobs(c, instance)
    if json:
        output.emit_json([j.to_dict() for j in found])
        return
    rows = [[j.id, j.state if j.exit_code is None or j.state == "succeeded" else f"{j.state} ({j.exit_code})",
             (j.started_at or "-")[:19].replace("T", " "), durations.human(j.duration), j.label or "-",
             j.command.replace("\n", " ")[:60]] for j in found]
    output.table(["JOB", "STATE", "STARTED (UTC)", "DURATION", "LABEL", "COMMAND"], rows) if rows else output.note("no jobs yet")


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP, "tail": "only the last N lines",
                  "follow": "keep streaming until the job ends, then exit with its exit code"})
def logs(c, job=None, name=None, follow=False, tail=None):
    """Print a job's log, byte for byte; with -f follow it to the end (Ctrl-C detaches)."""
    lines = None
    if tail is not None:
        if not str(tail).isdigit():
            raise UsageError(f"bad --tail {tail!r}", hint="give a number of lines: --tail 50")
        lines = int(tail)
    instance = lifecycle.resolve(c, name)
    job_id = job or jobs_lib.LATEST
    try:
        if not follow:
            jobs_lib.print_log(c, instance, job_id, lines=lines)
            return
        offset = 0
        if lines is not None:
            job_id, offset = jobs_lib.tail_offset(c, instance, job_id, lines)
        elif job_id == jobs_lib.LATEST:
            job_id = jobs_lib.latest_job(c, instance)  # pinned: a reconnect must resume this job
        end = jobs_lib.follow(c, instance, job_id, offset=offset, log=output.note)
    except KeyboardInterrupt:
        output.note(f"\ndetached; job {job_id} keeps running. Follow it again: inv logs -f -j {job_id}")
        raise Exit(code=130) from None
    except BrokenPipeError:
        _stdout_gone()
    _exit_with(end)


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP,
                  "timeout": "give up after this long (90, 90s, 10m, 2h): error, exit 124, the job keeps running"})
def wait(c, job=None, name=None, timeout=None):
    """Block until a job ends; exit with its exit code."""
    seconds = durations.parse(timeout, "--timeout")
    instance = lifecycle.resolve(c, name)
    try:
        end = jobs_lib.wait(c, instance, job or jobs_lib.LATEST, timeout=seconds)
    except KeyboardInterrupt:
        raise Exit(code=130) from None
    if end.state == "running":
        from ..errors import JobError

        raise JobError(f"job {end.job_id} is still running after {durations.human(seconds)}",
                       hint=f"it keeps running; wait again: inv wait -j {end.job_id}", exit_code=124)
    _exit_with(end)


@ferry_task(name="kill", help={"job": JOB_HELP, "name": NAME_HELP,
                               "signal": "signal name sent to the job's whole process group (default TERM)"})
def kill_(c, job=None, name=None, signal="TERM"):
    """Stop a job and everything it started (KILL after 10 s); it then reads 'killed'."""
    instance = lifecycle.resolve(c, name)
    end = jobs_lib.kill(c, instance, job or jobs_lib.LATEST, signal=signal)
    output.note(f"job {end.job_id} {end.describe()}")


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP})
def attach(c, job=None, name=None):
    """Attach to a job's tmux session with a real terminal (a shell session in the workdir once it has ended).

    Detach with Ctrl-b d: the job keeps running.
    """
    instance = lifecycle.resolve(c, name)
    code = jobs_lib.attach(c, instance, job)
    if code:
        raise Exit(code=code)


@ferry_task(help={"port": "PORT or PORT:LOCALPORT: the instance's port, and the local one (default: the same)",
                  "name": NAME_HELP})
def forward(c, port, name=None):
    """Forward a port of the instance to 127.0.0.1 on this machine until Ctrl-C (notebook, TensorBoard, ComfyUI)."""
    remote_port, local_port = forward_lib.parse_spec(port)
    instance = lifecycle.resolve(c, name)
    forward_lib.forward(c, instance, remote_port, local_port, log=output.note)
    output.note("forward stopped")
