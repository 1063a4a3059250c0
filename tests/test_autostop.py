"""Autostop and --then, enforced by the instance's own agent: real sshd, tmux and agent on the local provider.

The agent checks every ``ferry.autostop_check`` (1 s here, 0.5 s where a test
waits for a non-event) and acts through the local self-stop path (its sshd
and every process the instance started end, as ``ferry stop`` would). Every
case ends with no ferry process alive: the deciding is the instance's alone.
"""

from __future__ import annotations

import json
import os
import pty
import subprocess
import time
from pathlib import Path

import pytest

from ferry.providers.local import LocalProvider

pytestmark = pytest.mark.timeout(90)

FAST = {"INVOKE_FERRY_AUTOSTOP_CHECK": "0.5s"}


def instance_dir(home: Path) -> Path:
    return home / ".ferry" / "local" / "proj"


def running(home: Path) -> bool:
    found = LocalProvider(home / ".ferry" / "local").get("proj")
    return bool(found and found.status.value == "RUNNING")


def wait_until(predicate, timeout: float, step: float = 0.1) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(step)
    return predicate()


def agent_log(home: Path) -> str:
    path = instance_dir(home) / "home" / ".ferry" / "autostop" / "log"
    return path.read_text() if path.exists() else ""


def job_record(home: Path) -> dict:
    """Every small file in the instance's job directories (what a failure needs to say where it stopped)."""
    jobs = instance_dir(home) / "home" / ".ferry" / "jobs"
    found = {}
    for path in sorted(jobs.rglob("*")) if jobs.exists() else []:
        if path.is_file() and path.stat().st_size < 2000:
            found[str(path.relative_to(jobs))] = path.read_text(errors="replace")
        else:
            found[str(path.relative_to(jobs))] = "(dir or big)"
    return found


def holds(home: Path, seconds: float) -> bool:
    """Still running after ``seconds``: what "it holds the instance" means."""
    return not wait_until(lambda: not running(home), seconds)


def test_an_idle_instance_stops_itself_and_starts_its_agent_again_after_a_restart(ferry, home):
    proc = ferry.ok("launch", "--autostop", "2s", env=FAST)
    assert "autostop: proj stops itself after 2s idle" in proc.stderr
    shown = json.loads(ferry.ok("status", "--json", env=FAST).stdout)["autostop"]
    assert shown["agent"] == "running" and shown["idle"] == "2" and shown["action"] == "stop"
    # Nothing of ferry's runs now (its ControlMaster does, and does not count): the instance decides alone.
    assert wait_until(lambda: not running(home), 10), "an idle instance stops within the window"
    assert "acting: stop (idle for" in agent_log(home)
    assert "STOPPED" in ferry.ok("ls").stdout

    # A restart (a reboot, to the instance) brings the agent back with a fresh clock, and the same policy.
    ferry.ok("start", env=FAST)
    assert running(home)
    assert wait_until(lambda: not running(home), 10), f"the restarted agent stops it again:\n{agent_log(home)}"
    assert agent_log(home).count("acting: stop") == 2


def test_a_running_job_holds_the_instance_until_it_ends(ferry, home, project):
    # 3 s: the job must be running before the instance has been idle that long, also on a loaded machine.
    ferry.ok("launch", "--autostop", "3s", env=FAST)
    release = instance_dir(home) / "home" / "proj" / "release"
    ferry.ok("run", "--detach", "while [ ! -f release ]; do sleep 0.1; done", env=FAST)
    assert holds(home, 4), "a running job keeps the instance up past the idle time"
    assert "busy: 1 job(s) running" in agent_log(home)
    release.write_text("go")
    assert wait_until(lambda: not running(home), 10), "once the job ends, idle time counts and it stops"


def test_an_interactive_session_holds_it_and_an_ssh_forward_does_not(ferry, home, project):
    ferry.ok("launch", "--autostop", "3s", env=FAST)  # 3 s: time for the sessions to open under load
    printed = ferry.ok("ssh", "--print").stdout.strip()
    forward = subprocess.Popen([*ssh_words(printed, tty=False), "-N", "-L", "0:127.0.0.1:9"],
                               stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    main, secondary = pty.openpty()
    session = subprocess.Popen([*ssh_words(printed, tty=True)], stdin=secondary, stdout=secondary, stderr=secondary,
                               env={**os.environ, "TERM": "xterm"})
    os.close(secondary)
    try:
        assert holds(home, 4), "a shell with a terminal holds the instance past the idle time"
        assert "interactive ssh session" in agent_log(home)
        os.write(main, b"exit\n")
        session.wait(timeout=20)
        assert wait_until(lambda: not running(home), 10), "the forward alone does not hold it"
    finally:
        for proc in (session, forward):
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
        os.close(main)


def ssh_words(printed: str, tty: bool) -> list[str]:
    """``ferry ssh --print``'s command, as argv: with its terminal, or as a plain connection (no command)."""
    import shlex

    words = shlex.split(printed)
    if tty:
        return words
    words = [w for w in words if w not in ("-t", "-tt")]
    return words[:-1]  # the remote command (cd to the workdir, a login shell) goes; -N takes its place


def test_max_cost_stops_it_when_price_times_uptime_reaches_the_limit(ferry, home):
    env = {**FAST, "INVOKE_FERRY_PROVIDERS_LOCAL_PRICE": "3600"}  # a dollar a second
    proc = ferry.ok("launch", "--autostop", "off", "--max-cost", "2", env=env)
    assert "once it has cost $2" in proc.stderr or "at $2 spent" in proc.stderr
    assert wait_until(lambda: not running(home), 12)
    log = agent_log(home)
    assert "cost so far $" in log and "reached the limit $2" in log
    assert "idle for" not in log, "autostop itself was off: the cost limit did it"


def test_then_terminate_after_detach_is_carried_out_with_the_client_gone(ferry, home, project):
    ferry.ok("launch", "--autostop", "off")
    proc = ferry.ok("run", "--detach", "--then", "terminate", "while [ ! -f release ]; do sleep 0.1; done")
    assert "proj terminates itself when job 1 succeeds" in proc.stderr
    (instance_dir(home) / "home" / "proj" / "release").write_text("go")  # ferry is long gone
    assert wait_until(lambda: not instance_dir(home).exists(), 20), \
        f"the instance terminated itself: agent log {agent_log(home)!r}; jobs: {job_record(home)}"
    assert "TERMINATED" in ferry.ok("ls").stdout or "no instances" in ferry.ok("ls").stderr


def test_then_stop_attached_is_done_by_the_instance_and_confirmed(ferry, home, project):
    ferry.ok("launch", "--autostop", "off")
    proc = ferry("run", "--then", "stop", "echo finished")
    assert proc.returncode == 0 and "finished" in proc.stdout, proc.stderr
    assert "proj stops itself now (--then stop)" in proc.stderr and "proj stopped (--then stop)" in proc.stderr
    assert not running(home)
    assert "--then stop) via local" in agent_log(home), "the instance acted, not the client"
    failed = ferry.ok("start") and ferry("run", "--then", "stop", "exit 3")
    assert failed.returncode == 3 and "was left running" in failed.stderr and running(home)


def test_autostop_changes_on_a_running_instance(ferry, home):
    ferry.ok("launch", "--autostop", "off", env=FAST)
    assert json.loads(ferry.ok("autostop", "--json").stdout)["state"]["idle"] == "off"
    assert "proj: off" in ferry.ok("autostop").stdout
    proc = ferry.ok("autostop", "--idle", "1s", env=FAST)
    assert "autostop for proj: stop after 1s idle" in proc.stderr
    assert wait_until(lambda: not running(home), 10)


def test_autostop_refuses_what_it_cannot_do(ferry, home):
    from .conftest import assert_one_line_error

    assert_one_line_error(ferry("launch", "--autostop", "soon"), 2)
    assert_one_line_error(ferry("launch", "--autostop-action", "pause"), 2)
    assert "--autostop-key" in assert_one_line_error(ferry("launch", "--autostop-key"), 2)
    assert not instance_dir(home).exists(), "nothing was made"


AGENT = Path(__file__).resolve().parents[1] / "lib" / "ferry" / "remote_scripts" / "ferry-agent"


@pytest.mark.parametrize("utilisation, busy", [("37", "yes"), ("3\n0", "no"), ("0\n12", "yes")])
def test_a_gpu_above_five_percent_counts_as_busy(tmp_path, utilisation, busy):
    """The agent's GPU rule, with an nvidia-smi on PATH that reports what the case says (one line per GPU)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "nvidia-smi"
    fake.write_text("#!/bin/sh\ncat <<'END'\n" + utilisation + "\nEND\n")
    fake.chmod(0o755)
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:{os.environ['PATH']}"}
    said = subprocess.run(["bash", str(AGENT), "check"], env=env, capture_output=True, text=True, timeout=20)
    assert said.returncode == 0, said.stderr
    assert f"gpu_busy={busy}" in said.stdout and "jobs=0" in said.stdout


def test_without_nvidia_smi_there_is_no_gpu_to_be_busy(tmp_path):
    env = {"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"}
    said = subprocess.run(["bash", str(AGENT), "check"], env=env, capture_output=True, text=True, timeout=20)
    assert "gpu_busy=no" in said.stdout


def test_doctor_names_each_clouds_self_stop_path(ferry):
    shown = ferry("doctor").stdout
    assert "autostop on runpod: RunPod's API (podStop/podTerminate) with the pod's own Pod-scoped key" in shown
    assert "autostop on vast: vast's API (PUT state=stopped / DELETE) with the instance's own CONTAINER_API_KEY" in shown
    assert "autostop on ec2: `shutdown -h now` on the instance" in shown
    assert "autostop on thunder: Thunder's API has no per-instance credential" in shown
    assert "autostop on local:" in shown


def test_top_is_a_live_screen_that_ctrl_c_ends_cleanly(ferry, home, project):
    import signal

    ferry.ok("launch", "--autostop", "10m")
    main, secondary = pty.openpty()
    proc = subprocess.Popen([*ferry_argv(), "top", "--interval", "0.2"], cwd=project, stdin=secondary,
                            stdout=secondary, stderr=secondary, env={**os.environ, "TERM": "xterm"})
    os.close(secondary)
    seen = b""
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and seen.count(b", stop in ") < 2:  # drawn, then redrawn
            seen += os.read(main, 65536)
    finally:
        proc.send_signal(signal.SIGINT)
        code = proc.wait(timeout=20)
        os.close(main)
    text = seen.decode(errors="replace")
    assert "proj" in text and "local" in text and seen.count(b", stop in ") >= 2, text
    assert code == 0 and "Traceback" not in text


def ferry_argv() -> list[str]:
    import sys

    return [sys.executable, "-m", "ferry"]
