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


def uptime(i) -> float:
    """Seconds since creation while it runs: what the cloud bills (an estimate; stops are not tracked)."""
    import time

    return max(0.0, time.time() - i.created_at) if i.status.value == "RUNNING" and i.created_at else 0.0


def cost_so_far(i) -> float:
    return i.cost_per_hour * uptime(i) / 3600


def _row(i) -> list:
    endpoint = f"{i.ssh.user}@{i.ssh.host}:{i.ssh.port}" if i.ssh else "-"
    gpu = f"{i.gpu_count}x {i.gpu}" if i.gpu and i.gpu_count > 1 else (i.gpu or "-")
    return [i.name, i.provider, i.status.value, gpu, f"{i.cost_per_hour:.2f}", output.age(i.created_at) if uptime(i) else "-",
            f"{cost_so_far(i):.2f}", endpoint]


HEADERS = ["NAME", "PROVIDER", "STATUS", "GPU", "$/H", "UPTIME", "COST", "SSH"]


LAUNCH_HELP = {
    "name": "instance name (default: the project directory's name)",
    "provider": "local, ssh, runpod, vast, thunder, ec2, or auto (cheapest offer for --gpu among clouds with keys)",
    "gpu": "GPU alias (H100, A100, L40S, RTX4090, T4, ...) or the provider's exact id",
    "gpu-count": "GPUs per instance (default 1 when --gpu is given)",
    "image": "container image (RunPod, vast) or AMI id (EC2)",
    "disk": "disk size in GB",
    "volume": "persistent volume size in GB (RunPod)",
    "ports": "extra ports to expose, comma-separated (e.g. 8188,6006)",
    "spot": "interruptible/spot capacity where the cloud has it",
    "max-price": "highest $/hour per GPU to bid for spot",
    "region": "region or data centre",
    "count": "launch N instances named <name>-0 .. <name>-N-1",
    "launch-timeout": "how long to wait until the instance answers ssh (600, 90s, 10m); then it is terminated",
    "json": "print one JSON document",
}


def build_spec(name=None, provider=None, gpu=None, gpu_count=None, image=None, disk=None, volume=None, ports=None,
               spot=False, max_price=None, region=None):
    """Flags -> InstanceSpec, with every number checked before anything is created."""
    from ..instance import InstanceSpec

    def number(flag, value, kind=int):
        if value is None:
            return None
        try:
            parsed = kind(value)
        except (TypeError, ValueError):
            raise UsageError(f"--{flag} must be a number, not {value!r}") from None
        if parsed <= 0:
            raise UsageError(f"--{flag} must be positive, not {value!r}")
        return parsed

    port_list = []
    for part in filter(None, (ports or "").replace(" ", "").split(",")):
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise UsageError(f"bad port {part!r} in --ports", hint="use numbers like --ports 8188,6006")
        port_list.append(int(part))
    count = number("gpu-count", gpu_count)
    spec = InstanceSpec(
        name=name or "", provider=provider or "local", gpu=gpu, gpu_count=count or (1 if gpu else 0),
        image=image, disk_gb=number("disk", disk), spot=bool(spot), max_price=number("max-price", max_price, float),
        region=region, ports=port_list,
    )
    volume_gb = number("volume", volume)
    if volume_gb:
        spec.labels["ferry-volume-gb"] = str(volume_gb)
    return spec


@ferry_task(help=LAUNCH_HELP)
def launch(c, name=None, provider=None, gpu=None, gpu_count=None, image=None, disk=None, volume=None, ports=None,
           spot=False, max_price=None, region=None, count=None, launch_timeout=None, json=False):
    """Create, start or reuse an instance (or --count of them) and make it the project's current one."""
    spec = build_spec(name, provider, gpu, gpu_count, image, disk, volume, ports, spot, max_price, region)
    from ..durations import parse

    timeout = parse(launch_timeout, "--launch-timeout")
    if count is not None and str(count) != "1":
        if not str(count).isdigit() or int(count) < 1:
            raise UsageError(f"--count must be a positive whole number, not {count!r}")
        made = lifecycle.launch_many(c, int(count), name=name, provider=provider, spec=spec, timeout=timeout,
                                     log=output.note)
    else:
        made = [lifecycle.launch(c, name=name, provider=provider, spec=spec, timeout=timeout, log=output.note)]
    if json:
        output.emit_json(made[0].to_dict() if len(made) == 1 else [i.to_dict() for i in made])
        return
    for instance in made:
        output.note(f"{instance.name} is ready ({instance.provider}, {instance.ssh.user}@{instance.ssh.host}:{instance.ssh.port})")


@ferry_task(help={"json": "print one JSON document",
                  "all": "every ferry instance on every configured provider, not only this project's"})
def ls(c, json=False, all=False):
    """List the project's instances (or --all of them), with live status and cost so far."""
    skipped: dict[str, str] = {}
    if all:
        instances = lifecycle.list_everywhere(c, skipped=skipped)
    else:
        instances = [lifecycle.status(c, i) for i in lifecycle.project_state(c).instances()]
    current = lifecycle.project_state(c).current_name()
    if json:
        output.emit_json([{**i.to_dict(), "current": i.name == current, "uptime_seconds": uptime(i),
                           "cost_so_far": round(cost_so_far(i), 4)} for i in instances])
    elif instances:
        output.table(HEADERS, [_row(i) for i in instances])
    else:
        output.note("no instances" + ("" if all else " yet; launch one: inv launch"))
    for name, reason in skipped.items():
        output.note(f"skipped {name}: {reason}")


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


@ferry_task(help={"name": NAME_HELP, "yes": "really delete the instance and everything on it",
                  "provider": "with --id: the provider of an instance this project does not know",
                  "id": "the provider's instance id (e.g. one a failed launch could not remove)"})
def terminate(c, name=None, yes=False, provider=None, id=None):
    """Delete the instance and its disk. Refuses without --yes."""
    if id:
        if not provider:
            raise UsageError("--id needs --provider", hint="e.g. inv terminate --provider runpod --id abc123 --yes")
        instance = lifecycle.find(c, provider, id)
    else:
        instance = lifecycle.resolve(c, name)
    if not yes:
        which = f"--provider {instance.provider} --id {instance.id}" if id else f"--name {instance.name}"
        raise UsageError(
            f"terminate deletes {instance.name} and everything on it",
            hint=f"confirm with: inv terminate {which} --yes",
        )
    lifecycle.terminate(c, instance)
    output.note(f"{instance.name} terminated")
