"""Settings, API key lookup, secret masking, GPU aliases and launch flag checks."""

from __future__ import annotations

import json

import pytest

from ferry import apikeys, gpus
from ferry.config import Settings
from ferry.errors import ConfigError, UsageError

from .conftest import assert_one_line_error

KEY = "rpa_SECRETSECRETSECRET1234"


def write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def test_runpod_key_lookup_order(home, project, monkeypatch):
    monkeypatch.delenv("RUNPOD_API_KEY", raising=False)
    settings = Settings.of(None)
    with pytest.raises(ConfigError) as missing:
        apikeys.key(settings, "runpod")
    assert "RUNPOD_API_KEY" in missing.value.hint and ".runpod/config.toml" in missing.value.hint
    write(home / ".runpod" / "config.toml", '[default]\napi_key = "from-toml"\n')
    assert apikeys.key(settings, "runpod") == "from-toml"
    write(home / ".runpod" / "api_key", "from-file\n")
    assert apikeys.key(settings, "runpod") == "from-file"
    write(home / ".config" / ".env.global", "RUNPOD_API_KEY=from-global\n")
    assert apikeys.key(settings, "runpod") == "from-global"
    write(project / ".env", "OTHER=1\nRUNPOD_API_KEY=from-dotenv\nMORE=2\n")
    assert apikeys.key(settings, "runpod") == "from-dotenv", "a .env contributes the value, never the whole file"
    monkeypatch.setenv("RUNPOD_API_KEY", "from-env")
    assert apikeys.key(settings, "runpod") == "from-env"


def test_config_masks_every_secret(ferry, project):
    write(project / ".env", f"RUNPOD_API_KEY={KEY}\n")
    proc = ferry.ok("config")
    assert KEY not in proc.stdout + proc.stderr
    assert "rpa****34" in proc.stdout and ".env" in proc.stdout
    report = json.loads(ferry.ok("config", "--json").stdout)
    assert report["api_keys"]["runpod"]["set"] is True
    assert KEY not in json.dumps(report)


def test_doctor_reports_tools_and_keys(ferry):
    proc = ferry.ok("doctor", "--json")
    checks = {c["what"]: c for c in json.loads(proc.stdout)}
    assert checks["local tool rsync"]["ok"] and checks["ssh key"]["ok"]
    assert checks["runpod API key"]["ok"] is False and "RUNPOD_API_KEY" in checks["runpod API key"]["fix"]


def test_doctor_checks_the_instance_side_tools(launched):
    checks = {c["what"]: c for c in json.loads(launched.ok("doctor", "--json").stdout)}
    assert checks["proj: tmux"]["ok"] and checks["proj: rsync"]["ok"]


@pytest.mark.parametrize("alias,provider,count,expected", [
    ("h100", "runpod", 1, "NVIDIA H100 80GB HBM3"),
    ("A100_SXM", "vast", 1, "A100 SXM4"),
    ("rtx-4090", "vast", 1, "RTX 4090"),
    ("A10G", "ec2", 4, "g5.12xlarge"),
    ("T4", "thunder", 1, "t4"),
    ("NVIDIA GeForce RTX 5090", "runpod", 1, "NVIDIA GeForce RTX 5090"),  # exact id passes through
    ("g5.2xlarge", "ec2", 1, "g5.2xlarge"),
])
def test_gpu_aliases(alias, provider, count, expected):
    assert gpus.resolve(alias, provider, count) == expected


def test_unknown_gpu_lists_the_known_ones():
    with pytest.raises(UsageError) as caught:
        gpus.resolve("B300X", "runpod")
    assert "H100" in caught.value.hint and "RTX4090" in caught.value.hint
    with pytest.raises(UsageError, match="does not offer"):
        gpus.resolve("A10G", "runpod")


@pytest.mark.parametrize("flags", [["--gpus", "two"], ["--disk", "-5"], ["--ports", "80,http"], ["--count", "0"]])
def test_bad_launch_flags_are_usage_errors(ferry, home, flags):
    assert_one_line_error(ferry("launch", *flags), code=2)
    assert not (home / ".ferry" / "local").exists()


def test_launch_count_makes_named_instances_concurrently(ferry, home):
    made = json.loads(ferry.ok("launch", "--name", "grp", "--count", "3", "--json").stdout)
    assert sorted(i["name"] for i in made) == ["grp-0", "grp-1", "grp-2"]
    assert all(i["labels"]["ferry-group"] == "grp" for i in made)
    assert len({i["ssh"]["port"] for i in made}) == 3
    again = json.loads(ferry.ok("launch", "--name", "grp", "--count", "3", "--json").stdout)
    assert sorted(i["id"] for i in again) == sorted(i["id"] for i in made), "idempotent by name"
    listed = json.loads(ferry.ok("ls", "--all", "--json").stdout)
    assert sorted(i["name"] for i in listed if i["provider"] == "local") == ["grp-0", "grp-1", "grp-2"]


def test_terminate_by_provider_and_id(launched, home):
    refused = launched("terminate", "--provider", "local", "--id", "proj")
    assert_one_line_error(refused, code=2)
    assert "--provider local --id proj --yes" in refused.stderr
    launched.ok("terminate", "--provider", "local", "--id", "proj", "--yes")
    assert not (home / ".ferry" / "local" / "proj").exists()


def test_offers_with_no_cloud_keys_says_what_it_skipped(ferry, monkeypatch):
    for var in ("RUNPOD_API_KEY", "VAST_API_KEY", "TNR_API_TOKEN", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(var, raising=False)
    proc = ferry.ok("offers", "--gpu", "A100", "--json", env={"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent",
                                                               "AWS_CONFIG_FILE": "/nonexistent"})
    assert json.loads(proc.stdout) == []
    assert "skipped runpod" in proc.stderr


def test_provider_settings_come_from_defaults_config_and_environment_as_inv_reads_them(ferry, project, home):
    """A provider's block: its module's DEFAULTS < invoke.yaml < INVOKE_FERRY_PROVIDERS_<NAME>_<KEY> (typed)."""
    import subprocess
    import sys
    from pathlib import Path

    (project / "invoke.yaml").write_text("ferry:\n  env: {FOO: bar}\n  providers:\n    vast: {disk: 70}\n")
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")
    env = {"INVOKE_FERRY_PROVIDERS_RUNPOD_DISK": "80", "INVOKE_FERRY_PROVIDERS_EC2_REGION": "eu-west-1"}
    shown = json.loads(ferry.ok("config", "--json", env=env).stdout)["settings"]
    assert shown["providers"]["runpod"]["disk"] == 80, "typed like the default"
    assert shown["providers"]["ec2"]["region"] == "eu-west-1" and shown["providers"]["vast"]["disk"] == 70
    assert shown["providers"]["thunder"]["mode"] == "prototyping" and shown["env"] == {"FOO": "bar"}
    inv = str(Path(sys.executable).with_name("inv"))
    proc = subprocess.run([inv, "config", "--json"], cwd=project, capture_output=True, text=True, timeout=60,
                          env={**__import__("os").environ, **env})
    assert json.loads(proc.stdout)["settings"] == shown, "ferry and inv read the same configuration"
