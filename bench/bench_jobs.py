#!/usr/bin/env python3
"""ferry's job machinery against its floors, measured side by side in one run.

    python bench/bench_jobs.py [--repeat N] [--lines N] [--drops N] [--output-mb N] [--jobs N]
                               [--quick] [--json FILE] [--samples]

Under a throw-away HOME (/tmp/fbXXXX), a local instance (a real sshd on
127.0.0.1) is launched for a tiny git project, then:

1. round trips: warm ``ferry run true``, its remote half alone (``ssh …
   'bash ferry-job start ID follow 0'``, spec on stdin, no Python start-up)
   and ``ferry run --detach true``, each alternated with ``ssh <instance>
   true`` over the same ControlMaster connection (the floor);
2. line delay while following: a job prints ``time.time_ns()`` every 100 ms;
   the bench records when each line reaches it through ``ferry run`` and,
   as the floor, through ``ssh <instance> 'python3 -u -c …'`` directly;
   the instance is this machine, so both ends read the same clock;
3. resume after a drop: while ``ferry run`` follows a job printing every
   10 ms, the per-connection sshd is SIGKILLed; the time from the kill to
   the next line arriving is the cost of noticing, backing off and
   reconnecting (and every line must still arrive once, in order). Floor: a
   fresh ssh connection (``ssh -o ControlPath=none <instance> true``);
4. a big output: a command printing 100 MB (``yes <76 chars> | head -c``)
   run as a job (``ssh … 'ferry-job start ID'`` then ``ssh … 'ferry-job
   wait ID'``) against ``ssh <instance> 'CMD > file'``; and followed to the
   end by ``ferry run CMD`` (stdout to /dev/null) against ``ssh <instance>
   CMD > /dev/null``;
5. many jobs from Python: ``box.run("true", detach=True)`` 64 times, then
   ``job.wait()`` on each, against 64 sequential ``ssh <instance> true``.

Medians in ms (and p95 for the delays) with ferry / floor, and the issue's
goal for the rows that have one. ``--quick``: up to 3 runs after 1 warm-up (see house.py), 10
lines per delay run (one ferry run and one floor run, not two each), 1 drop
(of a job printing 60 lines, not 150), 10 MB of output, 16 jobs (the labels
say the sizes used). The instance is terminated and the HOME removed in a
``finally`` block, whatever happens. Helpers come from house.py.
"""

from __future__ import annotations

import argparse
import os
import select
import shlex
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import house as H  # noqa: E402  (the house helpers: timing, rows, goals, table, JSON, cleanup)
from house import BenchError, Failed, Goal, Row, ferry_cmd, run, side_by_side, timed  # noqa: E402

PRINT_INTERVAL = 0.1  # seconds between the job's timestamp lines


def make_project(root: Path, env: dict) -> None:
    root.mkdir()
    (root / "train.py").write_text("print('hello')\n")
    git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@example.invalid", "-c", "init.defaultBranch=main"]
    run([*git, "init", "-q"], cwd=root, env=env)
    run([*git, "add", "-A"], cwd=root, env=env)
    run([*git, "commit", "-q", "-m", "bench fixture"], cwd=root, env=env)


def stamp_job(python: str, lines: int, interval: float = PRINT_INTERVAL) -> str:
    """A shell command printing ``lines`` lines of time.time_ns(), one every ``interval`` seconds."""
    code = (f"import time\nfor i in range({lines}):\n"
            f"    print(time.time_ns(), flush=True)\n    time.sleep({interval})\n")
    return f"{shlex.quote(python)} -u -c {shlex.quote(code)}"


def arrivals(argv, cwd, env, on_line=None, timeout: float = 120) -> list[tuple[int, int]]:
    """Run argv; for each stdout line (an integer time_ns) record (printed_ns, arrived_ns)."""
    proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    got: list[tuple[int, int]] = []
    buf = b""
    fd = proc.stdout.fileno()
    deadline = time.monotonic() + timeout
    try:
        while True:
            if not select.select([fd], [], [], max(0.0, deadline - time.monotonic()))[0]:
                raise BenchError(f"{shlex.join(map(str, argv))[:200]} ran past {timeout}s")
            chunk = os.read(fd, 65536)
            now = time.time_ns()
            if not chunk:
                break
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                if line.strip().isdigit():
                    got.append((int(line), now))
                    if on_line:
                        on_line(len(got))
        err = proc.stderr.read()
        if proc.wait() != 0:
            raise BenchError(f"exited {proc.returncode}: {err.decode(errors='replace')[-500:]}")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return got


def p95(xs: list[float]) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(0.95 * (len(xs) - 1))))]


def kill_connections(sshd_dir: Path) -> int:
    """SIGKILL the per-connection sshd processes (children of the instance's listener). Returns how many."""
    from ferry.sshd import LoopbackSshd

    listener = LoopbackSshd(sshd_dir).pid()
    victims = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1]) == listener:
                victims.append(int(entry.name))
        except (OSError, ValueError, IndexError):
            continue
    for pid in victims:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return len(victims)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_options(parser, repeat=10, what="measured runs per round-trip row")
    parser.add_argument("--lines", type=int, help="timestamp lines per delay measurement (default 50; 10 with --quick)")
    parser.add_argument("--drops", type=int, help="dropped connections to resume from (default 5; 1 with --quick)")
    parser.add_argument("--output-mb", type=int, help="MB the big-output job prints (default 100; 10 with --quick)")
    parser.add_argument("--jobs", type=int, help="detached jobs started from Python (default 64; 16 with --quick)")
    args = parser.parse_args()
    H.configure(parser, args)
    for name, full, quick in (("lines", 50, 10), ("drops", 5, 1), ("output_mb", 100, 10), ("jobs", 64, 16)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    if args.lines < 5 or args.drops < 1 or args.output_mb < 1 or args.jobs < 1:
        parser.error("--drops, --output-mb and --jobs must be at least 1, --lines at least 5")

    bins = H.tool_dir()
    ferry = str(bins / "ferry")
    python = H.interpreter_of(bins / "inv")
    home = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    project = home / "p"  # house.cleanup's fallback terminates the instance named "p"
    env = H.fresh_env(home)
    launched = False
    remote = None
    rows: list[Row] = []
    facts: list[str] = []
    t0 = time.perf_counter()
    try:
        print("machine:")
        for fact in H.machine_facts(python):
            print(f"  {fact}")
        print(f"  ferry: {ferry}   python: {python}")
        print(f"  HOME for this run: {home}   repeat: {args.repeat} after {H.WARMUPS} warm-ups, medians; "
              f"{args.lines} lines per delay run; {args.drops} drops; {args.output_mb} MB output; {args.jobs} jobs"
              f"{' (--quick)' if args.quick else ''}\n", flush=True)
        make_project(project, env)
        launched = True
        ms, _ = timed([ferry, "launch"], cwd=project, env=env, timeout=120)
        facts.append(f"ferry launch: {ms:.0f} ms")

        import ferry as ferry_lib
        from ferry import follow as follow_lib
        from ferry import jobs as jobs_lib

        box = ferry_lib.box(ferry_lib.make_context({"project_dir": str(project)}))
        remote = box.remote
        ssh_base = remote.ssh_argv()  # [ssh, options..., -T, host]
        ssh_true = ssh_base + ["true"]
        floor_true = lambda: timed(ssh_true)[0]  # noqa: E731

        # 1. round trips ------------------------------------------------------------------------------
        fails: list[str] = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "true"], cwd=project, env=env), floor_true, fails)
        rows.append(Row("ferry run true (warm)", "ssh <instance> true (ControlMaster)", a, b, failures=fails,
                        goal=Goal(90, "ms")))

        def remote_half() -> float:
            job_id = jobs_lib.new_job_id()
            spec = jobs_lib.job_spec(box, "true")
            tool = follow_lib.job_tool(box)
            cmd = f"{tool} start {job_id} follow 0"  # exactly what ferry.jobs.follow sends with a start spec
            start = time.perf_counter()
            proc = subprocess.run(ssh_base + [cmd], input=spec, capture_output=True, timeout=60)
            ms = (time.perf_counter() - start) * 1000.0
            if b"ferry-exit:0:" not in proc.stderr:
                raise Failed(f"ferry-job start && follow: {proc.stderr.decode(errors='replace').strip()}")
            return ms

        fails = []
        a, b = side_by_side(args.repeat, remote_half, floor_true, fails)
        rows.append(Row("  its remote half: ssh 'ferry-job start ID follow 0'", "ssh <instance> true (ControlMaster)", a, b,
                        note="no Python start-up: the job machinery itself (tmux start + end detection)", failures=fails,
                        goal=2.5))
        fails = []
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "run", "--detach", "true"], cwd=project, env=env),
                            floor_true, fails)
        rows.append(Row("ferry run --detach true", "ssh <instance> true (ControlMaster)", a, b, failures=fails))
        a, b = side_by_side(args.repeat, lambda: ferry_cmd([ferry, "jobs", "--json"], cwd=project, env=env), floor_true)
        jobs_count = len(box.jobs())
        rows.append(Row(f"ferry jobs --json ({jobs_count}+ jobs)", "ssh <instance> true (ControlMaster)", a, b))

        # 2. line delay while following ------------------------------------------------------------------
        job = stamp_job(python, args.lines)
        ferry_delays, floor_delays = [], []
        for _ in range(1 if args.quick else 2):  # alternate, twice, so drift hits both (once with --quick)
            got = arrivals([ferry, "run", job], project, env)
            ferry_delays += [(arr - printed) / 1e6 for printed, arr in got[1:]]
            got = arrivals(ssh_base + [job], project, env)
            floor_delays += [(arr - printed) / 1e6 for printed, arr in got[1:]]
        delay_rows = [
            Row("line delay while following (ferry run)", "ssh <instance> 'python3 -u -c …' (same job, direct)",
                ferry_delays, floor_delays, note="median of per-line delays: printed on the instance -> read locally"),
        ]
        p95_row = Row("  p95 of the same", "p95 of the same", [p95(ferry_delays)], [p95(floor_delays)])

        # 3. resume after a dropped connection ------------------------------------------------------------
        # A job printing every 10 ms; the per-connection sshd is killed as line 30 arrives. The time
        # from the kill to the next line arriving is how long output stopped flowing.
        sshd_dir = Path(box.instance.raw["dir"]) / "sshd"
        gaps, handshakes = [], []
        n_lines, fault_at = (60 if args.quick else 150), 30
        for _ in range(args.drops):
            state = {"killed": 0, "at": 0}

            def on_line(n, state=state):
                if n == fault_at:
                    state["killed"] = kill_connections(sshd_dir)
                    state["at"] = time.time_ns()

            got = arrivals([ferry, "run", stamp_job(python, n_lines, 0.01)], project, env, on_line=on_line)
            if not state["killed"]:
                raise BenchError("no connection to kill")
            printed = [p for p, _ in got]
            if len(got) != n_lines or printed != sorted(printed):
                raise BenchError(f"lines lost or reordered across the drop: got {len(got)} of {n_lines}")
            after = [arr for _, arr in got if arr > state["at"]]
            gaps.append((after[0] - state["at"]) / 1e6)
            handshakes.append(timed([ssh_base[0], "-o", "ControlPath=none", "-o", "ControlMaster=no", *ssh_base[1:], "true"])[0])
        resume_row = Row("resume after the connection is killed", "fresh ssh connection (ControlPath=none) true",
                         gaps, handshakes, note="from the kill to the next line arriving (the job prints every 10 ms); "
                                                "every line arrived once, in order")

        rows.extend(delay_rows + [p95_row, resume_row])

        # 4. a command printing a lot: inside the job wrapper, and followed by `ferry run` ----------------------
        tool = follow_lib.job_tool(box)
        size = args.output_mb * 1000 * 1000
        big = f"yes {'0123456789' * 7 + 'abcdef'} | head -c {size}"  # 77-byte lines
        rhome = box.instance.remote_home  # absolute: an ssh session starts in the user's own home, not this one
        if not rhome or not rhome.startswith(f"{home}/"):
            raise BenchError(f"the instance's home {rhome!r} is not under this run's {home}: not deleting anything there")
        jobs_dir = f"{rhome}/.ferry/jobs"
        floor_file = shlex.quote(f"{rhome}/bench-floor.out")  # on the filesystem the job logs are on
        drop_logs = lambda: run(ssh_base + [f"rm -f {shlex.quote(jobs_dir)}/*/log {floor_file}"])  # noqa: E731  (untimed)

        def big_in_wrapper() -> float:
            job_id = jobs_lib.new_job_id()
            spec = jobs_lib.job_spec(box, big)
            start = time.perf_counter()
            started = subprocess.run(ssh_base + [f"{tool} start {job_id}"], input=spec, capture_output=True, timeout=300)
            waited = subprocess.run(ssh_base + [f"{tool} wait {job_id}"], stdin=subprocess.DEVNULL,
                                    capture_output=True, timeout=300)
            ms = (time.perf_counter() - start) * 1000.0
            log_size = run(ssh_base + [f"stat -c %s {shlex.quote(jobs_dir)}/{job_id}/log"]).stdout.decode().strip()
            drop_logs()
            if started.returncode or b"ferry-exit:0:" not in waited.stderr or log_size != str(size):
                raise Failed(f"big job: start exited {started.returncode}, wait said "
                             f"{waited.stderr.decode(errors='replace').strip()[-200:]!r}, log {log_size} bytes")
            return ms

        def big_to_file() -> float:
            ms = timed(ssh_base + [f"{big} > {floor_file}"])[0]
            drop_logs()
            return ms

        fails = []
        a, b = side_by_side(args.repeat, big_in_wrapper, big_to_file, fails)
        rows.append(Row(f"{args.output_mb} MB of output in the job wrapper: ssh start + ssh wait",
                        f"ssh <instance> 'CMD > file' (CMD: yes | head -c {size})", a, b, failures=fails,
                        goal=1.3, note="two execs (start, wait) against one; the log is a file in the job's dir, "
                                       "drawn in the tmux pane only once someone attaches"))

        def devnull(argv, check: bool) -> float:
            start = time.perf_counter()
            proc = subprocess.run(argv, cwd=project, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, timeout=300)
            ms = (time.perf_counter() - start) * 1000.0
            drop_logs()
            if proc.returncode:
                msg = f"{shlex.join(argv[-2:])} exited {proc.returncode}: {proc.stderr.decode(errors='replace')[-200:]}"
                if check:
                    raise BenchError(msg)
                raise Failed(msg)
            return ms

        fails = []
        a, b = side_by_side(args.repeat, lambda: devnull([ferry, "run", big], False),
                            lambda: devnull(ssh_base + [big], True), fails)
        rows.append(Row(f"ferry run CMD printing {args.output_mb} MB, > /dev/null", "ssh <instance> CMD > /dev/null", a, b,
                        failures=fails, goal=1.5, note="the whole command, Python start-up included"))

        # 5. many detached jobs from Python, then wait for each ---------------------------------------------
        def many_jobs() -> float:
            start = time.perf_counter()
            started = [box.run("true", detach=True) for _ in range(args.jobs)]
            ends = [job.wait() for job in started]
            ms = (time.perf_counter() - start) * 1000.0
            bad = [end for end in ends if not end.ok]
            if bad:
                raise Failed(f"{len(bad)} of {args.jobs} detached jobs did not succeed: {bad[0].describe()}")
            return ms

        def many_ssh() -> float:
            start = time.perf_counter()
            for _ in range(args.jobs):
                run(ssh_true)
            return (time.perf_counter() - start) * 1000.0

        fails = []
        a, b = side_by_side(args.repeat, many_jobs, many_ssh, fails)
        rows.append(Row(f"{args.jobs} x box.run('true', detach=True), then job.wait() each",
                        f"{args.jobs} sequential ssh <instance> true", a, b, failures=fails, goal=5.0,
                        note="in-process; one exec to start each job and one to wait for each"))

        H.print_table(rows)
        if args.samples:
            H.print_samples(rows)
        print()
        for line in facts:
            print(f"  {line}")
        H.print_failures(rows)
        return 0
    finally:
        error = sys.exc_info()[1]
        H.write_json(args.json, "jobs", args, rows, t0, error=repr(error) if error else None)
        H.finish(t0, home, project, env, ferry, launched, remote)


if __name__ == "__main__":
    H.run_main(main)
