#!/usr/bin/env python3
"""Every bench script in turn, then one table of every row with its goal.

    python bench/all.py [--quick] [--repeat N] [--only loop,jobs,sync,map] [--keep-json DIR]

Runs bench_loop.py, bench_jobs.py, bench_sync.py and bench_map.py one after
the other, each as its own subprocess (so one that crashes or hangs does not
stop the others), with the same interpreter as this one and ``--quick`` /
``--repeat`` passed through. Their own output goes by as they run; each
writes its rows with ``--json``, and at the end this prints them all in one
table (medians, ratio, goal, met), then how each script ended. Exit status 1
if any script failed. Nothing is measured here: every ratio in the table
comes from one script's run, ferry and its floor side by side.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import house as H  # noqa: E402

SCRIPTS = ("loop", "jobs", "sync", "map")
TIMEOUT = {True: 180, False: 3600}  # seconds per script, --quick or not: then SIGTERM (its cleanup runs), then KILL


def run_one(name: str, args, json_path: Path) -> tuple[int | None, float, str]:
    """Run bench_<name>.py; (exit status or None if it had to be stopped, seconds, a note)."""
    argv = [sys.executable, str(HERE / f"bench_{name}.py"), "--json", str(json_path)]
    if args.quick:
        argv.append("--quick")
    if args.repeat is not None:
        argv += ["--repeat", str(args.repeat)]
    print(f"\n=== {' '.join([f'bench_{name}.py', *argv[4:]])} ===", flush=True)
    start = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL)
    try:
        code = proc.wait(timeout=TIMEOUT[bool(args.quick)])
        return code, time.perf_counter() - start, ""
    except subprocess.TimeoutExpired:
        note = f"ran past {TIMEOUT[bool(args.quick)]} s: sent SIGTERM to pid {proc.pid}"
        proc.send_signal(signal.SIGTERM)  # its finally terminates the instance and removes its HOME
        try:
            proc.wait(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            note += ", then SIGKILL"
        return None, time.perf_counter() - start, note
    except BaseException:
        if proc.poll() is None:  # Ctrl-C reached it too (same process group); SIGTERM may not have
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        raise


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="each script's --quick: fewer runs, smaller sizes")
    parser.add_argument("--repeat", type=int, help="passed to every script (measured runs per row)")
    parser.add_argument("--only", help=f"a comma-separated subset of {','.join(SCRIPTS)}")
    parser.add_argument("--keep-json", metavar="DIR", help="leave each script's JSON in DIR (default: a temp dir, removed)")
    args = parser.parse_args()
    names = [n.strip() for n in args.only.split(",")] if args.only else list(SCRIPTS)
    unknown = [n for n in names if n not in SCRIPTS]
    if unknown:
        parser.error(f"unknown script(s) {', '.join(unknown)}; choose from {', '.join(SCRIPTS)}")
    if args.repeat is not None and args.repeat < 1:
        parser.error("--repeat must be at least 1")

    def on_term(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_term)
    t0 = time.perf_counter()
    rows: list[H.Row] = []
    bench: list[str] = []
    endings: list[str] = []
    failed = False
    with tempfile.TemporaryDirectory(prefix="bench-all-") as tmp:
        out_dir = Path(args.keep_json) if args.keep_json else Path(tmp)
        out_dir.mkdir(parents=True, exist_ok=True)
        for name in names:
            json_path = out_dir / f"{name}.json"
            json_path.unlink(missing_ok=True)
            code, seconds, note = run_one(name, args, json_path)
            data = None
            if json_path.exists():
                try:
                    data = json.loads(json_path.read_text())
                except ValueError as exc:
                    note = (note + "; " if note else "") + f"unreadable JSON: {exc}"
            got = [H.Row.from_dict(d) for d in (data or {}).get("rows", [])]
            rows += got
            bench += [name] * len(got)
            status = "stopped" if code is None else f"exit {code}"
            error = (data or {}).get("error")
            endings.append(f"bench_{name}.py: {status} in {seconds:.1f} s, {len(got)} rows"
                           + (f"; {note}" if note else "") + (f"; stopped early: {error}" if error else ""))
            failed |= code != 0 or data is None

    mode = "--quick" if args.quick else "full"
    print(f"\n=== all rows ({mode}{'' if args.repeat is None else f', --repeat {args.repeat}'}): "
          "medians; ratio = ferry / floor, both measured in the same script run ===")
    H.print_table(rows, bench=bench)
    print()
    for line in endings:
        print(f"  {line}")
    print(f"\nall.py took {time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(130)
