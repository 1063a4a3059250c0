"""ferry build on the local provider: the first build runs, an unchanged one is skipped at once, a changed byte rebuilds.

The project's requirements name a wheel in the project itself, installed
with ``--no-index`` (uv when the instance has it, else a venv and pip), so
nothing leaves the machine. Jobs then find the environment by themselves.
"""

from __future__ import annotations

import json
import shutil
import time
import zipfile
from pathlib import Path

import pytest

from .conftest import assert_one_line_error

WHEEL = "ferrydemo-1.0-py3-none-any.whl"


def make_wheel(directory: Path, value: str = "built") -> Path:
    """A pure-Python wheel by hand (a zip with the three dist-info files): no build backend, no index."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WHEEL
    files = {
        "ferrydemo/__init__.py": f"VALUE = {value!r}\n",
        "ferrydemo-1.0.dist-info/METADATA": "Metadata-Version: 2.1\nName: ferrydemo\nVersion: 1.0\n",
        "ferrydemo-1.0.dist-info/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    files["ferrydemo-1.0.dist-info/RECORD"] = "".join(f"{name},,\n" for name in [*files, "ferrydemo-1.0.dist-info/RECORD"])
    with zipfile.ZipFile(path, "w") as zf:
        for name, text in files.items():
            zf.writestr(name, text)
    return path


def build_jobs(ferry) -> list[dict]:
    return [j for j in json.loads(ferry.ok("jobs", "--json").stdout) if j["label"] == "build"]


@pytest.fixture
def reqs_project(project):
    make_wheel(project / "wheels")
    (project / "requirements.txt").write_text(f"--no-index\n./wheels/{WHEEL}  # pinned\n")
    (project / "app.py").write_text("import os, ferrydemo\nprint('ferrydemo', ferrydemo.VALUE, os.environ.get('VIRTUAL_ENV'))\n")
    return project


def test_build_runs_once_is_skipped_when_unchanged_and_rebuilds_on_one_changed_byte(reqs_project, ferry):
    # The chain a user types: the build runs as a job, and the next job finds its environment untold.
    proc = ferry.ok("launch", "sync", "build", "run", "python app.py", timeout=120)
    assert "build: a venv in .venv + pip install -r requirements.txt" in proc.stderr
    assert "ferrydemo" in proc.stdout and "Successfully installed ferrydemo" in proc.stdout, "the build's output streamed"
    assert "ferrydemo built" in proc.stdout, "`python` is the built environment's"
    assert proc.stdout.strip().splitlines()[-1].endswith("/proj/.venv"), "VIRTUAL_ENV is set for jobs"
    assert len(build_jobs(ferry)) == 1

    # Nothing changed: one line, no job, at once (one ssh exec on the shared connection).
    started = time.monotonic()
    proc = ferry.ok("build")
    cli_seconds = time.monotonic() - started
    assert "unchanged since the last build" in proc.stderr and "skipped" in proc.stderr
    assert [l for l in proc.stderr.splitlines() if l.strip()] == [l for l in proc.stderr.splitlines() if "build:" in l]
    assert len(build_jobs(ferry)) == 1, "a skipped build starts no job"
    import ferry as api

    box = api.box()
    box.build()  # warm the connection as the CLI's own was
    started = time.monotonic()
    skipped = box.build()
    library_seconds = time.monotonic() - started
    assert not skipped.ran and library_seconds < 0.5, library_seconds
    assert cli_seconds < 2, cli_seconds  # Python and Invoke start-up included (about 0.3 s here)

    # One changed byte: one rebuild, then skipped again.
    text = (reqs_project / "requirements.txt").read_text()
    (reqs_project / "requirements.txt").write_text(text.replace("# pinned", "# pinneD"))
    proc = ferry.ok("build", timeout=120)
    assert "build: a venv" in proc.stderr and "skipped" not in proc.stderr
    assert len(build_jobs(ferry)) == 2
    assert "skipped" in ferry.ok("build").stderr
    assert len(build_jobs(ferry)) == 2

    # --force rebuilds whatever the inputs.
    proc = ferry.ok("build", "--force", timeout=120)
    assert "skipped" not in proc.stderr and len(build_jobs(ferry)) == 3


MAKE_ENV = """mkdir -p myenv/bin
printf '#!/bin/sh\\necho tool from myenv\\n' > myenv/bin/mytool && chmod +x myenv/bin/mytool
echo made myenv
"""


def test_a_build_command_of_ones_own_its_failure_and_a_removed_environment(project, launched, home):
    (project / "invoke.yaml").write_text("ferry:\n  build:\n    command: sh make_env.sh\n"
                                         "    inputs: ['make_env.sh']\n    env: myenv\n")
    (project / "make_env.sh").write_text(MAKE_ENV + "exit 3\n")
    proc = launched("build")
    assert proc.returncode == 3, proc.stderr  # the build's own exit code
    assert "made myenv" in proc.stdout
    assert launched("build").returncode == 3, "a failed build is never recorded as done: it runs again"

    (project / "make_env.sh").write_text(MAKE_ENV)
    proc = launched.ok("build")
    assert "build: sh make_env.sh (ferry.build.command, make_env.sh)" in proc.stderr
    proc = launched.ok("run", 'mytool; echo "VIRTUAL_ENV=$VIRTUAL_ENV"; echo "PATH=$PATH"')
    assert "tool from myenv" in proc.stdout and "VIRTUAL_ENV=" in proc.stdout
    path = proc.stdout.split("PATH=", 1)[1].split(":")
    assert path[0].endswith("/proj/myenv/bin") and path[1].endswith("/home/.local/bin"), path[:2]
    assert "skipped" in launched.ok("build").stderr

    shutil.rmtree(home / ".ferry" / "local" / "proj" / "home" / "proj" / "myenv")  # gone on the instance
    proc = launched.ok("build")
    assert "skipped" not in proc.stderr and "made myenv" in proc.stdout, "a missing environment is built again"
    assert len(build_jobs(launched)) == 4  # two failed, one made it, one after the removal


def test_nothing_to_build_is_fine_in_a_chain(project, ferry):
    proc = ferry.ok("launch", "build", "run", "echo after")
    assert "build: nothing to build" in proc.stderr and "after" in proc.stdout


def test_inputs_the_instance_lacks_are_named_with_the_fix(project, launched):
    (project / "requirements.txt").write_text("--no-index\n")
    err = assert_one_line_error(launched("build", "--no-sync"))
    assert "requirements.txt is not on proj yet" in err and "ferry sync" in err


def test_what_build_picks(tmp_path):
    from ferry.build import plan
    from ferry.config import Settings

    settings = Settings({"project_dir": str(tmp_path), "build": {}})
    assert plan(settings) is None
    (tmp_path / "environment.yml").write_text("name: torchy\ndependencies: [python=3.11]\n")
    conda = plan(settings)
    assert conda.env_kind == "conda" and conda.env == "miniforge3/envs/torchy" and conda.inputs == ["environment.yml"]
    (tmp_path / "requirements-dev.txt").write_text("")
    (tmp_path / "requirements.txt").write_text("")
    assert plan(settings).inputs == ["requirements-dev.txt", "requirements.txt"]
    (tmp_path / "pyproject.toml").write_text("[project]\nname='x'\n")
    assert plan(settings).how.startswith("uv sync (pyproject.toml")
    (tmp_path / "uv.lock").write_text("")
    locked = plan(settings)
    assert "uv sync --locked" in locked.command and locked.inputs == ["uv.lock", "pyproject.toml"]
    settings.data["build"] = {"command": "make env", "inputs": ["*.toml", "uv.lock"]}
    own = plan(settings)
    assert own.command == "make env" and own.inputs == ["pyproject.toml", "uv.lock"]
