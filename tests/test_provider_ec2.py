"""EC2 end to end: real boto3 against moto's server (behind FakeEC2's proxy), a real loopback sshd per instance.

moto hands out made-up public addresses (54.214.x.x). The fake writes an
OpenSSH config mapping each running instance's address to its loopback sshd;
the test's ssh config includes it and sends every other 54.* address to a
closed loopback port (nothing leaves the machine), and ferry is given that
file through ``ferry.ssh_config`` (OpenSSH reads ~/.ssh/config of the passwd
home, not $HOME). So every ssh, rsync and tmux call reaches the instance only
because ssh_config is honoured.
"""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import time
from urllib.parse import parse_qs

import pytest

from ferry import config as ferry_config
from ferry.sshd import free_port

ACCESS_KEY = "AKIAFERRYTESTKEY0001"
SECRET_KEY = "ferry/SECRET/9f3b1c7e5d2a"
DLAMI = "ami-0feedfacecafe0001"
LAUNCH = ("launch", "--provider", "ec2", "--gpu", "A10G")


def seed_dlami(region: str, value: str = DLAMI) -> None:
    """Publish the deep-learning AMI parameter the way moto seeds its own public /aws/service ones.

    moto's SSM knows only the Amazon Linux, ECS and global-infrastructure public
    parameters, and its put_parameter (like AWS) refuses names under /aws.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    from ferry.providers.ec2.setup import DLAMI_PARAMETER

    backend = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    backend._parameters[DLAMI_PARAMETER].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=DLAMI_PARAMETER, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None, last_modified_date=time.time(), version=1,
        data_type="aws:ec2:image",
    ))


@pytest.fixture
def ec2(fake_ec2, sshd_pool, project, home, monkeypatch):
    if "ssh_config" not in ferry_config.GENERAL_DEFAULTS:
        pytest.fail("the EC2 tests need ferry.ssh_config (ssh -F), port 22 left to ssh_config, and HostKeyAlias "
                    "in remote.py: see the issue 5 vast/ec2/ssh report")
    ssh_config = home / "ssh_config"
    ssh_config.write_text(
        f"Include {fake_ec2.ssh_config_path}\n\n"
        "# moto addresses with no sshd behind them lead to a closed loopback port, never off the machine\n"
        f"Host 54.*\n    HostName 127.0.0.1\n    Port {free_port()}\n"
    )
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("USER", "ada")
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_EC2_ENDPOINT_URL", fake_ec2.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_EC2_SSH_USER", sshd_pool.user)  # sshd logs in only its own user
    monkeypatch.setenv("INVOKE_FERRY_SSH_CONFIG", str(ssh_config))
    monkeypatch.setenv("INVOKE_FERRY_LAUNCH_TIMEOUT", "30")  # a broken path fails in seconds, not minutes
    seed_dlami(fake_ec2.region)
    try:
        yield fake_ec2
    finally:
        fake_ec2.stop()  # powers off every instance (SshdPool ends what they left running)


def failed(proc: subprocess.CompletedProcess) -> str:
    """Exit 1, no traceback, the output ends in ``error:`` (+ ``hint:``); progress notes may precede."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
    assert len(errors) == 1 and all(l.startswith("hint: ") for l in lines[errors[0] + 1:]), proc.stderr
    return "\n".join(lines[errors[0]:])


def instances(fake, *states: str) -> list[dict]:
    client = fake.client()
    found = [i for r in client.describe_instances()["Reservations"] for i in r["Instances"]]
    return [i for i in found if not states or i["State"]["Name"] in states]


def live(fake) -> list[dict]:
    return instances(fake, "pending", "running", "stopping", "stopped")


def params(request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(request.raw.decode()).items()}


def tags(raw: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in raw.get("Tags") or []}


def test_whole_loop_launch_sync_run_download_stop_start_terminate(ec2, ferry, project):
    (project / "train.py").write_text(
        "import os\nos.makedirs('results', exist_ok=True)\n"
        "open('results/metrics.json', 'w').write('{\"loss\": 0.125}')\nprint('epoch done')\n"
    )
    proc = ferry.ok(*LAUNCH, "sync", "run", f"{sys.executable} train.py", "download")
    assert "epoch done" in proc.stdout
    assert json.loads((project / "results" / "metrics.json").read_text()) == {"loss": 0.125}
    [raw] = live(ec2)
    assert raw["ImageId"] == DLAMI, "the region's public deep-learning AMI parameter"
    assert raw["InstanceType"] == "g5.xlarge" and raw.get("InstanceLifecycle") != "spot"
    assert tags(raw) == {"Name": "proj", "Project": "proj", "Owner": "ada", "ferry-project": "proj"}
    [volume] = ec2.client().describe_volumes(
        Filters=[{"Name": "attachment.instance-id", "Values": [raw["InstanceId"]]}])["Volumes"]
    assert (volume["Size"], volume["VolumeType"]) == (100, "gp3")
    status = json.loads(ferry.ok("status", "--json").stdout)
    assert status["ssh"]["host"] == raw["PublicIpAddress"], "ferry addresses the public IP; ssh_config maps it"
    assert status["gpu"] == "A10G" and status["cost_per_hour"] == 1.006

    ferry.ok("stop")
    assert instances(ec2)[0]["State"]["Name"] == "stopped"
    assert json.loads(ferry.ok("status", "--json").stdout)["status"] == "STOPPED"
    ferry.ok("start")
    moved = live(ec2)[0]["PublicIpAddress"]
    assert moved != raw["PublicIpAddress"], "moto gives a started instance a new address"
    assert ferry.ok("run", "cat results/metrics.json").stdout == '{"loss": 0.125}', "the disk survived"
    ferry.ok("launch", "--provider", "ec2")  # by name: reused, not a second instance
    assert len(live(ec2)) == 1
    everywhere = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    assert [(i["name"], i["status"]) for i in everywhere if i["provider"] == "ec2"] == [("proj", "RUNNING")]

    ferry.ok("terminate", "--yes")
    assert live(ec2) == [] and instances(ec2, "terminated"), "EC2 keeps listing it as terminated"
    everywhere = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    assert [i for i in everywhere if i["provider"] == "ec2"] == [], "a terminated instance is gone to ferry"


def test_429_and_two_500s_then_success_with_one_client_token(ec2, ferry):
    ec2.fail_next(429, match="DescribeInstances")
    ec2.fail_next(500, times=2, match="RunInstances")
    ferry.ok(*LAUNCH)
    runs = ec2.requests_to("RunInstances")
    assert len(runs) == 3
    assert len({params(r)["ClientToken"] for r in runs}) == 1, "retries of one create share its token"
    assert len(live(ec2)) == 1


@pytest.mark.parametrize("how", ["error", "drop"])
def test_create_whose_response_is_lost_yields_exactly_one_instance(ec2, ferry, how):
    ec2.lose_next_create_response(how=how)
    ferry.ok(*LAUNCH)
    [raw] = live(ec2)
    assert json.loads(ferry.ok("status", "--json").stdout)["id"] == raw["InstanceId"]
    assert ferry.ok("run", "echo reachable").stdout == "reachable\n"


def test_instance_that_never_gets_ssh_is_terminated_after_the_timeout(ec2, ferry, project):
    ec2.never_ready = True
    err = failed(ferry(*LAUNCH, "--launch-timeout", "3"))
    assert "within" in err
    assert live(ec2) == [], "terminated, nothing left billing"
    assert len(instances(ec2, "terminated")) == 1
    state = project / ".ferry" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["instances"] == {}


def test_changed_host_key_on_the_same_address_is_refused_with_the_fix(ec2, ferry, sshd_pool):
    ferry.ok(*LAUNCH)
    [raw] = live(ec2)
    endpoint = ec2.endpoint(raw["InstanceId"])
    port = endpoint.port
    sshd_pool.stop(endpoint)  # "rebuilt": same address, new host key
    for path in (endpoint.sshd.host_key_path, endpoint.sshd.host_key_path.with_suffix(".pub")):
        path.unlink()
    sshd_pool.start(endpoint)
    assert endpoint.port == port
    err = failed(ferry("run", "true"))
    assert "host key" in err and raw["PublicIpAddress"] in err
    fix = err.split("forget the old key: ")[1].split(" ;")[0]
    assert fix.startswith("ssh-keygen -R")
    subprocess.run(shlex.split(fix), check=True, capture_output=True)
    ferry.ok("launch", "--provider", "ec2")  # pins the new key
    assert ferry.ok("run", "echo again").stdout == "again\n"


def test_credentials_go_on_the_wire_only(ec2, ferry, project):
    printed = ferry.ok("--debug", *LAUNCH, "run", "echo hi")
    refusal = (b'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>AuthFailure</Code>'
               b"<Message>AWS was not able to validate the provided access credentials</Message></Error></Errors>"
               b"<RequestID>fake</RequestID></Response>")
    ec2.fail_next(401, match="DescribeInstances", body=refusal)
    refused = ferry("--debug", *LAUNCH, "--name", "other")
    assert refused.returncode == 1 and "AWS refused" in refused.stderr
    everything = "".join(p.stdout + p.stderr for p in (printed, refused))
    assert SECRET_KEY not in everything and ACCESS_KEY not in everything
    assert SECRET_KEY not in (project / ".ferry" / "state.json").read_text()
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
