"""Tasks for jobs: run, jobs, logs, wait, kill, attach, and forward (a port of the instance, here).

A job is picked with ``--job/-j ID`` (Invoke has no optional positionals);
without it, the latest job on the instance. ``--name`` always picks the
instance, so a job's own label is ``--label``.
"""

from __future__ import annotations

from ._common import JOB_HELP, NAME_HELP, ferry_task


def _exit_with(end) -> None:
    from invoke.exceptions import Exit

    from ..jobs import exit_status

    code = exit_status(end)
    if code:
        raise Exit(code=code)


def _detached(job_id, extra: str = ""):
    """Ctrl-C while following: the job keeps running; say how to follow again, exit 130."""
    from invoke.exceptions import Exit

    from .. import output
    from ..errors import cmd

    output.note(f"\ndetached; job {job_id} keeps running.{extra} Follow it again: {cmd(f'logs -f -j {job_id}')}")
    return Exit(code=130)


@ferry_task(iterable=["env"], help={
    "command": "the shell command to run in the workdir",
    "name": NAME_HELP,
    "detach": "print the job id and return at once",
    "env": "KEY=VALUE exported to the job (repeatable; ferry.env in config adds to every job)",
    "cwd": "directory to run in, relative to the workdir",
    "timeout": "kill the job after this long (90, 90s, 10m, 2h); it then exits 124 and reads timed_out",
    "label": "a label to find the job by in `jobs`",
    "wait-for": "return 0 once a log line matches this regular expression, leaving the job running",
    "wait-timeout": "with --wait-for: give up (exit 1) after this long; the job keeps running",
    "then": "the instance stops or terminates itself after the job succeeds, also with ferry gone or --detach",
    "then-always": "with --then: act whatever the job's outcome",
    "no-sync": "run without first sending what changed in the project (ferry.run.sync: false does it always)",
})
def run(c, command, name=None, detach=False, env=None, cwd=None, timeout=None, label=None,
        wait_for=None, wait_timeout=None, then=None, then_always=False, no_sync=False):
    """Run COMMAND in tmux on the instance; stream its output and exit with its exit code."""
    from .. import flags, jobs, output
    from .. import then as then_
    from ..handle import get as get_box
    from ..errors import UsageError, cmd

    options = dict(env=flags.env_pairs(env), cwd=cwd, label=label, timeout=flags.duration(timeout, "--timeout"))
    wait_seconds = flags.duration(wait_timeout, "--wait-timeout")
    if then is not None:
        flags.choice(then, "--then", then_.ACTIONS)
    if wait_seconds and not wait_for:
        raise UsageError("--wait-timeout needs --wait-for", hint='e.g. --wait-for "Listening on" --wait-timeout 5m')
    if then_always and then is None:
        raise UsageError("--then-always needs --then stop or --then terminate", hint="add --then stop (or terminate)")
    box = get_box(c, name)
    then_.check(box, then, unattended=bool(detach or wait_for))
    if not no_sync and (box.settings.data.get("run") or {}).get("sync", True):
        from ..sync import upload

        sent = upload(box, progress=False, announce=False)  # a project unchanged since the last sync costs no network
        if sent.how != "unchanged":
            output.note(f"synced {sent.files} changed file{'s' if sent.files != 1 else ''} first "
                        "(--no-sync runs what the instance has)")
    then_.prepare(box, then)
    try:
        done = box.run(command, warn=True, detach=detach, wait_for=wait_for, wait_timeout=wait_seconds,
                       then=then, then_always=then_always, **options)
    except jobs.Detached as detached:
        carried = then and then_.acts_itself(box)
        raise _detached(detached.ref, (f" {box.name} still {then}s itself when it ends (--then)." if carried else
                                       f" --then {then} was not applied.") if then else "") from None
    if detach:
        print(done.ref)
        if then:
            output.note(f"{box.name} {then}s itself when job {done.ref} "
                        f"{'ends' if then_always else 'succeeds'} (--then {then})")
        return
    if wait_for:
        output.note(f"job {done.ref} is ready (matched {wait_for!r}) and keeps running; "
                    f"follow: {cmd(f'logs -f -j {done.ref}')}   stop: {cmd(f'kill -j {done.ref}')}")
        return
    then_.after(box, done, then, always=then_always)
    _exit_with(done)


@ferry_task(help={"name": NAME_HELP, "json": "print one JSON document"})
def jobs(c, name=None, json=False):
    """List the jobs on the instance: id, state, exit code, start, duration, label, command."""
    from .. import output
    from ..handle import get as get_box
    from ..flags import human

    found = get_box(c, name).jobs()
    if json:
        output.emit_json([j.to_dict() for j in found])
        return
    rows = [[j.number or j.id, j.state if j.exit_code is None or j.state == "succeeded" else f"{j.state} ({j.exit_code})",
             (j.started_at or "-")[:19].replace("T", " "), human(j.duration), j.label or "-",
             j.command.replace("\n", " ")[:60]] for j in found]
    if rows:
        output.table(["#", "STATE", "STARTED (UTC)", "DURATION", "LABEL", "COMMAND"], rows, right=("#",))
    else:
        output.note("no jobs yet")


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP, "tail": "only the last N lines",
                  "follow": "keep streaming until the job ends, then exit with its exit code"})
def logs(c, job=None, name=None, follow=False, tail=None):
    """Print a job's log, byte for byte; with -f follow it to the end (Ctrl-C detaches)."""
    from .. import flags
    from ..follow import Detached
    from ..handle import get as get_box

    lines = flags.count(tail, "--tail", minimum=0)
    handle = get_box(c, name).job(job)
    try:
        end = handle.logs(follow=follow, tail=lines)
    except KeyboardInterrupt as stopped:
        raise _detached(stopped.ref if isinstance(stopped, Detached) else handle.ref) from None
    if follow:
        _exit_with(end)


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP,
                  "timeout": "give up after this long (90, 90s, 10m, 2h): error, exit 124, the job keeps running"})
def wait(c, job=None, name=None, timeout=None):
    """Block until a job ends; exit with its exit code."""
    from invoke.exceptions import Exit

    from .. import flags
    from ..handle import get as get_box
    from ..errors import JobError, cmd

    seconds = flags.duration(timeout, "--timeout")
    try:
        end = get_box(c, name).job(job).wait(timeout=seconds)
    except KeyboardInterrupt:
        raise Exit(code=130) from None
    if end.state == "running":
        raise JobError(f"job {end.ref} is still running after {flags.human(seconds)}",
                       hint=f"it keeps running; wait again: {cmd(f'wait -j {end.ref}')}", exit_code=124)
    _exit_with(end)


@ferry_task(name="kill", help={"job": JOB_HELP, "name": NAME_HELP,
                               "signal": "signal name sent to the job's whole process group (default TERM)"})
def kill_(c, job=None, name=None, signal="TERM"):
    """Stop a job and everything it started (KILL after 10 s); it then reads 'killed'."""
    from .. import output
    from ..handle import get as get_box

    end = get_box(c, name).job(job).kill(signal=signal)
    output.note(f"job {end.ref} {end.describe()}")


@ferry_task(help={"job": JOB_HELP, "name": NAME_HELP})
def attach(c, job=None, name=None):
    """Attach to a job's tmux session with a real terminal (a shell session in the workdir once it has ended).

    Detach with Ctrl-b d: the job keeps running.
    """
    from invoke.exceptions import Exit

    from .. import output
    from ..errors import UsageError, cmd
    from ..handle import get as get_box

    if not output.terminal():
        raise UsageError("attach needs a terminal, and this is not one",
                         hint=f"follow the job's output instead: {cmd('logs -f' + (f' -j {job}' if job else ''))}")
    code = get_box(c, name).attach(job)
    if code:
        raise Exit(code=code)


@ferry_task(help={"port": "PORT or PORT:LOCALPORT: the instance's port, and the local one (default: the same)",
                  "name": NAME_HELP})
def forward(c, port, name=None):
    """Forward a port of the instance to 127.0.0.1 on this machine until Ctrl-C (notebook, TensorBoard, ComfyUI)."""
    from .. import flags, output
    from ..handle import get as get_box

    remote_port, local_port = flags.port_spec(port)
    get_box(c, name).forward(remote_port, local_port)
    output.note("forward stopped")
