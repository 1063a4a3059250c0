"""pytest fixtures for the fake clouds: ``sshd_pool``, ``fake_runpod``, ``fake_vast``,
``fake_thunder``, ``fake_ec2`` (all function-scoped).

Use them from a test module with ``from tests.fakes.fixtures import *`` (or list
``"tests.fakes.fixtures"`` in ``pytest_plugins`` of the root conftest). Every fake
started here is stopped in the fixture's teardown, and every sshd by pid through
``SshdPool.stop_all`` in a ``finally``, even when the test fails. Directories are
``/tmp/fkXXXXXXXX`` (short: sshd and ssh ControlPath sockets need short paths), removed at
teardown.

The fakes share the test's ``sshd_pool``. Each fake is started (``fake.base_url`` is set)
but the test still points its SDK at it (see each module's docstring): the fixtures do not
touch the environment.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

from . import FakeAPIServer
from .sshd_pool import SshdPool

__all__ = ["fake_dir", "sshd_pool", "fake_runpod", "fake_vast", "fake_thunder", "fake_ec2"]


def short_tempdir(prefix: str = "fk") -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir="/tmp"))


@pytest.fixture
def fake_dir() -> Iterator[Path]:
    """A short, private scratch directory under /tmp, removed afterwards."""
    path = short_tempdir()
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def sshd_pool() -> Iterator[SshdPool]:
    base = short_tempdir()
    pool = SshdPool(base)
    try:
        yield pool
    finally:
        try:
            pool.stop_all()
        finally:
            shutil.rmtree(base, ignore_errors=True)


def _serve(fake: FakeAPIServer) -> Iterator[FakeAPIServer]:
    try:
        fake.start()
        yield fake
    finally:
        fake.stop()


@pytest.fixture
def fake_runpod(sshd_pool: SshdPool):
    from .runpod_server import FakeRunPod

    yield from _serve(FakeRunPod(sshd_pool))


@pytest.fixture
def fake_vast(sshd_pool: SshdPool):
    from .vast_server import FakeVast

    yield from _serve(FakeVast(sshd_pool))


@pytest.fixture
def fake_thunder(sshd_pool: SshdPool):
    from .thunder_server import FakeThunder

    yield from _serve(FakeThunder(sshd_pool))


@pytest.fixture
def fake_ec2(sshd_pool: SshdPool):
    pytest.importorskip("moto", reason="moto[server] is needed for the EC2 fake")
    from .ec2 import FakeEC2

    yield from _serve(FakeEC2(sshd_pool))
