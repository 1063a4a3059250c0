#!/usr/bin/env python3
"""Jupyter Lab on a rented GPU, in your browser: launch -> sync -> build -> start Lab -> token -> forward.

Copy this file into your project and change it. Run it from the project
(jupyterlab in its requirements, so `build` installs it):

    python local_scripts/jupyter.py --gpu A100 --provider runpod

It starts Jupyter Lab as a job, waits for the line with its token (no
sleeps), forwards the port to this machine and prints the local URL to
open. Ctrl-C ends the forward and Jupyter, and stops the instance
(--keep leaves both running; `ferry forward 8888` reconnects later).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import sys

import ferry

TOKEN_LINE = r"http://(?:127\.0\.0\.1|localhost):\d+/lab\?token=[0-9A-Za-z]+"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="instance name (default: the project's name)")
    parser.add_argument("--provider", help="local, runpod, vast, thunder, ec2, ... (default: ferry.provider)")
    parser.add_argument("--gpu", help="GPU alias, e.g. A100, RTX4090")
    parser.add_argument("--port", type=int, default=8888, help="Jupyter's port on the instance (default 8888)")
    parser.add_argument("--local-port", type=int, help="the port on this machine (default: the same)")
    parser.add_argument("--keep", action="store_true", help="leave Jupyter and the instance running afterwards")
    args = parser.parse_args(argv)
    local_port = args.local_port or args.port

    box = ferry.launch(name=args.name, provider=args.provider, gpu=args.gpu)
    box.sync()
    box.build()  # skipped in one line when the requirements did not change
    lab = box.run(f"jupyter lab --no-browser --ip 127.0.0.1 --port {args.port} --ServerApp.port_retries=0",
                  label="jupyter", wait_for=TOKEN_LINE, wait_timeout=300, out=io.BytesIO())
    log = io.BytesIO()
    lab.logs(out=log)
    found = re.search(TOKEN_LINE, log.getvalue().decode(errors="replace"))
    token = found.group(0).split("token=", 1)[1] if found else ""
    url = f"http://127.0.0.1:{local_port}/lab?token={token}"
    try:
        box.forward(args.port, local_port, on_ready=lambda _port: print(f"Jupyter Lab: {url}   (Ctrl-C ends it)",
                                                                       flush=True))
    finally:
        if not args.keep:
            with contextlib.suppress(ferry.FerryError):  # it may have ended by itself
                lab.kill()
            box.stop() if "stop" in box.cloud().capabilities else box.terminate()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ferry.FerryError as exc:  # one line and a hint, as the CLI prints them
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
