"""Thunder Compute: on-demand GPU instances through its ``/v1`` REST API (``api.py``).

What Thunder does not have, and what ferry does instead:

- **No stop/start.** ``/v1`` has none (added and reverted in Feb 2026), so
  STOP is not among the capabilities: ``ferry stop`` is lifecycle's clear
  error suggesting ``terminate``.
- **No instance names, labels or tags.** ferry keeps its own in a name book
  (``names.py``), which also finds an instance whose create answer was lost.
- **No spot, regions, container images, ports at create or volumes.** The
  capabilities say so, and lifecycle refuses those flags before anything is
  created. Thunder's cheaper tier is ``mode: prototyping``.

It can be resized in place (MODIFY: vCPUs, GPU type and count, disk, which
only grows, and HTTP ports) and described as the spec of a new one (CLONE:
GPU, count, vCPUs, disk, mode and template).
"""

from __future__ import annotations

import logging
import time
from typing import Any, Mapping

from ... import gpus
from ...errors import ConfigError, FerryError, ProviderError, TransientError, UsageError, cmd
from ...records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ...sshkey import KeyLine
from ..base import CLONE, GPU, MODIFY, OFFERS, OWNED, SSH, KeySource, SelfStop, unsupported
from .api import NotFound, ThunderAPI
from .names import NameBook, as_int, epoch, owns

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

DEFAULTS = {"ssh_user": "ubuntu", "api_url": None, "template": "base", "mode": "prototyping", "cpu_cores": 4,
            "disk": 100}
API_KEY = KeySource("TNR_API_TOKEN", (".thunder/token",))
SELF_STOP = SelfStop("thunder", "Thunder's API with your token, copied there by --autostop-key",
                     "Thunder's API has no per-instance credential: an instance can delete itself only with your "
                     "account token on it, which ferry copies (mode 600) only with launch --autostop-key",
                     needs_key=True)
SDK = "requests"
EXTRA = "thunder"
GPUS = {"H100": "h100", "A100": "a100xl", "A100-40GB": "a100", "RTXA6000": "a6000", "T4": "t4"}

INCLUDED_VCPUS = 4  # "the first 4 vCPUs and 100 GB of storage are included" (thundercompute.com/pricing)
INCLUDED_DISK_GB = 100
MODES = ("prototyping", "production")
def make(cfg) -> "ThunderProvider":
    return ThunderProvider(cfg)


def _status(inst: dict[str, Any]) -> Status:
    return STATUS.get(str(inst.get("status") or "").upper(), Status.PENDING)


class ThunderProvider:
    name = "thunder"
    capabilities = frozenset({OFFERS, MODIFY, CLONE, OWNED, SSH, GPU})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = dict(cfg.settings or {})
        self.api = ThunderAPI(self.settings.get("api_url"), cfg.api_key)
        self.book = NameBook(cfg.home / "thunder" / "names.json", _status)
        self._prices: dict[str, float] | None = None

    # -- settings ------------------------------------------------------------------
    @property
    def mode(self) -> str:
        return self._mode(self.settings.get("mode"))

    @staticmethod
    def _mode(value: Any) -> str:
        mode = str(value or "prototyping")
        if mode not in MODES:
            raise ConfigError(f"unknown Thunder mode {mode!r}", hint="set ferry.providers.thunder.mode to prototyping or production")
        return mode

    @property
    def ssh_user(self) -> str:
        return self.cfg.ssh_user or "ubuntu"

    # -- translation -----------------------------------------------------------------
    def _instance(self, iid: str, inst: dict[str, Any], entry: dict[str, Any] | None) -> Instance:
        status = _status(inst)
        ip = inst.get("ip")
        ssh = None
        if status == Status.RUNNING and ip:
            ssh = SSHEndpoint(host=str(ip), port=as_int(inst.get("port")) or 22, user=self.ssh_user)
        gpu_type = str(inst.get("gpuType") or "") or None
        count = as_int(inst.get("numGpus"), 0)
        return Instance(
            id=iid,
            name=entry["name"] if entry else str(inst.get("name") or f"thunder-{iid}"),
            provider=self.name,
            status=status,
            gpu=gpus.alias_for(gpu_type),
            gpu_count=count,
            cost_per_hour=self._cost(gpu_type, count, str(inst.get("mode") or self.mode),
                                     as_int(inst.get("cpuCores"), INCLUDED_VCPUS), as_int(inst.get("storage"), INCLUDED_DISK_GB)),
            ssh=ssh,
            labels=dict(entry.get("labels") or {}) if entry else {},
            created_at=epoch(inst.get("createdAt")) or (entry or {}).get("recorded_at") or 0.0,
            raw={
                "uuid": inst.get("uuid"),
                "thunder_name": inst.get("name"),
                "status": inst.get("status"),
                "gpu_type": gpu_type,
                "num_gpus": count,
                "cpu_cores": as_int(inst.get("cpuCores"), 0),
                "disk_gb": as_int(inst.get("storage"), 0),
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
        """The create request for ``spec`` (lifecycle has already refused what Thunder cannot do)."""
        options = {**self.settings, **spec.options}
        count = spec.gpu_count or 1
        disk = int(spec.disk_gb or options.get("disk") or INCLUDED_DISK_GB)
        if disk < INCLUDED_DISK_GB:
            raise UsageError(f"Thunder disks start at {INCLUDED_DISK_GB} GB, not {disk}",
                             hint=f"use --disk {INCLUDED_DISK_GB} or more")
        return {
            "cpu_cores": int(options.get("cpu_cores") or INCLUDED_VCPUS),
            "gpu_type": gpus.resolve(str(spec.gpu), self.name, count),
            "template": str(options.get("template") or "base"),
            "num_gpus": count,
            "disk_size_gb": disk,
            "mode": self._mode(options.get("mode")),
            "public_key": str(spec.public_key).strip(),
        }

    def create(self, spec: InstanceSpec) -> Instance:
        body = self.create_body(spec)
        self.book.note_pending(spec.name, spec.labels, body["gpu_type"], body["num_gpus"],
                               KeyLine.parse(spec.public_key).body)
        try:
            created = self.api.create(body)
        except ProviderError as exc:
            if not isinstance(exc, TransientError):
                self.book.drop_pending(spec.name)  # a definite refusal: nothing was made
            raise
        # Anything else (a transient failure, Ctrl-C mid-request) may have made the instance:
        # the pending claim stays, so list() can still find it by name.
        iid = created["identifier"]
        self.book.record(iid, created.get("uuid"), spec.name, spec.labels)
        return Instance(
            id=iid, name=spec.name, provider=self.name, status=Status.PENDING, gpu=gpus.alias_for(body["gpu_type"]),
            gpu_count=body["num_gpus"], labels=dict(spec.labels),
            raw={"uuid": created.get("uuid"), "gpu_type": body["gpu_type"], "num_gpus": body["num_gpus"],
                 "cpu_cores": body["cpu_cores"], "disk_gb": body["disk_size_gb"], "mode": body["mode"]},
        )

    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        listed = self.api.list()
        book = self.book.reconcile(listed)
        found = []
        for iid, inst in listed.items():
            entry = book["instances"].get(iid)
            if entry is not None and not owns(entry, inst, time.time()):
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
        self.book.forget(str(instance_id))

    # -- modify and clone ------------------------------------------------------------------------
    def modify(self, instance_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        """Resize in place: ``changes`` in ferry's words (cpu_cores, gpu, gpu_count, disk_gb, ports).

        Checked before Thunder is asked: a smaller disk is refused (Thunder
        cannot shrink one, and asking would risk the data on it). Returns the
        request sent, in Thunder's words; empty when nothing needed changing.
        """
        live = self.get(instance_id)
        if live is None:
            raise ProviderError(f"Thunder Compute has no instance {instance_id} any more",
                                hint="launch it again: " + cmd("launch --provider thunder"))
        raw, body = live.raw, {}
        disk = changes.get("disk_gb")
        if disk is not None:
            current = int(raw.get("disk_gb") or 0)
            if disk < current:
                raise FerryError(
                    f"Thunder disks only grow: {live.name} has {current} GB, --disk {disk} would shrink it",
                    hint=f"use --disk {current} or more; for a smaller disk, clone to a new instance and copy what you need",
                )
            if disk != current:
                body["disk_size_gb"] = int(disk)
        if changes.get("cpu_cores") is not None and changes["cpu_cores"] != raw.get("cpu_cores"):
            body["cpu_cores"] = int(changes["cpu_cores"])
        count = int(changes.get("gpu_count") or raw.get("num_gpus") or 1)
        if changes.get("gpu") is not None:
            gpu_type = gpus.resolve(changes["gpu"], self.name, count)
            if gpu_type != raw.get("gpu_type"):
                body["gpu_type"] = gpu_type
        if changes.get("gpu_count") is not None and changes["gpu_count"] != raw.get("num_gpus"):
            body["num_gpus"] = count
        new_ports = sorted(set(changes.get("ports") or ()) - set(raw.get("http_ports") or ()))
        if new_ports:
            body["add_ports"] = new_ports
        if body:
            self.api.modify(str(instance_id), body)
        return body

    def spec_of(self, instance: Instance) -> InstanceSpec:
        """What a new instance like this one is made from: GPU, count, disk, and vCPUs, mode, template."""
        raw = instance.raw
        options = {"cpu_cores": int(raw.get("cpu_cores") or INCLUDED_VCPUS)}
        if raw.get("mode") in MODES:
            options["mode"] = raw["mode"]
        if raw.get("template"):
            options["template"] = raw["template"]
        return InstanceSpec(name=instance.name, provider=self.name, gpu=raw.get("gpu_type") or instance.gpu,
                            gpu_count=int(raw.get("num_gpus") or instance.gpu_count or 1),
                            disk_gb=int(raw.get("disk_gb") or INCLUDED_DISK_GB), options=options,
                            labels=dict(instance.labels))

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
            gpu_type, n = parts[0], as_int(parts[1][1:], 0)
            if n != count or (wanted and gpu_type != wanted):
                continue
            found.append(Offer(provider=self.name, gpu=gpus.alias_for(gpu_type) or gpu_type, gpu_count=n,
                               cost_per_hour=self._cost(gpu_type, n, self.mode, cpu, disk), spot=False, id=key))
        return found
