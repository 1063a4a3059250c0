"""The contract every provider keeps, through the real CLI: one suite, parametrised over all six.

local and ssh are loopback sshds; runpod, vast, thunder and ec2 are each
cloud's real SDK against its fake API (tests/fakes), every instance a real
loopback sshd. What differs per provider is in tests/contract_harness.py;
a case that does not apply to a provider (stop without the STOP capability,
lost creates where nothing is created) is not generated for it. What only
one cloud does stays in its own tests/test_provider_*.py.
"""

from __future__ import annotations

import json
import re
import selectors
import shlex
import subprocess
import sys
import time

import pytest

from ferry.providers.base import GPU, OWNED, STOP

from .conftest import assert_one_line_error, ferry_labels
from .contract_harness import CLOUDS, PROVIDERS, failed, having, known_hosts_name, make

pytestmark = pytest.mark.timeout(90)

TRAIN = (
    "import os\nos.makedirs('results', exist_ok=True)\n"
    "open('results/metrics.json', 'w').write('{\"loss\": 0.125}')\nprint('trained here')\n"
)


@pytest.fixture
def h(request, ferry, home, project, monkeypatch):
    """The harness of the provider named by the case's parameter (its id), fake started and configured."""
    return make(request.param, request, ferry, home, project, monkeypatch)


def providers(*names):
    return pytest.mark.parametrize("h", names, indirect=True)


def first_line_within(proc: subprocess.Popen, seconds: float) -> str:
    """The first line the process prints, without blocking past the deadline."""
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        assert selector.select(timeout=seconds), f"nothing printed within {seconds}s"
    return proc.stdout.readline()


# -- 1. the loop ----------------------------------------------------------------------------------------------
@providers(*PROVIDERS)
def test_launch_sync_run_download_stop_start_terminate(h, project):
    (project / "train.py").write_text(TRAIN)
    proc = h.cli.ok("--debug", *h.launch, "sync", "run", f"{sys.executable} train.py", "download")
    assert "trained here" in proc.stdout and "invoke.executor" in proc.stderr  # --debug was on
    assert f"proj is ready ({h.name}" in proc.stderr
    assert json.loads((project / "results" / "metrics.json").read_text()) == {"loss": 0.125}, "came home"
    assert len(h.ids()) == 1 and h.powered()
    state = h.state()
    assert state["current"] == "proj" and state["instances"]["proj"]["id"] == h.ids()[0]
    workdir = h.remote_home() / "proj"
    assert (workdir / "train.py").exists() and (h.remote_home() / ".ferry" / "bin" / "ferry-job").exists()
    assert not any(s in (project / ".ferry" / "state.json").read_text() for s in h.secrets)

    # Output streams while the job runs (it waits for a file only the test makes), and its exit code comes back.
    job = subprocess.Popen([sys.executable, "-m", "ferry", "run",
                            "echo started; while [ ! -e go ]; do sleep 0.05; done; echo finished; exit 3"],
                           cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert first_line_within(job, 60) == "started\n"
        (workdir / "go").touch()
        out, err = job.communicate(timeout=60)
    finally:
        if job.poll() is None:
            job.kill()
            job.wait()
    h.cli.printed.append(out + err)
    assert (job.returncode, out) == (3, "finished\n"), err

    if STOP in h.capabilities:
        before = h.ssh()
        stopped = json.loads(h.cli.ok("stop", "status", "--json").stdout)
        assert stopped["status"] == "STOPPED" and not h.powered()
        assert_one_line_error(h.cli("run", "touch while-stopped"))  # unreachable, one clean line
        assert h.cli.ok("start", "run", "cat results/metrics.json").stdout == '{"loss": 0.125}', "the disk survived"
        assert h.powered() and not (workdir / "while-stopped").exists()
        assert h.state()["instances"]["proj"]["ssh"] == h.ssh(), "ferry follows the instance to where it answers"
        assert (h.ssh() != before) == h.moves_on_start
    else:
        asked = len(h.fake.requests) if h.fake else 0
        stderr = failed(h.cli("stop"))
        assert all(part in stderr for part in h.refusals["stop"]), stderr
        assert h.powered()
        if h.fake:
            assert [r.route for r in h.fake.requests[asked:] if r.method != "GET"] == [], "refused before the API"

    if OWNED in h.capabilities:
        refused = h.cli("terminate")
        assert "--yes" in assert_one_line_error(refused, code=2)
        assert len(h.ids()) == 1
        h.cli.ok("terminate", "--yes")
        assert h.ids() == [] and h.state()["instances"] == {}
        assert len(h.requests_to(h.delete)) == (1 if h.fake else 0)
        assert_one_line_error(h.cli("run", "true"))
    else:
        stderr = failed(h.cli("terminate", "--yes"))
        assert all(part in stderr for part in h.refusals["terminate"]), stderr
        assert h.powered(), "the host is left alone"
        assert h.cli.ok("run", "echo still here").stdout == "still here\n"

    if h.fake is not None:  # the API key went on the wire, in its header, and nowhere in what ferry printed
        assert {h.credential(r) for r in h.fake.requests} == {h.key}
        assert h.secrets and not any(s in text for s in h.secrets for text in h.cli.printed)


# -- 2. idempotency -------------------------------------------------------------------------------------------
@providers(*PROVIDERS)
def test_a_second_launch_of_the_name_reuses_the_instance(h):
    first = json.loads(h.cli.ok(*h.launch, "--json").stdout)
    assert (first["name"], first["provider"], first["status"], first["id"]) == ("proj", h.name, "RUNNING", h.ids()[0])
    assert first["ssh"] == h.ssh() and first["remote_home"] == str(h.remote_home())
    assert first["gpu"] == (h.gpu[1] if h.gpu else None)
    if OWNED in h.capabilities:
        assert first["labels"] == ferry_labels()
    second = json.loads(h.cli.ok("launch", "--provider", h.name, "--json").stdout)  # by name: no --gpu needed
    assert (second["id"], second["ssh"]) == (first["id"], first["ssh"])
    assert h.ids() == [first["id"]]
    assert len(h.requests_to(h.create)) == (1 if h.fake else 0)
    listed = json.loads(h.cli.ok("ls", "--json").stdout)
    assert [(i["name"], i["provider"], i["status"]) for i in listed] == [("proj", h.name, "RUNNING")]


# -- 3. a create whose answer is lost ---------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["error", "drop"])
@providers(*CLOUDS)
def test_a_create_whose_response_is_lost_makes_exactly_one_instance(h, how):
    h.fake.lose_next_create_response(how=how)
    assert h.cli.ok(*h.launch, "run", "echo reachable").stdout == "reachable\n"
    assert len(h.requests_to(h.create)) == 1, "found by name, never created twice"
    (iid,) = h.ids()
    assert h.state()["instances"]["proj"]["id"] == iid


# -- 4. a new host key behind the same address -----------------------------------------------------------------
@providers(*PROVIDERS)
def test_a_changed_host_key_is_refused_with_the_fix(h):
    import ferry

    h.cli.ok(*h.launch)
    (iid,) = h.ids()
    address = known_hosts_name(h.ssh())
    h.rekey()
    ferry.box().remote.close()  # no shared connection to the old sshd hides it
    stderr = assert_one_line_error(h.cli("run", "touch ran-anyway"))
    assert "host key of proj" in stderr and address in stderr
    assert not (h.remote_home() / "proj" / "ran-anyway").exists(), "nothing ran on the changed host"

    # The hint's fix, as printed: see the new key and pin it for this same instance; nothing is created.
    hint = stderr.split("hint: ", 1)[1]
    fix = hint.split("see its new key and pin it: ")[1].split(";")[0].strip()
    assert fix == "ferry pin-host-key --name proj"
    asked = h.cli(*shlex.split(fix)[1:])
    if h.name == "local":  # the provider itself reports the key: that vouches for it
        assert asked.returncode == 0 and "local reports the same key" in asked.stderr
    else:  # nobody vouches: without a terminal to ask on, it needs --yes after reading the fingerprint
        assert asked.returncode == 2 and "SHA256:" in asked.stderr and "not pinned" in asked.stderr
        assert_one_line_error(h.cli("run", "true"))  # still refused
        assert "pinned proj's host key" in h.cli.ok(*shlex.split(fix)[1:], "--yes").stderr
    assert h.cli.ok("run", "echo again").stdout == "again\n"
    assert h.ids() == [iid], "the same instance, not a new one"
    assert (h.state()["instances"]["proj"]["provider"], h.state()["instances"]["proj"]["id"]) == (h.name, iid)
    assert len(h.requests_to(h.create)) == (1 if h.create else 0), "nothing was created"


# -- 5. an instance that never becomes reachable ----------------------------------------------------------------
@providers(*CLOUDS)
def test_an_instance_that_never_gets_ssh_is_terminated_after_the_launch_timeout(h):
    h.fake.never_ready = True
    stderr = failed(h.cli(*h.launch, "--launch-timeout", "2"))
    assert h.unreachable in stderr and "within 2s" in stderr
    assert re.search(r"terminated proj \(\S+\) because launch failed", h.cli.printed[-1])
    assert h.ids() == [] and len(h.requests_to(h.create)) == 1 and len(h.requests_to(h.delete)) == 1
    assert "proj" not in h.state()["instances"]


# -- transient API errors ----------------------------------------------------------------------------------------
@providers(*CLOUDS)
def test_transient_api_errors_are_retried(h):
    for fault in h.faults:
        h.fake.fail_next(**fault)
    h.cli.ok(*h.launch)
    assert len(h.requests_to(h.create)) == 3, "two failed creates, then one that worked"
    throttled = h.faults[0]["match"]
    assert h.faults[0]["status_code"] == 429 and len(h.requests_to(throttled)) >= 2, "the 429 was retried"
    assert len(h.ids()) == 1


# -- GPUs ----------------------------------------------------------------------------------------------------------
@providers(*having(GPU))
def test_the_gpu_is_required_and_checked_before_anything_is_rented(h):
    assert "--gpu" in failed(h.cli("launch", "--provider", h.name), code=2)
    assert "RTX4090" in failed(h.cli("launch", "--provider", h.name, "--gpu", "TPUv9"), code=2), "aliases listed"
    stderr = failed(h.cli("launch", "--provider", h.name, "--gpu", h.not_offered), code=2)
    assert f"{h.name} does not offer {h.not_offered}" in stderr
    assert h.ids() == [] and h.requests_to(h.create) == []


# -- a machine made by hand under the same name -------------------------------------------------------------
def made_by_hand(h) -> str:
    """An instance named like the project's, made outside ferry (no ferry-project label), through the same API."""
    from ferry import providers
    from ferry.config import Settings
    from ferry.records import InstanceSpec

    cloud = providers.get(h.name, Settings.of(None)).provider  # the bare provider: no registry rules applied
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHRlc3RrZXl0ZXN0a2V5dGVzdGtleXRlc3RrZXkxMjM0 someone"
    return cloud.create(InstanceSpec(name="proj", provider=h.name, gpu=h.gpu[1], gpu_count=1, public_key=key)).id


@providers(*CLOUDS)
def test_a_same_named_instance_made_by_hand_is_never_adopted(h):
    theirs = made_by_hand(h)
    h.cli.ok(*h.launch)
    ours = h.state()["instances"]["proj"]["id"]
    assert ours != theirs and sorted(h.ids()) == sorted([theirs, ours]), "ferry made its own"
    h.cli.ok("terminate", "--yes")
    assert h.ids() == [theirs], "and terminated only its own"


# -- retries: bounded in count and time, never sooner than Retry-After ----------------------------------------
@providers(*CLOUDS)
def test_retries_are_bounded_in_count_and_time(h, monkeypatch):
    monkeypatch.setenv("INVOKE_FERRY_RETRY_BASE", "0.01")  # the real schedule, made quick
    monkeypatch.setenv("INVOKE_FERRY_RETRY_CAP", "0.05")
    before = len(h.fake.requests)
    h.fake.fail_next(503, times=100)
    started = time.monotonic()
    failed(h.cli(*h.launch))
    tried = h.fake.requests[before:]
    assert len(tried) == 6, [r.route for r in tried]  # ferry.retry.attempts
    assert tried[-1].time - tried[0].time < 5 and time.monotonic() - started < 30
    assert h.ids() == []


@providers("vast", "thunder", "ec2")  # RunPod's SDK drops the status and headers of a failed answer
def test_retry_after_is_a_floor(h, monkeypatch):
    monkeypatch.setenv("INVOKE_FERRY_RETRY_BASE", "0.01")
    monkeypatch.setenv("INVOKE_FERRY_RETRY_CAP", "0.05")
    before = len(h.fake.requests)
    h.fake.fail_next(429, headers={"Retry-After": "1"})
    h.cli.ok(*h.launch)
    first, second = h.fake.requests[before:before + 2]
    assert second.time - first.time >= 1.0, "the server asked for a second"
