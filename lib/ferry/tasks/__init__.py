"""ferry's Invoke tasks, as one collection ``ns``.

In a project's ``tasks.py``::

    from ferry.tasks import ns          # all of ferry's tasks
    from invoke import task

    @task
    def train(c):
        box = ferry.box(c)               # your own tasks sit beside them, on the same library
    ns.add_task(train)

Tasks stay thin: they parse flags (ferry.flags), call the library with a
Box, and present the result (ferry.output). Each imports what it uses inside
its body, so ``inv --list`` never loads the library behind a task.
"""

from __future__ import annotations

import logging

from invoke import Collection

from ..config import defaults
from . import build, clouds, files, fleet, hf, instances, jobs, money, replicate, reshape

ns = Collection()
for module in (instances, files, jobs, build, clouds, money, reshape):
    for task in Collection.from_module(module).tasks.values():
        ns.add_task(task)
ns.add_task(fleet.map_)
ns.add_collection(fleet.ns)
ns.add_collection(Collection.from_module(hf))  # ferry hf.publish-lora, hf.list-models
ns.add_collection(Collection.from_module(replicate))  # ferry replicate.run, replicate.get, replicate.inputs
ns.configure({"ferry": defaults()})

__all__ = ["ns"]


class _NoConfigDumps(logging.Filter):
    """Invoke's --debug prints every config layer it loads, ``ferry.env`` values included; those may be secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.module not in ("config", "env")


logging.getLogger("invoke").addFilter(_NoConfigDumps())
