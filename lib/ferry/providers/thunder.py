"""Thunder Compute: on-demand GPU instances through its ``/v1`` REST API (see ferry.thunder_api).

What Thunder does not have, and what ferry does instead:

- **No stop/start.** ``/v1`` has none (added and reverted in Feb 2026), so
  STOP is not among the capabilities: ``ferry stop`` is lifecycle's clear
  error suggesting ``terminate``.
- **No instance names, labels or tags.** Thunder assigns ``tnr-<n>`` itself.
  ferry keeps its own names in ``~/.ferry/thunder/names.json``: instance id
  (checked against the instance's uuid, so a reused id is never mistaken
  for ours) -> ferry name and labels. The entry is written atomically,
  under a lock, *before* ``create`` returns. So that a create whose answer
  was lost (a 5xx after the fact, a dropped connection) is still found by
  name, ``create`` first writes a *pending* claim (name, labels, GPU, count,
  start time, ferry's public key); ``list`` then gives each pending claim the
  newest instance nobody has claimed that matches it: same GPU type and
  count, ferry's key among its ``sshPublicKeys`` (when the API lists keys),
  created inside the create window. Limitation: the mapping lives on the
  machine that launched; another machine sees the instance under Thunder's
  own ``tnr-<n>`` name without ferry's labels (``ls --all`` there cannot tell
  it belongs to a project).
- **No spot, regions or container images.** ``--spot``, ``--region`` and
  ``--image`` are refused before anything is created. Thunder's cheaper
  tier is ``mode: prototyping`` (setting ``ferry.providers.thunder.mode``).

``modify`` (cpu, GPU type and count, disk: grow only) and ``clone`` are here
as library functions; the tasks in ferry.tasks.thunder only parse flags.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import time
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator, Mapping

from .. import config, gpus
from ..errors import ConfigError, FerryError, NoInstanceError, TransientError, UsageError, ProviderError
from ..instance import Instance, InstanceSpec, SSHEndpoint, Status
from ..state import write_atomic
from ..thunder_api import NotFound, ThunderAPI
from .base import MODIFY, OFFERS, OWNED, Offer, unsupported

log = logging.getLogger(__name__)

# Thunder's instance states -> ferry's. Transitional states read PENDING: lifecycle keeps
# waiting (and cleans up after --launch-timeout) rather than killing on a state it does not know.
STATUS: dict[str, Status] = {
    "PROVISIONING": Status.PENDING,
    "QUEUED": Status.PENDING,
    "PENDING": Status.PENDING,
    "STARTING": Status.PENDING,
    "RUNNING": Status.RUNNING,
    "MODIFYING": Status.PENDING,
    "SNAPPING": Status.PENDING,
    "RESTORING": Status.PENDING,
    "MIGRATING": Status.PENDING,
    "UNKNOWN": Status.PENDING,
    "STOPPING": Status.STOPPED,
    "STOPPED": Status.STOPPED,
    "DELETING": Status.TERMINATED,
}

INCLUDED_VCPUS = 4  # "the first 4 vCPUs and 100 GB of storage are included" (thundercompute.com/pricing)
INCLUDED_DISK_GB = 100
MODES = ("prototyping", "production")
PENDING_TTL = 30 * 60  # a pending claim older than this is dropped (its create is long over)
CREATE_SKEW = 120  # seconds of clock difference tolerated between this machine and Thunder's createdAt
FORGET_AFTER = 120  # a mapped id missing from the list this long after it was recorded is forgotten


def make(cfg) -> "ThunderProvider":
    return ThunderProvider(cfg)


# -- ferry's names for Thunder's instances ----------------------------------------------
class NameBook:
    """``names.json``: ``{"instances": {id: {name, uuid, labels, recorded_at}}, "pending": {name: {...}}}``.

    Every change happens under an exclusive flock and lands by atomic rename,
    so concurrent launches (threads of ``--count``, or two terminals) never
    lose each other's entries.
    """

    def __init__(self, path: Path):
        self.path = path
        self.lock_path = path.with_name(path.name + ".lock")

    def read(self) -> dict[str, Any]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            data = {}
        except (OSError, ValueError) as exc:
            raise FerryError(
                f"cannot read {self.path}: {exc}",
                hint=f"fix or remove {self.path} (ferry then shows Thunder's own instance names)",
            ) from exc
        data.setdefault("instances", {})
        data.setdefault("pending", {})
        return data

    @contextlib.contextmanager
    def edit(self) -> Iterator[dict[str, Any]]:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            data = self.read()
            before = json.dumps(data, sort_keys=True)
            yield data
            if json.dumps(data, sort_keys=True) != before:
                write_atomic(self.path, (json.dumps(data, indent=2, sort_keys=True) + "\n").encode(), mode=0o600)


def _key_body(public_key: str | None) -> str:
    """The base64 part of an OpenSSH public key line: what identifies it, without the comment."""
    parts = (public_key or "").split()
    return parts[1] if len(parts) >= 2 else ""


def _epoch(stamp: Any) -> float | None:
    if not isinstance(stamp, str) or not stamp:
        return None
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def _int(value: Any, default: int = 0) -> int:
    """Thunder sends numGpus, cpuCores and memory as strings."""
    try:
        return int(float(value))
    except (TypeError, ValueError):
        return default


class ThunderProvider:
    name = "thunder"
    capabilities = frozenset({OFFERS, MODIFY, OWNED})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = dict(cfg.settings or {})
        self.api = ThunderAPI(self.settings.get("api_url"), cfg.api_key)
        self.book = NameBook(config.ferry_home() / "thunder" / "names.json")
        self._prices: dict[str, float] | None = None

    # -- settings ------------------------------------------------------------------
    @property
    def mode(self) -> str:
        mode = str(self.settings.get("mode") or "prototyping")
        if mode not in MODES:
            raise ConfigError(f"unknown Thunder mode {mode!r}", hint="set ferry.providers.thunder.mode to prototyping or production")
        return mode

    @property
    def ssh_user(self) -> str:
        return self.cfg.ssh_user or "ubuntu"

    # -- translation -----------------------------------------------------------------
    def _instance(self, iid: str, inst: dict[str, Any], entry: dict[str, Any] | None) -> Instance:
        status = STATUS.get(str(inst.get("status") or "").upper(), Status.PENDING)
        ip = inst.get("ip")
        ssh = None
        if status == Status.RUNNING and ip:
            ssh = SSHEndpoint(host=str(ip), port=_int(inst.get("port")) or 22, user=self.ssh_user)
        gpu_type = str(inst.get("gpuType") or "") or None
        count = _int(inst.get("numGpus"), 0)
        return Instance(
            id=iid,
            name=entry["name"] if entry else str(inst.get("name") or f"thunder-{iid}"),
            provider=self.name,
            status=status,
            gpu=gpus.alias_for(gpu_type),
            gpu_count=count,
            cost_per_hour=self._cost(gpu_type, count, str(inst.get("mode") or self.mode),
                                     _int(inst.get("cpuCores"), INCLUDED_VCPUS), _int(inst.get("storage"), INCLUDED_DISK_GB)),
            ssh=ssh,
            labels=dict(entry.get("labels") or {}) if entry else {},
            created_at=_epoch(inst.get("createdAt")) or (entry or {}).get("recorded_at") or 0.0,
            raw={
                "uuid": inst.get("uuid"),
                "thunder_name": inst.get("name"),
                "status": inst.get("status"),
                "gpu_type": gpu_type,
                "num_gpus": count,
                "cpu_cores": _int(inst.get("cpuCores"), 0),
                "disk_gb": _int(inst.get("storage"), 0),
                "mode": inst.get("mode"),
                "template": inst.get("template"),
                "http_ports": list(inst.get("httpPorts") or []),
            },
        )

    def _price_table(self) -> dict[str, float]:
        if self._prices is None:
            self._prices = self.api.pricing()
        return self._prices

    def _cost(self, gpu_type: str | None, count: int, mode: str, cpu_cores: int, disk_gb: int) -> float:
        """$/hour: the GPU rate plus vCPUs and disk beyond what is included. 0.0 if prices are unknown."""
        if not gpu_type or count < 1:
            return 0.0
        try:
            table = self._price_table()
        except FerryError as exc:  # prices only decorate a listing; never fail a launch over them
            log.debug("thunder pricing unavailable: %s", exc)
            self._prices = {}  # ask once per process, not once per instance
            return 0.0
        base = table.get(f"{gpu_type}_x{count}_{mode}")
        if base is None:
            return 0.0
        extra_cpu = max(0, cpu_cores - INCLUDED_VCPUS) * table.get("additional_vcpus", 0.0)
        extra_disk = max(0, disk_gb - INCLUDED_DISK_GB) * table.get("disk_gb", 0.0)
        return round(base + extra_cpu + extra_disk, 4)

    # -- create ----------------------------------------------------------------------
    def create_body(self, spec: InstanceSpec) -> dict[str, Any]:
        """The create request for ``spec``, refusing what Thunder cannot do before anything is sent."""
        if spec.spot:
            raise ConfigError("Thunder Compute has no spot instances",
                              hint="drop --spot; Thunder's cheaper tier is mode prototyping (ferry.providers.thunder.mode)")
        if spec.region:
            raise ConfigError("Thunder Compute does not let you choose a region", hint="drop --region")
        if spec.image:
            raise ConfigError("Thunder Compute starts from templates, not container images",
                              hint="drop --image; set ferry.providers.thunder.template (e.g. base)")
        if spec.ports:
            raise ConfigError("Thunder Compute opens ports on a running instance",
                              hint="launch, then: ferry modify --ports " + ",".join(str(p) for p in spec.ports))
        if spec.labels.get("ferry-volume-gb"):
            raise ConfigError("Thunder Compute has no separate volumes", hint="drop --volume; use --disk for the disk size")
        if not spec.gpu:
            offered = sorted(a for a, e in gpus.TABLE.items() if e.get("thunder"))
            raise ConfigError("the thunder provider needs --gpu", hint=f"one of: {', '.join(offered)}")
        if not spec.public_key:
            raise FerryError("no public key given for the new instance")
        count = spec.gpu_count or 1
        disk = int(spec.disk_gb or self.settings.get("disk") or INCLUDED_DISK_GB)
        if disk < INCLUDED_DISK_GB:
            raise ConfigError(f"Thunder disks start at {INCLUDED_DISK_GB} GB, not {disk}", hint=f"use --disk {INCLUDED_DISK_GB} or more")
        return {
            "cpu_cores": int(self.settings.get("cpu_cores") or INCLUDED_VCPUS),
            "gpu_type": gpus.resolve(spec.gpu, self.name, count),
            "template": str(self.settings.get("template") or "base"),
            "num_gpus": count,
            "disk_size_gb": disk,
            "mode": self.mode,
            "public_key": spec.public_key.strip(),
        }

    def create(self, spec: InstanceSpec) -> Instance:
        body = self.create_body(spec)
        self._note_pending(spec, body)
        try:
            created = self.api.create(body)
        except ProviderError as exc:
            if not isinstance(exc, TransientError):
                self._drop_pending(spec.name)  # a definite refusal: nothing was made
            raise
        # Anything else (a transient failure, Ctrl-C mid-request) may have made the instance:
        # the pending claim stays, so list() can still find it by name.
        iid = created["identifier"]
        self._record(iid, created.get("uuid"), spec.name, spec.labels)
        return Instance(
            id=iid, name=spec.name, provider=self.name, status=Status.PENDING, gpu=gpus.alias_for(body["gpu_type"]),
            gpu_count=body["num_gpus"], labels=dict(spec.labels),
            raw={"uuid": created.get("uuid"), "gpu_type": body["gpu_type"], "num_gpus": body["num_gpus"],
                 "cpu_cores": body["cpu_cores"], "disk_gb": body["disk_size_gb"], "mode": body["mode"]},
        )

    def _note_pending(self, spec: InstanceSpec, body: dict[str, Any]) -> None:
        now = time.time()
        with self.book.edit() as book:
            claim = book["pending"].get(spec.name) or {"started_at": now}
            claim.update({
                "labels": dict(spec.labels), "gpu_type": body["gpu_type"], "num_gpus": body["num_gpus"],
                "key": _key_body(spec.public_key), "last_attempt_at": now,
            })
            book["pending"][spec.name] = claim

    def _drop_pending(self, name: str) -> None:
        with self.book.edit() as book:
            book["pending"].pop(name, None)

    def _record(self, iid: str, uuid: str | None, name: str, labels: Mapping[str, str]) -> None:
        with self.book.edit() as book:
            book["pending"].pop(name, None)
            for other, entry in list(book["instances"].items()):
                if other != iid and entry.get("name") == name and entry.get("claim"):
                    del book["instances"][other]  # list() guessed another instance for this name: release it
            prior = book["instances"].get(iid)
            if prior and prior.get("name") != name and prior.get("claim"):
                # list() gave this instance to another pending create; the create's own answer wins,
                # and that other create goes back to waiting for its instance.
                book["pending"][prior["name"]] = prior["claim"]
            book["instances"][iid] = {"name": name, "uuid": uuid, "labels": dict(labels), "recorded_at": time.time()}

    # -- list / get ------------------------------------------------------------------------
    def _reconcile(self, listed: dict[str, dict[str, Any]]) -> dict[str, Any]:
        """The name book after claiming lost creates and forgetting instances that are gone."""
        book = self.book.read()
        now = time.time()
        stale = [i for i, e in book["instances"].items() if not self._owns(e, listed.get(i), now)]
        if not (book["pending"] or stale):
            return book
        with self.book.edit() as book:
            expired = [n for n, c in book["pending"].items() if now - c.get("started_at", 0) > PENDING_TTL]
            for iid in [i for i, e in book["instances"].items() if not self._owns(e, listed.get(i), now)]:
                del book["instances"][iid]
            for name in expired:
                book["pending"].pop(name, None)
            for name, claim in sorted(book["pending"].items(), key=lambda kv: kv[1].get("started_at", 0)):
                taken = set(book["instances"])
                found = self._match(claim, {i: v for i, v in listed.items() if i not in taken})
                if found is not None:
                    book["instances"][found] = {"name": name, "uuid": listed[found].get("uuid"),
                                                "labels": claim.get("labels") or {}, "recorded_at": now, "claim": claim}
                    del book["pending"][name]
                    log.debug("thunder: instance %s is %s, whose create answer was lost", found, name)
            return book

    @staticmethod
    def _owns(entry: dict[str, Any], inst: dict[str, Any] | None, now: float) -> bool:
        """Does this name-book entry still describe a live instance (same id *and* same uuid)?"""
        if inst is None:
            return now - entry.get("recorded_at", now) < FORGET_AFTER  # just created: the list may lag
        return not entry.get("uuid") or not inst.get("uuid") or entry["uuid"] == inst["uuid"]

    @staticmethod
    def _match(claim: dict[str, Any], unclaimed: dict[str, dict[str, Any]]) -> str | None:
        """The newest unclaimed instance that this pending create could have made, or None."""
        earliest = claim.get("started_at", 0) - CREATE_SKEW
        latest = claim.get("last_attempt_at", claim.get("started_at", 0)) + CREATE_SKEW
        best, best_at = None, (-1.0, -1)
        for iid, inst in unclaimed.items():
            if STATUS.get(str(inst.get("status") or "").upper()) == Status.TERMINATED:
                continue
            if str(inst.get("gpuType") or "").lower() != str(claim.get("gpu_type") or "").lower():
                continue
            if _int(inst.get("numGpus"), -1) != claim.get("num_gpus"):
                continue
            keys = inst.get("sshPublicKeys")
            if keys and claim.get("key") and not any(claim["key"] in str(k) for k in keys):
                continue
            created = _epoch(inst.get("createdAt"))
            if created is not None and not earliest <= created <= latest:
                continue
            order = (created if created is not None else 0.0, _int(iid, 0))  # ids break ties within a second
            if order > best_at:
                best, best_at = iid, order
        return best

    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        listed = self.api.list()
        book = self._reconcile(listed)
        found = []
        for iid, inst in listed.items():
            entry = book["instances"].get(iid)
            if entry is not None and not self._owns(entry, inst, time.time()):
                entry = None
            instance = self._instance(iid, inst, entry)
            if all(instance.labels.get(k) == v for k, v in (labels or {}).items()):
                found.append(instance)
        return found

    def get(self, instance_id: str) -> Instance | None:
        for instance in self.list():
            if instance.id == str(instance_id):
                return None if instance.status == Status.TERMINATED else instance
        return None

    # -- power -------------------------------------------------------------------------------
    def start(self, instance_id: str) -> Instance:
        raise unsupported(self.name, "start",
                          hint="Thunder's API has no start: start it from Thunder's console, or terminate it and launch again")

    def stop(self, instance_id: str) -> Instance:
        raise unsupported(self.name, "stop", hint="Thunder Compute has no stop/start; terminate it instead")

    def terminate(self, instance_id: str) -> None:
        try:
            self.api.delete(str(instance_id))
        except NotFound:
            pass  # already gone: terminate is idempotent
        with self.book.edit() as book:
            book["instances"].pop(str(instance_id), None)

    # -- modify --------------------------------------------------------------------------------
    def modify(self, instance_id: str, changes: dict[str, Any]) -> None:
        """Send one modify request (fields as Thunder names them); the instance restarts into them."""
        self.api.modify(str(instance_id), changes)

    # -- offers --------------------------------------------------------------------------------
    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        """Thunder's catalogue at the configured mode, cpu_cores and disk: ``{gpu}_x{n}_{mode}`` keys."""
        count = max(int(count or 1), 1)
        wanted = gpus.resolve(gpu, self.name, count) if gpu else None
        table = self._price_table()
        cpu = int(self.settings.get("cpu_cores") or INCLUDED_VCPUS)
        disk = int(self.settings.get("disk") or INCLUDED_DISK_GB)
        found = []
        for key in sorted(table):
            parts = key.rsplit("_", 2)
            if len(parts) != 3 or not parts[1].startswith("x") or parts[2] != self.mode:
                continue
            gpu_type, n = parts[0], _int(parts[1][1:], 0)
            if n != count or (wanted and gpu_type != wanted):
                continue
            found.append(Offer(provider=self.name, gpu=gpus.alias_for(gpu_type) or gpu_type, gpu_count=n,
                               cost_per_hour=self._cost(gpu_type, n, self.mode, cpu, disk), spot=False, id=key))
        return found


# -- the modify and clone tasks' library side ----------------------------------------------------
def _thunder_instance(ctx, instance: Instance, verb: str) -> tuple[ThunderProvider, Instance]:
    from .. import lifecycle, retry

    if instance.provider != "thunder":
        raise FerryError(f"{verb} works on Thunder Compute instances; {instance.name} is on {instance.provider}")
    cloud = lifecycle.provider_for(ctx, "thunder")
    live = retry.call(lambda: cloud.get(instance.id))
    if live is None:
        raise NoInstanceError(f"Thunder Compute has no instance {instance.id} ({instance.name}) any more",
                              hint="launch it again: ferry launch --provider thunder")
    live.remote_home = live.remote_home or instance.remote_home
    live.workdir_root = live.workdir_root or instance.workdir_root
    return cloud, live


def modify(ctx, instance: Instance, cpu_cores: int | None = None, gpu: str | None = None, gpu_count: int | None = None,
           disk_gb: int | None = None, ports: list[int] | None = None, timeout: float | None = None,
           log=lambda _: None) -> Instance:
    """Change a running Thunder instance's vCPUs, GPU type/count, disk (grow only) or open ports.

    Everything is checked before the API is called: a smaller disk is refused
    (Thunder cannot shrink one, and asking would risk the data on it). Then
    ferry waits until the instance answers ssh again and records it.
    """
    from .. import lifecycle, retry
    from ..remote import Remote

    if all(v is None for v in (cpu_cores, gpu, gpu_count, disk_gb)) and not ports:
        raise UsageError("modify needs something to change", hint="give --cpu, --gpu, --gpu-count, --disk or --ports")
    cloud, live = _thunder_instance(ctx, instance, "modify")
    raw = live.raw
    changes: dict[str, Any] = {}
    if disk_gb is not None:
        current = int(raw.get("disk_gb") or 0)
        if disk_gb < current:
            raise FerryError(
                f"Thunder disks only grow: {live.name} has {current} GB, --disk {disk_gb} would shrink it",
                hint=f"use --disk {current} or more; for a smaller disk, clone to a new instance and copy what you need",
            )
        if disk_gb != current:
            changes["disk_size_gb"] = int(disk_gb)
    if cpu_cores is not None and cpu_cores != raw.get("cpu_cores"):
        changes["cpu_cores"] = int(cpu_cores)
    count = int(gpu_count) if gpu_count is not None else int(raw.get("num_gpus") or 1)
    if gpu is not None:
        gpu_type = gpus.resolve(gpu, "thunder", count)
        if gpu_type != raw.get("gpu_type"):
            changes["gpu_type"] = gpu_type
    if gpu_count is not None and gpu_count != raw.get("num_gpus"):
        changes["num_gpus"] = count
    new_ports = sorted(set(ports or ()) - set(raw.get("http_ports") or ()))
    if new_ports:
        changes["add_ports"] = new_ports
    if not changes:
        log(f"{live.name} already has that configuration")
        return live
    log(f"modifying {live.name}: " + ", ".join(f"{k}={v}" for k, v in sorted(changes.items())))
    if live.ssh:
        Remote(ctx, live).close()  # the instance restarts: do not keep a master to the old one
    retry.call(lambda: cloud.modify(live.id, changes))
    got = retry.call(lambda: cloud.get(live.id))
    if got is None:
        raise FerryError(f"instance {live.name} ({live.id}) disappeared while being modified")
    got.remote_home, got.workdir_root = live.remote_home, live.workdir_root
    wait = float(timeout or config.settings(ctx).get("launch_timeout") or 600)
    ready = lifecycle.wait_until_reachable(ctx, cloud, got, wait)
    ready.remote_home, ready.workdir_root = live.remote_home, live.workdir_root
    lifecycle.project_state(ctx).record(ready, make_current=False)
    return ready


def clone(ctx, source: Instance, name: str, cpu_cores: int | None = None, gpu: str | None = None,
          gpu_count: int | None = None, disk_gb: int | None = None, timeout: float | None = None,
          log=lambda _: None) -> Instance:
    """A new Thunder instance with the source's GPU type and count, vCPUs, disk and mode, plus overrides.

    The configuration is copied, not the disk's contents. It goes through
    lifecycle.launch, so it is idempotent by name and cleaned up if it never
    becomes reachable; the project's current instance stays as it was.
    """
    from invoke import Context

    from .. import lifecycle
    from ..instance import check_name

    check_name(name)
    if name == source.name:
        raise UsageError(f"a clone needs a new name, not {name}", hint=f"e.g. --to {source.name}-2")
    _, live = _thunder_instance(ctx, source, "clone")
    raw = live.raw
    count = int(gpu_count or raw.get("num_gpus") or 1)
    labels = {k: v for k, v in live.labels.items() if k not in ("ferry-project", "ferry-group")}
    labels["ferry-clone-of"] = live.name
    spec = InstanceSpec(
        name=name, provider="thunder", gpu=gpu or raw.get("gpu_type"), gpu_count=count,
        disk_gb=int(disk_gb or raw.get("disk_gb") or INCLUDED_DISK_GB), labels=labels,
    )
    # vCPUs and mode are Thunder settings, not part of InstanceSpec: carry them in a copy of the config.
    base = ctx.config if ctx is not None else config.make_context().config
    clone_config = base.clone()
    thunder_settings = clone_config["ferry"]["providers"]["thunder"]
    thunder_settings["cpu_cores"] = int(cpu_cores or raw.get("cpu_cores") or INCLUDED_VCPUS)
    if raw.get("mode") in MODES:
        thunder_settings["mode"] = raw["mode"]
    if raw.get("template"):
        thunder_settings["template"] = raw["template"]
    log(f"cloning {live.name} to {name}")
    return lifecycle.launch(Context(config=clone_config), name=name, provider="thunder", spec=spec, timeout=timeout,
                            log=log, make_current=False)
