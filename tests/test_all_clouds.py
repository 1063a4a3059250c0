"""All four fake clouds at once: one offers table, one `ls --all`, and --provider auto.

Each cloud is its real SDK (runpod, vastai, requests, boto3) against its fake
server on 127.0.0.1, every instance a real loopback sshd.
"""

from __future__ import annotations

import json

import pytest

from .contract_harness import configure_runpod, configure_thunder, configure_vast
from .test_provider_ec2 import ec2  # noqa: F401  (the moto-backed EC2 fixture, with its ssh_config)


@pytest.fixture
def clouds(ec2, fake_runpod, fake_vast, fake_thunder, home, monkeypatch):  # noqa: F811
    configure_runpod(fake_runpod, home, monkeypatch)
    configure_vast(fake_vast, home, monkeypatch)
    configure_thunder(fake_thunder, home, monkeypatch)
    return {"runpod": fake_runpod, "vast": fake_vast, "thunder": fake_thunder, "ec2": ec2}


def test_offers_span_all_four_clouds_cheapest_first(clouds, ferry):
    everything = json.loads(ferry.ok("offers", "--json").stdout)
    assert {o["provider"] for o in everything} == {"runpod", "vast", "thunder", "ec2"}
    prices = [o["cost_per_hour"] for o in everything]
    assert prices == sorted(prices)
    assert not any(o["spot"] for o in everything)

    h100 = json.loads(ferry.ok("offers", "--gpu", "H100", "--gpus", "8", "--json").stdout)
    assert {o["provider"] for o in h100} >= {"vast", "ec2"}
    assert all(o["gpu_count"] == 8 for o in h100)
    table = ferry.ok("offers", "--gpu", "H100", "--gpus", "8").stdout
    assert table.splitlines()[0].split() == ["PROVIDER", "GPU", "COUNT", "$/H", "KIND", "REGION"]


def test_ls_all_shows_every_cloud_with_cost_so_far(clouds, ferry):
    launches = {
        "runpod": ("--gpu", "RTX4090"),
        "vast": ("--gpu", "RTX4090"),
        "thunder": ("--gpu", "A100"),
        "ec2": ("--gpu", "A10G"),
    }
    for provider, flags in launches.items():
        ferry.ok("launch", "--provider", provider, "--name", f"on-{provider}", *flags)
    listed = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    by_name = {i["name"]: i for i in listed}
    for provider in launches:
        row = by_name[f"on-{provider}"]
        assert row["provider"] == provider and row["status"] == "RUNNING"
        assert row["cost_per_hour"] > 0 and row["cost_so_far"] >= 0 and row["ssh"]
    human = ferry.ok("ls", "--all").stdout
    assert all(f"on-{p}" in human for p in launches)
    for provider in launches:
        ferry.ok("terminate", "--name", f"on-{provider}", "--yes")
    left = [i for i in json.loads(ferry.ok("ls", "--all", "--json").stdout) if i["provider"] != "local"]
    assert left == []


def test_provider_auto_takes_the_cheapest_offer(clouds, ferry):
    cheapest = json.loads(ferry.ok("offers", "--gpu", "RTX4090", "--json").stdout)[0]
    made = json.loads(ferry.ok("launch", "--provider", "auto", "--gpu", "RTX4090", "--json").stdout)
    assert made["provider"] == cheapest["provider"]
    ferry.ok("terminate", "--yes")
