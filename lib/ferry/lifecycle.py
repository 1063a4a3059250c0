"""Instances made, found and powered: launch (idempotent), stop, start, terminate, modify, clone -> Box.

Written once for every provider. The rule that matters most lives here: an
instance ferry created and could not make usable is terminated before the
error reaches the user, or its id and the command to remove it are said.
Nothing billed is left behind silently. Retrying is the registry's job
(every provider call is already retried there); waiting and bootstrap are
bootstrap.py's.
"""

from __future__ import annotations

import copy
import logging
from typing import TYPE_CHECKING, Any, Sequence

from . import autostop as autostops
from . import bootstrap, budget, providers, sshconfig, sshkey
from .handle import Box
from .config import Settings
from .errors import FerryError, NoInstanceError, UsageError, cmd
from .providers.base import CLONE, GPU, MODIFY, OWNED, SPEC_NEEDS, STOP
from .records import Instance, InstanceSpec, Status, check_name
from .registry import MACHINE_LABEL, Registry, machine_id
from .store import ProjectState, locked

if TYPE_CHECKING:
    from invoke import Context

    from .providers import Cloud

log = logging.getLogger(__name__)


def project_state(settings: Settings) -> ProjectState:
    return ProjectState(settings.project_dir)


# -- launch ------------------------------------------------------------------------------------
def launch(c: "Context | Settings | None" = None, *, name: str | None = None, provider: str | None = None,
           gpu: str | None = None, gpu_count: int | None = None, spot: bool = False, max_price: float | None = None,
           image: str | None = None, disk: int | None = None, volume: int | None = None, ports: Sequence[int] = (),
           region: str | None = None, timeout: float | None = None, spec: InstanceSpec | None = None,
           make_current: bool = True, autostop: str | None = None, autostop_action: str | None = None,
           max_cost: str | float | None = None, autostop_key: bool = False) -> Box:
    """Reuse, start or create the named instance; return its Box, reachable, bootstrapped and (by default) current.

    Idempotent by name: the cloud is asked for the name first, and a create
    whose answer is lost is found rather than repeated. A name the project
    already records on a provider means that provider. Launches of one name
    take turns (a lock per user, provider and name), so two at once make one
    instance and both succeed.

    Autostop is on unless ``autostop="off"``: ``autostop`` (idle time,
    default ``ferry.autostop``), ``autostop_action`` (stop|terminate),
    ``max_cost`` (dollars) and ``autostop_key`` (Thunder: put the account key
    on the instance so it can delete itself). A reused instance keeps the
    policy it has unless one of these is given.
    """
    settings = Settings.of(c)
    spec = spec or InstanceSpec(name="", gpu=gpu, gpu_count=gpu_count or (1 if gpu else 0), image=image,
                                disk_gb=disk, spot=spot, max_price=max_price, region=region, ports=list(ports),
                                volume_gb=volume)
    spec.name = check_name(name or spec.name or settings.name or settings.project)
    asked = provider or (spec.provider if spec.provider not in ("", "local") else None)
    provider_name = _provider_for_name(settings, spec.name, asked) or settings.provider
    if provider_name == "auto":
        from . import clouds

        provider_name = clouds.cheapest(settings, spec)
    # Look for the name where the create would go, or a second --region launch would rent a twin.
    cloud = providers.get(provider_name, settings, overrides={"lookup_region": spec.region} if spec.region else None)
    check_spec(cloud, spec)
    explicit = autostop is not None or autostop_action is not None or max_cost is not None or autostop_key
    chosen = _autostop_policy(settings, cloud, autostop, autostop_action, max_cost, autostop_key)
    if chosen is not None:
        spec.options.setdefault("self_stop_action", chosen.action)  # EC2: the shutdown behaviour at create
    key = sshkey.private_key_path(settings.ssh_key, settings.home)
    spec.provider, spec.public_key = provider_name, sshkey.public_key(key)
    spec.labels = {providers.PROJECT_LABEL: settings.project, MACHINE_LABEL: machine_id(settings.home), **spec.labels}

    with locked(settings.home / "locks" / f"{provider_name}-{spec.name}.lock"):
        handle = _launch_locked(settings, cloud, spec, timeout, chosen, explicit)
    state = project_state(settings)
    before = state.current_name()
    if state.record(handle.instance, make_current=make_current) and before:
        log.info("the project's current instance is now %s (was %s)", handle.name, before)
    sshconfig.remember(handle)
    Registry(settings.home).add(handle.instance, settings.project_dir,
                                autostop=chosen.to_dict() if chosen and (explicit or handle.created) else None)
    if chosen is not None and (explicit or handle.created):
        autostops.announce(handle, cloud, chosen)
    return handle


def _autostop_policy(settings: Settings, cloud: "Cloud", idle: str | None, action: str | None,
                     max_cost: str | float | None, key: bool) -> "autostops.Policy | None":
    """The policy a launch gives its instance (None where instances cannot stop themselves: ssh hosts)."""
    path = autostops.self_stop_of(cloud)
    if path is None:
        if idle not in (None, "off") or action or max_cost is not None or key:
            raise UsageError(f"ferry does not own {cloud.name} instances, so it cannot stop them",
                             hint="drop --autostop, --autostop-action, --max-cost and --autostop-key")
        return None
    if key and not path.needs_key:
        raise UsageError(f"{cloud.name} instances stop themselves without your API key ({path.summary})",
                         hint="drop --autostop-key: it is only for Thunder, whose API has no narrower credential")
    return autostops.policy(settings, cloud, idle=idle, action=action, max_cost=max_cost, key=key)


def _provider_for_name(settings: Settings, name: str, asked: str | None) -> str | None:
    """The provider this project records ``name`` on, which a launch of that name must use."""
    recorded = project_state(settings).get(name)
    if recorded is None:
        return asked
    if asked not in (None, "auto", recorded.provider):
        raise UsageError(
            f"{name} is this project's {recorded.provider} instance; --provider {asked} would make a second one",
            hint=f"launch it where it is: {cmd(f'launch --name {name}')}, or pick another --name for a {asked} instance",
        )
    return recorded.provider


def _launch_locked(settings: Settings, cloud: "Cloud", spec: InstanceSpec, timeout: float | None,
                   chosen: "autostops.Policy | None" = None, explicit: bool = False) -> Box:
    provider_name = cloud.name
    existing = cloud.find(spec.name)
    created = False
    if existing is None:
        check_creatable(cloud, spec)
        budget.check_launch(settings, cloud, spec)
        log.info("creating %s instance %s", provider_name, spec.name)
        try:
            instance = cloud.create(spec)
        except BaseException as exc:  # Ctrl-C or a final failure: the cloud may have made it anyway
            _clean_up_unanswered_create(cloud, spec.name, exc)
            raise
        created = True
        _warn_about_twins(cloud, instance)
    elif existing.status == Status.STOPPED:
        log.info("starting stopped instance %s", spec.name)
        instance = cloud.start(existing.id)
    else:
        log.info("reusing instance %s", spec.name)
        instance = existing

    handle = Box(settings, instance)
    handle.created = created
    try:
        bootstrap.wait_until_reachable(handle, cloud, timeout or settings.launch_timeout, fresh=created)
        handle.instance = bootstrap.install(handle, cloud)
        if chosen is not None:
            if explicit and not created:
                cloud.set_self_stop_action(handle.instance.id, chosen.action)
            autostops.configure(handle, cloud, chosen, keep_existing=not (created or explicit))
    except BaseException as exc:
        if created:
            _clean_up_failed_create(cloud, handle.instance, exc)
        raise
    return handle


def check_spec(cloud: "Cloud", spec: InstanceSpec) -> None:
    """Refuse what the provider cannot do, before anything is asked of it (usage errors, exit 2)."""
    from . import gpus

    for field, capability, flag in SPEC_NEEDS:
        if getattr(spec, field) and capability not in cloud.capabilities:
            raise UsageError(f"the {cloud.name} provider does not support {flag}", hint=f"drop {flag}")
    if spec.gpu and GPU not in cloud.capabilities:
        log.warning("warning: %s instances have no GPUs; --gpu %s is ignored there", cloud.name, spec.gpu)
    elif spec.gpu:
        gpus.check(spec.gpu)


def check_creatable(cloud: "Cloud", spec: InstanceSpec) -> None:
    """What only a create needs: a GPU for a cloud that rents by GPU (reusing an instance needs none)."""
    from . import gpus

    if GPU in cloud.capabilities and not spec.gpu:
        raise UsageError(f"the {cloud.name} provider needs --gpu to create {spec.name}",
                         hint=f"one of: {', '.join(gpus.offered_by(cloud.name))} (prices: {cmd('offers --gpu A100')})")


def launch_many(c: "Context | Settings | None", count: int, *, name: str | None = None, provider: str | None = None,
                spec: InstanceSpec | None = None, timeout: float | None = None, **autostop: Any) -> list[Box]:
    """``--count N``: instances ``<name>-0 .. <name>-N-1`` sharing a group label, launched concurrently.

    Each launch keeps its own cleanup guarantee; if any fails, the error is
    raised after the others finish, so none is left half-made.
    """
    from concurrent.futures import ThreadPoolExecutor, wait

    settings = Settings.of(c)
    base = check_name(name or (spec.name if spec else None) or settings.name or settings.project)
    sshkey.private_key_path(settings.ssh_key, settings.home)  # make ferry's key (if new) once, before the race
    from .group import remember

    remember(settings, base)  # the project's current fleet: fleet.* and map act on it without --name
    specs = []
    for i in range(count):
        one = copy.deepcopy(spec) if spec else InstanceSpec(name="")
        one.name = check_name(f"{base}-{i}")
        one.labels = {**one.labels, "ferry-group": base}
        specs.append(one)
    pool = ThreadPoolExecutor(max_workers=min(count, 16))
    futures = [pool.submit(launch, settings, name=s.name, provider=provider, spec=s, timeout=timeout,
                           make_current=i == 0, **autostop) for i, s in enumerate(specs)]
    try:
        wait(futures)
    except KeyboardInterrupt:
        # Worker threads never see Ctrl-C: tell them, and let each clean up what it created.
        bootstrap.CANCEL.set()
        log.info("cancelling: removing the instances this launch created")
        wait(futures)
        raise
    finally:
        pool.shutdown(wait=True)
        bootstrap.CANCEL.clear()
    results, errors = [], []
    for one, future in zip(specs, futures):
        try:
            results.append(future.result())
        except Exception as exc:  # noqa: BLE001 - collect, then report
            errors.append((one.name, exc))
    if errors:
        first = errors[0][1]
        up = ", ".join(b.name for b in results) or "none"
        failed = "; ".join(f"{n}: {e}" for n, e in errors)
        if isinstance(first, FerryError):
            first.message = f"{len(errors)} of {count} launches failed ({failed}); still running: {up}"
            first.hint = "the failed ones were removed; run the same launch again to fill the gaps, or terminate the rest"
        raise first
    return results


def _clean_up_unanswered_create(cloud: "Cloud", name: str, exc: BaseException) -> None:
    """A create that never answered may still have rented a machine: find it by name and remove it."""
    try:
        found = cloud.find(name)
    except Exception as lookup_error:  # noqa: BLE001 - we cannot tell: say exactly how to check
        hint = f"a {cloud.name} instance named {name} may exist: check with {cmd('ls --all')} ({lookup_error})"
        if isinstance(exc, FerryError):
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}{hint}"
        log.warning("%s", hint)
        return
    if found is not None:
        _clean_up_failed_create(cloud, found, exc)


def _warn_about_twins(cloud: "Cloud", instance: Instance) -> None:
    """If a lost response made the cloud create twice, say so with the command to remove the extra."""
    try:
        same = [i for i in cloud.list() if i.name == instance.name and i.id != instance.id
                and i.status != Status.TERMINATED]
    except FerryError:
        return
    for twin in same:
        log.warning("warning: another %s instance is also named %s (%s); if it is not yours to keep: %s",
                    cloud.name, instance.name, twin.id, cmd(f"terminate --provider {cloud.name} --id {twin.id} --yes"))


def _clean_up_failed_create(cloud: "Cloud", instance: Instance, exc: BaseException) -> None:
    try:
        cloud.terminate(instance.id)
        log.info("terminated %s (%s) because launch failed", instance.name, instance.id)
    except Exception as cleanup_error:  # noqa: BLE001 - report both, lose neither
        hint = f"remove it yourself: {cmd(f'terminate --provider {cloud.name} --id {instance.id} --yes')}"
        if isinstance(exc, FerryError):
            exc.hint = f"{exc.hint + '; ' if exc.hint else ''}instance {instance.id} may still be billing: {hint}"
        log.warning("could not terminate %s after a failed launch (%s); %s", instance.id, cleanup_error, hint)


# -- power -----------------------------------------------------------------------------------------
def _owned(handle: Box, cloud: "Cloud", verb: str) -> None:
    if OWNED not in cloud.capabilities:
        raise FerryError(
            f"ferry does not own {handle.name} (a host from ferry.hosts); it will not {verb} it",
            hint=f"{verb} it the way you normally do; to stop using it with ferry, remove it from ferry.hosts",
        )


def _record(handle: Box, fresh: Instance) -> Box:
    fresh.remote_home = fresh.remote_home or handle.instance.remote_home
    fresh.workdir_root = fresh.workdir_root or handle.instance.workdir_root
    handle.instance = fresh
    project_state(handle.settings).record(fresh, make_current=False)
    Registry(handle.settings.home).ensure(fresh, handle.settings.project_dir)
    return handle


def refresh(handle: Box) -> Box:
    """The provider's view of the instance, recorded; a gone instance reads TERMINATED (and is not recorded)."""
    fresh = handle.cloud().get(handle.instance.id)
    if fresh is None:
        handle.instance.status, handle.instance.ssh = Status.TERMINATED, None
        return handle
    return _record(handle, fresh)


def stop(handle: Box) -> Box:
    cloud = handle.cloud()
    _owned(handle, cloud, "stop")
    if STOP not in cloud.capabilities:
        raise FerryError(
            f"{cloud.name} instances cannot be stopped: its API has no stop/start",
            hint=f"terminate it instead (the disk goes with it): {cmd(f'terminate --name {handle.name} --yes')}",
        )
    if handle.instance.ssh:
        handle.remote.close()
    return _record(handle, cloud.stop(handle.instance.id))


def start(handle: Box, timeout: float | None = None) -> Box:
    cloud = handle.cloud()
    _owned(handle, cloud, "start")
    if STOP not in cloud.capabilities:
        raise FerryError(f"{cloud.name} instances cannot be stopped or started",
                         hint=f"see its state: {cmd(f'status --name {handle.name}')}")
    _record(handle, cloud.start(handle.instance.id))
    bootstrap.wait_until_reachable(handle, cloud, timeout or handle.settings.launch_timeout)
    handle.instance = bootstrap.install(handle, cloud)
    chosen = _autostop_policy(handle.settings, cloud, None, None, None, False)
    if chosen is not None:  # its agent again (cron may be missing), with the policy it had
        autostops.configure(handle, cloud, chosen, keep_existing=True)
    sshconfig.remember(handle)  # a started instance may answer at a new address
    return _record(handle, handle.instance)


def terminate(handle: Box) -> None:
    cloud = handle.cloud()
    _owned(handle, cloud, "terminate")
    if handle.instance.ssh:
        handle.remote.close()
    cloud.terminate(handle.instance.id)
    forget_terminated(handle)


def forget_terminated(handle: Box) -> None:
    """What ferry keeps about an instance that is gone: the project's record, the registry, ssh entry and pin."""
    from . import known_hosts

    if handle.instance.ssh:
        known_hosts.forget(handle.instance.ssh, handle.settings.home)
    project_state(handle.settings).forget(handle.name)
    Registry(handle.settings.home).remove(handle.provider, handle.instance.id)
    sshconfig.forget(handle)


def record_stopped(handle: Box, fresh: Instance) -> Box:
    """An instance that stopped itself (autostop, --then stop): recorded as the cloud now shows it."""
    return _record(handle, fresh)


# -- reshaping: in place, or as a new instance like this one ----------------------------------------
def modify(handle: Box, *, cpu: int | None = None, gpu: str | None = None, gpu_count: int | None = None,
           disk: int | None = None, ports: Sequence[int] = (), timeout: float | None = None) -> Box:
    """Change a running instance's vCPUs, GPU type/count, disk or open ports; wait until it answers again."""
    cloud = handle.cloud()
    if MODIFY not in cloud.capabilities:
        raise FerryError(f"{cloud.name} instances cannot be changed in place",
                         hint=f"make a new one like it instead: {cmd(f'clone --name {handle.name} --to NEW')}")
    changes: dict[str, Any] = {"cpu_cores": cpu, "gpu": gpu, "gpu_count": gpu_count, "disk_gb": disk,
                               "ports": list(ports)}
    if all(v in (None, []) for v in changes.values()):
        raise UsageError("modify needs something to change", hint="give --cpu, --gpu, --gpu-count, --disk or --ports")
    sent = cloud.modify(handle.instance.id, changes)
    if not sent:
        log.info("%s already has that configuration", handle.name)
        return handle
    log.info("modified %s: %s", handle.name, ", ".join(f"{k}={v}" for k, v in sorted(sent.items())))
    if handle.instance.ssh:
        handle.remote.close()  # it restarts: do not keep a master to the old one
    fresh = cloud.get(handle.instance.id)
    if fresh is None:
        raise FerryError(f"instance {handle.name} ({handle.instance.id}) disappeared while being modified",
                         hint=f"see what the cloud has: {cmd('ls --all')}")
    _record(handle, fresh)
    bootstrap.wait_until_reachable(handle, cloud, timeout or handle.settings.launch_timeout)
    return _record(handle, handle.instance)


def clone(handle: Box, name: str, *, cpu: int | None = None, gpu: str | None = None, gpu_count: int | None = None,
          disk: int | None = None, timeout: float | None = None) -> Box:
    """A new instance configured like this one, plus overrides; the project's current instance stays as it was.

    The configuration is copied, not the disk's contents. It goes through
    :func:`launch`, so it is idempotent by name and cleaned up if it never
    becomes reachable.
    """
    check_name(name)
    if name == handle.name:
        raise UsageError(f"a clone needs a new name, not {name}", hint=f"e.g. --to {handle.name}-2")
    cloud = handle.cloud()
    if CLONE not in cloud.capabilities:
        raise FerryError(f"ferry cannot clone {cloud.name} instances",
                         hint=f"launch a new one with the same flags: {cmd(f'launch --name {name} --provider {cloud.name}')}")
    live = cloud.get(handle.instance.id)
    if live is None:
        raise NoInstanceError(f"{cloud.name} has no instance {handle.instance.id} ({handle.name}) any more",
                              hint=f"launch it again: {cmd(f'launch --provider {cloud.name}')}")
    spec = cloud.spec_of(live)
    spec.name = name
    spec.gpu, spec.gpu_count = gpu or spec.gpu, gpu_count or spec.gpu_count
    spec.disk_gb = disk or spec.disk_gb
    if cpu:
        spec.options["cpu_cores"] = cpu
    spec.labels = {k: v for k, v in spec.labels.items() if k not in (providers.PROJECT_LABEL, "ferry-group")}
    spec.labels["ferry-clone-of"] = handle.name
    log.info("cloning %s to %s", handle.name, name)
    return launch(handle.settings, name=name, provider=cloud.name, spec=spec, timeout=timeout, make_current=False)
