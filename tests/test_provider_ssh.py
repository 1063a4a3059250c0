"""Hosts the user already has (``ferry.hosts``): a real loopback sshd registered in the project's config.

The loop on such a host, and that stop and terminate leave it alone, are
the contract (tests/test_contract.py); here is what only ``ferry.hosts``
has: entries, their forms and ssh_config aliases. Run through ``inv`` with a project ``tasks.py``, so the project's
``invoke.yaml`` (where ``ferry.hosts`` lives) is read the way a user's is.
"""

from __future__ import annotations

import getpass
import json
import subprocess
import sys
from pathlib import Path

import pytest

from ferry import sshkey
from ferry.errors import ConfigError
from ferry.records import SSHEndpoint
from ferry.providers.base import ProviderConfig
from ferry.providers import ssh as ssh_provider


INV = str(Path(sys.executable).with_name("inv"))


@pytest.fixture
def box(project, sshd_pool):
    """A machine of the user's: an sshd that trusts ferry's key, with its own HOME."""
    public = sshkey.public_key(sshkey.private_key_path(None, Path.home() / ".ferry"))
    endpoint = sshd_pool.create(public, name="box")
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")
    yield endpoint


def write_hosts(project: Path, hosts: dict) -> None:
    (project / "invoke.yaml").write_text(json.dumps({"ferry": {"hosts": hosts}}))  # JSON is YAML


def inv(project: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([INV, *args], cwd=project, capture_output=True, text=True, timeout=90)


def error_of(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[-2].startswith("error: ") and lines[-1].startswith("hint: "), proc.stderr
    return proc.stderr


def test_an_ssh_config_alias_is_resolved_to_its_real_address(box, project, home):
    # OpenSSH reads ~/.ssh/config of the passwd home, not $HOME: the test names its file.
    ssh_config = home / "ssh_config"
    ssh_config.write_text(f"Host gpu-alias\n    HostName 127.0.0.1\n    Port {box.port}\n    User {box.user}\n")
    settings = {"hosts": {"lab": "gpu-alias"}, "ssh_config": str(ssh_config)}
    provider = ssh_provider.make(ProviderConfig("ssh", settings))
    assert provider.get("lab").ssh == SSHEndpoint("127.0.0.1", box.port, box.user)
    assert provider.get("nope") is None
    (project / "invoke.yaml").write_text(json.dumps({"ferry": {
        "hosts": {"lab": "gpu-alias"}, "providers": {"ssh": {"ssh_config": str(ssh_config)}}}}))
    assert inv(project, "launch", "--provider", "ssh", "--name", "lab").returncode == 0
    assert inv(project, "run", "echo via alias").stdout == "via alias\n"
    known = (home / ".ferry" / "known_hosts").read_text()
    assert f"[127.0.0.1]:{box.port} " in known, "the key is filed under the real address"


def test_a_host_not_in_config_says_how_to_add_it(box, project):
    write_hosts(project, {"box": f"{box.user}@127.0.0.1:{box.port}"})
    err = error_of(inv(project, "launch", "--provider", "ssh", "--name", "other"))
    assert "no host named other in ferry.hosts" in err and "configured: box" in err
    assert "hosts: {other: 'user@host:port'}" in err
    state = project / ".ferry" / "state.json"
    assert not state.exists() or "other" not in json.loads(state.read_text())["instances"]


@pytest.mark.parametrize("entry", ["me@", "me@host:99999", "a b", "me@host:port"])
def test_malformed_entries_are_named(entry):
    provider = ssh_provider.make(ProviderConfig("ssh", {"hosts": {"bad": entry}}))
    with pytest.raises(ConfigError) as caught:
        provider.get("bad")
    assert "ferry.hosts.bad" in str(caught.value)


def test_user_and_port_forms(home):
    me = getpass.getuser()
    provider = ssh_provider.make(ProviderConfig("ssh", {"hosts": {
        "full": "alice@10.1.2.3:2222", "bare": "10.1.2.4", "v6": "bob@[::1]:2200",
    }}))
    assert provider.get("full").ssh == SSHEndpoint("10.1.2.3", 2222, "alice")
    assert provider.get("bare").ssh == SSHEndpoint("10.1.2.4", 22, me)
    assert provider.get("v6").ssh == SSHEndpoint("::1", 2200, "bob")
    assert [i.name for i in provider.list()] == ["bare", "full", "v6"]
    assert provider.list({"ferry-project": None}) == []
