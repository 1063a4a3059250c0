"""The embedded default provider: each instance is a real sshd on 127.0.0.1 with its own HOME.

``~/.ferry/local/<name>/`` holds the instance: its sshd (config, host key,
authorized_keys, pid file, log), ``meta.json``, and ``home/``, which sshd
hands to every session as ``$HOME``. So jobs, tmux and the synced workdir
live inside the instance directory exactly as they would on a cloud box, and
``terminate`` removes all of it. It costs nothing and needs no account,
which makes it the provider the README and the tests run on.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import signal
import time
from pathlib import Path
from typing import Mapping

from ..errors import FerryError, cmd
from ..records import Instance, InstanceSpec, Offer, SSHEndpoint, Status
from ..sshd import LoopbackSshd, pid_alive, wait_gone
from ..store import JsonStore
from ..tools import require
from .base import OWNED, SSH, STOP, SelfStop

MARKER = "FERRY_LOCAL_INSTANCE"

DEFAULTS = {"root": None, "price": 0.0}  # where instances live (default ~/.ferry/local); $/h to count (demos, tests)
API_KEY = None
SELF_STOP = SelfStop("local", "its agent powers it off as `ferry stop` would",
                     "the instance's agent ends its sshd and every process it started, as `ferry stop` does")
SDK = None
EXTRA = None
GPUS: dict[str, str] = {}
STATUS = {"sshd running": Status.RUNNING, "sshd stopped": Status.STOPPED}


def make(cfg) -> "LocalProvider":
    return LocalProvider(root=cfg.settings.get("root") or cfg.home / "local", price=float(cfg.settings.get("price") or 0.0))


class LocalProvider:
    name = "local"
    capabilities = frozenset({STOP, OWNED, SSH})

    def __init__(self, root: str | os.PathLike | None = None, price: float = 0.0):
        self.root = Path(root).expanduser() if root else Path.home() / ".ferry" / "local"
        self.price = price  # nothing is billed; a price lets cost, budget and --max-cost be tried for free

    # -- helpers ---------------------------------------------------------------
    def _dir(self, instance_id: str) -> Path:
        return self.root / instance_id

    def _sshd(self, instance_id: str) -> LoopbackSshd:
        return LoopbackSshd(self._dir(instance_id) / "sshd")

    def _meta_store(self, instance_id: str) -> JsonStore:
        return JsonStore(self._dir(instance_id) / "meta.json", default=lambda: None, cache=True)

    def _meta(self, instance_id: str) -> dict | None:
        meta = self._meta_store(instance_id).read()
        return meta if isinstance(meta, dict) and isinstance(meta.get("name"), str) else None

    def _instance(self, instance_id: str) -> Instance | None:
        meta = self._meta(instance_id)
        if meta is None:
            return None
        sshd = self._sshd(instance_id)
        running = sshd.running()
        home = str(self._dir(instance_id) / "home")
        return Instance(
            id=instance_id,
            name=meta["name"],
            provider=self.name,
            status=STATUS["sshd running" if running else "sshd stopped"],
            gpu=None,
            gpu_count=0,
            cost_per_hour=self.price,
            ssh=SSHEndpoint("127.0.0.1", sshd.port(), getpass.getuser()) if running else None,
            remote_home=home,
            workdir_root=home,
            labels=meta.get("labels", {}),
            created_at=meta.get("created_at", 0.0),
            raw={"host_key": sshd.host_public_key(), "dir": str(self._dir(instance_id))},
        )

    def _env(self, instance_id: str) -> dict[str, str]:
        home = self._dir(instance_id) / "home"
        # The marker lets stop() find every process the instance started, as a power-off would.
        return {"HOME": str(home), MARKER: str(self._dir(instance_id))}

    # -- the contract ------------------------------------------------------------
    def create(self, spec: InstanceSpec) -> Instance:
        directory = self._dir(spec.name)
        if self._meta(spec.name) is not None:
            raise FerryError(f"local instance {spec.name} already exists", hint=cmd(f"terminate --name {spec.name} --yes"))
        require("sshd", "the local provider runs one sshd per instance")
        (directory / "home").mkdir(parents=True, exist_ok=True)
        os.chmod(directory, 0o700)
        sshd = self._sshd(spec.name)
        try:
            sshd.prepare([spec.public_key])
            self._meta_store(spec.name).write({"name": spec.name, "labels": spec.labels, "created_at": time.time()})
            sshd.start(env=self._env(spec.name))
        except BaseException:
            self._kill_instance_processes(spec.name)
            _remove(directory)
            raise
        return self._instance(spec.name)  # type: ignore[return-value]

    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        if not self.root.is_dir():
            return []
        found = []
        for entry in sorted(self.root.iterdir()):
            instance = self._instance(entry.name)
            if instance and all(instance.labels.get(k) == v for k, v in (labels or {}).items()):
                found.append(instance)
        return found

    def get(self, instance_id: str) -> Instance | None:
        return self._instance(instance_id)

    def start(self, instance_id: str) -> Instance:
        if self._meta(instance_id) is None:
            raise FerryError(f"local instance {instance_id} does not exist")
        sshd = self._sshd(instance_id)
        previous = sshd.port()
        try:
            sshd.start(port=previous, env=self._env(instance_id))
        except FerryError:
            sshd.start(env=self._env(instance_id))  # the old port was taken meanwhile
        return self._instance(instance_id)  # type: ignore[return-value]

    def stop(self, instance_id: str) -> Instance:
        if self._meta(instance_id) is None:
            raise FerryError(f"local instance {instance_id} does not exist")
        self._sshd(instance_id).stop()
        self._kill_instance_processes(instance_id)
        return self._instance(instance_id)  # type: ignore[return-value]

    def terminate(self, instance_id: str) -> None:
        directory = self._dir(instance_id)
        if not directory.exists():
            return
        self._sshd(instance_id).stop()
        self._kill_instance_processes(instance_id)
        _remove(directory)

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        return [Offer(provider=self.name, gpu="none", gpu_count=0, cost_per_hour=self.price, region="localhost")]

    # -- power off -----------------------------------------------------------------
    def _kill_instance_processes(self, instance_id: str) -> None:
        end_marked_processes(self._dir(instance_id))


def _remove(directory: Path) -> None:
    import shutil  # (1.7 ms to import: not on the start-up path)

    shutil.rmtree(directory, ignore_errors=True)


def end_marked_processes(directory: Path) -> None:
    """Every process started through an instance's sshd carries its marker; end them all, by pid.

    This is what makes a local stop look like a power-off (tmux and jobs die
    too); the test suite's fake clouds use it for their instances as well.
    """
    marker = f"{MARKER}={directory}".encode()
    me = os.getpid()
    victims = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        with contextlib.suppress(OSError):
            if marker in (entry / "environ").read_bytes().split(b"\0"):
                victims.append(int(entry.name))
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        wait_gone(victims, 3)
        victims = [p for p in victims if pid_alive(p)]
        if not victims:
            break
