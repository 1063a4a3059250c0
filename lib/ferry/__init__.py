"""ferry: take a project from a laptop to a rented GPU and back.

The Python API reads like the CLI::

    import ferry
    box = ferry.launch(name="exp1", gpu="A100", provider="runpod")   # idempotent, as the task
    box.sync()
    result = box.run("python train.py --lr 3e-4", env={"WANDB_MODE": "offline"})  # raises ferry.JobFailed
    result = box.run("pytest -x", warn=True)         # JobResult(job_id, state, exit_code) whatever the outcome
    job = box.run("python serve.py", detach=True)    # job.wait(), job.logs(follow=True), job.kill()
    box.download("outputs")
    box.stop(); box.terminate()
    same = ferry.box(name="exp1")                    # an existing instance (default: the project's current one)
    lab = ferry.fleet(name="lab")                    # launch --count N --name lab: lab.sync(), lab.run(...), lab.map(...)

Every function takes an optional Invoke Context first (``c``, inside a
task); without one ferry reads the project's configuration as ``inv``
would. Imports are lazy, so ``inv --list`` stays fast.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing on every start-up

__version__ = "0.1.0"

_EXPORTS = {
    "launch": "ferry.api",
    "launch_many": "ferry.api",
    "box": "ferry.api",
    "fleet": "ferry.api",
    "Fleet": "ferry.group",
    "GroupResult": "ferry.group",
    "FleetFailed": "ferry.group",
    "MapResult": "ferry.mapdir",
    "find": "ferry.api",
    "instances": "ferry.api",
    "offers": "ferry.api",
    "make_context": "ferry.config",
    "Settings": "ferry.config",
    "FerryConfig": "ferry.config",
    "Box": "ferry.handle",
    "Job": "ferry.jobs",
    "JobInfo": "ferry.jobs",
    "JobResult": "ferry.follow",
    "Detached": "ferry.jobs",
    "SyncResult": "ferry.report",
    "FerryError": "ferry.errors",
    "UsageError": "ferry.errors",
    "JobFailed": "ferry.errors",
    "Instance": "ferry.records",
    "InstanceSpec": "ferry.records",
    "Offer": "ferry.records",
    "Status": "ferry.records",
}

__all__ = [
    "Box", "Detached", "FerryConfig", "FerryError", "Fleet", "FleetFailed", "GroupResult", "MapResult", "fleet", "Instance", "InstanceSpec", "Job", "JobFailed", "JobInfo",
    "JobResult", "Offer", "Settings", "Status", "SyncResult", "UsageError", "box", "find", "instances", "launch",
    "launch_many", "make_context", "offers",
]

if TYPE_CHECKING:
    from .api import box, find, fleet, instances, launch, launch_many, offers
    from .group import Fleet, FleetFailed, GroupResult
    from .mapdir import MapResult
    from .handle import Box
    from .config import FerryConfig, Settings, make_context
    from .errors import FerryError, JobFailed, UsageError
    from .follow import JobResult
    from .jobs import Detached, Job, JobInfo
    from .records import Instance, InstanceSpec, Offer, Status
    from .report import SyncResult


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
