"""RunPod end to end: the real ``runpod`` SDK against the fake GraphQL API, a real loopback sshd per pod.

Every command goes through the real CLI (``python -m ferry``), which pays
the SDK's ~1.6 s import on each call that talks to RunPod, so the cases
share launches where they can. Each fake pod's sshd (``SshdPool``) gives its
sessions their own HOME under the fake's directory (the setting ``workdir:
"~"`` puts the project there instead of /workspace), and every process
started through it is stopped by pid at teardown.
"""

from __future__ import annotations

import getpass
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.timeout(60)

USER = getpass.getuser()
GPU_ID = "NVIDIA GeForce RTX 4090"


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def fake(fake_runpod, home, project, monkeypatch):
    monkeypatch.setenv("RUNPOD_API_KEY", fake_runpod.api_key)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_RUNPOD_API_URL", fake_runpod.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_RUNPOD_SSH_USER", USER)
    # The project goes in the pod's home, not /workspace (which would be this machine's /workspace).
    (home / ".invoke.yaml").write_text("ferry:\n  providers:\n    runpod:\n      workdir: '~'\n")
    return fake_runpod


class Recorder:
    """The CLI, remembering every byte it printed (for the secret check)."""

    def __init__(self, ferry):
        self.ferry, self.printed = ferry, []

    def __call__(self, *args, **kw):
        proc = self.ferry(*args, **kw)
        self.printed.append(proc.stdout + proc.stderr)
        return proc

    def ok(self, *args, **kw):
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"ferry {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture
def cli(ferry):
    return Recorder(ferry)


def launch(cli, *extra, ok=True):
    args = ("launch", "--provider", "runpod", "--gpu", "RTX4090", *extra)
    return cli.ok(*args) if ok else cli(*args)


def only_pod(fake) -> dict:
    assert len(fake.pods) == 1, list(fake.pods)
    return next(iter(fake.pods.values()))


def queries(fake, op: str) -> list[str]:
    return [r.body["query"] for r in fake.requests_to(f"POST /graphql {op}")]


def assert_error(proc) -> str:
    """A failure, possibly after progress notes: exit 1, no traceback, one error line (plus hint) at the end."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
    assert len(errors) == 1 and all(l.startswith("hint: ") for l in lines[errors[0] + 1:]), proc.stderr
    return proc.stderr


# -- the whole loop ------------------------------------------------------------------------
def test_whole_loop_launch_sync_run_download_stop_start_terminate(fake, cli, project, home):
    (project / "train.py").write_text(
        "import os\nos.makedirs('results', exist_ok=True)\n"
        "open('results/metrics.json', 'w').write('{\"loss\": 0.125}')\nprint('trained on runpod')\n"
    )
    cli.ok("--debug", "launch", "--provider", "runpod", "--gpu", "RTX4090", "--gpu-count", "2", "--disk", "30",
           "--ports", "8188")
    pod = only_pod(fake)
    # The pod as RunPod sees it: ferry's name, key, labels, ports with 22/tcp, a public IP.
    public_key = (home / ".ferry" / "keys" / "id_ed25519.pub").read_text().split()
    assert pod["name"] == "proj" and pod["gpuCount"] == 2 and pod["containerDiskInGb"] == 30
    assert pod["env"]["PUBLIC_KEY"] == " ".join(public_key[:2])
    assert pod["env"]["FERRY_LABELS"] == "ferry-project=proj" and pod["env"]["FERRY_GPU"] == GPU_ID
    assert pod["ports"] == "22/tcp,8188/http" and pod["podType"] == "RESERVED"
    (deploy,) = queries(fake, "podFindAndDeployOnDemand")
    assert "supportPublicIp: true" in deploy and "startSsh: true" in deploy

    proc = cli.ok("sync", "run", f"{sys.executable} train.py", "download")
    assert "trained on runpod" in proc.stdout
    assert json.loads((project / "results" / "metrics.json").read_text()) == {"loss": 0.125}

    # A 429 on the next API call is retried; status reads the live pod.
    fake.fail_next(429, match="POST /graphql pod")
    status = json.loads(cli.ok("status", "--json").stdout)
    assert (status["status"], status["gpu"], status["gpu_count"]) == ("RUNNING", "RTX4090", 2)
    assert status["cost_per_hour"] == pytest.approx(2 * 0.34)  # community price, cloud_type ALL
    assert status["labels"] == {"ferry-project": "proj"}
    assert (Path(status["remote_home"]) / "proj" / "results" / "metrics.json").exists()

    # Stop keeps the disk; start resumes with the pod's own GPU count.
    cli.ok("--debug", "stop")
    assert only_pod(fake)["desiredStatus"] == "EXITED"
    cli.ok("start")
    (resume,) = queries(fake, "podResume")
    assert "gpuCount: 2" in resume
    assert only_pod(fake)["gpuCount"] == 2
    assert cli.ok("run", "cat results/metrics.json").stdout == '{"loss": 0.125}'

    cli.ok("--debug", "terminate", "--yes")
    assert fake.pods == {}
    # The key went on the wire, in the Authorization header, and nowhere in what ferry printed.
    assert {r.authorization for r in fake.requests} == {f"Bearer {fake.api_key}"}
    assert all(fake.api_key not in text for text in cli.printed)
    assert any("invoke.executor" in text for text in cli.printed)  # --debug was on for some of them


def test_two_500s_on_create_then_success_makes_one_pod(fake, cli):
    # The second is a gateway's HTML page: the SDK parses it as JSON before looking at the status.
    fake.fail_next(500, match="podFindAndDeployOnDemand")
    fake.fail_next(500, match="podFindAndDeployOnDemand", body=b"<html><body>500 Internal Server Error</body></html>")
    launch(cli)
    only_pod(fake)
    assert len(queries(fake, "podFindAndDeployOnDemand")) == 3


@pytest.mark.parametrize("how", ["error", "drop"])
def test_lost_create_response_finds_the_pod_instead_of_a_second(fake, cli, project, how):
    fake.lose_next_create_response(how)
    launch(cli)
    assert len(queries(fake, "podFindAndDeployOnDemand")) == 1  # found by name, never created twice
    pod = only_pod(fake)
    assert json.loads((project / ".ferry" / "state.json").read_text())["instances"]["proj"]["id"] == pod["id"]


def test_pod_that_never_gets_an_ssh_port_is_terminated_after_the_launch_timeout(fake, cli, project):
    fake.never_ready = True
    stderr = assert_error(launch(cli, "--launch-timeout", "2", ok=False))
    assert "did not become reachable within 2s" in stderr
    assert re.search(r"terminated proj \(fakepod\d+\) because launch failed", stderr)
    assert fake.pods == {} and len(queries(fake, "podTerminate")) == 1
    state = project / ".ferry" / "state.json"
    assert not state.exists() or "proj" not in json.loads(state.read_text())["instances"]


def test_changed_host_key_on_the_same_address_is_refused_with_the_fix(fake, cli, project):
    launch(cli)
    pod = only_pod(fake)
    cli.ok("run", "true")
    endpoint = fake.endpoint(pod["id"])
    port = endpoint.port
    fake.pool.stop(endpoint)  # same address, new machine: a new host key behind the same port
    for suffix in ("", ".pub"):
        Path(f"{endpoint.sshd.host_key_path}{suffix}").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(endpoint.sshd.host_key_path)], check=True)
    fake.pool.start(endpoint)
    assert endpoint.port == port
    import ferry

    ferry.box().remote.close()  # no shared connection to the old sshd hides it
    stderr = assert_error(cli("run", "true"))
    assert "host key of proj" in stderr and f"[127.0.0.1]:{port}" in stderr and "ssh-keygen -R" in stderr


# -- spot --------------------------------------------------------------------------------------
def test_spot_rents_an_interruptible_pod_at_the_minimum_bid_and_resumes_by_bid(fake, cli):
    launch(cli, "--spot")
    (rent,) = queries(fake, "podRentInterruptable")
    assert "bidPerGpu: 0.2000" in rent and "gpuCount: 1" in rent and f'gpuTypeId: "{GPU_ID}"' in rent
    assert queries(fake, "podFindAndDeployOnDemand") == []
    pod = only_pod(fake)
    assert pod["podType"] == "INTERRUPTABLE" and pod["costPerHr"] == pytest.approx(0.20)
    assert pod["env"]["FERRY_LABELS"] == "ferry-project=proj"
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
    stderr = assert_error(launch(cli, "--spot", "--max-price", "0.1", ok=False))
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
