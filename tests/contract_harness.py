"""One harness per provider, for the contract suite (tests/test_contract.py) and the per-cloud files.

A harness knows the few things that differ between providers: how the CLI is
pointed at the provider (its fake, or a host of the user's), the flags that
create an instance there, and how to look behind ferry's back: how many
instances exist at the fake, the instance's sshd (to give it a new host key),
whether it is powered, which credential each request carried. Everything
else is the contract, written once.

Each provider's ``configure_*`` function is the one copy of the environment
its tests need; the per-cloud test files use it too.
"""

from __future__ import annotations

import getpass
import importlib
import json
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ferry.providers import MODULES

PROVIDERS = ("local", "ssh", "runpod", "vast", "thunder", "ec2")
CLOUDS = ("runpod", "vast", "thunder", "ec2")
USER = getpass.getuser()

VAST_KEY = "vast-SECRET-4c1d9e7a0b2f"
AWS_ACCESS_KEY = "AKIAFERRYTESTKEY0001"
AWS_SECRET_KEY = "ferry/SECRET/9f3b1c7e5d2a"
DLAMI = "ami-0feedfacecafe0001"


def capabilities(provider: str) -> frozenset[str]:
    """What the provider class declares (importing its module never imports its SDK)."""
    module = importlib.import_module(MODULES[provider])
    for value in vars(module).values():
        if isinstance(value, type) and getattr(value, "name", None) == provider and hasattr(value, "capabilities"):
            return frozenset(value.capabilities)
    raise LookupError(provider)


def having(capability: str, among=PROVIDERS) -> list[str]:
    return [p for p in among if capability in capabilities(p)]


# -- what each provider's tests need in the environment ------------------------------------------------
def configure_runpod(fake, home: Path, monkeypatch) -> None:
    monkeypatch.setenv("RUNPOD_API_KEY", fake.api_key)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_RUNPOD_API_URL", fake.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_RUNPOD_SSH_USER", USER)
    # The project goes in the pod's home, not /workspace (which would be this machine's /workspace).
    (home / ".invoke.yaml").write_text("ferry:\n  providers:\n    runpod:\n      workdir: '~'\n")


def configure_vast(fake, home: Path, monkeypatch) -> None:
    fake.api_key = VAST_KEY
    monkeypatch.setenv("VAST_API_KEY", VAST_KEY)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_VAST_API_URL", fake.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_VAST_SSH_USER", USER)


def configure_thunder(fake, home: Path, monkeypatch) -> None:
    monkeypatch.setenv("TNR_API_TOKEN", fake.api_key)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_THUNDER_API_URL", fake.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_THUNDER_SSH_USER", USER)


def seed_dlami(region: str, value: str = DLAMI) -> None:
    """Publish the deep-learning AMI parameter the way moto seeds its own public /aws/service ones.

    moto's SSM knows only the Amazon Linux, ECS and global-infrastructure public
    parameters, and its put_parameter (like AWS) refuses names under /aws.
    """
    from moto.core import DEFAULT_ACCOUNT_ID
    from moto.ssm.models import Parameter, ssm_backends

    from ferry.providers.ec2.setup import DLAMI_PARAMETER

    backend = ssm_backends[DEFAULT_ACCOUNT_ID][region]
    backend._parameters[DLAMI_PARAMETER].append(Parameter(
        account_id=DEFAULT_ACCOUNT_ID, name=DLAMI_PARAMETER, value=value, parameter_type="String",
        description=None, allowed_pattern=None, keyid=None, last_modified_date=time.time(), version=1,
        data_type="aws:ec2:image",
    ))


def configure_ec2(fake, home: Path, monkeypatch) -> None:
    """moto hands out made-up public addresses (54.214.x.x); ssh reaches them only through ssh_config.

    The fake writes an OpenSSH config mapping each running instance's address
    to its loopback sshd; the test's ssh config includes it and sends every
    other 54.* address to a closed loopback port (nothing leaves the
    machine), and ferry is given that file through ``ferry.ssh_config``
    (OpenSSH reads ~/.ssh/config of the passwd home, not $HOME).
    """
    from ferry.sshd import free_port

    ssh_config = home / "ssh_config"
    ssh_config.write_text(
        f"Include {fake.ssh_config_path}\n\n"
        "# moto addresses with no sshd behind them lead to a closed loopback port, never off the machine\n"
        f"Host 54.*\n    HostName 127.0.0.1\n    Port {free_port()}\n"
    )
    for name in ("AWS_PROFILE", "AWS_DEFAULT_PROFILE", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", AWS_ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", AWS_SECRET_KEY)
    monkeypatch.setenv("USER", "ada")
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_EC2_ENDPOINT_URL", fake.base_url)
    monkeypatch.setenv("INVOKE_FERRY_PROVIDERS_EC2_SSH_USER", fake.pool.user)  # sshd logs in only its own user
    monkeypatch.setenv("INVOKE_FERRY_SSH_CONFIG", str(ssh_config))
    monkeypatch.setenv("INVOKE_FERRY_LAUNCH_TIMEOUT", "30")  # a broken path fails in seconds, not minutes
    seed_dlami(fake.region)


def ec2_instances(fake, *states: str, region: str | None = None) -> list[dict]:
    """moto's instances, asked of moto itself: the proxy's request log (and its faults) stay ferry's alone."""
    client = fake.client(endpoint_url=fake.moto_url, **({"region_name": region} if region else {}))
    found = [i for r in client.describe_instances()["Reservations"] for i in r["Instances"]]
    return [i for i in found if not states or i["State"]["Name"] in states]


def ec2_live(fake) -> list[dict]:
    return ec2_instances(fake, "pending", "running", "stopping", "stopped")


# -- the CLI, remembering what it printed ---------------------------------------------------------------
class Recorder:
    """The real CLI (conftest's FerryCLI), remembering every byte it printed (for the secret checks)."""

    def __init__(self, ferry):
        self.ferry, self.printed = ferry, []

    def __call__(self, *args, **kw) -> subprocess.CompletedProcess:
        proc = self.ferry(*args, **kw)
        self.printed.append(proc.stdout + proc.stderr)
        return proc

    def ok(self, *args, **kw) -> subprocess.CompletedProcess:
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"ferry {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


def failed(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """Exit ``code``, no traceback, the output ends in one ``error:`` (+ ``hint:``) line; progress notes may precede."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    errors = [i for i, l in enumerate(lines) if l.startswith("error: ")]
    assert len(errors) == 1 and all(l.startswith("hint: ") for l in lines[errors[0] + 1:]), proc.stderr
    return "\n".join(lines[errors[0]:])


def new_host_key(path: Path) -> None:
    for suffix in ("", ".pub"):
        Path(f"{path}{suffix}").unlink()
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)


# -- the harnesses -----------------------------------------------------------------------------------------
@dataclass
class Harness:
    """A provider as the contract drives it. Subclasses look behind ferry's back."""

    name: str
    cli: Recorder
    project: Path
    fake: Any = None
    gpu: tuple[str, ...] = ()  # what a create needs (``--gpu X``); reusing needs nothing
    not_offered: str | None = None  # a GPU alias ferry knows that this cloud does not rent
    create: str | None = None  # route key of the create call at the fake
    delete: str | None = None  # ... and of the terminate call
    faults: tuple[dict, ...] = ()  # transient API failures a launch must survive (fail_next keywords)
    refusals: dict[str, tuple[str, ...]] = field(default_factory=dict)  # verb -> what its refusal says
    key: str | None = None  # the credential every request to the fake must carry
    credential: Callable[[Any], str | None] | None = None  # ... as read from one recorded request
    secrets: tuple[str, ...] = ()  # never printed, never in the state file
    moves_on_start: bool = False  # a started instance answers at a new address
    unreachable: str = "did not become reachable"  # how a launch that never got ssh fails

    @property
    def capabilities(self) -> frozenset[str]:
        return capabilities(self.name)

    @property
    def launch(self) -> tuple[str, ...]:
        return ("launch", "--provider", self.name, *self.gpu)

    def state(self) -> dict:
        path = self.project / ".ferry" / "state.json"
        return json.loads(path.read_text()) if path.exists() else {"instances": {}}

    # looking behind ferry's back
    def ids(self) -> list[str]:
        """The instances that exist at the provider (ids as strings)."""
        raise NotImplementedError

    def ssh(self) -> dict:
        """Where the instance answers ssh, as ferry should record it."""
        raise NotImplementedError

    def remote_home(self) -> Path:
        raise NotImplementedError

    def powered(self) -> bool:
        raise NotImplementedError

    def rekey(self) -> None:
        """Same address and port, a new host key (a machine rebuilt behind it)."""
        raise NotImplementedError

    def requests_to(self, route: str | None) -> list:
        return self.fake.requests_to(route) if route else []


def known_hosts_name(ssh: dict) -> str:
    return ssh["host"] if ssh["port"] == 22 else f"[{ssh['host']}]:{ssh['port']}"


class LocalHarness(Harness):
    def provider(self):
        from ferry.providers.local import LocalProvider

        return LocalProvider(Path.home() / ".ferry" / "local")

    def ids(self):
        root = Path.home() / ".ferry" / "local"  # every directory there is an instance (or its remains)
        return sorted(p.name for p in root.iterdir()) if root.is_dir() else []

    def _sshd(self):
        from ferry.sshd import LoopbackSshd

        return LoopbackSshd(Path.home() / ".ferry" / "local" / "proj" / "sshd")

    def ssh(self):
        return {"host": "127.0.0.1", "port": self._sshd().port(), "user": USER}

    def remote_home(self):
        return Path.home() / ".ferry" / "local" / "proj" / "home"

    def powered(self):
        return self._sshd().running()

    def rekey(self):
        port = self._sshd().port()
        self.provider().stop("proj")
        new_host_key(self._sshd().host_key_path)
        self.provider().start("proj")
        assert self._sshd().port() == port


class EndpointHarness(Harness):
    """An instance that is one sshd of the test's SshdPool (a fake cloud's, or the ssh provider's host)."""

    def endpoint(self):
        raise NotImplementedError

    def ssh(self):
        endpoint = self.endpoint()
        return {"host": "127.0.0.1", "port": endpoint.port, "user": endpoint.user}

    def remote_home(self):
        return self.endpoint().home

    def rekey(self):
        endpoint = self.endpoint()
        port = endpoint.port
        self.pool.stop(endpoint)
        new_host_key(endpoint.sshd.host_key_path)
        self.pool.start(endpoint)
        assert endpoint.port == port


class SshHarness(EndpointHarness):
    host: Any = None  # the user's machine: an sshd of the test's pool, named "proj" in ferry.hosts
    pool: Any = None

    def endpoint(self):
        return self.host

    def ids(self):
        return [i["id"] for i in self.state()["instances"].values()]  # nothing is rented: what ferry recorded

    def powered(self):
        return self.host.running()


class FakeCloudHarness(EndpointHarness):
    @property
    def pool(self):
        return self.fake.pool

    def ids(self):
        table = self.fake.pods if self.name == "runpod" else self.fake.instances
        return [str(i) for i in table]

    def endpoint(self):
        (iid,) = self.ids()
        return self.fake.endpoint(iid)

    def powered(self):
        (iid,) = self.ids()
        return self.fake.machines[iid].powered


class EC2Harness(FakeCloudHarness):
    def ids(self):
        return [i["InstanceId"] for i in ec2_live(self.fake)]

    def ssh(self):
        (raw,) = ec2_live(self.fake)
        return {"host": raw["PublicIpAddress"], "port": 22, "user": self.fake.pool.user}

    def powered(self):
        self.fake.sync()
        return super().powered()


def bearer(request) -> str | None:
    header = request.authorization or ""
    return header[len("Bearer "):] if header.startswith("Bearer ") else None


def aws_access_key(request) -> str | None:
    """The access key id a SigV4 signature names."""
    header = request.authorization or ""
    return header.split("Credential=")[1].split("/")[0] if "Credential=" in header else None


RETRY_AFTER_0 = {"headers": {"Retry-After": "0"}}

HARNESSES: dict[str, dict] = {
    "local": dict(cls=LocalHarness),
    "ssh": dict(cls=SshHarness, refusals={
        "stop": ("ferry does not own proj", "it will not stop it", "remove it from ferry.hosts"),
        "terminate": ("ferry does not own proj", "it will not terminate it", "remove it from ferry.hosts")}),
    "runpod": dict(
        cls=FakeCloudHarness, gpu=("--gpu", "RTX4090"), not_offered="T4",
        create="POST /graphql podFindAndDeployOnDemand", delete="POST /graphql podTerminate",
        faults=({"status_code": 429, "match": "POST /graphql myself"},
                {"status_code": 500, "match": "podFindAndDeployOnDemand"},
                # A gateway's HTML page: the SDK parses it as JSON before looking at the status.
                {"status_code": 500, "match": "podFindAndDeployOnDemand",
                 "body": b"<html><body>500 Internal Server Error</body></html>"}),
        credential=bearer),
    "vast": dict(
        cls=FakeCloudHarness, gpu=("--gpu", "RTX4090"), not_offered="A10G",
        create="PUT /api/v0/asks", delete="DELETE /api/v0/instances",
        faults=({"status_code": 429, "match": "POST /api/v0/bundles", **RETRY_AFTER_0},
                {"status_code": 500, "times": 2, "match": "PUT /api/v0/asks"}),
        credential=bearer),
    "thunder": dict(
        cls=FakeCloudHarness, gpu=("--gpu", "A100"), not_offered="RTX4090",
        create="POST /instances/create", delete="/delete",
        faults=({"status_code": 429, "match": "GET /instances/list", **RETRY_AFTER_0},
                {"status_code": 500, "times": 2, "match": "POST /instances/create"}),
        refusals={"stop": ("thunder instances cannot be stopped", "ferry terminate --name proj --yes")},
        credential=bearer),
    "ec2": dict(
        cls=EC2Harness, gpu=("--gpu", "A10G"), not_offered="RTX4090",
        create="RunInstances", delete="TerminateInstances",
        faults=({"status_code": 429, "match": "DescribeInstances"},
                {"status_code": 500, "times": 2, "match": "RunInstances"}),
        key=AWS_ACCESS_KEY, credential=aws_access_key, secrets=(AWS_SECRET_KEY, AWS_ACCESS_KEY), moves_on_start=True,
        unreachable="no ssh server answered"),  # running with an address at once, no sshd behind it
}
CONFIGURE = {"runpod": configure_runpod, "vast": configure_vast, "thunder": configure_thunder, "ec2": configure_ec2}


def make(name: str, request, ferry, home: Path, project: Path, monkeypatch) -> Harness:
    """The harness for ``name``, with its fake started and the environment pointing the CLI at it."""
    spec = dict(HARNESSES[name])
    cls = spec.pop("cls")
    harness = cls(name=name, cli=Recorder(ferry), project=project, **spec)
    if name == "ssh":
        from ferry import sshkey

        pool = request.getfixturevalue("sshd_pool")
        public = sshkey.public_key(sshkey.private_key_path(None, home / ".ferry"))
        harness.host, harness.pool = pool.create(public, name="box"), pool
        (home / ".invoke.yaml").write_text(json.dumps(
            {"ferry": {"hosts": {"proj": f"{harness.host.user}@127.0.0.1:{harness.host.port}"}}}))
    elif name in CONFIGURE:
        harness.fake = request.getfixturevalue(f"fake_{name}")
        CONFIGURE[name](harness.fake, home, monkeypatch)
        if harness.credential is bearer:
            harness.key, harness.secrets = harness.fake.api_key, (harness.fake.api_key,)
    return harness
