#!/usr/bin/env python3
"""ferry's inner loop against its floors, measured side by side in one run.

    python bench/bench_loop.py [--repeat N] [--quick] [--json FILE] [--samples]

Everything happens under a throw-away HOME (/tmp/fbXXXX: short, because
ControlMaster sockets are unix sockets): a local instance (a real sshd on
127.0.0.1) is launched, a generated git project is synced to it, and then
each ferry command is timed alternately with the cheapest way to do the same
work by hand (the floor), N times after 2 warm-ups (``--quick``: up to 3 after 1).
The table shows medians in milliseconds, ferry / floor, and each row's goal
from the issue with whether it is met. The instance is terminated and the
HOME removed in a ``finally`` block, whatever happens.

Run it with the interpreter ferry is installed in (its ``bin/`` must hold
``inv`` and ``ferry``), e.g. ``.venv/bin/python bench/bench_loop.py``.
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import house as H  # noqa: E402  (the house helpers: timing, rows, goals, table, JSON, cleanup)
from house import BenchError, Failed, Goal, Row, ferry_cmd, run, side_by_side, timed  # noqa: E402

N_DIRS, FILES_PER_DIR = 100, 20  # 2,000 tracked files
VENV_DIRS, VENV_FILES_PER_DIR = 10, 30  # 300 ignored files under .venv/
SYNC_LINE = re.compile(r"synced (\d+) files? \(([^)]*)\) in ([\d.]+)s")


# -- fixtures ------------------------------------------------------------------------
def make_project(root: Path, env: dict) -> int:
    """A committed git project of 2,000 small files in 100 dirs, plus an ignored .venv/."""
    root.mkdir()
    count = 0
    for d in range(N_DIRS):
        sub = root / f"pkg{d:03d}"
        sub.mkdir()
        for f in range(FILES_PER_DIR):
            ext = (".py", ".txt", ".json", ".cfg")[f % 4]
            body = f"# file {d}/{f}\n" + ("x = %d\n" % (d * 1000 + f)) * (5 + (d * 7 + f) % 40)
            (sub / f"m{f:02d}{ext}").write_text(body)
            count += 1
    (root / ".gitignore").write_text(".venv/\n__pycache__/\n")
    count += 1
    for d in range(VENV_DIRS):
        sub = root / ".venv" / "lib" / f"site{d}"
        sub.mkdir(parents=True)
        for f in range(VENV_FILES_PER_DIR):
            (sub / f"v{f}.py").write_text(f"# venv {d}/{f}\n" * 20)
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=root, env=env)
    run([*git, "add", "-A"], cwd=root, env=env)
    run([*git, "commit", "-q", "-m", "bench fixture"], cwd=root, env=env)
    return count


def make_tasks_project(root: Path) -> None:
    root.mkdir()
    (root / "tasks.py").write_text("from ferry.tasks import ns\n")


def make_plain_tasks_project(root: Path, count: int = 10) -> None:
    """A tasks.py of ``count`` trivial tasks and no ferry: what `inv --list` costs invoke alone."""
    root.mkdir()
    body = "from invoke import task\n" + "".join(
        f"\n\n@task(help={{'name': 'a flag'}})\ndef task{i}(c, name=None):\n    \"\"\"Task {i}.\"\"\"\n"
        for i in range(count)
    )
    (root / "tasks.py").write_text(body)


# -- the benchmark ------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_options(parser, repeat=10)
    args = parser.parse_args()
    H.configure(parser, args)

    bins = H.tool_dir()
    ferry, inv = str(bins / "ferry"), str(bins / "inv")
    python = H.interpreter_of(bins / "inv")
    rsync = shutil.which("rsync")
    if not rsync:
        raise BenchError("rsync is not installed")

    home = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    project = home / "p"
    tasks_dir = home / "t"
    env = H.fresh_env(home)

    launched = False
    remote = None
    rows: list[Row] = []
    facts: list[str] = []
    checks: list[str] = []
    t0 = time.perf_counter()
    try:
        print("machine:")
        for fact in H.machine_facts(python):
            print(f"  {fact}")
        print(f"  ferry: {ferry}   inv: {inv}   python: {python}")
        print(f"  HOME for this run: {home}   repeat: {args.repeat} after {H.WARMUPS} warm-ups, medians"
              f"{' (--quick)' if args.quick else ''}\n", flush=True)

        tracked = make_project(project, env)
        make_tasks_project(tasks_dir)
        plain_dir = home / "i"
        make_plain_tasks_project(plain_dir)

        # 1. start-up: inv --list against importing invoke -------------------------------------
        a, b = side_by_side(args.repeat, lambda: timed([inv, "--list"], cwd=tasks_dir, env=env)[0],
                            lambda: timed([python, "-c", "import invoke"], cwd=tasks_dir, env=env)[0])
        rows.append(Row("inv --list (tasks.py = ferry's ns)", 'python -c "import invoke"', a, b))
        a, b = side_by_side(args.repeat, lambda: timed([inv, "--list"], cwd=tasks_dir, env=env)[0],
                            lambda: timed([inv, "--list"], cwd=plain_dir, env=env)[0])
        rows.append(Row("  same, against invoke's own listing cost", "inv --list, tasks.py of 10 plain tasks", a, b))
        a, b = side_by_side(args.repeat, lambda: timed([ferry, "--list"], cwd=project, env=env)[0],
                            lambda: timed([python, "-c", "import invoke"], cwd=project, env=env)[0])
        rows.append(Row("ferry --list (console script)", 'python -c "import invoke"', a, b))

        # launch + initial sync ------------------------------------------------------------------
        launched = True  # from here on, finally must terminate
        ms, proc = timed([ferry, "launch"], cwd=project, env=env, timeout=120)
        facts.append(f"ferry launch: {ms:.0f} ms ({proc.stderr.decode(errors='replace').strip().splitlines()[-1]})")
        ms, proc = timed([ferry, "sync"], cwd=project, env=env)
        facts.append(f"initial ferry sync: {ms:.0f} ms ({proc.stderr.decode(errors='replace').strip()})")

        import ferry as ferry_lib

        box = ferry_lib.box(ferry_lib.make_context({"project_dir": str(project)}))
        remote = box.remote
        ssh_base = remote.ssh_argv()  # [ssh, options..., -T, host]
        workdir = box.workdir
        host = remote.rsync_target

        # cross-checks: the argv and workdir the CLI reports are the ones the floors use
        printed = shlex.split(run([ferry, "ssh", "--print"], cwd=project, env=env).stdout.decode())[:-1]
        lib = [x if x != "-T" else "-tt" for x in ssh_base]
        checks.append("ssh argv: library == `ferry ssh --print`" if printed == lib
                      else f"ssh argv differs: library {shlex.join(lib)} vs cli {shlex.join(printed)}")
        status = run([ferry, "status"], cwd=project, env=env).stdout.decode()
        m = re.search(r"^workdir: (.+)$", status, re.M)
        checks.append(f"workdir: {workdir}" + ("" if m and m.group(1).strip() == workdir
                                                else f" (ferry status says {m.group(1) if m else 'nothing'})"))
        on_remote = run(ssh_base + [f"find {shlex.quote(workdir)} -type f | wc -l"]).stdout.decode().strip()
        checks.append(f"files on the instance after the initial sync: {on_remote} (project has {tracked} tracked, "
                      f"{VENV_DIRS * VENV_FILES_PER_DIR} ignored in .venv/)")

        ssh_true = ssh_base + ["true"]
        floor_true = lambda: timed(ssh_true)[0]  # noqa: E731

        # 2. run: warm `ferry run true`, its remote half alone, and --detach -------------------
        fails: list[str] = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "true"], cwd=project, env=env),
                            floor_true, fails)
        rows.append(Row("ferry run true (warm)", "ssh <instance> true (ControlMaster)", a, b, failures=fails,
                        goal=Goal(90, "ms")))
        # The same goal as the issue words it for any machine: <= 1.0x `python -c "import invoke"` + 2x the ssh floor,
        # that sum measured in this run (90 ms was that sum on the quiet machine the issue was written on).
        budget = lambda: (timed([python, "-c", "import invoke"], cwd=project, env=env)[0]  # noqa: E731
                          + timed(ssh_true)[0] + timed(ssh_true)[0])
        fails = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "true"], cwd=project, env=env), budget, fails)
        rows.append(Row("  the same, against the issue's budget", 'python -c "import invoke" + 2x ssh true', a, b,
                        failures=fails, goal=1.0))

        from ferry import follow as follow_lib
        from ferry import jobs as jobs_lib

        def remote_half() -> float:
            job_id = jobs_lib.new_job_id()
            spec = jobs_lib.job_spec(box, "true")
            tool = follow_lib.job_tool(box)
            cmd = f"{tool} start {shlex.quote(job_id)} follow 0"  # what ferry run sends: one exec
            start = time.perf_counter()
            proc = subprocess.run(ssh_base + [cmd], input=spec, capture_output=True, timeout=60)
            ms = (time.perf_counter() - start) * 1000.0
            if b"ferry-exit:0:" not in proc.stderr:
                err = " | ".join(l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip())
                raise Failed(f"ssh ... ferry-job start ... follow exited {proc.returncode}: {err or 'no stderr'}")
            return ms

        fails = []
        a, b = side_by_side(args.repeat, remote_half, floor_true, fails)
        rows.append(Row("  its remote half: ssh 'ferry-job start ID follow 0'", "ssh <instance> true (ControlMaster)", a, b,
                        note="no Python start-up: what the job machinery itself costs", failures=fails, goal=2.5))
        fails = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "--detach", "true"], cwd=project, env=env),
                            floor_true, fails)
        rows.append(Row("ferry run --detach true", "ssh <instance> true (ControlMaster)", a, b, failures=fails))

        # the design the issue asks about: a chg-style command server (a probe, not shipped) ----------------
        probe = str(Path(__file__).resolve().parent / "command_server_probe.py")
        sock = str(home / "cs.sock")
        server = subprocess.Popen([python, probe, "serve", sock], cwd=project, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
        try:
            if server.stdout.readline().strip() != b"ready":  # type: ignore[union-attr]
                raise BenchError(f"the command server probe did not start: {server.stderr.read().decode()[-2000:]}")  # type: ignore[union-attr]
            client = [python, "-S", probe, "client", sock]
            fails = []
            a, b = side_by_side(args.repeat, lambda: ferry_cmd([*client, "run", "true"], cwd=project, env=env),
                                floor_true, fails)
            rows.append(Row("ferry run true via a command server (probe)", "ssh <instance> true (ControlMaster)", a, b,
                            failures=fails, note="bench/command_server_probe.py: one loaded ferry forks a child per "
                                                 "command, as chg does for hg (not shipped)"))
            a, b = side_by_side(args.repeat, lambda: ferry_cmd([*client, "--version"], cwd=project, env=env),
                                lambda: timed([python, "-S", "-c", "pass"], cwd=project, env=env)[0])
            rows.append(Row("  ferry --version via the same server", "python -S -c pass", a, b,
                            note="the server's own cost per command: client start, hand-over, fork, Invoke's parse"))
        finally:
            server.kill()
            server.wait()

        # 3. no-op sync ---------------------------------------------------------------------------
        raw_rsync = [rsync, "-rlpt", "--exclude=.git/", "--exclude=.ferry/", "--exclude=/.venv/",
                     "-e", shlex.join(ssh_base[:-1]), f"{project}/", f"{host}{workdir}/"]
        itemized = run([*raw_rsync[:1], "--dry-run", "-i", *raw_rsync[1:]]).stdout.decode().splitlines()
        # Files only: after ferry's tar-stream first copy, directory mtimes differ (tar makes parents itself),
        # which rsync -t would touch up (".d..t......" lines) without sending anything.
        pending = [line for line in itemized if line[1:2] == "f"]
        checks.append("raw rsync sees the same file set as ferry (dry run after ferry sync: no file to send)"
                      if not pending else f"raw rsync would still send {len(pending)} files after ferry sync")
        inproc, startup, reported_files = [], [], set()

        def ferry_sync() -> float:
            ms, proc = timed([ferry, "sync"], cwd=project, env=env)
            m = SYNC_LINE.search(proc.stderr.decode(errors="replace"))
            if not m:
                raise BenchError(f"ferry sync printed no summary: {proc.stderr.decode(errors='replace')}")
            reported_files.add(int(m.group(1)))
            inproc.append(float(m.group(3)) * 1000.0)
            startup.append(ms - inproc[-1])
            return ms

        a, b = side_by_side(args.repeat, ferry_sync, lambda: timed(raw_rsync)[0])
        inproc, startup = inproc[H.WARMUPS:], startup[H.WARMUPS:]
        rows.append(Row("ferry sync, no-op (whole command)", "rsync -rlpt -e <same ssh>, same excludes", a, b))
        rows.append(Row("  in-process time ferry reports", "rsync -rlpt -e <same ssh>, same excludes", inproc, b,
                        note="10 ms resolution (ferry prints 2 decimals)"))
        rows[-1].capped = a.capped
        start_floor = [r for r in rows if r.what.startswith("inv --list")][0].floor
        rows.append(Row("  start-up + exit (wall - in-process)", 'python -c "import invoke" (as row 1)', startup,
                        start_floor))
        rows[-1].capped = a.capped
        checks.append(f"no-op ferry sync reported files sent: {sorted(reported_files)} (expect [0])")
        git_ls = ["git", "-c", "core.quotePath=off", "ls-files", "-z", "--others", "--ignored",
                  "--exclude-standard", "--directory", "--no-empty-directory"]
        ls_ms = statistics.median([timed(git_ls, cwd=project, env=env)[0] for _ in range(H.WARMUPS + args.repeat)][H.WARMUPS:])
        checks.append(f"of ferry's in-process time, its exclude step (git ls-files --others --ignored): {ls_ms:.1f} ms median")

        H.print_table(rows)
        if args.samples:
            H.print_samples(rows)
        print()
        for line in facts + checks:
            print(f"  {line}")
        H.print_failures(rows)
        return 0
    finally:
        error = sys.exc_info()[1]
        H.write_json(args.json, "loop", args, rows, t0, error=repr(error) if error else None)
        H.finish(t0, home, project, env, ferry, launched, remote)


if __name__ == "__main__":
    H.run_main(main)
