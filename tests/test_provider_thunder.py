"""Thunder Compute end to end: ferry's requests client against the fake /v1 API, a real loopback sshd per instance.

Every command goes through the real CLI (``python -m ferry``; ``modify`` and
``clone`` through ``inv`` with a project tasks.py that adds ferry's Thunder
tasks, the way a user's project would). Each fake instance's sshd
(``SshdPool``) gives its sessions their own HOME under the fake's directory,
so nothing lands in the real home directory, and every process started
through it is stopped by pid at teardown.
"""

from __future__ import annotations

import getpass
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from .conftest import assert_one_line_error

pytestmark = pytest.mark.timeout(60)

USER = getpass.getuser()


# -- fixtures ----------------------------------------------------------------------------
@pytest.fixture
def fake(fake_thunder, home, project, monkeypatch):
    monkeypatch.setenv("TNR_API_TOKEN", fake_thunder.api_key)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_THUNDER_API_URL", fake_thunder.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_THUNDER_SSH_USER", USER)
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


def assert_error(proc) -> str:
    """A failure after progress notes: exit 1, no traceback, and it ends in one error line (plus hint)."""
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
    assert len(errors) == 1 and all(l.startswith("hint: ") for l in lines[errors[0] + 1:]), proc.stderr
    return proc.stderr


def launch(cli, *extra, **kw):
    return cli.ok("launch", "--provider", "thunder", "--gpu", "A100", *extra, **kw)


def only_instance(fake) -> tuple[str, dict]:
    assert len(fake.instances) == 1, fake.instances
    return next(iter(fake.instances.items()))


def name_book(home: Path) -> dict:
    return json.loads((home / ".ferry" / "thunder" / "names.json").read_text())


def ferry_public_key(home: Path) -> str:
    return (home / ".ferry" / "keys" / "id_ed25519.pub").read_text().strip()


# -- the whole loop ------------------------------------------------------------------------
def test_whole_loop_launch_sync_run_download_stop_refused_terminate(fake, cli, project, home):
    (project / "train.py").write_text(
        "import os\nos.makedirs('results', exist_ok=True)\n"
        "open('results/metrics.json', 'w').write('{\"loss\": 0.5}')\nprint('trained on thunder')\n"
    )
    launched = launch(cli, "--disk", "150", "--debug")
    iid, inst = only_instance(fake)
    # What went on the wire: ferry's public key (no private key came back), GPU id, disk, settings.
    create = fake.requests_to("POST /instances/create")[0].body
    assert create == {"cpu_cores": 4, "gpu_type": "a100xl", "template": "base", "num_gpus": 1, "disk_size_gb": 150,
                      "mode": "prototyping", "public_key": ferry_public_key(home)}
    assert "proj is ready (thunder" in launched.stderr
    # Thunder names it tnr-N; ferry's name and labels live in the name book, written before launch returned.
    assert inst["name"] == f"tnr-{iid}"
    entry = name_book(home)["instances"][iid]
    assert (entry["name"], entry["labels"], entry["uuid"]) == ("proj", {"ferry-project": "proj"}, inst["uuid"])

    proc = cli.ok("sync", "run", f"{sys.executable} train.py", "download")
    assert "trained on thunder" in proc.stdout
    assert json.loads((project / "results" / "metrics.json").read_text()) == {"loss": 0.5}
    # The workdir is the remote home (Thunder has no /workspace), here the fake instance's own HOME.
    status = json.loads(cli.ok("status", "--json").stdout)
    assert status["remote_home"] == str(fake.endpoint(iid).directory / "home")
    assert (Path(status["remote_home"]) / "proj" / "results" / "metrics.json").exists()

    # A 429 on the next API call is retried; status reads the live instance.
    fake.fail_next(429, match="GET /instances/list", headers={"Retry-After": "0"})
    status = json.loads(cli.ok("status", "--json").stdout)
    assert (status["status"], status["gpu"], status["gpu_count"]) == ("RUNNING", "A100", 1)
    assert status["cost_per_hour"] == pytest.approx(0.78 + 50 * 0.00013)  # a100xl x1 + 50 GB over the included 100

    # No stop on Thunder: a clean error that names terminate; the instance keeps running.
    stderr = assert_one_line_error(cli("stop"))
    assert "thunder instances cannot be stopped" in stderr and "terminate" in stderr
    assert not fake.requests_to("/down") and fake.endpoint(iid) is not None

    cli.ok("terminate", "--yes", "--debug")
    assert fake.instances == {}
    assert name_book(home)["instances"] == {}
    # The token went on the wire, in the Authorization header, and nowhere in what ferry printed.
    assert {r.authorization for r in fake.requests} == {f"Bearer {fake.api_key}"}
    assert all(fake.api_key not in text for text in cli.printed)


def test_two_500s_on_create_then_success_makes_one_instance(fake, cli):
    fake.fail_next(500, times=2, match="POST /instances/create")
    launch(cli)
    only_instance(fake)
    assert len(fake.requests_to("POST /instances/create")) == 3
    cli.ok("run", "true")
    cli.ok("terminate", "--yes")
    assert fake.instances == {}


@pytest.mark.parametrize("how", ["error", "drop"])
def test_lost_create_response_finds_the_instance_instead_of_a_second(fake, cli, home, fake_dir, how):
    # Someone else's instance with the same GPU, made just before: it must not be mistaken for ours.
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


def test_instance_that_never_gets_ssh_is_terminated_after_the_launch_timeout(fake, cli, home, project):
    fake.never_ready = True
    stderr = assert_error(launch_raw(cli, "--launch-timeout", "2"))
    assert "did not become reachable within 2s" in stderr
    assert "terminated proj (0) because launch failed" in stderr
    assert fake.instances == {}
    assert len(fake.requests_to("/delete")) == 1
    assert name_book(home)["instances"] == {}
    assert not (project / ".ferry" / "state.json").exists() or "proj" not in (project / ".ferry" / "state.json").read_text()


def launch_raw(cli, *extra):
    return cli("launch", "--provider", "thunder", "--gpu", "A100", *extra)


def test_changed_host_key_on_the_same_address_is_refused_with_the_fix(fake, cli, project):
    launch(cli)
    iid, _ = only_instance(fake)
    cli.ok("run", "true")
    endpoint = fake.endpoint(iid)
    port = endpoint.port
    # Same address, new machine: a new host key behind the same port.
    fake.pool.stop(endpoint)
    for suffix in ("", ".pub"):
        Path(f"{endpoint.sshd.host_key_path}{suffix}").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(endpoint.sshd.host_key_path)], check=True)
    fake.pool.start(endpoint)
    assert endpoint.port == port
    import ferry

    ferry.box().remote.close()  # no shared connection to the old sshd hides it
    stderr = assert_one_line_error(cli("run", "true"))
    assert "host key of proj" in stderr and f"[127.0.0.1]:{port}" in stderr
    assert "ssh-keygen -R" in stderr


# -- modify and clone ----------------------------------------------------------------------
def test_modify_refuses_to_shrink_the_disk_and_grows_it(fake, cli):
    launch(cli, "--disk", "150")
    iid, _ = only_instance(fake)
    stderr = assert_one_line_error(cli.inv("modify", "--disk", "120", ok=False))
    assert "only grow" in stderr and "150 GB" in stderr
    assert fake.requests_to("/modify") == []  # refused before the API was asked

    fake.set_delay_until_ready(0.6)  # the instance reads MODIFYING for a while: ferry waits for it
    proc = cli.inv("modify", "--disk", "200", "--cpu", "8", "--gpu-count", "2", "--json")
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
    proc = cli.inv("clone", "--to", "proj-big", "--gpu-count", "2")
    assert "proj-big is ready" in proc.stderr
    assert len(fake.instances) == 2
    (clone_id,) = [i for i in fake.instances if i != source_id]
    clone = fake.instances[clone_id]
    assert (clone["gpuType"], clone["numGpus"], clone["storage"], clone["cpuCores"], clone["mode"]) == (
        "a100xl", "2", 150, "8", "production")
    entry = name_book(home)["instances"][clone_id]
    assert entry["name"] == "proj-big"
    assert entry["labels"] == {"ferry-project": "proj", "ferry-clone-of": "proj"}
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
