"""What start-up imports: no cloud SDK for a command that has no key for that cloud (issue 15's RunPod trap)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from .conftest import assert_one_line_error


def imported_modules(project, *args: str) -> set[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNPOD_", "VAST_", "TNR_", "THUNDER_", "AWS_"))}
    proc = subprocess.run([sys.executable, "-X", "importtime", "-m", "ferry", *args], cwd=project, env=env,
                          capture_output=True, text=True, timeout=60)
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}


@pytest.mark.parametrize("argv", [["ls", "--all"], ["cost", "--json"]])
def test_commands_without_keys_import_no_cloud_sdk(project, argv):
    """Nor does boto3 get to ask the instance metadata endpoint (169.254.169.254) for credentials."""
    modules = imported_modules(project, *argv)
    assert "ferry.clouds" in modules  # it did ask every cloud
    sdks = sorted(m for m in modules if m.split(".")[0] in ("runpod", "vastai", "requests", "boto3", "botocore"))
    assert sdks == [], sdks


@pytest.mark.parametrize("argv", [["--list"], ["hf.publish-lora", "--help"], ["replicate.run", "--help"]])
def test_the_task_list_and_help_import_no_hub_sdk(project, argv):
    """huggingface_hub and replicate are extras, imported only by the command that talks to them."""
    modules = imported_modules(project, *argv)
    assert "ferry.tasks" in modules  # it did load the tasks
    sdks = sorted(m for m in modules if m.split(".")[0] in ("huggingface_hub", "replicate", "httpx", "boto3"))
    assert sdks == [], sdks


def test_yaml_is_parsed_only_for_a_yaml_config_file(project):
    """Invoke imports its vendored PyYAML for every command (~14 ms); ferry runs it only when a file needs it."""
    assert [m for m in imported_modules(project, "--list") if "yaml" in m] == []
    (project / "invoke.yaml").write_text("ferry:\n  env: {FOO: from-yaml}\n")
    assert [m for m in imported_modules(project, "--list") if m.startswith("invoke.vendor.yaml.")]
    shown = subprocess.run([sys.executable, "-m", "ferry", "config"], cwd=project, capture_output=True, text=True,
                           timeout=60)
    assert '"FOO": "from-yaml"' in shown.stdout, shown.stdout + shown.stderr


def test_pathspec_is_imported_only_for_a_path_a_rule_may_hold_back(launched, project):
    """Matching rules are pathspec's (~10 ms to import and parse); a sync none of whose paths could match a
    held-back pattern answers from the cached translation of the rules and never imports it."""
    (project / "train.py").write_text("print('hi')\n")
    launched.ok("sync")  # the first scan translates the rules (and caches them)
    (project / "more.py").write_text("x = 1\n")
    assert [m for m in imported_modules(project, "sync") if m.startswith("pathspec")] == []
    (project / "server.pem").write_text("-----BEGIN PRIVATE KEY-----\nMII\n-----END PRIVATE KEY-----\n")
    assert "pathspec" in imported_modules(project, "sync")
    assert "server.pem" in launched.ok("sync", "--dry-run").stderr, "a secret is still held back"


def test_a_run_with_nothing_to_send_imports_no_temp_file_machinery(launched, project):
    """tempfile (with shutil, bz2, lzma, random) cost every `ferry run` ~4 ms before its first byte went out,
    though a run with nothing new to send makes no temporary file at all; hashlib (OpenSSL) and socket ~5 ms
    more, for names and a path only paramiko takes."""
    launched.ok("sync")
    modules = imported_modules(project, "run", "true")
    assert "ferry.sync" in modules  # it did check for changes
    assert sorted(m for m in modules if m in ("tempfile", "shutil", "secrets", "random", "hashlib", "socket")) == []


def test_ferrys_own_sha1_names_what_hashlib_would():
    """Record keys and ControlMaster socket names are SHA-1s: the same digests whichever module makes them,
    so no record or connection is orphaned by the switch away from hashlib (which loads OpenSSL, ~2.5 ms)."""
    import hashlib

    from ferry.digest import sha1

    for data in (b"", b"root@127.0.0.1:22", "workdir/\u00e9".encode()):
        assert sha1(data).hexdigest() == hashlib.sha1(data).hexdigest()
        assert sha1(data).digest() == hashlib.sha1(data).digest()


def test_git_failing_to_list_the_files_is_one_error_line_with_gits_reason(launched, project):
    """git's stderr is drained while its names are read: its reason reaches the user, whole."""
    (project / ".git" / "index").write_bytes(b"DIRC not really an index")
    proc = launched("sync")
    err = assert_one_line_error(proc)
    assert "git could not list the files of" in err and "index" in err, err


def test_invoke_gets_no_unittest_mock_at_start_up_and_everyone_after_gets_the_real_one(project):
    """invoke.context imports unittest.mock (with asyncio and ssl, ~20 ms) for MockContext alone. ferry's
    console lends it a stand-in while it imports: no command pays for it, and MockContext and any later
    import of unittest.mock still get the real thing."""
    modules = imported_modules(project, "--list")
    assert "invoke.context" in modules
    assert sorted(m for m in modules if m.split(".")[0] in ("unittest", "asyncio", "ssl")) == []
    check = (
        "import sys\n"
        "from ferry import console\n"
        "stand_in = console._defer_mock()\n"
        "import invoke\n"
        "console._restore_mock(stand_in)\n"
        "assert 'unittest' not in sys.modules\n"
        "from invoke import MockContext, Result\n"
        "c = MockContext(run=Result('hi'))\n"
        "assert c.run('echo').stdout == 'hi' and c.run.call_count == 1, c.run\n"  # a real Mock wraps run
        "from unittest import mock\n"
        "assert hasattr(mock, 'patch') and isinstance(c.run, mock.Mock)\n"
        "import unittest.mock as again\n"
        "assert again is mock and again is sys.modules['unittest.mock'] and hasattr(again, 'MagicMock')\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.stdout.strip() == "ok", proc.stderr


def test_tasks_run_with_the_garbage_collector_on_and_start_up_frozen_out_of_its_way(project):
    """Start-up runs with the cyclic collector off (~15 ms a command); a task that runs for hours (a map,
    a follow) must have it back, with start-up's objects frozen where it no longer walks them."""
    check = (
        "import gc, sys\n"
        "from ferry import program as p\n"
        "p.program.run = lambda *a, **k: print(gc.isenabled(), gc.get_freeze_count() > 10000)\n"
        "sys.argv = ['ferry', '--version']\n"
        "from ferry.console import main\n"
        "main()\n"
    )
    proc = subprocess.run([sys.executable, "-c", check], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.stdout.split() == ["True", "True"], proc.stdout + proc.stderr
