"""This project's tasks: all of ferry's, plus one of our own written with ferry's Python API."""

from invoke import task

import ferry
from ferry.tasks import ns


@task
def train(c, steps=5):
    """Sync, train on the instance, bring the metrics home."""
    box = ferry.box(c)                                   # the project's current instance
    box.sync()
    box.run("python3 train.py", env={"STEPS": str(steps)})   # raises ferry.JobFailed if training fails
    box.download("results")


ns.add_task(train)
