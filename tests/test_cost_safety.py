"""No surprise bills on the clouds: each one's self-stop path, the budget, orphans, and the live view.

Each cloud's real SDK against its fake (tests/fakes), every instance a real
loopback sshd running ferry's real agent. The agent checks every 0.5 s here.
What the fake receives is what counts: which credential a self-stop carried,
how many creates a refused launch sent.
"""

from __future__ import annotations

import json
import stat
import time
from pathlib import Path

import pytest

from .conftest import assert_one_line_error
from .contract_harness import ec2_instances, make

pytestmark = pytest.mark.timeout(120)

FAST = "0.5s"


@pytest.fixture
def cloud(request, ferry, home, project, monkeypatch):
    """The harness of the cloud named by the case's parameter, its agent checking fast."""
    monkeypatch.setenv("INVOKE_FERRY_AUTOSTOP_CHECK", FAST)
    return make(request.param, request, ferry, home, project, monkeypatch)


def clouds(*names):
    return pytest.mark.parametrize("cloud", names, indirect=True)


def wait_until(predicate, timeout: float = 20, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return bool(predicate())


def files_holding(root: Path, secret: str) -> list[Path]:
    found = []
    for path in root.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink() and secret.encode() in path.read_bytes():
                found.append(path)
        except OSError:
            continue
    return found


# -- each cloud's self-stop path ---------------------------------------------------------------------
@clouds("runpod", "vast")
@pytest.mark.parametrize("action", ["stop", "terminate"])
def test_the_instance_stops_itself_with_its_own_scoped_credential(cloud, action, home):
    cloud.cli.ok(*cloud.launch, "--autostop", "off", "--autostop-action", action)
    (iid,) = cloud.ids()
    home_there = cloud.remote_home()
    assert files_holding(home_there, cloud.fake.api_key) == [], "the account key is nowhere on the instance"
    cloud.fake.clear_requests()
    proc = cloud.cli.ok("autostop", "--idle", "1s")
    assert f"autostop for proj: {action} after 1s idle" in proc.stderr

    if cloud.name == "runpod":
        verb = "podStop" if action == "stop" else "podTerminate"
        assert wait_until(lambda: cloud.fake.requests_to(verb)), f"the pod asked RunPod to {action} it"
        done = cloud.fake.requests_to(verb)
        assert {r.credential for r in done} == {f"pod:{iid}"} and {r.status for r in done} == {200}
    else:
        method = "PUT" if action == "stop" else "DELETE"
        route = f"{method} /api/v0/instances"
        assert wait_until(lambda: cloud.fake.requests_to(route)), f"the instance asked vast to {action} it"
        done = cloud.fake.requests_to(route)
        assert {r.credential for r in done} == {f"container:{iid}"} and {r.status for r in done} == {200}
    assert all(r.credential != "account" for r in cloud.fake.requests), "ferry's own calls only; the key stayed here"
    listed = json.loads(cloud.cli.ok("ls", "--json").stdout)
    assert [i["status"] for i in listed] == (["STOPPED"] if action == "stop" else ["TERMINATED"])


@clouds("ec2")
@pytest.mark.parametrize("action", ["stop", "terminate"])
def test_an_ec2_instance_shuts_itself_down_and_its_shutdown_behaviour_decides(cloud, action):
    cloud.cli.ok(*cloud.launch, "--autostop", "off", "--autostop-action", action)
    (iid,) = cloud.ids()
    client = cloud.fake.client(endpoint_url=cloud.fake.moto_url)
    attribute = client.describe_instance_attribute(InstanceId=iid, Attribute="instanceInitiatedShutdownBehavior")
    assert attribute["InstanceInitiatedShutdownBehavior"]["Value"] == action, "set at launch"
    # This machine has a real shutdown: act only once the instance's resolves to the fake's.
    where = cloud.cli.ok("run", "--no-sync", "command -v shutdown").stdout.strip()
    assert where == str(cloud.remote_home() / ".local" / "bin" / "shutdown"), where
    cloud.fake.clear_requests()
    cloud.cli.ok("autostop", "--idle", "1s")
    want = "stopped" if action == "stop" else "terminated"
    assert wait_until(lambda: ec2_instances(cloud.fake, want), 30), f"moto shows it {want}"
    assert not cloud.fake.requests_to("StopInstances") and not cloud.fake.requests_to("TerminateInstances"), \
        "no API call: the instance did it"


@clouds("thunder")
def test_thunder_stops_itself_only_with_the_key_the_user_put_there(cloud, home):
    proc = cloud.cli.ok(*cloud.launch, "--autostop", "1s")
    assert "proj cannot stop itself" in proc.stderr and "--autostop-key" in proc.stderr
    config = (cloud.remote_home() / ".ferry" / "autostop" / "config").read_text()
    assert "SELF_STOP=none" in config and not (cloud.remote_home() / ".ferry" / "autostop" / "key").exists()
    assert files_holding(cloud.remote_home(), cloud.fake.api_key) == []
    refused = cloud.cli("run", "--detach", "--then", "terminate", "true")
    assert "--autostop-key" in assert_one_line_error(refused, 2)

    cloud.fake.clear_requests()
    proc = cloud.cli.ok("launch", "--autostop", "off", "--autostop-key")
    assert "your thunder API key is on proj" in proc.stderr
    key = cloud.remote_home() / ".ferry" / "autostop" / "key"
    assert key.read_text() == cloud.fake.api_key and stat.S_IMODE(key.stat().st_mode) == 0o600
    assert all(cloud.fake.api_key not in printed for printed in cloud.cli.printed), "never printed"
    (iid,) = cloud.ids()
    cloud.cli.ok("autostop", "--idle", "1s")
    assert wait_until(lambda: cloud.ids() == []), "it deleted itself, with the token the user opted to put there"
    assert [r.credential for r in cloud.fake.requests_to("/delete")] == ["account"]


# -- budget ------------------------------------------------------------------------------------------------
@clouds("runpod")
def test_the_budget_refuses_a_launch_before_any_create(cloud, monkeypatch):
    monkeypatch.setenv("INVOKE_FERRY_BUDGET_MAX_HOURLY", "0.10")
    refused = cloud.cli(*cloud.launch)
    err = assert_one_line_error(refused)
    assert "over ferry.budget.max_hourly $0.10/h" in err and "$0.34/h" in err and "0 running" in err
    assert cloud.fake.requests_to(cloud.create) == [] and cloud.ids() == []

    monkeypatch.setenv("INVOKE_FERRY_BUDGET_MAX_HOURLY", "0.50")
    cloud.cli.ok(*cloud.launch, "--autostop", "off")
    second = cloud.cli("launch", "--name", "more", "--provider", "runpod", "--gpu", "RTX4090")
    assert "would make $0.68/h" in assert_one_line_error(second) and "(1 running at $0.34/h)" in second.stderr
    assert len(cloud.fake.requests_to(cloud.create)) == 1 and len(cloud.ids()) == 1


# -- orphans ---------------------------------------------------------------------------------------------------
@clouds("runpod")
def test_gc_finds_exactly_the_orphans_and_terminates_only_them(cloud, home, project):
    from ferry import providers, sshkey
    from ferry.config import Settings
    from ferry.records import InstanceSpec

    cloud.cli.ok(*cloud.launch, "--autostop", "off")
    cloud.cli.ok("launch", "--name", "gone", "--provider", "runpod", "--gpu", "RTX4090", "--autostop", "off")
    machine = (home / ".ferry" / "machine-id").read_text().strip()
    runpod = providers.get("runpod", Settings.of(None))
    public = sshkey.public_key(sshkey.private_key_path(None, home / ".ferry"))

    def seed(name, labels):
        return runpod.create(InstanceSpec(name=name, gpu="RTX4090", gpu_count=1, labels=labels, public_key=public)).id

    orphan = seed("old", {"ferry-project": "deleted-project", "ferry-machine": machine})
    foreign = seed("theirs", {"ferry-project": "x", "ferry-machine": "another-laptop"})
    mine_by_hand = seed("by-hand", {})
    gone = next(i for i in cloud.ids() if cloud.fake.pods[i]["name"] == "gone")
    runpod.terminate(gone)  # behind ferry's back: the registry still names it

    found = cloud.cli("gc", "--json")
    assert found.returncode == 1, found.stderr
    report = json.loads(found.stdout)
    assert [o["id"] for o in report["orphans"]] == [orphan]
    assert report["orphans"][0]["cost_per_hour"] == pytest.approx(0.34)
    assert [i["id"] for i in report["elsewhere"]] == [foreign]
    assert report["cleaned"] == [f"runpod/{gone}"]

    assert_one_line_error(cloud.cli("gc", "--terminate"), 2)
    before = set(cloud.ids())
    done = cloud.cli("gc", "--terminate", "--yes")
    assert done.returncode == 0 and f"terminated runpod/{orphan}" in done.stderr, done.stderr
    assert set(cloud.ids()) == before - {orphan}
    assert {foreign, mine_by_hand} <= set(cloud.ids())
    again = cloud.cli("gc")
    assert again.returncode == 0 and "no orphans" in again.stderr


# -- cost and the live view ----------------------------------------------------------------------------------
@clouds("runpod")
def test_top_and_cost_show_every_instance_with_what_it_costs(cloud, home, project, monkeypatch):
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_LOCAL_PRICE", "36")
    cloud.cli.ok(*cloud.launch, "--autostop", "30m")
    cloud.cli.ok("launch", "--name", "side", "--provider", "local", "--autostop", "off", "--max-cost", "5")
    release = project.parent / ".ferry" / "local" / "side" / "home" / "proj" / "release"
    cloud.cli.ok("run", "--name", "side", "--detach", "while [ ! -f release ]; do sleep 0.1; done")
    time.sleep(0.3)
    try:
        document = json.loads(cloud.cli.ok("top", "--once", "--json").stdout)
    finally:
        release.write_text("go")
    by_name = {i["name"]: i for i in document["instances"]}
    assert set(by_name) == {"proj", "side"}
    pod, side = by_name["proj"], by_name["side"]
    assert pod["provider"] == "runpod" and pod["cost_per_hour"] == pytest.approx(0.34) and pod["cost_so_far"] > 0
    assert pod["agent"]["agent"] == "running" and pod["agent"]["idle"] == "1800" and pod["jobs"] == 0
    assert side["cost_per_hour"] == 36 and side["cost_so_far"] > 0 and side["jobs"] == 1
    assert side["agent"]["max_cost"] == 5 and side["agent"]["idle"] == "off"
    totals = document["totals"]
    assert totals["all"]["instances"] == 2
    assert totals["all"]["per_hour"] == pytest.approx(36.34)
    assert totals["runpod"]["per_hour"] == pytest.approx(0.34)

    cost = json.loads(cloud.cli.ok("cost", "--json").stdout)
    assert {i["name"]: i["autostop"] for i in cost["instances"]} == {
        "proj": "stop after 30m idle", "side": "stop at $5 spent"}
    assert cost["totals"]["all"]["per_hour"] == pytest.approx(36.34)
    table = cloud.cli.ok("cost").stdout
    assert "TOTAL" in table and "36.34" in table
