#!/usr/bin/env python3
"""``map`` over a fleet against its floor, measured side by side in one run.

    python bench/bench_map.py [--repeat N] [--members 8] [--items 64] [--slots 2] [--quick] [--json FILE]

Under a throw-away HOME (/tmp/fbXXXX), ``ferry launch --count 8`` makes 8
local instances (real sshds on 127.0.0.1), then for ``true`` and ``sleep 0.1``:

* ferry: ``fleet.map(CMD, items, slots=2)`` in-process (every item a ferry
  job in tmux with its log home and a joblog line), and the whole command
  ``ferry map CMD --items FILE --slots 2`` (one Python start-up per map, never
  one per item);
* floor: the same items as one raw ``ssh <member> CMD`` exec each over the
  members' ControlMaster connections, 2 at a time per member, 8 members in
  parallel: the same concurrency with no job machinery at all.

Medians in ms with the ratio and the issue's goals (``true`` <= 3x, ``sleep
0.1`` <= 1.3x the floor). ``--quick``: up to 3 runs after 1 warm-up, 16 items on 4
members (the labels say the sizes used). The instances are terminated and
the HOME removed in a ``finally`` block, whatever happens.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import house as H  # noqa: E402  (the house helpers: timing, rows, goals, table, JSON, cleanup)
from bench_jobs import make_project  # noqa: E402
from house import BenchError, Row, ferry_cmd, side_by_side, timed  # noqa: E402

GOALS = {"true": 3.0, "sleep 0.1": 1.3}  # issue 12: ferry / floor


def raw_floor(remotes: list, items: int, slots: int, command: str) -> float:
    """``items`` raw ssh execs of ``command``, ``slots`` at a time per member, all members at once (ms)."""
    lock = threading.Lock()
    left = [items]

    def slot(remote) -> None:
        argv = remote.ssh_argv() + [command]
        while True:
            with lock:
                if left[0] <= 0:
                    return
                left[0] -= 1
            proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, timeout=60)
            if proc.returncode != 0:
                raise BenchError(f"floor exec failed: {proc.stderr.decode(errors='replace')[-200:]}")

    threads = [threading.Thread(target=slot, args=(r,)) for r in remotes for _ in range(slots)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return (time.perf_counter() - start) * 1000.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    H.add_options(parser, repeat=5)
    parser.add_argument("--members", type=int, help="instances in the fleet (default 8; 4 with --quick)")
    parser.add_argument("--items", type=int, help="items per map (default 64; 16 with --quick)")
    parser.add_argument("--slots", type=int, default=2)
    args = parser.parse_args()
    H.configure(parser, args)
    args.members = args.members or (4 if args.quick else 8)
    args.items = args.items or (16 if args.quick else 64)

    bins = H.tool_dir()
    ferry = str(bins / "ferry")
    python = H.interpreter_of(bins / "inv")
    home = Path(tempfile.mkdtemp(prefix="fb", dir="/tmp"))
    project = home / "p"
    env = H.fresh_env(home)
    rows: list[Row] = []
    t0 = time.perf_counter()
    launched = False
    try:
        print("machine:")
        for fact in H.machine_facts(python):
            print(f"  {fact}")
        print(f"  HOME for this run: {home}   {args.members} members x {args.slots} slots, {args.items} items; "
              f"repeat {args.repeat} after {H.WARMUPS} warm-ups, medians"
              f"{' (--quick)' if args.quick else ''}\n", flush=True)
        make_project(project, env)
        (project / "items.txt").write_text("".join(f"{i}\n" for i in range(args.items)))
        launched = True
        ms, _ = timed([ferry, "launch", "--count", str(args.members), "--name", "m", "--autostop", "off"],
                      cwd=project, env=env, timeout=300)
        print(f"ferry launch --count {args.members}: {ms:.0f} ms\n", flush=True)

        import ferry as ferry_lib

        fleet = ferry_lib.fleet(ferry_lib.make_context({"project_dir": str(project)}), name="m")
        remotes = [box.remote for box in fleet.boxes]
        for command in ("true", "sleep 0.1"):
            def in_process(command=command) -> float:
                start = time.perf_counter()
                result = fleet.map(command, [str(i) for i in range(args.items)], slots=args.slots,
                                   sync=False, progress=False)
                if not result.ok:
                    raise BenchError(f"map failed: {result.failed or result.unrun}")
                return (time.perf_counter() - start) * 1000.0

            floor = lambda command=command: raw_floor(remotes, args.items, args.slots, command)  # noqa: E731
            fails: list[str] = []
            a, b = side_by_side(args.repeat, in_process, floor)
            size = f"x{args.items} on {args.members}x{args.slots} slots"
            rows.append(Row(f"fleet.map({command!r}) {size}, in-process", "raw ssh exec per item, same slots", a, b,
                            goal=GOALS[command]))
            a, b = side_by_side(args.repeat, lambda command=command: ferry_cmd(
                [ferry, "map", command, "--items", "items.txt", "--slots", str(args.slots), "--name", "m",
                 "--no-sync"], cwd=project, env=env, timeout=120), floor, fails)
            rows.append(Row(f"ferry map {command!r} {size}, whole command", "raw ssh exec per item, same slots", a, b,
                            goal=GOALS[command], failures=fails))
        H.print_table(rows)
        if args.samples:
            H.print_samples(rows)
        H.print_failures(rows)
        return 0
    finally:
        error = sys.exc_info()[1]
        H.write_json(args.json, "map", args, rows, t0, error=repr(error) if error else None)
        if launched:
            proc = subprocess.run([ferry, "fleet.terminate", "--name", "m", "--yes"], cwd=project, env=env,
                                  capture_output=True, timeout=120)
            if proc.returncode:
                print(f"cleanup: fleet.terminate exited {proc.returncode}: {proc.stderr.decode()[-300:]}", file=sys.stderr)
                from ferry.providers.local import LocalProvider

                provider = LocalProvider(home / ".ferry" / "local")
                for instance in provider.list():
                    provider.terminate(instance.id)
        notes = H.sweep(home)  # leftovers by pid, then the HOME
        for note in notes:
            print(f"cleanup: {note}", file=sys.stderr)
        print(f"\ntotal bench time {time.perf_counter() - t0:.1f} s; instances terminated, {home} removed"
              + ("" if not notes else " (see cleanup notes)"))


if __name__ == "__main__":
    H.run_main(main)
