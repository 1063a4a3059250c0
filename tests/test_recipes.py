"""The recipes and task files the repository ships, run end to end on the local provider."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from .conftest import REPO, git

INV = str(Path(sys.executable).with_name("inv"))


def hello(home: Path) -> Path:
    """A copy of examples/hello as a git project of its own."""
    project = home / "hello"
    shutil.copytree(REPO / "examples" / "hello", project)
    git(project, "init", "-q")
    return project


def local_status(project: Path, name: str) -> str:
    proc = subprocess.run([sys.executable, "-m", "ferry", "status", "--name", name, "--json"], cwd=project,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)["status"]


def test_train_recipe_runs_the_loop_and_stops_the_instance(home):
    project = hello(home)
    recipe = str(REPO / "local_scripts" / "train.py")
    proc = subprocess.run([sys.executable, recipe, "--provider", "local", "--name", "tr", "--env", "STEPS=3", "--",
                           "python3", "train.py"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "step 3/3" in proc.stdout, "the job's output streamed through"
    assert json.loads((project / "results" / "metrics.json").read_text())["steps"] == 3
    assert "synced" in proc.stderr and "downloaded" in proc.stderr, "the library's progress lines show in a script"
    assert "build: nothing to build" in proc.stderr, "the build step ran (hello has nothing to install)"
    assert local_status(project, "tr") == "STOPPED"

    # A failing run: its exit code comes back, what it wrote still comes home, the instance still stops.
    (project / "fail.py").write_text("import os\nos.makedirs('results', exist_ok=True)\n"
                                     "open('results/partial.txt', 'w').write('half')\nraise SystemExit(7)\n")
    proc = subprocess.run([sys.executable, recipe, "--provider", "local", "--name", "tr", "--", "python3", "fail.py"],
                          cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert (project / "results" / "partial.txt").read_text() == "half"
    assert local_status(project, "tr") == "STOPPED"


def test_train_recipe_help():
    proc = subprocess.run([sys.executable, str(REPO / "local_scripts" / "train.py"), "--help"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--gpu" in proc.stdout and "launch -> sync -> build -> run" in proc.stdout


def test_the_example_projects_own_task_uses_the_python_api(home):
    project = hello(home)
    proc = subprocess.run([INV, "launch", "train", "--steps", "2"], cwd=project, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert json.loads((project / "results" / "metrics.json").read_text())["steps"] == 2
    assert "synced" in proc.stderr and "downloaded" in proc.stderr, "a custom task shows the built-in lines"


def test_the_repository_tasks_file_has_ferrys_tasks_and_its_own():
    proc = subprocess.run([INV, "--list"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    listed = {line.split()[0] for line in proc.stdout.splitlines()[1:] if line.strip()}
    assert {"test", "lint", "bench", "launch", "sync", "run", "download"} <= listed
