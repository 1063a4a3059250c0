"""Thunder Compute's extra verbs: ``modify`` (resize in place, disk grow-only) and ``clone``.

Thin: flags are parsed here, the work is in ferry.providers.thunder so a
recipe can call it too.
"""

from __future__ import annotations

from ..errors import UsageError
from ._common import ferry_task, lazy

lifecycle = lazy("ferry.lifecycle")
output = lazy("ferry.output")
thunder = lazy("ferry.providers.thunder")


def _count(flag: str, value) -> int | None:
    if value is None:
        return None
    if not str(value).isdigit() or int(value) < 1:
        raise UsageError(f"--{flag} must be a positive whole number, not {value!r}")
    return int(value)


def _seconds(flag: str, value) -> float | None:
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        seconds = 0.0
    if seconds <= 0:
        raise UsageError(f"--{flag} must be a positive number of seconds, not {value!r}")
    return seconds


def _ports(value) -> list[int]:
    ports = []
    for part in filter(None, str(value or "").replace(" ", "").split(",")):
        if not part.isdigit() or not 0 < int(part) < 65536:
            raise UsageError(f"bad port {part!r} in --ports", hint="use numbers like --ports 8188,6006")
        ports.append(int(part))
    return ports


def _report(instance, json: bool) -> None:
    if json:
        output.emit_json(instance.to_dict())
    else:
        gpu = f"{instance.gpu_count}x {instance.gpu}" if instance.gpu_count > 1 else instance.gpu
        disk = instance.raw.get("disk_gb")
        output.note(f"{instance.name} is ready: {gpu}, {instance.raw.get('cpu_cores')} vCPUs, {disk} GB disk, "
                    f"${instance.cost_per_hour:.2f}/h ({instance.ssh.user}@{instance.ssh.host}:{instance.ssh.port})")


@ferry_task(help={
    "name": "instance name (default: the project's current instance)",
    "cpu": "vCPU cores",
    "gpu": "GPU alias (T4, A100, H100, ...) or Thunder's id",
    "gpu-count": "number of GPUs",
    "disk": "disk size in GB; disks only grow",
    "ports": "HTTP ports to open, comma-separated",
    "timeout": "seconds to wait until it answers ssh again",
    "json": "print one JSON document",
})
def modify(c, name=None, cpu=None, gpu=None, gpu_count=None, disk=None, ports=None, timeout=None, json=False):
    """Resize a Thunder Compute instance in place (it restarts); the disk can only grow."""
    instance = thunder.modify(
        c, lifecycle.resolve(c, name), cpu_cores=_count("cpu", cpu), gpu=gpu, gpu_count=_count("gpu-count", gpu_count),
        disk_gb=_count("disk", disk), ports=_ports(ports), timeout=_seconds("timeout", timeout), log=output.note,
    )
    _report(instance, json)


@ferry_task(help={
    "to": "name of the new instance (default: <source>-clone)",
    "name": "instance to copy (default: the project's current instance)",
    "cpu": "vCPU cores (default: the source's)",
    "gpu": "GPU alias or Thunder's id (default: the source's)",
    "gpu-count": "number of GPUs (default: the source's)",
    "disk": "disk size in GB (default: the source's)",
    "launch-timeout": "seconds to wait until it answers ssh; then it is terminated",
    "json": "print one JSON document",
})
def clone(c, to=None, name=None, cpu=None, gpu=None, gpu_count=None, disk=None, launch_timeout=None, json=False):
    """A new Thunder Compute instance configured like this one, with overrides (the disk's files are not copied)."""
    source = lifecycle.resolve(c, name)
    instance = thunder.clone(
        c, source, to or f"{source.name}-clone", cpu_cores=_count("cpu", cpu), gpu=gpu,
        gpu_count=_count("gpu-count", gpu_count), disk_gb=_count("disk", disk),
        timeout=_seconds("launch-timeout", launch_timeout), log=output.note,
    )
    _report(instance, json)
    if not json:
        output.note(f"use it with --name {instance.name} (the project's current instance is unchanged)")
