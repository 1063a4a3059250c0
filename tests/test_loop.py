"""The build-sync-run-sync loop end to end, through the real CLI, on a real loopback sshd.

The loop every provider keeps (launch, sync, run, download, stop/start,
terminate, a second launch) is tests/test_contract.py; here are the finer
points of each step, on the local provider.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import REPO, FerryCLI


def remote_workdir(ferry: FerryCLI) -> Path:
    status = json.loads(ferry.ok("status", "--json").stdout)
    return Path(status["workdir_root"]) / "proj"


def test_each_task_also_works_alone_in_later_invocations(launched, project):
    launched.ok("sync")
    assert launched.ok("run", "cat train.py").stdout == "print('training')\n"
    launched.ok("run", "mkdir -p results && echo 42 > results/answer.txt")
    launched.ok("download")
    assert (project / "results" / "answer.txt").read_text() == "42\n"


@pytest.mark.parametrize("code", [0, 1, 3, 137])
def test_run_exits_with_the_jobs_exit_code(launched, code):
    command = "kill -9 $$" if code == 137 else f"echo before-exit; exit {code}"
    proc = launched("run", command)
    assert proc.returncode == code, proc.stderr
    if code != 137:
        assert proc.stdout == "before-exit\n"


def test_commands_behave_as_typed_in_a_local_shell(launched):
    command = """printf '%s|' "two  spaces" 'single $NOT_EXPANDED' "it's" "$((6*7))"; echo "$FERRY_T" """
    proc = launched.ok("run", "--env", "FERRY_T=a 'b' $c", command)
    assert proc.stdout == "two  spaces|single $NOT_EXPANDED|it's|42|a 'b' $c\n"


TRICKY_NAMES = [
    "with space.txt", "quote'single.txt", 'quote"double.txt', "$dollar.txt", "star*.txt",
    "ünïcödé.txt", "-leading-dash.txt", "back\\slash.txt", "[brackets].txt", "new\nline.txt",
]


def test_tricky_file_names_sync_and_download_intact(launched, project):
    (project / "dir with space").mkdir()
    for name in TRICKY_NAMES:
        (project / "dir with space" / name).write_text(name)
    launched.ok("sync")
    workdir = remote_workdir(launched)
    for name in TRICKY_NAMES:
        assert (workdir / "dir with space" / name).read_text() == name
    # ...and back: remove locally, download restores each one byte for byte.
    for name in TRICKY_NAMES:
        (project / "dir with space" / name).unlink()
    launched.ok("download", "--path", "dir with space")
    for name in TRICKY_NAMES:
        assert (project / "dir with space" / name).read_text() == name


def test_ignored_files_never_travel(launched, project):
    launched.ok("sync")
    workdir = remote_workdir(launched)
    assert (workdir / "train.py").exists() and (workdir / "src" / "model.py").exists()
    assert (workdir / "notes.md").exists(), "untracked, not ignored files are part of the file set"
    assert not (workdir / ".venv").exists()
    assert not (workdir / "debug.log").exists()
    assert not (workdir / ".git").exists()
    assert not (workdir / ".ferry").exists()


def test_download_never_overwrites_a_newer_local_file_and_says_so(launched, project):
    launched.ok("run", "mkdir -p results && echo remote > results/a.txt && echo remote > results/b.txt")
    (project / "results").mkdir()
    newer = project / "results" / "a.txt"
    newer.write_text("local edit\n")
    future = time.time() + 3600
    os.utime(newer, (future, future))
    proc = launched.ok("download")
    assert newer.read_text() == "local edit\n"
    assert (project / "results" / "b.txt").read_text() == "remote\n"
    assert "results/a.txt" in proc.stderr and "newer" in proc.stderr


def test_download_never_deletes_local_files(launched, project):
    launched.ok("sync")
    (project / "local-only.txt").write_text("mine\n")
    launched.ok("download")
    assert (project / "local-only.txt").read_text() == "mine\n"


def test_launch_after_stop_starts_the_same_instance(launched, home):
    launched.ok("run", "echo 1 > marker")
    launched.ok("stop")
    launched.ok("launch")
    assert launched.ok("run", "cat marker").stdout == "1\n"
    assert len(list((home / ".ferry" / "local").iterdir())) == 1


def test_detach_returns_a_job_id_at_once(launched, project):
    release = project / "release"
    proc = launched.ok("run", "--detach", f"while [ ! -e {release} ]; do sleep 0.05; done; echo finished")
    job_id = proc.stdout.strip()
    assert job_id
    jobs = json.loads(launched.ok("jobs", "--json").stdout)
    assert job_id.isdigit(), "a short number to name it by"
    assert [j["state"] for j in jobs if str(j["number"]) == job_id] == ["running"], "it returned before the job ended"
    release.touch()
    assert launched.ok("logs", "-f", "--job", job_id).stdout == "finished\n"


def test_ctrl_c_detaches_and_the_job_keeps_running(launched, project):
    release = project / "release"
    proc = subprocess.Popen(
        [sys.executable, "-m", "ferry", "run",
         f"echo line 1; while [ ! -e {release} ]; do sleep 0.05; done; for i in 2 3 4 5 6; do echo line $i; done"],
        cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    first = proc.stdout.readline()
    assert first == "line 1\n"
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 130
    assert "keeps running" in err and "logs -f" in err
    assert "Traceback" not in err
    job = json.loads(launched.ok("jobs", "--json").stdout)[-1]
    assert job["state"] == "running"
    release.touch()
    followed = launched.ok("logs", "-f", "--job", job["id"])
    assert followed.stdout.splitlines()[-1] == "line 6"


def test_json_output_is_exactly_one_document(launched):
    for args in (["launch", "--json"], ["ls", "--json"], ["status", "--json"]):
        proc = launched.ok(*args)
        json.loads(proc.stdout)  # raises if anything else reached stdout


def test_ssh_print_gives_a_working_command(launched):
    launched.ok("sync")
    command = launched.ok("ssh", "--print").stdout.strip()
    proc = subprocess.run(command, shell=True, capture_output=True, text=True, timeout=30,
                          input="echo where=$(pwd); exit 0\n")
    assert proc.returncode == 0, proc.stderr
    assert f"where={remote_workdir(launched)}" in proc.stdout


def test_inv_chain_with_a_project_tasks_py(project, home):
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")
    inv = Path(sys.executable).with_name("inv")
    chain = subprocess.run(
        [str(inv), "launch", "sync", "run", "echo chained > out.txt && cat out.txt", "download"],
        cwd=project, capture_output=True, text=True, timeout=90,
    )
    assert chain.returncode == 0, chain.stderr
    assert chain.stdout == "chained\n"
    assert (project / "out.txt").read_text() == "chained\n"
    later = subprocess.run([str(inv), "run", "exit 4"], cwd=project, capture_output=True, text=True, timeout=60)
    assert later.returncode == 4


def test_example_project_runs_end_to_end(home, tmp_path):
    example = tmp_path / "hello"
    import shutil

    shutil.copytree(REPO / "examples" / "hello", example, ignore=shutil.ignore_patterns(".ferry", "results"))
    cli = FerryCLI(example)
    proc = cli.ok("launch", "sync", "run", f"{sys.executable} train.py", "download", "terminate", "--yes")
    assert "step 5/5" in proc.stdout
    metrics = json.loads((example / "results" / "metrics.json").read_text())
    assert metrics["steps"] == 5
