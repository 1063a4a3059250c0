"""``run --then stop|terminate``: the instance does it to itself when the job ends, laptop or not.

The job's wrapper on the instance (``ferry-job``) reads the action from the
job's spec and, when the job ends (after success, or whatever the outcome
with ``--then-always``), hands it to the instance's agent, which acts through
the cloud's self-stop path (``autostop.py``). So a Ctrl-C, a closed lid or a
dropped network no longer leaves a finished GPU billing, and a detached job
may take ``--then``.

The caller, when still there, only confirms: it waits for the cloud to show
the instance stopped or gone, records that, and does the action itself if the
instance has not within a minute (an instance bootstrapped by an older ferry,
or one whose self-stop path failed). Where an instance cannot act on itself
(Thunder without ``--autostop-key``), ferry acts as before, and a detached
``--then`` is refused up front.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from . import autostop, backoff
from .errors import FerryError, UsageError, cmd
from .providers.base import OWNED, STOP
from .records import Status

if TYPE_CHECKING:
    from .follow import JobResult
    from .handle import Box

log = logging.getLogger(__name__)

ACTIONS = ("stop", "terminate")
CONFIRM_WITHIN = 60.0  # seconds the caller waits to see the instance's own action before doing it


def acts_itself(box: "Box") -> bool:
    """Can the instance carry out a --then on its own (an agent and a self-stop path it may use)?"""
    from .registry import Registry

    path = autostop.self_stop_of(box.cloud())
    if path is None:
        return False
    if path.needs_key:
        entry = Registry(box.settings.home).get(box.provider, box.instance.id) or {}
        return bool((entry.get("autostop") or {}).get("key"))
    return True


def check(box: "Box", action: str | None, *, unattended: bool = False) -> None:
    """Refuse a --then the instance cannot honour before the job starts, not hours later.

    ``unattended``: ferry will not see the job end (``--detach``/``--wait-for``),
    so the instance must be able to act on itself.
    """
    if action is None:
        return
    if action not in ACTIONS:
        raise UsageError(f"bad --then {action!r}", hint="use --then stop or --then terminate")
    cloud = box.cloud()
    if (STOP if action == "stop" else OWNED) not in cloud.capabilities:
        raise FerryError(f"the {cloud.name} provider cannot {action} {box.name}",
                         hint="drop --then" + (" or use --then terminate" if action == "stop" else ""))
    if unattended and not acts_itself(box):
        path = autostop.self_stop_of(cloud)
        why = path.how if path else f"{cloud.name} instances cannot act on themselves"
        raise UsageError(f"--then {action} with --detach needs {box.name} to {action} itself, and it cannot: {why}",
                         hint=f"run it attached, or relaunch with --autostop-key: {cmd(f'launch --name {box.name} --autostop-key')}")


def prepare(box: "Box", action: str | None) -> None:
    """Before the job: where the cloud decides what a shutdown means (EC2), make it mean ``action``."""
    if action is not None:
        box.cloud().set_self_stop_action(box.instance.id, action)


def _restore(box: "Box") -> None:
    """A --then that did not act: a shutdown means what autostop says again."""
    from .registry import Registry

    entry = Registry(box.settings.home).get(box.provider, box.instance.id) or {}
    cloud = box.cloud()
    box.cloud().set_self_stop_action(box.instance.id, (entry.get("autostop") or {}).get("action")
                                     or autostop.default_action(cloud))


def after(box: "Box", end: "JobResult", action: str | None, always: bool = False) -> bool:
    """With ferry still watching when the job ended: confirm (or do) the action. True if it happened."""
    if action is None:
        return False
    if end.state != "succeeded" and not always:
        log.info("job %s %s; instance %s was left running (--then %s acts only after success; "
                 "--then-always acts whatever the outcome)", end.ref, end.describe(), box.name, action)
        _restore(box)
        return False
    from . import lifecycle

    if acts_itself(box):
        log.info("%s %s itself now (--then %s)", box.name, "stops" if action == "stop" else "terminates", action)
        if box.instance.ssh:
            box.remote.close()
        fresh = _seen(box, action)
        if fresh is not False:
            if action == "stop":
                lifecycle.record_stopped(box, fresh)  # type: ignore[arg-type]
                log.info("%s stopped (--then stop)", box.name)
            else:
                lifecycle.forget_terminated(box)
                log.info("%s terminated (--then terminate)", box.name)
            return True
        log.info("%s has not %s itself within %.0fs; ferry does it", box.name, action + "ped" if action == "stop"
                 else "terminated", CONFIRM_WITHIN)
    if action == "stop":
        box.stop()
        log.info("%s stopped (--then stop)", box.name)
    else:
        box.terminate()
        log.info("%s terminated (--then terminate)", box.name)
    return True


def _seen(box: "Box", action: str):
    """Poll the cloud until the instance reads stopped (its record) or gone (None); False on time-out."""
    cloud = box.cloud()

    def look():
        fresh = cloud.get(box.instance.id)
        if fresh is None or fresh.status == Status.TERMINATED:
            return ("gone", None) if action == "terminate" else None
        if action == "stop" and fresh.status == Status.STOPPED:
            return ("stopped", fresh)
        return None

    try:
        found = backoff.poll(look, timeout=CONFIRM_WITHIN, first=0.2, cap=3.0)
    except FerryError:
        return False
    return found[1] if found else False
