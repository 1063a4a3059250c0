"""Tasks for the environment and what runs around the job: build, script, tunnel.

Each is a job on the instance like ``run``'s (streamed, exit code, log
kept), so they chain: ``ferry launch sync build run "python train.py" download``.
``build`` and ``script`` first send what changed, as ``run`` does.
"""

from __future__ import annotations

from ._common import NAME_HELP, ferry_task

NO_SYNC_HELP = "do not first send what changed in the project (ferry.run.sync: false does it always)"


def _box_synced(c, name, no_sync: bool):
    """The instance, with the project's changes sent first unless told not to (no network when nothing changed)."""
    from .. import output
    from ..handle import get as get_box

    box = get_box(c, name)
    if not no_sync and (box.settings.data.get("run") or {}).get("sync", True):
        from ..sync import upload

        sent = upload(box, progress=False, announce=False)
        if sent.how != "unchanged":
            output.note(f"synced {sent.files} changed file{'s' if sent.files != 1 else ''} first "
                        "(--no-sync uses what the instance has)")
    return box


def _exit_with(end) -> None:
    from invoke.exceptions import Exit

    from ..jobs import exit_status

    code = exit_status(end)
    if code:
        raise Exit(code=code)


@ferry_task(help={
    "name": NAME_HELP,
    "force": "build even when nothing it depends on changed",
    "no-sync": NO_SYNC_HELP,
})
def build(c, name=None, force=False, no_sync=False):
    """Make the project's environment on the instance (uv sync, requirements, conda); skipped when unchanged."""
    box = _box_synced(c, name, no_sync)
    done = box.build(force=force, warn=True)
    if done.job is not None:
        _exit_with(done.job)


@ferry_task(iterable=["arg", "env"], help={
    "script": "the script's name in remote_scripts/ (ferry's or the project's; .sh may be left off)",
    "arg": "an argument for the script (repeatable, in order)",
    "name": NAME_HELP,
    "detach": "print the job's number and return at once",
    "env": "KEY=VALUE exported to the script (repeatable)",
    "no-sync": NO_SYNC_HELP,
})
def script(c, script, arg=None, name=None, detach=False, env=None, no_sync=False):
    """Run a remote script (miniforge.sh, cloudflared.sh, raid0.sh, comfyui.sh, or the project's own) as a job."""
    from .. import flags, scripts
    from ..jobs import Detached
    from .jobs import _detached

    scripts.resolve(script, list(scripts.available(_settings(c).project_dir)))  # a typo fails before any network
    box = _box_synced(c, name, no_sync)
    try:
        done = box.script(script, *(arg or []), detach=detach, warn=True, env=flags.env_pairs(env))
    except Detached as detached:
        raise _detached(detached.ref) from None
    if detach:
        print(done.ref)
        return
    _exit_with(done)


def _settings(c):
    from ..config import Settings

    return Settings.of(c)


@ferry_task(help={
    "port": "the port on the instance to make public (e.g. 8188 for ComfyUI)",
    "name": NAME_HELP,
    "stop": "end the tunnel to PORT instead",
    "wait": "give up (exit 1, with cloudflared's last lines) when no URL came within this long",
    "install": "run cloudflared.sh first (installs cloudflared into ~/.local/bin when missing)",
})
def tunnel(c, port, name=None, stop=False, wait="60s", install=False):
    """A public https URL (cloudflared quick tunnel) for a port on the instance; --stop ends it."""
    from .. import flags
    from ..handle import get as get_box

    seconds = flags.duration(wait, "--wait") or 60.0
    box = get_box(c, name)
    url = box.tunnel(port, stop=stop, wait=seconds, install=install)
    if url:
        print(url)
