"""The recipes in local_scripts/ (comfyui, jupyter, nvme_scratch, sweep), end to end on the local provider.

Fakes stand in for what a GPU box would download: a project-level
``remote_scripts/comfyui.sh`` (the project's script wins over ferry's) that
installs a fake ComfyUI ``main.py`` (its readiness line on stderr after 2 s,
``/system_stats`` served), a fake ``cloudflared`` and a fake ``jupyter`` in
the instance's ``~/.local/bin``, and a fake ``lsblk`` showing only the root
disk. A recipe that runs until Ctrl-C gets a SIGINT, as from a user.
"""

from __future__ import annotations

import json
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from .conftest import REPO
from .test_recipes import local_status
from .test_scripts_tunnel import BANNER, URL, instance_home, put_cloudflared

RECIPES = REPO / "local_scripts"

FAKE_COMFYUI = """import argparse, http.server, json, os, sys, time
parser = argparse.ArgumentParser()
parser.add_argument("--listen")
parser.add_argument("--port", type=int)
args = parser.parse_args()
os.makedirs("output", exist_ok=True)
with open("output/ComfyUI_00001_.png", "wb") as fh:
    fh.write(b"not really a png")

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path != "/system_stats":
            self.send_error(404)
            return
        body = json.dumps({"system": {"comfyui_version": "fake"}, "devices": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer((args.listen, args.port), Handler)
print("Starting server", flush=True)
time.sleep(2)
print(f"To see the GUI go to: http://{args.listen}:{args.port}", file=sys.stderr, flush=True)
server.serve_forever()
"""
FAKE_COMFYUI_SH = """#!/usr/bin/env bash
# The project's comfyui.sh: installs the fake ComfyUI (offline) where the real one would go.
set -euo pipefail
dir=ComfyUI
while [ $# -gt 0 ]; do case "$1" in --dir) dir=$2; shift 2 ;; *) shift ;; esac; done
mkdir -p "$dir/.venv/bin"
cp "$(dirname "$0")/fake_comfyui.py" "$dir/main.py"
ln -sf "$(command -v python3)" "$dir/.venv/bin/python"
echo "fake comfyui.sh: installed into $dir"
"""
TOKEN = "0123abcd"
FAKE_JUPYTER = f"""#!/usr/bin/env python3
import http.server, sys, time
args = sys.argv[1:]
assert args[0] == "lab", args
port, ip = int(args[args.index("--port") + 1]), args[args.index("--ip") + 1]

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        ok = "token={TOKEN}" in self.path
        body = b"fake jupyter lab" if ok else b"forbidden"
        self.send_response(200 if ok else 403)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

server = http.server.HTTPServer((ip, port), Handler)
time.sleep(1)
log = sys.stderr
print("[I 2024-05-01 10:00:00.000 ServerApp] Jupyter Server 2.14.0 is running at:", file=log)
print(f"[I 2024-05-01 10:00:00.000 ServerApp] http://127.0.0.1:{{port}}/lab?token={TOKEN}", file=log)
print("    To access the server, open this file in a browser:", file=log)
print(f"    Or copy and paste one of these URLs:\\n        http://127.0.0.1:{{port}}/lab?token={TOKEN}", file=log, flush=True)
server.serve_forever()
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def put_tool(home: Path, name: str, text: str) -> None:
    target = instance_home(home) / ".local" / "bin" / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o755)


class Recipe:
    """A recipe running in the background; its stdout read line by line, so a test can wait for one."""

    def __init__(self, project: Path, name: str, *args: str):
        self.proc = subprocess.Popen([sys.executable, str(RECIPES / name), *args], cwd=project, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.lines: queue.Queue = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 60) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                break
            if line is None:
                break
            self.seen.append(line)
            if text in line:
                return line
        self.stop()
        raise AssertionError(f"no {text!r} in the recipe's output:\n{''.join(self.seen)}\n{self.proc.stderr.read()}")

    def interrupt(self, timeout: float = 60) -> tuple[int, str]:
        self.proc.send_signal(signal.SIGINT)  # Ctrl-C, to the recipe alone
        try:
            code = self.proc.wait(timeout=timeout)
        finally:
            self.stop()
        return code, self.proc.stderr.read()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.mark.parametrize("name", ["comfyui.py", "jupyter.py", "nvme_scratch.py", "sweep.py"])
def test_each_recipe_has_help(name):
    proc = subprocess.run([sys.executable, str(RECIPES / name), "--help"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "--provider" in proc.stdout, proc.stderr


def test_comfyui_recipe_waits_for_readiness_tunnels_and_brings_output_home(project, launched, home):
    scripts = project / "remote_scripts"
    scripts.mkdir()
    (scripts / "comfyui.sh").write_text(FAKE_COMFYUI_SH)
    (scripts / "fake_comfyui.py").write_text(FAKE_COMFYUI)
    put_cloudflared(home, BANNER)
    port = free_port()
    started = time.monotonic()
    recipe = Recipe(project, "comfyui.py", "--provider", "local", "--port", str(port))
    line = recipe.wait_for("trycloudflare.com", timeout=90)
    assert line.startswith(f"ComfyUI: {URL} ")
    assert time.monotonic() - started >= 2, "it waited for ComfyUI's readiness line, which comes after 2 s"
    assert "fake comfyui.sh: installed" in "".join(recipe.seen), "the project's comfyui.sh won over ferry's"
    assert (instance_home(home) / "tunnel-target").read_text().strip() == f"http://localhost:{port}"
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/system_stats", timeout=5) as answer:
        assert json.load(answer)["system"]["comfyui_version"] == "fake"  # (the "instance" is this machine)

    code, stderr = recipe.interrupt()
    assert code == 0, stderr
    assert (project / "ComfyUI" / "output" / "ComfyUI_00001_.png").read_bytes() == b"not really a png"
    assert local_status(project, "proj") == "STOPPED"
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()  # ComfyUI is gone with the instance


def test_jupyter_recipe_prints_a_local_url_that_works_through_the_forward(project, launched, home):
    put_tool(home, "jupyter", FAKE_JUPYTER)
    port, local = free_port(), free_port()
    recipe = Recipe(project, "jupyter.py", "--provider", "local", "--port", str(port), "--local-port", str(local))
    line = recipe.wait_for("Jupyter Lab: ", timeout=90)
    url = line.split("Jupyter Lab: ", 1)[1].split()[0]
    assert url == f"http://127.0.0.1:{local}/lab?token={TOKEN}"
    with urllib.request.urlopen(url, timeout=10) as answer:  # through the ssh forward, to the fake on the instance
        assert answer.read() == b"fake jupyter lab"
    code, stderr = recipe.interrupt()
    assert code == 0, stderr
    assert local_status(project, "proj") == "STOPPED"
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as ssh binds: TIME_WAIT is no obstacle
        sock.bind(("127.0.0.1", local))  # the forward let go of the local port (nobody listens there)


def test_nvme_scratch_recipe_runs_raid0_then_the_job_on_the_scratch(project, launched, home):
    lsblk = 'NAME="/dev/nvme0n1" TYPE="disk" MOUNTPOINT="" PKNAME=""\n' \
            'NAME="/dev/nvme0n1p1" TYPE="part" MOUNTPOINT="/" PKNAME="/dev/nvme0n1"\n'
    put_tool(home, "lsblk", f"#!/bin/sh\nprintf '%s' '{lsblk}'\n")
    (project / "prep.py").write_text(
        "import os\nscratch = os.environ['SCRATCH']\nopen(os.path.join(scratch, 'cache.bin'), 'wb').write(b'x' * 1000)\n"
        "os.makedirs('results', exist_ok=True)\nopen('results/where.txt', 'w').write(scratch)\n")
    scratch = home / "scratch"
    proc = subprocess.run([sys.executable, str(RECIPES / "nvme_scratch.py"), "--provider", "local", "--mount",
                           str(scratch), "--", "python3 prep.py"], cwd=project, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "raid0.sh: no spare NVMe disk (root disk: /dev/nvme0n1); nothing to do" in proc.stdout
    assert (scratch / "cache.bin").stat().st_size == 1000, "the job's data went to the scratch path"
    assert (project / "results" / "where.txt").read_text() == str(scratch)
    assert local_status(project, "proj") == "STOPPED"


def test_sweep_recipe_runs_every_point_and_brings_each_runs_results_home(project, home):
    (project / "train.py").write_text(
        "import argparse, json, os\np = argparse.ArgumentParser()\n"
        "p.add_argument('--lr'); p.add_argument('--batch-size'); p.add_argument('--out')\na = p.parse_args()\n"
        "os.makedirs(a.out, exist_ok=True)\njson.dump({'lr': a.lr, 'bs': a.batch_size}, open(a.out + '/metrics.json', 'w'))\n")
    proc = subprocess.run([sys.executable, str(RECIPES / "sweep.py"), "--provider", "local", "--count", "2",
                           "--lr", "0.1", "0.01", "--batch-size", "8", "--command", "python3 train.py $FERRY_ITEM"], cwd=project, capture_output=True, text=True,
                          timeout=180)
    assert proc.returncode == 0, proc.stderr
    for lr in ("0.1", "0.01"):
        assert json.loads((project / "results" / f"lr{lr}-bs8" / "metrics.json").read_text()) == {"lr": lr, "bs": "8"}
    assert "2 of 2 runs succeeded" in proc.stderr
    members = {r.split("\t")[2] for r in (project / ".ferry" / "maps").glob("*/joblog.tsv").__next__().read_text()
               .splitlines()[1:]}
    assert members <= {"sweep-0", "sweep-1"} and members
