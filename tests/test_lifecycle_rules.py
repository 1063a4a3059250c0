"""Lifecycle rules on ferry.testing's in-memory cloud: no machine, no network, milliseconds each.

The same rules run against every real SDK and fake API in test_contract.py;
here they are pinned one by one, with the provider's calls counted.
"""

from __future__ import annotations

import pytest

import ferry
from ferry.errors import FerryError, ProviderError, TransientError, UsageError
from ferry.providers.base import STOP
from ferry.records import Status
from ferry.testing import MockBox


def test_launch_is_idempotent_by_name(fake_cloud):
    first = ferry.launch(name="exp1", gpu="A100")
    again = ferry.launch(name="exp1", gpu="A100")
    assert first.instance.id == again.instance.id
    assert fake_cloud.count("create") == 1 and len(fake_cloud.live("exp1")) == 1
    assert first.instance.labels["ferry-project"] == "proj"
    assert ferry.box().name == "exp1", "the launched instance is the project's current one"


def test_a_lost_create_answer_never_makes_a_twin(fake_cloud):
    fake_cloud.lose_next_create()
    box = ferry.launch(name="exp1", gpu="A100")
    assert len(fake_cloud.live("exp1")) == 1 and fake_cloud.count("create") == 1
    assert box.instance.id == fake_cloud.live("exp1")[0].id


def test_transient_errors_are_retried_within_the_bounds(fake_cloud):
    fake_cloud.fail_next("create", times=2)
    ferry.launch(name="ok", gpu="A100")
    assert fake_cloud.count("create") == 3
    fake_cloud.fail_next("create", times=50)
    with pytest.raises(TransientError):
        ferry.launch(name="never", gpu="A100")
    assert fake_cloud.count("create") == 3 + 6, "six attempts, then the last error"
    assert fake_cloud.live("never") == []


def test_retry_after_is_a_floor(fake_cloud, monkeypatch):
    waits = []
    monkeypatch.setattr("ferry.backoff.time.sleep", waits.append)
    fake_cloud.fail_next("create", TransientError("429", retry_after=0.75))
    ferry.launch(name="slow", gpu="A100")
    assert waits and waits[0] >= 0.75


def test_a_refusal_is_not_retried_and_leaves_nothing(fake_cloud):
    fake_cloud.fail_next("create", ProviderError("fake: quota exceeded"))
    with pytest.raises(ProviderError, match="quota"):
        ferry.launch(name="x", gpu="A100")
    assert fake_cloud.count("create") == 1 and fake_cloud.live() == []


def test_an_instance_that_never_comes_up_is_terminated(fake_cloud):
    fake_cloud.never_ready = True
    with pytest.raises(FerryError, match="did not become reachable"):
        ferry.launch(name="stuck", gpu="A100", timeout=0.3)
    assert fake_cloud.live() == [] and fake_cloud.count("terminate") == 1


def test_an_interrupted_create_is_found_and_removed(fake_cloud):
    fake_cloud.lose_next_create()
    fake_cloud.fail_next("list", KeyboardInterrupt())  # Ctrl-C while looking for the lost instance...
    fake_cloud.fail_next("list", KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        ferry.launch(name="gone", gpu="A100")
    assert fake_cloud.live() == [], "...still cleans up what the cloud made"


def test_a_same_named_instance_made_by_hand_is_never_adopted(fake_cloud):
    by_hand = fake_cloud.add("exp1")  # no ferry-project label
    box = ferry.launch(name="exp1", gpu="A100")
    assert box.instance.id != by_hand.id
    box.terminate()
    assert [i.id for i in fake_cloud.live()] == [by_hand.id], "only ferry's own instance was terminated"


def test_capabilities_are_read_before_anything_is_created(fake_cloud):
    fake_cloud.capabilities = fake_cloud.capabilities - {"spot"}
    with pytest.raises(UsageError, match="--spot"):
        ferry.launch(name="s", gpu="A100", spot=True)
    with pytest.raises(UsageError, match="needs --gpu"):
        ferry.launch(name="s")
    assert fake_cloud.count("create") == 0
    box = ferry.launch(name="s", gpu="A100")
    fake_cloud.capabilities = fake_cloud.capabilities - {STOP}
    with pytest.raises(FerryError, match="cannot be stopped"):
        box.stop()
    assert fake_cloud.count("stop") == 0


def test_stop_start_and_a_stopped_instance_is_started_by_launch(fake_cloud):
    box = ferry.launch(name="p", gpu="A100")
    assert box.stop().instance.status == Status.STOPPED
    assert ferry.launch(name="p").instance.status == Status.RUNNING
    assert fake_cloud.count("start") == 1 and fake_cloud.count("create") == 1


def test_launch_many_reports_the_failures_and_keeps_the_rest(fake_cloud):
    fake_cloud.fail_next("create", ProviderError("fake: no capacity"))
    with pytest.raises(ProviderError) as failed:
        ferry.launch_many(None, 3, name="grid", spec=ferry.InstanceSpec(name="", gpu="A100", gpu_count=1))
    assert "1 of 3 launches failed" in failed.value.message and "still running" in failed.value.message
    assert sorted(i.name for i in fake_cloud.live()) in (["grid-0", "grid-1"], ["grid-0", "grid-2"],
                                                          ["grid-1", "grid-2"])
    assert all(i.labels["ferry-group"] == "grid" for i in fake_cloud.live())


def test_clone_copies_the_shape_not_the_current_instance(fake_cloud):
    source = ferry.launch(name="src", gpu="A100", gpu_count=2, disk=200)
    copy = source.clone("src-2", gpu_count=4)
    made = fake_cloud.live("src-2")[0]
    assert made.raw["spec"]["gpu_count"] == 4 and made.raw["spec"]["disk_gb"] == 200
    assert made.labels["ferry-clone-of"] == "src" and copy.name == "src-2"
    assert ferry.box().name == "src", "the current instance stays as it was"


def test_a_users_task_is_testable_with_a_mock_box(mock_ferry):
    """How a project tests its own tasks.py: the task runs, ferry's calls are recorded."""
    from invoke import MockContext, task

    @task
    def train(c, steps=10):
        box = ferry.box(c)
        box.sync()
        box.run(f"python train.py --steps {steps}")
        box.download("results")

    train(MockContext(), steps=3)
    assert [verb for verb, *_ in mock_ferry.calls] == ["sync", "run", "download"]
    assert mock_ferry.ran() == ["python train.py --steps 3"]
    failing = MockBox(results={"pytest": 1})
    with pytest.raises(ferry.JobFailed) as caught:
        failing.run("pytest")
    assert caught.value.result.exit_code == 1 and failing.run("pytest", warn=True).exit_code == 1


def test_launch_says_what_it_waits_for(fake_cloud, caplog):
    import logging

    fake_cloud.ready_after = 3
    with caplog.at_level(logging.INFO, logger="ferry"):
        ferry.launch(name="slow", gpu="A100")
    waits = [r.getMessage() for r in caplog.records if getattr(r, "status", False)]
    assert waits and "fake says pending" in waits[0] and "so far" in waits[0] and "left" in waits[0]
