#!/usr/bin/env python3
"""ComfyUI on a rented GPU at a public URL: launch -> comfyui.sh -> start -> ready -> tunnel; output/ home on exit.

Copy this file into your project and change it. Run it from the project:

    python local_scripts/comfyui.py --gpu RTX4090 --provider runpod --models models.txt

models.txt (in the project, synced) lists one model a line: SUBDIR URL [FILENAME].
It prints the https://....trycloudflare.com URL once ComfyUI really answers;
Ctrl-C stops ComfyUI and the tunnel, brings ComfyUI/output/ home and stops
the instance (--keep leaves it running).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import shlex
import sys

import ferry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--name", help="instance name (default: the project's name)")
    parser.add_argument("--provider", help="local, runpod, vast, thunder, ec2, ... (default: ferry.provider)")
    parser.add_argument("--gpu", help="GPU alias, e.g. RTX4090, A100")
    parser.add_argument("--port", type=int, default=8188, help="ComfyUI's port on the instance (default 8188)")
    parser.add_argument("--models", help="a file in the project listing models to download (SUBDIR URL [FILENAME])")
    parser.add_argument("--dir", default="ComfyUI", help="where ComfyUI goes, relative to the workdir")
    parser.add_argument("--ready-timeout", default="10m", help="how long ComfyUI may take to come up")
    parser.add_argument("--keep", action="store_true", help="leave the instance running afterwards")
    args = parser.parse_args(argv)

    from ferry.flags import duration

    box = ferry.launch(name=args.name, provider=args.provider, gpu=args.gpu)
    box.sync()  # the models list and the project's own remote_scripts/ go up with the project
    box.script("comfyui.sh", "--dir", args.dir, *(["--models", args.models] if args.models else []))

    # ComfyUI prints its readiness line on stderr, which the job's log holds with stdout: wait for it, no sleeps.
    # Its start-up chatter stays in the job's log (`ferry logs -j comfyui`), out of this terminal.
    where = shlex.quote(args.dir)
    print("starting ComfyUI; waiting until it is ready", file=sys.stderr)
    server = box.run(f"cd {where} && exec .venv/bin/python main.py --listen 127.0.0.1 --port {args.port}",
                     label="comfyui", wait_for=r"To see the GUI go to: http", wait_timeout=duration(args.ready_timeout),
                     out=io.BytesIO())
    tunnel = False
    try:
        # The line can come before the HTTP API answers everything: ask it once, as a browser would.
        box.run(f"{where}/.venv/bin/python -c \"import urllib.request; "
                f"urllib.request.urlopen('http://127.0.0.1:{args.port}/system_stats', timeout=30).read()\"",
                out=io.BytesIO())
        url = box.tunnel(args.port)
        tunnel = True
        print(f"ComfyUI: {url}   (Ctrl-C stops it and brings {args.dir}/output/ home)", flush=True)
        server.wait()  # until ComfyUI ends, or Ctrl-C
    except KeyboardInterrupt:
        print("\nstopping ComfyUI", file=sys.stderr)
    finally:
        if tunnel:
            box.tunnel(args.port, stop=True)
        with contextlib.suppress(ferry.FerryError):  # it may have ended by itself
            server.kill()
        box.download(f"{args.dir}/output")
        if not args.keep:
            box.stop() if "stop" in box.cloud().capabilities else box.terminate()
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ferry.FerryError as exc:  # one line and a hint, as the CLI prints them
        print(f"error: {exc.message}" + (f"\nhint: {exc.hint}" if exc.hint else ""), file=sys.stderr)
        sys.exit(exc.exit_code)
