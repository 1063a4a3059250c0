"""Tasks that make, find and power instances: launch, ls, status, ssh, stop, start, terminate."""

from __future__ import annotations

import shlex
import subprocess

from invoke.exceptions import Exit

from ..errors import UsageError
from ._common import ferry_task, lazy

lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")
remote = lazy("ferry.remote")

NAME_HELP = "instance name (default: the project's current instance)"


def _row(i) -> list:
    endpoint = f"{i.ssh.user}@{i.ssh.host}:{i.ssh.port}" if i.ssh else "-"
    return [i.name, i.provider, i.status.value, i.gpu or "-", f"{i.cost_per_hour:.2f}", output.age(i.created_at), endpoint]


HEADERS = ["NAME", "PROVIDER", "STATUS", "GPU", "$/H", "AGE", "SSH"]


@ferry_task(help={"name": "instance name (default: the project directory's name)",
                  "provider": "where to run it (default: ferry.provider, 'local')",
                  "timeout": "seconds to wait until the instance answers ssh",
                  "json": "print one JSON document"})
def launch(c, name=None, provider=None, timeout=None, json=False):
    """Create, start or reuse an instance and make it the project's current one."""
    instance = lifecycle.launch(c, name=name, provider=provider, timeout=timeout, log=output.note)
    if json:
        output.emit_json(instance.to_dict())
    else:
        output.note(f"{instance.name} is ready ({instance.provider}, {instance.ssh.user}@{instance.ssh.host}:{instance.ssh.port})")


@ferry_task(help={"json": "print one JSON document"})
def ls(c, json=False):
    """List the project's instances, with their live status."""
    instances = [lifecycle.status(c, i) for i in lifecycle.project_state(c).instances()]
    current = lifecycle.project_state(c).current_name()
    if json:
        output.emit_json([{**i.to_dict(), "current": i.name == current} for i in instances])
    elif instances:
        output.table(HEADERS, [_row(i) for i in instances])
    else:
        output.note("no instances yet; launch one: inv launch")


@ferry_task(help={"name": NAME_HELP, "json": "print one JSON document"})
def status(c, name=None, json=False):
    """Show one instance: status, endpoint, workdir."""
    instance = lifecycle.status(c, lifecycle.resolve(c, name))
    if json:
        output.emit_json(instance.to_dict())
        return
    output.table(HEADERS, [_row(instance)])
    if instance.remote_home:
        print(f"workdir: {lifecycle.workdir(c, instance)}")


@ferry_task(name="ssh", help={"name": NAME_HELP, "print": "print the ssh command instead of running it"})
def ssh_(c, name=None, print_=False):
    """Open an interactive shell in the instance's workdir."""
    instance = lifecycle.resolve(c, name)
    target = remote.Remote(c, instance)
    workdir = lifecycle.workdir(c, instance)
    command = f"cd {shlex.quote(workdir)} 2>/dev/null || cd; exec \"${{SHELL:-/bin/bash}}\" -l"
    argv = target.ssh_argv(tty=True) + [command]
    if print_:
        print(shlex.join(argv))
        return
    code = subprocess.call(argv)
    if code:
        raise Exit(code=code)


@ferry_task(help={"name": NAME_HELP})
def stop(c, name=None):
    """Stop the instance, keeping its disk (jobs running on it end and read 'lost')."""
    instance = lifecycle.stop(c, lifecycle.resolve(c, name))
    output.note(f"{instance.name} is {instance.status.value.lower()}")


@ferry_task(help={"name": NAME_HELP})
def start(c, name=None):
    """Start a stopped instance and wait until it answers ssh."""
    instance = lifecycle.start(c, lifecycle.resolve(c, name))
    output.note(f"{instance.name} is ready ({instance.ssh.user}@{instance.ssh.host}:{instance.ssh.port})")


@ferry_task(help={"name": NAME_HELP, "yes": "really delete the instance and everything on it"})
def terminate(c, name=None, yes=False):
    """Delete the instance and its disk. Refuses without --yes."""
    instance = lifecycle.resolve(c, name)
    if not yes:
        raise UsageError(
            f"terminate deletes {instance.name} and everything on it",
            hint=f"confirm with: inv terminate --name {instance.name} --yes",
        )
    lifecycle.terminate(c, instance)
    output.note(f"{instance.name} terminated")
