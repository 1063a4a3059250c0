"""What only Thunder Compute does: ferry's requests client against the fake /v1 API, a real loopback sshd per instance.

The loop, idempotency, lost creates, host keys, timeouts, retries and GPU
checks are the contract every provider keeps (tests/test_contract.py); here
are Thunder's create body and price, its name book, modify and clone.
Every command goes through the real CLI (``python -m ferry``; ``modify`` and
``clone`` through ``inv`` with a project tasks.py that adds ferry's Thunder
tasks, the way a user's project would). Each fake instance's sshd
(``SshdPool``) gives its sessions their own HOME under the fake's directory,
so nothing lands in the real home directory, and every process started
through it is stopped by pid at teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .conftest import assert_one_line_error, ferry_labels
from .contract_harness import USER, configure_thunder, failed

pytestmark = pytest.mark.timeout(60)


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def fake(fake_thunder, home, project, monkeypatch):
    configure_thunder(fake_thunder, home, monkeypatch)
    return fake_thunder


class Recorder:
    """The CLI, remembering every byte it printed (for the secret check)."""

    def __init__(self, ferry, project: Path):
        self.ferry, self.project, self.printed = ferry, project, []

    def __call__(self, *args, **kw):
        proc = self.ferry(*args, **kw)
        self.printed.append(proc.stdout + proc.stderr)
        return proc

    def ok(self, *args, **kw):
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"ferry {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc

    def inv(self, *args, ok=True):
        """``inv`` in the project, whose tasks.py adds ferry's Thunder tasks to ferry's collection."""
        tasks = self.project / "tasks.py"
        if not tasks.exists():
            tasks.write_text(
                "from ferry.tasks import ns\n"
            )
        proc = subprocess.run([sys.executable, "-m", "invoke", *args], cwd=self.project, capture_output=True,
                              text=True, timeout=90, env=os.environ.copy())
        self.printed.append(proc.stdout + proc.stderr)
        if ok:
            assert proc.returncode == 0, f"inv {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture
def cli(ferry, project):
    return Recorder(ferry, project)


def launch(cli, *extra, **kw):
    return cli.ok("launch", "--provider", "thunder", "--gpu", "A100", *extra, **kw)


def only_instance(fake) -> tuple[str, dict]:
    assert len(fake.instances) == 1, fake.instances
    return next(iter(fake.instances.items()))


def name_book(home: Path) -> dict:
    return json.loads((home / ".ferry" / "thunder" / "names.json").read_text())


def ferry_public_key(home: Path) -> str:
    return (home / ".ferry" / "keys" / "id_ed25519.pub").read_text().strip()


# -- what Thunder is sent, and what ferry keeps of it ----------------------------------------------
def test_create_body_name_book_and_price(fake, cli, home):
    launch(cli, "--disk", "150")
    iid, inst = only_instance(fake)
    # What went on the wire: ferry's public key (no private key came back), GPU id, disk, settings.
    create = fake.requests_to("POST /instances/create")[0].body
    assert create == {"cpu_cores": 4, "gpu_type": "a100xl", "template": "base", "num_gpus": 1, "disk_size_gb": 150,
                      "mode": "prototyping", "public_key": ferry_public_key(home)}
    # Thunder names it tnr-N; ferry's name and labels live in the name book, written before launch returned.
    assert inst["name"] == f"tnr-{iid}"
    entry = name_book(home)["instances"][iid]
    assert (entry["name"], entry["labels"], entry["uuid"]) == ("proj", ferry_labels(), inst["uuid"])

    # A 429 on the next API call is retried; status reads the live instance.
    fake.fail_next(429, match="GET /instances/list", headers={"Retry-After": "0"})
    status = json.loads(cli.ok("status", "--json").stdout)
    assert (status["status"], status["gpu"], status["gpu_count"]) == ("RUNNING", "A100", 1)
    assert status["cost_per_hour"] == pytest.approx(0.78 + 50 * 0.00013)  # a100xl x1 + 50 GB over the included 100

    cli.ok("terminate", "--yes")
    assert fake.instances == {} and name_book(home)["instances"] == {}


def test_an_instance_cleaned_up_after_a_failed_launch_leaves_the_name_book(fake, cli, home):
    fake.never_ready = True
    failed(cli("launch", "--provider", "thunder", "--gpu", "A100", "--launch-timeout", "1"))
    assert fake.instances == {} and name_book(home)["instances"] == {}


@pytest.mark.parametrize("how", ["error", "drop"])
def test_a_lost_create_is_found_without_taking_another_instance_for_it(fake, cli, home, fake_dir, how):
    # Thunder names nothing after ferry: the name book matches the lost create by GPU and key. Someone else's
    # instance with the same GPU, made just before, must not be mistaken for ours.
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(fake_dir / "other")], check=True)
    other = requests.post(fake.base_url + "/v1/instances/create", timeout=10,
                          headers={"Authorization": f"Bearer {fake.api_key}"},
                          json={"cpu_cores": 4, "gpu_type": "a100xl", "template": "base", "num_gpus": 1,
                                "disk_size_gb": 100, "mode": "prototyping",
                                "public_key": (fake_dir / "other.pub").read_text()}).json()["identifier"]
    fake.clear_requests()
    fake.lose_next_create_response(how)
    launch(cli)
    assert len(fake.requests_to("POST /instances/create")) == 1  # found by name, never created twice
    assert len(fake.instances) == 2
    ours = [i for i in fake.instances if i != str(other)]
    book = name_book(home)
    assert book["pending"] == {} and book["instances"][ours[0]]["name"] == "proj"
    assert str(other) not in book["instances"]
    assert json.loads(cli.ok("status", "--json").stdout)["id"] == ours[0]
    cli.ok("terminate", "--yes")
    assert list(fake.instances) == [str(other)]


# -- modify and clone ----------------------------------------------------------------------
def test_modify_refuses_to_shrink_the_disk_and_grows_it(fake, cli):
    launch(cli, "--disk", "150")
    iid, _ = only_instance(fake)
    stderr = assert_one_line_error(cli.inv("modify", "--disk", "120", ok=False))
    assert "only grow" in stderr and "150 GB" in stderr
    assert fake.requests_to("/modify") == []  # refused before the API was asked

    fake.set_delay_until_ready(0.6)  # the instance reads MODIFYING for a while: ferry waits for it
    proc = cli.inv("modify", "--disk", "200", "--cpu", "8", "--gpus", "2", "--json")
    assert json.loads(fake.requests_to("/modify")[0].raw) == {"disk_size_gb": 200, "cpu_cores": 8, "num_gpus": 2}
    _, inst = only_instance(fake)
    assert (inst["storage"], inst["cpuCores"], inst["numGpus"]) == (200, "8", "2")
    shown = json.loads(proc.stdout)
    assert (shown["status"], shown["gpu_count"], shown["raw"]["disk_gb"]) == ("RUNNING", 2, 200)
    cli.ok("run", "true")
    cli.ok("terminate", "--yes")


def test_clone_makes_a_second_instance_with_the_override(fake, cli, home, project):
    # The source differs from the defaults in every setting a clone copies.
    launch(cli, "--disk", "150",
           env={"INVOKE_FERRY_PROVIDERS_THUNDER_CPU_CORES": "8", "INVOKE_FERRY_PROVIDERS_THUNDER_MODE": "production"})
    source_id, _ = only_instance(fake)
    proc = cli.inv("clone", "--to", "proj-big", "--gpus", "2")
    assert "proj-big is ready" in proc.stderr
    assert len(fake.instances) == 2
    (clone_id,) = [i for i in fake.instances if i != source_id]
    clone = fake.instances[clone_id]
    assert (clone["gpuType"], clone["numGpus"], clone["storage"], clone["cpuCores"], clone["mode"]) == (
        "a100xl", "2", 150, "8", "production")
    entry = name_book(home)["instances"][clone_id]
    assert entry["name"] == "proj-big"
    assert entry["labels"] == ferry_labels(**{"ferry-clone-of": "proj"})
    state = json.loads((project / ".ferry" / "state.json").read_text())
    assert state["current"] == "proj" and set(state["instances"]) == {"proj", "proj-big"}
    assert cli.ok("run", "--name", "proj-big", "echo cloned").stdout == "cloned\n"
    cli.ok("terminate", "--name", "proj-big", "--yes")
    cli.ok("terminate", "--yes")
    assert fake.instances == {}


# -- catalogue -----------------------------------------------------------------------------
def test_offers_price_the_configured_mode_cpu_and_disk(fake):
    from ferry.errors import UsageError
    from ferry.providers.base import ProviderConfig
    from ferry.providers.thunder import ThunderProvider

    def provider(**settings):
        base = {"api_url": fake.base_url, "mode": "prototyping", "cpu_cores": 4, "disk": 100}
        return ThunderProvider(ProviderConfig("thunder", {**base, **settings}, api_key=lambda: fake.api_key))

    (offer,) = provider().offers("A100", 1)
    assert (offer.provider, offer.gpu, offer.gpu_count, offer.spot, offer.id) == ("thunder", "A100", 1, False, "a100xl_x1_prototyping")
    assert offer.cost_per_hour == pytest.approx(0.78)
    (big,) = provider(mode="production", cpu_cores=8, disk=300).offers("H100", 2)
    assert big.cost_per_hour == pytest.approx(2.49 * 2 + 4 * 0.0015 + 200 * 0.00013)
    assert {o.gpu for o in provider().offers(None, 1)} >= {"A100", "H100", "T4"}
    with pytest.raises(UsageError, match="thunder does not offer RTX4090"):
        provider().offers("RTX4090", 1)


def test_client_errors_keys_and_idempotent_terminate(fake, home):
    from ferry.errors import ConfigError, ProviderError
    from ferry.providers.base import ProviderConfig
    from ferry.providers.thunder import ThunderProvider
    from ferry.providers.thunder.api import ThunderAPI

    # Without a public key Thunder hands out a private key once (test_fakes proves the fake does too):
    # the client never passes it on.
    made = ThunderAPI(fake.base_url, lambda: fake.api_key).create(
        {"cpu_cores": 4, "gpu_type": "t4", "template": "base", "num_gpus": 1, "disk_size_gb": 100, "mode": "prototyping"})
    assert set(made) == {"uuid", "identifier"} and "PRIVATE KEY" not in json.dumps(made)

    with pytest.raises(ConfigError, match="rejected the API token") as info:
        ThunderAPI(fake.base_url, lambda: "tnr-wrong-secret").list()
    assert "tnr-wrong-secret" not in str(info.value) + str(info.value.hint)
    with pytest.raises(ProviderError, match="invalid configuration"):
        ThunderAPI(fake.base_url, lambda: fake.api_key).create({"gpu_type": "imaginary", "num_gpus": 1})

    cloud = ThunderProvider(ProviderConfig("thunder", {"api_url": fake.base_url}, api_key=lambda: fake.api_key))
    # Not ferry's (no name-book entry): listed under Thunder's own name, without labels.
    (listed,) = cloud.list()
    assert (listed.name, listed.labels, listed.ssh.user) == (f"tnr-{made['identifier']}", {}, "ubuntu")
    cloud.terminate(made["identifier"])
    cloud.terminate(made["identifier"])  # gone already: still fine
    assert fake.instances == {} and cloud.get(made["identifier"]) is None


def test_name_book_guesses_give_way_to_the_create_answer(fake, home):
    """Two creates in flight with the same GPU, one answer lost: every name ends on its own instance."""
    from ferry.records import InstanceSpec
    from ferry.providers.base import ProviderConfig
    from ferry.providers.thunder import ThunderProvider

    cloud = ThunderProvider(ProviderConfig("thunder", {"api_url": fake.base_url, "ssh_user": USER},
                                           api_key=lambda: fake.api_key))
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHtestkeytestkeytestkeytestkeytestkeytestkey1 t"
    spec_a = InstanceSpec(name="a", provider="thunder", gpu="T4", gpu_count=1, public_key=key, labels={"x": "a"})
    spec_b = InstanceSpec(name="b", provider="thunder", gpu="T4", gpu_count=1, public_key=key, labels={"x": "b"})
    body = cloud.create_body(spec_a)
    # a's create was performed but its answer lost; b's create is performed, its answer not processed yet.
    cloud.book.note_pending("a", spec_a.labels, body["gpu_type"], body["num_gpus"], key.split()[1])
    lost_a = cloud.api.create(body)["identifier"]
    cloud.book.note_pending("b", spec_b.labels, body["gpu_type"], body["num_gpus"], key.split()[1])
    made_b = cloud.api.create(body)
    # A listing now can only guess: both pending creates match both instances.
    assert sorted(i.name for i in cloud.list()) == ["a", "b"]
    # b's answer arrives: it is the truth, and a's guess is redone from what is left.
    cloud.book.record(made_b["identifier"], made_b["uuid"], "b", spec_b.labels)
    names = {i.id: (i.name, i.labels) for i in cloud.list()}
    assert names == {lost_a: ("a", {"x": "a"}), made_b["identifier"]: ("b", {"x": "b"})}
    assert name_book(home)["pending"] == {}
    for iid in names:
        cloud.terminate(iid)
