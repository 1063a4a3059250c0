"""Fleets and map on real local instances (each its own sshd, HOME and tmux), driven through the real CLI.

Markers written to a directory of the test (every local instance runs as
this user on this machine) count how often each item really ran.
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

from tests.conftest import assert_one_line_error


def members(project: Path) -> dict[str, dict]:
    return json.loads((project / ".ferry" / "state.json").read_text())["instances"]


def remote_home(project: Path, name: str) -> Path:
    return Path(members(project)[name]["remote_home"])


def joblog(project: Path, map_id: str | None = None) -> list[dict]:
    root = project / ".ferry" / "maps"
    map_id = map_id or (root / "last").read_text().strip()
    lines = (root / map_id / "joblog.tsv").read_text().splitlines()
    keys = lines[0].split("\t")
    return [dict(zip(keys, line.split("\t"))) for line in lines[1:]]


@pytest.fixture
def fleet3(ferry):
    ferry.ok("launch", "--count", "3", "--name", "lab")
    return ferry


def running_jobs(ferry, name: str) -> list[dict]:
    return [j for j in json.loads(ferry.ok("jobs", "--name", name, "--json").stdout) if j["state"] == "running"]


# -- fleets -----------------------------------------------------------------------------------------------
def test_fleet_run_gives_every_member_its_rank_and_exits_with_the_worst_code(fleet3, project):
    proc = fleet3("fleet.run", "-e", "MINE=1",
                  'echo "rank=$FERRY_NODE_RANK n=$FERRY_NUM_NODES head=$FERRY_HEAD_IP gpus=$FERRY_NUM_GPUS_PER_NODE '
                  'ips=$(echo "$FERRY_NODE_IPS" | wc -l) mine=$MINE"; exit $((FERRY_NODE_RANK * 2))')
    assert proc.returncode == 4, proc.stderr  # rank 2 exits 4, rank 1 exits 2: the worst wins
    for rank in range(3):
        assert f"lab-{rank} | rank={rank} n=3 head=127.0.0.1 gpus=0 ips=3 mine=1" in proc.stdout, proc.stdout
    summary = proc.stdout.split("MEMBER")[1]
    assert "lab-1" in summary and "failed" in summary and "succeeded" in summary
    # Each member's command was a ferry job there: its log is kept per member.
    log = fleet3.ok("logs", "--name", "lab-2").stdout
    assert "rank=2" in log


def test_a_users_env_wins_over_the_node_variables_and_json_summarises(fleet3):
    proc = fleet3.ok("fleet.run", "--json", "-e", "FERRY_HEAD_IP=10.9.9.9", "echo head=$FERRY_HEAD_IP")
    document = json.loads(proc.stdout.split("\n", 3)[-1][proc.stdout.split("\n", 3)[-1].index("{"):])
    assert [m["exit_code"] for m in document["members"]] == [0, 0, 0]
    assert proc.stdout.count("head=10.9.9.9") == 3


def test_fleet_download_puts_each_members_files_under_its_name(fleet3, project):
    fleet3.ok("fleet.run", "mkdir -p out && echo $FERRY_NODE_RANK > out/rank.txt")
    (project / "results" / "lab-1" / "out").mkdir(parents=True)
    (project / "results" / "lab-1" / "out" / "rank.txt").write_text("old\n")
    os.utime(project / "results" / "lab-1" / "out" / "rank.txt", (1, 1))  # older than the member's copy
    fleet3.ok("fleet.download", "--dest", "results")
    for rank in range(3):
        assert (project / "results" / f"lab-{rank}" / "out" / "rank.txt").read_text() == f"{rank}\n"
    backups = list((project / ".ferry" / "backups").rglob("rank.txt"))
    assert [b.read_text() for b in backups] == ["old\n"]  # the replaced file was kept, as download keeps it


def test_one_members_failure_never_stops_the_others(fleet3, project):
    fleet3.ok("stop", "--name", "lab-1")
    proc = fleet3("fleet.run", "echo hi")
    assert proc.returncode != 0
    assert "lab-0 | hi" in proc.stdout and "lab-2 | hi" in proc.stdout
    assert "lab-1" in proc.stdout.split("MEMBER")[1]


def test_fleet_from_config_hosts_gets_ranks_in_listed_order(ferry, project, sshd_pool, home):
    from ferry import sshkey

    public = sshkey.public_key(sshkey.private_key_path(None, home / ".ferry"))
    a, b = sshd_pool.create(public, name="a"), sshd_pool.create(public, name="b")
    (project / "invoke.yaml").write_text(json.dumps({"ferry": {
        "hosts": {"box1": f"{a.user}@127.0.0.1:{a.port}", "box2": f"{b.user}@127.0.0.1:{b.port}"},
        "fleets": {"pair": ["box2", "box1"]}}}))
    proc = ferry.ok("fleet.run", "--name", "pair", "echo r=$FERRY_NODE_RANK")
    assert "box2 | r=0" in proc.stdout and "box1 | r=1" in proc.stdout
    listed = json.loads(ferry.ok("fleet.ls", "--name", "pair", "--json").stdout)
    assert [m["name"] for m in listed["members"]] == ["box2", "box1"]


def test_an_unknown_fleet_is_one_clear_error(ferry):
    proc = ferry("fleet.run", "--name", "nope", "true")
    assert "no fleet or instance named nope" in assert_one_line_error(proc)


# -- map ---------------------------------------------------------------------------------------------------
def test_map_runs_every_item_once_and_keeps_a_joblog_and_logs(fleet3, project, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (project / "items.txt").write_text("".join(f"it {i}\n" for i in range(12)) + "it's quoted\n")
    # item 1 prints nothing (its log comes home empty) and item 2 NUL bytes (they come home byte for byte)
    fleet3.ok("map", f'echo "$FERRY_ITEM_INDEX:$FERRY_SLOT" >> {marks}/"$FERRY_ITEM"; '
              'case $FERRY_ITEM_INDEX in 0) ;; 1) printf "a\\0b";; *) echo got {};; esac',
              "--items", "items.txt", "--slots", "2")
    runs = {p.name: p.read_text().splitlines() for p in marks.iterdir()}
    assert sorted(runs) == sorted([f"it {i}" for i in range(12)] + ["it's quoted"])
    assert all(len(lines) == 1 for lines in runs.values()), runs
    assert {line.split(":")[1] for lines in runs.values() for line in lines} <= {"0", "1"}
    log = joblog(project)
    assert sorted(int(r["Seq"]) for r in log) == list(range(1, 14))
    assert {r["Exitval"] for r in log} == {"0"} and {r["Member"] for r in log} == {"lab-0", "lab-1", "lab-2"}
    last = (project / ".ferry" / "maps" / "last").read_text().strip()
    logs = project / ".ferry" / "maps" / last / "logs"
    assert (logs / "13.1.log").read_text() == "got it's quoted\n"
    assert (logs / "1.1.log").read_bytes() == b"" and (logs / "2.1.log").read_bytes() == b"a\0b"
    # Every item was a ferry job on its member: listed there, its log kept there too.
    row = next(r for r in log if r["Seq"] == "13")
    listed = json.loads(fleet3.ok("jobs", "--name", row["Member"], "--json").stdout)
    job = next(j for j in listed if j["id"] == row["JobId"])
    assert job["label"] == f"map-{last}-13" and job["state"] == "succeeded"
    assert fleet3.ok("logs", "--name", row["Member"], "-j", str(job["number"])).stdout == "got it's quoted\n"


def test_a_slow_member_takes_fewer_items(fleet3, project):
    (remote_home(project, "lab-0") / ".slow").write_text("")
    (project / "items.txt").write_text("".join(f"{i}\n" for i in range(24)))
    fleet3.ok("map", "echo {}; if [ -e ~/.slow ]; then sleep 0.75; else sleep 0.15; fi", "--items", "items.txt")
    per_member = {m: sum(1 for r in joblog(project) if r["Member"] == m) for m in ("lab-0", "lab-1", "lab-2")}
    assert per_member["lab-0"] < min(per_member["lab-1"], per_member["lab-2"]), per_member


def test_an_item_that_fails_on_one_member_succeeds_on_another(fleet3, project):
    (remote_home(project, "lab-1") / ".bad").write_text("")
    (project / "items.txt").write_text("".join(f"{i}\n" for i in range(9)))
    fleet3.ok("map", "echo {}; [ ! -e ~/.bad ]", "--items", "items.txt", "--retries", "1")
    log = joblog(project)
    failed = [r for r in log if r["Exitval"] != "0"]
    assert failed and {r["Member"] for r in failed} == {"lab-1"}  # every slot takes an item at once: lab-1 too
    for row in failed:
        retried = [r for r in log if r["Seq"] == row["Seq"] and r["Exitval"] == "0"]
        assert len(retried) == 1 and retried[0]["Member"] != "lab-1" and retried[0]["Attempt"] == "2"


def test_an_item_failing_everywhere_runs_once_per_member_and_is_reported(fleet3, project):
    (project / "items.txt").write_text("ok1\nbad\nok2\n")
    proc = fleet3("map", '[ {} != bad ]', "--items", "items.txt", "--retries", "2")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    *_, summary, error, hint = proc.stderr.strip().splitlines()  # the summary, then one error and its hint
    assert "2/3 succeeded, 1 failed" in summary
    assert error == "error: 1 of 3 items did not succeed (failed: bad)" and hint.startswith("hint: ")
    assert "map --resume-failed --map" in proc.stderr
    bad = [r for r in joblog(project) if r["Item"] == "bad"]
    assert sorted(r["Member"] for r in bad) == ["lab-0", "lab-1", "lab-2"] and {r["Exitval"] for r in bad} == {"1"}


def test_map_scripts_runs_each_executable_file_of_a_directory(fleet3, project):
    jobs = project / "jobs"
    jobs.mkdir()
    for name in ("a.sh", "b.sh"):
        (jobs / name).write_text(f"#!/bin/sh\necho {name} > out-{name}.txt\n")
        (jobs / name).chmod(0o755)
    (jobs / "README").write_text("not executable: not an item\n")
    fleet3.ok("map", "--scripts", "jobs")
    assert sorted(r["Item"] for r in joblog(project)) == ["jobs/a.sh", "jobs/b.sh"]


def test_map_usage_errors(fleet3, project):
    assert "no items file" in assert_one_line_error(fleet3("map", "echo {}", "--items", "missing.txt"), 2)
    assert "map needs a command" in assert_one_line_error(fleet3("map"), 2)
    assert "bad --slots" in assert_one_line_error(fleet3("map", "true", "--items", "-", "--slots", "0", input="a\n"), 2)
    assert "has no GPUs" in assert_one_line_error(fleet3("map", "true", "--items", "-", "--slots", "gpu", input="a\n"), 2)
    assert not (project / ".ferry" / "maps").exists() or not any((project / ".ferry" / "maps").glob("*/joblog.tsv"))


def test_a_killed_map_resumes_without_running_any_item_twice(fleet3, project, tmp_path):
    marks = tmp_path / "marks"
    marks.mkdir()
    (project / "items.txt").write_text("".join(f"{i}\n" for i in range(9)))
    command = f'echo run >> {marks}/{{}}; sleep 1.2'
    proc = subprocess.Popen([sys.executable, "-m", "ferry", "map", command, "--items", "items.txt"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while len(list(marks.iterdir())) < 4 and time.monotonic() < deadline:  # 3 done or running, a 4th started
            time.sleep(0.05)
        assert len(list(marks.iterdir())) >= 4
    finally:
        proc.send_signal(signal.SIGKILL)  # no clean-up of any kind: a closed lid
        proc.communicate()
    done_before = [r for r in joblog(project) if r["Exitval"] == "0"]
    started = len(list(marks.iterdir()))
    assert 1 <= len(done_before) < started  # some finished, some were running when it died
    resumed = fleet3.ok("map", "--resume")
    assert "9/9 succeeded" in resumed.stderr
    runs = {p.name: p.read_text().count("run") for p in marks.iterdir()}
    assert sorted(runs) == [str(i) for i in range(9)] and set(runs.values()) == {1}, runs
    assert sorted(int(r["Seq"]) for r in joblog(project) if r["Exitval"] == "0") == list(range(1, 10))
    for name in ("lab-0", "lab-1", "lab-2"):
        assert running_jobs(fleet3, name) == []


def _sshd_pids(home: Path, name: str) -> list[int]:
    """The member's sshd and every session it forked, not its tmux jobs (tmux daemonizes away from sshd)."""
    from ferry.sshd import descendants_of

    root = int(next((home / ".ferry" / "local" / name).rglob("sshd.pid")).read_text().split()[0])
    return [root, *descendants_of(root)]


def _connections(home: Path, name: str) -> list[int]:
    """The member's per-connection sshds, monitors and their post-auth children (what a dropped network ends).

    Both: a post-auth child outlives its killed monitor and keeps the channel open.
    """
    from ferry.sshd import descendants_of

    root = int(next((home / ".ferry" / "local" / name).rglob("sshd.pid")).read_text().split()[0])
    found = []
    for pid in descendants_of(root):
        try:
            if (Path("/proc") / str(pid) / "comm").read_text().strip() == "sshd":
                found.append(pid)
        except OSError:
            continue
    return found


def test_a_member_lost_mid_map_has_its_items_finished_elsewhere(fleet3, project, tmp_path, home):
    marks = tmp_path / "marks"
    marks.mkdir()
    (project / "items.txt").write_text("".join(f"{i}\n" for i in range(9)))
    command = f'echo $FERRY_SLOT >> {marks}/{{}}; sleep 0.6'
    proc = subprocess.Popen([sys.executable, "-m", "ferry", "map", command, "--items", "items.txt", "--json",
                             "--host-timeout", "2s"], cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline = time.monotonic() + 30
    while len(list(marks.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _sshd_pids(home, "lab-1"):  # the member's ssh is gone: no new connection, none left open
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["ok"] and summary["succeeded"] == 9 and summary["members"]["lab-1"]["lost"] == 1
    succeeded = {int(r["Seq"]) for r in joblog(project) if r["Exitval"] == "0"}
    assert succeeded == set(range(1, 10))
    for name in ("lab-0", "lab-2"):
        assert running_jobs(fleet3, name) == []


def test_a_dropped_connection_mid_item_neither_loses_nor_repeats_it(fleet3, project, tmp_path, home):
    marks = tmp_path / "marks"
    marks.mkdir()
    (project / "items.txt").write_text("".join(f"{i}\n" for i in range(6)))
    command = f'echo run >> {marks}/{{}}; sleep 0.8; echo done {{}}'
    proc = subprocess.Popen([sys.executable, "-m", "ferry", "map", command, "--items", "items.txt", "--json"],
                            cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 30
    while len(list(marks.iterdir())) < 3 and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in _connections(home, "lab-1"):  # its connections die; its sshd listens on, its jobs run on
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    summary = json.loads(out)
    assert summary["members"]["lab-1"]["lost"] == 0 and summary["succeeded"] == 6
    runs = {p.name: p.read_text().count("run") for p in marks.iterdir()}
    assert set(runs.values()) == {1}, runs
    last = (project / ".ferry" / "maps" / "last").read_text().strip()
    for seq in range(1, 7):  # every item's whole log came home, also the one cut off mid-stream
        assert (project / ".ferry" / "maps" / last / "logs" / f"{seq}.1.log").read_text() == f"done {seq - 1}\n"


def test_a_running_item_can_be_followed_and_killed_with_all_it_started(launched, project, tmp_path):
    """Map's items run without a pane or FIFOs: `logs -f` still sees one end, and `kill` takes its whole group."""
    from ferry.sshd import pid_alive

    release, child = tmp_path / "release", tmp_path / "child.pid"
    (project / "items.txt").write_text("a\n")
    command = (f'sleep 300 & echo $! > {child}; echo started {{}}; '
               f'while [ ! -e {release} ]; do sleep 0.05; done; echo released; wait')
    mapping = subprocess.Popen([sys.executable, "-m", "ferry", "map", command, "--items", "items.txt"], cwd=project,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    follower = None
    try:
        deadline = time.monotonic() + 30
        while not (child.exists() and child.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        sleeper = int(child.read_text())
        [job] = [j for j in json.loads(launched.ok("jobs", "--json").stdout) if j["state"] == "running"]
        follower = subprocess.Popen([sys.executable, "-m", "ferry", "logs", "-f", "-j", str(job["number"])],
                                    cwd=project, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        release.touch()
        deadline = time.monotonic() + 30
        while "released" not in launched.ok("logs", "-j", str(job["number"])).stdout and time.monotonic() < deadline:
            time.sleep(0.05)
        assert pid_alive(sleeper), "the item waits for its own child"
        launched("kill", "-j", str(job["number"]))
        out, err = follower.communicate(timeout=30)
        assert out == "started a\nreleased\n", err
        assert follower.returncode != 0, "a killed job is not a success"
        _, map_err = mapping.communicate(timeout=30)
        assert mapping.returncode == 1, map_err
        deadline = time.monotonic() + 10
        while pid_alive(sleeper) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not pid_alive(sleeper), "the item's own child went with it"
        assert [j["state"] for j in json.loads(launched.ok("jobs", "--json").stdout)] == ["killed"]
    finally:
        for proc in (mapping, follower):
            if proc is not None and proc.poll() is None:
                proc.kill()
                proc.communicate()
