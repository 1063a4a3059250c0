"""This project's tasks: all of ferry's, plus one of our own."""

from invoke import task

from ferry.tasks import ns


@task
def train(c, steps=5):
    """Sync, train on the instance, bring the metrics home."""
    c.config.ferry.env = {"STEPS": str(steps)}
    from ferry import lifecycle, jobs, sync

    box = lifecycle.resolve(c)
    sync.sync_up(c, box)
    job_id, end = jobs.run(c, box, "python3 train.py")
    sync.download(c, box, ["results"])


ns.add_task(train)
