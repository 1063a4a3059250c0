#!/usr/bin/env python3
"""ferry's inner loop against its floors, measured side by side in one run.

    python bench/bench_loop.py [--repeat N] [--samples]

Everything happens under a throw-away HOME (/tmp/fbXXXX: short, because
ControlMaster sockets are unix sockets): a local instance (a real sshd on
127.0.0.1) is launched, a generated git project is synced to it, and then
each ferry command is timed alternately with the cheapest way to do the same
work by hand (the floor), N times after 2 warm-ups. The table shows medians
in milliseconds and ferry / floor. The instance is terminated and the HOME
removed in a ``finally`` block, whatever happens.

Run it with the interpreter ferry is installed in (its ``bin/`` must hold
``inv`` and ``ferry``), e.g. ``.venv/bin/python bench/bench_loop.py``.
See bench/README.md for what each row means.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

WARMUPS = 2
N_DIRS, FILES_PER_DIR = 100, 20  # 2,000 tracked files
VENV_DIRS, VENV_FILES_PER_DIR = 10, 30  # 300 ignored files under .venv/
SYNC_LINE = re.compile(r"synced (\d+) files? \(([^)]*)\) in ([\d.]+)s")


# -- helpers -----------------------------------------------------------------------
class BenchError(RuntimeError):
    pass


def run(argv, *, cwd=None, env=None, check=True, stdin=subprocess.DEVNULL, timeout=120):
    proc = subprocess.run(argv, cwd=cwd, env=env, stdin=stdin, capture_output=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise BenchError(
            f"{shlex.join(map(str, argv))} exited {proc.returncode}\n"
            f"stdout: {proc.stdout.decode(errors='replace')[-2000:]}\n"
            f"stderr: {proc.stderr.decode(errors='replace')[-2000:]}"
        )
    return proc


def timed(argv, **kwargs) -> tuple[float, subprocess.CompletedProcess]:
    """Wall time in ms of one subprocess.run (output captured, stdin /dev/null)."""
    start = time.perf_counter()
    proc = run(argv, **kwargs)
    return (time.perf_counter() - start) * 1000.0, proc


def first_line(argv) -> str:
    try:
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except OSError as exc:
        return f"unavailable ({exc})"
    text = (proc.stdout or proc.stderr).strip()
    return text.splitlines()[0] if text else "?"


def tool_dir() -> Path:
    """The bin/ holding ferry and inv: next to this interpreter (a venv), else from PATH."""
    here = Path(sys.executable).parent
    if (here / "ferry").exists() and (here / "inv").exists():
        return here
    found = shutil.which("ferry")
    if not found:
        raise BenchError("ferry is not installed for this interpreter; run with the venv's python")
    return Path(found).parent


def interpreter_of(script: Path) -> str:
    """The python a console script runs under (its shebang), so floors use the same interpreter."""
    line = script.read_bytes().split(b"\n", 1)[0].decode(errors="replace")
    if line.startswith("#!"):
        cmd = shlex.split(line[2:].strip())
        if cmd and "python" in Path(cmd[-1]).name:
            return cmd[-1]
        if cmd and Path(cmd[0]).name == "env" and len(cmd) > 1:
            return shutil.which(cmd[1]) or sys.executable
    return sys.executable


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


# -- measuring -----------------------------------------------------------------------
class Row:
    def __init__(self, what: str, floor_what: str, ferry: list[float], floor: list[float], note: str = "",
                 failures: list[str] | None = None):
        self.what, self.floor_what, self.ferry, self.floor, self.note = what, floor_what, ferry, floor, note
        self.failures = failures or []

    @property
    def ferry_ms(self) -> float:
        return statistics.median(self.ferry)

    @property
    def floor_ms(self) -> float:
        return statistics.median(self.floor)


class Failed(Exception):
    """A ferry command failed: counted in the row's fails column and left out of its median."""


def ferry_cmd(argv, **kwargs) -> float:
    ms, proc = timed(argv, check=False, **kwargs)
    if proc.returncode != 0:
        err = [l for l in proc.stderr.decode(errors="replace").splitlines() if l.strip()]
        raise Failed(f"{shlex.join(argv[1:])} exited {proc.returncode}: {' | '.join(err[-2:]) or 'no stderr'}")
    return ms


def side_by_side(repeat: int, ferry_fn, floor_fn, failures: list[str] | None = None) -> tuple[list[float], list[float]]:
    """Alternate ferry and floor so drift (load, caches) hits both alike; drop WARMUPS of each.

    A ferry run that fails (Failed) is recorded in ``failures`` and retried as an extra
    iteration, at most ``repeat`` extra times, so the row still gets its samples.
    """
    a, b = [], []
    i = extra = 0
    while i < WARMUPS + repeat:
        try:
            x = ferry_fn()
        except Failed as exc:
            if failures is None or extra >= repeat:
                raise BenchError(str(exc)) from None
            failures.append(str(exc))
            extra += 1
            floor_fn()  # keep the alternating rhythm
            continue
        y = floor_fn()
        if i >= WARMUPS:
            a.append(x)
            b.append(y)
        i += 1
    return a, b


def print_table(rows: list[Row]) -> None:
    head = ["#", "what", "ferry ms", "floor ms", "ratio", "fails", "floor"]
    cells = []
    for i, r in enumerate(rows, 1):
        ratio = r.ferry_ms / r.floor_ms if r.floor_ms > 0 else float("inf")
        cells.append([str(i), r.what, f"{r.ferry_ms:.1f}", f"{r.floor_ms:.1f}", f"{ratio:.1f}x",
                      str(len(r.failures)), r.floor_what])
    widths = [max(len(c[i]) for c in [head, *cells]) for i in range(len(head))]
    right = {2, 3, 4, 5}
    line = lambda c: "  ".join(v.rjust(w) if i in right else v.ljust(w) for i, (v, w) in enumerate(zip(c, widths))).rstrip()  # noqa: E731
    print(line(head))
    print(line(["-" * w for w in widths]))
    for c in cells:
        print(line(c))
    for i, r in enumerate(rows, 1):
        if r.note:
            print(f"   row {i}: {r.note}")


def print_samples(rows: list[Row]) -> None:
    print("\nsamples (ms):")
    for i, r in enumerate(rows, 1):
        fmt = lambda xs: " ".join(f"{x:.1f}" for x in xs)  # noqa: E731
        print(f"  {i}. ferry: {fmt(r.ferry)}\n     floor: {fmt(r.floor)}")


def machine_facts(python: str) -> list[str]:
    versions = run(
        [python, "-c", "import importlib.metadata as m;"
         "print(' / '.join(f'{p} {m.version(p)}' for p in ('ferry','invoke','fabric','paramiko')))"],
        check=False,
    ).stdout.decode().strip()
    return [
        f"nproc: {first_line(['nproc'])} (os.cpu_count {os.cpu_count()}), load avg {' '.join(f'{x:.2f}' for x in os.getloadavg())}",
        f"kernel: {platform.system()} {platform.release()} {platform.machine()}",
        f"ssh: {first_line(['ssh', '-V'])}",
        f"rsync: {first_line(['rsync', '--version'])}",
        f"tmux: {first_line(['tmux', '-V'])}    git: {first_line(['git', '--version'])}",
        f"python: {first_line([python, '-VV'])}",
        f"packages: {versions}",
    ]


# -- leftovers -------------------------------------------------------------------------
def processes_mentioning(text: str) -> list[tuple[int, str]]:
    """Live (non-zombie) processes whose command line or environment mentions ``text``."""
    found = []
    needle = text.encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text()
            if stat.rsplit(")", 1)[1].split()[0] == "Z":
                continue
            cmdline = (entry / "cmdline").read_bytes()
            try:
                environ = (entry / "environ").read_bytes()
            except OSError:
                environ = b""
        except (OSError, IndexError):
            continue
        if needle in cmdline or needle in environ:
            found.append((int(entry.name), cmdline.replace(b"\0", b" ").decode(errors="replace").strip()))
    return found


def cleanup(home: Path, project: Path, env: dict, ferry: str, launched: bool, remote) -> list[str]:
    """Terminate the instance through ferry, close leftovers by pid, remove HOME. Returns notes."""
    notes = []
    if launched:
        try:
            proc = subprocess.run([ferry, "terminate", "--yes"], cwd=project, env=env,
                                  capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
            if proc.returncode != 0:
                notes.append(f"ferry terminate exited {proc.returncode}: {proc.stderr.decode(errors='replace').strip()}")
        except (OSError, subprocess.SubprocessError) as exc:
            notes.append(f"ferry terminate failed: {exc}")
        if notes:  # fall back to the library's own terminate (kills by pid from the sshd pid file / marker)
            try:
                from ferry.providers.local import LocalProvider

                if remote is not None:
                    remote.close()
                LocalProvider(root=home / ".ferry" / "local").terminate("p")
                notes.append("fell back to LocalProvider.terminate")
            except Exception as exc:  # noqa: BLE001
                notes.append(f"fallback terminate failed: {exc}")
    time.sleep(0.1)
    left = processes_mentioning(str(home))
    for pid, cmd in left:
        notes.append(f"left running after terminate, killing pid {pid}: {cmd[:120]}")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    shutil.rmtree(home, ignore_errors=True)
    if home.exists():
        notes.append(f"could not remove {home}")
    return notes


# -- the benchmark ------------------------------------------------------------------------
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=10, help="measured runs per row after 2 warm-ups (default 10)")
    parser.add_argument("--samples", action="store_true", help="also print every sample")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")

    bins = tool_dir()
    ferry, inv = str(bins / "ferry"), str(bins / "inv")
    python = interpreter_of(bins / "inv")
    rsync = shutil.which("rsync")
    if not rsync:
        raise BenchError("rsync is not installed")

    home = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    project = home / "p"
    tasks_dir = home / "t"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FERRY_"))}
    env["HOME"] = str(home)
    os.environ["HOME"] = str(home)  # the library calls below (Path.home()) must see the same HOME
    for k in [k for k in os.environ if k.startswith(("INVOKE_", "FERRY_"))]:
        del os.environ[k]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)

    launched = False
    remote = None
    rows: list[Row] = []
    facts: list[str] = []
    checks: list[str] = []
    t0 = time.perf_counter()
    try:
        print("machine:")
        for fact in machine_facts(python):
            print(f"  {fact}")
        print(f"  ferry: {ferry}   inv: {inv}   python: {python}")
        print(f"  HOME for this run: {home}   repeat: {args.repeat} after {WARMUPS} warm-ups, medians\n", flush=True)

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
        rows.append(Row("ferry run true (warm)", "ssh <instance> true (ControlMaster)", a, b, failures=fails))

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
                        note="no Python start-up: what the job machinery itself costs", failures=fails))
        fails = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "--detach", "true"], cwd=project, env=env),
                            floor_true, fails)
        rows.append(Row("ferry run --detach true", "ssh <instance> true (ControlMaster)", a, b, failures=fails))

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
        inproc, startup = inproc[WARMUPS:], startup[WARMUPS:]
        rows.append(Row("ferry sync, no-op (whole command)", "rsync -rlpt -e <same ssh>, same excludes", a, b))
        rows.append(Row("  in-process time ferry reports", "rsync -rlpt -e <same ssh>, same excludes", inproc, b,
                        note="10 ms resolution (ferry prints 2 decimals)"))
        start_floor = [r for r in rows if r.what.startswith("inv --list")][0].floor
        rows.append(Row("  start-up + exit (wall - in-process)", 'python -c "import invoke" (as row 1)', startup,
                        start_floor))
        checks.append(f"no-op ferry sync reported files sent: {sorted(reported_files)} (expect [0])")
        git_ls = ["git", "-c", "core.quotePath=off", "ls-files", "-z", "--others", "--ignored",
                  "--exclude-standard", "--directory", "--no-empty-directory"]
        ls_ms = statistics.median([timed(git_ls, cwd=project, env=env)[0] for _ in range(WARMUPS + args.repeat)][WARMUPS:])
        checks.append(f"of ferry's in-process time, its exclude step (git ls-files --others --ignored): {ls_ms:.1f} ms median")

        print_table(rows)
        if args.samples:
            print_samples(rows)
        print()
        for line in facts + checks:
            print(f"  {line}")
        print_failures(rows)
        return 0
    finally:
        finish(t0, home, project, env, ferry, launched, remote)


def print_failures(rows: list) -> None:
    """ferry runs that failed: left out of the medians (and retried), but never hidden."""
    failed = [(i, f) for i, r in enumerate(rows, 1) for f in r.failures]
    if failed:
        print("\nferry failures (left out of the medians, retried as extra runs):")
        for i, f in failed:
            print(f"  row {i}: {f}")


def finish(t0: float, home, project, env, ferry, launched, remote) -> None:
    """Every bench's ``finally``: terminate the instance, remove the HOME, say how long it all took."""
    notes = cleanup(home, project, env, ferry, launched, remote)
    for note in notes:
        print(f"cleanup: {note}", file=sys.stderr)
    print(f"\ntotal bench time {time.perf_counter() - t0:.1f} s; instance terminated, {home} removed"
          + ("" if not notes else " (see cleanup notes)"))


def run_main(main) -> None:
    """The ``__main__`` of every bench: a BenchError is one line and exit 1, Ctrl-C exits 130."""
    try:
        sys.exit(main())
    except BenchError as exc:
        print(f"bench failed: {exc}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    run_main(main)
