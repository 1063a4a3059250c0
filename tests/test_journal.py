"""The change journal: in a large project a daemon watches the tree, and a sync builds its file set from the last
sync's record plus the paths the daemon saw change, sending exactly what a full scan would have sent."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

import ferry
from ferry import fileset, journal

from .conftest import git
from .test_sync import workdir_of

STARTED: list[int] = []  # every daemon pid a test saw, stopped by pid at its end
KEY = "-----BEGIN OPENSSH PRIVATE KEY-----\nb3BlbnNzaC1rZXktdjEAAAAA\n-----END OPENSSH PRIVATE KEY-----\n"


@pytest.fixture
def watched(launched, project, monkeypatch):
    """The test project, launched, treated as large: its first sync leaves a daemon behind (stopped by its pid)."""
    monkeypatch.setenv("INVOKE_FERRY_SYNC_JOURNAL_MIN_FILES", "1")
    try:
        yield launched
    finally:
        journal.stop(project)
        for pid in STARTED + daemons_of(project):  # any the pid file no longer names, or not yet
            if running(pid):
                os.kill(pid, signal.SIGTERM)
        STARTED.clear()


def daemons_of(project: Path) -> list[int]:
    """The pids of journal daemons started for exactly this project (their argv names it)."""
    found = []
    for entry in Path("/proc").iterdir():
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"ferry.journald" in argv and os.fsencode(str(project)) in argv:
            found.append(int(entry.name))
    return found


def box_of(project: Path):
    return ferry.box(ferry.make_context({"project_dir": str(project)}))


def sync(project: Path):
    return box_of(project).sync(progress=False)


def daemon_up(project: Path) -> int:
    deadline = time.monotonic() + 15
    while (pid := journal.daemon_pid(project)) is None:
        assert time.monotonic() < deadline, "the journal daemon did not start"
        time.sleep(0.02)
    STARTED.append(pid)
    return pid


def settled(project: Path):
    """The first syncs: one that starts the daemon, one full scan it answers for; then a journaled no-op."""
    first = sync(project)
    assert not first.journal
    daemon_up(project)
    second = sync(project)
    assert not second.journal, "the first answer only says where to start from"
    third = sync(project)
    assert third.journal and third.how == "unchanged" and third.files == 0
    return third


def same_as_a_full_scan(project: Path, result) -> None:
    full = fileset.scan(project)
    assert result.fileset.files == full.files
    assert sorted(result.fileset.held_secrets) == sorted(full.held_secrets)
    assert sorted(result.fileset.dropped) == sorted(full.dropped)


def test_a_sync_sends_what_the_journal_saw_change_and_exactly_what_a_scan_would(watched, project, home):
    settled(project)
    (project / "train.py").write_text("print('training, v2')\n")
    (project / "src" / "new.py").write_text("NEW = 1\n")
    (project / "notes.md").unlink()
    (project / "pkg" / "deep").mkdir(parents=True)
    (project / "pkg" / "deep" / "mod.py").write_text("DEEP = 1\n")
    (project / "run.log").write_text("ignored by .gitignore\n")
    (project / ".env").write_text("API_KEY=1\n")
    (project / "key.txt").write_text(KEY)
    (project / ".venv" / "lib" / "more.py").write_text("inside an ignored directory\n")
    result = sync(project)
    assert result.journal, "the change was found by asking the journal, not by scanning"
    assert sorted(result.sent) == ["pkg/deep/mod.py", "src/new.py", "train.py"]
    assert result.deleted == ["notes.md"]
    remote = workdir_of(home)
    assert (remote / "train.py").read_text() == "print('training, v2')\n"
    assert (remote / "pkg" / "deep" / "mod.py").exists() and not (remote / "notes.md").exists()
    for held in ("run.log", ".env", "key.txt", ".venv/lib/more.py"):
        assert not (remote / held).exists(), held
    assert {".env", "key.txt"} <= set(result.fileset.held_secrets)
    same_as_a_full_scan(project, result)

    again = sync(project)
    assert again.journal and again.how == "unchanged"
    os.chmod(project / "train.py", 0o755)  # a mode change alone is a change
    shutil_target = project / "src" / "model.py"
    shutil_target.unlink()
    (project / "src" / "model.py").mkdir()  # a file that became a directory, with a file in it
    (project / "src" / "model.py" / "inner.py").write_text("INNER = 1\n")
    result = sync(project)
    assert result.journal
    assert sorted(result.sent) == ["src/model.py/inner.py", "train.py"]
    assert os.stat(remote / "train.py").st_mode & 0o777 == 0o755
    assert (remote / "src" / "model.py" / "inner.py").read_text() == "INNER = 1\n"
    same_as_a_full_scan(project, result)


def test_a_changed_rule_or_an_absent_daemon_means_a_full_scan_and_nothing_is_missed(watched, project, home):
    settled(project)
    (project / ".gitignore").write_text(".venv/\n*.log\nresults/\nnotes.md\n")
    (project / "debug.log").write_text("still ignored, changed\n")
    result = sync(project)
    assert not result.journal, "a .gitignore change may change the whole set: the daemon says look at everything"
    assert sync(project).journal, "and the journal is trusted again from the next sync"

    git(project, "add", "-f", "debug.log")  # the index decides too: now the log is part of the set
    result = sync(project)
    assert result.journal and result.sent == ["debug.log"], "an index change: git's set is listed, nothing else"
    git(project, "add", "-f", ".venv/lib/big.py")  # inside a directory the daemon did not watch, being ignored
    assert sync(project).sent == [".venv/lib/big.py"]
    (project / ".venv" / "lib" / "big.py").write_text("tracked now, and changed\n")
    result = sync(project)
    assert result.journal and result.sent == [".venv/lib/big.py"], "it is watched from the index change on"
    git(project, "rm", "-q", "--cached", "debug.log")
    result = sync(project)
    assert result.journal and "debug.log" not in result.fileset.files
    assert result.deleted == [] and (workdir_of(home) / "debug.log").exists(), "ignored again, not gone: kept there"
    same_as_a_full_scan(project, result)

    pid = daemon_up(project)
    journal.stop(project)
    assert journal.daemon_pid(project) is None
    (project / "src" / "gone-daemon.py").write_text("X = 1\n")
    result = sync(project)
    assert not result.journal and result.sent == ["src/gone-daemon.py"]
    assert daemon_up(project) != pid, "the sync started a new daemon"


def test_the_daemon_leaves_when_its_directory_goes(watched, project):
    settled(project)
    pid = daemon_up(project)
    shown = watched("doctor")
    assert f"daemon pid {pid} watches {project}" in shown.stdout + shown.stderr, "`ferry doctor` names it"
    journal_dir = project / ".ferry" / "journal"
    for entry in journal_dir.iterdir():
        entry.unlink()
    journal_dir.rmdir()
    deadline = time.monotonic() + 10
    while running(pid):
        assert time.monotonic() < deadline, "the daemon outlived its directory"
        time.sleep(0.02)
    assert not sync(project).journal


def running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(") ", 1)[1][:1]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_the_instances_own_copies_and_delete_never_hold_under_the_journal(watched, project, home):
    settled(project)
    remote = workdir_of(home)
    (remote / "made.txt").write_text("the instance's own\n")
    (project / "made.txt").write_text("ours, never sent\n")
    result = sync(project)
    assert result.journal and result.kept_unsent == ["made.txt"] and result.sent == []
    assert (remote / "made.txt").read_text() == "the instance's own\n"
    assert sync(project).how == "unchanged", "a kept file is remembered: no network for it again"

    (project / "made.txt").write_text("ours, changed again\n")
    (project / "train.py").unlink()
    result = box_of(project).sync(progress=False, delete="never")
    assert result.journal and result.deleted == [] and (remote / "train.py").exists()
    assert (remote / "made.txt").read_text() == "the instance's own\n", "still never overwritten"
    result = sync(project)  # the default deletes what ferry sent and is gone: the one kept listed from before
    assert result.deleted == ["train.py"] and not (remote / "train.py").exists()
    same_as_a_full_scan(project, result)


def test_a_no_op_the_journal_vouches_for_still_gives_the_whole_file_set_and_only_while_its_record_stands(
        watched, project, home):
    (project / ".env").write_text("API_KEY=1\n")
    settled(project)
    result = sync(project)
    assert result.journal and result.how == "unchanged"
    assert result.fileset.held_secrets == [".env"], "what is held back is said on every sync"
    assert result.fileset.files == fileset.scan(project).files, "read from the record when asked for"

    (record,) = (project / ".ferry" / "sync").glob("*.rec")
    record.unlink()  # no record: the journal's state vouches for nothing
    result = sync(project)
    assert not result.journal and result.how != "unchanged" and result.files == 0
    assert (workdir_of(home) / "train.py").exists()


def test_an_idle_daemon_leaves_by_itself_and_one_that_could_not_watch_is_not_restarted_soon(project):
    import subprocess
    import sys

    (project / ".ferry").mkdir()
    daemon = subprocess.Popen([sys.executable, "-m", "ferry.journald", str(project), "0.5"],
                              stderr=subprocess.PIPE)
    try:
        assert daemon.wait(timeout=15) == 0, "a daemon nobody asked for half a second (here) exits"
    finally:
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
    assert journal.daemon_pid(project) is None
    failed = project / ".ferry" / "journal" / "failed"
    failed.write_text("no inotify watches left\n")
    journal.start(project)
    assert not (project / ".ferry" / "journal" / "log").exists(), "no daemon is started while the failure is fresh"
    assert journal.daemon_pid(project) is None


def test_what_a_scan_would_find_the_journal_finds_or_hands_over_to_a_scan(watched, project, home):
    (project / "logs").mkdir()
    (project / "logs" / "a.log").write_text("every file here is ignored: git names the directory as ignored\n")
    (project / "data.csv").write_text("1,2\n")
    (project / "a").mkdir()
    (project / "a" / "x.txt").write_text("one inode, two names\n")
    (project / "b").mkdir()
    os.link(project / "a" / "x.txt", project / "b" / "x.txt")
    global_ignore = home / ".config" / "git" / "ignore"
    global_ignore.parent.mkdir(parents=True)
    global_ignore.write_text("*.csv\n")
    settled(project)
    remote = workdir_of(home)
    assert not (remote / "data.csv").exists()

    (project / "logs" / "notes.md").write_text("not ignored, in a directory that held only ignored files\n")
    result = sync(project)
    assert result.journal and result.sent == ["logs/notes.md"]

    with open(project / "a" / "x.txt", "a") as fh:  # b/x.txt changes too, unheard
        fh.write("appended\n")
    result = sync(project)
    assert not result.journal and sorted(result.sent) == ["a/x.txt", "b/x.txt"]

    global_ignore.write_text("")  # git's rules from outside the project
    result = sync(project)
    assert not result.journal and result.sent == ["data.csv"]

    (project / "vendor").mkdir()
    git(project / "vendor", "init", "-q")  # a repository made inside the tree
    (project / "vendor" / "lib.py").write_text("LIB = 1\n")
    result = sync(project)
    assert not result.journal
    same_as_a_full_scan(project, result)


def test_when_another_sync_changed_the_instances_record_the_compare_rests_on_a_full_scan(watched, project, home):
    settled(project)
    (record,) = (home / ".ferry" / "local" / "proj" / "home" / ".ferry" / "manifests").iterdir()
    header, _, rest = record.read_bytes().partition(b"\n")
    token = header.rsplit(b" ", 1)[1]
    record.write_bytes(header[:-len(token)] + bytes(reversed(token)) + b"\n" + rest)  # someone else's sync
    (project / "train.py").write_text("print('after the other sync')\n")
    result = sync(project)
    assert not result.journal, "the set made from our own record is not what a full compare rests on"
    assert (workdir_of(home) / "train.py").read_text() == "print('after the other sync')\n"
    same_as_a_full_scan(project, result)


def test_outside_git_the_journal_keeps_to_the_walk_and_its_rules(watched, project, home):
    import shutil

    shutil.rmtree(project / ".git")
    settled(project)
    remote = workdir_of(home)
    (project / "node_modules" / "pkg").mkdir(parents=True)
    (project / "node_modules" / "pkg" / "index.js").write_text("excluded by ferry's defaults outside git\n")
    (project / "src" / "new.py").write_text("NEW = 1\n")
    result = sync(project)
    assert result.journal and result.sent == ["src/new.py"]
    assert not (remote / "node_modules").exists()
    (project / ".ferryignore").write_text("src/new.py\n")
    result = sync(project)
    assert not result.journal and "src/new.py" not in result.fileset.files
    assert sync(project).journal
    same_as_a_full_scan(project, sync(project))


def test_sync_watch_drops_events_only_in_directories_git_ignores_as_directories(project):
    (project / "logs").mkdir()
    (project / "logs" / "a.log").write_text("every file here is ignored, the directory is not\n")
    ignored = fileset.scan(project).ignored_dirs()
    assert ".venv" in ignored, "a venv's churn never wakes `sync --watch`"
    assert "logs" not in ignored, "a new logs/notes.md would be missed"
