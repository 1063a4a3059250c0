"""ferry's Invoke tasks, as one collection ``ns``.

In a project's ``tasks.py``::

    from ferry.tasks import ns          # all of ferry's tasks
    from invoke import task

    @task
    def train(c):
        c.run(...)                       # your own tasks sit beside them
    ns.add_task(train)

Tasks stay thin: they parse flags, call the library, print.
"""

from __future__ import annotations

import logging

from invoke import Collection

from ..config import DEFAULTS
from . import clouds, files, instances, jobs, thunder

ns = Collection()
for module in (instances, files, jobs, clouds, thunder):
    for task in Collection.from_module(module).tasks.values():
        ns.add_task(task)
ns.configure({"ferry": DEFAULTS})

__all__ = ["ns"]


class _NoConfigDumps(logging.Filter):
    """Invoke's --debug prints every config layer it loads, ``ferry.env`` values included; those may be secrets."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.module not in ("config", "env")


logging.getLogger("invoke").addFilter(_NoConfigDumps())
