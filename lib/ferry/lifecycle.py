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
import threading
import time
from importlib import resources
from typing import Callable

from invoke import Context

from . import config, keys, providers, retry
from .errors import FerryError, NoInstanceError, SSHError
from .instance import Instance, InstanceSpec, Status, check_name
from .providers.base import OWNED, STOP, find_by_name
from .remote import Remote, forget_host_key, pin_host_key, socket_target
from .sshd import wait_for_banner
from .state import ProjectState

Log = Callable[[str], None]

# Set when Ctrl-C interrupts a --count launch: worker threads see it and clean up.
CANCEL = threading.Event()


def _quiet(_: str) -> None:
    pass


def project_state(ctx: Context | None) -> ProjectState:
    return ProjectState(config.project_dir(ctx))


def provider_for(ctx: Context | None, name: str | None = None, overrides: dict | None = None):
    name = name or config.settings(ctx).get("provider") or "local"
    return providers.get(name, ctx, overrides=overrides)


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
    cloud = provider_for(ctx, instance.provider)
    fresh = retry.call(lambda: cloud.get(instance.id))
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
    make_current: bool = True,
) -> Instance:
    """Reuse, start or create the named instance; return it reachable, bootstrapped and current."""
    settings = config.settings(ctx)
    provider_name = provider or (spec.provider if spec and spec.provider != "local" else None) or settings["provider"]
    name = check_name(name or (spec.name if spec else None) or settings.get("name") or config.project_name(ctx))
    timeout = float(timeout or settings.get("launch_timeout") or 600)
    if provider_name == "auto":
        provider_name = cheapest_provider(ctx, spec, log)
    # Look for the name where the create would go, or a second --region launch would rent a twin.
    cloud = provider_for(ctx, provider_name, overrides={"lookup_region": spec.region} if spec and spec.region else None)
    public_key = keys.public_key(ctx)
    spec = spec or InstanceSpec(name=name)
    spec.name, spec.provider, spec.public_key = name, provider_name, public_key
    spec.labels = {"ferry-project": config.project_name(ctx), **spec.labels}

    existing = retry.call(lambda: find_by_name(cloud, name))
    created = False
    if existing is None:
        log(f"creating {provider_name} instance {name}")
        try:
            instance = create_once(cloud, spec)
        except BaseException as exc:  # Ctrl-C or a final failure: the cloud may have made it anyway
            _clean_up_unanswered_create(cloud, name, exc, log)
            raise
        created = True
        _warn_about_twins(cloud, instance, log)
    elif existing.status == Status.STOPPED:
        log(f"starting stopped instance {name}")
        instance = retry.call(lambda: cloud.start(existing.id))
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
    project_state(ctx).record(instance, make_current=make_current)
    return instance


def create_once(cloud, spec: InstanceSpec) -> Instance:
    """Create, retrying transient failures, but never twice: a lost response may mean it exists.

    Between attempts the instance is looked up by name; if the cloud made it
    although the answer never reached us, that instance is the result.
    """
    return retry.call(lambda: cloud.create(spec), before_retry=lambda _: find_by_name(cloud, spec.name))


def launch_many(
    ctx: Context | None, count: int, name: str | None = None, provider: str | None = None,
    spec: InstanceSpec | None = None, timeout: float | None = None, log: Log = _quiet,
) -> list[Instance]:
    """``--count N``: instances ``<name>-0 .. <name>-N-1`` sharing a group label, launched concurrently.

    Each launch keeps its own cleanup guarantee; if any fails, the error is
    raised after the others finish, so none is left half-made.
    """
    import copy
    from concurrent.futures import ThreadPoolExecutor, wait

    base = check_name(name or (spec.name if spec else None) or config.settings(ctx).get("name") or config.project_name(ctx))
    keys.public_key(ctx)  # make ferry's key (if new) once, before the launches race for it
    specs = []
    for i in range(count):
        one = copy.deepcopy(spec) if spec else InstanceSpec(name=f"{base}-{i}")
        one.name = check_name(f"{base}-{i}")
        one.labels = {**one.labels, "ferry-group": base}
        specs.append(one)
    pool = ThreadPoolExecutor(max_workers=min(count, 16))
    futures = [pool.submit(launch, ctx, s.name, provider, s, timeout, log, i == 0) for i, s in enumerate(specs)]
    try:
        wait(futures)
    except KeyboardInterrupt:
        # Worker threads never see Ctrl-C: tell them, and let each clean up what it created.
        CANCEL.set()
        log("cancelling: removing the instances this launch created")
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=True)
        CANCEL.clear()
    results, errors = [], []
    for spec_, future in zip(specs, futures):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - collect, then report
            errors.append((spec_.name, exc))
    if errors:
        first = errors[0][1]
        up = ", ".join(i.name for i in results) or "none"
        failed = "; ".join(f"{n}: {e}" for n, e in errors)
        if isinstance(first, FerryError):
            first.message = f"{len(errors)} of {count} launches failed ({failed}); still running: {up}"
            first.hint = "the failed ones were removed; run the same launch again to fill the gaps, or terminate the rest"
        raise first
    return results


def cheapest_provider(ctx: Context | None, spec: InstanceSpec | None, log: Log = _quiet) -> str:
    """``--provider auto``: the cloud with the cheapest offer for the GPU, among those with keys."""
    from . import offers as offers_lib

    if spec is None or not spec.gpu:
        raise FerryError("--provider auto needs --gpu", hint="e.g. inv launch --provider auto --gpu A100")
    found = offers_lib.collect(ctx, spec.gpu, max(spec.gpu_count, 1), spot=spec.spot)
    if not found:
        raise FerryError(f"no offer for {spec.gpu} on any provider with an API key", hint="see: inv offers --gpu " + spec.gpu)
    best = found[0]
    log(f"cheapest {spec.gpu}: {best.provider} at ${best.cost_per_hour:.2f}/h")
    return best.provider


def _clean_up_unanswered_create(cloud, name: str, exc: BaseException, log: Log) -> None:
    """A create that never answered may still have rented a machine: find it by name and remove it."""
    try:
        found = retry.call(lambda: find_by_name(cloud, name), attempts=3, budget=20)
    except Exception as lookup_error:  # noqa: BLE001 - we cannot tell: say exactly how to check
        hint = f"a {cloud.name} instance named {name} may exist: check with inv ls --all ({lookup_error})"
        if isinstance(exc, FerryError):
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}{hint}"
        log(hint)
        return
    if found is not None:
        _clean_up_failed_create(cloud, found, exc, log)


def _warn_about_twins(cloud, instance: Instance, log: Log) -> None:
    """If a lost response made the cloud create twice, say so with the command to remove the extra."""
    try:
        same = [i for i in retry.call(lambda: cloud.list()) if i.name == instance.name and i.id != instance.id
                and i.status != Status.TERMINATED]
    except FerryError:
        return
    for twin in same:
        log(f"warning: another {cloud.name} instance is also named {instance.name} ({twin.id}); "
            f"if it is not yours to keep: ferry terminate --provider {cloud.name} --id {twin.id} --yes")


def _clean_up_failed_create(cloud, instance: Instance, exc: BaseException, log: Log) -> None:
    try:
        retry.call(lambda: cloud.terminate(instance.id))
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
        if CANCEL.is_set():
            raise FerryError(f"launch of {instance.name} cancelled")
        if instance.status in (Status.ERROR, Status.TERMINATED):
            raise FerryError(
                f"instance {instance.name} entered state {instance.status.value} while starting",
                hint=f"remove it and try again: inv terminate --name {instance.name} --yes "
                     f"(or --provider {cloud.name} --id {instance.id})",
            )
        if time.monotonic() > deadline:
            raise FerryError(
                f"instance {instance.name} did not become reachable within {timeout:.0f}s",
                hint="raise --launch-timeout (ferry.launch_timeout), or try another region or GPU",
            )
        time.sleep(delay)
        delay = min(delay * 1.6, 5.0)
        got = retry.call(lambda: cloud.get(instance.id))
        if got is None:
            raise FerryError(f"instance {instance.name} ({instance.id}) disappeared while starting")
        instance = got
    assert instance.ssh is not None
    probe = socket_target(instance.ssh, ctx)  # honours ssh_config HostName/Port; None behind a proxy
    if probe is not None:
        wait_for_banner(probe[0], probe[1], max(1.0, deadline - time.monotonic()))
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
            if "host key" in exc.message or time.monotonic() > deadline or CANCEL.is_set():
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
    if OWNED not in cloud.capabilities:
        raise FerryError(
            f"ferry does not own {instance.name} (a host from ferry.hosts); it leaves its power alone",
            hint="stop it the way you normally do; to stop using it with ferry, remove it from ferry.hosts",
        )
    if STOP not in cloud.capabilities:
        raise FerryError(
            f"{cloud.name} instances cannot be stopped: its API has no stop/start",
            hint=f"terminate it instead (the disk goes with it): inv terminate --name {instance.name} --yes",
        )
    if instance.ssh:
        Remote(ctx, instance).close()
    stopped = retry.call(lambda: cloud.stop(instance.id))
    stopped.remote_home, stopped.workdir_root = instance.remote_home, instance.workdir_root
    project_state(ctx).record(stopped, make_current=False)
    return stopped


def start(ctx: Context | None, instance: Instance, timeout: float | None = None) -> Instance:
    cloud = provider_for(ctx, instance.provider)
    if OWNED not in cloud.capabilities:
        raise FerryError(f"ferry does not own {instance.name}; it leaves the host alone", hint="start it yourself")
    if STOP not in cloud.capabilities:
        raise FerryError(f"{cloud.name} instances cannot be stopped or started", hint=f"inv launch --name {instance.name}")
    started = retry.call(lambda: cloud.start(instance.id))
    started = wait_until_reachable(ctx, cloud, started, float(timeout or config.settings(ctx)["launch_timeout"]))
    started = bootstrap(ctx, started)
    project_state(ctx).record(started, make_current=False)
    return started


def terminate(ctx: Context | None, instance: Instance) -> None:
    cloud = provider_for(ctx, instance.provider)
    if OWNED not in cloud.capabilities:
        raise FerryError(
            f"ferry does not own {instance.name}; it will not terminate it",
            hint="to stop using it with ferry, remove it from ferry.hosts",
        )
    if instance.ssh:
        Remote(ctx, instance).close()
        forget_host_key(instance.ssh)
    retry.call(lambda: cloud.terminate(instance.id))
    project_state(ctx).forget(instance.name)


def find(ctx: Context | None, provider: str, instance_id: str) -> Instance:
    """An instance by provider and id, whether or not this project launched it."""
    found = retry.call(lambda: provider_for(ctx, provider).get(instance_id))
    if found is None:
        raise NoInstanceError(f"{provider} has no instance {instance_id}", hint="list them: inv ls --all")
    return found


def list_everywhere(ctx: Context | None, skipped: dict[str, str] | None = None) -> list[Instance]:
    """Every instance on every provider that is configured; the ones that are not are noted in ``skipped``."""
    from concurrent.futures import ThreadPoolExecutor

    skipped = skipped if skipped is not None else {}
    names = ["local", *providers.CLOUDS, "ssh"]

    def ask(name: str) -> list[Instance]:
        # Everything the account has running on each cloud, ferry's or not: a bill is a bill.
        cloud = provider_for(ctx, name)
        return retry.call(lambda: cloud.list())

    with ThreadPoolExecutor(max_workers=len(names)) as pool:
        futures = {name: pool.submit(ask, name) for name in names}
    found: list[Instance] = []
    for name, future in futures.items():
        try:
            found.extend(future.result())
        except FerryError as exc:
            skipped[name] = exc.message
    return sorted(found, key=lambda i: (i.provider, i.name))


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
