"""The entry points of the Python API: ``ferry.launch``, ``ferry.box`` and friends.

Each is the library function itself (same signature, same docstring),
wrapped only to show ferry's progress lines on stderr the first time a
script calls it, as the tasks do, until the script configures logging
itself.
"""

from __future__ import annotations

import functools
from typing import Callable, TypeVar

from . import handle as boxes
from . import clouds, lifecycle, output
from . import group as fleets

F = TypeVar("F", bound=Callable)


def _entry(fn: F) -> F:
    @functools.wraps(fn)
    def shown(*args, **kwargs):
        output.install_logging(own=False)
        return fn(*args, **kwargs)

    return shown  # type: ignore[return-value]


launch = _entry(lifecycle.launch)
launch_many = _entry(lifecycle.launch_many)
box = _entry(boxes.get)
fleet = _entry(fleets.get)
find = _entry(boxes.find)


def instances(c=None, skipped: dict[str, str] | None = None):
    """Every instance on every configured provider (``ls --all``); unconfigured ones are noted in ``skipped``."""
    from .config import Settings

    return clouds.list_everywhere(Settings.of(c), skipped)


def offers(c=None, gpu: str | None = None, count: int = 1, spot: bool = False,
           skipped: dict[str, str] | None = None):
    """Priced offers for ``count`` x ``gpu`` across the configured clouds, cheapest first (``offers``)."""
    from .config import Settings

    return clouds.offers(Settings.of(c), gpu, count, spot=spot, skipped=skipped)
