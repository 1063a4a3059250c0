"""The fake clouds, driven by each provider's real SDK (PROVIDERS.md §0 shows the redirects).

Each test proves: create -> the instance's sshd accepts a login with the key given at
create -> stop/start where the provider has it -> terminate removes it; and the fault knobs
(429, 500s, a lost create response, never-ready, ready delay) and the Authorization header.
Nothing leaves 127.0.0.1.
"""

from __future__ import annotations

import getpass
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import ferry  # noqa: E402
from ferry.sshd import pid_alive  # noqa: E402
from tests.fakes import SshdPool  # noqa: E402
from tests.fakes.fixtures import *  # noqa: E402,F401,F403

pytestmark = pytest.mark.timeout(60)

USER = getpass.getuser()


# -- helpers ---------------------------------------------------------------------
def make_key(directory: Path, name: str = "id") -> tuple[str, str]:
    path = directory / name
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", name, "-f", str(path)],
                   check=True, stdin=subprocess.DEVNULL)
    return str(path), path.with_suffix(".pub").read_text().strip()


def ssh_run(key: str, port: int | None = None, command: str = "true", *, host: str = "127.0.0.1",
            config: str = "/dev/null", input: str = "") -> subprocess.CompletedProcess:
    """``ssh -i key ... -p PORT user@127.0.0.1 COMMAND``, ``input`` on its stdin."""
    argv = ["ssh", "-F", config, "-i", key, "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=5", "-o", "LogLevel=ERROR"]
    if port is not None:
        argv += ["-p", str(port)]
    target = f"{USER}@{host}" if config == "/dev/null" else host
    return subprocess.run(argv + [target, command], input=input, capture_output=True, text=True, timeout=30)


def ssh_ok(key: str, port: int | None = None, host: str = "127.0.0.1", config: str = "/dev/null") -> bool:
    """The exact login the brief asks for: ``ssh -i key ... -p PORT user@127.0.0.1 true``."""
    return ssh_run(key, port, host=host, config=config).returncode == 0


@pytest.fixture
def key(fake_dir):
    return make_key(fake_dir)


def wait_for(predicate, timeout: float = 10, interval: float = 0.05):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


# -- the sshd pool -------------------------------------------------------------------
def test_sshd_pool_create_stop_start_keeps_port(sshd_pool: SshdPool, key):
    private, public = key
    endpoint = sshd_pool.create(public)
    assert (endpoint.host, endpoint.user) == ("127.0.0.1", USER)
    assert ssh_ok(private, endpoint.port)
    port = endpoint.port
    sshd_pool.stop(endpoint)
    assert not endpoint.running()
    assert not ssh_ok(private, port)
    sshd_pool.start(endpoint)
    assert endpoint.port == port
    assert ssh_ok(private, endpoint.port)
    pid = endpoint.sshd.pid()
    sshd_pool.stop_all()
    assert sshd_pool.running_pids() == [] and not pid_alive(pid)


def test_sshd_pool_other_key_refused(sshd_pool: SshdPool, fake_dir):
    good, good_pub = make_key(fake_dir, "good")
    bad, _ = make_key(fake_dir, "bad")
    endpoint = sshd_pool.create(good_pub)
    assert not ssh_ok(bad, endpoint.port)
    sshd_pool.add_key(endpoint, Path(bad + ".pub").read_text())
    assert ssh_ok(bad, endpoint.port)


def test_sshd_pool_instance_is_a_machine_of_its_own(sshd_pool: SshdPool, fake_dir):
    """Own HOME (also after a key change and restart), uv already there so bootstrap never
    downloads it, and stop ends what its sessions left running, by pid."""
    first, first_pub = make_key(fake_dir, "first")
    second, second_pub = make_key(fake_dir, "second")
    endpoint = sshd_pool.create(first_pub)
    sshd_pool.add_key(endpoint, second_pub)
    sshd_pool.stop(endpoint)
    sshd_pool.start(endpoint)
    # bootstrap.sh as launch runs it, with a curl first on PATH that only leaves a trace.
    shim = ('mkdir -p "$HOME/shim" && printf \'#!/bin/sh\\ntouch "$HOME/curl-ran"\\n\' > "$HOME/shim/curl"'
            ' && chmod +x "$HOME/shim/curl"')
    command = (f'{shim} && PATH="$HOME/shim:$PATH" sh -s; "$HOME/.local/bin/uv" --version;'
               " setsid sleep 300 </dev/null >/dev/null 2>&1 & echo pid=$!")
    bootstrap = (Path(ferry.__file__).parent / "remote_scripts" / "bootstrap.sh").read_text()
    proc = ssh_run(second, endpoint.port, command, input=bootstrap)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert f"home={endpoint.home}" in lines and "ok=1" in lines
    assert f"uv={endpoint.home}/.local/bin/uv" in lines and any(l.startswith("uv 0.") for l in lines)
    assert (endpoint.home / "shim" / "curl").exists() and not (endpoint.home / "curl-ran").exists()
    (pid,) = [int(l[4:]) for l in lines if l.startswith("pid=")]
    assert pid_alive(pid), "a detached process outlives its session, as a tmux server does"
    sshd_pool.stop(endpoint)
    assert not pid_alive(pid), "powered off with the instance"


# -- RunPod ------------------------------------------------------------------------------
@pytest.fixture
def runpod_sdk(fake_runpod, monkeypatch):
    runpod = pytest.importorskip("runpod")
    monkeypatch.setattr(runpod, "api_key", fake_runpod.api_key)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.base_url)
    return runpod


def ssh_port_of_pod(pod):
    runtime = pod and pod.get("runtime")
    if not runtime:
        return None
    for entry in runtime["ports"]:
        if entry["privatePort"] == 22 and entry["isIpPublic"] and entry["type"] == "tcp":
            assert entry["ip"] == "127.0.0.1"
            return entry["publicPort"]
    return None


def create_pod(runpod, public, name="job"):
    return runpod.create_pod(name, "runpod/pytorch:2.4", "NVIDIA GeForce RTX 4090", cloud_type="SECURE",
                             ports="22/tcp,8888/http", container_disk_in_gb=20, volume_mount_path="/workspace",
                             env={"PUBLIC_KEY": public})


def test_runpod_lifecycle(runpod_sdk, fake_runpod, key):
    runpod = runpod_sdk
    private, public = key
    pod = create_pod(runpod, public)
    pod_id = pod["id"]
    got = runpod.get_pod(pod_id)
    assert got["desiredStatus"] == "RUNNING" and got["costPerHr"] == pytest.approx(0.69)
    port = ssh_port_of_pod(got)
    assert ssh_ok(private, port)

    assert runpod.stop_pod(pod_id)["desiredStatus"] == "EXITED"
    stopped = runpod.get_pod(pod_id)
    assert stopped["desiredStatus"] == "EXITED" and stopped["runtime"] is None
    assert not ssh_ok(private, port)

    assert runpod.resume_pod(pod_id, 1)["desiredStatus"] == "RUNNING"
    resumed = runpod.get_pod(pod_id)
    assert ssh_port_of_pod(resumed) == port  # same endpoint after stop/start
    assert ssh_ok(private, port)

    assert [p["id"] for p in runpod.get_pods()] == [pod_id]
    runpod.terminate_pod(pod_id)
    assert runpod.get_pod(pod_id) is None
    assert runpod.get_pods() == []
    assert not ssh_ok(private, port)

    # create_pod checks the GPU first, then deploys; every call carries the key.
    routes = [r.route for r in fake_runpod.requests]
    assert routes[:2] == ["POST /graphql gpuTypes", "POST /graphql podFindAndDeployOnDemand"]
    assert {r.authorization for r in fake_runpod.requests} == {f"Bearer {fake_runpod.api_key}"}


def test_runpod_catalogue_account_key_and_spot(runpod_sdk, fake_runpod, fake_dir):
    runpod = runpod_sdk
    from runpod.api.graphql import run_graphql_query

    gpu = runpod.get_gpu("NVIDIA GeForce RTX 4090", 2)
    assert gpu["securePrice"] > gpu["communityPrice"] > 0
    assert gpu["lowestPrice"]["minimumBidPrice"] > 0
    assert len(runpod.get_gpus()) >= 3
    with pytest.raises(ValueError):
        runpod.get_gpu("NVIDIA Imaginary 9000")

    private, public = make_key(fake_dir, "acct")
    assert runpod.update_user_settings(public)["pubKey"] == public
    query = ('mutation { podRentInterruptable(input:{bidPerGpu: 0.25, cloudType: SECURE, gpuCount: 1, '
             'gpuTypeId: "NVIDIA GeForce RTX 4090", name: "spot", imageName: "img", ports: "22/tcp", '
             'containerDiskInGb: 20, env:[{ key: "A", value: "1" }]}) { id costPerHr } }')
    pod = run_graphql_query(query)["data"]["podRentInterruptable"]
    assert pod["costPerHr"] == pytest.approx(0.25)
    got = runpod.get_pod(pod["id"])
    assert got["podType"] == "INTERRUPTABLE"
    port = ssh_port_of_pod(got)
    assert ssh_ok(private, port)  # the account key reached the pod

    fake_runpod.preempt(pod["id"])
    assert runpod.get_pod(pod["id"])["desiredStatus"] == "EXITED"
    resume = (f'mutation {{ podBidResume(input: {{podId: "{pod["id"]}", bidPerGpu: 0.3, gpuCount: 1}}) '
              '{ id desiredStatus } }')
    assert run_graphql_query(resume)["data"]["podBidResume"]["desiredStatus"] == "RUNNING"
    assert ssh_port_of_pod(runpod.get_pod(pod["id"])) == port
    low = query.replace("bidPerGpu: 0.25", "bidPerGpu: 0.01")
    with pytest.raises(runpod.error.QueryError):
        run_graphql_query(low)


def test_runpod_auth_and_faults(runpod_sdk, fake_runpod, key, monkeypatch):
    runpod = runpod_sdk
    private, public = key
    monkeypatch.setattr(runpod, "api_key", "wrong")
    with pytest.raises(runpod.error.AuthenticationError):
        runpod.get_pods()
    assert fake_runpod.requests[-1].authorization == "Bearer wrong"
    monkeypatch.setattr(runpod, "api_key", fake_runpod.api_key)

    fake_runpod.fail_next(429)
    with pytest.raises(runpod.error.QueryError):
        runpod.get_pods()
    assert runpod.get_pods() == []

    fake_runpod.fail_next(500, times=2, match="podFindAndDeployOnDemand")
    for _ in range(2):
        with pytest.raises(runpod.error.QueryError):
            create_pod(runpod, public)
    assert runpod.get_pods() == []  # failed creates created nothing
    create_pod(runpod, public, name="third-time")
    assert [p["name"] for p in runpod.get_pods()] == ["third-time"]

    # The create happens but its answer is lost: a retrying client finds the pod by name.
    fake_runpod.lose_next_create_response()
    with pytest.raises(Exception):
        create_pod(runpod, public, name="lost")
    lost = [p for p in runpod.get_pods() if p["name"] == "lost"]
    assert len(lost) == 1 and ssh_ok(private, ssh_port_of_pod(lost[0]))

    fake_runpod.unavailable_gpus.add("NVIDIA GeForce RTX 4090")
    with pytest.raises(runpod.error.QueryError, match="no longer any instances available"):
        create_pod(runpod, public, name="full")


def test_runpod_never_ready_and_delay(runpod_sdk, fake_runpod, key):
    runpod = runpod_sdk
    private, public = key
    fake_runpod.never_ready = True
    stuck = create_pod(runpod, public, name="stuck")
    fake_runpod.never_ready = False
    assert runpod.get_pod(stuck["id"])["runtime"] is None
    assert fake_runpod.endpoint(stuck["id"]) is None

    fake_runpod.set_delay_until_ready(0.4)
    slow = create_pod(runpod, public, name="slow")
    assert runpod.get_pod(slow["id"])["runtime"] is None
    port = wait_for(lambda: ssh_port_of_pod(runpod.get_pod(slow["id"])), timeout=5)
    assert ssh_ok(private, port)
    assert runpod.get_pod(stuck["id"])["runtime"] is None
    fake_runpod.set_never_ready(stuck["id"], False)
    assert ssh_ok(private, ssh_port_of_pod(runpod.get_pod(stuck["id"])))


# -- vast.ai -------------------------------------------------------------------------------
@pytest.fixture
def vast(fake_vast, fake_dir, monkeypatch):
    # vastai reads VAST_URL at import and keeps caches under HOME: both point at test-only places.
    monkeypatch.setenv("HOME", str(fake_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(fake_dir / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(fake_dir / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(fake_dir / ".state"))
    monkeypatch.setenv("VAST_URL", fake_vast.base_url)
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    vastai = pytest.importorskip("vastai")
    return vastai.VastAI(api_key=fake_vast.api_key, server_url=fake_vast.base_url, retry=1)


def vast_ssh_ports(row) -> tuple[int | None, int | None]:
    """(direct port from public_ipaddr+ports, proxy-style ssh_port)."""
    direct = None
    mapping = (row.get("ports") or {}).get("22/tcp")
    if mapping and row.get("public_ipaddr") == "127.0.0.1":
        direct = int(mapping[0]["HostPort"])
    return direct, row.get("ssh_port")


def test_vast_lifecycle(vast, fake_vast, fake_dir):
    private, public = make_key(fake_dir, "acct")
    offers = vast.search_offers(query="gpu_name=RTX_4090 num_gpus=1 reliability>0.98", order="dph_total", limit=5)
    assert [o["dph_total"] for o in offers] == sorted(o["dph_total"] for o in offers) and offers
    assert all(o["gpu_name"] == "RTX 4090" and o["num_gpus"] == 1 and o["reliability"] > 0.98 for o in offers)
    search = fake_vast.requests_to("/bundles/")[-1].body
    assert search["gpu_name"] == {"eq": "RTX 4090"} and search["num_gpus"] == {"eq": "1"}

    vast.create_ssh_key(public)  # account key: goes into instances created afterwards
    created = vast.create_instance(id=offers[0]["id"], image="pytorch/pytorch", disk=50, label="job-1",
                                   env={"FOO": "bar", "-p 8080:8080": "1"}, onstart_cmd="true",
                                   ssh=True, direct=True)
    assert created["success"] is True
    iid = created["new_contract"]
    row = vast.show_instance(iid)
    assert row["actual_status"] == "running" and row["label"] == "job-1"
    assert row["extra_env"] == {"FOO": "bar", "-p 8080:8080": "1"}
    direct, proxy = vast_ssh_ports(row)
    assert direct and proxy and vast.ssh_url(iid) == f"ssh://root@127.0.0.1:{proxy}"
    assert ssh_ok(private, direct) and ssh_ok(private, proxy)
    # The rented offer is no longer offered.
    assert offers[0]["id"] not in [o["id"] for o in vast.search_offers(query="gpu_name=RTX_4090")]

    vast.stop_instance(iid)
    row = vast.show_instance(iid)
    assert row["actual_status"] == "stopped" and row["intended_status"] == "stopped"
    assert vast_ssh_ports(row) == (None, None) and not ssh_ok(private, direct)
    vast.start_instance(iid)
    row = vast.show_instance(iid)
    assert row["actual_status"] == "running" and vast_ssh_ports(row) == (direct, proxy)
    assert ssh_ok(private, direct)

    second, second_pub = make_key(fake_dir, "second")
    assert not ssh_ok(second, direct)
    vast.attach_ssh(iid, second_pub)
    assert ssh_ok(second, direct)
    vast.label_instance(iid, "job-2")
    assert [(r["id"], r["label"]) for r in vast.show_instances()] == [(iid, "job-2")]

    vast.destroy_instance(iid)
    assert vast.show_instance(iid) is None
    assert vast.show_instances() == []
    assert not ssh_ok(private, direct)
    assert {r.authorization for r in fake_vast.requests} == {f"Bearer {fake_vast.api_key}"}


def test_vast_faults_and_auth(vast, fake_vast, fake_dir):
    import requests
    from vastai import VastAI

    private, public = make_key(fake_dir, "acct")
    vast.create_ssh_key(public)
    bad = VastAI(api_key="nope", server_url=fake_vast.base_url, retry=1)
    with pytest.raises(requests.HTTPError) as info:
        bad.show_instances()
    assert info.value.response.status_code == 401
    assert fake_vast.requests[-1].authorization == "Bearer nope"

    fake_vast.fail_next(429)
    with pytest.raises(requests.HTTPError) as info:
        vast.show_instances()
    assert info.value.response.status_code == 429
    assert vast.show_instances() == []

    offer = vast.search_offers(query="gpu_name=RTX_4090 num_gpus=1", order="dph_total")[0]["id"]
    fake_vast.fail_next(500, times=2, match="/asks/")
    for _ in range(2):
        with pytest.raises(requests.HTTPError):
            vast.create_instance(id=offer, image="img", label="job", ssh=True, direct=True)
    assert vast.show_instances() == []

    # Lost answer (dropped connection): the instance exists, found by its label.
    fake_vast.lose_next_create_response(how="drop")
    with pytest.raises(requests.ConnectionError):
        vast.create_instance(id=offer, image="img", label="job", ssh=True, direct=True)
    rows = [r for r in vast.show_instances() if r["label"] == "job"]
    assert len(rows) == 1
    assert ssh_ok(private, vast_ssh_ports(rows[0])[0])

    # Lost answer (500): same.
    other = vast.search_offers(query="gpu_name=RTX_3090")[0]["id"]
    fake_vast.lose_next_create_response(how="error")
    with pytest.raises(requests.HTTPError):
        vast.create_instance(id=other, image="img", label="job-b", ssh=True, direct=True)
    assert [r["label"] for r in vast.show_instances()].count("job-b") == 1


def test_vast_readiness_paging_and_bid(vast, fake_vast, fake_dir):
    private, public = make_key(fake_dir, "acct")
    vast.create_ssh_key(public)
    fake_vast.set_delay_until_ready(0.6)
    offers = vast.search_offers(query="gpu_name=RTX_4090", order="dph_total")
    iid = vast.create_instance(id=offers[0]["id"], image="img", label="slow", ssh=True, direct=True)["new_contract"]
    statuses = [vast.show_instance(iid)["actual_status"]]
    assert statuses[0] is None and vast.show_instance(iid)["ports"] == {}
    wait_for(lambda: vast.show_instance(iid)["actual_status"] == "loading", timeout=5, interval=0.02)
    row = wait_for(lambda: (r := vast.show_instance(iid))["actual_status"] == "running" and r, timeout=5)
    assert ssh_ok(private, vast_ssh_ports(row)[0])

    fake_vast.set_delay_until_ready(0)
    fake_vast.never_ready = True
    ids = [vast.create_instance(id=o["id"], image="img", label=f"n{i}", ssh=True, direct=True)["new_contract"]
           for i, o in enumerate(offers[1:3])]
    assert all(vast.show_instance(i)["actual_status"] == "loading" for i in ids)
    page = vast.show_instances_v1({"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 2})
    assert len(page["instances"]) == 2 and page["next_token"] and page["total_instances"] == 3
    rest = vast.show_instances_v1({"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 2,
                                   "after_token": page["next_token"]})
    assert [r["id"] for r in page["instances"] + rest["instances"]] == sorted([iid, *ids])
    assert rest["next_token"] is None
    assert all(isinstance(r["start_date"], float) and isinstance(r["extra_env"], list) for r in rest["instances"])
    labelled = vast.show_instances_v1({"select_filters": {"label": {"eq": "n1"}}, "limit": 25})
    assert [r["label"] for r in labelled["instances"]] == ["n1"]
    fake_vast.never_ready = False

    bids = vast.search_offers(query="gpu_name=RTX_3090", type="bid", order="dph_total")
    spot = vast.create_instance(id=bids[0]["id"], image="img", label="spot", price=bids[0]["min_bid"] + 0.01,
                                ssh=True, direct=True)["new_contract"]
    row = vast.show_instance(spot)
    assert row["is_bid"] and row["dph_total"] == pytest.approx(bids[0]["min_bid"] + 0.01)
    fake_vast.outbid(spot)
    assert vast.show_instance(spot)["actual_status"] == "stopped"
    assert vast.show_instance(spot)["intended_status"] == "running"


# -- Thunder Compute (plain requests against /v1; tnr is never imported) -------------------------
class Thunder:
    def __init__(self, base_url: str, token: str):
        import requests

        self.base = base_url + "/v1"
        self.session = requests.Session()
        self.session.headers.update({"Authorization": f"Bearer {token}", "Content-Type": "application/json"})

    def call(self, method: str, path: str, **kw):
        response = self.session.request(method, self.base + path, timeout=10, **kw)
        response.raise_for_status()
        return response.json()

    def create(self, public_key: str | None = None, gpu: str = "h100"):
        body = {"cpu_cores": 4, "gpu_type": gpu, "template": "base", "num_gpus": 1, "disk_size_gb": 100,
                "mode": "prototyping"}
        if public_key:
            body["public_key"] = public_key
        return self.call("POST", "/instances/create", json=body)

    def list(self):
        return self.call("GET", "/instances/list")


@pytest.fixture
def thunder(fake_thunder):
    pytest.importorskip("requests")
    return Thunder(fake_thunder.base_url, fake_thunder.api_key)


def test_thunder_lifecycle(thunder, fake_thunder, fake_dir):
    import requests

    private, public = make_key(fake_dir)
    created = thunder.create(public)
    assert created["key"] is None and isinstance(created["identifier"], int) and created["uuid"]
    iid = str(created["identifier"])
    inst = thunder.list()[iid]
    assert inst["status"] == "RUNNING" and inst["ip"] == "127.0.0.1"
    assert (inst["numGpus"], inst["cpuCores"], inst["memory"]) == ("1", "4", "32")
    assert ssh_ok(private, inst["port"])

    second, second_pub = make_key(fake_dir, "second")
    assert not ssh_ok(second, inst["port"])
    assert thunder.call("POST", f"/instances/{iid}/add_key", json={"public_key": second_pub})["success"]
    assert ssh_ok(second, inst["port"])
    modified = thunder.call("POST", f"/instances/{iid}/modify", json={"add_ports": [8080]})
    assert modified["http_ports"] == [8080]

    # No key given: the API returns a private key once, and it logs in.
    generated = thunder.create()
    key_path = fake_dir / "generated"
    key_path.write_text(generated["key"])
    key_path.chmod(0o600)
    assert ssh_ok(str(key_path), thunder.list()[str(generated["identifier"])]["port"])

    # No stop/start on /v1 (only tnr's legacy unversioned /up and /down).
    with pytest.raises(requests.HTTPError):
        thunder.call("POST", f"/instances/{iid}/down")

    thunder.call("POST", f"/instances/{iid}/delete")
    assert iid not in thunder.list()
    assert not ssh_ok(private, inst["port"])
    pricing = thunder.call("GET", "/pricing")["pricing"]
    assert pricing["h100_x1_prototyping"] > 0 and "disk_gb" in pricing
    assert "base" in thunder.call("GET", "/thunder-templates")
    # Unversioned paths work too.
    assert requests.get(fake_thunder.base_url + "/instances/list", timeout=5,
                        headers={"Authorization": f"Bearer {fake_thunder.api_key}"}).status_code == 200
    assert {r.authorization for r in fake_thunder.requests} == {f"Bearer {fake_thunder.api_key}"}


def test_thunder_faults(thunder, fake_thunder, fake_dir):
    import requests

    private, public = make_key(fake_dir)
    response = requests.get(fake_thunder.base_url + "/v1/instances/list", timeout=5)
    assert response.status_code == 401 and fake_thunder.requests[-1].authorization is None

    fake_thunder.fail_next(429, headers={"Retry-After": "0"})
    with pytest.raises(requests.HTTPError) as info:
        thunder.list()
    assert info.value.response.status_code == 429 and info.value.response.headers["Retry-After"] == "0"
    assert thunder.list() == {}

    fake_thunder.fail_next(500, times=2, match="/instances/create")
    for _ in range(2):
        with pytest.raises(requests.HTTPError):
            thunder.create(public)
    assert thunder.list() == {}

    fake_thunder.lose_next_create_response()
    with pytest.raises(requests.HTTPError):
        thunder.create(public)
    instances = thunder.list()
    assert len(instances) == 1
    (only,) = instances.values()
    assert ssh_ok(private, only["port"])

    fake_thunder.never_ready = True
    stuck = str(thunder.create(public)["identifier"])
    fake_thunder.never_ready = False
    assert thunder.list()[stuck]["status"] in ("PROVISIONING", "STARTING")
    assert (thunder.list()[stuck]["ip"], thunder.list()[stuck]["port"]) == (None, 0)

    fake_thunder.set_delay_until_ready(0.4)
    slow = str(thunder.create(public)["identifier"])
    assert thunder.list()[slow]["status"] == "PROVISIONING"
    inst = wait_for(lambda: (i := thunder.list()[slow])["status"] == "RUNNING" and i, timeout=5)
    assert ssh_ok(private, inst["port"])

    with pytest.raises(requests.HTTPError) as info:
        thunder.create(public, gpu="imaginary")
    assert info.value.response.status_code == 400 and "message" in info.value.response.json()


# -- EC2 (boto3 against moto, through the fake's proxy) ------------------------------------------
@pytest.fixture
def ec2(fake_ec2):
    pytest.importorskip("boto3")
    return fake_ec2.client()


def run_one(ec2, key_name="k1", name="job-1", **kw):
    reservation = ec2.run_instances(
        ImageId="ami-12345678", InstanceType="g5.xlarge", MinCount=1, MaxCount=1, KeyName=key_name,
        TagSpecifications=[{"ResourceType": "instance", "Tags": [{"Key": "Name", "Value": name}]}], **kw)
    return reservation["Instances"][0]


def describe(ec2, iid):
    return ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]


def test_ec2_lifecycle(ec2, fake_ec2, fake_dir):
    private, public = make_key(fake_dir)
    config = str(fake_ec2.ssh_config_path)
    ec2.import_key_pair(KeyName="k1", PublicKeyMaterial=public.encode())
    first = run_one(ec2)
    iid = first["InstanceId"]
    assert first["State"]["Name"] == "pending"
    inst = describe(ec2, iid)
    assert inst["State"]["Name"] == "running"
    ip, dns = inst["PublicIpAddress"], inst["PublicDnsName"]
    assert fake_ec2.public_names(iid) == [ip, dns]
    assert ssh_ok(private, host=ip, config=config) and ssh_ok(private, host=dns, config=config)
    endpoint = fake_ec2.endpoint(iid)
    assert ssh_ok(private, endpoint.port)
    port = endpoint.port

    ec2.stop_instances(InstanceIds=[iid])
    inst = describe(ec2, iid)
    assert inst["State"]["Name"] == "stopped" and "PublicIpAddress" not in inst
    assert ip not in Path(config).read_text() and not ssh_ok(private, port)

    ec2.start_instances(InstanceIds=[iid])
    inst = describe(ec2, iid)
    assert inst["State"]["Name"] == "running"
    assert ssh_ok(private, host=inst["PublicIpAddress"], config=config)
    assert fake_ec2.endpoint(iid).port == port

    ec2.terminate_instances(InstanceIds=[iid])
    assert describe(ec2, iid)["State"]["Name"] == "terminated"
    assert fake_ec2.endpoint(iid) is None and iid not in fake_ec2.machines
    assert inst["PublicIpAddress"] not in Path(config).read_text()
    assert not ssh_ok(private, port)
    auth = {r.authorization.split("Credential=")[1].split("/")[0] for r in fake_ec2.requests}
    assert auth == {fake_ec2.access_key_id}


def test_ec2_faults_and_registered_keys(ec2, fake_ec2, fake_dir):
    from botocore.config import Config
    from botocore.exceptions import ClientError, ConnectionClosedError, EndpointConnectionError

    private, public = make_key(fake_dir)
    extra, extra_pub = make_key(fake_dir, "extra")
    one_shot = fake_ec2.client(config=Config(retries={"total_max_attempts": 1, "mode": "standard"}))
    ec2.import_key_pair(KeyName="k1", PublicKeyMaterial=public.encode())

    fake_ec2.fail_next(503, match="DescribeInstances")
    with pytest.raises(ClientError) as info:
        one_shot.describe_instances()
    assert info.value.response["Error"]["Code"] == "RequestLimitExceeded"
    fake_ec2.fail_next(500, times=2, match="RunInstances")
    for _ in range(2):
        with pytest.raises(ClientError):
            run_one(one_shot)
    assert one_shot.describe_instances()["Reservations"] == []

    # A lost RunInstances answer: retrying with the same ClientToken gets the same instance (as on EC2).
    fake_ec2.lose_next_create_response(how="drop")
    with pytest.raises((ConnectionClosedError, EndpointConnectionError)):
        run_one(one_shot, ClientToken="launch-1")
    again = run_one(one_shot, ClientToken="launch-1")
    reservations = one_shot.describe_instances()["Reservations"]
    assert [i["InstanceId"] for r in reservations for i in r["Instances"]] == [again["InstanceId"]]

    fake_ec2.register_key("k1", extra_pub)
    fake_ec2.never_ready = True
    held = run_one(ec2, name="held")["InstanceId"]
    fake_ec2.never_ready = False
    assert describe(ec2, held)["State"]["Name"] == "running"
    assert fake_ec2.endpoint(held) is None and fake_ec2.public_names(held) == []
    fake_ec2.set_never_ready(held, False)
    endpoint = fake_ec2.endpoint(held)
    assert ssh_ok(private, endpoint.port) and ssh_ok(extra, endpoint.port)


def test_ec2_background_sync_for_clients_that_bypass_the_proxy(fake_ec2, fake_dir):
    boto3 = pytest.importorskip("boto3")
    private, public = make_key(fake_dir)
    direct = boto3.client("ec2", endpoint_url=fake_ec2.moto_url, region_name=fake_ec2.region,
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    direct.import_key_pair(KeyName="k1", PublicKeyMaterial=public.encode())
    fake_ec2.start_auto_sync(interval=0.05)
    iid = run_one(direct)["InstanceId"]
    names = wait_for(lambda: fake_ec2.public_names(iid), timeout=10)
    assert ssh_ok(private, host=names[0], config=str(fake_ec2.ssh_config_path))
    direct.terminate_instances(InstanceIds=[iid])
    wait_for(lambda: iid not in fake_ec2.machines, timeout=10)
    fake_ec2.stop_auto_sync()
