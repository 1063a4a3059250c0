"""Shared fixtures: a throwaway HOME, a git project in it, and the real ``ferry`` CLI.

Every local instance a test makes lives under its temporary HOME and is
powered off by pid at teardown (sshd, tmux server, job processes), also
when the test fails. Paths stay short because unix sockets (tmux,
ControlMaster) cap them near 104 bytes.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

pytest_plugins = ["ferry.testing"]  # ferry_project, fake_cloud, mock_ferry: what users get for their own tests

REPO = Path(__file__).resolve().parents[1]
if (REPO / "tests" / "fakes" / "fixtures.py").exists():
    from tests.fakes.fixtures import *  # noqa: F401,F403  (fake clouds: fake_runpod, fake_vast, ...)


def power_off_local_instances(home: Path) -> None:
    from ferry.providers.local import LocalProvider

    provider = LocalProvider(home / ".ferry" / "local")
    for instance in provider.list():
        provider.terminate(instance.id)


@pytest.fixture
def home(monkeypatch) -> Path:
    directory = Path(tempfile.mkdtemp(prefix="fh", dir="/tmp"))
    monkeypatch.setenv("HOME", str(directory))
    monkeypatch.delenv("INVOKE_FERRY_PROVIDER", raising=False)
    try:
        yield directory
    finally:
        power_off_local_instances(directory)
        shutil.rmtree(directory, ignore_errors=True)


def ferry_labels(home: Path | None = None, project: str = "proj", **more: str) -> dict[str, str]:
    """The labels ferry puts on what it launches: the project, and this machine's id (made at the first launch)."""
    home = home or Path.home()
    return {"ferry-project": project, "ferry-machine": (home / ".ferry" / "machine-id").read_text().strip(), **more}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "init.defaultBranch=main", *args],
        cwd=cwd, check=True, capture_output=True, text=True,
    ).stdout


@pytest.fixture
def project(home, monkeypatch) -> Path:
    """A small git project: tracked code, an untracked new file, and ignored junk."""
    root = home / "proj"
    (root / "src").mkdir(parents=True)
    (root / "train.py").write_text("print('training')\n")
    (root / "src" / "model.py").write_text("WEIGHTS = 1\n")
    (root / ".gitignore").write_text(".venv/\n*.log\nresults/\n")
    git(root, "init", "-q")
    git(root, "add", "-A")
    git(root, "commit", "-qm", "init")
    (root / "notes.md").write_text("untracked but not ignored\n")
    (root / ".venv" / "lib").mkdir(parents=True)
    (root / ".venv" / "lib" / "big.py").write_text("ignored\n")
    (root / "debug.log").write_text("ignored\n")
    monkeypatch.chdir(root)
    return root


class FerryCLI:
    """Runs the real console script in a subprocess, the way a user would."""

    def __init__(self, cwd: Path):
        self.cwd = cwd

    def __call__(self, *args: str, timeout: float = 90, input: str | None = None, cwd: Path | None = None,
                 env: dict | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "ferry", *args],
            cwd=cwd or self.cwd, capture_output=True, text=True, timeout=timeout, input=input,
            env={**os.environ, **(env or {})},
        )

    def ok(self, *args: str, **kw) -> subprocess.CompletedProcess:
        proc = self(*args, **kw)
        assert proc.returncode == 0, f"ferry {' '.join(args)} exited {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
        return proc


@pytest.fixture
def ferry(project) -> FerryCLI:
    return FerryCLI(project)


@pytest.fixture
def launched(ferry) -> FerryCLI:
    ferry.ok("launch")
    return ferry


def assert_one_line_error(proc: subprocess.CompletedProcess, code: int = 1) -> str:
    """Expected failures: exit code, 'error: ...' (and maybe 'hint: ...'), never a traceback."""
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert all(l.startswith(("error: ", "hint: ")) for l in lines), proc.stderr
    return proc.stderr
