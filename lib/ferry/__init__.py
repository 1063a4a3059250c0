"""ferry: take a project from a laptop to a rented GPU and back.

The library API, for recipes and custom tasks. Each function takes an Invoke
Context (``ferry.config.make_context()`` builds one outside ``inv``)::

    import ferry
    c = ferry.make_context()
    box = ferry.launch(c)
    ferry.sync_up(c, box)
    job_id, end = ferry.run(c, box, "python train.py")
    ferry.download(c, box, ["outputs"])

Imports are lazy so that ``inv --list`` stays fast.
"""

from __future__ import annotations

__version__ = "0.1.0"

_EXPORTS = {
    "make_context": "ferry.config",
    "launch": "ferry.lifecycle",
    "resolve": "ferry.lifecycle",
    "stop": "ferry.lifecycle",
    "start": "ferry.lifecycle",
    "terminate": "ferry.lifecycle",
    "connect": "ferry.lifecycle",
    "sync_up": "ferry.sync",
    "download": "ferry.sync",
    "run": "ferry.jobs",
    "follow": "ferry.jobs",
    "list_jobs": "ferry.jobs",
    "forward": "ferry.forward",
    "FerryError": "ferry.errors",
    "Instance": "ferry.instance",
    "InstanceSpec": "ferry.instance",
}


def __getattr__(name: str):
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'ferry' has no attribute {name!r}")


__all__ = sorted(_EXPORTS)
