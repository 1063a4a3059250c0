"""Reshaping an instance: ``modify`` (resize in place, the disk only grows) and ``clone`` (a new one like it).

Which clouds can do either is the provider's declared capability (Thunder
Compute today); elsewhere both say so and name the alternative.
"""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task


def _report(box, json: bool) -> None:
    from .. import output

    instance = box.instance
    if json:
        output.emit_json(instance.to_dict())
        return
    gpu = f"{instance.gpu_count}x {instance.gpu}" if instance.gpu_count > 1 else instance.gpu
    disk = instance.raw.get("disk_gb")
    where = f" ({instance.ssh.user}@{instance.ssh.host}:{instance.ssh.port})" if instance.ssh else ""
    output.note(f"{instance.name} is ready: {gpu}, {instance.raw.get('cpu_cores')} vCPUs, {disk} GB disk, "
                f"${instance.cost_per_hour:.2f}/h{where}")


@ferry_task(help={
    "name": NAME_HELP,
    "cpu": "vCPU cores",
    "gpu": "GPU alias (T4, A100, H100, ...) or the provider's id",
    "gpus": "number of GPUs",
    "disk": "disk size in GB; disks only grow",
    "ports": "HTTP ports to open, comma-separated",
    "timeout": "how long to wait until it answers ssh again (600, 90s, 10m)",
    "json": "print one JSON document",
})
def modify(c, name=None, cpu=None, gpu=None, gpus=None, disk=None, ports=None, timeout=None, json=False):
    """Resize an instance in place (it restarts); the disk can only grow."""
    from .. import flags
    from ..handle import get as get_box

    box = get_box(c, name).modify(
        cpu=flags.count(cpu, "--cpu"), gpu=gpu, gpu_count=flags.count(gpus, "--gpus"),
        disk=flags.count(disk, "--disk"), ports=flags.ports(ports), timeout=flags.duration(timeout, "--timeout"),
    )
    _report(box, json)


@ferry_task(help={
    "to": "name of the new instance (default: <source>-clone)",
    "name": "instance to copy (default: the project's current instance)",
    "cpu": "vCPU cores (default: the source's)",
    "gpu": "GPU alias or the provider's id (default: the source's)",
    "gpus": "number of GPUs (default: the source's)",
    "disk": "disk size in GB (default: the source's)",
    "launch-timeout": "how long to wait until it answers ssh (600, 90s, 10m); then it is terminated",
    "json": "print one JSON document",
})
def clone(c, to=None, name=None, cpu=None, gpu=None, gpus=None, disk=None, launch_timeout=None, json=False):
    """A new instance configured like this one, with overrides (the disk's files are not copied)."""
    from .. import flags, output
    from ..handle import get as get_box

    source = get_box(c, name)
    box = source.clone(
        to or f"{source.name}-clone", cpu=flags.count(cpu, "--cpu"), gpu=gpu,
        gpu_count=flags.count(gpus, "--gpus"), disk=flags.count(disk, "--disk"),
        timeout=flags.duration(launch_timeout, "--launch-timeout"),
    )
    _report(box, json)
    if not json:
        output.note(f"use it with --name {box.name} (the project's current instance is unchanged)")
