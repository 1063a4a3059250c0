"""bench_sync.py's large-repository rows: a project of N files (100k; 10k with --quick) on its own instance.

The project ``q/`` is N small committed files (100-2,000 bytes, 100 per
directory, ``.ferry/`` in ``.gitignore``, nothing else ignored), launched as
a second local instance beside bench_sync's ``p/``. Each row alternates ferry
and its floor as every bench row does (``house.side_by_side``):

* initial sync into an empty workdir (in-process) against ``git ls-files -z |
  tar | ssh tar x``;
* one changed file (in-process) against an rsync of that one file (from the
  second sync on, the change journal's daemon a sync leaves behind at this
  size answers what changed: a check line counts how often);
* a no-op sync, in-process and as the whole command, against a raw recursive
  ``rsync -rlpt`` of the tree with the same excludes (``.git/``, ``/.ferry/``);
* peak memory (max RSS, os.wait4) of ``ferry sync`` as a user runs it: the
  no-op runs above, and whole-command initial syncs into an empty workdir,
  beside the floors' own peaks (the raw rsync; the tar pipeline's largest process).

The instance is terminated (``ferry terminate`` in ``q/``, by pid if that
fails) and the journal daemon stopped by its pid in a ``finally`` block; the
caller removes the HOME.
"""

from __future__ import annotations

import random
import shlex
import shutil
import sys
import time
from pathlib import Path

import house as H
from house import BenchError, Goal, Row, run, side_by_side, timed

MEMORY_GOAL = Goal(100, "MiB")
SUMMARY_HOW = "unchanged"


def make_big_project(root: Path, env: dict, n_files: int) -> int:
    """``n_files`` committed files (plus .gitignore) of 100-2,000 bytes, 100 per directory; returns their bytes."""
    rnd = random.Random(4321)
    size = 0
    line = b"0123456789 some data for one sample of a data set\n"
    block = line * (2000 // len(line) + 1)
    for i in range(n_files):
        d, f = divmod(i, 100)
        sub = root / f"data{d // 100:03d}" / f"part{d:05d}"
        if f == 0:
            sub.mkdir(parents=True)
        n = rnd.randint(100, 2000)
        with open(sub / f"s{f:02d}.txt", "wb") as fh:
            fh.write(block[:n])
        size += n
    (root / ".gitignore").write_text(".ferry/\n__pycache__/\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=root, env=env)
    run([*git, "add", "-A"], cwd=root, env=env, timeout=900)
    run([*git, "commit", "-q", "-m", "bench fixture"], cwd=root, env=env, timeout=900)
    return size


def big_rows(*, home: Path, env: dict, ferry: str, repeat: int, n_files: int, rows: list, facts: list,
             checks: list) -> None:
    """Append the large-repository rows to ``rows``; the instance is gone when this returns or raises."""
    rsync, tar, git_bin = shutil.which("rsync"), shutil.which("tar"), shutil.which("git")
    k = H.human_count(n_files)
    project = home / "q"
    launched, remote = False, None
    try:
        started = time.perf_counter()
        project.mkdir()
        size = make_big_project(project, env, n_files)
        facts.append(f"generated the {k}-file project in {time.perf_counter() - started:.1f} s: {n_files + 1} tracked "
                     f"files ({size / 1e6:.1f} MB) in {n_files // 100} dirs, nothing ignored")
        launched = True
        ms, _ = timed([ferry, "launch"], cwd=project, env=env, timeout=120)
        facts.append(f"ferry launch of the {k}-file project's instance: {ms:.0f} ms")

        import ferry as ferry_lib

        box = ferry_lib.box(ferry_lib.make_context({"project_dir": str(project)}))
        remote = box.remote
        ssh = remote.ssh_argv()
        rsh = shlex.join(ssh[:-1])
        host, wd = remote.rsync_target, box.workdir
        floor_wd = wd + "-floor"

        def ssh_run(command: str) -> None:
            run(ssh + [command], timeout=300)

        def reset_remote() -> None:  # untimed: an empty workdir, no record on either side
            ssh_run(f"rm -rf {shlex.quote(wd)} {shlex.quote(floor_wd)} \"$HOME/.ferry/manifests\"")
            shutil.rmtree(project / ".ferry" / "sync", ignore_errors=True)

        def in_process(fn) -> float:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1000.0

        # initial sync into an empty workdir ---------------------------------------------------------------
        tar_pipe = ["sh", "-c", f"{shlex.quote(git_bin)} ls-files -z --cached --others --exclude-standard | "
                    f"{shlex.quote(tar)} --null -T - -cf - | "
                    f"{rsh} {shlex.quote(ssh[-1])} {shlex.quote(f'mkdir -p {floor_wd} && tar -xf - -C {floor_wd}')}"]

        def ferry_initial() -> float:
            reset_remote()
            return in_process(lambda: box.sync(progress=False))

        tar_rss: list[float] = []

        def floor_initial() -> float:
            ssh_run(f"rm -rf {shlex.quote(floor_wd)}")
            ms, peak, code, err = H.timed_rss(tar_pipe, cwd=project, env=env, timeout=900)  # GNU time: ~1 ms more
            if code:
                raise BenchError(f"tar pipeline exited {code}: {err[-300:]}")
            tar_rss.append(peak)
            return ms

        a, b = side_by_side(repeat, ferry_initial, floor_initial)
        rows.append(Row(f"initial sync, {k} files (in-process)", "git ls-files -z | tar | ssh tar x (empty dir)", a, b,
                        goal=1.3))
        ssh_run(f"rm -rf {shlex.quote(floor_wd)}")
        counted = run(ssh + [f"cd {shlex.quote(wd)} && find . -type f | wc -l"]).stdout.decode().strip()
        checks.append(f"{k}: files on the instance after ferry's initial sync: {counted} (project: {n_files + 1} tracked)")

        # one changed file -----------------------------------------------------------------------------------
        files = [p.relative_to(project).as_posix() for p in sorted(project.glob("data*/part*/s*.txt"))]
        cursor = [0]

        def touch_one() -> str:
            rel = files[(cursor[0] * 7919) % len(files)]
            cursor[0] += 1
            with open(project / rel, "ab") as fh:
                fh.write(b"# changed\n")
            return rel

        sent: set[int] = set()
        journaled: list[bool] = []

        def ferry_one() -> float:
            touch_one()
            result = None

            def call():
                nonlocal result
                result = box.sync(progress=False)

            ms = in_process(call)
            sent.add(result.files)
            journaled.append(getattr(result, "journal", False))  # (an older ferry has none)
            return ms

        def floor_one() -> float:
            rel = touch_one()
            ms = timed([rsync, "-lpt", "-e", rsh, str(project / rel), f"{host}{wd}/{rel}"])[0]
            box.sync(progress=False)  # untimed: ferry's record catches up with the floor's edit
            return ms

        a, b = side_by_side(repeat, ferry_one, floor_one)
        rows.append(Row(f"one changed file of {k} (in-process)", "rsync -lpt of that one file (same ssh)", a, b, goal=3.0))
        checks.append(f"{k}: files ferry sent per one-file change: {sorted(sent)} (expect [1])")
        checks.append(f"{k}: one-file changes found by the change journal (not a full scan): "
                      f"{sum(journaled)} of {len(journaled)} (the first syncs start its daemon and scan)")

        # no-op, in-process and whole command, with the peak memory of the whole command -----------------------
        raw = [rsync, "-rlpt", "--exclude=.git/", "--exclude=/.ferry/", "-e", rsh, f"{project}/", f"{host}{wd}/"]
        itemized = run([raw[0], "--dry-run", "-i", *raw[1:]], timeout=300).stdout.decode(errors="replace").splitlines()
        pending = [line for line in itemized if line[1:2] == "f"]
        checks.append(f"{k}: raw rsync sees ferry's file set: no file left to send after ferry sync" if not pending
                      else f"{k}: raw rsync would still send {len(pending)} files after ferry sync")
        hows: set[str] = set()

        def ferry_noop() -> float:
            result = None

            def call():
                nonlocal result
                result = box.sync(progress=False)

            ms = in_process(call)
            hows.add(f"{result.how}:{result.files}{':journal' if getattr(result, 'journal', False) else ''}")
            return ms

        a, b = side_by_side(repeat, ferry_noop, lambda: timed(raw, timeout=300)[0])
        rows.append(Row(f"no-op sync, {k} files (in-process)", "rsync -rlpt no-op, same excludes (same ssh)", a, b,
                        goal=0.3))
        checks.append(f"{k}: in-process no-op syncs took the path(s): {sorted(hows)} (expect unchanged:0:journal, the change journal's answer)")

        rss: list[float] = []
        floor_rss: list[float] = []

        def ferry_cli() -> float:
            ms, peak, code, err = H.timed_rss([ferry, "sync"], cwd=project, env=env)
            if code:
                raise BenchError(f"ferry sync exited {code}: {err[-300:]}")
            rss.append(peak)
            return ms

        def floor_cli() -> float:
            ms, peak, code, err = H.timed_rss(raw, env=env)
            if code:
                raise BenchError(f"raw rsync exited {code}: {err[-300:]}")
            floor_rss.append(peak)
            return ms

        a, b = side_by_side(repeat, ferry_cli, floor_cli)
        rows.append(Row(f"no-op sync, {k} files (whole command)", "rsync -rlpt no-op, same excludes (same ssh)", a, b,
                        goal=0.3, note="Python start-up included"))
        rows.append(Row(f"peak RSS of `ferry sync`, no-op, {k} files", "peak RSS of that raw rsync", rss[H.WARMUPS:],
                        floor_rss[H.WARMUPS:], unit="MiB", goal=MEMORY_GOAL,
                        note="max RSS of the command or of any process it waited for (GNU time %M)"))
        rows[-1].capped = a.capped

        # peak memory of whole-command initial syncs (no warm-up: memory does not warm up) -------------------------
        rss = []
        for _ in range(1 if H.ROW_SECONDS else 3):  # once with --quick
            reset_remote()
            _, peak, code, err = H.timed_rss([ferry, "sync"], cwd=project, env=env, timeout=900)
            if code:
                raise BenchError(f"ferry sync (initial) exited {code}: {err[-300:]}")
            rss.append(peak)
        rows.append(Row(f"peak RSS of `ferry sync`, initial, {k} files", "peak RSS of the tar pipeline's largest process",
                        rss, tar_rss[H.WARMUPS:], unit="MiB", goal=MEMORY_GOAL,
                        note=f"{len(rss)} whole-command initial sync(s) into an empty workdir; the floor's peaks are "
                             f"from the initial-sync row's floor runs"))
    finally:
        if launched:
            try:
                from ferry import journal

                journal.stop(project)  # the change journal's daemon the large project's syncs started, by its pid
            except ImportError:
                pass  # an older ferry, timed for a before/after comparison: it has none
            for note in H.terminate(project, env, ferry, "q", remote):
                print(f"cleanup: {note}", file=sys.stderr)
