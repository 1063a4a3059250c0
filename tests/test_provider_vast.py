"""What only vast.ai does: the real ``vastai`` SDK against FakeVast, a real loopback sshd behind each instance.

The loop, idempotency, lost creates, host keys, timeouts, retries and GPU
checks are the contract every provider keeps (tests/test_contract.py); here
are vast's offer choice, bids and its key errors. ferry runs as the real
CLI; it finds the fake through INVOKE_FERRY_PROVIDERS_VAST_API_URL and its
key through VAST_API_KEY, as a user's shell would provide them.
"""

from __future__ import annotations

import json

import pytest

from .conftest import ferry_labels
from .contract_harness import VAST_KEY as KEY
from .contract_harness import configure_vast, failed


@pytest.fixture
def vast(fake_vast, home, project, monkeypatch):
    configure_vast(fake_vast, home, monkeypatch)
    return fake_vast


LAUNCH = ("launch", "--provider", "vast", "--gpu", "RTX4090")


def rented(fake) -> list[int]:
    return sorted(fake.instances)


def test_launch_rents_the_cheapest_reliable_offer_and_terminate_gives_it_back(vast, ferry):
    ferry.ok(*LAUNCH)
    [iid] = rented(vast)
    row = vast.instances[iid]
    assert row["label"] == "proj" and row["gpu_name"] == "RTX 4090"
    assert row["dph_total"] == 0.35, "the cheapest reliable verified on-demand offer"
    assert not row["is_bid"]
    assert json.loads(dict(row["extra_env"])["FERRY_LABELS"]) == ferry_labels()
    ferry.ok("terminate", "--yes")
    assert rented(vast) == [] and not vast.offers[50001]["rented"]


def test_a_refused_key_and_a_refused_request_never_print_the_key(vast, ferry, project):
    wrong_key = ferry("--debug", "launch", "--provider", "vast", "--gpu", "RTX4090", "--name", "other",
                      env={"VAST_API_KEY": KEY + "-wrong"})
    assert wrong_key.returncode == 1 and "refused the API key" in wrong_key.stderr
    vast.fail_next(400, match="POST /api/v0/bundles")
    refused = ferry("--debug", "launch", "--provider", "vast", "--gpu", "RTX4090", "--name", "third")
    assert refused.returncode == 1 and "injected fault" in refused.stderr
    everything = "".join(p.stdout + p.stderr for p in (wrong_key, refused))
    assert KEY not in everything
    state = project / ".ferry" / "state.json"
    assert not state.exists() or KEY not in state.read_text()
    assert {r.authorization for r in vast.requests} == {f"Bearer {KEY}", f"Bearer {KEY}-wrong"}
    assert 1 <= len([r for r in vast.requests if r.authorization == f"Bearer {KEY}-wrong"]) <= 2
    assert rented(vast) == []


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
