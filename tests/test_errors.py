"""Bad input gets one clear line and exit status 1 (2 for usage), and loses nothing."""

from __future__ import annotations

import os
import re
import stat

import pytest

from .conftest import assert_one_line_error


def test_run_without_an_instance(ferry, project):
    err = assert_one_line_error(ferry("run", "true"))
    assert "ferry launch" in err, "the hint names the program the user typed"
    assert not (project / ".ferry" / "state.json").exists()


def test_unknown_provider(ferry, home):
    err = assert_one_line_error(ferry("launch", "--provider", "nimbus"), code=2)
    assert "nimbus" in err and "local" in err
    assert not (home / ".ferry" / "local").exists()


@pytest.mark.parametrize("name", ["Bad_Name", "-x", "a" * 64, "semi;colon", "sp ace"])
def test_bad_instance_name(ferry, home, name):
    err = assert_one_line_error(ferry("launch", "--name", name), code=2)
    assert "bad instance name" in err
    assert not (home / ".ferry" / "local").exists()


def test_download_of_a_missing_path(launched, project):
    err = assert_one_line_error(launched("download", "--path", "results"))
    assert "ferry sync" in err, "nothing synced yet: say so"
    launched.ok("sync")
    err = assert_one_line_error(launched("download", "--path", "no/such/thing"))
    assert "no/such/thing" in err
    assert not (project / "no").exists()


@pytest.mark.parametrize("path", ["../escape", "/etc/passwd"])
def test_download_refuses_paths_outside_the_workdir(launched, path):
    assert_one_line_error(launched("download", "--path", path), code=2)


def test_missing_rsync_names_the_package(launched, tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("ssh", "git", "ssh-keygen"):
        os.symlink(f"/usr/bin/{tool}", bin_dir / tool)
    err = assert_one_line_error(launched("sync", env={"PATH": str(bin_dir)}))
    assert "rsync" in err and "apt-get install -y rsync" in err


def test_missing_sshd_names_the_package(home, monkeypatch):
    from ferry import tools
    from ferry.errors import MissingToolError
    from ferry.records import InstanceSpec
    from ferry.providers.local import LocalProvider

    monkeypatch.setenv("PATH", "/nonexistent")
    monkeypatch.setattr(tools, "EXTRA_DIRS", ())
    with pytest.raises(MissingToolError) as caught:
        LocalProvider(home / "local").create(InstanceSpec(name="x", public_key="ssh-ed25519 AAAA x"))
    assert "sshd" in caught.value.message and "openssh-server" in caught.value.hint
    assert not (home / "local" / "x").exists(), "a failed create leaves no half-made instance"


def test_changed_host_key_is_refused_with_the_fix(launched, home):
    import ferry
    from ferry import known_hosts

    box = ferry.box()
    box.remote.close()  # a fresh connection is where host keys are checked
    path = known_hosts.path()
    fake = "AAAAC3NzaC1lZDI1NTE5AAAAIG8mD3Ws2sYrkJk8i1o1rWb0Q1m3oY6kq3bq2o9yWQ2R"
    path.write_text(re.sub(r"ssh-ed25519 \S+", f"ssh-ed25519 {fake}", path.read_text()))
    err = assert_one_line_error(launched("run", "true"))
    assert "host key" in err and "pin-host-key --name proj" in err
    # Fabric (paramiko) enforces the same pin.
    import paramiko

    with pytest.raises(paramiko.BadHostKeyException):
        box.connection().run("true", hide=True, in_stream=False)


def test_ferry_key_and_known_hosts_are_private(launched, home):
    for path in (home / ".ferry" / "keys" / "id_ed25519", home / ".ferry" / "known_hosts"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((home / ".ferry" / "keys").stat().st_mode) == 0o700


def test_debug_shows_the_traceback(ferry):
    proc = ferry("--debug", "run", "true")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "error: this project has no instance" in proc.stderr


def test_no_traceback_for_a_corrupt_state_file(ferry, project):
    (project / ".ferry").mkdir()
    (project / ".ferry" / "state.json").write_text("{not json")
    err = assert_one_line_error(ferry("run", "true"))
    assert "state.json" in err
    assert (project / ".ferry" / "state.json").read_text() == "{not json", "nothing overwritten"


@pytest.mark.parametrize("argv", [["launch", "--bogus"], ["nosuchtask"], ["run"], ["offers", "--gpus", "x"],
                                  ["launch", "--launch-timeout", "5q"]])
def test_bad_usage_exits_2_with_one_line(ferry, argv):
    assert_one_line_error(ferry(*argv), code=2)


def test_hints_name_the_program_the_user_typed(ferry, project):
    import subprocess
    import sys
    from pathlib import Path

    assert "hint: launch one first: ferry launch" in ferry("run", "true").stderr
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")
    inv = str(Path(sys.executable).with_name("inv"))
    proc = subprocess.run([inv, "run", "true"], cwd=project, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and "hint: launch one first: inv launch" in proc.stderr, proc.stderr


def test_every_duration_flag_takes_the_same_spellings(launched):
    """One parser for every duration: the check that refuses these comes after the flag was read."""
    err = assert_one_line_error(launched("modify", "--disk", "200", "--timeout", "10m"))
    assert "cannot be changed in place" in err
    err = assert_one_line_error(launched("clone", "--to", "other", "--launch-timeout", "10m"))
    assert "cannot clone" in err
    assert_one_line_error(launched("modify", "--disk", "200", "--timeout", "10 parsecs"), code=2)
