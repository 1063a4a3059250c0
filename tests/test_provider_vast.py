"""vast.ai end to end: the real ``vastai`` SDK against FakeVast, a real loopback sshd behind each instance.

ferry runs as the real CLI; it finds the fake through
INVOKE_FERRY_PROVIDERS_VAST_API_URL and its key through VAST_API_KEY, as a
user's shell would provide them.
"""

from __future__ import annotations

import getpass
import json
import shlex
import subprocess
import sys

import pytest

KEY = "vast-SECRET-4c1d9e7a0b2f"


@pytest.fixture
def vast(fake_vast, project, monkeypatch):
    fake_vast.api_key = KEY
    monkeypatch.setenv("VAST_API_KEY", KEY)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_VAST_API_URL", fake_vast.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_VAST_SSH_USER", getpass.getuser())
    try:
        yield fake_vast
    finally:
        fake_vast.stop()  # powers off every instance (SshdPool ends what they left running)


LAUNCH = ("launch", "--provider", "vast", "--gpu", "RTX4090")


def failed(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """Exit ``code``, no traceback, and the output ends in ``error:`` (+ ``hint:``); progress notes may precede."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
    assert len(errors) == 1 and all(l.startswith("hint: ") for l in lines[errors[0] + 1:]), proc.stderr
    return "\n".join(lines[errors[0]:])


def status(ferry) -> dict:
    return json.loads(ferry.ok("status", "--json").stdout)


def rented(fake) -> list[int]:
    return sorted(fake.instances)


def test_whole_loop_launch_sync_run_download_stop_start_terminate(vast, ferry, project):
    (project / "train.py").write_text(
        "import os\nos.makedirs('results', exist_ok=True)\n"
        "open('results/metrics.json', 'w').write('{\"loss\": 0.5}')\nprint('epoch done')\n"
    )
    proc = ferry.ok(*LAUNCH, "sync", "run", f"{sys.executable} train.py", "download")
    assert "epoch done" in proc.stdout
    assert json.loads((project / "results" / "metrics.json").read_text()) == {"loss": 0.5}
    [iid] = rented(vast)
    row = vast.instances[iid]
    assert row["label"] == "proj" and row["gpu_name"] == "RTX 4090"
    assert row["dph_total"] == 0.35, "the cheapest reliable verified on-demand offer"
    assert not row["is_bid"]
    assert json.loads(dict(row["extra_env"])["FERRY_LABELS"]) == {"ferry-project": "proj"}
    info = status(ferry)
    assert info["provider"] == "vast" and info["id"] == str(iid) and info["gpu"] == "RTX4090"

    ferry.ok("stop")
    assert status(ferry)["status"] == "STOPPED"
    assert not vast.machines[str(iid)].powered
    ferry.ok("start")
    assert ferry.ok("run", "cat results/metrics.json").stdout == '{"loss": 0.5}', "the disk survived"
    ferry.ok("launch", "--provider", "vast")  # by name: reuses, never rents a second
    assert rented(vast) == [iid]
    everywhere = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    assert [(i["name"], i["status"]) for i in everywhere if i["provider"] == "vast"] == [("proj", "RUNNING")]

    ferry.ok("terminate", "--yes")
    assert rented(vast) == [] and not vast.offers[50001]["rented"]
    assert json.loads((project / ".ferry" / "state.json").read_text())["instances"] == {}


def test_429_and_two_500s_then_success(vast, ferry):
    vast.fail_next(429, match="POST /api/v0/bundles", headers={"Retry-After": "0"})
    vast.fail_next(500, times=2, match="PUT /api/v0/asks")
    ferry.ok(*LAUNCH)
    assert len(vast.requests_to("PUT /api/v0/asks")) == 3
    assert len(rented(vast)) == 1


@pytest.mark.parametrize("how", ["error", "drop"])
def test_create_whose_response_is_lost_yields_exactly_one_instance(vast, ferry, how):
    vast.lose_next_create_response(how=how)
    ferry.ok(*LAUNCH)
    assert len(vast.requests_to("PUT /api/v0/asks")) == 1, "found by label, not rented again"
    [iid] = rented(vast)
    assert status(ferry)["id"] == str(iid)
    assert ferry.ok("run", "echo reachable").stdout == "reachable\n", "the account key reached it"


def test_instance_that_never_gets_ssh_is_terminated_after_the_timeout(vast, ferry, project):
    vast.never_ready = True
    proc = ferry(*LAUNCH, "--launch-timeout", "2")
    err = failed(proc)
    assert "reachable" in err or "within" in err
    assert rented(vast) == [], "the instance that never came up was destroyed"
    assert len(vast.requests_to("DELETE /api/v0/instances")) == 1
    state = project / ".ferry" / "state.json"
    assert not state.exists() or json.loads(state.read_text())["instances"] == {}


def test_changed_host_key_on_the_same_address_is_refused_with_the_fix(vast, ferry, sshd_pool):
    ferry.ok(*LAUNCH)
    [iid] = rented(vast)
    endpoint = vast.endpoint(iid)
    port = endpoint.port
    sshd_pool.stop(endpoint)  # "rebuilt": same address and port, new host key
    for path in (endpoint.sshd.host_key_path, endpoint.sshd.host_key_path.with_suffix(".pub")):
        path.unlink()
    sshd_pool.start(endpoint)
    assert endpoint.port == port
    err = failed(ferry("run", "true"))
    assert "host key" in err
    fix = err.split("forget the old key: ")[1].split(" ;")[0]
    assert fix.startswith("ssh-keygen -R")
    subprocess.run(shlex.split(fix), check=True, capture_output=True)
    ferry.ok("launch", "--provider", "vast")  # pins the new key (trust on first use again)
    assert ferry.ok("run", "echo again").stdout == "again\n"


def test_api_key_goes_on_the_wire_only(vast, ferry, project):
    printed = ferry.ok("--debug", *LAUNCH, "run", "echo hi")
    wrong_key = ferry("--debug", "launch", "--provider", "vast", "--gpu", "RTX4090", "--name", "other",
                      env={"VAST_API_KEY": KEY + "-wrong"})
    assert wrong_key.returncode == 1
    vast.fail_next(400, match="POST /api/v0/bundles")
    refused = ferry("--debug", "launch", "--provider", "vast", "--gpu", "RTX4090", "--name", "third")
    assert refused.returncode == 1 and "injected fault" in refused.stderr
    everything = "".join(p.stdout + p.stderr for p in (printed, wrong_key, refused))
    assert KEY not in everything
    assert KEY not in (project / ".ferry" / "state.json").read_text()
    authorized = [r for r in vast.requests if r.authorization == f"Bearer {KEY}"]
    assert authorized and len(authorized) >= len(vast.requests) - 2  # all but the wrong-key ones
    assert "refused the API key" in wrong_key.stderr


def test_spot_bids_with_a_price_cap_and_ports(vast, ferry):
    ferry.ok(*LAUNCH, "--spot", "--max-price", "0.2", "--ports", "8080,6006")
    [create] = vast.requests_to("PUT /api/v0/asks")
    assert create.path == "/api/v0/asks/50001/", "the cheapest bid offer under the cap"
    assert create.body["price"] == 0.2
    assert {"-p 8080:8080", "-p 6006:6006"} <= set(create.body["env"])
    assert create.body["label"] == "proj" and "ssh_direc" in create.body["runtype"]
    search = [r.body for r in vast.requests_to("POST /api/v0/bundles")][-1]
    assert search["type"] == "bid" and search["gpu_name"] == {"eq": "RTX 4090"}
    [iid] = rented(vast)
    assert vast.instances[iid]["is_bid"]


def test_no_offer_under_the_cap_rents_nothing(vast, ferry):
    err = failed(ferry(*LAUNCH, "--spot", "--max-price", "0.01"))
    assert "no interruptible offer" in err and "ferry offers" in err
    assert rented(vast) == [] and vast.requests_to("PUT /api/v0/asks") == []


def test_gpu_is_required_and_checked_before_anything_is_rented(vast, ferry):
    err = failed(ferry("launch", "--provider", "vast"), code=2)
    assert "--gpu" in err
    err = failed(ferry("launch", "--provider", "vast", "--gpu", "TPUv9"), code=2)
    assert "RTX4090" in err, "the known aliases are listed"
    err = failed(ferry("launch", "--provider", "vast", "--gpu", "A10G"), code=2)
    assert "vast does not offer A10G" in err
    assert vast.requests_to("PUT /api/v0/asks") == []
