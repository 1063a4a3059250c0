"""From "the cloud says it exists" to "ferry can use it": wait until reachable, pin, install.

``wait_until_reachable`` polls the provider (with backoff) until the
instance is RUNNING with an ssh endpoint, then waits for the sshd banner
(the cheapest sign sshd is really up), pins the host key when the provider
told us it (no trust-on-first-use at all), and ends with one authenticated
``true``, which proves key, host key and shell. ``install`` then sends
ferry's remote scripts in one exec (a tar on stdin) and learns ``$HOME``.

Providers without the SSH capability (ferry.testing's in-memory fake) stop
at RUNNING: there is nothing to reach.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING

from . import backoff, known_hosts
from .errors import FerryError, SSHError, cmd
from .flags import human
from .providers.base import SSH
from .records import Instance, Status
from .remote import socket_target
from .sshd import wait_for_banner

if TYPE_CHECKING:
    from .handle import Box
    from .providers import Cloud

log = logging.getLogger(__name__)

REMOTE_SCRIPTS = ("ferry-job", "bootstrap.sh", "ferry-agent", "ferry-selfstop.py")

# Set when Ctrl-C interrupts a --count launch: worker threads see it and clean up.
CANCEL = threading.Event()


def _check_cancel(name: str) -> None:
    if CANCEL.is_set():
        raise FerryError(f"launch of {name} cancelled", hint=f"see what is left: {cmd('ls --all')}")


def wait_until_reachable(box: "Box", cloud: "Cloud", timeout: float, fresh: bool = False) -> Instance:
    """Poll until RUNNING with an endpoint, then the sshd banner, then an authenticated ``true``."""
    deadline = time.monotonic() + timeout
    instance = box.instance
    name = instance.name
    waiting = backoff.Backoff(first=0.2, cap=5.0, factor=1.6)
    started = time.monotonic()

    def status(what: str) -> None:  # a live line on a terminal; a line every 10 s elsewhere (output.py)
        log.info("%s: %s (%s so far, %s left)", name, what, human(time.monotonic() - started),
                 human(max(0.0, deadline - time.monotonic())), extra={"status": True})

    while instance.status != Status.RUNNING or (SSH in cloud.capabilities and instance.ssh is None):
        _check_cancel(name)
        if instance.status in (Status.ERROR, Status.TERMINATED):
            raise FerryError(
                f"instance {name} entered state {instance.status.value} while starting",
                hint=f"remove it and try again: {cmd(f'terminate --provider {cloud.name} --id {instance.id} --yes')}",
            )
        left = deadline - time.monotonic()
        if left < 0:
            raise FerryError(
                f"instance {name} did not become reachable within {timeout:.0f}s (last state: {instance.status.value})",
                hint="raise --launch-timeout (ferry.launch_timeout), or try another region or GPU",
            )
        status(f"{cloud.name} says {instance.status.value.lower()}")
        time.sleep(min(waiting.failed(), max(left, 0.01)))
        got = cloud.get(instance.id)
        if got is None:
            raise FerryError(f"instance {name} ({instance.id}) disappeared while starting",
                             hint=f"launch it again: {cmd(f'launch --name {name}')}")
        got.remote_home, got.workdir_root = got.remote_home or instance.remote_home, got.workdir_root or instance.workdir_root
        instance = got
    box.instance = instance
    if SSH not in cloud.capabilities:
        return instance
    assert instance.ssh is not None
    probe = socket_target(instance.ssh, box.settings.ssh_config)  # honours ssh_config HostName/Port; None via proxies
    if probe is not None:
        where = f"{probe[0]}:{probe[1]}"

        def waiting_for_ssh(_elapsed: float) -> None:
            _check_cancel(name)
            status(f"waiting for ssh on {where}")

        wait_for_banner(probe[0], probe[1], max(1.0, deadline - time.monotonic()), on_wait=waiting_for_ssh)
    host_key = instance.raw.get("host_key")
    if host_key:
        known_hosts.pin(instance.ssh, host_key, box.settings.home)  # the provider told us the key
    elif fresh:
        known_hosts.forget(instance.ssh, box.settings.home)  # a new machine on a reused address must not trip an old pin
    remote = box.remote
    remote.first_contact = not host_key
    remote.close()  # an old master socket may point at a previous incarnation of this endpoint
    retry = backoff.Backoff(first=0.25, cap=2.0)  # sshd answers before the cloud has installed the key
    try:
        while True:
            try:
                remote.check(timeout=30)
                return instance
            except SSHError as exc:
                if "host key" in exc.message or time.monotonic() > deadline or CANCEL.is_set():
                    raise
                status(f"ssh answers; waiting for it to accept ferry's key ({exc.message})")
                time.sleep(retry.failed())
    finally:
        remote.first_contact = False


def install(box: "Box", cloud: "Cloud") -> Instance:
    """Install ferry's remote scripts and make sure rsync/tmux are there; learn $HOME. One ssh exec."""
    import io
    import tarfile
    from importlib import resources

    instance = box.instance
    if SSH not in cloud.capabilities:
        return instance
    bundle = io.BytesIO()
    with tarfile.open(fileobj=bundle, mode="w") as tar:
        for script in REMOTE_SCRIPTS:
            data = resources.files("ferry").joinpath("remote_scripts", script).read_bytes()
            info = tarfile.TarInfo(script)
            info.size, info.mode, info.mtime = len(data), 0o755, int(time.time())
            tar.addfile(info, io.BytesIO(data))
    check_only = "1" if instance.provider == "local" else "0"
    command = (
        'mkdir -p "$HOME/.ferry/bin" && tar -xf - -C "$HOME/.ferry/bin" && '
        f'FERRY_CHECK_ONLY={check_only} sh "$HOME/.ferry/bin/bootstrap.sh"'
    )
    proc = box.remote.run(command, input=bundle.getvalue(), timeout=900)
    facts = dict(line.split("=", 1) for line in proc.stdout.decode().splitlines() if "=" in line)
    missing = facts.get("missing", "").split()
    if missing:
        packages = " ".join("util-linux" if m == "setsid" else m for m in missing)
        raise FerryError(
            f"{instance.name} lacks {', '.join(missing)}",
            hint=f"install on the instance: apt-get install -y {packages}",
        )
    instance.remote_home = facts.get("home") or instance.remote_home
    instance.workdir_root = instance.workdir_root or instance.remote_home
    return instance
