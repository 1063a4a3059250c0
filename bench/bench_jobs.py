#!/usr/bin/env python3
"""ferry's job machinery against its floors, measured side by side in one run.

    python bench/bench_jobs.py [--repeat N] [--lines N] [--drops N] [--samples]

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
   fresh ssh connection (``ssh -o ControlPath=none <instance> true``).

Medians in ms (and p95 for the delays) with ferry / floor. The instance is
terminated and the HOME removed in a ``finally`` block, whatever happens.
Helpers (timing, the table, machine facts, cleanup) come from bench_loop.py.
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
from bench_loop import (  # noqa: E402
    WARMUPS, BenchError, Failed, Row, ferry_cmd, finish, interpreter_of, machine_facts, print_failures,
    print_samples, print_table, run, run_main, side_by_side, timed, tool_dir,
)

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
    parser.add_argument("--repeat", type=int, default=10, help="measured runs per round-trip row after 2 warm-ups (default 10)")
    parser.add_argument("--lines", type=int, default=50, help="timestamp lines per delay measurement (default 50)")
    parser.add_argument("--drops", type=int, default=5, help="dropped connections to resume from (default 5)")
    parser.add_argument("--samples", action="store_true", help="also print every sample")
    args = parser.parse_args()
    if args.repeat < 1 or args.lines < 5 or args.drops < 1:
        parser.error("--repeat and --drops must be at least 1, --lines at least 5")

    bins = tool_dir()
    ferry = str(bins / "ferry")
    python = interpreter_of(bins / "inv")
    home = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    project = home / "p"  # bench_loop.cleanup's fallback terminates the instance named "p"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("INVOKE_", "FERRY_"))}
    env["HOME"] = str(home)
    os.environ["HOME"] = str(home)
    for k in [k for k in os.environ if k.startswith(("INVOKE_", "FERRY_"))]:
        del os.environ[k]

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    launched = False
    remote = None
    rows: list[Row] = []
    facts: list[str] = []
    t0 = time.perf_counter()
    try:
        print("machine:")
        for fact in machine_facts(python):
            print(f"  {fact}")
        print(f"  ferry: {ferry}   python: {python}")
        print(f"  HOME for this run: {home}   repeat: {args.repeat} after {WARMUPS} warm-ups, medians; "
              f"{args.lines} lines per delay run; {args.drops} drops\n", flush=True)
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
        rows.append(Row("ferry run true (warm)", "ssh <instance> true (ControlMaster)", a, b, failures=fails))

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
                        note="no Python start-up: the job machinery itself (tmux start + end detection)", failures=fails))
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
        for _ in range(2):  # alternate, twice, so drift hits both
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
        n_lines, fault_at = 150, 30
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

        all_rows = rows + delay_rows + [p95_row, resume_row]
        print_table(all_rows)
        if args.samples:
            print_samples(all_rows)
        print()
        for line in facts:
            print(f"  {line}")
        print_failures(all_rows)
        return 0
    finally:
        finish(t0, home, project, env, ferry, launched, remote)


if __name__ == "__main__":
    run_main(main)
