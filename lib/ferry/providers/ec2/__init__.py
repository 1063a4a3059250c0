"""EC2 through ``boto3``: one GPU instance per name, reached over ssh at its public address.

A create first makes sure of the AMI, ferry's key pair and its ``ferry-ssh``
security group (``setup.py``), then runs one instance: the type from
``--gpu``/``--gpu-count``, root volume size/type from ``--disk`` or settings,
tags ``Name`` (what find-by-name looks for), ``Project``, ``Owner`` (setting,
else the local user) and ferry's labels; ``--spot`` as a persistent spot
request that *stops* on interruption (so stop/start and the disk survive),
``MaxPrice`` from ``--max-price`` (per GPU, times the count); ``ClientToken``
from the name and a nonce made once per create, so a RunInstances retried
after a lost answer returns the same reservation (EC2's own idempotency, on
top of the registry's look-up by name).

Terminated instances stay visible in EC2 for a while: ``get`` reads them as
gone and ``list`` leaves them out. Only instances tagged ``ferry-project`` are
listed, so ferry never adopts or deletes a machine it did not make.

The ssh endpoint is ``PublicIpAddress`` (port 22 unless ``ssh_port``), user
``ubuntu`` unless ``ssh_user``; OpenSSH applies the user's ssh_config to it
(ProxyJump, or the test suite's mapping of moto's fake addresses to loopback).
Talking to AWS (clients, credentials, errors) is ``aws.py``; on-demand list
prices are ``prices.py``. Instances made with ``--region`` other than the
configured one get ids ``<region>/<instance id>``.
"""

from __future__ import annotations

import os
import time
from typing import Any, Mapping

from ... import backoff, gpus
from ...errors import ProviderError, cmd
from ...records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ..base import GPU, IMAGE, OFFERS, OWNED, REGION, SPOT, SSH, STOP, SelfStop
from . import prices
from .aws import GONE_CODES, AWSError, Clients, call

DEFAULTS = {"ssh_user": "ubuntu", "endpoint_url": None, "region": "us-east-1", "ami": None, "disk": 100,
            "volume_type": "gp3", "owner": None, "ssh_port": None, "use_instance_role": False}
API_KEY = None  # boto3's own credential chain
SELF_STOP = SelfStop("ec2", "`shutdown -h now`, no credentials on the instance",
                     "`shutdown -h now` on the instance; ferry sets its shutdown behaviour to stop or terminate "
                     "(InstanceInitiatedShutdownBehavior), so no credentials are on the instance")
SDK = "boto3"
EXTRA = "aws"
GPUS = {
    "H100": {8: "p5.48xlarge"}, "H100-SXM": {8: "p5.48xlarge"}, "A100": {8: "p4de.24xlarge"},
    "A100-SXM": {8: "p4d.24xlarge"}, "A100-40GB": {8: "p4d.24xlarge"},
    "L40S": {1: "g6e.xlarge", 4: "g6e.12xlarge", 8: "g6e.48xlarge"},
    "L4": {1: "g6.xlarge", 4: "g6.12xlarge", 8: "g6.48xlarge"},
    "A10G": {1: "g5.xlarge", 4: "g5.12xlarge", 8: "g5.48xlarge"},
    "T4": {1: "g4dn.xlarge", 4: "g4dn.12xlarge", 8: "g4dn.metal"},
    "V100": {1: "p3.2xlarge", 4: "p3.8xlarge", 8: "p3.16xlarge"},
}
PROJECT_LABEL = "ferry-project"
RESERVED_TAGS = ("Name", "Project", "Owner")
STOPPING_WAIT = 120.0  # seconds a start waits for a stop still under way

# EC2 instance state -> Status. "stopping" already counts as stopped (it will
# be, and it can no longer be used); "shutting-down" is on its way out.
STATUS = {
    "pending": Status.PENDING,
    "running": Status.RUNNING,
    "stopping": Status.STOPPED,
    "stopped": Status.STOPPED,
    "shutting-down": Status.TERMINATED,
    "terminated": Status.TERMINATED,
}
LIVE_STATES = ["pending", "running", "stopping", "stopped"]
STALE_SPOT_PRICE = 86400.0  # seconds: an older spot quote (moto's fixed 2006 one) is left out


def make(cfg) -> "EC2Provider":
    return EC2Provider(cfg)


class EC2Provider:
    name = "ec2"
    capabilities = frozenset({STOP, SPOT, OFFERS, OWNED, SSH, GPU, REGION, IMAGE})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings: dict[str, Any] = dict(cfg.settings or {})
        self.region: str = self.settings.get("region") or "us-east-1"
        self._client = Clients(self.region, self.settings.get("endpoint_url"),
                               use_instance_role=bool(self.settings.get("use_instance_role")))
        self._tokens: dict[int, tuple[InstanceSpec, str]] = {}

    # -- plumbing ----------------------------------------------------------------
    def _id(self, instance_id: str, region: str) -> str:
        return instance_id if region == self.region else f"{region}/{instance_id}"

    def _split(self, ferry_id: str) -> tuple[str, str]:
        region, _, instance_id = str(ferry_id).rpartition("/")
        return (region or self.region), instance_id

    @property
    def ssh_user(self) -> str:
        return self.cfg.ssh_user or "ubuntu"

    @property
    def ssh_port(self) -> int:
        return int(self.settings.get("ssh_port") or 22)

    # -- EC2 shapes -> Instance ------------------------------------------------------
    def _instance(self, raw: Mapping[str, Any], region: str) -> Instance:
        tags = {t["Key"]: t["Value"] for t in raw.get("Tags") or []}
        state = (raw.get("State") or {}).get("Name", "")
        status = STATUS.get(state, Status.ERROR)
        instance_type = raw.get("InstanceType", "")
        alias, count = prices.gpus_of(instance_type)
        host = raw.get("PublicIpAddress") or raw.get("PublicDnsName") or raw.get("PrivateIpAddress")
        launched = raw.get("LaunchTime")
        return Instance(
            id=self._id(raw["InstanceId"], region),
            name=tags.get("Name", ""),
            provider=self.name,
            status=status,
            gpu=alias or instance_type,
            gpu_count=count,
            cost_per_hour=prices.on_demand(instance_type, region) or 0.0,
            ssh=SSHEndpoint(host, self.ssh_port, self.ssh_user) if status == Status.RUNNING and host else None,
            labels={k: v for k, v in tags.items() if k not in RESERVED_TAGS},
            created_at=launched.timestamp() if hasattr(launched, "timestamp") else time.time(),
            raw={
                "instance_id": raw["InstanceId"], "region": region, "state": state, "instance_type": instance_type,
                "ami": raw.get("ImageId"), "market": "spot" if raw.get("InstanceLifecycle") == "spot" else "on-demand",
                "availability_zone": (raw.get("Placement") or {}).get("AvailabilityZone"),
                "price_basis": f"on-demand list price as of {prices.AS_OF} (an upper bound for spot)",
            },
        )

    def _describe(self, region: str, instance_id: str) -> dict | None:
        try:
            answer = call("look up the instance", self._client("ec2", region).describe_instances,
                                InstanceIds=[instance_id])
        except AWSError as exc:
            if exc.code in GONE_CODES:
                return None
            raise
        for reservation in answer.get("Reservations") or []:
            for raw in reservation.get("Instances") or []:
                if raw.get("InstanceId") == instance_id:
                    return raw
        return None

    # -- the contract ------------------------------------------------------------------
    def list(self, labels: Mapping[str, str | None] | None = None) -> list[Instance]:
        """ferry's instances (tagged ferry-project) in the configured region, or in ``lookup_region``
        when a launch names another one; terminated ones left out."""
        region = self.settings.get("lookup_region") or self.region
        ec2 = self._client("ec2", region)
        filters = [{"Name": "instance-state-name", "Values": LIVE_STATES},
                   {"Name": "tag-key", "Values": [PROJECT_LABEL]}]

        def every() -> list[dict]:
            pages = ec2.get_paginator("describe_instances").paginate(Filters=filters)
            return [raw for page in pages for r in page.get("Reservations") or [] for raw in r.get("Instances") or []]

        found = []
        for raw in call("list instances", every):
            instance = self._instance(raw, region)
            if all(k in instance.labels and (v is None or instance.labels[k] == v) for k, v in (labels or {}).items()):
                found.append(instance)
        return found

    def get(self, instance_id: str) -> Instance | None:
        region, iid = self._split(instance_id)
        raw = self._describe(region, iid)
        if raw is None or (raw.get("State") or {}).get("Name") == "terminated":
            return None
        return self._instance(raw, region)

    def create(self, spec: InstanceSpec) -> Instance:
        """RunInstances once per call; lifecycle looks the name up between attempts, ClientToken does the rest."""
        count = max(spec.gpu_count, 1)
        instance_type = gpus.resolve(str(spec.gpu), self.name, count)
        region = spec.region or self.region
        ec2 = self._client("ec2", region)
        from .setup import default_ami, ensure_key_pair, ensure_security_group, root_device  # only a create needs them

        image = spec.image or self.settings.get("ami") or default_ami(self._client, region)
        key_name = ensure_key_pair(ec2, str(spec.public_key))
        group = ensure_security_group(ec2, self.ssh_port)
        tags = [{"Key": k, "Value": str(v)} for k, v in {
            **spec.labels,
            "Name": spec.name,
            "Project": self.cfg.project,
            "Owner": self.settings.get("owner") or self.cfg.user or "unknown",
        }.items()]
        params: dict[str, Any] = {
            "ImageId": image, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1,
            "KeyName": key_name, "SecurityGroupIds": [group], "ClientToken": self._token(spec),
            "BlockDeviceMappings": [{"DeviceName": root_device(ec2, image), "Ebs": {
                "VolumeSize": int(spec.disk_gb or self.settings.get("disk") or 100),
                "VolumeType": self.settings.get("volume_type") or "gp3",
                "DeleteOnTermination": True,
            }}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if spec.options.get("self_stop_action") in ("stop", "terminate"):  # what `shutdown -h now` on it means
            params["InstanceInitiatedShutdownBehavior"] = spec.options["self_stop_action"]
        if spec.spot:
            options: dict[str, Any] = {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
            if spec.max_price:
                options["MaxPrice"] = f"{spec.max_price * count:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        answer = call("start the instance", ec2.run_instances, **params)
        [raw] = answer["Instances"][:1] or [None]
        if raw is None:
            raise ProviderError("EC2 accepted RunInstances but returned no instance")
        return self._instance(raw, region)

    def start(self, instance_id: str) -> Instance:
        region, iid = self._split(instance_id)
        ec2 = self._client("ec2", region)
        # EC2 refuses a start until a stop is complete: wait for "stopped" first.
        backoff.poll(lambda: True if (self._describe(region, iid) or {}).get("State", {}).get("Name") != "stopping"
                     else None, timeout=STOPPING_WAIT, first=1.0, cap=5.0)
        call("start the instance", ec2.start_instances, InstanceIds=[iid])
        return self._after(instance_id)

    def stop(self, instance_id: str) -> Instance:
        region, iid = self._split(instance_id)
        call("stop the instance", self._client("ec2", region).stop_instances, InstanceIds=[iid])
        return self._after(instance_id)

    def set_self_stop_action(self, instance_id: str, action: str) -> None:
        """``shutdown -h now`` on the instance (its agent's autostop, a job's --then) will ``action`` it."""
        region, iid = self._split(instance_id)
        call("set the shutdown behaviour", self._client("ec2", region).modify_instance_attribute,
             InstanceId=iid, InstanceInitiatedShutdownBehavior={"Value": action})

    def terminate(self, instance_id: str) -> None:
        region, iid = self._split(instance_id)
        raw = self._describe(region, iid)
        if raw is None or raw["State"]["Name"] in ("shutting-down", "terminated"):
            return
        ec2 = self._client("ec2", region)
        request = raw.get("SpotInstanceRequestId")
        if request:  # a persistent spot request would otherwise launch a replacement
            try:
                call("cancel the spot request", ec2.cancel_spot_instance_requests,
                           SpotInstanceRequestIds=[request])
            except AWSError as exc:
                if "NotFound" not in exc.code:
                    raise
        try:
            call("terminate the instance", ec2.terminate_instances, InstanceIds=[iid])
        except AWSError as exc:
            if exc.code not in GONE_CODES:
                raise

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        """On-demand from the price table (its date in prices.AS_OF); spot as EC2 quotes it now."""
        count = max(count or 1, 1)
        if gpu:
            types = [gpus.resolve(gpu, self.name, count)]
        else:
            types = [t for t, (_, n, _) in prices.PRICES.items() if n == count]
        found = []
        for instance_type in types:
            alias, _ = prices.gpus_of(instance_type)
            price = prices.on_demand(instance_type, self.region)
            if price is not None:
                found.append(Offer(provider=self.name, gpu=alias or instance_type, gpu_count=count,
                                   cost_per_hour=price, spot=False, region=self.region, id=instance_type))
        found.extend(self._spot_offers(types, count))
        return found

    # -- helpers ------------------------------------------------------------------------
    def _after(self, instance_id: str) -> Instance:
        instance = self.get(instance_id)
        if instance is None:
            raise ProviderError(f"EC2 instance {instance_id} no longer exists", hint=f"launch a new one: {cmd('launch')}")
        return instance

    def _token(self, spec: InstanceSpec) -> str:
        """One token per create (the same across its retries), never reused by a later create of the name."""
        held = self._tokens.get(id(spec))
        if held is None or held[0] is not spec:
            held = (spec, f"{spec.name[:40]}-{os.urandom(8).hex()}")
            self._tokens[id(spec)] = held
        return held[1]

    def _spot_offers(self, types: list[str], count: int) -> list[Offer]:
        """The cheapest current spot price per type; stale quotes (moto's fixed 2006 one) are left out."""
        if not types:
            return []
        import datetime

        try:
            history = call(
                "read spot prices", self._client("ec2").describe_spot_price_history, InstanceTypes=types,
                ProductDescriptions=["Linux/UNIX", "Linux/UNIX (Amazon VPC)"],
                StartTime=datetime.datetime.now(datetime.timezone.utc),
            ).get("SpotPriceHistory") or []
        except AWSError:
            return []  # no permission to read spot prices: on-demand offers still stand
        now = datetime.datetime.now(datetime.timezone.utc)
        best: dict[str, tuple[float, str]] = {}
        for entry in history:
            stamp = entry.get("Timestamp")
            if not isinstance(stamp, datetime.datetime) or (now - stamp).total_seconds() > STALE_SPOT_PRICE:
                continue
            price, instance_type = float(entry.get("SpotPrice") or 0), entry.get("InstanceType")
            if price > 0 and (instance_type not in best or price < best[instance_type][0]):
                best[instance_type] = (price, entry.get("AvailabilityZone") or self.region)
        return [Offer(provider=self.name, gpu=prices.gpus_of(t)[0] or t, gpu_count=count, cost_per_hour=price,
                      spot=True, region=zone, id=t) for t, (price, zone) in sorted(best.items())]
