"""A user's first hour with the CLI, through both ``ferry`` and ``inv`` with a project tasks.py."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from .conftest import assert_one_line_error

INV = str(Path(sys.executable).with_name("inv"))


@pytest.fixture
def both(launched, project):
    """Run a task through ``ferry`` and through ``inv`` (the project's tasks.py imports ferry's ns)."""
    (project / "tasks.py").write_text("from ferry.tasks import ns\n")

    def run(program, *args, **kw):
        argv = [sys.executable, "-m", "ferry", *args] if program == "ferry" else [INV, *args]
        return subprocess.run(argv, cwd=project, capture_output=True, text=True, timeout=60, **kw)

    return run


@pytest.mark.parametrize("program", ["ferry", "inv"])
@pytest.mark.parametrize("argv", [["run", "--help"], ["run", "-h"], ["forward", "--help"], ["logs", "--help"],
                                  ["replicate.run", "--help"], ["fleet.run", "-h"]])
def test_help_after_a_task_prints_that_tasks_help(both, launched, program, argv):
    proc = both(program, *argv)
    assert proc.returncode == 0, proc.stderr
    assert f"{argv[0]} [--options]" in proc.stdout and "Docstring:" in proc.stdout
    assert json.loads(launched.ok("jobs", "--json").stdout) == [], "nothing ran on the instance"


@pytest.mark.parametrize("argv", [["ssh"], ["attach"]])
def test_terminal_commands_without_a_terminal_fail_at_once(launched, argv):
    started = time.monotonic()
    err = assert_one_line_error(launched(*argv, input=""), code=2)
    assert time.monotonic() - started < 20
    assert "terminal" in err and ("logs -f" in err or "ssh --print" in err)


def test_a_sync_after_a_download_is_quiet(launched, project):
    launched.ok("sync")
    launched.ok("run", "mkdir -p out && echo result > out/r.txt && echo note > notes2.md")
    launched.ok("download", "--path", "out", "--path", "notes2.md")
    for argv in (["sync"], ["sync", "--full"]):
        err = launched.ok(*argv).stderr
        assert "kept the instance's copy" not in err and "never sent" not in err, err
    (project / "notes2.md").write_text("edited here\n")
    assert "kept the instance's copy of notes2.md" in launched.ok("sync").stderr, "a copy that differs is said"


def test_housekeeping_git_exclude_backups_and_one_instance_schema(launched, project):
    assert "/.ferry/" in (project / ".git" / "info" / "exclude").read_text().splitlines()
    launched.ok("sync")
    for i in range(12):
        launched.ok("run", f"echo {i} > result.txt")
        (project / "result.txt").write_text("old\n")
        os.utime(project / "result.txt", (time.time() - 3600,) * 2)
        proc = launched.ok("download", "--path", "result.txt")
    assert len(list((project / ".ferry" / "backups").iterdir())) == 10
    assert "removed the 1 oldest download backup" in proc.stderr
    listed = json.loads(launched.ok("ls", "--json").stdout)[0]
    shown = json.loads(launched.ok("status", "--json").stdout)
    assert set(listed) == set(shown) and {"uptime_seconds", "cost_so_far", "current"} <= set(shown)


def test_completion_offers_values_for_names_gpus_providers_and_jobs(launched):
    launched.ok("run", "--label", "train", "true")

    def complete(*words):
        return launched.ok("--complete", "--", "ferry", *words).stdout.split()

    assert "proj" in complete("run", "--name")
    assert {"A100", "H100", "RTX4090"} <= set(complete("launch", "--gpu"))
    assert {"local", "runpod", "auto"} <= set(complete("launch", "--provider"))
    assert "train" in complete("logs", "-j")
    assert "launch" in complete("la"), "task names still complete as Invoke does"


def test_jobs_have_short_numbers_and_j_takes_a_number_a_label_or_a_prefix(launched):
    refs = [launched.ok("run", "--detach", "--label", label, f"echo {label}").stdout.strip()
            for label in ("prep", "train", "eval")]
    assert refs == ["1", "2", "3"]
    launched.ok("wait", "-j", "3")
    listed = json.loads(launched.ok("jobs", "--json").stdout)
    assert [j["number"] for j in listed] == [1, 2, 3]
    assert launched.ok("logs", "-j", "2").stdout == "train\n"
    assert launched.ok("logs", "-j", "eval").stdout == "eval\n"
    full = listed[0]["id"]
    assert launched.ok("logs", "-j", full[:-2]).stdout == "prep\n", "a unique prefix of the id"
    err = assert_one_line_error(launched("logs", "-j", full[:8]), code=2)
    assert "jobs" in err, "an ambiguous prefix says so"
    table = launched.ok("jobs").stdout.splitlines()
    assert table[0].split()[0] == "#" and table[1].split()[0] == "1"
    proc = launched("run", "exit 3")
    assert proc.returncode == 3
    assert launched.ok("logs", "-j", "4").stdout == ""


def test_run_never_runs_stale_code(launched, project):
    (project / "train.py").write_text("print('v1')\n")
    proc = launched.ok("run", "python3 train.py")  # never synced: it syncs first
    assert proc.stdout == "v1\n" and "synced" in proc.stderr and "first" in proc.stderr
    (project / "train.py").write_text("print('v2')\n")
    proc = launched.ok("run", "python3 train.py")
    assert proc.stdout == "v2\n" and "synced 1 changed file first" in proc.stderr
    assert "synced" not in launched.ok("run", "true").stderr, "nothing changed: no line, no network"
    (project / "train.py").write_text("print('v3')\n")
    assert launched.ok("run", "--no-sync", "python3 train.py").stdout == "v2\n", "--no-sync runs what is there"
    proc = launched.ok("run", "python3 train.py", env={"INVOKE_FERRY_RUN_SYNC": "0"})  # (Invoke reads "0" as false)
    assert proc.stdout == "v2\n", "ferry.run.sync: false does it always"


def _on_a_terminal(project, *args, env=None) -> str:
    """Run ferry with a pseudo-terminal as stdout and stderr; what it wrote."""
    import pty

    main, secondary = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "ferry", *args], cwd=project, stdin=subprocess.DEVNULL,
                            stdout=secondary, stderr=secondary, env={**os.environ, "TERM": "xterm", **(env or {})})
    os.close(secondary)
    chunks = []
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    proc.wait(timeout=60)
    os.close(main)
    return b"".join(chunks).decode(errors="replace")


def test_colour_on_a_terminal_and_never_with_no_color(launched, project):
    shown = _on_a_terminal(project, "ls")
    assert "\x1b[" in shown and "RUNNING" in shown, "states are coloured on a terminal"
    plain = _on_a_terminal(project, "ls", env={"NO_COLOR": "1"})
    assert "\x1b[" not in plain and "RUNNING" in plain
    assert "\x1b[" not in launched.ok("ls").stdout, "plain into a pipe"
    err = _on_a_terminal(project, "logs", "-j", "nope")
    assert "\x1b[1;31merror: " in err or "\x1b[31;1merror: " in err or ("\x1b[" in err and "error: " in err)


def test_one_meaning_per_flag_letter_and_flags_say_what_they_take(ferry):
    from ferry.tasks import ns

    for name, task in ns.tasks.items():
        for arg in task.get_arguments():
            shorts = [n for n in arg.names if len(n) == 1]
            if "j" in shorts:
                assert arg.name == "job", (name, arg.names)
            assert arg.name != "json" or not shorts, f"--json has no short form ({name})"
            assert arg.name not in ("gpu_count", "gpu-count"), f"{name}: the GPU count is --gpus everywhere"
        shown = ferry.ok("--help", name).stdout
        assert "STRING" not in shown and "=INT" not in shown, shown
    assert {"gpus"} <= {a.name for a in ns.tasks["offers"].get_arguments()}
    assert {"gpus", "count"} <= {a.name for a in ns.tasks["launch"].get_arguments()}
    top = ferry.ok("--help").stdout
    assert "--echo" not in top and "--pty" not in top and "--debug" in top
    listed = ferry.ok("--list").stdout
    assert listed.index("Instances:") < listed.index("Files:") < listed.index("Jobs:") < listed.index("Clouds:")


def test_ssh_config_entries_let_plain_ssh_and_rsync_reach_instances(launched, project, home):
    written = home / ".ferry" / "ssh_config"
    assert "Host proj" in written.read_text(), "launch wrote the entry"
    ssh = ["ssh", "-F", str(written), "-o", "BatchMode=yes"]
    assert subprocess.run([*ssh, "proj", "echo via-alias"], capture_output=True, text=True, timeout=30).stdout == \
        "via-alias\n"
    launched.ok("sync")
    got = home / "got.py"
    subprocess.run(["rsync", "-e", " ".join(ssh), "proj:~/proj/train.py", str(got)], check=True, timeout=30)
    assert got.read_text() == (project / "train.py").read_text()
    proc = launched.ok("ssh-config", "--install")
    user_config = home / ".ssh" / "config"
    assert f"Include {written}" in proc.stderr and user_config.read_text().startswith(f"Include {written}\n")
    launched.ok("ssh-config", "--install")
    assert user_config.read_text().count("Include") == 1, "once"
    assert subprocess.run(["ssh", "-F", str(user_config), "-o", "BatchMode=yes", "proj", "true"],
                          timeout=30).returncode == 0
    launched.ok("terminate", "--yes")
    assert "Host proj" not in written.read_text(), "terminate removed it"


def test_money_and_surprises_are_said(ferry, project):
    proc = ferry.ok("launch", "--name", "a", "--gpu", "A100")
    assert "warning: local instances have no GPUs; --gpu A100 is ignored there" in proc.stderr
    err = assert_one_line_error(ferry("offers", "--gpu", "H100X"), code=2)
    assert "did you mean H100" in err
    assert "current instance" not in proc.stderr, "the first instance is no change"
    proc = ferry.ok("launch", "--name", "b")
    assert "the project's current instance is now b (was a)" in proc.stderr
