"""``Box``: one instance as code sees it, the way Fabric's ``Connection`` is one host.

A Box holds the resolved settings, the instance's record, its ``Remote``
(ssh) and its workdir; every method is one line that hands the Box to the
module that owns that concept (``sync``, ``jobs``, ``lifecycle``, ...). Get
one from :func:`ferry.launch` (make or reuse an instance) or
:func:`ferry.box` (one that exists)::

    box = ferry.launch(name="exp1", gpu="A100", provider="runpod")
    box.sync()
    box.run("python train.py", env={"WANDB_MODE": "offline"})   # raises ferry.JobFailed on failure
    box.download("outputs")
    box.stop()
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, Callable, Mapping, Sequence

from . import sshkey
from .config import Settings
from .errors import FerryError, NoInstanceError, cmd
from .records import Instance, check_name
from .store import ProjectState

if TYPE_CHECKING:
    import fabric
    from invoke import Context

    from .build import BuildResult
    from .jobs import Job, JobInfo, JobResult
    from .providers import Cloud
    from .remote import Remote
    from .report import SyncResult


def resolve(settings: Settings, name: str | None = None) -> Instance:
    """The instance named (or configured), else the project's current one, from the state file (no API call)."""
    state = ProjectState(settings.project_dir)
    name = name or settings.name
    if name:
        check_name(name)
        record = state.get(name)
        if record is None:
            raise NoInstanceError(
                f"this project has no instance named {name}",
                hint=f"launch it: {cmd(f'launch --name {name}')}   (or list known ones: {cmd('ls')})",
            )
        return record
    current = state.current_name()
    record = state.get(current) if current else None
    if record is None:
        raise NoInstanceError("this project has no instance yet", hint=f"launch one first: {cmd('launch')}")
    return record


def get(c: "Context | Settings | None" = None, name: str | None = None) -> "Box":
    """The handle of an existing instance: ``name``, else the project's current one (no API call)."""
    settings = Settings.of(c)
    return Box(settings, resolve(settings, name))


def find(c: "Context | Settings | None", provider: str, instance_id: str) -> "Box":
    """An instance by provider and id, whether or not this project launched it (one API call)."""
    from . import providers

    settings = Settings.of(c)
    found = providers.get(provider, settings).get(instance_id)
    if found is None:
        raise NoInstanceError(f"{provider} has no instance {instance_id}", hint=f"list them: {cmd('ls --all')}")
    return Box(settings, found)


class Box:
    """One instance: its settings, record, ssh and workdir, and the verbs that act on it."""

    def __init__(self, settings: Settings, instance: Instance):
        self.settings = settings
        self.instance = instance
        self.created = False  # True when the launch that returned this handle created the instance

    def __repr__(self) -> str:
        return f"<Box {self.name} ({self.instance.provider}, {self.instance.status.value})>"

    # -- what it is ----------------------------------------------------------------------------
    @property
    def name(self) -> str:
        return self.instance.name

    @property
    def provider(self) -> str:
        return self.instance.provider

    @property
    def project_dir(self) -> Path:
        return self.settings.project_dir

    @property
    def workdir(self) -> str:
        """Where the project lives on the instance: ``<workdir root>/<project name>``."""
        root = self.instance.workdir_root or self.instance.remote_home
        if not root:
            raise FerryError(f"instance {self.name} was never bootstrapped", hint=f"run: {cmd(f'launch --name {self.name}')}")
        return f"{root.rstrip('/')}/{self.settings.project}"

    @functools.cached_property
    def key_path(self) -> Path:
        return sshkey.private_key_path(self.settings.ssh_key, self.settings.home)

    @property
    def remote(self) -> "Remote":
        """ssh to the instance (OpenSSH argv sharing one ControlMaster); rebuilt when the endpoint moves."""
        from .remote import Remote

        cached = self.__dict__.get("_remote")
        if cached is None or cached.endpoint != self.instance.ssh:
            cached = Remote(self.instance, self.key_path, self.settings.home, self.settings.ssh_config)
            self.__dict__["_remote"] = cached
        return cached

    def cloud(self) -> "Cloud":
        """The instance's provider, behind the registry's retry policy."""
        from . import providers

        return providers.get(self.provider, self.settings)

    def connection(self) -> "fabric.Connection":
        """A Fabric Connection: same key, same pinned host keys, TCP_NODELAY (for anything the verbs don't cover)."""
        return self.remote.connection()

    def ssh_argv(self, tty: bool = False, command: str | None = None) -> list[str]:
        """The exact ``ssh`` argv ferry uses for this instance (append a shell-quoted command, or pass one)."""
        return self.remote.ssh_argv(tty=tty) + ([command] if command else [])

    # -- files ---------------------------------------------------------------------------------
    def sync(self, *, dry_run: bool = False, delete: str = "sent", full: bool = False,
             progress: bool | None = None, verbose: bool = False) -> "SyncResult":
        """Send the project's file set to the workdir (see ferry.sync); ``verbose`` names every file."""
        from . import sync

        return sync.upload(self, dry_run=dry_run, delete=delete, full=full, progress=progress, verbose=verbose)

    def download(self, *paths: str, dry_run: bool = False, force: bool = False, backup_dir: str | None = None,
                 everything: bool = False, include: Sequence[str] = (), exclude: Sequence[str] = (),
                 progress: bool | None = None) -> "SyncResult":
        """Bring results home; never deletes a local file, backs up what it replaces (see ferry.download)."""
        from . import download

        return download.download(self, paths, dry_run=dry_run, force=force, backup_dir=backup_dir,
                             everything=everything, include=include, exclude=exclude, progress=progress)

    def watch(self, *, delete: str = "sent", debounce: float = 0.2, stop: Any = None) -> int:
        """Sync now and after every burst of local changes until Ctrl-C (or ``stop`` is set); the sync count."""
        from . import watch

        return watch.watch(self, delete=delete, debounce=debounce, stop=stop)

    def upload_credentials(self, directory: str | Path):
        """Replace ``~/.ferry/credentials/`` on the instance with ``directory``'s files (700/600)."""
        from . import credentials

        return credentials.upload(self, directory)

    # -- jobs ----------------------------------------------------------------------------------
    def run(self, command: str, *, warn: bool = False, detach: bool = False, env: Mapping[str, str] | None = None,
            cwd: str | None = None, timeout: float | None = None, label: str | None = None,
            wait_for: str | None = None, wait_timeout: float | None = None,
            out: BinaryIO | None = None, then: str | None = None, then_always: bool = False) -> "JobResult | Job":
        """Run ``command`` as a job in tmux in the workdir, streaming its output to ``out`` (stdout).

        Returns a JobResult; raises ferry.JobFailed on a failed job unless
        ``warn``. ``detach=True`` returns the Job at once; ``wait_for`` returns
        the Job as soon as a log line matches (a server's readiness).
        ``then="stop"|"terminate"``: the instance does that to itself when the
        job succeeds (whatever the outcome with ``then_always``), with or
        without ferry watching; see :mod:`ferry.then` for what the caller does.
        """
        from . import jobs

        return jobs.run(self, command, warn=warn, detach=detach, env=env, cwd=cwd, timeout=timeout, label=label,
                        wait_for=wait_for, wait_timeout=wait_timeout, out=out, then=then, then_always=then_always)

    def job(self, job_id: str | None = None) -> "Job":
        """A handle on one job (default: the latest on the instance)."""
        from . import jobs

        return jobs.Job(self, job_id or jobs.LATEST)

    def jobs(self) -> "list[JobInfo]":
        """Every job on the instance, oldest first."""
        from . import jobs

        return jobs.list_jobs(self)

    def attach(self, job_id: str | None = None) -> int:
        """A real terminal on a job's tmux session; its exit status."""
        from . import jobs

        return jobs.attach(self, job_id)

    def forward(self, remote_port: int, local_port: int | None = None,
                on_ready: Callable[[int], None] | None = None) -> None:
        """Forward 127.0.0.1:``local_port`` to the instance's ``remote_port`` until Ctrl-C."""
        from . import forward

        return forward.forward(self, remote_port, local_port, on_ready=on_ready)

    # -- environment, scripts, tunnels ---------------------------------------------------------
    def build(self, *, force: bool = False, warn: bool = False, out: BinaryIO | None = None) -> "BuildResult":
        """Make the project's environment on the instance, skipped when its inputs are unchanged (see ferry.build)."""
        from . import build

        return build.build(self, force=force, warn=warn, out=out)

    def script(self, name: str, *args: str, detach: bool = False, warn: bool = False,
               env: Mapping[str, str] | None = None, out: BinaryIO | None = None) -> "JobResult | Job":
        """Send remote_scripts/ (ferry's and the project's) and run ``name`` as a job in the workdir (see ferry.scripts)."""
        from . import scripts

        return scripts.run(self, name, args, detach=detach, warn=warn, env=env, out=out)

    def tunnel(self, port: int, *, wait: float = 60.0, install: bool = False, stop: bool = False) -> str | None:
        """A cloudflared quick tunnel to the instance's ``port``: its https URL (``stop=True`` ends it; see ferry.tunnel)."""
        from . import tunnel

        return tunnel.stop(self, port) if stop else tunnel.start(self, port, wait=wait, install=install)

    def pin_host_key(self, confirm: Callable[[str, str | None, bool], bool]) -> bool:
        """See the key the instance presents and pin it for this instance; False if ``confirm`` said no.

        ``confirm(new fingerprint, old fingerprint or None, vouched)`` decides;
        ``vouched`` is True when the provider itself reports that same key.
        Nothing is created, started or changed on the instance.
        """
        from . import known_hosts
        from .sshkey import KeyLine

        self.remote.close()
        presented = KeyLine.parse(self.remote.presented_host_key())
        old = known_hosts.pinned(self.instance.ssh, self.settings.home)
        reported = (self.cloud().get(self.instance.id) or self.instance).raw.get("host_key")
        vouched = bool(reported) and presented.same_key(reported)
        if not confirm(presented.fingerprint(), KeyLine.parse(old).fingerprint() if old else None, vouched):
            return False
        known_hosts.pin(self.instance.ssh, presented.bare, self.settings.home)
        return True

    # -- power ---------------------------------------------------------------------------------
    def refresh(self) -> "Box":
        """Ask the provider for the instance's present state (TERMINATED when gone) and record it."""
        from . import lifecycle

        return lifecycle.refresh(self)

    def stop(self) -> "Box":
        """Stop the instance, keeping its disk (jobs on it end and read 'lost')."""
        from . import lifecycle

        return lifecycle.stop(self)

    def start(self, *, timeout: float | None = None) -> "Box":
        """Start a stopped instance and wait until it answers ssh."""
        from . import lifecycle

        return lifecycle.start(self, timeout=timeout)

    def terminate(self) -> None:
        """Delete the instance and its disk."""
        from . import lifecycle

        return lifecycle.terminate(self)

    def modify(self, *, cpu: int | None = None, gpu: str | None = None, gpu_count: int | None = None,
               disk: int | None = None, ports: Sequence[int] = (), timeout: float | None = None) -> "Box":
        """Resize in place where the cloud can (Thunder Compute): it restarts into the new shape."""
        from . import lifecycle

        return lifecycle.modify(self, cpu=cpu, gpu=gpu, gpu_count=gpu_count, disk=disk, ports=ports, timeout=timeout)

    def clone(self, name: str, *, cpu: int | None = None, gpu: str | None = None, gpu_count: int | None = None,
              disk: int | None = None, timeout: float | None = None) -> "Box":
        """A new instance configured like this one (files are not copied), with overrides."""
        from . import lifecycle

        return lifecycle.clone(self, name, cpu=cpu, gpu=gpu, gpu_count=gpu_count, disk=disk, timeout=timeout)
