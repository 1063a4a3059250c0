"""sync and download on a real loopback sshd with real rsync: the file set, safe deletion, dry run,
watch, backups, credentials, tricky names, and the user's ssh_config."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path


import ferry

from .conftest import FerryCLI, assert_one_line_error, git


def workdir_of(home: Path, name: str = "proj") -> Path:
    """Where the local provider keeps the instance's copy of project ``name`` (its $HOME/<project>)."""
    return home / ".ferry" / "local" / name / "home" / name


def wait_until(check, timeout: float = 30.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(0.05)


def remote_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


# -- the file set -----------------------------------------------------------------------------------------
def test_submodule_contents_arrive_recursively(home, project):
    def repo(path: Path, files: dict[str, str]) -> Path:
        path.mkdir(parents=True)
        for name, text in files.items():
            (path / name).parent.mkdir(parents=True, exist_ok=True)
            (path / name).write_text(text)
        git(path, "init", "-q")
        git(path, "add", "-A")
        git(path, "commit", "-qm", "init")
        return path

    inner = repo(home / "src-inner", {"inner.py": "INNER = 1\n"})
    outer = repo(home / "src-outer", {"outer.py": "OUTER = 1\n", ".gitignore": "*.cache\n"})
    git(outer, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(inner), "deps/inner")
    git(outer, "commit", "-qm", "add inner")
    git(project, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(outer), "vendor/outer")
    git(project, "-c", "protocol.file.allow=always", "submodule", "update", "-q", "--init", "--recursive")
    git(project, "commit", "-qm", "add outer")
    sub = project / "vendor" / "outer"
    (sub / "scratch.cache").write_text("ignored by the submodule's own .gitignore\n")
    (sub / "new_in_sub.py").write_text("untracked, not ignored\n")

    FerryCLI(project).ok("launch", "sync")
    wd = workdir_of(home)
    assert (wd / "vendor/outer/outer.py").read_text() == "OUTER = 1\n"
    assert (wd / "vendor/outer/deps/inner/inner.py").read_text() == "INNER = 1\n"
    assert (wd / "vendor/outer/new_in_sub.py").exists()
    assert not (wd / "vendor/outer/scratch.cache").exists()
    assert not (wd / "vendor/outer/.git").exists() and not (wd / "vendor/outer/deps/inner/.git").exists()
    assert not (wd / ".venv").exists() and not (wd / "debug.log").exists()


def test_a_first_copy_into_a_workdir_linked_to_a_volume_fills_the_volume_and_keeps_the_link(launched, project, home):
    wd = workdir_of(home)
    volume = wd.parent / "volume"
    volume.mkdir()
    wd.symlink_to(volume)
    launched.ok("sync")
    assert wd.is_symlink() and os.readlink(wd) == str(volume)
    assert {"train.py", "src/model.py", "notes.md"} <= remote_files(volume)
    assert list(wd.parent.glob(f".{volume.name}.ferry-copy-*")) == []


def test_ferryignore_negation_inside_git(launched, project, home):
    (project / "data").mkdir()
    for name in ("keep.csv", "big.csv", "other.csv"):
        (project / "data" / name).write_text(name)
    (project / "scratch.tmp").write_text("tmp")
    (project / "important.tmp").write_text("wanted")
    (project / ".ferryignore").write_text("# data stays home, except one file\ndata/*\n!data/keep.csv\n*.tmp\n!important.tmp\n")
    git(project, "add", "data")  # tracked files too: .ferryignore applies to the whole set
    launched.ok("sync")
    wd = workdir_of(home)
    assert (wd / "data" / "keep.csv").read_text() == "keep.csv"
    assert not (wd / "data" / "big.csv").exists() and not (wd / "data" / "other.csv").exists()
    assert (wd / "important.tmp").exists() and not (wd / "scratch.tmp").exists()
    assert (wd / ".ferryignore").exists()


def test_outside_git_default_excludes_and_ferryignore_negation(home, monkeypatch):
    root = home / "plain"
    (root / "src").mkdir(parents=True)
    (root / "src" / "train.py").write_text("print(1)\n")
    (root / "model.pt").write_bytes(b"weights")
    (root / "small.pt").write_bytes(b"tiny weights")
    (root / "venv" / "lib").mkdir(parents=True)
    (root / "venv" / "lib" / "x.py").write_text("x\n")
    (root / "src" / "__pycache__").mkdir()
    (root / "src" / "__pycache__" / "train.cpython-311.pyc").write_bytes(b"\0")
    (root / ".env").write_text("SECRET=1\n")
    (root / "notes.txt").write_text("notes\n")
    (root / ".ferryignore").write_text("notes.txt\n!small.pt\n")
    monkeypatch.chdir(root)
    FerryCLI(root).ok("launch", "sync")
    assert remote_files(workdir_of(home, "plain")) == {"src/train.py", "small.pt", ".ferryignore"}


def test_a_file_deleted_locally_but_still_in_gits_index_does_not_fail_the_sync(launched, project, home):
    launched.ok("sync")
    (project / "train.py").unlink()  # tracked, deleted, not staged
    proc = launched.ok("sync")
    assert "deleted 1" in proc.stderr
    assert not (workdir_of(home) / "train.py").exists()
    assert (workdir_of(home) / "src" / "model.py").exists()


# -- remote deletion is safe ----------------------------------------------------------------------------
def test_only_files_ferry_sent_and_that_are_gone_locally_are_deleted(launched, project, home):
    (project / "reports").mkdir()
    (project / "reports" / "README.md").write_text("reports land here\n")
    (project / "edited-there.txt").write_text("as sent\n")
    launched.ok("sync")
    wd = workdir_of(home)
    # The instance grows its own files: a run's output, one under a directory ferry also syncs, one made by hand.
    (wd / "outputs").mkdir()
    (wd / "outputs" / "run1.json").write_text("{}")
    (wd / "reports" / "metrics.json").write_text("{}")
    (wd / "src" / "generated.py").write_text("made on the instance\n")
    (wd / "by-hand.txt").write_text("typed in an ssh session\n")
    future = time.time() + 60
    (wd / "edited-there.txt").write_text("a job rewrote this\n")
    os.utime(wd / "edited-there.txt", (future, future))

    shutil.rmtree(project / "src")  # a whole synced directory goes away locally
    (project / "reports" / "README.md").unlink()
    (project / "edited-there.txt").unlink()
    proc = launched.ok("sync")

    assert not (wd / "src" / "model.py").exists() and not (wd / "reports" / "README.md").exists()
    assert (wd / "src" / "generated.py").read_text() == "made on the instance\n"
    assert (wd / "reports" / "metrics.json").exists()
    assert (wd / "outputs" / "run1.json").exists() and (wd / "by-hand.txt").exists()
    assert (wd / "edited-there.txt").read_text() == "a job rewrote this\n"
    assert "kept edited-there.txt on the instance" in proc.stderr
    # A second sync has nothing left to delete and touches none of it.
    again = launched.ok("sync")
    assert "synced 0 files" in again.stderr and "deleted" not in again.stderr
    assert {"src/generated.py", "reports/metrics.json", "outputs/run1.json", "by-hand.txt"} <= remote_files(wd)


def test_delete_never_keeps_remote_copies_until_a_normal_sync(launched, project, home):
    launched.ok("sync")
    (project / "notes.md").unlink()
    launched.ok("sync", "--delete=never")
    assert (workdir_of(home) / "notes.md").exists()
    launched.ok("sync")  # ferry still knows it sent notes.md
    assert not (workdir_of(home) / "notes.md").exists()


def test_the_record_on_the_instance_drives_deletion_when_the_local_one_is_lost(launched, project, home):
    launched.ok("sync")
    shutil.rmtree(project / ".ferry" / "sync")  # e.g. a fresh clone syncing to the same instance
    (project / "notes.md").unlink()
    (workdir_of(home) / "train.py").unlink()  # and someone removed a file on the instance
    launched.ok("sync")
    assert not (workdir_of(home) / "notes.md").exists()
    assert (workdir_of(home) / "train.py").exists()
    # this sync's first copy began streaming before it learnt the workdir was not empty: nothing of it is left
    assert list(workdir_of(home).parent.glob(".proj.ferry-copy-*")) == []


def test_full_restores_files_removed_on_the_instance(launched, project, home):
    launched.ok("sync")
    (workdir_of(home) / "train.py").unlink()
    launched.ok("sync", "--full")
    assert (workdir_of(home) / "train.py").read_text() == "print('training')\n"


def test_a_previously_synced_file_that_becomes_ignored_is_left_on_the_instance(launched, project, home):
    launched.ok("sync")
    (project / ".ferryignore").write_text("notes.md\n")
    launched.ok("sync")
    assert (workdir_of(home) / "notes.md").exists()  # ignored now, but still on disk locally: not "gone"


# -- dry run ----------------------------------------------------------------------------------------------
def test_dry_run_lists_and_sends_nothing(launched, project, home):
    wd = workdir_of(home)
    first = launched.ok("sync", "--dry-run")
    assert "send train.py" in first.stdout.splitlines() and "send src/model.py" in first.stdout.splitlines()
    assert not wd.exists()
    launched.ok("sync")
    (project / "train.py").write_text("print('v2')\n")
    (project / "notes.md").unlink()
    (project / "fresh.py").write_text("new\n")
    proc = launched.ok("sync", "--dry-run")
    assert set(proc.stdout.splitlines()) == {"send train.py", "send fresh.py", "delete notes.md"}
    assert "would send 2 files" in proc.stderr and "would delete 1" in proc.stderr
    assert (wd / "train.py").read_text() == "print('training')\n"
    assert (wd / "notes.md").exists() and not (wd / "fresh.py").exists()
    launched.ok("sync")  # the dry run left the record alone: the real sync still does all of it
    assert (wd / "train.py").read_text() == "print('v2')\n"
    assert not (wd / "notes.md").exists() and (wd / "fresh.py").exists()


# -- tricky names -----------------------------------------------------------------------------------------
def test_names_with_a_newline_or_a_leading_dash_sync_change_and_delete(launched, project, home):
    launched.ok("sync")
    names = ["-rf", "--delete", "new\nline.py", "-dir/-x.txt", "sp ace/é.txt"]
    for name in names:
        (project / name).parent.mkdir(parents=True, exist_ok=True)
        (project / name).write_text(name)
    launched.ok("sync")  # the path that sends only what changed
    wd = workdir_of(home)
    for name in names:
        assert (wd / name).read_text() == name
    launched.ok("sync", "--full")  # the whole-tree rsync agrees: nothing more to send
    for name in names:
        (project / name).unlink()
    proc = launched.ok("sync")
    assert f"deleted {len(names)}" in proc.stderr
    for name in names:
        assert not (wd / name).exists()
    assert (wd / "train.py").exists()


# -- download -------------------------------------------------------------------------------------------
def test_download_keeps_newer_backs_up_replaced_and_force_still_backs_up(launched, project, home):
    wd = workdir_of(home)
    (wd / "results").mkdir(parents=True)
    for name in ("newer.txt", "older.txt", "same.txt"):
        (wd / "results" / name).write_text(f"remote {name}\n")
    (project / "results").mkdir()
    (project / "results" / "newer.txt").write_text("local edit\n")
    (project / "results" / "older.txt").write_text("local old\n")
    past, future = time.time() - 3600, time.time() + 3600
    os.utime(project / "results" / "newer.txt", (future, future))
    os.utime(project / "results" / "older.txt", (past, past))
    (project / "results" / "local-only.txt").write_text("mine\n")

    proc = launched.ok("download", "--backup-dir", "bk1")
    assert (project / "results" / "newer.txt").read_text() == "local edit\n"
    assert (project / "results" / "older.txt").read_text() == "remote older.txt\n"
    assert [b.read_text() for b in (project / "bk1").glob("*/results/older.txt")] == ["local old\n"]
    assert (project / "results" / "same.txt").read_text() == "remote same.txt\n"
    assert (project / "results" / "local-only.txt").read_text() == "mine\n"
    assert "kept newer local file: results/newer.txt" in proc.stderr
    assert "backed up results/older.txt" in proc.stderr

    forced = launched.ok("download", "--force")
    assert (project / "results" / "newer.txt").read_text() == "remote newer.txt\n"
    backups = list((project / ".ferry" / "backups").glob("*/results/newer.txt"))
    assert [b.read_text() for b in backups] == ["local edit\n"]
    assert "backed up results/newer.txt" in forced.stderr
    assert (project / "results" / "local-only.txt").exists()


def test_a_plain_download_brings_what_the_run_produced(launched, project, home):
    """Results come home without flags: new or changed files, less environments and caches, under a size guard."""
    launched.ok("sync")
    launched.ok("run", "mkdir -p checkpoints outputs .venv/lib __pycache__ && echo w > checkpoints/best.pt && "
                       "head -c 3000000 /dev/zero > outputs/big.safetensors && echo {} > metrics.json && "
                       "echo noise > debug.txt && echo x > .venv/lib/site.py && echo c > __pycache__/x.pyc && "
                       "echo edited-there > notes.md")
    proc = launched.ok("download", "--dry-run")
    assert "fetch checkpoints/best.pt" in proc.stdout and "fetch outputs/big.safetensors" in proc.stdout
    assert "fetch src/model.py" not in proc.stdout, "what ferry sent and nobody changed stays"
    assert not (project / "checkpoints").exists(), "a dry run changes nothing"
    proc = launched.ok("download", "--exclude", "debug.txt", env={"INVOKE_FERRY_DOWNLOAD_MAX_SIZE": "1M"})
    assert (project / "checkpoints" / "best.pt").exists() and (project / "metrics.json").exists()
    assert (project / "notes.md").read_text() == "edited-there\n", "a file changed on the instance comes back"
    assert not (project / "outputs").exists(), "held back by the size guard"
    assert "held back outputs/big.safetensors (2.9 MB): fetch it with ferry download --path outputs/big.safetensors" \
        in proc.stderr
    assert "left on the instance: " in proc.stderr and ".venv/ (1 file" in proc.stderr and "__pycache__/" in proc.stderr
    assert not (project / "debug.txt").exists() and not (project / "__pycache__").exists()
    launched.ok("download")  # the default guard (2 GiB) lets it come
    assert (project / "outputs" / "big.safetensors").stat().st_size == 3_000_000
    launched.ok("download", "--path", "__pycache__")  # a named path comes whole
    assert (project / "__pycache__" / "x.pyc").exists()
    (project / "invoke.yaml").write_text("ferry:\n  download:\n    include: ['.venv/']\n")
    launched.ok("download")
    assert (project / ".venv" / "lib" / "site.py").exists(), "ferry.download.include shapes the default"
    launched.ok("download", "--all")
    assert (project / "debug.txt").exists()


def test_downloads_into_the_same_backup_dir_keep_every_original(launched, project, home):
    """Each download backs up into a new <stamp>/ of its own, under --backup-dir or .ferry/backups/."""
    wd = workdir_of(home)
    (wd / "results").mkdir(parents=True)
    (project / "results").mkdir()
    past = time.time() - 3600

    def replace(n: int, *flags: str) -> str:
        (wd / "results" / "m.json").write_text(f"remote {n}\n")
        (project / "results" / "m.json").write_text(f"original {n}\n")
        os.utime(project / "results" / "m.json", (past, past))
        proc = launched.ok("download", *flags)
        assert (project / "results" / "m.json").read_text() == f"remote {n}\n"
        return proc.stderr

    first, second = replace(1, "--backup-dir", "bk"), replace(2, "--backup-dir", "bk")
    replace(3), replace(4)  # the default place, often within the same second
    kept = sorted((p.read_text(), p.parent.parent.name) for p in (project / "bk").glob("*/results/m.json"))
    assert [text for text, _ in kept] == ["original 1\n", "original 2\n"]
    assert f"backed up 1 replaced file in bk/{kept[0][1]}" in first  # the summary says where
    assert f"backed up 1 replaced file in bk/{kept[1][1]}" in second
    defaults = sorted(p.read_text() for p in (project / ".ferry" / "backups").glob("*/results/m.json"))
    assert defaults == ["original 3\n", "original 4\n"]


# -- a run's outputs are never overwritten --------------------------------------------------------------
def test_sync_after_a_mid_run_download_keeps_the_jobs_final_output(launched, project, home):
    """run --detach writes v1; download mid-run; the job writes v2; sync must not put v1 back over it."""
    wd = workdir_of(home)
    launched.ok("sync")
    job = ('mkdir -p logs && echo "v1 partial" > logs/metrics.json && i=0; '
           'while [ ! -e go ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; '
           'echo "v2 final, much longer" > logs/metrics.json && touch done')
    launched.ok("run", "--detach", job)
    wait_until(lambda: (wd / "logs" / "metrics.json").exists(), what="the job's first write")
    launched.ok("download")
    assert (project / "logs" / "metrics.json").read_text() == "v1 partial\n"  # not ignored: in the file set
    (wd / "go").write_text("")
    wait_until(lambda: (wd / "done").exists(), what="the job's final write")

    preview = launched.ok("sync", "--dry-run")  # the whole-tree path agrees
    assert "send logs/metrics.json" not in preview.stdout.splitlines()
    assert "would keep the instance's copy of logs/metrics.json" in preview.stderr

    proc = launched.ok("sync")
    assert (wd / "logs" / "metrics.json").read_text() == "v2 final, much longer\n"
    assert "kept the instance's copy of logs/metrics.json: ferry never sent it" in proc.stderr
    assert "replaced" not in proc.stderr and not (home / ".ferry/local/proj/home/.ferry/replaced").exists()
    again = launched.ok("sync")  # remembered: no network, no second report until the local copy changes
    assert "synced 0 files" in again.stderr and "kept" not in again.stderr
    launched.ok("download")
    assert (project / "logs" / "metrics.json").read_text() == "v2 final, much longer\n"


def test_files_ferry_sent_still_update_and_what_they_replace_is_kept_remotely(launched, project, home):
    wd = workdir_of(home)
    replaced = home / ".ferry" / "local" / "proj" / "home" / ".ferry" / "replaced"
    second = int(time.time()) * 10**9
    os.utime(project / "src" / "model.py", ns=(second + 100, second + 100))
    launched.ok("sync")
    (wd / "train.py").write_text("a job rewrote this\n")  # ferry sent it: a local edit still wins, kept aside
    (project / "train.py").write_text("print('v2')\n")
    (project / "src" / "model.py").write_text("WEIGHTS = 2\n")  # the plain edit-code loop: same size,
    os.utime(project / "src" / "model.py", ns=(second + 200, second + 200))  # same second (rsync compares seconds)
    (project / "fresh.py").write_text("new here\n")  # never sent, and not on the instance: sent now
    proc = launched.ok("sync", "--verbose")
    assert (wd / "train.py").read_text() == "print('v2')\n"
    assert (wd / "src" / "model.py").read_text() == "WEIGHTS = 2\n"
    assert (wd / "fresh.py").read_text() == "new here\n"
    [stamp] = list(replaced.iterdir())
    assert (stamp / "train.py").read_text() == "a job rewrote this\n"
    assert (stamp / "src" / "model.py").read_text() == "WEIGHTS = 1\n"
    assert not (stamp / "fresh.py").exists()
    assert f"replaced train.py on the instance (previous copy in {stamp}/)" in proc.stderr, "-v names them"
    assert "kept" not in proc.stderr
    (project / "train.py").write_text("print('v3')\n")
    assert "replaced" not in launched.ok("sync").stderr, "a plain sync says nothing of ferry's own files"
    (project / "fresh.py").write_text("edited\n")  # ferry sent it last time: now an ordinary update
    launched.ok("sync")
    assert (wd / "fresh.py").read_text() == "edited\n"
    assert sorted((p / "fresh.py").read_text() for p in replaced.iterdir() if (p / "fresh.py").exists()) == [
        "new here\n"]


def test_whole_tree_paths_keep_what_ferry_never_sent(launched, project, home, monkeypatch):
    """--full and a large change (the tree walks) keep the same rule as the short list."""
    from ferry import sync

    wd = workdir_of(home)
    launched.ok("sync")
    (wd / "made-there.txt").write_text("the instance's\n")
    (project / "made-there.txt").write_text("mine\n")
    (wd / "train.py").write_text("a job rewrote this\n")
    proc = launched.ok("sync", "--full")
    assert (wd / "made-there.txt").read_text() == "the instance's\n"
    assert (wd / "train.py").read_text() == "print('training')\n"  # ferry sent it: --full puts it back
    assert "kept the instance's copy of made-there.txt" in proc.stderr and "replaced" not in proc.stderr
    assert [(p / "train.py").read_text() for p in (wd.parent / ".ferry" / "replaced").iterdir()] == [
        "a job rewrote this\n"]

    monkeypatch.setattr(sync, "LIST_LIMIT", 1)  # every change now takes the tree walks
    (wd / "out").mkdir()
    (wd / "out" / "a.json").write_text("the instance's\n")
    (project / "out").mkdir()
    for name in ("a.json", "b.json", "c.json"):
        (project / "out" / name).write_text("mine\n")
    (project / "src" / "model.py").write_text("WEIGHTS = 3\n")
    result = ferry.box().sync(progress=False)
    assert result.how == "changes" and result.kept_unsent == ["made-there.txt", "out/a.json"]
    assert (wd / "out" / "a.json").read_text() == "the instance's\n"
    assert (wd / "out" / "b.json").read_text() == "mine\n" and (wd / "src" / "model.py").read_text() == "WEIGHTS = 3\n"
    (wd / "made-there.txt").unlink()  # removed there: the next full compare sends ours
    launched.ok("sync", "--full")
    assert (wd / "made-there.txt").read_text() == "mine\n"


# -- credentials ------------------------------------------------------------------------------------------
SECRET = "s3cr3t-value-never-on-a-command-line"


def test_credentials_land_private_and_bashrc_holds_one_block(launched, project, home, tmp_path):
    instance_home = home / ".ferry" / "local" / "proj" / "home"
    (instance_home / "bin").mkdir()
    gcloud_log = instance_home / "gcloud.log"
    (instance_home / "bin" / "gcloud").write_text(f'#!/bin/sh\nprintf "%s " "$@" >> {gcloud_log}\necho >> {gcloud_log}\n')
    (instance_home / "bin" / "gcloud").chmod(0o755)
    (instance_home / ".bashrc").write_text('export PATH="$HOME/bin:$PATH"\nalias ll="ls -l"\n')
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / "gcp-service-account.json").write_text('{"private_key": "%s"}' % SECRET)
    (creds / ".env").write_text(f"API_TOKEN={SECRET}\n")
    # Every ssh ferry starts goes through this wrapper, which logs its command line.
    wrap = tmp_path / "bin"
    wrap.mkdir()
    argv_log = tmp_path / "ssh-argv.log"
    (wrap / "ssh").write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {argv_log}\nexec {shutil.which("ssh")} "$@"\n')
    (wrap / "ssh").chmod(0o755)
    env = {"PATH": f"{wrap}:{os.environ['PATH']}"}
    launched.ok("run", "true")  # the instance's tmux server now predates the credentials

    outputs = [launched.ok("sync", "--credentials", str(creds), env=env) for _ in range(3)]

    cred_dir = instance_home / ".ferry" / "credentials"
    assert stat.S_IMODE(cred_dir.stat().st_mode) == 0o700
    for name in ("gcp-service-account.json", ".env"):
        assert stat.S_IMODE((cred_dir / name).stat().st_mode) == 0o600
        assert (cred_dir / name).read_text() == (creds / name).read_text()
    bashrc = (instance_home / ".bashrc").read_text()
    assert bashrc.count("# >>> ferry credentials >>>") == 1 and bashrc.count("# <<< ferry credentials <<<") == 1
    assert bashrc.count('alias ll="ls -l"') == 1 and bashrc.count("GOOGLE_APPLICATION_CREDENTIALS") == 1
    assert SECRET not in bashrc
    job_env = instance_home / ".ferry" / "credentials.sh"  # the same lines, for a job runner to source
    assert stat.S_IMODE(job_env.stat().st_mode) == 0o600 and "GOOGLE_APPLICATION_CREDENTIALS" in job_env.read_text()
    probe = launched.ok("run", 'echo "gac=$GOOGLE_APPLICATION_CREDENTIALS token=$API_TOKEN"')
    assert probe.stdout.strip() == f"gac={cred_dir}/gcp-service-account.json token={SECRET}"
    assert gcloud_log.read_text().splitlines()[-1].strip() == (
        f"auth activate-service-account --key-file={cred_dir}/gcp-service-account.json")
    assert argv_log.exists() and SECRET not in argv_log.read_text()
    for proc in outputs:
        assert SECRET not in proc.stdout + proc.stderr
        assert "gcloud service account activated" in proc.stderr


def test_credentials_replace_the_previous_upload(launched, project, home, tmp_path):
    creds = tmp_path / "creds"
    creds.mkdir()
    (creds / ".env").write_text("A=1\n")
    (creds / "old.key").write_text("old\n")
    launched.ok("sync", "--credentials", str(creds))
    (creds / "old.key").unlink()
    launched.ok("sync", "--credentials", str(creds))
    cred_dir = home / ".ferry" / "local" / "proj" / "home" / ".ferry" / "credentials"
    assert sorted(p.name for p in cred_dir.iterdir()) == [".env"]


# -- bad input ------------------------------------------------------------------------------------------
def test_bad_flags_are_one_clean_line(launched, home):
    assert "--delete" in assert_one_line_error(launched("sync", "--delete=everything"), code=2)
    assert_one_line_error(launched("sync", "--credentials", str(home / "nope")), code=2)
    assert_one_line_error(launched("sync", "--watch", "--dry-run"), code=2)
    assert_one_line_error(launched("download", "--path", "../etc"), code=2)
    assert not workdir_of(home).exists()  # nothing half-done


# -- watch ------------------------------------------------------------------------------------------------
class _Lines:
    """Collects a pipe's lines on a thread, so a test can wait for one without blocking forever."""

    def __init__(self, pipe):
        self.lines: list[str] = []
        self._thread = threading.Thread(target=self._read, args=(pipe,), daemon=True)
        self._thread.start()

    def _read(self, pipe) -> None:
        for line in pipe:
            self.lines.append(line)

    @property
    def text(self) -> str:
        return "".join(self.lines)


def test_watch_follows_create_modify_rename_delete_and_survives_an_sshd_restart(launched, project, home):
    from ferry.providers.local import LocalProvider

    wd = workdir_of(home)
    proc = subprocess.Popen([sys.executable, "-m", "ferry", "sync", "--watch"], cwd=project,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    err = _Lines(proc.stderr)
    try:
        synced = lambda n: lambda: sum(" synced " in l for l in err.lines) >= n  # noqa: E731
        wait_until(synced(1), what="the first sync")
        assert (wd / "train.py").exists()
        (project / "created.py").write_text("created\n")
        wait_until(synced(2), what="a created file")
        assert (wd / "created.py").read_text() == "created\n"
        (project / "train.py").write_text("modified\n")
        wait_until(synced(3), what="a modified file")
        assert (wd / "train.py").read_text() == "modified\n"
        (project / "created.py").rename(project / "renamed.py")
        wait_until(synced(4), what="a rename")
        assert (wd / "renamed.py").exists() and not (wd / "created.py").exists()
        (project / "notes.md").unlink()
        wait_until(synced(5), what="a deletion")
        assert not (wd / "notes.md").exists()
        (project / ".venv" / "lib" / "noise.py").write_text("ignored\n")  # wakes nothing, sends nothing

        provider = LocalProvider(home / ".ferry" / "local")
        port = provider.get("proj").ssh.port
        provider.stop("proj")  # sshd and every session it forked: the watcher's connection drops
        (project / "while-down.py").write_text("written while the instance was unreachable\n")
        wait_until(lambda: "failed" in err.text, what="the watcher to notice the drop")
        assert not (wd / "while-down.py").exists()
        assert provider.start("proj").ssh.port == port
        wait_until(lambda: "reconnected" in err.text and synced(6)(), timeout=60, what="the sync after reconnecting")
        assert (wd / "while-down.py").exists()
        assert not (wd / ".venv").exists()
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    stdout = proc.stdout.read()
    assert proc.returncode == 0, err.text
    assert "Traceback" not in err.text and stdout == ""
    assert "stopped watching after 6 syncs" in err.text, err.text  # one line per sync, none for the ignored write


# -- the user's ssh_config -----------------------------------------------------------------------------------
RELAY = """\
import os, socket, sys, threading
host, port, log = sys.argv[1], int(sys.argv[2]), sys.argv[3]
with open(log, "a") as fh:
    fh.write(f"{host} {port}\\n")
sock = socket.create_connection((host, port))
def upstream():
    while True:
        data = os.read(0, 65536)
        if not data:
            sock.shutdown(socket.SHUT_WR)
            return
        sock.sendall(data)
threading.Thread(target=upstream, daemon=True).start()
while True:
    data = sock.recv(65536)
    if not data:
        break
    os.write(1, data)
"""


NSS_WRAPPER_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib")


def test_a_proxycommand_in_the_users_ssh_config_is_honoured(launched, project, home):
    """OpenSSH reads ~/.ssh/config from the passwd home, not $HOME. nss_wrapper (Debian's
    libnss-wrapper, installed by scripts/setup) hands ssh a passwd entry whose home is a
    directory of the test's, with its own .ssh/config: no root, no mount namespace."""
    wrapper = next((f"{d}/libnss_wrapper.so" for d in NSS_WRAPPER_DIRS if os.path.exists(f"{d}/libnss_wrapper.so")),
                   None)
    assert wrapper, "libnss-wrapper is missing: scripts/setup installs it"
    me = pwd.getpwuid(os.getuid())
    fake = home / "pw"
    (fake / ".ssh").mkdir(parents=True)
    passwd, group = home / "passwd", home / "group"
    passwd.write_text(f"{me.pw_name}:x:{me.pw_uid}:{me.pw_gid}::{fake}:/bin/sh\n")
    group.write_text(f"{me.pw_name}:x:{me.pw_gid}:\n")
    relay, log = home / "relay.py", home / "proxy.log"
    relay.write_text(RELAY)
    (fake / ".ssh" / "config").write_text(f"Host 127.0.0.1\n    ProxyCommand {sys.executable} {relay} %h %p {log}\n")
    remote = ferry.box().remote
    remote.close()  # the master launch opened would carry the sync without asking ssh_config again
    (project / "via-proxy.txt").write_text("through the proxy\n")
    env = {**os.environ, "LD_PRELOAD": wrapper, "NSS_WRAPPER_PASSWD": str(passwd), "NSS_WRAPPER_GROUP": str(group)}
    try:
        proc = subprocess.run([sys.executable, "-m", "ferry", "sync"], cwd=project, capture_output=True, text=True,
                              timeout=90, env=env)
        assert proc.returncode == 0, proc.stderr
    finally:
        remote.close()
    assert log.read_text().split() == ["127.0.0.1", str(remote.endpoint.port)]
    assert (workdir_of(home) / "via-proxy.txt").read_text() == "through the proxy\n"


def test_a_file_that_becomes_a_directory_and_back(launched, project, home):
    (project / "thing").write_text("a file\n")
    launched.ok("sync")
    (project / "thing").unlink()
    (project / "thing").mkdir()
    (project / "thing" / "inside.py").write_text("now a directory\n")
    launched.ok("sync")
    wd = workdir_of(home)
    assert (wd / "thing" / "inside.py").read_text() == "now a directory\n"
    shutil.rmtree(project / "thing")
    (project / "thing").write_text("a file again\n")
    launched.ok("sync")
    assert (wd / "thing").read_text() == "a file again\n"


def test_progress_bar_on_a_terminal_keeps_the_summary_right(launched, project, home, monkeypatch, capsys):
    """A terminal gets rsync's progress (shown after PROGRESS_AFTER seconds; 0 here), and the counts still add up."""
    from ferry import output

    monkeypatch.setattr(output, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(output, "colour", lambda stream=None: True)  # as on a terminal
    box = ferry.box()
    box.sync(progress=False)
    (project / "big.dat").write_bytes(os.urandom(1 << 20) * 24)  # 24 MB, sent by the "changes" path
    (project / "small.txt").write_text("x\n")
    result = box.sync(progress=True)
    err = capsys.readouterr().err
    assert (result.files, result.bytes) == (2, 24 * (1 << 20) + 2)
    assert "sending" in err and "25.2 MB" in err, "a bar with the bytes sent was drawn"
    assert err.rstrip("\n").endswith("\x1b[2K"), "and wiped at the end, leaving only the summary"
    assert (workdir_of(home) / "big.dat").stat().st_size == 24 * (1 << 20)


def test_a_first_copy_on_a_terminal_draws_its_bar_and_lands_every_byte(launched, project, home, monkeypatch, capsys):
    """The first copy streams while the scan runs: its bar's total grows with what the scan has found."""
    from ferry import output

    monkeypatch.setattr(output, "PROGRESS_AFTER", 0.0)
    monkeypatch.setattr(output, "colour", lambda stream=None: True)  # as on a terminal
    (project / "big.dat").write_bytes(os.urandom(1 << 20) * 24)
    result = ferry.box().sync(progress=True)
    err = capsys.readouterr().err
    assert result.how == "initial" and "sending" in err, err[-300:]
    assert (workdir_of(home) / "big.dat").read_bytes() == (project / "big.dat").read_bytes()
    assert {"train.py", "src/model.py", "notes.md", "big.dat"} <= remote_files(workdir_of(home))


def test_backups_of_replaced_files_stay_bounded(launched, project, home):
    from ferry.sync import KEEP_REPLACED

    launched.ok("sync")
    replaced = home / ".ferry" / "local" / "proj" / "home" / ".ferry" / "replaced"
    for i in range(KEEP_REPLACED + 3):
        (project / "train.py").write_text(f"print({i})\n" + "#" * i)
        launched.ok("sync")
    stamps = sorted(p.name for p in replaced.iterdir())
    assert len(stamps) <= KEEP_REPLACED + 1  # the newest ten survive a prune, plus the one being made
    newest = replaced / stamps[-1] / "train.py"
    assert newest.read_text() == f"print({KEEP_REPLACED + 1})\n" + "#" * (KEEP_REPLACED + 1)
