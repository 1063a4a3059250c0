"""ferry.testing: test lifecycle rules, tasks.py files and recipes without a cloud, in milliseconds.

Two tools, after Invoke's ``MockContext`` and ``fabric.testing``:

- :class:`FakeProvider`, an in-memory cloud. This module *is* a provider
  module (it declares what every provider declares), so registering it is
  one line: ``ferry.providers.register("fake", "ferry.testing")``. Its
  instances have no machine behind them (no SSH capability), so ``launch``
  runs every rule up to "the instance is RUNNING" and stops there: find by
  name, create once, clean up after a failure, retries, capabilities. Faults
  are knobs: ``fail_next``, ``lose_next_create``, ``never_ready``.
- :class:`MockBox`, a stand-in for :class:`ferry.Box` that records every call
  and answers ``run`` from a table, for testing your own tasks and recipes.

As a pytest plugin (``pytest_plugins = ["ferry.testing"]`` in a conftest)
it provides the fixtures ``ferry_project`` (a temporary HOME and project,
cwd inside it), ``fake_cloud`` (a FakeProvider registered as ``fake`` and
made the default provider) and ``mock_ferry`` (``ferry.box``/``ferry.launch``
hand out a MockBox).
"""

from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Mapping

from . import backoff
from .errors import ProviderError, TransientError
from .follow import JobResult
from .providers.base import CLONE, GPU, MODIFY, OFFERS, OWNED, SPOT, STOP, unsupported
from .records import Instance, InstanceSpec, Offer, Status

# -- what every provider module declares -----------------------------------------------------------
DEFAULTS: dict[str, Any] = {"price": 1.0}  # $/hour of every fake instance
API_KEY = None
SDK = None
EXTRA = None
GPUS = {"A100": "fake-a100", "H100": "fake-h100", "T4": "fake-t4"}
STATUS = {"pending": Status.PENDING, "running": Status.RUNNING, "stopped": Status.STOPPED}
RETRY = backoff.Policy(attempts=6, budget=5.0, base=0.001, cap=0.01)  # the real rule, without the real waits
NAME = "fake"

_current: "FakeProvider | None" = None


def make(cfg) -> "FakeProvider":
    """The registry's factory: the FakeProvider a test installed (a fresh one if none was)."""
    global _current
    if _current is None:
        _current = FakeProvider()
    _current.price = float(cfg.settings.get("price") or 1.0)
    return _current


def install(fake: "FakeProvider | None" = None, name: str = NAME) -> "FakeProvider":
    """Register ``fake`` (or a new FakeProvider) as provider ``name``; ``uninstall`` undoes it."""
    from . import providers

    global _current
    _current = fake or FakeProvider(name=name)
    providers.register(name, __name__)
    return _current


def uninstall(name: str = NAME) -> None:
    from . import providers

    global _current
    providers.unregister(name)
    _current = None


# -- the in-memory cloud ----------------------------------------------------------------------------
class FakeProvider:
    """A cloud in a dict: every verb is recorded in ``calls``; faults are set with the knobs below."""

    def __init__(self, name: str = NAME, capabilities: frozenset[str] | None = None):
        self.name = name
        self.capabilities = capabilities if capabilities is not None else \
            frozenset({STOP, OWNED, GPU, SPOT, OFFERS, MODIFY, CLONE})
        self.instances: dict[str, Instance] = {}
        self.calls: list[tuple[str, Any]] = []
        self.price = 1.0
        self.never_ready = False  # instances created from now on stay PENDING
        self.ready_after = 0  # get() calls before a new instance reads RUNNING
        self._faults: list[tuple[str, BaseException, int]] = []
        self._lose_create = 0
        self._ids = itertools.count(1)
        self._gets: dict[str, int] = {}

    # -- knobs ------------------------------------------------------------------------------------
    def fail_next(self, verb: str, error: BaseException | None = None, times: int = 1) -> None:
        """The next ``times`` calls of ``verb`` raise ``error`` (a TransientError by default) without acting."""
        self._faults.append((verb, error or TransientError(f"fake {verb}: 503 Service Unavailable"), times))

    def lose_next_create(self, times: int = 1) -> None:
        """The next creates make the instance, then fail as if the answer was lost."""
        self._lose_create += times

    def add(self, name: str, labels: Mapping[str, str] | None = None, status: Status = Status.RUNNING) -> Instance:
        """An instance made outside ferry (by hand, or by another machine)."""
        instance = Instance(id=f"i-{next(self._ids)}", name=name, provider=self.name, status=status,
                            cost_per_hour=self.price, labels=dict(labels or {}), created_at=time.time())
        self.instances[instance.id] = instance
        return instance

    def count(self, verb: str) -> int:
        return sum(1 for v, _ in self.calls if v == verb)

    def live(self, name: str | None = None) -> list[Instance]:
        return [i for i in self.instances.values() if name is None or i.name == name]

    def _enter(self, verb: str, arg: Any) -> None:
        self.calls.append((verb, arg))
        for n, (fault_verb, error, times) in enumerate(self._faults):
            if fault_verb == verb:
                if times <= 1:
                    del self._faults[n]
                else:
                    self._faults[n] = (fault_verb, error, times - 1)
                raise error

    def _copy(self, instance: Instance) -> Instance:
        return Instance.from_dict(instance.to_dict())

    # -- the contract -------------------------------------------------------------------------------
    def create(self, spec: InstanceSpec) -> Instance:
        self._enter("create", spec.name)
        instance = self.add(spec.name, spec.labels, Status.PENDING if (self.never_ready or self.ready_after)
                            else Status.RUNNING)
        instance.gpu, instance.gpu_count = spec.gpu, spec.gpu_count
        instance.raw = {"spec": {"gpu": spec.gpu, "gpu_count": spec.gpu_count, "disk_gb": spec.disk_gb,
                                 "options": dict(spec.options)}}
        if self._lose_create:
            self._lose_create -= 1
            raise TransientError("fake create: the connection dropped before the answer")
        return self._copy(instance)

    def list(self, labels: Mapping[str, str] | None = None) -> list[Instance]:
        self._enter("list", labels)
        return [self._copy(i) for i in self.instances.values()
                if all(i.labels.get(k) == v for k, v in (labels or {}).items())]

    def get(self, instance_id: str) -> Instance | None:
        self._enter("get", instance_id)
        instance = self.instances.get(instance_id)
        if instance is None:
            return None
        self._gets[instance_id] = self._gets.get(instance_id, 0) + 1
        if instance.status == Status.PENDING and not self.never_ready and self._gets[instance_id] >= self.ready_after:
            instance.status = Status.RUNNING
        return self._copy(instance)

    def start(self, instance_id: str) -> Instance:
        self._enter("start", instance_id)
        return self._power(instance_id, Status.RUNNING)

    def stop(self, instance_id: str) -> Instance:
        self._enter("stop", instance_id)
        return self._power(instance_id, Status.STOPPED)

    def _power(self, instance_id: str, status: Status) -> Instance:
        instance = self.instances.get(instance_id)
        if instance is None:
            raise ProviderError(f"fake: no instance {instance_id}")
        instance.status = status
        return self._copy(instance)

    def terminate(self, instance_id: str) -> None:
        self._enter("terminate", instance_id)
        self.instances.pop(instance_id, None)

    def offers(self, gpu: str | None, count: int) -> list[Offer]:
        self._enter("offers", gpu)
        return [Offer(self.name, alias, count, self.price * count) for alias in GPUS if gpu in (None, alias)]

    def modify(self, instance_id: str, changes: Mapping[str, Any]) -> dict[str, Any]:
        self._enter("modify", dict(changes))
        if MODIFY not in self.capabilities:
            raise unsupported(self.name, "modify")
        return {k: v for k, v in changes.items() if v not in (None, [])}

    def spec_of(self, instance: Instance) -> InstanceSpec:
        spec = dict(instance.raw.get("spec") or {})
        return InstanceSpec(name=instance.name, provider=self.name, gpu=spec.get("gpu"),
                            gpu_count=spec.get("gpu_count") or 0, disk_gb=spec.get("disk_gb"),
                            options=dict(spec.get("options") or {}), labels=dict(instance.labels))


# -- a stand-in for Box ------------------------------------------------------------------------------
@dataclass
class MockBox:
    """Records what a task or recipe asked of its instance; ``run`` answers from ``results``.

    ``results`` maps a command to a JobResult or an exit code (default 0 for
    any command); a non-zero one raises ferry.JobFailed unless ``warn=True``,
    as ``Box.run`` does.
    """

    name: str = "mock"
    results: dict[str, JobResult | int] = field(default_factory=dict)
    calls: list[tuple[str, tuple, dict]] = field(default_factory=list)

    def _record(self, verb: str, *args, **kwargs) -> None:
        self.calls.append((verb, args, kwargs))

    def ran(self) -> list[str]:
        """The commands ``run`` was given, in order."""
        return [args[0] for verb, args, _ in self.calls if verb == "run"]

    def sync(self, **kwargs):
        self._record("sync", **kwargs)

    def download(self, *paths: str, **kwargs):
        self._record("download", *paths, **kwargs)

    def run(self, command: str, *, warn: bool = False, **kwargs) -> JobResult:
        from .errors import JobFailed

        self._record("run", command, warn=warn, **kwargs)
        answer = self.results.get(command, 0)
        result = answer if isinstance(answer, JobResult) else JobResult(
            f"mock-{len(self.calls)}", "succeeded" if answer == 0 else "failed", answer)
        if not warn and not result.ok:
            raise JobFailed(result)
        return result

    def stop(self):
        self._record("stop")
        return self

    def start(self, **kwargs):
        self._record("start", **kwargs)
        return self

    def terminate(self) -> None:
        self._record("terminate")


# -- pytest fixtures (pytest_plugins = ["ferry.testing"]) ----------------------------------------------
try:
    import pytest
except ImportError:  # ferry.testing works without pytest; only the fixtures need it
    pytest = None  # type: ignore[assignment]

if pytest is not None:

    @pytest.fixture
    def ferry_project(tmp_path, monkeypatch) -> Iterator[Any]:
        """A temporary HOME with an empty git project in it, as the cwd; local instances powered off after."""
        import subprocess

        home = tmp_path / "home"
        project = home / "proj"
        project.mkdir(parents=True)
        subprocess.run(["git", "init", "-q"], cwd=project, check=True)
        monkeypatch.setenv("HOME", str(home))
        monkeypatch.delenv("INVOKE_FERRY_PROVIDER", raising=False)
        monkeypatch.chdir(project)
        try:
            yield project
        finally:
            from .providers.local import LocalProvider

            local = LocalProvider(home / ".ferry" / "local")
            for instance in local.list():
                local.terminate(instance.id)

    @pytest.fixture
    def fake_cloud(ferry_project, monkeypatch) -> Iterator[FakeProvider]:
        """A FakeProvider registered as ``fake`` and made the default provider (INVOKE_FERRY_PROVIDER=fake)."""
        fake = install()
        monkeypatch.setenv("INVOKE_FERRY_PROVIDER", NAME)
        try:
            yield fake
        finally:
            uninstall()

    @pytest.fixture
    def mock_ferry(monkeypatch) -> Iterator[MockBox]:
        """``ferry.box()`` and ``ferry.launch()`` hand out one MockBox, returned here to inspect."""
        import ferry

        box = MockBox()
        handout: Callable[..., MockBox] = lambda *a, **kw: box  # noqa: E731
        for name in ("box", "launch"):
            monkeypatch.setattr(ferry, name, handout, raising=False)
        yield box
