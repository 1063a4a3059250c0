"""What an EC2 create sets up first, each step idempotent so a retried create repeats it safely.

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
"""

from __future__ import annotations

import hashlib

from ...errors import ConfigError, cmd
from ...sshkey import KeyLine
from .aws import AWSError, Clients, call

DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"
DLAMI_NAME = "Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04) *"
GROUP_NAME = "ferry-ssh"
MANAGED_TAG = "ferry-managed"


def key_pair_name(public_key: str) -> str:
    """``ferry-`` + the first 16 hex digits of the SHA-256 of the key blob: the same key, the same name."""
    return "ferry-" + hashlib.sha256(KeyLine.parse(public_key).blob()).hexdigest()[:16]


def default_ami(clients: Clients, region: str) -> str:
    try:
        answer = call("read the deep-learning AMI parameter", clients("ssm", region).get_parameter,
                            Name=DLAMI_PARAMETER)
        return answer["Parameter"]["Value"]
    except AWSError as exc:
        if exc.code not in ("ParameterNotFound", "AccessDeniedException"):
            raise
    images = call(
        "look for the deep-learning AMI", clients("ec2", region).describe_images, Owners=["amazon"],
        Filters=[{"Name": "name", "Values": [DLAMI_NAME]}, {"Name": "state", "Values": ["available"]},
                 {"Name": "architecture", "Values": ["x86_64"]}],
    ).get("Images") or []
    if images:
        return max(images, key=lambda i: i.get("CreationDate") or "")["ImageId"]
    raise ConfigError(
        f"no GPU deep-learning AMI found in {region} (neither {DLAMI_PARAMETER} nor an image named like it)",
        hint=f"name one: {cmd('launch --provider ec2 --image ami-...')} (or set ferry.providers.ec2.ami)",
    )


def root_device(ec2, image: str) -> str:
    """The AMI's root device, so the volume size applies to the disk it boots from."""
    try:
        images = call("look up the AMI", ec2.describe_images, ImageIds=[image]).get("Images") or []
    except AWSError:
        images = []  # unknown here: RunInstances will say so with EC2's own message
    return (images[0].get("RootDeviceName") if images else None) or "/dev/sda1"


def ensure_key_pair(ec2, public_key: str) -> str:
    name = key_pair_name(public_key)
    try:
        call("look up ferry's key pair", ec2.describe_key_pairs, KeyNames=[name])
        return name
    except AWSError as exc:
        if exc.code != "InvalidKeyPair.NotFound":
            raise
    try:
        call("import ferry's ssh key", ec2.import_key_pair, KeyName=name,
                   PublicKeyMaterial=public_key.strip().encode(),
                   TagSpecifications=[{"ResourceType": "key-pair",
                                       "Tags": [{"Key": MANAGED_TAG, "Value": "ssh-key"}]}])
    except AWSError as exc:
        if exc.code != "InvalidKeyPair.Duplicate":  # a concurrent launch imported it first
            raise
    return name


def ensure_security_group(ec2, port: int) -> str:
    vpcs = call("find the default VPC", ec2.describe_vpcs,
                      Filters=[{"Name": "isDefault", "Values": ["true"]}]).get("Vpcs") or []
    vpc = vpcs[0]["VpcId"] if vpcs else None
    in_vpc = [{"Name": "vpc-id", "Values": [vpc]}] if vpc else []

    def find() -> dict | None:
        by_tag = {"Name": f"tag:{MANAGED_TAG}", "Values": ["ssh"]}
        for by in (by_tag, {"Name": "group-name", "Values": [GROUP_NAME]}):
            groups = call("find ferry's security group", ec2.describe_security_groups,
                                Filters=[by, *in_vpc]).get("SecurityGroups") or []
            if groups:
                return groups[0]
        return None

    group = find()
    if group is None:
        extra = {"VpcId": vpc} if vpc else {}
        try:
            created = call(
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
    opened = any(
        p.get("IpProtocol") in ("tcp", "-1") and (p.get("FromPort") or 0) <= port <= (p.get("ToPort") or 65535)
        and any(r.get("CidrIp") == "0.0.0.0/0" for r in p.get("IpRanges") or [])
        for p in group.get("IpPermissions") or []
    )
    if not opened:
        try:
            call("open the ssh port", ec2.authorize_security_group_ingress, GroupId=group["GroupId"],
                       IpPermissions=[{"IpProtocol": "tcp", "FromPort": port, "ToPort": port,
                                       "IpRanges": [{"CidrIp": "0.0.0.0/0", "Description": "ssh (ferry)"}],
                                       "Ipv6Ranges": [{"CidrIpv6": "::/0", "Description": "ssh (ferry)"}]}])
        except AWSError as exc:
            if exc.code != "InvalidPermission.Duplicate":
                raise
    return group["GroupId"]
