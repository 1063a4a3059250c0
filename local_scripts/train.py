#!/usr/bin/env python3
"""Train on a GPU, results home: launch -> sync -> build -> run -> download -> stop.

Copy this file into your project and change it. Run it from the project:

    python local_scripts/train.py --gpu A100 --provider runpod -- python train.py --lr 3e-4
    python local_scripts/train.py --provider local -- python3 train.py        # free, on this machine

Everything it does is ferry's Python API; the same steps as
`ferry launch sync build run "python train.py" download stop`, but yours to extend
(a sweep, a notification, an upload to a model hub ...).
"""

from __future__ import annotations

import argparse
import sys

import ferry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="instance name (default: the project's name)")
    parser.add_argument("--provider", help="local, runpod, vast, thunder, ec2, ... (default: ferry.provider)")
    parser.add_argument("--gpu", help="GPU alias, e.g. A100, H100, RTX4090")
    parser.add_argument("--timeout", default=None, help="kill the training after this long, e.g. 6h")
    parser.add_argument("--results", action="append", default=None, help="path to bring home (repeatable; default results)")
    parser.add_argument("--keep", action="store_true", help="leave the instance running afterwards")
    parser.add_argument("--env", action="append", default=[], help="KEY=VALUE for the job (repeatable)")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="the training command, after --")
    args = parser.parse_args(argv)
    command = " ".join(args.command[1:] if args.command[:1] == ["--"] else args.command) or "python train.py"

    from ferry.flags import duration, env_pairs

    box = ferry.launch(name=args.name, provider=args.provider, gpu=args.gpu)  # reuses it if it exists
    try:
        box.sync()
        box.build()   # uv sync / requirements / environment.yml; skipped in one line when nothing changed
        result = box.run(command, env={"WANDB_MODE": "offline", **env_pairs(args.env)},
                         timeout=duration(args.timeout), warn=True)
        box.download(*(args.results or ["results"]))   # also when training failed: logs and partial results
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
