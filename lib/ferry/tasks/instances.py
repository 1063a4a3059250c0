"""Tasks that make, find and power instances: launch, ls, status, ssh, stop, start, terminate."""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task

HEADERS = ["NAME", "PROVIDER", "STATUS", "GPU", "$/H", "UPTIME", "COST", "AUTOSTOP", "SSH"]
MONEY = ("$/H", "COST")

LAUNCH_HELP = {
    "name": "instance name (default: the project directory's name)",
    "provider": "local, ssh, runpod, vast, thunder, ec2, or auto (cheapest offer for --gpu among clouds with keys)",
    "gpu": "GPU alias (H100, A100, L40S, RTX4090, T4, ...) or the provider's exact id",
    "gpus": "GPUs per instance (default 1 when --gpu is given)",
    "image": "container image (RunPod, vast) or AMI id (EC2)",
    "disk": "disk size in GB",
    "volume": "persistent volume size in GB (RunPod)",
    "ports": "extra ports to expose, comma-separated (e.g. 8188,6006)",
    "spot": "interruptible/spot capacity where the cloud has it",
    "max-price": "highest $/hour per GPU to bid for spot",
    "region": "region or data centre",
    "count": "launch N instances named <name>-0 .. <name>-N-1 (a fleet)",
    "launch-timeout": "how long to wait until the instance answers ssh (600, 90s, 10m); then it is terminated",
    "autostop": "stop it after this long idle (default ferry.autostop, 30m); off: never",
    "autostop-action": "what autostop does: stop (default where the cloud can) or terminate",
    "autostop-key": "Thunder only: put your API token on the instance so it can delete itself (launch says so)",
    "max-cost": "stop it once it has cost this many dollars (default ferry.budget.max_cost_per_instance)",
    "json": "print one JSON document",
}


def row(i, agent=None) -> list:
    """One instance as a table row (ls, status); ``agent``: its autostop state, where it was asked."""
    from ..clouds import cost_so_far, uptime
    from ..flags import human

    endpoint = f"{i.ssh.user}@{i.ssh.host}:{i.ssh.port}" if i.ssh else "-"
    gpu = f"{i.gpu_count}x {i.gpu}" if i.gpu and i.gpu_count > 1 else (i.gpu or "-")
    up = uptime(i)
    return [i.name, i.provider, i.status.value, gpu, f"{i.cost_per_hour:.2f}", human(up) if up else "-",
            f"{cost_so_far(i):.2f}", agent.column() if agent is not None else "-", endpoint]


def as_json(i, current: str | None = None, agent=None) -> dict:
    """One instance as ``ls --json`` and ``status --json`` show it."""
    from ..clouds import cost_so_far, uptime

    return {**i.to_dict(), "current": i.name == current, "uptime_seconds": uptime(i),
            "cost_so_far": round(cost_so_far(i), 4), "autostop": agent.to_dict() if agent is not None else None}


def agents(settings, instances) -> dict:
    """Autostop state of each running instance this machine launched (one exec each, in parallel)."""
    from .. import autostop
    from ..handle import Box
    from ..registry import Registry, key_of

    known = Registry(settings.home).entries()
    return autostop.read_many([Box(settings, i) for i in instances
                               if i.provider != "ssh" and key_of(i.provider, i.id) in known])


@ferry_task(help=LAUNCH_HELP)
def launch(c, name=None, provider=None, gpu=None, gpus=None, image=None, disk=None, volume=None, ports=None,
           spot=False, max_price=None, region=None, count=None, launch_timeout=None, autostop=None,
           autostop_action=None, autostop_key=False, max_cost=None, json=False):
    """Create, start or reuse an instance (or --count of them) and make it the project's current one."""
    from .. import flags, lifecycle, output, providers
    from ..records import InstanceSpec, check_name

    if provider not in (None, "auto"):
        providers.module(provider)  # an unknown provider is a usage error, before anything else
    if name is not None:
        check_name(name)
    spec = InstanceSpec(
        name=name or "", provider=provider or "", gpu=gpu,
        gpu_count=flags.count(gpus, "--gpus") or (1 if gpu else 0), image=image,
        disk_gb=flags.count(disk, "--disk"), spot=bool(spot), max_price=flags.number(max_price, "--max-price"),
        region=region, ports=flags.ports(ports), volume_gb=flags.count(volume, "--volume"),
    )
    timeout = flags.duration(launch_timeout, "--launch-timeout")
    instances = flags.count(count, "--count") or 1
    if autostop_action is not None:
        flags.choice(autostop_action, "--autostop-action", ("stop", "terminate"))
    stopping = dict(autostop=autostop, autostop_action=autostop_action, autostop_key=bool(autostop_key),
                    max_cost=flags.number(max_cost, "--max-cost") if max_cost is not None else None)
    if instances > 1:
        made = lifecycle.launch_many(c, instances, name=name, provider=provider, spec=spec, timeout=timeout, **stopping)
    else:
        made = [lifecycle.launch(c, name=name, provider=provider, spec=spec, timeout=timeout, **stopping)]
    if json:
        output.emit_json(made[0].instance.to_dict() if len(made) == 1 else [b.instance.to_dict() for b in made])
        return
    for box in made:
        ssh = box.instance.ssh
        where = f", {ssh.user}@{ssh.host}:{ssh.port}" if ssh else ""
        output.note(f"{box.name} is ready ({box.provider}{where})")


@ferry_task(help={"json": "print one JSON document",
                  "all": "every ferry instance on every configured provider, not only this project's"})
def ls(c, json=False, all=False):
    """List the project's instances (or --all of them), with live status and cost so far."""
    from .. import clouds, lifecycle, output
    from ..handle import Box
    from ..config import Settings
    from ..errors import cmd

    settings = Settings.of(c)
    skipped: dict[str, str] = {}
    state = lifecycle.project_state(settings)
    if all:
        instances = clouds.list_everywhere(settings, skipped=skipped)
    else:
        instances = [lifecycle.refresh(Box(settings, i)).instance for i in state.instances()]
    current = state.current_name()
    seen = agents(settings, instances)
    if json:
        output.emit_json([as_json(i, current, seen.get(i.id)) for i in instances])
    elif instances:
        output.table(HEADERS, [row(i, seen.get(i.id)) for i in instances], right=MONEY)
    else:
        output.note("no instances" + ("" if all else f" yet; launch one: {cmd('launch')}"))
    for name, reason in skipped.items():
        output.note(f"skipped {name}: {reason}")


@ferry_task(help={"name": NAME_HELP, "json": "print one JSON document"})
def status(c, name=None, json=False):
    """Show one instance: status, endpoint, workdir."""
    from .. import output
    from ..handle import get as get_box

    box = get_box(c, name).refresh()
    seen = agents(box.settings, [box.instance]).get(box.instance.id)
    if json:
        from ..store import ProjectState

        output.emit_json(as_json(box.instance, ProjectState(box.project_dir).current_name(), seen))
        return
    output.table(HEADERS, [row(box.instance, seen)], right=MONEY)
    if box.instance.remote_home:
        print(f"workdir: {box.workdir}")


@ferry_task(name="ssh", help={"name": NAME_HELP, "print": "print the ssh command instead of running it"})
def ssh_(c, name=None, print_=False):
    """Open an interactive shell in the instance's workdir."""
    import shlex
    import subprocess

    from invoke.exceptions import Exit

    from ..handle import get as get_box

    box = get_box(c, name)
    command = f"cd {shlex.quote(box.workdir)} 2>/dev/null || cd; exec \"${{SHELL:-/bin/bash}}\" -l"
    argv = box.ssh_argv(tty=True, command=command)
    if print_:
        print(shlex.join(argv))
        return
    from .. import output
    from ..errors import UsageError, cmd

    if not output.terminal():
        raise UsageError("ferry ssh opens an interactive shell, and this is not a terminal",
                         hint=f"run a command instead: {cmd('run CMD')}; or get the ssh command: {cmd('ssh --print')}")
    code = subprocess.call(argv)
    if code:
        raise Exit(code=code)


@ferry_task(name="pin-host-key", help={"name": NAME_HELP,
                                      "yes": "pin the key it presents without asking (after reading its fingerprint)"})
def pin_host_key(c, name=None, yes=False):
    """Show the host key an instance presents now and pin it (after a rebuild); creates nothing."""
    from .. import output
    from ..errors import UsageError, cmd
    from ..handle import get as get_box

    box = get_box(c, name)
    said = {}

    def confirm(new: str, old: str | None, vouched: bool) -> bool:
        output.note(f"{box.name} presents {new}" + (f"; ferry had pinned {old}" if old and old != new else "")
                    + (f" ({box.provider} reports the same key)" if vouched else ""))
        said["same"] = old == new
        if old == new or vouched or yes:
            return True
        if output.confirm(f"pin {new} for {box.name}?"):
            return True
        raise UsageError(f"not pinned: check {new} against {box.name}'s console first",
                         hint=f"then pin it: {cmd(f'pin-host-key --name {box.name} --yes')}")

    box.pin_host_key(confirm)
    output.note(f"{box.name}'s host key was already pinned" if said.get("same") else f"pinned {box.name}'s host key")


@ferry_task(name="ssh-config", help={"install": "add an Include of ~/.ferry/ssh_config to ~/.ssh/config (shown first)",
                                    "print": "print the file's entries"})
def ssh_config(c, install=False, print_=False):
    """Host entries for this project's instances in ~/.ferry/ssh_config, so `ssh NAME` and editors reach them."""
    from pathlib import Path

    from .. import output, sshconfig
    from ..config import Settings
    from ..errors import cmd
    from ..handle import Box
    from ..store import ProjectState

    settings = Settings.of(c)
    for instance in ProjectState(settings.project_dir).instances():
        sshconfig.remember(Box(settings, instance))  # entries from before, or after an address moved
    written = sshconfig.path(settings.home)
    if print_:
        print(written.read_text() if written.exists() else "", end="")
    if install:
        user_config = Path.home() / ".ssh" / "config"
        output.note(f"adding to {user_config}: {sshconfig.include_line(settings.home)}")
        added = sshconfig.install(settings.home, user_config)
        output.note("added; now `ssh NAME`, `rsync NAME:...` and VS Code Remote reach ferry's instances" if added
                    else "it was there already")
    elif not print_:
        output.note(f"wrote {written}; use it with `ssh -F {written} NAME`, or include it in ~/.ssh/config: "
                    f"{cmd('ssh-config --install')}")


@ferry_task(help={"name": NAME_HELP, "yes": "stop even though jobs are running (they end and read 'lost')"})
def stop(c, name=None, yes=False):
    """Stop the instance, keeping its disk (jobs running on it end and read 'lost')."""
    from .. import output
    from ..errors import FerryError, UsageError, cmd
    from ..handle import get as get_box

    box = get_box(c, name)
    if not yes and box.instance.ssh is not None:
        try:
            running = [j for j in box.jobs() if j.state == "running"]
        except FerryError:
            running = []  # unreachable: there is nothing it could still lose by asking
        if running:
            names = ", ".join(f"{j.id}" + (f" ({j.label})" if j.label else "") for j in running)
            said = f"{len(running)} job{'s' if len(running) != 1 else ''} still running on {box.name}: {names}"
            if not output.confirm(f"{said}; stop it anyway (they end and read 'lost')?"):
                raise UsageError(f"{said}; stopping would lose {'them' if len(running) != 1 else 'it'}",
                                 hint=f"wait for {'them' if len(running) != 1 else 'it'}: {cmd('wait')}, "
                                      f"or stop anyway: {cmd(f'stop --name {box.name} --yes')}")
    box = box.stop()
    output.note(f"{box.name} is {box.instance.status.value.lower()}")


@ferry_task(help={"name": NAME_HELP, "launch-timeout": "how long to wait until it answers ssh (600, 90s, 10m)"})
def start(c, name=None, launch_timeout=None):
    """Start a stopped instance and wait until it answers ssh."""
    from .. import flags, output
    from ..handle import get as get_box

    timeout = flags.duration(launch_timeout, "--launch-timeout")
    box = get_box(c, name).start(timeout=timeout)
    ssh = box.instance.ssh
    output.note(f"{box.name} is ready ({ssh.user}@{ssh.host}:{ssh.port})" if ssh else f"{box.name} is ready")


@ferry_task(help={"name": NAME_HELP, "yes": "really delete the instance and everything on it",
                  "provider": "with --id: the provider of an instance this project does not know",
                  "id": "the provider's instance id (e.g. one a failed launch could not remove)"})
def terminate(c, name=None, yes=False, provider=None, id=None):
    """Delete the instance and its disk. Refuses without --yes."""
    from .. import output
    from ..handle import find as find_box, get as get_box
    from ..errors import UsageError, cmd

    if id:
        if not provider:
            raise UsageError("--id needs --provider", hint=f"e.g. {cmd('terminate --provider runpod --id abc123 --yes')}")
        box = find_box(c, provider, id)
    else:
        box = get_box(c, name)
    if not yes:
        which = f"--provider {box.provider} --id {box.instance.id}" if id else f"--name {box.name}"
        raise UsageError(f"terminate deletes {box.name} and everything on it",
                         hint=f"confirm with: {cmd(f'terminate {which} --yes')}")
    box.terminate()
    output.note(f"{box.name} terminated")
