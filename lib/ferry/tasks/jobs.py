"""Tasks for jobs: run, jobs, logs, wait, kill, attach."""

from __future__ import annotations

import shlex
import subprocess
import sys

from invoke.exceptions import Exit

from ..errors import UsageError
from ._common import ferry_task, lazy

jobs_lib = lazy("ferry.jobs")
lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")
remote = lazy("ferry.remote")

NAME_HELP = "instance name (default: the project's current instance)"


def _parse_env(pairs) -> dict[str, str]:
    env = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise UsageError(f"bad --env {pair!r}", hint="use --env KEY=VALUE")
        env[key] = value
    return env


def _exit_with(end, job_id, instance) -> None:
    code = jobs_lib.exit_status(end, job_id, instance)
    if code:
        raise Exit(code=code)


@ferry_task(iterable=["env"], help={
    "command": "the shell command to run in the workdir",
    "name": NAME_HELP,
    "detach": "print the job id and return at once",
    "env": "KEY=VALUE exported to the job (repeatable)",
    "cwd": "directory to run in, relative to the workdir",
    "timeout": "seconds after which the job is killed (exit code 124)",
    "label": "a label to find the job by in `inv jobs`",
})
def run(c, command, name=None, detach=False, env=None, cwd=None, timeout=None, label=None):
    """Run COMMAND in tmux on the instance; stream its output and exit with its exit code."""
    instance = lifecycle.resolve(c, name)
    options = dict(env=_parse_env(env), cwd=cwd, timeout=float(timeout) if timeout else None, label=label)
    try:
        job_id, end = jobs_lib.run(c, instance, command, detach=detach, **options)
    except jobs_lib.Detached as detached:
        output.note(f"\ndetached; job {detached.job_id} keeps running. Follow it again: inv logs -f {detached.job_id}")
        raise Exit(code=130) from None
    if detach:
        print(job_id)
        return
    _exit_with(end, job_id, instance)


@ferry_task(help={"name": NAME_HELP, "json": "print one JSON document"})
def jobs(c, name=None, json=False):
    """List the jobs on the instance: id, state, exit code, label, command."""
    instance = lifecycle.resolve(c, name)
    found = jobs_lib.list_jobs(c, instance)
    if json:
        output.emit_json([j.to_dict() for j in found])
        return
    rows = [[j.id, j.state if j.exit_code is None or j.state == "succeeded" else f"{j.state} ({j.exit_code})",
             j.started_at[:19].replace("T", " "), j.label or "-", j.command.replace("\n", " ")[:60]] for j in found]
    output.table(["JOB", "STATE", "STARTED", "LABEL", "COMMAND"], rows) if rows else output.note("no jobs yet")


@ferry_task(help={"job": "job id (default: the latest)", "name": NAME_HELP,
                                      "follow": "keep streaming until the job ends, then exit with its code"})
def logs(c, job=None, name=None, follow=False):
    """Print a job's log; with -f follow it to the end."""
    instance = lifecycle.resolve(c, name)
    job_id = job or jobs_lib.latest_job(c, instance)
    try:
        if follow:
            end = jobs_lib.follow(c, instance, job_id)
            _exit_with(end, job_id, instance)
        else:
            log_path = f"{instance.remote_home}/.ferry/jobs/{job_id}/log"
            proc = remote.Remote(c, instance).run(f"cat {shlex.quote(log_path)}", check=False, stdout=sys.stdout.buffer)
            if proc.returncode:
                raise UsageError(f"no job {job_id} on {instance.name}", hint="list them: inv jobs")
    except KeyboardInterrupt:
        output.note(f"\ndetached; job {job_id} keeps running")
        raise Exit(code=130) from None


@ferry_task(help={"job": "job id (default: the latest)", "name": NAME_HELP,
                                      "timeout": "give up after this many seconds (exit 124)"})
def wait(c, job=None, name=None, timeout=None):
    """Block until a job ends; exit with its exit code."""
    instance = lifecycle.resolve(c, name)
    job_id = job or jobs_lib.latest_job(c, instance)
    end = jobs_lib.wait(c, instance, job_id, timeout=float(timeout) if timeout else None)
    if end.state == "running":
        output.note(f"job {job_id} is still running after {timeout}s")
        raise Exit(code=124)
    _exit_with(end, job_id, instance)


@ferry_task(name="kill", help={"job": "job id (default: the latest)", "name": NAME_HELP,
                                                   "signal": "signal name (default TERM)"})
def kill_(c, job=None, name=None, signal="TERM"):
    """Stop a job and everything it started."""
    instance = lifecycle.resolve(c, name)
    job_id = job or jobs_lib.latest_job(c, instance)
    end = jobs_lib.kill(c, instance, job_id, signal=signal)
    output.note(f"job {job_id} killed (exit code {end.exit_code})")


@ferry_task(help={"job": "job id (default: the latest)", "name": NAME_HELP})
def attach(c, job=None, name=None):
    """Attach to a job's tmux session (or a shell session in the workdir) with a real terminal."""
    instance = lifecycle.resolve(c, name)
    workdir = lifecycle.workdir(c, instance)
    command = f"{jobs_lib.job_tool(instance)} attach {shlex.quote(job or '')} {shlex.quote(workdir)}"
    code = subprocess.call(remote.Remote(c, instance).ssh_argv(tty=True) + [command])
    if code:
        raise Exit(code=code)
