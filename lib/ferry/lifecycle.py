"""Launch (idempotent), wait until reachable, bootstrap, and stop/start/terminate.

Written once for every provider: a provider only creates, lists and changes
power state. The rule that matters most lives here: an instance ferry
created and could not make usable is terminated before the error reaches the
user, or its id and the command to remove it are printed. Nothing billed is
left behind silently.
"""

from __future__ import annotations

import io
import tarfile
import time
from importlib import resources
from typing import Callable

from invoke import Context

from . import config, keys, providers
from .errors import FerryError, NoInstanceError, SSHError
from .instance import Instance, InstanceSpec, Status, check_name
from .providers.base import OWNED, STOP, find_by_name, unsupported
from .remote import Remote, forget_host_key, pin_host_key
from .sshd import wait_for_banner
from .state import ProjectState

Log = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def project_state(ctx: Context | None) -> ProjectState:
    return ProjectState(config.project_dir(ctx))


def provider_for(ctx: Context | None, name: str | None = None):
    name = name or config.settings(ctx).get("provider") or "local"
    return providers.get(name, config.provider_settings(ctx, name))


# -- finding the instance a command means --------------------------------------
def resolve(ctx: Context | None, name: str | None = None) -> Instance:
    """The instance named, else the project's current one, from the state file (no API call)."""
    state = project_state(ctx)
    name = config.instance_name(ctx, name)
    if name:
        check_name(name)
        record = state.get(name)
        if record is None:
            raise NoInstanceError(
                f"this project has no instance named {name}",
                hint=f"launch it: inv launch --name {name}   (or list known ones: inv ls)",
            )
        return record
    current = state.current_name()
    record = state.get(current) if current else None
    if record is None:
        raise NoInstanceError("this project has no instance yet", hint="launch one first: inv launch")
    return record


def refresh(ctx: Context | None, instance: Instance) -> Instance | None:
    """Ask the provider for the instance's present state; None when it is gone."""
    fresh = provider_for(ctx, instance.provider).get(instance.id)
    if fresh is None:
        return None
    fresh.remote_home = fresh.remote_home or instance.remote_home
    fresh.workdir_root = fresh.workdir_root or instance.workdir_root
    return fresh


def workdir(ctx: Context | None, instance: Instance) -> str:
    root = instance.workdir_root or instance.remote_home
    if not root:
        raise FerryError(f"instance {instance.name} was never bootstrapped", hint="run: inv launch")
    return f"{root.rstrip('/')}/{config.project_name(ctx)}"


# -- launch ----------------------------------------------------------------------
def launch(
    ctx: Context | None,
    name: str | None = None,
    provider: str | None = None,
    spec: InstanceSpec | None = None,
    timeout: float | None = None,
    log: Log = _quiet,
) -> Instance:
    """Reuse, start or create the named instance; return it reachable, bootstrapped and current."""
    settings = config.settings(ctx)
    provider_name = provider or (spec.provider if spec and spec.provider != "local" else None) or settings["provider"]
    name = check_name(name or (spec.name if spec else None) or settings.get("name") or config.project_name(ctx))
    timeout = float(timeout or settings.get("launch_timeout") or 600)
    cloud = provider_for(ctx, provider_name)
    public_key = keys.public_key(ctx)
    spec = spec or InstanceSpec(name=name)
    spec.name, spec.provider, spec.public_key = name, provider_name, public_key
    spec.labels = {"ferry-project": config.project_name(ctx), **spec.labels}

    existing = find_by_name(cloud, name)
    created = False
    if existing is None:
        log(f"creating {provider_name} instance {name}")
        instance = cloud.create(spec)
        created = True
    elif existing.status == Status.STOPPED:
        log(f"starting stopped instance {name}")
        instance = cloud.start(existing.id)
    else:
        log(f"reusing instance {name}")
        instance = existing

    try:
        instance = wait_until_reachable(ctx, cloud, instance, timeout, fresh=created)
        instance = bootstrap(ctx, instance)
    except BaseException as exc:
        if created:
            _clean_up_failed_create(cloud, instance, exc, log)
        raise
    project_state(ctx).record(instance)
    return instance


def _clean_up_failed_create(cloud, instance: Instance, exc: BaseException, log: Log) -> None:
    try:
        cloud.terminate(instance.id)
        log(f"terminated {instance.name} ({instance.id}) because launch failed")
    except Exception as cleanup_error:  # noqa: BLE001 - report both, lose neither
        hint = f"remove it yourself: ferry terminate --provider {cloud.name} --id {instance.id} --yes"
        if isinstance(exc, FerryError):
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}instance {instance.id} may still be billing: {hint}"
        log(f"could not terminate {instance.id} after a failed launch ({cleanup_error}); {hint}")


def wait_until_reachable(ctx, cloud, instance: Instance, timeout: float, fresh: bool = False) -> Instance:
    """Poll with backoff until RUNNING with an endpoint, then the sshd banner, then an authenticated true."""
    deadline = time.monotonic() + timeout
    delay = 0.2
    while instance.status != Status.RUNNING or instance.ssh is None:
        if instance.status in (Status.ERROR, Status.TERMINATED):
            raise FerryError(f"instance {instance.name} entered state {instance.status.value} while starting")
        if time.monotonic() > deadline:
            raise FerryError(
                f"instance {instance.name} did not become reachable within {timeout:.0f}s",
                hint="raise ferry.launch_timeout or try another region/GPU",
            )
        time.sleep(delay)
        delay = min(delay * 1.6, 5.0)
        got = cloud.get(instance.id)
        if got is None:
            raise FerryError(f"instance {instance.name} ({instance.id}) disappeared while starting")
        instance = got
    assert instance.ssh is not None
    wait_for_banner(instance.ssh.host, instance.ssh.port, max(1.0, deadline - time.monotonic()))
    host_key = instance.raw.get("host_key")
    if host_key:
        pin_host_key(instance.ssh, host_key)  # the provider told us the key: no trust-on-first-use needed
    elif fresh:
        forget_host_key(instance.ssh)  # a new machine on a reused address must not trip the old pin
    remote = Remote(ctx, instance, first_contact=not host_key)
    remote.close()  # an old master socket may point at a previous incarnation of this endpoint
    while True:
        try:
            remote.check(timeout=30)
            return instance
        except SSHError as exc:
            if "host key" in exc.message or time.monotonic() > deadline:
                raise
            time.sleep(1.0)


def bootstrap(ctx: Context | None, instance: Instance) -> Instance:
    """Install ferry's remote scripts and make sure rsync/tmux are there; learn $HOME. One ssh exec."""
    remote = Remote(ctx, instance)
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        for script in ("ferry-job", "bootstrap.sh"):
            data = resources.files("ferry").joinpath("remote_scripts", script).read_bytes()
            info = tarfile.TarInfo(script)
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    check_only = "1" if instance.provider == "local" else "0"
    command = (
        'mkdir -p "$HOME/.ferry/bin" && tar -xf - -C "$HOME/.ferry/bin" && '
        f'FERRY_CHECK_ONLY={check_only} sh "$HOME/.ferry/bin/bootstrap.sh"'
    )
    proc = remote.run(command, input=bundle.getvalue(), timeout=900)
    facts = dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    missing = facts.get("missing", "").split()
    if missing:
        packages = " ".join("util-linux" if m == "setsid" else m for m in missing)
        raise FerryError(
            f"{instance.name} lacks {', '.join(missing)}",
            hint=f"install on the instance: apt-get install -y {packages}",
        )
    instance.remote_home = facts.get("home") or instance.remote_home
    instance.workdir_root = instance.workdir_root or instance.remote_home
    return instance


# -- power -------------------------------------------------------------------------
def stop(ctx: Context | None, instance: Instance) -> Instance:
    cloud = provider_for(ctx, instance.provider)
    if STOP not in cloud.capabilities:
        raise unsupported(cloud.name, "stop", hint=f"terminate it instead: inv terminate --name {instance.name} --yes")
    if instance.ssh:
        Remote(ctx, instance).close()
    stopped = cloud.stop(instance.id)
    stopped.remote_home, stopped.workdir_root = instance.remote_home, instance.workdir_root
    project_state(ctx).record(stopped, make_current=False)
    return stopped


def start(ctx: Context | None, instance: Instance, timeout: float | None = None) -> Instance:
    cloud = provider_for(ctx, instance.provider)
    if STOP not in cloud.capabilities:
        raise unsupported(cloud.name, "start")
    started = cloud.start(instance.id)
    started = wait_until_reachable(ctx, cloud, started, float(timeout or config.settings(ctx)["launch_timeout"]))
    started = bootstrap(ctx, started)
    project_state(ctx).record(started, make_current=False)
    return started


def terminate(ctx: Context | None, instance: Instance) -> None:
    cloud = provider_for(ctx, instance.provider)
    if OWNED not in cloud.capabilities:
        raise FerryError(
            f"ferry does not own {instance.name}; it will not terminate it",
            hint="ferry only forgets it: remove it from ferry.hosts",
        )
    if instance.ssh:
        Remote(ctx, instance).close()
        forget_host_key(instance.ssh)
    cloud.terminate(instance.id)
    project_state(ctx).forget(instance.name)


def status(ctx: Context | None, instance: Instance) -> Instance:
    """The provider's view, recorded; a gone instance reads TERMINATED."""
    fresh = refresh(ctx, instance)
    if fresh is None:
        instance.status, instance.ssh = Status.TERMINATED, None
        return instance
    project_state(ctx).record(fresh, make_current=False)
    return fresh


def connect(ctx: Context | None = None, name: str | None = None):
    """A Fabric Connection to the project's instance, for recipes and custom tasks."""
    return Remote(ctx, resolve(ctx, name)).connection()
