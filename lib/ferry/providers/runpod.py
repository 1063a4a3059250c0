"""RunPod: GPU pods through the ``runpod`` SDK (GraphQL), spot pods through RunPod's interruptible mutation.

The SDK is imported only inside methods (``import runpod`` costs ~1.6 s,
most of it py-cpuinfo probing the CPU for RunPod's serverless worker), is
given the key explicitly (it never reads ``RUNPOD_API_KEY``), and is aimed
elsewhere only when ``ferry.providers.runpod.api_url`` is set, through
``RUNPOD_API_BASE_URL``, which it reads on every call.

How ferry's ideas map onto a pod:

- **Name**: the pod's ``name`` (idempotency looks it up in ``myself.pods``).
- **Labels**: RunPod pods have none, so ferry keeps them in the pod's own
  environment, ``FERRY_LABELS=k=v;k=v`` (percent-encoded), set at create and
  read back from ``myself.pods``. They travel with the pod, so ``ls --all``
  on any machine sees the ``ferry-project`` label. ``FERRY_GPU`` (the GPU
  type id), ``FERRY_CREATED`` (epoch) and ``FERRY_MAX_BID`` (a spot pod's
  ``--max-price``) sit beside it. The pod's processes can read these; they
  hold nothing secret.
- **ssh**: ferry's public key goes in as ``PUBLIC_KEY`` (RunPod images add it
  to authorized_keys); the endpoint is the ``runtime.ports`` entry with
  ``privatePort 22``, ``isIpPublic`` and ``type tcp``. ``--ports`` are opened
  as ``<port>/http``, reachable at ``https://<pod id>-<port>.proxy.runpod.net``.
- **Workdir**: ``/workspace`` (the volume mount), or the setting
  ``ferry.providers.runpod.workdir`` (``~`` or empty: the remote home).
- **Spot**: ``podRentInterruptable`` with ``bidPerGpu`` = ``--max-price``
  (per GPU-hour) or, without it, the current minimum bid; resume with
  ``podBidResume``. On-demand resume keeps the pod's GPU count.

The SDK inlines every value into the GraphQL text without escaping, so each
value ferry sends is checked for characters that could break out of a
string first (``_literal``).
"""

from __future__ import annotations

import json
import logging
import os
import re
import time
from typing import Any, Callable, Mapping
from urllib.parse import quote, unquote

from .. import gpus
from ..errors import ConfigError, ProviderError, TransientError, cmd
from ..records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ..sshkey import KeyLine
from . import sdk
from .base import GPU, IMAGE, OFFERS, OWNED, PORTS, REGION, SPOT, SSH, STOP, VOLUME, KeySource, SelfStop

log = logging.getLogger(__name__)

DEFAULTS = {"ssh_user": "root", "api_url": None, "image": "runpod/pytorch:2.4.0-py3.11-cuda12.4.1-devel-ubuntu22.04",
            "cloud_type": "ALL", "disk": 50, "volume": 0, "workdir": "/workspace"}
API_KEY = KeySource("RUNPOD_API_KEY", (".runpod/api_key", ".runpod/config.toml"))
SELF_STOP = SelfStop("runpod", "RunPod's API with the pod's own Pod-scoped key",
                     "RunPod's API (podStop/podTerminate) with the pod's own Pod-scoped key, RUNPOD_API_KEY and "
                     "RUNPOD_POD_ID in the pod; your account key stays here")
SDK = "runpod"
EXTRA = "runpod"
GPUS = {
    "H100": "NVIDIA H100 80GB HBM3", "H100-SXM": "NVIDIA H100 80GB HBM3", "H100-PCIE": "NVIDIA H100 PCIe",
    "A100": "NVIDIA A100 80GB PCIe", "A100-SXM": "NVIDIA A100-SXM4-80GB", "A40": "NVIDIA A40", "L40S": "NVIDIA L40S",
    "L4": "NVIDIA L4", "RTX4090": "NVIDIA GeForce RTX 4090", "RTX3090": "NVIDIA GeForce RTX 3090",
    "RTX6000": "NVIDIA RTX 6000 Ada Generation", "RTXA6000": "NVIDIA RTX A6000", "V100": "Tesla V100-SXM2-16GB",
}

# RunPod's desiredStatus -> ferry's. RUNNING only means "should run": ssh is there once runtime.ports is.
STATUS: dict[str, Status] = {
    "CREATED": Status.PENDING,
    "RESTARTING": Status.PENDING,
    "RUNNING": Status.RUNNING,
    "EXITED": Status.STOPPED,
    "PAUSED": Status.STOPPED,
    "DEAD": Status.ERROR,
    "TERMINATED": Status.TERMINATED,
}

CLOUD_TYPES = ("ALL", "SECURE", "COMMUNITY")
DEFAULT_WORKDIR = "/workspace"
# Patterns, compiled on first use by re's own cache (module-level compiles would cost every start-up).
TRANSIENT_MESSAGE = (r"(?i)\b(429|50[0-9])\b|too many requests|rate.?limit|internal server error|bad gateway"
                     r"|service unavailable|gateway time-?out|timed? ?out|temporar(il)?y|try again later")
SAFE_LITERAL = r'^[^"\\\n\r{}\[\]]*$'


def make(cfg) -> "RunPodProvider":
    return RunPodProvider(cfg)


def _literal(value: str, what: str) -> str:
    """A value safe to inline into the SDK's GraphQL text (it does no escaping of its own)."""
    if not re.match(SAFE_LITERAL, value):
        raise ConfigError(f"{what} {value!r} contains characters RunPod's API cannot take", hint='remove quotes, backslashes and brackets')
    return value


def _encode_labels(labels: Mapping[str, str]) -> str:
    return ";".join(f"{quote(str(k), safe='')}={quote(str(v), safe='')}" for k, v in sorted(labels.items()))


def _decode_labels(text: str | None) -> dict[str, str]:
    labels = {}
    for part in (text or "").split(";"):
        if "=" in part:
            key, value = part.split("=", 1)
            labels[unquote(key)] = unquote(value)
    return labels


def _env(pod: dict[str, Any]) -> dict[str, str]:
    """A pod's env as a dict: RunPod lists it as ``["K=V", ...]`` (older answers: ``[{key, value}]``)."""
    env = pod.get("env") or []
    if isinstance(env, dict):
        return {str(k): str(v) for k, v in env.items()}
    out = {}
    for item in env:
        if isinstance(item, str) and "=" in item:
            key, value = item.split("=", 1)
            out[key] = value
        elif isinstance(item, dict) and "key" in item:
            out[str(item["key"])] = str(item.get("value", ""))
    return out


def _ssh_port(pod: dict[str, Any]) -> tuple[str, int] | None:
    runtime = pod.get("runtime") or {}
    for entry in runtime.get("ports") or []:
        if entry.get("privatePort") == 22 and entry.get("isIpPublic") and entry.get("type") == "tcp":
            if entry.get("ip") and entry.get("publicPort"):
                return str(entry["ip"]), int(entry["publicPort"])
    return None


class RunPodProvider:
    name = "runpod"
    capabilities = frozenset({STOP, SPOT, OFFERS, OWNED, SSH, GPU, REGION, IMAGE, PORTS, VOLUME})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings = dict(cfg.settings or {})
        self._key: str | None = None

    # -- the SDK, and its errors translated in one place -------------------------------------
    def _sdk(self):
        if self._key is None:
            self._key = self.cfg.api_key()  # first: without a key, no command pays the SDK's 1 s+ import
        runpod = sdk(SDK, self.name)
        runpod.api_key = self._key
        url = self.settings.get("api_url")
        if url:
            os.environ["RUNPOD_API_BASE_URL"] = re.sub(r"/graphql/?$", "", str(url).rstrip("/"))
        return runpod

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        """Run ``fn(runpod)``; every SDK, HTTP and GraphQL failure leaves here as a ferry error."""
        runpod = self._sdk()
        import requests

        try:
            return fn(runpod)
        except runpod.error.AuthenticationError:
            raise ConfigError(
                "RunPod rejected the API key",
                hint="check RUNPOD_API_KEY (or ~/.runpod/config.toml); keys are at https://www.runpod.io/console/user/settings",
            ) from None
        except runpod.error.QueryError as exc:
            message = str(exc.message or exc).strip() or "unknown error"
            if re.search(TRANSIENT_MESSAGE, message):
                raise TransientError(f"RunPod could not {what}: {message}") from None
            raise ProviderError(f"RunPod could not {what}: {message}", hint=_hint_for(message)) from None
        except requests.exceptions.JSONDecodeError:
            # The SDK parses the body before looking at the status: a proxy's HTML 502 lands here.
            raise TransientError(f"RunPod sent a non-JSON answer while trying to {what}") from None
        except (requests.Timeout, requests.ConnectionError) as exc:
            raise TransientError(f"RunPod did not answer while trying to {what}: {type(exc).__name__}") from None
        except requests.RequestException as exc:
            raise ProviderError(f"RunPod request failed while trying to {what}: {type(exc).__name__}") from None
        except ValueError as exc:  # the SDK's own checks, e.g. "No GPU found with the specified ID"
            raise ProviderError(f"RunPod could not {what}: {exc}") from None
        except (KeyError, TypeError) as exc:
            # An answer with neither data nor errors (a gateway page that happened to be JSON) fails
            # in the SDK's ``raw["data"][...]``; any other TypeError is a bug and keeps its traceback.
            if isinstance(exc, TypeError) and "subscriptable" not in str(exc):
                raise
            raise TransientError(f"RunPod sent an unexpected answer while trying to {what} ({type(exc).__name__})") from None

    def _query(self, what: str, query: str) -> dict[str, Any]:
        """A raw GraphQL query through the SDK's own transport (for what the SDK has no call for)."""

        def run(runpod):
            from runpod.api.graphql import run_graphql_query

            return run_graphql_query(query)["data"]

        return self._call(what, run)

    # -- translation -------------------------------------------------------------------------
    @property
    def ssh_user(self) -> str:
        return self.cfg.ssh_user or "root"

    @property
    def workdir_root(self) -> str | None:
        workdir = self.settings.get("workdir", DEFAULT_WORKDIR)
        return None if workdir in (None, "", "~") else str(workdir)

    @property
    def cloud_type(self) -> str:
        cloud = str(self.settings.get("cloud_type") or "ALL").upper()
        if cloud not in CLOUD_TYPES:
            raise ConfigError(f"unknown RunPod cloud_type {cloud!r}", hint=f"use one of {', '.join(CLOUD_TYPES)}")
        return cloud

    def _instance(self, pod: dict[str, Any]) -> Instance:
        env = _env(pod)
        status = STATUS.get(str(pod.get("desiredStatus") or "").upper(), Status.PENDING)
        endpoint = _ssh_port(pod) if status == Status.RUNNING else None
        gpu_id = env.get("FERRY_GPU") or (pod.get("machine") or {}).get("gpuDisplayName")
        try:
            created = float(env.get("FERRY_CREATED") or 0)
        except ValueError:
            created = 0.0
        return Instance(
            id=str(pod["id"]),
            name=str(pod.get("name") or pod["id"]),
            provider=self.name,
            status=status,
            gpu=gpus.alias_for(gpu_id),
            gpu_count=int(pod.get("gpuCount") or 0),
            cost_per_hour=float(pod.get("costPerHr") or 0.0),
            ssh=SSHEndpoint(endpoint[0], endpoint[1], self.ssh_user) if endpoint else None,
            workdir_root=self.workdir_root,
            labels=_decode_labels(env.get("FERRY_LABELS")),
            created_at=created or time.time() - float(pod.get("uptimeSeconds") or 0),
            raw={k: pod.get(k) for k in ("desiredStatus", "podType", "costPerHr", "gpuCount", "imageName",
                                          "machineId", "containerDiskInGb", "volumeInGb", "ports")},
        )

    # -- create ------------------------------------------------------------------------------
    def _create_fields(self, spec: InstanceSpec) -> dict[str, Any]:
        """Everything the create needs, validated before any request (the SDK escapes nothing)."""
        count = spec.gpu_count or 1
        gpu_id = _literal(gpus.resolve(str(spec.gpu), self.name, count), "GPU type")
        env = {
            "PUBLIC_KEY": _literal(KeyLine.parse(spec.public_key).bare, "ssh public key"),  # the comment is not needed
            "FERRY_LABELS": _encode_labels(spec.labels),
            "FERRY_GPU": gpu_id,
            "FERRY_CREATED": str(int(time.time())),
        }
        ports = ["22/tcp"] + [f"{p}/http" for p in spec.ports if p != 22]
        volume = spec.volume_gb or self.settings.get("volume") or 0
        return {
            "name": spec.name,
            "image": _literal(str(spec.image or self.settings.get("image") or ""), "image"),
            "gpu_id": gpu_id,
            "count": count,
            "cloud": self.cloud_type,
            "disk": int(spec.disk_gb or self.settings.get("disk") or 50),
            "volume": int(volume),
            "ports": ",".join(ports),
            "region": _literal(spec.region, "region") if spec.region else None,
            "env": env,
        }

    def create(self, spec: InstanceSpec) -> Instance:
        fields = self._create_fields(spec)
        if not fields["image"]:
            raise ConfigError("no image for the RunPod pod", hint="pass --image or set ferry.providers.runpod.image")
        if spec.spot:
            pod = self._create_spot(spec, fields)
        else:
            pod = self._call("create the pod", lambda runpod: runpod.create_pod(
                fields["name"], fields["image"], fields["gpu_id"], cloud_type=fields["cloud"],
                support_public_ip=True, start_ssh=True, data_center_id=fields["region"], gpu_count=fields["count"],
                volume_in_gb=fields["volume"], container_disk_in_gb=fields["disk"], ports=fields["ports"],
                volume_mount_path=DEFAULT_WORKDIR, env=fields["env"],
            ))
        if not isinstance(pod, dict) or not pod.get("id"):
            raise TransientError("RunPod's create answer had no pod id")
        return Instance(
            id=str(pod["id"]), name=spec.name, provider=self.name, status=Status.PENDING,
            gpu=gpus.alias_for(fields["gpu_id"]), gpu_count=fields["count"],
            cost_per_hour=float(pod.get("costPerHr") or 0.0), workdir_root=self.workdir_root,
            labels=dict(spec.labels), raw={"podType": "INTERRUPTABLE" if spec.spot else "RESERVED"},
        )

    def _minimum_bid(self, gpu_id: str, count: int) -> float:
        gpu = self._call("read GPU prices", lambda runpod: runpod.get_gpu(gpu_id, count))
        bid = (gpu.get("lowestPrice") or {}).get("minimumBidPrice")
        if not bid:
            raise ProviderError(f"RunPod has no spot capacity for {gpu_id} right now", hint="try without --spot, or later")
        return float(bid)

    def _create_spot(self, spec: InstanceSpec, fields: dict[str, Any]) -> dict[str, Any]:
        bid = float(spec.max_price) if spec.max_price else self._minimum_bid(fields["gpu_id"], fields["count"])
        if spec.max_price:
            fields["env"]["FERRY_MAX_BID"] = f"{bid:.4f}"
        env = ", ".join(f"{{ key: {json.dumps(k)}, value: {json.dumps(v)} }}" for k, v in fields["env"].items())
        inputs = [
            f"bidPerGpu: {bid:.4f}", f"cloudType: {fields['cloud']}", f"gpuCount: {fields['count']}",
            f"gpuTypeId: {json.dumps(fields['gpu_id'])}", f"name: {json.dumps(fields['name'])}",
            f"imageName: {json.dumps(fields['image'])}", "startSsh: true", "supportPublicIp: true",
            f"ports: {json.dumps(fields['ports'])}", f"containerDiskInGb: {fields['disk']}",
            f"volumeInGb: {fields['volume']}", f"volumeMountPath: {json.dumps(DEFAULT_WORKDIR)}",
        ]
        if fields["region"]:
            inputs.append(f"dataCenterId: {json.dumps(fields['region'])}")
        inputs.append(f"env: [{env}]")
        query = ("mutation { podRentInterruptable(input: { " + ", ".join(inputs) + " }) "
                 "{ id imageName desiredStatus costPerHr machineId } }")
        return self._query("rent the spot pod", query)["podRentInterruptable"]

    # -- list / get ------------------------------------------------------------------------------
    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        pods = self._call("list pods", lambda runpod: runpod.get_pods()) or []
        found = []
        for pod in pods:
            instance = self._instance(pod)
            if all(instance.labels.get(k) == v for k, v in (labels or {}).items()):
                found.append(instance)
        return found

    def _pod(self, pod_id: str) -> dict[str, Any] | None:
        pod_id = _literal(str(pod_id), "pod id")
        return self._call("read the pod", lambda runpod: runpod.get_pod(pod_id))

    def get(self, instance_id: str) -> Instance | None:
        pod = self._pod(instance_id)
        if not pod:
            return None
        instance = self._instance(pod)
        return None if instance.status == Status.TERMINATED else instance

    # -- power -------------------------------------------------------------------------------------
    def stop(self, instance_id: str) -> Instance:
        pod_id = _literal(str(instance_id), "pod id")
        self._call("stop the pod", lambda runpod: runpod.stop_pod(pod_id))
        return self._must_get(pod_id)

    def start(self, instance_id: str) -> Instance:
        """Resume with the pod's own GPU count (RunPod would otherwise resume with what you name)."""
        pod = self._pod(instance_id)
        if not pod:
            raise ProviderError(f"RunPod has no pod {instance_id}", hint=f"list them: {cmd('ls --all')}")
        if STATUS.get(str(pod.get("desiredStatus")).upper()) == Status.RUNNING:
            return self._instance(pod)  # already resumed (a retried start)
        pod_id, count = str(pod["id"]), int(pod.get("gpuCount") or 1)
        if pod.get("podType") == "INTERRUPTABLE":
            bid = self._resume_bid(pod, count)
            self._query("resume the spot pod", f'mutation {{ podBidResume(input: {{ podId: {json.dumps(pod_id)}, '
                                                f'bidPerGpu: {bid:.4f}, gpuCount: {count} }}) {{ id desiredStatus }} }}')
        else:
            self._call("resume the pod", lambda runpod: runpod.resume_pod(pod_id, count))
        return self._must_get(pod_id)

    def _resume_bid(self, pod: dict[str, Any], count: int) -> float:
        """The current minimum bid, but never above the ``--max-price`` the pod was rented with."""
        env = _env(pod)
        gpu_id = env.get("FERRY_GPU")
        previous = float(pod.get("costPerHr") or 0) / max(count, 1)
        if not gpu_id:
            return previous
        minimum = self._minimum_bid(_literal(gpu_id, "GPU type"), count)
        cap = env.get("FERRY_MAX_BID")
        if cap and minimum > float(cap):
            raise ProviderError(
                f"the spot price of {gpus.alias_for(gpu_id)} is now {minimum:.3f}/GPU-hour, above this pod's --max-price {float(cap):.3f}",
                hint="wait and start again, or terminate it and launch with a higher --max-price",
            )
        return max(minimum, previous if not cap else min(previous, float(cap)))

    def _must_get(self, pod_id: str) -> Instance:
        instance = self.get(pod_id)
        if instance is None:
            raise ProviderError(f"RunPod pod {pod_id} disappeared")
        return instance

    def terminate(self, instance_id: str) -> None:
        pod_id = _literal(str(instance_id), "pod id")
        try:
            self._call("terminate the pod", lambda runpod: runpod.terminate_pod(pod_id))
        except ProviderError as exc:
            if isinstance(exc, TransientError) or self._pod(pod_id):
                raise
            # It is gone already: terminate is idempotent.

    # -- offers ----------------------------------------------------------------------------------------
    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        """On-demand and spot prices per cloud type from ``gpuTypes``; $/hour per pod (per-GPU price x count)."""
        count = max(int(count or 1), 1)
        wanted = _literal(gpus.resolve(gpu, self.name, count), "GPU type") if gpu else None
        selector = f"(input: {{ id: {json.dumps(wanted)} }})" if wanted else ""
        query = (f"query GpuTypes {{ gpuTypes{selector} {{ id displayName maxGpuCount securePrice communityPrice "
                 f"secureSpotPrice communitySpotPrice lowestPrice(input: {{ gpuCount: {count} }}) "
                 f"{{ minimumBidPrice uninterruptablePrice }} }} }}")
        types = self._query("read GPU prices", query).get("gpuTypes") or []
        clouds = ("SECURE", "COMMUNITY") if self.cloud_type == "ALL" else (self.cloud_type,)
        found = []
        for entry in types:
            if entry.get("maxGpuCount") and int(entry["maxGpuCount"]) < count:
                continue
            alias = gpus.alias_for(entry["id"]) or entry["id"]
            lowest_bid = (entry.get("lowestPrice") or {}).get("minimumBidPrice")
            for cloud in clouds:
                prefix = cloud.lower()
                on_demand = entry.get(f"{prefix}Price")
                spot = entry.get(f"{prefix}SpotPrice") or lowest_bid
                if on_demand:
                    found.append(Offer(self.name, alias, count, round(float(on_demand) * count, 4), False, cloud, entry["id"]))
                if spot:
                    found.append(Offer(self.name, alias, count, round(float(spot) * count, 4), True, cloud, entry["id"]))
        return found


def _hint_for(message: str) -> str | None:
    lowered = message.lower()
    if "no longer any instances available" in lowered or "not enough" in lowered:
        return "RunPod has no capacity for that GPU now: try another --gpu, --gpu-count or cloud_type, or later"
    if "bid" in lowered:
        return "raise --max-price (per GPU-hour), or leave it out to bid the current minimum"
    return None
