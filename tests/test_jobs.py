"""Jobs that survive dropped connections, and the tasks to manage them (issue 4).

Everything runs through the real CLI against a local instance: a real sshd on
127.0.0.1, real tmux on the "instance" side, and, for `attach`, a real tmux
on the local side too (its own socket under the test HOME, killed by pid).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

import ferry
from ferry.errors import JobError
from ferry.providers.local import LocalProvider
from ferry.sshd import LoopbackSshd, free_port, pid_alive

from .conftest import assert_one_line_error

FERRY = [sys.executable, "-m", "ferry"]


# -- helpers ------------------------------------------------------------------------------------
def instance_dir(home: Path) -> Path:
    return home / ".ferry" / "local" / "proj"


def workdir(home: Path) -> Path:
    return instance_dir(home) / "home" / "proj"


def job_dir(home: Path, job_id: str) -> Path:
    return instance_dir(home) / "home" / ".ferry" / "jobs" / job_id


class Jobs(dict):
    """Jobs by their short number (what run --detach prints); ``values()`` has each job once."""

    def __getitem__(self, ref: str) -> dict:
        return super().__getitem__(str(ref)) if str(ref) in self else next(j for j in self.values() if j["id"] == ref)


def jobs_json(ferry) -> Jobs:
    return Jobs({str(j["number"]): j for j in json.loads(ferry.ok("jobs", "--json").stdout)})


def until(condition, timeout: float = 20.0, what: str = "condition"):
    """Poll ``condition`` (bounded); return its first truthy value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


@contextlib.contextmanager
def popen(args, cwd, **kw):
    """A ferry process in the background, stopped by pid whatever happens."""
    proc = subprocess.Popen([*FERRY, *args], cwd=cwd, **kw)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh and servers bind: TIME_WAIT is no obstacle
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


# -- usage: checked before anything is contacted ---------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["run", "--timeout", "10x", "true"], "bad duration"),
    (["run", "--timeout", "0", "true"], "more than zero"),
    (["run", "--then", "reboot", "true"], "--then"),
    (["run", "--then-always", "true"], "--then-always"),
    (["run", "--wait-timeout", "5s", "true"], "--wait-for"),
    (["wait", "--timeout", "soon"], "bad duration"),
    (["logs", "--tail", "ten"], "--tail"),
    (["forward", "notaport"], "bad port"),
    (["forward", "8888:70000"], "bad port"),
])
def test_bad_flags_are_one_line_usage_errors(ferry, args, words):
    err = assert_one_line_error(ferry(*args), code=2)
    assert words in err


# -- exit codes, timeouts, waiting --------------------------------------------------------------------
def test_timeout_kills_the_job_and_reports_124(launched, home):
    proc = launched("run", "--timeout", "1s", "echo started; sleep 30; echo never")
    assert proc.returncode == 124, proc.stderr
    assert proc.stdout == "started\n"
    (job,) = [j for j in jobs_json(launched).values() if "sleep 30" in j["command"]]
    assert (job["state"], job["exit_code"]) == ("timed_out", 124)
    assert not any(p for p in _job_processes(home) if "sleep 30" in p), "the timed-out command is gone"


def _job_processes(home: Path) -> list[str]:
    """Command lines of live processes whose cwd is inside the instance's workdir."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            if str(workdir(home)) in os.readlink(entry / "cwd") and pid_alive(int(entry.name)):
                found.append((entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace"))
    return found


def test_wait_and_logs_f_exit_with_the_jobs_code(launched):
    killed = launched.ok("run", "--detach", "mkdir -p sub; sleep 0.3; kill -9 $$").stdout.strip()
    assert launched("wait", "-j", killed).returncode == 137
    assert launched("logs", "-f", "-j", killed).returncode == 137
    failing = launched.ok("run", "--detach", "--cwd", "sub", "pwd; exit 3").stdout.strip()
    assert launched("wait").returncode == 3, "without --job: the latest job"
    assert launched.ok("logs", "-j", failing).stdout.endswith("/proj/sub\n"), "--cwd is relative to the workdir"
    bad_cwd = launched.ok("run", "--detach", "--cwd", "nope", "true").stdout.strip()
    proc = launched("logs", "-f", "-j", bad_cwd)
    assert proc.returncode == 1 and "cannot enter" in proc.stdout and "/proj/nope" in proc.stdout
    # The job's environment is the user's: names the wrapper itself uses change nothing for it.
    odd = ["--env", "d=1", "--env", "t=2", "--env", "JOBS=/nowhere", "--env", "child=3", "--env", "timeout=4"]
    assert launched.ok("run", *odd, "echo $d$t$JOBS$child$timeout").stdout == "12/nowhere34\n"
    slow = launched.ok("run", "--detach", "sleep 30").stdout.strip()
    err = assert_one_line_error(launched("wait", "-j", slow, "--timeout", "0.5s"), code=124)
    assert "still running" in err
    assert jobs_json(launched)[slow]["state"] == "running", "a wait that gives up leaves the job alone"
    launched.ok("kill", "-j", slow)


# -- --wait-for, forward, kill ------------------------------------------------------------------------
def test_wait_for_a_server_then_forward_its_port_then_kill_it(launched, home):
    port = free_port()
    local = until(lambda: (p := free_port()) != port and p)
    server = f"echo forwarded-ok > probe.txt && exec {sys.executable} -m http.server {port} --bind 127.0.0.1"
    proc = launched("run", "--wait-for", r"Serving HTTP on \S+ port \d+", server, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Serving HTTP" in proc.stdout and "keeps running" in proc.stderr
    job_id = re.search(r"job (\S+) is ready", proc.stderr).group(1)
    assert jobs_json(launched)[job_id]["state"] == "running"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/probe.txt", timeout=10) as reply:
        assert reply.read() == b"forwarded-ok\n", "the server is still up after run returned"

    # forward PORT:LOCALPORT until Ctrl-C
    with popen(["forward", f"{port}:{local}"], launched.cwd, stderr=subprocess.PIPE, text=True) as fwd:
        assert "forwarding" in fwd.stderr.readline()
        with urllib.request.urlopen(f"http://127.0.0.1:{local}/probe.txt", timeout=10) as reply:
            assert reply.read() == b"forwarded-ok\n"
        fwd.send_signal(signal.SIGINT)
        rest = fwd.stderr.read()
        assert fwd.wait(timeout=20) == 0, rest
        assert "Traceback" not in rest
    assert port_is_free(local), "Ctrl-C frees the local port"

    launched.ok("kill", "-j", job_id)
    job = jobs_json(launched)[job_id]
    assert job["state"] == "killed"
    assert port_is_free(port), "the server itself is gone"


def test_wait_for_fails_clearly_when_the_job_ends_or_time_runs_out(launched):
    launched.ok("sync")  # (so run has nothing to say before its error)
    err = assert_one_line_error(launched("run", "--wait-for", "READY", "echo booting; exit 4"))
    assert "failed with exit code 4" in err and "READY" in err
    proc = launched("run", "--wait-for", "READY", "--wait-timeout", "1s", "echo booting; sleep 30")
    err = assert_one_line_error(proc)
    assert "within" in err and "keeps running" in err
    assert proc.stdout == "booting\n"
    job_id = re.search(r"job (\S+) printed no line", err).group(1)
    assert jobs_json(launched)[job_id]["state"] == "running"
    launched.ok("kill", "-j", job_id)


def test_kill_takes_down_what_the_command_forked(launched, home):
    launched.ok("run", "--detach", "sleep 300 & echo $! > child.pid; echo forked; wait")
    pid_file = workdir(home) / "child.pid"
    child = int(until(lambda: pid_file.exists() and pid_file.read_text().strip(), what="child.pid"))
    assert pid_alive(child)
    proc = launched.ok("kill")
    assert "killed" in proc.stderr
    until(lambda: not pid_alive(child), timeout=5, what="the forked child to die")
    (job,) = [j for j in jobs_json(launched).values() if "child.pid" in j["command"]]
    assert job["state"] == "killed"

    # --signal NAME reaches the command itself: here Python's KeyboardInterrupt
    handler = f"{sys.executable} -c \"import time\nprint('ready', flush=True)\ntry:\n time.sleep(60)\nexcept KeyboardInterrupt:\n print('got INT'); raise SystemExit(7)\""
    launched.ok("run", "--wait-for", "ready", handler)
    launched.ok("kill", "--signal", "INT")
    assert launched.ok("logs").stdout == "ready\ngot INT\n"
    assert launched("wait").returncode == 7


# -- faults: the sshd restarts, the connection dies ------------------------------------------------------
def restart_sshd(home: Path) -> None:
    """Stop only the instance's sshd (and its connections), then start it on the same port; jobs live on."""
    LoopbackSshd(instance_dir(home) / "sshd").stop()
    LocalProvider(home / ".ferry" / "local").start("proj")


def kill_connections(home: Path) -> None:
    """SIGKILL the per-connection sshds (the listener's children and their privsep children): the link dies.

    Both, not just the children: a post-auth child outlives its killed monitor and keeps the channel open.
    """
    from ferry.sshd import descendants_of

    listener = LoopbackSshd(instance_dir(home) / "sshd").pid()
    connections = [pid for pid in descendants_of(listener) if _comm(pid) == "sshd"]
    assert connections, "the follower's connection should be served by a child of the listener"
    for pid in connections:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _comm(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


N_LINES = 100


@pytest.mark.parametrize("fault, how", [(restart_sshd, "run"), (kill_connections, "logs -f")],
                         ids=["sshd-restart/run", "connection-killed/logs-f"])
def test_following_resumes_at_the_exact_byte(launched, home, tmp_path, fault, how):
    command = f"for i in $(seq 1 {N_LINES}); do echo line-$i; sleep 0.05; done; exit 3"
    if how == "run":
        args = ["run", command]
    else:
        job_id = launched.ok("run", "--detach", command).stdout.strip()
        args = ["logs", "-f", "-j", job_id]
    out = tmp_path / "out"
    with open(out, "wb") as sink, popen(args, launched.cwd, stdout=sink, stderr=subprocess.PIPE) as proc:
        until(lambda: out.read_bytes().count(b"\n") >= 10, what="the first lines")
        fault(home)
        _, err = proc.communicate(timeout=90)
    assert proc.returncode == 3, err
    assert b"reconnecting" in err, "the fault must have hit the follower"
    assert out.read_bytes() == b"".join(b"line-%d\n" % i for i in range(1, N_LINES + 1))


def _follower_running(home: Path, job_id: str) -> bool:
    """Is a `ferry-job follow <id>` process running on this test's instance?

    Matched by the instance's own ferry-job path too: "follow 1" alone also matches another test's
    follower of its job number 1 (tests run side by side).
    """
    needle = f"{instance_dir(home)}/home/.ferry/bin/ferry-job\0follow\0{job_id}\0".encode()
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and needle in (entry / "cmdline").read_bytes():
                return True
    return False


# -- many jobs from Python: one ssh session for the batch -------------------------------------------------------
def ssh_sessions(home: Path) -> int:
    """Sessions the instance's sshd has opened so far (it logs each at LogLevel VERBOSE)."""
    return (instance_dir(home) / "sshd" / "sshd.log").read_text().count("Starting session:")


def test_detached_jobs_and_their_waits_from_python_share_one_ssh_session(launched, home):
    box = ferry.box()
    before = ssh_sessions(home)
    jobs = [box.run(f"echo job-{i}; exit {i % 3}", detach=True) for i in range(8)]
    ends = [job.wait() for job in jobs]
    assert [end.exit_code for end in ends] == [i % 3 for i in range(8)]
    assert [end.state for end in ends] == ["succeeded", "failed", "failed"] * 2 + ["succeeded", "failed"]
    assert len({job.number for job in jobs}) == 8 and all(job.number for job in jobs)
    assert ssh_sessions(home) - before == 2, "the first start's exec, then one session for the other 15 requests"
    with pytest.raises(JobError, match="no job nosuch"):  # a refusal through it reads as through an exec
        box.job("nosuch").wait()
    assert box.job(jobs[4].id).wait().exit_code == 1, "and the session still serves the next request"


def test_an_older_wrapper_without_the_channel_still_runs_a_batch(launched, home):
    tool = instance_dir(home) / "home" / ".ferry" / "bin" / "ferry-job"
    older = tool.read_text().replace("    channel) cmd_channel ;;\n", "")
    assert older != tool.read_text()
    tool.write_text(older)
    box = ferry.box()
    before = ssh_sessions(home)
    jobs = [box.run(f"exit {code}", detach=True) for code in range(4)]
    assert [job.wait().exit_code for job in jobs] == [0, 1, 2, 3]
    assert ssh_sessions(home) - before == 9, "an exec each, and the one channel that said no"


def test_a_batch_survives_its_session_dropping_mid_wait(launched, home, project):
    box = ferry.box()
    release = workdir(home) / "release"
    jobs = [box.run(f"until [ -e release ]; do sleep 0.05; done; exit {code}", detach=True) for code in (0, 3, 4)]

    def drop_then_release() -> None:
        time.sleep(0.5)  # the first wait is under way in the batch's session (open since the second start)
        kill_connections(home)
        release.touch()

    dropper = threading.Thread(target=drop_then_release, daemon=True)
    dropper.start()
    try:
        ends = [job.wait() for job in jobs]
    finally:
        dropper.join(timeout=30)
        release.touch()
    assert [end.exit_code for end in ends] == [0, 3, 4]
    more = box.run("exit 5", detach=True)
    assert more.wait().exit_code == 5, "after the drop, jobs still start and end (by exec)"


def test_a_silent_follow_survives_a_drop(launched, home, project):
    release = project / "release"
    job_id = launched.ok("run", "--detach", f"while [ ! -e {release} ]; do sleep 0.05; done; echo done; exit 5"
                         ).stdout.strip()
    with popen(["logs", "-f", "-j", job_id], launched.cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        until(lambda: _follower_running(home, job_id), what="the follower on the instance")
        kill_connections(home)  # nothing has been printed yet: the drop must still read as a drop
        until(lambda: _follower_running(home, job_id), what="the follower to come back")
        release.touch()
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 5, err
    assert b"reconnecting" in err and out == b"done\n"


# -- output fidelity, logs ---------------------------------------------------------------------------------
GENERATOR = """\
import sys
w = sys.stdout.buffer
w.write(b"x" * 100_000 + b"\\n"); w.flush()
w.write(b"progress 10%\\rprogress 50%\\rprogress 100%\\r\\n"); w.flush()
w.write(bytes(range(256))); w.flush()
w.write("\\u00fcn\\u00efc\\u00f6d\\u00e9\\n".encode())
w.write(b"no newline at the end")
"""


def test_output_comes_through_byte_for_byte(launched, home, project):
    (project / "gen.py").write_text(GENERATOR)
    expected = subprocess.run([sys.executable, str(project / "gen.py")], capture_output=True, check=True).stdout
    launched.ok("sync")
    streamed = subprocess.run([*FERRY, "run", f"{sys.executable} gen.py"], cwd=project, capture_output=True, timeout=60)
    assert streamed.returncode == 0, streamed.stderr
    assert streamed.stdout == expected
    (job,) = [j for j in jobs_json(launched).values() if "gen.py" in j["command"]]
    assert (job_dir(home, job["id"]) / "log").read_bytes() == expected, "the log on the instance is the output"
    logs = subprocess.run([*FERRY, "logs"], cwd=project, capture_output=True, timeout=60)
    assert logs.stdout == expected
    tail = subprocess.run([*FERRY, "logs", "--tail", "2"], cwd=project, capture_output=True, timeout=60)
    assert tail.stdout == b"\n".join(expected.split(b"\n")[-2:])

    launched.ok("run", "for i in $(seq 1 50); do echo n$i; done")
    assert launched.ok("logs", "--tail", "3").stdout == "n48\nn49\nn50\n"
    assert launched.ok("logs", "-f", "--tail", "2").stdout == "n49\nn50\n"


# -- lost, --then --------------------------------------------------------------------------------------------
def test_a_job_whose_instance_stopped_reads_lost(launched):
    job_id = launched.ok("run", "--detach", "--label", "long", "echo working; sleep 300").stdout.strip()
    until(lambda: jobs_json(launched)[job_id]["state"] == "running", what="the job to run")
    err = assert_one_line_error(launched("stop"), code=2)
    assert job_id in err and "(long)" in err and "--yes" in err, "stop names the jobs it would lose"
    assert jobs_json(launched)[job_id]["state"] == "running", "and stops nothing"
    launched.ok("stop", "--yes")
    launched.ok("start")
    job = jobs_json(launched)[job_id]
    assert (job["state"], job["exit_code"]) == ("lost", None)
    assert "lost" in assert_one_line_error(launched("wait", "-j", job_id))
    assert launched("logs", "-j", job_id).stdout == "working\n", "its log is still there"


def test_then_terminate_only_after_success_unless_then_always(launched, home, project):
    proc = launched("run", "--then", "terminate", "echo failing; exit 3")
    assert proc.returncode == 3
    assert "left running" in proc.stderr
    assert instance_dir(home).exists()
    assert launched.ok("run", "true").returncode == 0, "still reachable"

    proc = launched("run", "--then", "terminate", "--then-always", "exit 5")
    assert proc.returncode == 5, "the job's exit code still comes back"
    assert not instance_dir(home).exists()
    assert json.loads((project / ".ferry" / "state.json").read_text())["instances"] == {}

    launched.ok("launch")
    proc = launched.ok("run", "--then", "terminate", "echo done")
    assert proc.stdout == "done\n" and "terminated" in proc.stderr
    assert not instance_dir(home).exists()


def test_a_follower_is_registered_before_its_job_can_end(launched, home):
    """`--then` waits for followers before acting: one that registered only after an instant job ended was
    cut off by its own instance's terminate, and `run` hung reconnecting to an instance that was gone.
    A job without a --then has nobody waiting, so its followers register nowhere (a file less per run)."""
    newest_job = 'ls -a "$HOME/.ferry/jobs/$(ls "$HOME/.ferry/jobs" | grep -v "^\\." | tail -1)"'
    plain = launched.ok("run", newest_job).stdout
    assert "log" in plain.split() and not re.search(r"^follower\.", plain, re.M), plain
    proc = launched.ok("run", "--then", "stop", newest_job)
    assert re.search(r"^follower\.\d+$", proc.stdout, re.M), proc.stdout
    assert json.loads(launched.ok("status", "--json").stdout)["status"] == "STOPPED"
    left = list((instance_dir(home) / "home" / ".ferry" / "jobs").glob("*/follower.*"))
    assert left == [], "every follower removed itself"


def test_then_stop_stops_after_success(launched):
    launched.ok("run", "--then", "stop", "echo ok")
    assert json.loads(launched.ok("status", "--json").stdout)["status"] == "STOPPED"


# -- many jobs, listing ----------------------------------------------------------------------------------------
def test_two_jobs_side_by_side_keep_separate_logs(launched, home):
    # Both wait for a "go" file (at most 10 s), then print at the same time.
    loop = ("for t in $(seq 200); do [ -e go ] && break; sleep 0.05; done; "
            "for i in $(seq 1 15); do echo {0}$i; sleep 0.05; done")
    a = launched.ok("run", "--detach", "--label", "alpha", loop.format("a")).stdout.strip()
    b = launched.ok("run", "--detach", "--label", "beta", loop.format("b") + "; exit 2").stdout.strip()
    listed = jobs_json(launched)
    assert listed[a]["state"] == listed[b]["state"] == "running", "both at once"
    (workdir(home) / "go").touch()
    assert launched("wait", "-j", a).returncode == 0
    assert launched("wait", "-j", b).returncode == 2
    assert launched.ok("logs", "-j", a).stdout == "".join(f"a{i}\n" for i in range(1, 16))
    assert launched.ok("logs", "-j", b).stdout == "".join(f"b{i}\n" for i in range(1, 16))

    listed = jobs_json(launched)
    for job_id, label, state, code in ((a, "alpha", "succeeded", 0), (b, "beta", "failed", 2)):
        job = listed[job_id]
        assert set(job) >= {"id", "label", "command", "state", "exit_code", "started_at", "finished_at", "duration"}
        assert (job["label"], job["state"], job["exit_code"]) == (label, state, code)
        assert job["command"].startswith("for t in")
        assert job["started_at"] <= job["finished_at"] and job["duration"] > 0
    table = launched.ok("jobs").stdout
    assert "alpha" in table and "failed (2)" in table


# -- attach: a real terminal, driven through a local tmux ------------------------------------------------------
class LocalTmux:
    """A tmux server on the test's side with its own socket: a terminal to type into and read from."""

    def __init__(self, home: Path):
        self.sock = str(home / "lt.sock")
        self.pid = None

    def tmux(self, *args: str) -> str:
        return subprocess.run(["tmux", "-f", "/dev/null", "-S", self.sock, *args],
                              capture_output=True, text=True, timeout=10).stdout

    def start(self, command: str) -> None:
        env = {k: v for k, v in os.environ.items() if k != "TMUX"}
        subprocess.run(["tmux", "-f", "/dev/null", "-S", self.sock, "new-session", "-d", "-x", "150", "-y", "40",
                        "-s", "t", command], check=True, env=env, timeout=10)
        self.pid = int(self.tmux("display-message", "-p", "-t", "t", "#{pid}").strip())

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def stop(self) -> None:
        self.tmux("kill-server")
        if self.pid and pid_alive(self.pid):
            os.kill(self.pid, signal.SIGKILL)


def test_attach_gives_a_real_terminal(launched, home, project):
    job_id = launched.ok("run", "--detach", "for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done").stdout.strip()
    term = LocalTmux(home)
    attach = f"cd {project} && {sys.executable} -m ferry attach; echo ferry-exited-$?; sleep 60"
    try:
        term.start(attach)
        until(lambda: re.search(r"tick-\d+", term.screen()), what="the job's output in the attached pane")
        term.tmux("send-keys", "-t", "t", "C-b", "d")  # tmux's own detach, typed into the remote tmux
        until(lambda: "ferry-exited-0" in term.screen(), what="attach to return after detaching")
        assert jobs_json(launched)[job_id]["state"] == "running", "detaching leaves the job running"
        launched.ok("kill", "-j", job_id)

        # With no live job session: a shell session in the workdir, with a real tty.
        term.tmux("kill-session", "-t", "t")
        term.start(attach)
        until(lambda: "[ferry-sh" in term.screen(), what="the shell session's tmux status line")
        term.tmux("send-keys", "-t", "t", "tty > probe.txt; echo typed-$((6*7)) >> probe.txt; exit", "Enter")
        until(lambda: "ferry-exited-0" in term.screen(), what="attach to return after the shell exits")
        probe = (workdir(home) / "probe.txt").read_text().splitlines()
        assert probe[0].startswith("/dev/pts/") and probe[1] == "typed-42"
    finally:
        term.stop()


def test_a_pane_draws_the_log_only_once_someone_attaches(launched, home, project):
    """Drawing output no one watches cost tmux as much CPU as the job; the pane now starts showing the log when
    a client attaches: its last 2000 lines (tmux's scrollback), then live."""
    number = launched.ok("run", "--detach", "seq 1 5000; for i in $(seq 1 600); do echo tick-$i; sleep 0.1; done"
                         ).stdout.strip()
    job_id = jobs_json(launched)[number]["id"]
    until(lambda: "tick-2\n" in (job_dir(home, job_id) / "log").read_text(), what="the job's first ticks")
    sock = str(instance_dir(home) / "home" / ".ferry" / "tmux.sock")

    def pane(*extra: str) -> list[str]:
        return subprocess.run(["tmux", "-S", sock, "capture-pane", "-p", *extra, "-t", f"=ferry-{job_id}:"],
                              capture_output=True, text=True, timeout=10, check=True).stdout.split()

    assert pane("-S", "-") == [], "nothing drawn while no one is attached"
    term = LocalTmux(home)
    try:
        term.start(f"cd {project} && {sys.executable} -m ferry attach -j {job_id}; sleep 60")
        until(lambda: re.search(r"tick-\d+", term.screen()), what="the job's output in the attached pane")
        drawn = pane("-S", "-")
        first_tick = drawn.index("tick-1")
        assert drawn[:first_tick] == [str(n) for n in range(5000 - first_tick + 1, 5001)], "the log's last lines"
        assert 1000 < first_tick < 2000
        ticks = drawn[first_tick:]
        assert ticks == [f"tick-{i}" for i in range(1, len(ticks) + 1)], "then every line, in order"
        until(lambda: len(pane("-S", "-")) > len(drawn) + 3, what="live lines after the attach")
    finally:
        term.stop()
        launched.ok("kill", "-j", job_id)


def test_jobs_left_by_an_older_wrapper_are_still_listed_and_found(launched, home):
    """An instance keeps its job history across a ferry upgrade: a job directory in the old layout
    (number, label and command files; exit code and finish time apart) reads as it did."""
    old = instance_dir(home) / "home" / ".ferry" / "jobs" / "20200101-000000000-0ld0"
    old.mkdir(parents=True)
    for name, text in {"number": "41\n", "label": "legacy", "command": "echo 'from before'", "log": "from before\n",
                       "exit_code": "3\n", "finished_at": "2020-01-01T00:00:05.000Z\n",
                       "pids": "1 1 x 2020-01-01T00:00:00.000Z 2 2\n"}.items():
        (old / name).write_text(text)
    launched.ok("run", "--label", "new", "echo now")
    listed = jobs_json(launched)
    assert (listed["41"]["label"], listed["41"]["command"], listed["41"]["state"], listed["41"]["exit_code"],
            listed["41"]["finished_at"]) == ("legacy", "echo 'from before'", "failed", 3, "2020-01-01T00:00:05.000Z")
    [new] = [j for j in listed.values() if j["label"] == "new"]
    assert new["command"] == "echo now" and new["state"] == "succeeded" and new["finished_at"]
    assert launched.ok("logs", "-j", "legacy").stdout == "from before\n"
    assert launched.ok("logs", "-j", "41").stdout == "from before\n"
