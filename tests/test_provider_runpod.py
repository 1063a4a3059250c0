"""What only RunPod does: the real ``runpod`` SDK against the fake GraphQL API, a real loopback sshd per pod.

The loop, idempotency, lost creates, host keys, timeouts and retries are
the contract every provider keeps (tests/test_contract.py); here are the
pod as RunPod sees it, spot bidding, RunPod's key errors and catalogue.
Every command goes through the real CLI (``python -m ferry``), which pays
the SDK's ~1.6 s import on each call that talks to RunPod, so the cases
share launches where they can.
"""

from __future__ import annotations

import json

import pytest

from .conftest import ferry_labels
from .contract_harness import USER, configure_runpod, failed

pytestmark = pytest.mark.timeout(60)

GPU_ID = "NVIDIA GeForce RTX 4090"


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def fake(fake_runpod, home, project, monkeypatch):
    configure_runpod(fake_runpod, home, monkeypatch)
    return fake_runpod


@pytest.fixture
def cli(ferry):
    return ferry


def launch(cli, *extra, ok=True):
    args = ("launch", "--provider", "runpod", "--gpu", "RTX4090", *extra)
    return cli.ok(*args) if ok else cli(*args)


def only_pod(fake) -> dict:
    assert len(fake.pods) == 1, list(fake.pods)
    return next(iter(fake.pods.values()))


def queries(fake, op: str) -> list[str]:
    return [r.body["query"] for r in fake.requests_to(f"POST /graphql {op}")]


# -- the pod as RunPod sees it ---------------------------------------------------------------
def test_the_pod_carries_ferrys_settings_and_resumes_with_its_own_gpu_count(fake, cli, home):
    cli.ok("launch", "--provider", "runpod", "--gpu", "RTX4090", "--gpus", "2", "--disk", "30",
           "--ports", "8188")
    pod = only_pod(fake)
    # The pod as RunPod sees it: ferry's name, key, labels, ports with 22/tcp, a public IP.
    public_key = (home / ".ferry" / "keys" / "id_ed25519.pub").read_text().split()
    assert pod["name"] == "proj" and pod["gpuCount"] == 2 and pod["containerDiskInGb"] == 30
    assert pod["env"]["PUBLIC_KEY"] == " ".join(public_key[:2])
    assert pod["env"]["FERRY_LABELS"] == f"ferry-machine={ferry_labels()['ferry-machine']};ferry-project=proj"
    assert pod["env"]["FERRY_GPU"] == GPU_ID
    assert pod["ports"] == "22/tcp,8188/http" and pod["podType"] == "RESERVED"
    (deploy,) = queries(fake, "podFindAndDeployOnDemand")
    assert "supportPublicIp: true" in deploy and "startSsh: true" in deploy

    # A 429 on the next API call is retried; status reads the live pod.
    fake.fail_next(429, match="POST /graphql pod")
    status = json.loads(cli.ok("status", "--json").stdout)
    assert (status["status"], status["gpu"], status["gpu_count"]) == ("RUNNING", "RTX4090", 2)
    assert status["cost_per_hour"] == pytest.approx(2 * 0.34)  # community price, cloud_type ALL
    assert status["labels"] == ferry_labels()

    # Start resumes with the pod's own GPU count.
    cli.ok("stop", "start")
    (resume,) = queries(fake, "podResume")
    assert "gpuCount: 2" in resume
    assert only_pod(fake)["gpuCount"] == 2


# -- spot --------------------------------------------------------------------------------------
def test_spot_rents_an_interruptible_pod_at_the_minimum_bid_and_resumes_by_bid(fake, cli):
    launch(cli, "--spot")
    (rent,) = queries(fake, "podRentInterruptable")
    assert "bidPerGpu: 0.2000" in rent and "gpuCount: 1" in rent and f'gpuTypeId: "{GPU_ID}"' in rent
    assert queries(fake, "podFindAndDeployOnDemand") == []
    pod = only_pod(fake)
    assert pod["podType"] == "INTERRUPTABLE" and pod["costPerHr"] == pytest.approx(0.20)
    assert pod["env"]["FERRY_LABELS"] == f"ferry-machine={ferry_labels()['ferry-machine']};ferry-project=proj"
    cli.ok("run", "true")

    fake.preempt(pod["id"])  # outbid: the pod exits
    assert json.loads(cli.ok("status", "--json").stdout)["status"] == "STOPPED"
    cli.ok("start")
    (resume,) = queries(fake, "podBidResume")
    assert "bidPerGpu: 0.2000" in resume and "gpuCount: 1" in resume
    assert queries(fake, "podResume") == []
    cli.ok("run", "true")
    cli.ok("terminate", "--yes")
    assert fake.pods == {}


def test_spot_bid_below_the_minimum_fails_with_runpods_message_and_creates_nothing(fake, cli):
    stderr = failed(launch(cli, "--spot", "--max-price", "0.1", ok=False))
    assert "below the minimum bid price" in stderr and "--max-price" in stderr
    (rent,) = queries(fake, "podRentInterruptable")
    assert "bidPerGpu: 0.1000" in rent
    assert fake.pods == {}


# -- keys, catalogue -----------------------------------------------------------------------------
def test_a_rejected_key_is_one_clean_line_without_the_key(fake, cli, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", "rp-wrong-key-123456")
    proc = launch(cli, "--debug", ok=False)
    assert "error: RunPod rejected the API key" in proc.stderr and "RUNPOD_API_KEY" in proc.stderr
    assert fake.requests[-1].authorization == "Bearer rp-wrong-key-123456"
    assert "rp-wrong-key-123456" not in proc.stdout + proc.stderr
    assert fake.pods == {}


def test_offers_and_the_default_workdir(fake, home, monkeypatch):
    runpod = pytest.importorskip("runpod")
    monkeypatch.setattr(runpod, "api_key", None)  # the provider sets both in-process: restore them after
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake.base_url)
    from ferry.errors import UsageError
    from ferry.providers.base import ProviderConfig
    from ferry.providers.runpod import RunPodProvider

    def provider(**settings):
        base = {"api_url": fake.base_url, "cloud_type": "ALL", "ssh_user": USER, "image": "runpod/base:1"}
        return RunPodProvider(ProviderConfig("runpod", {**base, **settings}, api_key=lambda: fake.api_key))

    offers = provider().offers("RTX4090", 2)
    table = {(o.region, o.spot): o.cost_per_hour for o in offers}
    assert table == {("SECURE", False): pytest.approx(1.38), ("SECURE", True): pytest.approx(0.70),
                     ("COMMUNITY", False): pytest.approx(0.68), ("COMMUNITY", True): pytest.approx(0.40)}
    assert {(o.provider, o.gpu, o.gpu_count) for o in offers} == {("runpod", "RTX4090", 2)}
    assert {o.region for o in provider(cloud_type="SECURE").offers("A100", 1)} == {"SECURE"}
    assert {o.gpu for o in provider().offers(None, 1)} >= {"RTX4090", "A100", "H100"}
    with pytest.raises(UsageError, match="runpod does not offer T4"):
        provider().offers("T4", 1)

    # Without the test's workdir setting a pod's project lives in /workspace, RunPod's volume mount.
    from ferry.records import InstanceSpec

    pub = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOfakefakefakefakefakefakefakefakefakefakefake x"
    made = provider().create(InstanceSpec(name="wd", provider="runpod", gpu="RTX4090", gpu_count=1, public_key=pub,
                                          labels={"ferry-project": "p q;=x"}))
    got = provider().get(made.id)
    assert got.workdir_root == "/workspace" and provider(workdir="~").get(made.id).workdir_root is None
    assert got.labels == {"ferry-project": "p q;=x"}  # labels survive the pod's env, whatever they hold
    assert [i.name for i in provider().list({"ferry-project": "p q;=x"})] == ["wd"]
    provider().terminate(made.id)
    provider().terminate(made.id)  # gone already: still fine
    assert fake.pods == {}
