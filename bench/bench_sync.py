#!/usr/bin/env python3
"""ferry sync/download against their floors on an ML-shaped repository, side by side in one run.

    python bench/bench_sync.py [--repeat N] [--quick] [--json FILE] [--samples] [--disk] [--big-files N]

A throw-away HOME (on tmpfs, /dev/shm, unless --disk: a loaded disk makes
first-copy times swing 10x between runs) holds a local instance (a real sshd
on 127.0.0.1) and a generated git project shaped like an ML repo: 5,000
source files of 1-20 KB in 200 directories, plus ignored junk (a venv-like
tree of 20,000 files and a 500 MB sparse ``*.pt``). Each row alternates ferry
and the cheapest by-hand way to do the same work (the floor), N times after
2 warm-ups, and prints medians in ms and ferry / floor:

* initial sync into an empty workdir, against ``git ls-files -z | tar | ssh tar x``;
* no-op sync and a 10-file change, against ``git ls-files | rsync --files-from``
  over the same reused ssh connection (and, for reference, against a recursive
  rsync with git's ignored paths as excludes, the fastest walk);
* no-op download, against a raw ``rsync`` pull;
* on a second instance, a project of 100,000 small files (sync_big.py):
  initial sync, one changed file, no-op (in-process and whole command) and
  the peak memory of ``ferry sync`` (``--big-files N`` sets the size, 0 skips).

``--quick``: up to 3 runs after 1 warm-up, and 10,000 files instead of 100,000 for
the large project (its labels say the size used). Rows carry the issue's goals.

"in-process" rows time the library call inside this process (start-up
excluded); "whole command" rows time ``ferry sync`` as a user runs it, and
start-up is that minus the time the command itself reports. The instance is
terminated and the HOME removed in a ``finally`` block, whatever happens.
Run it with the interpreter ferry is installed in: ``.venv/bin/python bench/bench_sync.py``.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shlex
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import house as H  # noqa: E402  (the house helpers: timing, rows, goals, table, JSON, cleanup)
from house import BenchError, Row, run, side_by_side, timed  # noqa: E402
from sync_big import big_rows  # noqa: E402

SRC_DIRS, SRC_PER_DIR = 200, 25  # 5,000 tracked files, 1-20 KB each
VENV_DIRS, VENV_PER_DIR = 400, 50  # 20,000 ignored files
WEIGHTS = 500 * 1024 * 1024
SUMMARY = re.compile(r"synced (\d+) files? \(([^)]*)\) in ([\d.]+)s")


def make_ml_project(root: Path, env: dict) -> tuple[int, int]:
    """The generated repository; returns (tracked files, their bytes)."""
    rnd = random.Random(1234)
    count = size = 0
    line = b"x = compute(x)  # a line of model code\n"
    for d in range(SRC_DIRS):
        sub = root / f"pkg{d // 20:02d}" / f"mod{d:03d}"
        sub.mkdir(parents=True)
        for f in range(SRC_PER_DIR):
            n = rnd.randint(1024, 20 * 1024)
            (sub / f"f{f:02d}.py").write_bytes((line * (n // len(line) + 1))[:n])
            count, size = count + 1, size + n
    (root / ".gitignore").write_text(".venv/\n*.pt\n__pycache__/\nwandb/\n.ferry/\n")
    for d in range(VENV_DIRS):
        sub = root / ".venv" / "lib" / "python3.11" / "site-packages" / f"dist{d:03d}"
        sub.mkdir(parents=True)
        for f in range(VENV_PER_DIR):
            (sub / f"m{f:02d}.py").write_bytes(b"# vendored\n" * (1 + f % 20))
    (root / "checkpoints").mkdir()
    with open(root / "checkpoints" / "model.pt", "wb") as fh:
        fh.truncate(WEIGHTS)  # sparse: 500 MB to every stat, no time to write
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=root, env=env)
    run([*git, "add", "-A"], cwd=root, env=env, timeout=300)
    run([*git, "commit", "-q", "-m", "bench fixture"], cwd=root, env=env, timeout=300)
    return count + 1, size


def median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_options(parser, repeat=10)
    parser.add_argument("--disk", action="store_true", help="put the HOME (project and instance) on /tmp, not tmpfs")
    parser.add_argument("--big-files", type=int, help="files in the large project (default 100000; 10000 with --quick; "
                                                       "0 skips its rows)")
    args = parser.parse_args()
    H.configure(parser, args)
    if args.big_files is None:
        args.big_files = 10000 if args.quick else 100000

    bins = H.tool_dir()
    ferry = str(bins / "ferry")
    python = H.interpreter_of(bins / "inv")
    rsync, tar, git_bin = shutil.which("rsync"), shutil.which("tar"), shutil.which("git")
    if not (rsync and tar and git_bin):
        raise BenchError("rsync, tar and git must be installed")
    base = "/tmp" if args.disk or not os.access("/dev/shm", os.W_OK) else "/dev/shm"
    home = Path(tempfile.mkdtemp(prefix="fs", dir=base))
    project = home / "p"
    env = H.fresh_env(home)
    launched, remote = False, None
    rows: list[Row] = []
    facts: list[str] = []
    checks: list[str] = []
    t0 = time.perf_counter()
    try:
        print("machine:")
        for fact in H.machine_facts(python):
            print(f"  {fact}")
        print(f"  ferry: {ferry}   python: {python}")
        print(f"  HOME for this run: {home} ({'tmpfs' if base == '/dev/shm' else 'disk'})   "
              f"repeat: {args.repeat} after {H.WARMUPS} warm-ups, medians"
              f"{' (--quick)' if args.quick else ''}\n", flush=True)

        started = time.perf_counter()
        tracked, tracked_bytes = make_ml_project(project, env)
        facts.append(f"generated the project in {time.perf_counter() - started:.1f} s: {tracked} tracked files "
                     f"({tracked_bytes / 1e6:.1f} MB) in {SRC_DIRS} dirs; ignored: {VENV_DIRS * VENV_PER_DIR} venv "
                     f"files, a {WEIGHTS >> 20} MB sparse .pt")

        launched = True
        ms, _ = timed([ferry, "launch"], cwd=project, env=env, timeout=120)
        facts.append(f"ferry launch: {ms:.0f} ms")

        import ferry as ferry_lib

        box = ferry_lib.box(ferry_lib.make_context({"project_dir": str(project)}))
        remote = box.remote
        ssh = remote.ssh_argv()  # [ssh, options..., -T, host]
        rsh = shlex.join(ssh[:-1])
        host = remote.rsync_target
        wd = box.workdir
        floor_wd = wd + "-floor"
        sync_dir = project / ".ferry" / "sync"

        def ssh_run(command: str) -> None:
            run(ssh + [command], timeout=120)

        def reset_remote() -> None:
            ssh_run(f"rm -rf {shlex.quote(wd)} {shlex.quote(floor_wd)} \"$HOME/.ferry/manifests\"")
            shutil.rmtree(sync_dir, ignore_errors=True)

        def in_process(fn) -> float:
            start = time.perf_counter()
            fn()
            return (time.perf_counter() - start) * 1000.0

        # 1. initial sync into an empty workdir ---------------------------------------------------------
        def ferry_initial() -> float:
            reset_remote()
            ms = in_process(lambda: box.sync(progress=False))
            return ms

        tar_pipe = ["sh", "-c", f"{shlex.quote(git_bin)} ls-files -z --cached --others --exclude-standard | "
                    f"{shlex.quote(tar)} --null -T - -cf - | "
                    f"{rsh} {shlex.quote(ssh[-1])} {shlex.quote(f'mkdir -p {floor_wd} && tar -xf - -C {floor_wd}')}"]

        def floor_initial() -> float:
            ssh_run(f"rm -rf {shlex.quote(floor_wd)}")
            return timed(tar_pipe, cwd=project, env=env)[0]

        a, b = side_by_side(args.repeat, ferry_initial, floor_initial)
        rows.append(Row("initial sync, 5k files (in-process)", "git ls-files -z | tar | ssh tar x (empty dir)", a, b,
                        goal=1.3))
        box.sync(progress=False)  # leaves a complete workdir and a fresh record
        counted = run(ssh + [f"cd {shlex.quote(wd)} && find . -type f | wc -l"]).stdout.decode().strip()
        checks.append(f"files on the instance after ferry's initial sync: {counted} (project: {tracked} tracked; "
                      "none of the venv or the .pt)")

        # 2. no-op sync ----------------------------------------------------------------------------------
        files_from = ["sh", "-c", f"{shlex.quote(git_bin)} ls-files -z --cached --others --exclude-standard | "
                      f"{shlex.quote(rsync)} -rlpt --from0 --files-from=- -e {shlex.quote(rsh)} ./ "
                      f"{shlex.quote(host + wd + '/')}"]
        ignored = run([git_bin, "ls-files", "-z", "--others", "--ignored", "--exclude-standard", "--directory"],
                      cwd=project, env=env).stdout
        rules_file = home / "floor-excludes"
        rules_file.write_bytes(b".git\0/.ferry/\0" + b"".join(b"/" + p + b"\0" for p in ignored.split(b"\0") if p))
        filtered = [rsync, "-rlpt", "--from0", f"--exclude-from={rules_file}", "-e", rsh, f"{project}/", f"{host}{wd}/"]
        def files_pending(proc) -> int:  # file lines of an itemized dry run (directory mtimes aside)
            return sum(1 for l in proc.stdout.decode(errors="replace").splitlines() if l[:2] in ("<f", ">f", "cL"))

        pending = files_pending(run([rsync, "--dry-run", "-i", *filtered[1:]]))
        checks.append("raw filtered rsync sees ferry's file set: no file left to send after ferry sync"
                      if not pending else f"raw filtered rsync would still send {pending} files after ferry sync")
        pending = files_pending(run([*files_from[:2], files_from[2].replace("-rlpt", "-rlpt --dry-run -i")],
                                    cwd=project, env=env))
        checks.append("raw files-from rsync agrees: no file left to send after ferry sync"
                      if not pending else f"raw files-from rsync would still send {pending} files")
        floor_files_from = lambda: timed(files_from, cwd=project, env=env)[0]  # noqa: E731
        floor_filtered = lambda: timed(filtered)[0]  # noqa: E731
        hows: set[str] = set()

        def ferry_noop() -> float:
            result = None

            def call():
                nonlocal result
                result = box.sync(progress=False)

            ms = in_process(call)
            hows.add(f"{result.how}:{result.files}")
            return ms

        a, b = side_by_side(args.repeat, ferry_noop, floor_files_from)
        rows.append(Row("no-op sync, 5k files (in-process)", "git ls-files | rsync --files-from (reused ssh)", a, b,
                        goal=1.3))
        a, b = side_by_side(args.repeat, ferry_noop, floor_filtered)
        rows.append(Row("  same, against the fastest walk", "rsync -rlpt with git's ignored paths excluded", a, b))
        checks.append(f"in-process no-op syncs took the path(s): {sorted(hows)} (expect unchanged:0)")

        # 3. 10-file change --------------------------------------------------------------------------------
        all_files = sorted(p for p in project.rglob("*.py") if ".venv" not in p.parts)
        cursor = [0]

        def touch10() -> None:
            for i in range(10):
                path = all_files[(cursor[0] + i * 97) % len(all_files)]
                with open(path, "ab") as fh:
                    fh.write(b"# changed\n")
            cursor[0] += 1

        changed_counts: set[int] = set()

        def ferry_ten() -> float:
            touch10()
            result = None

            def call():
                nonlocal result
                result = box.sync(progress=False)

            ms = in_process(call)
            changed_counts.add(result.files)
            return ms

        def floor_ten() -> float:
            touch10()
            ms = floor_files_from()
            box.sync(progress=False)  # untimed: ferry's record catches up with the floor's edits
            return ms

        a, b = side_by_side(args.repeat, ferry_ten, floor_ten)
        rows.append(Row("10-file change of 5k (in-process)", "edit 10 files; git ls-files | rsync --files-from", a, b,
                        goal=1.3))
        checks.append(f"files ferry sent per 10-file change: {sorted(changed_counts)} (expect [10])")

        # 4. whole command: no-op `ferry sync` -----------------------------------------------------------------
        reported, startup = [], []

        def ferry_cli() -> float:
            ms, proc = timed([ferry, "sync"], cwd=project, env=env)
            m = SUMMARY.search(proc.stderr.decode(errors="replace"))
            if not m:
                raise BenchError(f"ferry sync printed no summary: {proc.stderr.decode(errors='replace')}")
            reported.append(float(m.group(3)) * 1000.0)
            startup.append(ms - reported[-1])
            return ms

        a, b = side_by_side(args.repeat, ferry_cli, floor_files_from)
        rows.append(Row("no-op sync, 5k files (whole command)", "git ls-files | rsync --files-from (reused ssh)", a, b,
                        goal=3.0))
        reported, startup = reported[H.WARMUPS:], startup[H.WARMUPS:]  # this row's measured runs only
        kept = (list(reported), list(startup))
        a2, b2 = side_by_side(args.repeat, ferry_cli, floor_filtered)
        rows.append(Row("  same, against the fastest walk", "rsync -rlpt with git's ignored paths excluded", a2, b2))
        reported, startup = kept
        imp = [timed([python, "-c", "import invoke"], env=env)[0] for _ in range(H.WARMUPS + args.repeat)][H.WARMUPS:]
        rows.append(Row("  start-up + exit (wall - reported)", 'python -c "import invoke"', startup, imp,
                        note="the cost of a new Python process importing invoke and ferry"))
        rows[-1].capped = a.capped

        # 5. no-op download ------------------------------------------------------------------------------------
        pull = [rsync, "-rlpt", "--update", "-e", rsh, f"{host}{wd}/", f"{project}/"]
        a, b = side_by_side(args.repeat, lambda: in_process(lambda: box.download(progress=False)),
                            lambda: timed(pull)[0])
        rows.append(Row("no-op download (in-process)", "rsync -rlpt --update host:workdir/ ./", a, b))
        a, b = side_by_side(args.repeat, lambda: H.ferry_cmd([ferry, "download"], cwd=project, env=env),
                            lambda: timed(pull)[0])
        rows.append(Row("no-op download (whole command)", "rsync -rlpt --update host:workdir/ ./", a, b))

        if args.big_files:
            big_rows(home=home, env=env, ferry=ferry, repeat=args.repeat, n_files=args.big_files, rows=rows,
                     facts=facts, checks=checks)

        H.print_table(rows)
        if args.samples:
            H.print_samples(rows)
        print()
        print(f"  start-up of `ferry sync` (wall minus the time it reports): {median(startup):.0f} ms median; "
              f"the sync itself as reported: {median(reported):.0f} ms")
        print()
        for line in facts + checks:
            print(f"  {line}")
        return 0
    finally:
        error = sys.exc_info()[1]
        H.write_json(args.json, "sync", args, rows, t0, error=repr(error) if error else None)
        H.finish(t0, home, project, env, ferry, launched, remote)


if __name__ == "__main__":
    H.run_main(main)
