#!/usr/bin/env python3
"""Fast scratch space: every spare NVMe disk into one RAID0 (raid0.sh), then a job whose data lives there.

Copy this file into your project and change it. Run it from the project:

    python local_scripts/nvme_scratch.py --provider ec2 --gpu H100 -- python prep.py --cache '$SCRATCH'

raid0.sh (shipped with ferry; needs root) picks the instance's NVMe disks
that hold nothing (never the one holding `/`), makes one array of them
and mounts it at --mount; with one disk it formats and mounts that one;
with none it says so and the job's scratch is a plain directory there.
The job sees the path as $SCRATCH. What it writes under the workdir's
results/ comes home; the scratch data stays (it is scratch).
"""

from __future__ import annotations

import argparse
import shlex
import sys

import ferry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="instance name (default: the project's name)")
    parser.add_argument("--provider", help="local, runpod, vast, thunder, ec2, ... (default: ferry.provider)")
    parser.add_argument("--gpu", help="GPU alias, e.g. H100, A100")
    parser.add_argument("--mount", default="/mnt/raid0", help="where the array goes (default /mnt/raid0)")
    parser.add_argument("--results", action="append", default=None, help="path to bring home (default results)")
    parser.add_argument("--keep", action="store_true", help="leave the instance running afterwards")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the job, after --; $SCRATCH is the array")
    args = parser.parse_args(argv)
    command = " ".join(args.command[1:] if args.command[:1] == ["--"] else args.command) or "python train.py"

    box = ferry.launch(name=args.name, provider=args.provider, gpu=args.gpu)
    try:
        box.sync()
        box.build()
        box.script("raid0.sh", "--mount", args.mount)  # idempotent: a second run finds it mounted
        result = box.run(f"mkdir -p {shlex.quote(args.mount)} && {command}", env={"SCRATCH": args.mount}, warn=True)
        box.download(*(args.results or ["results"]))
    finally:
        if not args.keep:
            box.stop() if "stop" in box.cloud().capabilities else box.terminate()
    print(f"job {result.job_id} {result.describe()}", file=sys.stderr)
    return result.exit_code if result.exit_code is not None else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ferry.FerryError as exc:  # one line and a hint, as the CLI prints them
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
