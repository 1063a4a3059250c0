"""The fakes' self-stop paths: an instance stopping (or terminating) itself with the narrowest
credential its cloud gives it about itself, never the account key.

- RunPod: every pod's sessions carry ``RUNPOD_POD_ID`` and a pod-scoped ``RUNPOD_API_KEY``
  that may only ``podStop`` / ``podTerminate`` that pod.
- vast: ``CONTAINER_ID`` and ``CONTAINER_API_KEY``, good only to stop / destroy that instance.
- EC2: no credential on the box; ``shutdown -h now`` in the instance applies its
  ``InstanceInitiatedShutdownBehavior`` (stop or terminate) through moto.
- Thunder: no self-stop path; requests still record their credential.

Real SDKs and HTTP against the fakes, real sshds; nothing leaves 127.0.0.1. The EC2 tests
run ``shutdown`` only after checking, in the same remote command, that it resolves to the
fake one in the instance's home (the tests may run as root on a machine with a real one).
"""

from __future__ import annotations

import itertools
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.fakes.fixtures import *  # noqa: E402,F401,F403
from tests.test_fakes import (  # noqa: E402
    create_pod,
    describe,
    make_key,
    run_one,
    ssh_ok,
    ssh_port_of_pod,
    ssh_run,
    vast_ssh_ports,
    wait_for,
)

pytestmark = pytest.mark.timeout(60)

# Run inside an instance (python3 on its stdin): one HTTP request built from the session's
# environment, so the instance's own credential is what goes out. Prints "<status> <body>".
IN_INSTANCE_REQUEST = r"""
import json, os, sys, urllib.error, urllib.request
method, url, key_var, body = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4]
body = body.replace("{ID}", os.environ.get("RUNPOD_POD_ID") or os.environ.get("CONTAINER_ID") or "")
request = urllib.request.Request(url.replace("{ID}", os.environ.get("CONTAINER_ID", "")), method=method,
                                 data=body.encode(), headers={"Content-Type": "application/json",
                                                              "Authorization": "Bearer " + os.environ[key_var]})
try:
    with urllib.request.urlopen(request, timeout=10) as response:
        print(response.status, response.read().decode())
except urllib.error.HTTPError as exc:
    print(exc.code, exc.read().decode())
"""


def in_instance(private: str, port: int, method: str, url: str, key_var: str, body: object):
    """``IN_INSTANCE_REQUEST`` over ssh: (status, parsed body). ``{ID}`` in url/body is the instance's id."""
    quoted = " ".join("'" + a.replace("'", "'\\''") + "'" for a in (method, url, key_var, json.dumps(body)))
    proc = ssh_run(private, port, f"python3 - {quoted}", input=IN_INSTANCE_REQUEST)
    assert proc.returncode == 0, proc.stderr
    status, _, text = proc.stdout.strip().partition(" ")
    return int(status), json.loads(text)


def session_env(private: str, port: int, *names: str) -> list[str]:
    proc = ssh_run(private, port, "; ".join(f'echo "${name}"' for name in names))
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


# -- RunPod --------------------------------------------------------------------------------------
@pytest.fixture
def runpod_sdk(fake_runpod, monkeypatch):
    runpod = pytest.importorskip("runpod")
    monkeypatch.setattr(runpod, "api_key", fake_runpod.api_key)
    monkeypatch.setenv("RUNPOD_API_BASE_URL", fake_runpod.base_url)
    return runpod


def pod_op(op: str, pod_id: str) -> str:
    return f'mutation {{ {op}(input: {{podId: "{pod_id}"}}) {{ id desiredStatus }} }}'


def test_runpod_pod_scoped_key(runpod_sdk, fake_runpod, fake_dir):
    import requests
    from runpod.api.graphql import run_graphql_query

    runpod = runpod_sdk
    private, public = make_key(fake_dir)
    a, b = (create_pod(runpod, public, name=n)["id"] for n in ("a", "b"))
    port_a, port_b = (ssh_port_of_pod(runpod.get_pod(p)) for p in (a, b))

    # Each pod's sessions know the pod and its own key: distinct keys, neither the account's.
    pod_a, key_a = session_env(private, port_a, "RUNPOD_POD_ID", "RUNPOD_API_KEY")
    pod_b, key_b = session_env(private, port_b, "RUNPOD_POD_ID", "RUNPOD_API_KEY")
    assert (pod_a, pod_b) == (a, b)
    assert key_a == fake_runpod.pod_key(a) and key_b == fake_runpod.pod_key(b)
    assert key_a.startswith("rpa_pod_") and len({key_a, key_b, fake_runpod.api_key}) == 3

    # The pod key may not list pods, touch another pod, or resume even its own: 401, as RunPod.
    refused = ["query { myself { pods { id } } }", f'query {{ pod(input: {{podId: "{a}"}}) {{ id }} }}',
               pod_op("podStop", b), pod_op("podTerminate", b), pod_op("podResume", a)]
    for query in refused:
        with pytest.raises(runpod.error.AuthenticationError):
            run_graphql_query(query, api_key=key_a)
        assert (fake_runpod.requests[-1].credential, fake_runpod.requests[-1].status) == (f"pod:{a}", 401)
    assert runpod.get_pod(b)["desiredStatus"] == "RUNNING" and ssh_ok(private, port_b)

    # It stops its own pod (answered first, the machine goes down a moment later).
    fake_runpod.clear_requests()
    assert run_graphql_query(pod_op("podStop", a), api_key=key_a)["data"]["podStop"]["desiredStatus"] == "EXITED"
    assert runpod.get_pod(a)["desiredStatus"] == "EXITED" and runpod.get_pod(a)["runtime"] is None
    endpoint_a = fake_runpod.machines[a].endpoint
    wait_for(lambda: not endpoint_a.running(), timeout=10)
    assert not ssh_ok(private, port_a)
    assert [(r.credential, r.status) for r in fake_runpod.requests_to("podStop")] == [(f"pod:{a}", 200)]
    assert {r.credential for r in fake_runpod.requests if "podStop" not in r.route} == {"account"}

    # The account key keeps working for everything: resume it.
    assert runpod.resume_pod(a, 1)["desiredStatus"] == "RUNNING"
    assert ssh_ok(private, ssh_port_of_pod(runpod.get_pod(a)))

    # As ?api_key= (how older SDKs and runpodctl send it), with no Authorization header: terminate itself.
    graphql = fake_runpod.base_url + "/graphql"
    answer = requests.post(graphql, params={"api_key": key_a}, json={"query": pod_op("podTerminate", a)}, timeout=10)
    assert answer.status_code == 200 and "errors" not in answer.json(), answer.text
    last = fake_runpod.requests[-1]
    assert (last.credential, last.authorization, last.status) == (f"pod:{a}", None, 200)
    assert runpod.get_pod(a) is None and [p["id"] for p in runpod.get_pods()] == [b]
    wait_for(lambda: a not in fake_runpod.machines and not endpoint_a.directory.exists(), timeout=10)

    # The key died with its pod.
    assert fake_runpod.pod_key(a) is None
    answer = requests.post(graphql, headers={"Authorization": f"Bearer {key_a}"},
                           json={"query": pod_op("podStop", a)}, timeout=10)
    assert answer.status_code == 401 and fake_runpod.requests[-1].credential is None

    # The account key stops a pod at once, and is recorded as the account.
    runpod.stop_pod(b)
    assert (fake_runpod.requests[-1].route, fake_runpod.requests[-1].credential) == ("POST /graphql podStop",
                                                                                      "account")
    assert not fake_runpod.machines[b].endpoint.running() and fake_runpod.pending() == []


def test_runpod_pod_stops_itself_from_inside(runpod_sdk, fake_runpod, fake_dir):
    runpod = runpod_sdk
    private, public = make_key(fake_dir)
    pod = create_pod(runpod, public)["id"]
    other = create_pod(runpod, public, name="other")["id"]
    port = ssh_port_of_pod(runpod.get_pod(pod))
    url = fake_runpod.base_url + "/graphql"

    status, body = in_instance(private, port, "POST", url, "RUNPOD_API_KEY", {"query": "query { myself { pods { id } } }"})
    assert status == 401 and body == {"errors": [{"message": "Unauthorized"}]}
    status, body = in_instance(private, port, "POST", url, "RUNPOD_API_KEY", {"query": pod_op("podStop", other)})
    assert status == 401

    fake_runpod.clear_requests()
    fake_runpod.self_stop_delay = 1.0
    status, body = in_instance(private, port, "POST", url, "RUNPOD_API_KEY", {"query": pod_op("podStop", "{ID}")})
    assert status == 200 and body["data"]["podStop"] == {"id": pod, "desiredStatus": "EXITED"}
    endpoint = fake_runpod.machines[pod].endpoint
    wait_for(lambda: not endpoint.running(), timeout=10)
    assert runpod.get_pod(pod)["desiredStatus"] == "EXITED"
    assert runpod.get_pod(other)["desiredStatus"] == "RUNNING"
    stop = fake_runpod.requests_to("podStop")
    assert len(stop) == 1 and stop[0].credential == f"pod:{pod}" and stop[0].authorization.startswith("Bearer rpa_pod_")
    assert fake_runpod.api_key not in json.dumps([r.headers for r in stop] + [r.query for r in stop])


# -- vast.ai -------------------------------------------------------------------------------------
@pytest.fixture
def vast(fake_vast, fake_dir, monkeypatch):
    monkeypatch.setenv("HOME", str(fake_dir))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(fake_dir / ".config"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(fake_dir / ".cache"))
    monkeypatch.setenv("XDG_STATE_HOME", str(fake_dir / ".state"))
    monkeypatch.setenv("VAST_URL", fake_vast.base_url)
    monkeypatch.delenv("VAST_API_KEY", raising=False)
    vastai = pytest.importorskip("vastai")
    return vastai.VastAI(api_key=fake_vast.api_key, server_url=fake_vast.base_url, retry=1)


def test_vast_container_key(vast, fake_vast, fake_dir):
    import requests

    private, public = make_key(fake_dir)
    vast.create_ssh_key(public)
    offers = vast.search_offers(query="gpu_name=RTX_4090 num_gpus=1", order="dph_total", limit=5)
    a, b = (vast.create_instance(id=o["id"], image="img", label=l, ssh=True, direct=True)["new_contract"]
            for o, l in zip(offers[:2], ("a", "b")))
    port_a, port_b = (vast_ssh_ports(vast.show_instance(i))[0] for i in (a, b))

    id_a, key_a = session_env(private, port_a, "CONTAINER_ID", "CONTAINER_API_KEY")
    id_b, key_b = session_env(private, port_b, "CONTAINER_ID", "CONTAINER_API_KEY")
    assert (id_a, id_b) == (str(a), str(b))
    assert key_a == fake_vast.container_key(a) and key_b == fake_vast.container_key(b)
    assert len({key_a, key_b, fake_vast.api_key}) == 3

    api = fake_vast.base_url + "/api/v0"

    def call(method: str, path: str, key: str, body=None, in_query: bool = False):
        auth = {"params": {"api_key": key}} if in_query else {"headers": {"Authorization": f"Bearer {key}"}}
        return requests.request(method, api + path, json=body, timeout=10, **auth)

    refused = [("GET", "/instances/", None), ("GET", f"/instances/{a}/", None),
               ("PUT", f"/instances/{b}/", {"state": "stopped"}), ("DELETE", f"/instances/{b}/", None),
               ("PUT", f"/instances/{a}/", {"state": "running"}), ("PUT", f"/instances/{a}/", {"label": "x"}),
               ("PUT", f"/instances/{a}/", {"state": "stopped", "label": "x"}),
               ("POST", f"/instances/{a}/ssh/", {"ssh_key": public}), ("PUT", f"/instances/bid_price/{a}/", {"price": 9}),
               ("POST", "/ssh/", {"ssh_key": public})]
    for method, path, body in refused:
        answer = call(method, path, key_a, body)
        assert answer.status_code == 401 and answer.json()["error"] == "invalid_user_key", (method, path)
        assert fake_vast.requests[-1].credential == f"container:{a}"
    assert [vast.show_instance(i)["actual_status"] for i in (a, b)] == ["running", "running"]
    assert vast.show_instance(a)["label"] == "a"

    # From inside the instance, with its own key: stop itself.
    fake_vast.clear_requests()
    status, body = in_instance(private, port_a, "PUT", api + "/instances/{ID}/", "CONTAINER_API_KEY", {"state": "stopped"})
    assert (status, body) == (200, {"success": True})
    assert vast.show_instance(a)["intended_status"] == "stopped"
    wait_for(lambda: vast.show_instance(a)["actual_status"] == "stopped", timeout=10)
    assert not ssh_ok(private, port_a) and vast.show_instance(b)["actual_status"] == "running"
    stop = fake_vast.requests_to(f"PUT /api/v0/instances/{a}")
    assert [(r.credential, r.status) for r in stop] == [(f"container:{a}", 200)]

    # The account key still does everything: start it again.
    vast.start_instance(a)
    assert vast.show_instance(a)["actual_status"] == "running" and ssh_ok(private, port_a)
    assert fake_vast.requests_to(f"PUT /api/v0/instances/{a}")[-1].credential == "account"

    # ?api_key= works too: destroy itself. Then its key is gone.
    answer = call("DELETE", f"/instances/{a}/", key_a, in_query=True)
    assert answer.status_code == 200 and answer.json()["success"] is True
    last = fake_vast.requests[-1]
    assert (last.credential, last.authorization) == (f"container:{a}", None)
    assert [r["id"] for r in vast.show_instances()] == [b]
    wait_for(lambda: str(a) not in fake_vast.machines, timeout=10)
    assert fake_vast.container_key(a) is None
    answer = call("PUT", f"/instances/{a}/", key_a, {"state": "stopped"})
    assert answer.status_code == 401 and fake_vast.requests[-1].credential is None

    vast.destroy_instance(b)
    assert fake_vast.requests_to(f"DELETE /api/v0/instances/{b}")[-1].credential == "account"
    assert vast.show_instances() == [] and fake_vast.pending() == []


# -- Thunder ---------------------------------------------------------------------------------------
def test_thunder_records_the_credential(fake_thunder):
    import requests

    url = fake_thunder.base_url + "/v1/instances/list"
    assert requests.get(url, headers={"Authorization": f"Bearer {fake_thunder.api_key}"}, timeout=5).status_code == 200
    assert requests.get(url, headers={"Authorization": "Bearer other"}, timeout=5).status_code == 401
    assert requests.get(url, params={"api_key": fake_thunder.api_key}, timeout=5).status_code == 401  # header only
    assert [(r.credential, r.status) for r in fake_thunder.requests] == [("account", 200), (None, 401), (None, 401)]


# -- EC2 -----------------------------------------------------------------------------------------
@pytest.fixture
def ec2(fake_ec2):
    pytest.importorskip("boto3")
    return fake_ec2.client()


# Run `shutdown` only if it is the instance's fake one (never the host's), in the same command.
GUARD = ('p=$(command -v shutdown); if [ "$p" != "$HOME/.local/bin/shutdown" ]; then '
         'echo "refusing: shutdown is $p" >&2; exit 97; fi; ')


def moto_instance(fake_ec2, instance_id: str):
    """The instance as moto's backend holds it (not through any API)."""
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ec2.models import ec2_backends

    return ec2_backends[DEFAULT_ACCOUNT_ID][fake_ec2.region].get_instance(instance_id)


def shutdown_behavior(ec2, instance_id: str) -> str:
    answer = ec2.describe_instance_attribute(InstanceId=instance_id, Attribute="instanceInitiatedShutdownBehavior")
    return answer["InstanceInitiatedShutdownBehavior"]["Value"]


_KEY_NAMES = (f"k{n}" for n in itertools.count())


def launch(ec2, fake_ec2, fake_dir, **kw):
    private, public = make_key(fake_dir, next(_KEY_NAMES))
    ec2.import_key_pair(KeyName=Path(private).name, PublicKeyMaterial=public.encode())
    iid = run_one(ec2, key_name=Path(private).name, **kw)["InstanceId"]
    assert describe(ec2, iid)["State"]["Name"] == "running"
    return private, iid, fake_ec2.endpoint(iid)


def test_ec2_shutdown_behavior_is_recorded(ec2, fake_ec2, fake_dir):
    from botocore.exceptions import ClientError

    _, default, _ = launch(ec2, fake_ec2, fake_dir)
    _, stop, _ = launch(ec2, fake_ec2, fake_dir, InstanceInitiatedShutdownBehavior="stop")
    _, terminate, _ = launch(ec2, fake_ec2, fake_dir, InstanceInitiatedShutdownBehavior="terminate")
    assert [shutdown_behavior(ec2, i) for i in (default, stop, terminate)] == ["stop", "stop", "terminate"]
    assert moto_instance(fake_ec2, terminate).instance_initiated_shutdown_behavior == "terminate"
    # Changed later, in either form boto3 offers.
    ec2.modify_instance_attribute(InstanceId=default, InstanceInitiatedShutdownBehavior={"Value": "terminate"})
    ec2.modify_instance_attribute(InstanceId=stop, Attribute="instanceInitiatedShutdownBehavior", Value="terminate")
    assert shutdown_behavior(ec2, default) == shutdown_behavior(ec2, stop) == "terminate"
    with pytest.raises(ClientError) as info:
        ec2.modify_instance_attribute(InstanceId=stop, InstanceInitiatedShutdownBehavior={"Value": "hibernate"})
    assert info.value.response["Error"]["Code"] == "InvalidParameterValue"
    assert {r.credential for r in fake_ec2.requests} == {"account"}


def test_ec2_instance_shuts_itself_down_stop(ec2, fake_ec2, fake_dir):
    from botocore.exceptions import ClientError

    private, iid, endpoint = launch(ec2, fake_ec2, fake_dir, InstanceInitiatedShutdownBehavior="stop",
                                    DisableApiStop=True)
    port = endpoint.port
    fake = f"{endpoint.home}/.local/bin/shutdown"
    proc = ssh_run(private, port, 'echo "$FERRY_FAKE_INSTANCE_ID"; command -v shutdown poweroff halt;'
                                  ' bash -lc "command -v shutdown"')
    assert proc.stdout.splitlines() == [iid, fake, fake[:-8] + "poweroff", fake[:-8] + "halt", fake], proc.stderr
    with pytest.raises(ClientError):
        ec2.stop_instances(InstanceIds=[iid])  # DisableApiStop guards the API, not the OS

    fake_ec2.clear_requests()
    proc = ssh_run(private, port, GUARD + "shutdown -h now; echo rc=$?")
    assert proc.returncode == 0 and proc.stdout.strip() == "rc=0", (proc.stdout, proc.stderr)
    wait_for(lambda: moto_instance(fake_ec2, iid).state == "stopped", timeout=10)
    wait_for(lambda: not endpoint.running(), timeout=10)
    assert not ssh_ok(private, port)
    inst = describe(ec2, iid)
    assert inst["State"]["Name"] == "stopped"
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"
    # Nothing but the instance's own shutdown did it: no API call, no credential.
    assert [(r.route, r.credential, r.status) for r in fake_ec2.requests_to("/__fake__/")] == [
        (f"POST /__fake__/shutdown/{iid}", None, 202)]
    assert not [r for r in fake_ec2.requests if "StopInstances" in r.route or "TerminateInstances" in r.route]

    # Stopped, not gone: it starts again on the same sshd.
    ec2.start_instances(InstanceIds=[iid])
    assert describe(ec2, iid)["State"]["Name"] == "running"
    assert fake_ec2.endpoint(iid).port == port and ssh_ok(private, port)


def test_ec2_instance_shuts_itself_down_terminate(ec2, fake_ec2, fake_dir):
    private, iid, endpoint = launch(ec2, fake_ec2, fake_dir, InstanceInitiatedShutdownBehavior="terminate")
    port = endpoint.port
    proc = ssh_run(private, port, GUARD + "poweroff; echo rc=$?")
    assert proc.returncode == 0 and proc.stdout.strip() == "rc=0", (proc.stdout, proc.stderr)
    wait_for(lambda: moto_instance(fake_ec2, iid).state == "terminated", timeout=10)
    wait_for(lambda: iid not in fake_ec2.machines and not endpoint.directory.exists(), timeout=10)
    assert not endpoint.running() and not ssh_ok(private, port)
    inst = describe(ec2, iid)
    assert inst["State"]["Name"] == "terminated"
    assert inst["StateReason"]["Code"] == "Client.InstanceInitiatedShutdown"


def test_ec2_shutdown_options_and_route(ec2, fake_ec2, fake_dir):
    import requests

    private, iid, endpoint = launch(ec2, fake_ec2, fake_dir)
    route = f"{fake_ec2.base_url}/__fake__/shutdown/"
    assert requests.post(route + "i-0123456789abcdef0", timeout=5).status_code == 404
    assert requests.get(route + iid, timeout=5).status_code == 404

    # +5 schedules (in 300 s), -c cancels it; -k only warns, --help only helps; reboot, clock times
    # and unknown options are refused.
    proc = ssh_run(private, endpoint.port, GUARD + 'shutdown -h +5 "going down"; echo a=$?; shutdown -c; echo b=$?;'
                                                    " shutdown -k now; echo c=$?; shutdown -r now; echo d=$?;"
                                                    " shutdown -h 22:00; echo e=$?; shutdown --help >/dev/null;"
                                                    " echo f=$?; shutdown --bogus now; echo g=$?")
    assert proc.stdout.split() == ["a=0", "b=0", "c=0", "d=1", "e=1", "f=0", "g=1"], (proc.stdout, proc.stderr)
    bodies = [r.body for r in fake_ec2.requests_to("/__fake__/shutdown/")[2:]]
    assert bodies == [{"delay": 300.0}, {"cancel": True}]
    assert fake_ec2.pending() == [] and moto_instance(fake_ec2, iid).state == "running" and endpoint.running()

    # From Python, at once; then the route finds it not running.
    assert fake_ec2.instance_shutdown(iid, delay=0) == "stop"
    assert moto_instance(fake_ec2, iid).state == "stopped" and not endpoint.running()
    answer = requests.post(route + iid, json={}, timeout=5)
    assert answer.status_code == 409 and answer.json()["error"] == "IncorrectInstanceState"
