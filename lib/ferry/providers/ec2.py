"""EC2 through ``boto3``: one GPU instance per name, reached over ssh at its public address.

What ``create`` sets up, each step idempotent so a retried create repeats it safely:

- **AMI**: ``--image``, else ``ferry.providers.ec2.ami``, else AWS's public SSM
  parameter for the current GPU deep-learning base image (Ubuntu 22.04,
  NVIDIA driver) *in the chosen region*; where that parameter does not exist
  (some regions; moto) the newest Amazon-owned image of that name, else an
  error asking for ``--image``.
- **Key pair**: ferry's public key imported once as ``ferry-<sha256 prefix>``
  (the name is derived from the key, so every launch with the same key finds it).
- **Security group** ``ferry-ssh`` (tagged ``ferry-managed=ssh``) in the default
  VPC, allowing the ssh port from anywhere (key authentication only); created
  when absent, its rule re-added if someone removed it.
- **Instance**: the type from ``--gpu``/``--gpu-count`` (gpus.py), root volume
  size/type from ``--disk`` or settings, tags ``Name`` (the name: what
  ``find_by_name`` looks for), ``Project``, ``Owner`` (setting, else $USER) and
  ferry's labels; ``--spot`` as a persistent spot request that *stops* on
  interruption (so stop/start and the disk survive), ``MaxPrice`` from
  ``--max-price`` (per GPU, times the count); ``ClientToken`` from the name and
  a nonce made once per create, so a RunInstances retried after a lost answer
  returns the same reservation (EC2's own idempotency, on top of lifecycle's
  look-up by name).

Terminated instances stay visible in EC2 for a while: ``get`` reads them as
gone and ``list`` leaves them out. Only instances tagged ``ferry-project`` are
listed, so ferry never adopts or deletes a machine it did not make.

The ssh endpoint is ``PublicIpAddress`` (port 22 unless ``ssh_port``), user
``ubuntu`` unless ``ssh_user``; OpenSSH applies the user's ssh_config to it
(ProxyJump, or the test suite's mapping of moto's fake addresses to loopback).

Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY,
profiles, SSO, instance roles); ferry never reads or prints them, and keeps
botocore's debug log (which dumps signed headers) quiet even under ``--debug``.
Retries are ferry's (``total_max_attempts=1``); every call has timeouts.
Instances made with ``--region`` other than the configured one get ids
``<region>/<instance id>``.
"""

from __future__ import annotations

import base64
import binascii
import datetime
import hashlib
import logging
import secrets
import time
from typing import Any, Callable, Mapping, TypeVar

from .. import config, gpus
from ..errors import ConfigError, ProviderError, TransientError
from ..instance import Instance, InstanceSpec, SSHEndpoint, Status
from . import ec2_prices
from .base import OFFERS, OWNED, SPOT, STOP, Offer, translated

T = TypeVar("T")

DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
GROUP_NAME = "ferry-ssh"
MANAGED_TAG = "ferry-managed"
PROJECT_LABEL = "ferry-project"
RESERVED_TAGS = ("Name", "Project", "Owner")

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

TRANSIENT_CODES = {
    "RequestLimitExceeded", "Throttling", "ThrottlingException", "RequestThrottled", "TooManyRequestsException",
    "InternalError", "InternalFailure", "ServiceUnavailable", "Unavailable",
}
AUTH_CODES = {"AuthFailure", "UnauthorizedOperation", "InvalidClientTokenId", "SignatureDoesNotMatch",
              "UnrecognizedClientException", "AccessDeniedException", "ExpiredToken"}
GONE_CODES = {"InvalidInstanceID.NotFound", "InvalidInstanceID.Malformed"}
STALE_SPOT_PRICE = datetime.timedelta(days=1)


def make(cfg) -> "EC2Provider":
    return EC2Provider(cfg)


class AWSError(ProviderError):
    """A refusal from AWS, with its error code for the callers that expect some."""

    def __init__(self, message: str, code: str, hint: str | None = None):
        super().__init__(message, hint)
        self.code = code


def _translate(exc: Exception, what: str) -> Exception:
    """The one place botocore failures become ferry's errors."""
    from botocore.exceptions import (
        ClientError, ConnectionClosedError, ConnectTimeoutError, EndpointConnectionError, HTTPClientError,
        NoCredentialsError, NoRegionError, PartialCredentialsError, ProfileNotFound, ReadTimeoutError,
        SSOTokenLoadError, TokenRetrievalError,
    )

    if isinstance(exc, ClientError):
        error = exc.response.get("Error") or {}
        code = str(error.get("Code") or "")
        message = str(error.get("Message") or code or "no reason given")
        status = int((exc.response.get("ResponseMetadata") or {}).get("HTTPStatusCode") or 0)
        if code in TRANSIENT_CODES or status == 429 or status >= 500:
            return TransientError(f"EC2 {what} failed ({code or status}): {message}")
        if code in AUTH_CODES:
            return AWSError(f"AWS refused to {what}: {message}", code,
                            hint="check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or your AWS profile) "
                                 "and its permissions")
        return AWSError(f"EC2 could not {what}: {code}: {message}", code)
    if isinstance(exc, (NoCredentialsError, PartialCredentialsError)):
        return ConfigError("no AWS credentials for ec2",
                           hint="set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, "
                                "or configure a profile: aws configure")
    if isinstance(exc, NoRegionError):
        return ConfigError("no AWS region for ec2", hint="set ferry.providers.ec2.region, or pass --region")
    if isinstance(exc, (ProfileNotFound, TokenRetrievalError, SSOTokenLoadError)):
        return ConfigError(f"AWS credentials for ec2 are not usable: {exc}",
                           hint="check AWS_PROFILE (aws configure list), or log in again: aws sso login")
    if isinstance(exc, (EndpointConnectionError, ConnectionClosedError, ReadTimeoutError, ConnectTimeoutError,
                        HTTPClientError)):
        return TransientError(f"EC2 {what} failed: {type(exc).__name__}")
    return exc


def key_pair_name(public_key: str) -> str:
    """``ferry-`` + the first 16 hex digits of the SHA-256 of the key blob: the same key, the same name."""
    try:
        blob = base64.b64decode(public_key.split()[1], validate=True)
    except (IndexError, binascii.Error, ValueError):
        raise ConfigError("ferry's public key is not an OpenSSH public key line") from None
    return "ferry-" + hashlib.sha256(blob).hexdigest()[:16]


def _quiet_sdk_logs() -> None:
    """botocore's DEBUG log prints signed request headers; --debug is for ferry's own story."""
    for name in ("botocore", "boto3", "s3transfer"):
        logger = logging.getLogger(name)
        if logger.getEffectiveLevel() < logging.WARNING:
            logger.setLevel(logging.WARNING)


class EC2Provider:
    name = "ec2"
    capabilities = frozenset({STOP, SPOT, OFFERS, OWNED})

    def __init__(self, cfg):
        self.cfg = cfg
        self.settings: dict[str, Any] = dict(cfg.settings or {})
        self.region: str = self.settings.get("region") or "us-east-1"
        self._clients: dict[tuple[str, str], Any] = {}
        self._tokens: dict[int, tuple[InstanceSpec, str]] = {}

    # -- plumbing ----------------------------------------------------------------
    def _client(self, service: str, region: str | None = None):
        region = region or self.region
        if (service, region) not in self._clients:
            try:
                import boto3
                from botocore.config import Config
            except ModuleNotFoundError as exc:
                raise ConfigError("the ec2 provider needs the boto3 package",
                                  hint="install it: pip install 'ferry[aws]'") from exc
            _quiet_sdk_logs()

            def make():
                session = boto3.session.Session(region_name=region)  # raises for a missing profile
                return session.client(
                    service, endpoint_url=self.settings.get("endpoint_url") or None,
                    config=Config(retries={"total_max_attempts": 1, "mode": "standard"},
                                  connect_timeout=10, read_timeout=60),
                )

            self._clients[(service, region)] = self._call("set up the AWS client", make)
        return self._clients[(service, region)]

    def _call(self, what: str, fn: Callable[..., T], *args, **kwargs) -> T:
        return translated(_translate, what, fn, *args, **kwargs)

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
        alias, count = ec2_prices.gpus_of(instance_type)
        host = raw.get("PublicIpAddress") or raw.get("PublicDnsName") or raw.get("PrivateIpAddress")
        launched = raw.get("LaunchTime")
        return Instance(
            id=self._id(raw["InstanceId"], region),
            name=tags.get("Name", ""),
            provider=self.name,
            status=status,
            gpu=alias or instance_type,
            gpu_count=count,
            cost_per_hour=ec2_prices.on_demand(instance_type, region) or 0.0,
            ssh=SSHEndpoint(host, self.ssh_port, self.ssh_user) if status == Status.RUNNING and host else None,
            labels={k: v for k, v in tags.items() if k not in RESERVED_TAGS},
            created_at=launched.timestamp() if hasattr(launched, "timestamp") else time.time(),
            raw={
                "instance_id": raw["InstanceId"], "region": region, "state": state, "instance_type": instance_type,
                "ami": raw.get("ImageId"), "market": "spot" if raw.get("InstanceLifecycle") == "spot" else "on-demand",
                "availability_zone": (raw.get("Placement") or {}).get("AvailabilityZone"),
                "price_basis": f"on-demand list price as of {ec2_prices.AS_OF} (an upper bound for spot)",
            },
        )

    def _describe(self, region: str, instance_id: str) -> dict | None:
        try:
            answer = self._call("look up the instance", self._client("ec2", region).describe_instances,
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
        for raw in self._call("list instances", every):
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
        if not spec.public_key:
            raise ConfigError("no public key given for the new instance")
        if not spec.gpu:
            raise ConfigError("ec2 needs to know which GPU instance to start",
                              hint="add --gpu, e.g. --gpu A10G or an instance type such as --gpu g5.xlarge")
        if spec.ports:
            raise ConfigError("ec2 instances keep only ssh open; --ports is not supported there",
                              hint="reach a port over ssh instead: inv forward PORT")
        count = max(spec.gpu_count, 1)
        instance_type = gpus.resolve(spec.gpu, self.name, count)
        region = spec.region or self.region
        ec2 = self._client("ec2", region)
        image = spec.image or self.settings.get("ami") or self._default_ami(region)
        key_name = self._ensure_key_pair(ec2, spec.public_key)
        group = self._ensure_security_group(ec2)
        tags = [{"Key": k, "Value": str(v)} for k, v in {
            **spec.labels,
            "Name": spec.name,
            "Project": self.cfg.project,
            "Owner": self.settings.get("owner") or config.getenv("USER") or "unknown",
        }.items()]
        params: dict[str, Any] = {
            "ImageId": image, "InstanceType": instance_type, "MinCount": 1, "MaxCount": 1,
            "KeyName": key_name, "SecurityGroupIds": [group], "ClientToken": self._token(spec),
            "BlockDeviceMappings": [{"DeviceName": self._root_device(ec2, image), "Ebs": {
                "VolumeSize": int(spec.disk_gb or self.settings.get("disk") or 100),
                "VolumeType": self.settings.get("volume_type") or "gp3",
                "DeleteOnTermination": True,
            }}],
            "TagSpecifications": [{"ResourceType": "instance", "Tags": tags},
                                  {"ResourceType": "volume", "Tags": tags}],
        }
        if spec.spot:
            options: dict[str, Any] = {"SpotInstanceType": "persistent", "InstanceInterruptionBehavior": "stop"}
            if spec.max_price:
                options["MaxPrice"] = f"{spec.max_price * count:.4f}"
            params["InstanceMarketOptions"] = {"MarketType": "spot", "SpotOptions": options}
        answer = self._call("start the instance", ec2.run_instances, **params)
        [raw] = answer["Instances"][:1] or [None]
        if raw is None:
            raise ProviderError("EC2 accepted RunInstances but returned no instance")
        return self._instance(raw, region)

    def start(self, instance_id: str) -> Instance:
        region, iid = self._split(instance_id)
        ec2 = self._client("ec2", region)
        deadline = time.monotonic() + 120
        while True:
            try:
                self._call("start the instance", ec2.start_instances, InstanceIds=[iid])
                break
            except AWSError as exc:
                # Still stopping: EC2 refuses a start until the stop is complete.
                if exc.code != "IncorrectInstanceState" or time.monotonic() > deadline:
                    raise
                time.sleep(2)
        return self._after(instance_id)

    def stop(self, instance_id: str) -> Instance:
        region, iid = self._split(instance_id)
        self._call("stop the instance", self._client("ec2", region).stop_instances, InstanceIds=[iid])
        return self._after(instance_id)

    def terminate(self, instance_id: str) -> None:
        region, iid = self._split(instance_id)
        raw = self._describe(region, iid)
        if raw is None or raw["State"]["Name"] in ("shutting-down", "terminated"):
            return
        ec2 = self._client("ec2", region)
        request = raw.get("SpotInstanceRequestId")
        if request:  # a persistent spot request would otherwise launch a replacement
            try:
                self._call("cancel the spot request", ec2.cancel_spot_instance_requests,
                           SpotInstanceRequestIds=[request])
            except AWSError as exc:
                if "NotFound" not in exc.code:
                    raise
        try:
            self._call("terminate the instance", ec2.terminate_instances, InstanceIds=[iid])
        except AWSError as exc:
            if exc.code not in GONE_CODES:
                raise

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        """On-demand from the price table (its date in ec2_prices.AS_OF); spot as EC2 quotes it now."""
        count = max(count or 1, 1)
        if gpu:
            types = [gpus.resolve(gpu, self.name, count)]
        else:
            types = [t for t, (_, n, _) in ec2_prices.PRICES.items() if n == count]
        found = []
        for instance_type in types:
            alias, _ = ec2_prices.gpus_of(instance_type)
            price = ec2_prices.on_demand(instance_type, self.region)
            if price is not None:
                found.append(Offer(provider=self.name, gpu=alias or instance_type, gpu_count=count,
                                   cost_per_hour=price, spot=False, region=self.region, id=instance_type))
        found.extend(self._spot_offers(types, count))
        return found

    # -- helpers ------------------------------------------------------------------------
    def _after(self, instance_id: str) -> Instance:
        instance = self.get(instance_id)
        if instance is None:
            raise ProviderError(f"EC2 instance {instance_id} no longer exists", hint="launch a new one: inv launch")
        return instance

    def _token(self, spec: InstanceSpec) -> str:
        """One token per create (the same across its retries), never reused by a later create of the name."""
        held = self._tokens.get(id(spec))
        if held is None or held[0] is not spec:
            held = (spec, f"{spec.name[:40]}-{secrets.token_hex(8)}")
            self._tokens[id(spec)] = held
        return held[1]

    def _default_ami(self, region: str) -> str:
        try:
            answer = self._call("read the deep-learning AMI parameter", self._client("ssm", region).get_parameter,
                                Name=DLAMI_PARAMETER)
            return answer["Parameter"]["Value"]
        except AWSError as exc:
            if exc.code not in ("ParameterNotFound", "AccessDeniedException"):
                raise
        images = self._call(
            "look for the deep-learning AMI", self._client("ec2", region).describe_images, Owners=["amazon"],
            Filters=[{"Name": "name", "Values": [DLAMI_NAME]}, {"Name": "state", "Values": ["available"]},
                     {"Name": "architecture", "Values": ["x86_64"]}],
        ).get("Images") or []
        if images:
            return max(images, key=lambda i: i.get("CreationDate") or "")["ImageId"]
        raise ConfigError(
            f"no GPU deep-learning AMI found in {region} (neither {DLAMI_PARAMETER} nor an image named like it)",
            hint="name one: inv launch --provider ec2 --image ami-... (or set ferry.providers.ec2.ami)",
        )

    def _root_device(self, ec2, image: str) -> str:
        """The AMI's root device, so the volume size applies to the disk it boots from."""
        try:
            images = self._call("look up the AMI", ec2.describe_images, ImageIds=[image]).get("Images") or []
        except AWSError:
            images = []  # unknown here: RunInstances will say so with EC2's own message
        return (images[0].get("RootDeviceName") if images else None) or "/dev/sda1"

    def _ensure_key_pair(self, ec2, public_key: str) -> str:
        name = key_pair_name(public_key)
        try:
            self._call("look up ferry's key pair", ec2.describe_key_pairs, KeyNames=[name])
            return name
        except AWSError as exc:
            if exc.code != "InvalidKeyPair.NotFound":
                raise
        try:
            self._call("import ferry's ssh key", ec2.import_key_pair, KeyName=name,
                       PublicKeyMaterial=public_key.strip().encode(),
                       TagSpecifications=[{"ResourceType": "key-pair",
                                           "Tags": [{"Key": MANAGED_TAG, "Value": "ssh-key"}]}])
        except AWSError as exc:
            if exc.code != "InvalidKeyPair.Duplicate":  # a concurrent launch imported it first
                raise
        return name

    def _ensure_security_group(self, ec2) -> str:
        vpcs = self._call("find the default VPC", ec2.describe_vpcs,
                          Filters=[{"Name": "isDefault", "Values": ["true"]}]).get("Vpcs") or []
        vpc = vpcs[0]["VpcId"] if vpcs else None
        in_vpc = [{"Name": "vpc-id", "Values": [vpc]}] if vpc else []

        def find() -> dict | None:
            by_tag = {"Name": f"tag:{MANAGED_TAG}", "Values": ["ssh"]}
            for by in (by_tag, {"Name": "group-name", "Values": [GROUP_NAME]}):
                groups = self._call("find ferry's security group", ec2.describe_security_groups,
                                    Filters=[by, *in_vpc]).get("SecurityGroups") or []
                if groups:
                    return groups[0]
            return None

        group = find()
        if group is None:
            extra = {"VpcId": vpc} if vpc else {}
            try:
                created = self._call(
                    "create ferry's security group", ec2.create_security_group, GroupName=GROUP_NAME,
                    Description="ferry: ssh from anywhere (public-key login only)", **extra,
                    TagSpecifications=[{"ResourceType": "security-group", "Tags": [
                        {"Key": MANAGED_TAG, "Value": "ssh"}, {"Key": "Name", "Value": GROUP_NAME}]}],
                )
                group = {"GroupId": created["GroupId"], "IpPermissions": []}
            except AWSError as exc:
                if exc.code != "InvalidGroup.Duplicate":
                    raise
                group = find()
                if group is None:
                    raise
        port = self.ssh_port
        opened = any(
            p.get("IpProtocol") in ("tcp", "-1") and (p.get("FromPort") or 0) <= port <= (p.get("ToPort") or 65535)
            and any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges") or [])
            for p in group.get("IpPermissions") or []
        )
        if not opened:
            try:
                self._call("open the ssh port", ec2.authorize_security_group_ingress, GroupId=group["GroupId"],
                           IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                                           "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh (ferry)"}],
                                           "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": "ssh (ferry)"}]}])
            except AWSError as exc:
                if exc.code != "InvalidPermission.Duplicate":
                    raise
        return group["GroupId"]

    def _spot_offers(self, types: list[str], count: int) -> list[Offer]:
        """The cheapest current spot price per type; stale quotes (moto's fixed 2006 one) are left out."""
        if not types:
            return []
        try:
            history = self._call(
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
            if not isinstance(stamp, datetime.datetime) or now - stamp > STALE_SPOT_PRICE:
                continue
            price, instance_type = float(entry.get("SpotPrice") or 0), entry.get("InstanceType")
            if price > 0 and (instance_type not in best or price < best[instance_type][0]):
                best[instance_type] = (price, entry.get("AvailabilityZone") or self.region)
        return [Offer(provider=self.name, gpu=ec2_prices.gpus_of(t)[0] or t, gpu_count=count, cost_per_hour=price,
                      spot=True, region=zone, id=t) for t, (price, zone) in sorted(best.items())]
