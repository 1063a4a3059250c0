"""What only EC2 does: real boto3 against moto's server (behind FakeEC2's proxy), a real loopback sshd per instance.

The loop, idempotency, lost creates, host keys, timeouts, retries and GPU
checks are the contract every provider keeps (tests/test_contract.py); here
are the AMI, instance type, tags and volume, client tokens, key pair and
security group, spot, prices and regions. moto hands out made-up public
addresses; ssh reaches the instances only through the ssh_config that
``configure_ec2`` gives ferry (see tests/contract_harness.py).
"""

from __future__ import annotations

import json
from urllib.parse import parse_qs

import pytest

from .conftest import ferry_labels
from .contract_harness import AWS_ACCESS_KEY as ACCESS_KEY
from .contract_harness import AWS_SECRET_KEY as SECRET_KEY
from .contract_harness import DLAMI, configure_ec2, ec2_instances, ec2_live, failed, seed_dlami

LAUNCH = ("launch", "--provider", "ec2", "--gpu", "A10G")


@pytest.fixture
def ec2(fake_ec2, home, project, monkeypatch):
    configure_ec2(fake_ec2, home, monkeypatch)
    return fake_ec2


instances, live = ec2_instances, ec2_live


def params(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.raw.decode()).items()}


def raw_attribute(ec2, instance_id: str) -> str:
    """The instance's InstanceInitiatedShutdownBehavior, as moto holds it."""
    client = ec2.client(endpoint_url=ec2.moto_url)
    answer = client.describe_instance_attribute(InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior")
    return answer["InstanceInitiatedShutdownBehavior"]["Value"]


def tags(raw: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags") or []}


def test_the_instance_as_ec2_sees_it_made_by_one_create_retried_under_one_token(ec2, ferry):
    ec2.fail_next(500, times=2, match="RunInstances")
    launched = json.loads(ferry.ok(*LAUNCH, "--json").stdout)
    runs = ec2.requests_to("RunInstances")
    assert len(runs) == 3 and len({params(r)["ClientToken"] for r in runs}) == 1, "retries share the token"
    [raw] = live(ec2)
    assert raw["ImageId"] == DLAMI, "the region's public deep-learning AMI parameter"
    assert raw["InstanceType"] == "g5.xlarge" and raw.get("InstanceLifecycle") != "spot"
    assert tags(raw) == {"Name": "proj", "Project": "proj", "Owner": "ada", **ferry_labels()}
    assert raw_attribute(ec2, raw["InstanceId"]) == "stop", "shutdown -h now on it stops it (autostop's default)"
    [volume] = ec2.client().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [raw["InstanceId"]]}])["Volumes"]
    assert (volume["Size"], volume["VolumeType"]) == (100, "gp3")
    assert launched["cost_per_hour"] == 1.006

    ferry.ok("terminate", "--yes")
    assert live(ec2) == [] and instances(ec2, "terminated"), "EC2 keeps listing it as terminated"
    everywhere = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    assert [i for i in everywhere if i["provider"] == "ec2"] == [], "a terminated instance is gone to ferry"


def test_refused_credentials_are_never_printed(ec2, ferry, project):
    refusal = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>AuthFailure</Code>'
               b"<Message>AWS was not able to validate the provided access credentials</Message></Error></Errors>"
               b"<RequestID>fake</RequestID></Response>")
    ec2.fail_next(401, match="DescribeInstances", body=refusal)
    refused = ferry("--debug", *LAUNCH, "--name", "other")
    assert refused.returncode == 1 and "AWS refused" in refused.stderr
    assert SECRET_KEY not in refused.stdout + refused.stderr and ACCESS_KEY not in refused.stdout + refused.stderr
    state = project / ".ferry" / "state.json"
    assert not state.exists() or SECRET_KEY not in state.read_text()
    signed = {r.authorization.split("Credential=")[1].split("/")[0] for r in ec2.requests}
    assert signed == {ACCESS_KEY}, "every request was signed with the key from the environment"


def test_spot_tags_and_key_pair_and_group_made_once_across_launches(ec2, ferry):
    ferry.ok(*LAUNCH, "--name", "first", "--spot", "--max-price", "0.4")
    ferry.ok(*LAUNCH, "--name", "second", "--image", "ami-0123456789abcdef0", "--disk", "200")
    by_name = {tags(i)["Name"]: i for i in live(ec2)}
    assert set(by_name) == {"first", "second"}
    assert by_name["first"]["InstanceLifecycle"] == "spot" and "InstanceLifecycle" not in by_name["second"]
    spot = params(ec2.requests_to("RunInstances")[0])
    assert spot["InstanceMarketOptions.MarketType"] == "spot"
    assert spot["InstanceMarketOptions.SpotOptions.MaxPrice"] == "0.4000"
    assert spot["InstanceMarketOptions.SpotOptions.InstanceInterruptionBehavior"] == "stop"
    assert by_name["second"]["ImageId"] == "ami-0123456789abcdef0", "--image overrides the default AMI"
    on_demand = params(ec2.requests_to("RunInstances")[1])
    assert on_demand["BlockDeviceMapping.1.Ebs.VolumeSize"] == "200"
    assert "InstanceMarketOptions.MarketType" not in on_demand

    client = ec2.client()
    pairs = [k["KeyName"] for k in client.describe_key_pairs()["KeyPairs"]]
    assert len(pairs) == 1 and pairs[0].startswith("ferry-")
    assert len(ec2.requests_to("ImportKeyPair")) == 1
    assert {i["KeyName"] for i in by_name.values()} == {pairs[0]}
    named = [{"Name": "group-name", "Values": ["ferry-ssh"]}]
    groups = client.describe_security_groups(Filters=named)["SecurityGroups"]
    assert len(groups) == 1 and len(ec2.requests_to("CreateSecurityGroup")) == 1
    assert any(p["FromPort"] == 22 and p["ToPort"] == 22 and {"CidrIp": "0.0.0.0/0"} in
               [{"CidrIp": r["CidrIp"]} for r in p["IpRanges"]] for p in groups[0]["IpPermissions"])
    assert {tags(groups[0]).get("ferry-managed")} == {"ssh"}
    assert {g["GroupId"] for i in by_name.values() for g in i["SecurityGroups"]} == {groups[0]["GroupId"]}


def test_without_a_default_ami_the_error_names_image(ec2, ferry):
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import ssm_backends

    from ferry.providers.ec2.setup import DLAMI_PARAMETER

    del ssm_backends[DEFAULT_ACCOUNT_ID][ec2.region]._parameters[DLAMI_PARAMETER]
    err = failed(ferry(*LAUNCH))
    assert "--image ami-" in err and "us-east-1" in err
    assert ec2.requests_to("RunInstances") == [] and live(ec2) == []


def test_offers_come_from_the_dated_price_table(ec2, ferry):
    found = json.loads(ferry.ok("offers", "--gpu", "A10G", "--json").stdout)
    ours = [o for o in found if o["provider"] == "ec2"]
    assert ours == [{"provider": "ec2", "gpu": "A10G", "gpu_count": 1, "cost_per_hour": 1.006, "spot": False,
                     "region": "us-east-1", "id": "g5.xlarge"}]
    spot = json.loads(ferry.ok("offers", "--gpu", "A10G", "--spot", "--json").stdout)
    assert [o for o in spot if o["provider"] == "ec2"] == [], "moto's fixed 2006 spot quote is stale: left out"
    assert ec2.requests_to("DescribeSpotPriceHistory")


def test_another_region_gets_region_qualified_ids(ec2, ferry):
    seed_dlami("us-west-2")
    launched = json.loads(ferry.ok(*LAUNCH, "--region", "us-west-2", "--json").stdout)
    west = ec2.client(region_name="us-west-2")
    [raw] = [i for r in west.describe_instances()["Reservations"] for i in r["Instances"]]
    assert launched["id"] == f"us-west-2/{raw['InstanceId']}" and live(ec2) == [], "made in us-west-2 only"
    assert ferry.ok("run", "echo west").stdout == "west\n"
    ferry.ok("stop")
    assert json.loads(ferry.ok("status", "--json").stdout)["status"] == "STOPPED"
    ferry.ok("terminate", "--yes")
    assert west.describe_instances()["Reservations"][0]["Instances"][0]["State"]["Name"] == "terminated"
