#!/usr/bin/env python3
"""A hyper-parameter sweep on a fleet: launch N instances, map the grid over them, each run's results home.

Copy this file into your project and change it (the grid, the command).
Run it from the project:

    python local_scripts/sweep.py --count 4 --gpu A10G --provider ec2 --lr 1e-3 3e-4 --batch-size 32 64

Every point of the grid is one item; the fleet's `map` hands items to free
slots from one queue, retries a failed one (on another member), and each
run writes under results/<run>/, which comes home from whichever member ran it.
"""

from __future__ import annotations

import argparse
import itertools
import sys

import ferry

COMMAND = "python train.py $FERRY_ITEM"  # the item: one run's arguments, split by the shell


def grid(lrs: list[str], batch_sizes: list[str]) -> list[str]:
    """One item per point: the arguments of one run, its results in results/<run>/."""
    return [f"--lr {lr} --batch-size {bs} --out results/lr{lr}-bs{bs}" for lr, bs in itertools.product(lrs, batch_sizes)]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", default="sweep", help="the fleet's name; members are NAME-0 .. NAME-N-1")
    parser.add_argument("--provider", help="local, runpod, vast, thunder, ec2, ... (default: ferry.provider)")
    parser.add_argument("--gpu", help="GPU alias, e.g. A10G, A100")
    parser.add_argument("--count", type=int, default=2, help="instances in the fleet (default 2)")
    parser.add_argument("--slots", type=int, default=1, help="runs at once per instance (default 1)")
    parser.add_argument("--retries", type=int, default=1, help="tries again for a failed run (default 1)")
    parser.add_argument("--lr", nargs="+", default=["1e-3", "3e-4"], help="learning rates")
    parser.add_argument("--batch-size", nargs="+", default=["32"], help="batch sizes")
    parser.add_argument("--command", default=COMMAND, help=f"each run; $FERRY_ITEM holds its arguments (default {COMMAND!r})")
    parser.add_argument("--keep", action="store_true", help="leave the instances running afterwards")
    args = parser.parse_args(argv)
    items = grid(args.lr, args.batch_size)

    spec = ferry.InstanceSpec(name=args.name, provider=args.provider or "", gpu=args.gpu,
                              gpu_count=1 if args.gpu else 0)
    ferry.launch_many(None, args.count, name=args.name, provider=args.provider, spec=spec)  # reuses them if up
    fleet = ferry.fleet(name=args.name)
    try:
        fleet.sync()
        fleet.build()  # each member's environment, skipped where nothing it depends on changed
        result = fleet.map(args.command, items, slots=args.slots, retries=args.retries)
        for box in fleet:  # every run wrote its own results/<run>/: they all fit in one results/ here
            box.download("results")
    finally:
        if not args.keep:
            fleet.stop(warn=True)
    print(f"{len(result.succeeded)} of {len(items)} runs succeeded (joblog: {result.joblog})", file=sys.stderr)
    return 0 if result.ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ferry.FerryError as exc:  # one line and a hint, as the CLI prints them
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
