"""What every task shares: turning FerryError into one clean line and an exit status."""

from __future__ import annotations

import functools
import importlib
import sys
import traceback

from invoke import task as invoke_task
from invoke.exceptions import Exit

from .. import config
from ..errors import FerryError


def ferry_task(*args, **kwargs):
    """``@task`` whose expected failures print ``error: ...`` / ``hint: ...`` and exit 1 (2 for usage)."""

    def decorate(func):
        @functools.wraps(func)
        def wrapper(c, *a, **kw):
            try:
                return func(c, *a, **kw)
            except FerryError as exc:
                if config.debug_enabled(c):
                    traceback.print_exc()
                print(f"error: {exc.message}", file=sys.stderr)
                if exc.hint:
                    print(f"hint: {exc.hint}", file=sys.stderr)
                raise Exit(code=exc.exit_code) from None

        return invoke_task(*args, **kwargs)(wrapper)

    if len(args) == 1 and callable(args[0]) and not kwargs:
        func, args = args[0], ()
        return decorate(func)
    return decorate


class lazy:
    """A module imported on first attribute access, so `inv --list` never loads the library behind a task."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attr: str):
        return getattr(importlib.import_module(self._name), attr)
